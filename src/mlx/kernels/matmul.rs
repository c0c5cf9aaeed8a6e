//! The quantized matmul over GGUF blocks as a lazy MLX op (our `GgufQMatmul` primitive on the
//! CPU stream), optionally with the skip connection added in the same op.

use super::ffi::{self, mlxk_gguf_qmatmul_add};
use super::layout::BlockLayout;
use crate::error::Result;
use crate::mlx::handler::null_array;
use crate::mlx::stream::current_stream;
use crate::mlx::Array;

/// x [.., M, K] · W[N, K]ᵀ for W held as GGUF blocks [N, row_bytes] (uint8): [.., M, N]
/// float32, as a lazy MLX op on the CPU stream.
pub fn gguf_matmul(
    x: &Array,
    blocks: &Array,
    layout: impl Into<BlockLayout>,
    n: usize,
    k: usize,
) -> Result<Array> {
    qmatmul_add("gguf_matmul", x, blocks, layout.into(), n, k, None)
}

/// [`gguf_matmul`] plus a residual of the output's shape [.., M, N] in the same op:
/// x · Wᵀ + residual (the transformer's skip connection, without an op of its own).
pub fn gguf_matmul_add(
    x: &Array,
    blocks: &Array,
    layout: impl Into<BlockLayout>,
    n: usize,
    k: usize,
    residual: &Array,
) -> Result<Array> {
    qmatmul_add(
        "gguf_matmul_add",
        x,
        blocks,
        layout.into(),
        n,
        k,
        Some(residual),
    )
}

/// The primitive behind both entries (`op` names the one called).
fn qmatmul_add(
    op: &str,
    x: &Array,
    blocks: &Array,
    layout: BlockLayout,
    n: usize,
    k: usize,
    residual: Option<&Array>,
) -> Result<Array> {
    let s = current_stream();
    let residual = residual.map_or_else(null_array, Array::raw);
    // SAFETY: valid handles (the residual may be the empty handle, meaning none) and stream;
    // the primitive validates shapes and types and reports failures through its status, with
    // the message in `mlxk_last_error`.
    ffi::kernel_array(op, |res| unsafe {
        mlxk_gguf_qmatmul_add(
            res,
            x.raw(),
            blocks.raw(),
            residual,
            layout.id(),
            n as i64,
            k as i64,
            s,
        )
    })
}

/// a · b over the last two axes in float32 on our threaded kernel (differentiable): a [.., M, K]
/// with b [.., K, N] of the same leading axes, or b [K, N] for any a. The dense products of
/// training (attention, LoRA) go here since MLX's CPU float32 matmul is a reference BLAS.
pub fn matmul_f32(a: &Array, b: &Array) -> Result<Array> {
    let (ashape, bshape) = (a.shape(), b.shape());
    if bshape.len() == 2 && ashape.len() != 2 {
        let k = *ashape.last().unwrap_or(&0);
        let flat = crate::mlx::ops::reshape(a, &[-1, k])?; // [prod, K]
        let y = matmul_f32(&flat, b)?; // [prod, N]
        let mut out = ashape.clone();
        if let Some(last) = out.last_mut() {
            *last = bshape[1];
        }
        return crate::mlx::ops::reshape(&y, &out);
    }
    let s = current_stream();
    // SAFETY: valid handles and stream; the entry checks shapes and reports through its status.
    ffi::kernel_array("matmul_f32", |res| unsafe {
        ffi::mlxk_matmul_f32(res, a.raw(), b.raw(), s)
    })
}

/// The weighted cross-entropy per row, w·(logsumexp(z) − z[t]), of logits [M, V] against
/// targets [M] (integers) with weights [M]: [M] float32, differentiable with respect to the
/// logits (one fused pass each way on our kernel).
pub fn cross_entropy(logits: &Array, targets: &Array, weights: &Array) -> Result<Array> {
    let s = current_stream();
    // SAFETY: valid handles and stream; the entry checks shapes and types.
    ffi::kernel_array("cross_entropy", |res| unsafe {
        ffi::mlxk_cross_entropy(res, logits.raw(), targets.raw(), weights.raw(), s)
    })
}
