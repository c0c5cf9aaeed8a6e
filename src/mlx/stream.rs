//! Devices and streams. Ops run on the calling thread's default stream, which follows the
//! default device ([`set_default_device`], [`with_device`]).

use crate::error::{Error, Result};
use crate::mlx::handler::{check, install_error_handler};
use std::cell::RefCell;

/// Where MLX runs an op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    /// The CPU (every build).
    Cpu,
    /// MLX's GPU backend: CUDA in a `--features cuda` build on Linux, Metal on macOS.
    Gpu,
}

/// Why `device` cannot run in this build or on this machine, naming what to do about it.
fn unavailable_message(device: Device) -> String {
    match device {
        Device::Cpu => "MLX reports no CPU device (a broken MLX installation?)".to_string(),
        Device::Gpu if cfg!(target_os = "macos") => {
            "MLX reports no Metal GPU on this Mac".to_string()
        }
        Device::Gpu if cfg!(feature = "cuda") => "MLX's CUDA backend found no usable GPU: \
             no NVIDIA driver, or no CUDA device visible (check `nvidia-smi` and \
             CUDA_VISIBLE_DEVICES)"
            .to_string(),
        Device::Gpu => "this build has no GPU backend (it links MLX's CPU-only wheel); \
             rebuild with `cargo build --release --features cuda` on Linux with an NVIDIA GPU \
             (see README, \"GPU\"), or run on the CPU"
            .to_string(),
    }
}

impl Device {
    fn raw_type(self) -> mlx_sys::mlx_device_type {
        match self {
            Device::Cpu => mlx_sys::MLX_CPU,
            Device::Gpu => mlx_sys::MLX_GPU,
        }
    }

    /// Whether this MLX build can run on the device (GPU: Metal or CUDA).
    pub fn is_available(self) -> bool {
        install_error_handler();
        // SAFETY: the device handle is created, queried and freed here.
        unsafe {
            let dev = mlx_sys::mlx_device_new_type(self.raw_type(), 0);
            let mut avail = false;
            let ok = mlx_sys::mlx_device_is_available(&mut avail, dev) == 0;
            mlx_sys::mlx_device_free(dev);
            ok && avail
        }
    }
}

/// An owned MLX stream handle.
pub struct Stream {
    raw: mlx_sys::mlx_stream,
    device: Device,
}

impl Stream {
    /// The default stream of `device`.
    pub fn default_for(device: Device) -> Result<Stream> {
        install_error_handler();
        if !device.is_available() {
            return Err(Error::Unsupported(unavailable_message(device)));
        }
        // SAFETY: handles created here; the device handle is freed after use and the stream
        // handle is owned by the returned `Stream`.
        unsafe {
            let dev = mlx_sys::mlx_device_new_type(device.raw_type(), 0);
            let mut raw = mlx_sys::mlx_stream_new();
            let status = mlx_sys::mlx_get_default_stream(&mut raw, dev);
            mlx_sys::mlx_device_free(dev);
            if let Err(err) = check(status) {
                mlx_sys::mlx_stream_free(raw);
                return Err(err);
            }
            Ok(Stream { raw, device })
        }
    }

    /// The raw handle, valid while `self` lives.
    pub(crate) fn raw(&self) -> mlx_sys::mlx_stream {
        self.raw
    }

    /// The device this stream runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Waits until every op queued on this stream has finished.
    pub fn synchronize(&self) -> Result<()> {
        // SAFETY: `self.raw` is a valid stream handle.
        check(unsafe { mlx_sys::mlx_synchronize(self.raw) })
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // SAFETY: we own the handle and drop it once.
        unsafe { mlx_sys::mlx_stream_free(self.raw) };
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Stream>> = const { RefCell::new(None) };
}

/// Sets the calling thread's default device (and so the stream its ops use).
pub fn set_default_device(device: Device) -> Result<()> {
    let stream = Stream::default_for(device)?;
    CURRENT.with(|cur| *cur.borrow_mut() = Some(stream));
    Ok(())
}

/// Runs `f` with `device` as the calling thread's default, restoring the previous one after.
pub fn with_device<T>(device: Device, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let stream = Stream::default_for(device)?;
    let previous = CURRENT.with(|cur| cur.borrow_mut().replace(stream));
    let result = f();
    CURRENT.with(|cur| *cur.borrow_mut() = previous);
    result
}

/// The raw handle of the calling thread's current stream (CPU unless set otherwise).
pub(crate) fn current_stream() -> mlx_sys::mlx_stream {
    CURRENT.with(|cur| {
        let mut cur = cur.borrow_mut();
        if cur.is_none() {
            // The CPU is always available, so this cannot fail in a working MLX build.
            *cur = Stream::default_for(Device::Cpu).ok();
        }
        cur.as_ref()
            .map(Stream::raw)
            .unwrap_or(mlx_sys::mlx_stream {
                ctx: std::ptr::null_mut(),
            })
    })
}

/// The device of the calling thread's current stream.
pub fn current_device() -> Device {
    CURRENT.with(|cur| {
        cur.borrow()
            .as_ref()
            .map(Stream::device)
            .unwrap_or(Device::Cpu)
    })
}
