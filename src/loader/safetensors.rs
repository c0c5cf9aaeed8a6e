//! safetensors reader: one file, a sharded checkpoint (`model.safetensors.index.json`), or a
//! directory of `*.safetensors` shards; plus detection of MLX-quantized checkpoints.
//!
//! A file is `header_len: u64 LE`, a JSON header `{name: {dtype, shape, data_offsets:
//! [begin, end]}, "__metadata__": {..}}`, then the data; offsets are relative to the end of the
//! header. Every entry is validated before the map is sliced: a known dtype, a non-negative
//! shape whose byte size (overflow-checked) equals `end − begin`, bytes inside the file, and no
//! two tensors sharing bytes. Tensor names must be unique across shards.
#![forbid(unsafe_code)]

use crate::error::{Error, Result};
use crate::loader::mmap::MappedFile;
use crate::mlx::Dtype;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The index file of a sharded checkpoint.
const INDEX_FILE: &str = "model.safetensors.index.json";
/// The file of a single-file checkpoint.
const SINGLE_FILE: &str = "model.safetensors";
/// Largest JSON header accepted (the safetensors format's own limit, 100 MB).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// A borrowed view of one tensor: its type, row-major shape and bytes in the map.
#[derive(Clone, Debug)]
pub struct SafeTensor<'a> {
    /// The tensor's name.
    pub name: &'a str,
    /// The element type.
    pub dtype: Dtype,
    /// Row-major shape (MLX order).
    pub shape: Vec<i64>,
    /// The raw little-endian data; `bytes.len() = product(shape) · dtype.size()`. Not
    /// necessarily aligned to the element size: check before a zero-copy MLX array.
    pub bytes: &'a [u8],
}

/// Where one tensor lives.
#[derive(Clone, Debug)]
struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<i64>,
    /// Absolute byte range in the shard file.
    start: usize,
    end: usize,
}

/// An open, validated safetensors checkpoint.
#[derive(Debug)]
pub struct SafetensorsModel {
    dir: PathBuf,
    shards: Vec<Arc<MappedFile>>,
    tensors: BTreeMap<String, Entry>,
    quantization: Option<(u32, u32)>,
}

impl SafetensorsModel {
    /// Opens a `.safetensors` file, an index `*.json` file, or a directory holding
    /// `model.safetensors.index.json`, `model.safetensors`, or any `*.safetensors` shards (in
    /// that order of preference).
    /// Reads `config.json` beside them, if present, for MLX quantization parameters.
    pub fn open(dir_or_file: &Path) -> Result<SafetensorsModel> {
        let meta = std::fs::metadata(dir_or_file).map_err(|e| Error::io(dir_or_file, e))?;
        let parent = || dir_or_file.parent().unwrap_or(Path::new(".")).to_path_buf();
        let (dir, files, index) = if meta.is_dir() {
            shard_files(dir_or_file)?
        } else if dir_or_file.extension().is_some_and(|x| x == "json") {
            indexed_shards(&parent(), dir_or_file)?
        } else {
            (parent(), vec![dir_or_file.to_path_buf()], None)
        };
        let mut model = SafetensorsModel {
            quantization: read_quantization(&dir.join("config.json"))?,
            dir,
            shards: Vec::new(),
            tensors: BTreeMap::new(),
        };
        for file in &files {
            model.add_shard(file)?;
        }
        if let Some((index_path, weight_map)) = index {
            model.check_index(&index_path, &weight_map)?;
        }
        model.check_quantized()?;
        Ok(model)
    }

    /// The checkpoint's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The shard files, in the order they were opened.
    pub fn shard_paths(&self) -> impl Iterator<Item = &Path> {
        self.shards.iter().map(|m| m.path())
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The tensor `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<SafeTensor<'_>> {
        let (name, e) = self.tensors.get_key_value(name)?;
        let bytes = self.shards[e.shard].bytes().get(e.start..e.end)?;
        Some(SafeTensor {
            name,
            dtype: e.dtype,
            shape: e.shape.clone(),
            bytes,
        })
    }

    /// The map holding tensor `name`: the owner to pass to a zero-copy MLX array.
    pub fn mapping_for(&self, name: &str) -> Option<Arc<MappedFile>> {
        let e = self.tensors.get(name)?;
        Some(Arc::clone(&self.shards[e.shard]))
    }

    /// `(group_size, bits)` of an MLX-quantized checkpoint (from `config.json`'s
    /// `quantization`, whose presence `*.scales`/`*.biases` tensors require), else `None`.
    pub fn quantization(&self) -> Option<(u32, u32)> {
        self.quantization
    }

    /// Maps one shard, validates its header and adds its tensors (names must be new).
    fn add_shard(&mut self, path: &Path) -> Result<()> {
        let map = Arc::new(MappedFile::open(path)?);
        let shard = self.shards.len();
        for (name, mut entry) in parse_header(path, map.bytes())? {
            entry.shard = shard;
            if let Some(other) = self.tensors.get(&name) {
                let first = self.shards[other.shard].path().display();
                return Err(Error::format(
                    path,
                    format!("tensor '{name}' is also in {first}"),
                ));
            }
            self.tensors.insert(name, entry);
        }
        self.shards.push(map);
        Ok(())
    }

    /// Every tensor the index names must be in the shard it names.
    fn check_index(&self, index: &Path, weight_map: &BTreeMap<String, String>) -> Result<()> {
        for (name, file) in weight_map {
            let found = self.tensors.get(name).map(|e| self.shards[e.shard].path());
            if found.and_then(Path::file_name) != Some(file.as_ref()) {
                return Err(Error::format(
                    index,
                    format!("weight_map puts tensor '{name}' in '{file}', which does not hold it"),
                ));
            }
        }
        Ok(())
    }

    /// For each `X.scales`: `X.weight` (u32) and `X.biases` exist and, with the config's
    /// `(group_size, bits)`, the packed and group shapes agree.
    fn check_quantized(&self) -> Result<()> {
        for name in self.names() {
            let Some(base) = name.strip_suffix(".scales") else {
                continue;
            };
            let Some((group_size, bits)) = self.quantization else {
                return Err(self.format_error(format!(
                    "tensor '{name}' looks MLX-quantized, but config.json has no \
                     quantization {{group_size, bits}}"
                )));
            };
            self.check_quantized_tensor(base, group_size, bits)?;
        }
        Ok(())
    }

    /// The checks of [`Self::check_quantized`] for one `base` name.
    fn check_quantized_tensor(&self, base: &str, group_size: u32, bits: u32) -> Result<()> {
        let get = |suffix: &str| {
            let name = format!("{base}.{suffix}");
            self.tensor(&name)
                .ok_or_else(|| self.format_error(format!("'{base}.scales' has no '{name}'")))
        };
        let (weight, scales, _biases) = (get("weight")?, get("scales")?, get("biases")?);
        let packed_cols = weight.shape.last().copied().unwrap_or(0);
        let groups = scales.shape.last().copied().unwrap_or(0);
        let consistent = weight.dtype == Dtype::U32
            && packed_cols.checked_mul(32) == groups.checked_mul(i64::from(group_size * bits));
        if !consistent {
            return Err(self.format_error(format!(
                "'{base}.weight' ({:?} {:?}) and '{base}.scales' ({:?}) do not match \
                 MLX quantization with group_size {group_size}, bits {bits}",
                weight.dtype, weight.shape, scales.shape
            )));
        }
        Ok(())
    }

    /// A `Format` error for the checkpoint directory.
    fn format_error(&self, message: String) -> Error {
        Error::format(&self.dir, message)
    }
}

/// The index's `weight_map` (tensor → shard file name).
type WeightMap = BTreeMap<String, String>;

/// A checkpoint's directory, shard files, and index (path and weight map) if sharded.
type Layout = (PathBuf, Vec<PathBuf>, Option<(PathBuf, WeightMap)>);

/// The shard files of a checkpoint directory, and its index if sharded.
fn shard_files(dir: &Path) -> Result<Layout> {
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        return indexed_shards(dir, &index);
    }
    if dir.join(SINGLE_FILE).is_file() {
        return Ok((dir.to_path_buf(), vec![dir.join(SINGLE_FILE)], None));
    }
    let files = list_safetensors(dir)?;
    if files.is_empty() {
        return Err(Error::format(
            dir,
            "no .safetensors files in this directory",
        ));
    }
    Ok((dir.to_path_buf(), files, None))
}

/// The shards an index file names (each once, sorted), in the index's directory.
fn indexed_shards(dir: &Path, index: &Path) -> Result<Layout> {
    let weight_map = read_weight_map(index)?;
    let mut files: Vec<&String> = weight_map.values().collect();
    files.sort();
    files.dedup();
    let files = files.into_iter().map(|f| dir.join(f)).collect();
    Ok((
        dir.to_path_buf(),
        files,
        Some((index.to_path_buf(), weight_map)),
    ))
}

/// The `*.safetensors` files directly in `dir`, sorted.
fn list_safetensors(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_file() && path.extension().is_some_and(|x| x == "safetensors") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads and parses a JSON file.
fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, format!("invalid JSON: {e}")))
}

/// `weight_map` of an index file; shard names must be plain file names.
fn read_weight_map(index: &Path) -> Result<WeightMap> {
    let json = read_json(index)?;
    let map = json
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::format(index, "no \"weight_map\" object"))?;
    let mut out = BTreeMap::new();
    for (name, file) in map {
        let file = file
            .as_str()
            .filter(|f| is_plain_file_name(f))
            .ok_or_else(|| {
                Error::format(
                    index,
                    format!("weight_map entry '{name}' is not a plain file name: {file}"),
                )
            })?;
        out.insert(name.clone(), file.to_owned());
    }
    Ok(out)
}

/// A shard name must stay inside the checkpoint directory.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

/// `(group_size, bits)` from `config.json`'s `quantization` (or `quantization_config`);
/// `None` when the file or the section is absent.
fn read_quantization(config: &Path) -> Result<Option<(u32, u32)>> {
    if !config.is_file() {
        return Ok(None);
    }
    let json = read_json(config)?;
    let Some(q) = json
        .get("quantization")
        .or_else(|| json.get("quantization_config"))
    else {
        return Ok(None);
    };
    let field = |key: &str| {
        q.get(key)
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| Error::format(config, format!("quantization.{key} is not an integer")))
    };
    let (group_size, bits) = (field("group_size")?, field("bits")?);
    if !matches!(bits, 2..=6 | 8) || group_size == 0 || !group_size.is_multiple_of(32) {
        return Err(Error::format(
            config,
            format!("unsupported MLX quantization: group_size {group_size}, bits {bits}"),
        ));
    }
    Ok(Some((group_size, bits)))
}

/// Parses and validates one file's header; returns the tensors (shard index left 0).
fn parse_header(path: &Path, bytes: &[u8]) -> Result<Vec<(String, Entry)>> {
    let err = |m: String| Error::format(path, m);
    let len = bytes.len() as u64;
    let header_len = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        .ok_or_else(|| err(format!("truncated: {len} bytes, no 8-byte header length")))?;
    if header_len > len - 8 || header_len > MAX_HEADER_BYTES {
        return Err(err(format!(
            "header length {header_len} exceeds the file ({len} bytes) or the {MAX_HEADER_BYTES}-byte limit"
        )));
    }
    let data_start = 8 + header_len as usize;
    let header: Value = serde_json::from_slice(&bytes[8..data_start])
        .map_err(|e| err(format!("header is not valid JSON: {e}")))?;
    let object = header
        .as_object()
        .ok_or_else(|| err("header is not a JSON object".into()))?;
    let data_len = bytes.len() - data_start;
    let mut entries = Vec::new();
    for (name, value) in object {
        if name == "__metadata__" {
            continue;
        }
        let mut entry = parse_entry(path, name, value, data_len)?;
        entry.start += data_start;
        entry.end += data_start;
        entries.push((name.clone(), entry));
    }
    check_overlaps(path, &mut entries)?;
    Ok(entries)
}

/// One header entry: `{dtype, shape, data_offsets}`, offsets relative to the data section.
fn parse_entry(path: &Path, name: &str, value: &Value, data_len: usize) -> Result<Entry> {
    let err = |m: String| Error::format(path, format!("tensor '{name}': {m}"));
    let fields = value
        .as_object()
        .ok_or_else(|| err("entry is not a JSON object".into()))?;
    let dtype = parse_dtype(fields).map_err(err)?;
    let shape = parse_shape(fields).map_err(err)?;
    let (begin, end) = parse_offsets(fields).map_err(err)?;
    if end > data_len as u64 {
        return Err(err(format!(
            "data_offsets [{begin}, {end}] run past the {data_len} data bytes in the file"
        )));
    }
    let expected = shape
        .iter()
        .try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| err(format!("shape {shape:?} overflows")))?;
    if end - begin != expected {
        return Err(err(format!(
            "data_offsets [{begin}, {end}] hold {} bytes, but {dtype:?} {shape:?} needs {expected}",
            end - begin
        )));
    }
    Ok(Entry {
        shard: 0,
        dtype,
        shape,
        start: begin as usize,
        end: end as usize,
    })
}

/// The `dtype` field, as an MLX dtype.
fn parse_dtype(fields: &Map<String, Value>) -> Result<Dtype, String> {
    let name = fields
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or("no \"dtype\" string")?;
    Ok(match name {
        "F32" => Dtype::F32,
        "F16" => Dtype::F16,
        "BF16" => Dtype::BF16,
        "F64" => Dtype::F64,
        "U32" => Dtype::U32,
        "I32" => Dtype::I32,
        "U8" => Dtype::U8,
        "I8" => Dtype::I8,
        "U16" => Dtype::U16,
        "I16" => Dtype::I16,
        "U64" => Dtype::U64,
        "I64" => Dtype::I64,
        "BOOL" => Dtype::Bool,
        other => return Err(format!("unsupported dtype {other}")),
    })
}

/// The `shape` field: non-negative integers that fit in i64.
fn parse_shape(fields: &Map<String, Value>) -> Result<Vec<i64>, String> {
    let dims = fields
        .get("shape")
        .and_then(Value::as_array)
        .ok_or("no \"shape\" array")?;
    dims.iter()
        .map(|d| {
            d.as_u64()
                .and_then(|d| i64::try_from(d).ok())
                .ok_or_else(|| format!("shape entry {d} is not a non-negative integer"))
        })
        .collect()
}

/// The `data_offsets` field: `[begin, end]` with begin ≤ end.
fn parse_offsets(fields: &Map<String, Value>) -> Result<(u64, u64), String> {
    let pair = fields
        .get("data_offsets")
        .and_then(Value::as_array)
        .filter(|a| a.len() == 2)
        .ok_or("no \"data_offsets\" [begin, end] pair")?;
    match (pair[0].as_u64(), pair[1].as_u64()) {
        (Some(b), Some(e)) if b <= e => Ok((b, e)),
        _ => Err(format!(
            "data_offsets [{}, {}] are not integers with begin ≤ end",
            pair[0], pair[1]
        )),
    }
}

/// No two non-empty tensors of a file may share bytes.
fn check_overlaps(path: &Path, entries: &mut [(String, Entry)]) -> Result<()> {
    entries.sort_by_key(|(_, e)| (e.start, e.end));
    let mut last: Option<&(String, Entry)> = None;
    for item in entries.iter().filter(|(_, e)| e.end > e.start) {
        if let Some((prev, p)) = last {
            if p.end > item.1.start {
                return Err(Error::format(
                    path,
                    format!("tensor '{prev}' overlaps tensor '{}'", item.0),
                ));
            }
        }
        last = Some(item);
    }
    Ok(())
}
