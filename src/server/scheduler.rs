//! The engine thread: it owns the [`Backend`] (MLX is never touched from an HTTP handler) and
//! runs continuous batching. Each step frees the sequences whose client went away, prefills
//! one chunk of every prompt still being read, then advances every decoding sequence by one
//! token in a single batched decode. Requests join at the next step, finished ones leave.

use super::logprobs::{self, LogprobTracker, TokenLogprobs};
use super::stop::StopFilter;
use crate::backend::{Backend, BackendOptions, ModelSpec, SamplerId, SamplerParams, SeqId};
use crate::chat_template::ChatTemplate;
use crate::sampler::Sampled;
use crate::tokenizer::{StreamDecoder, Tokenizer};
use crate::{Error, Result};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, TryRecvError};
use tokio::sync::mpsc::UnboundedSender;

/// What the model offers the HTTP side once it is loaded (all pure Rust, no MLX).
pub struct ModelInfo {
    /// The model's tokenizer.
    pub tokenizer: Tokenizer,
    /// Its chat template, if it has one.
    pub template: Option<ChatTemplate>,
    /// Positions one sequence may hold.
    pub n_ctx: usize,
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
    /// Prompt positions prefilled per sequence and step.
    pub prefill_chunk: usize,
}

/// One generation request, already tokenized and validated.
pub struct Job {
    /// Prompt token ids (non-empty, shorter than the context).
    pub prompt: Vec<u32>,
    /// Sampler settings (validated).
    pub sampling: SamplerParams,
    /// Most tokens to generate (≥ 1).
    pub max_tokens: usize,
    /// Stop strings (each non-empty).
    pub stop: Vec<String>,
    /// Where the output goes; the job is cancelled when the receiver is dropped.
    pub events: UnboundedSender<Event>,
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
    },
    /// The engine failed on this job (not the client's fault).
    Failed(String),
}

/// Loads the model, reports it through `on_ready`, then serves `jobs` until every sender is
/// dropped. A load failure is returned (and `on_ready` is not called).
pub fn run(
    config: &EngineConfig,
    jobs: Receiver<Job>,
    on_ready: impl FnOnce(ModelInfo),
) -> Result<()> {
    let options = BackendOptions {
        max_context: config.ctx_size,
        prefill_chunk: config.prefill_chunk,
        ..BackendOptions::default()
    };
    let backend = Backend::load(&ModelSpec::new(&config.model), &options)?;
    let tokenizer = backend.tokenizer()?.clone();
    let template = backend.chat_template()?.cloned();
    on_ready(ModelInfo {
        tokenizer: tokenizer.clone(),
        template,
        n_ctx: backend.context_length(),
    });
    let mut scheduler = Scheduler {
        backend,
        tokenizer,
        active: Vec::new(),
        parallel: config.parallel.max(1),
        chunk: config.prefill_chunk.max(1),
    };
    scheduler.serve(&jobs);
    Ok(())
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
    /// Tokens generated so far.
    generated: usize,
    /// A sampled token the next decode step appends.
    next: Option<u32>,
    decoder: StreamDecoder,
    stops: StopFilter,
    /// Present when the request asked for logprobs.
    logprobs: Option<LogprobTracker>,
    finished: bool,
}

struct Scheduler {
    backend: Backend,
    tokenizer: Tokenizer,
    active: Vec<Active>,
    parallel: usize,
    chunk: usize,
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

    /// Takes queued jobs while there are free slots (blocking when idle); false once the
    /// channel is closed and nothing is running.
    fn admit(&mut self, jobs: &Receiver<Job>) -> bool {
        while self.active.len() < self.parallel {
            let job = match self.active.is_empty() {
                true => match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => return false,
                },
                false => match jobs.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => return true,
                },
            };
            if job.events.is_closed() {
                continue;
            }
            match self.backend.create_sampler(job.sampling.clone()) {
                Ok(sampler) => self.active.push(Active {
                    seq: self.backend.create_seq(),
                    sampler,
                    history: job.prompt.clone(),
                    prefilled: 0,
                    generated: 0,
                    next: None,
                    decoder: StreamDecoder::continuing(&self.tokenizer, true),
                    stops: StopFilter::new(job.stop.clone()),
                    logprobs: job.sampling.logprobs.then(LogprobTracker::default),
                    finished: false,
                    job,
                }),
                Err(e) => {
                    let _ = job.events.send(Event::Failed(e.to_string()));
                }
            }
        }
        true
    }

    /// One engine step: cancellations, a prefill chunk per reading prompt, one batched decode.
    fn step(&mut self) {
        for a in self.active.iter_mut() {
            if a.job.events.is_closed() {
                a.finished = true;
            }
        }
        for i in 0..self.active.len() {
            let a = &self.active[i];
            if !a.finished && a.prefilled < a.job.prompt.len() {
                self.prefill_chunk(i);
            }
        }
        self.decode_step();
    }

    /// Prefills the next chunk of sequence `i`'s prompt; after the last one samples its first
    /// token.
    fn prefill_chunk(&mut self, i: usize) {
        let a = &mut self.active[i];
        let end = (a.prefilled + self.chunk).min(a.job.prompt.len());
        let result = self
            .backend
            .prefill(a.seq, &a.job.prompt[a.prefilled..end], false);
        a.prefilled = end;
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

    /// Samples sequence `i`'s next token from `logits`, sends its text and decides whether
    /// the generation goes on.
    fn sample_and_emit(&mut self, i: usize, logits: &[f32]) {
        let a = &mut self.active[i];
        let sampled = match self.backend.sample(a.sampler, logits, &a.history) {
            Ok(sampled) => sampled,
            Err(e) => return fail(a, &e),
        };
        let token = sampled.token;
        a.generated += 1;
        a.history.push(token);
        if self.tokenizer.is_eog(token) {
            return finish(a, FinishReason::Stop, true);
        }
        track_logprobs(a, &self.tokenizer, &sampled);
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

    /// Frees the sequences and samplers of finished jobs.
    fn retire(&mut self) {
        let (done, kept): (Vec<Active>, Vec<Active>) =
            self.active.drain(..).partition(|a| a.finished);
        self.active = kept;
        for a in done {
            if let Err(e) = self.backend.free_seq(a.seq) {
                tracing::warn!("freeing sequence {:?}: {e}", a.seq);
            }
            if let Err(e) = self.backend.free_sampler(a.sampler) {
                tracing::warn!("freeing sampler {:?}: {e}", a.sampler);
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
    let _ = a.job.events.send(Event::Done {
        finish: reason,
        prompt_tokens: a.job.prompt.len(),
        completion_tokens: a.generated,
    });
    a.finished = true;
}

/// Reports an engine failure for this job and ends it.
fn fail(a: &mut Active, error: &Error) {
    tracing::error!("generation failed: {error}");
    let _ = a.job.events.send(Event::Failed(error.to_string()));
    a.finished = true;
}
