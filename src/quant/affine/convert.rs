//! GGUF blocks → MLX's affine layout ([`to_mlx_affine`]): the per-type dispatch and the
//! parallel walk over a tensor's blocks. The per-format arithmetic is in [`super::from_legacy`]
//! and [`super::from_kquants`].

use super::layout::{pack_codes, AffineOut, AffineWeights, GROUP};
use super::{from_kquants, from_legacy};
use crate::error::{Error, Result};
use crate::ggml_type::GgmlType;
use crate::quant::block::{check_row, unsupported};
use crate::quant::decode::kquants::QK_K;

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

/// True when [`to_mlx_affine`] of `ty` reproduces [`crate::quant::dequantize_row`] exactly
/// (equal values; see [`super`] on signed zeros); false for the re-quantized Q2_K and Q6_K.
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
    let mut q = [0u8; QK_K];
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
        Q4_0 => from_legacy::affine_q4_0(block, out),
        Q4_1 => from_legacy::affine_q4_1(block, out),
        Q5_0 => from_legacy::affine_q5_0(block, out),
        Q5_1 => from_legacy::affine_q5_1(block, out),
        Q8_0 => from_legacy::affine_q8_0(block, out),
        Q2_K => from_kquants::affine_q2_k(block, out),
        Q3_K => from_kquants::affine_q3_k(block, out),
        Q4_K => from_kquants::affine_q4_k(block, out),
        Q5_K => from_kquants::affine_q5_k(block, out),
        Q6_K => from_kquants::affine_q6_k(block, out),
        _ => debug_assert!(false, "{ty} has no affine conversion"),
    }
}
