//! Speculative decoding is lossless:
//! - temperature 0 on the real Qwen 0.5B: the speculative text (prompt lookup, and the model
//!   drafting for itself) equals plain greedy decoding up to the first near-tie, the rule of
//!   `model_fidelity.rs` (the quantized matmuls are batch-invariant, but the rest of a verify
//!   pass over several rows is not checked to be bit-equal to a one-row decode step);
//! - temperature > 0 on a synthetic model: over many seeds, the joint distribution of the first
//!   three tokens with speculation equals the one without (chi-square test of homogeneity);
//! - rollback: after rejected drafts the KV cache gives the logits of a cache built without
//!   speculation (tolerances of `kv_consistency.rs`);
//! - a draft model with another vocabulary is refused with a clear error.

mod common;

use mlx_engine::backend::{Backend, BackendOptions, ModelSpec, SamplerParams};
use mlx_engine::engine::{Engine, GenerateOptions, LoadOptions, LogitRows};
use mlx_engine::model::Execution;
use mlx_engine::sampler::Sampler;
use mlx_engine::speculative::{self, DraftModel, Drafter, PromptLookup, SpeculativeOptions};
use mlx_engine::Result;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A top-1 mismatch is a near-tie when the plain run's top-2 gap there is below this
/// (`KERNEL_TOL` of `model_fidelity.rs`).
const TIE_GAP: f32 = 1.0;
/// Rollback tolerances (max |Δlogit|), as in `kv_consistency.rs`.
const DENSE_TOL: f32 = 1e-3;
const KERNEL_TOL: f32 = 0.75;

/// A small llama whose logits are peaked enough that drafts are sometimes accepted.
fn synthetic_llama() -> PathBuf {
    common::synthetic(
        "llama-q8-speculative",
        &["--arch", "llama", "--quant", "Q8_0", "--seed", "5"],
    )
}

fn load(model: &Path, execution: Execution) -> Engine {
    let options = LoadOptions {
        execution: Some(execution),
        ..LoadOptions::default()
    };
    Engine::load(model, &options).unwrap()
}

/// Plain greedy decoding written out here (prefill, then one decode step per token), with the
/// top-2 gap of every step's logits.
fn plain_greedy(engine: &Engine, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<f32>) {
    let mut cache = engine.new_cache();
    let mut logits = engine
        .prefill(prompt, &mut cache, 512, LogitRows::Last)
        .unwrap()
        .data;
    let (mut tokens, mut gaps) = (vec![], vec![]);
    for _ in 0..n {
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        tokens.push(order[0] as u32);
        gaps.push(logits[order[0]] - logits[order[1]]);
        logits = engine
            .decode(&[order[0] as u32], &mut [&mut cache])
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
    }
    (tokens, gaps)
}

/// Greedy speculative generation with a fixed draft length.
fn speculative_greedy(
    engine: &Engine,
    drafter: &mut dyn Drafter,
    prompt: &[u32],
    n: usize,
) -> (Vec<u32>, usize, usize) {
    let mut sampler = Sampler::new(SamplerParams::greedy());
    let options = GenerateOptions {
        max_new: n,
        ..GenerateOptions::default()
    };
    let mut spec = speculative::Speculator {
        engine,
        drafter,
        options: SpeculativeOptions {
            draft_max: 6,
            adaptive: false,
        },
    };
    let (tokens, stats) = spec
        .generate(prompt, &mut sampler, &options, |_| false, |_| true)
        .unwrap();
    (tokens, stats.drafted_tokens, stats.accepted_tokens)
}

/// Asserts `ours` equals `plain` up to its end or to a position where `plain`'s top-2 gap is a
/// near-tie; returns how many tokens agree.
fn agree_up_to_a_near_tie(what: &str, ours: &[u32], plain: &[u32], gaps: &[f32]) -> usize {
    assert_eq!(ours.len(), plain.len(), "{what}: token counts");
    match ours.iter().zip(plain).position(|(a, b)| a != b) {
        None => ours.len(),
        Some(i) => {
            assert!(
                gaps[i] < TIE_GAP,
                "{what}: token {i} is {} with speculation, {} without, at a top-2 gap of {}",
                ours[i],
                plain[i],
                gaps[i]
            );
            i
        }
    }
}

const PROMPTS: [&str; 3] = [
    "def area(width, height):\n    \"\"\"Area of a rectangle.\"\"\"\n    return width * height\n\n\
     def perimeter(width, height):\n    return 2 * (width + height)\n\n\
     # The same two functions, with type hints:\n",
    "The capital of France is",
    "Rewrite this sentence in the past tense: The cat sits on the mat and watches the birds \
     that fly over the garden.\nAnswer:",
];

#[test]
fn greedy_speculation_equals_plain_decoding_up_to_a_near_tie_on_qwen() {
    if common::skip_requested() {
        return;
    }
    let model = common::qwen_model();
    let engine = load(&model, Execution::CpuKernel);
    let tokenizer = engine.tokenizer().unwrap();
    let mut self_draft = DraftModel::new(&engine, load(&model, Execution::CpuKernel)).unwrap();
    let (mut drafted, mut accepted) = (0, 0);
    for prompt in PROMPTS {
        let ids = tokenizer.encode(prompt, false).unwrap();
        let (plain, gaps) = plain_greedy(&engine, &ids, 40);
        let mut lookup = PromptLookup::new(1, 3).unwrap();
        let drafters: [(&str, &mut dyn Drafter); 2] =
            [("lookup", &mut lookup), ("self-draft", &mut self_draft)];
        for (name, drafter) in drafters {
            let (ours, d, a) = speculative_greedy(&engine, drafter, &ids, plain.len());
            let agreed = agree_up_to_a_near_tie(name, &ours, &plain, &gaps);
            eprintln!(
                "{name} {prompt:?}: {agreed}/{} agree; drafted {d}, accepted {a}",
                ours.len()
            );
            drafted += d;
            accepted += a;
        }
    }
    assert!(
        accepted > 0 && accepted < drafted,
        "drafts both accepted and rejected ({accepted} of {drafted})"
    );
}

/// Drafts the tokens of a fixed continuation from the position reached, whatever the history
/// holds: right while the output follows it, wrong after it leaves it.
struct Scripted {
    script: Vec<u32>,
    prompt_len: usize,
}

impl Drafter for Scripted {
    fn draft(&mut self, history: &[u32], max: usize) -> Result<Vec<u32>> {
        let at = history.len() - self.prompt_len;
        let end = (at + max).min(self.script.len());
        Ok(self.script.get(at..end).unwrap_or_default().to_vec())
    }
}

/// Counts of each outcome, keyed by the first tokens generated.
fn outcomes(
    engine: &Engine,
    prompt: &[u32],
    params: &SamplerParams,
    seeds: std::ops::Range<u64>,
    mut drafter: Option<&mut Scripted>,
) -> BTreeMap<Vec<u32>, usize> {
    let options = GenerateOptions {
        max_new: 3,
        ..GenerateOptions::default()
    };
    let mut counts = BTreeMap::new();
    for seed in seeds {
        let mut sampler = Sampler::new(SamplerParams {
            seed: Some(seed),
            ..params.clone()
        });
        let tokens = match drafter.as_deref_mut() {
            None => engine.generate(prompt, &mut sampler, &options, |_| false, |_| true),
            Some(d) => speculative::Speculator {
                engine,
                drafter: d,
                options: SpeculativeOptions {
                    draft_max: 3,
                    adaptive: false,
                },
            }
            .generate(prompt, &mut sampler, &options, |_| false, |_| true),
        }
        .unwrap()
        .0;
        *counts.entry(tokens).or_insert(0) += 1;
    }
    counts
}

/// Pearson's chi-square statistic of homogeneity of two count tables and its degrees of
/// freedom; outcomes seen fewer than 10 times in both runs together are pooled into one cell.
fn chi_square(a: &BTreeMap<Vec<u32>, usize>, b: &BTreeMap<Vec<u32>, usize>) -> (f64, usize) {
    let keys: std::collections::BTreeSet<&Vec<u32>> = a.keys().chain(b.keys()).collect();
    let get = |m: &BTreeMap<Vec<u32>, usize>, k: &Vec<u32>| *m.get(k).unwrap_or(&0) as f64;
    let mut cells: Vec<(f64, f64)> = vec![];
    let mut pooled = (0.0, 0.0);
    for k in keys {
        let (x, y) = (get(a, k), get(b, k));
        if x + y < 10.0 {
            pooled = (pooled.0 + x, pooled.1 + y);
        } else {
            cells.push((x, y));
        }
    }
    if pooled.0 + pooled.1 > 0.0 {
        cells.push(pooled);
    }
    let (na, nb) = cells.iter().fold((0.0, 0.0), |s, c| (s.0 + c.0, s.1 + c.1));
    let n = na + nb;
    let stat = cells
        .iter()
        .map(|&(x, y)| {
            let (ea, eb) = (na * (x + y) / n, nb * (x + y) / n);
            (x - ea).powi(2) / ea + (y - eb).powi(2) / eb
        })
        .sum();
    (stat, cells.len() - 1)
}

/// The chi-square quantile at upper-tail probability 0.001 (Wilson-Hilferty: within ~1% of
/// the exact value for df >= 3).
fn chi_square_critical_001(df: usize) -> f64 {
    let (k, z) = (df as f64, 3.0902); // z: the standard normal's 0.999 quantile
    let h = 2.0 / (9.0 * k);
    k * (1.0 - h + z * h.sqrt()).powi(3)
}

#[test]
fn sampled_speculation_draws_the_first_tokens_from_the_plain_distribution() {
    if common::skip_requested() {
        return;
    }
    let engine = load(&synthetic_llama(), Execution::CpuKernel);
    let prompt = [1u32, 300, 17, 42, 511, 260];
    // Penalties and every truncation take part; top-k 3 keeps the outcome table small.
    let params = SamplerParams {
        temperature: 0.9,
        top_k: 3,
        top_p: 0.97,
        min_p: 0.02,
        repetition_penalty: 1.3,
        penalty_last_n: 8,
        ..SamplerParams::default()
    };
    // The script is the greedy continuation: the most likely draw at each step, accepted often
    // but far from always.
    let script = engine.generate_greedy(&prompt, 3, |_| false).unwrap();
    let mut drafter = Scripted {
        script,
        prompt_len: prompt.len(),
    };
    let n = 2000;
    let plain = outcomes(&engine, &prompt, &params, 0..n, None);
    let spec = outcomes(&engine, &prompt, &params, n..2 * n, Some(&mut drafter));
    let (stat, df) = chi_square(&plain, &spec);
    let critical = chi_square_critical_001(df);
    eprintln!(
        "{} outcomes without, {} with speculation; chi-square {stat:.1}, df {df}, 0.1% critical {critical:.1}",
        plain.len(),
        spec.len()
    );
    assert!(
        df >= 3,
        "too few distinct outcomes ({df} + 1) for a meaningful test"
    );
    assert!(
        stat < critical,
        "speculation changed the distribution: chi-square {stat:.1} >= {critical:.1} (df {df})"
    );
    // The same test does see a different distribution: greedy-only outcomes are one cell.
    let mut greedy = BTreeMap::new();
    greedy.insert(drafter.script.clone(), n as usize);
    let (stat, df) = chi_square(&plain, &greedy);
    assert!(
        stat > chi_square_critical_001(df.max(1)),
        "the test has no power"
    );
}

/// Drafts `wrong` tokens: every draft is rejected at its first token unless the model happens
/// to agree.
struct Wrong(u32);

impl Drafter for Wrong {
    fn draft(&mut self, _history: &[u32], max: usize) -> Result<Vec<u32>> {
        Ok(vec![self.0; max])
    }
}

/// Drafts the model's greedy continuation with every third drafted position wrong, so each
/// step accepts a prefix and rolls back the tail behind the wrong token.
struct Corrupted(Scripted);

impl Drafter for Corrupted {
    fn draft(&mut self, history: &[u32], max: usize) -> Result<Vec<u32>> {
        let mut d = self.0.draft(history, max)?;
        if let Some(t) = d.get_mut(2) {
            *t = if *t == 7 { 8 } else { 7 };
        }
        Ok(d)
    }
}

/// [`Corrupted`] over `engine`'s greedy continuation of `prompt`.
fn corrupted_greedy(engine: &Engine, prompt: &[u32]) -> Corrupted {
    Corrupted(Scripted {
        script: engine.generate_greedy(prompt, 40, |_| false).unwrap(),
        prompt_len: prompt.len(),
    })
}

/// Runs speculative steps (drafts from `drafter`) for `steps` steps, then compares the logits
/// of the next decode step with those of a cache built by a plain prefill of the same tokens.
fn check_rollback(
    engine: &Engine,
    prompt: &[u32],
    drafter: &mut dyn Drafter,
    tol: f32,
) -> (usize, usize) {
    let mut sampler = Sampler::new(SamplerParams::greedy());
    let mut cache = engine.new_cache();
    engine
        .prefill(
            &prompt[..prompt.len() - 1],
            &mut cache,
            512,
            LogitRows::Last,
        )
        .unwrap();
    let mut history = prompt.to_vec();
    let (mut drafted, mut accepted) = (0, 0);
    for _ in 0..6 {
        let drafts = drafter.draft(&history, 4).unwrap();
        let v = speculative::step(engine, &mut cache, &mut sampler, &history, &drafts).unwrap();
        drafted += drafts.len();
        accepted += v.accepted;
        history.extend_from_slice(&v.tokens);
        assert_eq!(
            cache.len() + 1,
            history.len(),
            "the cache holds all but the last"
        );
    }
    assert!(accepted < drafted, "some drafts were rejected");
    let last = *history.last().unwrap();
    let after = engine.decode(&[last], &mut [&mut cache]).unwrap();
    let after = after.to_vec::<f32>().unwrap();
    let mut fresh = engine.new_cache();
    engine
        .prefill(
            &history[..history.len() - 1],
            &mut fresh,
            512,
            LogitRows::Last,
        )
        .unwrap();
    let expected = engine.decode(&[last], &mut [&mut fresh]).unwrap();
    let diff = common::max_diff(&after, &expected.to_vec::<f32>().unwrap());
    eprintln!("rollback: {drafted} drafted, {accepted} accepted, max |Δlogit| {diff:.2e}");
    assert!(
        diff <= tol,
        "max |Δlogit| {diff} after rollback, tolerance {tol}"
    );
    (drafted, accepted)
}

#[test]
fn rolled_back_caches_equal_caches_built_without_speculation() {
    if common::skip_requested() {
        return;
    }
    let model = synthetic_llama();
    let prompt = [1u32, 300, 17, 42, 511, 260, 3, 99];
    for (execution, tol) in [
        (Execution::CpuDense, DENSE_TOL),
        (Execution::CpuKernel, KERNEL_TOL),
    ] {
        let engine = load(&model, execution);
        check_rollback(&engine, &prompt, &mut Wrong(7), tol);
        let mut partly = corrupted_greedy(&engine, &prompt);
        let (_, accepted) = check_rollback(&engine, &prompt, &mut partly, tol);
        assert!(
            accepted > 0,
            "prefixes accepted before the rolled-back tails"
        );
    }
    let qwen = load(&common::qwen_model(), Execution::CpuKernel);
    let ids = qwen.tokenizer().unwrap().encode(PROMPTS[0], false).unwrap();
    check_rollback(&qwen, &ids, &mut Wrong(13), KERNEL_TOL);
    let mut partly = corrupted_greedy(&qwen, &ids);
    let (_, accepted) = check_rollback(&qwen, &ids, &mut partly, KERNEL_TOL);
    assert!(
        accepted > 0,
        "prefixes accepted before the rolled-back tails"
    );
}

#[test]
fn a_draft_model_with_another_vocabulary_is_refused() {
    if common::skip_requested() {
        return;
    }
    let llama = load(&synthetic_llama(), Execution::CpuKernel);
    let qwen2 = common::synthetic(
        "qwen2-q8-speculative",
        &["--arch", "qwen2", "--quant", "Q8_0", "--seed", "5"],
    );
    let err = DraftModel::new(&llama, load(&qwen2, Execution::CpuKernel))
        .err()
        .expect("a llama vocabulary and a qwen2 one are refused")
        .to_string();
    eprintln!("{err}");
    assert!(
        err.starts_with("invalid argument: draft model refused: "),
        "{err}"
    );
    let gemma = load(&common::gemma_model(), Execution::CpuKernel);
    let qwen = load(&common::qwen_model(), Execution::CpuKernel);
    let err = DraftModel::new(&qwen, gemma).err().unwrap().to_string();
    assert!(
        err.contains("vocabulary of 262144 tokens, the target has 151936"),
        "{err}"
    );
    let same = load(&synthetic_llama(), Execution::CpuKernel);
    assert!(
        DraftModel::new(&llama, same).is_ok(),
        "a model drafts for itself"
    );
}

#[test]
fn the_backend_step_keeps_the_accepted_prefix_and_leaves_the_sequence_on_error() {
    if common::skip_requested() {
        return;
    }
    let mut backend = Backend::load(
        &ModelSpec::new(synthetic_llama()),
        &BackendOptions::default(),
    )
    .unwrap();
    let sampler = backend.create_sampler(SamplerParams::greedy()).unwrap();
    let seq = backend.create_seq();
    let prompt = [1u32, 300, 17, 42];
    backend.prefill(seq, &prompt[..3], false).unwrap();
    // The model's own greedy continuation as the draft, with a wrong last token.
    let engine = load(&synthetic_llama(), Execution::CpuKernel);
    let mut draft = engine.generate_greedy(&prompt, 3, |_| false).unwrap();
    draft[2] = (draft[2] + 1) % 512;
    let v = backend
        .speculative_step(seq, sampler, &prompt, &draft)
        .unwrap();
    assert_eq!(v.accepted, 2, "{v:?} for draft {draft:?}");
    assert_eq!(backend.seq_len(seq).unwrap(), prompt.len() + 2);
    // A history that does not fit the sequence is refused and changes nothing.
    let err = backend
        .speculative_step(seq, sampler, &prompt, &draft)
        .unwrap_err();
    assert!(
        err.to_string().contains("must hold all but the last"),
        "{err}"
    );
    assert_eq!(backend.seq_len(seq).unwrap(), prompt.len() + 2);
}
