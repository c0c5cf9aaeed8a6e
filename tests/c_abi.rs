//! The C ABI: `include/mlx_engine.h` agrees with `src/ffi.rs` (every prototype, struct field
//! and constant, parsed from both), C programs compiled against the header and linked against
//! the cdylib run, greedy generation from C gives the Rust API's tokens, and the text side
//! (`tests/c/text.c`) gives the real Qwen model's known token ids, pieces and template, and
//! constrained samplers (`tests/c/grammar.c`) follow their grammars and refuse bad ones.

mod common;

use common::c_decl::{rust_fields, rust_type_to_c, split_c_decl, split_header};
use mlx_engine::engine::{Engine, LoadOptions};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const PROMPT: [u32; 6] = [1, 17, 42, 99, 3, 250];
const N_NEW: usize = 12;
/// Arguments of `make_synthetic.py` for a 2-layer llama with grouped-query attention.
const SYNTHETIC_SHAPE: &str = "--arch llama --quant Q8_0 --layers 2 --hidden 256 --heads 4 \
    --kv-heads 2 --ffn 512 --vocab 512 --ctx 256";

/// A small random llama GGUF written by the reference script (`seed` picks the weights).
fn synthetic_model(dir: &Path, seed: u32) -> PathBuf {
    let path = dir.join(format!("synthetic-{seed}.gguf"));
    let script = common::repo_root().join("tests/reference/make_synthetic.py");
    let seed = seed.to_string();
    let mut args = vec![path.to_str().unwrap()];
    args.extend(SYNTHETIC_SHAPE.split(' '));
    args.extend(["--seed", &seed]);
    common::run_python(&script, &args);
    path
}

/// A LoRA adapter for `model`, trained for a few steps by the finetune command's code.
fn train_adapter(model: &Path, dir: &Path) -> PathBuf {
    let data = dir.join("train.jsonl");
    std::fs::write(&data, "{\"text\": \"1 2 3 4 5 6 7 8 9\"}\n").unwrap();
    let out = dir.join("adapter");
    let args = mlx_engine::finetune::cli::FinetuneArgs {
        model: model.to_str().unwrap().to_string(),
        data,
        valid: None,
        rank: 4,
        alpha: 8.0,
        targets: "q,k,v,o,gate,up,down".into(),
        layers: "all".into(),
        lr: 1e-2,
        warmup: 0,
        steps: Some(4),
        epochs: None,
        batch: 1,
        seq_len: 32,
        grad_accum: 1,
        max_grad_norm: 1.0,
        weight_decay: 0.0,
        seed: 0,
        valid_every: 0,
        save_every: 0,
        out: out.clone(),
        resume: None,
        threads: None,
    };
    mlx_engine::finetune::cli::run(&args).unwrap();
    out
}

/// target/{profile}/deps: where `cargo test` builds the cdylib (this test binary lives there
/// too; `cargo build` also copies the library up to target/{profile}, `cargo test` does not).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().to_path_buf()
}

/// The directory holding this build's libmlx (also in the cdylib's RUNPATH; repeated for
/// clarity): only this build's flavor, since `external/deps/` may also hold another one (the
/// CUDA wheel of a `--features cuda` build), whose libmlx.so must not be linked here.
fn mlx_lib_dirs() -> Vec<PathBuf> {
    let flavor = if cfg!(target_os = "macos") {
        "macos"
    } else if cfg!(feature = "cuda") {
        "cuda12"
    } else {
        "cpu"
    };
    let dir = common::repo_root()
        .join("external/deps")
        .join(flavor)
        .join("mlx/lib");
    vec![dir].into_iter().filter(|d| d.is_dir()).collect()
}

/// Compiles `tests/c/{name}.c` against the header and the cdylib; returns the executable.
fn compile_c(name: &str, out_dir: &Path) -> PathBuf {
    let lib_dir = profile_dir();
    let so = lib_dir.join(if cfg!(target_os = "macos") {
        "libmlx_engine.dylib"
    } else {
        "libmlx_engine.so"
    });
    assert!(
        so.exists(),
        "{} is missing: the [lib] crate-type must include cdylib",
        so.display()
    );
    let exe = out_dir.join(name);
    let mut cc = Command::new("cc");
    cc.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1"])
        .arg("-I")
        .arg(common::repo_root().join("include"))
        .arg(common::repo_root().join(format!("tests/c/{name}.c")))
        .arg("-o")
        .arg(&exe)
        .arg(&so)
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()));
    for dir in mlx_lib_dirs() {
        cc.arg(format!("-Wl,-rpath,{}", dir.display()));
    }
    let out = cc
        .output()
        .expect("a C compiler `cc` is needed for the C ABI tests");
    assert!(
        out.status.success(),
        "cc {name}.c failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// Runs a compiled C program and returns its stdout, failing with its stderr.
fn run(exe: &Path, args: &[&str]) -> String {
    let out = Command::new(exe).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{} failed ({}):\n{}",
        exe.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn c_greedy_generation_matches_rust() {
    let dir = tempfile::tempdir().unwrap();
    let model = synthetic_model(dir.path(), 0);
    let exe = compile_c("generate", dir.path());
    let mut args = vec![model.to_str().unwrap().to_string(), N_NEW.to_string()];
    args.extend(PROMPT.iter().map(u32::to_string));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let from_c: Vec<u32> = run(&exe, &args)
        .split_whitespace()
        .map(|t| t.parse().unwrap())
        .collect();

    let engine = Engine::load(&model, &LoadOptions::default()).unwrap();
    let from_rust = engine.generate_greedy(&PROMPT, N_NEW, |_| false).unwrap();
    assert_eq!(
        from_c, from_rust,
        "C (with a snapshot round trip half-way) vs Rust greedy tokens"
    );
}

/// Speculative steps from C (prompt-lookup drafts over a prompt that repeats itself, so drafts
/// are proposed, some accepted and some rolled back) give the tokens of plain greedy decoding
/// in Rust. On this model and prompt no step meets a near-tie, so they agree exactly.
#[test]
fn c_speculative_generation_matches_plain_rust_greedy() {
    let dir = tempfile::tempdir().unwrap();
    let model = synthetic_model(dir.path(), 0);
    let exe = compile_c("speculative", dir.path());
    let prompt: Vec<u32> = PROMPT
        .iter()
        .chain(&PROMPT)
        .chain(&PROMPT[..3])
        .copied()
        .collect();
    let mut args = vec![
        model.to_str().unwrap().to_string(),
        N_NEW.to_string(),
        "4".into(),
    ];
    args.extend(prompt.iter().map(u32::to_string));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&exe, &args);
    let mut lines = out.lines();
    let from_c: Vec<u32> = lines
        .next()
        .unwrap()
        .split_whitespace()
        .map(|t| t.parse().unwrap())
        .collect();
    let counts: Vec<usize> = lines
        .next()
        .unwrap()
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    assert!(counts[0] > counts[1], "some drafts rejected: {out}");

    let engine = Engine::load(&model, &LoadOptions::default()).unwrap();
    let from_rust = engine.generate_greedy(&prompt, N_NEW, |_| false).unwrap();
    assert_eq!(
        from_c, from_rust,
        "C speculative vs Rust plain greedy tokens"
    );
}

#[test]
fn c_program_exercises_every_function() {
    let dir = tempfile::tempdir().unwrap();
    let model = synthetic_model(dir.path(), 0);
    let other = synthetic_model(dir.path(), 1);
    let adapter = train_adapter(&model, dir.path());
    let exe = compile_c("abi_all", dir.path());
    let args = [&model, &other, &adapter].map(|p| p.to_str().unwrap());
    assert_eq!(run(&exe, &args).trim(), "ok");
}

#[test]
fn c_text_side_gives_the_known_qwen_ids_pieces_and_template() {
    if common::skip_requested() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = compile_c("text", dir.path());
    let model = common::qwen_model();
    assert_eq!(run(&exe, &[model.to_str().unwrap()]).trim(), "ok");
}

#[test]
fn c_constrained_sampling_follows_grammars_and_refuses_bad_ones() {
    if common::skip_requested() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = compile_c("grammar", dir.path());
    let model = common::qwen_model();
    assert_eq!(run(&exe, &[model.to_str().unwrap()]).trim(), "ok");
}

/// The cheap CI form of `benches/leaks/valgrind.sh`: 200 generations through the C ABI (new
/// sequence, prefill, sampler, decode steps, snapshot, frees) leave MLX's active memory exactly
/// where the first left it; a sequence, cache or snapshot left alive would add its bytes.
#[test]
fn c_generations_leave_mlx_memory_where_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let model = synthetic_model(dir.path(), 0);
    let exe = compile_c("leak_loop", dir.path());
    let out = run(&exe, &[model.to_str().unwrap(), "200"]);
    let fields: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(fields.len(), 6, "{out}");
    let (first, last) = (fields[3], fields[5]);
    assert_eq!(
        first, last,
        "MLX active bytes after call 1 and call 200: {out}"
    );
}

// ---- Header vs src/ffi.rs ----------------------------------------------------------------

/// Everything the ABI declares, in C spelling: functions (return type and parameter types),
/// structs (field name and type), constants and type aliases.
#[derive(Debug, Default, PartialEq)]
struct Abi {
    functions: BTreeMap<String, (String, Vec<String>)>,
    structs: BTreeMap<String, Vec<(String, String)>>,
    constants: BTreeMap<String, String>,
    aliases: BTreeMap<String, String>,
}

fn parse_header(src: &str) -> Abi {
    let (defines, body) = split_header(src, "MLXE_");
    let mut abi = Abi {
        constants: defines.into_iter().collect(),
        ..Abi::default()
    };
    let mut rest = body.as_str();
    let mut others = String::new();
    while let Some(start) = rest.find("typedef struct ") {
        others.push_str(&rest[..start]);
        let (name, after) = rest[start + 15..].split_once('{').unwrap();
        let (fields, after) = after.split_once('}').unwrap();
        let fields = fields
            .split(';')
            .filter(|f| !f.trim().is_empty())
            .map(split_c_decl)
            .collect();
        abi.structs.insert(name.trim().to_string(), fields);
        rest = after.split_once(';').unwrap().1;
    }
    others.push_str(rest);
    for stmt in others.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        if let Some(alias) = stmt.strip_prefix("typedef ") {
            let (name, ty) = split_c_decl(alias);
            abi.aliases.insert(name, ty);
        } else if let Some((head, params)) = stmt.split_once('(') {
            let (name, ret) = split_c_decl(head);
            let params = params.trim_end_matches(')').trim();
            let params = match params {
                "void" | "" => vec![],
                p => p.split(',').map(|p| split_c_decl(p).1).collect(),
            };
            abi.functions.insert(name, (ret, params));
        }
    }
    abi
}

fn parse_ffi_rs(src: &str) -> Abi {
    let code: String = src
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut abi = Abi::default();
    for (i, _) in code.match_indices("pub const MLXE_") {
        let stmt = code[i + 10..].split(';').next().unwrap();
        let (name, value) = stmt.split_once('=').unwrap();
        let name = name.split(':').next().unwrap().trim().to_string();
        abi.constants.insert(name, value.trim().to_string());
    }
    for (i, _) in code.match_indices("#[repr(C)]\npub struct ") {
        let (name, after) = code[i + 22..].split_once('{').unwrap();
        let fields = after.split('}').next().unwrap();
        abi.structs
            .insert(name.trim().to_string(), rust_fields(fields));
    }
    for (i, _) in code.match_indices("pub type mlxe_") {
        let (name, ty) = code[i + 9..]
            .split(';')
            .next()
            .unwrap()
            .split_once('=')
            .unwrap();
        abi.aliases
            .insert(name.trim().to_string(), rust_type_to_c(ty));
    }
    for (i, _) in code.match_indices("extern \"C\" fn ") {
        let (name, after) = code[i + 14..].split_once('(').unwrap();
        let (params, after) = after.split_once(')').unwrap();
        let ret = after
            .split('{')
            .next()
            .unwrap()
            .trim()
            .strip_prefix("->")
            .map_or("void".to_string(), rust_type_to_c);
        let params = rust_fields(params).into_iter().map(|(_, ty)| ty).collect();
        abi.functions.insert(name.trim().to_string(), (ret, params));
    }
    abi
}

#[test]
fn header_declares_exactly_what_ffi_rs_exports() {
    let root = common::repo_root();
    let header = parse_header(&std::fs::read_to_string(root.join("include/mlx_engine.h")).unwrap());
    let rust = parse_ffi_rs(&std::fs::read_to_string(root.join("src/ffi.rs")).unwrap());
    assert!(
        rust.functions.len() >= 25,
        "parsed only {} functions from src/ffi.rs",
        rust.functions.len()
    );
    assert_eq!(
        header.constants, rust.constants,
        "#define constants vs pub const"
    );
    assert_eq!(header.aliases, rust.aliases, "typedefs vs pub type");
    assert_eq!(
        header.structs, rust.structs,
        "struct layouts (field order, names, types)"
    );
    for (name, sig) in &rust.functions {
        assert_eq!(header.functions.get(name), Some(sig), "prototype of {name}");
    }
    assert_eq!(
        header.functions.len(),
        rust.functions.len(),
        "functions declared in the header but not exported"
    );
}

#[test]
fn c_programs_call_every_function() {
    let root = common::repo_root();
    let header = parse_header(&std::fs::read_to_string(root.join("include/mlx_engine.h")).unwrap());
    let programs: String = ["generate", "abi_all", "speculative", "text", "grammar"]
        .iter()
        .map(|p| std::fs::read_to_string(root.join(format!("tests/c/{p}.c"))).unwrap())
        .collect();
    for name in header.functions.keys() {
        assert!(
            programs.contains(&format!("{name}(")),
            "no C test calls {name}"
        );
    }
}

/// In a build without a GPU backend, `MLXE_DEVICE_GPU` fails with `MLXE_ERROR` and an error
/// that says so (and how to get one), before the model file is even read.
#[cfg(not(any(feature = "cuda", target_os = "macos")))]
#[test]
fn c_gpu_request_without_a_gpu_backend_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = synthetic_model(dir.path(), 0);
    let exe = compile_c("no_gpu", dir.path());
    let out = run(&exe, &[model.to_str().unwrap()]);
    let (status, message) = out.split_once('\n').unwrap();
    assert_eq!(status, "1", "mlxe_backend_new status; stdout: {out}");
    assert!(
        message.contains("no GPU backend") && message.contains("--features cuda"),
        "mlxe_last_error: {message}"
    );
}
