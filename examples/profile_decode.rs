//! Where a decode step's time goes: graph construction (Rust + mlx-c calls) versus evaluation,
//! and the logits read-back. `cargo run --release --example profile_decode -- MODEL.gguf [steps]`.

use mlx_engine::engine::{Engine, LoadOptions, LogitRows};
use mlx_engine::mlx::{ops, Array};
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .ok_or_else(|| anyhow::anyhow!("usage: profile_decode MODEL.gguf [steps]"))?;
    let steps: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(32);
    let engine = Engine::load(std::path::Path::new(path), &LoadOptions::default())?;
    let mut cache = engine.new_cache();
    let prompt = [785, 6722, 315, 9625, 374];
    let prefilled = engine.prefill(&prompt, &mut cache, 512, LogitRows::Last)?;
    let mut logits = Array::from_slice(&prefilled.data, &[prefilled.vocab as i32])?; // [V]
    let (mut build, mut eval, mut read) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let total = Instant::now();
    for _ in 0..steps {
        let t = Instant::now();
        let next = ops::argmax(&logits, -1, false)?.item::<u32>()?;
        read += t.elapsed();
        let t = Instant::now();
        logits = engine.decode(&[next], &mut [&mut cache])?;
        build += t.elapsed();
        let t = Instant::now();
        logits.eval()?;
        eval += t.elapsed();
    }
    let total = total.elapsed();
    let per = |d: Duration| d.as_secs_f64() * 1e3 / steps as f64;
    println!(
        "{steps} steps: {:.1} t/s | per token: build {:.2} ms, eval {:.2} ms, argmax+read {:.2} ms",
        steps as f64 / total.as_secs_f64(),
        per(build),
        per(eval),
        per(read)
    );
    Ok(())
}
