//! What the decoders and the conversions share about a run of GGUF blocks: the whole-block
//! check of a row, the error for a type without a decoder or conversion, and the f16 reader.

use crate::error::{Error, Result};
use crate::ggml_type::GgmlType;

/// The error for a type this crate recognises but cannot decode or convert.
pub(crate) fn unsupported(ty: GgmlType, what: &str) -> Error {
    Error::Unsupported(format!("ggml type {ty} is not supported ({what})"))
}

/// Checks that `src` holds whole blocks of `ty` and that `dst_len` elements is exactly what
/// they hold; returns the block count.
pub(crate) fn check_row(ty: GgmlType, src: &[u8], dst_len: usize) -> Result<usize> {
    let block_bytes = ty.type_size() as usize;
    let block_elems = ty.block_size() as usize;
    if !src.len().is_multiple_of(block_bytes) {
        return Err(Error::InvalidArgument(format!(
            "{ty}: {} bytes is not a whole number of {block_bytes}-byte blocks",
            src.len()
        )));
    }
    let blocks = src.len() / block_bytes;
    if blocks.checked_mul(block_elems) != Some(dst_len) {
        return Err(Error::InvalidArgument(format!(
            "{ty}: {blocks} blocks hold {} elements, the output has room for {dst_len}",
            blocks.saturating_mul(block_elems)
        )));
    }
    Ok(blocks)
}

/// The little-endian f16 at `bytes[at..at + 2]`, widened to f32 (exact).
pub(crate) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}
