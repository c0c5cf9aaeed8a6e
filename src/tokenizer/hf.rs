//! Helpers shared by the builders that turn a [`Vocab`](super::Vocab) into a `tokenizers`
//! pipeline.

use tokenizers::models::bpe;
use tokenizers::AddedToken;

use super::TokenKind;
use crate::Error;

/// The `tokenizers` pipeline every builder produces.
pub(crate) type HfTokenizer = tokenizers::Tokenizer;

/// Wraps a `tokenizers` error into ours.
pub(crate) fn hf_err(context: &str) -> impl Fn(tokenizers::Error) -> Error + '_ {
    move |e| Error::Tokenizer(format!("{context}: {e}"))
}

/// Piece → id for the BPE model; on a duplicated piece the lowest id wins.
pub(crate) fn token_map(tokens: &[String]) -> bpe::Vocab {
    let mut map = bpe::Vocab::with_capacity(tokens.len());
    for (id, piece) in (0u32..).zip(tokens) {
        map.entry(piece.clone()).or_insert(id);
    }
    map
}

/// Registers control, unknown and user-defined tokens so they are matched whole in input text
/// (before normalization) and never split by the model.
pub(crate) fn add_whole_tokens(hf: &mut HfTokenizer, tokens: &[String], kinds: &[TokenKind]) {
    let whole = |special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(kinds)
            .filter(|(piece, kind)| {
                kind.is_matched_whole() && kind.is_special() == special && !piece.is_empty()
            })
            .map(|(piece, _)| AddedToken::from(piece.clone(), special).normalized(false))
            .collect()
    };
    hf.add_special_tokens(&whole(true));
    hf.add_tokens(&whole(false));
}
