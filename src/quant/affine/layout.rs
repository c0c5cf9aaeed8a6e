//! MLX's affine quantized layout itself: the weight type, the packing of codes into u32 words
//! and back, the scalar twin of MLX's `dequantize`, and the 8-bit re-quantization of a group.
//! Independent of the GGUF formats (see the module docs of [`super`] for the layout).

/// The group size [`super::to_mlx_affine`] produces (MLX's smallest affine group).
pub const GROUP: usize = 32;

/// Bound on the re-quantization error of Q2_K and Q6_K: |exact − affine| ≤ this × (max − min
/// of the group's 32 exact values), plus f32 rounding. Half a step of 255 steps.
pub const REQUANT_MAX_ERROR_FRACTION: f32 = 1.0 / 510.0;

/// A weight matrix in MLX's affine quantized layout (see [`super`]).
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
pub(super) struct AffineOut<'a> {
    /// One unsigned code per element of the block.
    pub q: &'a mut [u8],
    /// One scale per group of 32 in the block.
    pub scales: &'a mut [f32],
    /// One bias per group of 32 in the block.
    pub biases: &'a mut [f32],
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
