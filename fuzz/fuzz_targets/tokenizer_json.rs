//! Fuzz target: `mlx_engine::fuzz_targets::tokenizer_json` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = mlx_engine::fuzz_targets::tokenizer_json(data);
});
