//! The backend's speculative step: score a draft on one sequence in one forward pass, verify
//! it with one of the backend's samplers, roll back the rejected tail. The same as
//! `prefill(seq, [last] + draft, true)`, [`crate::speculative::verify`] and `truncate_seq`.
#![forbid(unsafe_code)]

use super::{Backend, SamplerId, SeqId};
use crate::error::Result;
use crate::mlx::with_device;
use crate::sampler::Sampler;
use crate::speculative::{self, Verdict};

impl Backend {
    /// One speculative step on `seq`, whose KV holds every token of `history` but the last:
    /// runs the last token and `drafts` through the model, keeps the prefix of `drafts` that
    /// `sampler`'s draws agree with, and leaves `seq` holding `history` plus the accepted
    /// drafts. The verdict's last token is the next one to feed. On error `seq` is unchanged.
    pub fn speculative_step(
        &mut self,
        seq: SeqId,
        sampler: SamplerId,
        history: &[u32],
        drafts: &[u32],
    ) -> Result<Verdict> {
        let (device, engine) = (self.device, &self.engine);
        let cache = self.seqs.get_mut(seq.0)?;
        let sampler = self.samplers.get_mut(sampler.0)?;
        with_device(device, || {
            speculative::step(engine, cache, sampler, history, drafts)
        })
    }

    /// [`Backend::speculative_step`] with a sampler the caller owns (the C ABI's samplers are
    /// independent of any backend).
    pub fn speculative_step_with(
        &mut self,
        seq: SeqId,
        sampler: &mut Sampler,
        history: &[u32],
        drafts: &[u32],
    ) -> Result<Verdict> {
        let (device, engine) = (self.device, &self.engine);
        let cache = self.seqs.get_mut(seq.0)?;
        with_device(device, || {
            speculative::step(engine, cache, sampler, history, drafts)
        })
    }
}
