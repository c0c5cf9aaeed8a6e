//! Would a mixed step pay? While a long prompt is read, the server's step prefills one chunk
//! and then decodes the running sequences in a second forward pass, so their inter-token latency
//! is prefill(C) + decode(B). A mixed step would run both in one pass of C + B rows. This times
//! the three passes on their own: prefill(C) + decode(B) against prefill(C + B) (the same rows
//! in one pass; attention differs a little, matmuls do not).
//! `cargo run --release --example mixed_step_cost -- MODEL.gguf [chunk] [batch] [reps]`.

use mlx_engine::engine::{Engine, LoadOptions, LogitRows};
use mlx_engine::mlx::transforms;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).ok_or_else(|| {
        anyhow::anyhow!("usage: mixed_step_cost MODEL.gguf [chunk] [batch] [reps]")
    })?;
    let number = |i: usize, default: usize| -> anyhow::Result<usize> {
        Ok(args
            .get(i)
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(default))
    };
    let (chunk, batch, reps) = (number(2, 256)?, number(3, 4)?, number(4, 5)?);
    let engine = Engine::load(std::path::Path::new(path), &LoadOptions::default())?;
    let vocab = engine.config().vocab_size;
    let tokens = mlx_engine::bench::bench_tokens(chunk + batch + 64, vocab);

    // B running sequences, 64 positions each.
    let mut running: Vec<_> = (0..batch).map(|_| engine.new_cache()).collect();
    for cache in running.iter_mut() {
        engine.prefill(&tokens[..64], cache, 512, LogitRows::Last)?;
    }
    let (mut split, mut mixed, mut decode_only) = (vec![], vec![], vec![]);
    for _ in 0..reps {
        // Today: the chunk, then the decode.
        let mut reading = engine.new_cache();
        let start = Instant::now();
        engine.prefill(&tokens[..chunk], &mut reading, chunk, LogitRows::Last)?;
        let prefill_done = start.elapsed();
        let step: Vec<u32> = tokens[..batch].to_vec();
        let mut caches: Vec<_> = running.iter_mut().collect();
        let logits = engine.decode(&step, &mut caches)?;
        let mut outputs: Vec<_> = caches.iter().flat_map(|c| c.arrays()).collect();
        outputs.push(&logits);
        transforms::eval(&outputs)?;
        split.push(start.elapsed().as_secs_f64());
        decode_only.push((start.elapsed() - prefill_done).as_secs_f64());
        for cache in running.iter_mut() {
            cache.truncate(64)?;
        }
        // A mixed pass would cost about one pass over the same rows.
        let mut one = engine.new_cache();
        let start = Instant::now();
        engine.prefill(
            &tokens[..chunk + batch],
            &mut one,
            chunk + batch,
            LogitRows::Last,
        )?;
        mixed.push(start.elapsed().as_secs_f64());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2] * 1e3
    };
    let (split, mixed, decode) = (
        median(&mut split),
        median(&mut mixed),
        median(&mut decode_only),
    );
    println!(
        "chunk {chunk}, batch {batch}, median of {reps}: prefill+decode {split:.1} ms \
         (decode {decode:.1} ms), one pass of {} rows {mixed:.1} ms: a mixed step would cut \
         the inter-token latency during a prefill by {:.1}%",
        chunk + batch,
        (1.0 - mixed / split) * 100.0
    );
    Ok(())
}
