//! Draft-model drafting: a smaller model with the same vocabulary proposes the continuation
//! greedily, keeping its own KV cache in step with the target's sequence; and the vocabulary
//! check that refuses a pair whose token ids do not mean the same text.
#![forbid(unsafe_code)]

use super::Drafter;
use crate::engine::{Engine, LogitRows};
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::tokenizer::Tokenizer;

/// Drafting stops once the draft model's own probability of its next token falls below this:
/// a token the draft model itself doubts is usually rejected, and costs a draft step.
pub const MIN_DRAFT_PROB: f32 = 0.5;

/// The most the two vocabularies' sizes may differ (llama.cpp allows the same: padding rows).
pub const MAX_VOCAB_SIZE_DIFFERENCE: usize = 128;

/// Ids below this are not compared text for text (llama.cpp skips the same leading control
/// tokens, whose pieces differ between conversions without changing their meaning).
const FIRST_COMPARED_ID: usize = 5;

/// A draft model and the sequence its cache holds.
pub struct DraftModel {
    engine: Engine,
    cache: KvCache,
    /// The tokens whose keys and values `cache` holds, in order.
    fed: Vec<u32>,
    /// Drafted ids must be below this (the target's logit rows).
    target_vocab: usize,
    prefill_chunk: usize,
}

impl DraftModel {
    /// Wraps `draft` to propose tokens for `target`, after checking that their vocabularies
    /// agree ([`check_compatible`]).
    pub fn new(target: &Engine, draft: Engine) -> Result<DraftModel> {
        check_compatible(&target.tokenizer()?, &draft.tokenizer()?)?;
        check_same_metadata(target, &draft)?;
        Ok(DraftModel {
            cache: draft.new_cache(),
            engine: draft,
            fed: vec![],
            target_vocab: target.config().vocab_size,
            prefill_chunk: 512,
        })
    }

    /// The draft model.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Rolls the cache back to the longest prefix of `history` it holds (always leaving the
    /// last token to feed) and feeds the rest; returns the logits of the next token.
    fn catch_up(&mut self, history: &[u32]) -> Result<Vec<f32>> {
        let common = self
            .fed
            .iter()
            .zip(history)
            .take_while(|(a, b)| a == b)
            .count();
        let keep = common.min(history.len().saturating_sub(1));
        self.cache.truncate(keep)?;
        self.fed.truncate(keep);
        let new = &history[keep..];
        let logits = self
            .engine
            .prefill(new, &mut self.cache, self.prefill_chunk, LogitRows::Last)?
            .data;
        self.fed.extend_from_slice(new);
        Ok(logits)
    }
}

impl Drafter for DraftModel {
    fn draft(&mut self, history: &[u32], max: usize) -> Result<Vec<u32>> {
        if max == 0 || history.is_empty() {
            return Ok(vec![]);
        }
        // Drafts are fed to the draft model except the last; leave room for them.
        let room = self.cache.limit().saturating_sub(history.len());
        let max = max.min(room);
        let mut logits = self.catch_up(history)?;
        let mut drafts = Vec::with_capacity(max);
        while drafts.len() < max {
            let (token, prob) = top_token(&logits);
            let doubtful = prob < MIN_DRAFT_PROB && !drafts.is_empty();
            if doubtful || token as usize >= self.target_vocab {
                break;
            }
            drafts.push(token);
            if drafts.len() == max {
                break;
            }
            logits = self
                .engine
                .decode(&[token], &mut [&mut self.cache])?
                .to_vec::<f32>()?;
            self.fed.push(token);
        }
        Ok(drafts)
    }

    /// Prefills the draft model's cache with `history` (all of it: the next draft appends
    /// the first generated token).
    fn prepare(&mut self, history: &[u32]) -> Result<()> {
        if !history.is_empty() {
            self.catch_up(history)?;
        }
        Ok(())
    }
}

/// The argmax of `logits` and its softmax probability.
fn top_token(logits: &[f32]) -> (u32, f32) {
    let (mut best, mut max) = (0usize, f32::NEG_INFINITY);
    for (i, &l) in logits.iter().enumerate() {
        if l > max {
            (best, max) = (i, l);
        }
    }
    let total: f64 = logits.iter().map(|&l| f64::from((l - max).exp())).sum();
    (best as u32, (1.0 / total) as f32)
}

/// Checks that a draft model's token ids mean what the target's do, as llama.cpp does before
/// speculating: vocabulary sizes within [`MAX_VOCAB_SIZE_DIFFERENCE`], the same BOS and EOS,
/// the same end-of-generation ids, and the same text for every id both have (from id 5).
pub fn check_compatible(target: &Tokenizer, draft: &Tokenizer) -> Result<()> {
    let refuse = |what: String| {
        Err(Error::InvalidArgument(format!(
            "draft model refused: {what}"
        )))
    };
    let (nt, nd) = (target.vocab_size(), draft.vocab_size());
    if nt.abs_diff(nd) > MAX_VOCAB_SIZE_DIFFERENCE {
        return refuse(format!(
            "vocabulary of {nd} tokens, the target has {nt} (at most {MAX_VOCAB_SIZE_DIFFERENCE} apart)"
        ));
    }
    if (target.bos(), target.eos()) != (draft.bos(), draft.eos()) {
        return refuse(format!(
            "BOS/EOS ids {:?}/{:?}, the target's are {:?}/{:?}",
            draft.bos(),
            draft.eos(),
            target.bos(),
            target.eos()
        ));
    }
    if target.eog_ids() != draft.eog_ids() {
        return refuse(format!(
            "end-of-generation ids {:?}, the target's are {:?}",
            draft.eog_ids(),
            target.eog_ids()
        ));
    }
    for id in FIRST_COMPARED_ID..nt.min(nd) {
        let id = id as u32;
        let (a, b) = (target.id_to_token(id), draft.id_to_token(id));
        if a != b {
            return refuse(format!(
                "token {id} is {b:?} in the draft, {a:?} in the target"
            ));
        }
    }
    Ok(())
}

/// Checks what the tokenizers cannot say: the vocabulary type, and the BOS-adding flag, as
/// the two files' metadata record them (GGUF only; an HF directory has no such keys).
fn check_same_metadata(target: &Engine, draft: &Engine) -> Result<()> {
    let (Some(t), Some(d)) = (target.gguf(), draft.gguf()) else {
        return Ok(());
    };
    for key in [
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.add_bos_token",
    ] {
        let text = |f: &crate::loader::gguf::GgufFile| f.get(key).map(|v| format!("{v:?}"));
        if text(t) != text(d) {
            return Err(Error::InvalidArgument(format!(
                "draft model refused: {key} is {} in the draft, {} in the target",
                text(d).unwrap_or_else(|| "absent".into()),
                text(t).unwrap_or_else(|| "absent".into())
            )));
        }
    }
    Ok(())
}
