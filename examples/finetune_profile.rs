//! Where a LoRA training step's time goes: forward alone, forward + backward, and the pieces
//! of the backward (MLX matmul of the LM head's size, the dequantization), on a real model.
//! `cargo run --release --example finetune_profile -- MODEL [TOKENS]`.
use mlx_engine::engine::{Engine, LoadOptions};
use mlx_engine::finetune::checkpoint::{self, LoraSpec};
use mlx_engine::finetune::data::{Batch, Example};
use mlx_engine::finetune::{batch_loss, loss_and_grad};
use mlx_engine::mlx::{ops, transforms, Array};
use mlx_engine::model::lora::Target;
use std::time::Instant;

fn main() -> mlx_engine::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = mlx_engine::fetch::resolve(&args[1], &Default::default())?.path;
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(256);
    mlx_engine::mlx::kernels::retain_freed_memory();
    let engine = Engine::load(&path, &LoadOptions::default())?;
    let c = engine.config().clone();
    let spec = LoraSpec {
        rank: 8,
        alpha: 16.0,
        targets: vec![Target::Q, Target::K, Target::V, Target::O],
        layers: (0..c.n_layers).collect(),
    };
    let params: Vec<Array> = checkpoint::param_shapes(&spec, &c)
        .iter()
        .map(|s| ops::zeros(s, mlx_engine::mlx::Dtype::F32))
        .collect::<mlx_engine::Result<_>>()?;
    let ex = Example {
        tokens: (0..n as u32 + 1).map(|i| 100 + (i * 37) % 5000).collect(),
        loss: vec![true; n + 1],
    };
    let batch = Batch::new(&[&ex]);
    let adapters = checkpoint::adapters_from(&spec, c.n_layers, &params);
    for round in 0..2 {
        let t = Instant::now();
        let loss = batch_loss(&engine.model, &adapters, &batch)?;
        loss.eval()?;
        let fwd = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let _ = loss_and_grad(&engine.model, &spec, &params, &batch)?;
        let step = t.elapsed().as_secs_f64();
        println!("round {round}: {n} tokens: forward {fwd:.2} s, forward+backward {step:.2} s ({:.1} tok/s)", n as f64 / step);
    }
    if args.get(3).map(String::as_str) != Some("--matmul") {
        return Ok(());
    }
    let (v, d) = (c.vocab_size as i32, c.hidden as i32);
    let dy = ops::zeros(&[n as i32, v], mlx_engine::mlx::Dtype::F32)?;
    let w = ops::zeros(&[v, d], mlx_engine::mlx::Dtype::F32)?;
    transforms::eval(&[&dy, &w])?;
    let t = Instant::now();
    ops::matmul(&dy, &w)?.eval()?;
    println!(
        "MLX matmul [{n}, {v}]·[{v}, {d}]: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
