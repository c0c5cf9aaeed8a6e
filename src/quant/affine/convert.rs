//! MLX's affine quantized layout, and the conversion of GGUF blocks into it.
//!
//! MLX (`mx.quantize(w, group_size, bits, mode="affine")`, checked against MLX 0.32 by
//! `tests/quant_reference.rs`) stores a weight `[rows, cols]` as
//! - `packed: u32 [rows, cols·bits/32]`: each row's unsigned `bits`-bit codes as one
//!   little-endian bit stream, element `i` in stream bits `i·bits .. (i+1)·bits`, least
//!   significant bit first, word `k` holding stream bits `32k .. 32k+32`. For bits 2, 4 and 8
//!   no code crosses a word; for bits 3, 5 and 6 codes do cross words (MLX's kernels read
//!   them as 8 codes per 3 bytes, 8 per 5 bytes and 4 per 3 bytes, the same stream). A group
//!   of 32 codes always fills exactly `bits` whole words.
//! - `scales`, `biases: [rows, cols/group_size]`, and `w = scale·q + bias` per group.
//!
//! [`to_mlx_affine`] uses groups of 32 and f32 scales and biases. For Q4_0, Q4_1, Q5_0, Q5_1,
//! Q8_0, Q3_K, Q4_K and Q5_K every scale, bias and product `scale·q` is exact in f32, so
//! [`dequantize_affine`] (and MLX's `dequantize`) reproduce [`super::dequantize_row`] exactly:
//! equal f32 values, the only bit difference being a zero that comes from a cancellation
//! (Q4_0's `d·8 + (−8d)` is +0.0 where the reference `d·0` may be −0.0). Casting the scales or
//! biases to f16/bf16 gives exactness up (`d·sc` needs 17 significant bits).
//!
//! Q2_K and Q6_K have sub-blocks of 16, smaller than MLX's smallest group (32), so a group
//! mixes two scales; they are re-quantized ([`requantize_group_8bit`]) to 8 bits per group of
//! 32 over the group's [min, max], an error of at most [`REQUANT_MAX_ERROR_FRACTION`] of the
//! group's range (about 1/8 of the larger Q6_K step, i.e. a quarter of Q6_K's own rounding
//! error). Measured on Qwen2.5-Coder-0.5B Q4_K_M (all 12 Q6_K tensors, 52M weights): max
//! |error| 2.7e-3, max error / group range 0.00196 (= the bound), RMS error / RMS weight
//! 4.7e-3. An exact alternative, not taken: split the matrix into even and odd sub-blocks, two
//! 6-bit g32 matrices whose other half is the zero code 32, and add two matmuls.

use super::{check_row, kquants, legacy, unsupported, GgmlType};
use crate::error::{Error, Result};

/// The group size [`to_mlx_affine`] produces (MLX's smallest affine group).
pub const GROUP: usize = 32;

/// Bound on the re-quantization error of Q2_K and Q6_K: |exact − affine| ≤ this × (max − min
/// of the group's 32 exact values), plus f32 rounding. Half a step of 255 steps.
pub const REQUANT_MAX_ERROR_FRACTION: f32 = 1.0 / 510.0;

/// A weight matrix in MLX's affine quantized layout (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct AffineWeights {
    /// Bits per code: 2, 3, 4, 5, 6 or 8.
    pub bits: u32,
    /// Elements sharing one scale and bias (a multiple of 32).
    pub group_size: u32,
    /// `[rows, cols·bits/32]`: the codes, packed as MLX packs them.
    pub packed: Vec<u32>,
    /// `[rows, cols/group_size]`: per-group scales.
    pub scales: Vec<f32>,
    /// `[rows, cols/group_size]`: per-group biases.
    pub biases: Vec<f32>,
}

/// Where one GGUF block's affine form goes: a code per element, a (scale, bias) per group.
pub(crate) struct AffineOut<'a> {
    /// One unsigned code per element of the block.
    pub q: &'a mut [u8],
    /// One scale per group of 32 in the block.
    pub scales: &'a mut [f32],
    /// One bias per group of 32 in the block.
    pub biases: &'a mut [f32],
}

/// The MLX bits `ty` converts to with [`to_mlx_affine`], or `Unsupported`.
pub fn affine_bits(ty: GgmlType) -> Result<u32> {
    use GgmlType::*;
    match ty {
        Q4_0 | Q4_1 | Q4_K => Ok(4),
        Q5_0 | Q5_1 | Q5_K => Ok(5),
        Q8_0 | Q2_K | Q3_K | Q6_K => Ok(8),
        _ => Err(unsupported(ty, "no MLX affine conversion")),
    }
}

/// True when [`to_mlx_affine`] of `ty` reproduces [`super::dequantize_row`] exactly (equal
/// values; see the module docs on signed zeros); false for the re-quantized Q2_K and Q6_K.
pub fn is_exact(ty: GgmlType) -> bool {
    affine_bits(ty).is_ok() && !matches!(ty, GgmlType::Q2_K | GgmlType::Q6_K)
}

/// Converts `rows` rows of `cols` elements of GGUF type `ty` (`src` = the tensor's bytes) to
/// MLX's affine layout with groups of 32 and f32 scales and biases.
///
/// Works block by block, in parallel over the available cores: no f32 copy of the weight is
/// made (only one 256-element scratch block per thread for Q2_K/Q6_K).
pub fn to_mlx_affine(ty: GgmlType, src: &[u8], rows: usize, cols: usize) -> Result<AffineWeights> {
    let bits = affine_bits(ty)?;
    let n = rows
        .checked_mul(cols)
        .ok_or_else(|| Error::InvalidArgument(format!("{ty}: {rows} × {cols} overflows")))?;
    check_row(ty, src, n)?;
    let mut out = AffineWeights {
        bits,
        group_size: GROUP as u32,
        packed: vec![0; n / 32 * bits as usize],
        scales: vec![0.0; n / GROUP],
        biases: vec![0.0; n / GROUP],
    };
    convert_parallel(ty, src, &mut out);
    Ok(out)
}

/// Splits the blocks into one contiguous run per thread; each run writes its own slices.
fn convert_parallel(ty: GgmlType, src: &[u8], out: &mut AffineWeights) {
    let block_bytes = ty.type_size() as usize;
    let block_elems = ty.block_size() as usize;
    let blocks = src.len() / block_bytes;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(16));
    let per_thread = blocks.div_ceil(threads).max(1024);
    let words_per_block = block_elems / 32 * out.bits as usize;
    let groups_per_block = block_elems / GROUP;
    let bits = out.bits;
    std::thread::scope(|scope| {
        let runs = src
            .chunks(per_thread * block_bytes)
            .zip(out.packed.chunks_mut(per_thread * words_per_block))
            .zip(out.scales.chunks_mut(per_thread * groups_per_block))
            .zip(out.biases.chunks_mut(per_thread * groups_per_block));
        for (((src, packed), scales), biases) in runs {
            scope.spawn(move || convert_run(ty, bits, src, packed, scales, biases));
        }
    });
}

/// Converts a run of whole blocks, packing each block's codes as soon as they are made.
fn convert_run(
    ty: GgmlType,
    bits: u32,
    src: &[u8],
    packed: &mut [u32],
    scales: &mut [f32],
    biases: &mut [f32],
) {
    let block_elems = ty.block_size() as usize;
    let words_per_block = block_elems / 32 * bits as usize;
    let groups_per_block = block_elems / GROUP;
    let mut q = [0u8; kquants::QK_K];
    let blocks = src
        .chunks_exact(ty.type_size() as usize)
        .zip(packed.chunks_exact_mut(words_per_block))
        .zip(scales.chunks_exact_mut(groups_per_block))
        .zip(biases.chunks_exact_mut(groups_per_block));
    for (((block, words), scales), biases) in blocks {
        let q = &mut q[..block_elems];
        convert_block(ty, block, AffineOut { q, scales, biases });
        pack_codes(q, bits, words);
    }
}

/// One block of a type [`affine_bits`] accepts.
fn convert_block(ty: GgmlType, block: &[u8], out: AffineOut<'_>) {
    use GgmlType::*;
    match ty {
        Q4_0 => legacy::affine_q4_0(block, out),
        Q4_1 => legacy::affine_q4_1(block, out),
        Q5_0 => legacy::affine_q5_0(block, out),
        Q5_1 => legacy::affine_q5_1(block, out),
        Q8_0 => legacy::affine_q8_0(block, out),
        Q2_K => kquants::affine_q2_k(block, out),
        Q3_K => kquants::affine_q3_k(block, out),
        Q4_K => kquants::affine_q4_k(block, out),
        Q5_K => kquants::affine_q5_k(block, out),
        Q6_K => kquants::affine_q6_k(block, out),
        _ => debug_assert!(false, "{ty} has no affine conversion"),
    }
}

/// Re-quantizes a group of exact values to 8-bit codes over [min, max]; returns
/// (scale, bias). A constant group gets scale 0 and bias = the value (exact).
pub fn requantize_group_8bit(values: &[f32], q: &mut [u8]) -> (f32, f32) {
    let (lo, hi) = values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    if hi <= lo {
        q.fill(0);
        return (0.0, if lo.is_finite() { lo } else { 0.0 });
    }
    let scale = (hi - lo) / 255.0;
    let inverse = 255.0 / (hi - lo);
    for (code, &v) in q.iter_mut().zip(values) {
        // Round half up (v ≥ lo, so the product is ≥ 0); `as u8` saturates and maps NaN to 0.
        *code = ((v - lo) * inverse + 0.5).min(255.0) as u8;
    }
    (scale, lo)
}

/// Packs `codes` (each below 2^bits) into `words` as MLX does: one little-endian,
/// least-significant-bit-first stream. `codes` must be whole groups of 32 codes and `words`
/// exactly `codes.len()·bits/32` long.
pub fn pack_codes(codes: &[u8], bits: u32, words: &mut [u32]) {
    match bits {
        8 => pack_whole_words::<4>(codes, bits, words),
        4 => pack_whole_words::<8>(codes, bits, words),
        2 => pack_whole_words::<16>(codes, bits, words),
        3 => pack_eights::<3>(codes, words),
        5 => pack_eights::<5>(codes, words),
        6 => pack_eights::<6>(codes, words),
        _ => debug_assert!(false, "no MLX packing for {bits} bits"),
    }
}

/// [`pack_codes`] for 3, 5 and 6 bits: each run of 8 codes is exactly `bits` bytes of the
/// stream. Each run is packed into a u64 and stored whole at byte `run·bits`; the next run
/// overwrites its zero high bytes.
fn pack_eights<const BITS: usize>(codes: &[u8], words: &mut [u32]) {
    let mut stream = [0u8; 3 * 6 + 8]; // room for the widest run (6 bits) at its offset
    for (words, codes) in words.chunks_exact_mut(BITS).zip(codes.chunks_exact(32)) {
        for (run, eight) in codes.chunks_exact(8).enumerate() {
            let v = eight
                .iter()
                .rev()
                .fold(0u64, |acc, &c| (acc << BITS) | u64::from(c));
            let at = run * BITS;
            stream[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        for (i, word) in words.iter_mut().enumerate() {
            let b = &stream[4 * i..4 * i + 4];
            *word = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
    }
}

/// [`pack_codes`] for widths that divide 32: `N` codes fill each word exactly.
fn pack_whole_words<const N: usize>(codes: &[u8], bits: u32, words: &mut [u32]) {
    for (word, chunk) in words.iter_mut().zip(codes.chunks_exact(N)) {
        *word = chunk
            .iter()
            .rev()
            .fold(0u32, |acc, &c| (acc << bits) | u32::from(c));
    }
}

/// The inverse of [`pack_codes`]: fills `codes` from the bit stream in `words`.
pub fn unpack_codes(words: &[u32], bits: u32, codes: &mut [u8]) {
    let mask = (1u64 << bits) - 1;
    let mut words = words.iter();
    let (mut acc, mut held) = (0u64, 0u32);
    for code in codes {
        if held < bits {
            acc |= u64::from(words.next().copied().unwrap_or(0)) << held;
            held += 32;
        }
        *code = (acc & mask) as u8;
        acc >>= bits;
        held -= bits;
    }
}

/// The scalar twin of MLX's `dequantize` (affine mode): `[rows, cols]` f32 values
/// `scale·q + bias`. Groups missing from `w` (inconsistent sizes) come out as zeros.
pub fn dequantize_affine(w: &AffineWeights, rows: usize, cols: usize) -> Vec<f32> {
    let group = w.group_size as usize;
    let mut out = vec![0f32; rows.saturating_mul(cols)];
    if group == 0 || !group.is_multiple_of(32) || !matches!(w.bits, 2..=6 | 8) {
        return out;
    }
    let words_per_group = group / 32 * w.bits as usize;
    let mut q = vec![0u8; group];
    let groups = out
        .chunks_exact_mut(group)
        .zip(w.packed.chunks_exact(words_per_group))
        .zip(w.scales.iter().zip(&w.biases));
    for ((values, words), (&scale, &bias)) in groups {
        unpack_codes(words, w.bits, &mut q);
        for (v, &code) in values.iter_mut().zip(&q) {
            *v = scale * f32::from(code) + bias;
        }
    }
    out
}
