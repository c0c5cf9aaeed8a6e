//! Fuzz target: `mlx_engine::fuzz_targets::request_body` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = mlx_engine::fuzz_targets::request_body(data);
});
