//! The Llama-family transformer (Llama 1/2/3, TinyLlama, Qwen2, Qwen3, Phi-3, Gemma 3): weights, then the
//! forward pass. Names of intermediates follow llama.cpp (`attn_norm`, `ffn_inp`, `l_out`, …),
//! in the dump (`MLX_ENGINE_DUMP`, see [`crate::model::dump`]) and in `tracing` spans.
//!
//! Spans (level `trace`, each with the layer index as field `il`): `block` around a layer and,
//! inside it, one per step, named for the intermediate the step is about: `attn_norm` (the
//! norm and the Q/K/V projections, one fused op on the kernel path), `kqv_out` (Q/K norm, RoPE,
//! cache write, attention), `ffn_inp` (output projection and skip connection), `ffn_norm` (the
//! norm and the gate/up product) and `l_out` (down projection and skip connection); outside
//! the blocks `inp_embd`, `result_norm` and `result_output`. MLX is lazy, so a span times the
//! building of its step's graph (and the host-side embedding lookup), not the kernels, which
//! run when the caller evaluates the logits.

use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::mlx::fast::{self, AttentionMask};
use crate::mlx::kernels::{self, AttentionParams, Gate, QkNorm, RmsNormRef};
use crate::mlx::{ops, Array};
use crate::model::config::ModelConfig;
use crate::model::dump::Taps;
use crate::model::linear::{self, Linear};
use crate::model::rope::Rope;
use crate::model::weights::{Embedding, Execution, WeightSource};

/// One transformer block's weights.
pub struct Block {
    attn_norm: Array, // [D]
    wq: Linear,       // [Hq·hd, D] (+ bias for qwen2)
    wk: Linear,       // [Hkv·hd, D]
    wv: Linear,       // [Hkv·hd, D]
    wo: Linear,       // [D, Hq·hd]
    ffn_norm: Array,  // [D]
    w_gate: Linear,   // [F, D]
    w_up: Linear,     // [F, D]
    w_down: Linear,   // [D, F]
    qk_norm: Option<HeadNorms>,
    gemma: Option<GemmaNorms>,
    rope: LayerRope,
}

/// Per-head RMSNorm weights of Q and K, applied before RoPE (Gemma 3, Qwen3).
struct HeadNorms {
    q_norm: Array, // [hd], over each query head
    k_norm: Array, // [hd], over each key head
}

/// The post-norms of a Gemma 3 block (their weights already hold Gemma's +1, as GGUF stores them).
struct GemmaNorms {
    post_attn_norm: Array, // [D], on the attention output before the skip connection
    post_ffw_norm: Array,  // [D], on the MLP output before the skip connection
}

/// A layer's RoPE constants, with the periods MLX's `fast::rope` takes when they are not
/// derived from the base.
struct LayerRope {
    rope: Rope,
    periods: Option<Array>, // [hd/2]
}

/// A loaded Llama-family model: config and weights (the KV cache is the caller's).
pub struct Llama {
    /// Shapes and constants.
    pub config: ModelConfig,
    embed: Embedding, // [V, D], read in place
    blocks: Vec<Block>,
    output_norm: Array, // [D]
    output: Linear,     // [V, D] (the embedding itself when tied)
    execution: Execution,
}

impl Llama {
    /// Loads every tensor from `w`, checking shapes against `config`.
    pub fn load(config: ModelConfig, w: &dyn WeightSource) -> Result<Llama> {
        let c = &config;
        let (d, q_dim, kv_dim) = (c.hidden, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let bias = |name: String| c.arch.has_qkv_bias().then_some(name);
        let freq_factors = match c.rope_freqs_tensor {
            true => Some(
                w.vector("rope_freqs.weight", c.head_dim / 2)?
                    .to_vec::<f32>()?,
            ),
            false => None,
        };
        let mut blocks = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let t = |s: &str| format!("blk.{i}.{s}");
            let (wq, wk, wv) = if c.arch.has_fused_projections() {
                let [wq, wk, wv] =
                    split3(w.linear_split(&t("attn_qkv.weight"), &[q_dim, kv_dim, kv_dim], d)?)?;
                (wq, wk, wv)
            } else {
                let proj = |name: &str, n: usize| {
                    let b = bias(t(&format!("{name}.bias")));
                    w.linear(&t(&format!("{name}.weight")), n, d, b.as_deref())
                };
                (
                    proj("attn_q", q_dim)?,
                    proj("attn_k", kv_dim)?,
                    proj("attn_v", kv_dim)?,
                )
            };
            let wo = w.linear(&t("attn_output.weight"), d, q_dim, None)?;
            let ffn_norm = w.vector(&t("ffn_norm.weight"), d)?;
            let (w_gate, w_up) = if c.arch.has_fused_projections() {
                let mut gu = w.linear_split(&t("ffn_up.weight"), &[c.ffn_hidden; 2], d)?;
                let up = gu
                    .pop()
                    .ok_or_else(|| Error::InvalidArgument("gate/up".into()))?;
                let gate = gu
                    .pop()
                    .ok_or_else(|| Error::InvalidArgument("gate/up".into()))?;
                (gate, up)
            } else {
                (
                    w.linear(&t("ffn_gate.weight"), c.ffn_hidden, d, None)?,
                    w.linear(&t("ffn_up.weight"), c.ffn_hidden, d, None)?,
                )
            };
            let rope = c.rope_of(i, freq_factors.as_deref());
            blocks.push(Block {
                attn_norm: w.vector(&t("attn_norm.weight"), d)?,
                wq,
                wk,
                wv,
                wo,
                ffn_norm,
                w_gate,
                w_up,
                w_down: w.linear(&t("ffn_down.weight"), d, c.ffn_hidden, None)?,
                qk_norm: match c.arch.has_qk_norm() {
                    true => Some(HeadNorms {
                        q_norm: w.vector(&t("attn_q_norm.weight"), c.head_dim)?,
                        k_norm: w.vector(&t("attn_k_norm.weight"), c.head_dim)?,
                    }),
                    false => None,
                },
                gemma: match c.arch.is_gemma() {
                    true => Some(GemmaNorms {
                        post_attn_norm: w.vector(&t("post_attention_norm.weight"), d)?,
                        post_ffw_norm: w.vector(&t("post_ffw_norm.weight"), d)?,
                    }),
                    false => None,
                },
                rope: LayerRope {
                    periods: rope.periods()?,
                    rope,
                },
            });
        }
        let output_name = if c.tied_embeddings {
            "token_embd.weight"
        } else {
            "output.weight"
        };
        let model = Llama {
            embed: w.embedding("token_embd.weight", c.vocab_size, d)?,
            blocks,
            output_norm: w.vector("output_norm.weight", d)?,
            output: w.linear(output_name, c.vocab_size, d, None)?,
            execution: w.execution(),
            config,
        };
        w.check_all_used()?;
        Ok(model)
    }

    /// Runs B sequences of L new tokens each (`tokens` is [B, L] row-major), sequence b at
    /// its own position `caches[b].len()`, and returns logits [B, L, V] (or [B, 1, V] for the
    /// last position only when `last_only`). Each cache is extended by L positions.
    /// Projections run batched over all B·L rows; attention runs per sequence.
    pub fn forward(
        &self,
        tokens: &[u32],
        caches: &mut [&mut KvCache],
        last_only: bool,
    ) -> Result<Array> {
        let c = &self.config;
        let b = caches.len();
        if b == 0 || !tokens.len().is_multiple_of(b) {
            return Err(Error::InvalidArgument(format!(
                "{} tokens for {b} sequences",
                tokens.len()
            )));
        }
        let l = tokens.len() / b;
        for cache in caches.iter_mut() {
            cache.reserve(l)?;
        }
        let mut taps = Taps::for_next_forward();
        let span = tracing::trace_span!("inp_embd").entered();
        let mut x = self.embed.lookup(tokens)?; // [B·L, D]
        taps.put("inp_embd", None, &x);
        if let Some(scale) = c.embedding_scale() {
            x = ops::multiply(&x, &Array::scalar(scale)?)?; // [B·L, D]
            taps.put("inp_scaled", None, &x);
        }
        let mut x = ops::reshape(&x, &[b as i32, l as i32, c.hidden as i32])?; // [B, L, D]
        drop(span);
        for (il, block) in self.blocks.iter().enumerate() {
            let _span = tracing::trace_span!("block", il).entered();
            let ffn_inp = self.attention(block, il, &x, caches, &mut taps)?; // x + attn(attn_norm(x)) [B, L, D]
            taps.put("ffn_inp", Some(il), &ffn_inp);
            x = self.mlp(block, il, &ffn_inp, &mut taps)?; // ffn_inp + mlp(ffn_norm(ffn_inp)) [B, L, D]
            taps.put("l_out", Some(il), &x);
        }
        for cache in caches.iter_mut() {
            cache.advance(l);
        }
        if last_only && l > 1 {
            x = ops::slice(
                &x,
                &[0, l as i32 - 1, 0],
                &[b as i32, l as i32, c.hidden as i32],
                &[1; 3],
            )?; // [B, 1, D]
        }
        let result_norm = {
            let _span = tracing::trace_span!("result_norm").entered();
            fast::rms_norm(&x, &self.output_norm, c.rms_eps)? // [B, L', D]
        };
        taps.put("result_norm", None, &result_norm);
        let logits = {
            let _span = tracing::trace_span!("result_output").entered();
            self.output.forward(&result_norm)? // [B, L', V]
        };
        taps.put("result_output", None, &logits);
        taps.finish()?;
        Ok(logits)
    }

    /// The attention half of a block with its skip connection: x + attn(RMSNorm(x)) for
    /// x [B, L, D] → [B, L, D], grouped-query self-attention with RoPE, sequence b attending
    /// over its own cache from its own position. (The norm and the add run inside the
    /// projections' kernel ops when the weights are GGUF blocks.)
    fn attention(
        &self,
        block: &Block,
        layer: usize,
        x: &Array,
        caches: &mut [&mut KvCache],
        taps: &mut Taps,
    ) -> Result<Array> {
        let span = tracing::trace_span!("attn_norm", il = layer).entered();
        let attn_norm = RmsNormRef {
            weight: &block.attn_norm,
            eps: self.config.rms_eps,
        };
        let (normed, qkv) =
            linear::forward_all_normed(&[&block.wq, &block.wk, &block.wv], x, Some(attn_norm))?;
        let [mut q, mut k, v] = <[Array; 3]>::try_from(qkv)
            .map_err(|_| Error::InvalidArgument("expected three projections".into()))?;
        // q [B, L, Hq·hd], k and v [B, L, Hkv·hd]
        if let Some(n) = &normed {
            taps.put("attn_norm", Some(layer), n); // [B, L, D]
        }
        taps.put("Qcur", Some(layer), &q);
        taps.put("Kcur", Some(layer), &k);
        taps.put("Vcur", Some(layer), &v);
        drop(span);
        let span = tracing::trace_span!("kqv_out", il = layer).entered();
        let qk_norm = block.qk_norm.as_ref().map(|n| QkNorm {
            q: &n.q_norm,
            k: &n.k_norm,
            eps: self.config.rms_eps,
        });
        let kqv = if self.execution == Execution::CpuKernel {
            self.attend_fused(layer, &block.rope, &q, &k, &v, qk_norm, caches)?
        } else {
            if let Some(n) = qk_norm {
                q = self.head_norm(&q, n.q, self.config.n_heads)?; // [B, L, Hq·hd]
                k = self.head_norm(&k, n.k, self.config.n_kv_heads)?; // [B, L, Hkv·hd]
            }
            self.attend_mlx(layer, &block.rope, &q, &k, &v, caches)?
        }; // [B, L, Hq·hd]
        taps.put("kqv_out", Some(layer), &kqv);
        drop(span);
        let _span = tracing::trace_span!("ffn_inp", il = layer).entered();
        match &block.gemma {
            Some(g) => {
                let out = block.wo.forward(&kqv)?; // [B, L, D]
                let out = fast::rms_norm(&out, &g.post_attn_norm, self.config.rms_eps)?;
                taps.put("attn_post_norm", Some(layer), &out);
                ops::add(x, &out) // [B, L, D]
            }
            None => block.wo.forward_add(&kqv, x), // x + wo(kqv) [B, L, D]
        }
    }

    /// RMSNorm of every head of y [B, L, H·hd] over its hd features (Gemma's Q/K norm).
    fn head_norm(&self, y: &Array, weight: &Array, heads: usize) -> Result<Array> {
        let (b, l, hd) = (y.dim(0)?, y.dim(1)?, self.config.head_dim as i32);
        let y = ops::reshape(y, &[b, l, heads as i32, hd])?; // [B, L, H, hd]
        let y = fast::rms_norm(&y, weight, self.config.rms_eps)?;
        ops::reshape(&y, &[b, l, heads as i32 * hd]) // [B, L, H·hd]
    }

    /// Attention on CPU through our fused primitive (Q/K norm, RoPE, cache write and attention
    /// in one op per sequence): q [B, L, Hq·hd], k, v [B, L, Hkv·hd] → [B, L, Hq·hd].
    #[allow(clippy::too_many_arguments)] // the layer, its RoPE, q, k, v, the norm, the caches
    fn attend_fused(
        &self,
        layer: usize,
        rope: &LayerRope,
        q: &Array,
        k: &Array,
        v: &Array,
        norm: Option<QkNorm>,
        caches: &mut [&mut KvCache],
    ) -> Result<Array> {
        let c = &self.config;
        let params = AttentionParams {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            scale: rope.rope.logit_scale() / (c.head_dim as f32).sqrt(),
            rope_base: rope.rope.base,
            rope_scale: rope.rope.scale,
            rope_traditional: c.rope_traditional,
            rope_inv_freq: rope.rope.inv_freq.as_deref(),
            window: c.window_of(layer),
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
            outputs.push(cache.update_with(layer, l, |kc, vc, pos| {
                kernels::cached_attention(&qs, &ks, &vs, kc, vc, pos, &params, norm)
            })?); // [1, L, Hq·hd]
        }
        match outputs.len() {
            1 => Ok(outputs.pop().unwrap_or_else(|| unreachable!())),
            _ => ops::concatenate(&outputs.iter().collect::<Vec<_>>(), 0),
        }
    }

    /// Attention with MLX's own ops (RoPE, cache `slice_update`, SDPA): the reference path and
    /// the one for GPU streams. q [B, L, Hq·hd], k, v [B, L, Hkv·hd] → [B, L, Hq·hd].
    fn attend_mlx(
        &self,
        layer: usize,
        rope: &LayerRope,
        q: &Array,
        k: &Array,
        v: &Array,
        caches: &mut [&mut KvCache],
    ) -> Result<Array> {
        let c = &self.config;
        let (b, l) = (q.dim(0)?, q.dim(1)?);
        let (hq, hkv, hd) = (c.n_heads as i32, c.n_kv_heads as i32, c.head_dim as i32);
        let heads = |y: &Array, h: i32| -> Result<Array> {
            let y = ops::reshape(y, &[b, l, h, hd])?; // [B, L, H, hd]
            ops::transpose(&y, &[0, 2, 1, 3]) // [B, H, L, hd]
        };
        let q = heads(q, hq)?; // [B, Hq, L, hd]
        let k = heads(k, hkv)?; // [B, Hkv, L, hd]
        let v = heads(v, hkv)?; // [B, Hkv, L, hd]
        let scale = rope.rope.logit_scale() / (c.head_dim as f32).sqrt();
        let window = c.window_of(layer);
        let rotate = |x: &Array, pos: i32| match &rope.periods {
            Some(periods) => {
                fast::rope_with_periods(x, hd, c.rope_traditional, rope.rope.scale, pos, periods)
            }
            None => fast::rope(
                x,
                hd,
                c.rope_traditional,
                rope.rope.base,
                rope.rope.scale,
                pos,
            ),
        };
        let mut outputs = Vec::with_capacity(b as usize);
        for (s, cache) in caches.iter_mut().enumerate() {
            let one = |t: &Array, h: i32| {
                ops::slice(t, &[s as i32, 0, 0, 0], &[s as i32 + 1, h, l, hd], &[1; 4])
            };
            let pos = cache.len() as i32;
            let q = rotate(&one(&q, hq)?, pos)?; // [1, Hq, L, hd]
            let k = rotate(&one(&k, hkv)?, pos)?; // [1, Hkv, L, hd]
            let (keys, values) = cache.update(layer, &k, &one(&v, hkv)?)?; // [1, Hkv, pos+L, hd]
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
        let kqv = match outputs.len() {
            1 => outputs.pop().unwrap_or_else(|| unreachable!()),
            _ => ops::concatenate(&outputs.iter().collect::<Vec<_>>(), 0)?,
        }; // [B, Hq, L, hd]
        let kqv = ops::transpose(&kqv, &[0, 2, 1, 3])?; // [B, L, Hq, hd]
        ops::reshape(&kqv, &[b, l, hq * hd]) // [B, L, Hq·hd]
    }

    /// The feed-forward half of a block with its skip connection: x + down(silu(gate(n)) ·
    /// up(n)) with n = RMSNorm(x), x [B, L, D] → [B, L, D]. Gemma: GELU (tanh) instead of
    /// SiLU, and the output normed before the add.
    fn mlp(&self, block: &Block, layer: usize, x: &Array, taps: &mut Taps) -> Result<Array> {
        let span = tracing::trace_span!("ffn_norm", il = layer).entered();
        let ffn_norm = RmsNormRef {
            weight: &block.ffn_norm,
            eps: self.config.rms_eps,
        };
        let (act, act_name) = match block.gemma {
            Some(_) => (Gate::GeluTanh, "ffn_geglu"),
            None => (Gate::Silu, "ffn_swiglu"),
        };
        let (normed, par) =
            linear::gated_normed(act, &block.w_gate, &block.w_up, x, Some(ffn_norm))?; // [B, L, F]
        if let Some(n) = &normed {
            taps.put("ffn_norm", Some(layer), n); // [B, L, D]
        }
        taps.put(act_name, Some(layer), &par);
        drop(span);
        let _span = tracing::trace_span!("l_out", il = layer).entered();
        let Some(g) = &block.gemma else {
            return block.w_down.forward_add(&par, x); // x + down(par) [B, L, D]
        };
        let out = block.w_down.forward(&par)?; // [B, L, D]
        let out = fast::rms_norm(&out, &g.post_ffw_norm, self.config.rms_eps)?;
        taps.put("ffn_post_norm", Some(layer), &out);
        ops::add(x, &out) // [B, L, D]
    }
}

/// The three layers of a fused Q/K/V tensor.
fn split3(parts: Vec<Linear>) -> Result<[Linear; 3]> {
    <[Linear; 3]>::try_from(parts)
        .map_err(|_| Error::InvalidArgument("expected three projections".into()))
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
