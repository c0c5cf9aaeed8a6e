//! Hyperparameters of a Llama-family model, read from GGUF metadata or an HF `config.json`.

use crate::error::{Error, Result};
use crate::loader::gguf::GgufFile;
use std::path::Path;

/// The architectures the engine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama 1/2/3, TinyLlama, Mistral-style: no attention biases.
    Llama,
    /// Qwen2 / Qwen2.5: biases on the Q, K and V projections.
    Qwen2,
    /// Gemma 3: RMS-normalised Q and K, norms after attention and MLP too, GELU (tanh) gated
    /// MLP, a scaled embedding, and sliding-window attention in five layers of every six.
    Gemma3,
}

impl Arch {
    /// From `general.architecture` or an HF `model_type`.
    pub fn from_name(name: &str) -> Result<Arch> {
        match name {
            "llama" | "mistral" => Ok(Arch::Llama),
            "qwen2" => Ok(Arch::Qwen2),
            "gemma3" | "gemma3_text" => Ok(Arch::Gemma3),
            other => Err(Error::Unsupported(format!(
                "architecture '{other}' (supported: llama, qwen2, gemma3)"
            ))),
        }
    }

    /// The name used in GGUF metadata keys.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Gemma3 => "gemma3",
        }
    }

    /// Whether Q, K and V carry biases.
    pub fn has_qkv_bias(self) -> bool {
        self == Arch::Qwen2
    }

    /// Whether the layout is Gemma's: Q/K norms, post-attention and post-MLP norms, GELU MLP,
    /// embedding scaled by √D.
    pub fn is_gemma(self) -> bool {
        self == Arch::Gemma3
    }
}

/// Gemma 3's sliding-window RoPE base where the file has no `rope.freq_base_swa` (llama.cpp's
/// default).
const GEMMA3_LOCAL_ROPE_BASE: f32 = 10_000.0;
/// Gemma 3: every sixth layer attends globally, the others over a sliding window.
const GEMMA3_SLIDING_PATTERN: usize = 6;

/// Local attention: a query at position p sees keys p − window + 1 ..= p, in every layer but
/// each `pattern`-th one (layers pattern − 1, 2·pattern − 1, … attend to everything).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlidingWindow {
    /// Keys visible to a query, itself included.
    pub window: usize,
    /// Period of the global layers.
    pub pattern: usize,
    /// RoPE base θ of the windowed layers.
    pub rope_base: f32,
}

/// Shapes and constants of one model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Which architecture.
    pub arch: Arch,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Residual stream width (D).
    pub hidden: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_heads`).
    pub n_kv_heads: usize,
    /// Features per head.
    pub head_dim: usize,
    /// Width of the SwiGLU hidden layer.
    pub ffn_hidden: usize,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Longest sequence the model was trained for.
    pub context_length: usize,
    /// RoPE frequency base θ.
    pub rope_base: f32,
    /// RoPE on adjacent pairs (GGUF llama: the converter permuted Q/K for it) instead of halves.
    pub rope_traditional: bool,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// The output projection reuses the token embedding.
    pub tied_embeddings: bool,
    /// Sliding-window attention (Gemma 3).
    pub sliding_window: Option<SlidingWindow>,
}

/// Refuses Gemma 3 metadata this engine does not implement (linear RoPE scaling of the global
/// layers, final-logit soft-capping) rather than running such a model wrongly.
fn reject_gemma3_extras(file: &GgufFile, key: &dyn Fn(&str) -> String) -> Result<()> {
    let scaled = file
        .get(&key("rope.scaling.type"))
        .is_some_and(|kind| kind.as_str() != Some("none"))
        || ["rope.scaling.factor", "rope.scale_linear"]
            .iter()
            .any(|k| file.get(&key(k)).is_some_and(|v| v.as_f64() != Some(1.0)));
    let unsupported = if scaled {
        Some("RoPE scaling (rope.scaling.*)")
    } else if file.get(&key("final_logit_softcapping")).is_some() {
        Some("final_logit_softcapping")
    } else {
        None
    };
    match unsupported {
        Some(what) => Err(Error::Unsupported(format!(
            "{}: gemma3 with {what} is not implemented",
            file.path().display()
        ))),
        None => Ok(()),
    }
}

impl ModelConfig {
    /// Reads `{arch}.*` metadata; `vocab_size` from the embedding tensor.
    pub fn from_gguf(file: &GgufFile) -> Result<ModelConfig> {
        let arch = Arch::from_name(file.architecture()?)?;
        let key = |k: &str| format!("{}.{k}", arch.gguf_name());
        let n_heads = file.get_u64(&key("attention.head_count"))? as usize;
        let hidden = file.get_u64(&key("embedding_length"))? as usize;
        if n_heads == 0 || !hidden.is_multiple_of(n_heads) {
            return Err(Error::format(
                file.path(),
                format!("embedding_length {hidden} is not a multiple of head_count {n_heads}"),
            ));
        }
        let head_dim = match file.get(&key("attention.key_length")) {
            Some(v) => v.as_u64().ok_or_else(|| {
                Error::format(file.path(), "attention.key_length is not an integer")
            })? as usize,
            None => hidden / n_heads,
        };
        let embd = file
            .tensor("token_embd.weight")
            .ok_or_else(|| Error::format(file.path(), "tensor 'token_embd.weight' is missing"))?;
        let vocab_size = embd.dims.get(1).copied().unwrap_or(0) as usize;
        let config = ModelConfig {
            arch,
            n_layers: file.get_u64(&key("block_count"))? as usize,
            hidden,
            n_heads,
            n_kv_heads: file.get_u64_or(&key("attention.head_count_kv"), n_heads as u64)? as usize,
            head_dim,
            ffn_hidden: file.get_u64(&key("feed_forward_length"))? as usize,
            vocab_size,
            context_length: file.get_u64(&key("context_length"))? as usize,
            rope_base: file.get_f64_or(&key("rope.freq_base"), 10_000.0)? as f32,
            rope_traditional: arch == Arch::Llama,
            rms_eps: file.get_f64(&key("attention.layer_norm_rms_epsilon"))? as f32,
            tied_embeddings: file.tensor("output.weight").is_none(),
            sliding_window: match (arch, file.get(&key("attention.sliding_window"))) {
                (Arch::Gemma3, Some(_)) => {
                    reject_gemma3_extras(file, &key)?;
                    let window = file.get_u64(&key("attention.sliding_window"))? as usize;
                    let pattern = file.get_u64_or(
                        &key("attention.sliding_window_pattern"),
                        GEMMA3_SLIDING_PATTERN as u64,
                    )? as usize;
                    let rope_base = file
                        .get_f64_or(&key("rope.freq_base_swa"), GEMMA3_LOCAL_ROPE_BASE as f64)?
                        as f32;
                    Some(SlidingWindow {
                        window,
                        pattern,
                        rope_base,
                    })
                }
                _ => None,
            },
        };
        config.validate(file.path())?;
        Ok(config)
    }

    /// Reads an HF `config.json` (`model_type`, `hidden_size`, …).
    pub fn from_hf_json(path: &Path, json: &serde_json::Value) -> Result<ModelConfig> {
        let get = |k: &str| -> Result<u64> {
            json.get(k).and_then(|v| v.as_u64()).ok_or_else(|| {
                Error::format(
                    path,
                    format!("config key '{k}' is missing or not an integer"),
                )
            })
        };
        let arch = Arch::from_name(
            json.get("model_type")
                .and_then(|v| v.as_str())
                .unwrap_or("llama"),
        )?;
        if arch.is_gemma() {
            // HF Gemma checkpoints store norm weights without the +1 that GGUF files bake in.
            return Err(Error::Unsupported(format!(
                "{}: Gemma 3 runs from GGUF files only",
                path.display()
            )));
        }
        let hidden = get("hidden_size")? as usize;
        let n_heads = get("num_attention_heads")? as usize;
        let config = ModelConfig {
            arch,
            n_layers: get("num_hidden_layers")? as usize,
            hidden,
            n_heads,
            n_kv_heads: get("num_key_value_heads").unwrap_or(n_heads as u64) as usize,
            head_dim: get("head_dim").unwrap_or((hidden / n_heads.max(1)) as u64) as usize,
            ffn_hidden: get("intermediate_size")? as usize,
            vocab_size: get("vocab_size")? as usize,
            context_length: get("max_position_embeddings")? as usize,
            rope_base: json
                .get("rope_theta")
                .and_then(|v| v.as_f64())
                .unwrap_or(10_000.0) as f32,
            rope_traditional: false,
            rms_eps: json
                .get("rms_norm_eps")
                .and_then(|v| v.as_f64())
                .unwrap_or(1e-5) as f32,
            tied_embeddings: json
                .get("tie_word_embeddings")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            sliding_window: None,
        };
        config.validate(path)?;
        Ok(config)
    }

    /// Number of weights (embedding, blocks, norms and an untied output).
    pub fn parameter_count(&self) -> usize {
        let (d, q, kv, f) = (
            self.hidden,
            self.n_heads * self.head_dim,
            self.n_kv_heads * self.head_dim,
            self.ffn_hidden,
        );
        let norms = if self.arch.is_gemma() {
            4 * d + 2 * self.head_dim
        } else {
            2 * d
        };
        let block = d * (q + 2 * kv) + q * d + 3 * d * f + norms;
        let output = if self.tied_embeddings {
            0
        } else {
            self.vocab_size * d
        };
        self.vocab_size * d + self.n_layers * block + d + output
    }

    /// The sliding window of `layer`, or None where it attends to the whole cache.
    pub fn window_of(&self, layer: usize) -> Option<usize> {
        self.sliding_window
            .and_then(|sw| (!(layer + 1).is_multiple_of(sw.pattern)).then_some(sw.window))
    }

    /// The RoPE base θ of `layer` (Gemma 3's windowed layers use their own).
    pub fn rope_base_of(&self, layer: usize) -> f32 {
        match self.sliding_window {
            Some(sw) if self.window_of(layer).is_some() => sw.rope_base,
            _ => self.rope_base,
        }
    }

    /// What the token embedding is multiplied by before the first block (√D for Gemma).
    pub fn embedding_scale(&self) -> Option<f32> {
        self.arch.is_gemma().then(|| (self.hidden as f32).sqrt())
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |m: String| Err(Error::format(path, m));
        if self.n_layers == 0 || self.hidden == 0 || self.vocab_size == 0 || self.ffn_hidden == 0 {
            return bad(format!("degenerate model shape {self:?}"));
        }
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "head_count {} is not a multiple of head_count_kv {}",
                self.n_heads, self.n_kv_heads
            ));
        }
        if let Some(sw) = self.sliding_window {
            if sw.window == 0 || sw.pattern == 0 {
                return bad(format!("degenerate sliding window {sw:?}"));
            }
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head dimension {} is odd; RoPE needs pairs",
                self.head_dim
            ));
        }
        Ok(())
    }
}
