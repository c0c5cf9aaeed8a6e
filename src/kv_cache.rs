//! The key/value cache of one sequence: per layer, K and V arrays [1, kv_heads, capacity,
//! head_dim], so the cache reads as [layers, kv_heads, seq, head_dim]. Capacity grows in steps of
//! [`KvCache::STEP`] positions; new entries are written in place with `slice_update`, never by
//! concatenating per token.

use crate::error::{Error, Result};
use crate::mlx::{ops, Array, Dtype};

/// Keys and values of every layer for one sequence.
pub struct KvCache {
    keys: Vec<Option<Array>>,
    values: Vec<Option<Array>>,
    kv_heads: usize,
    head_dim: usize,
    len: usize,
    capacity: usize,
    limit: usize,
}

impl KvCache {
    /// Positions added whenever the cache must grow.
    pub const STEP: usize = 256;

    /// An empty cache for `layers` layers of `kv_heads × head_dim`, at most `limit` positions.
    pub fn new(layers: usize, kv_heads: usize, head_dim: usize, limit: usize) -> KvCache {
        KvCache {
            keys: (0..layers).map(|_| None).collect(),
            values: (0..layers).map(|_| None).collect(),
            kv_heads,
            head_dim,
            len: 0,
            capacity: 0,
            limit,
        }
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

    /// Forgets every position (keeps the allocation).
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Rolls back to the first `n` positions.
    pub fn truncate(&mut self, n: usize) -> Result<()> {
        if n > self.len {
            return Err(Error::InvalidArgument(format!("truncate to {n} positions, but the cache holds {}", self.len)));
        }
        self.len = n;
        Ok(())
    }

    /// Checks that `new` more positions fit, growing the allocation if needed.
    pub fn reserve(&mut self, new: usize) -> Result<()> {
        let needed = self.len + new;
        if needed > self.limit {
            return Err(Error::ContextFull { needed, limit: self.limit });
        }
        if needed <= self.capacity {
            return Ok(());
        }
        let capacity = needed.div_ceil(Self::STEP) * Self::STEP;
        let shape = [1i32, self.kv_heads as i32, capacity as i32, self.head_dim as i32];
        for slot in self.keys.iter_mut().chain(self.values.iter_mut()) {
            let grown = ops::zeros(&shape, Dtype::F32)?;
            *slot = Some(match slot.take() {
                Some(old) if self.len > 0 => {
                    let kept = ops::slice(&old, &[0, 0, 0, 0], &[shape[0], shape[1], self.len as i32, shape[3]], &[1; 4])?;
                    ops::slice_update(&grown, &kept, &[0, 0, 0, 0], &[shape[0], shape[1], self.len as i32, shape[3]], &[1; 4])?
                }
                _ => grown,
            });
        }
        self.capacity = capacity;
        Ok(())
    }

    /// Writes k, v [B, kv_heads, L, head_dim] of `layer` at the current position and returns
    /// the keys and values of all positions so far, [B, kv_heads, len + L, head_dim]. Call
    /// [`KvCache::reserve`] first and [`KvCache::advance`] after the last layer.
    pub fn update(&mut self, layer: usize, k: &Array, v: &Array) -> Result<(Array, Array)> {
        let l = k.dim(2)? as usize;
        if self.len + l > self.capacity {
            return Err(Error::InvalidArgument("KvCache::update before reserve".into()));
        }
        let start = [0, 0, self.len as i32, 0];
        let stop = [1, self.kv_heads as i32, (self.len + l) as i32, self.head_dim as i32];
        let keys = write_window(&mut self.keys[layer], k, &start, &stop)?;
        let values = write_window(&mut self.values[layer], v, &start, &stop)?;
        Ok((keys, values))
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
        let stop = [1, self.kv_heads as i32, self.len as i32, self.head_dim as i32];
        Ok(Some((ops::slice(k, &[0; 4], &stop, &[1; 4])?, ops::slice(v, &[0; 4], &stop, &[1; 4])?)))
    }

    /// Every layer's arrays, for evaluating them together with the logits.
    pub fn arrays(&self) -> Vec<&Array> {
        self.keys.iter().chain(self.values.iter()).flatten().collect()
    }
}

/// Writes `new` into `slot[start..stop]` (in place: the old handle is dropped first so MLX
/// can donate its buffer) and returns the view of positions `[0, stop)`.
fn write_window(slot: &mut Option<Array>, new: &Array, start: &[i32; 4], stop: &[i32; 4]) -> Result<Array> {
    let cache = slot
        .take()
        .ok_or_else(|| Error::InvalidArgument("KvCache::update before reserve".into()))?;
    let updated = ops::slice_update(&cache, new, start, stop, &[1; 4])?;
    drop(cache);
    let view = ops::slice(&updated, &[0; 4], stop, &[1; 4])?;
    *slot = Some(updated);
    Ok(view)
}
