//! Gemma 3: Q/K head norms, a second RMSNorm on the attention and MLP outputs before each
//! skip connection, a GELU (tanh) gated MLP, the embedding scaled by √D
//! ([`ModelConfig::embedding_scale`]), and sliding-window attention with its own RoPE base
//! in five layers of every six ([`ModelConfig::window_of`], [`ModelConfig::rope_of`]).

use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::mlx::kernels::Gate;
use crate::mlx::{fast, ops, Array};
use crate::model::blocks::{project, Attention, Block, Layer, Mlp, QkvLayout};
use crate::model::config::ModelConfig;
use crate::model::dump::Taps;
use crate::model::lora::Target;
use crate::model::weights::WeightSource;

/// A Gemma 3 block: norms before and after attention and MLP.
pub struct Gemma3Block {
    attention: Attention,
    mlp: Mlp,
    post_attn_norm: Array, // [D] (GGUF holds Gemma's 1 + w)
    post_ffw_norm: Array,  // [D]
}

impl Gemma3Block {
    /// Layer `i` of a Gemma 3 checkpoint.
    pub fn load(c: &ModelConfig, w: &dyn WeightSource, i: usize) -> Result<Gemma3Block> {
        let layout = QkvLayout::Separate { bias: false };
        let t = |s: &str| format!("blk.{i}.{s}");
        Ok(Gemma3Block {
            attention: Attention::load(c, w, i, layout, true, None)?,
            mlp: Mlp::load(c, w, i, Gate::GeluTanh, false)?,
            post_attn_norm: w.vector(&t("post_attention_norm.weight"), c.hidden)?,
            post_ffw_norm: w.vector(&t("post_ffw_norm.weight"), c.hidden)?,
        })
    }
}

impl Block for Gemma3Block {
    fn forward(
        &self,
        at: &Layer,
        x: &Array,
        caches: &mut [&mut KvCache],
        taps: &mut Taps,
    ) -> Result<Array> {
        let (il, eps) = (at.index, at.config.rms_eps);
        let kqv = self.attention.forward(at, x, caches, taps)?; // [B, L, Hq·hd]
        let ffn_inp = {
            let _span = tracing::trace_span!("ffn_inp", il).entered();
            let out = project(at, Target::O, &self.attention.wo, &kqv)?; // [B, L, D]
            let out = fast::rms_norm(&out, &self.post_attn_norm, eps)?; // [B, L, D]
            taps.put("attn_post_norm", Some(il), &out);
            ops::add(x, &out)? // [B, L, D]
        };
        taps.put("ffn_inp", Some(il), &ffn_inp);
        let par = self.mlp.forward(at, &ffn_inp, taps)?; // [B, L, F]
        let _span = tracing::trace_span!("l_out", il).entered();
        let out = project(at, Target::Down, &self.mlp.down, &par)?; // [B, L, D]
        let out = fast::rms_norm(&out, &self.post_ffw_norm, eps)?; // [B, L, D]
        taps.put("ffn_post_norm", Some(il), &out);
        let l_out = ops::add(&ffn_inp, &out)?; // [B, L, D]
        taps.put("l_out", Some(il), &l_out);
        Ok(l_out)
    }
}
