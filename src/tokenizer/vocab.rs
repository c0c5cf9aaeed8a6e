//! The vocabulary as a GGUF file's `tokenizer.ggml.*` metadata states it, before any tokenizer
//! is built from it.

use crate::{Error, Result};

/// What kind of token an id is: GGUF's `tokenizer.ggml.token_type` values (llama.cpp's
/// `llama_token_type`), which follow SentencePiece's piece types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// Ordinary text (type 1, and 0 "undefined").
    Normal,
    /// The unknown token, e.g. `<unk>` (type 2).
    Unknown,
    /// A control token such as `<s>`, `</s>`, `<|im_start|>` (type 3).
    Control,
    /// A user-defined token matched whole in text, e.g. Qwen's `<tool_call>` (type 4).
    UserDefined,
    /// A reserved slot that never appears in text, e.g. `[PAD151665]` (type 5).
    Unused,
    /// A SentencePiece byte-fallback token `<0xNN>` (type 6).
    Byte,
}

impl TokenKind {
    /// The kind for a GGUF `token_type` value; unknown values count as [`TokenKind::Normal`].
    pub fn from_gguf(token_type: i32) -> TokenKind {
        match token_type {
            2 => TokenKind::Unknown,
            3 => TokenKind::Control,
            4 => TokenKind::UserDefined,
            5 => TokenKind::Unused,
            6 => TokenKind::Byte,
            _ => TokenKind::Normal,
        }
    }

    /// Whether the token is matched as a whole in input text (never split by the model).
    pub fn is_matched_whole(self) -> bool {
        matches!(
            self,
            TokenKind::Unknown | TokenKind::Control | TokenKind::UserDefined
        )
    }

    /// Whether `decode(.., skip_special = true)` leaves the token out.
    pub fn is_special(self) -> bool {
        matches!(self, TokenKind::Unknown | TokenKind::Control)
    }
}

/// A vocabulary as GGUF metadata holds it (`tokenizer.ggml.*`); [`super::Tokenizer::from_vocab`]
/// builds a tokenizer from it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Vocab {
    /// `tokenizer.ggml.model`: `"gpt2"` (byte-level BPE) or `"llama"` (SentencePiece BPE).
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer of a `gpt2` vocabulary (`qwen2`, `llama-bpe`, …).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`: the piece of every id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.scores`: SentencePiece scores; a higher score merges first.
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.token_type`: see [`TokenKind::from_gguf`].
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges`: byte-level BPE merges, `"left right"`, highest priority first.
    pub merges: Option<Vec<String>>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos: Option<u32>,
    /// `tokenizer.ggml.eot_token_id`.
    pub eot: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`; absent means yes for `llama`, no for `gpt2`.
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`; absent means no.
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix` (SentencePiece's dummy prefix); absent means yes for
    /// `llama`.
    pub add_space_prefix: Option<bool>,
}

impl Vocab {
    /// Checks that the arrays agree in length and the special ids lie inside the vocabulary.
    pub fn validate(&self) -> Result<()> {
        let n = self.tokens.len();
        if n == 0 || u32::try_from(n).is_err() {
            return Err(Error::Tokenizer(format!("vocabulary of {n} tokens")));
        }
        check_len(
            "tokenizer.ggml.scores",
            self.scores.as_ref().map(Vec::len),
            n,
        )?;
        check_len(
            "tokenizer.ggml.token_type",
            self.token_types.as_ref().map(Vec::len),
            n,
        )?;
        for (name, id) in self.special_ids() {
            if id.is_some_and(|id| id as usize >= n) {
                return Err(Error::Tokenizer(format!(
                    "{name} token id {} is outside the vocabulary of {n}",
                    id.unwrap_or_default()
                )));
            }
        }
        Ok(())
    }

    /// The kind of every id: from `token_types` when present, otherwise guessed (the special ids
    /// are control tokens, and in a `llama` vocabulary `<0xNN>` pieces are bytes).
    pub fn kinds(&self) -> Vec<TokenKind> {
        if let Some(types) = &self.token_types {
            return types.iter().map(|&t| TokenKind::from_gguf(t)).collect();
        }
        let spm = self.model == "llama";
        let mut kinds: Vec<TokenKind> = self
            .tokens
            .iter()
            .map(|t| match spm && byte_piece(t).is_some() {
                true => TokenKind::Byte,
                false => TokenKind::Normal,
            })
            .collect();
        for (name, id) in self.special_ids() {
            if let Some(kind) = id.and_then(|id| kinds.get_mut(id as usize)) {
                *kind = match name {
                    "unknown" => TokenKind::Unknown,
                    _ => TokenKind::Control,
                };
            }
        }
        kinds
    }

    /// The named special ids, for validation and kind guessing.
    fn special_ids(&self) -> [(&'static str, Option<u32>); 5] {
        [
            ("bos", self.bos),
            ("eos", self.eos),
            ("eot", self.eot),
            ("unknown", self.unk),
            ("padding", self.pad),
        ]
    }
}

/// Fails when an optional per-token array does not have one entry per token.
fn check_len(key: &str, len: Option<usize>, n: usize) -> Result<()> {
    match len {
        Some(len) if len != n => Err(Error::Tokenizer(format!(
            "{key} has {len} entries, expected {n} (one per token)"
        ))),
        _ => Ok(()),
    }
}

/// The byte of a SentencePiece byte-fallback piece `<0xNN>`, or `None` for any other piece.
pub(crate) fn byte_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    match hex.len() {
        2 => u8::from_str_radix(hex, 16).ok(),
        _ => None,
    }
}
