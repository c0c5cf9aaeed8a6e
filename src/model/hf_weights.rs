//! Tensors of a Hugging Face checkpoint (safetensors, single or sharded, float or
//! MLX-quantized) behind the same [`WeightSource`] seam as GGUF: the model asks with GGUF
//! names, this maps them to HF names (`sanitize` in one place).

use crate::error::{Error, Result};
use crate::loader::safetensors::{SafeTensor, SafetensorsModel};
use crate::mlx::ops::{self, QuantSpec};
use crate::mlx::{Array, Dtype};
use crate::model::linear::{Linear, LinearWeight};
use crate::model::weights::{unused_tensors_error, Embedding, Execution, WeightSource};
use std::cell::RefCell;
use std::collections::BTreeSet;

/// The HF name of a GGUF tensor name (`blk.3.attn_q.weight` → `model.layers.3.self_attn.q_proj.weight`).
pub fn hf_name(gguf: &str) -> String {
    let fixed = [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output_norm.weight", "model.norm.weight"),
        ("output.weight", "lm_head.weight"),
    ];
    if let Some((_, hf)) = fixed.iter().find(|(g, _)| *g == gguf) {
        return hf.to_string();
    }
    let Some(rest) = gguf.strip_prefix("blk.") else {
        return gguf.to_string();
    };
    let Some((layer, rest)) = rest.split_once('.') else {
        return gguf.to_string();
    };
    let (part, suffix) = rest.rsplit_once('.').unwrap_or((rest, ""));
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        other => other,
    };
    format!("model.layers.{layer}.{hf}.{suffix}")
}

/// A safetensors checkpoint as a [`WeightSource`].
pub struct HfWeights {
    model: SafetensorsModel,
    exec: Execution,
    used: RefCell<BTreeSet<String>>,
}

impl HfWeights {
    /// Wraps an opened checkpoint.
    pub fn new(model: SafetensorsModel, exec: Execution) -> HfWeights {
        HfWeights {
            model,
            exec,
            used: RefCell::default(),
        }
    }

    fn tensor(&self, gguf: &str) -> Result<SafeTensor<'_>> {
        let name = hf_name(gguf);
        let tensor = self.model.tensor(&name).ok_or_else(|| {
            Error::format(self.model.dir(), format!("tensor '{name}' is missing"))
        })?;
        self.used.borrow_mut().insert(name);
        Ok(tensor)
    }

    /// A float tensor as float32 with row-major shape `expected`.
    fn float(&self, gguf: &str, expected: &[usize]) -> Result<Array> {
        let t = self.tensor(gguf)?;
        let want: Vec<i64> = expected.iter().map(|&d| d as i64).collect();
        if t.shape != want {
            return Err(Error::format(
                self.model.dir(),
                format!(
                    "tensor '{}': shape {:?}, expected {want:?}",
                    t.name, t.shape
                ),
            ));
        }
        let shape: Vec<i32> = expected.iter().map(|&d| d as i32).collect();
        // Copied (safetensors data need not be aligned to the element size), then widened.
        let raw = match t.dtype {
            Dtype::F32 => Array::from_slice(&le_values(t.bytes, f32::from_le_bytes), &shape)?,
            Dtype::F16 => Array::from_slice(&le_values(t.bytes, half::f16::from_le_bytes), &shape)?,
            Dtype::BF16 => {
                Array::from_slice(&le_values(t.bytes, half::bf16::from_le_bytes), &shape)?
            }
            other => {
                return Err(Error::format(
                    self.model.dir(),
                    format!(
                        "tensor '{}': type {other:?}, expected F32, F16 or BF16",
                        t.name
                    ),
                ))
            }
        };
        ops::astype(&raw, Dtype::F32)
    }

    /// An MLX-quantized weight (`.weight` uint32, `.scales`, `.biases`) of logical [n, k].
    fn quantized(&self, gguf: &str, n: usize, k: usize, spec: QuantSpec) -> Result<LinearWeight> {
        let base = gguf.trim_end_matches(".weight");
        let packed = self.tensor(gguf)?;
        let cols = k * spec.bits as usize / 32;
        let expected = vec![n as i64, cols as i64];
        if packed.shape != expected || packed.dtype != Dtype::U32 {
            return Err(Error::format(
                self.model.dir(),
                format!(
                    "tensor '{}': {:?} {:?}, expected U32 {expected:?}",
                    packed.name, packed.dtype, packed.shape
                ),
            ));
        }
        let w = Array::from_slice(
            &le_values(packed.bytes, u32::from_le_bytes),
            &[n as i32, cols as i32],
        )?;
        let groups = k / spec.group_size as usize;
        let scales = self.float(&format!("{base}.scales"), &[n, groups])?;
        let biases = self.float(&format!("{base}.biases"), &[n, groups])?;
        Ok(match self.exec {
            Execution::Gpu => LinearWeight::Affine {
                w,
                scales,
                biases,
                spec,
            },
            // MLX's CPU quantized_matmul is far too slow: dequantize once.
            _ => LinearWeight::Dense {
                w: ops::dequantize(&w, &scales, &biases, spec)?,
            },
        })
    }
}

fn le_values<T, const N: usize>(bytes: &[u8], from: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| from(c.try_into().unwrap_or([0; N])))
        .collect()
}

impl WeightSource for HfWeights {
    fn execution(&self) -> Execution {
        self.exec
    }

    fn has(&self, name: &str) -> bool {
        self.model.tensor(&hf_name(name)).is_some()
    }

    fn check_all_used(&self) -> Result<()> {
        let used = self.used.borrow();
        // Derivable leftovers HF itself ignores: RoPE inverse frequencies, and an LM head
        // stored beside a tied embedding.
        let unused: Vec<&str> = (self.model.names())
            .filter(|n| !used.contains(*n) && !n.ends_with("rotary_emb.inv_freq"))
            .filter(|n| !(*n == "lm_head.weight" && used.contains("model.embed_tokens.weight")))
            .collect();
        unused_tensors_error(self.model.dir(), &unused)
    }

    fn vector(&self, name: &str, len: usize) -> Result<Array> {
        self.float(name, &[len])
    }

    fn linear(&self, name: &str, n: usize, k: usize, bias: Option<&str>) -> Result<Linear> {
        let weight = match self.model.quantization() {
            Some((group_size, bits)) => {
                let spec = QuantSpec {
                    group_size: group_size as i32,
                    bits: bits as i32,
                };
                self.quantized(name, n, k, spec)?
            }
            None => LinearWeight::Dense {
                w: self.float(name, &[n, k])?,
            },
        };
        let bias = bias.map(|b| self.vector(b, n)).transpose()?;
        Ok(Linear { weight, bias })
    }

    fn embedding(&self, name: &str, vocab: usize, dim: usize) -> Result<Embedding> {
        let table = match self.model.quantization() {
            Some((group_size, bits)) => {
                let spec = QuantSpec {
                    group_size: group_size as i32,
                    bits: bits as i32,
                };
                match self.quantized(name, vocab, dim, spec)? {
                    LinearWeight::Dense { w } => w,
                    LinearWeight::Affine {
                        w,
                        scales,
                        biases,
                        spec,
                    } => ops::dequantize(&w, &scales, &biases, spec)?,
                    LinearWeight::GgufBlocks { .. } => {
                        unreachable!("safetensors never hold GGUF blocks")
                    }
                }
            }
            None => self.float(name, &[vocab, dim])?,
        };
        Ok(Embedding::Dense { table })
    }
}
