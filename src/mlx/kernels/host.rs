//! The raw kernels on host memory, outside MLX: what the tests and benches use to check each
//! path against the Rust scalar twin (`crate::quant`).

use super::ffi::{self, mlxk_dequantize_rows, mlxk_qmatmul_f32, mlxk_repack_rows};
use super::layout::{check_rows, row_bytes, BlockLayout};
use super::GgmlType;
use crate::error::{Error, Result};
use std::ffi::{c_int, c_void};

/// [`super::load_blocks`] into host memory: the rows of `bytes` in the layout the kernel
/// prefers.
pub fn repack_host(
    bytes: &[u8],
    ty: GgmlType,
    n: usize,
    k: usize,
) -> Result<(Vec<u8>, BlockLayout)> {
    check_rows(bytes, ty, n, k, "repack_host")?;
    let mut out = vec![0u8; bytes.len()];
    let mut out_type: c_int = 0;
    // SAFETY: source and destination hold n rows each (checked above) and do not overlap.
    let code = unsafe {
        mlxk_repack_rows(
            bytes.as_ptr() as *const c_void,
            ty.id() as c_int,
            n as i64,
            k as i64,
            out.as_mut_ptr() as *mut c_void,
            &mut out_type,
        )
    };
    ffi::check("repack_host", code)?;
    Ok((out, BlockLayout::from_id(ty, out_type)))
}

/// The raw kernel on host memory: y [m, n] = x [m, k] · W[n, k]ᵀ, W as GGUF blocks.
pub fn qmatmul_host(
    w: &[u8],
    layout: impl Into<BlockLayout>,
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
) -> Result<Vec<f32>> {
    let layout = layout.into();
    if n.checked_mul(row_bytes(layout.ty, k)?) != Some(w.len()) || m.checked_mul(k) != Some(x.len())
    {
        return Err(Error::InvalidArgument(format!(
            "qmatmul_host: {} weight bytes, {} activations for n={n}, k={k}, m={m}",
            w.len(),
            x.len()
        )));
    }
    let mut y = vec![0f32; m * n];
    // SAFETY: sizes checked above: w holds n rows, x holds m rows of k, y holds m rows of n.
    let code = unsafe {
        mlxk_qmatmul_f32(
            w.as_ptr() as *const c_void,
            layout.id(),
            n as i64,
            k as i64,
            x.as_ptr(),
            m as i64,
            k as i64,
            y.as_mut_ptr(),
            n as i64,
        )
    };
    ffi::check("qmatmul_host", code)?;
    Ok(y)
}

/// The kernel's dequantization of `rows` rows of `k` elements.
pub fn dequantize_host(
    w: &[u8],
    layout: impl Into<BlockLayout>,
    rows: usize,
    k: usize,
) -> Result<Vec<f32>> {
    let layout = layout.into();
    if rows.checked_mul(row_bytes(layout.ty, k)?) != Some(w.len()) {
        return Err(Error::InvalidArgument(format!(
            "dequantize_host: {} bytes for {rows} rows of {k}",
            w.len()
        )));
    }
    let mut out = vec![0f32; rows * k];
    // SAFETY: sizes checked above.
    let code = unsafe {
        mlxk_dequantize_rows(
            w.as_ptr() as *const c_void,
            layout.id(),
            rows as i64,
            k as i64,
            out.as_mut_ptr(),
        )
    };
    ffi::check("dequantize_host", code)?;
    Ok(out)
}
