//! Fine-tuning: LoRA adapters trained on the frozen, still-quantized model with MLX's reverse
//! mode. The loss is the mean cross-entropy of the target tokens ([`data`]); its gradient with
//! respect to the adapters comes from `value_and_grad` over [`Transformer::forward_train`]
//! (the GGUF projections differentiate through our kernel's backward, dx = dy·W; norms, RoPE
//! and attention through MLX's ops). [`optim`] holds AdamW, clipping and the schedule,
//! [`checkpoint`] the files of a run; the `finetune` command is [`cli`].

#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod optim;

use crate::error::{Error, Result};
use crate::mlx::{ops, transforms, Array};
use crate::model::lora::Target;
use crate::model::Transformer;
use checkpoint::LoraSpec;
use data::{Batch, Example};
use optim::{AdamW, AdamWConfig, Schedule};
use serde_json::{json, Value};
use std::path::Path;

/// A small deterministic generator (SplitMix64) for the adapters' initial values and the data
/// order, so that a seed fixes a run.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// The generator of `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn symmetric(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// A uniformly random permutation of 0..n (Fisher–Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            p.swap(i, j);
        }
        p
    }
}

/// How a run trains: the adapters, the optimizer and the batches.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// Rank, α, targets and layers of the adapters.
    pub lora: LoraSpec,
    /// The schedule's peak learning rate.
    pub lr: f32,
    /// Warm-up steps of the schedule.
    pub warmup: u64,
    /// Updates in the run.
    pub steps: u64,
    /// Examples per micro-batch.
    pub batch: usize,
    /// Micro-batches whose gradients are summed into one update.
    pub grad_accum: usize,
    /// Gradients are scaled down to this global norm (0: no clipping).
    pub max_grad_norm: f32,
    /// AdamW's constants.
    pub adamw: AdamWConfig,
    /// Seeds the adapters' initial values and the data order.
    pub seed: u64,
}

impl TrainConfig {
    /// The fields a resumed run must share with its checkpoint, as JSON.
    fn identity(&self) -> Value {
        json!({
            "rank": self.lora.rank, "alpha": self.lora.alpha,
            "targets": self.lora.targets.iter().map(|t| t.name()).collect::<Vec<_>>(),
            "layers": self.lora.layers, "lr": self.lr, "warmup": self.warmup, "steps": self.steps,
            "batch": self.batch, "grad_accum": self.grad_accum,
            "max_grad_norm": self.max_grad_norm, "weight_decay": self.adamw.weight_decay,
            "seed": self.seed,
        })
    }
}

/// What one update did.
#[derive(Clone, Copy, Debug)]
pub struct StepReport {
    /// The update's number (1-based).
    pub step: u64,
    /// Mean cross-entropy of the update's target tokens (before the update).
    pub loss: f32,
    /// The gradient's global norm before clipping.
    pub grad_norm: f32,
    /// The learning rate used.
    pub lr: f32,
    /// Target tokens in the update.
    pub targets: usize,
    /// Tokens run through the model (inputs, padding included).
    pub tokens: usize,
}

/// A training run in memory: the frozen model, the adapters, the optimizer, the data.
pub struct Trainer<'a> {
    model: &'a Transformer,
    /// The run's configuration.
    pub config: TrainConfig,
    /// The adapters, flat: [A, B] per (layer, target) of `config.lora.slots()`.
    pub params: Vec<Array>,
    /// AdamW's state.
    pub optimizer: AdamW,
    schedule: Schedule,
    train: Vec<Example>,
}

impl<'a> Trainer<'a> {
    /// A new run: A uniform in ±1/√K, B zero (so the adapted model starts as the base).
    pub fn new(model: &'a Transformer, config: TrainConfig, train: Vec<Example>) -> Result<Self> {
        if train.is_empty() {
            return Err(Error::InvalidArgument("no training examples".into()));
        }
        let c = &model.config;
        let mut rng = Rng::new(config.seed);
        let mut params = Vec::new();
        for shape in checkpoint::param_shapes(&config.lora, c).chunks(2) {
            let (a, b) = (&shape[0], &shape[1]);
            let bound = 1.0 / (a[1] as f32).sqrt();
            let values: Vec<f32> = (0..a[0] * a[1]).map(|_| rng.symmetric() * bound).collect();
            params.push(Array::from_slice(&values, a)?);
            params.push(ops::zeros(b, crate::mlx::Dtype::F32)?);
        }
        let optimizer = AdamW::new(config.adamw, &params)?;
        let schedule = Schedule {
            peak: config.lr,
            min: config.lr * 0.1,
            warmup: config.warmup,
            total: config.steps,
        };
        Ok(Trainer {
            model,
            config,
            params,
            optimizer,
            schedule,
            train,
        })
    }

    /// Updates done so far.
    pub fn step(&self) -> u64 {
        self.optimizer.step
    }

    /// The examples of micro-batch `j` of the run: the data is read in epochs, each in the
    /// order of a permutation drawn from the seed and the epoch, so that the batches are a
    /// function of the seed and the step alone (a resumed run sees what a straight one would).
    fn micro_batch(&self, j: u64) -> Batch {
        let n = self.train.len() as u64;
        let b = self.config.batch as u64;
        let mut picked = Vec::with_capacity(self.config.batch);
        let mut epoch_order: Option<(u64, Vec<usize>)> = None;
        for p in j * b..(j + 1) * b {
            let epoch = p / n;
            if epoch_order.as_ref().is_none_or(|(e, _)| *e != epoch) {
                let mut rng =
                    Rng::new(self.config.seed ^ epoch.wrapping_mul(0x2545_f491_4f6c_dd1d));
                epoch_order = Some((epoch, rng.permutation(self.train.len())));
            }
            let order = &epoch_order.as_ref().map_or(&[][..], |(_, o)| o.as_slice());
            picked.push(&self.train[order[(p % n) as usize]]);
        }
        Batch::new(&picked)
    }

    /// One update: the summed gradient of `grad_accum` micro-batches, divided by their target
    /// count, clipped, then AdamW at the schedule's learning rate.
    pub fn train_step(&mut self) -> Result<StepReport> {
        let step = self.optimizer.step;
        let (mut loss_sum, mut targets, mut tokens) = (0.0f64, 0usize, 0usize);
        let mut grads: Option<Vec<Array>> = None;
        for g in 0..self.config.grad_accum as u64 {
            let batch = self.micro_batch(step * self.config.grad_accum as u64 + g);
            let (loss, gs) = loss_and_grad(self.model, &self.config.lora, &self.params, &batch)?;
            loss_sum += loss as f64;
            targets += batch.target_count();
            tokens += batch.b * batch.l;
            grads = Some(match grads {
                None => gs,
                Some(acc) => acc
                    .iter()
                    .zip(&gs)
                    .map(|(a, b)| ops::add(a, b))
                    .collect::<Result<_>>()?,
            });
        }
        let grads = grads.unwrap_or_default();
        let inv = Array::scalar(1.0 / targets.max(1) as f32)?;
        let grads = grads
            .iter()
            .map(|g| ops::multiply(g, &inv))
            .collect::<Result<Vec<_>>>()?;
        let (grad_norm, grads) = optim::clip_global_norm(&grads, self.config.max_grad_norm)?;
        if !(grad_norm.is_finite() && loss_sum.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "step {}: the loss ({loss_sum}) or the gradient norm ({grad_norm}) is not \
                 finite; try a lower --lr",
                step + 1
            )));
        }
        let lr = self.schedule.at(step);
        self.params = self.optimizer.update(&self.params, &grads, lr)?;
        Ok(StepReport {
            step: step + 1,
            loss: (loss_sum / targets.max(1) as f64) as f32,
            grad_norm,
            lr,
            targets,
            tokens,
        })
    }

    /// Mean cross-entropy of the target tokens of `examples` with the current adapters.
    pub fn eval_loss(&self, examples: &[Example]) -> Result<f32> {
        let (mut sum, mut count) = (0.0f64, 0usize);
        for chunk in examples.chunks(self.config.batch.max(1)) {
            let batch = Batch::new(&chunk.iter().collect::<Vec<_>>());
            let adapters = checkpoint::adapters_from(
                &self.config.lora,
                self.model.config.n_layers,
                &self.params,
            );
            let loss = batch_loss(self.model, &adapters, &batch)?;
            sum += loss.item::<f32>()? as f64;
            count += batch.target_count();
        }
        Ok((sum / count.max(1) as f64) as f32)
    }

    /// Writes the adapters, the optimizer state and the trainer state into `dir`.
    pub fn save(&self, dir: &Path, fingerprint: &[u8; 32], history: &[StepReport]) -> Result<()> {
        let c = &self.model.config;
        checkpoint::save_adapters(dir, &self.config.lora, &self.params, fingerprint, c)?;
        let names = checkpoint::param_names(&self.config.lora);
        let mut moments: Vec<(String, &Array)> = Vec::new();
        for (i, name) in names.iter().enumerate() {
            moments.push((format!("m.{name}"), &self.optimizer.m[i]));
            moments.push((format!("v.{name}"), &self.optimizer.v[i]));
        }
        checkpoint::write_safetensors(&dir.join(checkpoint::OPTIMIZER_FILE), &moments)?;
        let state = json!({
            "step": self.optimizer.step,
            "config": self.config.identity(),
            "history": history.iter().map(|r| json!({
                "step": r.step, "loss": r.loss, "grad_norm": r.grad_norm, "lr": r.lr,
            })).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&state).unwrap_or_default();
        checkpoint::write_atomic(&dir.join(checkpoint::STATE_FILE), text.as_bytes())
    }

    /// Continues from the checkpoint in `dir`: the adapters, the moments and the step. The
    /// checkpoint's run must have this run's configuration (rank, targets, schedule, data
    /// order, …), so that the result is the one a straight run gives, bit for bit.
    pub fn resume(&mut self, dir: &Path) -> Result<Vec<StepReport>> {
        let path = dir.join(checkpoint::STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let state: Value =
            serde_json::from_str(&text).map_err(|e| Error::format(&path, e.to_string()))?;
        let saved = state.get("config").cloned().unwrap_or(Value::Null);
        let ours = self.config.identity();
        if let (Some(a), Some(b)) = (saved.as_object(), ours.as_object()) {
            for (key, value) in b {
                if a.get(key) != Some(value) {
                    return Err(Error::format(
                        &path,
                        format!(
                            "--resume: the checkpoint's {key} is {}, this run's is {value}",
                            a.get(key).unwrap_or(&Value::Null)
                        ),
                    ));
                }
            }
        } else {
            return Err(Error::format(&path, "no \"config\" object"));
        }
        let step = state
            .get("step")
            .and_then(Value::as_u64)
            .ok_or_else(|| Error::format(&path, "no \"step\""))?;
        let c = &self.model.config;
        let shapes = checkpoint::param_shapes(&self.config.lora, c);
        let names = checkpoint::param_names(&self.config.lora);
        let named: Vec<(String, Vec<i32>)> = names.iter().cloned().zip(shapes.clone()).collect();
        self.params = checkpoint::read_safetensors(&dir.join(checkpoint::ADAPTERS_FILE), &named)?;
        let moment = |prefix: &str| -> Vec<(String, Vec<i32>)> {
            names
                .iter()
                .zip(&shapes)
                .map(|(n, s)| (format!("{prefix}.{n}"), s.clone()))
                .collect()
        };
        let opt_path = dir.join(checkpoint::OPTIMIZER_FILE);
        self.optimizer.m = checkpoint::read_safetensors(&opt_path, &moment("m"))?;
        self.optimizer.v = checkpoint::read_safetensors(&opt_path, &moment("v"))?;
        self.optimizer.step = step;
        let history = state
            .get("history")
            .and_then(Value::as_array)
            .map(|h| {
                h.iter()
                    .map(|r| StepReport {
                        step: r.get("step").and_then(Value::as_u64).unwrap_or(0),
                        loss: r.get("loss").and_then(Value::as_f64).unwrap_or(0.0) as f32,
                        grad_norm: r.get("grad_norm").and_then(Value::as_f64).unwrap_or(0.0) as f32,
                        lr: r.get("lr").and_then(Value::as_f64).unwrap_or(0.0) as f32,
                        targets: 0,
                        tokens: 0,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(history)
    }
}

/// The summed cross-entropy of `batch`'s weighted targets under `adapters` (a scalar array):
/// Σ w·(logsumexp(logits) − logit[target]).
pub fn batch_loss(
    model: &Transformer,
    adapters: &crate::model::lora::Adapters,
    batch: &Batch,
) -> Result<Array> {
    let logits = model.forward_train(&batch.inputs, batch.b, adapters)?; // [B, L, V]
    let v = model.config.vocab_size as i32;
    let logits = ops::reshape(&logits, &[-1, v])?; // [B·L, V]
    let n = batch.targets.len() as i32;
    let targets = Array::from_slice(&batch.targets, &[n])?;
    let weights = Array::from_slice(&batch.weights, &[n])?;
    let ce = crate::mlx::kernels::cross_entropy(&logits, &targets, &weights)?; // [B·L]
    ops::sum(&ce, 0, false)
}

/// The summed loss of `batch` and its gradient with respect to every adapter parameter.
pub fn loss_and_grad(
    model: &Transformer,
    spec: &LoraSpec,
    params: &[Array],
    batch: &Batch,
) -> Result<(f32, Vec<Array>)> {
    let n_layers = model.config.n_layers;
    let f = |args: &[Array]| -> Result<Vec<Array>> {
        let adapters = checkpoint::adapters_from(spec, n_layers, args);
        Ok(vec![batch_loss(model, &adapters, batch)?])
    };
    let argnums: Vec<i32> = (0..params.len() as i32).collect();
    let inputs: Vec<&Array> = params.iter().collect();
    let (values, grads) = transforms::value_and_grad_of(&f, &inputs, &argnums)?;
    let loss = values
        .first()
        .ok_or_else(|| Error::InvalidArgument("the loss function returned nothing".into()))?;
    let mut all: Vec<&Array> = vec![loss];
    all.extend(grads.iter());
    transforms::eval(&all)?;
    Ok((loss.item::<f32>()?, grads))
}

/// The layers `--layers` names: `all`, or the last N.
pub fn choose_layers(spec: &str, n_layers: usize) -> Result<Vec<usize>> {
    if spec == "all" {
        return Ok((0..n_layers).collect());
    }
    let n: usize = spec
        .parse()
        .ok()
        .filter(|&n| (1..=n_layers).contains(&n))
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "--layers {spec}: expected `all` or a count in 1..={n_layers}"
            ))
        })?;
    Ok((n_layers - n..n_layers).collect())
}

/// The targets of `--targets q,k,v,o`.
pub fn parse_targets(spec: &str) -> Result<Vec<Target>> {
    let mut out = Vec::new();
    for name in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let t = Target::parse(name)?;
        if !out.contains(&t) {
            out.push(t);
        }
    }
    if out.is_empty() {
        return Err(Error::InvalidArgument(
            "--targets names no projection".into(),
        ));
    }
    Ok(out)
}
