//! The C entry points of our kernels (`kernels/include/mlx_engine_kernels.h`) and the one
//! checked call every kernel status goes through: a failure is [`Error::Kernel`] naming the
//! Rust entry and carrying the kernel's own message (`mlxk_last_error`).

use crate::error::{Error, Result};
use crate::mlx::handler::try_arrays_with;
use crate::mlx::Array;
use std::ffi::{c_char, c_int, c_void, CStr};

/// `MLXK_TYPE_REPACKED`: or'ed into a ggml type id for rows in the kernels' repacked layout.
pub(super) const MLXK_TYPE_REPACKED: c_int = 0x100;
/// `MLXK_MAX_MULTI_WEIGHTS`: most weights one fused call takes.
pub(super) const MLXK_MAX_MULTI_WEIGHTS: c_int = 4;
/// `enum mlxk_status`: success.
pub(super) const MLXK_OK: c_int = 0;
/// `enum mlxk_epilogue`: what a fused call does after its matmuls.
pub(super) const MLXK_EPILOGUE_NONE: c_int = 0;
pub(super) const MLXK_EPILOGUE_SWIGLU: c_int = 1;
pub(super) const MLXK_EPILOGUE_GEGLU: c_int = 2;
/// `enum mlxk_path`: the kernel paths (`AUTO`: back to the default).
pub(super) const MLXK_PATH_AUTO: c_int = -1;
pub(super) const MLXK_PATH_SCALAR: c_int = 0;
pub(super) const MLXK_PATH_AVX2: c_int = 1;
pub(super) const MLXK_PATH_AVX512_VNNI: c_int = 2;

/// `mlxk_attention_params`: the scalar arguments of `mlxk_cached_attention`.
#[allow(non_camel_case_types)]
#[repr(C)]
pub(super) struct mlxk_attention_params {
    pub n_heads: i32,
    pub n_kv_heads: i32,
    pub head_dim: i32,
    pub rope_traditional: i32,
    pub pos: i64,
    pub window: i64,
    pub scale: f32,
    pub rope_base: f32,
    pub rope_scale: f32,
    pub norm_eps: f32,
    pub rope_inv_freq: *const f32,
}

extern "C" {
    pub(super) fn mlxk_cross_entropy(
        res: *mut mlx_sys::mlx_array,
        logits: mlx_sys::mlx_array,
        targets: mlx_sys::mlx_array,
        weights: mlx_sys::mlx_array,
        s: mlx_sys::mlx_stream,
    ) -> c_int;
    pub(super) fn mlxk_matmul_f32(
        res: *mut mlx_sys::mlx_array,
        a: mlx_sys::mlx_array,
        b: mlx_sys::mlx_array,
        s: mlx_sys::mlx_stream,
    ) -> c_int;
    #[allow(clippy::too_many_arguments)]
    pub(super) fn mlxk_gguf_qmatmul_add(
        res: *mut mlx_sys::mlx_array,
        x: mlx_sys::mlx_array,
        w: mlx_sys::mlx_array,
        residual: mlx_sys::mlx_array,
        ggml_type: c_int,
        n: i64,
        k: i64,
        s: mlx_sys::mlx_stream,
    ) -> c_int;
    pub(super) fn mlxk_gguf_qmatmul_multi_norm(
        res: *mut mlx_sys::mlx_array,
        x: mlx_sys::mlx_array,
        norm_weight: mlx_sys::mlx_array,
        norm_eps: f32,
        ws: *const mlx_sys::mlx_array,
        types: *const c_int,
        ns: *const i64,
        biases: *const mlx_sys::mlx_array,
        count: c_int,
        k: i64,
        epilogue: c_int,
        s: mlx_sys::mlx_stream,
    ) -> c_int;
    #[allow(clippy::too_many_arguments)]
    pub(super) fn mlxk_cached_attention(
        out: *mut mlx_sys::mlx_array,
        k_cache_out: *mut mlx_sys::mlx_array,
        v_cache_out: *mut mlx_sys::mlx_array,
        q: mlx_sys::mlx_array,
        k: mlx_sys::mlx_array,
        v: mlx_sys::mlx_array,
        k_cache: mlx_sys::mlx_array,
        v_cache: mlx_sys::mlx_array,
        q_norm: mlx_sys::mlx_array,
        k_norm: mlx_sys::mlx_array,
        params: *const mlxk_attention_params,
        s: mlx_sys::mlx_stream,
    ) -> c_int;
    pub(super) fn mlxk_weight_array(
        res: *mut mlx_sys::mlx_array,
        src: *const c_void,
        ggml_type: c_int,
        n: i64,
        k: i64,
        out_type: *mut c_int,
    ) -> c_int;
    pub(super) fn mlxk_weight_arena_bytes() -> i64;
    pub(super) fn mlxk_qmatmul_f32(
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
    pub(super) fn mlxk_dequantize_rows(
        w: *const c_void,
        ggml_type: c_int,
        rows: i64,
        k: i64,
        out: *mut f32,
    ) -> c_int;
    pub(super) fn mlxk_repack_rows(
        src: *const c_void,
        ggml_type: c_int,
        n: i64,
        k: i64,
        dst: *mut c_void,
        out_type: *mut c_int,
    ) -> c_int;
    pub(super) fn mlxk_row_bytes(ggml_type: c_int, k: i64, out: *mut i64) -> c_int;
    pub(super) fn mlxk_block_size(ggml_type: c_int) -> c_int;
    fn mlxk_last_error() -> *const c_char;
    pub(super) fn mlxk_kernel_path() -> c_int;
    pub(super) fn mlxk_force_path(path: c_int);
    pub(super) fn mlxk_set_num_threads(n: c_int);
    pub(super) fn mlxk_get_num_threads() -> c_int;
    pub(super) fn mlxk_retain_freed_memory();
}

/// Turns the status of a kernel entry called by `op` into a `Result` (0 = success; any other
/// `mlxk_status` is an [`Error::Kernel`] with the kernel's message for it).
pub(super) fn check(op: &str, code: c_int) -> Result<()> {
    if code == MLXK_OK {
        return Ok(());
    }
    let mut message = last_error();
    if message.is_empty() {
        message = format!("status {code} without a message");
    }
    Err(Error::Kernel {
        op: op.into(),
        message,
    })
}

/// Runs a kernel entry that writes one MLX array into `res`, checked by [`check`].
pub(super) fn kernel_array(
    op: &str,
    entry: impl FnOnce(*mut mlx_sys::mlx_array) -> c_int,
) -> Result<Array> {
    let [array] = kernel_arrays(op, |[res]: &mut [mlx_sys::mlx_array; 1]| entry(res))?;
    Ok(array)
}

/// Runs a kernel entry that writes `N` MLX arrays into the handles it is given, checked by
/// [`check`] (all handles freed again on failure).
pub(super) fn kernel_arrays<const N: usize>(
    op: &str,
    entry: impl FnOnce(&mut [mlx_sys::mlx_array; N]) -> c_int,
) -> Result<[Array; N]> {
    try_arrays_with(entry, |code| check(op, code))
}

/// The kernels' message for the last failure on this thread.
fn last_error() -> String {
    // SAFETY: the kernels return a NUL-terminated per-thread string valid until the next call.
    unsafe { CStr::from_ptr(mlxk_last_error()) }
        .to_string_lossy()
        .into_owned()
}
