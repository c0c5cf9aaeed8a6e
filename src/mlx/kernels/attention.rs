//! Attention of one sequence over its KV cache, fused with RoPE, the cache write and Gemma's
//! Q/K norm (our `CachedAttention` primitive, `kernels/attention.cpp`).

use super::ffi::{self, mlxk_cached_attention};
use crate::error::Result;
use crate::mlx::handler::null_array;
use crate::mlx::stream::current_stream;
use crate::mlx::Array;

/// Shapes and RoPE constants of [`cached_attention`].
#[derive(Clone, Copy, Debug)]
pub struct AttentionParams<'a> {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (divides `n_heads`).
    pub n_kv_heads: usize,
    /// Elements per head (even).
    pub head_dim: usize,
    /// Softmax scale, usually 1/√head_dim.
    pub scale: f32,
    /// RoPE base θ.
    pub rope_base: f32,
    /// Position multiplier of the RoPE angle (1.0 = plain RoPE).
    pub rope_scale: f32,
    /// RoPE rotates adjacent pairs (2j, 2j+1) when true, halves (j, j+hd/2) when false.
    pub rope_traditional: bool,
    /// Per-pair RoPE frequencies [hd/2] replacing `rope_base`^(−2j/hd) (llama3, YaRN); the
    /// angle of pair j at position t is t · `rope_scale` · `rope_inv_freq[j]`.
    pub rope_inv_freq: Option<&'a [f32]>,
    /// Sliding-window attention: a query sees only the last `window` keys, itself included.
    pub window: Option<usize>,
}

/// Gemma's Q/K norm, done inside [`cached_attention`]: every head of q and k RMS-normalised
/// over its `head_dim` features and scaled by `q` / `k` (float32 [head_dim]) before RoPE.
#[derive(Clone, Copy, Debug)]
pub struct QkNorm<'a> {
    /// Weights of the query heads' norm.
    pub q: &'a Array,
    /// Weights of the key heads' norm.
    pub k: &'a Array,
    /// RMSNorm epsilon.
    pub eps: f32,
}

/// Attention of one sequence over its KV cache, fused with RoPE and the cache write (our
/// `CachedAttention` primitive; CPU streams). q [.., L, Hq·hd], k and v [.., L, Hkv·hd] are the
/// new rows at positions `pos..pos+L` (RMS-normalised per head first with `norm`); `k_cache`,
/// `v_cache` [1, Hkv, capacity, hd]. Returns the
/// attention output [.., L, Hq·hd] and the updated caches. The caches are updated in place when
/// the caller holds no other reference to them: pass the only handles and keep the returned
/// ones, as [`crate::kv_cache::KvCache`] does.
#[allow(clippy::too_many_arguments)] // the primitive's inputs, one by one
pub fn cached_attention(
    q: &Array,
    k: &Array,
    v: &Array,
    k_cache: &Array,
    v_cache: &Array,
    pos: usize,
    p: &AttentionParams,
    norm: Option<QkNorm>,
) -> Result<(Array, Array, Array)> {
    let s = current_stream();
    let inv_freq = match p.rope_inv_freq {
        Some(f) if f.len() != p.head_dim / 2 => {
            return Err(crate::error::Error::InvalidArgument(format!(
                "cached_attention: {} RoPE frequencies for head dimension {}",
                f.len(),
                p.head_dim
            )))
        }
        Some(f) => f.as_ptr(),
        None => std::ptr::null(),
    };
    let (q_norm, k_norm, eps) = match norm {
        Some(n) => (n.q.raw(), n.k.raw(), n.eps),
        None => (null_array(), null_array(), 0.0),
    };
    let params = ffi::mlxk_attention_params {
        n_heads: p.n_heads as i32,
        n_kv_heads: p.n_kv_heads as i32,
        head_dim: p.head_dim as i32,
        rope_traditional: p.rope_traditional.into(),
        pos: pos as i64,
        window: p.window.unwrap_or(0) as i64,
        scale: p.scale,
        rope_base: p.rope_base,
        rope_scale: p.rope_scale,
        norm_eps: eps,
        rope_inv_freq: inv_freq,
    };
    // SAFETY: valid handles and stream; `params` outlives the call, and its `rope_inv_freq` is
    // null or points at head_dim/2 floats (checked above) that the entry copies; the C entry
    // validates shapes and dtypes and reports failures through its status, with the message in
    // `mlxk_last_error`.
    let [out, kc, vc] = ffi::kernel_arrays("cached_attention", |[out, kc, vc]| unsafe {
        mlxk_cached_attention(
            out,
            kc,
            vc,
            q.raw(),
            k.raw(),
            v.raw(),
            k_cache.raw(),
            v_cache.raw(),
            q_norm,
            k_norm,
            &params,
            s,
        )
    })?;
    Ok((out, kc, vc))
}
