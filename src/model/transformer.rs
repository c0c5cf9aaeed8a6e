//! The decoder-only transformer every architecture shares: token embedding, a stack of the
//! architecture's blocks (one page each: [`super::llama`], [`super::qwen3`], [`super::phi3`],
//! [`super::gemma3`]), the final norm and the output projection. Names of intermediates follow
//! llama.cpp (`attn_norm`, `ffn_inp`, `l_out`, …), in the dump (`MLX_ENGINE_DUMP`, see
//! [`crate::model::dump`]) and in `tracing` spans.
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
use crate::mlx::{fast, ops, Array};
use crate::model::blocks::{Block, Layer};
use crate::model::config::{Arch, ModelConfig};
use crate::model::dump::Taps;
use crate::model::linear::Linear;
use crate::model::lora::Adapters;
use crate::model::weights::{Embedding, Execution, WeightSource};
use crate::model::{gemma3, llama, phi3, qwen3};

/// A loaded model: config and weights (the KV cache is the caller's).
pub struct Transformer {
    /// Shapes and constants.
    pub config: ModelConfig,
    embed: Embedding, // [V, D], read in place
    blocks: Vec<Box<dyn Block>>,
    output_norm: Array, // [D]
    output: Linear,     // [V, D] (the embedding itself when tied)
    execution: Execution,
    adapters: Option<Adapters>,
}

impl Transformer {
    /// Loads every tensor from `w`, checking shapes against `config`, each layer by its
    /// architecture's page; a tensor left unused is an error.
    pub fn load(config: ModelConfig, w: &dyn WeightSource) -> Result<Transformer> {
        let c = &config;
        let freq_factors = match c.rope_freqs_tensor {
            true => Some(
                w.vector("rope_freqs.weight", c.head_dim / 2)?
                    .to_vec::<f32>()?,
            ),
            false => None,
        };
        let mut blocks: Vec<Box<dyn Block>> = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            blocks.push(match c.arch {
                Arch::Llama | Arch::Qwen2 => {
                    Box::new(llama::LlamaBlock::load(c, w, i, freq_factors.as_deref())?)
                }
                Arch::Qwen3 => Box::new(qwen3::load_block(c, w, i)?),
                Arch::Phi3 => Box::new(phi3::load_block(c, w, i)?),
                Arch::Gemma3 => Box::new(gemma3::Gemma3Block::load(c, w, i)?),
            });
        }
        let output_name = match c.tied_embeddings {
            true => "token_embd.weight",
            false => "output.weight",
        };
        let model = Transformer {
            embed: w.embedding("token_embd.weight", c.vocab_size, c.hidden)?,
            blocks,
            output_norm: w.vector("output_norm.weight", c.hidden)?,
            output: w.linear(output_name, c.vocab_size, c.hidden, None)?,
            execution: w.execution(),
            adapters: None,
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
        let adapters = self.adapters.as_ref();
        let x = self.blocks_forward(tokens, b, caches, adapters, last_only)?;
        for cache in caches.iter_mut() {
            cache.advance(l);
        }
        Ok(x)
    }

    /// Adapters applied by every later [`Transformer::forward`] (`None` removes them). The
    /// caller checks they fit the model ([`crate::finetune::checkpoint::load_adapters`] does).
    pub fn set_adapters(&mut self, adapters: Option<Adapters>) {
        self.adapters = adapters;
    }

    /// The adapters [`Transformer::forward`] applies, if any.
    pub fn adapters(&self) -> Option<&Adapters> {
        self.adapters.as_ref()
    }

    /// The differentiable pass of training: B whole sequences (`tokens` [B, L] row-major, each
    /// from position 0, no cache) with `adapters` on their projections → logits [B, L, V].
    pub fn forward_train(&self, tokens: &[u32], b: usize, adapters: &Adapters) -> Result<Array> {
        if b == 0 || !tokens.len().is_multiple_of(b) {
            return Err(Error::InvalidArgument(format!(
                "{} tokens for {b} sequences",
                tokens.len()
            )));
        }
        self.blocks_forward(tokens, b, &mut [], Some(adapters), false)
    }

    /// Embedding, blocks, final norm and head for B = `b` sequences of `tokens`; no cache
    /// (`caches` empty) means the training pass.
    fn blocks_forward(
        &self,
        tokens: &[u32],
        b: usize,
        caches: &mut [&mut KvCache],
        adapters: Option<&Adapters>,
        last_only: bool,
    ) -> Result<Array> {
        let c = &self.config;
        let l = tokens.len() / b;
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
            let at = Layer {
                index: il,
                config: c,
                execution: self.execution,
                lora: adapters.and_then(|a| a.layer(il)),
                train: caches.is_empty(),
            };
            x = block.forward(&at, &x, caches, &mut taps)?; // [B, L, D]
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
}
