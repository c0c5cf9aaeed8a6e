//! Greedy continuation of token ids with a GGUF model: `cargo run --release --example greedy -- MODEL.gguf 785,6722,315 [N]`.

use mlx_engine::engine::{Engine, LoadOptions};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .ok_or_else(|| anyhow::anyhow!("usage: greedy MODEL.gguf IDS [N]"))?;
    let ids: Vec<u32> = args
        .get(2)
        .map(|s| s.split(',').map(|t| t.trim().parse()).collect())
        .transpose()?
        .unwrap_or_default();
    let n: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(16);
    let engine = Engine::load(std::path::Path::new(path), &LoadOptions::default())?;
    eprintln!("loaded in {:?} ({:?})", engine.load_time, engine.execution);
    let start = Instant::now();
    let out = engine.generate_greedy(&ids, n, |_| false)?;
    let secs = start.elapsed().as_secs_f64();
    println!("{out:?}");
    eprintln!("{} tokens in {secs:.2} s", out.len());
    Ok(())
}
