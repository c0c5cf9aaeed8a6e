//! `mlx-engine bench`: prompt-processing (`pp N`) and generation (`tg N`) speed, reported like
//! llama-bench (tokens/s, mean ± sample standard deviation over repetitions).
#![forbid(unsafe_code)]

use crate::engine::{Engine, LoadOptions, LogitRows};
use crate::error::{Error, Result};
use crate::fetch::{self, FetchOptions};
use crate::mlx::{ops, transforms, Array, Device};
use std::time::Instant;

/// Arguments of `mlx-engine bench`.
#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// Model: registry name or GGUF path.
    #[arg(long, short = 'm', default_value = crate::registry::DEFAULT_MODEL)]
    pub model: String,
    /// Prompt lengths to measure, comma-separated.
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_delimiter = ',',
        default_value = "128,512"
    )]
    pub n_prompt: Vec<usize>,
    /// Generation lengths to measure, comma-separated.
    #[arg(
        short = 'n',
        long = "n-gen",
        value_delimiter = ',',
        default_value = "64"
    )]
    pub n_gen: Vec<usize>,
    /// Context already in the cache before each generation test, comma-separated (like
    /// llama-bench's `-d`): `tg64 @ d2048` decodes 64 tokens after 2,048 positions.
    #[arg(
        short = 'd',
        long = "n-depth",
        value_delimiter = ',',
        default_value = "0"
    )]
    pub n_depth: Vec<usize>,
    /// Batched decode: for each B, B sequences are each prefilled with `--batch-prompt`
    /// tokens, then every generation length is decoded in batched steps of B tokens (like
    /// llama-batched-bench's `-npl`); aggregate tokens/s.
    #[arg(long, value_delimiter = ',')]
    pub batch: Vec<usize>,
    /// Prompt length of each sequence in the batched tests.
    #[arg(long, default_value_t = 128)]
    pub batch_prompt: usize,
    /// Repetitions of each test.
    #[arg(short = 'r', long, default_value_t = 3)]
    pub repetitions: usize,
    /// A LoRA adapter directory (written by `mlx-engine finetune`) applied to the model.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<std::path::PathBuf>,
    /// Threads for the CPU kernels (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// KV cache element type: `f16` (half the memory and the attention's reads) or `f32`.
    #[arg(long = "cache-type", value_name = "f16|f32", default_value = "f16")]
    pub cache_type: crate::kv_cache::KvDtype,
    /// Where the model runs: `cpu` or `gpu` (a `--features cuda` build).
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
    /// Output format: table, markdown or json.
    #[arg(short = 'o', long, default_value = "table")]
    pub output: String,
}

/// One measured test.
#[derive(Clone, Debug)]
pub struct BenchResult {
    /// `pp128`, `tg64`, …
    pub test: String,
    /// Tokens per second of each repetition.
    pub samples: Vec<f64>,
}

impl BenchResult {
    /// Mean tokens/s.
    pub fn mean(&self) -> f64 {
        self.samples.iter().sum::<f64>() / self.samples.len().max(1) as f64
    }

    /// Sample standard deviation of tokens/s.
    pub fn sd(&self) -> f64 {
        let n = self.samples.len();
        if n < 2 {
            return 0.0;
        }
        let m = self.mean();
        (self.samples.iter().map(|s| (s - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    }
}

/// Deterministic token ids spread over the vocabulary (what is measured does not depend on
/// the text).
pub fn bench_tokens(n: usize, vocab: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((i as u64 * 2_654_435_761 + 12_345) % (vocab as u64 - 1).max(1)) as u32 + 1)
        .collect()
}

/// Prefills `n` tokens into a fresh cache; returns tokens/s.
pub fn measure_prompt(engine: &Engine, n: usize) -> Result<f64> {
    let tokens = bench_tokens(n, engine.config().vocab_size);
    let mut cache = engine.new_cache();
    let start = Instant::now();
    engine.prefill(&tokens, &mut cache, 512, LogitRows::Last)?;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Decodes `n` tokens one at a time after a `context`-token prompt (greedy, each step
/// evaluated, as a real generation loop does); returns tokens/s of the decode steps.
pub fn measure_generation(engine: &Engine, context: usize, n: usize) -> Result<f64> {
    let vocab = engine.config().vocab_size;
    let mut cache = engine.new_cache();
    let prompt = bench_tokens(context.max(1), vocab);
    let prefilled = engine.prefill(&prompt, &mut cache, 512, LogitRows::Last)?;
    let mut logits = Array::from_slice(&prefilled.data, &[vocab as i32])?; // [V]
    let start = Instant::now();
    for _ in 0..n {
        let next = ops::argmax(&logits, -1, false)?;
        let next = next.to_vec::<u32>()?;
        logits = engine.decode(&next[..1], &mut [&mut cache])?;
        transforms::eval(&[&logits])?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Prefills `batch` sequences with `prompt` tokens each (distinct token streams), then decodes
/// `n` batched steps of one token per sequence (greedy, each step evaluated); returns the
/// aggregate tokens/s of the decode steps (`batch · n / time`).
pub fn measure_batched(engine: &Engine, batch: usize, prompt: usize, n: usize) -> Result<f64> {
    if batch == 0 {
        return Err(Error::InvalidArgument(
            "--batch: a batch of 0 sequences".into(),
        ));
    }
    let vocab = engine.config().vocab_size;
    let mut caches: Vec<_> = (0..batch).map(|_| engine.new_cache()).collect();
    let mut next = Vec::with_capacity(batch);
    for (s, cache) in caches.iter_mut().enumerate() {
        let tokens = bench_tokens(prompt.max(1) + s, vocab);
        let prefilled = engine.prefill(&tokens[s..], cache, 512, LogitRows::Last)?;
        next.push(crate::sampler::argmax(&prefilled.data));
    }
    let start = Instant::now();
    for _ in 0..n {
        let logits = {
            let mut refs: Vec<&mut _> = caches.iter_mut().collect();
            engine.decode(&next, &mut refs)? // [B, 1, V]
        };
        let best = ops::argmax(&logits, -1, false)?; // [B, 1]
        next = best.to_vec::<u32>()?;
    }
    Ok((batch * n) as f64 / start.elapsed().as_secs_f64())
}

/// Peak resident set size of this process (Linux `VmHWM`), if the platform reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Runs `mlx-engine bench`.
pub fn run(args: &BenchArgs) -> Result<()> {
    if let Some(threads) = args.threads {
        crate::mlx::kernels::set_num_threads(threads);
    }
    crate::mlx::set_default_device(args.device)?;
    let resolved = fetch::resolve(&args.model, &FetchOptions::default())?;
    let load = LoadOptions {
        device: args.device,
        adapter: args.adapter.clone(),
        kv_dtype: args.cache_type,
        ..LoadOptions::default()
    };
    let engine = Engine::load(&resolved.path, &load)?;
    let mut results = Vec::new();
    // One warm-up pass so that page faults of the mapped weights are not measured.
    measure_prompt(&engine, 16)?;
    // A length of 0 skips that kind of test, as in llama-bench.
    for &p in args.n_prompt.iter().filter(|&&p| p > 0) {
        let samples = (0..args.repetitions)
            .map(|_| measure_prompt(&engine, p))
            .collect::<Result<Vec<_>>>()?;
        results.push(BenchResult {
            test: format!("pp{p}"),
            samples,
        });
    }
    for &n in args.n_gen.iter().filter(|&&n| n > 0) {
        for &d in &args.n_depth {
            let samples = (0..args.repetitions)
                .map(|_| measure_generation(&engine, d.max(1), n))
                .collect::<Result<Vec<_>>>()?;
            let test = match d {
                0 => format!("tg{n}"),
                d => format!("tg{n} @ d{d}"),
            };
            results.push(BenchResult { test, samples });
        }
        for &b in &args.batch {
            let samples = (0..args.repetitions)
                .map(|_| measure_batched(&engine, b, args.batch_prompt, n))
                .collect::<Result<Vec<_>>>()?;
            results.push(BenchResult {
                test: format!("tg{n} B={b} @ d{}", args.batch_prompt),
                samples,
            });
        }
    }
    let size = std::fs::metadata(&resolved.path)
        .map(|m| m.len())
        .unwrap_or(0);
    let info = ModelInfo {
        name: resolved
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        size_mib: size as f64 / (1u64 << 20) as f64,
        params_m: engine.config().parameter_count() as f64 / 1e6,
        backend: format!("{:?}", engine.execution),
        threads: crate::mlx::kernels::num_threads(),
        peak_rss_mib: peak_rss_bytes().unwrap_or(0) >> 20,
        mlx_peak_mib: (crate::mlx::transforms::memory_stats()?.peak >> 20) as u64,
        weights_mib: crate::mlx::kernels::weight_bytes() >> 20,
    };
    print!("{}", format_results(&info, &results, &args.output)?);
    Ok(())
}

/// What the report says about the model and the run.
pub struct ModelInfo {
    /// File name.
    pub name: String,
    /// File size in MiB.
    pub size_mib: f64,
    /// Parameters in millions.
    pub params_m: f64,
    /// Execution path.
    pub backend: String,
    /// Kernel threads.
    pub threads: usize,
    /// Peak resident set size of the process over the whole run (load included), MiB.
    pub peak_rss_mib: u64,
    /// Peak memory held by MLX's allocator over the run (activations, KV cache), MiB.
    pub mlx_peak_mib: u64,
    /// Kernel weights in our own arena (outside MLX's allocator), MiB.
    pub weights_mib: u64,
}

/// Renders results as `table`, `markdown` or `json`.
pub fn format_results(info: &ModelInfo, results: &[BenchResult], format: &str) -> Result<String> {
    let mut out = String::new();
    match format {
        "json" => {
            let rows: Vec<serde_json::Value> = results
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "model": info.name, "size_mib": info.size_mib, "params_m": info.params_m,
                        "backend": info.backend, "threads": info.threads, "test": r.test,
                        "t_s": r.mean(), "t_s_sd": r.sd(), "samples": r.samples,
                        "peak_rss_mib": info.peak_rss_mib, "mlx_peak_mib": info.mlx_peak_mib,
                        "weights_mib": info.weights_mib,
                    })
                })
                .collect();
            out = serde_json::to_string_pretty(&rows)
                .map_err(|e| Error::InvalidArgument(e.to_string()))?
                + "\n";
        }
        "table" | "markdown" | "md" => {
            out.push_str("| model | size | params | backend | threads | test | t/s |\n");
            out.push_str("| --- | ---: | ---: | --- | ---: | ---: | ---: |\n");
            for r in results {
                out.push_str(&format!(
                    "| {} | {:.1} MiB | {:.1} M | {} | {} | {} | {:.2} ± {:.2} |\n",
                    info.name,
                    info.size_mib,
                    info.params_m,
                    info.backend,
                    info.threads,
                    r.test,
                    r.mean(),
                    r.sd()
                ));
            }
            out.push_str(&format!(
                "\npeak RSS {} MiB, MLX peak {} MiB + kernel weights {} MiB (whole run, load included)\n",
                info.peak_rss_mib, info.mlx_peak_mib, info.weights_mib
            ));
        }
        other => {
            return Err(Error::InvalidArgument(format!(
                "output format '{other}' (table, markdown, json)"
            )))
        }
    }
    Ok(out)
}
