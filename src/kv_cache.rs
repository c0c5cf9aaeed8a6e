//! The key/value cache of one sequence: per layer, K and V arrays [1, kv_heads, capacity,
//! head_dim], so the cache reads as [layers, kv_heads, seq, head_dim], stored as float16 (the
//! default, as llama.cpp's) or float32 ([`KvDtype`]). Capacity grows in steps of
//! [`KvCache::STEP`] positions; new entries are written in place with `slice_update`, never by
//! concatenating per token.
#![forbid(unsafe_code)]

use crate::error::{Error, Result};
use crate::mlx::{ops, Array, Dtype};

/// The element type a KV cache stores keys and values in. Attention always computes in
/// float32; float16 halves the cache's memory and the bytes attention reads per step, at the
/// cost of rounding every stored key and value to 11 significant bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvDtype {
    /// IEEE half precision (llama.cpp's default `f16` cache type).
    #[default]
    F16,
    /// Single precision: no rounding, twice the memory.
    F32,
}

impl KvDtype {
    /// The MLX element type of the cache arrays.
    pub fn dtype(self) -> Dtype {
        match self {
            KvDtype::F16 => Dtype::F16,
            KvDtype::F32 => Dtype::F32,
        }
    }

    /// The name the command line and the server accept (`f16`, `f32`).
    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F16 => "f16",
            KvDtype::F32 => "f32",
        }
    }
}

impl std::fmt::Display for KvDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KvDtype {
    type Err = Error;

    /// `f16` / `float16` or `f32` / `float32`.
    fn from_str(s: &str) -> Result<KvDtype> {
        match s.to_ascii_lowercase().as_str() {
            "f16" | "float16" => Ok(KvDtype::F16),
            "f32" | "float32" => Ok(KvDtype::F32),
            other => Err(Error::InvalidArgument(format!(
                "KV cache type {other:?}: expected f16 or f32"
            ))),
        }
    }
}

/// Keys and values of every layer for one sequence.
pub struct KvCache {
    keys: Vec<Option<Array>>,
    values: Vec<Option<Array>>,
    kv_heads: usize,
    head_dim: usize,
    len: usize,
    capacity: usize,
    limit: usize,
    dtype: KvDtype,
}

impl KvCache {
    /// Positions added whenever the cache must grow.
    pub const STEP: usize = 256;

    /// An empty cache for `layers` layers of `kv_heads × head_dim`, at most `limit` positions,
    /// stored as `dtype`.
    pub fn new(
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        limit: usize,
        dtype: KvDtype,
    ) -> KvCache {
        KvCache {
            keys: (0..layers).map(|_| None).collect(),
            values: (0..layers).map(|_| None).collect(),
            kv_heads,
            head_dim,
            len: 0,
            capacity: 0,
            limit,
            dtype,
        }
    }

    /// The element type keys and values are stored in.
    pub fn dtype(&self) -> KvDtype {
        self.dtype
    }

    /// Positions filled so far (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no position is filled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most positions this cache accepts (the model's context).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes the cache's arrays hold: K and V of every layer at the allocated capacity.
    pub fn bytes(&self) -> usize {
        let per_array = self.kv_heads * self.capacity * self.head_dim * self.dtype.dtype().size();
        self.arrays().len() * per_array
    }

    /// Forgets every position (keeps the allocation).
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Rolls back to the first `n` positions.
    pub fn truncate(&mut self, n: usize) -> Result<()> {
        if n > self.len {
            return Err(Error::InvalidArgument(format!(
                "truncate to {n} positions, but the cache holds {}",
                self.len
            )));
        }
        self.len = n;
        Ok(())
    }

    /// Fails with `ContextFull` unless `new` more positions fit within the limit.
    pub fn check_room(&self, new: usize) -> Result<()> {
        check_fits(self.len.saturating_add(new), self.limit)
    }

    /// Checks that `new` more positions fit, growing the allocation if needed.
    pub fn reserve(&mut self, new: usize) -> Result<()> {
        self.check_room(new)?;
        let needed = self.len + new;
        if needed <= self.capacity {
            return Ok(());
        }
        let capacity = needed.div_ceil(Self::STEP) * Self::STEP;
        let shape = [
            1i32,
            self.kv_heads as i32,
            capacity as i32,
            self.head_dim as i32,
        ];
        for slot in self.keys.iter_mut().chain(self.values.iter_mut()) {
            let grown = ops::zeros(&shape, self.dtype.dtype())?;
            *slot = Some(match slot.take() {
                Some(old) if self.len > 0 => {
                    let kept = ops::slice(
                        &old,
                        &[0, 0, 0, 0],
                        &[shape[0], shape[1], self.len as i32, shape[3]],
                        &[1; 4],
                    )?;
                    ops::slice_update(
                        &grown,
                        &kept,
                        &[0, 0, 0, 0],
                        &[shape[0], shape[1], self.len as i32, shape[3]],
                        &[1; 4],
                    )?
                }
                _ => grown,
            });
        }
        self.capacity = capacity;
        Ok(())
    }

    /// Writes k, v [1, kv_heads, L, head_dim] of `layer` at the current position (rounded to
    /// the cache's dtype) and returns the keys and values of all positions so far as float32,
    /// [1, kv_heads, len + L, head_dim]. Call [`KvCache::reserve`] first and
    /// [`KvCache::advance`] after the last layer.
    pub fn update(&mut self, layer: usize, k: &Array, v: &Array) -> Result<(Array, Array)> {
        let l = k.dim(2)? as usize;
        if self.len + l > self.capacity {
            return Err(Error::InvalidArgument(
                "KvCache::update before reserve".into(),
            ));
        }
        let start = [0, 0, self.len as i32, 0];
        let stop = [
            1,
            self.kv_heads as i32,
            (self.len + l) as i32,
            self.head_dim as i32,
        ];
        let dtype = self.dtype.dtype();
        let keys = write_window(
            &mut self.keys[layer],
            &ops::astype(k, dtype)?,
            &start,
            &stop,
        )?;
        let values = write_window(
            &mut self.values[layer],
            &ops::astype(v, dtype)?,
            &start,
            &stop,
        )?;
        Ok((
            ops::astype(&keys, Dtype::F32)?,
            ops::astype(&values, Dtype::F32)?,
        ))
    }

    /// Hands `f` the full-capacity K and V arrays of `layer` [1, kv_heads, capacity, head_dim]
    /// and the current position; `f` writes `new` positions there and returns (its result, K',
    /// V'), which the cache keeps. The cache drops its own handles first, so an op that updates
    /// the arrays in place (our fused attention) can reuse their buffers. Call
    /// [`KvCache::reserve`] first and [`KvCache::advance`] after the last layer.
    pub fn update_with(
        &mut self,
        layer: usize,
        new: usize,
        f: impl FnOnce(&Array, &Array, usize) -> Result<(Array, Array, Array)>,
    ) -> Result<Array> {
        if self.len + new > self.capacity {
            return Err(Error::InvalidArgument(
                "KvCache::update_with before reserve".into(),
            ));
        }
        let (Some(k), Some(v)) = (self.keys[layer].take(), self.values[layer].take()) else {
            return Err(Error::InvalidArgument(
                "KvCache::update_with: layer without arrays".into(),
            ));
        };
        match f(&k, &v, self.len) {
            Ok((result, k_new, v_new)) => {
                self.keys[layer] = Some(k_new);
                self.values[layer] = Some(v_new);
                Ok(result)
            }
            Err(e) => {
                self.keys[layer] = Some(k);
                self.values[layer] = Some(v);
                Err(e)
            }
        }
    }

    /// Marks `n` positions written by the layers' `update` calls as filled.
    pub fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// The cached keys and values of `layer` for positions `[0, len)`.
    pub fn layer(&self, layer: usize) -> Result<Option<(Array, Array)>> {
        let (Some(k), Some(v)) = (&self.keys[layer], &self.values[layer]) else {
            return Ok(None);
        };
        let stop = [
            1,
            self.kv_heads as i32,
            self.len as i32,
            self.head_dim as i32,
        ];
        Ok(Some((
            ops::slice(k, &[0; 4], &stop, &[1; 4])?,
            ops::slice(v, &[0; 4], &stop, &[1; 4])?,
        )))
    }

    /// Every layer's arrays, for evaluating them together with the logits.
    pub fn arrays(&self) -> Vec<&Array> {
        self.keys
            .iter()
            .chain(self.values.iter())
            .flatten()
            .collect()
    }

    /// A new cache holding copies of the first `n` positions (same shape and limit; lazy:
    /// evaluate [`KvCache::arrays`] to materialise it).
    pub fn copy_prefix(&self, n: usize) -> Result<KvCache> {
        if n > self.len {
            return Err(Error::InvalidArgument(format!(
                "copy of {n} positions, but the cache holds {}",
                self.len
            )));
        }
        let mut copy = KvCache::new(
            self.keys.len(),
            self.kv_heads,
            self.head_dim,
            self.limit,
            self.dtype,
        );
        if n == 0 {
            return Ok(copy);
        }
        copy.reserve(n)?;
        let stop = [1, self.kv_heads as i32, n as i32, self.head_dim as i32];
        for layer in 0..self.keys.len() {
            let (Some(k), Some(v)) = (&self.keys[layer], &self.values[layer]) else {
                return Err(Error::InvalidArgument(
                    "KvCache::copy_prefix: layer without arrays".into(),
                ));
            };
            let k = ops::slice(k, &[0; 4], &stop, &[1; 4])?; // [1, kv_heads, n, head_dim]
            let v = ops::slice(v, &[0; 4], &stop, &[1; 4])?; // [1, kv_heads, n, head_dim]
            write_window(&mut copy.keys[layer], &k, &[0; 4], &stop)?;
            write_window(&mut copy.values[layer], &v, &[0; 4], &stop)?;
        }
        copy.advance(n);
        Ok(copy)
    }

    /// Copies positions `[0, len)` to the host as float32: keys, then values, each laid out
    /// [layers, kv_heads, len, head_dim] row-major.
    pub fn to_host(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let per_layer = self.kv_heads * self.len * self.head_dim;
        let mut keys = Vec::with_capacity(per_layer * self.keys.len());
        let mut values = Vec::with_capacity(per_layer * self.keys.len());
        for layer in 0..self.keys.len() {
            if let Some((k, v)) = self.layer(layer)? {
                keys.extend(ops::astype(&k, Dtype::F32)?.to_vec::<f32>()?);
                values.extend(ops::astype(&v, Dtype::F32)?.to_vec::<f32>()?);
            }
        }
        if keys.len() != per_layer * self.keys.len() {
            return Err(Error::InvalidArgument(
                "KvCache::to_host: cache without arrays".into(),
            ));
        }
        Ok((keys, values))
    }

    /// Fills an empty cache with `len` positions read from the host, in the layout
    /// [`KvCache::to_host`] writes (keys and values each [layers, kv_heads, len, head_dim]),
    /// rounded to the cache's dtype.
    pub fn load_host(&mut self, len: usize, keys: &[f32], values: &[f32]) -> Result<()> {
        let per_layer = self.kv_heads * len * self.head_dim;
        let expected = per_layer * self.keys.len();
        if !self.is_empty() {
            return Err(Error::InvalidArgument(
                "KvCache::load_host into a non-empty cache".into(),
            ));
        }
        if keys.len() != expected || values.len() != expected {
            return Err(Error::InvalidArgument(format!(
                "KvCache::load_host: {} keys and {} values for {len} positions, expected {expected} each",
                keys.len(),
                values.len()
            )));
        }
        if len == 0 {
            return Ok(());
        }
        self.reserve(len)?;
        let shape = [1, self.kv_heads as i32, len as i32, self.head_dim as i32];
        for layer in 0..self.keys.len() {
            let range = layer * per_layer..(layer + 1) * per_layer;
            let k = Array::from_slice(&keys[range.clone()], &shape)?; // [1, kv_heads, len, head_dim]
            let v = Array::from_slice(&values[range], &shape)?; // [1, kv_heads, len, head_dim]
            let (k, v) = (
                ops::astype(&k, self.dtype.dtype())?,
                ops::astype(&v, self.dtype.dtype())?,
            );
            write_window(&mut self.keys[layer], &k, &[0; 4], &shape)?;
            write_window(&mut self.values[layer], &v, &[0; 4], &shape)?;
        }
        self.advance(len);
        Ok(())
    }
}

/// Writes `new` into `slot[start..stop]` (in place: the old handle is dropped first so MLX
/// can donate its buffer) and returns the view of positions `[0, stop)`.
fn write_window(
    slot: &mut Option<Array>,
    new: &Array,
    start: &[i32; 4],
    stop: &[i32; 4],
) -> Result<Array> {
    let cache = slot
        .take()
        .ok_or_else(|| Error::InvalidArgument("KvCache::update before reserve".into()))?;
    let updated = ops::slice_update(&cache, new, start, stop, &[1; 4])?;
    drop(cache);
    let view = ops::slice(&updated, &[0; 4], stop, &[1; 4])?;
    *slot = Some(updated);
    Ok(view)
}

/// Fails with `ContextFull` when a sequence of `needed` positions exceeds `limit`: the one
/// context check of the crate.
pub fn check_fits(needed: usize, limit: usize) -> Result<()> {
    match needed > limit {
        true => Err(Error::ContextFull { needed, limit }),
        false => Ok(()),
    }
}
