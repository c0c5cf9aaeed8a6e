//! The safe MLX wrapper against hand-computed values and plain-Rust f64 references.
//! Tolerance: 1e-5 relative for float32 ops (MLX accumulates in float32; the references here
//! are exact or f64).

use mlx_engine::mlx::fast::{self, AttentionMask};
use mlx_engine::mlx::ops::{self, QuantSpec};
use mlx_engine::mlx::{transforms, Array, Dtype};

const TOL: f32 = 1e-5;

fn arr(data: &[f32], shape: &[i32]) -> Array {
    Array::from_slice(data, shape).unwrap()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "element {i}: got {g}, want {w}"
        );
    }
}

#[test]
fn construction_shape_dtype_and_readback() {
    let a = arr(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
    assert_eq!(a.shape(), vec![2, 3]);
    assert_eq!(a.dtype().unwrap(), Dtype::F32);
    assert_eq!(a.size(), 6);
    assert_eq!(
        a.to_vec::<f32>().unwrap(),
        vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    );
    assert!(
        a.to_vec::<i32>().is_err(),
        "wrong element type must be an error"
    );
    assert!(
        Array::from_slice(&[1.0f32, 2.0], &[3]).is_err(),
        "shape/length mismatch"
    );
    assert_eq!(Array::scalar(7i32).unwrap().item::<i32>().unwrap(), 7);
    assert!(a.item::<f32>().is_err());
}

#[test]
fn borrowed_bytes_are_zero_copy_views() {
    let owner = std::sync::Arc::new(vec![0u8; 16]);
    let values: Vec<u8> = (0u8..16).collect();
    let owner2: std::sync::Arc<dyn Send + Sync> = std::sync::Arc::new(values.clone());
    let a = Array::from_borrowed_bytes(&values, owner2, &[4, 4], Dtype::U8).unwrap();
    assert_eq!(a.to_vec::<u8>().unwrap(), values);
    drop(owner);
}

#[test]
fn matmul_and_broadcast_arithmetic() {
    // [[1,2,3],[4,5,6]] · [[7,8],[9,10],[11,12]] = [[58,64],[139,154]]
    let a = arr(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
    let b = arr(&[7.0, 8.0, 9.0, 10.0, 11.0, 12.0], &[3, 2]);
    assert_eq!(
        ops::matmul(&a, &b).unwrap().to_vec::<f32>().unwrap(),
        vec![58.0, 64.0, 139.0, 154.0]
    );
    let row = arr(&[10.0, 20.0, 30.0], &[3]);
    assert_eq!(
        ops::add(&a, &row).unwrap().to_vec::<f32>().unwrap(),
        vec![11.0, 22.0, 33.0, 14.0, 25.0, 36.0]
    );
    assert_eq!(
        ops::multiply(&a, &row).unwrap().to_vec::<f32>().unwrap(),
        vec![10.0, 40.0, 90.0, 40.0, 100.0, 180.0]
    );
    assert_eq!(
        ops::subtract(&row, &row).unwrap().to_vec::<f32>().unwrap(),
        vec![0.0; 3]
    );
    assert_eq!(
        ops::divide(&row, &row).unwrap().to_vec::<f32>().unwrap(),
        vec![1.0; 3]
    );
}

#[test]
fn mismatched_matmul_is_an_error_and_the_next_op_works() {
    let a = arr(&[1.0; 6], &[2, 3]);
    let b = arr(&[1.0; 8], &[4, 2]);
    let err = ops::matmul(&a, &b).unwrap_err().to_string();
    assert!(err.starts_with("mlx:"), "{err}");
    assert!(
        err.to_lowercase().contains("shape") || err.contains("(2,3)"),
        "MLX's message kept: {err}"
    );
    let ok = ops::matmul(&a, &arr(&[1.0; 6], &[3, 2])).unwrap();
    assert_eq!(ok.to_vec::<f32>().unwrap(), vec![3.0; 4]);
}

#[test]
fn shape_ops() {
    let a = arr(&(0..24).map(|x| x as f32).collect::<Vec<_>>(), &[2, 3, 4]);
    let t = ops::transpose(&a, &[2, 0, 1]).unwrap();
    assert_eq!(t.shape(), vec![4, 2, 3]);
    // t[i, j, k] = a[j, k, i] = 12 j + 4 k + i
    let tv = t.to_vec::<f32>().unwrap();
    assert_eq!(tv[0..6], [0.0, 4.0, 8.0, 12.0, 16.0, 20.0]);
    let r = ops::reshape(&a, &[6, -1]).unwrap();
    assert_eq!(r.shape(), vec![6, 4]);
    let s = ops::slice(&a, &[1, 0, 1], &[2, 3, 4], &[1, 2, 2]).unwrap();
    // a[1, 0::2, 1::2] = rows k=0,2 of block 1, columns 1,3
    assert_eq!(s.to_vec::<f32>().unwrap(), vec![13.0, 15.0, 21.0, 23.0]);
    let c = ops::concatenate(&[&arr(&[1.0, 2.0], &[1, 2]), &arr(&[3.0, 4.0], &[1, 2])], 0).unwrap();
    assert_eq!(c.shape(), vec![2, 2]);
    assert_eq!(c.to_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    let e = ops::expand_dims(&c, 0).unwrap();
    assert_eq!(e.shape(), vec![1, 2, 2]);
    assert_eq!(ops::squeeze(&e, 0).unwrap().shape(), vec![2, 2]);
    assert!(
        ops::slice(&a, &[0], &[1], &[1]).is_err(),
        "rank mismatch is an error"
    );
}

#[test]
fn slice_update_writes_the_window() {
    let z = ops::zeros(&[2, 4], Dtype::F32).unwrap();
    let u = arr(&[1.0, 2.0], &[1, 2]);
    let out = ops::slice_update(&z, &u, &[1, 1], &[2, 3], &[1, 1]).unwrap();
    assert_eq!(
        out.to_vec::<f32>().unwrap(),
        vec![0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 0.0]
    );
}

#[test]
fn gather_ops() {
    let table = arr(&[0.0, 1.0, 10.0, 11.0, 20.0, 21.0], &[3, 2]);
    let idx = Array::from_slice(&[2u32, 0], &[2]).unwrap();
    assert_eq!(
        ops::take(&table, &idx, 0).unwrap().to_vec::<f32>().unwrap(),
        vec![20.0, 21.0, 0.0, 1.0]
    );
    let along = Array::from_slice(&[1u32, 0, 1], &[3, 1]).unwrap();
    assert_eq!(
        ops::take_along_axis(&table, &along, 1)
            .unwrap()
            .to_vec::<f32>()
            .unwrap(),
        vec![1.0, 10.0, 21.0]
    );
}

#[test]
fn softmax_argmax_sort() {
    let x = arr(&[1.0, 2.0, 3.0], &[3]);
    let e: Vec<f64> = [1.0f64, 2.0, 3.0].iter().map(|v| v.exp()).collect();
    let total: f64 = e.iter().sum();
    let want: Vec<f32> = e.iter().map(|v| (v / total) as f32).collect();
    assert_close(
        &ops::softmax(&x, -1, true).unwrap().to_vec::<f32>().unwrap(),
        &want,
        TOL,
    );
    let y = arr(&[0.5, 3.0, -1.0, 3.5, 2.0, 0.0], &[2, 3]);
    assert_eq!(
        ops::argmax(&y, -1, false).unwrap().to_vec::<u32>().unwrap(),
        vec![1, 0]
    );
    assert_eq!(
        ops::sort(&y, -1).unwrap().to_vec::<f32>().unwrap(),
        vec![-1.0, 0.5, 3.0, 0.0, 2.0, 3.5]
    );
    assert_eq!(
        ops::argsort(&y, -1).unwrap().to_vec::<u32>().unwrap(),
        vec![2, 0, 1, 2, 1, 0]
    );
    let p = ops::argpartition(&arr(&[5.0, 1.0, 4.0, 2.0, 3.0], &[5]), 2, 0).unwrap();
    let pv = p.to_vec::<u32>().unwrap();
    assert_eq!(pv[2], 4, "the 3rd smallest (3.0) sits at position 2");
    let lse = ops::logsumexp(&x, -1, false)
        .unwrap()
        .item::<f32>()
        .unwrap();
    assert!((lse as f64 - total.ln()).abs() < 1e-5);
}

#[test]
fn astype_half_types() {
    let x = arr(&[1.5, -2.25, 65504.0], &[3]);
    let h = ops::astype(&x, Dtype::F16).unwrap();
    assert_eq!(h.dtype().unwrap(), Dtype::F16);
    let hv = h.to_vec::<half::f16>().unwrap();
    assert_eq!(
        hv.iter().map(|v| v.to_f32()).collect::<Vec<_>>(),
        vec![1.5, -2.25, 65504.0]
    );
    let b = ops::astype(&x, Dtype::BF16)
        .unwrap()
        .to_vec::<half::bf16>()
        .unwrap();
    assert_eq!(b[0].to_f32(), 1.5);
    assert_eq!(b[1].to_f32(), -2.25);
}

#[test]
fn rms_norm_matches_hand_computation() {
    // x = [1, 2, 3, 4]: mean(x²) = 7.5
    let x = arr(&[1.0, 2.0, 3.0, 4.0], &[1, 4]);
    let w = arr(&[1.0, 0.5, 2.0, 1.0], &[4]);
    let eps = 1e-6f64;
    let inv = 1.0 / (7.5f64 + eps).sqrt();
    let want: Vec<f32> = [1.0, 1.0, 6.0, 4.0]
        .iter()
        .map(|v: &f64| (v * inv) as f32)
        .collect();
    assert_close(
        &fast::rms_norm(&x, &w, eps as f32)
            .unwrap()
            .to_vec::<f32>()
            .unwrap(),
        &want,
        TOL,
    );
}

/// RoPE in f64 by the formula: pair (a, b) at position p with frequency base^(-2i/d) turns by
/// angle p·θᵢ.
fn rope_reference(x: &[f32], d: usize, pos: usize, base: f64, traditional: bool) -> Vec<f32> {
    let mut out = vec![0f32; d];
    for i in 0..d / 2 {
        let theta = pos as f64 * base.powf(-2.0 * i as f64 / d as f64);
        let (ia, ib) = if traditional {
            (2 * i, 2 * i + 1)
        } else {
            (i, i + d / 2)
        };
        let (a, b) = (x[ia] as f64, x[ib] as f64);
        out[ia] = (a * theta.cos() - b * theta.sin()) as f32;
        out[ib] = (a * theta.sin() + b * theta.cos()) as f32;
    }
    out
}

#[test]
fn rope_both_layouts_match_the_formula() {
    let d = 8;
    let x: Vec<f32> = (0..2 * d).map(|i| (i as f32 * 0.37).sin()).collect();
    for traditional in [true, false] {
        // [B=1, H=1, L=2, D=8] at offset 5: positions 5 and 6.
        let a = arr(&x, &[1, 1, 2, d as i32]);
        let got = fast::rope(&a, d as i32, traditional, 10000.0, 1.0, 5)
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        let mut want = rope_reference(&x[..d], d, 5, 10000.0, traditional);
        want.extend(rope_reference(&x[d..], d, 6, 10000.0, traditional));
        assert_close(&got, &want, 1e-5);
    }
}

#[test]
fn attention_matches_naive_f64() {
    // q: [1, 2 heads, 3, 4], k/v: [1, 1 head, 3, 4] (grouped-query), causal.
    let (hq, l, d) = (2usize, 3usize, 4usize);
    let q: Vec<f32> = (0..hq * l * d)
        .map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0)
        .collect();
    let k: Vec<f32> = (0..l * d)
        .map(|i| ((i * 5 % 13) as f32 - 6.0) / 6.0)
        .collect();
    let v: Vec<f32> = (0..l * d).map(|i| (i as f32) / 10.0).collect();
    let scale = 1.0 / (d as f32).sqrt();
    let out = fast::scaled_dot_product_attention(
        &arr(&q, &[1, hq as i32, l as i32, d as i32]),
        &arr(&k, &[1, 1, l as i32, d as i32]),
        &arr(&v, &[1, 1, l as i32, d as i32]),
        scale,
        AttentionMask::Causal,
    )
    .unwrap()
    .to_vec::<f32>()
    .unwrap();
    let mut want = Vec::new();
    for h in 0..hq {
        for i in 0..l {
            let scores: Vec<f64> = (0..=i)
                .map(|j| {
                    (0..d)
                        .map(|c| q[(h * l + i) * d + c] as f64 * k[j * d + c] as f64)
                        .sum::<f64>()
                        * scale as f64
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::MIN, f64::max);
            let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let z: f64 = w.iter().sum();
            for c in 0..d {
                want.push((0..=i).map(|j| w[j] / z * v[j * d + c] as f64).sum::<f64>() as f32);
            }
        }
    }
    assert_close(&out, &want, 1e-5);
}

#[test]
fn quantize_roundtrip_and_quantized_matmul() {
    // 4-bit affine groups of 32: each value comes back within one quantization step.
    let (n, k) = (8usize, 64usize);
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
        .collect();
    let wa = arr(&w, &[n as i32, k as i32]);
    let spec = QuantSpec {
        group_size: 32,
        bits: 4,
    };
    let (q, s, b) = ops::quantize(&wa, spec).unwrap();
    assert_eq!(q.shape(), vec![n as i32, (k * 4 / 32) as i32]);
    let deq = ops::dequantize(&q, &s, &b, spec)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let scales = s.to_vec::<f32>().unwrap();
    for (i, (a, c)) in w.iter().zip(&deq).enumerate() {
        // MLX shifts the grid so that it holds zero exactly: the error is within one step.
        let step = scales[i / 32].abs();
        assert!(
            (a - c).abs() <= step * 1.0001,
            "element {i}: {a} vs {c} (step {step})"
        );
    }
    let x: Vec<f32> = (0..k).map(|i| (i as f32 * 0.1).cos()).collect();
    let xa = arr(&x, &[1, k as i32]);
    let got = ops::quantized_matmul(&xa, &q, &s, &b, spec)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let want: Vec<f32> = (0..n)
        .map(|r| {
            (0..k)
                .map(|c| x[c] as f64 * deq[r * k + c] as f64)
                .sum::<f64>() as f32
        })
        .collect();
    assert_close(&got, &want, 1e-4);
}

#[test]
fn compiled_function_equals_eager() {
    let f = |xs: &[Array]| -> mlx_engine::Result<Vec<Array>> {
        let y = ops::silu(&xs[0])?;
        Ok(vec![ops::add(&y, &xs[1])?])
    };
    let compiled = transforms::compile(Box::new(f), false).unwrap();
    let x = arr(&[-2.0, -0.5, 0.0, 1.0, 3.0], &[5]);
    let one = arr(&[1.0; 5], &[5]);
    let got = compiled
        .call(&[&x, &one])
        .unwrap()
        .remove(0)
        .to_vec::<f32>()
        .unwrap();
    let want: Vec<f32> = [-2.0f64, -0.5, 0.0, 1.0, 3.0]
        .iter()
        .map(|v| (v / (1.0 + (-v).exp()) + 1.0) as f32)
        .collect();
    assert_close(&got, &want, 1e-6);
}

/// An op failing while MLX traces a compiled function: the caller gets MLX's message for that
/// op (not mlx-c's "mlx_closure returned a non-zero value"), and the function still works for
/// inputs the op accepts.
#[test]
fn compiled_function_reports_the_failing_op() {
    let matmul = transforms::compile(
        Box::new(|xs: &[Array]| Ok(vec![ops::matmul(&xs[0], &xs[0])?])),
        false,
    )
    .unwrap();
    let err = matmul
        .call(&[&arr(&[1.0; 6], &[2, 3])])
        .expect_err("[2, 3] · [2, 3] must fail");
    let text = err.to_string();
    assert!(
        matches!(err, mlx_engine::Error::Mlx { .. }) && text.contains("matmul"),
        "{text}"
    );
    assert!(!text.contains("non-zero"), "{text}");
    let square = matmul
        .call(&[&arr(&[1.0, 2.0, 3.0, 4.0], &[2, 2])])
        .unwrap();
    assert_eq!(
        square[0].to_vec::<f32>().unwrap(),
        vec![7.0, 10.0, 15.0, 22.0]
    );
}

/// An `Err` returned by the Rust body of a compiled function reaches the caller unchanged, and
/// a panic in the body is an `Err` carrying the panic's message, not an abort.
#[test]
fn compiled_function_returns_the_body_error() {
    let refuse = transforms::compile(
        Box::new(|xs: &[Array]| {
            Err(mlx_engine::Error::InvalidArgument(format!(
                "refused {} inputs",
                xs.len()
            )))
        }),
        false,
    )
    .unwrap();
    let x = arr(&[1.0], &[1]);
    match refuse.call(&[&x, &x]) {
        Err(mlx_engine::Error::InvalidArgument(m)) => assert_eq!(m, "refused 2 inputs"),
        other => panic!("expected the body's error, got {other:?}"),
    }
    let panics = transforms::compile(
        Box::new(|_: &[Array]| -> mlx_engine::Result<Vec<Array>> { panic!("body gave up") }),
        false,
    )
    .unwrap();
    let text = panics.call(&[&x]).expect_err("a panic").to_string();
    assert!(text.contains("panicked: body gave up"), "{text}");
}

#[test]
fn async_eval_then_read() {
    let a = arr(&[1.0, 2.0], &[2]);
    let b = ops::multiply(&a, &a).unwrap();
    transforms::async_eval(&[&b]).unwrap();
    assert_eq!(b.to_vec::<f32>().unwrap(), vec![1.0, 4.0]);
}

#[test]
fn gelu_tanh_matches_the_formula_in_f64() {
    let xs = [-6.0f32, -2.0, -0.5, 0.0, 0.5, 1.0, 3.0, 10.0];
    let want: Vec<f32> = xs
        .iter()
        .map(|&x| {
            let x = x as f64;
            let z = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
            (0.5 * x * (1.0 + z.tanh())) as f32
        })
        .collect();
    // e.g. gelu(1) = 0.841192, gelu(-2) = -0.045402 (tanh form)
    assert!((want[5] - 0.841_192).abs() < 1e-6 && (want[1] + 0.045_402).abs() < 1e-6);
    let got = ops::gelu_tanh(&arr(&xs, &[8])).unwrap();
    assert_close(&got.to_vec::<f32>().unwrap(), &want, TOL);
}
