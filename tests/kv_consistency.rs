//! The cache path must compute what a full recomputation computes: prefill N then decode 1
//! gives the logits of prefill N+1, and chunked prefill equals one-shot prefill.
//! Tolerance 1e-3 absolute on logits of magnitude ~10: float32 with a different summation
//! order (the cached path attends over the same keys in another grouping).

mod common;

use mlx_engine::engine::{Engine, LoadOptions};

const TOL: f32 = 1e-3;

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn prefill_then_decode_equals_longer_prefill_on_qwen() {
    if common::skip_requested() {
        return;
    }
    let engine = Engine::load(&common::qwen_model(), &LoadOptions::default()).unwrap();
    let prompt = [785u32, 6722, 315, 9625, 374, 12095, 13];
    let vocab = engine.config().vocab_size;

    let mut cache = engine.new_cache(1);
    engine.prefill(&prompt[..6], &mut cache, 512).unwrap();
    let decoded = engine.decode(&prompt[6..], &mut cache).unwrap().to_vec::<f32>().unwrap();

    let mut full_cache = engine.new_cache(1);
    let full = engine.prefill(&prompt, &mut full_cache, 512).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(decoded.len(), vocab);
    let d = max_diff(&decoded, &full);
    assert!(d < TOL, "decode vs prefill: max |Δlogit| {d}");

    let mut chunked_cache = engine.new_cache(1);
    let chunked = engine.prefill(&prompt, &mut chunked_cache, 3).unwrap().to_vec::<f32>().unwrap();
    let d = max_diff(&chunked, &full);
    assert!(d < TOL, "chunked vs one-shot prefill: max |Δlogit| {d}");

    let all = engine.logits_all(&prompt).unwrap();
    let d = max_diff(&all[(prompt.len() - 1) * vocab..], &full);
    assert!(d < TOL, "all-positions vs prefill: max |Δlogit| {d}");
}
