//! `mlx-engine serve`: an OpenAI-compatible HTTP server.
//!
//! Three parts: [`http`] (routes, auth, limits, SSE; never touches MLX), [`api`] (the OpenAI
//! request and response shapes) and [`scheduler`] (the engine thread that owns the
//! [`Backend`](crate::backend::Backend) and batches every active sequence into one decode per
//! step, with a [`prefix_cache`]). They talk through a bounded job queue and one event channel
//! per request, and share the [`metrics`] and a stop flag set by SIGINT/SIGTERM.
#![forbid(unsafe_code)]

pub mod api;
pub mod connections;
pub mod http;
pub mod logprobs;
pub mod metrics;
pub mod prefix_cache;
pub mod scheduler;
pub mod stop;
pub mod tools;

use crate::fetch::{self, FetchOptions};
use crate::speculative::SpeculativeOptions;
use crate::{Error, Result};
use scheduler::{EngineConfig, ModelInfo, Shared};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, OnceLock};
use std::time::Duration;

/// How long, after SIGINT/SIGTERM, the server waits for connections to finish before it exits
/// anyway (a client that stops reading its stream cannot hold it up).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The `serve` subcommand's options.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Model: a registry name or a path to a GGUF file.
    #[arg(long, short = 'm', default_value = crate::registry::DEFAULT_MODEL)]
    pub model: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Most sequences generated together (continuous batching).
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Positions per sequence (default: the model's context length).
    #[arg(long)]
    pub ctx_size: Option<usize>,
    /// Requests that may wait for a free sequence; more are answered 503.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Require `Authorization: Bearer KEY` on every API route.
    #[arg(long)]
    pub api_key: Option<String>,
    /// A LoRA adapter directory (written by `mlx-engine finetune`) applied to the model.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<std::path::PathBuf>,
    /// KV cache element type: `f16` (half the memory and the attention's reads) or `f32`.
    #[arg(long = "cache-type", value_name = "f16|f32", default_value = "f16")]
    pub cache_type: crate::kv_cache::KvDtype,
    /// Threads for the CPU kernels (default: all cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// Seconds a request may take to produce its response head (a whole non-streamed reply).
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Bytes of KV the prefix cache keeps from finished requests (least recently used
    /// evicted first); 0 disables it.
    #[arg(long, default_value_t = 1 << 30)]
    pub prefix_cache_bytes: usize,
    /// Seconds to receive a request's headers; an idle keep-alive connection closes after it.
    #[arg(long, default_value_t = 15)]
    pub header_timeout: u64,
    /// Seconds to receive a whole request body (408 beyond).
    #[arg(long, default_value_t = 60)]
    pub body_timeout: u64,
    /// Most connections open at once; more are answered 503 and closed.
    #[arg(long, default_value_t = 512)]
    pub max_connections: usize,
    /// Speculative decoding of a sequence while it decodes alone: `lookup` drafts from n-gram
    /// matches in its prompt and output, `draft` from a smaller model of the same vocabulary
    /// (--draft-model). A request opts out with `"speculative": false`.
    #[arg(long, value_enum)]
    pub speculative: Option<ServeSpeculative>,
    /// The draft model of `--speculative draft`: a registry name or a GGUF path.
    #[arg(long, value_name = "NAME|PATH")]
    pub draft_model: Option<String>,
    /// Most tokens drafted per speculative step (the pacer picks fewer when that pays more).
    #[arg(long, default_value_t = 8)]
    pub draft_max: usize,
    /// Always draft --draft-max tokens, instead of a length that follows the measured cost
    /// of verification and the acceptance rate (which may pause speculation where it does not
    /// pay).
    #[arg(long)]
    pub draft_fixed: bool,
}

/// Where the server's speculative drafts come from.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServeSpeculative {
    /// N-gram matches in the sequence so far (no second model).
    Lookup,
    /// A smaller model of the same vocabulary (`--draft-model`).
    Draft,
}

/// Runs the server until SIGINT or SIGTERM (then stops accepting, ends the generations in
/// flight with a final chunk and returns `Ok`) or until the model fails to load (then returns
/// that error). `/health` answers 503 while the model loads.
pub fn serve(args: &ServeArgs) -> Result<()> {
    if args.parallel == 0 || args.max_queue == 0 {
        return Err(Error::InvalidArgument(
            "--parallel and --max-queue must be at least 1".into(),
        ));
    }
    if args.speculative.is_some() && !(1..=64).contains(&args.draft_max) {
        return Err(Error::InvalidArgument(
            "--draft-max must be between 1 and 64".into(),
        ));
    }
    match (args.speculative, &args.draft_model) {
        (Some(ServeSpeculative::Draft), None) => {
            return Err(Error::InvalidArgument(
                "--speculative draft needs --draft-model NAME|PATH".into(),
            ))
        }
        (Some(ServeSpeculative::Lookup) | None, Some(_)) => {
            return Err(Error::InvalidArgument(
                "--draft-model needs --speculative draft".into(),
            ))
        }
        _ => {}
    }
    if args.max_connections == 0 || args.header_timeout == 0 || args.body_timeout == 0 {
        return Err(Error::InvalidArgument(
            "--max-connections, --header-timeout and --body-timeout must be at least 1".into(),
        ));
    }
    if let Some(threads) = args.threads {
        crate::mlx::kernels::set_num_threads(threads);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("tokio runtime", e))?;
    runtime.block_on(run(args))
}

/// Binds, starts the engine thread and serves.
async fn run(args: &ServeArgs) -> Result<()> {
    let address = format!("{}:{}", args.host, args.port);
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .map_err(|e| Error::io(&address, e))?;
    let bound = listener.local_addr().map_err(|e| Error::io(&address, e))?;
    eprintln!("mlx-engine serve: listening on http://{bound}");

    let (jobs, queue) = mpsc::sync_channel(args.max_queue);
    let info = Arc::new(OnceLock::new());
    let (ended, engine_ended) = tokio::sync::oneshot::channel::<()>();
    let shared = Shared::default();
    let engine = spawn_engine(args, queue, Arc::clone(&info), shared.clone(), ended)?;

    let state = Arc::new(http::AppState {
        model_name: served_name(&args.model),
        aliases: vec![args.model.clone()],
        info,
        jobs,
        max_queue: args.max_queue,
        api_key: args.api_key.clone(),
        metrics: Arc::clone(&shared.metrics),
    });
    let limits = http::Limits {
        body_bytes: args.max_body_bytes,
        body_timeout: Duration::from_secs(args.body_timeout),
        request_timeout: Duration::from_secs(args.timeout),
    };
    let connection_limits = connections::ConnectionLimits {
        max_connections: args.max_connections,
        header_timeout: Duration::from_secs(args.header_timeout),
    };
    let app = http::router(state, limits);
    let stopped = Arc::new(tokio::sync::Notify::new());
    let shutdown = {
        let (stopping, stopped) = (Arc::clone(&shared.stopping), Arc::clone(&stopped));
        async move {
            tokio::select! {
                _ = stop_signal() => eprintln!("mlx-engine serve: shutting down"),
                _ = engine_ended => {}
            }
            stopping.store(true, Ordering::Relaxed);
            stopped.notify_one();
        }
    };
    let server = connections::serve(listener, app, connection_limits, shutdown);
    let grace = async {
        stopped.notified().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        () = server => {}
        _ = grace => eprintln!("mlx-engine serve: connections still open after {SHUTDOWN_GRACE:?}; exiting"),
    }
    // The router (and with it the job queue's sender) is gone: the engine thread finishes.
    engine
        .join()
        .map_err(|_| Error::InvalidArgument("the engine thread panicked".into()))?
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Starts the engine thread: it resolves and loads the model, publishes its [`ModelInfo`],
/// then serves the queue; `ended` fires when it stops (a load failure included).
fn spawn_engine(
    args: &ServeArgs,
    queue: mpsc::Receiver<scheduler::Job>,
    info: Arc<OnceLock<ModelInfo>>,
    shared: Shared,
    ended: tokio::sync::oneshot::Sender<()>,
) -> Result<std::thread::JoinHandle<Result<()>>> {
    let spec = args.model.clone();
    let (parallel, ctx_size) = (args.parallel, args.ctx_size);
    let prefix_cache_bytes = args.prefix_cache_bytes;
    let adapter = args.adapter.clone();
    let kv_dtype = args.cache_type;
    let draft_spec = args.draft_model.clone();
    let speculation = args.speculative.map(|_| SpeculativeOptions {
        draft_max: args.draft_max,
        adaptive: !args.draft_fixed,
    });
    std::thread::Builder::new()
        .name("mlx-engine".into())
        .spawn(move || {
            let result = (|| {
                let resolved = fetch::resolve(&spec, &FetchOptions::default())?;
                tracing::info!("model {} from {}", resolved.path.display(), resolved.source);
                let draft_model = match &draft_spec {
                    Some(spec) => Some(fetch::resolve(spec, &FetchOptions::default())?.path),
                    None => None,
                };
                let config = EngineConfig {
                    model: resolved.path,
                    parallel,
                    ctx_size,
                    prefill_chunk: 256,
                    prefill_chunk_while_decoding: 64,
                    prefix_cache_bytes,
                    speculation,
                    draft_model,
                    adapter,
                    kv_dtype,
                };
                scheduler::run(&config, queue, shared, |model| {
                    let _ = info.set(model);
                    eprintln!("mlx-engine serve: model loaded");
                })
            })();
            let _ = ended.send(());
            result
        })
        .map_err(|e| Error::io("engine thread", e))
}

/// The model's name in responses: the registry name, or a file's name without its directory.
fn served_name(spec: &str) -> String {
    let path = PathBuf::from(spec);
    match path.file_name().and_then(|n| n.to_str()) {
        Some(name) if Path::new(spec).exists() => name.to_string(),
        _ => spec.to_string(),
    }
}
