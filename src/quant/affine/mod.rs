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
//! [`dequantize_affine`] (and MLX's `dequantize`) reproduce [`crate::quant::dequantize_row`]
//! exactly: equal f32 values, the only bit difference being a zero that comes from a cancellation
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
//!
//! Files: `layout` (the format itself: [`AffineWeights`], packing, [`dequantize_affine`]),
//! `from_legacy` and `from_kquants` (one block of each GGUF format, built on the decoders'
//! code extractors in [`super::decode`]), `convert` ([`to_mlx_affine`]: dispatch and the
//! parallel walk). Dependencies run one way: convert → from_* → layout, decode.

mod convert;
mod from_kquants;
mod from_legacy;
mod layout;

pub use convert::{affine_bits, is_exact, to_mlx_affine};
pub use layout::{
    dequantize_affine, pack_codes, requantize_group_8bit, unpack_codes, AffineWeights, GROUP,
    REQUANT_MAX_ERROR_FRACTION,
};
