//! Several projections of one input in one kernel call (our `GgufQMatmulMulti` primitive):
//! optionally of RMSNorm(x), optionally with a gated (SwiGLU / GEGLU) epilogue.

use super::ffi::{self, mlxk_gguf_qmatmul_multi_norm};
use super::layout::BlockLayout;
use crate::error::{Error, Result};
use crate::mlx::handler::{install_error_handler, null_array};
use crate::mlx::stream::current_stream;
use crate::mlx::{ops, Array};
use std::ffi::c_int;

/// Most weights one fused call ([`gguf_matmul_multi`]) takes.
pub const MAX_FUSED_WEIGHTS: usize = ffi::MLXK_MAX_MULTI_WEIGHTS as usize;

/// The activation of a gated feed-forward product act(x·Gᵀ) ⊙ (x·Uᵀ).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// SiLU: g / (1 + e^(−g)) (SwiGLU: Llama, Qwen).
    Silu,
    /// GELU, tanh approximation: g/2 · (1 + tanh(√(2/π)·(g + 0.044715·g³))) (GEGLU: Gemma).
    GeluTanh,
}

impl Gate {
    /// `MLXK_EPILOGUE_SWIGLU` / `MLXK_EPILOGUE_GEGLU` of the kernel header.
    fn epilogue(self) -> c_int {
        match self {
            Gate::Silu => ffi::MLXK_EPILOGUE_SWIGLU,
            Gate::GeluTanh => ffi::MLXK_EPILOGUE_GEGLU,
        }
    }

    /// The activation with MLX ops (the path without GGUF kernels).
    pub fn apply(self, g: &Array) -> Result<Array> {
        match self {
            Gate::Silu => ops::silu(g),
            Gate::GeluTanh => ops::gelu_tanh(g),
        }
    }
}

/// One weight of a fused projection: `n` rows of GGUF blocks of type `ty` held in `blocks`
/// (uint8 `[n, row_bytes]`, as for [`super::gguf_matmul`]) and an optional bias of `n`
/// elements (float32, float16 or bfloat16; any shape with `n` elements).
#[derive(Clone, Copy, Debug)]
pub struct GgufWeightRef<'a> {
    /// The raw GGUF blocks.
    pub blocks: &'a Array,
    /// Their type and layout.
    pub layout: BlockLayout,
    /// Output rows (the weight's N).
    pub n: usize,
    /// Added to every output row, if present.
    pub bias: Option<&'a Array>,
}

impl<'a> GgufWeightRef<'a> {
    /// A weight without bias.
    pub fn new(blocks: &'a Array, layout: impl Into<BlockLayout>, n: usize) -> Self {
        GgufWeightRef {
            blocks,
            layout: layout.into(),
            n,
            bias: None,
        }
    }

    /// The same weight with `bias` added to its output.
    pub fn with_bias(self, bias: &'a Array) -> Self {
        GgufWeightRef {
            bias: Some(bias),
            ..self
        }
    }
}

/// An RMSNorm applied to x inside a fused projection ([`gguf_matmul_multi`],
/// [`gguf_swiglu`]): x · weight / √(mean(x²) + eps), row by row, as MLX's `rms_norm`.
#[derive(Clone, Copy, Debug)]
pub struct RmsNormRef<'a> {
    /// The norm's weight, K elements (float32, float16 or bfloat16).
    pub weight: &'a Array,
    /// Added to the mean square.
    pub eps: f32,
}

/// Several projections of the same `x` [.., M, K] in one kernel call: for each weight,
/// x · Wᵀ (+ bias) as [.., M, N] float32, in the order of `weights` (1 to
/// [`MAX_FUSED_WEIGHTS`] of them, any mix of types). The activations are quantized once per
/// format and the rows of all weights are split over one parallel run; the results are
/// siblings of one lazy MLX op on the CPU stream (evaluating one computes all).
/// With `norm`, the projections are of RMSNorm(x), computed in the same op.
pub fn gguf_matmul_multi(
    x: &Array,
    norm: Option<RmsNormRef>,
    weights: &[GgufWeightRef],
    k: usize,
) -> Result<Vec<Array>> {
    let op = "gguf_matmul_multi";
    qmatmul_multi(
        op,
        x,
        norm,
        weights,
        k,
        ffi::MLXK_EPILOGUE_NONE,
        weights.len(),
    )
}

/// The SwiGLU feed-forward input in one kernel call: silu(x · Gateᵀ) ⊙ (x · Upᵀ) as
/// [.., M, N] float32, with silu(g) = g / (1 + e^(−g)). `gate` and `up` must have the same
/// `n` and no bias. With `norm`, of RMSNorm(x), computed in the same op.
pub fn gguf_swiglu(
    x: &Array,
    norm: Option<RmsNormRef>,
    gate: GgufWeightRef,
    up: GgufWeightRef,
    k: usize,
) -> Result<Array> {
    gguf_gated(x, norm, gate, up, k, Gate::Silu)
}

/// [`gguf_swiglu`] with the gate's activation chosen: act(x · Gateᵀ) ⊙ (x · Upᵀ).
pub fn gguf_gated(
    x: &Array,
    norm: Option<RmsNormRef>,
    gate: GgufWeightRef,
    up: GgufWeightRef,
    k: usize,
    act: Gate,
) -> Result<Array> {
    let op = "gguf_gated";
    let mut out = qmatmul_multi(op, x, norm, &[gate, up], k, act.epilogue(), 1)?;
    Ok(out.remove(0))
}

/// The fused primitive, returning the `outputs` arrays the epilogue produces (`op` names the
/// entry called).
fn qmatmul_multi(
    op: &str,
    x: &Array,
    norm: Option<RmsNormRef>,
    weights: &[GgufWeightRef],
    k: usize,
    epilogue: c_int,
    outputs: usize,
) -> Result<Vec<Array>> {
    install_error_handler();
    let count = c_int::try_from(weights.len()).map_err(|_| {
        Error::InvalidArgument(format!("{op}: {} weights in one call", weights.len()))
    })?;
    let blocks: Vec<mlx_sys::mlx_array> = weights.iter().map(|w| w.blocks.raw()).collect();
    let types: Vec<c_int> = weights.iter().map(|w| w.layout.id()).collect();
    let ns: Vec<i64> = weights.iter().map(|w| w.n as i64).collect();
    let biases: Vec<mlx_sys::mlx_array> = weights
        .iter()
        .map(|w| w.bias.map_or_else(null_array, Array::raw))
        .collect();
    let biases_ptr = if weights.iter().any(|w| w.bias.is_some()) {
        biases.as_ptr()
    } else {
        std::ptr::null()
    };
    // Owned from the start, so every handle is freed on every path (freeing an empty handle
    // is a no-op).
    let mut out: Vec<Array> = (0..outputs)
        // SAFETY: `mlx_array_new` returns an empty handle that we own.
        .map(|_| unsafe { Array::from_raw(mlx_sys::mlx_array_new()) })
        .collect();
    let s = current_stream();
    // SAFETY: `Array` is a `repr(transparent)` wrapper of `mlx_array`, so `out` is `outputs`
    // consecutive handles, as many as the call fills (one per weight, or one for SWIGLU; none
    // on error); `blocks`, `types`, `ns` and `biases` hold `count` entries each and outlive
    // the call; all handles are valid. The C entry validates everything else and reports
    // failures through its status, with the message in `mlxk_last_error`.
    let code = unsafe {
        mlxk_gguf_qmatmul_multi_norm(
            out.as_mut_ptr() as *mut mlx_sys::mlx_array,
            x.raw(),
            norm.map_or_else(null_array, |n| n.weight.raw()),
            norm.map_or(0.0, |n| n.eps),
            blocks.as_ptr(),
            types.as_ptr(),
            ns.as_ptr(),
            biases_ptr,
            count,
            k as i64,
            epilogue,
            s,
        )
    };
    ffi::check(op, code)?;
    Ok(out)
}
