//! A Hugging Face checkpoint (config.json + safetensors, HF tensor names, rotate-half RoPE with
//! unpermuted Q/K) computes the same logits as the GGUF it was converted from: single file and
//! sharded, F32 and BF16 (BF16 rounds the weights, so its bound is looser).
//! Tolerances: 1e-4 for F32 (the same float32 arithmetic; only the RoPE pairing differs), 0.1
//! for BF16 (weights rounded to 8 significant bits, logits of a random model ~±2).

mod common;

use mlx_engine::engine::{Engine, LoadOptions};
use mlx_engine::kv_cache::KvDtype;
use mlx_engine::model::Execution;

fn convert(gguf: &std::path::Path, name: &str, args: &[&str]) -> std::path::PathBuf {
    let dir = common::repo_root().join("target/synthetic").join(name);
    if !dir.join("config.json").exists() {
        let script = common::repo_root().join("tests/reference/gguf_to_hf.py");
        let mut all = vec![gguf.to_str().unwrap(), dir.to_str().unwrap()];
        all.extend_from_slice(args);
        common::run_python(&script, &all);
    }
    dir
}

#[test]
fn hf_checkpoints_match_their_gguf() {
    if common::skip_requested() {
        return;
    }
    let tokens = [1u32, 300, 17, 42, 511, 260, 3, 99];
    // Float32 KV caches on both sides: the 1e-4 tolerance is float32 rounding.
    let f32_cache = LoadOptions {
        kv_dtype: KvDtype::F32,
        ..LoadOptions::default()
    };
    let dense = LoadOptions {
        execution: Some(Execution::CpuDense),
        ..f32_cache.clone()
    };
    for arch in ["llama", "qwen2"] {
        let gguf = common::synthetic(
            &format!("{arch}-F32"),
            &["--arch", arch, "--quant", "F32", "--seed", "1"],
        );
        let want = Engine::load(&gguf, &dense)
            .unwrap()
            .logits_all(&tokens)
            .unwrap();
        for (variant, args, tol) in [
            ("single", &["--dtype", "F32"][..], 1e-4f32),
            ("sharded", &["--dtype", "F32", "--shards", "3"][..], 1e-4),
            ("bf16", &["--dtype", "BF16"][..], 0.1),
        ] {
            let dir = convert(&gguf, &format!("hf-{arch}-{variant}"), args);
            let engine = Engine::load(&dir, &f32_cache).unwrap();
            assert!(
                !engine.config().rope_traditional,
                "HF checkpoints rotate halves"
            );
            let got = engine.logits_all(&tokens).unwrap();
            let d = common::max_diff(&got, &want);
            eprintln!("{arch} {variant}: max |Δlogit| {d:.2e}");
            assert!(d <= tol, "{arch} {variant}: max |Δlogit| {d} > {tol}");
        }
    }
}

#[test]
fn a_directory_without_config_is_a_clear_error() {
    let dir = std::env::temp_dir().join("mlx-engine-no-config");
    std::fs::create_dir_all(&dir).unwrap();
    let err = Engine::load(&dir, &LoadOptions::default())
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("config.json"), "{err}");
}
