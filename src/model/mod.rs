//! Models: configuration, weights and forward passes. One file per architecture family.
#![forbid(unsafe_code)]

pub mod config;
pub mod dump;
pub mod hf_weights;
pub mod linear;
pub mod llama;
pub mod rope;
pub mod weights;

pub use config::{Arch, ModelConfig, SlidingWindow};
pub use hf_weights::HfWeights;
pub use linear::{Linear, LinearWeight};
pub use llama::Llama;
pub use rope::{Rope, RopeScaling};
pub use weights::{Embedding, Execution, GgufWeights, WeightSource};
