//! Rotary position embedding and its scaled variants (linear, llama3, YaRN), reduced to what
//! both attention paths take: a position multiplier, optional per-pair inverse frequencies and
//! a magnitude factor of the rotated vectors.
//!
//! Pair j of a head of dimension d turns at position t by t · s · f_j, where f_j is
//! base^(−2j/d) for plain RoPE. The variants, as llama.cpp (ggml's `rope_yarn`) and HF's
//! `modeling_rope_utils` define them:
//! - linear (factor k): s = 1/k;
//! - llama3: f_j divided by a per-pair factor (`rope_freqs.weight` in GGUF; computed from
//!   `factor`, `low_freq_factor`, `high_freq_factor` and the original context for HF): 1 for
//!   short wavelengths, k for long ones, a blend between;
//! - YaRN (factor k, original context n, β_fast 32, β_slow 1): f_j · (r_j + (1 − r_j)/k) with
//!   r_j a ramp from 1 (pairs below the "fast" correction dimension: extrapolated) to 0 (above
//!   the "slow" one: interpolated), and the rotated q and k both scaled by 1 + 0.1 ln k, which
//!   multiplies the attention logits by its square.

use crate::error::{Error, Result};
use crate::mlx::Array;
use std::path::Path;

/// The RoPE scaling a model was trained with.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Positions divided by `factor`.
    Linear {
        /// Context extension factor k.
        factor: f32,
    },
    /// Llama 3's per-pair factors, computed from these constants (HF `rope_scaling`); GGUF
    /// files carry the factors themselves as `rope_freqs.weight`.
    Llama3 {
        /// Factor k applied to the longest wavelengths.
        factor: f32,
        /// Wavelengths above original_context / low_freq_factor are divided by k.
        low_freq_factor: f32,
        /// Wavelengths below original_context / high_freq_factor are kept.
        high_freq_factor: f32,
        /// Context the model was pretrained with.
        original_context: usize,
    },
    /// YaRN ("NTK-by-parts" interpolation with attention scaling).
    Yarn {
        /// Context extension factor k.
        factor: f32,
        /// Context the model was pretrained with.
        original_context: usize,
        /// Rotations within the original context above which a pair is extrapolated (32).
        beta_fast: f32,
        /// Rotations below which a pair is interpolated (1).
        beta_slow: f32,
    },
}

/// Ready-to-use RoPE constants of one layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    /// RoPE base θ (used when `inv_freq` is None).
    pub base: f32,
    /// Position multiplier s.
    pub scale: f32,
    /// Per-pair inverse frequencies [d/2] when they are not base^(−2j/d).
    pub inv_freq: Option<Vec<f32>>,
    /// Factor on the rotated q and k (YaRN); the attention logits scale by its square.
    pub mscale: f32,
}

impl Rope {
    /// The constants for head dimension `head_dim`, base θ `base`, `scaling`, optional llama3
    /// factors (`rope_freqs.weight`, [head_dim/2], each dividing its pair's frequency) and an
    /// extra magnitude factor (`rope.scaling.attn_factor`, 1 when absent).
    pub fn new(
        head_dim: usize,
        base: f32,
        scaling: &RopeScaling,
        freq_factors: Option<&[f32]>,
        attn_factor: f32,
    ) -> Rope {
        let half = head_dim / 2;
        let plain = || -> Vec<f32> {
            (0..half)
                .map(|j| (base as f64).powf(-2.0 * j as f64 / head_dim as f64) as f32)
                .collect()
        };
        let mut rope = Rope {
            base,
            scale: 1.0,
            inv_freq: None,
            mscale: attn_factor,
        };
        if let Some(ff) = freq_factors {
            rope.inv_freq = Some(plain().iter().zip(ff).map(|(f, d)| f / d).collect());
        }
        match *scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => rope.scale = 1.0 / factor,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_context,
            } => {
                let ff = llama3_factors(
                    &plain(),
                    factor,
                    low_freq_factor,
                    high_freq_factor,
                    original_context,
                );
                let base_freqs = rope.inv_freq.take().unwrap_or_else(plain);
                rope.inv_freq = Some(base_freqs.iter().zip(&ff).map(|(f, d)| f / d).collect());
            }
            RopeScaling::Yarn {
                factor,
                original_context,
                beta_fast,
                beta_slow,
            } => {
                let (low, high) =
                    yarn_correction_dims(head_dim, original_context, base, beta_fast, beta_slow);
                let freqs = rope.inv_freq.take().unwrap_or_else(plain);
                let freq_scale = 1.0 / factor;
                let mixed = freqs.iter().enumerate().map(|(j, &f)| {
                    let y = (j as f32 - low) / (high - low).max(0.001);
                    let extrapolated = 1.0 - y.clamp(0.0, 1.0);
                    f * (freq_scale * (1.0 - extrapolated) + extrapolated)
                });
                rope.inv_freq = Some(mixed.collect());
                rope.mscale *= 1.0 + 0.1 * factor.ln();
            }
        }
        rope
    }

    /// Plain RoPE of base θ.
    pub fn plain(base: f32) -> Rope {
        Rope {
            base,
            scale: 1.0,
            inv_freq: None,
            mscale: 1.0,
        }
    }

    /// The periods 1/f_j [d/2] for MLX's `fast::rope` (None for plain or linear RoPE).
    pub fn periods(&self) -> Result<Option<Array>> {
        let Some(inv) = &self.inv_freq else {
            return Ok(None);
        };
        let periods: Vec<f32> = inv.iter().map(|f| 1.0 / f).collect();
        Array::from_slice(&periods, &[periods.len() as i32]).map(Some)
    }

    /// The factor on attention logits q·k (mscale²).
    pub fn logit_scale(&self) -> f32 {
        self.mscale * self.mscale
    }
}

/// Llama 3's divisor of each pair's frequency (`inv_freq` [d/2] of plain RoPE): 1 for
/// wavelengths under original/high, `factor` over original/low, and between them
/// 1 / ((1 − s)/factor + s) with s = (original/wavelength − low) / (high − low).
pub fn llama3_factors(
    inv_freq: &[f32],
    factor: f32,
    low_freq_factor: f32,
    high_freq_factor: f32,
    original_context: usize,
) -> Vec<f32> {
    let original = original_context as f64;
    let (low, high) = (low_freq_factor as f64, high_freq_factor as f64);
    inv_freq
        .iter()
        .map(|&f| {
            let wavelength = 2.0 * std::f64::consts::PI / f as f64;
            if wavelength < original / high {
                1.0
            } else if wavelength > original / low {
                factor
            } else {
                let smooth = (original / wavelength - low) / (high - low);
                (1.0 / ((1.0 - smooth) / factor as f64 + smooth)) as f32
            }
        })
        .collect()
}

/// YaRN's correction range [low, high] of pair indices (ggml's `ggml_rope_yarn_corr_dims`, in
/// float32 as ggml computes it): the pairs that turn more than β_fast times within the
/// original context are extrapolated, those turning fewer than β_slow times interpolated.
fn yarn_correction_dims(
    head_dim: usize,
    original_context: usize,
    base: f32,
    beta_fast: f32,
    beta_slow: f32,
) -> (f32, f32) {
    let dims = head_dim as f32;
    let dim_of = |rotations: f32| {
        dims * (original_context as f32 / (rotations * 2.0 * std::f32::consts::PI)).ln()
            / (2.0 * base.ln())
    };
    let low = dim_of(beta_fast).floor().max(0.0);
    let high = dim_of(beta_slow).ceil().min(dims - 1.0);
    (low, high)
}

/// Checks a scaling's constants (finite, positive factors, a positive original context),
/// naming the file and `key` in the error.
pub fn validate(scaling: &RopeScaling, path: &Path, key: &str) -> Result<()> {
    let bad = |problem: &str| Err(Error::format(path, format!("key '{key}': {problem}")));
    let positive = |v: f32| v.is_finite() && v > 0.0;
    match *scaling {
        RopeScaling::None => Ok(()),
        RopeScaling::Linear { factor } if !positive(factor) => bad("factor must be positive"),
        RopeScaling::Linear { .. } => Ok(()),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_context,
        } => {
            if !(positive(factor) && positive(low_freq_factor) && positive(high_freq_factor)) {
                bad("factors must be positive")
            } else if high_freq_factor <= low_freq_factor {
                bad("high_freq_factor must exceed low_freq_factor")
            } else if original_context == 0 {
                bad("the original context must be positive")
            } else {
                Ok(())
            }
        }
        RopeScaling::Yarn {
            factor,
            original_context,
            beta_fast,
            beta_slow,
        } => {
            if !(positive(factor) && positive(beta_fast) && positive(beta_slow)) {
                bad("factor and betas must be positive")
            } else if original_context == 0 {
                bad("the original context must be positive")
            } else {
                Ok(())
            }
        }
    }
}
