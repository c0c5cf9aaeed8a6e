//! Reading a model's tensors from a GGUF file into the forms the forward pass uses, checking
//! each tensor's shape and type against what the architecture expects at the load site.

use crate::error::{Error, Result};
use crate::ggml_type::GgmlType;
use crate::loader::gguf::{GgufFile, TensorInfo};
use crate::mlx::{Array, Device, Dtype};
use crate::model::linear::{Linear, LinearWeight};
use crate::quant;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::Arc;

/// How projections execute, chosen once at load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Execution {
    /// CPU, GGUF blocks (as stored in the file) multiplied by our kernel.
    CpuKernel,
    /// CPU, weights dequantized once to float32 and multiplied by MLX's `matmul`.
    CpuDense,
    /// GPU, weights converted to MLX's affine layout for `quantized_matmul`.
    Gpu,
}

impl Execution {
    /// The default for `device`: our kernel on CPU, MLX's quantized matmul on GPU.
    pub fn for_device(device: Device) -> Execution {
        match device {
            Device::Cpu => Execution::CpuKernel,
            Device::Gpu => Execution::Gpu,
        }
    }
}

/// A token embedding [vocab, dim].
pub enum Embedding {
    /// Read in place from a GGUF file; rows are dequantized on lookup.
    Mapped {
        file: Arc<GgufFile>,
        info: TensorInfo,
        dim: usize,
    },
    /// A float32 table in MLX memory.
    Dense { table: Array },
}

impl Embedding {
    /// The embedding rows of `tokens` as a float32 array [tokens.len(), D].
    pub fn lookup(&self, tokens: &[u32]) -> Result<Array> {
        match self {
            Embedding::Mapped { file, info, dim } => lookup_mapped(file, info, *dim, tokens),
            Embedding::Dense { table } => {
                let vocab = table.dim(0)? as u32;
                if let Some(&t) = tokens.iter().find(|&&t| t >= vocab) {
                    return Err(Error::InvalidArgument(format!(
                        "token id {t} is outside the vocabulary of {vocab}"
                    )));
                }
                let ids = Array::from_slice(tokens, &[tokens.len() as i32])?;
                crate::mlx::ops::take(table, &ids, 0)
            }
        }
    }
}

fn lookup_mapped(file: &GgufFile, info: &TensorInfo, dim: usize, tokens: &[u32]) -> Result<Array> {
    let vocab = info.n_rows() as usize;
    if let Some(&t) = tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(Error::InvalidArgument(format!(
            "token id {t} is outside the vocabulary of {vocab}"
        )));
    }
    let mut out = vec![0f32; tokens.len() * dim];
    let rows = tokens.iter().map(|&t| t as usize);
    dequantize_rows(info, file.tensor_bytes(info), rows, &mut out)?;
    Array::from_slice(&out, &[tokens.len() as i32, dim as i32])
}

/// Dequantizes the rows `rows` of a GGUF tensor (`bytes`, as described by `info`) into
/// consecutive rows of `out` (the scalar reference decoders).
fn dequantize_rows(
    info: &TensorInfo,
    bytes: &[u8],
    rows: impl Iterator<Item = usize>,
    out: &mut [f32],
) -> Result<()> {
    let cols = info.row_len() as usize;
    let row_bytes = bytes.len() / (info.n_rows() as usize).max(1);
    for (r, dst) in rows.zip(out.chunks_exact_mut(cols)) {
        let src = &bytes[r * row_bytes..(r + 1) * row_bytes];
        quant::dequantize_row(info.ggml_type, src, dst)?;
    }
    Ok(())
}

/// Where a model's tensors come from. Names are GGUF's (`blk.N.attn_q.weight`); a source with
/// other names maps them. Every method checks the row-major shape it is given.
pub trait WeightSource {
    /// A 1-D float32 vector (norm weights, biases) of length `len`.
    fn vector(&self, name: &str, len: usize) -> Result<Array>;
    /// A linear layer W [n, k] with an optional bias tensor.
    fn linear(&self, name: &str, n: usize, k: usize, bias: Option<&str>) -> Result<Linear>;
    /// One tensor [Σ parts, k] holding several linear layers stacked by rows (Phi-3's fused
    /// `attn_qkv` and gate/up), returned as one layer per part, in order.
    fn linear_split(&self, name: &str, parts: &[usize], k: usize) -> Result<Vec<Linear>> {
        let _ = (parts, k);
        Err(Error::Unsupported(format!(
            "tensor '{name}': fused projections are read from GGUF files only"
        )))
    }
    /// The token embedding [vocab, dim].
    fn embedding(&self, name: &str, vocab: usize, dim: usize) -> Result<Embedding>;
    /// Whether the tensor exists.
    fn has(&self, name: &str) -> bool;
    /// How the layers this source builds are executed.
    fn execution(&self) -> Execution;
    /// Fails, naming them, when tensors of the source were never asked for: a tensor the
    /// model does not know about may change what the model computes (llama.cpp refuses such
    /// files too).
    fn check_all_used(&self) -> Result<()>;
}

/// The error for tensors a model left unread, listing the first few.
pub(crate) fn unused_tensors_error(path: &std::path::Path, unused: &[&str]) -> Result<()> {
    if unused.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = unused.iter().take(8).map(|n| format!("'{n}'")).collect();
    let more = match unused.len() {
        n if n > 8 => format!(" and {} more", n - 8),
        _ => String::new(),
    };
    Err(Error::Unsupported(format!(
        "{}: {} tensor(s) the model does not use: {}{more}",
        path.display(),
        unused.len(),
        shown.join(", ")
    )))
}

/// Loads tensors of one GGUF file for one [`Execution`].
pub struct GgufWeights {
    file: Arc<GgufFile>,
    exec: Execution,
    used: RefCell<BTreeSet<String>>,
}

impl GgufWeights {
    /// Wraps an opened file.
    pub fn new(file: Arc<GgufFile>, exec: Execution) -> GgufWeights {
        GgufWeights {
            file,
            exec,
            used: RefCell::default(),
        }
    }

    /// The tensor `name`, checked to have row-major shape `expected` ([rows, cols] or [len]).
    fn info(&self, name: &str, expected: &[usize]) -> Result<TensorInfo> {
        let info = self.file.tensor(name).ok_or_else(|| {
            Error::format(self.file.path(), format!("tensor '{name}' is missing"))
        })?;
        self.used.borrow_mut().insert(name.to_string());
        let found: Vec<i64> = info.shape_rowmajor();
        let want: Vec<i64> = expected.iter().map(|&d| d as i64).collect();
        if found != want {
            return Err(Error::format(
                self.file.path(),
                format!("tensor '{name}': shape {found:?}, expected {want:?}"),
            ));
        }
        Ok(info.clone())
    }

    /// Dequantizes a whole tensor to float32 (the scalar reference path).
    fn dequantize(&self, info: &TensorInfo) -> Result<Vec<f32>> {
        let rows = info.n_rows() as usize;
        let mut out = vec![0f32; rows * info.row_len() as usize];
        dequantize_rows(info, self.file.tensor_bytes(info), 0..rows, &mut out)?;
        Ok(out)
    }
}

impl WeightSource for GgufWeights {
    fn execution(&self) -> Execution {
        self.exec
    }

    fn has(&self, name: &str) -> bool {
        self.file.tensor(name).is_some()
    }

    fn check_all_used(&self) -> Result<()> {
        let used = self.used.borrow();
        let unused: Vec<&str> = (self.file.tensors().iter())
            .map(|t| t.name.as_str())
            .filter(|n| !used.contains(*n))
            .collect();
        unused_tensors_error(self.file.path(), &unused)
    }

    fn vector(&self, name: &str, len: usize) -> Result<Array> {
        let info = self.info(name, &[len])?;
        if info.ggml_type == GgmlType::F32 {
            let bytes = self.file.tensor_bytes(&info);
            return Array::from_borrowed_bytes(
                bytes,
                self.file.mapping(),
                &[len as i32],
                Dtype::F32,
            );
        }
        Array::from_slice(&self.dequantize(&info)?, &[len as i32])
    }

    fn linear(&self, name: &str, n: usize, k: usize, bias: Option<&str>) -> Result<Linear> {
        let info = self.info(name, &[n, k])?;
        let bias = match bias {
            Some(b) => Some(self.vector(b, n)?),
            None => None,
        };
        let weight = self.linear_weight(name, &info, self.file.tensor_bytes(&info), n, k)?;
        // Every branch of `linear_weight` copied or converted the bytes into MLX memory.
        self.file.mapping().release(self.file.tensor_bytes(&info));
        Ok(Linear { weight, bias })
    }

    fn linear_split(&self, name: &str, parts: &[usize], k: usize) -> Result<Vec<Linear>> {
        let total: usize = parts.iter().sum();
        let info = self.info(name, &[total, k])?;
        let bytes = self.file.tensor_bytes(&info);
        // Rows are whole blocks, so a run of rows is a valid tensor of the same type.
        let row_bytes = bytes.len() / total.max(1);
        let mut start = 0;
        let mut out = Vec::with_capacity(parts.len());
        for &n in parts {
            let rows = &bytes[start * row_bytes..(start + n) * row_bytes];
            let weight = self.linear_weight(name, &info, rows, n, k)?;
            out.push(Linear { weight, bias: None });
            start += n;
        }
        self.file.mapping().release(bytes);
        Ok(out)
    }

    fn embedding(&self, name: &str, vocab: usize, dim: usize) -> Result<Embedding> {
        let info = self.info(name, &[vocab, dim])?;
        Ok(Embedding::Mapped {
            file: Arc::clone(&self.file),
            info,
            dim,
        })
    }
}

impl GgufWeights {
    /// The weight W [n, k] stored as `bytes` (rows of the type of `info`, the tensor `name`)
    /// in the form this source's execution multiplies.
    fn linear_weight(
        &self,
        name: &str,
        info: &TensorInfo,
        bytes: &[u8],
        n: usize,
        k: usize,
    ) -> Result<LinearWeight> {
        Ok(match self.exec {
            Execution::CpuKernel if crate::mlx::kernels::supports(info.ggml_type) => {
                let (blocks, layout) =
                    crate::mlx::kernels::load_blocks(bytes, info.ggml_type, n, k).map_err(|e| {
                        Error::format(self.file.path(), format!("tensor '{name}': {e}"))
                    })?;
                LinearWeight::GgufBlocks {
                    blocks,
                    layout,
                    n,
                    k,
                }
            }
            Execution::Gpu => {
                let affine = quant::to_mlx_affine(info.ggml_type, bytes, n, k)?;
                let groups = (k / affine.group_size as usize) as i32;
                LinearWeight::Affine {
                    w: Array::from_slice(
                        &affine.packed,
                        &[n as i32, (k * affine.bits as usize / 32) as i32],
                    )?,
                    scales: Array::from_slice(&affine.scales, &[n as i32, groups])?,
                    biases: Array::from_slice(&affine.biases, &[n as i32, groups])?,
                    spec: crate::mlx::ops::QuantSpec {
                        group_size: affine.group_size as i32,
                        bits: affine.bits as i32,
                    },
                }
            }
            _ => {
                let mut w = vec![0f32; n * k];
                let row_bytes = bytes.len() / n.max(1);
                for (src, dst) in bytes.chunks_exact(row_bytes).zip(w.chunks_exact_mut(k)) {
                    quant::dequantize_row(info.ggml_type, src, dst)?;
                }
                LinearWeight::Dense {
                    w: Array::from_slice(&w, &[n as i32, k as i32])?,
                }
            }
        })
    }
}
