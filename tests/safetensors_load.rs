//! safetensors loading: hand-written single files, a sharded pair with its index, an
//! MLX-quantized checkpoint, and one corrupt header per validation rule.

use mlx_engine::loader::SafetensorsModel;
use mlx_engine::mlx::{Array, Dtype};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh, empty directory for one test case.
fn fresh_dir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("mlx-engine-st-{}-{n}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A tensor to write: name, safetensors dtype name, shape, raw bytes.
struct T<'a>(&'a str, &'a str, Vec<u64>, Vec<u8>);

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Writes `header` (padded with spaces to a multiple of 8, as writers do) and `data`.
fn write_raw(path: &Path, header: &str, data: &[u8]) {
    let mut header = header.as_bytes().to_vec();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

/// Writes a valid file holding `tensors` back to back.
fn write_file(path: &Path, tensors: &[T]) {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut data = Vec::new();
    for T(name, dtype, shape, bytes) in tensors {
        let begin = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            name.to_string(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [begin, data.len()]}),
        );
    }
    write_raw(path, &serde_json::Value::Object(header).to_string(), &data);
}

fn sample_tensors() -> Vec<T<'static>> {
    let bf16: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
        .collect();
    let f16: Vec<u8> = [0.25f32, 4.0, 8.0]
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect();
    vec![
        T(
            "model.norm.weight",
            "F32",
            vec![2, 3],
            f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
        ),
        T("model.embed.weight", "BF16", vec![2], bf16),
        T("h", "F16", vec![3], f16),
        T(
            "ids",
            "I32",
            vec![2],
            [-1i32, 7].iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        T(
            "packed",
            "U32",
            vec![1, 1],
            0xDEAD_BEEFu32.to_le_bytes().to_vec(),
        ),
        T("empty", "F32", vec![0, 4], vec![]),
    ]
}

/// Opening `path` must fail with a message containing `path` and `problem`.
fn assert_rejects(path: &Path, problem: &str) {
    let err = match SafetensorsModel::open(path) {
        Ok(_) => panic!("{}: opened a bad checkpoint", path.display()),
        Err(e) => e.to_string(),
    };
    eprintln!("{err}");
    let dir = if path.is_dir() {
        path
    } else {
        path.parent().unwrap()
    };
    let dir = dir.display().to_string();
    assert!(err.contains(&dir), "message lacks the path: {err}");
    assert!(err.contains(problem), "expected '{problem}' in: {err}");
}

#[test]
fn single_file_contents() {
    let dir = fresh_dir("single");
    let file = dir.join("model.safetensors");
    write_file(&file, &sample_tensors());
    for opened in [&file, &dir] {
        let m = SafetensorsModel::open(opened).unwrap();
        let names: Vec<&str> = m.names().collect();
        assert_eq!(
            names,
            [
                "empty",
                "h",
                "ids",
                "model.embed.weight",
                "model.norm.weight",
                "packed"
            ]
        );
        let norm = m.tensor("model.norm.weight").unwrap();
        assert_eq!(
            (norm.dtype, norm.shape.as_slice()),
            (Dtype::F32, &[2i64, 3][..])
        );
        assert_eq!(norm.bytes, f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        let embed = m.tensor("model.embed.weight").unwrap();
        assert_eq!((embed.dtype, embed.bytes.len()), (Dtype::BF16, 4));
        assert_eq!(m.tensor("h").unwrap().dtype, Dtype::F16);
        assert_eq!(m.tensor("ids").unwrap().dtype, Dtype::I32);
        assert_eq!(
            m.tensor("packed").unwrap().bytes,
            0xDEAD_BEEFu32.to_le_bytes()
        );
        assert_eq!(m.tensor("empty").unwrap().bytes.len(), 0);
        assert!(m.tensor("missing").is_none() && m.mapping_for("missing").is_none());
        assert_eq!(m.quantization(), None);
        assert_eq!(m.mapping_for("h").unwrap().path(), file.as_path());
    }
}

#[test]
fn zero_copy_mlx_array_over_the_map() {
    let dir = fresh_dir("zero-copy");
    write_file(&dir.join("model.safetensors"), &sample_tensors());
    let m = SafetensorsModel::open(&dir).unwrap();
    let t = m.tensor("model.norm.weight").unwrap();
    let shape: Vec<i32> = t.shape.iter().map(|&d| d as i32).collect();
    let a = Array::from_borrowed_bytes(t.bytes, m.mapping_for(t.name).unwrap(), &shape, t.dtype)
        .unwrap();
    drop(m); // the array keeps the map alive
    assert_eq!(a.to_vec::<f32>().unwrap(), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
}

/// Two shards and an index splitting `sample_tensors()` 2 / 4.
fn write_sharded(dir: &Path) {
    let mut tensors = sample_tensors();
    let second = tensors.split_off(2);
    write_file(&dir.join("model-00001-of-00002.safetensors"), &tensors);
    write_file(&dir.join("model-00002-of-00002.safetensors"), &second);
    let mut map = serde_json::Map::new();
    for T(name, ..) in &tensors {
        map.insert(name.to_string(), json!("model-00001-of-00002.safetensors"));
    }
    for T(name, ..) in &second {
        map.insert(name.to_string(), json!("model-00002-of-00002.safetensors"));
    }
    let index = json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

#[test]
fn sharded_pair() {
    let dir = fresh_dir("sharded");
    write_sharded(&dir);
    let m = SafetensorsModel::open(&dir).unwrap();
    assert_eq!(m.names().count(), 6);
    assert_eq!(m.shard_paths().count(), 2);
    let norm = m.tensor("model.norm.weight").unwrap();
    assert_eq!(norm.bytes, f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
    let second = dir.join("model-00002-of-00002.safetensors");
    assert_eq!(m.mapping_for("packed").unwrap().path(), second.as_path());
    assert_eq!(
        m.tensor("packed").unwrap().bytes,
        0xDEAD_BEEFu32.to_le_bytes()
    );
}

#[test]
fn sharded_errors() {
    let dir = fresh_dir("index-wrong-shard");
    write_sharded(&dir);
    let index = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).unwrap();
    let moved = text.replacen(
        r#""h":"model-00002-of-00002.safetensors""#,
        r#""h":"model-00001-of-00002.safetensors""#,
        1,
    );
    assert_ne!(text, moved);
    std::fs::write(&index, moved).unwrap();
    assert_rejects(
        &index,
        "weight_map puts tensor 'h' in 'model-00001-of-00002.safetensors'",
    );

    let dir = fresh_dir("index-escape");
    write_sharded(&dir);
    let index = dir.join("model.safetensors.index.json");
    std::fs::write(
        &index,
        json!({"weight_map": {"h": "../x.safetensors"}}).to_string(),
    )
    .unwrap();
    assert_rejects(&index, "is not a plain file name");
    std::fs::write(&index, "{not json").unwrap();
    assert_rejects(&index, "invalid JSON");

    let dir = fresh_dir("duplicate-across-shards");
    write_file(&dir.join("a.safetensors"), &sample_tensors());
    write_file(&dir.join("b.safetensors"), &sample_tensors()[..1]);
    assert_rejects(&dir, "tensor 'model.norm.weight' is also in");

    let dir = fresh_dir("no-files");
    let err = SafetensorsModel::open(&dir).unwrap_err().to_string();
    assert!(err.contains("no .safetensors files"), "{err}");
}

/// A file with the given header JSON and 16 data bytes.
fn corrupt(name: &str, header: serde_json::Value) -> PathBuf {
    let path = fresh_dir(name).join("model.safetensors");
    write_raw(&path, &header.to_string(), &[0u8; 16]);
    path
}

#[test]
fn corrupt_headers() {
    let entry = |dtype: &str, shape: serde_json::Value, offsets: serde_json::Value| json!({"t": {"dtype": dtype, "shape": shape, "data_offsets": offsets}});
    let cases = [
        (
            "past-end",
            entry("F32", json!([8]), json!([0, 32])),
            "run past the 16 data bytes",
        ),
        (
            "size-mismatch",
            entry("F32", json!([3]), json!([0, 16])),
            "hold 16 bytes, but F32 [3] needs 12",
        ),
        (
            "reversed",
            entry("F32", json!([1]), json!([8, 4])),
            "begin ≤ end",
        ),
        (
            "negative-shape",
            entry("F32", json!([-1]), json!([0, 4])),
            "shape entry -1",
        ),
        (
            "overflow",
            entry("F32", json!([1u64 << 40, 1u64 << 40]), json!([0, 16])),
            "overflows",
        ),
        (
            "unknown-dtype",
            entry("F8_E4M3", json!([16]), json!([0, 16])),
            "unsupported dtype F8_E4M3",
        ),
        (
            "no-dtype",
            json!({"t": {"shape": [1], "data_offsets": [0, 4]}}),
            "no \"dtype\" string",
        ),
        ("not-object", json!([1, 2]), "header is not a JSON object"),
        (
            "entry-not-object",
            json!({"t": 5}),
            "entry is not a JSON object",
        ),
        (
            "overlap",
            json!({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                   "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}),
            "tensor 'a' overlaps tensor 'b'",
        ),
    ];
    for (name, header, problem) in cases {
        assert_rejects(&corrupt(name, header), problem);
    }

    let path = fresh_dir("short").join("model.safetensors");
    std::fs::write(&path, [1u8, 2, 3]).unwrap();
    assert_rejects(&path, "no 8-byte header length");
    let path = fresh_dir("huge-header").join("model.safetensors");
    std::fs::write(&path, [&(1u64 << 62).to_le_bytes()[..], b"{}"].concat()).unwrap();
    assert_rejects(&path, "header length 4611686018427387904 exceeds");
    let path = fresh_dir("bad-json").join("model.safetensors");
    write_raw(&path, "{\"t\": ", &[]);
    assert_rejects(&path, "header is not valid JSON");
}

/// An MLX-quantized layer `l`: 4 rows × 64 columns at 4 bits, groups of 32.
fn quantized_tensors(with_biases: bool) -> Vec<T<'static>> {
    let mut tensors = vec![
        T("l.weight", "U32", vec![4, 8], vec![0x11; 4 * 8 * 4]),
        T("l.scales", "F32", vec![4, 2], f32_bytes(&[0.5; 8])),
        T("norm.weight", "F32", vec![64], f32_bytes(&[1.0; 64])),
    ];
    if with_biases {
        tensors.push(T("l.biases", "F32", vec![4, 2], f32_bytes(&[-1.0; 8])));
    }
    tensors
}

#[test]
fn mlx_quantized_checkpoint() {
    let config = json!({"model_type": "llama", "quantization": {"group_size": 32, "bits": 4}});
    let dir = fresh_dir("quantized");
    write_file(&dir.join("model.safetensors"), &quantized_tensors(true));
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let m = SafetensorsModel::open(&dir).unwrap();
    assert_eq!(m.quantization(), Some((32, 4)));
    assert_eq!(m.tensor("l.weight").unwrap().dtype, Dtype::U32);

    let dir = fresh_dir("quantized-no-config");
    write_file(&dir.join("model.safetensors"), &quantized_tensors(true));
    assert_rejects(
        &dir.join("model.safetensors"),
        "config.json has no quantization",
    );

    let dir = fresh_dir("quantized-wrong-bits");
    write_file(&dir.join("model.safetensors"), &quantized_tensors(true));
    let wrong = json!({"quantization": {"group_size": 32, "bits": 8}});
    std::fs::write(dir.join("config.json"), wrong.to_string()).unwrap();
    assert_rejects(
        &dir.join("model.safetensors"),
        "do not match MLX quantization with group_size 32, bits 8",
    );

    let dir = fresh_dir("quantized-no-biases");
    write_file(&dir.join("model.safetensors"), &quantized_tensors(false));
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    assert_rejects(
        &dir.join("model.safetensors"),
        "'l.scales' has no 'l.biases'",
    );

    let dir = fresh_dir("quantized-bad-config");
    write_file(&dir.join("model.safetensors"), &quantized_tensors(true));
    let bad = json!({"quantization": {"group_size": 48, "bits": 4}});
    std::fs::write(dir.join("config.json"), bad.to_string()).unwrap();
    assert_rejects(
        &dir.join("model.safetensors"),
        "unsupported MLX quantization: group_size 48",
    );
}
