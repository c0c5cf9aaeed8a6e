//! GGUF/ggml tensor formats: the type table ([`GgmlType`]), a scalar reference dequantizer per
//! block format ([`dequantize_row`]), and the conversion to MLX's affine quantized layout
//! ([`to_mlx_affine`]) used by the GPU path.
//!
//! One file per block-format family: [`float`] (F32, F16, BF16), [`legacy`] (Q4_0, Q4_1, Q5_0,
//! Q5_1, Q8_0), [`kquants`] (Q2_K … Q6_K), and [`affine`] (MLX's own format). The
//! dequantizers are plain loops written to be obviously right; `tests/quant_reference.rs`
//! checks each bit for bit against the `gguf` Python package (`gguf.quants.dequantize`).

pub mod affine;
pub mod float;
pub mod kquants;
pub mod legacy;

pub use affine::{dequantize_affine, to_mlx_affine, AffineWeights};

use crate::error::{Error, Result};

/// Declares [`GgmlType`] from one table row per type: variant, ggml id, name, elements per
/// block, bytes per block. Ids and sizes are `gguf.GGMLQuantizationType` and
/// `gguf.GGML_QUANT_SIZES` (gguf-py 0.19); a test compares the table against that package.
macro_rules! ggml_types {
    ($($variant:ident = $id:literal, $name:literal, $block:literal, $size:literal;)*) => {
        /// A ggml tensor element type, as stored in a GGUF tensor-info record.
        ///
        /// Every id the `gguf` package knows is recognised, so an unsupported one is reported
        /// by name ("IQ2_XXS is not supported") rather than as an unknown number.
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum GgmlType {
            $(
                #[doc = concat!("`", $name, "`: ggml type id ", $id, ", ", $block,
                    " elements in ", $size, " bytes per block.")]
                $variant,
            )*
        }

        impl GgmlType {
            /// Every recognised type, in id order.
            pub const ALL: &'static [GgmlType] = &[$(GgmlType::$variant),*];

            /// The type with ggml id `id`, or `None` for an id ggml never had or has removed.
            pub fn from_id(id: u32) -> Option<GgmlType> {
                match id {
                    $($id => Some(GgmlType::$variant),)*
                    _ => None,
                }
            }

            /// The ggml type id (the number stored in GGUF files).
            pub fn id(self) -> u32 {
                match self { $(GgmlType::$variant => $id,)* }
            }

            /// The ggml name, e.g. `"Q4_K"`.
            pub fn name(self) -> &'static str {
                match self { $(GgmlType::$variant => $name,)* }
            }

            /// Elements per block (1 for the plain scalar types).
            pub fn block_size(self) -> u64 {
                match self { $(GgmlType::$variant => $block,)* }
            }

            /// Bytes per block.
            pub fn type_size(self) -> u64 {
                match self { $(GgmlType::$variant => $size,)* }
            }
        }
    };
}

ggml_types! {
    F32 = 0, "F32", 1, 4;
    F16 = 1, "F16", 1, 2;
    Q4_0 = 2, "Q4_0", 32, 18;
    Q4_1 = 3, "Q4_1", 32, 20;
    Q5_0 = 6, "Q5_0", 32, 22;
    Q5_1 = 7, "Q5_1", 32, 24;
    Q8_0 = 8, "Q8_0", 32, 34;
    Q8_1 = 9, "Q8_1", 32, 40;
    Q2_K = 10, "Q2_K", 256, 84;
    Q3_K = 11, "Q3_K", 256, 110;
    Q4_K = 12, "Q4_K", 256, 144;
    Q5_K = 13, "Q5_K", 256, 176;
    Q6_K = 14, "Q6_K", 256, 210;
    Q8_K = 15, "Q8_K", 256, 292;
    IQ2_XXS = 16, "IQ2_XXS", 256, 66;
    IQ2_XS = 17, "IQ2_XS", 256, 74;
    IQ3_XXS = 18, "IQ3_XXS", 256, 98;
    IQ1_S = 19, "IQ1_S", 256, 50;
    IQ4_NL = 20, "IQ4_NL", 32, 18;
    IQ3_S = 21, "IQ3_S", 256, 110;
    IQ2_S = 22, "IQ2_S", 256, 82;
    IQ4_XS = 23, "IQ4_XS", 256, 136;
    I8 = 24, "I8", 1, 1;
    I16 = 25, "I16", 1, 2;
    I32 = 26, "I32", 1, 4;
    I64 = 27, "I64", 1, 8;
    F64 = 28, "F64", 1, 8;
    IQ1_M = 29, "IQ1_M", 256, 56;
    BF16 = 30, "BF16", 1, 2;
    TQ1_0 = 34, "TQ1_0", 256, 54;
    TQ2_0 = 35, "TQ2_0", 256, 66;
    MXFP4 = 39, "MXFP4", 32, 17;
    NVFP4 = 40, "NVFP4", 64, 36;
    Q1_0 = 41, "Q1_0", 128, 18;
}

impl GgmlType {
    /// Bytes in a row of `n` elements, or `None` when `n` is not a whole number of blocks or
    /// the size overflows.
    pub fn row_bytes(self, n: u64) -> Option<u64> {
        if !n.is_multiple_of(self.block_size()) {
            return None;
        }
        (n / self.block_size()).checked_mul(self.type_size())
    }

    /// True for the types [`dequantize_row`] implements.
    pub fn can_dequantize(self) -> bool {
        use GgmlType::*;
        matches!(
            self,
            F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q2_K | Q3_K | Q4_K | Q5_K | Q6_K
        )
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The error for a type this crate recognises but cannot decode.
pub(crate) fn unsupported(ty: GgmlType, what: &str) -> Error {
    Error::Unsupported(format!("ggml type {ty} is not supported ({what})"))
}

/// Checks that `src` holds whole blocks of `ty` and `dst` has room for exactly their
/// elements; returns the block count.
fn check_row(ty: GgmlType, src: &[u8], dst_len: usize) -> Result<usize> {
    let block_bytes = ty.type_size() as usize;
    let block_elems = ty.block_size() as usize;
    if !src.len().is_multiple_of(block_bytes) {
        return Err(Error::InvalidArgument(format!(
            "{ty}: {} bytes is not a whole number of {block_bytes}-byte blocks",
            src.len()
        )));
    }
    let blocks = src.len() / block_bytes;
    if blocks.checked_mul(block_elems) != Some(dst_len) {
        return Err(Error::InvalidArgument(format!(
            "{ty}: {blocks} blocks hold {} elements, the output has room for {dst_len}",
            blocks.saturating_mul(block_elems)
        )));
    }
    Ok(blocks)
}

/// Dequantizes the blocks in `src` (one or more whole rows of `ty`) into `dst`, which must have
/// exactly as many elements as the blocks hold.
///
/// This is the scalar reference ("twin") of every supported format: the GPU and CPU fast paths
/// are tested against it, and it is tested bit for bit against `gguf.quants.dequantize`.
/// Unsupported types give [`Error::Unsupported`] naming the type.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    if !ty.can_dequantize() {
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

/// Types filtered out by [`GgmlType::can_dequantize`] never reach the per-block code; if one
/// did, its output stays zero rather than panicking.
fn unreachable_type(ty: GgmlType) {
    debug_assert!(false, "{ty} reached a block decoder");
}

/// The little-endian f16 at `bytes[at..at + 2]`, widened to f32 (exact).
pub(crate) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}
