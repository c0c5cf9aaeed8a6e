//! The engine: a loaded model plus prefill, decode and greedy generation.

use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::loader::gguf::GgufFile;
use crate::mlx::{ops, Array, Device};
use crate::model::{Execution, GgufWeights, Llama, ModelConfig};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options for [`Engine::load`].
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Where the model runs.
    pub device: Device,
    /// How projections execute; `None` picks the device's default.
    pub execution: Option<Execution>,
    /// Cap on the context (positions per sequence); `None` uses the model's.
    pub max_context: Option<usize>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { device: Device::Cpu, execution: None, max_context: None }
    }
}

/// A loaded model ready to run.
pub struct Engine {
    /// The transformer.
    pub model: Llama,
    /// The opened GGUF file (metadata for the tokenizer and chat template).
    pub file: Arc<GgufFile>,
    /// How projections execute.
    pub execution: Execution,
    /// Time spent in [`Engine::load`].
    pub load_time: Duration,
    context: usize,
}

impl Engine {
    /// Opens a GGUF model and loads its weights.
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Engine> {
        let start = Instant::now();
        crate::mlx::set_default_device(options.device)?;
        let file = Arc::new(GgufFile::open(path)?);
        let config = ModelConfig::from_gguf(&file)?;
        let execution = options.execution.unwrap_or_else(|| Execution::for_device(options.device));
        let model = Llama::load(config, &GgufWeights::new(Arc::clone(&file), execution))?;
        let context = options
            .max_context
            .map_or(model.config.context_length, |m| m.min(model.config.context_length));
        Ok(Engine { model, file, execution, load_time: start.elapsed(), context })
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.model.config
    }

    /// A new, empty KV cache for one sequence.
    pub fn new_cache(&self) -> KvCache {
        let c = self.config();
        KvCache::new(c.n_layers, c.n_kv_heads, c.head_dim, self.context)
    }

    /// Runs a prompt through the model in chunks of `chunk` positions and returns the logits of
    /// its last position, [V] (evaluated).
    pub fn prefill(&self, tokens: &[u32], cache: &mut KvCache, chunk: usize) -> Result<Array> {
        if tokens.is_empty() {
            return Err(Error::InvalidArgument("empty prompt".into()));
        }
        if cache.len() + tokens.len() > cache.limit() {
            return Err(Error::ContextFull { needed: cache.len() + tokens.len(), limit: cache.limit() });
        }
        let mut last = None;
        for piece in tokens.chunks(chunk.max(1)) {
            let logits = self.model.forward(piece, &mut [&mut *cache], true)?; // [1, 1, V]
            let mut outputs = cache.arrays();
            outputs.push(&logits);
            crate::mlx::transforms::eval(&outputs)?;
            last = Some(logits);
        }
        let logits = last.ok_or_else(|| Error::InvalidArgument("empty prompt".into()))?;
        ops::reshape(&logits, &[-1])
    }

    /// One decode step for B sequences: `tokens[b]` is appended to `caches[b]`, each sequence
    /// at its own position; returns logits [B, V] (lazy).
    pub fn decode(&self, tokens: &[u32], caches: &mut [&mut KvCache]) -> Result<Array> {
        if tokens.len() != caches.len() {
            return Err(Error::InvalidArgument(format!("{} tokens for {} sequences", tokens.len(), caches.len())));
        }
        let logits = self.model.forward(tokens, caches, true)?; // [B, 1, V]
        ops::reshape(&logits, &[tokens.len() as i32, -1])
    }

    /// Teacher-forced logits of every position of `tokens`, [L, V] row-major, for checking
    /// against a reference.
    pub fn logits_all(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let mut cache = self.new_cache();
        let logits = self.model.forward(tokens, &mut [&mut cache], false)?; // [1, L, V]
        logits.to_vec::<f32>()
    }

    /// Greedy generation for one sequence: up to `max_new` tokens after `prompt`, stopping
    /// after a token for which `stop` is true (that token included).
    pub fn generate_greedy(&self, prompt: &[u32], max_new: usize, stop: impl Fn(u32) -> bool) -> Result<Vec<u32>> {
        let mut cache = self.new_cache();
        let mut logits = self.prefill(prompt, &mut cache, 512)?;
        let mut out = Vec::new();
        while out.len() < max_new {
            let next = ops::argmax(&logits, -1, false)?.item::<u32>()?;
            out.push(next);
            if stop(next) || out.len() == max_new || cache.len() >= cache.limit() {
                break;
            }
            logits = self.decode(&[next], &mut [&mut cache])?;
        }
        Ok(out)
    }
}
