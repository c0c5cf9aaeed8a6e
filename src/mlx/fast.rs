//! MLX's fused transformer ops (`mlx::core::fast`).

use crate::error::Result;
use crate::mlx::handler::{null_array, try_array};
use crate::mlx::stream::current_stream;
use crate::mlx::Array;
use std::ffi::CString;

/// RMSNorm over the last axis: x / sqrt(mean(x²) + eps) · weight.
pub fn rms_norm(x: &Array, weight: &Array, eps: f32) -> Result<Array> {
    let s = current_stream();
    // SAFETY: valid handles and stream.
    try_array(|res| unsafe { mlx_sys::mlx_fast_rms_norm(res, x.raw(), weight.raw(), eps, s) })
}

/// Rotary position embedding of the first `dims` features of x [B, H, L, D], positions
/// `offset..offset+L`. `traditional` rotates adjacent pairs (x₂ᵢ, x₂ᵢ₊₁), otherwise the
/// halves (xᵢ, xᵢ₊D/2) ("NeoX" style).
pub fn rope(
    x: &Array,
    dims: i32,
    traditional: bool,
    base: f32,
    scale: f32,
    offset: i32,
) -> Result<Array> {
    fast_rope(x, dims, traditional, Some(base), scale, offset, None)
}

/// [`rope`] with explicit per-pair periods instead of a base: pair j of position t turns by
/// t · `scale` / `periods[j]` (`periods` [dims/2] float32; the reciprocals of the inverse
/// frequencies). The scaled RoPE variants (llama3, YaRN) are such period tables.
pub fn rope_with_periods(
    x: &Array,
    dims: i32,
    traditional: bool,
    scale: f32,
    offset: i32,
    periods: &Array,
) -> Result<Array> {
    fast_rope(x, dims, traditional, None, scale, offset, Some(periods))
}

/// `mlx_fast_rope` with either a base or a period table (MLX requires exactly one).
fn fast_rope(
    x: &Array,
    dims: i32,
    traditional: bool,
    base: Option<f32>,
    scale: f32,
    offset: i32,
    periods: Option<&Array>,
) -> Result<Array> {
    let s = current_stream();
    let base = mlx_sys::mlx_optional_float {
        value: base.unwrap_or(0.0),
        has_value: base.is_some(),
    };
    let periods = periods.map_or_else(null_array, Array::raw);
    // SAFETY: valid handles and stream; MLX checks the shape of `periods` (a null one means
    // "derive from base").
    try_array(|res| unsafe {
        mlx_sys::mlx_fast_rope(
            res,
            x.raw(),
            dims,
            traditional,
            base,
            scale,
            offset,
            periods,
            s,
        )
    })
}

/// How attention is masked.
#[derive(Clone, Copy, Debug)]
pub enum AttentionMask<'a> {
    /// Every query sees every key.
    None,
    /// Query i sees keys ≤ i + (L_k − L_q) (bottom-right aligned causal mask).
    Causal,
    /// An additive float mask or a boolean mask broadcastable to [B, H, L_q, L_k].
    Array(&'a Array),
}

/// softmax(q·kᵀ·scale + mask)·v for q [B, Hq, Lq, D] and k, v [B, Hkv, Lk, D] (grouped-query
/// attention when Hq is a multiple of Hkv).
pub fn scaled_dot_product_attention(
    q: &Array,
    k: &Array,
    v: &Array,
    scale: f32,
    mask: AttentionMask,
) -> Result<Array> {
    let s = current_stream();
    let (mode, mask_arr) = match mask {
        AttentionMask::None => ("", null_array()),
        AttentionMask::Causal => ("causal", null_array()),
        AttentionMask::Array(m) => ("array", m.raw()),
    };
    let mode = CString::new(mode).unwrap_or_default();
    // SAFETY: valid handles and stream; null arrays stand for "absent" in mlx-c.
    try_array(|res| unsafe {
        mlx_sys::mlx_fast_scaled_dot_product_attention(
            res,
            q.raw(),
            k.raw(),
            v.raw(),
            scale,
            mode.as_ptr(),
            mask_arr,
            null_array(),
            false,
            s,
        )
    })
}
