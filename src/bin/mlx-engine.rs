//! The `mlx-engine` command: generate text with a model, list and fetch models, benchmark,
//! serve an OpenAI-compatible API.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use mlx_engine::chat_template::{ChatMessage, ChatTemplate};
use mlx_engine::constraint::{Grammar, GrammarCompiler};
use mlx_engine::engine::{Engine, GenerateOptions, LoadOptions};
use mlx_engine::fetch::{self, FetchOptions};
use mlx_engine::mlx::Device;
use mlx_engine::registry;
use mlx_engine::sampler::{Sampler, SamplerParams};
use mlx_engine::speculative;
use mlx_engine::tokenizer::{StreamDecoder, Tokenizer};
use std::io::{IsTerminal, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Run Llama-family language models (Qwen2.5, TinyLlama, Llama 2/3, Gemma 3) on MLX.
///
/// With no subcommand, generates text: the prompt comes from --prompt or standard input, and
/// tokens are printed as they are produced. Models are named from the registry
/// (`mlx-engine models`) or given as a path to a GGUF file.
#[derive(Parser)]
#[command(name = "mlx-engine", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
    /// Log what the engine does (load steps, timings) to stderr.
    #[arg(long, short = 'v', global = true)]
    verbose: bool,
}

#[derive(Subcommand)]
enum Command {
    /// List the registry's models and which are already downloaded.
    Models,
    /// Download a model into the cache without running it.
    Pull {
        /// A registry name, e.g. `tinyllama`.
        name: String,
    },
    /// Measure prompt processing and generation speed (like llama-bench).
    Bench(mlx_engine::bench::BenchArgs),
    /// Serve the model over an OpenAI-compatible HTTP API (chat, completions, streaming).
    Serve(mlx_engine::server::ServeArgs),
    /// Train LoRA adapters on the quantized model (then run them with --adapter DIR).
    Finetune(mlx_engine::finetune::cli::FinetuneArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Model: a registry name (`qwen2.5-coder-0.5b`, `tinyllama`, …) or a path to a GGUF file.
    #[arg(long, short = 'm', default_value = registry::DEFAULT_MODEL)]
    model: String,
    /// The prompt; read from standard input when absent.
    #[arg(long, short = 'p')]
    prompt: Option<String>,
    /// Most tokens to generate.
    #[arg(long = "max-tokens", short = 'n', default_value_t = 256)]
    max_tokens: usize,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    chat: bool,
    /// A system message (implies --chat).
    #[arg(long)]
    system: Option<String>,
    /// Sampling temperature; 0 picks the most likely token every time.
    #[arg(long, default_value_t = 0.8)]
    temp: f32,
    /// Keep only the k most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Keep the smallest set of tokens whose probability adds up to p.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Drop tokens less likely than min-p times the most likely one.
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// Penalise tokens seen in the last --repeat-last-n tokens (1: off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// How many recent tokens the penalties look at.
    #[arg(long, default_value_t = 64)]
    repeat_last_n: usize,
    /// Seed for sampling; the same seed gives the same text.
    #[arg(long)]
    seed: Option<u64>,
    /// Add BIAS (in [-100, 100]) to token ID's logit before sampling; repeatable
    /// (`--logit-bias 15=-100` all but bans token 15).
    #[arg(long = "logit-bias", value_name = "ID=BIAS", value_parser = parse_logit_bias)]
    logit_bias: Vec<(u32, f32)>,
    /// A LoRA adapter directory (written by `mlx-engine finetune`) applied to the model.
    #[arg(long, value_name = "DIR")]
    adapter: Option<std::path::PathBuf>,
    /// KV cache element type: `f16` (half the memory and the attention's reads) or `f32`.
    #[arg(long = "cache-type", value_name = "f16|f32", default_value = "f16")]
    cache_type: mlx_engine::kv_cache::KvDtype,
    /// Threads for the CPU kernels (default: all cores).
    #[arg(long, short = 't')]
    threads: Option<usize>,
    /// Where the model runs: `cpu` (our quantized kernels) or `gpu` (MLX's GPU backend, in a
    /// `--features cuda` build).
    #[arg(long, value_enum, default_value = "cpu")]
    device: Device,
    /// Speculative decoding: `lookup` drafts from n-gram matches in the text so far, `draft`
    /// from a smaller model (--draft-model). The output is distributed as without it.
    #[arg(long, value_enum)]
    speculative: Option<Speculative>,
    /// The draft model of `--speculative draft`: a registry name or a GGUF path.
    #[arg(long)]
    draft_model: Option<String>,
    /// Most tokens drafted per step (default: 8 for lookup, 4 for a draft model).
    #[arg(long)]
    draft_max: Option<usize>,
    /// Constrain the output to a JSON Schema: a file, or the schema's JSON text.
    #[arg(long, value_name = "FILE|JSON", group = "grammar_kind")]
    json_schema: Option<String>,
    /// Constrain the output to any JSON object.
    #[arg(long, group = "grammar_kind")]
    json: bool,
    /// Constrain the output to match a regular expression (the whole output).
    #[arg(long, value_name = "RE", group = "grammar_kind")]
    regex: Option<String>,
    /// Constrain the output to a Lark grammar file (llguidance's dialect).
    #[arg(long, value_name = "FILE.lark", group = "grammar_kind")]
    grammar: Option<std::path::PathBuf>,
}

/// Where speculative drafts come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Speculative {
    /// Prompt lookup: the tokens that followed an earlier occurrence of the last n-gram.
    Lookup,
    /// A draft model of the same vocabulary.
    Draft,
}

fn main() {
    let cli = Cli::parse();
    let filter = if cli.verbose {
        "mlx_engine=debug"
    } else {
        "mlx_engine=warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match &cli.command {
        Some(Command::Models) => list_models(),
        Some(Command::Pull { name }) => pull(name),
        Some(Command::Bench(args)) => mlx_engine::bench::run(args).map_err(Into::into),
        Some(Command::Serve(args)) => mlx_engine::server::serve(args).map_err(Into::into),
        Some(Command::Finetune(args)) => mlx_engine::finetune::cli::run(args)
            .map(|_| ())
            .map_err(Into::into),
        None => run(&cli.run),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

fn list_models() -> Result<()> {
    let opts = FetchOptions::default();
    let gpu = if Device::Gpu.is_available() {
        "gpu available"
    } else if cfg!(feature = "cuda") {
        "gpu: none found (no NVIDIA driver or device)"
    } else {
        "gpu: not in this build (see `--features cuda`)"
    };
    println!("devices: cpu (default), {gpu}\n");
    for card in registry::all() {
        let cached = fetch::cached(card, &opts);
        let state = match (&cached, card.runnable) {
            (Some(path), _) => format!("cached at {}", path.display()),
            (None, true) => "not downloaded".to_string(),
            (None, false) => "not downloaded (architecture not supported yet)".to_string(),
        };
        println!(
            "{:<22} {:<8} {}\n{:<22} {}",
            card.name, card.architecture, card.description, "", state
        );
    }
    Ok(())
}

fn pull(name: &str) -> Result<()> {
    let resolved = fetch::pull(name, &FetchOptions::default())?;
    println!("{}", resolved.path.display());
    Ok(())
}

fn read_prompt(args: &RunArgs) -> Result<String> {
    if let Some(p) = &args.prompt {
        return Ok(p.clone());
    }
    if std::io::stdin().is_terminal() {
        eprintln!("Type the prompt, then Ctrl-D:");
    }
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading the prompt from standard input")?;
    Ok(text)
}

/// The prompt as the model should see it: plain, or rendered through the chat template.
fn render_prompt(
    args: &RunArgs,
    engine: &Engine,
    tokenizer: &Tokenizer,
    prompt: &str,
) -> Result<String> {
    if !args.chat && args.system.is_none() {
        return Ok(prompt.to_string());
    }
    let source = engine
        .chat_template()?
        .context("--chat: the model has no chat template")?;
    let piece = |id: Option<u32>| {
        id.and_then(|i| tokenizer.id_to_token(i))
            .unwrap_or("")
            .to_string()
    };
    let template = ChatTemplate::new(&source, &piece(tokenizer.bos()), &piece(tokenizer.eos()))?;
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(ChatMessage::system(system.clone()));
    }
    messages.push(ChatMessage::user(prompt.to_string()));
    Ok(template.render(&messages, true)?)
}

/// The drafter `--speculative` asks for and its draft length; `None` without speculation.
fn make_drafter(
    args: &RunArgs,
    target: &Engine,
) -> Result<Option<(Box<dyn speculative::Drafter>, usize)>> {
    if args.speculative != Some(Speculative::Draft) && args.draft_model.is_some() {
        anyhow::bail!("--draft-model needs --speculative draft");
    }
    match args.speculative {
        None => {
            if args.draft_max.is_some() {
                anyhow::bail!("--draft-max needs --speculative");
            }
            Ok(None)
        }
        Some(Speculative::Lookup) => Ok(Some((
            Box::new(speculative::PromptLookup::default()),
            args.draft_max.unwrap_or(8),
        ))),
        Some(Speculative::Draft) => {
            let name = args
                .draft_model
                .as_deref()
                .context("--speculative draft needs --draft-model NAME|PATH")?;
            let resolved = fetch::resolve(name, &FetchOptions::default())?;
            let load = LoadOptions {
                device: args.device,
                ..LoadOptions::default()
            };
            let draft = Engine::load(&resolved.path, &load)
                .with_context(|| format!("loading the draft model {}", resolved.path.display()))?;
            let model = speculative::DraftModel::new(target, draft)
                .with_context(|| format!("--draft-model {name}"))?;
            Ok(Some((Box::new(model), args.draft_max.unwrap_or(4))))
        }
    }
}

/// " | drafted D, accepted A (P%)" for the stats line; empty without speculation.
fn speculation_summary(stats: &mlx_engine::engine::GenerateStats, on: bool) -> String {
    if !on {
        return String::new();
    }
    let rate = 100.0 * stats.accepted_tokens as f64 / stats.drafted_tokens.max(1) as f64;
    format!(
        " | drafted {}, accepted {} ({rate:.0}%)",
        stats.drafted_tokens, stats.accepted_tokens
    )
}

/// The grammar `--json-schema`, `--json`, `--regex` or `--grammar` asks for, if any.
fn requested_grammar(args: &RunArgs) -> Result<Option<Grammar>> {
    if let Some(arg) = &args.json_schema {
        let path = std::path::Path::new(arg);
        let text = match !arg.trim_start().starts_with(['{', '[']) && path.is_file() {
            true => std::fs::read_to_string(path)
                .with_context(|| format!("--json-schema: reading {}", path.display()))?,
            false => arg.clone(),
        };
        return Grammar::json_schema_text(&text)
            .map(Some)
            .with_context(|| format!("--json-schema {arg}"));
    }
    if args.json {
        return Ok(Some(Grammar::JsonObject));
    }
    if let Some(rx) = &args.regex {
        return Ok(Some(Grammar::Regex(rx.clone())));
    }
    if let Some(path) = &args.grammar {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--grammar: reading {}", path.display()))?;
        return Ok(Some(Grammar::Lark(text)));
    }
    Ok(None)
}

/// The sampler, with the requested grammar compiled for `tokenizer` (a grammar llguidance
/// refuses is an error naming the flag).
fn make_sampler(args: &RunArgs, params: SamplerParams, tokenizer: &Tokenizer) -> Result<Sampler> {
    let Some(grammar) = requested_grammar(args)? else {
        return Ok(Sampler::new(params));
    };
    let flag = match &grammar {
        Grammar::JsonSchema(_) => "--json-schema",
        Grammar::JsonObject => "--json",
        Grammar::Regex(_) => "--regex",
        Grammar::Lark(_) => "--grammar",
    };
    let constraint = GrammarCompiler::new(tokenizer)?
        .compile(&grammar)
        .with_context(|| flag.to_string())?;
    Ok(Sampler::with_constraint(params, constraint))
}

/// " | grammar: F forced, C checked, M masks (p50 X µs, p99 Y µs)"; empty without one.
fn grammar_summary(sampler: &Sampler, forced: usize) -> String {
    let Some(c) = sampler.constraint() else {
        return String::new();
    };
    let stats = c.stats();
    let mut full: Vec<f64> = stats.full.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    full.sort_by(f64::total_cmp);
    let at = |q: f64| {
        full.get(((full.len() as f64 - 1.0) * q).round() as usize)
            .copied()
    };
    format!(
        " | grammar: {forced} forced, {} allowed at first pick, {} masks (p50 {:.0} µs, p99 {:.0} µs)",
        stats.fast,
        full.len(),
        at(0.5).unwrap_or(0.0),
        at(0.99).unwrap_or(0.0)
    )
}

/// `ID=BIAS` of `--logit-bias`.
fn parse_logit_bias(arg: &str) -> std::result::Result<(u32, f32), String> {
    let (id, bias) = arg
        .split_once('=')
        .ok_or_else(|| format!("'{arg}' is not ID=BIAS"))?;
    let id = id
        .trim()
        .parse()
        .map_err(|_| format!("'{id}' is not a token id"))?;
    let bias = bias
        .trim()
        .parse()
        .map_err(|_| format!("'{bias}' is not a number"))?;
    Ok((id, bias))
}

fn run(args: &RunArgs) -> Result<()> {
    if let Some(threads) = args.threads {
        mlx_engine::mlx::kernels::set_num_threads(threads);
    }
    // Checked first, so that a missing GPU is reported before a model is fetched or read.
    mlx_engine::mlx::set_default_device(args.device)?;
    let prompt = read_prompt(args)?;
    let resolved = fetch::resolve(&args.model, &FetchOptions::default())?;
    tracing::info!("model {} from {}", resolved.path.display(), resolved.source);
    let load = LoadOptions {
        device: args.device,
        adapter: args.adapter.clone(),
        kv_dtype: args.cache_type,
        ..LoadOptions::default()
    };
    let engine = Engine::load(&resolved.path, &load)?;
    let tokenizer = engine.tokenizer()?;
    let text = render_prompt(args, &engine, &tokenizer, &prompt)?;
    let chat = args.chat || args.system.is_some();
    // A rendered chat template already holds its special tokens (BOS included where wanted).
    let ids = tokenizer.encode(&text, !chat)?;

    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&interrupted);
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")?;

    let params = SamplerParams {
        temperature: args.temp,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repetition_penalty: args.repeat_penalty,
        penalty_last_n: args.repeat_last_n,
        logit_bias: args.logit_bias.clone(),
        seed: args.seed,
        ..SamplerParams::default()
    };
    params.validate_for(engine.config().vocab_size)?;
    let mut sampler = make_sampler(args, params, &tokenizer)?;
    let options = GenerateOptions {
        max_new: args.max_tokens,
        ..GenerateOptions::default()
    };
    let mut drafter = make_drafter(args, &engine)?;
    let mut stream = StreamDecoder::new(&tokenizer, true);
    let mut stdout = std::io::stdout().lock();
    let on_token = |id| {
        if let Some(piece) = stream.push(id) {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        }
        !interrupted.load(Ordering::SeqCst)
    };
    let is_eog = |id| tokenizer.is_eog(id);
    let (_, stats) = match drafter.as_mut() {
        None => engine.generate(&ids, &mut sampler, &options, is_eog, on_token)?,
        Some((drafter, draft_max)) => speculative::Speculator {
            engine: &engine,
            drafter: drafter.as_mut(),
            options: speculative::SpeculativeOptions {
                draft_max: *draft_max,
                adaptive: true,
            },
        }
        .generate(&ids, &mut sampler, &options, is_eog, on_token)?,
    };
    if let Some(rest) = stream.finish() {
        let _ = stdout.write_all(rest.as_bytes());
    }
    let _ = writeln!(stdout);
    let memory = mlx_engine::mlx::transforms::memory_stats().unwrap_or_default();
    eprintln!(
        "load {:.2} s | prompt {} tokens, {:.1} t/s | generated {} tokens, {:.1} t/s | peak RSS {} MiB, MLX peak {} MiB + weights {} MiB{}{}{}",
        engine.load_time.as_secs_f64(),
        stats.prompt_tokens,
        stats.prompt_tps(),
        stats.generated_tokens,
        stats.generate_tps(),
        mlx_engine::bench::peak_rss_bytes().unwrap_or(0) >> 20,
        memory.peak >> 20,
        mlx_engine::mlx::kernels::weight_bytes() >> 20,
        speculation_summary(&stats, drafter.is_some()),
        grammar_summary(&sampler, stats.forced_tokens),
        if interrupted.load(Ordering::SeqCst) { " | interrupted" } else { "" }
    );
    Ok(())
}
