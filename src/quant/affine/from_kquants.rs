//! The K-quant super-block formats (Q2_K … Q6_K) → MLX affine groups of 32.
//!
//! Q4_K and Q5_K sub-blocks are exactly MLX groups of 32 (scale d·sc, bias −dmin·m; both
//! products exact in f32). Q3_K is also exact, as 8-bit groups: sc·q is an integer in
//! [−124, 128], so a group of two sub-blocks fits 253 codes of step d. Q2_K and Q6_K
//! sub-blocks of 16 do not fit MLX groups; they are re-quantized to 8 bits (see
//! [`requantize_group_8bit`]).

use super::layout::{requantize_group_8bit, AffineOut, GROUP};
use crate::quant::block::f16_at;
use crate::quant::decode::kquants::{
    code_k4, code_q3_k, dequantize_q2_k, dequantize_q6_k, scale_min_k4, scale_q3_k, QK_K,
};

/// Q4_K/Q5_K → eight MLX groups of 32: codes as stored, scale d·sc, bias −dmin·m. Exact.
fn affine_k4(block: &[u8], qh: Option<&[u8]>, qs: &[u8], g: AffineOut<'_>) {
    let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
    for (e, code) in g.q.iter_mut().enumerate().take(QK_K) {
        *code = code_k4(qs, qh, e);
    }
    for j in 0..QK_K / GROUP {
        let (sc, m) = scale_min_k4(&block[4..16], j);
        g.scales[j] = d * f32::from(sc);
        g.biases[j] = -(dmin * f32::from(m));
    }
}

/// Q4_K → MLX 4-bit groups of 32 (exact).
pub(super) fn affine_q4_k(block: &[u8], out: AffineOut<'_>) {
    affine_k4(block, None, &block[16..144], out);
}

/// Q5_K → MLX 5-bit groups of 32 (exact).
pub(super) fn affine_q5_k(block: &[u8], out: AffineOut<'_>) {
    affine_k4(block, Some(&block[16..48]), &block[48..176], out);
}

/// Q3_K → MLX 8-bit groups of 32 (exact): n = sc·q is an integer in [−124, 128], so with
/// lo = the group's smallest n, code = n − lo ≤ 252, scale = d, bias = d·lo.
pub(super) fn affine_q3_k(block: &[u8], g: AffineOut<'_>) {
    let (hmask, qs, scales) = (&block[0..32], &block[32..96], &block[96..108]);
    let d = f16_at(block, 108);
    let n = |e: usize| i32::from(scale_q3_k(scales, e / 16)) * i32::from(code_q3_k(hmask, qs, e));
    for j in 0..QK_K / GROUP {
        let group = j * GROUP..(j + 1) * GROUP;
        let lo = group.clone().map(n).min().unwrap_or(0);
        for e in group {
            g.q[e] = (n(e) - lo) as u8;
        }
        g.scales[j] = d;
        g.biases[j] = d * lo as f32;
    }
}

/// A sub-16 format (Q2_K, Q6_K) → MLX 8-bit groups of 32 by re-quantizing the exact values.
fn affine_requantized(block: &[u8], dequantize: fn(&[u8], &mut [f32]), g: AffineOut<'_>) {
    let mut values = [0f32; QK_K];
    dequantize(block, &mut values);
    for (j, chunk) in values.chunks_exact(GROUP).enumerate() {
        let q = &mut g.q[j * GROUP..(j + 1) * GROUP];
        (g.scales[j], g.biases[j]) = requantize_group_8bit(chunk, q);
    }
}

/// Q2_K → MLX 8-bit groups of 32, re-quantized (not exact).
pub(super) fn affine_q2_k(block: &[u8], out: AffineOut<'_>) {
    affine_requantized(block, dequantize_q2_k, out);
}

/// Q6_K → MLX 8-bit groups of 32, re-quantized (not exact).
pub(super) fn affine_q6_k(block: &[u8], out: AffineOut<'_>) {
    affine_requantized(block, dequantize_q6_k, out);
}
