//! The C ABI over [`crate::backend`], declared in `include/mlx_engine.h` (which
//! `tests/c_abi.rs` checks against this file). It follows mlx-c's conventions:
//!
//! - opaque handles `{ void* ctx; }` made by `_new` and released by `_free` (freeing a null
//!   handle is a no-op);
//! - every function returns an `int` status (`MLXE_OK` = 0) and writes its result through its
//!   first argument `res`;
//! - on failure the message is kept per thread and read with `mlxe_last_error()`;
//! - every entry point runs inside `catch_unwind`, so a Rust panic becomes `MLXE_ERROR_PANIC`
//!   and never unwinds into C.
//!
//! Ownership: input buffers are borrowed for the call only; logits are written into caller
//! buffers of a stated capacity; token ids and token pieces too, with the count needed written
//! back (`res_len`) so a short buffer can be retried; a serialized snapshot, decoded text and a
//! rendered chat template are returned as an `mlxe_buffer` that the caller releases with
//! `mlxe_buffer_free`. A backend or sampler must not be used from two
//! threads at once, but may be handed from one thread to another.
#![allow(non_camel_case_types)]

use crate::backend::{Backend, BackendOptions, ModelSpec, SeqId};
use crate::chat_template::ChatMessage;
use crate::constraint::Grammar;
use crate::error::Error;
use crate::kv_cache::KvDtype;
use crate::mlx::Device;
use crate::model::Execution;
use crate::sampler::{Sampled, Sampler, SamplerParams};
use std::any::Any;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Success.
pub const MLXE_OK: c_int = 0;
/// A failure; `mlxe_last_error()` says what.
pub const MLXE_ERROR: c_int = 1;
/// A sequence would grow past the context length.
pub const MLXE_ERROR_CONTEXT_FULL: c_int = 2;
/// A caller buffer is smaller than the result.
pub const MLXE_ERROR_BUFFER_TOO_SMALL: c_int = 3;
/// A bug inside mlx-engine (a caught panic); the handle may be unusable.
pub const MLXE_ERROR_PANIC: c_int = 4;
/// Run on the CPU.
pub const MLXE_DEVICE_CPU: c_int = 0;
/// Run on the GPU (Metal or CUDA build of MLX).
pub const MLXE_DEVICE_GPU: c_int = 1;
/// The device's default execution mode.
pub const MLXE_EXECUTION_DEFAULT: c_int = 0;
/// CPU, GGUF blocks multiplied in place by our kernel.
pub const MLXE_EXECUTION_CPU_KERNEL: c_int = 1;
/// CPU, weights dequantized to float32 at load.
pub const MLXE_EXECUTION_CPU_DENSE: c_int = 2;
/// GPU, MLX's quantized matmul.
pub const MLXE_EXECUTION_GPU: c_int = 3;
/// KV cache in float16 (`mlxe_backend_options.kv_type`, the default).
pub const MLXE_KV_F16: c_int = 0;
/// KV cache in float32.
pub const MLXE_KV_F32: c_int = 1;
/// The most top logprobs one `mlxe_sampled` holds.
pub const MLXE_MAX_LOGPROBS: usize = 20;
/// Unconstrained sampling.
pub const MLXE_GRAMMAR_NONE: c_int = 0;
/// `grammar` is a JSON Schema.
pub const MLXE_GRAMMAR_JSON_SCHEMA: c_int = 1;
/// Any JSON object (`grammar` may be null).
pub const MLXE_GRAMMAR_JSON_OBJECT: c_int = 2;
/// `grammar` is a regular expression the whole output matches.
pub const MLXE_GRAMMAR_REGEX: c_int = 3;
/// `grammar` is a Lark grammar (llguidance's dialect).
pub const MLXE_GRAMMAR_LARK: c_int = 4;

/// A loaded model and its sequences.
#[repr(C)]
pub struct mlxe_backend {
    /// The boxed `Backend`, or null.
    pub ctx: *mut c_void,
}

/// A sampler (independent of any backend).
#[repr(C)]
pub struct mlxe_sampler {
    /// The boxed `Sampler`, or null.
    pub ctx: *mut c_void,
}

/// A sequence id within one backend (0 is never valid).
pub type mlxe_seq = u64;

/// Bytes owned by mlx-engine; release with `mlxe_buffer_free`.
#[repr(C)]
pub struct mlxe_buffer {
    /// The bytes (null for an empty buffer).
    pub data: *mut u8,
    /// Number of bytes.
    pub len: usize,
}

/// Options of `mlxe_backend_new`.
#[repr(C)]
pub struct mlxe_backend_options {
    /// `MLXE_DEVICE_CPU` or `MLXE_DEVICE_GPU`.
    pub device: c_int,
    /// One of `MLXE_EXECUTION_*`.
    pub execution: c_int,
    /// Cap on positions per sequence; 0 = the model's context length.
    pub max_context: usize,
    /// Positions per forward pass during prefill; 0 = the default (512).
    pub prefill_chunk: usize,
    /// A LoRA adapter directory (UTF-8, NUL-terminated); null for none.
    pub adapter: *const c_char,
    /// `MLXE_KV_F16` or `MLXE_KV_F32`.
    pub kv_type: c_int,
}

/// What a backend supports.
#[repr(C)]
pub struct mlxe_capabilities {
    /// Grammar/JSON-constrained sampling.
    pub structured_output: bool,
    /// Prefill with all logits plus `mlxe_seq_truncate`.
    pub speculative_decoding: bool,
    /// `mlxe_seq_copy_prefix`.
    pub kv_prefix_copy: bool,
    /// Image or audio inputs.
    pub multimodal: bool,
}

/// Where a backend runs and MLX's memory counters.
#[repr(C)]
pub struct mlxe_device_info {
    /// `MLXE_DEVICE_*`.
    pub device: c_int,
    /// `MLXE_EXECUTION_*` (never `DEFAULT`).
    pub execution: c_int,
    /// Bytes held by live MLX arrays.
    pub active_bytes: usize,
    /// High-water mark of `active_bytes`.
    pub peak_bytes: usize,
    /// Freed buffers MLX keeps for reuse.
    pub cache_bytes: usize,
}

/// Settings of `mlxe_sampler_new`; start from `mlxe_sampler_params_default`.
#[repr(C)]
pub struct mlxe_sampler_params {
    /// Softmax temperature; 0 = greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 = all.
    pub top_k: u32,
    /// Nucleus mass; 1 = off.
    pub top_p: f32,
    /// Minimum probability relative to the most likely token; 0 = off.
    pub min_p: f32,
    /// Repetition penalty; 1 = off.
    pub repetition_penalty: f32,
    /// Presence penalty; 0 = off.
    pub presence_penalty: f32,
    /// Frequency penalty; 0 = off.
    pub frequency_penalty: f32,
    /// How many of the last history tokens the penalties see.
    pub penalty_last_n: u32,
    /// Tokens whose logits get a bias (`n_logit_bias` entries, copied; may be null if 0).
    pub logit_bias_tokens: *const u32,
    /// The biases, one per token.
    pub logit_bias_values: *const f32,
    /// Entries of the two bias arrays.
    pub n_logit_bias: usize,
    /// Random seed, used when `has_seed`; otherwise the sampler seeds from the OS.
    pub seed: u64,
    /// Whether `seed` is set (the same seed draws the same tokens).
    pub has_seed: bool,
    /// Top logprobs to report, at most `MLXE_MAX_LOGPROBS`.
    pub n_logprobs: usize,
    /// `MLXE_GRAMMAR_*`.
    pub grammar_kind: c_int,
    /// The grammar's text (UTF-8, NUL-terminated); null for `NONE` and `JSON_OBJECT`.
    pub grammar: *const c_char,
    /// The backend whose tokenizer the grammar is compiled for (unused for `NONE`).
    pub grammar_backend: mlxe_backend,
}

/// One message of a conversation for `mlxe_chat_template_apply`.
#[repr(C)]
pub struct mlxe_chat_message {
    /// `system`, `user`, `assistant`, …: UTF-8, NUL-terminated.
    pub role: *const c_char,
    /// The message text: UTF-8, NUL-terminated.
    pub content: *const c_char,
}

/// One sampled token.
#[repr(C)]
pub struct mlxe_sampled {
    /// The token.
    pub token: u32,
    /// Its log-probability under the model's distribution (log-softmax of the logits given,
    /// before bias, penalties, temperature and truncation).
    pub logprob: f32,
    /// Valid entries of the two arrays below.
    pub n_top: usize,
    /// The most likely tokens, best first.
    pub top_tokens: [u32; MLXE_MAX_LOGPROBS],
    /// Their log-probabilities.
    pub top_logprobs: [f32; MLXE_MAX_LOGPROBS],
}

// ---------------------------------------------------------------------------------------------
// Errors and guards
// ---------------------------------------------------------------------------------------------

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// A failed call: its status code and message.
struct Failure {
    code: c_int,
    message: String,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let code = if matches!(e, Error::ContextFull { .. }) {
            MLXE_ERROR_CONTEXT_FULL
        } else {
            MLXE_ERROR
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

type FfiResult<T = ()> = std::result::Result<T, Failure>;

/// A plain `MLXE_ERROR` failure.
fn fail<T>(message: impl Into<String>) -> FfiResult<T> {
    Err(Failure {
        code: MLXE_ERROR,
        message: message.into(),
    })
}

/// Stores `message` as this thread's last error (NUL bytes are replaced).
fn set_last_error(message: &str) {
    let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|slot| *slot.borrow_mut() = c);
}

/// The text of a caught panic payload.
fn panic_text(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("unknown panic")
}

/// Runs one entry point's body: catches panics, records failures, returns the status.
fn guard(body: impl FnOnce() -> FfiResult) -> c_int {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => MLXE_OK,
        Ok(Err(failure)) => {
            set_last_error(&failure.message);
            failure.code
        }
        Err(payload) => {
            set_last_error(&format!(
                "internal error (panic): {}",
                panic_text(&*payload)
            ));
            MLXE_ERROR_PANIC
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pointer helpers
// ---------------------------------------------------------------------------------------------

/// Writes `value` through the result pointer `res`.
///
/// # Safety
/// `res` is null or valid for a write of `T`.
unsafe fn write<T>(res: *mut T, value: T) -> FfiResult {
    if res.is_null() {
        return fail("res is null");
    }
    // SAFETY: non-null and, by the caller's contract, valid for writes.
    unsafe { res.write(value) };
    Ok(())
}

/// Reads a struct argument.
///
/// # Safety
/// `ptr` is null or points to a valid `T`.
unsafe fn read<'a, T>(ptr: *const T, what: &str) -> FfiResult<&'a T> {
    // SAFETY: by the caller's contract, non-null means valid.
    unsafe { ptr.as_ref() }.map_or_else(|| fail(format!("{what} is null")), Ok)
}

/// Borrows an input array of `len` elements (null is accepted when `len` is 0).
///
/// # Safety
/// `ptr` is null or valid for reads of `len` elements for the duration of the call.
unsafe fn input<'a, T>(ptr: *const T, len: usize, what: &str) -> FfiResult<&'a [T]> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return fail(format!("{what} is null but its length is {len}"));
    }
    // SAFETY: non-null, and by the caller's contract valid for `len` reads.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// Borrows a caller's float buffer for `needed` results; `None` when `res` is null (results
/// discarded). Fails with `MLXE_ERROR_BUFFER_TOO_SMALL` when `capacity < needed`.
///
/// # Safety
/// `res` is null or valid for writes of `capacity` floats.
unsafe fn output<'a>(
    res: *mut f32,
    capacity: usize,
    needed: usize,
) -> FfiResult<Option<&'a mut [f32]>> {
    if res.is_null() {
        return Ok(None);
    }
    if capacity < needed {
        return Err(Failure {
            code: MLXE_ERROR_BUFFER_TOO_SMALL,
            message: format!("result buffer holds {capacity} floats, {needed} are needed"),
        });
    }
    // SAFETY: non-null, and by the caller's contract valid for `capacity >= needed` writes.
    Ok(Some(unsafe { std::slice::from_raw_parts_mut(res, needed) }))
}

/// Writes `items.len()` to `*res_len`, then copies `items` into the caller's buffer `res` of
/// `capacity` elements. `res` may be null when `capacity` is 0 (a query for the count). Fails
/// with `MLXE_ERROR_BUFFER_TOO_SMALL` when the items do not fit; `*res_len` is written anyway.
///
/// # Safety
/// `res` is null or valid for writes of `capacity` elements; `res_len` is null or valid for a
/// write.
unsafe fn output_items<T: Copy>(
    res: *mut T,
    capacity: usize,
    res_len: *mut usize,
    items: &[T],
) -> FfiResult {
    if res.is_null() && capacity > 0 {
        return fail(format!("res is null but res_capacity is {capacity}"));
    }
    if res_len.is_null() {
        return fail("res_len is null");
    }
    // SAFETY: non-null and, by the caller's contract, valid for a write.
    unsafe { res_len.write(items.len()) };
    if capacity < items.len() {
        return Err(Failure {
            code: MLXE_ERROR_BUFFER_TOO_SMALL,
            message: format!(
                "result buffer holds {capacity} elements, {} are needed",
                items.len()
            ),
        });
    }
    if !items.is_empty() {
        // SAFETY: non-null (capacity >= len > 0 and res null only with capacity 0), valid for
        // `capacity >= items.len()` writes by the caller's contract, and not overlapping
        // `items`, which Rust owns.
        unsafe { std::ptr::copy_nonoverlapping(items.as_ptr(), res, items.len()) };
    }
    Ok(())
}

/// Moves `bytes` into an `mlxe_buffer` at `*res` (the caller frees it with `mlxe_buffer_free`).
///
/// # Safety
/// `res` is null or valid for a write.
unsafe fn output_buffer(res: *mut mlxe_buffer, bytes: Vec<u8>) -> FfiResult {
    if res.is_null() {
        return fail("res is null");
    }
    let bytes = bytes.into_boxed_slice();
    let len = bytes.len();
    let data = Box::into_raw(bytes).cast::<u8>();
    // SAFETY: non-null and valid for a write by the caller's contract.
    unsafe { write(res, mlxe_buffer { data, len }) }
}

/// Borrows `len` bytes of UTF-8 text (null is accepted when `len` is 0).
///
/// # Safety
/// `ptr` is null or valid for reads of `len` bytes for the duration of the call.
unsafe fn input_text<'a>(ptr: *const c_char, len: usize, what: &str) -> FfiResult<&'a str> {
    // SAFETY: forwarded contract.
    let bytes = unsafe { input(ptr.cast::<u8>(), len, what) }?;
    std::str::from_utf8(bytes).or_else(|e| {
        fail(format!(
            "{what} is not UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        ))
    })
}

/// Reads a NUL-terminated UTF-8 string.
///
/// # Safety
/// `ptr` is null or points to a NUL-terminated string.
unsafe fn input_cstr<'a>(ptr: *const c_char, what: &str) -> FfiResult<&'a str> {
    if ptr.is_null() {
        return fail(format!("{what} is null"));
    }
    // SAFETY: non-null and NUL-terminated by the caller's contract.
    unsafe { CStr::from_ptr(ptr) }
        .to_str()
        .or_else(|_| fail(format!("{what} is not UTF-8")))
}

/// The object behind a handle's `ctx`.
///
/// # Safety
/// `ctx` is null or came from `Box::<T>::into_raw` and has not been freed, and no other
/// reference to it is live.
unsafe fn object<'a, T>(ctx: *mut c_void, what: &str) -> FfiResult<&'a mut T> {
    // SAFETY: by the caller's contract, a non-null ctx is a live, unaliased `T`.
    unsafe { ctx.cast::<T>().as_mut() }.map_or_else(|| fail(format!("{what} handle is null")), Ok)
}

/// The backend behind a handle.
///
/// # Safety
/// As [`object`]: a live handle from `mlxe_backend_new`, used by one thread at a time.
unsafe fn backend<'a>(b: &mlxe_backend) -> FfiResult<&'a mut Backend> {
    // SAFETY: forwarded contract.
    unsafe { object(b.ctx, "backend") }
}

/// The sampler behind a handle.
///
/// # Safety
/// As [`object`]: a live handle from `mlxe_sampler_new`, used by one thread at a time.
unsafe fn sampler<'a>(s: &mlxe_sampler) -> FfiResult<&'a mut Sampler> {
    // SAFETY: forwarded contract.
    unsafe { object(s.ctx, "sampler") }
}

// ---------------------------------------------------------------------------------------------
// Conversions
// ---------------------------------------------------------------------------------------------

fn device_from_c(device: c_int) -> FfiResult<Device> {
    match device {
        MLXE_DEVICE_CPU => Ok(Device::Cpu),
        MLXE_DEVICE_GPU => Ok(Device::Gpu),
        other => fail(format!("unknown device {other}")),
    }
}

fn device_to_c(device: Device) -> c_int {
    match device {
        Device::Cpu => MLXE_DEVICE_CPU,
        Device::Gpu => MLXE_DEVICE_GPU,
    }
}

fn execution_from_c(execution: c_int) -> FfiResult<Option<Execution>> {
    match execution {
        MLXE_EXECUTION_DEFAULT => Ok(None),
        MLXE_EXECUTION_CPU_KERNEL => Ok(Some(Execution::CpuKernel)),
        MLXE_EXECUTION_CPU_DENSE => Ok(Some(Execution::CpuDense)),
        MLXE_EXECUTION_GPU => Ok(Some(Execution::Gpu)),
        other => fail(format!("unknown execution mode {other}")),
    }
}

fn execution_to_c(execution: Execution) -> c_int {
    match execution {
        Execution::CpuKernel => MLXE_EXECUTION_CPU_KERNEL,
        Execution::CpuDense => MLXE_EXECUTION_CPU_DENSE,
        Execution::Gpu => MLXE_EXECUTION_GPU,
    }
}

/// # Safety
/// `o.adapter` is null or a NUL-terminated string.
unsafe fn options_from_c(o: &mlxe_backend_options) -> FfiResult<BackendOptions> {
    let defaults = BackendOptions::default();
    let adapter = match o.adapter.is_null() {
        true => None,
        // SAFETY: non-null, NUL-terminated by the caller's contract.
        false => Some(std::path::PathBuf::from(unsafe {
            input_cstr(o.adapter, "options.adapter")
        }?)),
    };
    Ok(BackendOptions {
        device: device_from_c(o.device)?,
        execution: execution_from_c(o.execution)?,
        max_context: (o.max_context > 0).then_some(o.max_context),
        prefill_chunk: if o.prefill_chunk > 0 {
            o.prefill_chunk
        } else {
            defaults.prefill_chunk
        },
        adapter,
        kv_dtype: match o.kv_type {
            MLXE_KV_F16 => KvDtype::F16,
            MLXE_KV_F32 => KvDtype::F32,
            other => {
                return fail(format!(
                    "options.kv_type {other}: expected MLXE_KV_F16 or MLXE_KV_F32"
                ))
            }
        },
    })
}

/// # Safety
/// The bias pointers of `p` are null or valid for `p.n_logit_bias` reads.
unsafe fn sampler_params_from_c(p: &mlxe_sampler_params) -> FfiResult<SamplerParams> {
    if p.n_logprobs > MLXE_MAX_LOGPROBS {
        return fail(format!(
            "n_logprobs {} is above MLXE_MAX_LOGPROBS ({MLXE_MAX_LOGPROBS})",
            p.n_logprobs
        ));
    }
    // SAFETY: forwarded contract.
    let tokens = unsafe { input(p.logit_bias_tokens, p.n_logit_bias, "logit_bias_tokens") }?;
    // SAFETY: forwarded contract.
    let values = unsafe { input(p.logit_bias_values, p.n_logit_bias, "logit_bias_values") }?;
    Ok(SamplerParams {
        temperature: p.temperature,
        top_k: p.top_k as usize,
        top_p: p.top_p,
        min_p: p.min_p,
        repetition_penalty: p.repetition_penalty,
        presence_penalty: p.presence_penalty,
        frequency_penalty: p.frequency_penalty,
        penalty_last_n: p.penalty_last_n as usize,
        logit_bias: tokens.iter().copied().zip(values.iter().copied()).collect(),
        seed: p.has_seed.then_some(p.seed),
        // `mlxe_sampled.logprob` is always filled.
        logprobs: true,
        n_logprobs: p.n_logprobs,
    })
}

/// The C form of `p` (without its logit bias, which C passes as borrowed arrays).
fn sampler_params_to_c(p: &SamplerParams) -> mlxe_sampler_params {
    mlxe_sampler_params {
        temperature: p.temperature,
        top_k: u32::try_from(p.top_k).unwrap_or(u32::MAX),
        top_p: p.top_p,
        min_p: p.min_p,
        repetition_penalty: p.repetition_penalty,
        presence_penalty: p.presence_penalty,
        frequency_penalty: p.frequency_penalty,
        penalty_last_n: u32::try_from(p.penalty_last_n).unwrap_or(u32::MAX),
        logit_bias_tokens: std::ptr::null(),
        logit_bias_values: std::ptr::null(),
        n_logit_bias: 0,
        seed: p.seed.unwrap_or(0),
        has_seed: p.seed.is_some(),
        n_logprobs: p.n_logprobs,
        grammar_kind: MLXE_GRAMMAR_NONE,
        grammar: std::ptr::null(),
        grammar_backend: mlxe_backend {
            ctx: std::ptr::null_mut(),
        },
    }
}

/// The grammar of `p`, if it asks for one.
///
/// # Safety
/// `p.grammar` is null or a NUL-terminated string.
unsafe fn grammar_from_c(p: &mlxe_sampler_params) -> FfiResult<Option<Grammar>> {
    // SAFETY: forwarded contract.
    let text = || unsafe { input_cstr(p.grammar, "grammar") };
    Ok(Some(match p.grammar_kind {
        MLXE_GRAMMAR_NONE => return Ok(None),
        MLXE_GRAMMAR_JSON_SCHEMA => Grammar::json_schema_text(text()?)?,
        MLXE_GRAMMAR_JSON_OBJECT => Grammar::JsonObject,
        MLXE_GRAMMAR_REGEX => Grammar::Regex(text()?.to_string()),
        MLXE_GRAMMAR_LARK => Grammar::Lark(text()?.to_string()),
        other => return fail(format!("unknown grammar_kind {other}")),
    }))
}

fn sampled_to_c(s: &Sampled) -> mlxe_sampled {
    let mut out = mlxe_sampled {
        token: s.token,
        logprob: s.logprob.unwrap_or(f32::NAN),
        n_top: s.top_logprobs.len().min(MLXE_MAX_LOGPROBS),
        top_tokens: [0; MLXE_MAX_LOGPROBS],
        top_logprobs: [0.0; MLXE_MAX_LOGPROBS],
    };
    for (i, &(token, logprob)) in s.top_logprobs.iter().take(MLXE_MAX_LOGPROBS).enumerate() {
        out.top_tokens[i] = token;
        out.top_logprobs[i] = logprob;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Errors and version
// ---------------------------------------------------------------------------------------------

/// This thread's last error message ("" if none). The pointer stays valid until the next
/// failing call on this thread; successful calls leave it unchanged.
#[no_mangle]
pub extern "C" fn mlxe_last_error() -> *const c_char {
    catch_unwind(|| LAST_ERROR.with(|slot| slot.borrow().as_ptr())).unwrap_or(c"".as_ptr())
}

/// Writes the library version (a static string) to `res`.
///
/// # Safety
/// `res` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn mlxe_version(res: *mut *const c_char) -> c_int {
    const VERSION: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => c"unknown",
        };
    // SAFETY: caller's contract.
    guard(|| unsafe { write(res, VERSION.as_ptr()) })
}

// ---------------------------------------------------------------------------------------------
// Backend
// ---------------------------------------------------------------------------------------------

/// Writes the default backend options (CPU, default execution, model context, chunk 512).
///
/// # Safety
/// `res` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn mlxe_backend_options_default(res: *mut mlxe_backend_options) -> c_int {
    let d = BackendOptions::default();
    let options = mlxe_backend_options {
        device: device_to_c(d.device),
        execution: MLXE_EXECUTION_DEFAULT,
        max_context: 0,
        prefill_chunk: d.prefill_chunk,
        adapter: std::ptr::null(),
        kv_type: match d.kv_dtype {
            KvDtype::F16 => MLXE_KV_F16,
            KvDtype::F32 => MLXE_KV_F32,
        },
    };
    // SAFETY: caller's contract.
    guard(|| unsafe { write(res, options) })
}

/// Loads the model at `model_path` (UTF-8, NUL-terminated): a GGUF file or a Hugging Face
/// directory. `options` may be null for the
/// defaults. On success `*res` owns the backend (free with `mlxe_backend_free`); on failure it
/// is set to a null handle.
///
/// # Safety
/// `res` is valid for a write; `model_path` is a NUL-terminated string; `options` is null or
/// valid.
#[no_mangle]
pub unsafe extern "C" fn mlxe_backend_new(
    res: *mut mlxe_backend,
    model_path: *const c_char,
    options: *const mlxe_backend_options,
) -> c_int {
    guard(|| {
        // SAFETY: caller's contract.
        unsafe {
            write(
                res,
                mlxe_backend {
                    ctx: std::ptr::null_mut(),
                },
            )
        }?;
        // SAFETY: caller's contract.
        let path = unsafe { read(model_path, "model_path") }?;
        // SAFETY: non-null (checked above) and NUL-terminated by the caller's contract.
        let path = unsafe { CStr::from_ptr(path) }
            .to_str()
            .map_err(|_| Failure {
                code: MLXE_ERROR,
                message: "model_path is not UTF-8".into(),
            })?;
        let options = match options.is_null() {
            true => BackendOptions::default(),
            // SAFETY: non-null and valid by the caller's contract (its adapter pointer too).
            false => unsafe { options_from_c(&*options) }?,
        };
        let loaded = Backend::load(&ModelSpec::new(path), &options)?;
        let handle = mlxe_backend {
            ctx: Box::into_raw(Box::new(loaded)).cast(),
        };
        // SAFETY: caller's contract.
        unsafe { write(res, handle) }
    })
}

/// Frees a backend and all its sequences. A null handle is a no-op.
///
/// # Safety
/// `b` is a null handle or a live one from `mlxe_backend_new`, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn mlxe_backend_free(b: mlxe_backend) -> c_int {
    guard(|| {
        if !b.ctx.is_null() {
            // SAFETY: the handle came from `Box::into_raw` in `mlxe_backend_new` and is freed once.
            drop(unsafe { Box::from_raw(b.ctx.cast::<Backend>()) });
        }
        Ok(())
    })
}

/// Writes the vocabulary size (the length of one logits row).
///
/// # Safety
/// `res` is valid for a write; `b` is a live backend.
#[no_mangle]
pub unsafe extern "C" fn mlxe_backend_vocab_size(res: *mut usize, b: mlxe_backend) -> c_int {
    // SAFETY: caller's contract.
    guard(|| unsafe { write(res, backend(&b)?.config().vocab_size) })
}

/// Writes the most positions one sequence may hold.
///
/// # Safety
/// `res` is valid for a write; `b` is a live backend.
#[no_mangle]
pub unsafe extern "C" fn mlxe_backend_context_length(res: *mut usize, b: mlxe_backend) -> c_int {
    // SAFETY: caller's contract.
    guard(|| unsafe { write(res, backend(&b)?.context_length()) })
}

/// Writes what the backend supports.
///
/// # Safety
/// `res` is valid for a write; `b` is a live backend.
#[no_mangle]
pub unsafe extern "C" fn mlxe_backend_capabilities(
    res: *mut mlxe_capabilities,
    b: mlxe_backend,
) -> c_int {
    guard(|| {
        // SAFETY: caller's contract.
        let c = unsafe { backend(&b) }?.capabilities();
        let caps = mlxe_capabilities {
            structured_output: c.supports_structured_output,
            speculative_decoding: c.supports_speculative_decoding,
            kv_prefix_copy: c.supports_kv_prefix_copy,
            multimodal: c.supports_multimodal,
        };
        // SAFETY: caller's contract.
        unsafe { write(res, caps) }
    })
}

/// Writes the device, execution mode and MLX memory counters.
///
/// # Safety
/// `res` is valid for a write; `b` is a live backend.
#[no_mangle]
pub unsafe extern "C" fn mlxe_backend_device_info(
    res: *mut mlxe_device_info,
    b: mlxe_backend,
) -> c_int {
    guard(|| {
        // SAFETY: caller's contract.
        let d = unsafe { backend(&b) }?.device_info()?;
        let info = mlxe_device_info {
            device: device_to_c(d.device),
            execution: execution_to_c(d.execution),
            active_bytes: d.active_bytes,
            peak_bytes: d.peak_bytes,
            cache_bytes: d.cache_bytes,
        };
        // SAFETY: caller's contract.
        unsafe { write(res, info) }
    })
}

/// Writes whether the backend's device is usable.
///
/// # Safety
/// `res` is valid for a write; `b` is a live backend.
#[no_mangle]
pub unsafe extern "C" fn mlxe_backend_is_ready(res: *mut bool, b: mlxe_backend) -> c_int {
    // SAFETY: caller's contract.
    guard(|| unsafe { write(res, backend(&b)?.is_ready()) })
}

// ---------------------------------------------------------------------------------------------
// Sequences
// ---------------------------------------------------------------------------------------------

/// Creates an empty sequence and writes its id.
///
/// # Safety
/// `res` is valid for a write; `b` is a live backend.
#[no_mangle]
pub unsafe extern "C" fn mlxe_seq_new(res: *mut mlxe_seq, b: mlxe_backend) -> c_int {
    // SAFETY: caller's contract.
    guard(|| unsafe { write(res, backend(&b)?.create_seq().0) })
}

/// Frees a sequence; its id becomes invalid.
///
/// # Safety
/// `b` is a live backend.
#[no_mangle]
pub unsafe extern "C" fn mlxe_seq_free(b: mlxe_backend, seq: mlxe_seq) -> c_int {
    // SAFETY: caller's contract.
    guard(|| Ok(unsafe { backend(&b) }?.free_seq(SeqId(seq))?))
}

/// Empties a sequence (the id stays valid).
///
/// # Safety
/// `b` is a live backend.
#[no_mangle]
pub unsafe extern "C" fn mlxe_seq_reset(b: mlxe_backend, seq: mlxe_seq) -> c_int {
    // SAFETY: caller's contract.
    guard(|| Ok(unsafe { backend(&b) }?.reset_seq(SeqId(seq))?))
}

/// Keeps the first `n` positions of a sequence.
///
/// # Safety
/// `b` is a live backend.
#[no_mangle]
pub unsafe extern "C" fn mlxe_seq_truncate(b: mlxe_backend, seq: mlxe_seq, n: usize) -> c_int {
    // SAFETY: caller's contract.
    guard(|| Ok(unsafe { backend(&b) }?.truncate_seq(SeqId(seq), n)?))
}

/// Writes the number of positions a sequence holds.
///
/// # Safety
/// `res` is valid for a write; `b` is a live backend.
#[no_mangle]
pub unsafe extern "C" fn mlxe_seq_len(res: *mut usize, b: mlxe_backend, seq: mlxe_seq) -> c_int {
    // SAFETY: caller's contract.
    guard(|| unsafe { write(res, backend(&b)?.seq_len(SeqId(seq))?) })
}

/// Makes `dst` a copy of the first `n` positions of `src`.
///
/// # Safety
/// `b` is a live backend.
#[no_mangle]
pub unsafe extern "C" fn mlxe_seq_copy_prefix(
    b: mlxe_backend,
    src: mlxe_seq,
    dst: mlxe_seq,
    n: usize,
) -> c_int {
    // SAFETY: caller's contract.
    guard(|| Ok(unsafe { backend(&b) }?.copy_prefix(SeqId(src), SeqId(dst), n)?))
}

/// Appends `n_tokens` tokens to a sequence. Writes the logits of the last position (vocab
/// floats), or of every new position (`n_tokens × vocab`, row-major) when `all_logits`, into
/// `res`, which holds `res_capacity` floats; `res` may be null to discard them. The capacity
/// is checked before anything runs.
///
/// # Safety
/// `res` is null or valid for `res_capacity` writes; `tokens` for `n_tokens` reads; `b` live.
#[no_mangle]
pub unsafe extern "C" fn mlxe_prefill(
    res: *mut f32,
    res_capacity: usize,
    b: mlxe_backend,
    seq: mlxe_seq,
    tokens: *const u32,
    n_tokens: usize,
    all_logits: bool,
) -> c_int {
    guard(|| {
        // SAFETY: caller's contract.
        let backend = unsafe { backend(&b) }?;
        // SAFETY: caller's contract.
        let tokens = unsafe { input(tokens, n_tokens, "tokens") }?;
        let vocab = backend.config().vocab_size;
        let rows = if all_logits { n_tokens } else { 1 };
        // SAFETY: caller's contract.
        let out = unsafe { output(res, res_capacity, rows.saturating_mul(vocab)) }?;
        let logits = backend.prefill(SeqId(seq), tokens, all_logits)?;
        if let Some(out) = out {
            out.copy_from_slice(&logits.data);
        }
        Ok(())
    })
}

/// One decode step for `n` sequences in one forward pass: `tokens[i]` is appended to
/// `seqs[i]`, each at its own position. Writes `n × vocab` logits (row i for `seqs[i]`) into
/// `res` (capacity `res_capacity` floats; null discards). Fails before running on an unknown
/// or repeated id, a full sequence or a short buffer.
///
/// # Safety
/// `res` is null or valid for `res_capacity` writes; `seqs` and `tokens` for `n` reads; `b` live.
#[no_mangle]
pub unsafe extern "C" fn mlxe_decode(
    res: *mut f32,
    res_capacity: usize,
    b: mlxe_backend,
    seqs: *const mlxe_seq,
    tokens: *const u32,
    n: usize,
) -> c_int {
    guard(|| {
        // SAFETY: caller's contract.
        let backend = unsafe { backend(&b) }?;
        // SAFETY: caller's contract.
        let (seqs, tokens) = unsafe { (input(seqs, n, "seqs")?, input(tokens, n, "tokens")?) };
        // SAFETY: caller's contract.
        let vocab = backend.config().vocab_size;
        // SAFETY: caller's contract.
        let out = unsafe { output(res, res_capacity, n.saturating_mul(vocab)) }?;
        let batch: Vec<(SeqId, u32)> = seqs
            .iter()
            .zip(tokens)
            .map(|(&s, &t)| (SeqId(s), t))
            .collect();
        let rows = backend.decode(&batch)?;
        if let Some(out) = out {
            for (dst, row) in out.chunks_exact_mut(vocab.max(1)).zip(&rows) {
                dst.copy_from_slice(row);
            }
        }
        Ok(())
    })
}

/// Writes a snapshot of a sequence's KV into `*res` (owned by the caller; release it with
/// `mlxe_buffer_free`).
///
/// # Safety
/// `res` is valid for a write; `b` is a live backend.
#[no_mangle]
pub unsafe extern "C" fn mlxe_seq_serialize(
    res: *mut mlxe_buffer,
    b: mlxe_backend,
    seq: mlxe_seq,
) -> c_int {
    guard(|| {
        if res.is_null() {
            return fail("res is null");
        }
        // SAFETY: caller's contract.
        let bytes = unsafe { backend(&b) }?.serialize(SeqId(seq))?;
        // SAFETY: caller's contract.
        unsafe { output_buffer(res, bytes) }
    })
}

/// Releases a buffer made by [`output_buffer`].
///
/// # Safety
/// `buf` is empty or came from `Box<[u8]>::into_raw` with length `len`, and is freed once.
unsafe fn free_buffer(buf: mlxe_buffer) {
    if !buf.data.is_null() {
        // SAFETY: the caller's contract.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(buf.data, buf.len)) });
    }
}

/// Frees a buffer returned by mlx-engine. A buffer with null `data` is a no-op.
///
/// # Safety
/// `buf` is exactly as returned (same `data` and `len`) and not freed before.
#[no_mangle]
pub unsafe extern "C" fn mlxe_buffer_free(buf: mlxe_buffer) -> c_int {
    guard(|| {
        // SAFETY: caller's contract.
        unsafe { free_buffer(buf) };
        Ok(())
    })
}

/// Creates a sequence from a snapshot and writes its id. Fails (leaving no sequence) on a
/// truncated or corrupted buffer or one written by another model.
///
/// # Safety
/// `res` is valid for a write; `data` for `len` reads; `b` live.
#[no_mangle]
pub unsafe extern "C" fn mlxe_seq_hydrate(
    res: *mut mlxe_seq,
    b: mlxe_backend,
    data: *const u8,
    len: usize,
) -> c_int {
    guard(|| {
        // SAFETY: caller's contract.
        let (backend, bytes) = unsafe { (backend(&b)?, input(data, len, "data")?) };
        let seq = backend.hydrate(bytes)?;
        // SAFETY: caller's contract.
        unsafe { write(res, seq.0) }
    })
}

// ---------------------------------------------------------------------------------------------
// Samplers
// ---------------------------------------------------------------------------------------------

/// Writes the default sampler settings: `SamplerParams::greedy()` (temperature 0, no
/// truncation, no penalties), no bias, seeded from the OS, no logprobs.
///
/// # Safety
/// `res` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn mlxe_sampler_params_default(res: *mut mlxe_sampler_params) -> c_int {
    // SAFETY: caller's contract.
    guard(|| unsafe { write(res, sampler_params_to_c(&SamplerParams::greedy())) })
}

/// Creates a sampler (free with `mlxe_sampler_free`); fails on settings out of range. The
/// bias arrays are copied. A grammar is compiled for `grammar_backend`'s tokenizer; one
/// llguidance refuses fails with its message.
///
/// # Safety
/// `res` is valid for a write; `params` is valid and its bias arrays hold `n_logit_bias`
/// entries; with a grammar, `grammar` is null or NUL-terminated and `grammar_backend` is a
/// live backend handle.
#[no_mangle]
pub unsafe extern "C" fn mlxe_sampler_new(
    res: *mut mlxe_sampler,
    params: *const mlxe_sampler_params,
) -> c_int {
    guard(|| {
        // SAFETY: caller's contract.
        unsafe {
            write(
                res,
                mlxe_sampler {
                    ctx: std::ptr::null_mut(),
                },
            )
        }?;
        // SAFETY: caller's contract.
        let c_params = unsafe { read(params, "params") }?;
        // SAFETY: caller's contract.
        let params = unsafe { sampler_params_from_c(c_params) }?;
        params.validate()?;
        // SAFETY: caller's contract.
        let sampler = match unsafe { grammar_from_c(c_params) }? {
            None => Sampler::new(params),
            Some(grammar) => {
                // SAFETY: caller's contract (a live backend handle when a grammar is given).
                let b = unsafe { backend(&c_params.grammar_backend) }?;
                let constraint = b.grammar_compiler()?.compile(&grammar)?;
                Sampler::with_constraint(params, constraint)
            }
        };
        let handle = mlxe_sampler {
            ctx: Box::into_raw(Box::new(sampler)).cast(),
        };
        // SAFETY: caller's contract.
        unsafe { write(res, handle) }
    })
}

/// Frees a sampler. A null handle is a no-op.
///
/// # Safety
/// `s` is null or a live handle from `mlxe_sampler_new`, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn mlxe_sampler_free(s: mlxe_sampler) -> c_int {
    guard(|| {
        if !s.ctx.is_null() {
            // SAFETY: the handle came from `Box::into_raw` in `mlxe_sampler_new`, freed once.
            drop(unsafe { Box::from_raw(s.ctx.cast::<Sampler>()) });
        }
        Ok(())
    })
}

/// Draws a token from one logits row (`n_vocab` floats) given the sequence's history (for
/// penalties) and writes it with its logprob and top logprobs.
///
/// # Safety
/// `res` is valid for a write; `logits` for `n_vocab` reads; `history` for `n_history`
/// reads; `s` is a live sampler.
#[no_mangle]
pub unsafe extern "C" fn mlxe_sampler_sample(
    res: *mut mlxe_sampled,
    s: mlxe_sampler,
    logits: *const f32,
    n_vocab: usize,
    history: *const u32,
    n_history: usize,
) -> c_int {
    guard(|| {
        // SAFETY: caller's contract.
        let sampler = unsafe { sampler(&s) }?;
        // SAFETY: caller's contract.
        let (logits, history) = unsafe {
            (
                input(logits, n_vocab, "logits")?,
                input(history, n_history, "history")?,
            )
        };
        let sampled = sampler.sample(logits, history)?;
        // SAFETY: caller's contract.
        unsafe { write(res, sampled_to_c(&sampled)) }
    })
}

// ---------------------------------------------------------------------------------------------
// Speculative decoding
// ---------------------------------------------------------------------------------------------

/// Prompt-lookup drafting: writes into `res` (capacity `res_capacity`, the most tokens drafted)
/// the tokens that followed the most recent earlier occurrence of the last n tokens of
/// `history`, for the longest n in `n_min..=n_max` that has one, and their count into
/// `*res_len` (0 when nothing matches).
///
/// # Safety
/// `res_len` is valid for a write; `res` is null or valid for `res_capacity` writes; `history`
/// is null (with `n_history` 0) or valid for `n_history` reads.
#[no_mangle]
pub unsafe extern "C" fn mlxe_prompt_lookup(
    res_len: *mut usize,
    res: *mut u32,
    res_capacity: usize,
    history: *const u32,
    n_history: usize,
    n_min: usize,
    n_max: usize,
) -> c_int {
    guard(|| {
        // SAFETY: caller's contract.
        let history = unsafe { input(history, n_history, "history") }?;
        let lookup = crate::speculative::PromptLookup::new(n_min, n_max)?;
        let drafts = lookup.lookup(history, res_capacity);
        if !drafts.is_empty() {
            // SAFETY: caller's contract; `drafts` is at most `res_capacity` long.
            let out = unsafe { output_u32(res, res_capacity, drafts.len()) }?;
            out.copy_from_slice(&drafts);
        }
        // SAFETY: caller's contract.
        unsafe { write(res_len, drafts.len()) }
    })
}

/// One speculative step on `seq`, whose KV holds every token of `history` but the last: runs
/// the last token and the `n_drafts` drafted tokens through the model in one pass, keeps the
/// prefix of the draft that the sampler's draws agree with (the output is distributed as
/// plain decoding's), rolls the KV of the rejected tail back, and writes the tokens to append
/// (the accepted drafts, then one token from the model; at most `n_drafts + 1`) into
/// `res_tokens` and their count into `*res_len`. The last of them is the next token to feed.
/// `res_capacity` must be at least `n_drafts + 1` (checked before anything runs). On error the
/// sequence is unchanged.
///
/// # Safety
/// `res_len` is valid for a write; `res_tokens` for `res_capacity` writes; `history` for
/// `n_history` reads; `drafts` is null (with `n_drafts` 0) or valid for `n_drafts` reads; `b`
/// and `s` live.
#[no_mangle]
pub unsafe extern "C" fn mlxe_speculative_step(
    res_len: *mut usize,
    res_tokens: *mut u32,
    res_capacity: usize,
    b: mlxe_backend,
    seq: mlxe_seq,
    s: mlxe_sampler,
    history: *const u32,
    n_history: usize,
    drafts: *const u32,
    n_drafts: usize,
) -> c_int {
    guard(|| {
        // SAFETY: caller's contract.
        let (backend, sampler) = unsafe { (backend(&b)?, sampler(&s)?) };
        // SAFETY: caller's contract.
        let (history, drafts) = unsafe {
            (
                input(history, n_history, "history")?,
                input(drafts, n_drafts, "drafts")?,
            )
        };
        // SAFETY: caller's contract.
        let out = unsafe { output_u32(res_tokens, res_capacity, n_drafts.saturating_add(1)) }?;
        let verdict = backend.speculative_step_with(SeqId(seq), sampler, history, drafts)?;
        out[..verdict.tokens.len()].copy_from_slice(&verdict.tokens);
        // SAFETY: caller's contract.
        unsafe { write(res_len, verdict.tokens.len()) }
    })
}

/// A caller's token buffer as a slice of `needed` entries: `BUFFER_TOO_SMALL` when its
/// capacity is less, an error when it is null.
///
/// # Safety
/// `res` is null or valid for `capacity` writes.
unsafe fn output_u32<'a>(
    res: *mut u32,
    capacity: usize,
    needed: usize,
) -> FfiResult<&'a mut [u32]> {
    if res.is_null() {
        return fail("token buffer is null");
    }
    if capacity < needed {
        return Err(Failure {
            code: MLXE_ERROR_BUFFER_TOO_SMALL,
            message: format!("token buffer holds {capacity} tokens, {needed} are needed"),
        });
    }
    // SAFETY: non-null, and by the caller's contract valid for `capacity >= needed` writes.
    Ok(unsafe { std::slice::from_raw_parts_mut(res, needed) })
}

// ---------------------------------------------------------------------------------------------
// Text: tokenizer, token pieces, chat template, end-of-generation ids
// ---------------------------------------------------------------------------------------------

/// Tokenizes `text_len` bytes of UTF-8 `text` (not necessarily NUL-terminated). With
/// `add_special`, BOS (and EOS) are added as the vocabulary asks. Writes the number of ids to
/// `*res_len` and, when they fit, the ids into `res` (`res_capacity` ids; null with capacity 0
/// asks for the count only); a short buffer is `MLXE_ERROR_BUFFER_TOO_SMALL`.
///
/// # Safety
/// `res` is null or valid for `res_capacity` writes; `res_len` valid for a write; `text` for
/// `text_len` reads; `b` live.
#[no_mangle]
pub unsafe extern "C" fn mlxe_tokenize(
    res: *mut u32,
    res_capacity: usize,
    res_len: *mut usize,
    b: mlxe_backend,
    text: *const c_char,
    text_len: usize,
    add_special: bool,
) -> c_int {
    guard(|| {
        // SAFETY: caller's contract.
        let (backend, text) = unsafe { (backend(&b)?, input_text(text, text_len, "text")?) };
        let ids = backend.tokenize(text, add_special)?;
        // SAFETY: caller's contract.
        unsafe { output_items(res, res_capacity, res_len, &ids) }
    })
}

/// Writes the bytes `token` stands for (its piece, for streaming; possibly an incomplete UTF-8
/// sequence, not NUL-terminated) with the contract of `mlxe_tokenize`'s outputs. An id outside
/// the vocabulary fails.
///
/// # Safety
/// `res` is null or valid for `res_capacity` writes; `res_len` valid for a write; `b` live.
#[no_mangle]
pub unsafe extern "C" fn mlxe_token_piece(
    res: *mut u8,
    res_capacity: usize,
    res_len: *mut usize,
    b: mlxe_backend,
    token: u32,
) -> c_int {
    guard(|| {
        // SAFETY: caller's contract.
        let piece = unsafe { backend(&b) }?.token_piece(token)?;
        // SAFETY: caller's contract.
        unsafe { output_items(res, res_capacity, res_len, piece) }
    })
}

/// Decodes `n_tokens` ids into UTF-8 text returned in `*res` (not NUL-terminated; release with
/// `mlxe_buffer_free`). With `skip_special`, control tokens are left out.
///
/// # Safety
/// `res` is valid for a write; `tokens` for `n_tokens` reads; `b` live.
#[no_mangle]
pub unsafe extern "C" fn mlxe_detokenize(
    res: *mut mlxe_buffer,
    b: mlxe_backend,
    tokens: *const u32,
    n_tokens: usize,
    skip_special: bool,
) -> c_int {
    guard(|| {
        // SAFETY: caller's contract.
        let (backend, tokens) = unsafe { (backend(&b)?, input(tokens, n_tokens, "tokens")?) };
        let text = backend.detokenize(tokens, skip_special)?;
        // SAFETY: caller's contract.
        unsafe { output_buffer(res, text.into_bytes()) }
    })
}

/// Renders `n_messages` messages with the model's chat template into `*res` (UTF-8, not
/// NUL-terminated; release with `mlxe_buffer_free`). Fails when the model has no template, on
/// a template error, or on a null or non-UTF-8 field.
///
/// # Safety
/// `res` is valid for a write; `messages` for `n_messages` reads, each field NUL-terminated;
/// `b` live.
#[no_mangle]
pub unsafe extern "C" fn mlxe_chat_template_apply(
    res: *mut mlxe_buffer,
    b: mlxe_backend,
    messages: *const mlxe_chat_message,
    n_messages: usize,
    add_generation_prompt: bool,
) -> c_int {
    guard(|| {
        // SAFETY: caller's contract.
        let (backend, raw) = unsafe { (backend(&b)?, input(messages, n_messages, "messages")?) };
        let mut conversation = Vec::with_capacity(raw.len());
        for (i, m) in raw.iter().enumerate() {
            // SAFETY: caller's contract: each field is null or NUL-terminated.
            let (role, content) = unsafe {
                (
                    input_cstr(m.role, &format!("messages[{i}].role"))?,
                    input_cstr(m.content, &format!("messages[{i}].content"))?,
                )
            };
            conversation.push(ChatMessage::new(role, content));
        }
        let text = backend.apply_chat_template(&conversation, add_generation_prompt)?;
        // SAFETY: caller's contract.
        unsafe { output_buffer(res, text.into_bytes()) }
    })
}

/// Writes the ids that end a generation (sorted) with the contract of `mlxe_tokenize`'s
/// outputs.
///
/// # Safety
/// `res` is null or valid for `res_capacity` writes; `res_len` valid for a write; `b` live.
#[no_mangle]
pub unsafe extern "C" fn mlxe_backend_eog_tokens(
    res: *mut u32,
    res_capacity: usize,
    res_len: *mut usize,
    b: mlxe_backend,
) -> c_int {
    guard(|| {
        // SAFETY: caller's contract.
        let ids = unsafe { backend(&b) }?.eog_tokens()?;
        // SAFETY: caller's contract.
        unsafe { output_items(res, res_capacity, res_len, ids) }
    })
}
