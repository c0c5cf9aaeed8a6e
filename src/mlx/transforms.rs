//! Evaluation, compilation and memory statistics.

use crate::error::{Error, Result};
use crate::mlx::handler::{
    check, check_callback_call, clear_callback_error, install_error_handler, keep_callback_error,
    try_array,
};
use crate::mlx::Array;
use std::ffi::{c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// An owned `mlx_vector_array` built from shared handles.
struct VectorArray(mlx_sys::mlx_vector_array);

impl VectorArray {
    fn new(arrays: &[&Array]) -> VectorArray {
        let raws: Vec<mlx_sys::mlx_array> = arrays.iter().map(|a| a.raw()).collect();
        // SAFETY: the data pointer is valid for `raws.len()` handles; mlx-c shares each array.
        VectorArray(unsafe { mlx_sys::mlx_vector_array_new_data(raws.as_ptr(), raws.len()) })
    }

    fn to_arrays(&self) -> Result<Vec<Array>> {
        // SAFETY: `self.0` is a valid vector; each get returns a new handle we own.
        let n = unsafe { mlx_sys::mlx_vector_array_size(self.0) };
        (0..n)
            .map(|i| try_array(|res| unsafe { mlx_sys::mlx_vector_array_get(res, self.0, i) }))
            .collect()
    }
}

impl Drop for VectorArray {
    fn drop(&mut self) {
        // SAFETY: we own the vector handle.
        unsafe { mlx_sys::mlx_vector_array_free(self.0) };
    }
}

/// Evaluates all `arrays` (one graph traversal for all of them).
pub fn eval(arrays: &[&Array]) -> Result<()> {
    install_error_handler();
    let vec = VectorArray::new(arrays);
    // SAFETY: valid vector handle.
    check(unsafe { mlx_sys::mlx_eval(vec.0) })
}

/// Schedules evaluation of `arrays` and returns at once; a later `eval`/`to_vec` waits.
pub fn async_eval(arrays: &[&Array]) -> Result<()> {
    install_error_handler();
    let vec = VectorArray::new(arrays);
    // SAFETY: valid vector handle.
    check(unsafe { mlx_sys::mlx_async_eval(vec.0) })
}

/// A function of arrays to arrays, as [`compile`] takes it.
pub type ArrayFn = dyn Fn(&[Array]) -> Result<Vec<Array>> + Send + Sync;

unsafe extern "C" fn call_closure(
    out: *mut mlx_sys::mlx_vector_array,
    input: mlx_sys::mlx_vector_array,
    payload: *mut c_void,
) -> c_int {
    // SAFETY: `payload` is the `Box<Box<ArrayFn>>` leaked in `compile`, alive until
    // `drop_closure` runs.
    let f = unsafe { &*(payload as *const Box<ArrayFn>) };
    // No panic may unwind into C++.
    // SAFETY: forwarded unchanged.
    unsafe { run_closure(out, input, f.as_ref()) }
}

/// The error for a compiled function that panicked, with the panic's message.
fn panic_error(panic: &(dyn std::any::Any + Send)) -> Error {
    let what = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message");
    Error::Mlx {
        message: format!("compiled function panicked: {what}"),
    }
}

unsafe extern "C" fn drop_closure(payload: *mut c_void) {
    // SAFETY: `payload` is the box leaked in `compile`; mlx-c calls this once.
    drop(unsafe { Box::from_raw(payload as *mut Box<ArrayFn>) });
}

/// A function compiled by MLX (`mlx::core::compile`): the graph is traced once per input
/// shape and its elementwise ops fused; later calls replay it.
pub struct Compiled {
    raw: mlx_sys::mlx_closure,
}

// SAFETY: the closure handle owns a `Send + Sync` Rust function and MLX's compiled graph
// cache; calls are made through `&self` from one thread at a time by the engine.
unsafe impl Send for Compiled {}

/// Compiles `f`. `shapeless`: reuse the trace for inputs of other shapes.
pub fn compile(f: Box<ArrayFn>, shapeless: bool) -> Result<Compiled> {
    install_error_handler();
    let payload = Box::into_raw(Box::new(f)) as *mut c_void;
    // SAFETY: the payload outlives the closure (freed by `drop_closure`); the plain closure is
    // freed after `mlx_compile` has taken its own reference.
    unsafe {
        let plain =
            mlx_sys::mlx_closure_new_func_payload(Some(call_closure), payload, Some(drop_closure));
        let mut raw = mlx_sys::mlx_closure_new();
        let status = mlx_sys::mlx_compile(&mut raw, plain, shapeless);
        mlx_sys::mlx_closure_free(plain);
        if let Err(err) = check(status) {
            mlx_sys::mlx_closure_free(raw);
            return Err(err);
        }
        Ok(Compiled { raw })
    }
}

impl Compiled {
    /// Calls the compiled function (lazily: outputs are unevaluated graph nodes). An error of
    /// the function's body (while MLX traces it) is returned as the body raised it.
    pub fn call(&self, inputs: &[&Array]) -> Result<Vec<Array>> {
        install_error_handler();
        let input = VectorArray::new(inputs);
        // SAFETY: valid closure and vector handles; the result vector is ours.
        let mut out = VectorArray(unsafe { mlx_sys::mlx_vector_array_new() });
        clear_callback_error();
        // SAFETY: as above; the closure runs `call_closure` on this thread while tracing.
        check_callback_call(unsafe { mlx_sys::mlx_closure_apply(&mut out.0, self.raw, input.0) })?;
        out.to_arrays()
    }
}

impl Drop for Compiled {
    fn drop(&mut self) {
        // SAFETY: we own the closure handle.
        unsafe { mlx_sys::mlx_closure_free(self.raw) };
    }
}

/// A function and its gradient (`mlx_closure_value_and_grad`), alive for one
/// [`value_and_grad_of`] call.
struct ValueAndGrad {
    raw: mlx_sys::mlx_closure_value_and_grad,
}

impl ValueAndGrad {
    /// The outputs of the function at `inputs` and the gradients of the first output with
    /// respect to the `argnums` inputs, in that order (lazy, like any MLX result).
    fn call(&self, inputs: &[&Array]) -> Result<(Vec<Array>, Vec<Array>)> {
        install_error_handler();
        let input = VectorArray::new(inputs);
        // SAFETY: valid handles; both result vectors are ours.
        let mut values = VectorArray(unsafe { mlx_sys::mlx_vector_array_new() });
        let mut grads = VectorArray(unsafe { mlx_sys::mlx_vector_array_new() });
        clear_callback_error();
        // SAFETY: as above; the closure runs `call_closure` on this thread while tracing.
        check_callback_call(unsafe {
            mlx_sys::mlx_closure_value_and_grad_apply(
                &mut values.0,
                &mut grads.0,
                self.raw,
                input.0,
            )
        })?;
        Ok((values.to_arrays()?, grads.to_arrays()?))
    }
}

impl Drop for ValueAndGrad {
    fn drop(&mut self) {
        // SAFETY: we own the closure handle.
        unsafe { mlx_sys::mlx_closure_value_and_grad_free(self.raw) };
    }
}

unsafe extern "C" fn call_borrowed<F>(
    out: *mut mlx_sys::mlx_vector_array,
    input: mlx_sys::mlx_vector_array,
    payload: *mut c_void,
) -> c_int
where
    F: Fn(&[Array]) -> Result<Vec<Array>>,
{
    // SAFETY: `payload` is the `&F` that `value_and_grad_of` borrows for the whole call.
    let f = unsafe { &*(payload as *const F) };
    // SAFETY: forwarded unchanged; `run_closure` reads `input` and writes `out`.
    unsafe { run_closure(out, input, &|args| f(args)) }
}

/// The body of both closure trampolines: arrays in, `f`, arrays out; errors and panics are
/// kept for the caller and reported to mlx-c as a failed status.
unsafe fn run_closure(
    out: *mut mlx_sys::mlx_vector_array,
    input: mlx_sys::mlx_vector_array,
    f: &dyn Fn(&[Array]) -> Result<Vec<Array>>,
) -> c_int {
    let result = catch_unwind(AssertUnwindSafe(|| -> Result<()> {
        // SAFETY: `input` is valid for this call; each get returns a handle we own.
        let n = unsafe { mlx_sys::mlx_vector_array_size(input) };
        let args = (0..n)
            .map(|i| try_array(|res| unsafe { mlx_sys::mlx_vector_array_get(res, input, i) }))
            .collect::<Result<Vec<_>>>()?;
        let outputs = f(&args)?;
        let refs: Vec<&Array> = outputs.iter().collect();
        let vec = VectorArray::new(&refs);
        // SAFETY: `out` points to a vector handle owned by mlx-c; set shares ours into it.
        check(unsafe { mlx_sys::mlx_vector_array_set(out, vec.0) })
    }))
    .unwrap_or_else(|panic| Err(panic_error(panic.as_ref())));
    match result {
        Ok(()) => 0,
        Err(err) => {
            keep_callback_error(err);
            1
        }
    }
}

/// `f`'s outputs at `inputs` and the gradient of its first output (a scalar) with respect to
/// the inputs at `argnums`, for a function that borrows (the model, the batch): the closure
/// handles live only inside this call.
pub fn value_and_grad_of<F>(
    f: &F,
    inputs: &[&Array],
    argnums: &[i32],
) -> Result<(Vec<Array>, Vec<Array>)>
where
    F: Fn(&[Array]) -> Result<Vec<Array>>,
{
    install_error_handler();
    let payload = f as *const F as *mut c_void;
    // SAFETY: the payload is `f`, borrowed for this whole function; no destructor is given,
    // and both closure handles are freed before returning, so mlx-c never calls `f` later
    // (the gradient graph holds arrays, not the function).
    unsafe {
        let plain = mlx_sys::mlx_closure_new_func_payload(Some(call_borrowed::<F>), payload, None);
        let mut raw = mlx_sys::mlx_closure_value_and_grad_new();
        let status = mlx_sys::mlx_value_and_grad(&mut raw, plain, argnums.as_ptr(), argnums.len());
        mlx_sys::mlx_closure_free(plain);
        if let Err(err) = check(status) {
            mlx_sys::mlx_closure_value_and_grad_free(raw);
            return Err(err);
        }
        let vg = ValueAndGrad { raw };
        vg.call(inputs)
    }
}

/// MLX memory statistics in bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryStats {
    /// Memory held by live arrays.
    pub active: usize,
    /// The high-water mark of `active` since the last reset.
    pub peak: usize,
    /// Freed buffers MLX keeps for reuse.
    pub cache: usize,
}

/// Current MLX memory statistics.
pub fn memory_stats() -> Result<MemoryStats> {
    install_error_handler();
    let mut stats = MemoryStats::default();
    // SAFETY: each call writes one usize.
    unsafe {
        check(mlx_sys::mlx_get_active_memory(&mut stats.active))?;
        check(mlx_sys::mlx_get_peak_memory(&mut stats.peak))?;
        check(mlx_sys::mlx_get_cache_memory(&mut stats.cache))?;
    }
    Ok(stats)
}

/// Resets the peak-memory counter.
pub fn reset_peak_memory() -> Result<()> {
    // SAFETY: no arguments.
    check(unsafe { mlx_sys::mlx_reset_peak_memory() })
}

/// Releases MLX's cache of freed buffers.
pub fn clear_cache() -> Result<()> {
    // SAFETY: no arguments.
    check(unsafe { mlx_sys::mlx_clear_cache() })
}
