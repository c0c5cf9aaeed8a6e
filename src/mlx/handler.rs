//! MLX's error handler and the checked-call helpers.
//!
//! mlx-c's default handler prints and calls `exit(-1)`. We install ours before the first call:
//! it stores the message in a thread-local (mlx-c calls the handler synchronously on the thread
//! that made the failing call) and the status check turns it into `Error::Mlx`.
//!
//! A Rust function that MLX calls back (the body of a compiled function) can only hand mlx-c a
//! status, and mlx-c replaces a failing status by a message of its own. Such a function keeps
//! its error here ([`keep_callback_error`]) and the call that ran it returns that error
//! ([`check_callback_call`]).

use crate::error::{Error, Result};
use crate::mlx::Array;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::Once;

thread_local! {
    static LAST_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
    static CALLBACK_ERROR: RefCell<Option<Error>> = const { RefCell::new(None) };
}

static INSTALL: Once = Once::new();

unsafe extern "C" fn record_error(msg: *const c_char, _data: *mut c_void) {
    let message = if msg.is_null() {
        "unknown MLX error".to_string()
    } else {
        // SAFETY: mlx-c passes a NUL-terminated message valid for the duration of the call.
        unsafe { CStr::from_ptr(msg) }
            .to_string_lossy()
            .into_owned()
    };
    LAST_ERROR.with(|slot| *slot.borrow_mut() = Some(message));
}

/// Installs the error handler (idempotent; every checked call does it first).
pub fn install_error_handler() {
    INSTALL.call_once(|| {
        // SAFETY: `record_error` is a valid `extern "C"` handler for the whole process lifetime
        // and uses no payload, so null data and no destructor are correct.
        unsafe { mlx_sys::mlx_set_error_handler(Some(record_error), std::ptr::null_mut(), None) };
    });
}

/// Turns an mlx-c status into a `Result`, taking the message the handler saved.
pub(crate) fn check(status: c_int) -> Result<()> {
    if status == 0 {
        return Ok(());
    }
    let message = LAST_ERROR
        .with(|slot| slot.borrow_mut().take())
        .unwrap_or_else(|| format!("mlx-c call failed with status {status}"));
    Err(Error::Mlx { message })
}

/// Keeps the error of a Rust function that MLX called back on this thread, for the
/// [`check_callback_call`] of the mlx-c call that ran it (a later error replaces it).
pub(crate) fn keep_callback_error(err: Error) {
    CALLBACK_ERROR.with(|slot| *slot.borrow_mut() = Some(err));
}

/// Forgets a kept callback error (before an mlx-c call that may run a callback).
pub(crate) fn clear_callback_error() {
    CALLBACK_ERROR.with(|slot| slot.borrow_mut().take());
}

/// [`check`] for an mlx-c call that runs Rust callbacks: on failure, the error a callback kept
/// (the real problem) rather than mlx-c's "returned a non-zero value", else MLX's message.
pub(crate) fn check_callback_call(status: c_int) -> Result<()> {
    let kept = CALLBACK_ERROR.with(|slot| slot.borrow_mut().take());
    check(status).map_err(|mlx| kept.unwrap_or(mlx))
}

/// Runs an mlx-c op that writes an array into `res`, returning it as an owned [`Array`]
/// (freed again on failure).
pub(crate) fn try_array(op: impl FnOnce(*mut mlx_sys::mlx_array) -> c_int) -> Result<Array> {
    let [array] = try_arrays_with(|[res]: &mut [mlx_sys::mlx_array; 1]| op(res), check)?;
    Ok(array)
}

/// Runs an op that writes `N` arrays into the handles it is given (a multi-output primitive),
/// returning them as owned [`Array`]s (all freed again on failure); `check_status` turns the
/// op's status into a `Result` ([`check`] for mlx-c; our kernels report their own way).
pub(crate) fn try_arrays_with<const N: usize>(
    op: impl FnOnce(&mut [mlx_sys::mlx_array; N]) -> c_int,
    check_status: impl FnOnce(c_int) -> Result<()>,
) -> Result<[Array; N]> {
    install_error_handler();
    // SAFETY: `mlx_array_new` returns empty handles that we own.
    let mut res: [mlx_sys::mlx_array; N] =
        std::array::from_fn(|_| unsafe { mlx_sys::mlx_array_new() });
    let status = op(&mut res);
    if let Err(err) = check_status(status) {
        for handle in res {
            // SAFETY: handles we own and no longer use (freeing an empty handle is a no-op).
            unsafe { mlx_sys::mlx_array_free(handle) };
        }
        return Err(err);
    }
    // SAFETY: on success every handle holds a valid array whose ownership passes to a wrapper.
    Ok(res.map(|handle| unsafe { Array::from_raw(handle) }))
}

/// The null handle mlx-c takes for an absent optional array argument.
pub(crate) fn null_array() -> mlx_sys::mlx_array {
    mlx_sys::mlx_array {
        ctx: std::ptr::null_mut(),
    }
}
