//! The embedding surface: one loaded model serving many sequences, each a KV slot addressed
//! by a [`SeqId`], plus samplers, KV prefix copies and KV snapshots. `src/ffi.rs` exposes the
//! same contract to C. See `docs/BACKEND.md`.
//!
//! Thread-safety: a [`Backend`] is `Send` (it may move to another thread) but not `Sync`
//! (MLX graphs must not be built or evaluated from two threads at once). Every method runs on
//! the backend's device whatever the calling thread's default device is.
#![forbid(unsafe_code)]

mod slots;
pub mod snapshot;

use crate::engine::{Engine, LoadOptions};
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::mlx::{transforms, with_device, Array, Device};
use crate::model::{Execution, ModelConfig};
use crate::sampler::Sampler;
pub use crate::sampler::{Sampled, SamplerParams};
use slots::Slots;
use snapshot::{Fingerprint, KvShape};
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
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            device: Device::Cpu,
            execution: None,
            max_context: None,
            prefill_chunk: 512,
        }
    }
}

/// What this backend can do. Each flag is true only when the feature works end to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Grammar/JSON-constrained sampling: not implemented.
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

/// Logits of one or more positions, row-major [rows, vocab].
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

/// A loaded model serving sequences. `Send`, not `Sync`: see the module docs.
pub struct Backend {
    engine: Engine,
    device: Device,
    prefill_chunk: usize,
    context: usize,
    fingerprint: Fingerprint,
    seqs: Slots<KvCache>,
    samplers: Slots<Sampler>,
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
            supports_structured_output: false,
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
    /// new position when `want_all_logits` (rows in token order). On error the sequence is
    /// left as it was.
    pub fn prefill(&mut self, seq: SeqId, tokens: &[u32], want_all_logits: bool) -> Result<Logits> {
        if tokens.is_empty() {
            return Err(Error::InvalidArgument(
                "prefill of an empty token list".into(),
            ));
        }
        let (device, chunk, engine) = (self.device, self.prefill_chunk, &self.engine);
        let cache = self.seqs.get_mut(seq.0)?;
        cache.check_room(tokens.len())?;
        let start = cache.len();
        let result = with_device(device, || {
            prefill_chunks(engine, cache, tokens, chunk, want_all_logits)
        });
        rollback_on_error(result, &mut [cache], &[start])
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

    /// A new sampler; fails on settings out of range.
    pub fn create_sampler(&mut self, params: SamplerParams) -> Result<SamplerId> {
        params.validate()?;
        Ok(SamplerId(self.samplers.insert(Sampler::new(params))))
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

/// Runs `tokens` through the model in chunks; keeps every row or only the last.
fn prefill_chunks(
    engine: &Engine,
    cache: &mut KvCache,
    tokens: &[u32],
    chunk: usize,
    all: bool,
) -> Result<Logits> {
    let vocab = engine.config().vocab_size;
    let mut data = Vec::with_capacity(if all { tokens.len() * vocab } else { vocab });
    for piece in tokens.chunks(chunk) {
        let logits = engine.model.forward(piece, &mut [&mut *cache], !all)?; // [1, L or 1, V]
        let rows = evaluate_with_cache(&logits, &[&*cache])?;
        if !all {
            data.clear();
        }
        data.extend(rows);
    }
    Ok(Logits {
        rows: data.len() / vocab,
        vocab,
        data,
    })
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

/// Evaluates `logits` together with the caches they were computed into (so no cache is left
/// holding an unevaluated graph) and copies the logits out.
fn evaluate_with_cache(logits: &Array, caches: &[&KvCache]) -> Result<Vec<f32>> {
    let mut outputs: Vec<&Array> = caches.iter().flat_map(|c| c.arrays()).collect();
    outputs.push(logits);
    transforms::eval(&outputs)?;
    logits.to_vec::<f32>()
}
