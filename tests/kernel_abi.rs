//! The kernels' C header (`kernels/include/mlx_engine_kernels.h`) agrees with the Rust
//! declarations in `src/mlx/kernels/ffi.rs`: every `extern "C"` prototype, every `#[repr(C)]`
//! struct (field order, names, types) and every `MLXK_` constant, parsed from both sides, so
//! a change on one side that the other misses fails here instead of corrupting a call.

mod common;

use common::c_decl::{normalize_c_type, rust_fields, rust_type_to_c, split_c_decl, split_header};
use std::collections::BTreeMap;

/// A declaration list in C spelling: functions (return type, parameter types), structs
/// (fields) and constants (value text).
#[derive(Debug, Default)]
struct Decls {
    functions: BTreeMap<String, (String, Vec<String>)>,
    structs: BTreeMap<String, Vec<(String, String)>>,
    constants: BTreeMap<String, i64>,
}

/// `0x100`, `-1`, `4` as numbers.
fn int_value(text: &str) -> i64 {
    let t = text.trim();
    match t.strip_prefix("0x") {
        Some(hex) => i64::from_str_radix(hex, 16).unwrap(),
        None => t.parse().unwrap_or_else(|_| panic!("constant value {t:?}")),
    }
}

/// `mlx_sys::mlx_array` → `mlx_array`; a by-value `const T` → `T` (the qualifier is the
/// callee's business, not the ABI's).
fn canonical(ty: &str) -> String {
    let t = normalize_c_type(&ty.replace("mlx_sys::", ""));
    match t.strip_prefix("const ") {
        Some(inner) if !inner.contains('*') => inner.to_string(),
        _ => t,
    }
}

fn parse_header(src: &str) -> Decls {
    let (defines, body) = split_header(src, "MLXK_");
    let mut d = Decls::default();
    for (name, value) in defines {
        d.constants.insert(name, int_value(&value));
    }
    // Enums and structs first, then the prototypes in what is left.
    let mut rest = body.as_str();
    let mut others = String::new();
    loop {
        let next = ["enum ", "typedef struct "]
            .iter()
            .filter_map(|k| rest.find(k).map(|i| (i, *k)))
            .min();
        let Some((start, kind)) = next else { break };
        others.push_str(&rest[..start]);
        let (name, after) = rest[start + kind.len()..].split_once('{').unwrap();
        let (items, after) = after.split_once('}').unwrap();
        if kind == "enum " {
            for item in items.split(',').filter(|i| !i.trim().is_empty()) {
                let (name, value) = item.split_once('=').unwrap();
                d.constants
                    .insert(name.trim().to_string(), int_value(value));
            }
        } else {
            let fields = items
                .split(';')
                .filter(|f| !f.trim().is_empty())
                .map(|f| {
                    let (name, ty) = split_c_decl(f);
                    (name, canonical(&ty))
                })
                .collect();
            d.structs.insert(name.trim().to_string(), fields);
        }
        rest = after.split_once(';').unwrap().1;
    }
    others.push_str(rest);
    for stmt in others.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((head, params)) = stmt.split_once('(') else {
            continue;
        };
        let (name, ret) = split_c_decl(head);
        let params = match params.trim_end_matches(')').trim() {
            "void" | "" => vec![],
            p => p
                .split(',')
                .map(|p| canonical(&split_c_decl(p).1))
                .collect(),
        };
        d.functions.insert(name, (canonical(&ret), params));
    }
    d
}

/// `name: Type` pairs of a comma-separated Rust list, types in canonical C spelling.
fn canonical_fields(list: &str) -> Vec<(String, String)> {
    let fields = rust_fields(list).into_iter();
    fields.map(|(name, ty)| (name, canonical(&ty))).collect()
}

fn parse_ffi_rs(src: &str) -> Decls {
    let code: String = src
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("//") && !l.starts_with("#[allow"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut d = Decls::default();
    for (i, _) in code.match_indices("pub(super) const MLXK_") {
        let stmt = code[i + 17..].split(';').next().unwrap();
        let (name, value) = stmt.split_once('=').unwrap();
        let name = name.split(':').next().unwrap().trim().to_string();
        d.constants.insert(name, int_value(value));
    }
    for (i, _) in code.match_indices("#[repr(C)]\npub(super) struct ") {
        let (name, after) = code[i + 29..].split_once('{').unwrap();
        let fields = after.split('}').next().unwrap();
        d.structs
            .insert(name.trim().to_string(), canonical_fields(fields));
    }
    let block = code.split("extern \"C\" {").nth(1).unwrap();
    let block = block.split("\n}").next().unwrap();
    for decl in block.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let decl = decl.trim_start_matches("pub(super) ");
        let (name, after) = decl.strip_prefix("fn ").unwrap().split_once('(').unwrap();
        let (params, ret) = after.rsplit_once(')').unwrap();
        let ret = ret
            .trim()
            .strip_prefix("->")
            .map_or("void".to_string(), |r| canonical(&rust_type_to_c(r)));
        let params = canonical_fields(params)
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        d.functions.insert(name.trim().to_string(), (ret, params));
    }
    d
}

#[test]
fn the_rust_bindings_declare_what_the_kernel_header_declares() {
    let root = common::repo_root();
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    let header = parse_header(&read("kernels/include/mlx_engine_kernels.h"));
    let rust = parse_ffi_rs(&read("src/mlx/kernels/ffi.rs"));
    assert!(
        rust.functions.len() >= 15 && rust.constants.len() >= 10 && !rust.structs.is_empty(),
        "parsed too little from ffi.rs: {rust:?}"
    );
    for (name, sig) in &rust.functions {
        assert_eq!(
            header.functions.get(name),
            Some(sig),
            "prototype of {name} (header vs ffi.rs)"
        );
    }
    for (name, fields) in &rust.structs {
        assert_eq!(header.structs.get(name), Some(fields), "struct {name}");
    }
    for (name, value) in &rust.constants {
        assert_eq!(header.constants.get(name), Some(value), "constant {name}");
    }
    // The header's own parse found the enums and the struct (so the loops above compared).
    assert!(header.constants.contains_key("MLXK_ERR_BAD_ARG"));
    assert!(header.structs.contains_key("mlxk_attention_params"));
}

#[test]
fn a_mismatch_is_caught() {
    // The checker itself: a header whose prototype or constant differs from the bindings.
    let header = parse_header(
        "#define MLXK_TYPE_REPACKED 0x200\n\
         int mlxk_row_bytes(int ggml_type, int64_t k, int* out);\n",
    );
    let rust = parse_ffi_rs(
        "pub(super) const MLXK_TYPE_REPACKED: c_int = 0x100;\n\
         extern \"C\" {\n    pub(super) fn mlxk_row_bytes(ggml_type: c_int, k: i64, out: *mut i64) -> c_int;\n}\n",
    );
    assert_ne!(
        header.constants["MLXK_TYPE_REPACKED"],
        rust.constants["MLXK_TYPE_REPACKED"]
    );
    assert_ne!(
        header.functions["mlxk_row_bytes"],
        rust.functions["mlxk_row_bytes"]
    );
    assert_eq!(
        rust.functions["mlxk_row_bytes"],
        (
            "int".to_string(),
            vec!["int".into(), "int64_t".into(), "int64_t*".into()]
        )
    );
}
