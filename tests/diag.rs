//! The per-layer dump (`MLX_ENGINE_DUMP`) against the numpy float32 reference's dump
//! (`tests/reference/forward.py --dump`), compared tensor by tensor by
//! `tests/reference/diff_dump.py`.
//!
//! Tolerances (max |Δ| per tensor):
//! - `DENSE_TOL` = 1e-4 on the dense path: the same float32 arithmetic as the reference in
//!   another summation order. Measured: ≤ 4e-6 on the 2-layer Qwen2, ≤ 2e-5 on the 6-layer
//!   Gemma 3 (its residual stream, `l_out`, grows to ~10, where float32's ulp is ~1e-6, and
//!   the error accumulates layer by layer); the logits agree to ≤ 3e-6.
//! - `KERNEL_TOL` = 0.25 on the kernel path, which rounds activations to int8 per block of 32
//!   before every product (synthetic logits within 0.09 of the reference, model_fidelity.rs).
//!   Measured: ≤ 0.05 (`result_norm`) on the Qwen2.
//!
//! The environment variable is read once per process, at the first forward call, so every
//! test here that runs a forward pass sets the same directory first ([`dump_dir`]).

mod common;

use mlx_engine::engine::{Engine, LoadOptions};
use mlx_engine::model::dump::DUMP_VAR;
use mlx_engine::model::Execution;
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const DENSE_TOL: &str = "1e-4";
const KERNEL_TOL: &str = "0.25";

/// The tokens of model_fidelity.rs's synthetic checks.
const TOKENS: [u32; 12] = [1, 300, 17, 42, 511, 260, 3, 99, 100, 7, 480, 2];

/// The engine's dump directory for this test process (emptied, then set as the switch before
/// any forward call).
fn dump_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = common::repo_root().join("target/diag-dump");
        let _ = std::fs::remove_dir_all(&dir);
        std::env::set_var(DUMP_VAR, &dir);
        std::env::set_var("MLX_ENGINE_DUMP_CALLS", "1000");
        dir
    })
}

/// Where the reference dumps and perturbed copies go: `name` in a directory beside the
/// engine's, which must only ever see the engine's own files.
fn scratch(name: &str) -> PathBuf {
    let dir = dump_dir().with_extension("scratch");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn synthetic_qwen2() -> PathBuf {
    common::synthetic(
        "qwen2-mix",
        &["--arch", "qwen2", "--quant", "mix", "--seed", "2"],
    )
}

/// The dump files in `dir`.
fn dumps(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// What one engine forward call gave: its logits, its dump file and the model's layer count.
struct EngineRun {
    logits: Vec<f32>,
    dump: PathBuf,
    layers: usize,
}

/// Runs `tokens` teacher-forced through `model` and returns what the one forward call wrote.
/// Calls are serialised so each sees only its own new file.
fn engine_dump(model: &Path, execution: Execution, tokens: &[u32]) -> EngineRun {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = dump_dir();
    // A float32 cache: the layer-by-layer comparison is of the float32 arithmetic.
    let options = LoadOptions {
        execution: Some(execution),
        kv_dtype: mlx_engine::kv_cache::KvDtype::F32,
        ..LoadOptions::default()
    };
    let engine = Engine::load(model, &options).unwrap();
    let before = dumps(dir);
    let logits = engine.logits_all(tokens).unwrap();
    let new: Vec<PathBuf> = dumps(dir)
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    assert_eq!(new.len(), 1, "one forward call, one dump file: {new:?}");
    EngineRun {
        logits,
        dump: new[0].clone(),
        layers: engine.config().n_layers,
    }
}

/// forward.py's dump of `tokens` through `model`.
fn reference_dump(model: &Path, tokens: &[u32], out: &Path) {
    let ids: Vec<String> = tokens.iter().map(u32::to_string).collect();
    let script = common::repo_root().join("tests/reference/forward.py");
    common::run_python(
        &script,
        &[
            model.to_str().unwrap(),
            "--tokens",
            &ids.join(","),
            "--dump",
            out.to_str().unwrap(),
        ],
    );
}

/// Runs diff_dump.py on `a` and `b` with `tol` and returns its exit code and JSON summary.
fn diff(a: &Path, b: &Path, tol: &str) -> (i32, Value) {
    let script = common::repo_root().join("tests/reference/diff_dump.py");
    let out = common::python()
        .arg(script)
        .args([a.as_os_str(), b.as_os_str()])
        .args(["--tol", tol])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let summary: Value = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "diff_dump.py printed no summary ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    println!("{stdout}");
    (out.status.code().unwrap_or(-1), summary)
}

/// The last component of `path`.
fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// The names in a JSON list.
fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// The names a pass must dump: per layer `per_layer`, then the two global tensors.
fn expected(layers: usize, per_layer: &[&str]) -> Vec<String> {
    let mut all = vec!["inp_embd".to_string()];
    for il in 0..layers {
        all.extend(per_layer.iter().map(|n| format!("{n}-{il}")));
    }
    all.extend(["result_norm".to_string(), "result_output".to_string()]);
    all
}

/// The float32 values of member `name` of an .npz written by the engine (read with the zip
/// crate and the .npy v1.0 header length, independently of the writer).
fn npz_member(path: &Path, name: &str) -> Vec<f32> {
    let mut zip = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut bytes = Vec::new();
    zip.by_name(&format!("{name}.npy"))
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let data = 10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    bytes[data..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The dense path's dump of `model` agrees with the reference's within DENSE_TOL in every
/// tensor of `per_layer` (+ the globals), and a perturbed copy is caught at the right tensor.
fn check_dense(model: &Path, per_layer: &[&str], extra_globals: &[&str]) {
    let run = engine_dump(model, Execution::CpuDense, &TOKENS);
    let ours = &run.dump;
    let theirs = scratch(&format!("{}.reference.npz", file_name(ours)));
    reference_dump(model, &TOKENS, &theirs);

    let (code, summary) = diff(ours, &theirs, DENSE_TOL);
    assert_eq!(code, 0, "first mismatch: {}", summary["first_mismatch"]);
    assert!(run.layers >= 2);
    let mut want = expected(run.layers, per_layer);
    want.splice(1..1, extra_globals.iter().map(|s| s.to_string()));
    assert_eq!(names(&summary["compared"]), want);
    assert!(names(&summary["only_in_a"]).is_empty());
    assert!(names(&summary["only_in_b"]).is_empty());

    // The dumped logits are the returned ones, bit for bit.
    assert_eq!(npz_member(ours, "result_output"), run.logits);

    // Perturb kqv_out-1 and a later tensor: the diff must name kqv_out-1.
    let bad = scratch(&format!("{}.perturbed.npz", file_name(ours)));
    let perturb = "import sys, numpy as np\n\
        d = dict(np.load(sys.argv[1]))\n\
        for k in ('kqv_out-1', 'result_norm'):\n    d[k] = d[k] + np.float32(1e-2)\n\
        np.savez(open(sys.argv[2], 'wb'), **d)";
    let status = common::python()
        .args(["-c", perturb])
        .args([ours.as_os_str(), bad.as_os_str()])
        .status()
        .unwrap();
    assert!(status.success());
    let (code, summary) = diff(&bad, &theirs, DENSE_TOL);
    assert_eq!(code, 1);
    assert_eq!(summary["first_mismatch"], "kqv_out-1");
}

#[test]
fn qwen2_dense_dump_agrees_with_the_reference_layer_by_layer() {
    if common::skip_requested() {
        return;
    }
    let per_layer = [
        "attn_norm",
        "Qcur",
        "Kcur",
        "Vcur",
        "kqv_out",
        "ffn_inp",
        "ffn_norm",
        "ffn_swiglu",
        "l_out",
    ];
    check_dense(&synthetic_qwen2(), &per_layer, &[]);
}

#[test]
fn gemma3_dense_dump_agrees_with_the_reference_layer_by_layer() {
    if common::skip_requested() {
        return;
    }
    let per_layer = [
        "attn_norm",
        "Qcur",
        "Kcur",
        "Vcur",
        "kqv_out",
        "attn_post_norm",
        "ffn_inp",
        "ffn_norm",
        "ffn_geglu",
        "ffn_post_norm",
        "l_out",
    ];
    check_dense(&common::synthetic_gemma3(), &per_layer, &["inp_scaled"]);
}

/// On the kernel path the norms run inside the fused projection ops: the dump has every other
/// tensor, within the int8 tolerance of the reference.
#[test]
fn kernel_dump_names_what_the_fused_path_materialises() {
    if common::skip_requested() {
        return;
    }
    let model = synthetic_qwen2();
    let ours = engine_dump(&model, Execution::CpuKernel, &TOKENS).dump;
    let theirs = scratch(&format!("{}.reference.npz", file_name(&ours)));
    reference_dump(&model, &TOKENS, &theirs);
    let (code, summary) = diff(&ours, &theirs, KERNEL_TOL);
    assert_eq!(code, 0, "first mismatch: {}", summary["first_mismatch"]);
    let only_reference = names(&summary["only_in_b"]);
    assert!(!only_reference.is_empty());
    assert!(
        only_reference
            .iter()
            .all(|n| n.starts_with("attn_norm-") || n.starts_with("ffn_norm-")),
        "{only_reference:?}"
    );
    assert!(names(&summary["compared"]).contains(&"kqv_out-0".to_string()));
}

/// The switch is read once: setting the variable to another directory later moves nothing
/// (`engine_dump` finds each new file in the first directory).
#[test]
fn the_dump_switch_is_read_once() {
    if common::skip_requested() {
        return;
    }
    let model = synthetic_qwen2();
    let first = engine_dump(&model, Execution::CpuDense, &TOKENS[..3]).dump;
    let elsewhere = dump_dir().with_extension("elsewhere");
    std::env::set_var(DUMP_VAR, &elsewhere);
    let second = engine_dump(&model, Execution::CpuDense, &TOKENS[..3]).dump;
    assert_eq!(first.parent(), second.parent());
    assert_eq!(mlx_engine::model::dump::dump_dir(), Some(dump_dir()));
    assert!(!elsewhere.exists());
}
