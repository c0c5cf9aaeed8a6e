//! The KV snapshot format written by `Backend::serialize` and read by `Backend::hydrate`, and
//! the model fingerprint it carries.
//!
//! Layout, all integers little-endian:
//!
//! | offset | size | field                                                   |
//! |--------|------|---------------------------------------------------------|
//! | 0      | 8    | magic `MLXE-KV\0`                                       |
//! | 8      | 4    | format version (1)                                      |
//! | 12     | 4    | dtype: 0 = float32, 1 = float16 (the cache's)           |
//! | 16     | 32   | model fingerprint ([`Engine::fingerprint`])             |
//! | 48     | 4    | layers                                                  |
//! | 52     | 4    | kv_heads                                                |
//! | 56     | 4    | head_dim                                                |
//! | 60     | 4    | flags (0)                                               |
//! | 64     | 8    | len: positions stored                                   |
//! | 72     | n    | keys [layers, kv_heads, len, head_dim], then values     |
//! | 72 + n | 32   | SHA-256 of every byte before it                         |

#[cfg(doc)]
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::kv_cache::KvDtype;
use half::f16;
use sha2::{Digest, Sha256};

/// The first eight bytes of every snapshot.
pub const MAGIC: [u8; 8] = *b"MLXE-KV\0";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// The dtype codes of the header.
const DTYPE_F32: u32 = 0;
const DTYPE_F16: u32 = 1;
/// Bytes before the data.
const HEADER_LEN: usize = 72;
/// Bytes of the trailing checksum.
const CHECKSUM_LEN: usize = 32;

/// A 32-byte identity of a model's weights and shapes.
pub type Fingerprint = [u8; 32];

/// The shape of a sequence's cache: what a snapshot must match to be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvShape {
    /// Transformer blocks.
    pub layers: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Features per head.
    pub head_dim: usize,
}

impl KvShape {
    /// Floats per tensor (keys or values) for `len` positions, or `None` on overflow.
    fn floats(&self, len: usize) -> Option<usize> {
        self.layers
            .checked_mul(self.kv_heads)?
            .checked_mul(self.head_dim)?
            .checked_mul(len)
    }
}

/// A decoded snapshot.
pub struct Snapshot {
    /// The fingerprint of the model that wrote it.
    pub fingerprint: Fingerprint,
    /// The cache shape it was written with.
    pub shape: KvShape,
    /// Positions stored.
    pub len: usize,
    /// The element type the data was stored in (that of the cache it was taken from).
    pub dtype: KvDtype,
    /// Keys [layers, kv_heads, len, head_dim], widened to float32.
    pub keys: Vec<f32>,
    /// Values [layers, kv_heads, len, head_dim].
    pub values: Vec<f32>,
}

impl Snapshot {
    /// Checks that the snapshot was written by the model with `fingerprint` and cache `shape`,
    /// and that its positions fit in `context`.
    pub fn check_against(
        &self,
        fingerprint: &Fingerprint,
        shape: KvShape,
        context: usize,
    ) -> Result<()> {
        if self.fingerprint != *fingerprint {
            return Err(invalid(
                "written by a different model (fingerprint mismatch)".into(),
            ));
        }
        if self.shape != shape {
            return Err(invalid(format!(
                "cache shape {:?}, this model has {shape:?}",
                self.shape
            )));
        }
        crate::kv_cache::check_fits(self.len, context)
    }
}

/// Writes a snapshot of `len` positions stored as `dtype`; `keys` and `values` are laid out as
/// the table says (values taken from a float16 cache convert back exactly).
pub fn encode(
    fingerprint: &Fingerprint,
    shape: KvShape,
    len: usize,
    dtype: KvDtype,
    keys: &[f32],
    values: &[f32],
) -> Vec<u8> {
    let size = dtype.dtype().size();
    let mut out =
        Vec::with_capacity(HEADER_LEN + size * (keys.len() + values.len()) + CHECKSUM_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    let code = match dtype {
        KvDtype::F32 => DTYPE_F32,
        KvDtype::F16 => DTYPE_F16,
    };
    out.extend_from_slice(&code.to_le_bytes());
    out.extend_from_slice(fingerprint);
    for dim in [shape.layers, shape.kv_heads, shape.head_dim] {
        out.extend_from_slice(&(dim as u32).to_le_bytes());
    }
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(len as u64).to_le_bytes());
    for &x in keys.iter().chain(values) {
        match dtype {
            KvDtype::F32 => out.extend_from_slice(&x.to_le_bytes()),
            KvDtype::F16 => out.extend_from_slice(&f16::from_f32(x).to_le_bytes()),
        }
    }
    let checksum: [u8; 32] = Sha256::digest(&out).into();
    out.extend_from_slice(&checksum);
    out
}

/// Reads a snapshot, checking magic, version, dtype, size and checksum (in that order, so a
/// short buffer is reported as truncated rather than as a checksum mismatch).
pub fn decode(bytes: &[u8]) -> Result<Snapshot> {
    let header = bytes.get(..HEADER_LEN).ok_or_else(|| {
        invalid(format!(
            "truncated: {} bytes, shorter than the {HEADER_LEN}-byte header",
            bytes.len()
        ))
    })?;
    if header[..8] != MAGIC {
        return Err(invalid("not a KV snapshot (bad magic)".into()));
    }
    let version = u32_at(header, 8);
    if version != VERSION {
        return Err(invalid(format!(
            "format version {version}, this build reads version {VERSION}"
        )));
    }
    let dtype = match u32_at(header, 12) {
        DTYPE_F32 => KvDtype::F32,
        DTYPE_F16 => KvDtype::F16,
        code => {
            return Err(invalid(format!(
                "dtype code {code}, this build reads 0 (float32) and 1 (float16)"
            )))
        }
    };
    let shape = KvShape {
        layers: u32_at(header, 48) as usize,
        kv_heads: u32_at(header, 52) as usize,
        head_dim: u32_at(header, 56) as usize,
    };
    let len = usize::try_from(u64::from_le_bytes(
        header[64..72].try_into().unwrap_or_default(),
    ))
    .map_err(|_| invalid("length does not fit in memory".into()))?;
    let size = dtype.dtype().size();
    let data = data_section(bytes, shape, len, size)?;
    let (keys, values) = data.split_at(data.len() / 2);
    let widen = |bytes: &[u8]| -> Vec<f32> {
        match dtype {
            KvDtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            KvDtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        }
    };
    let (keys, values) = (widen(keys), widen(values));
    let mut fingerprint = [0u8; 32];
    fingerprint.copy_from_slice(&header[16..48]);
    Ok(Snapshot {
        fingerprint,
        shape,
        len,
        dtype,
        keys,
        values,
    })
}

/// The data bytes (keys and values of `size`-byte elements) after checking the total size and
/// the checksum.
fn data_section(bytes: &[u8], shape: KvShape, len: usize, size: usize) -> Result<&[u8]> {
    let data_len = shape
        .floats(len)
        .and_then(|n| n.checked_mul(2 * size))
        .ok_or_else(|| invalid("header sizes overflow".into()))?;
    let total = HEADER_LEN
        .checked_add(data_len)
        .and_then(|n| n.checked_add(CHECKSUM_LEN))
        .ok_or_else(|| invalid("header sizes overflow".into()))?;
    if bytes.len() < total {
        return Err(invalid(format!(
            "truncated: {} bytes, the header announces {total}",
            bytes.len()
        )));
    }
    if bytes.len() > total {
        return Err(invalid(format!(
            "{} bytes, the header announces {total} (trailing data)",
            bytes.len()
        )));
    }
    let (body, checksum) = bytes.split_at(total - CHECKSUM_LEN);
    if Sha256::digest(body).as_slice() != checksum {
        return Err(invalid(
            "checksum mismatch (the buffer is corrupted)".into(),
        ));
    }
    Ok(&body[HEADER_LEN..])
}

/// The little-endian u32 at `offset` of the (already length-checked) header.
fn u32_at(header: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(header[offset..offset + 4].try_into().unwrap_or_default())
}

/// An error about a snapshot buffer.
fn invalid(message: String) -> Error {
    Error::InvalidArgument(format!("KV snapshot: {message}"))
}
