//! The blocks every architecture page is built from: grouped-query attention with RoPE (and
//! optional per-head Q/K norms) and the gated MLP, each with the RMSNorm of its input, on both
//! execution paths (our fused CPU kernels, MLX's own ops).

use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::mlx::fast::{self, AttentionMask};
use crate::mlx::kernels::{self, AttentionParams, Gate, QkNorm, RmsNormRef};
use crate::mlx::{ops, Array};
use crate::model::config::ModelConfig;
use crate::model::dump::Taps;
use crate::model::linear::{self, Linear};
use crate::model::lora::{self, LayerLora, Target};
use crate::model::rope::Rope;
use crate::model::weights::{Execution, WeightSource};

/// What a block's forward pass needs to know beside its weights: which layer it is, the
/// model's constants and the execution path.
pub struct Layer<'a> {
    /// Layer index (`il` in spans and the dump).
    pub index: usize,
    /// The model's shapes and constants.
    pub config: &'a ModelConfig,
    /// Whether the weights are GGUF blocks for our kernels or MLX arrays.
    pub execution: Execution,
    /// The layer's LoRA adapters, added to the projections they sit on.
    pub lora: Option<&'a LayerLora>,
    /// A differentiable pass for training ([`crate::finetune`]): no cache (each sequence is
    /// whole, from position 0), attention and norms on MLX ops, every projection its own
    /// kernel op (the fused multi-weight ops have no backward).
    pub train: bool,
}

impl Layer<'_> {
    /// Whether the projections of `targets` must run one by one (training, or an adapter on
    /// one of them).
    fn unfused(&self, targets: &[Target]) -> bool {
        self.train || self.lora.is_some_and(|l| l.has_any(targets))
    }
}

/// `lin`(x) with the layer's adapter on `t` added.
pub fn project(at: &Layer, t: Target, lin: &Linear, x: &Array) -> Result<Array> {
    lora::apply(at.lora, t, x, lin.forward(x)?)
}

/// residual + `lin`(x) with the layer's adapter on `t` added (the skip connection inside the
/// kernel op when it can be).
pub fn project_add(
    at: &Layer,
    t: Target,
    lin: &Linear,
    x: &Array,
    residual: &Array,
) -> Result<Array> {
    lora::apply(at.lora, t, x, lin.forward_add(x, residual)?)
}

/// One transformer block of some architecture: x [B, L, D] → [B, L, D], extending each
/// sequence's cache by L positions at this layer.
pub trait Block: Send {
    /// The block's forward pass with its skip connections.
    fn forward(
        &self,
        at: &Layer,
        x: &Array,
        caches: &mut [&mut KvCache],
        taps: &mut Taps,
    ) -> Result<Array>;
}

/// How a checkpoint stores the Q/K/V projections.
pub enum QkvLayout {
    /// `attn_q`, `attn_k`, `attn_v`, with biases when `bias` (Qwen2).
    Separate {
        /// Whether each projection has a bias vector.
        bias: bool,
    },
    /// One `attn_qkv` tensor, rows Q then K then V (Phi-3).
    Fused,
}

/// Per-head RMSNorm weights of Q and K, applied before RoPE (Gemma 3, Qwen3).
struct HeadNorms {
    q_norm: Array, // [hd], over each query head
    k_norm: Array, // [hd], over each key head
}

/// A layer's RoPE constants, with the periods MLX's `fast::rope` takes when they are not
/// derived from the base.
struct LayerRope {
    rope: Rope,
    periods: Option<Array>, // [hd/2]
}

impl LayerRope {
    /// x [B, H, L, hd] rotated at positions pos..pos+L by MLX's `fast::rope`.
    fn apply(&self, c: &ModelConfig, x: &Array, pos: i32) -> Result<Array> {
        let (hd, trad, scale) = (c.head_dim as i32, c.rope_traditional, self.rope.scale);
        match &self.periods {
            Some(periods) => fast::rope_with_periods(x, hd, trad, scale, pos, periods),
            None => fast::rope(x, hd, trad, self.rope.base, scale, pos),
        }
    }
}

/// y [B, L, H·hd] as heads [B, H, L, hd].
fn heads(y: &Array, h: i32, hd: i32) -> Result<Array> {
    let (b, l) = (y.dim(0)?, y.dim(1)?);
    let y = ops::reshape(y, &[b, l, h, hd])?; // [B, L, H, hd]
    ops::transpose(&y, &[0, 2, 1, 3]) // [B, H, L, hd]
}

/// Self-attention with its input norm: RMSNorm, Q/K/V projections, optional Q/K head norms,
/// RoPE, the cache write and causal (or sliding-window) grouped-query attention. The output
/// projection `wo` is the caller's, since architectures differ in what follows it.
pub struct Attention {
    norm: Array, // [D]
    wq: Linear,  // [Hq·hd, D] (+ bias for qwen2)
    wk: Linear,  // [Hkv·hd, D]
    wv: Linear,  // [Hkv·hd, D]
    /// Output projection [D, Hq·hd].
    pub wo: Linear,
    qk_norm: Option<HeadNorms>,
    rope: LayerRope,
}

impl Attention {
    /// Layer `i`'s attention tensors (`blk.{i}.attn_*`) in `layout`, with the Q/K head norms
    /// when `head_norms`, and the layer's RoPE (`freq_factors`: llama3's `rope_freqs.weight`).
    pub fn load(
        c: &ModelConfig,
        w: &dyn WeightSource,
        i: usize,
        layout: QkvLayout,
        head_norms: bool,
        freq_factors: Option<&[f32]>,
    ) -> Result<Attention> {
        let (d, q_dim, kv_dim) = (c.hidden, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let t = |s: &str| format!("blk.{i}.{s}");
        let (wq, wk, wv) = match layout {
            QkvLayout::Fused => {
                let parts = w.linear_split(&t("attn_qkv.weight"), &[q_dim, kv_dim, kv_dim], d)?;
                let [wq, wk, wv] = <[Linear; 3]>::try_from(parts)
                    .map_err(|_| Error::InvalidArgument("expected three projections".into()))?;
                (wq, wk, wv)
            }
            QkvLayout::Separate { bias } => {
                let proj = |name: &str, n: usize| {
                    let b = bias.then(|| t(&format!("{name}.bias")));
                    w.linear(&t(&format!("{name}.weight")), n, d, b.as_deref())
                };
                (
                    proj("attn_q", q_dim)?,
                    proj("attn_k", kv_dim)?,
                    proj("attn_v", kv_dim)?,
                )
            }
        };
        let qk_norm = match head_norms {
            true => Some(HeadNorms {
                q_norm: w.vector(&t("attn_q_norm.weight"), c.head_dim)?,
                k_norm: w.vector(&t("attn_k_norm.weight"), c.head_dim)?,
            }),
            false => None,
        };
        let rope = c.rope_of(i, freq_factors);
        Ok(Attention {
            norm: w.vector(&t("attn_norm.weight"), d)?,
            wq,
            wk,
            wv,
            wo: w.linear(&t("attn_output.weight"), d, q_dim, None)?,
            qk_norm,
            rope: LayerRope {
                periods: rope.periods()?,
                rope,
            },
        })
    }

    /// attn(RMSNorm(x)) before the output projection: x [B, L, D] → [B, L, Hq·hd], sequence b
    /// attending over its own cache from its own position. (The norm runs inside the
    /// projections' kernel op when the weights are GGUF blocks.)
    pub fn forward(
        &self,
        at: &Layer,
        x: &Array,
        caches: &mut [&mut KvCache],
        taps: &mut Taps,
    ) -> Result<Array> {
        let (c, il) = (at.config, at.index);
        let span = tracing::trace_span!("attn_norm", il).entered();
        let norm = RmsNormRef {
            weight: &self.norm,
            eps: c.rms_eps,
        };
        let (normed, qkv) = if at.unfused(&[Target::Q, Target::K, Target::V]) {
            let n = fast::rms_norm(x, norm.weight, norm.eps)?; // [B, L, D]
            let qkv = vec![
                project(at, Target::Q, &self.wq, &n)?,
                project(at, Target::K, &self.wk, &n)?,
                project(at, Target::V, &self.wv, &n)?,
            ];
            (Some(n), qkv)
        } else {
            linear::forward_all_normed(&[&self.wq, &self.wk, &self.wv], x, Some(norm))?
        };
        let [mut q, mut k, v] = <[Array; 3]>::try_from(qkv)
            .map_err(|_| Error::InvalidArgument("expected three projections".into()))?;
        // q [B, L, Hq·hd], k and v [B, L, Hkv·hd]
        if let Some(n) = &normed {
            taps.put("attn_norm", Some(il), n); // [B, L, D]
        }
        taps.put("Qcur", Some(il), &q);
        taps.put("Kcur", Some(il), &k);
        taps.put("Vcur", Some(il), &v);
        drop(span);
        let _span = tracing::trace_span!("kqv_out", il).entered();
        let qk_norm = self.qk_norm.as_ref().map(|n| QkNorm {
            q: &n.q_norm,
            k: &n.k_norm,
            eps: c.rms_eps,
        });
        let kqv = if at.train {
            if let Some(n) = qk_norm {
                q = head_norm(c, &q, n.q, c.n_heads)?; // [B, L, Hq·hd]
                k = head_norm(c, &k, n.k, c.n_kv_heads)?; // [B, L, Hkv·hd]
            }
            self.attend_whole(at, &q, &k, &v)?
        } else if at.execution == Execution::CpuKernel {
            self.attend_fused(at, &q, &k, &v, qk_norm, caches)?
        } else {
            if let Some(n) = qk_norm {
                q = head_norm(c, &q, n.q, c.n_heads)?; // [B, L, Hq·hd]
                k = head_norm(c, &k, n.k, c.n_kv_heads)?; // [B, L, Hkv·hd]
            }
            self.attend_mlx(at, &q, &k, &v, caches)?
        }; // [B, L, Hq·hd]
        taps.put("kqv_out", Some(il), &kqv);
        Ok(kqv)
    }

    /// Attention on CPU through our fused primitive (Q/K norm, RoPE, cache write and attention
    /// in one op per sequence): q [B, L, Hq·hd], k, v [B, L, Hkv·hd] → [B, L, Hq·hd].
    fn attend_fused(
        &self,
        at: &Layer,
        q: &Array,
        k: &Array,
        v: &Array,
        norm: Option<QkNorm>,
        caches: &mut [&mut KvCache],
    ) -> Result<Array> {
        let (c, rope) = (at.config, &self.rope.rope);
        let params = AttentionParams {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            scale: rope.logit_scale() / (c.head_dim as f32).sqrt(),
            rope_base: rope.base,
            rope_scale: rope.scale,
            rope_traditional: c.rope_traditional,
            rope_inv_freq: rope.inv_freq.as_deref(),
            window: c.window_of(at.index),
        };
        let l = q.dim(1)? as usize;
        let one = |t: &Array, s: usize| -> Result<Array> {
            let shape = t.shape();
            ops::slice(
                t,
                &[s as i32, 0, 0],
                &[s as i32 + 1, shape[1], shape[2]],
                &[1; 3],
            ) // [1, L, X]
        };
        let single = caches.len() == 1;
        let mut outputs = Vec::with_capacity(caches.len());
        for (s, cache) in caches.iter_mut().enumerate() {
            let (qs, ks, vs) = if single {
                (q.clone(), k.clone(), v.clone())
            } else {
                (one(q, s)?, one(k, s)?, one(v, s)?)
            };
            outputs.push(cache.update_with(at.index, l, |kc, vc, pos| {
                kernels::cached_attention(&qs, &ks, &vs, kc, vc, pos, &params, norm)
            })?); // [1, L, Hq·hd]
        }
        concat_batch(outputs)
    }

    /// Causal attention of whole sequences (positions 0..L, no cache), the differentiable path
    /// of training: MLX's RoPE and softmax, the two products on our float32 kernel (MLX's CPU
    /// matmul is a reference BLAS). q [B, L, Hq·hd], k, v [B, L, Hkv·hd] → [B, L, Hq·hd].
    fn attend_whole(&self, at: &Layer, q: &Array, k: &Array, v: &Array) -> Result<Array> {
        let (c, rope) = (at.config, &self.rope);
        let (b, l) = (q.dim(0)?, q.dim(1)?);
        let (hq, hkv, hd) = (c.n_heads as i32, c.n_kv_heads as i32, c.head_dim as i32);
        let g = hq / hkv;
        let q = rope.apply(c, &heads(q, hq, hd)?, 0)?; // [B, Hq, L, hd]
        let k = rope.apply(c, &heads(k, hkv, hd)?, 0)?; // [B, Hkv, L, hd]
        let v = heads(v, hkv, hd)?; // [B, Hkv, L, hd]

        // Query head h reads key head h / G: the G query heads of a key head as G·L rows.
        let q = ops::reshape(&q, &[b, hkv, g * l, hd])?; // [B, Hkv, G·L, hd]
        let kt = ops::transpose(&k, &[0, 1, 3, 2])?; // [B, Hkv, hd, L]
        let scale = rope.rope.logit_scale() / (c.head_dim as f32).sqrt();
        let scores = kernels::matmul_f32(&q, &kt)?; // [B, Hkv, G·L, L]
        let scores = ops::multiply(&scores, &Array::scalar(scale)?)?;
        let scores = ops::reshape(&scores, &[b, hkv, g, l, l])?; // [B, Hkv, G, L, L]
        let window = c.window_of(at.index).unwrap_or(usize::MAX);
        let mask: Vec<f32> = (0..l as usize)
            .flat_map(|i| {
                (0..l as usize).map(move |j| match j <= i && i - j < window {
                    true => 0.0,
                    false => f32::NEG_INFINITY,
                })
            })
            .collect();
        let scores = ops::add(&scores, &Array::from_slice(&mask, &[l, l])?)?;
        let probs = ops::softmax(&scores, -1, true)?; // [B, Hkv, G, L, L]
        let probs = ops::reshape(&probs, &[b, hkv, g * l, l])?; // [B, Hkv, G·L, L]
        let out = kernels::matmul_f32(&probs, &v)?; // [B, Hkv, G·L, hd]
        let out = ops::reshape(&out, &[b, hq, l, hd])?; // [B, Hq, L, hd]
        let out = ops::transpose(&out, &[0, 2, 1, 3])?; // [B, L, Hq, hd]
        ops::reshape(&out, &[b, l, hq * hd]) // [B, L, Hq·hd]
    }

    /// Attention with MLX's own ops (RoPE, cache `slice_update`, SDPA): the reference path and
    /// the one for GPU streams. q [B, L, Hq·hd], k, v [B, L, Hkv·hd] → [B, L, Hq·hd].
    fn attend_mlx(
        &self,
        at: &Layer,
        q: &Array,
        k: &Array,
        v: &Array,
        caches: &mut [&mut KvCache],
    ) -> Result<Array> {
        let (c, rope) = (at.config, &self.rope);
        let (b, l) = (q.dim(0)?, q.dim(1)?);
        let (hq, hkv, hd) = (c.n_heads as i32, c.n_kv_heads as i32, c.head_dim as i32);
        let q = heads(q, hq, hd)?; // [B, Hq, L, hd]
        let k = heads(k, hkv, hd)?; // [B, Hkv, L, hd]
        let v = heads(v, hkv, hd)?; // [B, Hkv, L, hd]
        let scale = rope.rope.logit_scale() / (c.head_dim as f32).sqrt();
        let window = c.window_of(at.index);
        let mut outputs = Vec::with_capacity(b as usize);
        for (s, cache) in caches.iter_mut().enumerate() {
            let one = |t: &Array, h: i32| {
                ops::slice(t, &[s as i32, 0, 0, 0], &[s as i32 + 1, h, l, hd], &[1; 4])
            };
            let pos = cache.len() as i32;
            let q = rope.apply(c, &one(&q, hq)?, pos)?; // [1, Hq, L, hd]
            let k = rope.apply(c, &one(&k, hkv)?, pos)?; // [1, Hkv, L, hd]
            let (keys, values) = cache.update(at.index, &k, &one(&v, hkv)?)?; // [1, Hkv, pos+L, hd]
            let out = match window {
                Some(w) if (pos + l) as usize > w => {
                    window_attention(&q, &keys, &values, scale, pos as usize, w)?
                }
                _ => {
                    let mask = if l > 1 {
                        AttentionMask::Causal
                    } else {
                        AttentionMask::None
                    };
                    fast::scaled_dot_product_attention(&q, &keys, &values, scale, mask)?
                }
            };
            outputs.push(out); // [1, Hq, L, hd]
        }
        let kqv = concat_batch(outputs)?; // [B, Hq, L, hd]
        let kqv = ops::transpose(&kqv, &[0, 2, 1, 3])?; // [B, L, Hq, hd]
        ops::reshape(&kqv, &[b, l, hq * hd]) // [B, L, Hq·hd]
    }
}

/// The gated MLP with its input norm: act(gate(n)) · up(n) for n = RMSNorm(x). The down
/// projection is the caller's, since architectures differ in what follows it.
pub struct Mlp {
    norm: Array,  // [D]
    gate: Linear, // [F, D]
    up: Linear,   // [F, D]
    /// Down projection [D, F].
    pub down: Linear,
    act: Gate,
}

impl Mlp {
    /// Layer `i`'s MLP tensors (`blk.{i}.ffn_*`) with activation `act`; `fused`: gate and up
    /// stored as one `ffn_up` tensor, gate rows first (Phi-3).
    pub fn load(
        c: &ModelConfig,
        w: &dyn WeightSource,
        i: usize,
        act: Gate,
        fused: bool,
    ) -> Result<Mlp> {
        let (d, f) = (c.hidden, c.ffn_hidden);
        let t = |s: &str| format!("blk.{i}.{s}");
        let (gate, up) = match fused {
            true => {
                let parts = w.linear_split(&t("ffn_up.weight"), &[f, f], d)?;
                let [gate, up] = <[Linear; 2]>::try_from(parts)
                    .map_err(|_| Error::InvalidArgument("expected gate and up".into()))?;
                (gate, up)
            }
            false => (
                w.linear(&t("ffn_gate.weight"), f, d, None)?,
                w.linear(&t("ffn_up.weight"), f, d, None)?,
            ),
        };
        Ok(Mlp {
            norm: w.vector(&t("ffn_norm.weight"), d)?,
            gate,
            up,
            down: w.linear(&t("ffn_down.weight"), d, f, None)?,
            act,
        })
    }

    /// act(gate(n)) · up(n) with n = RMSNorm(x): x [B, L, D] → [B, L, F]. (The norm runs
    /// inside the gated kernel op when the weights are GGUF blocks.)
    pub fn forward(&self, at: &Layer, x: &Array, taps: &mut Taps) -> Result<Array> {
        let il = at.index;
        let _span = tracing::trace_span!("ffn_norm", il).entered();
        let norm = RmsNormRef {
            weight: &self.norm,
            eps: at.config.rms_eps,
        };
        let (normed, par) = if at.unfused(&[Target::Gate, Target::Up]) {
            let n = fast::rms_norm(x, norm.weight, norm.eps)?; // [B, L, D]
            let g = project(at, Target::Gate, &self.gate, &n)?; // [B, L, F]
            let u = project(at, Target::Up, &self.up, &n)?; // [B, L, F]
            (Some(n), ops::multiply(&self.act.apply(&g)?, &u)?)
        } else {
            linear::gated_normed(self.act, &self.gate, &self.up, x, Some(norm))?
        }; // [B, L, F]
        if let Some(n) = &normed {
            taps.put("ffn_norm", Some(il), n); // [B, L, D]
        }
        let name = match self.act {
            Gate::GeluTanh => "ffn_geglu",
            Gate::Silu => "ffn_swiglu",
        };
        taps.put(name, Some(il), &par);
        Ok(par)
    }
}

/// RMSNorm of every head of y [B, L, H·hd] over its hd features (the Q/K norm on MLX ops).
fn head_norm(c: &ModelConfig, y: &Array, weight: &Array, heads: usize) -> Result<Array> {
    let (b, l, hd) = (y.dim(0)?, y.dim(1)?, c.head_dim as i32);
    let y = ops::reshape(y, &[b, l, heads as i32, hd])?; // [B, L, H, hd]
    let y = fast::rms_norm(&y, weight, c.rms_eps)?;
    ops::reshape(&y, &[b, l, heads as i32 * hd]) // [B, L, H·hd]
}

/// Per-sequence outputs [1, …] stacked along the batch axis into [B, …].
fn concat_batch(mut outputs: Vec<Array>) -> Result<Array> {
    match outputs.len() {
        1 => Ok(outputs.pop().unwrap_or_else(|| unreachable!())),
        _ => ops::concatenate(&outputs.iter().collect::<Vec<_>>(), 0),
    }
}

/// Sliding-window attention of q [1, Hq, L, hd] (positions pos..pos+L) over keys, values
/// [1, Hkv, pos+L, hd]: query pos+i sees keys pos+i−window+1 ..= pos+i. A single query reads
/// just its window of the cache; a block of queries gets an additive mask [L, pos+L].
fn window_attention(
    q: &Array,
    keys: &Array,
    values: &Array,
    scale: f32,
    pos: usize,
    window: usize,
) -> Result<Array> {
    let (l, total) = (q.dim(2)? as usize, keys.dim(2)? as usize);
    if l == 1 {
        let tail = |t: &Array| {
            let mut start = t.shape();
            let stop = start.clone();
            start.iter_mut().for_each(|s| *s = 0);
            start[2] = (total - window) as i32;
            ops::slice(t, &start, &stop, &[1; 4]) // [1, Hkv, window, hd]
        };
        let (k, v) = (tail(keys)?, tail(values)?);
        return fast::scaled_dot_product_attention(q, &k, &v, scale, AttentionMask::None);
    }
    let mask: Vec<f32> = (0..l)
        .flat_map(|i| {
            let p = pos + i;
            (0..total).map(move |j| {
                if j <= p && p - j < window {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    let mask = Array::from_slice(&mask, &[l as i32, total as i32])?; // [L, pos+L]
    fast::scaled_dot_product_attention(q, keys, values, scale, AttentionMask::Array(&mask))
}
