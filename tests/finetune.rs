//! Fine-tuning (`mlx_engine::finetune`): the kernel's backward against the dequantized weight,
//! the float32 matmul and cross-entropy kernels (with their gradients) against f64 host values,
//! AdamW and the schedule against hand-computed values, the loss falling on a learnable task,
//! bit-exact resume, chat data masks, bad data lines, and adapters at inference (applied,
//! consistent with training, refused when foreign). The whole training step against numpy is
//! `tests/finetune_gradients.rs` (its own process: it forces the scalar kernel path).
//!
//! Tolerance of the kernel backward: |dx − dy·W| ≤ 1e-5·Σ|dy·W| + 1e-6 per element (float32
//! matmul order).

mod common;

use mlx_engine::engine::{Engine, LoadOptions};
use mlx_engine::finetune::checkpoint;
use mlx_engine::finetune::cli::{self, FinetuneArgs};
use mlx_engine::finetune::data::{self, Encoder};
use mlx_engine::finetune::optim::{AdamW, AdamWConfig, Schedule};
use mlx_engine::finetune::Rng;
use mlx_engine::kv_cache::KvDtype;
use mlx_engine::mlx::{kernels, ops, transforms, Array};
use mlx_engine::quant;
use std::path::{Path, PathBuf};

/// A synthetic Llama (hidden 256, 2 layers, vocabulary 512) with Q8_0 weights.
fn synthetic(name: &str, seed: &str) -> PathBuf {
    common::synthetic(
        name,
        &["--arch", "llama", "--quant", "Q8_0", "--seed", seed],
    )
}

/// A synthetic model of `arch` with Q8_0 weights.
fn synthetic_arch(name: &str, arch: &str) -> PathBuf {
    common::synthetic(name, &["--arch", arch, "--quant", "Q8_0", "--seed", "7"])
}

/// Loads over a float32 KV cache: the comparisons with the training pass check float32
/// arithmetic, which the default float16 cache would round (~1e-2 in the logits).
fn load(path: &Path) -> Engine {
    Engine::load(path, &f32_cache()).unwrap()
}

/// Default load options with a float32 KV cache.
fn f32_cache() -> LoadOptions {
    LoadOptions {
        kv_dtype: KvDtype::F32,
        ..LoadOptions::default()
    }
}

#[test]
fn kernel_backward_is_dy_times_the_dequantized_weight() {
    if common::skip_requested() {
        return;
    }
    for quant in ["Q8_0", "Q5_0", "Q4_0", "Q4_K", "Q6_K", "F16"] {
        let (ty, bytes, n, k) = common::synthetic_tensor(quant, "blk.0.ffn_down.weight");
        let row = bytes.len() / n;
        let mut w = vec![0f32; n * k];
        for (r, dst) in w.chunks_exact_mut(k).enumerate() {
            quant::dequantize_row(ty, &bytes[r * row..(r + 1) * row], dst).unwrap();
        }
        let (blocks, layout) = kernels::load_blocks(&bytes, ty, n, k).unwrap();
        let m = 3usize;
        let x =
            Array::from_slice(&common::activations(2 * m, k, 3), &[2, m as i32, k as i32]).unwrap();
        let c = common::activations(2 * m, n, 5);
        let cot = Array::from_slice(&c, &[2, m as i32, n as i32]).unwrap();
        let resid =
            Array::from_slice(&common::activations(2 * m, n, 9), &[2, m as i32, n as i32]).unwrap();
        // L = Σ c ⊙ (x·Wᵀ + r): dL/dx = c·W and dL/dr = c.
        let f = |args: &[Array]| -> mlx_engine::Result<Vec<Array>> {
            let y = kernels::gguf_matmul_add(&args[0], &blocks, layout, n, k, &args[1])?;
            let s = ops::sum(&ops::reshape(&ops::multiply(&y, &cot)?, &[-1])?, 0, false)?;
            Ok(vec![s])
        };
        let (_, grads) = transforms::value_and_grad_of(&f, &[&x, &resid], &[0, 1]).unwrap();
        let dx = grads[0].to_vec::<f32>().unwrap();
        assert_eq!(grads[0].shape(), vec![2, m as i32, k as i32]);
        for r in 0..2 * m {
            for j in 0..k {
                let (mut want, mut mag) = (0f64, 0f64);
                for i in 0..n {
                    let t = c[r * n + i] as f64 * w[i * k + j] as f64;
                    want += t;
                    mag += t.abs();
                }
                let got = dx[r * k + j] as f64;
                assert!(
                    (got - want).abs() <= 1e-5 * mag + 1e-6,
                    "{quant}: dx[{r}, {j}] = {got}, dy·W = {want}"
                );
            }
        }
        assert_eq!(grads[1].to_vec::<f32>().unwrap(), c, "{quant}: d residual");
        // The blocks are frozen: asking for their gradient is an error, not an abort.
        let g = |args: &[Array]| -> mlx_engine::Result<Vec<Array>> {
            let y = kernels::gguf_matmul(&x, &args[0], layout, n, k)?;
            Ok(vec![ops::sum(&ops::reshape(&y, &[-1])?, 0, false)?])
        };
        let err = transforms::value_and_grad_of(&g, &[&blocks], &[0])
            .and_then(|(_, gs)| transforms::eval(&gs.iter().collect::<Vec<_>>()));
        assert!(err.is_err(), "{quant}: a gradient of the weight blocks");
    }
}

/// Host f64 product of a [batch, m, k] and b [batch, k, n].
fn product(a: &[f32], b: &[f32], batch: usize, m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0f64; batch * m * n];
    for z in 0..batch {
        for i in 0..m {
            for t in 0..k {
                for j in 0..n {
                    c[(z * m + i) * n + j] +=
                        a[(z * m + i) * k + t] as f64 * b[(z * k + t) * n + j] as f64;
                }
            }
        }
    }
    c
}

#[test]
fn the_float32_matmul_and_cross_entropy_match_f64_with_their_gradients() {
    // Shapes that reach every column tail (16-, 8- and 1-wide) and row remainder, batched.
    for (batch, m, k, n) in [
        (3, 7, 5, 37),
        (2, 33, 64, 8),
        (1, 1, 300, 270),
        (2, 6, 9, 1),
    ] {
        let a = common::activations(batch * m, k, 1);
        let b = common::activations(batch * k, n, 2);
        let c = common::activations(batch * m, n, 3); // the cotangent
        let shape = |r: usize, c: usize| [batch as i32, r as i32, c as i32];
        let (aa, ba) = (
            Array::from_slice(&a, &shape(m, k)).unwrap(),
            Array::from_slice(&b, &shape(k, n)).unwrap(),
        );
        let ca = Array::from_slice(&c, &shape(m, n)).unwrap();
        let got = kernels::matmul_f32(&aa, &ba)
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        let want = product(&a, &b, batch, m, k, n);
        for (g, w) in got.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-5 * (1.0 + w.abs()), "{g} vs {w}");
        }
        // L = Σ C ⊙ (A·B): dA = C·Bᵀ, dB = Aᵀ·C.
        let f = |x: &[Array]| -> mlx_engine::Result<Vec<Array>> {
            let y = ops::multiply(&kernels::matmul_f32(&x[0], &x[1])?, &ca)?;
            Ok(vec![ops::sum(&ops::reshape(&y, &[-1])?, 0, false)?])
        };
        let (_, grads) = transforms::value_and_grad_of(&f, &[&aa, &ba], &[0, 1]).unwrap();
        let (da, db) = (
            grads[0].to_vec::<f32>().unwrap(),
            grads[1].to_vec::<f32>().unwrap(),
        );
        for z in 0..batch {
            for i in 0..m {
                for t in 0..k {
                    let w: f64 = (0..n)
                        .map(|j| c[(z * m + i) * n + j] as f64 * b[(z * k + t) * n + j] as f64)
                        .sum();
                    let g = da[(z * m + i) * k + t] as f64;
                    assert!((g - w).abs() < 1e-5 * (1.0 + w.abs()), "dA {g} vs {w}");
                }
            }
            for t in 0..k {
                for j in 0..n {
                    let w: f64 = (0..m)
                        .map(|i| a[(z * m + i) * k + t] as f64 * c[(z * m + i) * n + j] as f64)
                        .sum();
                    let g = db[(z * k + t) * n + j] as f64;
                    assert!((g - w).abs() < 1e-5 * (1.0 + w.abs()), "dB {g} vs {w}");
                }
            }
        }
    }

    // Cross-entropy of 19 rows over 300 logits (the SIMD body and its scalar tail), weighted.
    let (m, v) = (19usize, 300usize);
    let z: Vec<f32> = common::activations(m, v, 4)
        .iter()
        .map(|x| 3.0 * x)
        .collect();
    let t: Vec<u32> = (0..m as u32).map(|i| (i * 37) % v as u32).collect();
    let w: Vec<f32> = (0..m).map(|i| [1.0, 0.0, 0.5][i % 3]).collect();
    let g: Vec<f32> = (0..m).map(|i| 1.0 + i as f32 / 10.0).collect();
    let za = Array::from_slice(&z, &[m as i32, v as i32]).unwrap();
    let (ta, wa) = (
        Array::from_slice(&t, &[m as i32]).unwrap(),
        Array::from_slice(&w, &[m as i32]).unwrap(),
    );
    let ga = Array::from_slice(&g, &[m as i32]).unwrap();
    let loss = kernels::cross_entropy(&za, &ta, &wa)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let f = |x: &[Array]| -> mlx_engine::Result<Vec<Array>> {
        let l = ops::multiply(&kernels::cross_entropy(&x[0], &ta, &wa)?, &ga)?;
        Ok(vec![ops::sum(&l, 0, false)?])
    };
    let (_, grads) = transforms::value_and_grad_of(&f, &[&za], &[0]).unwrap();
    let dz = grads[0].to_vec::<f32>().unwrap();
    for r in 0..m {
        let row: Vec<f64> = z[r * v..(r + 1) * v].iter().map(|&x| x as f64).collect();
        let mx = row.iter().cloned().fold(f64::MIN, f64::max);
        let sum: f64 = row.iter().map(|x| (x - mx).exp()).sum();
        let lse = mx + sum.ln();
        let want = w[r] as f64 * (lse - row[t[r] as usize]);
        assert!(
            (loss[r] as f64 - want).abs() < 1e-5 * (1.0 + want.abs()),
            "row {r}"
        );
        for (j, x) in row.iter().enumerate() {
            let p = (x - lse).exp() - if j == t[r] as usize { 1.0 } else { 0.0 };
            let want = g[r] as f64 * w[r] as f64 * p;
            let got = dz[r * v + j] as f64;
            assert!((got - want).abs() < 1e-6, "dz[{r}, {j}] {got} vs {want}");
        }
    }
}

#[test]
fn adamw_and_the_schedule_match_hand_computed_values() {
    // One parameter [2] = (1, -2), gradients (0.5, -0.1) then (0.2, 0.3); lr 0.1, λ 0.01.
    let config = AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    let p = Array::from_slice(&[1.0f32, -2.0], &[2]).unwrap();
    let mut opt = AdamW::new(config, std::slice::from_ref(&p)).unwrap();
    let g1 = Array::from_slice(&[0.5f32, -0.1], &[2]).unwrap();
    let p1 = opt.update(&[p], &[g1], 0.1).unwrap();
    // Step 1: m̂ = g, v̂ = g², so the step is sign(g): p·(1 − 0.001) − 0.1·sign(g).
    let want1 = [1.0 * 0.999 - 0.1, -2.0 * 0.999 + 0.1];
    let got1 = p1[0].to_vec::<f32>().unwrap();
    for (a, b) in got1.iter().zip(want1) {
        assert!((*a as f64 - b).abs() < 1e-6, "{got1:?} vs {want1:?}");
    }
    let g2 = Array::from_slice(&[0.2f32, 0.3], &[2]).unwrap();
    let p2 = opt.update(&p1, &[g2], 0.1).unwrap();
    let hand = |p: f64, g1: f64, g2: f64| {
        let m = 0.9 * (0.1 * g1) + 0.1 * g2;
        let v = 0.999 * (0.001 * g1 * g1) + 0.001 * g2 * g2;
        let (mh, vh) = (m / (1.0 - 0.81), v / (1.0 - 0.998001));
        p * 0.999 - 0.1 * mh / (vh.sqrt() + 1e-8)
    };
    let want2 = [hand(want1[0], 0.5, 0.2), hand(want1[1], -0.1, 0.3)];
    let got2 = p2[0].to_vec::<f32>().unwrap();
    for (a, b) in got2.iter().zip(want2) {
        assert!((*a as f64 - b).abs() < 1e-5, "{got2:?} vs {want2:?}");
    }
    let s = Schedule {
        peak: 1.0,
        min: 0.1,
        warmup: 2,
        total: 6,
    };
    let lrs: Vec<f32> = (0..7).map(|t| s.at(t)).collect();
    // Warm-up 0.5, 1; then 0.1 + 0.45·(1 + cos(π·i/4)) for i = 0..4, then held at the end.
    let want = [
        0.5,
        1.0,
        1.0,
        0.1 + 0.45 * (1.0 + 0.5f32.sqrt()),
        0.55,
        0.1 + 0.45 * (1.0 - 0.5f32.sqrt()),
        0.1,
    ];
    for (a, b) in lrs.iter().zip(want) {
        assert!((a - b).abs() < 1e-6, "{lrs:?} vs {want:?}");
    }
    let g = [Array::from_slice(&[3.0f32, 4.0], &[2]).unwrap()];
    let (norm, clipped) = mlx_engine::finetune::optim::clip_global_norm(&g, 1.0).unwrap();
    assert!((norm - 5.0).abs() < 1e-6);
    assert_eq!(clipped[0].to_vec::<f32>().unwrap(), vec![0.6, 0.8]);
}

/// Counting sequences "a a+1 a+2 …" (mod 10) as text: learnable from the previous token.
fn counting_data(dir: &Path, name: &str, n: usize, seed: u64) -> PathBuf {
    let mut rng = Rng::new(seed);
    let lines: Vec<String> = (0..n)
        .map(|_| {
            let a = rng.next_u64() % 10;
            let text: Vec<String> = (0..20).map(|j| ((a + j) % 10).to_string()).collect();
            serde_json::json!({ "text": text.join(" ") }).to_string()
        })
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn args(model: &Path, data: &Path, out: &Path, steps: u64) -> FinetuneArgs {
    FinetuneArgs {
        model: model.to_str().unwrap().to_string(),
        data: data.to_path_buf(),
        valid: None,
        rank: 4,
        alpha: 8.0,
        targets: "q,v,o,down".into(),
        layers: "all".into(),
        lr: 1e-2,
        warmup: 2,
        steps: Some(steps),
        epochs: None,
        batch: 2,
        seq_len: 64,
        grad_accum: 2,
        max_grad_norm: 1.0,
        weight_decay: 0.01,
        seed: 3,
        valid_every: 0,
        save_every: 0,
        out: out.to_path_buf(),
        resume: None,
        threads: None,
    }
}

#[test]
fn the_loss_falls_and_a_seed_fixes_the_run() {
    if common::skip_requested() {
        return;
    }
    let model = synthetic("ft-llama-q8", "23");
    let dir = tempfile::tempdir().unwrap();
    let train = counting_data(dir.path(), "train.jsonl", 24, 1);
    let valid = counting_data(dir.path(), "valid.jsonl", 6, 2);
    let mut a = args(&model, &train, &dir.path().join("a"), 30);
    a.valid = Some(valid);
    let first = cli::run(&a).unwrap();
    let (v0, v1) = first.valid_loss.unwrap();
    // A 512-token vocabulary starts near ln 512 ≈ 6.2; the task's next token is determined.
    assert!(v1 < 0.5 * v0, "validation loss {v0} -> {v1}");
    let (t0, t1) = (first.history[0].loss, first.history.last().unwrap().loss);
    assert!(t1 < 0.5 * t0, "training loss {t0} -> {t1}");
    a.out = dir.path().join("b");
    let second = cli::run(&a).unwrap();
    let losses = |s: &cli::Summary| s.history.iter().map(|r| r.loss).collect::<Vec<_>>();
    assert_eq!(losses(&first), losses(&second));
    let bytes =
        |d: &str| std::fs::read(dir.path().join(d).join(checkpoint::ADAPTERS_FILE)).unwrap();
    assert_eq!(bytes("a"), bytes("b"), "same seed, same adapters");
}

#[test]
fn resume_continues_bit_exactly() {
    if common::skip_requested() {
        return;
    }
    let model = synthetic("ft-llama-q8", "23");
    let dir = tempfile::tempdir().unwrap();
    let train = counting_data(dir.path(), "train.jsonl", 10, 4);
    let mut straight = args(&model, &train, &dir.path().join("straight"), 8);
    straight.save_every = 4;
    cli::run(&straight).unwrap();
    let mut resumed = args(&model, &train, &dir.path().join("resumed"), 8);
    resumed.resume = Some(dir.path().join("straight/checkpoint-4"));
    let summary = cli::run(&resumed).unwrap();
    assert_eq!(summary.history.len(), 8, "history carried over");
    for file in [checkpoint::ADAPTERS_FILE, checkpoint::OPTIMIZER_FILE] {
        let read = |d: &str| std::fs::read(dir.path().join(d).join(file)).unwrap();
        assert_eq!(read("straight"), read("resumed"), "{file}");
    }
    // A resumed run with other options is refused, naming the option.
    let mut other = args(&model, &train, &dir.path().join("other"), 8);
    other.rank = 2;
    other.resume = Some(dir.path().join("straight/checkpoint-4"));
    let err = cli::run(&other).unwrap_err().to_string();
    assert!(err.contains("rank"), "{err}");
}

#[test]
fn adapters_apply_at_inference_and_foreign_ones_are_refused() {
    if common::skip_requested() {
        return;
    }
    let model = synthetic("ft-llama-q8", "23");
    let dir = tempfile::tempdir().unwrap();
    let train = counting_data(dir.path(), "train.jsonl", 8, 5);
    let mut a = args(&model, &train, &dir.path().join("ad"), 6);
    a.targets = "q,k,v,o,gate,up,down".into();
    cli::run(&a).unwrap();
    let adapter = dir.path().join("ad");

    // The cached inference path with the adapter (our fused attention kernel, the
    // projections with their low-rank paths) gives the logits of the training pass.
    let tokens: Vec<u32> = vec![1, 40, 41, 42, 43, 44, 45, 46, 47];
    let base = load(&model);
    let adapted = Engine::load(
        &model,
        &LoadOptions {
            adapter: Some(adapter.clone()),
            ..f32_cache()
        },
    )
    .unwrap();
    let with = adapted.logits_all(&tokens).unwrap();
    let without = base.logits_all(&tokens).unwrap();
    let trained = adapted.model.adapters().unwrap().clone();
    let train_logits = adapted
        .model
        .forward_train(&tokens, 1, &trained)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let diff = common::max_diff(&with, &train_logits);
    let moved = common::max_diff(&with, &without);
    assert!(moved > 1e-2, "the adapter changes the logits ({moved})");
    assert!(
        diff < 1e-3,
        "inference vs training logits with the adapter: {diff}"
    );
    assert_ne!(
        adapted.fingerprint(),
        base.fingerprint(),
        "snapshots tell them apart"
    );
    assert_eq!(adapted.base_fingerprint(), base.fingerprint());

    // Trained on another model of the same shapes: refused by fingerprint.
    let other = synthetic("ft-llama-q8-other", "24");
    let load_with = |m: &Path, d: &Path| {
        Engine::load(
            m,
            &LoadOptions {
                adapter: Some(d.to_path_buf()),
                ..LoadOptions::default()
            },
        )
        .map(|_| ())
        .unwrap_err()
        .to_string()
    };
    let err = load_with(&other, &adapter);
    assert!(err.contains("another model"), "{err}");
    // Without the fingerprint (a PEFT-style config), shapes decide: a narrower model refuses.
    let config_path = adapter.join(checkpoint::CONFIG_FILE);
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["mlx_engine"]
        .as_object_mut()
        .unwrap()
        .remove("base_fingerprint");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let wide = common::synthetic(
        "ft-wide",
        &[
            "--arch", "llama", "--quant", "Q8_0", "--hidden", "128", "--ffn", "128",
        ],
    );
    let err = load_with(&wide, &adapter);
    assert!(
        err.contains("lora_A.weight") && err.contains("needs F32"),
        "{err}"
    );
    let err = load_with(&model, &dir.path().join("missing"));
    assert!(err.contains("adapter_config.json"), "{err}");
    // Corrupt files name the file and the problem.
    let config_text = std::fs::read_to_string(&config_path).unwrap();
    for (bad, want) in [
        (
            config_text.replace("\"r\":4", "\"r\":0"),
            "\"r\" must be an integer",
        ),
        ("{".to_string(), "adapter_config.json"),
    ] {
        std::fs::write(&config_path, &bad).unwrap();
        let err = load_with(&model, &adapter);
        assert!(err.contains(want), "{bad:?}: {err}");
    }
    std::fs::write(&config_path, &config_text).unwrap();
    let tensors = adapter.join(checkpoint::ADAPTERS_FILE);
    let bytes = std::fs::read(&tensors).unwrap();
    std::fs::write(&tensors, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_with(&model, &adapter);
    assert!(err.contains("adapters.safetensors"), "{err}");
}

#[test]
fn training_and_inference_agree_on_every_architecture() {
    if common::skip_requested() {
        return;
    }
    // The training pass (MLX attention with a window mask, Q/K norms on MLX ops, unfused
    // projections) against the cached inference path (our fused attention kernel) with the
    // same adapters on every projection; 9 positions cross Gemma's 4-key window.
    let models = [
        ("qwen2", synthetic_arch("ft-qwen2-q8", "qwen2")),
        ("qwen3", synthetic_arch("ft-qwen3-q8", "qwen3")),
        ("phi3", synthetic_arch("ft-phi3-q8", "phi3")),
        ("gemma3", common::synthetic_gemma3()),
    ];
    let dir = tempfile::tempdir().unwrap();
    let train = counting_data(dir.path(), "train.jsonl", 4, 6);
    let tokens: Vec<u32> = vec![1, 40, 41, 42, 43, 44, 45, 46, 47];
    for (arch, model) in models {
        let out = dir.path().join(arch);
        let mut a = args(&model, &train, &out, 3);
        a.targets = "q,k,v,o,gate,up,down".into();
        cli::run(&a).unwrap();
        let base = load(&model).logits_all(&tokens).unwrap();
        let adapted = Engine::load(
            &model,
            &LoadOptions {
                adapter: Some(out),
                ..f32_cache()
            },
        )
        .unwrap();
        let with = adapted.logits_all(&tokens).unwrap();
        let adapters = adapted.model.adapters().unwrap().clone();
        let trained = adapted.model.forward_train(&tokens, 1, &adapters).unwrap();
        let diff = common::max_diff(&with, &trained.to_vec::<f32>().unwrap());
        let moved = common::max_diff(&with, &base);
        assert!(
            moved > 1e-3,
            "{arch}: the adapter changes the logits ({moved})"
        );
        assert!(diff < 1e-3, "{arch}: inference vs training logits: {diff}");
    }
}

#[test]
fn bad_data_lines_are_named() {
    if common::skip_requested() {
        return;
    }
    let engine = load(&synthetic("ft-llama-q8", "23"));
    let tokenizer = engine.tokenizer().unwrap();
    let enc = Encoder {
        tokenizer: &tokenizer,
        template: None,
    };
    let dir = tempfile::tempdir().unwrap();
    for (body, want) in [
        ("{\"text\": \"1 2 3\"}\nnot json\n", "line 2: not JSON"),
        ("{\"text\": 5}\n", "line 1: \"text\" must be a string"),
        (
            "{\"prompt\": \"x\"}\n",
            "line 1: expected a \"text\" or a \"messages\" field",
        ),
        (
            "{\"messages\": []}\n",
            "line 1: \"messages\" needs a model with a chat template",
        ),
        ("\n\n", "no examples"),
    ] {
        let path = dir.path().join("d.jsonl");
        std::fs::write(&path, body).unwrap();
        let err = data::load_jsonl(&path, &enc, 64).unwrap_err().to_string();
        assert!(
            err.contains(want) && err.contains("d.jsonl"),
            "{body:?}: {err}"
        );
    }
}

#[test]
fn chat_examples_learn_only_the_assistant_turns() {
    if common::skip_requested() {
        return;
    }
    let model = common::synthetic(
        "ft-chat",
        &[
            "--arch",
            "llama",
            "--quant",
            "Q8_0",
            "--chat-template",
            "chatml",
            "--vocab",
            "512",
        ],
    );
    let engine = load(&model);
    let tokenizer = engine.tokenizer().unwrap();
    let src = engine.chat_template().unwrap().unwrap();
    let template = mlx_engine::chat_template::ChatTemplate::new(&src, "", "").unwrap();
    let enc = Encoder {
        tokenizer: &tokenizer,
        template: Some(&template),
    };
    let line = serde_json::json!({"messages": [
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": "cd"},
        {"role": "user", "content": "ef"},
        {"role": "assistant", "content": "gh"},
    ]});
    let ex = data::encode_line(&line, &enc).unwrap();
    let text = |want: bool| -> String {
        let ids: Vec<u32> = ex
            .tokens
            .iter()
            .zip(&ex.loss)
            .filter(|(_, &l)| l == want)
            .map(|(t, _)| *t)
            .collect();
        tokenizer.decode(&ids, false).unwrap()
    };
    let learned = text(true);
    assert!(
        learned.contains("cd") && learned.contains("gh"),
        "{learned:?}"
    );
    assert!(
        !learned.contains("ab") && !learned.contains("ef"),
        "{learned:?}"
    );
    let whole = template
        .render(
            &[
                mlx_engine::chat_template::ChatMessage::user("ab"),
                mlx_engine::chat_template::ChatMessage::assistant("cd"),
                mlx_engine::chat_template::ChatMessage::user("ef"),
                mlx_engine::chat_template::ChatMessage::assistant("gh"),
            ],
            false,
        )
        .unwrap();
    assert_eq!(tokenizer.decode(&ex.tokens, false).unwrap(), whole);
}
