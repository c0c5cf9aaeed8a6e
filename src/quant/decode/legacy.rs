//! The legacy 32-element block formats: Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0.
//!
//! Block layouts (ggml `block_q*` structs; f16 fields little-endian):
//! - Q4_0 `[d: f16][qs: 16 B]`, value = d·(q − 8)
//! - Q4_1 `[d: f16][m: f16][qs: 16 B]`, value = d·q + m
//! - Q5_0 `[d: f16][qh: u32][qs: 16 B]`, value = d·(q − 16)
//! - Q5_1 `[d: f16][m: f16][qh: u32][qs: 16 B]`, value = d·q + m
//! - Q8_0 `[d: f16][qs: 32 × i8]`, value = d·q
//!
//! Nibble order: byte `j` of `qs` holds element `j` in its low nibble and element `j + 16` in
//! its high nibble; bit `i` of `qh` is the fifth bit of element `i`.
//!
//! The code extractors ([`codes_4bit`], [`codes_5bit`]) are shared with the conversion to
//! MLX's affine layout (`quant::affine::from_legacy`).

use crate::quant::block::f16_at;

/// Elements per legacy block.
const QK: usize = 32;

/// The 4-bit codes of a Q4 block's 16 `qs` bytes.
pub(crate) fn codes_4bit(qs: &[u8], q: &mut [u8]) {
    let (qs, q) = (&qs[..QK / 2], &mut q[..QK]); // fixes the lengths for the optimizer
    for j in 0..QK / 2 {
        q[j] = qs[j] & 0x0F;
        q[j + QK / 2] = qs[j] >> 4;
    }
}

/// The 5-bit codes of a Q5 block: 4-bit `qs` nibbles plus one high bit each from `qh`.
pub(crate) fn codes_5bit(qh: &[u8], qs: &[u8], q: &mut [u8]) {
    let high = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    codes_4bit(qs, q);
    for (i, code) in q[..QK].iter_mut().enumerate() {
        *code |= (((high >> i) & 1) as u8) << 4;
    }
}

/// Q4_0: value = d·(q − 8).
pub fn dequantize_q4_0(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    let mut q = [0u8; QK];
    codes_4bit(&block[2..18], &mut q);
    for (o, &c) in out.iter_mut().zip(&q) {
        *o = d * f32::from(c as i8 - 8);
    }
}

/// Q4_1: value = d·q + m.
pub fn dequantize_q4_1(block: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(block, 0), f16_at(block, 2));
    let mut q = [0u8; QK];
    codes_4bit(&block[4..20], &mut q);
    for (o, &c) in out.iter_mut().zip(&q) {
        *o = d * f32::from(c) + m;
    }
}

/// Q5_0: value = d·(q − 16).
pub fn dequantize_q5_0(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    let mut q = [0u8; QK];
    codes_5bit(&block[2..6], &block[6..22], &mut q);
    for (o, &c) in out.iter_mut().zip(&q) {
        *o = d * f32::from(c as i8 - 16);
    }
}

/// Q5_1: value = d·q + m.
pub fn dequantize_q5_1(block: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(block, 0), f16_at(block, 2));
    let mut q = [0u8; QK];
    codes_5bit(&block[4..8], &block[8..24], &mut q);
    for (o, &c) in out.iter_mut().zip(&q) {
        *o = d * f32::from(c) + m;
    }
}

/// Q8_0: value = d·q with q a signed byte.
pub fn dequantize_q8_0(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    for (o, &c) in out.iter_mut().zip(&block[2..34]) {
        *o = f32::from(c as i8) * d;
    }
}
