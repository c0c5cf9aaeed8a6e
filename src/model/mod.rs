//! Models: configuration, weights, the shared blocks (attention, MLP, RoPE), one page per
//! architecture (`llama`, `qwen3`, `phi3`, `gemma3`) and the transformer that stacks them.
#![forbid(unsafe_code)]

pub mod blocks;
pub mod config;
pub mod dump;
pub mod gemma3;
pub mod hf_weights;
pub mod linear;
pub mod llama;
pub mod lora;
pub mod phi3;
pub mod qwen3;
pub mod rope;
pub mod transformer;
pub mod weights;

pub use config::{Arch, ModelConfig, SlidingWindow};
pub use hf_weights::HfWeights;
pub use linear::{Linear, LinearWeight};
pub use rope::{Rope, RopeScaling};
pub use transformer::Transformer;
pub use weights::{Embedding, Execution, GgufWeights, WeightSource};
