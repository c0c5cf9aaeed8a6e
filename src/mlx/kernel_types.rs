//! The kernels' type table as their C functions report it, queried by raw type id (a ggml id,
//! or one or'ed with [`REPACKED_FLAG`]), so ids the Rust table lacks can be asked about too.
//!
//! `tests/ggml_type_table.rs` compares these answers with [`crate::ggml_type::GgmlType`] for
//! every id, which keeps the two copies of the block sizes (Rust and C++) in step.

use crate::error::{Error, Result};
use std::ffi::{c_char, c_int, CStr};

extern "C" {
    fn mlxk_block_size(ggml_type: c_int) -> c_int;
    fn mlxk_row_bytes(ggml_type: c_int, k: i64, out: *mut i64) -> c_int;
    fn mlxk_last_error() -> *const c_char;
}

/// `MLXK_TYPE_REPACKED`: or'ed into a ggml type id for rows in the kernels' repacked layout.
pub const REPACKED_FLAG: u32 = 0x100;

/// Elements per block the kernels use for type id `id`, or `None` for an id they refuse.
pub fn block_size(id: u32) -> Option<u64> {
    let id = c_int::try_from(id).ok()?;
    // SAFETY: a pure query on an integer.
    let block = unsafe { mlxk_block_size(id) };
    u64::try_from(block).ok().filter(|&b| b > 0)
}

/// Bytes of one row of `k` elements of type id `id`, as the kernels compute it; an error with
/// the kernels' message for an id they refuse or a `k` that is not a whole number of blocks.
pub fn row_bytes(id: u32, k: u64) -> Result<u64> {
    let bad = |why: String| Error::InvalidArgument(format!("kernel type id {id}, k = {k}: {why}"));
    let raw_id = c_int::try_from(id).map_err(|_| bad("id out of range".into()))?;
    let raw_k = i64::try_from(k).map_err(|_| bad("k out of range".into()))?;
    let mut out = 0i64;
    // SAFETY: `out` is a valid place for the result; the other arguments are integers.
    let code = unsafe { mlxk_row_bytes(raw_id, raw_k, &mut out) };
    if code != 0 {
        // SAFETY: the kernels return a NUL-terminated per-thread string valid until the next
        // call; it is copied at once.
        let message = unsafe { CStr::from_ptr(mlxk_last_error()) };
        return Err(bad(message.to_string_lossy().into_owned()));
    }
    u64::try_from(out).map_err(|_| bad(format!("negative row size {out}")))
}
