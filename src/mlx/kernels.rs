//! Our C++ kernels (`kernels/`), exposed as MLX custom primitives.

use crate::error::{Error, Result};
use crate::mlx::Array;
use crate::quant::GgmlType;

/// Whether the CPU quantized-matmul kernel is compiled in.
pub fn available() -> bool {
    false
}

/// Whether the kernel handles GGUF type `ty`.
pub fn supports(_ty: GgmlType) -> bool {
    false
}

/// x [.., M, K] · W[N, K]ᵀ for W held as GGUF blocks [N, row_bytes]: [.., M, N].
pub fn gguf_matmul(_x: &Array, _blocks: &Array, ty: GgmlType, _n: usize, _k: usize) -> Result<Array> {
    Err(Error::Unsupported(format!("no CPU kernel for {ty:?} in this build")))
}
