//! Weights for the kernels: GGUF blocks copied from host memory into MLX arrays held in the
//! kernels' weight arena (2 MiB-aligned mappings with transparent huge pages,
//! `kernels/mlx_primitive.cpp`).

use super::ffi::{self, mlxk_weight_arena_bytes, mlxk_weight_array};
use super::layout::{check_rows, BlockLayout};
use super::GgmlType;
use crate::error::Result;
use crate::mlx::Array;
use std::ffi::{c_int, c_void};

/// Copies `n` rows of `k` elements of `ty` (GGUF blocks in host memory, e.g. a memory-mapped
/// file) into a new uint8 MLX array `[n, row_bytes]`, rewriting them into the repacked layout
/// where the type has one. One copy, spread over the kernels' threads.
pub fn load_blocks(bytes: &[u8], ty: GgmlType, n: usize, k: usize) -> Result<(Array, BlockLayout)> {
    check_rows(bytes, ty, n, k, "load_blocks")?;
    let mut out_type: c_int = 0;
    // SAFETY: `bytes` holds exactly n rows of k elements (checked above) and outlives the call,
    // which copies them into a buffer the new array owns; the status reports any failure.
    let blocks = ffi::kernel_array("load_blocks", |res| unsafe {
        mlxk_weight_array(
            res,
            bytes.as_ptr() as *const c_void,
            ty.id() as c_int,
            n as i64,
            k as i64,
            &mut out_type,
        )
    })?;
    Ok((blocks, BlockLayout::from_id(ty, out_type)))
}

/// Bytes held now by the arrays of [`load_blocks`]: a weight arena of our own (2 MiB-aligned
/// mappings with transparent huge pages), outside MLX's allocator and its memory statistics.
pub fn weight_bytes() -> u64 {
    // SAFETY: a pure query.
    unsafe { mlxk_weight_arena_bytes() }.max(0) as u64
}
