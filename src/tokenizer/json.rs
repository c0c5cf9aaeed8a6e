//! Hugging Face `tokenizer.json` (plus an optional `tokenizer_config.json` beside it).

use std::path::Path;
use std::str::FromStr;

use serde_json::Value;

use super::hf::HfTokenizer;
use super::stream::DecodeStyle;
use super::vocab::byte_piece;
use super::{AddSpecial, Parts, TokenKind};
use crate::{Error, Result};

/// Names a BOS token commonly has, for files that do not say which token is BOS.
const BOS_NAMES: &[&str] = &["<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>"];
/// Names an EOS token commonly has.
const EOS_NAMES: &[&str] = &[
    "</s>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "<eos>",
    "<|im_end|>",
];
/// Names an end-of-turn token commonly has.
const EOT_NAMES: &[&str] = &["<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>"];

/// The `tokenizers` pipeline of well-formed JSON `text`. `tokenizers` 0.22 also panics on some
/// well-formed but invalid files (an `expect` on a `Precompiled` normalizer's charsmap), so a
/// panic inside it is caught and reported as this file's error.
fn parse_pipeline(path: &Path, text: &str) -> Result<HfTokenizer> {
    let parsed = std::panic::catch_unwind(|| HfTokenizer::from_str(text));
    match parsed {
        Ok(result) => result.map_err(|e| Error::format(path, e.to_string())),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("no message");
            Err(Error::format(
                path,
                format!("the tokenizers crate cannot read this file (it panicked: {message})"),
            ))
        }
    }
}

/// Reads `path` and everything the tokenizer needs from it.
pub(super) fn load(path: &Path) -> Result<Parts> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    // Parsed as plain JSON first: `tokenizers` 0.22 panics on some malformed JSON (an
    // `expect` in its decoder deserializer) instead of returning an error.
    let json: Value =
        serde_json::from_str(&text).map_err(|e| Error::format(path, e.to_string()))?;
    let hf = parse_pipeline(path, &text)?;
    let (pieces, kinds) = tables(&hf, &json);
    let config = path
        .parent()
        .map(|dir| read_config(&dir.join("tokenizer_config.json")))
        .transpose()?
        .flatten();
    let config = config.as_ref();
    let named = |key: &str, names: &[&str]| {
        config_token(&hf, config, key).or_else(|| first_present(&hf, names))
    };
    Ok(Parts {
        bos: named("bos_token", BOS_NAMES),
        eos: named("eos_token", EOS_NAMES),
        eot: first_present(&hf, EOT_NAMES),
        style: decode_style(&json),
        hf,
        pieces,
        kinds,
        add: AddSpecial::PostProcessor,
    })
}

/// The piece and kind of every id. Added special tokens are control tokens, other added tokens
/// user-defined; with byte fallback, `<0xNN>` pieces are bytes; ids nobody uses are unused.
fn tables(hf: &HfTokenizer, json: &Value) -> (Vec<String>, Vec<TokenKind>) {
    let vocab = hf.get_vocab(true);
    let n = vocab.values().max().map_or(0, |&m| m as usize + 1);
    let mut pieces = vec![String::new(); n];
    let mut kinds = vec![TokenKind::Unused; n];
    let byte_fallback = json["model"]["byte_fallback"].as_bool().unwrap_or(false);
    for (piece, id) in vocab {
        kinds[id as usize] = match byte_fallback && byte_piece(&piece).is_some() {
            true => TokenKind::Byte,
            false => TokenKind::Normal,
        };
        pieces[id as usize] = piece;
    }
    for (id, token) in hf.get_added_tokens_decoder() {
        kinds[id as usize] = match token.special {
            true => TokenKind::Control,
            false => TokenKind::UserDefined,
        };
    }
    let unk = json["model"]["unk_token"]
        .as_str()
        .and_then(|t| hf.token_to_id(t));
    if let Some(unk) = unk {
        kinds[unk as usize] = TokenKind::Unknown;
    }
    (pieces, kinds)
}

/// How the file's decoder turns pieces back into text.
fn decode_style(json: &Value) -> DecodeStyle {
    let mut steps = vec![];
    decoder_steps(&json["decoder"], &mut steps);
    let has = |name: &str| steps.iter().any(|s| s["type"] == name);
    if has("ByteLevel") {
        return DecodeStyle::ByteLevel;
    }
    if !(has("ByteFallback") || has("Metaspace") || has("Replace")) {
        return DecodeStyle::Plain;
    }
    let metaspace_prepends = steps.iter().any(|s| {
        s["type"] == "Metaspace"
            && (s["add_prefix_space"] == true
                || s["prepend_scheme"].as_str().is_some_and(|p| p != "never"))
    });
    DecodeStyle::SentencePiece {
        strip_leading_space: has("Strip") || metaspace_prepends,
    }
}

/// Flattens a decoder and its nested `Sequence`s.
fn decoder_steps<'a>(decoder: &'a Value, out: &mut Vec<&'a Value>) {
    match decoder["decoders"].as_array() {
        Some(inner) => inner.iter().for_each(|d| decoder_steps(d, out)),
        None if decoder.is_object() => out.push(decoder),
        None => {}
    }
}

/// Parses `tokenizer_config.json` when it exists.
fn read_config(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::format(path, e.to_string()))
}

/// A token the config names under `key`, as `"<s>"` or `{"content": "<s>"}`.
fn config_token(hf: &HfTokenizer, config: Option<&Value>, key: &str) -> Option<u32> {
    let entry = &config?[key];
    let piece = entry.as_str().or_else(|| entry["content"].as_str())?;
    hf.token_to_id(piece)
}

/// The id of the first of `names` the vocabulary has.
fn first_present(hf: &HfTokenizer, names: &[&str]) -> Option<u32> {
    names.iter().find_map(|name| hf.token_to_id(name))
}
