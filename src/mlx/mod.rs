//! The safe wrapper over mlx-c: the one layer of the crate (with `loader::mmap` and `ffi`) that
//! holds `unsafe` code. Every mlx-c call goes through [`handler::check`] or
//! [`handler::try_array`], so an MLX failure is an `Err`, never a process exit.

mod array;
mod dtype;
pub mod fast;
mod handler;
pub mod kernel_types;
pub mod kernels;
pub mod ops;
mod stream;
pub mod transforms;

pub use array::{Array, Element};
pub use dtype::Dtype;
pub use handler::install_error_handler;
pub use stream::{current_device, set_default_device, with_device, Device, Stream};
