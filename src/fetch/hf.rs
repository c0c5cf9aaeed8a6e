//! The Hugging Face hub: its cache layout, and resumable, verified downloads into it.
//!
//! Cache layout (shared with `huggingface_hub`, so either tool reuses the other's files):
//! ```text
//! {cache}/models--{org}--{name}/
//!     refs/{revision}                  the commit the revision pointed to
//!     blobs/{etag}                     file contents, named by ETag (sha256 for LFS files)
//!     blobs/{etag}.incomplete          a download in progress, resumed with HTTP Range
//!     snapshots/{commit}/{filename}    symlink to ../../blobs/{etag}
//! ```
//! Metadata comes from a `HEAD` on `{endpoint}/{repo}/resolve/{revision}/{filename}` without
//! following redirects, as the hub puts `X-Repo-Commit`, `X-Linked-Etag` and `X-Linked-Size`
//! on its redirect to the CDN.

use super::progress::Progress;
use super::{commit_verified, incomplete_path};
use crate::registry::{HfFile, HfSnapshot};
use crate::{Error, Result};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use ureq::http::{HeaderMap, Response};
use ureq::{Agent, Body, RequestBuilder};

/// Most attempts at one file when each attempt makes progress (a dropped connection resumes).
const MAX_ATTEMPTS: usize = 8;
/// Most same-host redirects followed while reading metadata (renamed repositories).
const MAX_METADATA_REDIRECTS: usize = 5;
/// Bytes copied per read from the network.
const CHUNK: usize = 1 << 20;

/// `{endpoint}/{repo}/resolve/{revision}/{filename}`.
pub(super) fn file_url(endpoint: &str, repo: &str, revision: &str, filename: &str) -> String {
    format!(
        "{endpoint}/{repo}/resolve/{}/{filename}",
        revision.replace('/', "%2F")
    )
}

/// `{cache}/models--{org}--{name}`.
fn repo_dir(cache: &Path, repo: &str) -> PathBuf {
    cache.join(format!("models--{}", repo.replace('/', "--")))
}

fn is_commit(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The commit `revision` points to in the cache (itself when it is a commit).
fn cached_commit(repo_dir: &Path, revision: &str) -> Option<String> {
    if is_commit(revision) {
        return Some(revision.to_string());
    }
    let commit = fs::read_to_string(repo_dir.join("refs").join(revision)).ok()?;
    Some(commit.trim().to_string()).filter(|c| !c.is_empty())
}

/// The cached copy of `file`, if its snapshot entry resolves to a file of the expected size.
pub(super) fn cached_file(cache: &Path, file: &HfFile) -> Option<PathBuf> {
    let dir = repo_dir(cache, file.repo);
    let path = dir
        .join("snapshots")
        .join(cached_commit(&dir, file.revision)?)
        .join(file.filename);
    let meta = fs::metadata(&path).ok().filter(|meta| meta.is_file())?;
    file.size
        .is_none_or(|size| size == meta.len())
        .then_some(path)
}

/// The cached snapshot directory of `snapshot`, if it holds every listed file.
pub(super) fn cached_snapshot(cache: &Path, snapshot: &HfSnapshot) -> Option<PathBuf> {
    let dir = repo_dir(cache, snapshot.repo);
    let root = dir
        .join("snapshots")
        .join(cached_commit(&dir, snapshot.revision)?);
    snapshot
        .files
        .iter()
        .all(|f| root.join(f).is_file())
        .then_some(root)
}

/// What the hub says about one file before it is downloaded.
#[derive(Debug)]
struct Remote {
    commit: String,
    etag: Option<String>,
    size: Option<u64>,
}

/// A hub client over one HTTP agent.
pub(super) struct Hub<'a> {
    agent: Agent,
    opts: &'a super::FetchOptions,
}

impl<'a> Hub<'a> {
    /// A client with the connect and per-read timeouts of `opts`.
    pub(super) fn new(opts: &'a super::FetchOptions) -> Hub<'a> {
        let agent = Agent::config_builder()
            .timeout_resolve(Some(opts.connect_timeout))
            .timeout_connect(Some(opts.connect_timeout))
            .timeout_recv_response(Some(opts.read_timeout))
            .timeout_per_read(Some(opts.read_timeout))
            .http_status_as_error(false)
            .user_agent(concat!("mlx-engine/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Hub { agent, opts }
    }

    /// Downloads `file` into the cache; returns its snapshot path.
    pub(super) fn download_file(&self, file: &HfFile) -> Result<PathBuf> {
        self.download(file, file.revision).map(|(path, _)| path)
    }

    /// Downloads every file of `snapshot` at one commit; returns the snapshot directory.
    pub(super) fn download_snapshot(&self, snapshot: &HfSnapshot) -> Result<PathBuf> {
        let mut commit: Option<String> = None;
        for filename in snapshot.files {
            let file = HfFile {
                repo: snapshot.repo,
                revision: snapshot.revision,
                filename,
                size: None,
                sha256: None,
            };
            // Later files come from the commit the first one resolved to, so the directory
            // is one consistent snapshot even if the branch moves meanwhile.
            let revision = commit.as_deref().unwrap_or(snapshot.revision);
            let (_, remote) = self.download(&file, revision)?;
            commit.get_or_insert(remote.commit);
        }
        let commit =
            commit.ok_or_else(|| Error::Fetch(format!("{}: no files listed", snapshot.repo)))?;
        Ok(repo_dir(&self.opts.hf_cache, snapshot.repo)
            .join("snapshots")
            .join(commit))
    }

    /// Downloads `file` at `revision` into the blobs (unless there already), links it from
    /// its snapshot and records the ref.
    fn download(&self, file: &HfFile, revision: &str) -> Result<(PathBuf, Remote)> {
        let url = file_url(&self.opts.endpoint, file.repo, revision, file.filename);
        let remote = self.metadata(&url)?;
        // An LFS file's ETag is its sha256: check it even when the card gives none.
        let sha256 = file
            .sha256
            .or(remote.etag.as_deref().filter(|e| is_sha256(e)));
        let blob_name = remote
            .etag
            .as_deref()
            .or(sha256)
            .ok_or_else(|| Error::Fetch(format!("{url}: no ETag to name the file by")))?;
        let dir = repo_dir(&self.opts.hf_cache, file.repo);
        let blob = dir.join("blobs").join(blob_name);
        if !blob.is_file() {
            let partial = incomplete_path(&blob);
            create_parent(&partial)?;
            let size = file.size.or(remote.size);
            self.fetch_resumable(&url, &partial, size, file.filename)?;
            commit_verified(&partial, &blob, size, sha256)?;
        }
        let pointer = dir
            .join("snapshots")
            .join(&remote.commit)
            .join(file.filename);
        link_blob(&pointer, blob_name, file.filename)?;
        write_ref(&dir, revision, &remote.commit)?;
        Ok((pointer, remote))
    }

    /// Reads the commit, ETag and size of `url` from a `HEAD`, following only same-host
    /// redirects that carry no hub metadata.
    fn metadata(&self, url: &str) -> Result<Remote> {
        let mut current = url.to_string();
        for _ in 0..MAX_METADATA_REDIRECTS {
            let request = self.authorized(self.agent.head(&current));
            let response = request
                .config()
                .max_redirects(0)
                .max_redirects_will_error(false)
                .build()
                .call()
                .map_err(|e| unreachable(&current, &e))?;
            let status = response.status().as_u16();
            if status < 400 {
                if let Some(remote) = remote_from(response.headers()) {
                    return Ok(remote);
                }
            }
            match relative_redirect(&response, &current) {
                Some(next) => current = next,
                None if status >= 400 => return Err(status_error(status, &current, self.opts)),
                None => {
                    return Err(Error::Fetch(format!(
                        "{current}: HTTP {status} without an X-Repo-Commit header; is HF_ENDPOINT a Hugging Face hub?"
                    )))
                }
            }
        }
        Err(Error::Fetch(format!("{url}: too many redirects")))
    }

    /// Downloads `url` into `partial`, resuming from its current length after a dropped
    /// connection, as long as each attempt makes progress.
    fn fetch_resumable(
        &self,
        url: &str,
        partial: &Path,
        size: Option<u64>,
        label: &str,
    ) -> Result<()> {
        let progress = Progress::bytes(label, size, self.opts.quiet);
        let mut last_error = None;
        for attempt in 1..=MAX_ATTEMPTS {
            let have = file_len(partial);
            if size.is_some_and(|size| have >= size) {
                return Ok(());
            }
            progress.set_position(have);
            let result = self.fetch_from(url, partial, have, &progress);
            let now = file_len(partial);
            let error = match result {
                Ok(()) if size.is_none_or(|size| now >= size) => return Ok(()),
                Ok(()) => Error::Fetch(format!("{url}: connection closed after {now} bytes")),
                Err(e) => e,
            };
            if now <= have {
                return Err(error);
            }
            tracing::warn!(url, bytes = now, attempt, %error, "download interrupted; resuming");
            last_error = Some(error);
        }
        Err(last_error.unwrap_or_else(|| Error::Fetch(format!("{url}: download did not complete"))))
    }

    /// One `GET` of `url` from byte `offset`, appended to `partial` (rewritten from the start
    /// when the server ignores the range).
    fn fetch_from(
        &self,
        url: &str,
        partial: &Path,
        offset: u64,
        progress: &Progress,
    ) -> Result<()> {
        let mut request = self.authorized(self.agent.get(url));
        if offset > 0 {
            request = request.header("Range", format!("bytes={offset}-"));
        }
        let response = request.call().map_err(|e| unreachable(url, &e))?;
        let append = match response.status().as_u16() {
            200 => false,
            206 if range_start(response.headers()) == Some(offset) => true,
            206 => {
                return Err(Error::Fetch(format!(
                    "{url}: the server answered a different range"
                )))
            }
            416 if offset > 0 => {
                // The partial file is no prefix of this file: start over.
                fs::remove_file(partial).map_err(|e| Error::io(partial, e))?;
                return self.fetch_from(url, partial, 0, progress);
            }
            status => return Err(status_error(status, url, self.opts)),
        };
        if !append {
            progress.set_position(0);
        }
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(partial)
            .map_err(|e| Error::io(partial, e))?;
        copy_body(response.into_body(), &mut file, partial, progress)
            .map_err(|e| Error::Fetch(format!("{url}: {e}")))
    }

    /// `request` with the token, if any.
    fn authorized<B>(&self, request: RequestBuilder<B>) -> RequestBuilder<B> {
        match &self.opts.token {
            Some(token) => request.header("Authorization", format!("Bearer {token}")),
            None => request,
        }
    }
}

/// Streams `body` into `file`; an error keeps what was written so a later attempt resumes.
fn copy_body(body: Body, file: &mut File, path: &Path, progress: &Progress) -> Result<()> {
    let mut reader = body.into_reader();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::Fetch(format!("download interrupted: {e}"))),
        };
        file.write_all(&buf[..n]).map_err(|e| Error::io(path, e))?;
        progress.inc(n as u64);
    }
}

/// Hub metadata from response headers: requires `X-Repo-Commit`.
fn remote_from(headers: &HeaderMap) -> Option<Remote> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let commit = header("x-repo-commit")
        .filter(|c| !c.is_empty())?
        .to_string();
    let etag = header("x-linked-etag")
        .or(header("etag"))
        .map(|e| e.trim_start_matches("W/").trim_matches('"').to_string())
        .filter(|e| !e.is_empty());
    let size = header("x-linked-size")
        .or(header("content-length"))
        .and_then(|s| s.parse().ok());
    Some(Remote { commit, etag, size })
}

/// The target of a redirect to a path on the same host, like the hub's renamed-repo ones.
fn relative_redirect(response: &Response<Body>, url: &str) -> Option<String> {
    if !response.status().is_redirection() {
        return None;
    }
    let location = response.headers().get("location")?.to_str().ok()?;
    let path = location.strip_prefix('/')?;
    let scheme_end = url.find("://")? + 3;
    let host_end = url[scheme_end..]
        .find('/')
        .map_or(url.len(), |i| scheme_end + i);
    Some(format!("{}/{path}", &url[..host_end]))
}

/// The first byte of a `Content-Range: bytes a-b/n` header.
fn range_start(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get("content-range")?.to_str().ok()?;
    let range = value.trim().strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
}

fn unreachable(url: &str, error: &ureq::Error) -> Error {
    let host = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or(url);
    Error::Fetch(format!("cannot reach {host}: {error}"))
}

fn status_error(status: u16, url: &str, opts: &super::FetchOptions) -> Error {
    let hint = match (status, &opts.token) {
        (401 | 403, None) => " (gated or private repository? set HF_TOKEN)",
        (401 | 403, Some(_)) => " (HF_TOKEN was sent and refused)",
        (404, _) => " Not Found",
        _ => "",
    };
    Error::Fetch(format!("HTTP {status}{hint} for {url}"))
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |meta| meta.len())
}

fn create_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(parent) => fs::create_dir_all(parent).map_err(|e| Error::io(parent, e)),
        None => Ok(()),
    }
}

/// Points `pointer` (a snapshot entry) at `blobs/{blob_name}` by a relative symlink, or by a
/// copy where symlinks are unavailable.
fn link_blob(pointer: &Path, blob_name: &str, filename: &str) -> Result<()> {
    create_parent(pointer)?;
    if fs::symlink_metadata(pointer).is_ok() {
        fs::remove_file(pointer).map_err(|e| Error::io(pointer, e))?;
    }
    // snapshots/{commit}/{filename}: two levels, plus one per directory inside filename.
    let depth = 2 + filename.matches('/').count();
    let target = PathBuf::from("../".repeat(depth))
        .join("blobs")
        .join(blob_name);
    symlink_or_copy(&target, pointer)
}

#[cfg(unix)]
fn symlink_or_copy(target: &Path, pointer: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, pointer).map_err(|e| Error::io(pointer, e))
}

#[cfg(not(unix))]
fn symlink_or_copy(target: &Path, pointer: &Path) -> Result<()> {
    let blob = pointer.parent().unwrap_or(Path::new(".")).join(target);
    fs::copy(&blob, pointer)
        .map(|_| ())
        .map_err(|e| Error::io(pointer, e))
}

/// Records that `revision` points to `commit` (nothing to record for a commit itself).
fn write_ref(repo_dir: &Path, revision: &str, commit: &str) -> Result<()> {
    if is_commit(revision) {
        return Ok(());
    }
    let path = repo_dir.join("refs").join(revision);
    create_parent(&path)?;
    fs::write(&path, commit).map_err(|e| Error::io(&path, e))
}
