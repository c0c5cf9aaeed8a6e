//! The embedding surface: one loaded model serving many sequences, each a KV slot addressed
//! by a [`SeqId`], plus samplers, KV prefix copies, KV snapshots and the model's text side
//! (tokenize, detokenize, per-token pieces, the chat template, end-of-generation ids).
//! `src/ffi.rs` exposes the same contract to C. See `docs/BACKEND.md`.
//!
//! Thread-safety: a [`Backend`] is `Send` (it may move to another thread) but not `Sync`
//! (MLX graphs must not be built or evaluated from two threads at once). Every method runs on
//! the backend's device whatever the calling thread's default device is.
#![forbid(unsafe_code)]

mod slots;
pub mod snapshot;
mod speculative;

use crate::chat_template::{ChatMessage, ChatTemplate};
use crate::constraint::{Constraint, Grammar, GrammarCompiler};
pub use crate::engine::Logits;
use crate::engine::{evaluate_with_cache, Engine, LoadOptions, LogitRows};
use crate::error::{Error, Result};
use crate::kv_cache::{KvCache, KvDtype};
use crate::mlx::{transforms, with_device, Device};
use crate::model::{Execution, ModelConfig};
use crate::sampler::Sampler;
pub use crate::sampler::{Sampled, SamplerParams};
use crate::tokenizer::Tokenizer;
use slots::Slots;
use snapshot::{Fingerprint, KvShape};
use std::cell::OnceCell;
use std::path::{Path, PathBuf};

/// Which model to load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSpec {
    /// A GGUF file, or a Hugging Face directory (see [`Engine::load`]).
    pub path: PathBuf,
}

impl ModelSpec {
    /// A spec for the model at `path`.
    pub fn new(path: impl AsRef<Path>) -> ModelSpec {
        ModelSpec {
            path: path.as_ref().to_path_buf(),
        }
    }
}

/// How to load and run the model.
#[derive(Clone, Debug)]
pub struct BackendOptions {
    /// Where the model runs.
    pub device: Device,
    /// How projections execute; `None` picks the device's default.
    pub execution: Option<Execution>,
    /// Cap on positions per sequence; `None` uses the model's context length.
    pub max_context: Option<usize>,
    /// Positions per forward pass during prefill (bounds peak memory on long prompts).
    pub prefill_chunk: usize,
    /// A LoRA adapter directory applied to the model (see [`LoadOptions::adapter`]).
    pub adapter: Option<std::path::PathBuf>,
    /// The element type of the sequences' KV caches (see [`LoadOptions::kv_dtype`]).
    pub kv_dtype: KvDtype,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            device: Device::Cpu,
            execution: None,
            max_context: None,
            prefill_chunk: 512,
            adapter: None,
            kv_dtype: KvDtype::default(),
        }
    }
}

/// What this backend can do. Each flag is true only when the feature works end to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Grammar-constrained sampling (JSON Schema, any JSON object, regex, Lark) through
    /// [`Backend::create_constrained_sampler`].
    pub supports_structured_output: bool,
    /// Draft-and-verify: prefill with all logits scores a draft in one pass, and
    /// [`Backend::truncate_seq`] rolls back the rejected tail.
    pub supports_speculative_decoding: bool,
    /// [`Backend::copy_prefix`] shares a prompt's KV between sequences.
    pub supports_kv_prefix_copy: bool,
    /// Image or audio inputs: not implemented.
    pub supports_multimodal: bool,
}

/// Where the backend runs and how much memory MLX holds.
#[derive(Clone, Copy, Debug)]
pub struct DeviceInfo {
    /// CPU or GPU.
    pub device: Device,
    /// How projections execute.
    pub execution: Execution,
    /// Bytes held by live MLX arrays (weights, caches, activations).
    pub active_bytes: usize,
    /// High-water mark of `active_bytes`.
    pub peak_bytes: usize,
    /// Freed buffers MLX keeps for reuse.
    pub cache_bytes: usize,
}

/// A sequence (one KV slot). Ids are never reused within a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeqId(pub u64);

/// A sampler owned by a backend. Ids are never reused within a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SamplerId(pub u64);

/// A loaded model serving sequences. `Send`, not `Sync`: see the module docs.
pub struct Backend {
    engine: Engine,
    device: Device,
    prefill_chunk: usize,
    context: usize,
    fingerprint: Fingerprint,
    seqs: Slots<KvCache>,
    samplers: Slots<Sampler>,
    /// Built on first use: a model used only through token ids never pays for it.
    tokenizer: OnceCell<Tokenizer>,
    /// Compiled on first use; `None` when the model has no template.
    template: OnceCell<Option<ChatTemplate>>,
    /// Built on first constrained sampler (a pass over the vocabulary).
    grammars: OnceCell<GrammarCompiler>,
}

/// Compile-time check that a backend can move between threads.
const _: fn() = || {
    fn is_send<T: Send>() {}
    is_send::<Backend>();
};

impl Backend {
    /// Loads the model of `spec` on `options.device`.
    pub fn load(spec: &ModelSpec, options: &BackendOptions) -> Result<Backend> {
        let load = LoadOptions {
            device: options.device,
            execution: options.execution,
            max_context: options.max_context,
            adapter: options.adapter.clone(),
            kv_dtype: options.kv_dtype,
        };
        let engine = with_device(options.device, || Engine::load(&spec.path, &load))?;
        Ok(Backend {
            fingerprint: engine.fingerprint(),
            context: engine.new_cache().limit(),
            engine,
            device: options.device,
            prefill_chunk: options.prefill_chunk.max(1),
            seqs: Slots::new("sequence"),
            samplers: Slots::new("sampler"),
            tokenizer: OnceCell::new(),
            template: OnceCell::new(),
            grammars: OnceCell::new(),
        })
    }

    /// The engine underneath (model, file metadata).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        self.engine.config()
    }

    /// The most positions one sequence may hold.
    pub fn context_length(&self) -> usize {
        self.context
    }

    /// The model fingerprint stamped into KV snapshots.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// What this backend supports.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            supports_structured_output: true,
            supports_speculative_decoding: true,
            supports_kv_prefix_copy: true,
            supports_multimodal: false,
        }
    }

    /// The device, the execution mode and MLX's memory counters.
    pub fn device_info(&self) -> Result<DeviceInfo> {
        let stats = transforms::memory_stats()?;
        Ok(DeviceInfo {
            device: self.device,
            execution: self.engine.execution,
            active_bytes: stats.active,
            peak_bytes: stats.peak,
            cache_bytes: stats.cache,
        })
    }

    /// True once the model is loaded and its device is usable (a `Backend` only exists after
    /// a successful load, so this checks the device).
    pub fn is_ready(&self) -> bool {
        self.device.is_available()
    }

    /// A new, empty sequence.
    pub fn create_seq(&mut self) -> SeqId {
        SeqId(self.seqs.insert(self.engine.new_cache()))
    }

    /// Frees a sequence and its KV; its id becomes invalid.
    pub fn free_seq(&mut self, seq: SeqId) -> Result<()> {
        self.seqs.remove(seq.0).map(drop)
    }

    /// Empties a sequence (keeps its id and allocation).
    pub fn reset_seq(&mut self, seq: SeqId) -> Result<()> {
        self.seqs.get_mut(seq.0)?.reset();
        Ok(())
    }

    /// Keeps the first `n` positions of a sequence (rolls back a rejected draft).
    pub fn truncate_seq(&mut self, seq: SeqId, n: usize) -> Result<()> {
        self.seqs.get_mut(seq.0)?.truncate(n)
    }

    /// Positions a sequence holds (the position of its next token).
    pub fn seq_len(&self, seq: SeqId) -> Result<usize> {
        Ok(self.seqs.get(seq.0)?.len())
    }

    /// Live sequences.
    pub fn seq_count(&self) -> usize {
        self.seqs.len()
    }

    /// Appends `tokens` to a sequence and returns the logits of its last position, or of every
    /// new position when `want_all_logits` (rows in token order), through [`Engine::prefill`]
    /// in chunks of the backend's `prefill_chunk`. On error the sequence is left as it was.
    pub fn prefill(&mut self, seq: SeqId, tokens: &[u32], want_all_logits: bool) -> Result<Logits> {
        let rows = match want_all_logits {
            true => LogitRows::All,
            false => LogitRows::Last,
        };
        let (device, chunk, engine) = (self.device, self.prefill_chunk, &self.engine);
        let cache = self.seqs.get_mut(seq.0)?;
        with_device(device, || engine.prefill(tokens, cache, chunk, rows))
    }

    /// Bytes of KV memory a sequence holds (its allocated capacity, not only its filled
    /// positions).
    pub fn seq_bytes(&self, seq: SeqId) -> Result<usize> {
        Ok(self.seqs.get(seq.0)?.bytes())
    }

    /// One decode step for a batch: each `(seq, token)` appends `token` to `seq` at that
    /// sequence's own position, all in one forward pass. Returns one logits row per entry, in
    /// order. Fails before running on an unknown or repeated id or a full sequence; on any
    /// error every sequence is left as it was.
    pub fn decode(&mut self, batch: &[(SeqId, u32)]) -> Result<Vec<Vec<f32>>> {
        if batch.is_empty() {
            return Err(Error::InvalidArgument("decode of an empty batch".into()));
        }
        let ids: Vec<u64> = batch.iter().map(|(s, _)| s.0).collect();
        let tokens: Vec<u32> = batch.iter().map(|&(_, t)| t).collect();
        let (device, engine) = (self.device, &self.engine);
        let mut caches = self.seqs.many_mut(&ids)?;
        for cache in caches.iter() {
            cache.check_room(1)?;
        }
        let starts: Vec<usize> = caches.iter().map(|c| c.len()).collect();
        let result = with_device(device, || decode_batch(engine, &tokens, &mut caches));
        rollback_on_error(result, &mut caches, &starts)
    }

    /// Makes `dst` a copy of the first `n_tokens` positions of `src` (dst's old content is
    /// dropped; `src` is unchanged). `src == dst` truncates.
    pub fn copy_prefix(&mut self, src: SeqId, dst: SeqId, n_tokens: usize) -> Result<()> {
        self.seqs.get(dst.0)?;
        let device = self.device;
        let source = self.seqs.get(src.0)?;
        let copy = with_device(device, || {
            let copy = source.copy_prefix(n_tokens)?;
            transforms::eval(&copy.arrays())?;
            Ok(copy)
        })?;
        self.seqs.replace(dst.0, copy)
    }

    /// A self-describing snapshot of a sequence's KV (format in [`snapshot`]).
    pub fn serialize(&self, seq: SeqId) -> Result<Vec<u8>> {
        let cache = self.seqs.get(seq.0)?;
        let (keys, values) = with_device(self.device, || cache.to_host())?;
        Ok(snapshot::encode(
            &self.fingerprint,
            self.kv_shape(),
            cache.len(),
            cache.dtype(),
            &keys,
            &values,
        ))
    }

    /// A new sequence holding the KV of a snapshot. Rejects a truncated or corrupted buffer and
    /// one written by another model, with an error saying which.
    pub fn hydrate(&mut self, bytes: &[u8]) -> Result<SeqId> {
        let snap = snapshot::decode(bytes)?;
        self.check_snapshot(&snap)?;
        let mut cache = self.engine.new_cache();
        with_device(self.device, || {
            cache.load_host(snap.len, &snap.keys, &snap.values)?;
            transforms::eval(&cache.arrays())
        })?;
        Ok(SeqId(self.seqs.insert(cache)))
    }

    /// A new sampler; fails on settings out of range or a `logit_bias` id outside the
    /// vocabulary.
    pub fn create_sampler(&mut self, params: SamplerParams) -> Result<SamplerId> {
        params.validate_for(self.config().vocab_size)?;
        Ok(SamplerId(self.samplers.insert(Sampler::new(params))))
    }

    /// A new sampler whose tokens must follow `grammar`; a grammar llguidance refuses is an
    /// [`Error::Grammar`] with its message. The grammar compiler is built on first use.
    pub fn create_constrained_sampler(
        &mut self,
        params: SamplerParams,
        grammar: &Grammar,
    ) -> Result<SamplerId> {
        let constraint = self.grammar_compiler()?.compile(grammar)?;
        self.create_sampler_with(params, constraint)
    }

    /// A new sampler carrying an already compiled constraint.
    pub fn create_sampler_with(
        &mut self,
        params: SamplerParams,
        constraint: Constraint,
    ) -> Result<SamplerId> {
        params.validate_for(self.config().vocab_size)?;
        let sampler = Sampler::with_constraint(params, constraint);
        Ok(SamplerId(self.samplers.insert(sampler)))
    }

    /// The grammar compiler for the model's tokenizer, built on first use.
    pub fn grammar_compiler(&self) -> Result<&GrammarCompiler> {
        if let Some(g) = self.grammars.get() {
            return Ok(g);
        }
        let built = GrammarCompiler::new(self.tokenizer()?)?;
        Ok(self.grammars.get_or_init(|| built))
    }

    /// Undoes the last `n` tokens a sampler's constraint committed (a rejected speculative
    /// draft); a sampler without a constraint has nothing to undo.
    pub fn rollback_sampler(&mut self, sampler: SamplerId, n: usize) -> Result<()> {
        match self.samplers.get_mut(sampler.0)?.constraint_mut() {
            Some(c) => c.rollback(n),
            None => Ok(()),
        }
    }

    /// The tokens a sampler's constraint forces next, already committed to it (empty without
    /// a constraint or when nothing is forced): append them to the sequence without sampling.
    pub fn forced_tokens(&mut self, sampler: SamplerId) -> Result<Vec<u32>> {
        self.samplers.get_mut(sampler.0)?.forced_tokens()
    }

    /// Draws a token from `logits` (one row) given the sequence's `history` (for penalties),
    /// with its logprob and the top-n logprobs the sampler was created to report.
    pub fn sample(
        &mut self,
        sampler: SamplerId,
        logits: &[f32],
        history: &[u32],
    ) -> Result<Sampled> {
        self.samplers.get_mut(sampler.0)?.sample(logits, history)
    }

    /// Frees a sampler; its id becomes invalid.
    pub fn free_sampler(&mut self, sampler: SamplerId) -> Result<()> {
        self.samplers.remove(sampler.0).map(drop)
    }

    /// The model's tokenizer (GGUF metadata or `tokenizer.json`), built on first use.
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        if let Some(t) = self.tokenizer.get() {
            return Ok(t);
        }
        let built = self.engine.tokenizer()?;
        Ok(self.tokenizer.get_or_init(|| built))
    }

    /// Text → ids. With `add_special`, BOS (and EOS) are added as the model's vocabulary asks;
    /// special-token text such as `<|im_start|>` always becomes its token.
    pub fn tokenize(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        self.tokenizer()?.encode(text, add_special)
    }

    /// Ids → text, as one piece: SentencePiece's leading dummy space is dropped, bytes that are
    /// not UTF-8 become U+FFFD; with `skip_special`, control tokens are left out. An id outside
    /// the vocabulary is an error.
    pub fn detokenize(&self, tokens: &[u32], skip_special: bool) -> Result<String> {
        self.tokenizer()?.decode(tokens, skip_special)
    }

    /// The bytes one token stands for, for streaming: the pieces of generated tokens, appended,
    /// are the generated text byte for byte. A piece may be an incomplete UTF-8 sequence (a
    /// character split across tokens); control tokens stand for their own text.
    pub fn token_piece(&self, token: u32) -> Result<&[u8]> {
        let tokenizer = self.tokenizer()?;
        tokenizer.token_bytes(token).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "token id {token} is outside the vocabulary of {} tokens",
                tokenizer.vocab_size()
            ))
        })
    }

    /// The ids that end a generation (eos, eot and end-of-turn tokens such as `<|im_end|>`),
    /// sorted.
    pub fn eog_tokens(&self) -> Result<&[u32]> {
        Ok(self.tokenizer()?.eog_ids())
    }

    /// The model's chat template (GGUF `tokenizer.chat_template`, `tokenizer_config.json`, or
    /// the built-in Gemma turn format), compiled on first use with the model's BOS/EOS texts;
    /// `None` when the model has none.
    pub fn chat_template(&self) -> Result<Option<&ChatTemplate>> {
        if let Some(t) = self.template.get() {
            return Ok(t.as_ref());
        }
        let compiled = match self.engine.chat_template()? {
            Some(source) => Some(compile_template(&source, self.tokenizer()?)?),
            None => None,
        };
        Ok(self.template.get_or_init(|| compiled).as_ref())
    }

    /// Renders `messages` with the chat template; with `add_generation_prompt` the text ends
    /// where the assistant's reply begins. Tokenize the result with `add_special = false`: the
    /// template writes its own special tokens. A model without a template is an error.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        match self.chat_template()? {
            Some(template) => template.render(messages, add_generation_prompt),
            None => Err(Error::InvalidArgument(
                "the model has no chat template".into(),
            )),
        }
    }

    /// The cache shape of this model.
    fn kv_shape(&self) -> KvShape {
        let c = self.config();
        KvShape {
            layers: c.n_layers,
            kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
        }
    }

    /// Checks that a decoded snapshot was written by this model and fits its context.
    fn check_snapshot(&self, snap: &snapshot::Snapshot) -> Result<()> {
        snap.check_against(&self.fingerprint, self.kv_shape(), self.context_length())
    }
}

/// Compiles a template with the texts of the tokenizer's BOS and EOS tokens.
fn compile_template(source: &str, tokenizer: &Tokenizer) -> Result<ChatTemplate> {
    let piece = |id: Option<u32>| {
        id.and_then(|i| tokenizer.id_to_token(i))
            .unwrap_or("")
            .to_string()
    };
    ChatTemplate::new(source, &piece(tokenizer.bos()), &piece(tokenizer.eos()))
}

/// On error, truncates each cache back to its length before the call.
fn rollback_on_error<T>(
    result: Result<T>,
    caches: &mut [&mut KvCache],
    starts: &[usize],
) -> Result<T> {
    if result.is_err() {
        for (cache, &start) in caches.iter_mut().zip(starts) {
            if cache.len() > start {
                cache.truncate(start)?;
            }
        }
    }
    result
}

/// One batched decode step; returns one logits row per sequence.
fn decode_batch(
    engine: &Engine,
    tokens: &[u32],
    caches: &mut [&mut KvCache],
) -> Result<Vec<Vec<f32>>> {
    let vocab = engine.config().vocab_size;
    let logits = engine.decode(tokens, caches)?; // [B, V]
    let views: Vec<&KvCache> = caches.iter().map(|c| &**c).collect();
    let data = evaluate_with_cache(&logits, &views)?;
    Ok(data.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
}
