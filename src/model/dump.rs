//! Per-layer tensor dumps of forward passes, so a run can be diffed against a reference layer
//! by layer (`tests/reference/forward.py --dump`, `tests/reference/diff_dump.py`).
//!
//! Switch: `MLX_ENGINE_DUMP=DIR`, read once per process (at the first forward call). Every
//! forward call n (counted from 0 in the process) is then written to `DIR/forward-NNNN.npz`
//! (`DIR` is created if missing) for the first `MLX_ENGINE_DUMP_CALLS` calls (default
//! [`DEFAULT_DUMP_CALLS`]; each holds the logits, so a long generation would otherwise fill the
//! disk). With the variable unset or empty nothing is recorded and the graph is the same as
//! without this module.
//!
//! Format: a NumPy `.npz` archive (zip, stored, no compression) of `.npy` v1.0 members, one per
//! tensor, float32 little-endian, C order, in the order the forward pass produced them. Every
//! tensor is two-dimensional, `[rows, features]`, with rows = B·L (sequence-major) or B for the
//! last-position-only tensors. Names follow llama.cpp's graph callbacks, `NAME-IL` for layer IL:
//!
//! | name | tensor | paths |
//! | --- | --- | --- |
//! | `inp_embd` | embedding rows | all |
//! | `inp_scaled` | embedding · √D (Gemma 3) | all |
//! | `attn_norm-IL` | RMSNorm(x) · attn_norm | not with GGUF-block weights (fused into the projections) |
//! | `Qcur-IL`, `Kcur-IL`, `Vcur-IL` | projections (+ bias), before Q/K norm and RoPE | all |
//! | `kqv_out-IL` | attention output, heads merged, before `attn_output` | all |
//! | `attn_post_norm-IL` | RMSNorm of the attention output (Gemma 3) | all |
//! | `ffn_inp-IL` | x + attention | all |
//! | `ffn_norm-IL` | RMSNorm(ffn_inp) · ffn_norm | not with GGUF-block gate/up (fused) |
//! | `ffn_swiglu-IL` / `ffn_geglu-IL` | act(gate) · up | all |
//! | `ffn_post_norm-IL` | RMSNorm of the MLP output (Gemma 3) | all |
//! | `l_out-IL` | ffn_inp + MLP: the block's output | all |
//! | `result_norm` | RMSNorm(x) · output_norm | all |
//! | `result_output` | logits | all |
//!
//! Recording holds a handle on each tensor until the pass is evaluated and written, so a fused
//! op that could reuse its input's buffer copies it instead; values are unchanged.

use crate::error::{Error, Result};
use crate::mlx::{ops, transforms, Array, Dtype};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// The environment variable that turns dumping on: the directory the dumps go to.
pub const DUMP_VAR: &str = "MLX_ENGINE_DUMP";

/// How many forward calls are dumped unless `MLX_ENGINE_DUMP_CALLS` says otherwise.
pub const DEFAULT_DUMP_CALLS: usize = 8;

/// The dump directory, the number of forward calls seen and how many to dump, when the switch
/// is on.
struct Switch {
    dir: PathBuf,
    calls: AtomicUsize,
    max_calls: usize,
}

/// The switch as read from the environment on first use (never re-read).
fn switch() -> Option<&'static Switch> {
    static SWITCH: OnceLock<Option<Switch>> = OnceLock::new();
    SWITCH
        .get_or_init(|| {
            let dir = std::env::var_os(DUMP_VAR).filter(|v| !v.is_empty())?;
            let max_calls = std::env::var("MLX_ENGINE_DUMP_CALLS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_DUMP_CALLS);
            Some(Switch {
                dir: PathBuf::from(dir),
                calls: AtomicUsize::new(0),
                max_calls,
            })
        })
        .as_ref()
}

/// The directory dumps go to, or `None` when `MLX_ENGINE_DUMP` was unset at the first forward
/// call of the process.
pub fn dump_dir() -> Option<&'static Path> {
    switch().map(|s| s.dir.as_path())
}

/// The intermediates of one forward pass under their llama.cpp names, recorded only when the
/// pass is dumped; when it is not, every method returns at once without allocating.
pub struct Taps {
    recording: Option<Recording>,
}

/// What a dumped pass has recorded, and where it goes.
struct Recording {
    path: PathBuf,
    tensors: Vec<(String, Array)>,
}

impl Taps {
    /// Taps for the next forward call: recording into the next numbered file of the dump
    /// directory when the switch is on, else off.
    pub fn for_next_forward() -> Taps {
        match switch() {
            Some(s) => match s.calls.fetch_add(1, Ordering::Relaxed) {
                n if n < s.max_calls => Taps::to_file(s.dir.join(format!("forward-{n:04}.npz"))),
                _ => Taps::off(),
            },
            None => Taps::off(),
        }
    }

    /// Taps that record nothing.
    pub fn off() -> Taps {
        Taps { recording: None }
    }

    /// Taps that record every intermediate and write them to `path` in [`Taps::finish`].
    pub fn to_file(path: impl Into<PathBuf>) -> Taps {
        Taps {
            recording: Some(Recording {
                path: path.into(),
                tensors: Vec::new(),
            }),
        }
    }

    /// Whether this pass is being recorded.
    pub fn is_on(&self) -> bool {
        self.recording.is_some()
    }

    /// Records `a` as `name` (global tensors) or `name-layer`.
    #[inline]
    pub fn put(&mut self, name: &str, layer: Option<usize>, a: &Array) {
        if let Some(r) = &mut self.recording {
            let name = match layer {
                Some(il) => format!("{name}-{il}"),
                None => name.to_string(),
            };
            r.tensors.push((name, a.clone()));
        }
    }

    /// Evaluates what was recorded and writes it (nothing when off).
    pub fn finish(self) -> Result<()> {
        let Some(r) = self.recording else {
            return Ok(());
        };
        let arrays: Vec<&Array> = r.tensors.iter().map(|(_, a)| a).collect();
        transforms::eval(&arrays)?;
        if let Some(dir) = r.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let mut npz = NpzWriter::create(&r.path)?;
        for (name, a) in &r.tensors {
            let a = match a.dtype()? {
                Dtype::F32 => a.clone(),
                _ => ops::astype(a, Dtype::F32)?,
            };
            npz.add(name, &rows_features(&a.shape()), &a.to_vec::<f32>()?)?;
        }
        npz.finish()
    }
}

/// A shape [.., F] as [rows, F], rows the product of the leading dimensions.
fn rows_features(shape: &[i32]) -> [usize; 2] {
    match shape.split_last() {
        Some((&f, lead)) => [lead.iter().map(|&d| d as usize).product(), f as usize],
        None => [1, 1],
    }
}

/// Writes a NumPy `.npz` archive of float32 arrays: one stored (uncompressed) `NAME.npy`
/// member per [`NpzWriter::add`], readable by `numpy.load`.
pub struct NpzWriter {
    path: PathBuf,
    zip: zip::ZipWriter<BufWriter<File>>,
}

impl NpzWriter {
    /// Creates (or truncates) the archive at `path`.
    pub fn create(path: &Path) -> Result<NpzWriter> {
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        Ok(NpzWriter {
            path: path.to_path_buf(),
            zip: zip::ZipWriter::new(BufWriter::new(file)),
        })
    }

    /// Adds `data` (row-major, `shape`'s product elements) as the member `name.npy`.
    pub fn add(&mut self, name: &str, shape: &[usize], data: &[f32]) -> Result<()> {
        let count = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if count != Some(data.len()) {
            return Err(Error::InvalidArgument(format!(
                "{}: tensor '{name}' has {} values for shape {shape:?}",
                self.path.display(),
                data.len()
            )));
        }
        let header = npy_header(shape);
        let bytes = header.len() as u64 + 4 * data.len() as u64;
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(bytes >= u64::from(u32::MAX));
        let io = |e: std::io::Error| Error::io(&self.path, e);
        self.zip
            .start_file(format!("{name}.npy"), options)
            .map_err(|e| io(std::io::Error::other(e)))?;
        self.zip.write_all(&header).map_err(io)?;
        let mut le = Vec::with_capacity(4 * data.len());
        data.iter()
            .for_each(|v| le.extend_from_slice(&v.to_le_bytes()));
        self.zip.write_all(&le).map_err(io)
    }

    /// Writes the archive's directory and flushes the file.
    pub fn finish(self) -> Result<()> {
        let path = self.path;
        let io = |e: std::io::Error| Error::io(&path, e);
        let mut file = self
            .zip
            .finish()
            .map_err(|e| io(std::io::Error::other(e)))?;
        file.flush().map_err(io)
    }
}

/// The `.npy` v1.0 header of a little-endian float32 C-order array of `shape`: magic, version,
/// header length, then the header dict padded with spaces to a 64-byte boundary and a newline.
fn npy_header(shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let tuple = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple}, }}");
    const PREFIX: usize = 10; // magic (6), version (2), header length (2)
    while !(PREFIX + dict.len() + 1).is_multiple_of(64) {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_padded_to_64_bytes_and_names_the_shape() {
        for shape in [&[3usize][..], &[2, 5], &[1, 151936], &[]] {
            let h = npy_header(shape);
            assert_eq!(h.len() % 64, 0, "{shape:?}");
            assert_eq!(&h[..8], b"\x93NUMPY\x01\x00");
            assert_eq!(u16::from_le_bytes([h[8], h[9]]) as usize, h.len() - 10);
            assert_eq!(h.last(), Some(&b'\n'));
        }
        let text = String::from_utf8(npy_header(&[2, 5])[10..].to_vec()).unwrap();
        assert!(text.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 5), }"));
        let text = String::from_utf8(npy_header(&[3])[10..].to_vec()).unwrap();
        assert!(text.contains("'shape': (3,)"), "{text}");
    }

    #[test]
    fn rows_features_flattens_leading_dimensions() {
        assert_eq!(rows_features(&[2, 3, 7]), [6, 7]);
        assert_eq!(rows_features(&[4]), [1, 4]);
        assert_eq!(rows_features(&[]), [1, 1]);
    }

    #[test]
    fn a_tensor_whose_data_does_not_fill_its_shape_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.npz");
        let mut npz = NpzWriter::create(&path).unwrap();
        let err = npz.add("x", &[2, 3], &[0.0; 5]).unwrap_err().to_string();
        assert!(err.contains("bad.npz") && err.contains("'x'"), "{err}");
    }

    #[test]
    fn taps_off_record_nothing() {
        let mut taps = Taps::off();
        taps.put("l_out", Some(0), &Array::scalar(1.0f32).unwrap());
        assert!(!taps.is_on());
        taps.finish().unwrap();
    }
}
