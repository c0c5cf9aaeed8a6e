//! Checkpoints of a fine-tuning run, in one directory:
//! - `adapters.safetensors`: every adapter's A [r, K] and B [N, r] in float32 under PEFT's
//!   names (`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`, `….lora_B.weight`;
//!   `mlp.gate_proj`, `mlp.up_proj`, `mlp.down_proj` for the MLP);
//! - `adapter_config.json`: PEFT's keys (`peft_type`, `r`, `lora_alpha`, `target_modules`) and
//!   ours under `mlx_engine` (the base model's fingerprint and shapes, the targets by short name);
//! - `optimizer.safetensors`: AdamW's moments (`m.{name}`, `v.{name}`);
//! - `trainer_state.json`: the step, the run's options and the loss history.
//!
//! [`load_adapters`] reads the first two for inference and refuses adapters made for another
//! model (fingerprint, shapes, layer count).

use crate::error::{Error, Result};
use crate::loader::safetensors::SafetensorsModel;
use crate::mlx::{Array, Dtype};
use crate::model::lora::{Adapters, LayerLora, LoraPair, Target};
use crate::model::ModelConfig;
use serde_json::{json, Value};
use std::path::Path;

/// The adapters file of a checkpoint directory.
pub const ADAPTERS_FILE: &str = "adapters.safetensors";
/// The adapter configuration of a checkpoint directory.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The optimizer state of a checkpoint directory.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The trainer state of a checkpoint directory.
pub const STATE_FILE: &str = "trainer_state.json";

/// What an adapter set is: its rank, α, targets and the layers it covers.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraSpec {
    /// Rank r.
    pub rank: usize,
    /// α; adapters are applied with scale α/r.
    pub alpha: f32,
    /// Projections that carry adapters.
    pub targets: Vec<Target>,
    /// Layer indices that carry adapters.
    pub layers: Vec<usize>,
}

impl LoraSpec {
    /// The scale α/r.
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }

    /// The (layer, target) of every adapter, in the order parameters are kept.
    pub fn slots(&self) -> Vec<(usize, Target)> {
        let mut out = Vec::new();
        for &i in &self.layers {
            for &t in &self.targets {
                out.push((i, t));
            }
        }
        out
    }
}

/// The model's [`Adapters`] from the flat parameter list [A, B, A, B, …] in `spec.slots()`
/// order.
pub fn adapters_from(spec: &LoraSpec, n_layers: usize, params: &[Array]) -> Adapters {
    let mut per_layer: Vec<Vec<(Target, LoraPair)>> = vec![Vec::new(); n_layers];
    for (j, (i, t)) in spec.slots().into_iter().enumerate() {
        let pair = LoraPair {
            a: params[2 * j].clone(),
            b: params[2 * j + 1].clone(),
        };
        per_layer[i].push((t, pair));
    }
    Adapters {
        layers: per_layer
            .into_iter()
            .map(|pairs| LayerLora::new(pairs, spec.scale()))
            .collect(),
    }
}

/// The tensor names of the flat parameter list, in order.
pub fn param_names(spec: &LoraSpec) -> Vec<String> {
    let mut out = Vec::new();
    for (i, t) in spec.slots() {
        out.push(format!("{}.lora_A.weight", t.module(i)));
        out.push(format!("{}.lora_B.weight", t.module(i)));
    }
    out
}

/// Writes float32 tensors as one safetensors file (to a temporary name, then renamed).
pub fn write_safetensors(path: &Path, tensors: &[(String, &Array)]) -> Result<()> {
    let mut header = serde_json::Map::new();
    let mut data: Vec<u8> = Vec::new();
    for (name, a) in tensors {
        let values = a.to_vec::<f32>()?;
        let start = data.len();
        for v in &values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        header.insert(
            name.clone(),
            json!({"dtype": "F32", "shape": a.shape(), "data_offsets": [start, data.len()]}),
        );
    }
    let mut head = serde_json::to_vec(&Value::Object(header))
        .map_err(|e| Error::format(path, e.to_string()))?;
    while !head.len().is_multiple_of(8) {
        head.push(b' ');
    }
    let mut bytes = (head.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&head);
    bytes.extend_from_slice(&data);
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary file in the same directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Reads float32 tensors `names` from a safetensors file, checking each shape.
pub fn read_safetensors(path: &Path, names: &[(String, Vec<i32>)]) -> Result<Vec<Array>> {
    let file = SafetensorsModel::open(path)?;
    names
        .iter()
        .map(|(name, shape)| {
            let t = file
                .tensor(name)
                .ok_or_else(|| Error::format(path, format!("tensor {name} is missing")))?;
            let want: Vec<i64> = shape.iter().map(|&s| s as i64).collect();
            if t.dtype != Dtype::F32 || t.shape != want {
                return Err(Error::format(
                    path,
                    format!(
                        "tensor {name} is {:?} {:?}; this model needs F32 {want:?}",
                        t.dtype, t.shape
                    ),
                ));
            }
            let values: Vec<f32> = t
                .bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Array::from_slice(&values, shape)
        })
        .collect()
}

/// The shapes of the flat parameter list for a model of config `c`.
pub fn param_shapes(spec: &LoraSpec, c: &ModelConfig) -> Vec<Vec<i32>> {
    let mut out = Vec::new();
    for (_, t) in spec.slots() {
        let (n, k) = t.shape(c);
        out.push(vec![spec.rank as i32, k as i32]);
        out.push(vec![n as i32, spec.rank as i32]);
    }
    out
}

/// Writes `adapters.safetensors` and `adapter_config.json` into `dir`.
pub fn save_adapters(
    dir: &Path,
    spec: &LoraSpec,
    params: &[Array],
    fingerprint: &[u8; 32],
    c: &ModelConfig,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let named: Vec<(String, &Array)> = param_names(spec).into_iter().zip(params).collect();
    write_safetensors(&dir.join(ADAPTERS_FILE), &named)?;
    let modules: Vec<String> = spec
        .targets
        .iter()
        .map(|t| t.module(0).rsplit('.').next().unwrap_or("").to_string())
        .collect();
    let config = json!({
        "peft_type": "LORA",
        "r": spec.rank,
        "lora_alpha": spec.alpha,
        "target_modules": modules,
        "layers_to_transform": spec.layers,
        "bias": "none",
        "mlx_engine": {
            "base_fingerprint": hex(fingerprint),
            "arch": c.arch.gguf_name(),
            "n_layers": c.n_layers,
            "hidden": c.hidden,
            "targets": spec.targets.iter().map(|t| t.name()).collect::<Vec<_>>(),
        },
    });
    let text = serde_json::to_string_pretty(&config).unwrap_or_default();
    write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())
}

/// Reads an adapter directory's spec from `adapter_config.json`, with the base model's
/// fingerprint when it records one.
pub fn read_spec(dir: &Path) -> Result<(LoraSpec, Option<String>)> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let json: Value =
        serde_json::from_str(&text).map_err(|e| Error::format(&path, e.to_string()))?;
    let bad = |what: &str| Error::format(&path, what.to_string());
    let rank = json
        .get("r")
        .and_then(Value::as_u64)
        .filter(|&r| (1..=4096).contains(&r))
        .ok_or_else(|| bad("\"r\" must be an integer in 1..=4096"))? as usize;
    let alpha = json
        .get("lora_alpha")
        .and_then(Value::as_f64)
        .filter(|a| a.is_finite())
        .ok_or_else(|| bad("\"lora_alpha\" must be a finite number"))? as f32;
    let ours = json.get("mlx_engine");
    let targets = match ours
        .and_then(|o| o.get("targets"))
        .and_then(Value::as_array)
    {
        Some(list) => list
            .iter()
            .map(|v| Target::parse(v.as_str().unwrap_or("")))
            .collect::<Result<Vec<_>>>()
            .map_err(|e| Error::format(&path, e.to_string()))?,
        None => json
            .get("target_modules")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("\"target_modules\" must be a list"))?
            .iter()
            .map(|v| {
                let name = v.as_str().unwrap_or("");
                Target::parse(name.strip_suffix("_proj").unwrap_or(name))
                    .map_err(|e| Error::format(&path, e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?,
    };
    let layers = json
        .get("layers_to_transform")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("\"layers_to_transform\" must be a list of layer indices"))?
        .iter()
        .map(|v| {
            v.as_u64()
                .map(|i| i as usize)
                .ok_or_else(|| bad("\"layers_to_transform\" must hold integers"))
        })
        .collect::<Result<Vec<_>>>()?;
    let fingerprint = ours
        .and_then(|o| o.get("base_fingerprint"))
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok((
        LoraSpec {
            rank,
            alpha,
            targets,
            layers,
        },
        fingerprint,
    ))
}

/// Loads the adapters in `dir` for a model of config `c` and weights fingerprint
/// `fingerprint`: refused when they were trained on another model or do not fit its shapes.
pub fn load_adapters(dir: &Path, c: &ModelConfig, fingerprint: &[u8; 32]) -> Result<Adapters> {
    let (spec, base) = read_spec(dir)?;
    let config_path = dir.join(CONFIG_FILE);
    if let Some(base) = base {
        if base != hex(fingerprint) {
            return Err(Error::format(
                config_path,
                "these adapters were trained on another model (base_fingerprint differs \
                 from this model's weights)",
            ));
        }
    }
    if let Some(&i) = spec.layers.iter().find(|&&i| i >= c.n_layers) {
        return Err(Error::format(
            config_path,
            format!(
                "layer {i} is out of range: this model has {} layers",
                c.n_layers
            ),
        ));
    }
    let names: Vec<(String, Vec<i32>)> = param_names(&spec)
        .into_iter()
        .zip(param_shapes(&spec, c))
        .collect();
    let params = read_safetensors(&dir.join(ADAPTERS_FILE), &names)?;
    Ok(adapters_from(&spec, c.n_layers, &params))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
