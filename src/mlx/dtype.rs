//! MLX element types.

use crate::error::{Error, Result};

/// An MLX element type (mirrors `mlx_dtype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F16,
    F32,
    F64,
    BF16,
    C64,
}

impl Dtype {
    /// The mlx-c enum value.
    pub(crate) fn to_raw(self) -> mlx_sys::mlx_dtype {
        use mlx_sys::*;
        match self {
            Dtype::Bool => MLX_BOOL,
            Dtype::U8 => MLX_UINT8,
            Dtype::U16 => MLX_UINT16,
            Dtype::U32 => MLX_UINT32,
            Dtype::U64 => MLX_UINT64,
            Dtype::I8 => MLX_INT8,
            Dtype::I16 => MLX_INT16,
            Dtype::I32 => MLX_INT32,
            Dtype::I64 => MLX_INT64,
            Dtype::F16 => MLX_FLOAT16,
            Dtype::F32 => MLX_FLOAT32,
            Dtype::F64 => MLX_FLOAT64,
            Dtype::BF16 => MLX_BFLOAT16,
            Dtype::C64 => MLX_COMPLEX64,
        }
    }

    /// From the mlx-c enum value.
    pub(crate) fn from_raw(raw: mlx_sys::mlx_dtype) -> Result<Dtype> {
        use mlx_sys::*;
        Ok(match raw {
            MLX_BOOL => Dtype::Bool,
            MLX_UINT8 => Dtype::U8,
            MLX_UINT16 => Dtype::U16,
            MLX_UINT32 => Dtype::U32,
            MLX_UINT64 => Dtype::U64,
            MLX_INT8 => Dtype::I8,
            MLX_INT16 => Dtype::I16,
            MLX_INT32 => Dtype::I32,
            MLX_INT64 => Dtype::I64,
            MLX_FLOAT16 => Dtype::F16,
            MLX_FLOAT32 => Dtype::F32,
            MLX_FLOAT64 => Dtype::F64,
            MLX_BFLOAT16 => Dtype::BF16,
            MLX_COMPLEX64 => Dtype::C64,
            other => {
                return Err(Error::Unsupported(format!(
                    "mlx dtype {other} (an mlx_dtype value mlx-engine does not know)"
                )))
            }
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 => 1,
            Dtype::U16 | Dtype::I16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::U32 | Dtype::I32 | Dtype::F32 => 4,
            Dtype::U64 | Dtype::I64 | Dtype::F64 | Dtype::C64 => 8,
        }
    }

    /// True for the floating-point types.
    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F16 | Dtype::F32 | Dtype::F64 | Dtype::BF16)
    }
}

#[cfg(test)]
mod tests {
    use super::Dtype;

    /// Every dtype round-trips through its mlx-c value, and a value past the known ones is an
    /// error naming it, not some other dtype.
    #[test]
    fn raw_values_round_trip_and_unknown_ones_fail() {
        use Dtype::*;
        let all = [
            Bool, U8, U16, U32, U64, I8, I16, I32, I64, F16, F32, F64, BF16, C64,
        ];
        for dtype in all {
            assert_eq!(Dtype::from_raw(dtype.to_raw()).unwrap(), dtype);
        }
        let unknown = all.iter().map(|d| d.to_raw()).max().unwrap() + 1;
        let err = Dtype::from_raw(unknown).unwrap_err().to_string();
        assert!(err.contains(&format!("mlx dtype {unknown}")), "{err}");
    }
}
