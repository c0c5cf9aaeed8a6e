//! The engine thread: it owns the [`Backend`] (MLX is never touched from an HTTP handler) and
//! runs continuous batching. Each step frees the sequences whose client went away, prefills
//! a budget of prompt positions (oldest prompt first; a smaller budget while streams are
//! running), then advances every decoding sequence by one token in a single batched decode. Requests join at the next step, finished ones leave, and
//! their KV goes to the [`PrefixCache`], from which a new request copies its longest cached
//! prefix instead of computing it again.

use super::logprobs::{self, LogprobTracker, TokenLogprobs};
use super::metrics::Metrics;
use super::prefix_cache::PrefixCache;
use super::stop::StopFilter;
use crate::backend::{Backend, BackendOptions, ModelSpec, SamplerId, SamplerParams, SeqId};
use crate::chat_template::ChatTemplate;
use crate::constraint::{Constraint, GrammarCompiler};
use crate::engine::{Engine, LoadOptions};
use crate::sampler::Sampled;
use crate::speculative::{DraftModel, Drafter, Pacer, PromptLookup, SpeculativeOptions};
use crate::tokenizer::{StreamDecoder, Tokenizer};
use crate::{Error, Result};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// How often an idle engine thread looks at the stop flag.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// What the model offers the HTTP side once it is loaded (all pure Rust, no MLX).
pub struct ModelInfo {
    /// The model's tokenizer.
    pub tokenizer: Tokenizer,
    /// Its chat template, if it has one.
    pub template: Option<ChatTemplate>,
    /// Positions one sequence may hold.
    pub n_ctx: usize,
    /// Compiles `response_format` grammars (on the HTTP side, so a bad one is a 400); `None`
    /// when the tokenizer cannot end a grammar (no end-of-generation token), with the reason.
    pub grammars: std::result::Result<GrammarCompiler, String>,
}

/// How the engine thread loads and batches.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The model file or directory.
    pub model: PathBuf,
    /// Most sequences decoded together.
    pub parallel: usize,
    /// Cap on positions per sequence; `None` is the model's context.
    pub ctx_size: Option<usize>,
    /// The element type of the sequences' KV caches.
    pub kv_dtype: crate::kv_cache::KvDtype,
    /// Prompt positions prefilled per step (over all prompts being read, oldest first) while
    /// no sequence decodes.
    pub prefill_chunk: usize,
    /// The same while some sequence decodes: smaller, since a step's prefill delays every
    /// running stream's next token (the inter-token latency), at little cost in prefill speed.
    pub prefill_chunk_while_decoding: usize,
    /// Bound on the KV bytes the prefix cache keeps (0 disables it).
    pub prefix_cache_bytes: usize,
    /// Speculation for a sequence that decodes alone; `None` never speculates.
    pub speculation: Option<SpeculativeOptions>,
    /// Where drafts come from when speculating: this draft model, else prompt lookup.
    pub draft_model: Option<PathBuf>,
    /// A LoRA adapter directory applied to the model.
    pub adapter: Option<PathBuf>,
}

/// What the engine thread shares with the HTTP side.
#[derive(Clone, Default)]
pub struct Shared {
    /// The server's metrics.
    pub metrics: Arc<Metrics>,
    /// Set on SIGINT/SIGTERM: running generations end at the next step (finish reason
    /// `length`) and queued requests are refused.
    pub stopping: Arc<AtomicBool>,
}

/// One generation request, already tokenized and validated.
pub struct Job {
    /// Prompt token ids (non-empty, shorter than the context).
    pub prompt: Vec<u32>,
    /// Sampler settings (validated).
    pub sampling: SamplerParams,
    /// The grammar the output must follow, compiled for this job.
    pub constraint: Option<Constraint>,
    /// Most tokens to generate (≥ 1).
    pub max_tokens: usize,
    /// Stop strings (each non-empty).
    pub stop: Vec<String>,
    /// Where the output goes; the job is cancelled when the receiver is dropped.
    pub events: UnboundedSender<Event>,
    /// When the request arrived (for the time to first token).
    pub received: Instant,
    /// False when the request opted out of speculative decoding.
    pub speculative: bool,
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` or the context limit.
    Length,
}

impl FinishReason {
    /// OpenAI's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What the engine thread sends back for a job. At most `max_tokens` + 2 text events (one per
/// token, the held-back tail, the last logprobs), then one `Done` or `Failed`, so an unbounded
/// channel stays bounded.
#[derive(Debug)]
pub enum Event {
    /// Text ready to send (never part of a stop string), with the logprobs of the tokens it
    /// completes when the request asked for them.
    Text {
        /// The text (may be empty when only logprobs are left to send).
        text: String,
        /// Entries of the tokens this text completes, in order.
        logprobs: Vec<TokenLogprobs>,
    },
    /// The generation ended.
    Done {
        /// Why it ended.
        finish: FinishReason,
        /// Prompt tokens read.
        prompt_tokens: usize,
        /// Tokens generated (an end-of-generation token included).
        completion_tokens: usize,
        /// Prompt positions taken from the prefix cache.
        cached_tokens: usize,
    },
    /// The engine failed on this job (not the client's fault).
    Failed(String),
    /// The server is shutting down and did not start this job.
    Unavailable(String),
}

/// Loads the model, reports it through `on_ready`, then serves `jobs` until every sender is
/// dropped. A load failure is returned (and `on_ready` is not called).
pub fn run(
    config: &EngineConfig,
    jobs: Receiver<Job>,
    shared: Shared,
    on_ready: impl FnOnce(ModelInfo),
) -> Result<()> {
    let options = BackendOptions {
        max_context: config.ctx_size,
        prefill_chunk: config.prefill_chunk,
        adapter: config.adapter.clone(),
        kv_dtype: config.kv_dtype,
        ..BackendOptions::default()
    };
    let backend = Backend::load(&ModelSpec::new(&config.model), &options)?;
    let draft = match &config.draft_model {
        Some(path) => Some(load_draft(&backend, path)?),
        None => None,
    };
    let tokenizer = backend.tokenizer()?.clone();
    let template = backend.chat_template()?.cloned();
    let grammars = backend
        .grammar_compiler()
        .cloned()
        .map_err(|e| e.to_string());
    on_ready(ModelInfo {
        tokenizer: tokenizer.clone(),
        template,
        n_ctx: backend.context_length(),
        grammars,
    });
    let mut scheduler = Scheduler {
        backend,
        tokenizer,
        active: Vec::new(),
        parallel: config.parallel.max(1),
        chunk: config.prefill_chunk.max(1),
        chunk_while_decoding: config.prefill_chunk_while_decoding.max(1),
        cache: PrefixCache::new(config.prefix_cache_bytes),
        speculation: config.speculation,
        draft,
        shared,
    };
    scheduler.serve(&jobs);
    let cached = scheduler.cache.drain();
    scheduler.free_all(cached);
    Ok(())
}

/// Loads the draft model at `path` for the backend's model, refusing a mismatched vocabulary.
fn load_draft(backend: &Backend, path: &std::path::Path) -> Result<DraftModel> {
    // Both errors already say what failed: the load names the file, the check the mismatch.
    let draft = Engine::load(path, &LoadOptions::default())?;
    DraftModel::new(backend.engine(), draft)
}

/// A job holding a sequence.
struct Active {
    job: Job,
    seq: SeqId,
    sampler: SamplerId,
    /// Prompt and generated tokens (the penalties' history).
    history: Vec<u32>,
    /// Prompt tokens already in the KV.
    prefilled: usize,
    /// Prompt tokens copied from the prefix cache.
    cached: usize,
    /// Tokens generated so far.
    generated: usize,
    /// A sampled token the next decode step appends.
    next: Option<u32>,
    /// When the last token was sampled (for the inter-token latency).
    last_token: Option<Instant>,
    decoder: StreamDecoder,
    stops: StopFilter,
    /// Present when the request asked for logprobs.
    logprobs: Option<LogprobTracker>,
    finished: bool,
    /// The job's last event (done or failed), held back until the sequence is retired so a
    /// client that has its reply finds the slot free and the gauges up to date.
    outcome: Option<Event>,
    /// The engine failed on it: its KV is not kept.
    failed: bool,
    /// Its drafter and draft-length policy, when it speculates.
    speculation: Option<Speculation>,
}

/// Speculation of one sequence: its prompt lookup (used when the server has no draft model)
/// and its draft-length policy.
struct Speculation {
    lookup: PromptLookup,
    pacer: Pacer,
}

struct Scheduler {
    backend: Backend,
    tokenizer: Tokenizer,
    active: Vec<Active>,
    parallel: usize,
    chunk: usize,
    chunk_while_decoding: usize,
    cache: PrefixCache<SeqId>,
    speculation: Option<SpeculativeOptions>,
    /// The draft model, shared by the sequences: only one speculates at a time (it decodes
    /// alone), and the draft model's cache follows whichever that is.
    draft: Option<DraftModel>,
    shared: Shared,
}

impl Scheduler {
    /// Admits jobs and runs steps until the job channel closes and no job is left.
    fn serve(&mut self, jobs: &Receiver<Job>) {
        loop {
            if !self.admit(jobs) {
                return;
            }
            self.step();
            self.retire();
        }
    }

    /// Takes queued jobs while there are free slots (waiting when idle); false once the job
    /// channel is closed, or the server is stopping, and nothing is running. While stopping,
    /// queued jobs are refused.
    fn admit(&mut self, jobs: &Receiver<Job>) -> bool {
        if self.stopping() {
            while let Ok(job) = jobs.try_recv() {
                self.shared.metrics.queue_depth.dec();
                let refusal = Event::Unavailable("the server is shutting down".into());
                let _ = job.events.send(refusal);
            }
            return !self.active.is_empty();
        }
        while self.active.len() < self.parallel {
            let next = match self.active.is_empty() {
                true => jobs.recv_timeout(IDLE_POLL),
                false => jobs.try_recv().map_err(|e| match e {
                    TryRecvError::Empty => RecvTimeoutError::Timeout,
                    TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
                }),
            };
            let job = match next {
                Ok(job) => job,
                // Nothing queued (when idle, the caller comes back after a look at the flag).
                Err(RecvTimeoutError::Timeout) => return true,
                Err(RecvTimeoutError::Disconnected) => return !self.active.is_empty(),
            };
            self.shared.metrics.queue_depth.dec();
            if !job.events.is_closed() {
                self.start(job);
            }
        }
        true
    }

    /// Gives `job` a sequence, seeded with the longest cached prefix of its prompt.
    fn start(&mut self, mut job: Job) {
        let params = job.sampling.clone();
        let created = match job.constraint.take() {
            Some(c) => self.backend.create_sampler_with(params, c),
            None => self.backend.create_sampler(params),
        };
        let sampler = match created {
            Ok(sampler) => sampler,
            Err(e) => {
                let _ = job.events.send(Event::Failed(e.to_string()));
                return;
            }
        };
        let seq = self.backend.create_seq();
        let cached = self.reuse_prefix(seq, &job.prompt);
        let metrics = &self.shared.metrics;
        metrics.prompt_tokens.inc_by(job.prompt.len() as u64);
        self.active.push(Active {
            seq,
            sampler,
            history: job.prompt.clone(),
            prefilled: cached,
            cached,
            generated: 0,
            next: None,
            last_token: None,
            decoder: StreamDecoder::continuing(&self.tokenizer, true),
            stops: StopFilter::new(job.stop.clone()),
            logprobs: job.sampling.logprobs.then(LogprobTracker::default),
            finished: false,
            outcome: None,
            failed: false,
            speculation: self
                .speculation
                .filter(|_| job.speculative)
                .map(|options| Speculation {
                    lookup: PromptLookup::default(),
                    pacer: Pacer::new(options.draft_max, options.adaptive),
                }),
            job,
        });
        metrics.busy_sequences.set(self.active.len() as i64);
    }

    /// Copies into the empty `seq` the longest cached prefix of `prompt`, leaving at least its
    /// last token to prefill (its logits give the first token); returns the positions copied.
    fn reuse_prefix(&mut self, seq: SeqId, prompt: &[u32]) -> usize {
        let metrics = &self.shared.metrics;
        let Some((&source, len)) = self.cache.lookup(prompt, prompt.len() - 1) else {
            metrics.prefix_cache_misses.inc();
            return 0;
        };
        match self.backend.copy_prefix(source, seq, len) {
            Ok(()) => {
                metrics.prefix_cache_hit_tokens.observe(len as f64);
                len
            }
            Err(e) => {
                tracing::warn!("prefix cache copy of {len} positions: {e}");
                metrics.prefix_cache_misses.inc();
                0
            }
        }
    }

    /// True once SIGINT/SIGTERM arrived.
    fn stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::Relaxed)
    }

    /// One engine step: cancellations, a budget of prompt positions, one batched decode.
    fn step(&mut self) {
        let stopping = self.stopping();
        for a in self.active.iter_mut().filter(|a| !a.finished) {
            if a.job.events.is_closed() {
                a.finished = true;
            } else if stopping {
                finish(a, FinishReason::Length, true);
            }
        }
        let decoding = self.active.iter().any(|a| !a.finished && a.next.is_some());
        // While sequences decode, each step's prefill is what delays their next token.
        let mut budget = match decoding {
            true => self.chunk_while_decoding,
            false => self.chunk,
        };
        for i in 0..self.active.len() {
            let a = &self.active[i];
            let left = a.job.prompt.len() - a.prefilled;
            if !a.finished && left > 0 && budget > 0 {
                let n = left.min(budget);
                budget -= n;
                self.prefill_chunk(i, n);
            }
        }
        self.decode_step();
    }

    /// Prefills the next `n` positions of sequence `i`'s prompt; after the last one samples its
    /// first token.
    fn prefill_chunk(&mut self, i: usize, n: usize) {
        let a = &mut self.active[i];
        let end = a.prefilled + n;
        let result = self
            .backend
            .prefill(a.seq, &a.job.prompt[a.prefilled..end], false);
        let computed = end - a.prefilled;
        a.prefilled = end;
        self.shared.metrics.prefill_tokens.inc_by(computed as u64);
        let logits = match result {
            Ok(logits) => logits,
            Err(e) => return fail(a, &e),
        };
        if end == a.job.prompt.len() {
            match logits.last() {
                Some(row) => {
                    let row = row.to_vec();
                    self.sample_and_emit(i, &row);
                }
                None => fail(
                    a,
                    &Error::InvalidArgument("prefill returned no logits".into()),
                ),
            }
        }
    }

    /// Appends every decoding sequence's pending token in one forward pass and samples the
    /// next one for each.
    fn decode_step(&mut self) {
        let members: Vec<usize> = (0..self.active.len())
            .filter(|&i| !self.active[i].finished && self.active[i].next.is_some())
            .collect();
        if members.is_empty() {
            return;
        }
        if let [i] = members[..] {
            if self.active[i].speculation.is_some() {
                return self.speculative_step(i);
            }
        }
        let size = members.len() as f64;
        self.shared.metrics.decode_batch_size.observe(size);
        let batch: Vec<(SeqId, u32)> = members
            .iter()
            .filter_map(|&i| Some((self.active[i].seq, self.active[i].next.take()?)))
            .collect();
        match self.backend.decode(&batch) {
            Ok(rows) => {
                for (&i, row) in members.iter().zip(rows) {
                    self.sample_and_emit(i, &row);
                }
            }
            Err(e) => {
                for &i in &members {
                    fail(&mut self.active[i], &e);
                }
            }
        }
    }

    /// Advances sequence `i`, which decodes alone, by a speculative step: drafts from its
    /// history, scores them with its pending token in one forward pass and emits the accepted
    /// drafts and the token drawn after them (a plain decode step when nothing is drafted).
    fn speculative_step(&mut self, i: usize) {
        let n_ctx = self.backend.context_length();
        let a = &mut self.active[i];
        let Some(spec) = a.speculation.as_mut() else {
            return;
        };
        // The pending token ends the history; the KV holds every token before it.
        if a.next.take().is_none() {
            return;
        }
        // After the step the KV holds the history and the accepted drafts, and the last
        // emitted token must still fit; drafts past max_tokens would be thrown away.
        let room = n_ctx.saturating_sub(a.history.len());
        let left = a.job.max_tokens.saturating_sub(a.generated + 1);
        let k = spec.pacer.next_len().min(room).min(left);
        let start = Instant::now();
        let drafts = match self.draft.as_mut() {
            Some(model) if k > 0 => model.draft(&a.history, k).unwrap_or_else(|e| {
                // The target can always go on alone: a plain step instead.
                tracing::warn!("draft model failed, decoding without drafts: {e}");
                vec![]
            }),
            _ => spec.lookup.lookup(&a.history, k),
        };
        let metrics = &self.shared.metrics;
        metrics.decode_batch_size.observe(1.0);
        let verdict = match self
            .backend
            .speculative_step(a.seq, a.sampler, &a.history, &drafts)
        {
            Ok(verdict) => verdict,
            Err(e) => return fail(a, &e),
        };
        spec.pacer
            .record(drafts.len(), verdict.accepted, start.elapsed());
        metrics.drafted_tokens.inc_by(drafts.len() as u64);
        metrics.accepted_tokens.inc_by(verdict.accepted as u64);
        for draw in &verdict.draws {
            self.emit(i, draw);
            if self.active[i].finished {
                break;
            }
        }
        self.trim_past_history(i);
    }

    /// A generation that ended inside a speculative step may leave accepted drafts in the KV
    /// past its last emitted token; they go, so that the KV holds a prefix of the history.
    fn trim_past_history(&mut self, i: usize) {
        let a = &self.active[i];
        if !a.finished || a.failed {
            return;
        }
        if let Ok(len) = self.backend.seq_len(a.seq) {
            if len > a.history.len() {
                if let Err(e) = self.backend.truncate_seq(a.seq, a.history.len()) {
                    let a = &mut self.active[i];
                    fail(a, &e);
                }
            }
        }
    }

    /// Samples sequence `i`'s next token from `logits`, sends its text and decides whether
    /// the generation goes on.
    fn sample_and_emit(&mut self, i: usize, logits: &[f32]) {
        let a = &mut self.active[i];
        let sampled = match self.backend.sample(a.sampler, logits, &a.history) {
            Ok(sampled) => sampled,
            Err(e) => return fail(a, &e),
        };
        self.emit(i, &sampled);
    }

    /// Appends a drawn token to sequence `i`, sends its text and decides whether the
    /// generation goes on (then the token is the next one to feed).
    fn emit(&mut self, i: usize, sampled: &Sampled) {
        let a = &mut self.active[i];
        let token = sampled.token;
        a.generated += 1;
        a.history.push(token);
        self.record_token_time(i);
        let a = &mut self.active[i];
        if self.tokenizer.is_eog(token) {
            return finish(a, FinishReason::Stop, true);
        }
        track_logprobs(a, &self.tokenizer, sampled);
        if let Some(piece) = a.decoder.push(token) {
            let released = a.stops.push(&piece);
            send_text(a, released.text);
            if released.stopped {
                return finish(a, FinishReason::Stop, false);
            }
        }
        // The token still has to enter the KV before the next one can be sampled.
        let full = a.history.len() > self.backend.context_length();
        if a.generated >= a.job.max_tokens || full {
            return finish(a, FinishReason::Length, true);
        }
        a.next = Some(token);
    }

    /// Observes sequence `i`'s time to first token or inter-token latency for a new token.
    fn record_token_time(&mut self, i: usize) {
        let metrics = &self.shared.metrics;
        let a = &mut self.active[i];
        let now = Instant::now();
        match a.last_token {
            None => metrics
                .time_to_first_token
                .observe((now - a.job.received).as_secs_f64()),
            Some(last) => metrics
                .inter_token_latency
                .observe((now - last).as_secs_f64()),
        }
        metrics.generated_tokens.inc();
        a.last_token = Some(now);
    }

    /// Frees the samplers of finished jobs and hands their sequences to the prefix cache
    /// (which frees what it does not keep).
    fn retire(&mut self) {
        let (done, kept): (Vec<Active>, Vec<Active>) =
            self.active.drain(..).partition(|a| a.finished);
        self.active = kept;
        let mut outcomes = Vec::with_capacity(done.len());
        for a in done {
            if let Err(e) = self.backend.free_sampler(a.sampler) {
                tracing::warn!("freeing sampler {:?}: {e}", a.sampler);
            }
            let released = match a.failed {
                true => vec![a.seq],
                false => self.keep(a.seq, a.history),
            };
            self.free_all(released);
            outcomes.extend(a.outcome.map(|event| (a.job.events, event)));
        }
        let metrics = &self.shared.metrics;
        metrics.busy_sequences.set(self.active.len() as i64);
        metrics.prefix_cache_bytes.set(self.cache.bytes() as i64);
        metrics.prefix_cache_entries.set(self.cache.len() as i64);
        for (events, event) in outcomes {
            let _ = events.send(event);
        }
    }

    /// Offers a finished sequence to the prefix cache: its KV holds the first `seq_len`
    /// tokens of `history`. Returns the sequences to free.
    fn keep(&mut self, seq: SeqId, mut history: Vec<u32>) -> Vec<SeqId> {
        let (Ok(len), Ok(bytes)) = (self.backend.seq_len(seq), self.backend.seq_bytes(seq)) else {
            return vec![seq];
        };
        history.truncate(len);
        let released = self.cache.insert(seq, history, bytes);
        let evicted = released.evicted as u64;
        self.shared.metrics.prefix_cache_evictions.inc_by(evicted);
        released.items
    }

    /// Frees sequences.
    fn free_all(&mut self, seqs: Vec<SeqId>) {
        for seq in seqs {
            if let Err(e) = self.backend.free_seq(seq) {
                tracing::warn!("freeing sequence {seq:?}: {e}");
            }
        }
    }
}

/// Records a sampled token's logprobs, when the request asked for them.
fn track_logprobs(a: &mut Active, tokenizer: &Tokenizer, sampled: &Sampled) {
    if let Some(tracker) = &mut a.logprobs {
        let bytes = logprobs::contributed_bytes(tokenizer, sampled.token);
        tracker.push(tokenizer, sampled, bytes);
    }
}

/// Sends text released to the client, with the logprobs it completes; nothing when both are
/// empty.
fn send_text(a: &mut Active, text: String) {
    let logprobs = match &mut a.logprobs {
        Some(tracker) => tracker.release(&text),
        None => vec![],
    };
    send(a, text, logprobs);
}

/// Sends a text event unless it is empty.
fn send(a: &Active, text: String, logprobs: Vec<TokenLogprobs>) {
    if !text.is_empty() || !logprobs.is_empty() {
        let _ = a.job.events.send(Event::Text { text, logprobs });
    }
}

/// Reports the end of the generation; with `flush`, first sends the text still held back
/// (not after a stop string: nothing past it may be sent).
fn finish(a: &mut Active, reason: FinishReason, flush: bool) {
    let mut stopped = !flush;
    if flush {
        let rest = a.decoder.finish().unwrap_or_default();
        let released = a.stops.push(&rest);
        stopped = released.stopped;
        let tail = match released.stopped {
            true => String::new(),
            false => a.stops.finish(),
        };
        send_text(a, released.text + &tail);
    }
    if let Some(tracker) = &mut a.logprobs {
        let rest = tracker.finish(stopped);
        send(a, String::new(), rest);
    }
    a.outcome = Some(Event::Done {
        finish: reason,
        prompt_tokens: a.job.prompt.len(),
        completion_tokens: a.generated,
        cached_tokens: a.cached,
    });
    a.finished = true;
}

/// Reports an engine failure for this job and ends it.
fn fail(a: &mut Active, error: &Error) {
    tracing::error!("generation failed: {error}");
    a.outcome = Some(Event::Failed(error.to_string()));
    a.finished = true;
    a.failed = true;
}
