//! Phi-3: the Llama block with Q/K/V stored as one `attn_qkv` tensor and gate/up as one
//! `ffn_up` tensor (gate rows first). The fused tensors are split by rows at load, so the
//! forward pass is the Llama block's, kernels unchanged. (LongRoPE variants are refused with
//! the other unimplemented scalings in [`crate::model::config`].)

use crate::error::Result;
use crate::mlx::kernels::Gate;
use crate::model::blocks::{Attention, Mlp, QkvLayout};
use crate::model::config::ModelConfig;
use crate::model::llama::LlamaBlock;
use crate::model::weights::WeightSource;

/// Layer `i` of a Phi-3 checkpoint.
pub fn load_block(c: &ModelConfig, w: &dyn WeightSource, i: usize) -> Result<LlamaBlock> {
    Ok(LlamaBlock {
        attention: Attention::load(c, w, i, QkvLayout::Fused, false, None)?,
        mlp: Mlp::load(c, w, i, Gate::Silu, true)?,
    })
}
