//! Fuzz target: `mlx_engine::fuzz_targets::grammar` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(
    // libfuzzer-sys's hook aborts on every panic, even one the library catches on purpose (a
    // dependency's panic turned into an error); a panic that escapes the harness still aborts.
    init: std::panic::set_hook(Box::new(|info| eprintln!("{info}"))),
    |data: &[u8]| {
        let _ = mlx_engine::fuzz_targets::grammar(data);
    }
);
