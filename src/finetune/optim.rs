//! The optimizer over MLX arrays: AdamW (bias-corrected moments, decoupled weight decay),
//! gradient clipping by global norm, and the learning-rate schedule (linear warm-up, cosine
//! decay).

use crate::error::Result;
use crate::mlx::{ops, transforms, Array};

/// AdamW's constants.
#[derive(Clone, Copy, Debug)]
pub struct AdamWConfig {
    /// β₁, the first moment's decay.
    pub beta1: f32,
    /// β₂, the second moment's decay.
    pub beta2: f32,
    /// ε added to √v̂.
    pub eps: f32,
    /// Decoupled weight decay (multiplied by the learning rate).
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// AdamW's state: the moments of every parameter and the step count.
pub struct AdamW {
    /// The constants.
    pub config: AdamWConfig,
    /// First moments, one per parameter.
    pub m: Vec<Array>,
    /// Second moments, one per parameter.
    pub v: Vec<Array>,
    /// Updates applied so far.
    pub step: u64,
}

impl AdamW {
    /// Zero moments for parameters shaped like `params`.
    pub fn new(config: AdamWConfig, params: &[Array]) -> Result<AdamW> {
        let zeros = || -> Result<Vec<Array>> {
            params
                .iter()
                .map(|p| ops::zeros(&p.shape(), crate::mlx::Dtype::F32))
                .collect()
        };
        Ok(AdamW {
            config,
            m: zeros()?,
            v: zeros()?,
            step: 0,
        })
    }

    /// One update at learning rate `lr`: for each parameter p with gradient g,
    /// m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², p ← p − lr·(m̂/(√v̂ + ε) + λp) with
    /// m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ). Returns the new parameters (evaluated, with the moments).
    pub fn update(&mut self, params: &[Array], grads: &[Array], lr: f32) -> Result<Vec<Array>> {
        let c = self.config;
        self.step += 1;
        let t = self.step as i32;
        let s = |x: f32| Array::scalar(x);
        let (b1, b2) = (s(c.beta1)?, s(c.beta2)?);
        let (nb1, nb2) = (s(1.0 - c.beta1)?, s(1.0 - c.beta2)?);
        let corr1 = s(1.0 / (1.0 - c.beta1.powi(t)))?;
        let corr2 = s(1.0 / (1.0 - c.beta2.powi(t)))?;
        let (lr_a, eps, decay) = (s(lr)?, s(c.eps)?, s(1.0 - lr * c.weight_decay)?);
        let mut out = Vec::with_capacity(params.len());
        for (i, (p, g)) in params.iter().zip(grads).enumerate() {
            let m = ops::add(&ops::multiply(&b1, &self.m[i])?, &ops::multiply(&nb1, g)?)?;
            let v = ops::add(
                &ops::multiply(&b2, &self.v[i])?,
                &ops::multiply(&nb2, &ops::square(g)?)?,
            )?;
            let m_hat = ops::multiply(&m, &corr1)?;
            let v_hat = ops::multiply(&v, &corr2)?;
            let step = ops::divide(&m_hat, &ops::add(&ops::sqrt(&v_hat)?, &eps)?)?;
            let p = ops::subtract(&ops::multiply(p, &decay)?, &ops::multiply(&lr_a, &step)?)?;
            self.m[i] = m;
            self.v[i] = v;
            out.push(p);
        }
        let all: Vec<&Array> = out.iter().chain(&self.m).chain(&self.v).collect();
        transforms::eval(&all)?;
        Ok(out)
    }
}

/// The global L2 norm of `grads` and the gradients scaled so that it is at most `max_norm`
/// (unchanged when it already is, or when `max_norm` is not positive).
pub fn clip_global_norm(grads: &[Array], max_norm: f32) -> Result<(f32, Vec<Array>)> {
    let mut total = Array::scalar(0.0f32)?;
    for g in grads {
        let sq = ops::sum(&ops::reshape(&ops::square(g)?, &[-1])?, 0, false)?;
        total = ops::add(&total, &sq)?;
    }
    let norm = ops::sqrt(&total)?.item::<f32>()?;
    if max_norm <= 0.0 || norm <= max_norm || norm.is_nan() {
        return Ok((norm, grads.to_vec()));
    }
    let scale = Array::scalar(max_norm / norm)?;
    let clipped = grads
        .iter()
        .map(|g| ops::multiply(g, &scale))
        .collect::<Result<_>>()?;
    Ok((norm, clipped))
}

/// The learning rate at a step: linear warm-up from 0 to `peak` over `warmup` steps, then a
/// cosine decay to `min` at `total`.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    /// The peak learning rate.
    pub peak: f32,
    /// The final learning rate.
    pub min: f32,
    /// Warm-up steps.
    pub warmup: u64,
    /// Total steps.
    pub total: u64,
}

impl Schedule {
    /// The learning rate of update number `step` (0-based).
    pub fn at(&self, step: u64) -> f32 {
        if step < self.warmup {
            return self.peak * (step + 1) as f32 / self.warmup as f32;
        }
        let span = self.total.saturating_sub(self.warmup).max(1);
        let done = (step - self.warmup).min(span) as f32 / span as f32;
        self.min + 0.5 * (self.peak - self.min) * (1.0 + (std::f32::consts::PI * done).cos())
    }
}
