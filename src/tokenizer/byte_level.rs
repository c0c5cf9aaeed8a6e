//! `gpt2` vocabularies: byte-level BPE (every byte is first mapped to a printable character),
//! after a pre-tokenizer regex chosen by `tokenizer.ggml.pre`.

use std::collections::HashMap;
use std::sync::OnceLock;

use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::SplitDelimiterBehavior;

use super::hf::{add_whole_tokens, hf_err, token_map, HfTokenizer};
use super::{TokenKind, Vocab};
use crate::{Error, Result};

/// GPT-2's split: contractions, letter runs, digit runs, symbol runs, whitespace.
const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Llama 3's split: as GPT-2's, case-insensitive contractions, digits in groups of up to three.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen 2's split: as Llama 3's, with every digit on its own.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How one `tokenizer.ggml.pre` value splits and normalizes text before BPE.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PreTokenizer {
    /// The split regex; each match is one word for BPE.
    pattern: &'static str,
    /// Unicode NFC normalization first (Qwen 2's tokenizer does it).
    nfc: bool,
    /// A word that is itself a token skips the merges (Llama 3's `ignore_merges`).
    ignore_merges: bool,
}

/// The pre-tokenizer for a `tokenizer.ggml.pre` value; unknown values get GPT-2's with a warning.
fn pre_tokenizer(pre: Option<&str>) -> PreTokenizer {
    let gpt2 = PreTokenizer {
        pattern: GPT2_PATTERN,
        nfc: false,
        ignore_merges: false,
    };
    match pre {
        None | Some("default" | "gpt2" | "gpt-2") => gpt2,
        Some("qwen2" | "deepseek-r1-qwen") => PreTokenizer {
            pattern: QWEN2_PATTERN,
            nfc: true,
            ignore_merges: false,
        },
        Some("llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe") => PreTokenizer {
            pattern: LLAMA3_PATTERN,
            nfc: false,
            ignore_merges: true,
        },
        Some(other) => {
            tracing::warn!(
                pre = other,
                "unknown tokenizer.ggml.pre; using the GPT-2 split"
            );
            gpt2
        }
    }
}

/// Builds the byte-level BPE pipeline of a `gpt2` vocabulary.
pub(crate) fn build(vocab: &Vocab, kinds: &[TokenKind]) -> Result<HfTokenizer> {
    let pre = pre_tokenizer(vocab.pre.as_deref());
    let merges = parse_merges(vocab.merges.as_deref().unwrap_or_default())?;
    let model = BPE::builder()
        .vocab_and_merges(token_map(&vocab.tokens), merges)
        .ignore_merges(pre.ignore_merges)
        .build()
        .map_err(hf_err("byte-level BPE"))?;
    let split = Split::new(
        SplitPattern::Regex(pre.pattern.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(hf_err("pre-tokenizer regex"))?;
    let bytes = ByteLevel::new(false, false, false);
    let mut hf = HfTokenizer::new(model);
    hf.with_pre_tokenizer(Some(Sequence::new(vec![split.into(), bytes.into()])));
    if pre.nfc {
        hf.with_normalizer(Some(NFC));
    }
    add_whole_tokens(&mut hf, &vocab.tokens, kinds);
    Ok(hf)
}

/// Splits `"left right"` merge rules; a `gpt2` vocabulary must have them.
fn parse_merges(merges: &[String]) -> Result<Vec<(String, String)>> {
    if merges.is_empty() {
        return Err(Error::Tokenizer(
            "a gpt2 vocabulary needs tokenizer.ggml.merges".into(),
        ));
    }
    merges
        .iter()
        .map(|m| match m.split_once(' ') {
            Some((l, r)) if !l.is_empty() && !r.is_empty() => Ok((l.to_string(), r.to_string())),
            _ => Err(Error::Tokenizer(format!("malformed merge {m:?}"))),
        })
        .collect()
}

/// GPT-2's byte → character table: printable Latin-1 bytes stand for themselves, the other 68
/// bytes take the characters from U+0100 on, in byte order.
fn byte_to_char() -> [char; 256] {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut table = ['\0'; 256];
    let mut next = 0x100u32;
    for b in 0..=255u8 {
        table[b as usize] = match printable(b) {
            true => char::from(b),
            false => {
                next += 1;
                char::from_u32(next - 1).unwrap_or('\u{FFFD}')
            }
        };
    }
    table
}

/// The bytes a byte-level piece stands for; a character outside the table stands for its own
/// UTF-8 bytes.
pub(crate) fn piece_bytes(piece: &str) -> Vec<u8> {
    static CHAR_TO_BYTE: OnceLock<HashMap<char, u8>> = OnceLock::new();
    let table = CHAR_TO_BYTE.get_or_init(|| {
        let chars = byte_to_char();
        (0..=255u8).map(|b| (chars[b as usize], b)).collect()
    });
    let mut out = Vec::with_capacity(piece.len());
    for c in piece.chars() {
        match table.get(&c) {
            Some(&b) => out.push(b),
            None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_matches_gpt2() {
        let table = byte_to_char();
        assert_eq!(table[b' ' as usize], 'Ġ');
        assert_eq!(table[b'\n' as usize], 'Ċ');
        assert_eq!(table[b'A' as usize], 'A');
        assert_eq!(piece_bytes("ĠParis"), b" Paris");
        assert_eq!(piece_bytes("Ã©"), "é".as_bytes());
    }

    #[test]
    fn unknown_pre_falls_back_to_gpt2() {
        assert_eq!(pre_tokenizer(Some("no-such-pre")), pre_tokenizer(None));
        assert!(pre_tokenizer(Some("qwen2")).nfc);
    }
}
