//! How many tokens to draft next: grown after fully accepted drafts, shrunk after rejections,
//! and speculation paused while its measured cost per emitted token exceeds a plain decode
//! step's.
#![forbid(unsafe_code)]

use std::time::Duration;

/// Plain steps are re-measured at least this often (the machine's speed drifts).
const PROBE_EVERY: usize = 32;
/// Speculative steps averaged before the pay check.
const PAY_WINDOW: usize = 4;
/// Plain steps of the first pause; each further failed check doubles it up to `MAX_PAUSE`.
const FIRST_PAUSE: usize = 8;
/// The longest pause.
const MAX_PAUSE: usize = 256;
/// Weight of the newest sample in the moving averages.
const EMA_WEIGHT: f64 = 0.25;

/// The draft-length and on/off policy of one generation.
#[derive(Clone, Debug)]
pub struct Pacer {
    max: usize,
    len: usize,
    adaptive: bool,
    /// Seconds per token of plain steps, and of speculative steps (per emitted token).
    plain_cost: Option<f64>,
    spec_cost: Option<f64>,
    spec_steps: usize,
    since_plain: usize,
    pause_left: usize,
    next_pause: usize,
}

impl Pacer {
    /// A policy drafting at most `max` tokens; with `adaptive` false it always asks for `max`.
    pub fn new(max: usize, adaptive: bool) -> Pacer {
        Pacer {
            max,
            len: max.max(1),
            adaptive,
            plain_cost: None,
            spec_cost: None,
            spec_steps: 0,
            since_plain: 0,
            pause_left: 0,
            next_pause: FIRST_PAUSE,
        }
    }

    /// Tokens to draft in the next step; 0 means a plain decode step.
    pub fn next_len(&mut self) -> usize {
        if self.max == 0 {
            return 0;
        }
        if !self.adaptive {
            return self.max;
        }
        if self.pause_left > 0 {
            self.pause_left -= 1;
            return 0;
        }
        if self.plain_cost.is_none() || self.since_plain >= PROBE_EVERY {
            return 0;
        }
        self.len
    }

    /// Records a finished step: `drafted` tokens proposed (0 for a plain step), `accepted` of
    /// them kept, in `elapsed` (drafting, verification and sampling).
    pub fn record(&mut self, drafted: usize, accepted: usize, elapsed: Duration) {
        let per_token = elapsed.as_secs_f64() / (accepted + 1) as f64;
        if drafted == 0 {
            self.plain_cost = Some(ema(self.plain_cost, per_token));
            self.since_plain = 0;
            return;
        }
        self.since_plain += 1;
        self.len = match accepted == drafted {
            true => (self.len + 1).min(self.max),
            false => (self.len + accepted).div_ceil(2).max(1),
        };
        self.spec_cost = Some(ema(self.spec_cost, per_token));
        self.spec_steps += 1;
        if self.spec_steps >= PAY_WINDOW {
            self.check_pay();
        }
    }

    /// Pauses speculation when it has cost more per token than plain steps.
    fn check_pay(&mut self) {
        let (Some(plain), Some(spec)) = (self.plain_cost, self.spec_cost) else {
            return;
        };
        if spec > plain {
            self.pause_left = self.next_pause;
            self.next_pause = (self.next_pause * 2).min(MAX_PAUSE);
            self.spec_cost = None;
            self.spec_steps = 0;
        } else {
            self.next_pause = FIRST_PAUSE;
        }
    }
}

/// An exponential moving average updated with `sample`.
fn ema(old: Option<f64>, sample: f64) -> f64 {
    old.map_or(sample, |o| o + EMA_WEIGHT * (sample - o))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_first_step_measures_a_plain_step_then_drafts() {
        let mut p = Pacer::new(8, true);
        assert_eq!(p.next_len(), 0);
        p.record(0, 0, 30 * MS);
        assert_eq!(p.next_len(), 8, "starts at the maximum");
    }

    #[test]
    fn full_acceptance_grows_the_draft_and_rejection_shrinks_it() {
        let mut p = Pacer::new(6, true);
        p.record(0, 0, 30 * MS);
        p.record(6, 1, 40 * MS);
        assert_eq!(p.next_len(), 4, "ceil((6 + 1) / 2)");
        p.record(4, 4, 40 * MS);
        assert_eq!(p.next_len(), 5);
        p.record(5, 5, 40 * MS);
        p.record(6, 6, 40 * MS);
        assert_eq!(p.next_len(), 6, "capped at the maximum");
    }

    #[test]
    fn speculation_that_costs_more_per_token_is_paused_then_retried() {
        let mut p = Pacer::new(4, true);
        p.record(0, 0, 30 * MS);
        for _ in 0..PAY_WINDOW {
            assert!(p.next_len() > 0);
            p.record(4, 0, 45 * MS); // 45 ms per token against 30
        }
        for _ in 0..FIRST_PAUSE {
            assert_eq!(p.next_len(), 0);
            p.record(0, 0, 30 * MS);
        }
        assert!(p.next_len() > 0, "retried after the pause");
    }

    #[test]
    fn speculation_that_pays_is_kept_with_periodic_plain_probes() {
        let mut p = Pacer::new(4, true);
        p.record(0, 0, 30 * MS);
        let mut plain = 0;
        for _ in 0..100 {
            let n = p.next_len();
            if n == 0 {
                plain += 1;
                p.record(0, 0, 30 * MS);
            } else {
                p.record(n, n, 40 * MS);
            }
        }
        assert!((1..=100 / PROBE_EVERY + 1).contains(&plain), "{plain}");
    }

    #[test]
    fn fixed_pacing_always_asks_for_the_maximum() {
        let mut p = Pacer::new(5, false);
        p.record(5, 0, 100 * MS);
        assert_eq!(p.next_len(), 5);
        assert_eq!(Pacer::new(0, true).next_len(), 0);
    }
}
