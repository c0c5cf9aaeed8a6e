//! Array operations, as safe free functions on the calling thread's current stream
//! (see [`crate::mlx::set_default_device`]). Each is a checked mlx-c call.

use crate::error::{Error, Result};
use crate::mlx::handler::{null_array, try_array};
use crate::mlx::stream::current_stream;
use crate::mlx::{Array, Dtype};
use std::ffi::CString;

macro_rules! unary {
    ($($(#[$doc:meta])* $name:ident => $ffi:ident;)*) => {$(
        $(#[$doc])*
        pub fn $name(a: &Array) -> Result<Array> {
            let s = current_stream();
            // SAFETY: valid input handle and stream; the op writes into `res`.
            try_array(|res| unsafe { mlx_sys::$ffi(res, a.raw(), s) })
        }
    )*};
}

macro_rules! binary {
    ($($(#[$doc:meta])* $name:ident => $ffi:ident;)*) => {$(
        $(#[$doc])*
        pub fn $name(a: &Array, b: &Array) -> Result<Array> {
            let s = current_stream();
            // SAFETY: valid input handles and stream; the op writes into `res`.
            try_array(|res| unsafe { mlx_sys::$ffi(res, a.raw(), b.raw(), s) })
        }
    )*};
}

macro_rules! axis_reduce {
    ($($(#[$doc:meta])* $name:ident => $ffi:ident;)*) => {$(
        $(#[$doc])*
        pub fn $name(a: &Array, axis: i32, keepdims: bool) -> Result<Array> {
            let s = current_stream();
            // SAFETY: valid input handle and stream; the op writes into `res`.
            try_array(|res| unsafe { mlx_sys::$ffi(res, a.raw(), axis, keepdims, s) })
        }
    )*};
}

unary! {
    /// Elementwise logistic sigmoid.
    sigmoid => mlx_sigmoid;
    /// Elementwise e^x.
    exp => mlx_exp;
    /// Elementwise natural logarithm.
    log => mlx_log;
    /// Elementwise square root.
    sqrt => mlx_sqrt;
    /// Elementwise 1/sqrt(x).
    rsqrt => mlx_rsqrt;
    /// Elementwise -x.
    negative => mlx_negative;
    /// Elementwise x².
    square => mlx_square;
    /// Elementwise |x|.
    abs => mlx_abs;
    /// Elementwise hyperbolic tangent.
    tanh => mlx_tanh;
}

binary! {
    /// a + b with broadcasting.
    add => mlx_add;
    /// a − b with broadcasting.
    subtract => mlx_subtract;
    /// a · b elementwise with broadcasting.
    multiply => mlx_multiply;
    /// a / b with broadcasting.
    divide => mlx_divide;
    /// Elementwise maximum.
    maximum => mlx_maximum;
    /// Elementwise minimum.
    minimum => mlx_minimum;
    /// a > b (bool).
    greater => mlx_greater;
    /// a < b (bool).
    less => mlx_less;
    /// a == b (bool).
    equal => mlx_equal;
    /// Matrix product over the last two axes, batch axes broadcast: [.., M, K] · [.., K, N].
    matmul => mlx_matmul;
    /// Elementwise a^b.
    power => mlx_power;
}

axis_reduce! {
    /// Sum along `axis`.
    sum => mlx_sum_axis;
    /// Mean along `axis`.
    mean => mlx_mean_axis;
    /// Maximum along `axis`.
    max => mlx_max_axis;
    /// log(sum(exp(a))) along `axis`, computed stably.
    logsumexp => mlx_logsumexp_axis;
    /// Index of the maximum along `axis` (uint32).
    argmax => mlx_argmax_axis;
}

/// x · sigmoid(x) (SiLU / swish).
pub fn silu(x: &Array) -> Result<Array> {
    multiply(x, &sigmoid(x)?)
}

/// GELU, tanh approximation: x/2 · (1 + tanh(√(2/π) · (x + 0.044715·x³))).
pub fn gelu_tanh(x: &Array) -> Result<Array> {
    let c = Array::scalar((2.0f32 / std::f32::consts::PI).sqrt())?;
    let x3 = multiply(&multiply(x, x)?, x)?;
    let inner = add(x, &multiply(&x3, &Array::scalar(0.044715f32)?)?)?;
    let t = tanh(&multiply(&inner, &c)?)?;
    let half_x = multiply(x, &Array::scalar(0.5f32)?)?;
    add(&half_x, &multiply(&half_x, &t)?)
}

/// Reshapes to `shape` (one entry may be -1).
pub fn reshape(a: &Array, shape: &[i32]) -> Result<Array> {
    let s = current_stream();
    // SAFETY: `shape` is valid for its length; valid handle and stream.
    try_array(|res| unsafe { mlx_sys::mlx_reshape(res, a.raw(), shape.as_ptr(), shape.len(), s) })
}

/// Permutes axes.
pub fn transpose(a: &Array, axes: &[i32]) -> Result<Array> {
    let s = current_stream();
    // SAFETY: `axes` is valid for its length; valid handle and stream.
    try_array(|res| unsafe {
        mlx_sys::mlx_transpose_axes(res, a.raw(), axes.as_ptr(), axes.len(), s)
    })
}

/// Swaps two axes.
pub fn swapaxes(a: &Array, axis1: i32, axis2: i32) -> Result<Array> {
    let s = current_stream();
    // SAFETY: valid handle and stream.
    try_array(|res| unsafe { mlx_sys::mlx_swapaxes(res, a.raw(), axis1, axis2, s) })
}

/// Inserts a length-1 axis at `axis`.
pub fn expand_dims(a: &Array, axis: i32) -> Result<Array> {
    let s = current_stream();
    // SAFETY: valid handle and stream.
    try_array(|res| unsafe { mlx_sys::mlx_expand_dims(res, a.raw(), axis, s) })
}

/// Removes the length-1 axis `axis`.
pub fn squeeze(a: &Array, axis: i32) -> Result<Array> {
    let s = current_stream();
    // SAFETY: valid handle and stream.
    try_array(|res| unsafe { mlx_sys::mlx_squeeze_axis(res, a.raw(), axis, s) })
}

/// Broadcasts to `shape`.
pub fn broadcast_to(a: &Array, shape: &[i32]) -> Result<Array> {
    let s = current_stream();
    // SAFETY: `shape` is valid for its length; valid handle and stream.
    try_array(|res| unsafe {
        mlx_sys::mlx_broadcast_to(res, a.raw(), shape.as_ptr(), shape.len(), s)
    })
}

/// A row-contiguous copy (or the array itself when already contiguous).
pub fn contiguous(a: &Array) -> Result<Array> {
    let s = current_stream();
    // SAFETY: valid handle and stream.
    try_array(|res| unsafe { mlx_sys::mlx_contiguous(res, a.raw(), false, s) })
}

/// Casts to `dtype`.
pub fn astype(a: &Array, dtype: Dtype) -> Result<Array> {
    let s = current_stream();
    // SAFETY: valid handle and stream.
    try_array(|res| unsafe { mlx_sys::mlx_astype(res, a.raw(), dtype.to_raw(), s) })
}

/// Joins arrays along `axis`.
pub fn concatenate(arrays: &[&Array], axis: i32) -> Result<Array> {
    let s = current_stream();
    let raws: Vec<mlx_sys::mlx_array> = arrays.iter().map(|a| a.raw()).collect();
    // SAFETY: the vector copies the handles (sharing the arrays) and is freed after the call.
    try_array(|res| unsafe {
        let vec = mlx_sys::mlx_vector_array_new_data(raws.as_ptr(), raws.len());
        let status = mlx_sys::mlx_concatenate_axis(res, vec, axis, s);
        mlx_sys::mlx_vector_array_free(vec);
        status
    })
}

fn check_ranges(op: &str, a: &Array, start: &[i32], stop: &[i32], strides: &[i32]) -> Result<()> {
    let n = a.ndim();
    if start.len() != n || stop.len() != n || strides.len() != n {
        return Err(Error::Shape {
            op: op.into(),
            expected: format!("start/stop/strides of length {n}"),
            found: vec![start.len() as i64, stop.len() as i64, strides.len() as i64],
        });
    }
    Ok(())
}

/// `a[start:stop:strides]`, one entry per axis.
pub fn slice(a: &Array, start: &[i32], stop: &[i32], strides: &[i32]) -> Result<Array> {
    check_ranges("slice", a, start, stop, strides)?;
    let s = current_stream();
    // SAFETY: slices valid for their lengths; valid handle and stream.
    try_array(|res| unsafe {
        mlx_sys::mlx_slice(
            res,
            a.raw(),
            start.as_ptr(),
            start.len(),
            stop.as_ptr(),
            stop.len(),
            strides.as_ptr(),
            strides.len(),
            s,
        )
    })
}

/// A copy of `src` with `src[start:stop:strides] = update`. When `src` is not referenced
/// elsewhere, MLX writes in place.
pub fn slice_update(
    src: &Array,
    update: &Array,
    start: &[i32],
    stop: &[i32],
    strides: &[i32],
) -> Result<Array> {
    check_ranges("slice_update", src, start, stop, strides)?;
    let s = current_stream();
    // SAFETY: slices valid for their lengths; valid handles and stream.
    try_array(|res| unsafe {
        mlx_sys::mlx_slice_update(
            res,
            src.raw(),
            update.raw(),
            start.as_ptr(),
            start.len(),
            stop.as_ptr(),
            stop.len(),
            strides.as_ptr(),
            strides.len(),
            s,
        )
    })
}

/// Gathers `indices` along `axis`.
pub fn take(a: &Array, indices: &Array, axis: i32) -> Result<Array> {
    let s = current_stream();
    // SAFETY: valid handles and stream.
    try_array(|res| unsafe { mlx_sys::mlx_take_axis(res, a.raw(), indices.raw(), axis, s) })
}

/// Gathers along `axis` with indices shaped like `a` (except on `axis`).
pub fn take_along_axis(a: &Array, indices: &Array, axis: i32) -> Result<Array> {
    let s = current_stream();
    // SAFETY: valid handles and stream.
    try_array(|res| unsafe { mlx_sys::mlx_take_along_axis(res, a.raw(), indices.raw(), axis, s) })
}

/// Softmax along `axis` (`precise`: accumulate in float32 for half inputs).
pub fn softmax(a: &Array, axis: i32, precise: bool) -> Result<Array> {
    let s = current_stream();
    // SAFETY: valid handle and stream.
    try_array(|res| unsafe { mlx_sys::mlx_softmax_axis(res, a.raw(), axis, precise, s) })
}

/// Sorted copy along `axis`.
pub fn sort(a: &Array, axis: i32) -> Result<Array> {
    let s = current_stream();
    // SAFETY: valid handle and stream.
    try_array(|res| unsafe { mlx_sys::mlx_sort_axis(res, a.raw(), axis, s) })
}

/// Indices that sort `a` along `axis` (uint32).
pub fn argsort(a: &Array, axis: i32) -> Result<Array> {
    let s = current_stream();
    // SAFETY: valid handle and stream.
    try_array(|res| unsafe { mlx_sys::mlx_argsort_axis(res, a.raw(), axis, s) })
}

/// Indices that partition `a` around its `kth` smallest element along `axis`.
pub fn argpartition(a: &Array, kth: i32, axis: i32) -> Result<Array> {
    let s = current_stream();
    // SAFETY: valid handle and stream.
    try_array(|res| unsafe { mlx_sys::mlx_argpartition_axis(res, a.raw(), kth, axis, s) })
}

/// The `k` largest values along `axis` (unordered).
pub fn topk(a: &Array, k: i32, axis: i32) -> Result<Array> {
    let s = current_stream();
    // SAFETY: valid handle and stream.
    try_array(|res| unsafe { mlx_sys::mlx_topk_axis(res, a.raw(), k, axis, s) })
}

/// Inclusive cumulative sum along the last axis flattened (as MLX's `cumsum` without axis).
pub fn cumsum(a: &Array, reverse: bool) -> Result<Array> {
    let s = current_stream();
    let no_dtype = mlx_sys::mlx_optional_dtype {
        value: Dtype::F32.to_raw(),
        has_value: false,
    };
    // SAFETY: valid handle and stream.
    try_array(|res| unsafe { mlx_sys::mlx_cumsum(res, a.raw(), reverse, true, no_dtype, s) })
}

/// `cond ? x : y` elementwise with broadcasting.
pub fn where_(cond: &Array, x: &Array, y: &Array) -> Result<Array> {
    let s = current_stream();
    // SAFETY: valid handles and stream.
    try_array(|res| unsafe { mlx_sys::mlx_where(res, cond.raw(), x.raw(), y.raw(), s) })
}

/// An array of zeros.
pub fn zeros(shape: &[i32], dtype: Dtype) -> Result<Array> {
    let s = current_stream();
    // SAFETY: `shape` valid for its length; valid stream.
    try_array(|res| unsafe {
        mlx_sys::mlx_zeros(res, shape.as_ptr(), shape.len(), dtype.to_raw(), s)
    })
}

/// `[start, stop)` with `step`.
pub fn arange(start: f64, stop: f64, step: f64, dtype: Dtype) -> Result<Array> {
    let s = current_stream();
    // SAFETY: valid stream.
    try_array(|res| unsafe { mlx_sys::mlx_arange(res, start, stop, step, dtype.to_raw(), s) })
}

/// MLX's affine quantization parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantSpec {
    /// Elements sharing one scale and bias (32, 64 or 128).
    pub group_size: i32,
    /// Bits per element (2, 3, 4, 5, 6 or 8).
    pub bits: i32,
}

impl QuantSpec {
    fn raw(self) -> (mlx_sys::mlx_optional_int, mlx_sys::mlx_optional_int) {
        (
            mlx_sys::mlx_optional_int {
                value: self.group_size,
                has_value: true,
            },
            mlx_sys::mlx_optional_int {
                value: self.bits,
                has_value: true,
            },
        )
    }
}

fn affine() -> CString {
    CString::new("affine").unwrap_or_default()
}

/// Affine-quantizes `w` [N, K] row-wise: returns (packed uint32 weights, scales, biases).
pub fn quantize(w: &Array, spec: QuantSpec) -> Result<(Array, Array, Array)> {
    let s = current_stream();
    let (g, b) = spec.raw();
    let mode = affine();
    crate::mlx::handler::install_error_handler();
    // SAFETY: valid handles; the result vector is created, read and freed here.
    unsafe {
        let mut vec = mlx_sys::mlx_vector_array_new();
        let status = mlx_sys::mlx_quantize(&mut vec, w.raw(), g, b, mode.as_ptr(), null_array(), s);
        let out = crate::mlx::handler::check(status).and_then(|_| {
            let get = |i| try_array(|res| mlx_sys::mlx_vector_array_get(res, vec, i));
            Ok((get(0)?, get(1)?, get(2)?))
        });
        mlx_sys::mlx_vector_array_free(vec);
        out
    }
}

/// Inverse of [`quantize`]: returns the float weights [N, K].
pub fn dequantize(w: &Array, scales: &Array, biases: &Array, spec: QuantSpec) -> Result<Array> {
    let s = current_stream();
    let (g, b) = spec.raw();
    let mode = affine();
    let no_dtype = mlx_sys::mlx_optional_dtype {
        value: Dtype::F32.to_raw(),
        has_value: false,
    };
    // SAFETY: valid handles and stream.
    try_array(|res| unsafe {
        mlx_sys::mlx_dequantize(
            res,
            w.raw(),
            scales.raw(),
            biases.raw(),
            g,
            b,
            mode.as_ptr(),
            null_array(),
            no_dtype,
            s,
        )
    })
}

/// x [.., M, K] · dequantize(w)ᵀ for w packed as [N, K·bits/32]: [.., M, N].
pub fn quantized_matmul(
    x: &Array,
    w: &Array,
    scales: &Array,
    biases: &Array,
    spec: QuantSpec,
) -> Result<Array> {
    let s = current_stream();
    let (g, b) = spec.raw();
    let mode = affine();
    // SAFETY: valid handles and stream.
    try_array(|res| unsafe {
        mlx_sys::mlx_quantized_matmul(
            res,
            x.raw(),
            w.raw(),
            scales.raw(),
            biases.raw(),
            true,
            g,
            b,
            mode.as_ptr(),
            s,
        )
    })
}

/// Draws one index per row from `logits` along `axis` with the PRNG `key`.
pub fn random_categorical(logits: &Array, axis: i32, key: &Array) -> Result<Array> {
    let s = current_stream();
    // SAFETY: valid handles and stream.
    try_array(|res| unsafe {
        mlx_sys::mlx_random_categorical(res, logits.raw(), axis, key.raw(), s)
    })
}

/// A PRNG key from a seed.
pub fn random_key(seed: u64) -> Result<Array> {
    // SAFETY: the op writes a new key into `res`.
    try_array(|res| unsafe { mlx_sys::mlx_random_key(res, seed) })
}
