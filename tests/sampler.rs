//! The sampler on hand-made logits: exact top-k / top-p / min-p masks, penalty arithmetic worked
//! out by hand, a chi-square goodness-of-fit test of temperature sampling, seeds, bad input.

use mlx_engine::sampler::{Sampler, SamplerParams};

/// Chi-square critical value for 4 degrees of freedom at significance 0.001 (standard table).
const CHI2_DF4_P001: f64 = 18.467;

/// Sampling with only the given truncation switched on, temperature 1, fixed seed.
fn params(top_k: usize, top_p: f32, min_p: f32) -> SamplerParams {
    SamplerParams {
        temperature: 1.0,
        top_k,
        top_p,
        min_p,
        seed: Some(1),
        ..SamplerParams::greedy()
    }
}

/// Logits whose softmax is exactly `probs`.
fn logits_of(probs: &[f64]) -> Vec<f32> {
    probs.iter().map(|p| p.ln() as f32).collect()
}

/// The ids a draw could pick, in order.
fn kept(p: SamplerParams, logits: &[f32]) -> Vec<u32> {
    let c = Sampler::new(p).candidates(logits, &[]).expect("candidates");
    c.into_iter().map(|(id, _)| id).collect()
}

/// Probabilities 0.5, 0.2, 0.15, 0.1, 0.05 on ids 0-4.
fn five() -> Vec<f32> {
    logits_of(&[0.5, 0.2, 0.15, 0.1, 0.05])
}

#[test]
fn top_k_keeps_the_k_largest_ties_by_id() {
    let logits = [0.1, 3.0, 2.0, 3.0, -1.0, 2.5];
    assert_eq!(kept(params(3, 1.0, 0.0), &logits), [1, 3, 5]);
    assert_eq!(kept(params(1, 1.0, 0.0), &logits), [1]);
    assert_eq!(kept(params(0, 1.0, 0.0), &logits), [1, 3, 5, 2, 0, 4]);
    assert_eq!(kept(params(100, 1.0, 0.0), &logits).len(), 6);
}

#[test]
fn top_p_keeps_the_smallest_prefix_reaching_p() {
    // Cumulative: 0.5, 0.7, 0.85, 0.95, 1.0.
    assert_eq!(kept(params(0, 0.45, 0.0), &five()), [0]);
    assert_eq!(kept(params(0, 0.6, 0.0), &five()), [0, 1]);
    assert_eq!(kept(params(0, 0.8, 0.0), &five()), [0, 1, 2]);
    assert_eq!(kept(params(0, 0.9, 0.0), &five()), [0, 1, 2, 3]);
    assert_eq!(kept(params(0, 0.99, 0.0), &five()), [0, 1, 2, 3, 4]);
}

#[test]
fn min_p_drops_tokens_below_a_fraction_of_the_best() {
    // Floor = 0.5 * min_p.
    assert_eq!(kept(params(0, 1.0, 0.25), &five()), [0, 1, 2]); // floor 0.125
    assert_eq!(kept(params(0, 1.0, 0.35), &five()), [0, 1]); // floor 0.175
    assert_eq!(kept(params(0, 1.0, 0.9), &five()), [0]);
    assert_eq!(kept(params(0, 1.0, 0.05), &five()).len(), 5);
}

#[test]
fn top_p_renormalizes_after_top_k() {
    // Top-4 renormalized: 0.526, 0.737, 0.895, 1 → p = 0.86 keeps 3; over all five the
    // cumulative 0.85 would not reach it and 4 would stay.
    assert_eq!(kept(params(4, 0.86, 0.0), &five()), [0, 1, 2]);
    assert_eq!(kept(params(0, 0.86, 0.0), &five()), [0, 1, 2, 3]);
}

#[test]
fn temperature_comes_before_min_p() {
    // At T = 2 the probabilities go as sqrt(p): 0.707, 0.447, 0.387, 0.316, 0.224 (unnormalized),
    // so min-p 0.5 (floor 0.354) keeps three; at T = 1 (floor 0.25) only the first.
    let hot = SamplerParams {
        temperature: 2.0,
        ..params(0, 1.0, 0.5)
    };
    assert_eq!(kept(hot, &five()), [0, 1, 2]);
    assert_eq!(kept(params(0, 1.0, 0.5), &five()), [0]);
}

#[test]
fn candidate_probabilities_are_renormalized() {
    let c = Sampler::new(params(3, 1.0, 0.0))
        .candidates(&five(), &[])
        .expect("candidates");
    let probs: Vec<f32> = c.iter().map(|x| x.1).collect();
    for (got, want) in probs.iter().zip([0.5 / 0.85, 0.2 / 0.85, 0.15 / 0.85]) {
        assert!((got - want).abs() < 1e-6, "{probs:?}");
    }
}

#[test]
fn greedy_picks_the_largest_and_ties_go_to_the_lowest_id() {
    let mut s = Sampler::new(SamplerParams::greedy());
    assert_eq!(
        s.sample(&[0.0, 2.0, 1.0, 2.0], &[]).expect("sample").token,
        1
    );
    assert_eq!(s.sample(&[5.0, 5.0], &[]).expect("sample").token, 0);
    let banned = SamplerParams {
        logit_bias: vec![(1, -100.0), (2, 3.0)],
        ..SamplerParams::greedy()
    };
    let got = Sampler::new(banned)
        .sample(&[0.0, 2.0, 1.0], &[])
        .expect("sample");
    assert_eq!(got.token, 2, "bias 1 + 3 = 4 beats 0");
}

#[test]
fn penalties_follow_the_hand_computed_values() {
    // Logits [2, -1, 0.5, 3]; the last 4 of the history are [1, 3, 3, 3]: token 1 once,
    // token 3 three times (the two 0s fall outside the window).
    // repetition 2: l1 = -1 * 2 = -2, l3 = 3 / 2 = 1.5;
    // frequency 0.1, presence 0.5: l1 = -2 - 0.1 - 0.5 = -2.6, l3 = 1.5 - 0.3 - 0.5 = 0.7.
    // Adjusted [2, -2.6, 0.5, 0.7]: greedy picks 0. Its candidates are that one token.
    let p = SamplerParams {
        repetition_penalty: 2.0,
        frequency_penalty: 0.1,
        presence_penalty: 0.5,
        penalty_last_n: 4,
        ..SamplerParams::greedy()
    };
    let logits = [2.0, -1.0, 0.5, 3.0];
    let history = [0, 0, 1, 3, 3, 3];
    let got = Sampler::new(p.clone())
        .sample(&logits, &history)
        .expect("sample");
    assert_eq!(got.token, 0, "3 is no longer the best");
    // At temperature 1 the candidates' probabilities are the adjusted softmax.
    let hot = SamplerParams {
        temperature: 1.0,
        ..p
    };
    let c = Sampler::new(hot)
        .candidates(&logits, &history)
        .expect("candidates");
    let adjusted = [2.0f64, -2.6, 0.5, 0.7];
    let total: f64 = adjusted.iter().map(|l| l.exp()).sum();
    for (id, prob) in c {
        let want = adjusted[id as usize].exp() / total;
        assert!((f64::from(prob) - want).abs() < 1e-6, "token {id}: {prob}");
    }
}

#[test]
fn logprobs_are_the_raw_log_softmax_before_bias_penalties_and_temperature() {
    // Logits [2, -1, 0.5, 3]: log-softmax by hand, lse = ln(e^2 + e^-1 + e^0.5 + e^3).
    let logits = [2.0f32, -1.0, 0.5, 3.0];
    let lse = [2.0f64, -1.0, 0.5, 3.0]
        .iter()
        .map(|l| l.exp())
        .sum::<f64>()
        .ln();
    let raw = |id: usize| (f64::from(logits[id]) - lse) as f32;
    // Bias pushes token 1 to the top and penalties and temperature change the draw, but the
    // reported numbers stay the model's.
    let p = SamplerParams {
        temperature: 0.0,
        logit_bias: vec![(1, 50.0)],
        repetition_penalty: 2.0,
        penalty_last_n: 8,
        n_logprobs: 3,
        ..SamplerParams::greedy()
    };
    let got = Sampler::new(p).sample(&logits, &[3, 0]).expect("sample");
    assert_eq!(got.token, 1, "the bias decides the draw");
    assert!((got.logprob.unwrap() - raw(1)).abs() < 1e-6);
    let order: Vec<u32> = got.top_logprobs.iter().map(|x| x.0).collect();
    assert_eq!(order, [3, 0, 2], "the model's top 3, not the biased ones");
    for (id, lp) in got.top_logprobs {
        assert!((lp - raw(id as usize)).abs() < 1e-6, "token {id}: {lp}");
    }
    // Ties in the top list go to the lower id; n above the vocabulary lists every token.
    let tied = SamplerParams {
        n_logprobs: 9,
        ..SamplerParams::greedy()
    };
    let got = Sampler::new(tied)
        .sample(&[1.0, 4.0, 1.0, 4.0], &[])
        .unwrap();
    let order: Vec<u32> = got.top_logprobs.iter().map(|x| x.0).collect();
    assert_eq!(order, [1, 3, 0, 2]);
    assert_eq!(got.token, 1);
    // Not asked for: nothing is computed.
    let got = Sampler::new(SamplerParams::greedy())
        .sample(&logits, &[])
        .unwrap();
    assert_eq!((got.logprob, got.top_logprobs.len()), (None, 0));
    let only_chosen = SamplerParams {
        logprobs: true,
        ..SamplerParams::greedy()
    };
    let got = Sampler::new(only_chosen).sample(&logits, &[]).unwrap();
    assert!((got.logprob.unwrap() - raw(3)).abs() < 1e-6);
    assert!(got.top_logprobs.is_empty());
}

#[test]
fn temperature_sampling_passes_a_chi_square_test() {
    let logits = [1.0f32, 2.0, 0.5, -1.0, 1.5];
    for temperature in [1.0f32, 0.7] {
        let p = SamplerParams {
            temperature,
            seed: Some(42),
            ..params(0, 1.0, 0.0)
        };
        let mut s = Sampler::new(p);
        let mut counts = [0u32; 5];
        for _ in 0..10_000 {
            counts[s.sample(&logits, &[]).expect("sample").token as usize] += 1;
        }
        let weights: Vec<f64> = logits
            .iter()
            .map(|&l| (f64::from(l / temperature)).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let chi2: f64 = counts
            .iter()
            .zip(&weights)
            .map(|(&o, w)| {
                let e = 10_000.0 * w / total;
                (f64::from(o) - e).powi(2) / e
            })
            .sum();
        println!(
            "T = {temperature}: chi2 = {chi2:.2} (critical {CHI2_DF4_P001}), counts {counts:?}"
        );
        assert!(
            chi2 < CHI2_DF4_P001,
            "T = {temperature}: chi2 {chi2:.2}, counts {counts:?}"
        );
    }
}

#[test]
fn the_same_seed_draws_the_same_tokens() {
    let logits: Vec<f32> = (0..1000).map(|i| ((i * 37 % 101) as f32) / 20.0).collect();
    let run = |seed| {
        let mut s = Sampler::new(SamplerParams {
            seed: Some(seed),
            ..SamplerParams::default()
        });
        (0..200)
            .map(|_| s.sample(&logits, &[]).expect("sample").token)
            .collect::<Vec<_>>()
    };
    assert_eq!(run(9), run(9));
    assert_ne!(run(9), run(10));
}

#[test]
fn bad_input_is_an_error() {
    let mut s = Sampler::new(SamplerParams::default());
    assert!(s.sample(&[0.0, f32::NAN, 1.0], &[]).is_err(), "NaN");
    assert!(s.sample(&[0.0, f32::INFINITY], &[]).is_err(), "+inf");
    assert!(s.sample(&[], &[]).is_err(), "empty");
    assert!(
        s.sample(&[f32::NEG_INFINITY; 3], &[]).is_err(),
        "all masked"
    );
    assert!(
        s.sample(&[0.0, 1.0], &[2]).is_err(),
        "history id past the vocabulary"
    );
    for bad in [
        SamplerParams {
            temperature: -1.0,
            ..SamplerParams::default()
        },
        SamplerParams {
            top_p: 0.0,
            ..SamplerParams::default()
        },
        SamplerParams {
            min_p: 1.5,
            ..SamplerParams::default()
        },
        SamplerParams {
            repetition_penalty: 0.0,
            ..SamplerParams::default()
        },
        SamplerParams {
            logit_bias: vec![(5, 1.0)],
            ..SamplerParams::default()
        },
        SamplerParams {
            logit_bias: vec![(0, 100.5)],
            ..SamplerParams::default()
        },
        SamplerParams {
            logit_bias: vec![(0, f32::NEG_INFINITY)],
            ..SamplerParams::default()
        },
        SamplerParams {
            logit_bias: vec![(0, f32::NAN)],
            ..SamplerParams::default()
        },
    ] {
        let err = Sampler::new(bad.clone())
            .sample(&[0.0, 1.0], &[])
            .unwrap_err();
        if !bad.logit_bias.is_empty() {
            assert!(err.to_string().contains("logit_bias"), "{err}");
        }
    }
    let edge = SamplerParams {
        logit_bias: vec![(0, -100.0), (1, 100.0)],
        ..SamplerParams::default()
    };
    assert!(edge.validate_for(2).is_ok());
    let err = edge.validate_for(1).unwrap_err().to_string();
    assert!(
        err.contains("logit_bias") && err.contains("token 1"),
        "{err}"
    );
}

#[test]
fn a_full_vocabulary_row_is_fast_enough() {
    let n = 151_936;
    let logits: Vec<f32> = (0..n)
        .map(|i| ((i as u64 * 2_654_435_761 % 1000) as f32) / 100.0)
        .collect();
    for p in [
        SamplerParams::default(),
        params(0, 0.95, 0.0),
        params(0, 1.0, 0.05),
    ] {
        let mut s = Sampler::new(SamplerParams { n_logprobs: 5, ..p });
        let start = std::time::Instant::now();
        for _ in 0..20 {
            s.sample(&logits, &[1, 2, 3]).expect("sample");
        }
        let per_call = start.elapsed() / 20;
        println!("{n} logits: {per_call:?} per token");
        assert!(per_call.as_millis() < 50, "{per_call:?} per token");
    }
}
