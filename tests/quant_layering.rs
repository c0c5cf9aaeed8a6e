//! The dependency rules of the quant formats and the ggml type table, read from the sources:
//! the reference decoders (`src/quant/decode/`) know nothing of the MLX conversion, the type
//! table (`src/ggml_type.rs`) is a leaf, and neither the loader nor the kernels wrapper
//! reaches into `quant`.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `src/<rel>` (or the file itself).
fn sources(rel: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(rel);
    let mut found = Vec::new();
    let mut pending = vec![root];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            let entries = std::fs::read_dir(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            pending.extend(entries.map(|entry| entry.unwrap().path()));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
    assert!(!found.is_empty(), "no sources under src/{rel}");
    found
}

/// The code of `path` without comment lines, joined, so multi-line `use` items read as one.
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Asserts no file under `src/<rel>` contains any of `forbidden`.
fn assert_none_mention(rel: &str, forbidden: &[&str]) {
    for path in sources(rel) {
        let code = code_of(&path);
        for needle in forbidden {
            assert!(!code.contains(needle), "{path:?} uses `{needle}`");
        }
    }
}

#[test]
fn decoders_do_not_import_the_affine_conversion() {
    assert_none_mention("quant/decode", &["affine", "crate::mlx"]);
    assert_none_mention("quant/block.rs", &["affine", "decode", "crate::mlx"]);
}

#[test]
fn the_type_table_is_a_leaf() {
    let code = code_of(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ggml_type.rs"));
    for (i, _) in code.match_indices("crate::") {
        assert!(
            code[i..].starts_with("crate::error"),
            "src/ggml_type.rs uses `{}`",
            &code[i..(i + 30).min(code.len())]
        );
    }
}

#[test]
fn loader_and_kernels_wrapper_do_not_depend_on_quant() {
    assert_none_mention("loader", &["crate::quant"]);
    assert_none_mention("mlx", &["crate::quant"]);
}
