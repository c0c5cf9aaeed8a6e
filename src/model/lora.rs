//! LoRA adapters on a model's projections: y = W·x + (α/r)·B·(A·x) beside a frozen base weight
//! W [N, K] (GGUF blocks, dense or affine), with A [r, K] and B [N, r] in float32. The forward
//! pass asks [`LayerLora::delta`] for the low-rank path of each projection it runs; the
//! adapters are trained by [`crate::finetune`] and loaded for inference with
//! [`crate::finetune::checkpoint::load_adapters`].

use crate::error::{Error, Result};
use crate::mlx::{ops, Array};
use crate::model::config::ModelConfig;

/// A projection an adapter can sit on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// Attention query projection.
    Q,
    /// Attention key projection.
    K,
    /// Attention value projection.
    V,
    /// Attention output projection.
    O,
    /// MLP gate projection.
    Gate,
    /// MLP up projection.
    Up,
    /// MLP down projection.
    Down,
}

impl Target {
    /// Every target, in the order adapters are stored.
    pub const ALL: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    /// The short name used on the command line (`q`, `k`, …, `down`).
    pub fn name(self) -> &'static str {
        match self {
            Target::Q => "q",
            Target::K => "k",
            Target::V => "v",
            Target::O => "o",
            Target::Gate => "gate",
            Target::Up => "up",
            Target::Down => "down",
        }
    }

    /// The target with short name `s`.
    pub fn parse(s: &str) -> Result<Target> {
        Target::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown LoRA target {s:?}: expected q, k, v, o, gate, up or down"
                ))
            })
    }

    /// The PEFT module path of this projection in layer `i` (`self_attn.q_proj`, `mlp.up_proj`).
    pub fn module(self, i: usize) -> String {
        let m = match self {
            Target::Q => "self_attn.q_proj",
            Target::K => "self_attn.k_proj",
            Target::V => "self_attn.v_proj",
            Target::O => "self_attn.o_proj",
            Target::Gate => "mlp.gate_proj",
            Target::Up => "mlp.up_proj",
            Target::Down => "mlp.down_proj",
        };
        format!("base_model.model.model.layers.{i}.{m}")
    }

    /// The projection's (N, K) = (outputs, inputs) in a model of config `c`.
    pub fn shape(self, c: &ModelConfig) -> (usize, usize) {
        let (d, q, kv, f) = (
            c.hidden,
            c.n_heads * c.head_dim,
            c.n_kv_heads * c.head_dim,
            c.ffn_hidden,
        );
        match self {
            Target::Q => (q, d),
            Target::K | Target::V => (kv, d),
            Target::O => (d, q),
            Target::Gate | Target::Up => (f, d),
            Target::Down => (d, f),
        }
    }

    fn index(self) -> usize {
        Target::ALL.iter().position(|t| *t == self).unwrap_or(0)
    }
}

/// One adapter: A [r, K] and B [N, r] (float32).
#[derive(Clone)]
pub struct LoraPair {
    /// Down-projection to the rank, [r, K].
    pub a: Array,
    /// Up-projection from the rank, [N, r] (zero at initialisation).
    pub b: Array,
}

/// The adapters of one layer, with the scale α/r they are applied with.
#[derive(Clone, Default)]
pub struct LayerLora {
    pairs: [Option<LoraPair>; 7],
    scale: f32,
}

impl LayerLora {
    /// A layer's adapters from (target, pair) entries, applied with `scale`.
    pub fn new(pairs: Vec<(Target, LoraPair)>, scale: f32) -> LayerLora {
        let mut layer = LayerLora {
            scale,
            ..LayerLora::default()
        };
        for (t, p) in pairs {
            layer.pairs[t.index()] = Some(p);
        }
        layer
    }

    /// The adapter on `t`, if any.
    pub fn get(&self, t: Target) -> Option<&LoraPair> {
        self.pairs[t.index()].as_ref()
    }

    /// Whether any of `targets` has an adapter.
    pub fn has_any(&self, targets: &[Target]) -> bool {
        targets.iter().any(|t| self.get(*t).is_some())
    }

    /// The low-rank path of `t` for x [.., K]: scale·(x·Aᵀ)·Bᵀ [.., N], or `None` without an
    /// adapter there.
    pub fn delta(&self, t: Target, x: &Array) -> Result<Option<Array>> {
        let Some(p) = self.get(t) else {
            return Ok(None);
        };
        let xa = dense(x, &ops::transpose(&p.a, &[1, 0])?)?; // [.., r]
        let xab = dense(&xa, &ops::transpose(&p.b, &[1, 0])?)?; // [.., N]
        Ok(Some(ops::multiply(&xab, &Array::scalar(self.scale)?)?))
    }
}

/// x [.., K] · w [K, N]: our float32 kernel on the CPU, MLX's matmul elsewhere.
fn dense(x: &Array, w: &Array) -> Result<Array> {
    match crate::mlx::current_device() {
        crate::mlx::Device::Cpu => crate::mlx::kernels::matmul_f32(x, w),
        _ => ops::matmul(x, w),
    }
}

/// `y + delta` when the layer has an adapter on `t` for the projection's input `x`, else `y`.
pub fn apply(lora: Option<&LayerLora>, t: Target, x: &Array, y: Array) -> Result<Array> {
    match lora.map(|l| l.delta(t, x)).transpose()?.flatten() {
        Some(d) => ops::add(&y, &d),
        None => Ok(y),
    }
}

/// The adapters of a whole model: one [`LayerLora`] per layer (empty where none).
#[derive(Clone)]
pub struct Adapters {
    /// Per layer, in order.
    pub layers: Vec<LayerLora>,
}

impl Adapters {
    /// The adapters of layer `i`, if it has any.
    pub fn layer(&self, i: usize) -> Option<&LayerLora> {
        self.layers.get(i)
    }
}
