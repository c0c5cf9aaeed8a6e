//! Our C++ kernels (`kernels/`) as MLX custom primitives (lazy, ordered on the CPU stream,
//! composable with `compile`): the quantized matmul over GGUF blocks read in place, fused
//! projections, the cached attention; plus weight loading into the kernels' arena, their
//! process-wide settings, and the raw host entry points the tests use to check each path
//! against the Rust scalar twin. Every kernel status goes through `ffi::check`, so a failure is
//! [`crate::Error::Kernel`] with the kernel's own message.

mod attention;
mod ffi;
mod fused;
mod host;
mod layout;
mod matmul;
mod settings;
pub mod types;
mod weights;

// The block types the kernels read, from the leaf `crate::ggml_type` (submodules use
// `super::GgmlType`).
use crate::ggml_type::GgmlType;

pub use attention::{cached_attention, AttentionParams, QkNorm};
pub use fused::{
    gguf_gated, gguf_matmul_multi, gguf_swiglu, Gate, GgufWeightRef, RmsNormRef, MAX_FUSED_WEIGHTS,
};
pub use host::{dequantize_host, qmatmul_host, repack_host};
pub use layout::{row_bytes, supports, BlockLayout};
pub use matmul::{cross_entropy, gguf_matmul, gguf_matmul_add, matmul_f32};
pub use settings::{
    force_path, num_threads, path, retain_freed_memory, set_num_threads, KernelPath,
};
pub use weights::{load_blocks, weight_bytes};
