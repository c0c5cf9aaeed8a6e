//! The CPU quantized matmul (criterion), beside MLX's own `quantized_matmul` and MLX's float32
//! `matmul` of the dequantized weight: GEMV 1×896→4864, 1×2048→5632, 1×4864→896 and the
//! 128-row GEMMs, Q5_0 / Q8_0 / Q4_K / Q6_K weights taken from synthetic models (random valid
//! blocks). Throughput is reported in bytes of weight streamed (GB/s for the GEMVs).
//!
//! `cargo bench --bench qmatmul`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mlx_engine::ggml_type::GgmlType;
use mlx_engine::mlx::kernels;
use mlx_engine::mlx::ops::{self, QuantSpec};
use mlx_engine::mlx::{Array, Dtype};
use mlx_engine::quant;

/// Random valid blocks of `ty` for an [n, k] weight: random bytes with every block's f16
/// scale fields set to small positive values.
fn random_blocks(ty: GgmlType, n: usize, k: usize) -> Vec<u8> {
    let row = kernels::row_bytes(ty, k).unwrap();
    let block_bytes = ty.type_size() as usize;
    let mut state = 0x9E3779B97F4A7C15u64;
    let mut bytes: Vec<u8> = (0..n * row)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let scale = half::f16::from_f32(0.002).to_le_bytes();
    let scale_offsets: &[usize] = match ty {
        GgmlType::Q6_K => &[208],
        GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q4_1 | GgmlType::Q5_1 => &[0, 2],
        _ => &[0],
    };
    for block in bytes.chunks_exact_mut(block_bytes) {
        for &o in scale_offsets {
            block[o..o + 2].copy_from_slice(&scale);
        }
    }
    bytes
}

fn bench_qmatmul(c: &mut Criterion) {
    let shapes = [(896usize, 4864usize), (2048, 5632), (4864, 896)];
    for ty in [
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ] {
        for &(k, n) in &shapes {
            if k % ty.block_size() as usize != 0 {
                continue;
            }
            let bytes = random_blocks(ty, n, k);
            let owner: std::sync::Arc<dyn Send + Sync> = std::sync::Arc::new(bytes.clone());
            let row = bytes.len() / n;
            let blocks =
                Array::from_borrowed_bytes(&bytes, owner, &[n as i32, row as i32], Dtype::U8)
                    .unwrap();
            let mut dense = vec![0f32; n * k];
            for (r, dst) in dense.chunks_exact_mut(k).enumerate() {
                quant::dequantize_row(ty, &bytes[r * row..(r + 1) * row], dst).unwrap();
            }
            let w = Array::from_slice(&dense, &[n as i32, k as i32]).unwrap();
            let wt = ops::transpose(&w, &[1, 0]).unwrap();
            let spec = QuantSpec {
                group_size: 32,
                bits: 4,
            };
            let (qw, qs, qb) = ops::quantize(&w, spec).unwrap();
            for m in [1usize, 128] {
                let x = Array::from_slice(&vec![0.5f32; m * k], &[m as i32, k as i32]).unwrap();
                let mut group = c.benchmark_group(format!("{}/{m}x{k}x{n}", ty.name()));
                group.sample_size(10);
                group.throughput(Throughput::Bytes(bytes.len() as u64));
                group.bench_function(BenchmarkId::new("ours", kernels::num_threads()), |b| {
                    b.iter(|| {
                        kernels::gguf_matmul(&x, &blocks, ty, n, k)
                            .unwrap()
                            .eval()
                            .unwrap()
                    })
                });
                group.bench_function("mlx_f32_matmul", |b| {
                    b.iter(|| ops::matmul(&x, &wt).unwrap().eval().unwrap())
                });
                if m == 1 {
                    group.bench_function("mlx_quantized_matmul_4bit", |b| {
                        b.iter(|| {
                            ops::quantized_matmul(&x, &qw, &qs, &qb, spec)
                                .unwrap()
                                .eval()
                                .unwrap()
                        })
                    });
                }
                group.finish();
            }
        }
    }
}

criterion_group!(benches, bench_qmatmul);
criterion_main!(benches);
