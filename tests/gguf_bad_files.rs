//! One malformed GGUF file per check in `loader::gguf`, each of which must give an `Err` whose
//! message names the file and the problem (never a panic); a good file's round trip; and, when
//! present, facts about the real Qwen2.5-Coder-0.5B Q4_K_M file.

mod common;

use mlx_engine::ggml_type::GgmlType;
use mlx_engine::loader::{GgufFile, MetaValue};
use std::path::PathBuf;

/// GGUF metadata value type ids.
mod vt {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// A GGUF string: u64 length + bytes.
fn gguf_str(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// An array value body: element type, count, elements.
fn array(elem_type: u32, count: u64, elems: &[u8]) -> Vec<u8> {
    let mut out = elem_type.to_le_bytes().to_vec();
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(elems);
    out
}

/// One tensor-info record as written (offset relative to the data section).
#[derive(Clone)]
struct Tensor {
    name: Vec<u8>,
    dims: Vec<u64>,
    ty: u32,
    offset: u64,
}

fn tensor(name: &str, dims: &[u64], ty: GgmlType, offset: u64) -> Tensor {
    Tensor {
        name: name.as_bytes().to_vec(),
        dims: dims.to_vec(),
        ty: ty.id(),
        offset,
    }
}

/// A tiny GGUF writer: every field can be set to a bad value.
#[derive(Clone)]
struct Gguf {
    magic: [u8; 4],
    version_bytes: [u8; 4],
    n_tensors: Option<u64>,
    n_kv: Option<u64>,
    kvs: Vec<(Vec<u8>, u32, Vec<u8>)>,
    tensors: Vec<Tensor>,
    alignment: usize,
    data: Vec<u8>,
}

impl Gguf {
    /// A valid v3 file: an architecture key and two tensors (F32 [4, 2], Q8_0 [32, 2]).
    fn good() -> Gguf {
        let mut data = Vec::new();
        for i in 0..8 {
            data.extend_from_slice(&(i as f32 * 0.5).to_le_bytes());
        }
        data.resize(64, 0);
        for row in 0..2u8 {
            data.extend_from_slice(&half::f16::from_f32(0.25).to_le_bytes());
            data.extend((0..32).map(|i| i as u8 + row));
        }
        Gguf {
            magic: *b"GGUF",
            version_bytes: 3u32.to_le_bytes(),
            n_tensors: None,
            n_kv: None,
            kvs: vec![(
                b"general.architecture".to_vec(),
                vt::STRING,
                gguf_str(b"llama"),
            )],
            tensors: vec![
                tensor("a.weight", &[4, 2], GgmlType::F32, 0),
                tensor("b.weight", &[32, 2], GgmlType::Q8_0, 64),
            ],
            alignment: 32,
            data,
        }
    }

    fn kv(mut self, key: &str, ty: u32, value: Vec<u8>) -> Gguf {
        self.kvs.push((key.as_bytes().to_vec(), ty, value));
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = self.magic.to_vec();
        out.extend_from_slice(&self.version_bytes);
        out.extend_from_slice(
            &self
                .n_tensors
                .unwrap_or(self.tensors.len() as u64)
                .to_le_bytes(),
        );
        out.extend_from_slice(&self.n_kv.unwrap_or(self.kvs.len() as u64).to_le_bytes());
        for (key, ty, value) in &self.kvs {
            out.extend(gguf_str(key));
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(value);
        }
        for t in &self.tensors {
            out.extend(gguf_str(&t.name));
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.to_le_bytes());
            out.extend_from_slice(&t.offset.to_le_bytes());
        }
        out.resize(out.len().next_multiple_of(self.alignment), 0);
        out.extend_from_slice(&self.data);
        out
    }
}

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mlx-engine-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn write(name: &str, bytes: &[u8]) -> PathBuf {
    let path = temp_path(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Opening `bytes` must fail with a message naming the file and containing `problem`.
fn assert_rejects(name: &str, bytes: &[u8], problem: &str) {
    let path = write(name, bytes);
    let err = match GgufFile::open(&path) {
        Ok(_) => panic!("{name}: opened a bad file"),
        Err(e) => e.to_string(),
    };
    eprintln!("{err}");
    assert!(
        err.contains(&path.display().to_string()),
        "{name}: message lacks the file: {err}"
    );
    assert!(
        err.contains(problem),
        "{name}: expected '{problem}' in: {err}"
    );
}

#[test]
fn good_file_round_trip() {
    let nested = array(
        vt::ARRAY,
        2,
        &[array(vt::U8, 2, &[1, 2]), array(vt::U8, 1, &[3])].concat(),
    );
    let file = Gguf::good()
        .kv("t.u8", vt::U8, vec![200])
        .kv("t.i8", vt::I8, vec![0xFF])
        .kv("t.u16", vt::U16, 65535u16.to_le_bytes().to_vec())
        .kv("t.i16", vt::I16, (-300i16).to_le_bytes().to_vec())
        .kv("t.u32", vt::U32, 24u32.to_le_bytes().to_vec())
        .kv("t.i32", vt::I32, (-5i32).to_le_bytes().to_vec())
        .kv("t.f32", vt::F32, 1e-6f32.to_le_bytes().to_vec())
        .kv("t.bool", vt::BOOL, vec![1])
        .kv("t.u64", vt::U64, (1u64 << 40).to_le_bytes().to_vec())
        .kv("t.i64", vt::I64, (-7i64).to_le_bytes().to_vec())
        .kv("t.f64", vt::F64, 1e6f64.to_le_bytes().to_vec())
        .kv(
            "t.strs",
            vt::ARRAY,
            array(
                vt::STRING,
                2,
                &[gguf_str(b"a"), gguf_str("é".as_bytes())].concat(),
            ),
        )
        .kv(
            "t.f32s",
            vt::ARRAY,
            array(
                vt::F32,
                2,
                &[0.5f32.to_le_bytes(), 2f32.to_le_bytes()].concat(),
            ),
        )
        .kv(
            "t.i32s",
            vt::ARRAY,
            array(
                vt::I32,
                2,
                &[(-1i32).to_le_bytes(), 9i32.to_le_bytes()].concat(),
            ),
        )
        .kv("t.nested", vt::ARRAY, nested)
        .kv("general.alignment", vt::U32, 64u32.to_le_bytes().to_vec());
    let mut file = file;
    file.alignment = 64;
    let path = write("good.gguf", &file.bytes());
    let g = GgufFile::open(&path).unwrap();

    assert_eq!(
        (g.version(), g.alignment(), g.architecture().unwrap()),
        (3, 64, "llama")
    );
    assert_eq!(g.get_u64("t.u8").unwrap(), 200);
    assert_eq!(g.get("t.i8"), Some(&MetaValue::I8(-1)));
    assert_eq!(g.get_u64("t.u16").unwrap(), 65535);
    assert_eq!(g.get("t.i16").and_then(MetaValue::as_i64), Some(-300));
    assert_eq!(g.get_u64("t.u32").unwrap(), 24);
    assert_eq!(g.get_f64("t.f32").unwrap(), f64::from(1e-6f32));
    assert!(g.get_bool("t.bool").unwrap());
    assert_eq!(g.get_u64("t.u64").unwrap(), 1 << 40);
    assert_eq!(g.get("t.i64").and_then(MetaValue::as_i64), Some(-7));
    assert_eq!(g.get_f64("t.f64").unwrap(), 1e6);
    assert_eq!(g.get_f64("t.i32").unwrap(), -5.0);
    assert_eq!(g.get_str_array("t.strs").unwrap(), ["a", "é"]);
    assert_eq!(g.get_f32_array("t.f32s").unwrap(), [0.5, 2.0]);
    assert_eq!(g.get_i32_array("t.i32s").unwrap(), [-1, 9]);
    let nested = g.get("t.nested").and_then(MetaValue::as_array).unwrap();
    assert_eq!(
        nested[0],
        MetaValue::Array(vec![MetaValue::U8(1), MetaValue::U8(2)])
    );
    let order: Vec<&str> = g.keys_in_file_order().collect();
    assert_eq!(
        (order[0], order[1], order.len()),
        ("general.architecture", "t.u8", 17)
    );

    let file_name = path.display().to_string();
    let missing = g.get_u64("qwen2.block_count").unwrap_err().to_string();
    assert!(
        missing.contains(&file_name)
            && missing.contains("metadata key 'qwen2.block_count' is missing"),
        "{missing}"
    );
    let wrong = g.get_u64("general.architecture").unwrap_err().to_string();
    assert!(
        wrong.contains("has type string, expected a non-negative integer"),
        "{wrong}"
    );
    let negative = g.get_u64("t.i32").unwrap_err().to_string();
    assert!(negative.contains("type i32 (value -5)"), "{negative}");
    let element = g.get_str_array("t.f32s").unwrap_err().to_string();
    assert!(element.contains("'t.f32s[0]' has type f32"), "{element}");

    let a = g.tensor("a.weight").unwrap();
    assert_eq!(
        (a.ggml_type, a.dims.as_slice(), a.n_bytes),
        (GgmlType::F32, &[4u64, 2][..], 32)
    );
    assert_eq!(
        (a.row_len(), a.n_rows(), a.shape_rowmajor()),
        (4, 2, vec![2, 4])
    );
    assert!(a.offset.is_multiple_of(64));
    let floats: Vec<f32> = g
        .tensor_bytes(a)
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(floats, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]);
    let b = g.tensor("b.weight").unwrap();
    assert_eq!(
        (b.ggml_type, b.n_bytes, b.offset - a.offset),
        (GgmlType::Q8_0, 68, 64)
    );
    assert_eq!(g.tensor_bytes(b)[2..5], [0, 1, 2]);
    assert_eq!(g.tensors().len(), 2);
    assert!(g.tensor("c.weight").is_none());
    assert_eq!(g.mapping().len() as u64, b.offset + b.n_bytes);
}

#[test]
fn version_2_is_read() {
    let mut file = Gguf::good();
    file.version_bytes = 2u32.to_le_bytes();
    let g = GgufFile::open(&write("v2.gguf", &file.bytes())).unwrap();
    assert_eq!(g.version(), 2);
}

#[test]
fn empty_and_missing_files() {
    assert_rejects("empty.gguf", &[], "empty file");
    let path = temp_path("does-not-exist.gguf");
    let err = GgufFile::open(&path).unwrap_err().to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
}

#[test]
fn header_errors() {
    let good = Gguf::good().bytes();
    assert_rejects("truncated-header.gguf", &good[..10], "truncated file");
    assert_rejects("truncated-magic.gguf", &good[..3], "truncated file");
    let mut bad_magic = good.clone();
    bad_magic[..4].copy_from_slice(b"GGML");
    assert_rejects("bad-magic.gguf", &bad_magic, "bad magic");
    let version = |v: [u8; 4]| {
        let mut f = Gguf::good();
        f.version_bytes = v;
        f.bytes()
    };
    assert_rejects(
        "v1.gguf",
        &version(1u32.to_le_bytes()),
        "GGUF version 1 is not supported",
    );
    assert_rejects(
        "v99.gguf",
        &version(99u32.to_le_bytes()),
        "unsupported GGUF version 99",
    );
    assert_rejects(
        "big-endian.gguf",
        &version(3u32.to_be_bytes()),
        "big-endian",
    );
}

#[test]
fn count_errors() {
    let mut f = Gguf::good();
    f.n_tensors = Some(u64::MAX / 2);
    assert_rejects(
        "huge-tensor-count.gguf",
        &f.bytes(),
        "tensor count 9223372036854775807 is impossible",
    );
    let mut f = Gguf::good();
    f.n_kv = Some(1 << 40);
    assert_rejects(
        "huge-kv-count.gguf",
        &f.bytes(),
        "key/value count 1099511627776 is impossible",
    );
    let mut f = Gguf::good();
    f.n_tensors = Some(3);
    assert_rejects("missing-tensor-record.gguf", &f.bytes(), "");
}

#[test]
fn metadata_errors() {
    let mut huge_key = Gguf::good();
    huge_key.kvs.push((vec![], vt::U8, vec![]));
    let mut bytes = huge_key.bytes();
    let at = bytes.windows(5).position(|w| w == b"llama").unwrap() + 5;
    bytes[at..at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert_rejects(
        "huge-string.gguf",
        &bytes,
        "string length 1152921504606846976 exceeds",
    );

    let f = Gguf::good().kv("x", vt::STRING, (1u64 << 50).to_le_bytes().to_vec());
    assert_rejects(
        "huge-string-value.gguf",
        &f.bytes(),
        "metadata key 'x': string length",
    );
    let f = Gguf::good().kv("x", 13, vec![0; 8]);
    assert_rejects(
        "unknown-value-type.gguf",
        &f.bytes(),
        "metadata key 'x': unknown metadata value type 13",
    );
    let f = Gguf::good().kv("x", vt::ARRAY, array(77, 1, &[0; 8]));
    assert_rejects(
        "unknown-array-type.gguf",
        &f.bytes(),
        "unknown array element type 77",
    );
    let f = Gguf::good().kv("x", vt::ARRAY, array(vt::U32, 1 << 40, &[0; 8]));
    assert_rejects(
        "huge-array.gguf",
        &f.bytes(),
        "array of 1099511627776 elements cannot fit",
    );
    let inner = array(vt::U64, 1 << 40, &[]);
    let f = Gguf::good().kv("x", vt::ARRAY, array(vt::ARRAY, 1, &inner));
    assert_rejects("nested-array-huge.gguf", &f.bytes(), "cannot fit");
    let mut deep = array(vt::U8, 1, &[7]);
    for _ in 0..5 {
        deep = array(vt::ARRAY, 1, &deep);
    }
    let f = Gguf::good().kv("x", vt::ARRAY, deep);
    assert_rejects(
        "nested-array-deep.gguf",
        &f.bytes(),
        "arrays nested more than 4 deep",
    );
    let f = Gguf::good().kv("general.architecture", vt::STRING, gguf_str(b"qwen2"));
    assert_rejects(
        "duplicate-key.gguf",
        &f.bytes(),
        "duplicate metadata key 'general.architecture'",
    );
    let f = Gguf::good().kv("x", vt::BOOL, vec![2]);
    assert_rejects("bad-bool.gguf", &f.bytes(), "bool byte is 2");
    let mut f = Gguf::good();
    f.kvs.push((vec![0xFF, 0xFE], vt::U8, vec![0]));
    assert_rejects("bad-utf8-key.gguf", &f.bytes(), "not valid UTF-8");
}

#[test]
fn alignment_errors() {
    for (name, value) in [("alignment-3.gguf", 3u32), ("alignment-0.gguf", 0)] {
        let f = Gguf::good().kv("general.alignment", vt::U32, value.to_le_bytes().to_vec());
        assert_rejects(name, &f.bytes(), "general.alignment has type u32");
    }
    let f = Gguf::good().kv("general.alignment", vt::STRING, gguf_str(b"32"));
    assert_rejects(
        "alignment-string.gguf",
        &f.bytes(),
        "expected a nonzero power of two",
    );
}

/// `Gguf::good()` with its second tensor replaced.
fn with_tensor(t: Tensor) -> Vec<u8> {
    let mut f = Gguf::good();
    f.tensors[1] = t;
    f.bytes()
}

#[test]
fn tensor_errors() {
    let mut f = Gguf::good();
    f.tensors[1].name = b"a.weight".to_vec();
    assert_rejects(
        "duplicate-tensor.gguf",
        &f.bytes(),
        "duplicate tensor name 'a.weight'",
    );
    let misaligned = with_tensor(tensor("b", &[32, 2], GgmlType::Q8_0, 36));
    assert_rejects(
        "misaligned.gguf",
        &misaligned,
        "tensor 'b': data offset 36 is not a multiple of the alignment 32",
    );
    let past_eof = with_tensor(tensor("b", &[32, 2], GgmlType::Q8_0, 96));
    assert_rejects("past-eof.gguf", &past_eof, "tensor 'b': data at offset");
    let far = with_tensor(tensor("b", &[32, 2], GgmlType::Q8_0, u64::MAX - 31));
    assert_rejects(
        "offset-overflow.gguf",
        &far,
        "runs past the end of the file",
    );
    let mut unknown = tensor("b", &[32, 2], GgmlType::Q8_0, 64);
    unknown.ty = 77;
    assert_rejects(
        "unknown-type.gguf",
        &with_tensor(unknown),
        "tensor 'b': unknown ggml type id 77",
    );
    let odd_row = with_tensor(tensor("b", &[33, 2], GgmlType::Q8_0, 64));
    assert_rejects(
        "row-not-blocks.gguf",
        &odd_row,
        "row length 33 is not a multiple of the Q8_0 block size 32",
    );
    let overflow = with_tensor(tensor("b", &[1 << 32, 1 << 32, 1 << 32], GgmlType::F32, 64));
    assert_rejects("dims-overflow.gguf", &overflow, "overflow");
    let big = with_tensor(tensor("b", &[1 << 31, 1 << 31, 2], GgmlType::F32, 64));
    assert_rejects("dims-over-i64.gguf", &big, "overflow");
    let zero = with_tensor(tensor("b", &[32, 0], GgmlType::Q8_0, 64));
    assert_rejects("zero-dim.gguf", &zero, "contain a zero");
    let five = with_tensor(tensor("b", &[32, 1, 1, 1, 1], GgmlType::Q8_0, 64));
    assert_rejects("five-dims.gguf", &five, "5 dimensions, expected 1 to 4");
    let overlap = with_tensor(tensor("b", &[32, 1], GgmlType::Q8_0, 0));
    assert_rejects("overlap.gguf", &overlap, "overlaps tensor");
    let unsupported = with_tensor(tensor("b", &[256, 1], GgmlType::IQ2_XXS, 64));
    let path = write("iq2.gguf", &[unsupported, vec![0; 64]].concat());
    let g = GgufFile::open(&path).expect("a recognised type opens; it fails when decoded");
    let t = g.tensor("b").unwrap();
    let err = mlx_engine::quant::dequantize_row(t.ggml_type, g.tensor_bytes(t), &mut [0.0; 256])
        .unwrap_err();
    assert!(
        err.to_string().contains("IQ2_XXS is not supported"),
        "{err}"
    );
}

#[test]
fn truncations_and_corruptions_never_panic() {
    let good = Gguf::good()
        .kv("x", vt::ARRAY, array(vt::STRING, 1, &gguf_str(b"tok")))
        .bytes();
    let path = temp_path("fuzz.gguf");
    for len in 0..good.len() {
        std::fs::write(&path, &good[..len]).unwrap();
        assert!(
            GgufFile::open(&path).is_err(),
            "truncated to {len} bytes but opened"
        );
    }
    let mut state = 0x1234_5678_9ABC_DEF0u64;
    for _ in 0..2000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut bytes = good.clone();
        let at = (state % bytes.len() as u64) as usize;
        bytes[at] ^= (state >> 32) as u8 | 1;
        std::fs::write(&path, &bytes).unwrap();
        let _ = GgufFile::open(&path);
    }
}

#[test]
fn real_model_facts() {
    if common::skip_requested() {
        return;
    }
    let g = GgufFile::open(&common::qwen_model()).unwrap();
    assert_eq!(g.architecture().unwrap(), "qwen2");
    assert_eq!(g.tensors().len(), 291);
    assert_eq!(g.get_u64("qwen2.block_count").unwrap(), 24);
    let count = |ty| g.tensors().iter().filter(|t| t.ggml_type == ty).count();
    assert_eq!(count(GgmlType::Q5_0), 133);
    assert_eq!(count(GgmlType::F32), 121);
    assert_eq!(count(GgmlType::Q8_0), 13);
    assert_eq!(count(GgmlType::Q6_K), 12);
    assert_eq!(count(GgmlType::Q4_K), 12);
    let embd = g.tensor("token_embd.weight").unwrap();
    assert_eq!(
        (embd.dims.as_slice(), embd.shape_rowmajor()),
        (&[896u64, 151936][..], vec![151936, 896])
    );
    assert_eq!(
        g.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
        151936
    );
    let last = g
        .tensors()
        .iter()
        .map(|t| t.offset + t.n_bytes)
        .max()
        .unwrap();
    assert!(last <= g.mapping().len() as u64);
}
