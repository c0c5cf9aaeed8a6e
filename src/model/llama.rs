//! Llama 1/2/3 (TinyLlama, Mistral-style; Llama 3.x with its RoPE factors and tied
//! embeddings) and Qwen2 (the same block with Q/K/V biases): the pre-norm block
//! x + attn(norm(x)), then + mlp(norm(·)), with SwiGLU. Qwen3 and Phi-3 reuse it.

use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::mlx::kernels::Gate;
use crate::mlx::Array;
use crate::model::blocks::{project_add, Attention, Block, Layer, Mlp, QkvLayout};
use crate::model::config::{Arch, ModelConfig};
use crate::model::dump::Taps;
use crate::model::lora::Target;
use crate::model::weights::WeightSource;

/// A pre-norm transformer block: attention and a SwiGLU MLP, each with its input norm and a
/// skip connection.
pub struct LlamaBlock {
    /// Norm, Q/K/V, RoPE, attention and the output projection.
    pub attention: Attention,
    /// Norm, gate/up and down.
    pub mlp: Mlp,
}

impl LlamaBlock {
    /// Layer `i` of a Llama or Qwen2 checkpoint (`freq_factors`: llama3's `rope_freqs.weight`).
    pub fn load(
        c: &ModelConfig,
        w: &dyn WeightSource,
        i: usize,
        freq_factors: Option<&[f32]>,
    ) -> Result<LlamaBlock> {
        let layout = QkvLayout::Separate {
            bias: c.arch == Arch::Qwen2,
        };
        Ok(LlamaBlock {
            attention: Attention::load(c, w, i, layout, false, freq_factors)?,
            mlp: Mlp::load(c, w, i, Gate::Silu, false)?,
        })
    }
}

impl Block for LlamaBlock {
    fn forward(
        &self,
        at: &Layer,
        x: &Array,
        caches: &mut [&mut KvCache],
        taps: &mut Taps,
    ) -> Result<Array> {
        let il = at.index;
        let kqv = self.attention.forward(at, x, caches, taps)?; // [B, L, Hq·hd]
        let ffn_inp = {
            let _span = tracing::trace_span!("ffn_inp", il).entered();
            project_add(at, Target::O, &self.attention.wo, &kqv, x)? // x + wo(kqv) [B, L, D]
        };
        taps.put("ffn_inp", Some(il), &ffn_inp);
        let par = self.mlp.forward(at, &ffn_inp, taps)?; // [B, L, F]
        let _span = tracing::trace_span!("l_out", il).entered();
        let l_out = project_add(at, Target::Down, &self.mlp.down, &par, &ffn_inp)?; // ffn_inp + down(par) [B, L, D]
        taps.put("l_out", Some(il), &l_out);
        Ok(l_out)
    }
}
