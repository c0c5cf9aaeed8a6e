//! Build script of `mlx-engine`: compiles our C++ kernels (`kernels/`) against the same MLX
//! that `mlx-sys` built mlx-c against, and sets an rpath to MLX's library directory so that
//! `cargo run`, `cargo test`, `cargo bench` and `target/*/mlx-engine` need no LD_LIBRARY_PATH.

use std::env;
use std::path::PathBuf;

/// The C++ translation units of `kernels/` that make up the kernel library.
const KERNEL_SOURCES: &[&str] = &[
    "kernels/quant_scalar.cpp",
    "kernels/quant_avx2.cpp",
    "kernels/quant_vnni.cpp",
    "kernels/quant_zmm.cpp",
    "kernels/repack.cpp",
    "kernels/threadpool.cpp",
    "kernels/qmatmul.cpp",
    "kernels/mlx_primitive.cpp",
    "kernels/attention.cpp",
    "kernels/backward.cpp",
    "kernels/gemm.cpp",
    "kernels/cross_entropy.cpp",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    let dep = |key: &str| {
        env::var(format!("DEP_MLXC_{key}"))
            .unwrap_or_else(|_| panic!("mlx-sys did not export DEP_MLXC_{key}"))
    };
    let lib_dir = PathBuf::from(dep("LIB_DIR"));
    let mlx_include = PathBuf::from(dep("MLX_INCLUDE"));
    let mlxc_include = PathBuf::from(dep("MLXC_INCLUDE"));
    let compat_header = PathBuf::from(dep("COMPAT_HEADER"));

    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("windows") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    }
    // The CUDA libmlx.so needs libcuda, cuBLAS, cuDNN, NVRTC, cuFFT and NCCL, which the build
    // does not install (the GPU machine's driver and nvidia-* wheels provide them): the linker
    // is told that a shared library's undefined symbols resolve at run time. Binaries, tests
    // and the cdylib link; nothing of ours is left unresolved by this (it covers only symbols
    // that libmlx.so itself references).
    if env::var("DEP_MLXC_FLAVOR").as_deref() == Ok("cuda12") {
        println!("cargo:rustc-link-arg=-Wl,--allow-shlib-undefined");
    }

    if KERNEL_SOURCES.is_empty() {
        return;
    }
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++20")
        .opt_level(3)
        // Line tables only (perf annotate), as for our Rust code: full debug info put ~25 MB
        // into every test binary.
        .debug(false)
        .flag("-g1")
        .pic(true)
        .include("kernels/include")
        .include(&mlx_include)
        .include(&mlxc_include)
        .flag(format!("-include{}", compat_header.display()))
        .flag_if_supported("-Wno-unused-parameter")
        // mlx-c's array.h defines a static it never uses.
        .flag_if_supported("-Wno-unused-variable")
        .files(KERNEL_SOURCES);
    build.compile("mlx_engine_kernels");
    println!("cargo:rustc-link-lib=dylib=mlx");
}
