//! Accepting or rejecting a draft from the target model's logits at every drafted position.
//!
//! The drafts of both drafters are deterministic (a point mass q = δ(d) at each position), and
//! for a point mass the standard speculative-sampling rule — accept d with probability
//! min(1, p(d)/q(d)) = p(d), else draw from the residual max(0, p − q) renormalised, which is p
//! with d removed — has the same outcome distribution as drawing x ~ p and accepting when
//! x = d: P(x = d) = p(d), and for y ≠ d, P(x = y) = p(y) = (1 − p(d)) · p(y)/(1 − p(d)). So
//! each position draws from the target with the caller's [`Sampler`] (its penalties, bias,
//! temperature, top-k/top-p/min-p apply to p, over the history including the drafts accepted
//! before it) and the draft survives while the draws equal it. At temperature 0 the draw is
//! the target's argmax. The output is distributed exactly as without speculation.
#![forbid(unsafe_code)]

use crate::error::{Error, Result};
use crate::sampler::{Sampled, Sampler};

/// The outcome of verifying one draft.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// How many drafted tokens were accepted (a prefix of the draft).
    pub accepted: usize,
    /// The tokens to append: the accepted drafts, then one token drawn from the target (the
    /// correction at the first rejected position, or the next token after a fully accepted
    /// draft). Always `accepted + 1` long.
    pub tokens: Vec<u32>,
    /// The draw behind each of `tokens`, with the logprobs the sampler was asked for (the
    /// target's distribution at that position).
    pub draws: Vec<Sampled>,
}

/// Verifies `drafts` against `rows` (row-major, `drafts.len() + 1` rows of `vocab` logits):
/// row i is the target's distribution of the token after `history` + `drafts[..i]`.
pub fn verify(
    sampler: &mut Sampler,
    rows: &[f32],
    vocab: usize,
    history: &[u32],
    drafts: &[u32],
) -> Result<Verdict> {
    if vocab == 0 || rows.len() != (drafts.len() + 1) * vocab {
        return Err(Error::InvalidArgument(format!(
            "verify: {} logits for {} drafted tokens of a {vocab}-token vocabulary (need {} rows)",
            rows.len(),
            drafts.len(),
            drafts.len() + 1
        )));
    }
    let mut seen = Vec::with_capacity(history.len() + drafts.len() + 1);
    seen.extend_from_slice(history);
    let mut tokens = Vec::with_capacity(drafts.len() + 1);
    let mut draws = Vec::with_capacity(drafts.len() + 1);
    for (i, row) in rows.chunks_exact(vocab).enumerate() {
        let draw = sampler.sample(row, &seen)?;
        let token = draw.token;
        tokens.push(token);
        draws.push(draw);
        if drafts.get(i) != Some(&token) {
            break;
        }
        seen.push(token);
    }
    Ok(Verdict {
        accepted: tokens.len() - 1,
        tokens,
        draws,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::SamplerParams;

    /// Rows of a 4-token vocabulary whose argmaxes are `tops`.
    fn rows(tops: &[u32]) -> Vec<f32> {
        tops.iter()
            .flat_map(|&t| (0..4).map(move |i| if i == t { 2.0 } else { 0.0 }))
            .collect()
    }

    #[test]
    fn greedy_accepts_the_agreeing_prefix_and_corrects_the_first_disagreement() {
        let mut s = Sampler::new(SamplerParams::greedy());
        // Target argmaxes 1, 2, 0, 3 against drafts 1, 2, 3: two accepted, 0 corrects the third.
        let v = verify(&mut s, &rows(&[1, 2, 0, 3]), 4, &[0], &[1, 2, 3]).unwrap();
        assert_eq!((v.accepted, v.tokens), (2, vec![1, 2, 0]));
        // All accepted: the last row adds the next token.
        let v = verify(&mut s, &rows(&[1, 2, 0, 3]), 4, &[0], &[1, 2, 0]).unwrap();
        assert_eq!((v.accepted, v.tokens), (3, vec![1, 2, 0, 3]));
        // An empty draft is a plain step.
        let v = verify(&mut s, &rows(&[2]), 4, &[0], &[]).unwrap();
        assert_eq!((v.accepted, v.tokens), (0, vec![2]));
        // The first draft rejected.
        let v = verify(&mut s, &rows(&[3, 2]), 4, &[0], &[1]).unwrap();
        assert_eq!((v.accepted, v.tokens), (0, vec![3]));
    }

    #[test]
    fn penalties_see_the_drafts_accepted_before_each_position() {
        // Row 1 prefers 2 by a margin of 1; a repetition penalty of 4 on the accepted draft
        // token 2 (logit 3 -> 0.75) makes 1 (logit 2) the argmax there.
        let mut s = Sampler::new(SamplerParams {
            repetition_penalty: 4.0,
            ..SamplerParams::greedy()
        });
        let row0 = [0.0, 0.0, 3.0, 0.0];
        let row1 = [0.0, 2.0, 3.0, 0.0];
        let all: Vec<f32> = row0.iter().chain(&row1).copied().collect();
        let v = verify(&mut s, &all, 4, &[0], &[2]).unwrap();
        assert_eq!(v.tokens, vec![2, 1]);
    }

    #[test]
    fn sampled_outcomes_follow_the_target_distribution() {
        // One drafted token d = 1 with target p = softmax([0, ln 3, ln 6]) = (0.1, 0.3, 0.6): the
        // emitted token is 1 (accepted) 30% of the time, 0 10% and 2 60% (rejections).
        let row = [0.0f32, 3f32.ln(), 6f32.ln()];
        let bonus = [0.0f32, 0.0, 0.0];
        let all: Vec<f32> = row.iter().chain(&bonus).copied().collect();
        let mut s = Sampler::new(SamplerParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: Some(11),
            ..SamplerParams::default()
        });
        let n = 20_000;
        let mut counts = [0usize; 3];
        for _ in 0..n {
            let v = verify(&mut s, &all, 3, &[0], &[1]).unwrap();
            assert_eq!(v.accepted, usize::from(v.tokens[0] == 1));
            counts[v.tokens[0] as usize] += 1;
        }
        // 5 standard deviations of a binomial count at n = 20,000: at most 5·sqrt(n·0.24) ≈ 350.
        for (count, p) in counts.iter().zip([0.1, 0.3, 0.6]) {
            let sd = (n as f64 * p * (1.0 - p)).sqrt();
            assert!(
                (*count as f64 - n as f64 * p).abs() < 5.0 * sd,
                "{counts:?}"
            );
        }
    }

    #[test]
    fn a_row_count_that_does_not_match_the_draft_is_an_error() {
        let mut s = Sampler::new(SamplerParams::greedy());
        let err = verify(&mut s, &rows(&[1]), 4, &[0], &[1, 2]).unwrap_err();
        assert!(err.to_string().contains("need 3 rows"), "{err}");
    }
}
