//! The fused kernel calls (`kernels::gguf_matmul_multi`, `kernels::gguf_swiglu`) against the
//! separate ops they replace, on the synthetic GGUF tensors of `tests/kernels.rs`:
//! - several projections of one x: each output equals `gguf_matmul` of that weight (+ an MLX
//!   add of its bias). The fused call quantizes the activations the same way and computes every
//!   output element in the same order, so they agree to 1e-6 relative (they are in fact equal);
//! - SwiGLU: equals `silu(gguf_matmul(gate)) * gguf_matmul(up)` with MLX's silu and multiply,
//!   to 1e-5 relative (only the exp differs: ours vs MLX's).
//!
//! Both kernel paths are checked. The path and thread count are process-wide settings, so every
//! test takes one lock.

mod common;

use mlx_engine::ggml_type::GgmlType;
use mlx_engine::mlx::kernels::{self, Gate, GgufWeightRef, KernelPath};
use mlx_engine::mlx::{ops, transforms, Array, Dtype};
use std::sync::{Arc, Mutex, MutexGuard};

static SETTINGS: Mutex<()> = Mutex::new(());

/// Serializes the tests (they change the kernel path) and restores the defaults afterwards.
struct Settings {
    _guard: MutexGuard<'static, ()>,
}

impl Settings {
    fn take() -> Settings {
        Settings {
            _guard: SETTINGS.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }
}

impl Drop for Settings {
    fn drop(&mut self) {
        kernels::force_path(None);
        kernels::set_num_threads(0);
    }
}

/// Paths to check; one the CPU lacks falls back to the next best (checked twice, harmlessly).
const PATHS: [KernelPath; 3] = [KernelPath::Scalar, KernelPath::Avx2, KernelPath::Avx512Vnni];

/// One weight tensor of a synthetic model, as the MLX array of its blocks.
struct Weight {
    blocks: Array,
    ty: GgmlType,
    n: usize,
    k: usize,
}

impl Weight {
    fn as_ref(&self) -> GgufWeightRef<'_> {
        GgufWeightRef::new(&self.blocks, self.ty, self.n)
    }
}

/// `tensor` of the synthetic llama model quantized as `quant` (the files `tests/kernels.rs`
/// uses: hidden 256, q 256, k/v 128, ffn 512).
fn load(quant: &str, tensor: &str) -> Weight {
    let (ty, bytes, n, k) = common::synthetic_tensor(quant, tensor);
    let row_bytes = bytes.len() / n;
    let owner: Arc<dyn Send + Sync> = Arc::new(bytes.clone());
    let blocks =
        Array::from_borrowed_bytes(&bytes, owner, &[n as i32, row_bytes as i32], Dtype::U8)
            .unwrap();
    Weight { blocks, ty, n, k }
}

fn qkv(quants: [&str; 3]) -> Vec<Weight> {
    [
        "blk.0.attn_q.weight",
        "blk.0.attn_k.weight",
        "blk.0.attn_v.weight",
    ]
    .iter()
    .zip(quants)
    .map(|(tensor, quant)| load(quant, tensor))
    .collect()
}

/// Q/K/V of the real Qwen 0.5B's types (Q6_K V as in other quantizations) and a Q5_0 gate/up.
fn qwen_like_block() -> (Vec<Weight>, Weight, Weight) {
    (
        qkv(["Q5_0", "Q5_0", "Q6_K"]),
        load("Q5_0", "blk.0.ffn_gate.weight"),
        load("Q5_0", "blk.0.ffn_up.weight"),
    )
}

fn x_array(m: usize, k: usize, seed: u64, scale: f32) -> Array {
    let x: Vec<f32> = common::activations(m, k, seed)
        .iter()
        .map(|v| v * scale)
        .collect();
    Array::from_slice(&x, &[m as i32, k as i32]).unwrap()
}

fn values(a: &Array) -> Vec<f32> {
    a.to_vec::<f32>().unwrap()
}

/// |got − want| ≤ rel·|want| + abs for every element.
fn assert_close(got: &[f32], want: &[f32], rel: f32, abs: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = rel * w.abs() + abs;
        assert!(
            (g - w).abs() <= tol || (g.is_nan() && w.is_nan()),
            "{what}: element {i}: {g} vs {w} (tol {tol})"
        );
    }
}

/// Which weights of a group get a bias.
#[derive(Clone, Copy, Debug)]
enum Biases {
    None,
    All,
    Some,
}

/// Fused projections of every group vs separate calls, for m in {1, 3, 17}, both paths, with
/// no, all and some biases.
#[test]
fn fused_projections_equal_separate_matmuls() {
    if common::skip_requested() {
        return;
    }
    let _settings = Settings::take();
    let mut groups: Vec<(String, Vec<Weight>)> = ["Q4_0", "Q5_0", "Q8_0", "Q4_K", "Q6_K", "F16"]
        .iter()
        .map(|q| (q.to_string(), qkv([q, q, q])))
        .collect();
    // The real Qwen 0.5B's q/k/v types (Q8_0 V there, Q6_K in other quantizations).
    groups.push(("Q5_0+Q5_0+Q6_K".into(), qkv(["Q5_0", "Q5_0", "Q6_K"])));
    groups.push(("Q5_0+Q5_0+Q8_0".into(), qkv(["Q5_0", "Q5_0", "Q8_0"])));
    // Four weights reading all three activation formats.
    let mut four = qkv(["Q4_1", "BF16", "Q5_K"]);
    four.push(load("F32", "blk.0.ffn_up.weight"));
    groups.push(("Q4_1+BF16+Q5_K+F32".into(), four));

    for (name, weights) in &groups {
        let k = weights[0].k;
        let biases: Vec<Array> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let b: Vec<f32> = common::activations(1, w.n, 100 + i as u64);
                Array::from_slice(&b, &[w.n as i32]).unwrap()
            })
            .collect();
        for path in PATHS {
            kernels::force_path(Some(path));
            for m in [1usize, 3, 17] {
                let x = x_array(m, k, m as u64, 1.0);
                let separate: Vec<Array> = weights
                    .iter()
                    .map(|w| kernels::gguf_matmul(&x, &w.blocks, w.ty, w.n, k).unwrap())
                    .collect();
                for which in [Biases::None, Biases::All, Biases::Some] {
                    let refs: Vec<GgufWeightRef> = weights
                        .iter()
                        .zip(&biases)
                        .enumerate()
                        .map(|(i, (w, b))| match which {
                            Biases::All => w.as_ref().with_bias(b),
                            Biases::Some if i % 2 == 0 => w.as_ref().with_bias(b),
                            _ => w.as_ref(),
                        })
                        .collect();
                    let fused = kernels::gguf_matmul_multi(&x, None, &refs, k).unwrap();
                    assert_eq!(fused.len(), weights.len());
                    for (i, (got, sep)) in fused.iter().zip(&separate).enumerate() {
                        assert_eq!(got.shape(), vec![m as i32, weights[i].n as i32]);
                        let want = match refs[i].bias {
                            Some(b) => ops::add(sep, b).unwrap(),
                            None => sep.clone(),
                        };
                        assert_close(
                            &values(got),
                            &values(&want),
                            1e-6,
                            1e-7,
                            &format!("{name} {path:?} m={m} {which:?} output {i}"),
                        );
                    }
                }
            }
        }
    }
}

/// SwiGLU and GEGLU vs MLX's silu(gate) * up and tanh-form gelu(gate) * up, for several types
/// (also gate and up of different activation formats), m in {1, 3, 17}, both paths, and
/// activations scaled up so the gate spans a wide range (down to exp overflow).
#[test]
fn fused_gated_products_equal_act_times_up() {
    if common::skip_requested() {
        return;
    }
    let _settings = Settings::take();
    let pairs: Vec<(&str, Weight, Weight)> = [
        ("Q4_0", "Q4_0"),
        ("Q5_0", "Q5_0"),
        ("Q8_0", "Q8_0"),
        ("Q4_K", "Q4_K"),
        ("Q6_K", "Q6_K"),
        ("F16", "F16"),
        ("Q5_0", "Q4_K"),
    ]
    .iter()
    .map(|&(g, u)| {
        (
            g,
            load(g, "blk.0.ffn_gate.weight"),
            load(u, "blk.0.ffn_up.weight"),
        )
    })
    .collect();
    for (name, gate, up) in &pairs {
        let (n, k) = (gate.n, gate.k);
        for path in PATHS {
            kernels::force_path(Some(path));
            for m in [1usize, 3, 17] {
                for (scale, act) in [1.0f32, 30.0, 1000.0]
                    .into_iter()
                    .flat_map(|s| [(s, Gate::Silu), (s, Gate::GeluTanh)])
                {
                    let x = x_array(m, k, 7 + m as u64, scale);
                    let g = kernels::gguf_matmul(&x, &gate.blocks, gate.ty, n, k).unwrap();
                    let u = kernels::gguf_matmul(&x, &up.blocks, up.ty, n, k).unwrap();
                    let g = match act {
                        Gate::Silu => ops::silu(&g).unwrap(),
                        Gate::GeluTanh => ops::gelu_tanh(&g).unwrap(),
                    };
                    let want = values(&ops::multiply(&g, &u).unwrap());
                    let got =
                        kernels::gguf_gated(&x, None, gate.as_ref(), up.as_ref(), k, act).unwrap();
                    assert_eq!(got.shape(), vec![m as i32, n as i32]);
                    // A relative bound, with an absolute floor far below the values' scale
                    // for products of silu's tail (|g| large and negative).
                    let top = want.iter().fold(0f32, |a, v| a.max(v.abs()));
                    assert_close(
                        &values(&got),
                        &want,
                        1e-5,
                        1e-7 * top,
                        &format!("{name} {path:?} m={m} scale={scale} {act:?}"),
                    );
                }
            }
        }
    }
}

/// Thread counts, batch dimensions, strided and half-precision x, one output evaluated alone,
/// and `compile`.
#[test]
fn fused_calls_handle_threads_layouts_and_compile() {
    if common::skip_requested() {
        return;
    }
    let _settings = Settings::take();
    let (weights, gate, up) = qwen_like_block();
    let k = weights[0].k;
    let refs: Vec<GgufWeightRef> = weights.iter().map(Weight::as_ref).collect();
    let separate = |x: &Array| -> Vec<Vec<f32>> {
        weights
            .iter()
            .map(|w| values(&kernels::gguf_matmul(x, &w.blocks, w.ty, w.n, k).unwrap()))
            .collect()
    };

    for path in PATHS {
        kernels::force_path(Some(path));
        let x = x_array(5, k, 11, 1.0);
        let want = separate(&x);
        for threads in [1, 2, 3] {
            kernels::set_num_threads(threads);
            let got = kernels::gguf_matmul_multi(&x, None, &refs, k).unwrap();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_close(
                    &values(g),
                    w,
                    1e-6,
                    1e-7,
                    &format!("{path:?} threads={threads} output {i}"),
                );
            }
        }
        kernels::set_num_threads(0);

        // Batch dimensions: [2, 3, K] -> [2, 3, n_i].
        let xb = x_array(6, k, 12, 1.0);
        let xb3 = ops::reshape(&xb, &[2, 3, k as i32]).unwrap();
        let got = kernels::gguf_matmul_multi(&xb3, None, &refs, k).unwrap();
        let want = separate(&xb);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.shape(), vec![2, 3, weights[i].n as i32]);
            assert_close(&values(g), w, 1e-6, 1e-7, &format!("{path:?} batched {i}"));
        }

        // A strided x (a transposed view) and half-precision x: gathered like gguf_matmul does.
        let xt = ops::transpose(
            &ops::contiguous(&ops::transpose(&x, &[1, 0]).unwrap()).unwrap(),
            &[1, 0],
        )
        .unwrap();
        for (what, xv) in [
            ("strided", xt),
            ("f16", ops::astype(&x, Dtype::F16).unwrap()),
            ("bf16", ops::astype(&x, Dtype::BF16).unwrap()),
        ] {
            let want = separate(&xv);
            let got = kernels::gguf_matmul_multi(&xv, None, &refs, k).unwrap();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_close(&values(g), w, 1e-6, 1e-7, &format!("{path:?} {what} {i}"));
            }
        }

        // Only one sibling kept and evaluated: still right.
        let only_v = kernels::gguf_matmul_multi(&x, None, &refs, k)
            .unwrap()
            .remove(2);
        assert_close(&values(&only_v), &separate(&x)[2], 1e-6, 1e-7, "sibling");

        // Under compile (traced once, replayed twice).
        let (gt, ut, n) = (gate.ty, up.ty, gate.n);
        let f = move |xs: &[Array]| -> mlx_engine::Result<Vec<Array>> {
            let h = kernels::gguf_swiglu(
                &xs[0],
                None,
                GgufWeightRef::new(&xs[1], gt, n),
                GgufWeightRef::new(&xs[2], ut, n),
                k,
            )?;
            Ok(vec![ops::multiply(&h, &h)?])
        };
        let compiled = transforms::compile(Box::new(f), false).unwrap();
        let g = kernels::gguf_matmul(&x, &gate.blocks, gate.ty, n, k).unwrap();
        let u = kernels::gguf_matmul(&x, &up.blocks, up.ty, n, k).unwrap();
        let h = ops::multiply(&ops::silu(&g).unwrap(), &u).unwrap();
        let want = values(&ops::multiply(&h, &h).unwrap());
        for _ in 0..2 {
            let got = compiled
                .call(&[&x, &gate.blocks, &up.blocks])
                .unwrap()
                .remove(0);
            assert_close(
                &values(&got),
                &want,
                3e-5,
                1e-9,
                &format!("{path:?} compiled"),
            );
        }
    }
}

/// Bad calls are errors (never a crash), and the next call still works.
#[test]
fn fused_calls_reject_bad_arguments() {
    if common::skip_requested() {
        return;
    }
    let _settings = Settings::take();
    let (weights, gate, up) = qwen_like_block();
    let k = weights[0].k;
    let refs: Vec<GgufWeightRef> = weights.iter().map(Weight::as_ref).collect();
    let x = x_array(3, k, 5, 1.0);
    let want: Vec<Vec<f32>> = weights
        .iter()
        .map(|w| values(&kernels::gguf_matmul(&x, &w.blocks, w.ty, w.n, k).unwrap()))
        .collect();
    let still_works = |what: &str| {
        let got = kernels::gguf_matmul_multi(&x, None, &refs, k).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert_close(&values(g), w, 1e-6, 1e-7, &format!("after {what}"));
        }
    };
    let expect_err = |what: &str, r: mlx_engine::Result<Vec<Array>>, needle: &str| {
        let e = r.expect_err(what).to_string();
        assert!(e.contains(needle), "{what}: {e}");
        still_works(what);
    };

    // x with another K than the call's.
    let short = x_array(3, k - 32, 5, 1.0);
    expect_err(
        "mismatched x",
        kernels::gguf_matmul_multi(&short, None, &refs, k),
        "K = ",
    );
    // k (and x) not matching the weights' bytes.
    let long = x_array(3, k + 32, 5, 1.0);
    expect_err(
        "mismatched k",
        kernels::gguf_matmul_multi(&long, None, &refs[..2], k + 32),
        "bytes",
    );
    // k not a multiple of a weight's block (Q6_K: 256).
    expect_err(
        "k vs block",
        kernels::gguf_matmul_multi(&short, None, &refs, k - 32),
        "block size",
    );
    expect_err(
        "no weights",
        kernels::gguf_matmul_multi(&x, None, &[], k),
        "count=0",
    );
    let five = [refs[0], refs[1], refs[2], refs[0], refs[1]];
    expect_err(
        "five weights",
        kernels::gguf_matmul_multi(&x, None, &five, k),
        "count=5",
    );
    // A bias of the wrong length.
    let b = Array::from_slice(&[0f32; 3], &[3]).unwrap();
    let bad_bias = [refs[0].with_bias(&b), refs[1]];
    expect_err(
        "bias length",
        kernels::gguf_matmul_multi(&x, None, &bad_bias, k),
        "bias",
    );
    // A weight's n not matching its blocks.
    let mut wrong_n = refs.clone();
    wrong_n[1].n += 1;
    expect_err(
        "wrong n",
        kernels::gguf_matmul_multi(&x, None, &wrong_n, k),
        "bytes",
    );

    // SwiGLU: gate and up of different n, a bias, a mismatched x.
    let r = kernels::gguf_swiglu(&x, None, gate.as_ref(), refs[0], k).map(|a| vec![a]);
    expect_err("swiglu n", r, "same n");
    let bias = Array::from_slice(&vec![0f32; gate.n], &[gate.n as i32]).unwrap();
    let r = kernels::gguf_swiglu(&x, None, gate.as_ref().with_bias(&bias), up.as_ref(), k)
        .map(|a| vec![a]);
    expect_err("swiglu bias", r, "no bias");
    let r = kernels::gguf_swiglu(&short, None, gate.as_ref(), up.as_ref(), k).map(|a| vec![a]);
    expect_err("swiglu k", r, "K = ");
    let h = kernels::gguf_swiglu(&x, None, gate.as_ref(), up.as_ref(), k).unwrap();
    assert_eq!(h.shape(), vec![3, gate.n as i32]);
}

/// The RMSNorm prologue of the fused projections against a host f64 reference
/// (y = W · (x·w/√(mean x² + ε)) with W the kernel's dequantization): scalar path to 1e-5 of
/// Σ|W·xₙ|, AVX2 path to 2e-2 of it (its int8 activations, as in tests/kernels.rs). The
/// residual epilogue of `gguf_matmul_add` equals `gguf_matmul` + MLX's add.
#[test]
fn fused_norm_and_residual_match_references() {
    if common::skip_requested() {
        return;
    }
    let _settings = Settings::take();
    let weights = qkv(["Q5_0", "Q8_0", "Q4_K"]);
    let (k, eps) = (weights[0].k, 1e-6f32);
    let gamma: Vec<f32> = common::activations(1, k, 77)
        .iter()
        .map(|v| 1.0 + 0.5 * v)
        .collect();
    let norm_w = Array::from_slice(&gamma, &[k as i32]).unwrap();
    let norm = kernels::RmsNormRef {
        weight: &norm_w,
        eps,
    };
    let refs: Vec<GgufWeightRef> = weights.iter().map(Weight::as_ref).collect();
    for path in PATHS {
        kernels::force_path(Some(path));
        let rel = if path == KernelPath::Scalar {
            1e-5
        } else {
            2e-2
        };
        for m in [1usize, 5] {
            let x = x_array(m, k, 40 + m as u64, 3.0);
            let xv = values(&x);
            let fused = kernels::gguf_matmul_multi(&x, Some(norm), &refs, k).unwrap();
            for (w, got) in weights.iter().zip(&fused) {
                let bytes = w.blocks.to_vec::<u8>().unwrap();
                let wd = kernels::dequantize_host(&bytes, w.ty, w.n, k).unwrap();
                let got = values(got);
                for r in 0..m {
                    let row = &xv[r * k..(r + 1) * k];
                    let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / k as f64;
                    let s = 1.0 / (ms + eps as f64).sqrt();
                    let xn: Vec<f64> = row
                        .iter()
                        .zip(&gamma)
                        .map(|(&v, &g)| v as f64 * s * g as f64)
                        .collect();
                    for j in 0..w.n {
                        let wr = &wd[j * k..(j + 1) * k];
                        let want: f64 = wr.iter().zip(&xn).map(|(&a, b)| a as f64 * b).sum();
                        let mag: f64 = wr.iter().zip(&xn).map(|(&a, b)| (a as f64 * b).abs()).sum();
                        let g = got[r * w.n + j] as f64;
                        assert!(
                            (g - want).abs() <= rel * mag + 1e-6,
                            "{:?} {path:?} m={m} row {r} out {j}: {g} vs {want} (mag {mag})",
                            w.ty
                        );
                    }
                }
            }
            // The same norm through the SwiGLU call equals the norm through separate calls.
            let (_, gate, up) = qwen_like_block();
            let h = kernels::gguf_swiglu(&x, Some(norm), gate.as_ref(), up.as_ref(), k).unwrap();
            let normed = mlx_engine::mlx::fast::rms_norm(&x, &norm_w, eps).unwrap();
            let parts =
                kernels::gguf_matmul_multi(&x, Some(norm), &[gate.as_ref(), up.as_ref()], k)
                    .unwrap();
            let want = ops::multiply(&ops::silu(&parts[0]).unwrap(), &parts[1]).unwrap();
            assert_close(
                &values(&h),
                &values(&want),
                1e-5,
                1e-6,
                &format!("{path:?} swiglu norm"),
            );
            // And the fused norm agrees with MLX's rms_norm within the int8 rounding.
            let sep = kernels::gguf_matmul_multi(&normed, None, &refs, k).unwrap();
            let fused_v = values(&fused[0]);
            let sep_v = values(&sep[0]);
            let scale = sep_v.iter().fold(0f32, |a, v| a.max(v.abs()));
            assert_close(
                &fused_v,
                &sep_v,
                0.0,
                2e-2 * scale,
                &format!("{path:?} vs rms_norm"),
            );

            // Residual epilogue.
            let w = &weights[0];
            let res = x_array(m, w.n, 90 + m as u64, 1.0);
            let got = kernels::gguf_matmul_add(&x, &w.blocks, w.ty, w.n, k, &res).unwrap();
            let plain = kernels::gguf_matmul(&x, &w.blocks, w.ty, w.n, k).unwrap();
            let want = ops::add(&plain, &res).unwrap();
            assert_close(
                &values(&got),
                &values(&want),
                0.0,
                0.0,
                &format!("{path:?} residual"),
            );
        }
    }
    // Bad residual shape and bad norm length are errors, not aborts.
    let x = x_array(2, k, 3, 1.0);
    let w = &weights[0];
    let bad = x_array(2, w.n + 1, 3, 1.0);
    let e = kernels::gguf_matmul_add(&x, &w.blocks, w.ty, w.n, k, &bad)
        .expect_err("residual shape")
        .to_string();
    assert!(e.contains("residual"), "{e}");
    let short = Array::from_slice(&gamma[..k - 1], &[k as i32 - 1]).unwrap();
    let bad_norm = kernels::RmsNormRef {
        weight: &short,
        eps,
    };
    let e = kernels::gguf_matmul_multi(&x, Some(bad_norm), &refs, k)
        .expect_err("norm length")
        .to_string();
    assert!(e.contains("norm weight"), "{e}");
    // The next call still works.
    let ok = kernels::gguf_matmul_multi(&x, Some(norm), &refs, k).unwrap();
    assert_eq!(values(&ok[0]).len(), 2 * weights[0].n);
}
