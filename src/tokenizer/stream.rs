//! Detokenization: the bytes each token stands for, and a streaming decoder that hands out only
//! complete UTF-8 text. [`Tokenizer::decode`] is this decoder run over all ids at once, so
//! streamed text and decoded text agree by construction.

use super::{byte_level, spm, vocab::byte_piece, TokenKind, Tokenizer};

/// How a vocabulary's pieces turn back into bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeStyle {
    /// Byte-level BPE: every character of a piece stands for one byte.
    ByteLevel,
    /// SentencePiece: `▁` is a space and `<0xNN>` one byte. With `strip_leading_space`, the
    /// space the encoder put in front of each stretch of text is taken off again.
    SentencePiece {
        /// Whether the encoder adds a dummy-prefix space.
        strip_leading_space: bool,
    },
    /// Pieces are their own UTF-8 text.
    Plain,
}

impl DecodeStyle {
    /// The bytes a token stands for. Whole-matched and unused tokens stand for their own text.
    pub(crate) fn token_bytes(self, piece: &str, kind: TokenKind) -> Vec<u8> {
        match (self, kind) {
            (_, TokenKind::Normal | TokenKind::Byte) => self.text_bytes(piece),
            _ => piece.as_bytes().to_vec(),
        }
    }

    /// The bytes of a normal or byte-fallback piece.
    fn text_bytes(self, piece: &str) -> Vec<u8> {
        match self {
            DecodeStyle::ByteLevel => byte_level::piece_bytes(piece),
            DecodeStyle::SentencePiece { .. } => match byte_piece(piece) {
                Some(b) => vec![b],
                None => piece.replace(spm::SPACE, " ").into_bytes(),
            },
            DecodeStyle::Plain => piece.as_bytes().to_vec(),
        }
    }

    /// Whether text starts (at the beginning and after a whole-matched token) with a space the
    /// encoder added.
    pub(crate) fn strips_leading_space(self) -> bool {
        matches!(
            self,
            DecodeStyle::SentencePiece {
                strip_leading_space: true
            }
        )
    }
}

/// Streaming detokenization: push ids one at a time and get back only complete UTF-8 text.
///
/// Bytes of a character split across tokens (byte-fallback `<0xNN>` pieces, byte-level pieces of
/// a multi-byte character) are held until the character is complete. The concatenation of
/// everything `push` and `finish` return equals [`Tokenizer::decode`] of the same ids (for a
/// decoder made with [`StreamDecoder::new`]).
#[derive(Clone)]
pub struct StreamDecoder {
    tokenizer: Tokenizer,
    skip_special: bool,
    /// Bytes not yet handed out: an incomplete UTF-8 sequence at most, between calls.
    pending: Vec<u8>,
    /// The next text loses one leading space (SentencePiece's dummy prefix).
    strip_space: bool,
}

impl StreamDecoder {
    /// A decoder for a sequence from its start: like [`Tokenizer::decode`], it drops the space
    /// SentencePiece put in front of the text.
    pub fn new(tokenizer: &Tokenizer, skip_special: bool) -> StreamDecoder {
        StreamDecoder {
            tokenizer: tokenizer.clone(),
            skip_special,
            pending: vec![],
            strip_space: tokenizer.style().strips_leading_space(),
        }
    }

    /// A decoder for tokens that continue a prompt (generated text): a leading space is kept, so
    /// `"The capital is"` followed by `▁Paris` streams `" Paris"`.
    pub fn continuing(tokenizer: &Tokenizer, skip_special: bool) -> StreamDecoder {
        StreamDecoder {
            strip_space: false,
            ..StreamDecoder::new(tokenizer, skip_special)
        }
    }

    /// Adds one token; returns the text that became complete, if any. An id outside the
    /// vocabulary decodes as U+FFFD.
    pub fn push(&mut self, id: u32) -> Option<String> {
        let StreamDecoder {
            tokenizer,
            skip_special,
            pending,
            strip_space,
        } = self;
        match (tokenizer.token_kind(id), tokenizer.token_bytes(id)) {
            (Some(kind), Some(bytes)) if !(*skip_special && kind.is_special()) => {
                let whole = kind.is_matched_whole();
                let text = match (*strip_space && !whole, bytes.split_first()) {
                    (true, Some((b' ', rest))) => rest,
                    _ => bytes,
                };
                *strip_space = match whole {
                    true => tokenizer.style().strips_leading_space(),
                    false => *strip_space && bytes.is_empty(),
                };
                pending.extend_from_slice(text);
            }
            (Some(_), Some(_)) => {}
            _ => pending.extend_from_slice("\u{FFFD}".as_bytes()),
        }
        self.take_complete()
    }

    /// Ends the sequence: returns what is still held back, an incomplete character as U+FFFD.
    pub fn finish(&mut self) -> Option<String> {
        let mut out = self.take_complete().unwrap_or_default();
        if !self.pending.is_empty() {
            out.push('\u{FFFD}');
            self.pending.clear();
        }
        (!out.is_empty()).then_some(out)
    }

    /// Removes and returns the held bytes up to an incomplete trailing UTF-8 sequence; invalid
    /// bytes become U+FFFD, as `String::from_utf8_lossy` does.
    fn take_complete(&mut self) -> Option<String> {
        let mut out = String::new();
        let mut start = 0;
        while start < self.pending.len() {
            let rest = &self.pending[start..];
            let (valid, error) = match std::str::from_utf8(rest) {
                Ok(_) => (rest.len(), None),
                Err(e) => (e.valid_up_to(), Some(e.error_len())),
            };
            out.push_str(std::str::from_utf8(&rest[..valid]).unwrap_or_default());
            start += valid;
            match error {
                Some(Some(len)) => {
                    out.push('\u{FFFD}');
                    start += len;
                }
                Some(None) => break,
                None => {}
            }
        }
        self.pending.drain(..start);
        (!out.is_empty()).then_some(out)
    }
}
