//! mlx-engine: Llama-family language models on Apple's MLX, through mlx-c.
//!
//! Layers, each using only those above it: [`mlx`] (the safe wrapper over mlx-c, the one place
//! with `unsafe` besides the memory map and the C ABI), the loaders, the quant formats, the
//! model, the engine and its user surfaces. The ggml type table ([`ggml_type`]) is a leaf that
//! the loaders, the kernels wrapper and the quant formats share. See `docs/ARCHITECTURE.md`.
#![deny(unsafe_code)]

pub mod backend;
pub mod bench;
pub mod chat_template;
pub mod constraint;
pub mod engine;
pub mod error;
pub mod fetch;
#[allow(unsafe_code)]
pub mod ffi;
pub mod finetune;
pub mod fuzz_targets;
pub mod ggml_type;
pub mod kv_cache;
pub mod loader;
#[allow(unsafe_code)]
pub mod mlx;
pub mod model;
pub mod quant;
pub mod registry;
pub mod sampler;
pub mod server;
pub mod speculative;
pub mod tokenizer;

pub use error::{Error, Result};
