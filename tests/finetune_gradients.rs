//! One LoRA training step on small synthetic models against an independent float64 numpy
//! implementation (`tests/reference/lora_step.py`: its own forward pass with the adapters, the
//! summed cross-entropy, and each gradient by central finite differences). The kernels run
//! their scalar path here (float32 products of the dequantized weights), so that the int8
//! rounding of activations on the SIMD paths does not blur the comparison; this file is its
//! own test process because that setting is global.
//!
//! Tolerances: loss within 1e-5 relative; every gradient element within 1e-3·max|g| + 1e-6 of
//! the finite difference, and the cosine of the two gradient vectors ≥ 0.99999.

mod common;

use mlx_engine::engine::{Engine, LoadOptions};
use mlx_engine::finetune::checkpoint::{self, LoraSpec};
use mlx_engine::finetune::data::{Batch, Example};
use mlx_engine::finetune::{loss_and_grad, Rng};
use mlx_engine::mlx::kernels::{self, KernelPath};
use mlx_engine::mlx::Array;
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
