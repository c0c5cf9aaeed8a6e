//! Fuzz target: `mlx_engine::fuzz_targets::chat_template` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = mlx_engine::fuzz_targets::chat_template(data);
});
