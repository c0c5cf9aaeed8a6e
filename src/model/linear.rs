//! [`Linear`]: the one seam every projection goes through. It owns the weight in the form the
//! chosen execution needs; the model code never knows which one runs.

use crate::error::Result;
use crate::mlx::ops::{self, QuantSpec};
use crate::mlx::Array;
use crate::quant::GgmlType;

/// How a linear layer's weight is held and multiplied.
pub enum LinearWeight {
    /// Dense float weight W [N, K]; y = x · Wᵀ with MLX's `matmul`.
    Dense { w: Array },
    /// GGUF blocks as stored in the file, [N, row_bytes] uint8, multiplied by our
    /// CPU kernel (`kernels/`).
    GgufBlocks {
        blocks: Array,
        ty: GgmlType,
        n: usize,
        k: usize,
    },
    /// MLX affine-quantized weight (the GPU path): packed [N, K·bits/32] uint32 with per-group
    /// scales and biases, multiplied by MLX's `quantized_matmul`.
    Affine {
        w: Array,
        scales: Array,
        biases: Array,
        spec: QuantSpec,
    },
}

/// y = x · Wᵀ (+ b) for x [.., K] → y [.., N].
pub struct Linear {
    /// The weight, in the execution's layout.
    pub weight: LinearWeight,
    /// Optional bias [N].
    pub bias: Option<Array>,
}

impl Linear {
    /// Applies the layer to x [.., K], giving [.., N].
    pub fn forward(&self, x: &Array) -> Result<Array> {
        let _span = tracing::trace_span!("linear").entered();
        let y = match &self.weight {
            LinearWeight::Dense { w } => ops::matmul(x, &ops::transpose(w, &[1, 0])?)?,
            LinearWeight::GgufBlocks { blocks, ty, n, k } => {
                crate::mlx::kernels::gguf_matmul(x, blocks, *ty, *n, *k)?
            }
            LinearWeight::Affine {
                w,
                scales,
                biases,
                spec,
            } => ops::quantized_matmul(x, w, scales, biases, *spec)?,
        };
        match &self.bias {
            Some(b) => ops::add(&y, b),
            None => Ok(y),
        }
    }
}
