//! Model metadata treated as hostile input: one synthetic GGUF per check in
//! `ModelConfig::from_gguf` (a single key changed or added by `make_synthetic.py --kv`), each of
//! which must fail at load time with an `Err` naming the file, the key and the problem; RoPE
//! variants and tensors the model does not implement are refused the same way; and the HF
//! `config.json` twin of each check. Positive controls show the same files load without the
//! change, so a refusal is caused by the key under test.

mod common;

use mlx_engine::engine::{Engine, LoadOptions};
use mlx_engine::model::ModelConfig;
use std::path::{Path, PathBuf};

/// A small llama (1 layer, width 64, 2 heads of 32, 1 KV head) with `extra` arguments to
/// make_synthetic.py, cached as target/synthetic/meta-NAME.gguf.
fn llama_with(name: &str, extra: &[&str]) -> PathBuf {
    model_with("llama", name, extra)
}

/// [`llama_with`] for another architecture (`--arch ARCH`).
fn model_with(arch: &str, name: &str, extra: &[&str]) -> PathBuf {
    let shape = "--layers 1 --hidden 64 --heads 2 --kv-heads 1 --ffn 128 --vocab 512 --ctx 256";
    let mut args = vec!["--arch", arch];
    args.extend(shape.split(' '));
    args.extend_from_slice(extra);
    common::synthetic(&format!("meta-{name}"), &args)
}

/// The load error of `path`, panicking if it loads.
fn load_error(path: &Path) -> String {
    match Engine::load(path, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded, but it should be refused", path.display()),
        Err(e) => e.to_string(),
    }
}

/// Asserts that the load error of `path` contains the file name and every one of `parts`.
fn assert_refused(path: &Path, parts: &[&str]) {
    let err = load_error(path);
    let file = path.file_name().unwrap().to_str().unwrap();
    assert!(err.contains(file), "the error should name {file}: {err}");
    for part in parts {
        assert!(err.contains(part), "the error should say {part:?}: {err}");
    }
}

#[test]
fn unchanged_and_neutral_metadata_loads() {
    if common::skip_requested() {
        return;
    }
    let cases: [(&str, &[&str]); 5] = [
        (
            "scaling-llama3-from-keys",
            &[
                "--kv",
                "llama.rope.scaling.type=str:llama3",
                "--kv",
                "llama.rope.scaling.factor=f32:8",
                "--kv",
                "llama.rope.scaling.low_freq_factor=f32:1",
                "--kv",
                "llama.rope.scaling.high_freq_factor=f32:4",
                "--kv",
                "llama.rope.scaling.original_context_length=u32:64",
            ],
        ),
        ("plain", &[]),
        (
            "scaling-none",
            &["--kv", "llama.rope.scaling.type=str:none"],
        ),
        ("factor-1", &["--kv", "llama.rope.scaling.factor=f32:1"]),
        (
            "rotary-full",
            &["--kv", "llama.rope.dimension_count=u32:32"],
        ),
    ];
    for (name, extra) in cases {
        let path = llama_with(name, extra);
        if let Err(e) = Engine::load(&path, &LoadOptions::default()) {
            panic!("{name}: {e}");
        }
    }
}

#[test]
fn sizes_outside_the_limits_are_refused_before_allocation() {
    if common::skip_requested() {
        return;
    }
    // 2^40 layers made `Vec::with_capacity` abort the process before these limits existed.
    let cases = [
        (
            "layers-2p40",
            "llama.block_count=u64:1099511627776",
            "llama.block_count",
        ),
        ("layers-0", "llama.block_count=u32:0", "llama.block_count"),
        (
            "layers-513",
            "llama.block_count=u32:513",
            "llama.block_count",
        ),
        (
            "heads-0",
            "llama.attention.head_count=u32:0",
            "llama.attention.head_count",
        ),
        (
            "kv-heads-0",
            "llama.attention.head_count_kv=u32:0",
            "llama.attention.head_count_kv",
        ),
        (
            "kv-heads-2p33",
            "llama.attention.head_count_kv=u64:8589934592",
            "head_count_kv",
        ),
        (
            "width-2p40",
            "llama.embedding_length=u64:1099511627776",
            "llama.embedding_length",
        ),
        (
            "ffn-2p40",
            "llama.feed_forward_length=u64:1099511627776",
            "feed_forward_length",
        ),
        (
            "ffn-0",
            "llama.feed_forward_length=u32:0",
            "llama.feed_forward_length",
        ),
        (
            "ctx-2p40",
            "llama.context_length=u64:1099511627776",
            "llama.context_length",
        ),
        (
            "ctx-0",
            "llama.context_length=u32:0",
            "llama.context_length",
        ),
        (
            "key-length-4096",
            "llama.attention.key_length=u32:4096",
            "attention.key_length",
        ),
    ];
    for (name, kv, key) in cases {
        assert_refused(&llama_with(name, &["--kv", kv]), &[key, "outside 1..="]);
    }
}

#[test]
fn inconsistent_head_metadata_is_refused() {
    if common::skip_requested() {
        return;
    }
    let kv3 = llama_with(
        "kv-heads-3",
        &["--kv", "llama.attention.head_count_kv=u32:3"],
    );
    assert_refused(&kv3, &["llama.attention.head_count", "not a multiple of"]);
    let odd = llama_with(
        "key-length-33",
        &["--kv", "llama.attention.key_length=u32:33"],
    );
    assert_refused(&odd, &["llama.attention.key_length", "odd"]);
    let heads3 = llama_with("heads-3", &["--kv", "llama.attention.head_count=u32:3"]);
    assert_refused(&heads3, &["llama.embedding_length", "not a multiple of"]);
}

#[test]
fn non_finite_or_non_positive_constants_are_refused() {
    if common::skip_requested() {
        return;
    }
    let cases = [
        (
            "rope-base-neg",
            "llama.rope.freq_base=f32:-1",
            "llama.rope.freq_base",
        ),
        (
            "rope-base-inf",
            "llama.rope.freq_base=f32:inf",
            "llama.rope.freq_base",
        ),
        (
            "rope-base-huge",
            "llama.rope.freq_base=f64:1e300",
            "llama.rope.freq_base",
        ),
        (
            "eps-nan",
            "llama.attention.layer_norm_rms_epsilon=f32:nan",
            "rms_epsilon",
        ),
        (
            "eps-0",
            "llama.attention.layer_norm_rms_epsilon=f32:0",
            "rms_epsilon",
        ),
    ];
    for (name, kv, key) in cases {
        assert_refused(&llama_with(name, &["--kv", kv]), &[key, "finite positive"]);
    }
}

#[test]
fn wrongly_typed_metadata_is_refused() {
    if common::skip_requested() {
        return;
    }
    let layers = llama_with("layers-str", &["--kv", "llama.block_count=str:two"]);
    assert_refused(&layers, &["llama.block_count"]);
    let eps = llama_with(
        "eps-str",
        &["--kv", "llama.attention.layer_norm_rms_epsilon=str:x"],
    );
    assert_refused(&eps, &["layer_norm_rms_epsilon"]);
}

#[test]
fn implemented_rope_scalings_load() {
    if common::skip_requested() {
        return;
    }
    let cases: [(&str, &[&str]); 4] = [
        ("factor-4", &["--kv", "llama.rope.scaling.factor=f32:4"]),
        ("scale-linear-2", &["--kv", "llama.rope.scale_linear=f32:2"]),
        ("rope-freqs", &["--extra-tensor", "rope_freqs.weight:16"]),
        (
            "scaling-llama3-with-factors",
            &[
                "--kv",
                "llama.rope.scaling.type=str:llama3",
                "--extra-tensor",
                "rope_freqs.weight:16",
            ],
        ),
    ];
    for (name, extra) in cases {
        let path = llama_with(name, extra);
        if let Err(e) = Engine::load(&path, &LoadOptions::default()) {
            panic!("{name}: {e}");
        }
    }
}

#[test]
fn unimplemented_rope_variants_are_refused_for_every_architecture() {
    if common::skip_requested() {
        return;
    }
    let llama3 = llama_with(
        "scaling-llama3",
        &["--kv", "llama.rope.scaling.type=str:llama3"],
    );
    assert_refused(
        &llama3,
        &[
            "llama.rope.scaling.type",
            "llama3",
            "rope_freqs.weight",
            "not implemented",
        ],
    );
    let llama3_partial = llama_with(
        "scaling-llama3-no-low",
        &[
            "--kv",
            "llama.rope.scaling.type=str:llama3",
            "--kv",
            "llama.rope.scaling.factor=f32:8",
            "--kv",
            "llama.rope.scaling.high_freq_factor=f32:4",
            "--kv",
            "llama.rope.scaling.original_context_length=u32:64",
        ],
    );
    assert_refused(
        &llama3_partial,
        &[
            "llama.rope.scaling.low_freq_factor",
            "llama3",
            "not implemented",
        ],
    );
    let longrope = llama_with(
        "scaling-longrope",
        &[
            "--kv",
            "llama.rope.scaling.type=str:longrope",
            "--kv",
            "llama.rope.scaling.factor=f32:4",
        ],
    );
    assert_refused(
        &longrope,
        &["llama.rope.scaling.type", "longrope", "not implemented"],
    );
    let bad_factor = llama_with("factor-neg", &["--kv", "llama.rope.scaling.factor=f32:-2"]);
    assert_refused(
        &bad_factor,
        &["llama.rope.scaling.factor", "finite positive"],
    );
    let short = llama_with(
        "rope-freqs-short",
        &["--extra-tensor", "rope_freqs.weight:15"],
    );
    assert_refused(&short, &["rope_freqs.weight", "shape"]);
    let partial = llama_with(
        "rotary-half",
        &["--kv", "llama.rope.dimension_count=u32:16"],
    );
    assert_refused(&partial, &["llama.rope.dimension_count", "not implemented"]);
    let value = llama_with(
        "value-length",
        &["--kv", "llama.attention.value_length=u32:16"],
    );
    assert_refused(&value, &["llama.attention.value_length", "not implemented"]);

    let qwen_freqs = model_with(
        "qwen2",
        "qwen2-rope-freqs",
        &["--extra-tensor", "rope_freqs.weight:16"],
    );
    assert_refused(
        &qwen_freqs,
        &["rope_freqs.weight", "qwen2", "not implemented"],
    );
    let yarn_beta = model_with(
        "qwen2",
        "qwen2-yarn-beta",
        &[
            "--yarn",
            "4:64",
            "--kv",
            "qwen2.rope.scaling.yarn_beta_fast=f32:16",
        ],
    );
    assert_refused(
        &yarn_beta,
        &["qwen2.rope.scaling.yarn_beta_fast", "not implemented"],
    );
    let longrope = model_with(
        "phi3",
        "phi3-longrope",
        &["--extra-tensor", "rope_factors_long.weight:16"],
    );
    assert_refused(
        &longrope,
        &["rope_factors_long.weight", "LongRoPE", "not implemented"],
    );
    let gemma_yarn = synthetic_gemma_yarn();
    assert_refused(
        &gemma_yarn,
        &["gemma3.rope.scaling.type", "yarn", "not implemented"],
    );
}

/// A small Gemma 3 with YaRN keys (implemented for the other architectures only).
fn synthetic_gemma_yarn() -> PathBuf {
    model_with("gemma3", "gemma3-yarn", &["--yarn", "4:64"])
}

#[test]
fn tensors_the_model_does_not_use_are_refused() {
    if common::skip_requested() {
        return;
    }
    let path = llama_with(
        "extra-tensor",
        &["--extra-tensor", "blk.0.mystery.weight:64"],
    );
    assert_refused(&path, &["'blk.0.mystery.weight'", "does not use"]);
}

/// A valid HF llama `config.json` with `key` set to `value` (or removed when null).
fn hf_config(key: &str, value: serde_json::Value) -> serde_json::Value {
    let mut json = serde_json::json!({
        "model_type": "llama", "hidden_size": 64, "num_attention_heads": 2,
        "num_key_value_heads": 1, "num_hidden_layers": 1, "intermediate_size": 128,
        "vocab_size": 512, "max_position_embeddings": 256, "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
    });
    match value {
        serde_json::Value::Null => json.as_object_mut().unwrap().remove(key),
        v => json.as_object_mut().unwrap().insert(key.to_string(), v),
    };
    json
}

fn hf_error(key: &str, value: serde_json::Value) -> String {
    let path = Path::new("/models/x/config.json");
    match ModelConfig::from_hf_json(path, &hf_config(key, value.clone())) {
        Ok(c) => panic!("config.json with {key} = {value} was accepted: {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn hf_config_json_gets_the_same_checks() {
    use serde_json::json;
    let path = Path::new("/models/x/config.json");
    for (key, value) in [
        ("rope_scaling", json!(null)),
        ("rope_scaling", json!({"rope_type": "default"})),
        (
            "rope_scaling",
            json!({"rope_type": "llama3", "factor": 8.0}),
        ),
        ("rope_scaling", json!({"type": "linear", "factor": 2.0})),
        (
            "rope_scaling",
            json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}),
        ),
        ("partial_rotary_factor", json!(1.0)),
    ] {
        let config = hf_config(key, value.clone());
        if let Err(e) = ModelConfig::from_hf_json(path, &config) {
            panic!("{key} = {value}: {e}");
        }
    }
    let cases = [
        ("num_hidden_layers", json!(1u64 << 40), "outside 1..="),
        ("num_attention_heads", json!(0), "outside 1..="),
        ("num_key_value_heads", json!(3), "not a multiple of"),
        ("num_key_value_heads", json!("one"), "not an integer"),
        ("vocab_size", json!(1u64 << 30), "outside 1..="),
        ("intermediate_size", json!(1u64 << 40), "outside 1..="),
        ("max_position_embeddings", json!(0), "outside 1..="),
        ("head_dim", json!(31), "odd"),
        ("rms_norm_eps", json!(-1.0), "finite positive"),
        ("rope_theta", json!(0.0), "finite positive"),
        ("rope_theta", json!("big"), "not a number"),
        (
            "rope_scaling",
            json!({"rope_type": "longrope", "factor": 8.0}),
            "not implemented",
        ),
        (
            "rope_scaling",
            json!({"rope_type": "yarn", "factor": 4.0, "mscale": 0.7}),
            "not implemented",
        ),
        (
            "rope_scaling",
            json!({"type": "linear", "factor": -2.0}),
            "positive",
        ),
        ("rope_scaling", json!({"type": "linear"}), "missing"),
        ("partial_rotary_factor", json!(0.5), "not implemented"),
    ];
    for (key, value, problem) in cases {
        let err = hf_error(key, value.clone());
        assert!(
            err.contains("config.json") && err.contains(key) && err.contains(problem),
            "{key} = {value}: the error should name config.json, {key} and {problem:?}: {err}"
        );
    }
}

/// The last row: a file whose chat template nests three 9,999-step loops made `--chat`
/// hang. The CLI must now fail in bounded time with the fuel limit named, not hang.
#[test]
fn a_hostile_chat_template_in_the_file_fails_chat_in_bounded_time() {
    if common::skip_requested() {
        return;
    }
    let template = "{% for i in range(9999) %}{% for j in range(9999) %}\
                    {% for k in range(9999) %}x{% endfor %}{% endfor %}{% endfor %}";
    let path = llama_with(
        "template-nested-loops",
        &["--kv", &format!("tokenizer.chat_template=str:{template}")],
    );
    let started = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mlx-engine"))
        .arg("--model")
        .arg(&path)
        .args(["--chat", "--prompt", "hi", "-n", "1"])
        .output()
        .expect("run mlx-engine");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "--chat succeeded: {stderr}");
    assert!(
        stderr.contains("fuel") || stderr.contains("limit"),
        "{stderr}"
    );
    assert!(took < std::time::Duration::from_secs(30), "took {took:?}");
}
