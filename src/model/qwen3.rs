//! Qwen3: the Llama block with every Q and K head RMS-normalised before RoPE, and no Q/K/V
//! biases.

use crate::error::Result;
use crate::mlx::kernels::Gate;
use crate::model::blocks::{Attention, Mlp, QkvLayout};
use crate::model::config::ModelConfig;
use crate::model::llama::LlamaBlock;
use crate::model::weights::WeightSource;

/// Layer `i` of a Qwen3 checkpoint, with its `attn_q_norm` and `attn_k_norm`.
pub fn load_block(c: &ModelConfig, w: &dyn WeightSource, i: usize) -> Result<LlamaBlock> {
    let layout = QkvLayout::Separate { bias: false };
    Ok(LlamaBlock {
        attention: Attention::load(c, w, i, layout, true, None)?,
        mlp: Mlp::load(c, w, i, Gate::Silu, false)?,
    })
}
