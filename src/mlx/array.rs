//! [`Array`]: an owned, reference-counted MLX array handle.

use crate::error::{Error, Result};
use crate::mlx::handler::{check, install_error_handler, try_array};
use crate::mlx::stream::current_stream;
use crate::mlx::Dtype;
use std::ffi::c_void;
use std::sync::Arc;

/// A lazily evaluated MLX array. `Drop` frees the handle; `Clone` shares the same array
/// (MLX arrays are immutable graph nodes, so sharing is what a copy means).
#[repr(transparent)]
pub struct Array {
    raw: mlx_sys::mlx_array,
}

// SAFETY: an mlx_array is a heap `mlx::core::array`, whose state is held by an atomically
// reference-counted shared pointer; handing a handle to another thread is sound. It is not
// `Sync`: MLX does not support evaluating the same graph from two threads at once.
unsafe impl Send for Array {}

/// Rust element types that map onto an MLX dtype.
pub trait Element: Copy + Default + 'static {
    /// The matching MLX dtype.
    const DTYPE: Dtype;
}

macro_rules! element {
    ($($t:ty => $d:ident),* $(,)?) => { $(impl Element for $t { const DTYPE: Dtype = Dtype::$d; })* };
}
element!(u8 => U8, u16 => U16, u32 => U32, u64 => U64, i8 => I8, i16 => I16, i32 => I32,
    i64 => I64, f32 => F32, f64 => F64, half::f16 => F16, half::bf16 => BF16, bool => Bool);

/// Keeps the owner of borrowed bytes alive for as long as MLX uses them.
type Owner = Arc<dyn Send + Sync>;

unsafe extern "C" fn drop_owner(payload: *mut c_void) {
    // SAFETY: `payload` is the `Box<Owner>` leaked in `from_borrowed_bytes`; MLX calls this
    // destructor exactly once, when the last array using the buffer dies.
    drop(unsafe { Box::from_raw(payload as *mut Owner) });
}

fn check_shape(shape: &[i32], len: usize, what: &str) -> Result<()> {
    let mut count: i64 = 1;
    for &dim in shape {
        if dim < 0 {
            return Err(Error::InvalidArgument(format!(
                "{what}: negative dimension in {shape:?}"
            )));
        }
        count = count.saturating_mul(dim as i64);
    }
    if count as usize != len {
        return Err(Error::Shape {
            op: what.to_string(),
            expected: format!("{len} elements"),
            found: shape.iter().map(|&d| d as i64).collect(),
        });
    }
    Ok(())
}

impl Array {
    /// Takes ownership of a raw handle.
    ///
    /// # Safety
    /// `raw` must be a valid mlx_array handle that nothing else frees.
    pub(crate) unsafe fn from_raw(raw: mlx_sys::mlx_array) -> Array {
        Array { raw }
    }

    /// The raw handle, valid while `self` lives.
    pub(crate) fn raw(&self) -> mlx_sys::mlx_array {
        self.raw
    }

    /// A new array holding a copy of `data` with `shape` (row-major).
    pub fn from_slice<T: Element>(data: &[T], shape: &[i32]) -> Result<Array> {
        check_shape(shape, data.len(), "Array::from_slice")?;
        install_error_handler();
        // SAFETY: `data` is valid for `data.len()` elements of T, which matches `shape` and
        // the dtype; mlx_array_new_data copies the buffer before returning.
        let raw = unsafe {
            mlx_sys::mlx_array_new_data(
                data.as_ptr() as *const c_void,
                shape.as_ptr(),
                shape.len() as i32,
                T::DTYPE.to_raw(),
            )
        };
        Ok(Array { raw })
    }

    /// A scalar array.
    pub fn scalar<T: Element>(value: T) -> Result<Array> {
        Array::from_slice(&[value], &[])
    }

    /// An array over `bytes`, which must stay valid as long as `owner` lives; MLX keeps
    /// `owner` alive until the last array using the buffer is freed. Used for weights in a
    /// memory-mapped file. Note: MLX 0.32's CPU build copies the buffer once here (mlx-c's
    /// managed constructor), so this is one copy at load, not a view.
    pub fn from_borrowed_bytes(
        bytes: &[u8],
        owner: Owner,
        shape: &[i32],
        dtype: Dtype,
    ) -> Result<Array> {
        if !bytes.len().is_multiple_of(dtype.size()) {
            return Err(Error::InvalidArgument(format!(
                "{} bytes is not a whole number of {dtype:?} elements",
                bytes.len()
            )));
        }
        check_shape(
            shape,
            bytes.len() / dtype.size(),
            "Array::from_borrowed_bytes",
        )?;
        if !(bytes.as_ptr() as usize).is_multiple_of(dtype.size()) {
            return Err(Error::InvalidArgument(format!(
                "{dtype:?} data is not aligned"
            )));
        }
        install_error_handler();
        let payload = Box::into_raw(Box::new(owner)) as *mut c_void;
        // SAFETY: `bytes` stays valid while `owner` lives (the caller's contract), and MLX keeps
        // the boxed owner until it calls `drop_owner`. MLX never writes into an input buffer
        // that another array still references, and the model keeps its weight arrays alive.
        let raw = unsafe {
            mlx_sys::mlx_array_new_data_managed_payload(
                bytes.as_ptr() as *mut c_void,
                shape.as_ptr(),
                shape.len() as i32,
                dtype.to_raw(),
                payload,
                Some(drop_owner),
            )
        };
        Ok(Array { raw })
    }

    /// The shape.
    pub fn shape(&self) -> Vec<i32> {
        // SAFETY: `self.raw` is valid; the shape pointer is valid for `ndim` entries while the
        // array lives, and we copy it out immediately.
        unsafe {
            let ndim = mlx_sys::mlx_array_ndim(self.raw);
            if ndim == 0 {
                return Vec::new();
            }
            std::slice::from_raw_parts(mlx_sys::mlx_array_shape(self.raw), ndim).to_vec()
        }
    }

    /// The number of dimensions.
    pub fn ndim(&self) -> usize {
        // SAFETY: `self.raw` is a valid handle.
        unsafe { mlx_sys::mlx_array_ndim(self.raw) }
    }

    /// Dimension `axis` (negative counts from the end).
    pub fn dim(&self, axis: i32) -> Result<i32> {
        let shape = self.shape();
        let n = shape.len() as i32;
        let a = if axis < 0 { axis + n } else { axis };
        if a < 0 || a >= n {
            return Err(Error::InvalidArgument(format!(
                "axis {axis} of an array of shape {shape:?}"
            )));
        }
        Ok(shape[a as usize])
    }

    /// The number of elements.
    pub fn size(&self) -> usize {
        // SAFETY: `self.raw` is a valid handle.
        unsafe { mlx_sys::mlx_array_size(self.raw) }
    }

    /// The element type, or `Unsupported` naming the raw value for a dtype this crate does not
    /// know (one a newer MLX added), rather than a wrong guess.
    pub fn dtype(&self) -> Result<Dtype> {
        // SAFETY: `self.raw` is a valid handle.
        Dtype::from_raw(unsafe { mlx_sys::mlx_array_dtype(self.raw) })
    }

    /// Evaluates this array (and the graph behind it).
    pub fn eval(&self) -> Result<()> {
        install_error_handler();
        // SAFETY: `self.raw` is a valid handle.
        check(unsafe { mlx_sys::mlx_array_eval(self.raw) })
    }

    /// Evaluates and copies the elements out in row-major order. `T` must match the dtype.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        let dtype = self.dtype()?;
        if T::DTYPE != dtype {
            return Err(Error::InvalidArgument(format!(
                "to_vec::<{:?}> on an array of {dtype:?}",
                T::DTYPE
            )));
        }
        let stream = current_stream();
        // SAFETY: valid handles; the op writes into `res`.
        let dense =
            try_array(|res| unsafe { mlx_sys::mlx_contiguous(res, self.raw, false, stream) })?;
        dense.eval()?;
        let n = dense.size();
        // SAFETY: after eval a row-contiguous array of dtype T holds `n` elements of T at
        // `mlx_array_data_uint8`; we copy them before `dense` is dropped.
        unsafe {
            let ptr = mlx_sys::mlx_array_data_uint8(dense.raw) as *const T;
            if ptr.is_null() {
                return Err(Error::Mlx {
                    message: "array has no data after eval".into(),
                });
            }
            Ok(std::slice::from_raw_parts(ptr, n).to_vec())
        }
    }

    /// The single element of a one-element array.
    pub fn item<T: Element>(&self) -> Result<T> {
        if self.size() != 1 {
            return Err(Error::Shape {
                op: "item".into(),
                expected: "one element".into(),
                found: self.shape().iter().map(|&d| d as i64).collect(),
            });
        }
        Ok(self.to_vec::<T>()?[0])
    }

    /// A copy with its own buffer (`Clone` shares).
    pub fn deep_copy(&self) -> Result<Array> {
        let stream = current_stream();
        // SAFETY: valid handles; the op writes into `res`.
        try_array(|res| unsafe { mlx_sys::mlx_copy(res, self.raw, stream) })
    }
}

impl Clone for Array {
    fn clone(&self) -> Array {
        // SAFETY: a fresh handle set to share `self`'s array; mlx_array_set cannot fail for a
        // valid source.
        unsafe {
            let mut raw = mlx_sys::mlx_array_new();
            mlx_sys::mlx_array_set(&mut raw, self.raw);
            Array { raw }
        }
    }
}

impl Drop for Array {
    fn drop(&mut self) {
        // SAFETY: we own the handle and free it once.
        unsafe { mlx_sys::mlx_array_free(self.raw) };
    }
}

impl std::fmt::Debug for Array {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.dtype() {
            Ok(dtype) => write!(f, "Array({:?}, {dtype:?})", self.shape()),
            Err(e) => write!(f, "Array({:?}, {e})", self.shape()),
        }
    }
}
