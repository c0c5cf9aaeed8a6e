//! Tokens/s of whole-model inference (criterion): prefill of 128 and 512 prompt tokens, decode
//! of 64 tokens after a 128-token prompt, batched decode (B = 1, 4, 16 sequences after 128
//! prompt tokens each, 16 steps; throughput counts all B tokens of a step), and load time, for the real Qwen2.5-Coder-0.5B
//! Q4_K_M GGUF and synthetic TinyLlama-shaped models (22 layers, hidden 2048, 32/4 heads, FFN
//! 5632, vocab 32,000) in llama.cpp's Q4_K_M recipe (Q4_K; Q6_K for the output and some
//! attn_v / ffn_down) and in F16, generated deterministically by
//! `tests/reference/make_synthetic.py`. MLX is lazy: every timed closure evaluates.
//!
//! `cargo bench --bench inference` (set `MLX_ENGINE_BENCH_MODELS=qwen` to run one model).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mlx_engine::bench::{measure_batched, measure_generation, measure_prompt};
use mlx_engine::engine::{Engine, LoadOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn qwen() -> PathBuf {
    mlx_engine::fetch::resolve("qwen2.5-coder-0.5b", &Default::default())
        .expect("the Qwen model")
        .path
}

/// A TinyLlama-shaped synthetic model, generated once into target/synthetic.
fn tinyllama(quant: &str) -> PathBuf {
    let path = root().join(format!("target/synthetic/tinyllama-shape-{quant}.gguf"));
    if !path.exists() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let status = Command::new("python3")
            .env("PYTHONPATH", root().join("target/pydeps"))
            .arg(root().join("tests/reference/make_synthetic.py"))
            .arg(&path)
            .args(["--tinyllama-shape", "--quant", quant, "--seed", "0"])
            .status()
            .expect(
                "python3 (run `cargo test` once to install the Python deps into target/pydeps)",
            );
        assert!(status.success(), "make_synthetic.py failed");
    }
    path
}

fn models() -> Vec<(String, PathBuf)> {
    let wanted = std::env::var("MLX_ENGINE_BENCH_MODELS")
        .unwrap_or_else(|_| "qwen,tinyllama-Q4_K_M,tinyllama-F16".into());
    wanted
        .split(',')
        .map(|name| {
            let path = match name {
                "qwen" => qwen(),
                "tinyllama-Q4_K_M" => tinyllama("Q4_K_M"),
                "tinyllama-F16" => tinyllama("F16"),
                other => PathBuf::from(other),
            };
            (name.to_string(), path)
        })
        .collect()
}

fn load(path: &Path) -> Engine {
    Engine::load(path, &LoadOptions::default()).expect("load")
}

fn bench_inference(c: &mut Criterion) {
    for (name, path) in models() {
        let engine = load(&path);
        measure_prompt(&engine, 16).unwrap(); // page in the mapped weights

        let mut group = c.benchmark_group(format!("{name}/prefill"));
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(20));
        for n in [128usize, 512] {
            group.throughput(Throughput::Elements(n as u64));
            group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let tps = measure_prompt(&engine, n).unwrap();
                        total += Duration::from_secs_f64(n as f64 / tps);
                    }
                    total
                })
            });
        }
        group.finish();

        let mut group = c.benchmark_group(format!("{name}/decode"));
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(20));
        group.throughput(Throughput::Elements(64));
        group.bench_function("64_after_128", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let tps = measure_generation(&engine, 128, 64).unwrap();
                    total += Duration::from_secs_f64(64.0 / tps);
                }
                total
            })
        });
        group.finish();

        let mut group = c.benchmark_group(format!("{name}/batched_decode"));
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(20));
        for batch in [1usize, 4, 16] {
            group.throughput(Throughput::Elements(16 * batch as u64));
            group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let tps = measure_batched(&engine, batch, 128, 16).unwrap();
                        total += Duration::from_secs_f64((16 * batch) as f64 / tps);
                    }
                    total
                })
            });
        }
        group.finish();

        let mut group = c.benchmark_group(format!("{name}/load"));
        group.sample_size(10);
        group.bench_function("load", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    drop(load(&path));
                }
                start.elapsed()
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench_inference);
criterion_main!(benches);
