//! The cache path must compute what a full recomputation computes: prefill N then decode 1
//! gives the logits of prefill N+1, chunked prefill equals one-shot prefill, and sequences at
//! different positions decoded together equal each decoded alone.
//! Tolerance 1e-3 absolute on logits of magnitude ~10: float32 with a different summation
//! order (the cached path attends over the same keys in another grouping).

mod common;

use mlx_engine::engine::{Engine, LoadOptions};

const TOL: f32 = 1e-3;

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn prefill_then_decode_equals_longer_prefill_on_qwen() {
    if common::skip_requested() {
        return;
    }
    let engine = Engine::load(&common::qwen_model(), &LoadOptions::default()).unwrap();
    let prompt = [785u32, 6722, 315, 9625, 374, 12095, 13];
    let vocab = engine.config().vocab_size;

    let mut cache = engine.new_cache();
    engine.prefill(&prompt[..6], &mut cache, 512).unwrap();
    let decoded = engine
        .decode(&prompt[6..], &mut [&mut cache])
        .unwrap()
        .to_vec::<f32>()
        .unwrap();

    let mut full_cache = engine.new_cache();
    let full = engine
        .prefill(&prompt, &mut full_cache, 512)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    assert_eq!(decoded.len(), vocab);
    let d = max_diff(&decoded, &full);
    assert!(d < TOL, "decode vs prefill: max |Δlogit| {d}");

    let mut chunked_cache = engine.new_cache();
    let chunked = engine
        .prefill(&prompt, &mut chunked_cache, 3)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let d = max_diff(&chunked, &full);
    assert!(d < TOL, "chunked vs one-shot prefill: max |Δlogit| {d}");

    let all = engine.logits_all(&prompt).unwrap();
    let d = max_diff(&all[(prompt.len() - 1) * vocab..], &full);
    assert!(d < TOL, "all-positions vs prefill: max |Δlogit| {d}");

    // Two sequences at different positions decoded in one forward pass equal each alone.
    let mut short = engine.new_cache();
    engine.prefill(&prompt[..3], &mut short, 512).unwrap();
    let mut long = engine.new_cache();
    engine.prefill(&prompt[..6], &mut long, 512).unwrap();
    let both = engine
        .decode(&[prompt[3], prompt[6]], &mut [&mut short, &mut long])
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let mut short_alone = engine.new_cache();
    engine.prefill(&prompt[..3], &mut short_alone, 512).unwrap();
    let alone = engine
        .decode(&[prompt[3]], &mut [&mut short_alone])
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let d = max_diff(&both[..vocab], &alone);
    assert!(d < TOL, "batched vs alone (short): max |Δlogit| {d}");
    let d = max_diff(&both[vocab..], &decoded);
    assert!(d < TOL, "batched vs alone (long): max |Δlogit| {d}");
    assert_eq!((short.len(), long.len()), (4, 7));
}
