//! Picking the next token from a row of logits, in pure Rust.
//!
//! The steps, in order: logit bias → repetition/presence/frequency penalties (over the last
//! `penalty_last_n` tokens) → temperature → top-k → top-p → min-p → a draw from a seeded PRNG.
//! Temperature 0 is greedy (ties go to the lowest id). Nothing sorts the whole vocabulary:
//! top-k and top-p use partial selection, min-p is one pass.
//!
//! Logprobs, when asked for ([`SamplerParams::logprobs`], [`SamplerParams::n_logprobs`]), are
//! of the model's own distribution: log-softmax of the logits as given, before bias,
//! penalties, temperature and truncation (vLLM's default, `raw_logprobs`). They answer "how
//! likely did the model find this token", independent of how it was picked; at temperature 0
//! without bias or penalties the chosen token is the first of the top list. When neither is
//! asked for, sampling does no softmax over the vocabulary at all.
//!
//! A [`Constraint`] (a grammar, `src/constraint.rs`) rides beside the settings: the sampler
//! first picks as if unconstrained and asks the constraint about that one token; only when it
//! is refused does it build the whole mask, set the refused logits (after bias and penalties)
//! to -inf and pick again (llama.cpp's order). Greedy picks are exactly the masked argmax; a
//! draw is exactly the masked distribution when nothing truncates (rejection sampling), and
//! with top-k/top-p/min-p the second pick truncates the masked row. The picked token is
//! committed to the constraint before [`Sampler::sample`] returns.
#![forbid(unsafe_code)]

use std::cmp::Ordering;
use std::hash::{BuildHasher, Hasher};

use crate::constraint::Constraint;
use crate::{Error, Result};

/// How tokens are picked. The neutral value of each step switches it off.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerParams {
    /// Divides the logits; 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the most likely tokens whose probabilities add up to `top_p`; 1 keeps all.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 keeps all.
    pub min_p: f32,
    /// Divides positive (multiplies negative) logits of recent tokens; 1 is off.
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every recent token; 0 is off.
    pub presence_penalty: f32,
    /// Subtracted from a recent token's logit once per occurrence; 0 is off.
    pub frequency_penalty: f32,
    /// How many of the latest history tokens the penalties look at; 0 is none.
    pub penalty_last_n: usize,
    /// Added to the logits of these tokens first, each in [-100, 100] as OpenAI allows (-100
    /// all but bans a token); ids must be in the vocabulary.
    pub logit_bias: Vec<(u32, f32)>,
    /// PRNG seed; the same seed draws the same tokens. `None` seeds from the OS.
    pub seed: Option<u64>,
    /// Report the chosen token's log-probability ([`Sampled::logprob`]); implied by
    /// `n_logprobs > 0`. Off, sampling skips the softmax over the vocabulary.
    pub logprobs: bool,
    /// How many of the most likely tokens [`Sampled::top_logprobs`] lists.
    pub n_logprobs: usize,
}

/// The largest magnitude of one logit bias (OpenAI's limit).
pub const MAX_LOGIT_BIAS: f32 = 100.0;

impl Default for SamplerParams {
    /// llama.cpp's defaults: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, no penalties.
    fn default() -> SamplerParams {
        SamplerParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            logit_bias: vec![],
            seed: None,
            logprobs: false,
            n_logprobs: 0,
        }
    }
}

impl SamplerParams {
    /// Greedy decoding: temperature 0, no truncation, no penalties.
    pub fn greedy() -> SamplerParams {
        SamplerParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..SamplerParams::default()
        }
    }

    /// Checks every field's range.
    pub fn validate(&self) -> Result<()> {
        let checks = [
            (
                self.temperature.is_finite() && self.temperature >= 0.0,
                "temperature must be >= 0",
            ),
            (
                self.top_p > 0.0 && self.top_p <= 1.0,
                "top_p must be in (0, 1]",
            ),
            ((0.0..=1.0).contains(&self.min_p), "min_p must be in [0, 1]"),
            (
                self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0,
                "repetition_penalty must be > 0",
            ),
            (
                self.presence_penalty.is_finite(),
                "presence_penalty must be finite",
            ),
            (
                self.frequency_penalty.is_finite(),
                "frequency_penalty must be finite",
            ),
        ];
        if let Some((_, message)) = checks.iter().find(|(ok, _)| !ok) {
            return Err(Error::InvalidArgument(format!("sampler: {message}")));
        }
        match self
            .logit_bias
            .iter()
            .find(|(_, b)| !(-MAX_LOGIT_BIAS..=MAX_LOGIT_BIAS).contains(b))
        {
            Some((id, b)) => Err(Error::InvalidArgument(format!(
                "sampler: logit_bias of token {id} is {b}, it must be in \
                 [-{MAX_LOGIT_BIAS}, {MAX_LOGIT_BIAS}]"
            ))),
            None => Ok(()),
        }
    }

    /// [`SamplerParams::validate`], and every `logit_bias` id below `vocab` (the length of a
    /// logits row).
    pub fn validate_for(&self, vocab: usize) -> Result<()> {
        self.validate()?;
        match self.logit_bias.iter().find(|(id, _)| *id as usize >= vocab) {
            Some((id, _)) => Err(Error::InvalidArgument(format!(
                "sampler: logit_bias names token {id}, outside the vocabulary of {vocab} tokens"
            ))),
            None => Ok(()),
        }
    }

    /// Whether [`Sampled::logprob`] is computed.
    fn wants_logprob(&self) -> bool {
        self.logprobs || self.n_logprobs > 0
    }

    /// Whether any penalty changes logits.
    fn penalizes(&self) -> bool {
        self.penalty_last_n > 0
            && (self.repetition_penalty != 1.0
                || self.presence_penalty != 0.0
                || self.frequency_penalty != 0.0)
    }
}

/// A picked token.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    /// The token id.
    pub token: u32,
    /// Its log-probability under the model's distribution (log-softmax of the logits as given,
    /// before any sampling transform), when [`SamplerParams::logprobs`] or `n_logprobs` asked.
    pub logprob: Option<f32>,
    /// The `n_logprobs` most likely tokens under the same distribution, most likely first
    /// (ties by lower id).
    pub top_logprobs: Vec<(u32, f32)>,
}

/// Picks tokens; owns its PRNG and scratch buffers, so one sampler serves one sequence.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplerParams,
    rng: Xoshiro256,
    /// The logits after bias and penalties.
    adjusted: Vec<f32>,
    /// (id, logit / temperature) of the tokens still in the running.
    candidates: Vec<(u32, f32)>,
    /// The grammar the picks must follow, if any.
    constraint: Option<Constraint>,
}

impl Sampler {
    /// A sampler with these settings (checked on each call to [`Sampler::sample`]).
    pub fn new(params: SamplerParams) -> Sampler {
        let seed = params.seed.unwrap_or_else(os_seed);
        Sampler {
            params,
            rng: Xoshiro256::new(seed),
            adjusted: vec![],
            candidates: vec![],
            constraint: None,
        }
    }

    /// A sampler whose picks must follow `constraint`.
    pub fn with_constraint(params: SamplerParams, constraint: Constraint) -> Sampler {
        Sampler {
            constraint: Some(constraint),
            ..Sampler::new(params)
        }
    }

    /// The settings.
    pub fn params(&self) -> &SamplerParams {
        &self.params
    }

    /// The constraint, if the sampler has one.
    pub fn constraint(&self) -> Option<&Constraint> {
        self.constraint.as_ref()
    }

    /// The constraint, mutably (rollback, forced tokens).
    pub fn constraint_mut(&mut self) -> Option<&mut Constraint> {
        self.constraint.as_mut()
    }

    /// Tokens the constraint forces next, already committed to it (none without a
    /// constraint): a caller may feed them to the model without sampling, but must then pass
    /// them in `history` like sampled ones.
    pub fn forced_tokens(&mut self) -> Result<Vec<u32>> {
        match self.constraint.as_mut() {
            Some(c) => c.forced_tokens(),
            None => Ok(vec![]),
        }
    }

    /// Whether the constraint is complete and allows only end-of-generation tokens (false
    /// without a constraint).
    pub fn is_finished(&self) -> bool {
        self.constraint
            .as_ref()
            .is_some_and(Constraint::is_finished)
    }

    /// Picks the next token from `logits` (one per vocabulary id); `history` is the sequence
    /// so far, for the penalties. NaN or +inf logits, an out-of-range id or bad settings are
    /// errors.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Result<Sampled> {
        self.adjust(logits, history)?;
        let mut token = self.pick();
        if let Some(c) = self.constraint.as_mut() {
            let open = self.adjusted[token as usize] > f32::NEG_INFINITY;
            if open && c.checks_first() && c.allows(token)? {
                c.note_fast();
            } else {
                c.mask(&mut self.adjusted)?;
                token = self.pick();
            }
        }
        if self.adjusted[token as usize] == f32::NEG_INFINITY {
            return Err(all_masked());
        }
        if let Some(c) = self.constraint.as_mut() {
            c.commit(token)?;
        }
        if !self.params.wants_logprob() {
            return Ok(Sampled {
                token,
                logprob: None,
                top_logprobs: vec![],
            });
        }
        let lse = log_sum_exp(logits)?;
        Ok(Sampled {
            token,
            logprob: Some(logits[token as usize] - lse),
            top_logprobs: top_logprobs(logits, self.params.n_logprobs, lse),
        })
    }

    /// The tokens a draw could pick and their probabilities, most likely first: the result of
    /// bias, penalties, temperature, top-k, top-p and min-p. Greedy settings give one token.
    /// With a constraint, only the tokens it allows (nothing is committed).
    pub fn candidates(&mut self, logits: &[f32], history: &[u32]) -> Result<Vec<(u32, f32)>> {
        self.adjust(logits, history)?;
        if let Some(c) = self.constraint.as_mut() {
            c.mask(&mut self.adjusted)?;
        }
        log_sum_exp(&self.adjusted)?;
        if self.params.temperature == 0.0 {
            return Ok(vec![(argmax(&self.adjusted), 1.0)]);
        }
        self.truncate();
        self.candidates.sort_unstable_by(descending);
        let max = self.candidates[0].1;
        let total: f64 = self
            .candidates
            .iter()
            .map(|c| f64::from((c.1 - max).exp()))
            .sum();
        Ok(self
            .candidates
            .iter()
            .map(|&(id, l)| (id, (f64::from((l - max).exp()) / total) as f32))
            .collect())
    }

    /// The greedy pick, or a draw after truncation, from `adjusted`.
    fn pick(&mut self) -> u32 {
        match self.params.temperature == 0.0 {
            true => argmax(&self.adjusted),
            false => {
                self.truncate();
                self.draw()
            }
        }
    }

    /// Fills `adjusted`: checks the input, adds the bias, applies the penalties.
    fn adjust(&mut self, logits: &[f32], history: &[u32]) -> Result<()> {
        self.params.validate_for(logits.len())?;
        check_logits(logits)?;
        check_ids("history", history, logits.len())?;
        self.adjusted.clear();
        self.adjusted.extend_from_slice(logits);
        for &(id, bias) in &self.params.logit_bias {
            self.adjusted[id as usize] += bias;
        }
        if self.params.penalizes() {
            let start = history.len().saturating_sub(self.params.penalty_last_n);
            penalize(&mut self.adjusted, &history[start..], &self.params);
        }
        Ok(())
    }

    /// Fills `candidates` from `adjusted` and applies temperature, top-k, top-p, min-p.
    fn truncate(&mut self) {
        let t = self.params.temperature;
        self.candidates.clear();
        self.candidates.extend(
            (0u32..)
                .zip(&self.adjusted)
                .filter(|(_, l)| **l > f32::NEG_INFINITY)
                .map(|(id, &l)| (id, l / t)),
        );
        let mut sorted = false;
        if self.params.top_k > 0 && self.params.top_k < self.candidates.len() {
            keep_top_k(&mut self.candidates, self.params.top_k);
            sorted = true;
        }
        if self.params.top_p < 1.0 {
            keep_top_p(&mut self.candidates, self.params.top_p, sorted);
        }
        if self.params.min_p > 0.0 {
            keep_min_p(&mut self.candidates, self.params.min_p);
        }
    }

    /// Draws one candidate in proportion to its probability (the first token when none is
    /// left, which the caller then finds masked).
    fn draw(&mut self) -> u32 {
        let max = self
            .candidates
            .iter()
            .map(|c| c.1)
            .fold(f32::NEG_INFINITY, f32::max);
        let total: f64 = self
            .candidates
            .iter()
            .map(|c| f64::from((c.1 - max).exp()))
            .sum();
        let mut target = self.rng.next_f64() * total;
        for &(id, l) in &self.candidates {
            target -= f64::from((l - max).exp());
            if target < 0.0 {
                return id;
            }
        }
        self.candidates.last().map_or(0, |c| c.0)
    }
}

/// Fails on an empty row, NaN or +inf.
fn check_logits(logits: &[f32]) -> Result<()> {
    if logits.is_empty() {
        return Err(Error::InvalidArgument("sampler: empty logits".into()));
    }
    match logits
        .iter()
        .position(|l| l.is_nan() || *l == f32::INFINITY)
    {
        Some(i) => Err(Error::InvalidArgument(format!(
            "sampler: logit {i} is {}",
            logits[i]
        ))),
        None => Ok(()),
    }
}

/// Fails when an id is not below `n`.
fn check_ids(what: &str, ids: &[u32], n: usize) -> Result<()> {
    match ids.iter().find(|&&id| id as usize >= n) {
        Some(id) => Err(Error::InvalidArgument(format!(
            "sampler: {what} has id {id}, but there are {n} logits"
        ))),
        None => Ok(()),
    }
}

/// llama.cpp's penalties: for each distinct token in `window` seen `count` times, a positive
/// logit is divided by (a negative one multiplied by) the repetition penalty, then
/// `count * frequency + presence` is subtracted.
fn penalize(logits: &mut [f32], window: &[u32], params: &SamplerParams) {
    let mut seen = window.to_vec();
    seen.sort_unstable();
    for run in seen.chunk_by(|a, b| a == b) {
        let l = &mut logits[run[0] as usize];
        *l = match *l > 0.0 {
            true => *l / params.repetition_penalty,
            false => *l * params.repetition_penalty,
        };
        *l -= run.len() as f32 * params.frequency_penalty + params.presence_penalty;
    }
}

/// The error of a row where nothing can be picked.
fn all_masked() -> Error {
    Error::InvalidArgument("sampler: every token is masked (-inf)".into())
}

/// log Σ exp(l); fails when every logit is -inf (nothing can be picked).
fn log_sum_exp(logits: &[f32]) -> Result<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return Err(all_masked());
    }
    let sum: f64 = logits.iter().map(|&l| f64::from((l - max).exp())).sum();
    Ok(max + sum.ln() as f32)
}

/// The id of the largest logit; the lowest id among equals.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Larger logit first, then lower id.
fn descending(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// The `n` most likely tokens as (id, log-probability), most likely first, ties by lower id:
/// one pass keeping a sorted list of the best `n` (no copy of the row).
fn top_logprobs(logits: &[f32], n: usize, lse: f32) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
    if n == 0 {
        return best;
    }
    for (id, &l) in (0u32..).zip(logits) {
        if best.len() == n && l <= best[n - 1].1 {
            continue;
        }
        let at = best.partition_point(|b| b.1 >= l);
        best.insert(at, (id, l));
        best.truncate(n);
    }
    best.into_iter().map(|(id, l)| (id, l - lse)).collect()
}

/// Keeps the `k` largest, sorted (partial selection, then a sort of `k`).
fn keep_top_k(c: &mut Vec<(u32, f32)>, k: usize) {
    if k < c.len() {
        c.select_nth_unstable_by(k - 1, descending);
        c.truncate(k);
    }
    c.sort_unstable_by(descending);
}

/// Keeps the smallest most-likely prefix whose probability reaches `p` (at least one token).
/// Unsorted input is sorted only as far as needed: the top 64, then 4× more, until the
/// prefix covers `p`.
fn keep_top_p(c: &mut Vec<(u32, f32)>, p: f32, sorted: bool) {
    let max = c.iter().map(|x| x.1).fold(f32::NEG_INFINITY, f32::max);
    let weight = |l: f32| f64::from((l - max).exp());
    let total: f64 = c.iter().map(|x| weight(x.1)).sum();
    let goal = f64::from(p) * total;
    let mut k = if sorted { c.len() } else { 64.min(c.len()) };
    loop {
        if !sorted {
            sort_prefix(c, k);
        }
        let mut sum = 0.0;
        let cut = c[..k].iter().position(|x| {
            sum += weight(x.1);
            sum >= goal
        });
        match cut {
            Some(i) => return c.truncate(i + 1),
            None if k == c.len() => return,
            None => k = (k * 4).min(c.len()),
        }
    }
}

/// Puts the `k` largest first, in order.
fn sort_prefix(c: &mut [(u32, f32)], k: usize) {
    if k < c.len() {
        c.select_nth_unstable_by(k - 1, descending);
    }
    c[..k].sort_unstable_by(descending);
}

/// Keeps tokens at least `min_p` times as likely as the most likely one.
fn keep_min_p(c: &mut Vec<(u32, f32)>, min_p: f32) {
    let max = c.iter().map(|x| x.1).fold(f32::NEG_INFINITY, f32::max);
    let floor = max + min_p.ln();
    c.retain(|x| x.1 >= floor);
}

/// A seed from the process's random hasher keys and the clock.
fn os_seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(nanos);
    h.finish()
}

/// xoshiro256** (Blackman and Vigna), seeded through splitmix64.
#[derive(Debug, Clone)]
struct Xoshiro256 {
    s: [u64; 4],
}

impl Xoshiro256 {
    /// Expands a 64-bit seed into the 256-bit state with splitmix64.
    fn new(seed: u64) -> Xoshiro256 {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Xoshiro256 {
            s: [next(), next(), next(), next()],
        }
    }

    /// The next 64 random bits.
    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let out = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in [0, 1) with 53 random bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_p_grows_the_sorted_prefix_until_it_covers_p() {
        // 1,000 equal tokens and one heavy one: the 64-prefix is not enough at p = 0.9.
        let mut c: Vec<(u32, f32)> = (0..1000).map(|i| (i, 0.0)).collect();
        c.push((1000, 5.0));
        keep_top_p(&mut c, 0.9, false);
        let total = 5f64.exp() + 1000.0;
        let expected = ((0.9 * total - 5f64.exp()).ceil() as usize) + 1;
        assert_eq!(c.len(), expected);
        assert_eq!(c[0].0, 1000);
        assert!(c[1..].windows(2).all(|w| w[0].0 < w[1].0), "ties by id");
    }

    #[test]
    fn xoshiro_is_uniform_enough() {
        let mut rng = Xoshiro256::new(7);
        let mean = (0..100_000).map(|_| rng.next_f64()).sum::<f64>() / 100_000.0;
        assert!((mean - 0.5).abs() < 0.005, "{mean}");
    }
}
