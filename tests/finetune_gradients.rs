//! One LoRA training step on small synthetic models against an independent float64 numpy
//! implementation (`tests/reference/lora_step.py`: its own forward pass with the adapters, the
//! summed cross-entropy, and each gradient by central finite differences). The kernels run
//! their scalar path here (float32 products of the dequantized weights), so that the int8
//! rounding of activations on the SIMD paths does not blur the comparison; this file is its
//! own test process because that setting is global.
//!
//! Tolerances: loss within 1e-5 relative; every gradient element within 1e-3·max|g| + 1e-6 of
//! the finite difference, and the cosine of the two gradient vectors ≥ 0.99999.
//!
//! Each primitive's backward on its own (the quantized matmul for four block types, the
//! float32 matmul, the cross-entropy) is checked the same way against
//! `tests/reference/primitive_fd.py`: every element within 1e-4·max|g| + 1e-5.

mod common;

use mlx_engine::engine::{Engine, LoadOptions};
use mlx_engine::finetune::checkpoint::{self, LoraSpec};
use mlx_engine::finetune::data::{Batch, Example};
use mlx_engine::finetune::{loss_and_grad, Rng};
use mlx_engine::mlx::kernels::{self, KernelPath};
use mlx_engine::mlx::{ops, transforms, Array};
use mlx_engine::model::lora::Target;
use std::path::{Path, PathBuf};

fn tiny(name: &str, arch: &str, seed: &str) -> PathBuf {
    common::synthetic(
        name,
        &[
            "--arch",
            arch,
            "--quant",
            "Q8_0",
            "--hidden",
            "64",
            "--heads",
            "4",
            "--kv-heads",
            "2",
            "--ffn",
            "128",
            "--vocab",
            "320",
            "--seed",
            seed,
        ],
    )
}

/// Deterministic parameters for `spec`: A and B both non-zero, so every gradient is.
fn random_params(spec: &LoraSpec, engine: &Engine, seed: u64) -> Vec<Array> {
    let mut rng = Rng::new(seed);
    checkpoint::param_shapes(spec, engine.config())
        .iter()
        .map(|s| {
            let v: Vec<f32> = (0..s[0] * s[1]).map(|_| 0.2 * rng.symmetric()).collect();
            Array::from_slice(&v, s).unwrap()
        })
        .collect()
}

fn check_step_against_numpy(model: &Path, spec: LoraSpec) {
    let engine = Engine::load(model, &LoadOptions::default()).unwrap();
    let params = random_params(&spec, &engine, 11);
    let examples = [
        Example {
            tokens: vec![1, 17, 93, 5, 201, 44, 44, 7, 130, 9, 310, 3],
            loss: vec![true; 12],
        },
        Example {
            tokens: vec![1, 60, 61, 62, 63, 64, 65, 66],
            loss: vec![false, false, false, true, true, true, false, true],
        },
    ];
    let batch = Batch::new(&examples.iter().collect::<Vec<_>>());
    let (loss, grads) = loss_and_grad(&engine.model, &spec, &params, &batch).unwrap();

    let rows = |v: &[u32]| -> Vec<Vec<u32>> { v.chunks(batch.l).map(<[u32]>::to_vec).collect() };
    let request = serde_json::json!({
        "tokens": rows(&batch.inputs),
        "targets": rows(&batch.targets),
        "weights": batch.weights.chunks(batch.l).collect::<Vec<_>>(),
        "scale": spec.scale(),
        "slots": spec.slots().iter().map(|(i, t)| serde_json::json!([i, t.name()])).collect::<Vec<_>>(),
        "shapes": checkpoint::param_shapes(&spec, engine.config()),
        "params": params.iter().map(|p| p.to_vec::<f32>().unwrap()).collect::<Vec<_>>(),
    });
    let dir = tempfile::tempdir().unwrap();
    let (req, out) = (dir.path().join("req.json"), dir.path().join("out.json"));
    std::fs::write(&req, request.to_string()).unwrap();
    let script = common::repo_root().join("tests/reference/lora_step.py");
    common::run_python(
        &script,
        &[
            model.to_str().unwrap(),
            req.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let want_loss = reference["loss"].as_f64().unwrap();
    assert!(
        ((loss as f64) - want_loss).abs() <= 1e-5 * want_loss.abs(),
        "loss {loss} vs numpy {want_loss}"
    );
    let (mut dot, mut n1, mut n2) = (0f64, 0f64, 0f64);
    let want: Vec<Vec<f64>> = reference["grads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            g.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        })
        .collect();
    let gmax = want.iter().flatten().fold(0f64, |m, v| m.max(v.abs()));
    assert!(gmax > 0.0);
    for (j, (g, w)) in grads.iter().zip(&want).enumerate() {
        let g = g.to_vec::<f32>().unwrap();
        assert_eq!(g.len(), w.len());
        for (i, (a, b)) in g.iter().zip(w).enumerate() {
            let a = *a as f64;
            assert!(
                (a - b).abs() <= 1e-3 * gmax + 1e-6,
                "parameter {j} element {i}: gradient {a} vs finite difference {b}"
            );
            dot += a * b;
            n1 += a * a;
            n2 += b * b;
        }
    }
    let cosine = dot / (n1.sqrt() * n2.sqrt());
    assert!(cosine >= 0.99999, "gradient cosine {cosine}");
}

#[test]
fn one_training_step_matches_numpy_finite_differences() {
    if common::skip_requested() {
        return;
    }
    kernels::force_path(Some(KernelPath::Scalar));
    let spec = |layers: Vec<usize>, targets: Vec<Target>| LoraSpec {
        rank: 2,
        alpha: 4.0,
        targets,
        layers,
    };
    // Every target on a Llama (adjacent RoPE pairs), the attention ones on a Qwen2 (biases,
    // half-split RoPE); Q8_0 weights, repacked at load.
    check_step_against_numpy(
        &tiny("ft-llama", "llama", "21"),
        spec(vec![0, 1], Target::ALL.to_vec()),
    );
    check_step_against_numpy(
        &tiny("ft-qwen2", "qwen2", "22"),
        spec(vec![1], vec![Target::Q, Target::K, Target::V, Target::O]),
    );
}

/// Runs primitive_fd.py on `request` and compares its gradients with `ours`.
fn check_against_fd(what: &str, request: serde_json::Value, ours: &[Vec<f32>]) {
    let dir = tempfile::tempdir().unwrap();
    let (req, out) = (dir.path().join("req.json"), dir.path().join("out.json"));
    std::fs::write(&req, request.to_string()).unwrap();
    let script = common::repo_root().join("tests/reference/primitive_fd.py");
    common::run_python(&script, &[req.to_str().unwrap(), out.to_str().unwrap()]);
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let want = reference["grads"].as_array().unwrap();
    assert_eq!(want.len(), ours.len(), "{what}");
    for (j, (w, g)) in want.iter().zip(ours).enumerate() {
        let w: Vec<f64> = w
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(w.len(), g.len(), "{what}");
        let max = w.iter().fold(0f64, |m, v| m.max(v.abs()));
        for (i, (a, b)) in g.iter().zip(&w).enumerate() {
            assert!(
                (*a as f64 - b).abs() <= 1e-4 * max + 1e-5,
                "{what}: gradient {j} element {i}: {a} vs finite difference {b}"
            );
        }
    }
}

/// Σ c ⊙ f(inputs) and its gradients with respect to every input, flat.
fn grads_of(
    f: &dyn Fn(&[Array]) -> mlx_engine::Result<Array>,
    c: &Array,
    inputs: &[&Array],
) -> Vec<Vec<f32>> {
    let g = |x: &[Array]| -> mlx_engine::Result<Vec<Array>> {
        let y = ops::multiply(&f(x)?, c)?;
        Ok(vec![ops::sum(&ops::reshape(&y, &[-1])?, 0, false)?])
    };
    let argnums: Vec<i32> = (0..inputs.len() as i32).collect();
    let (_, grads) = transforms::value_and_grad_of(&g, inputs, &argnums).unwrap();
    grads.iter().map(|g| g.to_vec::<f32>().unwrap()).collect()
}

#[test]
fn every_primitive_backward_matches_numpy_finite_differences() {
    if common::skip_requested() {
        return;
    }
    // The quantized matmul's backward, W as the gguf package decodes it.
    for quant in ["Q8_0", "Q5_0", "Q4_K", "Q6_K"] {
        let path = common::synthetic(
            &format!("llama-{quant}"),
            &["--arch", "llama", "--quant", quant, "--seed", "1"],
        );
        let name = "blk.0.attn_k.weight";
        let (ty, bytes, n, k) = common::synthetic_tensor(quant, name);
        let (blocks, layout) = kernels::load_blocks(&bytes, ty, n, k).unwrap();
        let m = 2usize;
        let x = common::activations(m, k, 8);
        let c = common::activations(m, n, 9);
        let xa = Array::from_slice(&x, &[m as i32, k as i32]).unwrap();
        let ca = Array::from_slice(&c, &[m as i32, n as i32]).unwrap();
        let f = |v: &[Array]| kernels::gguf_matmul(&v[0], &blocks, layout, n, k);
        let ours = grads_of(&f, &ca, &[&xa]);
        let request = serde_json::json!({
            "kind": "qmatmul", "gguf": path, "tensor": name, "x": x, "m": m, "c": c,
        });
        check_against_fd(&format!("qmatmul {quant}"), request, &ours);
    }
    // The float32 matmul, with column tails and a batch.
    let (batch, m, k, n) = (2usize, 5usize, 7usize, 19usize);
    let (a, b) = (
        common::activations(batch * m, k, 1),
        common::activations(batch * k, n, 2),
    );
    let c = common::activations(batch * m, n, 3);
    let shape = |r: usize, q: usize| [batch as i32, r as i32, q as i32];
    let (aa, ba) = (
        Array::from_slice(&a, &shape(m, k)).unwrap(),
        Array::from_slice(&b, &shape(k, n)).unwrap(),
    );
    let ca = Array::from_slice(&c, &shape(m, n)).unwrap();
    let f = |v: &[Array]| kernels::matmul_f32(&v[0], &v[1]);
    let ours = grads_of(&f, &ca, &[&aa, &ba]);
    let request = serde_json::json!({
        "kind": "matmul", "a": a, "b": b, "c": c, "batch": batch, "m": m, "k": k, "n": n,
    });
    check_against_fd("matmul_f32", request, &ours);
    // The cross-entropy, weighted, with a cotangent per row.
    let (m, v) = (5usize, 70usize);
    let z: Vec<f32> = common::activations(m, v, 4)
        .iter()
        .map(|x| 2.0 * x)
        .collect();
    let t: Vec<u32> = vec![3, 69, 0, 12, 40];
    let w: Vec<f32> = vec![1.0, 0.5, 0.0, 2.0, 1.0];
    let g: Vec<f32> = vec![1.0, 1.5, 1.0, 0.5, 2.0];
    let za = Array::from_slice(&z, &[m as i32, v as i32]).unwrap();
    let ta = Array::from_slice(&t, &[m as i32]).unwrap();
    let wa = Array::from_slice(&w, &[m as i32]).unwrap();
    let ga = Array::from_slice(&g, &[m as i32]).unwrap();
    let f = |x: &[Array]| kernels::cross_entropy(&x[0], &ta, &wa);
    let ours = grads_of(&f, &ga, &[&za]);
    let request = serde_json::json!({
        "kind": "cross_entropy", "z": z, "t": t, "w": w, "g": g, "m": m, "v": v,
    });
    check_against_fd("cross_entropy", request, &ours);
}
