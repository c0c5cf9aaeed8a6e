//! How many tokens to draft next, from a cost model measured as generation runs: the time of a
//! step with k drafted tokens (drafting, verification, sampling), c(k), and the rate α at which
//! drafted tokens are accepted. A draft of k tokens emits (1 − α^(k+1)) / (1 − α) tokens on
//! average (acceptance as a run of independent trials), so the pacer picks the k in 0..=max
//! with the most expected tokens per second of c(k); k = 0, a plain decode step, wins when
//! speculation does not pay. c(0) is re-measured at least every [`REMEASURE_PLAIN`] steps (the
//! machine's speed drifts, and a stale c(0) would mislead every choice); while plain steps win,
//! a short probe draft now and then notices a change in acceptance, at intervals that double
//! while probes keep failing.
#![forbid(unsafe_code)]

use std::time::Duration;

/// Plain steps chosen in a row before the first probe draft; doubled after each probe that is
/// not fully accepted, up to `MAX_PROBE_AFTER`.
const PROBE_AFTER: usize = 4;
const MAX_PROBE_AFTER: usize = 256;
/// Steps with drafts in a row before a plain step re-measures c(0).
pub const REMEASURE_PLAIN: usize = 16;
/// Tokens drafted by a probe.
const PROBE_LEN: usize = 2;
/// Weight of the newest sample in the cost averages.
const COST_WEIGHT: f64 = 0.25;
/// Per step, the acceptance counts decay by this factor (a memory of ~20 steps).
const RATE_DECAY: f64 = 0.95;
/// Before a step with drafts has been timed, c(k) is guessed as c(0) · (1 + PRIOR_SLOPE · k).
const PRIOR_SLOPE: f64 = 0.15;

/// The draft-length policy of one generation.
#[derive(Clone, Debug)]
pub struct Pacer {
    max: usize,
    adaptive: bool,
    /// Seconds per step by tokens drafted (moving averages), index 0..=max.
    cost: Vec<Option<f64>>,
    /// Decayed counts of accepted drafted tokens and of rejections (a draft cut short).
    accepted: f64,
    rejected: f64,
    plain_in_a_row: usize,
    drafts_in_a_row: usize,
    probe_after: usize,
    probing: bool,
}

impl Pacer {
    /// A policy drafting at most `max` tokens; with `adaptive` false it always asks for `max`.
    pub fn new(max: usize, adaptive: bool) -> Pacer {
        Pacer {
            max,
            adaptive,
            cost: vec![None; max + 1],
            // A prior of one acceptance and one rejection: α = 0.5 until measured.
            accepted: 1.0,
            rejected: 1.0,
            plain_in_a_row: 0,
            drafts_in_a_row: 0,
            probe_after: PROBE_AFTER,
            probing: false,
        }
    }

    /// Tokens to draft in the next step; 0 means a plain decode step.
    pub fn next_len(&mut self) -> usize {
        if self.max == 0 || !self.adaptive {
            return self.max;
        }
        let Some(plain) = self.cost[0] else {
            return 0; // measure a plain step first
        };
        if self.drafts_in_a_row >= REMEASURE_PLAIN {
            return 0;
        }
        let best = (0..=self.max)
            .map(|k| (k, self.expected_tokens(k) / self.estimated_cost(k, plain)))
            .fold((0, 0.0), |b, (k, r)| if r > b.1 { (k, r) } else { b })
            .0;
        if best > 0 {
            return best;
        }
        if self.plain_in_a_row >= self.probe_after {
            self.probing = true;
            return PROBE_LEN.min(self.max);
        }
        0
    }

    /// The acceptance rate per drafted token.
    pub fn acceptance_rate(&self) -> f64 {
        self.accepted / (self.accepted + self.rejected)
    }

    /// Records a finished step: `drafted` tokens proposed (0 for a plain step), `accepted` of
    /// them kept, in `elapsed`.
    pub fn record(&mut self, drafted: usize, accepted: usize, elapsed: Duration) {
        let k = drafted.min(self.max);
        let seconds = elapsed.as_secs_f64();
        self.cost[k] = Some(self.cost[k].map_or(seconds, |c| c + COST_WEIGHT * (seconds - c)));
        if drafted == 0 {
            self.plain_in_a_row += 1;
            self.drafts_in_a_row = 0;
            return;
        }
        if std::mem::take(&mut self.probing) {
            self.probe_after = match accepted == drafted {
                true => PROBE_AFTER,
                false => (self.probe_after * 2).min(MAX_PROBE_AFTER),
            };
        }
        self.plain_in_a_row = 0;
        self.drafts_in_a_row += 1;
        self.accepted = self.accepted * RATE_DECAY + accepted as f64;
        self.rejected = self.rejected * RATE_DECAY + f64::from(u8::from(accepted < drafted));
    }

    /// Σ α^i for i in 0..=k: the mean tokens a k-token draft emits.
    fn expected_tokens(&self, k: usize) -> f64 {
        let a = self.acceptance_rate();
        (0..=k).map(|i| a.powi(i as i32)).sum()
    }

    /// c(k): measured, else a line from c(0) through the nearest measured longer or shorter
    /// draft, else the prior slope.
    fn estimated_cost(&self, k: usize, plain: f64) -> f64 {
        if let Some(c) = self.cost[k] {
            return c;
        }
        let measured = (1..=self.max).filter_map(|j| self.cost[j].map(|c| (j, c)));
        match measured.min_by_key(|&(j, _)| j.abs_diff(k)) {
            Some((j, c)) => plain + (c - plain).max(0.0) * k as f64 / j as f64,
            None => plain * (1.0 + PRIOR_SLOPE * k as f64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A machine where a k-token draft step costs 30 ms · (1 + slope · k).
    fn cost(k: usize, slope: f64) -> Duration {
        Duration::from_secs_f64(0.030 * (1.0 + slope * k as f64))
    }

    /// Runs `steps` steps where each drafted token is accepted while `accept(i)` holds for
    /// its index i in the draft; returns the draft lengths chosen.
    fn simulate(
        p: &mut Pacer,
        steps: usize,
        slope: f64,
        accept: impl Fn(usize) -> bool,
    ) -> Vec<usize> {
        (0..steps)
            .map(|_| {
                let k = p.next_len();
                let a = (0..k).take_while(|&i| accept(i)).count();
                p.record(k, a, cost(k, slope));
                k
            })
            .collect()
    }

    #[test]
    fn the_first_step_is_plain_then_a_draft_by_the_prior() {
        let mut p = Pacer::new(8, true);
        assert_eq!(p.next_len(), 0);
        p.record(0, 0, 30 * MS);
        // α = 0.5 and c(k) = c(0)(1 + 0.15k): tokens per cost peak at k = 2 (1.75 / 1.3).
        assert_eq!(p.next_len(), 2);
    }

    #[test]
    fn drafts_that_are_always_accepted_grow_to_the_maximum() {
        let mut p = Pacer::new(8, true);
        let ks = simulate(&mut p, 60, 0.15, |_| true);
        assert_eq!(*ks.last().unwrap(), 8, "{ks:?}");
        assert!(p.acceptance_rate() > 0.9);
        // A plain step re-measures c(0) after every REMEASURE_PLAIN drafting steps.
        let plain = ks[1..].iter().filter(|&&k| k == 0).count();
        assert_eq!(plain, 59 / (REMEASURE_PLAIN + 1), "{ks:?}");
    }

    #[test]
    fn drafts_that_are_always_rejected_stop_except_for_rare_probes() {
        let mut p = Pacer::new(8, true);
        let ks = simulate(&mut p, 200, 0.15, |_| false);
        let drafting = ks[20..].iter().filter(|&&k| k > 0).count();
        // Probes back off by doubling: intervals of 8, 16, 32, 64, 128 plain steps at most fit.
        assert!(drafting <= 6, "{drafting} drafting steps: {ks:?}");
        assert!(ks[20..].iter().all(|&k| k <= PROBE_LEN));
    }

    #[test]
    fn an_expensive_verify_pass_shortens_the_draft() {
        // Half the drafted tokens accepted (the first of each draft only): with cheap rows a
        // long draft is still worth its cost, with rows as dear as a whole step it is not.
        let cheap = simulate(&mut Pacer::new(8, true), 80, 0.02, |i| i == 0);
        let dear = simulate(&mut Pacer::new(8, true), 80, 1.0, |i| i == 0);
        let mean = |ks: &[usize]| ks[40..].iter().sum::<usize>() as f64 / 40.0;
        assert!(mean(&dear) < mean(&cheap), "{dear:?} vs {cheap:?}");
        assert!(mean(&dear) < 1.0, "{dear:?}");
    }

    #[test]
    fn fixed_pacing_always_asks_for_the_maximum() {
        let mut p = Pacer::new(5, false);
        p.record(5, 0, 100 * MS);
        assert_eq!(p.next_len(), 5);
        assert_eq!(Pacer::new(0, true).next_len(), 0);
    }
}
