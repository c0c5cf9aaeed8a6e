//! Hyperparameters of a Llama-family model, read from GGUF metadata or an HF `config.json`.

use crate::error::{Error, Result};
use crate::loader::gguf::GgufFile;
use crate::model::rope::{self, RopeScaling};
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
    /// Qwen3: RMS-normalised Q and K heads before RoPE, no Q/K/V biases.
    Qwen3,
    /// Phi-3: the Llama block with Q/K/V in one tensor (`attn_qkv`) and gate/up in one
    /// (`ffn_up`, gate rows first).
    Phi3,
}

impl Arch {
    /// From `general.architecture` or an HF `model_type`.
    pub fn from_name(name: &str) -> Result<Arch> {
        match name {
            "llama" | "mistral" => Ok(Arch::Llama),
            "qwen2" => Ok(Arch::Qwen2),
            "gemma3" | "gemma3_text" => Ok(Arch::Gemma3),
            "qwen3" => Ok(Arch::Qwen3),
            "phi3" => Ok(Arch::Phi3),
            other => Err(Error::Unsupported(format!(
                "architecture '{other}' (supported: llama, qwen2, qwen3, phi3, gemma3)"
            ))),
        }
    }

    /// The name used in GGUF metadata keys.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Gemma3 => "gemma3",
            Arch::Qwen3 => "qwen3",
            Arch::Phi3 => "phi3",
        }
    }

    /// Whether the layout is Gemma's: Q/K norms, post-attention and post-MLP norms, GELU MLP,
    /// embedding scaled by √D.
    pub fn is_gemma(self) -> bool {
        self == Arch::Gemma3
    }

    /// Whether Q/K/V and gate/up are stored fused (Phi-3).
    pub fn has_fused_projections(self) -> bool {
        self == Arch::Phi3
    }

    /// Whether GGUF Q/K rows were permuted by the converter so that RoPE pairs are adjacent.
    fn gguf_rope_traditional(self) -> bool {
        self == Arch::Llama
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
    /// RoPE scaling of the global (non-windowed) layers.
    pub rope_scaling: RopeScaling,
    /// Factor on RoPE's rotated vectors (`rope.scaling.attn_factor`; 1 without it).
    pub rope_attn_factor: f32,
    /// The file carries llama3 RoPE factors as the tensor `rope_freqs.weight` [head_dim/2].
    pub rope_freqs_tensor: bool,
}

/// Upper bounds on model metadata, far above any released model (llama.cpp caps layers at 512),
/// checked before anything is allocated from them so that a hostile file fails with the key named.
pub mod limits {
    /// Transformer blocks.
    pub const LAYERS: usize = 512;
    /// Query heads and key/value heads.
    pub const HEADS: usize = 1024;
    /// Features per head.
    pub const HEAD_DIM: usize = 1024;
    /// Residual stream width.
    pub const HIDDEN: usize = 65_536;
    /// MLP hidden width.
    pub const FFN: usize = 1 << 20;
    /// Vocabulary entries.
    pub const VOCAB: usize = 1 << 22;
    /// Positions of context.
    pub const CONTEXT: usize = 1 << 24;
}

/// A [`ModelConfig`] field read from one metadata key, so that a check can name the key.
#[derive(Clone, Copy, Debug)]
enum Field {
    Layers,
    Hidden,
    Heads,
    KvHeads,
    HeadDim,
    Ffn,
    Vocab,
    Context,
    RopeBase,
    RmsEps,
    Window,
    Pattern,
    RopeBaseSwa,
}

/// Where a config came from, which decides how its keys are named in errors.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// GGUF metadata of this architecture (`{arch}.block_count`, …).
    Gguf(&'a str),
    /// An HF `config.json`.
    Hf,
}

impl Source<'_> {
    /// The metadata key `field` is read from (for a GGUF vocabulary: the embedding tensor).
    fn key(self, field: Field) -> String {
        let (gguf, hf) = match field {
            Field::Layers => ("block_count", "num_hidden_layers"),
            Field::Hidden => ("embedding_length", "hidden_size"),
            Field::Heads => ("attention.head_count", "num_attention_heads"),
            Field::KvHeads => ("attention.head_count_kv", "num_key_value_heads"),
            Field::HeadDim => ("attention.key_length", "head_dim"),
            Field::Ffn => ("feed_forward_length", "intermediate_size"),
            Field::Vocab => ("", "vocab_size"),
            Field::Context => ("context_length", "max_position_embeddings"),
            Field::RopeBase => ("rope.freq_base", "rope_theta"),
            Field::RmsEps => ("attention.layer_norm_rms_epsilon", "rms_norm_eps"),
            Field::Window => ("attention.sliding_window", "sliding_window"),
            Field::Pattern => ("attention.sliding_window_pattern", "sliding_window_pattern"),
            Field::RopeBaseSwa => ("rope.freq_base_swa", "rope_local_base_freq"),
        };
        match (self, field) {
            (Source::Gguf(_), Field::Vocab) => "token_embd.weight".into(),
            (Source::Gguf(arch), _) => format!("{arch}.{gguf}"),
            (Source::Hf, _) => hf.into(),
        }
    }

    /// `key 'name'`, or `tensor 'name'` for the one field read from a tensor's shape.
    fn describe(self, field: Field) -> String {
        match (self, field) {
            (Source::Gguf(_), Field::Vocab) => format!("tensor '{}' rows", self.key(field)),
            _ => format!("key '{}'", self.key(field)),
        }
    }
}

/// YaRN's β_fast and β_slow (llama.cpp's defaults; GGUF files carry no keys that it reads).
const YARN_BETA_FAST: f32 = 32.0;
const YARN_BETA_SLOW: f32 = 1.0;

/// What a GGUF file says about RoPE: the scaling of the global layers, the extra magnitude
/// factor and whether `rope_freqs.weight` holds llama3 factors.
struct GgufRope {
    scaling: RopeScaling,
    attn_factor: f32,
    freqs_tensor: bool,
}

/// Reads `{arch}.rope.scaling.*` as llama.cpp does (a factor without a type is linear; a
/// factor of 0 or 1 is none) and refuses what the forward pass does not implement (LongRoPE,
/// unknown types, llama3 with neither its factor tensor nor its constants, YaRN's tuning keys, rotation of part of
/// each head, value heads of another width, soft-capping) rather than running it wrongly.
fn gguf_rope(file: &GgufFile, arch: Arch, head_dim: usize, context: usize) -> Result<GgufRope> {
    let name = arch.gguf_name();
    let refuse = |what: String| {
        Err(Error::Unsupported(format!(
            "{}: {what} is not implemented",
            file.path().display()
        )))
    };
    let key = |k: &str| format!("{name}.{k}");
    let kind = match file.get(&key("rope.scaling.type")) {
        None => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                return Err(Error::format(
                    file.path(),
                    format!(
                        "key '{}' is a {}, expected a string",
                        key("rope.scaling.type"),
                        v.type_name()
                    ),
                ))
            }
        },
    };
    let mut factor_key = key("rope.scaling.factor");
    let factor = match file.get(&factor_key) {
        Some(v) => Some(v),
        None => {
            factor_key = key("rope.scale_linear");
            file.get(&factor_key)
        }
    };
    let factor = match factor {
        None => None,
        Some(v) => match v.as_f64() {
            // llama.cpp reads a factor of 0 as "no scaling", like 1.
            Some(f) if f == 0.0 || f == 1.0 => None,
            Some(f) if f.is_finite() && f > 0.0 => Some(f as f32),
            Some(f) => {
                return Err(Error::format(
                    file.path(),
                    format!("key '{factor_key}' = {f}, expected a finite positive number"),
                ))
            }
            None => {
                return Err(Error::format(
                    file.path(),
                    format!(
                        "key '{factor_key}' is a {}, expected a number",
                        v.type_name()
                    ),
                ))
            }
        },
    };
    let freqs_tensor = file.tensor("rope_freqs.weight").is_some();
    let type_key = key("rope.scaling.type");
    let scaling = match (kind.as_deref(), factor) {
        (Some("none"), _) | (None | Some("linear"), None) => RopeScaling::None,
        (None | Some("linear"), Some(factor)) => RopeScaling::Linear { factor },
        (Some("yarn"), None) => RopeScaling::None,
        (Some("yarn"), Some(factor)) => {
            for k in [
                "rope.scaling.yarn_beta_fast",
                "rope.scaling.yarn_beta_slow",
                "rope.scaling.yarn_ext_factor",
                "rope.scaling.yarn_log_multiplier",
            ] {
                if file.get(&key(k)).is_some() {
                    return refuse(format!("key '{}' (YaRN tuning)", key(k)));
                }
            }
            let original =
                file.get_u64_or(&key("rope.scaling.original_context_length"), context as u64)?;
            RopeScaling::Yarn {
                factor,
                original_context: usize::try_from(original).unwrap_or(usize::MAX),
                beta_fast: YARN_BETA_FAST,
                beta_slow: YARN_BETA_SLOW,
            }
        }
        // Llama 3's factors usually travel as a tensor (llama.cpp reads only that); without
        // it they are computed from the constants HF's `rope_scaling` holds, under the same
        // names, all required.
        (Some("llama3"), _) if freqs_tensor => RopeScaling::None,
        (Some("llama3"), Some(factor)) => {
            let constant = |k: &str| -> Result<f64> {
                match file.get(&key(k)) {
                    Some(_) => file.get_f64(&key(k)),
                    None => Err(Error::Unsupported(format!(
                        "{}: key '{type_key}' = \"llama3\" without the tensor \
                         'rope_freqs.weight' or the key '{}' is not implemented (its factors \
                         are computed from factor, low_freq_factor, high_freq_factor and \
                         original_context_length)",
                        file.path().display(),
                        key(k)
                    ))),
                }
            };
            let low_freq_factor = constant("rope.scaling.low_freq_factor")? as f32;
            let high_freq_factor = constant("rope.scaling.high_freq_factor")? as f32;
            constant("rope.scaling.original_context_length")?;
            let original = file.get_u64(&key("rope.scaling.original_context_length"))?;
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_context: usize::try_from(original).unwrap_or(usize::MAX),
            }
        }
        (Some("llama3"), None) => {
            return refuse(format!(
                "key '{type_key}' = \"llama3\" without the tensor 'rope_freqs.weight' or the key \
                 '{}' (its factors)",
                key("rope.scaling.factor")
            ))
        }
        (Some(other), _) => return refuse(format!("key '{type_key}' = \"{other}\": RoPE scaling")),
    };
    if let RopeScaling::Yarn {
        original_context, ..
    }
    | RopeScaling::Llama3 {
        original_context, ..
    } = scaling
    {
        if original_context == 0 || original_context > limits::CONTEXT {
            return Err(Error::format(
                file.path(),
                format!(
                    "key '{}' = {original_context}, outside 1..={}",
                    key("rope.scaling.original_context_length"),
                    limits::CONTEXT
                ),
            ));
        }
    }
    if arch.is_gemma() && matches!(scaling, RopeScaling::Yarn { .. }) {
        return refuse(format!("key '{type_key}' = \"yarn\" for gemma3"));
    }
    if matches!(scaling, RopeScaling::Llama3 { .. }) && arch != Arch::Llama {
        return refuse(format!("key '{type_key}' = \"llama3\" for {name}"));
    }
    if freqs_tensor && arch != Arch::Llama {
        return refuse(format!(
            "tensor 'rope_freqs.weight' (llama3 RoPE factors) in a {name} model"
        ));
    }
    for t in ["rope_factors_long.weight", "rope_factors_short.weight"] {
        if file.tensor(t).is_some() {
            return refuse(format!("tensor '{t}' (LongRoPE)"));
        }
    }
    let attn_factor = file.get_f64_or(&key("rope.scaling.attn_factor"), 1.0)? as f32;
    if !(attn_factor.is_finite() && attn_factor > 0.0) {
        return Err(Error::format(
            file.path(),
            format!(
                "key '{}' = {attn_factor}, expected a finite positive number",
                key("rope.scaling.attn_factor")
            ),
        ));
    }
    rope::validate(&scaling, file.path(), &type_key)?;
    let rotated = file.get_u64_or(&key("rope.dimension_count"), head_dim as u64)?;
    if rotated != head_dim as u64 {
        return refuse(format!(
            "key '{}' = {rotated} with head dimension {head_dim}: RoPE over part of each head",
            key("rope.dimension_count")
        ));
    }
    if let Some(v) = file.get(&key("attention.value_length")) {
        if v.as_u64() != Some(head_dim as u64) {
            let shown = v
                .as_u64()
                .map_or(format!("a {}", v.type_name()), |n| n.to_string());
            return refuse(format!(
                "key '{}' = {shown}, unlike the key length {head_dim}: value heads of another width",
                key("attention.value_length")
            ));
        }
    }
    if file.get(&key("final_logit_softcapping")).is_some() {
        return refuse(format!("key '{}'", key("final_logit_softcapping")));
    }
    if file.get(&key("attn_logit_softcapping")).is_some() {
        return refuse(format!("key '{}'", key("attn_logit_softcapping")));
    }
    Ok(GgufRope {
        scaling,
        attn_factor,
        freqs_tensor,
    })
}

/// The RoPE scaling of an HF `config.json` (`rope_scaling`: null, default, linear, llama3 or
/// YaRN), with the same refusals as [`gguf_rope`]: other types, YaRN's `mscale` keys,
/// `partial_rotary_factor` other than 1, soft-capping.
fn hf_rope(path: &Path, json: &serde_json::Value, context: usize) -> Result<RopeScaling> {
    let refuse = |what: String| {
        Err(Error::Unsupported(format!(
            "{}: {what} is not implemented",
            path.display()
        )))
    };
    if let Some(f) = json.get("partial_rotary_factor") {
        if f.as_f64() != Some(1.0) {
            return refuse(format!(
                "key 'partial_rotary_factor' = {f}: RoPE over part of each head"
            ));
        }
    }
    for k in ["final_logit_softcapping", "attn_logit_softcapping"] {
        if json.get(k).is_some_and(|v| !v.is_null()) {
            return refuse(format!("key '{k}'"));
        }
    }
    let scaling = match json.get("rope_scaling") {
        None | Some(serde_json::Value::Null) => return Ok(RopeScaling::None),
        Some(scaling) => scaling,
    };
    let kind = scaling
        .get("rope_type")
        .or_else(|| scaling.get("type"))
        .and_then(|v| v.as_str());
    let number = |k: &str, default: Option<f64>| -> Result<f64> {
        match (scaling.get(k), default) {
            (Some(v), _) => v.as_f64().ok_or_else(|| {
                Error::format(
                    path,
                    format!("key 'rope_scaling.{k}' = {v} is not a number"),
                )
            }),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(Error::format(
                path,
                format!("key 'rope_scaling.{k}' is missing"),
            )),
        }
    };
    let original = || -> Result<usize> {
        let v = number("original_max_position_embeddings", Some(context as f64))?;
        match v.fract() == 0.0 && v >= 1.0 && v <= limits::CONTEXT as f64 {
            true => Ok(v as usize),
            false => Err(Error::format(
                path,
                format!(
                    "key 'rope_scaling.original_max_position_embeddings' = {v}, outside 1..={}",
                    limits::CONTEXT
                ),
            )),
        }
    };
    let parsed = match kind {
        Some("default") => RopeScaling::None,
        Some("linear") => RopeScaling::Linear {
            factor: number("factor", None)? as f32,
        },
        Some("llama3") => RopeScaling::Llama3 {
            factor: number("factor", None)? as f32,
            low_freq_factor: number("low_freq_factor", Some(1.0))? as f32,
            high_freq_factor: number("high_freq_factor", Some(4.0))? as f32,
            original_context: original()?,
        },
        Some("yarn") => {
            for k in ["mscale", "mscale_all_dim", "attention_factor", "truncate"] {
                if scaling.get(k).is_some_and(|v| !v.is_null()) {
                    return refuse(format!("key 'rope_scaling.{k}' (YaRN tuning)"));
                }
            }
            RopeScaling::Yarn {
                factor: number("factor", None)? as f32,
                original_context: original()?,
                beta_fast: number("beta_fast", Some(YARN_BETA_FAST as f64))? as f32,
                beta_slow: number("beta_slow", Some(YARN_BETA_SLOW as f64))? as f32,
            }
        }
        _ => return refuse(format!("key 'rope_scaling' = {scaling}: RoPE scaling")),
    };
    rope::validate(&parsed, path, "rope_scaling")?;
    Ok(parsed)
}

impl ModelConfig {
    /// Reads `{arch}.*` metadata; `vocab_size` from the embedding tensor. Refuses what the
    /// forward pass does not implement and metadata outside [`limits`].
    pub fn from_gguf(file: &GgufFile) -> Result<ModelConfig> {
        let arch = Arch::from_name(file.architecture()?)?;
        let name = arch.gguf_name();
        let key = |k: &str| format!("{name}.{k}");
        let source = Source::Gguf(name);
        let int = |field: Field| -> Result<usize> {
            let k = source.key(field);
            usize::try_from(file.get_u64(&k)?)
                .map_err(|_| Error::format(file.path(), format!("key '{k}' does not fit in usize")))
        };
        let n_heads = int(Field::Heads)?;
        let hidden = int(Field::Hidden)?;
        let head_dim = match file.get(&key("attention.key_length")) {
            Some(_) => int(Field::HeadDim)?,
            None if n_heads > 0 && !hidden.is_multiple_of(n_heads) => {
                return Err(Error::format(
                    file.path(),
                    format!(
                        "key '{}' = {hidden} is not a multiple of key '{}' = {n_heads}",
                        key("embedding_length"),
                        key("attention.head_count")
                    ),
                ))
            }
            None => hidden / n_heads.max(1),
        };
        let embd = file
            .tensor("token_embd.weight")
            .ok_or_else(|| Error::format(file.path(), "tensor 'token_embd.weight' is missing"))?;
        let vocab_size = embd.dims.get(1).copied().unwrap_or(0) as usize;
        let sliding_window = match (arch, file.get(&key("attention.sliding_window"))) {
            (Arch::Gemma3, Some(_)) => Some(SlidingWindow {
                window: int(Field::Window)?,
                pattern: file.get_u64_or(
                    &key("attention.sliding_window_pattern"),
                    GEMMA3_SLIDING_PATTERN as u64,
                )? as usize,
                rope_base: file
                    .get_f64_or(&key("rope.freq_base_swa"), GEMMA3_LOCAL_ROPE_BASE as f64)?
                    as f32,
            }),
            _ => None,
        };
        let context_length = int(Field::Context)?;
        let mut config = ModelConfig {
            arch,
            n_layers: int(Field::Layers)?,
            hidden,
            n_heads,
            n_kv_heads: file.get_u64_or(&key("attention.head_count_kv"), n_heads as u64)? as usize,
            head_dim,
            ffn_hidden: int(Field::Ffn)?,
            vocab_size,
            context_length,
            rope_base: file.get_f64_or(&key("rope.freq_base"), 10_000.0)? as f32,
            rope_traditional: arch.gguf_rope_traditional(),
            rms_eps: file.get_f64(&key("attention.layer_norm_rms_epsilon"))? as f32,
            tied_embeddings: file.tensor("output.weight").is_none(),
            sliding_window,
            rope_scaling: RopeScaling::None,
            rope_attn_factor: 1.0,
            rope_freqs_tensor: false,
        };
        config.validate(file.path(), source)?;
        let rope = gguf_rope(file, arch, head_dim, context_length)?;
        config.rope_scaling = rope.scaling;
        config.rope_attn_factor = rope.attn_factor;
        config.rope_freqs_tensor = rope.freqs_tensor;
        Ok(config)
    }

    /// Reads an HF `config.json` (`model_type`, `hidden_size`, …), with the same refusals and
    /// limits as [`ModelConfig::from_gguf`].
    pub fn from_hf_json(path: &Path, json: &serde_json::Value) -> Result<ModelConfig> {
        let get = |k: &str| -> Result<usize> {
            let v = json.get(k).and_then(|v| v.as_u64()).ok_or_else(|| {
                Error::format(
                    path,
                    format!("config key '{k}' is missing or not an integer"),
                )
            })?;
            usize::try_from(v)
                .map_err(|_| Error::format(path, format!("key '{k}' does not fit in usize")))
        };
        let float = |k: &str, default: f64| -> Result<f32> {
            match json.get(k) {
                None | Some(serde_json::Value::Null) => Ok(default as f32),
                Some(v) => v.as_f64().map(|f| f as f32).ok_or_else(|| {
                    Error::format(path, format!("config key '{k}' is not a number"))
                }),
            }
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
        if arch.has_fused_projections() {
            return Err(Error::Unsupported(format!(
                "{}: Phi-3 runs from GGUF files only",
                path.display()
            )));
        }
        let rope_scaling = hf_rope(path, json, get("max_position_embeddings")?)?;
        let hidden = get("hidden_size")?;
        let n_heads = get("num_attention_heads")?;
        let config = ModelConfig {
            arch,
            n_layers: get("num_hidden_layers")?,
            hidden,
            n_heads,
            n_kv_heads: match json.get("num_key_value_heads") {
                Some(_) => get("num_key_value_heads")?,
                None => n_heads,
            },
            head_dim: match json.get("head_dim") {
                Some(_) => get("head_dim")?,
                None => hidden / n_heads.max(1),
            },
            ffn_hidden: get("intermediate_size")?,
            vocab_size: get("vocab_size")?,
            context_length: get("max_position_embeddings")?,
            rope_base: float("rope_theta", 10_000.0)?,
            rope_traditional: false,
            rms_eps: float("rms_norm_eps", 1e-5)?,
            tied_embeddings: json
                .get("tie_word_embeddings")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            sliding_window: None,
            rope_scaling,
            rope_attn_factor: 1.0,
            rope_freqs_tensor: false,
        };
        config.validate(path, Source::Hf)?;
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
        let norms = match self.arch {
            Arch::Gemma3 => 4 * d + 2 * self.head_dim,
            Arch::Qwen3 => 2 * d + 2 * self.head_dim,
            _ => 2 * d,
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

    /// The RoPE constants of `layer`: Gemma 3's windowed layers rotate plainly with their own
    /// base; the others with the model's scaling (and llama3 `freq_factors`, when the file
    /// has them).
    pub fn rope_of(&self, layer: usize, freq_factors: Option<&[f32]>) -> rope::Rope {
        if self.window_of(layer).is_some() {
            return rope::Rope::plain(self.rope_base_of(layer));
        }
        rope::Rope::new(
            self.head_dim,
            self.rope_base,
            &self.rope_scaling,
            freq_factors,
            self.rope_attn_factor,
        )
    }

    /// What the token embedding is multiplied by before the first block (√D for Gemma).
    pub fn embedding_scale(&self) -> Option<f32> {
        self.arch.is_gemma().then(|| (self.hidden as f32).sqrt())
    }

    /// Checks every field against [`limits`] and the relations between them (heads divide the
    /// width, KV heads divide the heads, even head dimension, finite positive constants),
    /// naming the key of the first field that fails.
    fn validate(&self, path: &Path, source: Source) -> Result<()> {
        let bad = |field: Field, problem: String| {
            Err(Error::format(
                path,
                format!("{} {problem}", source.describe(field)),
            ))
        };
        let sizes = [
            (Field::Layers, self.n_layers, limits::LAYERS),
            (Field::Hidden, self.hidden, limits::HIDDEN),
            (Field::Heads, self.n_heads, limits::HEADS),
            (Field::KvHeads, self.n_kv_heads, limits::HEADS),
            (Field::HeadDim, self.head_dim, limits::HEAD_DIM),
            (Field::Ffn, self.ffn_hidden, limits::FFN),
            (Field::Vocab, self.vocab_size, limits::VOCAB),
            (Field::Context, self.context_length, limits::CONTEXT),
        ];
        for (field, value, max) in sizes {
            if value == 0 || value > max {
                return bad(field, format!("= {value}, outside 1..={max}"));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(
                Field::Heads,
                format!(
                    "= {} is not a multiple of {} = {}",
                    self.n_heads,
                    source.describe(Field::KvHeads),
                    self.n_kv_heads
                ),
            );
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(
                Field::HeadDim,
                format!("= {} is odd; RoPE rotates pairs", self.head_dim),
            );
        }
        let positive = |field: Field, v: f32| -> Result<()> {
            match v.is_finite() && v > 0.0 {
                true => Ok(()),
                false => bad(field, format!("= {v}, expected a finite positive number")),
            }
        };
        positive(Field::RopeBase, self.rope_base)?;
        positive(Field::RmsEps, self.rms_eps)?;
        if let Some(sw) = self.sliding_window {
            if sw.window == 0 || sw.window > limits::CONTEXT {
                return bad(
                    Field::Window,
                    format!("= {}, outside 1..={}", sw.window, limits::CONTEXT),
                );
            }
            if sw.pattern == 0 || sw.pattern > limits::LAYERS {
                return bad(
                    Field::Pattern,
                    format!("= {}, outside 1..={}", sw.pattern, limits::LAYERS),
                );
            }
            positive(Field::RopeBaseSwa, sw.rope_base)?;
        }
        Ok(())
    }
}
