//! The K-quant super-block formats: 256 elements per block, split into sub-blocks with their
//! own small integer scales (and mins) on top of one or two f16 super-scales.
//!
//! Block layouts (ggml `block_q*_K` structs; f16 fields little-endian):
//! - Q2_K `[scales: 16 B][qs: 64 B][d: f16][dmin: f16]`, 16 sub-blocks of 16,
//!   value = (d·sc)·q − dmin·m with `sc`/`m` the low/high nibble of `scales[e / 16]`, q 2-bit
//! - Q3_K `[hmask: 32 B][qs: 64 B][scales: 12 B][d: f16]`, 16 sub-blocks of 16,
//!   value = (d·sc)·q with sc 6-bit − 32, q = 2 low bits − (4 unless the `hmask` bit is set)
//! - Q4_K `[d: f16][dmin: f16][scales: 12 B][qs: 128 B]`, 8 sub-blocks of 32,
//!   value = (d·sc)·q − dmin·m, 6-bit `sc`/`m`, q 4-bit
//! - Q5_K `[d: f16][dmin: f16][scales: 12 B][qh: 32 B][qs: 128 B]`, as Q4_K with a fifth bit
//! - Q6_K `[ql: 128 B][qh: 64 B][scales: 16 × i8][d: f16]`, 16 sub-blocks of 16,
//!   value = (d·sc)·(q − 32), q 6-bit
//!
//! Element order inside the packed bytes: for 2-bit fields, byte `l` of each 32-byte run holds
//! four elements 32 apart (shift 0, 2, 4, 6); for nibbles, byte `l` of each 32-byte run holds
//! two elements 32 apart; for the one-bit masks, bit `b` of byte `l` belongs to element
//! `32·b + l`. The index arithmetic in each `code_*` function spells this out per element.
//!
//! The scale and code extractors are shared with the conversion to MLX's affine layout
//! (`quant::affine::from_kquants`).

use crate::quant::block::f16_at;

/// Elements per K-quant super-block.
pub const QK_K: usize = 256;

/// The 2-bit field of element `e` in a 64-byte `qs` run (Q2_K, Q3_K low bits).
fn two_bits(qs: &[u8], e: usize) -> u8 {
    let (half, shift, l) = (e / 128, (e % 128) / 32, e % 32);
    (qs[half * 32 + l] >> (2 * shift)) & 3
}

/// The nibble of element `e` in a 128-byte `qs` run (Q4_K, Q5_K).
fn nibble(qs: &[u8], e: usize) -> u8 {
    let (chunk, high, l) = (e / 64, (e / 32) % 2, e % 32);
    (qs[chunk * 32 + l] >> (4 * high)) & 0x0F
}

/// The mask bit of element `e` in a 32-byte bit-plane run (Q3_K `hmask`, Q5_K `qh`).
fn mask_bit(mask: &[u8], e: usize) -> u8 {
    (mask[e % 32] >> (e / 32)) & 1
}

/// The 6-bit (scale, min) pair of sub-block `j` (0..8) in Q4_K/Q5_K's 12 packed bytes:
/// the first four pairs are the low 6 bits of bytes 0..4 / 4..8; the last four take a nibble
/// from bytes 8..12 and their top two bits from the top of bytes 0..4 / 4..8.
pub(crate) fn scale_min_k4(s: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        let sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
        let m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        (sc, m)
    }
}

/// The signed 6-bit scale of sub-block `i` (0..16) in Q3_K's 12 packed bytes: low nibble from
/// bytes 0..8 (low nibbles first, then high), top two bits from bytes 8..12, minus 32.
pub(crate) fn scale_q3_k(s: &[u8], i: usize) -> i8 {
    let low = if i < 8 { s[i] & 0x0F } else { s[i - 8] >> 4 };
    let high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
    (low | (high << 4)) as i8 - 32
}

/// Q2_K: value = (d·sc)·q − dmin·m per sub-block of 16.
pub fn dequantize_q2_k(block: &[u8], out: &mut [f32]) {
    let (scales, qs) = (&block[0..16], &block[16..80]);
    let (d, dmin) = (f16_at(block, 80), f16_at(block, 82));
    for (sub, (chunk, &s)) in out[..QK_K].chunks_exact_mut(16).zip(scales).enumerate() {
        let dl = d * f32::from(s & 0x0F);
        let ml = dmin * f32::from(s >> 4);
        for (i, o) in chunk.iter_mut().enumerate() {
            *o = dl * f32::from(two_bits(qs, 16 * sub + i)) - ml;
        }
    }
}

/// The signed Q3_K integer of element `e`: low 2 bits minus 4 where the `hmask` bit is clear.
pub(crate) fn code_q3_k(hmask: &[u8], qs: &[u8], e: usize) -> i8 {
    two_bits(qs, e) as i8 - 4 * (1 - mask_bit(hmask, e) as i8)
}

/// Q3_K: value = (d·sc)·q per sub-block of 16.
pub fn dequantize_q3_k(block: &[u8], out: &mut [f32]) {
    let (hmask, qs, scales) = (&block[0..32], &block[32..96], &block[96..108]);
    let d = f16_at(block, 108);
    for (sub, chunk) in out[..QK_K].chunks_exact_mut(16).enumerate() {
        let dl = d * f32::from(scale_q3_k(scales, sub));
        for (i, o) in chunk.iter_mut().enumerate() {
            *o = dl * f32::from(code_q3_k(hmask, qs, 16 * sub + i));
        }
    }
}

/// The unsigned 4- or 5-bit code of element `e` of a Q4_K (`qh` = None) or Q5_K block.
pub(crate) fn code_k4(qs: &[u8], qh: Option<&[u8]>, e: usize) -> u8 {
    nibble(qs, e) | qh.map_or(0, |qh| mask_bit(qh, e) << 4)
}

/// Q4_K and Q5_K share everything but the fifth bit.
fn dequantize_k4(block: &[u8], qh: Option<&[u8]>, qs: &[u8], out: &mut [f32]) {
    let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
    let scales = &block[4..16];
    for (sub, chunk) in out[..QK_K].chunks_exact_mut(32).enumerate() {
        let (sc, m) = scale_min_k4(scales, sub);
        let dl = d * f32::from(sc);
        let ml = dmin * f32::from(m);
        for (i, o) in chunk.iter_mut().enumerate() {
            *o = dl * f32::from(code_k4(qs, qh, 32 * sub + i)) - ml;
        }
    }
}

/// Q4_K: value = (d·sc)·q − dmin·m per sub-block of 32.
pub fn dequantize_q4_k(block: &[u8], out: &mut [f32]) {
    dequantize_k4(block, None, &block[16..144], out);
}

/// Q5_K: value = (d·sc)·q − dmin·m per sub-block of 32, q 5-bit.
pub fn dequantize_q5_k(block: &[u8], out: &mut [f32]) {
    dequantize_k4(block, Some(&block[16..48]), &block[48..176], out);
}

/// The signed Q6_K integer of element `e`: 4 low bits from `ql`, 2 high bits from `qh`, − 32.
fn code_q6_k(ql: &[u8], qh: &[u8], e: usize) -> i8 {
    let (half, r) = (e / 128, e % 128);
    let low = (ql[half * 64 + r % 64] >> (4 * (r / 64))) & 0x0F;
    let high = (qh[half * 32 + r % 32] >> (2 * (r / 32))) & 3;
    (low | (high << 4)) as i8 - 32
}

/// Q6_K: value = (d·sc)·q per sub-block of 16.
pub fn dequantize_q6_k(block: &[u8], out: &mut [f32]) {
    let (ql, qh, scales) = (&block[0..128], &block[128..192], &block[192..208]);
    let d = f16_at(block, 208);
    for (sub, (chunk, &s)) in out[..QK_K].chunks_exact_mut(16).zip(scales).enumerate() {
        let dl = d * f32::from(s as i8);
        for (i, o) in chunk.iter_mut().enumerate() {
            *o = dl * f32::from(code_q6_k(ql, qh, 16 * sub + i));
        }
    }
}
