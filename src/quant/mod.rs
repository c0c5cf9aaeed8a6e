//! GGUF/ggml block formats: a scalar reference decoder per format ([`decode`],
//! [`dequantize_row`]) and the conversion to MLX's affine quantized layout ([`affine`],
//! [`to_mlx_affine`]) used by the GPU path.
//!
//! Dependencies run one way: [`affine`] builds on [`decode`], both on `block` (the shared
//! whole-block checks); nothing in [`decode`] knows about MLX. The type table itself
//! ([`GgmlType`]) lives in [`crate::ggml_type`], a leaf shared with the loader and the kernels
//! wrapper; it is re-exported here for callers that only deal in quant formats.
#![forbid(unsafe_code)]

pub mod affine;
mod block;
pub mod decode;

pub use crate::ggml_type::GgmlType;
pub use affine::{dequantize_affine, to_mlx_affine, AffineWeights};
pub use decode::{can_dequantize, dequantize_row};
