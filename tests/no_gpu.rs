//! `--device gpu` and `Device::Gpu` in a build without a GPU backend (the default, CPU-only
//! MLX wheel): a clear error naming what is missing and how to get it, never an abort. The C
//! ABI's `MLXE_DEVICE_GPU` is checked in `c_abi.rs`.
#![cfg(not(any(feature = "cuda", target_os = "macos")))]

use mlx_engine::backend::{Backend, BackendOptions, ModelSpec};
use mlx_engine::mlx::Device;
use std::process::Command;

fn assert_no_gpu_message(message: &str) {
    assert!(
        message.contains("this build has no GPU backend") && message.contains("--features cuda"),
        "message: {message}"
    );
}

#[test]
fn the_cli_refuses_device_gpu_with_exit_code_1() {
    for args in [
        &["--device", "gpu", "-m", "/nonexistent.gguf", "-p", "hi"][..],
        &["bench", "--device", "gpu", "-m", "/nonexistent.gguf"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_mlx-engine"))
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert_no_gpu_message(&stderr);
    }
}

#[test]
fn the_backend_refuses_device_gpu_before_reading_the_model() {
    assert!(!Device::Gpu.is_available());
    let options = BackendOptions {
        device: Device::Gpu,
        ..BackendOptions::default()
    };
    let err = Backend::load(&ModelSpec::new("/nonexistent.gguf"), &options)
        .err()
        .expect("a GPU backend in a CPU-only build");
    assert_no_gpu_message(&err.to_string());
}
