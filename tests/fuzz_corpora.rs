//! The committed fuzz corpora (`fuzz/corpus/<target>/*`: seeds and every past finding) run
//! through the harness bodies in `mlx_engine::fuzz_targets` on stable, as libFuzzer runs them:
//! no input may panic or take longer than the fuzzing timeout. The valid seeds must be accepted,
//! so that a harness which rejects everything early (and would fuzz nothing) fails here.

use mlx_engine::fuzz_targets;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// libFuzzer's `-timeout` in `fuzz/run.sh`: one input must finish within it.
const FUZZ_TIMEOUT: Duration = Duration::from_secs(10);

type Harness = fn(&[u8]) -> mlx_engine::Result<()>;

/// Runs every file of `fuzz/corpus/TARGET` through `harness`; returns (file name, outcome).
fn run_corpus(target: &str, harness: Harness) -> Vec<(String, mlx_engine::Result<()>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} has no corpus", dir.display());
    files
        .iter()
        .map(|path| {
            let data = std::fs::read(path).unwrap();
            let started = Instant::now();
            let outcome = harness(&data);
            let took = started.elapsed();
            assert!(took < FUZZ_TIMEOUT, "{}: took {took:?}", path.display());
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, outcome)
        })
        .collect()
}

/// Asserts that each file in `accepted` is in the corpus and was accepted.
fn assert_accepted(outcomes: &[(String, mlx_engine::Result<()>)], accepted: &[&str]) {
    for name in accepted {
        match outcomes.iter().find(|(n, _)| n == name) {
            Some((_, Ok(()))) => {}
            Some((_, Err(e))) => panic!("seed {name} was rejected: {e}"),
            None => panic!("seed {name} is missing from the corpus"),
        }
    }
}

#[test]
fn gguf_corpus() {
    let outcomes = run_corpus("gguf", fuzz_targets::gguf);
    assert_accepted(
        &outcomes,
        &["llama-q4_0.gguf", "qwen2-q4_0.gguf", "gemma3-q4_0.gguf"],
    );
}

#[test]
fn safetensors_corpus() {
    let outcomes = run_corpus("safetensors", fuzz_targets::safetensors);
    let seeds = [
        "one-f32.safetensors",
        "mixed.safetensors",
        "scalar-and-empty.safetensors",
    ];
    assert_accepted(&outcomes, &seeds);
}

#[test]
fn kv_snapshot_corpus() {
    let outcomes = run_corpus("kv_snapshot", fuzz_targets::kv_snapshot);
    assert_accepted(&outcomes, &["len3", "len0", "len3-f16"]);
    let other = outcomes.iter().find(|(n, _)| n == "other-shape").unwrap();
    let err = other.1.as_ref().unwrap_err().to_string();
    assert!(err.contains("cache shape"), "{err}");
}

#[test]
fn tokenizer_json_corpus() {
    let outcomes = run_corpus("tokenizer_json", fuzz_targets::tokenizer_json);
    let seeds = ["byte-level-bpe.json", "word-level.json", "unigram.json"];
    assert_accepted(&outcomes, &seeds);
    // Both made tokenizers 0.22 panic: a truncated decoder and a bad Precompiled charsmap.
    for (finding, says) in [
        ("regression-truncated-decoder.json", "EOF while parsing"),
        ("regression-precompiled-panic.json", "cannot read this file"),
    ] {
        let outcome = outcomes.iter().find(|(n, _)| n == finding).unwrap();
        let err = outcome.1.as_ref().unwrap_err().to_string();
        assert!(
            err.contains("tokenizer.json") && err.contains(says),
            "{err}"
        );
    }
}

#[test]
fn chat_template_corpus() {
    let outcomes = run_corpus("chat_template", fuzz_targets::chat_template);
    let seeds = ["chatml.bin", "zephyr.bin", "qwen2.5.bin", "hostile-3.bin"];
    assert_accepted(&outcomes, &seeds);
    let recursion = outcomes.iter().find(|(n, _)| n == "hostile-1.bin").unwrap();
    assert!(recursion.1.is_err(), "unbounded recursion must be refused");
}

#[test]
fn request_body_corpus() {
    let outcomes = run_corpus("request_body", fuzz_targets::request_body);
    let seeds = [
        "chat.json",
        "chat-parts.json",
        "completion-text.json",
        "completion-ids.json",
        "chat-json-schema.json",
        "chat-json-object.json",
        "chat-tools.json",
    ];
    assert_accepted(&outcomes, &seeds);
    for refused in ["refused.json", "not-an-object.json"] {
        let outcome = outcomes.iter().find(|(n, _)| n == refused).unwrap();
        assert!(outcome.1.is_err(), "{refused} must be refused");
    }
}

#[test]
fn grammar_corpus() {
    let outcomes = run_corpus("grammar", fuzz_targets::grammar);
    let seeds = [
        "schema-object.bin",
        "schema-true.bin",
        "regex-digits.bin",
        "lark-arith.bin",
        "lark-json.bin",
    ];
    assert_accepted(&outcomes, &seeds);
    for refused in ["schema-bad-type.bin", "regex-bad.bin", "lark-bad.bin"] {
        let outcome = outcomes.iter().find(|(n, _)| n == refused).unwrap();
        assert!(outcome.1.is_err(), "{refused} must be refused");
    }
}
