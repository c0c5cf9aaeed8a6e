//! Our fused `CachedAttention` primitive (RoPE + cache write + causal GQA attention) against
//! MLX's own ops on the same inputs: `fast::rope` at the same offsets, the keys and values of
//! all steps concatenated, `fast::scaled_dot_product_attention` with the causal mask (or, for a
//! sliding window, an explicit additive mask built here).
//! Tolerance: 2e-5 absolute on outputs of magnitude ~1 (both sides accumulate in float32 in
//! different orders; RoPE angles are computed in f64 here and in f32 by MLX, which at positions
//! < 100 differs by < 1e-5), scaled by (positions / 100) past 100 positions: the f32 angle's
//! error grows with the position.
//! With float16 caches the stored values must equal MLX's `astype` of the inputs exactly, the
//! stored keys MLX's rotated keys within half a float16 ulp (2^-11 relative) plus the tolerance
//! above, and the output the reference over those stored keys and values within the tolerance.

use mlx_engine::mlx::fast::{self, AttentionMask};
use mlx_engine::mlx::kernels::{self, AttentionParams, KernelPath, QkNorm};
use mlx_engine::mlx::{ops, transforms, Array, Dtype};
use std::sync::Mutex;

mod common;

const TOL: f32 = 2e-5;

/// The kernel path switch is process-wide.
static PATH: Mutex<()> = Mutex::new(());

fn arr(data: &[f32], shape: &[i32]) -> Array {
    Array::from_slice(data, shape).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// MLX's RoPE of x [1, H, L, hd] at positions pos.., from the base or (when `p` has them) the
/// per-pair inverse frequencies, passed to MLX as periods.
fn rotate(x: &Array, p: &AttentionParams, pos: usize) -> Array {
    let hd = p.head_dim as i32;
    match p.rope_inv_freq {
        None => fast::rope(
            x,
            hd,
            p.rope_traditional,
            p.rope_base,
            p.rope_scale,
            pos as i32,
        ),
        Some(inv) => {
            let periods: Vec<f32> = inv.iter().map(|f| 1.0 / f).collect();
            let periods = arr(&periods, &[periods.len() as i32]);
            fast::rope_with_periods(
                x,
                hd,
                p.rope_traditional,
                p.rope_scale,
                pos as i32,
                &periods,
            )
        }
    }
    .unwrap()
}

/// MLX's result for one step: rope at `pos`, then causal SDPA over `keys`/`values` so far
/// ([1, Hkv, pos+L, hd], already rotated) → [1, L, Hq·hd].
fn reference_step(
    q: &Array,
    keys: &Array,
    values: &Array,
    p: &AttentionParams,
    pos: usize,
) -> Array {
    let (hq, hd) = (p.n_heads as i32, p.head_dim as i32);
    let l = q.dim(1).unwrap();
    let q = ops::transpose(&ops::reshape(q, &[1, l, hq, hd]).unwrap(), &[0, 2, 1, 3]).unwrap();
    let q = rotate(&q, p, pos);
    let total = keys.dim(2).unwrap() as usize;
    // Query pos+i sees key j when j <= pos+i and (with a window w) pos+i - j < w.
    let visible: Vec<f32> = (0..l as usize)
        .flat_map(|i| {
            (0..total).map(move |j| {
                let q_pos = pos + i;
                let seen = j <= q_pos && p.window.is_none_or(|w| q_pos - j < w);
                if seen {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    let visible = arr(&visible, &[l, total as i32]);
    let mask = AttentionMask::Array(&visible);
    let o = fast::scaled_dot_product_attention(&q, keys, values, p.scale, mask).unwrap();
    ops::reshape(
        &ops::transpose(&o, &[0, 2, 1, 3]).unwrap(),
        &[1, l, hq * hd],
    )
    .unwrap()
}

/// Runs steps of `lens` new positions through the fused op and the MLX reference, comparing
/// outputs and cache contents after each step.
fn check_steps(p: AttentionParams, cap: usize, lens: &[usize], seed: u64) {
    check_steps_normed(p, cap, lens, seed, false, Dtype::F32);
}

/// `check_steps`, with Gemma's Q/K norm when `qk_norm`: the op gets the raw q, k and the norm
/// weights, the reference gets q and k normalised per head by MLX's `rms_norm`.
/// The caches are of `cache` dtype (float32 or float16).
fn check_steps_normed(
    p: AttentionParams,
    cap: usize,
    lens: &[usize],
    seed: u64,
    qk_norm: bool,
    cache: Dtype,
) {
    let (hq, hkv, hd) = (p.n_heads, p.n_kv_heads, p.head_dim);
    let cshape = [1, hkv as i32, cap as i32, hd as i32];
    let mut kc = ops::zeros(&cshape, cache).unwrap();
    let mut vc = ops::zeros(&cshape, cache).unwrap();
    let half = cache == Dtype::F16;
    let f32_of = |t: &Array| ops::astype(t, Dtype::F32).unwrap();
    let mut ref_k: Option<Array> = None; // [1, Hkv, pos, hd], rotated
    let mut ref_v: Option<Array> = None;
    let mut pos = 0;
    for (step, &l) in lens.iter().enumerate() {
        let s = seed + 10 * step as u64;
        let q = arr(
            &common::activations(1, l * hq * hd, s),
            &[1, l as i32, (hq * hd) as i32],
        );
        let k = arr(
            &common::activations(1, l * hkv * hd, s + 1),
            &[1, l as i32, (hkv * hd) as i32],
        );
        let v = arr(
            &common::activations(1, l * hkv * hd, s + 2),
            &[1, l as i32, (hkv * hd) as i32],
        );

        let (qw, kw) = (
            arr(&common::activations(1, hd, seed + 100), &[hd as i32]),
            arr(&common::activations(1, hd, seed + 101), &[hd as i32]),
        );
        let norm = qk_norm.then_some(QkNorm {
            q: &qw,
            k: &kw,
            eps: 1e-6,
        });
        let (out, kc2, vc2) =
            kernels::cached_attention(&q, &k, &v, &kc, &vc, pos, &p, norm).unwrap();
        (kc, vc) = (kc2, vc2);
        let normed = |t: &Array, h: usize, w: &Array| {
            let t4 = ops::reshape(t, &[1, l as i32, h as i32, hd as i32]).unwrap();
            let n = fast::rms_norm(&t4, w, 1e-6).unwrap();
            ops::reshape(&n, &[1, l as i32, (h * hd) as i32]).unwrap()
        };
        let (q, k) = match norm {
            Some(_) => (normed(&q, hq, &qw), normed(&k, hkv, &kw)),
            None => (q, k),
        };

        let heads = |t: &Array| {
            ops::transpose(
                &ops::reshape(t, &[1, l as i32, hkv as i32, hd as i32]).unwrap(),
                &[0, 2, 1, 3],
            )
            .unwrap()
        };
        let k_rot = rotate(&heads(&k), &p, pos);
        let cat = |old: Option<Array>, new: Array| match old {
            None => new,
            Some(old) => ops::concatenate(&[&old, &new], 2).unwrap(),
        };
        let keys = cat(ref_k.take(), k_rot);
        let values = cat(ref_v.take(), heads(&v));
        let filled = [1, hkv as i32, (pos + l) as i32, hd as i32];
        let got_k = f32_of(&ops::slice(&kc, &[0; 4], &filled, &[1; 4]).unwrap());
        let got_v = f32_of(&ops::slice(&vc, &[0; 4], &filled, &[1; 4]).unwrap());
        // With float16 caches the reference reads what the op stored (checked below) and the
        // values rounded by MLX.
        let (ref_keys, ref_values) = match half {
            true => (
                got_k.clone(),
                f32_of(&ops::astype(&values, Dtype::F16).unwrap()),
            ),
            false => (keys.clone(), values.clone()),
        };
        let want = reference_step(&q, &ref_keys, &ref_values, &p, pos);
        transforms::eval(&[&out, &kc, &vc, &want]).unwrap();
        let tol = TOL * ((pos + l) as f32 / 100.0).max(1.0);

        let d = max_diff(
            &out.to_vec::<f32>().unwrap(),
            &want.to_vec::<f32>().unwrap(),
        );
        assert!(
            d <= tol,
            "step {step} (pos {pos}, L {l}): output max |diff| {d}"
        );
        pos += l;
        let (got_k, want_k) = (
            got_k.to_vec::<f32>().unwrap(),
            keys.to_vec::<f32>().unwrap(),
        );
        let rel = if half { 2f32.powi(-11) } else { 0.0 };
        let worst_k = got_k
            .iter()
            .zip(&want_k)
            .map(|(g, w)| (g - w).abs() - (w.abs() * rel + 2f32.powi(-25)))
            .fold(f32::NEG_INFINITY, f32::max);
        let dv = max_diff(
            &got_v.to_vec::<f32>().unwrap(),
            &ref_values.to_vec::<f32>().unwrap(),
        );
        assert!(
            worst_k <= tol && dv == 0.0,
            "step {step}: cache differs (k {worst_k} past the rounding, v {dv})"
        );
        drop(got_v);
        ref_k = Some(keys);
        ref_v = Some(values);
    }
}

fn params(hq: usize, hkv: usize, hd: usize, traditional: bool) -> AttentionParams<'static> {
    AttentionParams {
        n_heads: hq,
        n_kv_heads: hkv,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
        rope_base: 10_000.0,
        rope_scale: 1.0,
        rope_traditional: traditional,
        rope_inv_freq: None,
        window: None,
    }
}

#[test]
fn matches_mlx_rope_and_sdpa_over_prefill_and_decode_steps() {
    let _guard = PATH.lock().unwrap_or_else(|e| e.into_inner());
    for path in [KernelPath::Avx2, KernelPath::Scalar] {
        kernels::force_path(Some(path));
        // Qwen2.5-0.5B shapes (14 query heads on 2 KV heads, hd 64, halves RoPE), a prompt in
        // two chunks, then single-token steps.
        let mut qwen = params(14, 2, 64, false);
        qwen.rope_base = 1_000_000.0;
        check_steps(qwen, 96, &[17, 40, 1, 1, 3, 1], 1);
        // TinyLlama-like grouping with adjacent-pair RoPE; odd row counts and a long step that
        // spans several query blocks.
        check_steps(params(8, 2, 16, true), 80, &[1, 35, 1, 2], 2);
        // Multi-head (no grouping), head_dim not a multiple of 8.
        check_steps(params(3, 3, 6, false), 16, &[5, 1, 1], 3);
        // Qwen2.5-1.5B shapes (12 on 2, hd 128) past a few hundred positions: many blocks of
        // keys and values, and key counts that are not multiples of 8.
        let mut qwen15 = params(12, 2, 128, false);
        qwen15.rope_base = 1_000_000.0;
        check_steps(qwen15, 320, &[261, 1, 1, 2, 5], 8);
        // head_dim 80 (64 + 16 columns of values) and 96 (64 + 32).
        check_steps(params(4, 1, 80, false), 64, &[41, 1], 9);
        check_steps(params(6, 2, 96, true), 64, &[9, 1, 30], 10);
    }
    kernels::force_path(None);
}

#[test]
fn float16_caches_store_rounded_keys_and_values_and_attend_over_them() {
    let _guard = PATH.lock().unwrap_or_else(|e| e.into_inner());
    for path in [KernelPath::Avx2, KernelPath::Scalar] {
        kernels::force_path(Some(path));
        let mut qwen = params(14, 2, 64, false);
        qwen.rope_base = 1_000_000.0;
        check_steps_normed(qwen, 96, &[17, 40, 1, 1, 3, 1], 11, false, Dtype::F16);
        let mut qwen15 = params(12, 2, 128, false);
        qwen15.rope_base = 1_000_000.0;
        check_steps_normed(qwen15, 300, &[261, 1, 2], 12, false, Dtype::F16);
        check_steps_normed(
            params(3, 3, 6, false),
            16,
            &[5, 1, 1],
            13,
            false,
            Dtype::F16,
        );
        check_steps_normed(
            params(6, 2, 96, true),
            64,
            &[9, 1, 30],
            14,
            true,
            Dtype::F16,
        );
    }
    kernels::force_path(None);
}

#[test]
fn per_pair_rope_frequencies_match_mlx_rope_with_periods() {
    let _guard = PATH.lock().unwrap_or_else(|e| e.into_inner());
    // Llama 3-like factors: high frequencies kept, low ones divided by 8, a blend between,
    // with a position multiplier on top; both pair layouts.
    let inv: Vec<f32> = (0..32)
        .map(|j| {
            let f = 500_000f32.powf(-(2 * j) as f32 / 64.0);
            f / [1.0, 2.5, 8.0][(j * 3 / 32) as usize]
        })
        .collect();
    for path in [KernelPath::Avx2, KernelPath::Scalar] {
        kernels::force_path(Some(path));
        for traditional in [true, false] {
            let mut p = params(4, 2, 64, traditional);
            p.rope_inv_freq = Some(&inv);
            p.rope_scale = 0.5;
            check_steps(p, 64, &[9, 1, 20, 1], 7);
        }
    }
    kernels::force_path(None);
    // The frequencies matter: the same op with plain RoPE gives another output.
    let (q, k, v) = (
        arr(&common::activations(1, 4 * 64 * 3, 1), &[1, 3, 256]),
        arr(&common::activations(1, 2 * 64 * 3, 2), &[1, 3, 128]),
        arr(&common::activations(1, 2 * 64 * 3, 3), &[1, 3, 128]),
    );
    let zeros = || ops::zeros(&[1, 2, 8, 64], Dtype::F32).unwrap();
    let mut p = params(4, 2, 64, false);
    let plain = kernels::cached_attention(&q, &k, &v, &zeros(), &zeros(), 2, &p, None)
        .unwrap()
        .0;
    p.rope_inv_freq = Some(&inv);
    let scaled = kernels::cached_attention(&q, &k, &v, &zeros(), &zeros(), 2, &p, None)
        .unwrap()
        .0;
    let d = max_diff(
        &plain.to_vec::<f32>().unwrap(),
        &scaled.to_vec::<f32>().unwrap(),
    );
    assert!(d > 1e-3, "per-pair frequencies changed nothing ({d})");
    // A table of the wrong length is an error, not a read past its end.
    p.rope_inv_freq = Some(&inv[..31]);
    let e = kernels::cached_attention(&q, &k, &v, &zeros(), &zeros(), 0, &p, None);
    assert!(e.is_err_and(|e| e.to_string().contains("RoPE frequencies")));
}

#[test]
fn a_sliding_window_hides_keys_older_than_the_window() {
    let _guard = PATH.lock().unwrap_or_else(|e| e.into_inner());
    for path in [KernelPath::Avx2, KernelPath::Scalar] {
        kernels::force_path(Some(path));
        // Gemma 3 270M's grouping (4 query heads on 1 KV head), a window of 5: a prompt longer
        // than the window, a chunk that starts inside it, single steps past it.
        let mut gemma = params(4, 1, 32, false);
        gemma.window = Some(5);
        check_steps(gemma, 40, &[7, 1, 3, 1, 20, 1], 4);
        // With Gemma's per-head Q/K norm done inside the op.
        check_steps_normed(gemma, 40, &[7, 1, 3, 1], 6, true, Dtype::F32);
        // A window wider than everything seen is plain causal attention.
        let mut wide = params(8, 2, 16, true);
        wide.window = Some(64);
        check_steps(wide, 32, &[9, 1, 1], 5);
    }
    kernels::force_path(None);
}

#[test]
fn a_cache_shared_with_a_slice_is_copied_not_overwritten() {
    let p = params(2, 1, 8, false);
    let cshape = [1, 1, 8, 8];
    let base: Vec<f32> = common::activations(1, 64, 7);
    let kc = arr(&base, &cshape);
    let vc = arr(&base, &cshape);
    // A view of positions 4..8, which the step below writes.
    let view = ops::slice(&kc, &[0, 0, 4, 0], &[1, 1, 8, 8], &[1; 4]).unwrap();
    view.eval().unwrap();
    let q = arr(&common::activations(1, 2 * 16, 8), &[1, 2, 16]);
    let k = arr(&common::activations(1, 2 * 8, 9), &[1, 2, 8]);
    let v = arr(&common::activations(1, 2 * 8, 10), &[1, 2, 8]);
    let (out, kc2, _vc2) = kernels::cached_attention(&q, &k, &v, &kc, &vc, 4, &p, None).unwrap();
    transforms::eval(&[&out, &kc2]).unwrap();
    assert_eq!(
        view.to_vec::<f32>().unwrap(),
        base[32..].to_vec(),
        "the view changed"
    );
    assert_eq!(kc.to_vec::<f32>().unwrap(), base, "the input cache changed");
    let written = kc2.to_vec::<f32>().unwrap();
    assert_eq!(written[..32], base[..32], "positions before pos changed");
    assert_ne!(
        written[32..48],
        base[32..48],
        "positions pos..pos+L not written"
    );
}

#[test]
fn bad_shapes_are_errors_and_the_next_op_works() {
    let p = params(4, 2, 8, false);
    let kc = ops::zeros(&[1, 2, 4, 8], Dtype::F32).unwrap();
    let vc = ops::zeros(&[1, 2, 4, 8], Dtype::F32).unwrap();
    let q = arr(&common::activations(1, 2 * 32, 1), &[1, 2, 32]);
    let k = arr(&common::activations(1, 2 * 16, 2), &[1, 2, 16]);
    let v = arr(&common::activations(1, 2 * 16, 3), &[1, 2, 16]);
    let err = |r: mlx_engine::Result<(Array, Array, Array)>| {
        r.err().map(|e| e.to_string()).unwrap_or_default()
    };
    // Past the capacity.
    let e = err(kernels::cached_attention(&q, &k, &v, &kc, &vc, 3, &p, None));
    assert!(e.contains("capacity"), "{e}");
    // Wrong width of k.
    let e = err(kernels::cached_attention(&q, &q, &v, &kc, &vc, 0, &p, None));
    assert!(e.contains("k must be"), "{e}");
    // Heads that do not group.
    let e = err(kernels::cached_attention(
        &q,
        &k,
        &v,
        &kc,
        &vc,
        0,
        &params(3, 2, 8, false),
        None,
    ));
    assert!(e.contains("multiple"), "{e}");
    // Norm weights of the wrong length.
    let short = arr(&[1.0; 4], &[4]);
    let norm = QkNorm {
        q: &short,
        k: &short,
        eps: 1e-6,
    };
    let e = err(kernels::cached_attention(
        &q,
        &k,
        &v,
        &kc,
        &vc,
        0,
        &p,
        Some(norm),
    ));
    assert!(e.contains("head_dim elements"), "{e}");
    // Float16 inputs.
    let q16 = ops::astype(&q, Dtype::F16).unwrap();
    let e = err(kernels::cached_attention(
        &q16, &k, &v, &kc, &vc, 0, &p, None,
    ));
    assert!(e.contains("float32"), "{e}");
    let (out, _, _) = kernels::cached_attention(&q, &k, &v, &kc, &vc, 0, &p, None).unwrap();
    assert_eq!(out.shape(), vec![1, 2, 32]);
    assert!(out.to_vec::<f32>().unwrap().iter().all(|x| x.is_finite()));
}
