//! GGUF reader (versions 2 and 3, little-endian), treating every file as hostile.
//!
//! Layout: `"GGUF"`, `version: u32`, `tensor_count: u64`, `kv_count: u64`, the key/value
//! metadata, the tensor-info records, padding to `general.alignment` (default 32), then the
//! tensor data; each tensor's `offset` is relative to the start of that data section.
//!
//! Before any slice of the map is handed out, every count and length is bounded by the bytes
//! left in the file, all size arithmetic is checked, keys and tensor names must be unique, the
//! alignment must be a power of two, and each tensor must have 1–4 dimensions (all ≥ 1), a
//! known ggml type, rows that are whole blocks, an aligned offset, and its bytes inside the file
//! without overlapping another tensor. `tests/gguf_bad_files.rs` has a bad file for each check.
#![forbid(unsafe_code)]

use crate::error::{Error, Result};
use crate::ggml_type::GgmlType;
use crate::loader::mmap::MappedFile;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The four magic bytes that open every GGUF file.
const MAGIC: &[u8; 4] = b"GGUF";
/// Data-section alignment when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
/// Deepest array nesting accepted (an array of arrays is depth 2).
const MAX_ARRAY_DEPTH: usize = 4;
/// Most metadata values (array elements included) kept in memory: a bound on what a hostile
/// file can make us allocate (~32 bytes per value). Real vocabularies hold < 1M strings.
const MAX_METADATA_VALUES: u64 = 1 << 23;
/// Fewest bytes a tensor-info record can take: name length, n_dims, type, offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8;
/// Fewest bytes a key/value pair can take: key length, value type, a one-byte value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;

/// One metadata value. GGUF value type ids: u8 0, i8 1, u16 2, i16 3, u32 4, i32 5, f32 6,
/// bool 7, string 8, array 9, u64 10, i64 11, f64 12.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    /// GGUF type 0.
    U8(u8),
    /// GGUF type 1.
    I8(i8),
    /// GGUF type 2.
    U16(u16),
    /// GGUF type 3.
    I16(i16),
    /// GGUF type 4.
    U32(u32),
    /// GGUF type 5.
    I32(i32),
    /// GGUF type 10.
    U64(u64),
    /// GGUF type 11.
    I64(i64),
    /// GGUF type 6.
    F32(f32),
    /// GGUF type 12.
    F64(f64),
    /// GGUF type 7 (one byte, 0 or 1).
    Bool(bool),
    /// GGUF type 8 (u64 length + UTF-8 bytes).
    String(String),
    /// GGUF type 9 (element type + u64 count + elements); all elements share one type.
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// Any integer value that is ≥ 0, as u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            _ => self.as_i64().and_then(|v| u64::try_from(v).ok()),
        }
    }

    /// Any integer value that fits in i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::I32(v) => Some(v.into()),
            MetaValue::U64(v) => i64::try_from(v).ok(),
            MetaValue::I64(v) => Some(v),
            _ => None,
        }
    }

    /// Any numeric value (integer or float) as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            MetaValue::U64(v) => Some(v as f64),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The string, for a string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The flag, for a bool value.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The elements, for an array value.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(items) => Some(items),
            _ => None,
        }
    }

    /// The GGUF type name ("u32", "string", "array", …), for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "u8",
            MetaValue::I8(_) => "i8",
            MetaValue::U16(_) => "u16",
            MetaValue::I16(_) => "i16",
            MetaValue::U32(_) => "u32",
            MetaValue::I32(_) => "i32",
            MetaValue::U64(_) => "u64",
            MetaValue::I64(_) => "i64",
            MetaValue::F32(_) => "f32",
            MetaValue::F64(_) => "f64",
            MetaValue::Bool(_) => "bool",
            MetaValue::String(_) => "string",
            MetaValue::Array(_) => "array",
        }
    }

    /// "type u32 (value 7)" for scalars, "type string" otherwise: what error messages show.
    fn describe(&self) -> String {
        match self {
            MetaValue::String(_) | MetaValue::Array(_) => format!("type {}", self.type_name()),
            MetaValue::Bool(b) => format!("type bool (value {b})"),
            _ => match self.as_f64() {
                Some(v) => format!("type {} (value {v})", self.type_name()),
                None => format!("type {}", self.type_name()),
            },
        }
    }
}

/// One tensor's record: where its bytes are and how to read them.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// The tensor's name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// ggml order: `dims[0]` = ne0 = the row length (innermost, contiguous); 1 to 4 entries.
    pub dims: Vec<u64>,
    /// The element/block type.
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the data in the file (already validated and aligned).
    pub offset: u64,
    /// Bytes of data: `n_rows · ggml_type.row_bytes(row_len)`.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Elements per row (ne0).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows: the product of all dims but the first.
    pub fn n_rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }

    /// Total elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The row-major (MLX/NumPy) shape: the dims reversed, so a GGUF `[ne0, ne1]` weight is
    /// `[ne1, ne0]` = `[out_features, in_features]`.
    pub fn shape_rowmajor(&self) -> Vec<i64> {
        self.dims.iter().rev().map(|&d| d as i64).collect()
    }
}

/// An open, validated GGUF file: its metadata, its tensor records, and the memory map the
/// tensor bytes are read from in place.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    version: u32,
    map: Arc<MappedFile>,
    metadata: BTreeMap<String, MetaValue>,
    key_order: Vec<String>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl GgufFile {
    /// Maps and validates `path`. Every error names the file and the problem.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let map = Arc::new(MappedFile::open(path)?);
        let parsed = Parser::new(path, map.bytes()).parse()?;
        let by_name = parsed
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(GgufFile {
            path: path.to_path_buf(),
            version: parsed.version,
            map,
            metadata: parsed.metadata,
            key_order: parsed.key_order,
            tensors: parsed.tensors,
            by_name,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
        })
    }

    /// The path the file was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// All metadata, sorted by key (see [`GgufFile::keys_in_file_order`] for file order).
    pub fn metadata(&self) -> &BTreeMap<String, MetaValue> {
        &self.metadata
    }

    /// The metadata keys in the order the file lists them.
    pub fn keys_in_file_order(&self) -> impl Iterator<Item = &str> {
        self.key_order.iter().map(String::as_str)
    }

    /// The data-section alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset of the tensor-data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// The value of `key`, or "metadata key 'k' is missing".
    fn require(&self, key: &str) -> Result<&MetaValue> {
        self.get(key)
            .ok_or_else(|| Error::format(&self.path, format!("metadata key '{key}' is missing")))
    }

    /// "metadata key 'k' has type string, expected an integer".
    fn wrong_type(&self, key: &str, found: &MetaValue, expected: &str) -> Error {
        let found = found.describe();
        Error::format(
            &self.path,
            format!("metadata key '{key}' has {found}, expected {expected}"),
        )
    }

    /// Reads `key` through `convert`, naming the file, key and `expected` kind on failure.
    fn get_as<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        convert: impl Fn(&'a MetaValue) -> Option<T>,
    ) -> Result<T> {
        let value = self.require(key)?;
        convert(value).ok_or_else(|| self.wrong_type(key, value, expected))
    }

    /// A non-negative integer value.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get_as(key, "a non-negative integer", MetaValue::as_u64)
    }

    /// Any numeric value, as f64.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.get_as(key, "a number", MetaValue::as_f64)
    }

    /// An optional non-negative integer: `default` when the key is absent, an error when it
    /// holds something else.
    pub fn get_u64_or(&self, key: &str, default: u64) -> Result<u64> {
        match self.get(key) {
            Some(_) => self.get_u64(key),
            None => Ok(default),
        }
    }

    /// An optional number, as f64: `default` when the key is absent, an error when it holds
    /// something else.
    pub fn get_f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            Some(_) => self.get_f64(key),
            None => Ok(default),
        }
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.get_as(key, "a string", MetaValue::as_str)
    }

    /// A bool value.
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        self.get_as(key, "a bool", MetaValue::as_bool)
    }

    /// An array whose elements all convert with `convert`; errors name the bad element.
    fn get_array<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        convert: impl Fn(&'a MetaValue) -> Option<T>,
    ) -> Result<Vec<T>> {
        let items = self.get_as(key, &format!("an array of {expected}"), MetaValue::as_array)?;
        let element = |(i, v): (usize, &'a MetaValue)| {
            convert(v).ok_or_else(|| self.wrong_type(&format!("{key}[{i}]"), v, expected))
        };
        items.iter().enumerate().map(element).collect()
    }

    /// An array of strings (e.g. `tokenizer.ggml.tokens`).
    pub fn get_str_array(&self, key: &str) -> Result<Vec<String>> {
        self.get_array(key, "strings", |v| v.as_str().map(str::to_owned))
    }

    /// An array of numbers, as f32 (e.g. `tokenizer.ggml.scores`).
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        self.get_array(key, "numbers", |v| v.as_f64().map(|x| x as f32))
    }

    /// An array of integers that fit in i32 (e.g. `tokenizer.ggml.token_type`).
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>> {
        self.get_array(key, "i32 integers", |v| {
            v.as_i64().and_then(|x| i32::try_from(x).ok())
        })
    }

    /// `general.architecture` (e.g. "llama", "qwen2").
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    /// All tensor records, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The record of tensor `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of `t` in the map (empty if `t` does not describe this file's data).
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        let start = usize::try_from(t.offset).unwrap_or(usize::MAX);
        let len = usize::try_from(t.n_bytes).unwrap_or(usize::MAX);
        start
            .checked_add(len)
            .and_then(|end| self.map.bytes().get(start..end))
            .unwrap_or(&[])
    }

    /// The memory map, to pass as the owner of zero-copy MLX arrays over [`Self::tensor_bytes`].
    pub fn mapping(&self) -> Arc<MappedFile> {
        Arc::clone(&self.map)
    }
}

/// What the parser produces.
struct Parsed {
    version: u32,
    metadata: BTreeMap<String, MetaValue>,
    key_order: Vec<String>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    data_offset: u64,
}

/// A bounds-checked little-endian reader over the whole file.
struct Parser<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
    /// Metadata values read so far (bounded by [`MAX_METADATA_VALUES`]).
    values: u64,
}

impl<'a> Parser<'a> {
    /// A parser at the start of `bytes`, the contents of `path`.
    fn new(path: &'a Path, bytes: &'a [u8]) -> Parser<'a> {
        Parser {
            path,
            bytes,
            pos: 0,
            values: 0,
        }
    }

    /// A `Format` error for this file.
    fn err(&self, message: impl Into<String>) -> Error {
        Error::format(self.path, message)
    }

    /// Bytes not yet read.
    fn left(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    /// The next `n` bytes, or "truncated file: {what} needs n bytes at offset …".
    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.left() {
            let (at, left) = (self.pos, self.left());
            return Err(self.err(format!(
                "truncated file: {} needs {n} bytes at offset {at}, only {left} left",
                what()
            )));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    /// The next N bytes as an array.
    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    /// A little-endian u32.
    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    /// A little-endian u64.
    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A GGUF string: u64 length (bounded by the bytes left) + UTF-8 bytes.
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let len = self.u64(what)?;
        if len > self.left() {
            let left = self.left();
            return Err(self.err(format!(
                "{}: string length {len} exceeds the {left} bytes left in the file",
                what()
            )));
        }
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| self.err(format!("{}: string is not valid UTF-8", what())))
    }

    /// The whole file, section by section, then the checks that need all tensor records.
    fn parse(mut self) -> Result<Parsed> {
        let version = self.header()?;
        let (n_tensors, n_kv) = self.counts()?;
        let (metadata, key_order) = self.metadata(n_kv)?;
        let alignment = self.alignment(&metadata)?;
        let mut tensors = self.tensor_infos(n_tensors, alignment)?;
        let data_offset = self.data_offset(alignment, !tensors.is_empty())?;
        for t in &mut tensors {
            self.place(t, data_offset)?;
        }
        self.check_overlaps(&tensors)?;
        Ok(Parsed {
            version,
            metadata,
            key_order,
            tensors,
            alignment,
            data_offset,
        })
    }

    /// Magic and version: v2 and v3 are read; v1, other versions and big-endian files are not.
    fn header(&mut self) -> Result<u32> {
        if self.bytes.is_empty() {
            return Err(self.err("empty file (0 bytes), not a GGUF file"));
        }
        let magic: [u8; 4] = self.array(&|| "the GGUF magic".into())?;
        if &magic != MAGIC {
            return Err(self.err(format!(
                "not a GGUF file: bad magic {magic:02x?} ({:?}), expected \"GGUF\"",
                String::from_utf8_lossy(&magic)
            )));
        }
        let version = self.u32(&|| "the GGUF version".into())?;
        match version {
            2 | 3 => Ok(version),
            1 => Err(self.err("GGUF version 1 is not supported (only versions 2 and 3)")),
            v if matches!(v.swap_bytes(), 1..=3) => Err(self.err(format!(
                "big-endian GGUF file (version field {v:#010x}); only little-endian files are supported"
            ))),
            v => Err(self.err(format!(
                "unsupported GGUF version {v} (only versions 2 and 3)"
            ))),
        }
    }

    /// Tensor and key/value counts, each bounded by what the rest of the file could hold.
    fn counts(&mut self) -> Result<(u64, u64)> {
        let n_tensors = self.u64(&|| "the tensor count".into())?;
        let n_kv = self.u64(&|| "the metadata key/value count".into())?;
        let left = self.left();
        if n_tensors > left / MIN_TENSOR_INFO_BYTES {
            return Err(self.err(format!(
                "tensor count {n_tensors} is impossible: the {left} bytes after the header hold at most {} tensor records",
                left / MIN_TENSOR_INFO_BYTES
            )));
        }
        if n_kv > left / MIN_KV_BYTES {
            return Err(self.err(format!(
                "metadata key/value count {n_kv} is impossible: the {left} bytes after the header hold at most {} pairs",
                left / MIN_KV_BYTES
            )));
        }
        Ok((n_tensors, n_kv))
    }

    /// The key/value section; duplicate keys are an error.
    fn metadata(&mut self, n_kv: u64) -> Result<(BTreeMap<String, MetaValue>, Vec<String>)> {
        let mut map = BTreeMap::new();
        let mut order = Vec::new();
        for i in 0..n_kv {
            let key = self.string(&|| format!("metadata key #{i}"))?;
            let what = || format!("metadata key '{key}'");
            let value_type = self.u32(&what)?;
            let value = self.value(value_type, 1, &what)?;
            if map.contains_key(&key) {
                return Err(self.err(format!("duplicate metadata key '{key}'")));
            }
            order.push(key.clone());
            map.insert(key, value);
        }
        Ok((map, order))
    }

    /// Counts one more metadata value against [`MAX_METADATA_VALUES`].
    fn count_values(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<()> {
        self.values = self.values.saturating_add(n);
        if self.values > MAX_METADATA_VALUES {
            return Err(self.err(format!(
                "{}: more than {MAX_METADATA_VALUES} metadata values in the file",
                what()
            )));
        }
        Ok(())
    }

    /// One value of GGUF type `ty`; `depth` is 1 for a top-level value.
    fn value(&mut self, ty: u32, depth: usize, what: &dyn Fn() -> String) -> Result<MetaValue> {
        self.count_values(1, what)?;
        self.read_value(ty, depth, what)
    }

    /// One value, already counted (array elements are counted with their array).
    fn read_value(
        &mut self,
        ty: u32,
        depth: usize,
        what: &dyn Fn() -> String,
    ) -> Result<MetaValue> {
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>(what)?[0]),
            1 => MetaValue::I8(i8::from_le_bytes(self.array(what)?)),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => MetaValue::U32(self.u32(what)?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => MetaValue::Bool(self.bool(what)?),
            8 => MetaValue::String(self.string(what)?),
            9 => MetaValue::Array(self.meta_array(depth, what)?),
            10 => MetaValue::U64(self.u64(what)?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(what)?)),
            other => {
                return Err(self.err(format!("{}: unknown metadata value type {other}", what())))
            }
        })
    }

    /// A bool byte, which must be 0 or 1.
    fn bool(&mut self, what: &dyn Fn() -> String) -> Result<bool> {
        match self.array::<1>(what)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.err(format!("{}: bool byte is {b}, expected 0 or 1", what()))),
        }
    }

    /// An array value: element type, count (bounded by the bytes left), elements.
    fn meta_array(&mut self, depth: usize, what: &dyn Fn() -> String) -> Result<Vec<MetaValue>> {
        let elem_type = self.u32(what)?;
        let count = self.u64(what)?;
        let min_size = min_value_bytes(elem_type).ok_or_else(|| {
            self.err(format!(
                "{}: unknown array element type {elem_type}",
                what()
            ))
        })?;
        if elem_type == 9 && depth >= MAX_ARRAY_DEPTH {
            return Err(self.err(format!(
                "{}: arrays nested more than {MAX_ARRAY_DEPTH} deep",
                what()
            )));
        }
        let left = self.left();
        if count > left / min_size {
            return Err(self.err(format!(
                "{}: array of {count} elements cannot fit in the {left} bytes left in the file",
                what()
            )));
        }
        self.count_values(count, what)?;
        let mut items = Vec::with_capacity(count as usize);
        for _ in 0..count {
            items.push(self.read_value(elem_type, depth + 1, what)?);
        }
        Ok(items)
    }

    /// `general.alignment`: a nonzero power of two, default 32.
    fn alignment(&self, metadata: &BTreeMap<String, MetaValue>) -> Result<u64> {
        let Some(value) = metadata.get("general.alignment") else {
            return Ok(DEFAULT_ALIGNMENT);
        };
        match value.as_u64() {
            Some(a) if a.is_power_of_two() => Ok(a),
            _ => Err(self.err(format!(
                "general.alignment has {}, expected a nonzero power of two",
                value.describe()
            ))),
        }
    }

    /// The tensor-info records; names must be unique.
    fn tensor_infos(&mut self, n: u64, alignment: u64) -> Result<Vec<TensorInfo>> {
        let mut seen = HashMap::new();
        let mut tensors = Vec::new();
        for i in 0..n {
            let t = self.tensor_info(i, alignment)?;
            if seen.insert(t.name.clone(), i).is_some() {
                return Err(self.err(format!("duplicate tensor name '{}'", t.name)));
            }
            tensors.push(t);
        }
        Ok(tensors)
    }

    /// One record; `offset` is still relative to the data section here.
    fn tensor_info(&mut self, index: u64, alignment: u64) -> Result<TensorInfo> {
        let name = self.string(&|| format!("tensor #{index} name"))?;
        let what = || format!("tensor '{name}'");
        let n_dims = self.u32(&what)?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(self.err(format!(
                "tensor '{name}': {n_dims} dimensions, expected 1 to {MAX_DIMS}"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64(&what)?);
        }
        let type_id = self.u32(&what)?;
        let offset = self.u64(&what)?;
        let ggml_type = GgmlType::from_id(type_id)
            .ok_or_else(|| self.err(format!("tensor '{name}': unknown ggml type id {type_id}")))?;
        let n_bytes = self.tensor_size(&name, &dims, ggml_type)?;
        if !offset.is_multiple_of(alignment) {
            return Err(self.err(format!(
                "tensor '{name}': data offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        Ok(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            n_bytes,
        })
    }

    /// Bytes of a tensor: dims ≥ 1, element count overflow-checked (and within i64, as ggml
    /// requires), rows a whole number of blocks.
    fn tensor_size(&self, name: &str, dims: &[u64], ty: GgmlType) -> Result<u64> {
        if dims.contains(&0) {
            return Err(self.err(format!("tensor '{name}': dims {dims:?} contain a zero")));
        }
        let overflow = || self.err(format!("tensor '{name}': dims {dims:?} overflow"));
        let elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(overflow)?;
        let row_len = dims[0];
        let row_bytes = ty.row_bytes(row_len).ok_or_else(|| {
            self.err(format!(
                "tensor '{name}': row length {row_len} is not a multiple of the {ty} block size {}",
                ty.block_size()
            ))
        })?;
        (elements / row_len)
            .checked_mul(row_bytes)
            .ok_or_else(overflow)
    }

    /// Start of the data section: the end of the records, rounded up to the alignment.
    fn data_offset(&self, alignment: u64, has_tensors: bool) -> Result<u64> {
        let end = self.pos as u64;
        let start = end
            .checked_next_multiple_of(alignment)
            .ok_or_else(|| self.err("data section offset overflows"))?;
        let len = self.bytes.len() as u64;
        if has_tensors && start > len {
            return Err(self.err(format!(
                "truncated file: the data section would start at {start}, past the end ({len} bytes)"
            )));
        }
        Ok(start)
    }

    /// Makes `t.offset` absolute and checks that its bytes lie inside the file.
    fn place(&self, t: &mut TensorInfo, data_offset: u64) -> Result<()> {
        let len = self.bytes.len() as u64;
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.n_bytes));
        match (start, end) {
            (Some(start), Some(end)) if end <= len => {
                t.offset = start;
                Ok(())
            }
            _ => Err(self.err(format!(
                "tensor '{}': data at offset {} + {} bytes runs past the end of the file ({len} bytes)",
                t.name,
                data_offset.saturating_add(t.offset),
                t.n_bytes
            ))),
        }
    }

    /// No two tensors may share bytes.
    fn check_overlaps(&self, tensors: &[TensorInfo]) -> Result<()> {
        let mut sorted: Vec<&TensorInfo> = tensors.iter().collect();
        sorted.sort_by_key(|t| t.offset);
        for pair in sorted.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if a.offset + a.n_bytes > b.offset {
                return Err(self.err(format!(
                    "tensor '{}' (bytes {}..{}) overlaps tensor '{}' (starting at {})",
                    a.name,
                    a.offset,
                    a.offset + a.n_bytes,
                    b.name,
                    b.offset
                )));
            }
        }
        Ok(())
    }
}

/// The fewest bytes one value of GGUF type `ty` occupies (None for an unknown type).
fn min_value_bytes(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,
        9 => 12,
        10..=12 => 8,
        _ => return None,
    })
}
