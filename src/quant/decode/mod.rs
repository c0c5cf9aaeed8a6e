//! The scalar reference decoders ("twins") of the GGUF block formats: [`dequantize_row`] and
//! one file per format family, [`float`] (F32, F16, BF16), [`legacy`] (Q4_0, Q4_1, Q5_0, Q5_1,
//! Q8_0) and [`kquants`] (Q2_K … Q6_K).
//!
//! Plain loops written to be obviously right; `tests/quant_reference.rs` checks each bit for
//! bit against the `gguf` Python package (`gguf.quants.dequantize`). Nothing here knows about
//! MLX's affine layout: the conversions in [`super::affine`] build on these files, not the
//! other way round.

pub mod float;
pub mod kquants;
pub mod legacy;

use crate::error::Result;
use crate::ggml_type::GgmlType;
use crate::quant::block::{check_row, unsupported};

/// True for the types [`dequantize_row`] implements.
pub fn can_dequantize(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q2_K | Q3_K | Q4_K | Q5_K | Q6_K
    )
}

/// Dequantizes the blocks in `src` (one or more whole rows of `ty`) into `dst`, which must have
/// exactly as many elements as the blocks hold.
///
/// This is the scalar reference ("twin") of every supported format: the GPU and CPU fast paths
/// are tested against it, and it is tested bit for bit against `gguf.quants.dequantize`.
/// Unsupported types give [`crate::Error::Unsupported`] naming the type.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    if !can_dequantize(ty) {
        return Err(unsupported(ty, "no dequantizer"));
    }
    check_row(ty, src, dst.len())?;
    let block_bytes = ty.type_size() as usize;
    let block_elems = ty.block_size() as usize;
    let blocks = src.chunks_exact(block_bytes);
    for (block, out) in blocks.zip(dst.chunks_exact_mut(block_elems)) {
        dequantize_block(ty, block, out);
    }
    Ok(())
}

/// Dequantizes one block of a supported type (`block` and `out` sized by the caller).
fn dequantize_block(ty: GgmlType, block: &[u8], out: &mut [f32]) {
    use GgmlType::*;
    match ty {
        F32 => float::dequantize_f32(block, out),
        F16 => float::dequantize_f16(block, out),
        BF16 => float::dequantize_bf16(block, out),
        Q4_0 => legacy::dequantize_q4_0(block, out),
        Q4_1 => legacy::dequantize_q4_1(block, out),
        Q5_0 => legacy::dequantize_q5_0(block, out),
        Q5_1 => legacy::dequantize_q5_1(block, out),
        Q8_0 => legacy::dequantize_q8_0(block, out),
        Q2_K => kquants::dequantize_q2_k(block, out),
        Q3_K => kquants::dequantize_q3_k(block, out),
        Q4_K => kquants::dequantize_q4_k(block, out),
        Q5_K => kquants::dequantize_q5_k(block, out),
        Q6_K => kquants::dequantize_q6_k(block, out),
        _ => unreachable_type(ty),
    }
}

/// Types filtered out by [`can_dequantize`] never reach the per-block code; if one did, its
/// output stays zero rather than panicking.
fn unreachable_type(ty: GgmlType) {
    debug_assert!(false, "{ty} reached a block decoder");
}
