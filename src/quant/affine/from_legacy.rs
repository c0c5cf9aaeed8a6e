//! The legacy 32-element block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) → MLX affine groups.
//!
//! Each format maps exactly onto one MLX affine group of 32 (`w = scale·q + bias`): every
//! product `d·q` is exact in f32 (an 11-bit f16 significand times an integer below 2⁸), so the
//! affine form reproduces the reference value exactly (see [`super`] on signed zeros).

use super::layout::AffineOut;
use crate::quant::block::f16_at;
use crate::quant::decode::legacy::{codes_4bit, codes_5bit};

/// Q4_0 → MLX 4-bit group: codes as stored, scale d, bias −8·d.
pub(super) fn affine_q4_0(block: &[u8], g: AffineOut<'_>) {
    let d = f16_at(block, 0);
    codes_4bit(&block[2..18], g.q);
    (g.scales[0], g.biases[0]) = (d, -8.0 * d);
}

/// Q4_1 → MLX 4-bit group: codes as stored, scale d, bias m.
pub(super) fn affine_q4_1(block: &[u8], g: AffineOut<'_>) {
    codes_4bit(&block[4..20], g.q);
    (g.scales[0], g.biases[0]) = (f16_at(block, 0), f16_at(block, 2));
}

/// Q5_0 → MLX 5-bit group: codes as stored, scale d, bias −16·d.
pub(super) fn affine_q5_0(block: &[u8], g: AffineOut<'_>) {
    let d = f16_at(block, 0);
    codes_5bit(&block[2..6], &block[6..22], g.q);
    (g.scales[0], g.biases[0]) = (d, -16.0 * d);
}

/// Q5_1 → MLX 5-bit group: codes as stored, scale d, bias m.
pub(super) fn affine_q5_1(block: &[u8], g: AffineOut<'_>) {
    codes_5bit(&block[4..8], &block[8..24], g.q);
    (g.scales[0], g.biases[0]) = (f16_at(block, 0), f16_at(block, 2));
}

/// Q8_0 → MLX 8-bit group: code = q + 128 (unsigned), scale d, bias −128·d.
pub(super) fn affine_q8_0(block: &[u8], g: AffineOut<'_>) {
    let d = f16_at(block, 0);
    for (code, &byte) in g.q.iter_mut().zip(&block[2..34]) {
        *code = byte ^ 0x80; // (byte as i8) + 128, as an unsigned byte
    }
    (g.scales[0], g.biases[0]) = (d, -128.0 * d);
}
