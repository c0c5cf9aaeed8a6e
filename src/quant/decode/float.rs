//! The plain float types: F32, F16 and BF16 (one element per "block"). Widening to f32 is exact.

/// F32: little-endian IEEE single, copied bit for bit.
pub fn dequantize_f32(src: &[u8], dst: &mut [f32]) {
    for (out, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *out = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// F16: little-endian IEEE half.
pub fn dequantize_f16(src: &[u8], dst: &mut [f32]) {
    for (out, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *out = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
    }
}

/// BF16: the upper 16 bits of an f32.
pub fn dequantize_bf16(src: &[u8], dst: &mut [f32]) {
    for (out, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *out = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
    }
}
