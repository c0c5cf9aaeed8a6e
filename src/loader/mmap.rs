//! [`MappedFile`]: a read-only, private memory map of a whole model file.
//!
//! Small tensors (norms, biases) and the token embedding are read in place from the map
//! (zero-copy MLX arrays keep an `Arc<MappedFile>` alive as their owner); projection weights
//! are copied once into the kernels' weight arena or converted, after which their pages are
//! released ([`MappedFile::release`]).

use crate::error::{Error, Result};
use memmap2::{Mmap, MmapOptions, UncheckedAdvice};
use std::fs::File;
use std::path::{Path, PathBuf};

/// A read-only view of a whole file through a private copy-on-write mapping.
///
/// The mapping is `MAP_PRIVATE` and read-only, so nothing in this process can write the file
/// through it. Share it as `Arc<MappedFile>`, which coerces to the `Arc<dyn Send + Sync>`
/// owner that [`crate::mlx::Array::from_borrowed_bytes`] takes.
#[derive(Debug)]
pub struct MappedFile {
    path: PathBuf,
    map: Mmap,
}

impl MappedFile {
    /// Maps `path` read-only. Errors name the file.
    pub fn open(path: &Path) -> Result<MappedFile> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let meta = file.metadata().map_err(|e| Error::io(path, e))?;
        if !meta.is_file() {
            return Err(Error::format(path, "not a regular file"));
        }
        // SAFETY: the mapping is private (copy-on-write) and read-only, so this process never
        // writes the file through it and the slice it derefs to is never mutated by us. As with
        // every file-backed map, another process truncating or rewriting the file while it is
        // mapped can change the bytes or raise SIGBUS; model files are treated as immutable
        // while loaded, and every offset we read is validated against the length mapped here.
        let map = unsafe { MmapOptions::new().map_copy_read_only(&file) }
            .map_err(|e| Error::io(path, e))?;
        Ok(MappedFile {
            path: path.to_path_buf(),
            map,
        })
    }

    /// The path the file was opened with (for error messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Drops this process's resident pages of `bytes` (a sub-slice of [`MappedFile::bytes`])
    /// once their contents have been copied elsewhere, e.g. into MLX arrays, so the weights
    /// are not counted twice in RSS. Reading them again simply faults them back in from the
    /// file. Slices that are not part of this map, and partial pages, are left alone.
    pub fn release(&self, bytes: &[u8]) {
        const PAGE: usize = 4096;
        let base = self.map.as_ptr() as usize;
        let start = bytes.as_ptr() as usize;
        if start < base || start + bytes.len() > base + self.map.len() {
            return;
        }
        let first = (start - base).div_ceil(PAGE) * PAGE;
        let end = (start - base + bytes.len()) / PAGE * PAGE;
        if end > first {
            // SAFETY: the mapping is private, read-only and never written, so MADV_DONTNEED only
            // drops clean pages that the kernel refills from the file on the next access; no
            // data can be lost and no reference into the map becomes invalid. Failure (e.g. a
            // page size other than 4 KiB making the range unaligned) only means nothing is freed.
            let _ = unsafe {
                self.map
                    .unchecked_advise_range(UncheckedAdvice::DontNeed, first, end - first)
            };
        }
    }

    /// The file's length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True for an empty file.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl AsRef<[u8]> for MappedFile {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}
