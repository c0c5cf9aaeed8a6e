//! The kernels' type table as their C functions report it, queried by raw type id (a ggml id,
//! or one or'ed with [`REPACKED_FLAG`]), so ids the Rust table lacks can be asked about too.
//!
//! `tests/ggml_type_table.rs` compares these answers with [`crate::ggml_type::GgmlType`] for
//! every id, which keeps the two copies of the block sizes (Rust and C++) in step.

use super::ffi::{self, mlxk_block_size, mlxk_row_bytes};
use crate::error::{Error, Result};
use std::ffi::c_int;

/// `MLXK_TYPE_REPACKED`: or'ed into a ggml type id for rows in the kernels' repacked layout.
pub const REPACKED_FLAG: u32 = ffi::MLXK_TYPE_REPACKED as u32;

/// Elements per block the kernels use for type id `id`, or `None` for an id they refuse.
pub fn block_size(id: u32) -> Option<u64> {
    let id = c_int::try_from(id).ok()?;
    // SAFETY: a pure query on an integer.
    let block = unsafe { mlxk_block_size(id) };
    u64::try_from(block).ok().filter(|&b| b > 0)
}

/// Bytes of one row of `k` elements of type id `id`, as the kernels compute it; an
/// [`Error::Kernel`] with the kernels' message for an id they refuse or a `k` that is not a
/// whole number of blocks.
pub fn row_bytes(id: u32, k: u64) -> Result<u64> {
    let bad = |why: &str| Error::InvalidArgument(format!("kernel type id {id}, k = {k}: {why}"));
    let raw_id = c_int::try_from(id).map_err(|_| bad("id out of range"))?;
    let raw_k = i64::try_from(k).map_err(|_| bad("k out of range"))?;
    let mut out = 0i64;
    // SAFETY: `out` is a valid place for the result; the other arguments are integers.
    ffi::check("row_bytes", unsafe {
        mlxk_row_bytes(raw_id, raw_k, &mut out)
    })?;
    u64::try_from(out).map_err(|_| bad("negative row size"))
}
