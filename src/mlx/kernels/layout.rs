//! How the kernels read a weight's GGUF blocks: the layout id they take, the types they
//! handle, and the bytes of a row.

use super::ffi::{self, mlxk_block_size, mlxk_row_bytes};
use super::GgmlType;
use crate::error::{Error, Result};
use std::ffi::c_int;

/// How the kernel reads a weight's blocks: the GGUF type, and whether the rows were rewritten
/// into the kernels' repacked layout (Q5_0 / Q8_0 groups of 8 blocks, read with whole vector
/// loads; same bytes per row; `kernels/repack.cpp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockLayout {
    /// The GGUF type of the blocks.
    pub ty: GgmlType,
    /// Rows rewritten by [`super::load_blocks`] / [`super::repack_host`].
    pub repacked: bool,
}

/// The kernel's flag for a repacked layout (`MLXK_TYPE_REPACKED`).
const REPACKED_FLAG: c_int = super::types::REPACKED_FLAG as c_int;

impl BlockLayout {
    /// The kernel's type id.
    pub(super) fn id(self) -> c_int {
        self.ty.id() as c_int | if self.repacked { REPACKED_FLAG } else { 0 }
    }

    /// The layout of blocks of `ty` that a kernel call reported as type id `out_type`.
    pub(super) fn from_id(ty: GgmlType, out_type: c_int) -> Self {
        BlockLayout {
            ty,
            repacked: out_type & REPACKED_FLAG != 0,
        }
    }
}

impl From<GgmlType> for BlockLayout {
    /// Blocks as stored in a GGUF file.
    fn from(ty: GgmlType) -> Self {
        BlockLayout {
            ty,
            repacked: false,
        }
    }
}

/// Whether the kernel handles GGUF type `ty`.
pub fn supports(ty: GgmlType) -> bool {
    // SAFETY: a pure query.
    unsafe { mlxk_block_size(ty.id() as c_int) > 0 }
}

/// Bytes of one row of `k` elements of `ty`, as the kernel computes it.
pub fn row_bytes(ty: GgmlType, k: usize) -> Result<usize> {
    let mut out = 0i64;
    // SAFETY: writes one i64.
    let code = unsafe { mlxk_row_bytes(ty.id() as c_int, k as i64, &mut out) };
    ffi::check("row_bytes", code)?;
    Ok(out as usize)
}

/// Checks that `bytes` holds exactly `n` rows of `k` elements of `ty` (`op` names the caller).
pub(super) fn check_rows(bytes: &[u8], ty: GgmlType, n: usize, k: usize, op: &str) -> Result<()> {
    if n.checked_mul(row_bytes(ty, k)?) != Some(bytes.len()) {
        return Err(Error::InvalidArgument(format!(
            "{op}: {} bytes for {n} rows of {k} {ty:?} elements",
            bytes.len()
        )));
    }
    Ok(())
}
