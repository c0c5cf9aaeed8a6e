//! The kernels' process-wide settings: the SIMD path and the thread count. (Huge pages for
//! the weight arena and the pool's spin time are read from the environment by the kernels:
//! `MLX_ENGINE_HUGEPAGES`, `MLX_ENGINE_SPIN_US`.)

use super::ffi::{
    mlxk_force_path, mlxk_get_num_threads, mlxk_kernel_path, mlxk_retain_freed_memory,
    mlxk_set_num_threads, MLXK_PATH_AUTO, MLXK_PATH_AVX2, MLXK_PATH_AVX512_VNNI, MLXK_PATH_SCALAR,
};
use std::ffi::c_int;

/// The kernel's SIMD path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelPath {
    /// Portable scalar code (always compiled, always tested).
    Scalar,
    /// AVX2 + FMA with int8 activations (x86-64, chosen at run time).
    Avx2,
    /// The AVX2 path with its int8 dot products on AVX-512 VNNI (`vpdpbusd`, 256-bit): the
    /// same results as [`KernelPath::Avx2`], bit for bit, in fewer instructions.
    Avx512Vnni,
}

/// The path in use.
pub fn path() -> KernelPath {
    // SAFETY: a pure query.
    match unsafe { mlxk_kernel_path() } {
        MLXK_PATH_AVX2 => KernelPath::Avx2,
        MLXK_PATH_AVX512_VNNI => KernelPath::Avx512Vnni,
        _ => KernelPath::Scalar,
    }
}

/// Forces a path process-wide (`None`: back to the default: `MLX_ENGINE_KERNEL`, else the
/// best the CPU supports); a path the CPU lacks falls back to the next best. For tests and
/// comparisons.
pub fn force_path(path: Option<KernelPath>) {
    let raw = match path {
        None => MLXK_PATH_AUTO,
        Some(KernelPath::Scalar) => MLXK_PATH_SCALAR,
        Some(KernelPath::Avx2) => MLXK_PATH_AVX2,
        Some(KernelPath::Avx512Vnni) => MLXK_PATH_AVX512_VNNI,
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

/// Keeps freed memory in the heap for reuse (see `mlxk_retain_freed_memory`): for loops that
/// allocate the same large buffers over and over, such as training steps.
pub fn retain_freed_memory() {
    // SAFETY: no arguments; only adjusts the C allocator's thresholds.
    unsafe { mlxk_retain_freed_memory() }
}
