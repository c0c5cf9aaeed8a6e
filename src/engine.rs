//! The engine: a loaded model plus prefill, decode and greedy generation.
#![forbid(unsafe_code)]

use crate::error::{Error, Result};
use crate::kv_cache::{KvCache, KvDtype};
use crate::loader::gguf::GgufFile;
use crate::loader::safetensors::SafetensorsModel;
use crate::mlx::{ops, Array, Device};
use crate::model::{Execution, GgufWeights, HfWeights, ModelConfig, Transformer};
use crate::sampler::{Sampler, SamplerParams};
use crate::tokenizer::{Tokenizer, Vocab};
use std::path::{Path, PathBuf};
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
    /// A LoRA adapter directory (written by `mlx-engine finetune`) applied to every forward
    /// pass; refused when it was trained on another model.
    pub adapter: Option<PathBuf>,
    /// The element type of every KV cache [`Engine::new_cache`] makes.
    pub kv_dtype: KvDtype,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            execution: None,
            max_context: None,
            adapter: None,
            kv_dtype: KvDtype::default(),
        }
    }
}

/// Where a loaded model came from.
pub enum ModelSource {
    /// A GGUF file (its metadata holds the tokenizer and chat template).
    Gguf(Arc<GgufFile>),
    /// A Hugging Face directory: `config.json`, `*.safetensors`, `tokenizer.json`.
    Hf {
        /// The directory.
        dir: PathBuf,
    },
}

/// A loaded model ready to run.
pub struct Engine {
    /// The transformer.
    pub model: Transformer,
    /// The file or directory it was loaded from.
    pub source: ModelSource,
    /// How projections execute.
    pub execution: Execution,
    /// Time spent in [`Engine::load`].
    pub load_time: Duration,
    context: usize,
    kv_dtype: KvDtype,
    /// The SHA-256 of the applied adapter's files, when one is applied.
    adapter_digest: Option<[u8; 32]>,
}

impl Engine {
    /// Loads a model: a GGUF file, or a Hugging Face directory (or `.safetensors` file beside
    /// a `config.json`).
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Engine> {
        let start = Instant::now();
        crate::mlx::set_default_device(options.device)?;
        let execution = options
            .execution
            .unwrap_or_else(|| Execution::for_device(options.device));
        let (model, source) = if path.is_dir()
            || path.extension().is_some_and(|e| e == "safetensors")
        {
            let dir = if path.is_dir() {
                path.to_path_buf()
            } else {
                path.parent().unwrap_or(Path::new(".")).to_path_buf()
            };
            let config_path = dir.join("config.json");
            let text =
                std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::format(&config_path, e.to_string()))?;
            let config = ModelConfig::from_hf_json(&config_path, &json)?;
            let weights = HfWeights::new(SafetensorsModel::open(path)?, execution);
            (
                Transformer::load(config, &weights)?,
                ModelSource::Hf { dir },
            )
        } else {
            let file = Arc::new(GgufFile::open(path)?);
            let config = ModelConfig::from_gguf(&file)?;
            let model = Transformer::load(config, &GgufWeights::new(Arc::clone(&file), execution))?;
            (model, ModelSource::Gguf(file))
        };
        let context = options
            .max_context
            .map_or(model.config.context_length, |m| {
                m.min(model.config.context_length)
            });
        let mut engine = Engine {
            model,
            source,
            execution,
            load_time: start.elapsed(),
            context,
            kv_dtype: options.kv_dtype,
            adapter_digest: None,
        };
        if let Some(dir) = &options.adapter {
            engine.apply_adapter(dir)?;
        }
        engine.load_time = start.elapsed();
        Ok(engine)
    }

    /// Applies the LoRA adapters in `dir` to every later forward pass, after checking that
    /// they were made for this model's weights and shapes.
    pub fn apply_adapter(&mut self, dir: &Path) -> Result<()> {
        use sha2::{Digest, Sha256};
        let base = self.base_fingerprint();
        let adapters = crate::finetune::checkpoint::load_adapters(dir, &self.model.config, &base)?;
        let mut hash = Sha256::new();
        for name in [
            crate::finetune::checkpoint::CONFIG_FILE,
            crate::finetune::checkpoint::ADAPTERS_FILE,
        ] {
            let path = dir.join(name);
            hash.update(std::fs::read(&path).map_err(|e| Error::io(&path, e))?);
        }
        self.adapter_digest = Some(hash.finalize().into());
        self.model.set_adapters(Some(adapters));
        Ok(())
    }

    /// The GGUF file, when the model came from one.
    pub fn gguf(&self) -> Option<&GgufFile> {
        match &self.source {
            ModelSource::Gguf(file) => Some(file),
            ModelSource::Hf { .. } => None,
        }
    }

    /// The model's tokenizer (GGUF metadata or `tokenizer.json`).
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        match &self.source {
            ModelSource::Gguf(file) => Tokenizer::from_vocab(&Vocab::from_gguf(file)?),
            ModelSource::Hf { dir } => Tokenizer::from_file(dir.join("tokenizer.json")),
        }
    }

    /// The model's chat template source, if it has one (GGUF `tokenizer.chat_template` or
    /// `tokenizer_config.json`'s `chat_template`; Gemma's turn format for a Gemma GGUF without).
    pub fn chat_template(&self) -> Result<Option<String>> {
        match &self.source {
            ModelSource::Gguf(file) => Ok(file
                .get("tokenizer.chat_template")
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .or_else(|| {
                    let gemma = self.model.config.arch.is_gemma();
                    gemma.then(|| crate::chat_template::GEMMA_TEMPLATE.to_string())
                })),
            ModelSource::Hf { dir } => {
                let path = dir.join("tokenizer_config.json");
                let Ok(text) = std::fs::read_to_string(&path) else {
                    return Ok(None);
                };
                let json: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| Error::format(&path, e.to_string()))?;
                Ok(json
                    .get("chat_template")
                    .and_then(|v| v.as_str())
                    .map(str::to_string))
            }
        }
    }

    /// A digest identifying the model's weights and shapes (for KV snapshots): the GGUF header
    /// and a sample of every tensor, or the HF config and every tensor's name, type, shape and a
    /// sample of its data.
    /// With an adapter applied, the adapter's digest is part of it (its KV states differ).
    pub fn fingerprint(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let base = self.base_fingerprint();
        match self.adapter_digest {
            None => base,
            Some(adapter) => {
                let mut hash = Sha256::new();
                hash.update(base);
                hash.update(adapter);
                hash.finalize().into()
            }
        }
    }

    /// [`Engine::fingerprint`] of the base weights alone, without any adapter: what an
    /// adapter records as the model it was trained on.
    pub fn base_fingerprint(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        hash.update(b"mlx-engine model fingerprint v1");
        match &self.source {
            ModelSource::Gguf(file) => {
                let mapping = file.mapping();
                let header_end = usize::try_from(file.data_offset()).unwrap_or(usize::MAX);
                hash.update(mapping.bytes().get(..header_end).unwrap_or(mapping.bytes()));
                for tensor in file.tensors() {
                    let data = file.tensor_bytes(tensor);
                    hash.update(&data[..data.len().min(4096)]);
                }
            }
            ModelSource::Hf { dir } => {
                hash.update(std::fs::read(dir.join("config.json")).unwrap_or_default());
                if let Ok(model) = SafetensorsModel::open(dir) {
                    let names: Vec<String> = model.names().map(str::to_string).collect();
                    for name in names {
                        if let Some(t) = model.tensor(&name) {
                            hash.update(name.as_bytes());
                            hash.update(format!("{:?}{:?}", t.dtype, t.shape).as_bytes());
                            hash.update(&t.bytes[..t.bytes.len().min(4096)]);
                        }
                    }
                }
            }
        }
        hash.finalize().into()
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.model.config
    }

    /// A new, empty KV cache for one sequence.
    pub fn new_cache(&self) -> KvCache {
        let c = self.config();
        KvCache::new(
            c.n_layers,
            c.n_kv_heads,
            c.head_dim,
            self.context,
            self.kv_dtype,
        )
    }

    /// Appends `tokens` to `cache`, `chunk` positions per forward pass (bounding peak memory on
    /// long prompts), and returns the logits of the last position or of every new one. The
    /// crate's one prefill path: [`Engine::generate`], the backend and the server all come
    /// here. On error the cache is rolled back to its length before the call.
    pub fn prefill(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        chunk: usize,
        rows: LogitRows,
    ) -> Result<Logits> {
        if tokens.is_empty() {
            return Err(Error::InvalidArgument(
                "prefill of an empty token list".into(),
            ));
        }
        cache.check_room(tokens.len())?;
        let start = cache.len();
        let result = self.prefill_chunks(tokens, cache, chunk.max(1), rows);
        if result.is_err() && cache.len() > start {
            cache.truncate(start)?;
        }
        result
    }

    /// The chunk loop of [`Engine::prefill`]; each chunk is evaluated with the cache before the
    /// next is built.
    fn prefill_chunks(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        chunk: usize,
        rows: LogitRows,
    ) -> Result<Logits> {
        let vocab = self.config().vocab_size;
        let all = rows == LogitRows::All;
        let mut data = Vec::with_capacity(if all { tokens.len() * vocab } else { vocab });
        for piece in tokens.chunks(chunk) {
            let logits = self.model.forward(piece, &mut [&mut *cache], !all)?; // [1, L or 1, V]
            let values = evaluate_with_cache(&logits, &[&*cache])?;
            if !all {
                data.clear();
            }
            data.extend(values);
        }
        Ok(Logits {
            rows: data.len() / vocab,
            vocab,
            data,
        })
    }

    /// One decode step for B sequences: `tokens[b]` is appended to `caches[b]`, each sequence
    /// at its own position; returns logits [B, V] (lazy).
    pub fn decode(&self, tokens: &[u32], caches: &mut [&mut KvCache]) -> Result<Array> {
        if tokens.len() != caches.len() {
            return Err(Error::InvalidArgument(format!(
                "{} tokens for {} sequences",
                tokens.len(),
                caches.len()
            )));
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

    /// Generates up to `options.max_new` tokens after `prompt` with `sampler`, calling
    /// `on_token` with each new token as soon as it is known; stops after an end-of-generation
    /// token (`is_eog`), when `on_token` returns `false`, or when the context is full.
    pub fn generate(
        &self,
        prompt: &[u32],
        sampler: &mut Sampler,
        options: &GenerateOptions,
        is_eog: impl Fn(u32) -> bool,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<(Vec<u32>, GenerateStats)> {
        let mut stats = GenerateStats {
            prompt_tokens: prompt.len(),
            ..GenerateStats::default()
        };
        let mut cache = self.new_cache();
        let start = Instant::now();
        let mut logits = self
            .prefill(prompt, &mut cache, options.prefill_chunk, LogitRows::Last)?
            .data;
        stats.prompt_time = start.elapsed();
        let start = Instant::now();
        let mut history = prompt.to_vec();
        let mut out = Vec::new();
        'generation: while out.len() < options.max_new {
            let next = sampler.sample(&logits, &history)?.token;
            let mut step = vec![next];
            step.extend(self.forced_within(sampler, options.max_new - out.len() - 1, &cache)?);
            stats.forced_tokens += step.len() - 1;
            for &t in &step {
                out.push(t);
                history.push(t);
                if !on_token(t) || is_eog(t) {
                    break 'generation;
                }
            }
            if out.len() == options.max_new || cache.len() + step.len() > cache.limit() {
                break;
            }
            logits = match step.len() {
                1 => self.decode(&step, &mut [&mut cache])?.to_vec::<f32>()?,
                _ => {
                    let chunk = options.prefill_chunk;
                    self.prefill(&step, &mut cache, chunk, LogitRows::Last)?
                        .data
                }
            };
        }
        stats.generated_tokens = out.len();
        stats.generate_time = start.elapsed();
        Ok((out, stats))
    }

    /// The tokens `sampler`'s constraint forces after the token just sampled, at most `budget`
    /// of them and no more than the context has room for beside that token; any beyond are
    /// rolled back out of the constraint.
    fn forced_within(
        &self,
        sampler: &mut Sampler,
        budget: usize,
        cache: &KvCache,
    ) -> Result<Vec<u32>> {
        let mut forced = sampler.forced_tokens()?;
        let room = cache.limit().saturating_sub(cache.len() + 1);
        let keep = forced.len().min(budget).min(room);
        if keep < forced.len() {
            if let Some(c) = sampler.constraint_mut() {
                c.rollback(forced.len() - keep)?;
            }
            forced.truncate(keep);
        }
        Ok(forced)
    }

    /// Greedy generation for one sequence: up to `max_new` tokens after `prompt`, stopping
    /// after a token for which `stop` is true (that token included).
    pub fn generate_greedy(
        &self,
        prompt: &[u32],
        max_new: usize,
        stop: impl Fn(u32) -> bool,
    ) -> Result<Vec<u32>> {
        let mut sampler = Sampler::new(SamplerParams::greedy());
        let options = GenerateOptions {
            max_new,
            ..GenerateOptions::default()
        };
        Ok(self
            .generate(prompt, &mut sampler, &options, stop, |_| true)?
            .0)
    }
}

/// Which positions' logits [`Engine::prefill`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitRows {
    /// Only the last position's (the distribution of the next token).
    Last,
    /// Every new position's, in token order (scoring a draft, teacher forcing).
    All,
}

/// Logits of one or more positions, row-major [rows, vocab], on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct Logits {
    /// Positions (1 unless all rows were asked for).
    pub rows: usize,
    /// Entries per row.
    pub vocab: usize,
    /// `rows × vocab` floats.
    pub data: Vec<f32>,
}

impl Logits {
    /// Row `i`, or `None` past the last row.
    pub fn row(&self, i: usize) -> Option<&[f32]> {
        self.data.get(i * self.vocab..(i + 1) * self.vocab)
    }

    /// The last row (the distribution of the next token); `None` when there are no rows.
    pub fn last(&self) -> Option<&[f32]> {
        self.row(self.rows.checked_sub(1)?)
    }
}

/// Evaluates `logits` together with the caches they were computed into (so no cache is left
/// holding an unevaluated graph) and copies the logits out.
pub fn evaluate_with_cache(logits: &Array, caches: &[&KvCache]) -> Result<Vec<f32>> {
    let mut outputs: Vec<&Array> = caches.iter().flat_map(|c| c.arrays()).collect();
    outputs.push(logits);
    crate::mlx::transforms::eval(&outputs)?;
    logits.to_vec::<f32>()
}

/// Options of [`Engine::generate`].
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_new: usize,
    /// Prompt positions per prefill forward pass.
    pub prefill_chunk: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new: 256,
            prefill_chunk: 512,
        }
    }
}

/// What [`Engine::generate`] measured.
#[derive(Clone, Debug, Default)]
pub struct GenerateStats {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Time to prefill the prompt (including the first logits).
    pub prompt_time: Duration,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// Time from the first sampled token to the last.
    pub generate_time: Duration,
    /// Tokens proposed by a speculative drafter (0 without speculation).
    pub drafted_tokens: usize,
    /// Drafted tokens the target accepted.
    pub accepted_tokens: usize,
    /// Tokens a grammar forced, fed to the model without sampling (included in
    /// `generated_tokens`).
    pub forced_tokens: usize,
}

impl GenerateStats {
    /// Prompt tokens per second.
    pub fn prompt_tps(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_time.as_secs_f64().max(1e-9)
    }

    /// Generated tokens per second (the first token comes from the prefill's logits, so the
    /// decode steps are one fewer than the tokens).
    pub fn generate_tps(&self) -> f64 {
        self.generated_tokens.saturating_sub(1) as f64 / self.generate_time.as_secs_f64().max(1e-9)
    }
}
