//! `llama` vocabularies: SentencePiece BPE. Spaces become `▁`, a `▁` is put in front of the
//! text (the "dummy prefix"), adjacent pieces merge highest score first, and characters outside
//! the vocabulary fall back to their UTF-8 bytes as `<0xNN>` tokens.

use tokenizers::models::bpe::{self, BPE};
use tokenizers::normalizers::prepend::Prepend;
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::utils::Sequence;

use super::hf::{add_whole_tokens, hf_err, token_map, HfTokenizer};
use super::{TokenKind, Vocab};
use crate::Result;

/// SentencePiece's whitespace marker, U+2581.
pub(crate) const SPACE: char = '▁';

/// Builds the SentencePiece BPE pipeline of a `llama` vocabulary.
pub(crate) fn build(vocab: &Vocab, kinds: &[TokenKind]) -> Result<HfTokenizer> {
    let scores = match &vocab.scores {
        Some(scores) => scores.clone(),
        None => {
            tracing::warn!("llama vocabulary without scores; merging lower ids first");
            (0..vocab.tokens.len()).map(|i| -(i as f32)).collect()
        }
    };
    let map = token_map(&vocab.tokens);
    let merges = merges_from_scores(&vocab.tokens, kinds, &scores, &map);
    let mut builder = BPE::builder()
        .vocab_and_merges(map, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unknown_piece(vocab, kinds) {
        builder = builder.unk_token(unk);
    }
    let model = builder.build().map_err(hf_err("SentencePiece BPE"))?;
    let mut hf = HfTokenizer::new(model);
    hf.with_normalizer(Some(normalizer(vocab.add_space_prefix.unwrap_or(true))?));
    add_whole_tokens(&mut hf, &vocab.tokens, kinds);
    Ok(hf)
}

/// Spaces → `▁`, and with `add_space_prefix` a `▁` in front of every stretch of text (the text
/// at the start and after each whole-matched token).
fn normalizer(add_space_prefix: bool) -> Result<Sequence> {
    let escape = Replace::new(" ", SPACE.to_string()).map_err(hf_err("normalizer"))?;
    let mut steps = vec![];
    if add_space_prefix {
        steps.push(Prepend::new(SPACE.to_string()).into());
    }
    steps.push(escape.into());
    Ok(Sequence::new(steps))
}

/// The piece of the unknown token: `vocab.unk`, else the first token of kind unknown.
fn unknown_piece(vocab: &Vocab, kinds: &[TokenKind]) -> Option<String> {
    let id = vocab
        .unk
        .map(|id| id as usize)
        .or_else(|| kinds.iter().position(|&k| k == TokenKind::Unknown))?;
    vocab.tokens.get(id).cloned()
}

/// SentencePiece BPE merges any two adjacent pieces whose concatenation is a normal piece,
/// highest score of the result first. As ranked merge rules: every split `left + right` of a
/// normal piece into two pieces that can occur in text, ordered by the score of the result
/// (then its id, then the left piece's id).
pub(crate) fn merges_from_scores(
    tokens: &[String],
    kinds: &[TokenKind],
    scores: &[f32],
    map: &bpe::Vocab,
) -> Vec<(String, String)> {
    let in_text = |piece: &str| {
        map.get(piece).is_some_and(|&id| {
            matches!(
                kinds[id as usize],
                TokenKind::Normal | TokenKind::UserDefined
            )
        })
    };
    let mut ranked: Vec<(f32, usize, u32, usize)> = vec![];
    for (id, piece) in tokens.iter().enumerate() {
        if kinds[id] != TokenKind::Normal || map.get(piece) != Some(&(id as u32)) {
            continue;
        }
        for (split, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(split);
            if in_text(left) && in_text(right) {
                ranked.push((scores[id], id, map[left], split));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    ranked
        .into_iter()
        .map(|(_, id, _, split)| {
            let (left, right) = tokens[id].split_at(split);
            (left.to_string(), right.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_follow_scores() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"].map(String::from).into();
        let kinds = vec![TokenKind::Normal; tokens.len()];
        let scores = [0.0, 0.0, 0.0, -2.0, -1.0, -3.0];
        let merges = merges_from_scores(&tokens, &kinds, &scores, &token_map(&tokens));
        let expect = [("b", "c"), ("a", "b"), ("a", "bc"), ("ab", "c")];
        let expect: Vec<(String, String)> = expect
            .iter()
            .map(|(l, r)| (l.to_string(), r.to_string()))
            .collect();
        assert_eq!(merges, expect);
    }
}
