//! The cache path must compute what a full recomputation computes: prefill N then decode 1
//! gives the logits of prefill N+1, chunked prefill equals one-shot prefill, and sequences at
//! different positions decoded together equal each decoded alone.
//! Tolerances (max |Δlogit|, logits of magnitude ~10-25):
//! - dense path 1e-3: float32 with a different summation order (the cached path attends over
//!   the same keys in another grouping);
//! - kernel path 0.75, as in `model_fidelity.rs`: a row computed in an M = 1 GEMV and in an
//!   M > 1 GEMM goes through differently blocked int8 activation rounding.

mod common;

use mlx_engine::engine::{Engine, LoadOptions, LogitRows};
use mlx_engine::model::Execution;

#[test]
fn prefill_then_decode_equals_longer_prefill_on_qwen() {
    if common::skip_requested() {
        return;
    }
    for (execution, tol) in [(Execution::CpuDense, 1e-3), (Execution::CpuKernel, 0.75)] {
        check_cache_paths(&common::qwen_model(), execution, tol);
    }
}

/// Gemma 3 layout with a sliding window of 4 (5 of 6 layers): the 7-token prompt outgrows the
/// window, decode reads only the window's keys, a chunked prefill masks across chunks.
#[test]
fn prefill_then_decode_equals_longer_prefill_with_a_sliding_window() {
    if common::skip_requested() {
        return;
    }
    let model = common::synthetic_gemma3(); // a window of 4 keys in layers 0-4
    for (execution, tol) in [(Execution::CpuDense, 1e-3), (Execution::CpuKernel, 0.75)] {
        check_cache_paths(&model, execution, tol);
    }
}

fn check_cache_paths(model: &std::path::Path, execution: Execution, tol: f32) {
    let options = LoadOptions {
        execution: Some(execution),
        ..LoadOptions::default()
    };
    let engine = Engine::load(model, &options).unwrap();
    let vocab = engine.config().vocab_size as u32;
    let prompt = [785u32, 6722, 315, 9625, 374, 12095, 13].map(|t| t % vocab);
    let vocab = engine.config().vocab_size;

    let mut cache = engine.new_cache();
    engine
        .prefill(&prompt[..6], &mut cache, 512, LogitRows::Last)
        .unwrap();
    let decoded = engine
        .decode(&prompt[6..], &mut [&mut cache])
        .unwrap()
        .to_vec::<f32>()
        .unwrap();

    let mut full_cache = engine.new_cache();
    let full = engine
        .prefill(&prompt, &mut full_cache, 512, LogitRows::Last)
        .unwrap()
        .data;
    assert_eq!(decoded.len(), vocab);
    let d = common::max_diff(&decoded, &full);
    assert!(d < tol, "{execution:?} decode vs prefill: max |Δlogit| {d}");

    let mut chunked_cache = engine.new_cache();
    let chunked = engine
        .prefill(&prompt, &mut chunked_cache, 3, LogitRows::Last)
        .unwrap()
        .data;
    let d = common::max_diff(&chunked, &full);
    assert!(d < tol, "chunked vs one-shot prefill: max |Δlogit| {d}");

    let all = engine.logits_all(&prompt).unwrap();
    let d = common::max_diff(&all[(prompt.len() - 1) * vocab..], &full);
    assert!(d < tol, "all-positions vs prefill: max |Δlogit| {d}");

    // Two sequences at different positions decoded in one forward pass equal each alone.
    let mut short = engine.new_cache();
    engine
        .prefill(&prompt[..3], &mut short, 512, LogitRows::Last)
        .unwrap();
    let mut long = engine.new_cache();
    engine
        .prefill(&prompt[..6], &mut long, 512, LogitRows::Last)
        .unwrap();
    let both = engine
        .decode(&[prompt[3], prompt[6]], &mut [&mut short, &mut long])
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let mut short_alone = engine.new_cache();
    engine
        .prefill(&prompt[..3], &mut short_alone, 512, LogitRows::Last)
        .unwrap();
    let alone = engine
        .decode(&[prompt[3]], &mut [&mut short_alone])
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let d = common::max_diff(&both[..vocab], &alone);
    assert!(d < tol, "batched vs alone (short): max |Δlogit| {d}");
    let d = common::max_diff(&both[vocab..], &decoded);
    assert!(d < tol, "batched vs alone (long): max |Δlogit| {d}");
    assert_eq!((short.len(), long.len()), (4, 7));
}
