//! Our C++ kernels (`kernels/`): a quantized matmul over GGUF blocks read in place, exposed as
//! an MLX custom primitive (lazy, ordered on the CPU stream, composable with `compile`), plus
//! the raw entry points the tests use to check each path against the Rust scalar twin.

use crate::error::{Error, Result};
use crate::mlx::handler::try_array;
use crate::mlx::stream::current_stream;
use crate::mlx::Array;
use crate::quant::GgmlType;
use std::ffi::{c_char, c_int, c_void, CStr};

extern "C" {
    fn mlxk_gguf_qmatmul(
        res: *mut mlx_sys::mlx_array,
        x: mlx_sys::mlx_array,
        w: mlx_sys::mlx_array,
        ggml_type: c_int,
        n: i64,
        k: i64,
        s: mlx_sys::mlx_stream,
    ) -> c_int;
    fn mlxk_qmatmul_f32(
        w: *const c_void,
        ggml_type: c_int,
        n: i64,
        k: i64,
        x: *const f32,
        m: i64,
        x_row_stride: i64,
        y: *mut f32,
        y_row_stride: i64,
    ) -> c_int;
    fn mlxk_dequantize_rows(
        w: *const c_void,
        ggml_type: c_int,
        rows: i64,
        k: i64,
        out: *mut f32,
    ) -> c_int;
    fn mlxk_row_bytes(ggml_type: c_int, k: i64, out: *mut i64) -> c_int;
    fn mlxk_block_size(ggml_type: c_int) -> c_int;
    fn mlxk_last_error() -> *const c_char;
    fn mlxk_kernel_path() -> c_int;
    fn mlxk_force_path(path: c_int);
    fn mlxk_set_num_threads(n: c_int);
    fn mlxk_get_num_threads() -> c_int;
}

/// The kernel's SIMD path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelPath {
    /// Portable scalar code (always compiled, always tested).
    Scalar,
    /// AVX2 + FMA with int8 activations (x86-64, chosen at run time).
    Avx2,
}

fn last_error() -> String {
    // SAFETY: the kernels return a NUL-terminated per-thread string valid until the next call.
    unsafe { CStr::from_ptr(mlxk_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn status(code: c_int, what: &str) -> Result<()> {
    match code {
        0 => Ok(()),
        2 => Err(Error::Unsupported(format!("{what}: {}", last_error()))),
        3 => Err(Error::Shape {
            op: what.into(),
            expected: last_error(),
            found: vec![],
        }),
        _ => Err(Error::InvalidArgument(format!("{what}: {}", last_error()))),
    }
}

/// Whether the kernel handles GGUF type `ty`.
pub fn supports(ty: GgmlType) -> bool {
    // SAFETY: a pure query.
    unsafe { mlxk_block_size(ty.id() as c_int) > 0 }
}

/// x [.., M, K] · W[N, K]ᵀ for W held as GGUF blocks [N, row_bytes] (uint8): [.., M, N]
/// float32, as a lazy MLX op on the CPU stream.
pub fn gguf_matmul(x: &Array, blocks: &Array, ty: GgmlType, n: usize, k: usize) -> Result<Array> {
    let s = current_stream();
    // SAFETY: valid handles and stream; the primitive validates shapes and types and reports
    // failures through its status, with the message in `mlxk_last_error`.
    let out = try_array(|res| unsafe {
        mlxk_gguf_qmatmul(
            res,
            x.raw(),
            blocks.raw(),
            ty.id() as c_int,
            n as i64,
            k as i64,
            s,
        )
    });
    out.map_err(|e| match e {
        Error::Mlx { message } if message.starts_with("mlx-c call failed") => Error::Mlx {
            message: last_error(),
        },
        other => other,
    })
}

/// Bytes of one row of `k` elements of `ty`, as the kernel computes it.
pub fn row_bytes(ty: GgmlType, k: usize) -> Result<usize> {
    let mut out = 0i64;
    // SAFETY: writes one i64.
    status(
        unsafe { mlxk_row_bytes(ty.id() as c_int, k as i64, &mut out) },
        "row_bytes",
    )?;
    Ok(out as usize)
}

/// The raw kernel on host memory: y [m, n] = x [m, k] · W[n, k]ᵀ, W as GGUF blocks.
pub fn qmatmul_host(
    w: &[u8],
    ty: GgmlType,
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
) -> Result<Vec<f32>> {
    if w.len() != n * row_bytes(ty, k)? || x.len() != m * k {
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
            ty.id() as c_int,
            n as i64,
            k as i64,
            x.as_ptr(),
            m as i64,
            k as i64,
            y.as_mut_ptr(),
            n as i64,
        )
    };
    status(code, "qmatmul")?;
    Ok(y)
}

/// The kernel's dequantization of `rows` rows of `k` elements.
pub fn dequantize_host(w: &[u8], ty: GgmlType, rows: usize, k: usize) -> Result<Vec<f32>> {
    if w.len() != rows * row_bytes(ty, k)? {
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
            ty.id() as c_int,
            rows as i64,
            k as i64,
            out.as_mut_ptr(),
        )
    };
    status(code, "dequantize")?;
    Ok(out)
}

/// The path in use.
pub fn path() -> KernelPath {
    // SAFETY: a pure query.
    match unsafe { mlxk_kernel_path() } {
        1 => KernelPath::Avx2,
        _ => KernelPath::Scalar,
    }
}

/// Forces a path process-wide (`None`: back to the default: `MLX_ENGINE_KERNEL`, else the
/// best the CPU supports). For tests and comparisons.
pub fn force_path(path: Option<KernelPath>) {
    let raw = match path {
        None => -1,
        Some(KernelPath::Scalar) => 0,
        Some(KernelPath::Avx2) => 1,
    };
    // SAFETY: sets a process-wide flag.
    unsafe { mlxk_force_path(raw) }
}

/// Sets the kernels' thread count (the calling thread included; 0: all cores).
pub fn set_num_threads(threads: usize) {
    let n = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    };
    // SAFETY: sets the pool size.
    unsafe { mlxk_set_num_threads(n.min(c_int::MAX as usize) as c_int) }
}

/// The kernels' thread count.
pub fn num_threads() -> usize {
    // SAFETY: a pure query.
    unsafe { mlxk_get_num_threads() }.max(1) as usize
}
