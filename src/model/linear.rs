//! [`Linear`]: the one seam every projection goes through. It owns the weight in the form the
//! chosen execution needs; the model code never knows which one runs.

use crate::error::Result;
use crate::mlx::fast;
use crate::mlx::kernels::{self, BlockLayout, Gate, GgufWeightRef, RmsNormRef, MAX_FUSED_WEIGHTS};
use crate::mlx::ops::{self, QuantSpec};
use crate::mlx::Array;

/// How a linear layer's weight is held and multiplied.
pub enum LinearWeight {
    /// Dense float weight W [N, K]; y = x · Wᵀ with MLX's `matmul`.
    Dense { w: Array },
    /// GGUF blocks, [N, row_bytes] uint8, as stored in the file or repacked at load
    /// (`layout`), multiplied by our CPU kernel (`kernels/`).
    GgufBlocks {
        blocks: Array,
        layout: BlockLayout,
        n: usize,
        k: usize,
    },
    /// MLX affine-quantized weight (the GPU path): packed [N, K·bits/32] uint32 with per-group
    /// scales and biases, multiplied by MLX's `quantized_matmul`.
    Affine {
        w: Array,
        scales: Array,
        biases: Array,
        spec: QuantSpec,
    },
}

/// y = x · Wᵀ (+ b) for x [.., K] → y [.., N].
pub struct Linear {
    /// The weight, in the execution's layout.
    pub weight: LinearWeight,
    /// Optional bias [N].
    pub bias: Option<Array>,
}

impl Linear {
    /// Applies the layer to x [.., K], giving [.., N].
    pub fn forward(&self, x: &Array) -> Result<Array> {
        let _span = tracing::trace_span!("linear").entered();
        let y = match &self.weight {
            LinearWeight::Dense { w } => ops::matmul(x, &ops::transpose(w, &[1, 0])?)?,
            LinearWeight::GgufBlocks {
                blocks,
                layout,
                n,
                k,
            } => kernels::gguf_matmul(x, blocks, *layout, *n, *k)?,
            LinearWeight::Affine {
                w,
                scales,
                biases,
                spec,
            } => ops::quantized_matmul(x, w, scales, biases, *spec)?,
        };
        match &self.bias {
            Some(b) => ops::add(&y, b),
            None => Ok(y),
        }
    }

    /// x · Wᵀ (+ b) + residual for x [.., K] and residual [.., N]: the skip connection in the
    /// same kernel op when the weight is GGUF blocks without bias, else a separate add.
    pub fn forward_add(&self, x: &Array, residual: &Array) -> Result<Array> {
        match (&self.weight, &self.bias) {
            (
                LinearWeight::GgufBlocks {
                    blocks,
                    layout,
                    n,
                    k,
                },
                None,
            ) => kernels::gguf_matmul_add(x, blocks, *layout, *n, *k, residual),
            _ => ops::add(residual, &self.forward(x)?),
        }
    }

    /// The weight as our kernel's operand when it is GGUF blocks (with the bias), with K.
    fn gguf_operand(&self) -> Option<(GgufWeightRef<'_>, usize)> {
        match &self.weight {
            LinearWeight::GgufBlocks {
                blocks,
                layout,
                n,
                k,
            } => {
                let w = GgufWeightRef::new(blocks, *layout, *n);
                Some((self.bias.as_ref().map_or(w, |b| w.with_bias(b)), *k))
            }
            _ => None,
        }
    }
}

/// Several layers applied to the same input, x [.., K] or RMSNorm(x) with `norm`: one fused
/// kernel call (norm, one activation quantization, one pass of the thread pool) when all are
/// GGUF blocks, else MLX's `rms_norm` and the layers one by one.
pub fn forward_all(layers: &[&Linear], x: &Array, norm: Option<RmsNormRef>) -> Result<Vec<Array>> {
    Ok(forward_all_normed(layers, x, norm)?.1)
}

/// [`forward_all`], also giving RMSNorm(x) when it is an array of its own: `None` without
/// `norm` or when the norm runs inside the fused kernel op (for the per-layer dump).
pub fn forward_all_normed(
    layers: &[&Linear],
    x: &Array,
    norm: Option<RmsNormRef>,
) -> Result<(Option<Array>, Vec<Array>)> {
    if let Some((operands, k)) = gguf_operands(layers) {
        return Ok((None, kernels::gguf_matmul_multi(x, norm, &operands, k)?));
    }
    let n = normed(x, norm)?;
    let outputs = layers
        .iter()
        .map(|l| l.forward(&n))
        .collect::<Result<_>>()?;
    Ok((norm.map(|_| n), outputs))
}

/// The gated product act(x·Gᵀ) · (x·Uᵀ) of SwiGLU (`Gate::Silu`) or GEGLU (`Gate::GeluTanh`)
/// for x [.., K] (or RMSNorm(x) with `norm`) → [.., F]: one fused kernel call when both are
/// GGUF blocks without bias, else MLX ops.
pub fn gated(
    act: Gate,
    gate: &Linear,
    up: &Linear,
    x: &Array,
    norm: Option<RmsNormRef>,
) -> Result<Array> {
    Ok(gated_normed(act, gate, up, x, norm)?.1)
}

/// [`gated`], also giving RMSNorm(x) when it is an array of its own (as [`forward_all_normed`]).
pub fn gated_normed(
    act: Gate,
    gate: &Linear,
    up: &Linear,
    x: &Array,
    norm: Option<RmsNormRef>,
) -> Result<(Option<Array>, Array)> {
    if let Some((ops, k)) = gguf_operands(&[gate, up]) {
        if ops.iter().all(|w| w.bias.is_none()) {
            return Ok((None, kernels::gguf_gated(x, norm, ops[0], ops[1], k, act)?));
        }
    }
    let n = normed(x, norm)?;
    let product = ops::multiply(&act.apply(&gate.forward(&n)?)?, &up.forward(&n)?)?;
    Ok((norm.map(|_| n), product))
}

/// x, or MLX's RMSNorm of x.
fn normed(x: &Array, norm: Option<RmsNormRef>) -> Result<Array> {
    match norm {
        Some(n) => fast::rms_norm(x, n.weight, n.eps),
        None => Ok(x.clone()),
    }
}

/// The kernel operands of `layers` when every one is GGUF blocks with the same K.
fn gguf_operands<'a>(layers: &[&'a Linear]) -> Option<(Vec<GgufWeightRef<'a>>, usize)> {
    if layers.is_empty() || layers.len() > MAX_FUSED_WEIGHTS {
        return None;
    }
    let mut k0 = None;
    let mut operands = Vec::with_capacity(layers.len());
    for layer in layers {
        let (w, k) = layer.gguf_operand()?;
        if *k0.get_or_insert(k) != k {
            return None;
        }
        operands.push(w);
    }
    Some((operands, k0?))
}
