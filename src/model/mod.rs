//! Models: configuration, weights and forward passes. One file per architecture family.

pub mod config;
pub mod linear;
pub mod llama;
pub mod weights;

pub use config::{Arch, ModelConfig};
pub use linear::{Linear, LinearWeight};
pub use llama::Llama;
pub use weights::{Execution, GgufWeights};
