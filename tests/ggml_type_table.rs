//! The ggml type table is written down in four places: the Rust enum (`src/ggml_type.rs`),
//! the public kernels header's `MLXK_TYPE_*` ids (`kernels/include/mlx_engine_kernels.h`), the
//! kernels' internal enum (`kernels/mlxk_internal.h`, spelled with those header constants)
//! and the kernels' block sizes (`type_info` in `kernels/quant_scalar.cpp`, reported through
//! `mlxk_block_size` / `mlxk_row_bytes`). Each test here fails when one copy changes without
//! the others.

use mlx_engine::ggml_type::GgmlType;
use mlx_engine::mlx::kernels;
use mlx_engine::mlx::kernels::types::{self as kernel_types, REPACKED_FLAG};
use std::collections::BTreeMap;
use std::path::Path;

/// Every type id asked about: all ids ggml has used so far (0..=41) and some it has not, which
/// the kernels must refuse like the ids the Rust table lacks.
const IDS: std::ops::RangeInclusive<u32> = 0..=63;

/// A row length that is a whole number of blocks of every type the kernels accept.
const K_ALL: u64 = 512;

/// The text of `kernels/<rel>`.
fn kernel_source(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("kernels")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The lines between `opening` and the next `}` in `text`.
fn enum_body<'a>(text: &'a str, opening: &str) -> &'a str {
    let start = text
        .find(opening)
        .unwrap_or_else(|| panic!("`{opening}` not found"));
    let body = &text[start + opening.len()..];
    &body[..body.find('}').expect("enum without a closing brace")]
}

/// `NAME = value` entries of an enum body (comments dropped), in order.
fn enum_entries(body: &str) -> Vec<(String, String)> {
    body.lines()
        .map(|line| line.split("//").next().unwrap_or("").trim())
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (name, value) = line
                .trim_end_matches(',')
                .split_once('=')
                .unwrap_or_else(|| panic!("enum entry without a value: `{line}`"));
            (name.trim().to_string(), value.trim().to_string())
        })
        .collect()
}

/// A decimal or `0x` hexadecimal C integer literal.
fn c_integer(text: &str) -> u32 {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.unwrap_or_else(|e| panic!("`{text}` is not an integer literal: {e}"))
}

/// The public header's type ids: ggml name (`Q4_K`) → id.
fn header_type_ids() -> BTreeMap<String, u32> {
    let header = kernel_source("include/mlx_engine_kernels.h");
    enum_entries(enum_body(&header, "enum mlxk_ggml_type {"))
        .into_iter()
        .map(|(name, value)| {
            let name = name
                .strip_prefix("MLXK_TYPE_")
                .unwrap_or_else(|| panic!("header type `{name}` lacks the MLXK_TYPE_ prefix"));
            (name.to_string(), c_integer(&value))
        })
        .collect()
}

/// The value of `#define <name> <value>` in the public header.
fn header_define(name: &str) -> u32 {
    let header = kernel_source("include/mlx_engine_kernels.h");
    let prefix = format!("#define {name} ");
    let line = header
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no `#define {name}` in the header"));
    c_integer(line.split_whitespace().next().unwrap_or(""))
}

/// The ids the kernels accept (`mlxk_block_size` > 0) among `ids`.
fn kernel_accepted(ids: impl Iterator<Item = u32>) -> Vec<u32> {
    ids.filter(|&id| kernel_types::block_size(id).is_some())
        .collect()
}

/// Checks the kernels' block size and row bytes for type id `id` against the Rust type `ty`
/// (for a repacked id, the type it stores).
fn assert_kernel_sizes_match(id: u32, ty: GgmlType) {
    let block = kernel_types::block_size(id).expect("an accepted id");
    assert_eq!(
        block,
        ty.block_size(),
        "{ty} (kernel id {id:#x}): elements per block"
    );
    for k in [block, 7 * block, K_ALL] {
        let kernel = kernel_types::row_bytes(id, k).unwrap();
        assert_eq!(
            Some(kernel),
            ty.row_bytes(k),
            "{ty} (kernel id {id:#x}): row of {k}"
        );
    }
    if block > 1 {
        let k = block + 1;
        assert_eq!(
            ty.row_bytes(k),
            None,
            "{ty}: a row of {k} is not whole blocks"
        );
        let err = kernel_types::row_bytes(id, k).unwrap_err().to_string();
        assert!(
            err.contains(ty.name()),
            "{ty}: the kernels' name differs: {err}"
        );
    }
}

#[test]
fn kernel_sizes_match_the_rust_table_for_every_id() {
    for id in IDS {
        match (GgmlType::from_id(id), kernel_types::block_size(id)) {
            (Some(ty), Some(_)) => assert_kernel_sizes_match(id, ty),
            (None, Some(block)) => {
                panic!("the kernels accept id {id} (block {block}), the Rust table lacks it")
            }
            (_, None) => assert!(
                kernel_types::row_bytes(id, K_ALL).is_err(),
                "id {id}: mlxk_row_bytes accepts a type mlxk_block_size refuses"
            ),
        }
    }
    let accepted = kernel_accepted(IDS);
    assert!(accepted.len() >= 11, "the kernels accept only {accepted:?}");
    for id in accepted {
        let ty = GgmlType::from_id(id).unwrap();
        assert!(kernels::supports(ty), "kernels::supports({ty}) disagrees");
    }
}

#[test]
fn repacked_ids_have_their_base_type_sizes() {
    let repacked = kernel_accepted(IDS.map(|id| id | REPACKED_FLAG));
    assert!(!repacked.is_empty(), "no repacked layout accepted");
    for id in &repacked {
        let base = id & !REPACKED_FLAG;
        let ty = GgmlType::from_id(base).expect("a repacked id of a type Rust knows");
        assert!(
            kernel_types::block_size(base).is_some(),
            "{ty}: repacked but not plain"
        );
        assert_kernel_sizes_match(*id, ty);
    }
    // A repack through the wrapper marks exactly these types as repacked.
    for base in kernel_accepted(IDS) {
        let ty = GgmlType::from_id(base).unwrap();
        let bytes = vec![0u8; ty.row_bytes(K_ALL).unwrap() as usize];
        let (_, layout) = kernels::repack_host(&bytes, ty, 1, K_ALL as usize).unwrap();
        let expected = repacked.contains(&(base | REPACKED_FLAG));
        assert_eq!(layout.repacked, expected, "{ty}: repacked layout");
    }
}

#[test]
fn header_ids_are_the_rust_ids_of_the_accepted_types() {
    let header = header_type_ids();
    for (name, &id) in &header {
        let ty = GgmlType::from_id(id);
        assert_eq!(
            ty.map(GgmlType::name),
            Some(name.as_str()),
            "MLXK_TYPE_{name} = {id}"
        );
    }
    let mut header_ids: Vec<u32> = header.values().copied().collect();
    header_ids.sort_unstable();
    assert_eq!(
        header_ids,
        kernel_accepted(IDS),
        "header ids vs ids the kernels accept"
    );
    assert_eq!(header_define("MLXK_TYPE_REPACKED"), REPACKED_FLAG);
}

#[test]
fn internal_enum_is_spelled_with_the_header_ids() {
    let internal = kernel_source("mlxk_internal.h");
    let header = header_type_ids();
    let mut plain = Vec::new();
    for (name, value) in enum_entries(enum_body(&internal, "enum GgmlType : int {")) {
        let name = name
            .strip_prefix("T_")
            .unwrap_or_else(|| panic!("internal type `{name}` lacks the T_ prefix"));
        let expected = match name.strip_suffix("_R8") {
            Some(base) => format!("MLXK_TYPE_{base} | MLXK_TYPE_REPACKED"),
            None => {
                plain.push(name.to_string());
                format!("MLXK_TYPE_{name}")
            }
        };
        assert_eq!(value, expected, "mlxk_internal.h: T_{name}");
        let base = name.strip_suffix("_R8").unwrap_or(name);
        assert!(
            header.contains_key(base),
            "T_{name}: MLXK_TYPE_{base} is not in the header"
        );
    }
    plain.sort();
    let header_names: Vec<String> = header.keys().cloned().collect();
    assert_eq!(plain, header_names, "internal enum vs header types");
    assert!(
        internal.contains("constexpr int kRepackedFlag = MLXK_TYPE_REPACKED;"),
        "mlxk_internal.h: kRepackedFlag must be MLXK_TYPE_REPACKED"
    );
}
