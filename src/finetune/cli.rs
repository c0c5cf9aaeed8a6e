//! `mlx-engine finetune`: LoRA training of a model on a JSON-lines file, with a progress bar,
//! validation, checkpoints (`--out`, `--save-every`) and `--resume`.

use crate::chat_template::ChatTemplate;
use crate::engine::{Engine, LoadOptions};
use crate::error::{Error, Result};
use crate::fetch::{self, FetchOptions};
use crate::finetune::checkpoint::LoraSpec;
use crate::finetune::data::{self, Encoder, Example};
use crate::finetune::optim::AdamWConfig;
use crate::finetune::{choose_layers, parse_targets, StepReport, TrainConfig, Trainer};
use crate::mlx::transforms;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `mlx-engine finetune`.
#[derive(clap::Args, Clone, Debug)]
pub struct FinetuneArgs {
    /// Model: registry name or GGUF path (its weights stay quantized and frozen).
    #[arg(long, short = 'm', default_value = crate::registry::DEFAULT_MODEL)]
    pub model: String,
    /// Training data: JSON lines of {"text": …} or {"messages": [{"role", "content"}, …]}.
    #[arg(long)]
    pub data: PathBuf,
    /// Validation data, same format; its loss is reported every --valid-every steps.
    #[arg(long)]
    pub valid: Option<PathBuf>,
    /// Adapter rank r.
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// Adapter α (the low-rank path is scaled by α/r).
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f32,
    /// Projections that get adapters: q,k,v,o,gate,up,down.
    #[arg(long, default_value = "q,k,v,o")]
    pub targets: String,
    /// Layers that get adapters: `all` or the last N.
    #[arg(long, default_value = "all")]
    pub layers: String,
    /// Peak learning rate (linear warm-up, then cosine decay to a tenth of it).
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f32,
    /// Warm-up steps.
    #[arg(long, default_value_t = 0)]
    pub warmup: u64,
    /// Updates to run (default: one epoch, or --epochs).
    #[arg(long, conflicts_with = "epochs")]
    pub steps: Option<u64>,
    /// Passes over the training data.
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Examples per micro-batch.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Longest example in tokens (longer ones are cut).
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    /// Micro-batches per update (their gradients are summed).
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Clip the gradient to this global norm (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f32,
    /// AdamW's decoupled weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// Seed of the adapters' initial values and of the data order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Validation loss every N steps (0: only at the start and the end).
    #[arg(long, default_value_t = 0)]
    pub valid_every: u64,
    /// Also write a checkpoint to OUT/checkpoint-STEP every N steps (0: only the final one).
    #[arg(long, default_value_t = 0)]
    pub save_every: u64,
    /// Where the adapters and the run's state are written.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run checkpointed in this directory (same options).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Threads for the CPU kernels (default: all cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
}

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Every update of the run (a resumed run's earlier ones included).
    pub history: Vec<StepReport>,
    /// Validation loss before the first update of this invocation and at the end.
    pub valid_loss: Option<(f32, f32)>,
    /// Training tokens per second (forward, backward and update) of this invocation.
    pub tokens_per_second: f64,
    /// MLX's peak memory during the run, bytes.
    pub mlx_peak: usize,
    /// The process's peak resident set, bytes (0 where unknown).
    pub peak_rss: usize,
}

/// Runs `mlx-engine finetune`.
pub fn run(args: &FinetuneArgs) -> Result<Summary> {
    if let Some(t) = args.threads {
        crate::mlx::kernels::set_num_threads(t);
    }
    for (flag, v) in [
        ("--rank", args.rank),
        ("--batch", args.batch),
        ("--seq-len", args.seq_len),
        ("--grad-accum", args.grad_accum),
    ] {
        if v == 0 {
            return Err(Error::InvalidArgument(format!("{flag} must be at least 1")));
        }
    }
    if !(args.lr.is_finite() && args.lr > 0.0 && args.alpha.is_finite()) {
        return Err(Error::InvalidArgument(
            "--lr must be positive and --alpha finite".into(),
        ));
    }
    crate::mlx::kernels::retain_freed_memory();
    let resolved = fetch::resolve(&args.model, &FetchOptions::default())?;
    let engine = Engine::load(&resolved.path, &LoadOptions::default())?;
    let tokenizer = engine.tokenizer()?;
    let template = match engine.chat_template()? {
        Some(src) => {
            let piece = |id: Option<u32>| {
                id.and_then(|i| tokenizer.id_to_token(i))
                    .unwrap_or("")
                    .to_string()
            };
            Some(ChatTemplate::new(
                &src,
                &piece(tokenizer.bos()),
                &piece(tokenizer.eos()),
            )?)
        }
        None => None,
    };
    let enc = Encoder {
        tokenizer: &tokenizer,
        template: template.as_ref(),
    };
    let train = data::load_jsonl(&args.data, &enc, args.seq_len)?;
    let valid: Option<Vec<Example>> = args
        .valid
        .as_ref()
        .map(|p| data::load_jsonl(p, &enc, args.seq_len))
        .transpose()?;
    let c = engine.config();
    let per_step = (args.batch * args.grad_accum) as u64;
    let steps = args
        .steps
        .unwrap_or_else(|| (args.epochs.unwrap_or(1) * train.len() as u64).div_ceil(per_step));
    let config = TrainConfig {
        lora: LoraSpec {
            rank: args.rank,
            alpha: args.alpha,
            targets: parse_targets(&args.targets)?,
            layers: choose_layers(&args.layers, c.n_layers)?,
        },
        lr: args.lr,
        warmup: args.warmup,
        steps,
        batch: args.batch,
        grad_accum: args.grad_accum,
        max_grad_norm: args.max_grad_norm,
        adamw: AdamWConfig {
            weight_decay: args.weight_decay,
            ..AdamWConfig::default()
        },
        seed: args.seed,
    };
    let fingerprint = engine.base_fingerprint();
    let mut trainer = Trainer::new(&engine.model, config, train)?;
    let mut history = match &args.resume {
        Some(dir) => trainer.resume(dir)?,
        None => Vec::new(),
    };
    transforms::reset_peak_memory()?;
    let valid_start = valid.as_ref().map(|v| trainer.eval_loss(v)).transpose()?;
    let bar = progress_bar(steps, trainer.step());
    if let Some(l) = valid_start {
        bar.println(format!(
            "step {:>5}: validation loss {l:.4}",
            trainer.step()
        ));
    }
    let start = Instant::now();
    let mut tokens = 0usize;
    while trainer.step() < steps {
        let report = trainer.train_step()?;
        tokens += report.tokens;
        history.push(report);
        let tps = tokens as f64 / start.elapsed().as_secs_f64();
        bar.set_position(report.step);
        bar.set_message(format!(
            "loss {:.4}  lr {:.2e}  {:.1} tok/s",
            report.loss, report.lr, tps
        ));
        if bar.is_hidden() {
            eprintln!(
                "step {:>5}/{steps}: loss {:.4}, grad norm {:.3}, lr {:.2e}, {:.1} tok/s",
                report.step, report.loss, report.grad_norm, report.lr, tps
            );
        }
        let step = report.step;
        if let Some(v) = &valid {
            if args.valid_every > 0 && step.is_multiple_of(args.valid_every) && step < steps {
                let l = trainer.eval_loss(v)?;
                bar.println(format!("step {step:>5}: validation loss {l:.4}"));
            }
        }
        if args.save_every > 0 && step.is_multiple_of(args.save_every) && step < steps {
            trainer.save(
                &args.out.join(format!("checkpoint-{step}")),
                &fingerprint,
                &history,
            )?;
        }
    }
    bar.finish_and_clear();
    let elapsed = start.elapsed().as_secs_f64();
    trainer.save(&args.out, &fingerprint, &history)?;
    let valid_end = valid.as_ref().map(|v| trainer.eval_loss(v)).transpose()?;
    let summary = Summary {
        history,
        valid_loss: valid_start.zip(valid_end),
        tokens_per_second: if elapsed > 0.0 {
            tokens as f64 / elapsed
        } else {
            0.0
        },
        mlx_peak: transforms::memory_stats()?.peak,
        peak_rss: peak_rss(),
    };
    print_summary(args, &summary);
    Ok(summary)
}

/// The progress bar on a terminal (hidden elsewhere, where steps are logged as lines).
fn progress_bar(total: u64, done: u64) -> indicatif::ProgressBar {
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let style =
        indicatif::ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg} (ETA {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_position(done);
    bar
}

fn print_summary(args: &FinetuneArgs, s: &Summary) {
    let first = s.history.first().map_or(f32::NAN, |r| r.loss);
    let last = s.history.last().map_or(f32::NAN, |r| r.loss);
    println!(
        "trained {} steps: training loss {first:.4} -> {last:.4}",
        s.history.len()
    );
    if let Some((a, b)) = s.valid_loss {
        println!("validation loss {a:.4} -> {b:.4}");
    }
    println!(
        "{:.1} training tokens/s; MLX peak {:.0} MiB, peak RSS {:.0} MiB",
        s.tokens_per_second,
        s.mlx_peak as f64 / 1048576.0,
        s.peak_rss as f64 / 1048576.0
    );
    println!(
        "adapters written to {} (use them with --adapter {})",
        args.out.display(),
        args.out.display()
    );
}

/// VmHWM of /proc/self/status in bytes (0 where it cannot be read).
fn peak_rss() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<usize>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
