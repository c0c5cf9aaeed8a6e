//! The CPU kernels (`kernels/`) against the Rust scalar twin of each GGUF format
//! (`quant::dequantize_row`, itself checked bit for bit against the `gguf` package) with an
//! f64 dot product, on real tensors written by the independent Python writer.
//!
//! Tolerances:
//! - scalar path: 1e-5 relative to Σ|w·x| (float32 accumulation order only);
//! - AVX2 path: 2e-2 · Σ|w·x| + 1e-5 per output. It rounds activations to int8 with one scale
//!   per block (32, or 256 for K-quants): each activation moves by at most amax/254, so the
//!   product moves by at most Σ_blocks amax_b/254 · Σ|w|, which for these activations stays
//!   well under 2 % of Σ|w·x|.

mod common;

use mlx_engine::ggml_type::GgmlType;
use mlx_engine::mlx::kernels::{self, KernelPath};
use mlx_engine::mlx::{ops, Array, Dtype};
use mlx_engine::quant;
use mlx_engine::Error;

struct Case {
    ty: GgmlType,
    bytes: Vec<u8>,
    w: Vec<f32>, // [n, k] by the Rust twin
    n: usize,
    k: usize,
}

fn load_case(quant: &str, tensor: &str) -> Case {
    let (ty, bytes, n, k) = common::synthetic_tensor(quant, tensor);
    let row = bytes.len() / n;
    let mut w = vec![0f32; n * k];
    for (r, dst) in w.chunks_exact_mut(k).enumerate() {
        quant::dequantize_row(ty, &bytes[r * row..(r + 1) * row], dst).unwrap();
    }
    Case { ty, bytes, w, n, k }
}

/// The first whole rows of `k` elements of the case's block stream (any sequence of valid
/// blocks is a valid tensor), with the twin's values.
fn recut(case: Case, k: usize) -> Case {
    let row = kernels::row_bytes(case.ty, k).unwrap();
    let n = case.bytes.len() / row;
    let bytes = case.bytes[..n * row].to_vec();
    let mut w = vec![0f32; n * k];
    for (r, dst) in w.chunks_exact_mut(k).enumerate() {
        quant::dequantize_row(case.ty, &bytes[r * row..(r + 1) * row], dst).unwrap();
    }
    Case {
        ty: case.ty,
        bytes,
        w,
        n,
        k,
    }
}

/// y and Σ|w·x| per output, in f64.
fn reference(case: &Case, x: &[f32], m: usize) -> (Vec<f64>, Vec<f64>) {
    let (n, k) = (case.n, case.k);
    let mut y = vec![0f64; m * n];
    let mut mag = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            for c in 0..k {
                let p = x[i * k + c] as f64 * case.w[j * k + c] as f64;
                y[i * n + j] += p;
                mag[i * n + j] += p.abs();
            }
        }
    }
    (y, mag)
}

fn check(case: &Case, got: &[f32], want: &[f64], mag: &[f64], rel: f64, what: &str) {
    for (i, ((g, w), s)) in got.iter().zip(want).zip(mag).enumerate() {
        let tol = rel * s + 1e-5;
        assert!(
            (*g as f64 - w).abs() <= tol,
            "{what} {:?}: output {i}: {g} vs {w} (tol {tol})",
            case.ty
        );
    }
}

const TYPES: [(&str, &str); 11] = [
    ("F32", "blk.0.ffn_gate.weight"),
    ("F16", "blk.0.ffn_gate.weight"),
    ("BF16", "blk.0.ffn_gate.weight"),
    ("Q8_0", "blk.0.ffn_gate.weight"),
    ("Q4_0", "blk.0.ffn_gate.weight"),
    ("Q4_1", "blk.0.ffn_gate.weight"),
    ("Q5_0", "blk.0.ffn_gate.weight"),
    ("Q5_1", "blk.0.ffn_gate.weight"),
    ("Q4_K", "blk.0.ffn_gate.weight"),
    ("Q5_K", "blk.0.ffn_gate.weight"),
    ("Q6_K", "blk.0.ffn_down.weight"),
];

/// Every type, both paths, several row counts and thread counts, on host memory. One test,
/// because the path and thread count are process-wide settings.
#[test]
fn every_type_and_path_matches_the_scalar_twin() {
    if common::skip_requested() {
        return;
    }
    let mut cases: Vec<(String, Case)> = TYPES
        .iter()
        .map(|(quant, tensor)| (quant.to_string(), load_case(quant, tensor)))
        .collect();
    // The repacked layouts keep a partial group of 8 blocks in the ggml layout: rows of 11
    // blocks (one group and a tail of 3) cut from the same block stream.
    for quant in ["Q5_0", "Q8_0"] {
        let case = recut(load_case(quant, "blk.0.ffn_down.weight"), 352);
        cases.push((format!("{quant} K=352"), case));
    }
    // Rows of 3 super-blocks: the K-quant kernels carry their sums across super-blocks.
    for quant in ["Q4_K", "Q5_K", "Q6_K"] {
        let case = recut(load_case(quant, "blk.0.ffn_down.weight"), 768);
        cases.push((format!("{quant} K=768"), case));
    }
    for (quant, case) in &cases {
        assert!(kernels::supports(case.ty), "{quant}");
        let deq = kernels::dequantize_host(&case.bytes, case.ty, case.n, case.k).unwrap();
        assert_eq!(
            deq, case.w,
            "{quant}: the kernel's dequantization equals the Rust twin bit for bit"
        );
        let (packed, layout) = kernels::repack_host(&case.bytes, case.ty, case.n, case.k).unwrap();
        let repacks = matches!(case.ty, GgmlType::Q5_0 | GgmlType::Q8_0);
        assert_eq!(layout.repacked, repacks, "{quant}: repacked layout");
        assert_eq!(packed == case.bytes, !repacks, "{quant}: bytes rewritten");
        let deq = kernels::dequantize_host(&packed, layout, case.n, case.k).unwrap();
        assert_eq!(
            deq, case.w,
            "{quant}: repacked rows dequantize to the same values"
        );
        for m in [1usize, 2, 3, 4, 5, 7, 8, 9, 16, 64, 130] {
            let x = common::activations(m, case.k, m as u64);
            let (want, mag) = reference(case, &x, m);
            let mut avx2 = Vec::new(); // the AVX2 result per thread count

            // Batch invariance: each row of an m-row product equals that row multiplied alone,
            // bit for bit, on every path (a request's logits must not depend on what it is
            // batched with or on how much of its prompt the prefix cache skipped).
            let alone = |path: KernelPath, threads: usize| -> Vec<f32> {
                kernels::force_path(Some(path));
                kernels::set_num_threads(threads);
                (0..m)
                    .flat_map(|r| {
                        let row = &x[r * case.k..(r + 1) * case.k];
                        kernels::qmatmul_host(&case.bytes, case.ty, case.n, case.k, row, 1).unwrap()
                    })
                    .collect()
            };
            for (path, rel) in [
                (KernelPath::Scalar, 1e-5),
                (KernelPath::Avx2, 2e-2),
                (KernelPath::Avx512Vnni, 2e-2),
            ] {
                kernels::force_path(Some(path));
                if kernels::path() != path {
                    eprintln!("{path:?}: this CPU lacks it; not checked here");
                    continue;
                }
                for threads in [1, 2, 3] {
                    kernels::set_num_threads(threads);
                    let got =
                        kernels::qmatmul_host(&case.bytes, case.ty, case.n, case.k, &x, m).unwrap();
                    let got_packed =
                        kernels::qmatmul_host(&packed, layout, case.n, case.k, &x, m).unwrap();
                    assert_eq!(
                        got, got_packed,
                        "{quant} {path:?} m={m}: repacked layout gives the same bits"
                    );
                    match path {
                        KernelPath::Avx2 => avx2.push(got.clone()),
                        KernelPath::Avx512Vnni => assert!(
                            got == avx2[threads - 1],
                            "{quant} m={m} threads={threads}: VNNI differs from AVX2"
                        ),
                        KernelPath::Scalar => {}
                    }
                    if m > 1 {
                        assert!(
                            got == alone(path, threads),
                            "{quant} {path:?} m={m} threads={threads}: a row's result depends on the batch"
                        );
                        kernels::force_path(Some(path));
                        kernels::set_num_threads(threads);
                    }
                    check(
                        case,
                        &got,
                        &want,
                        &mag,
                        rel,
                        &format!("{path:?} m={m} threads={threads}"),
                    );
                }
            }
        }
    }
    kernels::force_path(None);
    kernels::set_num_threads(0);
}

/// The MLX primitive: strided (transposed) and broadcast inputs, f16/bf16 activations, batch
/// dimensions, and clear errors for bad shapes.
#[test]
fn the_mlx_primitive_handles_layouts_dtypes_and_errors() {
    if common::skip_requested() {
        return;
    }
    let case = load_case("Q4_K", "blk.0.ffn_gate.weight");
    let (n, k, m) = (case.n, case.k, 5usize);
    let row_bytes = case.bytes.len() / n;
    let owner: std::sync::Arc<dyn Send + Sync> = std::sync::Arc::new(case.bytes.clone());
    let blocks =
        Array::from_borrowed_bytes(&case.bytes, owner, &[n as i32, row_bytes as i32], Dtype::U8)
            .unwrap();
    let x = common::activations(m, k, 7);
    let (want, mag) = reference(&case, &x, m);

    let plain = Array::from_slice(&x, &[m as i32, k as i32]).unwrap();
    let y = kernels::gguf_matmul(&plain, &blocks, case.ty, n, k).unwrap();
    assert_eq!(y.shape(), vec![m as i32, n as i32]);
    check(
        &case,
        &y.to_vec::<f32>().unwrap(),
        &want,
        &mag,
        2e-2,
        "contiguous",
    );

    // The same activations, stored transposed and viewed back: a strided input.
    let xt: Vec<f32> = (0..k)
        .flat_map(|c| (0..m).map(move |r| (r, c)))
        .map(|(r, c)| x[r * k + c])
        .collect();
    let strided = ops::transpose(
        &Array::from_slice(&xt, &[k as i32, m as i32]).unwrap(),
        &[1, 0],
    )
    .unwrap();
    let y = kernels::gguf_matmul(&strided, &blocks, case.ty, n, k).unwrap();
    check(
        &case,
        &y.to_vec::<f32>().unwrap(),
        &want,
        &mag,
        2e-2,
        "strided",
    );

    // A batch dimension made by broadcasting one row: [2, 1, K].
    let row = Array::from_slice(&x[..k], &[1, 1, k as i32]).unwrap();
    let batched = ops::broadcast_to(&row, &[2, 1, k as i32]).unwrap();
    let y = kernels::gguf_matmul(&batched, &blocks, case.ty, n, k).unwrap();
    assert_eq!(y.shape(), vec![2, 1, n as i32]);
    let yv = y.to_vec::<f32>().unwrap();
    check(&case, &yv[..n], &want[..n], &mag[..n], 2e-2, "broadcast[0]");
    check(&case, &yv[n..], &want[..n], &mag[..n], 2e-2, "broadcast[1]");

    // Half-precision activations: the reference uses the rounded inputs.
    for dtype in [Dtype::F16, Dtype::BF16] {
        let xh = ops::astype(&plain, dtype).unwrap();
        let rounded = ops::astype(&xh, Dtype::F32)
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        let (want_h, mag_h) = reference(&case, &rounded, m);
        let y = kernels::gguf_matmul(&xh, &blocks, case.ty, n, k).unwrap();
        check(
            &case,
            &y.to_vec::<f32>().unwrap(),
            &want_h,
            &mag_h,
            2e-2,
            &format!("{dtype:?}"),
        );
    }

    // Wrong inner dimension: an error naming the problem, and the next call still works.
    let bad = Array::from_slice(&vec![0f32; 2 * (k - 32)], &[2, (k - 32) as i32]).unwrap();
    let err = kernels::gguf_matmul(&bad, &blocks, case.ty, n, k).and_then(|y| y.eval().map(|_| y));
    let text = err.expect_err("mismatched K must be an error").to_string();
    assert!(
        text.starts_with("kernel gguf_matmul: ") && text.contains(&format!("K = {k}")),
        "{text}"
    );
    let y = kernels::gguf_matmul(&plain, &blocks, case.ty, n, k).unwrap();
    check(
        &case,
        &y.to_vec::<f32>().unwrap(),
        &want,
        &mag,
        2e-2,
        "after an error",
    );
}

/// A call the kernels refuse is `Error::Kernel` naming the Rust entry and carrying the
/// kernel's message; sizes that do not match are refused before the call.
#[test]
fn kernel_refusals_name_the_entry_and_the_problem() {
    let e = kernels::row_bytes(GgmlType::Q4_0, 33).unwrap_err();
    assert_eq!(
        e.to_string(),
        "kernel row_bytes: k=33 is not a multiple of the Q4_0 block size 32"
    );
    assert!(!kernels::supports(GgmlType::Q2_K));
    match kernels::qmatmul_host(&[0; 84], GgmlType::Q2_K, 1, 256, &[0.0; 256], 1) {
        Err(Error::Kernel { op, message }) => {
            assert_eq!(op, "row_bytes");
            assert!(message.contains("unsupported ggml type id 10"), "{message}");
        }
        other => panic!("Q2_K must be refused by the kernel, got {other:?}"),
    }
    let e = kernels::load_blocks(&[0; 17], GgmlType::Q4_0, 1, 32).unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument(_))
            && e.to_string()
                .contains("load_blocks: 17 bytes for 1 rows of 32 Q4_0"),
        "{e}"
    );
}

/// The primitive composes with `compile` (traced once, replayed).
#[test]
fn the_primitive_works_under_compile() {
    if common::skip_requested() {
        return;
    }
    let case = load_case("Q8_0", "blk.0.ffn_gate.weight");
    let (n, k) = (case.n, case.k);
    let row_bytes = case.bytes.len() / n;
    let owner: std::sync::Arc<dyn Send + Sync> = std::sync::Arc::new(case.bytes.clone());
    let blocks =
        Array::from_borrowed_bytes(&case.bytes, owner, &[n as i32, row_bytes as i32], Dtype::U8)
            .unwrap();
    let ty = case.ty;
    let f = move |xs: &[Array]| -> mlx_engine::Result<Vec<Array>> {
        let y = kernels::gguf_matmul(&xs[0], &xs[1], ty, n, k)?;
        Ok(vec![ops::silu(&y)?])
    };
    let compiled = mlx_engine::mlx::transforms::compile(Box::new(f), false).unwrap();
    let xv = common::activations(1, k, 3);
    let x = Array::from_slice(&xv, &[1, k as i32]).unwrap();
    let (want, mag) = reference(&case, &xv, 1);
    // silu is 1.1-Lipschitz, so the matmul bound carries over with that factor.
    let silu = |v: f64| v / (1.0 + (-v).exp());
    let want: Vec<f64> = want.iter().map(|&v| silu(v)).collect();
    let mag: Vec<f64> = mag.iter().map(|&v| 1.1 * v).collect();
    // Another test may force the kernel path concurrently: check against the bound of the
    // quantized path, which also covers the scalar one.
    for _ in 0..2 {
        let traced = compiled
            .call(&[&x, &blocks])
            .unwrap()
            .remove(0)
            .to_vec::<f32>()
            .unwrap();
        check(&case, &traced, &want, &mag, 2e-2, "compiled");
    }
}
