//! Text ↔ token ids for GGUF vocabularies and Hugging Face `tokenizer.json` files.
//!
//! A [`Vocab`] is what GGUF metadata states (`tokenizer.ggml.*`). [`Tokenizer::from_vocab`] turns
//! it into a `tokenizers` pipeline:
//! - `gpt2`: byte-level BPE after the split regex `tokenizer.ggml.pre` names (`byte_level.rs`);
//! - `llama`: SentencePiece BPE with byte fallback, merges derived from the scores (`spm.rs`).
//!
//! In both, control, unknown and user-defined tokens (`<|im_start|>`, `<s>`, `<tool_call>`) are
//! matched whole in the input text and never split. Decoding is ours (`stream.rs`): each id maps
//! to bytes, and [`StreamDecoder`] hands out complete UTF-8 text only.
#![forbid(unsafe_code)]

mod byte_level;
mod gguf;
mod hf;
mod json;
mod spm;
mod stream;
mod vocab;

use std::path::Path;
use std::sync::Arc;

pub use stream::StreamDecoder;
pub use vocab::{TokenKind, Vocab};

use hf::{hf_err, HfTokenizer};
use stream::DecodeStyle;

use crate::{Error, Result};

/// Whole-matched tokens that end a generation besides `eos` and `eot` (chat turn ends, document
/// ends), as llama.cpp also treats them.
const END_OF_GENERATION: &[&str] = &[
    "</s>",
    "<|endoftext|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|end|>",
    "<|return|>",
    "<end_of_turn>",
    "<EOT>",
];

/// Where `encode(.., add_special = true)` gets its BOS/EOS from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AddSpecial {
    /// A GGUF vocabulary: these ids, from `add_bos_token` / `add_eos_token`.
    Explicit { bos: Option<u32>, eos: Option<u32> },
    /// A `tokenizer.json`: its own post-processor.
    PostProcessor,
}

/// Everything a tokenizer is made of, before the per-token tables are derived.
struct Parts {
    hf: HfTokenizer,
    pieces: Vec<String>,
    kinds: Vec<TokenKind>,
    style: DecodeStyle,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    add: AddSpecial,
}

/// The shared, immutable state behind a [`Tokenizer`].
struct Inner {
    hf: HfTokenizer,
    /// id → the piece as the vocabulary spells it.
    pieces: Vec<String>,
    /// id → its kind.
    kinds: Vec<TokenKind>,
    /// id → the bytes it decodes to.
    bytes: Vec<Box<[u8]>>,
    style: DecodeStyle,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    add: AddSpecial,
    /// Sorted ids that end a generation.
    eog: Vec<u32>,
}

/// A tokenizer: encode text to ids, decode ids to text. Cloning is cheap (shared state).
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("style", &self.inner.style)
            .field("bos", &self.inner.bos)
            .field("eos", &self.inner.eos)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF vocabulary describes (`gpt2` or `llama`).
    pub fn from_vocab(vocab: &Vocab) -> Result<Tokenizer> {
        vocab.validate()?;
        let kinds = vocab.kinds();
        let spm = match vocab.model.as_str() {
            "gpt2" => false,
            "llama" => true,
            other => return Err(Error::Unsupported(format!("tokenizer model {other:?}"))),
        };
        let (hf, style) = match spm {
            false => (byte_level::build(vocab, &kinds)?, DecodeStyle::ByteLevel),
            true => (
                spm::build(vocab, &kinds)?,
                DecodeStyle::SentencePiece {
                    strip_leading_space: vocab.add_space_prefix.unwrap_or(true),
                },
            ),
        };
        let add = AddSpecial::Explicit {
            bos: vocab.bos.filter(|_| vocab.add_bos.unwrap_or(spm)),
            eos: vocab.eos.filter(|_| vocab.add_eos.unwrap_or(false)),
        };
        Ok(Tokenizer::assemble(Parts {
            hf,
            pieces: vocab.tokens.clone(),
            kinds,
            style,
            bos: vocab.bos,
            eos: vocab.eos,
            eot: vocab.eot,
            add,
        }))
    }

    /// Loads a Hugging Face `tokenizer.json`; BOS/EOS come from a `tokenizer_config.json` beside
    /// it when there is one.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Tokenizer> {
        json::load(path.as_ref()).map(Tokenizer::assemble)
    }

    /// Derives the per-token tables.
    fn assemble(parts: Parts) -> Tokenizer {
        let bytes = parts
            .pieces
            .iter()
            .zip(&parts.kinds)
            .map(|(piece, &kind)| parts.style.token_bytes(piece, kind).into_boxed_slice())
            .collect();
        let eog = end_of_generation(&parts);
        let Parts {
            hf,
            pieces,
            kinds,
            style,
            bos,
            eos,
            eot,
            add,
        } = parts;
        let inner = Inner {
            hf,
            pieces,
            kinds,
            bytes,
            style,
            bos,
            eos,
            eot,
            add,
            eog,
        };
        Tokenizer {
            inner: Arc::new(inner),
        }
    }

    /// Text → ids. With `add_special`, BOS (and EOS) are added as the vocabulary asks. Special
    /// token text in `text` (e.g. `<|im_start|>`) always becomes that token.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let inner = &*self.inner;
        let post_process = add_special && inner.add == AddSpecial::PostProcessor;
        let encoding = inner
            .hf
            .encode_fast(text, post_process)
            .map_err(hf_err("encode"))?;
        let (bos, eos) = match (add_special, inner.add) {
            (true, AddSpecial::Explicit { bos, eos }) => (bos, eos),
            _ => (None, None),
        };
        let mut ids = Vec::with_capacity(encoding.len() + 2);
        ids.extend(bos);
        ids.extend_from_slice(encoding.get_ids());
        ids.extend(eos);
        Ok(ids)
    }

    /// Ids → text. With `skip_special`, control and unknown tokens are left out. Bytes that do
    /// not form valid UTF-8 become U+FFFD. An id outside the vocabulary is an error.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= self.vocab_size()) {
            return Err(Error::Tokenizer(format!(
                "cannot decode id {bad}: the vocabulary has {} tokens",
                self.vocab_size()
            )));
        }
        let mut stream = StreamDecoder::new(self, skip_special);
        let mut text = String::new();
        for &id in ids {
            text.extend(stream.push(id));
        }
        text.extend(stream.finish());
        Ok(text)
    }

    /// The text one token stands for on its own (`▁Paris` → `" Paris"`, `<0x0A>` → `"\n"`);
    /// part of a multi-byte character shows as U+FFFD.
    pub fn token_to_piece(&self, id: u32) -> Option<String> {
        self.token_bytes(id)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    /// The bytes one token stands for.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.inner.bytes.get(id as usize).map(|b| &b[..])
    }

    /// The piece as the vocabulary spells it (`▁Paris`, `ĠParis`, `<0x0A>`).
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.inner.pieces.get(id as usize).map(String::as_str)
    }

    /// The id of a piece spelled as in the vocabulary.
    pub fn token_to_id(&self, piece: &str) -> Option<u32> {
        self.inner.hf.token_to_id(piece)
    }

    /// The kind of a token.
    pub fn token_kind(&self, id: u32) -> Option<TokenKind> {
        self.inner.kinds.get(id as usize).copied()
    }

    /// The beginning-of-sequence token.
    pub fn bos(&self) -> Option<u32> {
        self.inner.bos
    }

    /// The end-of-sequence token.
    pub fn eos(&self) -> Option<u32> {
        self.inner.eos
    }

    /// The end-of-turn token.
    pub fn eot(&self) -> Option<u32> {
        self.inner.eot
    }

    /// Whether `id` ends a generation: eos, eot, or an end token such as `<|im_end|>`.
    pub fn is_eog(&self, id: u32) -> bool {
        self.inner.eog.binary_search(&id).is_ok()
    }

    /// Every id that ends a generation, sorted.
    pub fn eog_ids(&self) -> &[u32] {
        &self.inner.eog
    }

    /// The number of token ids.
    pub fn vocab_size(&self) -> usize {
        self.inner.pieces.len()
    }

    /// How pieces turn back into bytes.
    fn style(&self) -> DecodeStyle {
        self.inner.style
    }
}

/// eos, eot and the whole-matched tokens spelled like an end token; sorted, no duplicates.
fn end_of_generation(parts: &Parts) -> Vec<u32> {
    let named = (0u32..)
        .zip(parts.pieces.iter().zip(&parts.kinds))
        .filter(|(_, (piece, kind))| {
            kind.is_matched_whole() && END_OF_GENERATION.contains(&piece.as_str())
        })
        .map(|(id, _)| id);
    let mut ids: Vec<u32> = [parts.eos, parts.eot]
        .into_iter()
        .flatten()
        .chain(named)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[cfg(test)]
mod tests;
