//! Speculative decoding: a drafter proposes the next few tokens, the target model scores them
//! all in one forward pass (all-position logits), the longest prefix the target agrees with is
//! kept ([`verify`]) and the KV of the rejected tail is rolled back. The output is distributed
//! exactly as plain decoding's (at temperature 0: the same argmax chain, up to near-ties where
//! a several-row pass rounds differently from a one-row one).
//!
//! Drafters: [`PromptLookup`] (n-gram match over the text so far) and [`DraftModel`] (a smaller
//! model of the same vocabulary). [`Pacer`] adapts the draft length and pauses speculation when
//! it does not pay. [`step`] is one draft-verify-rollback step on an [`Engine`] and a
//! [`KvCache`]; [`Speculator::generate`] is [`Engine::generate`] with speculation.
#![forbid(unsafe_code)]

pub mod draft;
pub mod lookup;
pub mod pace;
pub mod verify;

pub use draft::{check_compatible, DraftModel};
pub use lookup::PromptLookup;
pub use pace::Pacer;
pub use verify::{verify, Verdict};

use crate::engine::{Engine, GenerateOptions, GenerateStats, LogitRows};
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::mlx::{transforms, Array};
use crate::sampler::Sampler;
use std::time::Instant;

/// Proposes tokens to follow a sequence.
pub trait Drafter {
    /// Up to `max` tokens likely to follow `history` (the whole sequence so far, prompt
    /// included); fewer or none when it has no good guess.
    fn draft(&mut self, history: &[u32], max: usize) -> Result<Vec<u32>>;

    /// Readies the drafter for `history` (the prompt, before generation starts), so that the
    /// first timed step does not carry the work of catching up with it; by default nothing.
    fn prepare(&mut self, history: &[u32]) -> Result<()> {
        let _ = history;
        Ok(())
    }
}

/// How to speculate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpeculativeOptions {
    /// Most tokens drafted per step.
    pub draft_max: usize,
    /// Adapt the draft length to the acceptance rate and pause speculation while it costs
    /// more per token than plain decoding ([`Pacer`]); off, every step drafts `draft_max`.
    pub adaptive: bool,
}

impl Default for SpeculativeOptions {
    fn default() -> Self {
        SpeculativeOptions {
            draft_max: 8,
            adaptive: true,
        }
    }
}

/// One speculative step. `history` is the sequence so far; `cache` holds all of it but its
/// last token. Scores the last token and `drafts` in one forward pass, verifies the drafts
/// with `sampler`, and leaves `cache` holding `history` plus the accepted drafts (the returned
/// [`Verdict::tokens`] minus its last token, which is the next one to feed). An empty draft is
/// a plain decode step. On error the cache is left as it was.
pub fn step(
    engine: &Engine,
    cache: &mut KvCache,
    sampler: &mut Sampler,
    history: &[u32],
    drafts: &[u32],
) -> Result<Verdict> {
    let Some(&last) = history.last() else {
        return Err(Error::InvalidArgument(
            "speculative step: empty history".into(),
        ));
    };
    if cache.len() + 1 != history.len() {
        return Err(Error::InvalidArgument(format!(
            "speculative step: the cache holds {} positions, the history {} tokens (the cache \
             must hold all but the last)",
            cache.len(),
            history.len()
        )));
    }
    cache.check_room(1 + drafts.len())?;
    let start = cache.len();
    let result = score(engine, cache, last, drafts).and_then(|rows| {
        let verdict = verify(sampler, &rows, engine.config().vocab_size, history, drafts)?;
        cache.truncate(start + 1 + verdict.accepted)?;
        Ok(verdict)
    });
    if result.is_err() && cache.len() > start {
        cache.truncate(start)?;
    }
    result
}

/// Logits after `last` and after each of `drafts`, row-major [1 + drafts, V], with the cache
/// extended by all of them.
fn score(engine: &Engine, cache: &mut KvCache, last: u32, drafts: &[u32]) -> Result<Vec<f32>> {
    let logits = if drafts.is_empty() {
        engine.decode(&[last], &mut [&mut *cache])? // [1, V]
    } else {
        let mut tokens = Vec::with_capacity(1 + drafts.len());
        tokens.push(last);
        tokens.extend_from_slice(drafts);
        engine.model.forward(&tokens, &mut [&mut *cache], false)? // [1, 1 + k, V]
    };
    evaluate(&logits, cache)
}

/// Evaluates `logits` with the cache they were computed into and copies them out.
fn evaluate(logits: &Array, cache: &KvCache) -> Result<Vec<f32>> {
    let mut outputs = cache.arrays();
    outputs.push(logits);
    transforms::eval(&outputs)?;
    logits.to_vec::<f32>()
}

/// Generation with speculation: a target model, a drafter and the pacing settings.
pub struct Speculator<'a> {
    /// The model whose distribution the output follows.
    pub engine: &'a Engine,
    /// Where drafts come from.
    pub drafter: &'a mut dyn Drafter,
    /// Draft length and pacing.
    pub options: SpeculativeOptions,
}

impl Speculator<'_> {
    /// [`Engine::generate`] with speculative steps: the same arguments, the same stopping
    /// rules, and [`GenerateStats::drafted_tokens`] / [`GenerateStats::accepted_tokens`] filled.
    pub fn generate(
        &mut self,
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
        let mut cache = self.engine.new_cache();
        let start = Instant::now();
        let logits = self
            .engine
            .prefill(prompt, &mut cache, options.prefill_chunk, LogitRows::Last)?
            .data;
        self.drafter.prepare(prompt)?;
        stats.prompt_time = start.elapsed();
        let start = Instant::now();
        let mut history = prompt.to_vec();
        let mut out = Vec::new();
        if options.max_new > 0 {
            let first = sampler.sample(&logits, &history)?.token;
            let mut emit = |t: u32, out: &mut Vec<u32>, history: &mut Vec<u32>| {
                out.push(t);
                history.push(t);
                on_token(t) && !is_eog(t) && out.len() < options.max_new
            };
            let mut go_on = emit(first, &mut out, &mut history);
            let mut pacer = Pacer::new(self.options.draft_max, self.options.adaptive);
            while go_on && cache.len() < cache.limit() {
                let room = cache.limit() - cache.len() - 1;
                let left = options.max_new - out.len() - 1;
                let k = pacer.next_len().min(room).min(left);
                let t0 = Instant::now();
                let mut drafts = match k {
                    0 => vec![],
                    _ => self.drafter.draft(&history, k)?,
                };
                drafts.truncate(k);
                let verdict = step(self.engine, &mut cache, sampler, &history, &drafts)?;
                let elapsed = t0.elapsed();
                pacer.record(drafts.len(), verdict.accepted, elapsed);
                tracing::debug!(
                    drafted = drafts.len(),
                    accepted = verdict.accepted,
                    ms = elapsed.as_secs_f64() * 1e3,
                    "speculative step"
                );
                stats.drafted_tokens += drafts.len();
                stats.accepted_tokens += verdict.accepted;
                for &t in &verdict.tokens {
                    go_on = emit(t, &mut out, &mut history);
                    if !go_on {
                        break;
                    }
                }
            }
        }
        stats.generated_tokens = out.len();
        stats.generate_time = start.elapsed();
        Ok((out, stats))
    }
}
