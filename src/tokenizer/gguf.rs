//! Reading a [`Vocab`] out of a GGUF file's `tokenizer.ggml.*` metadata.

use super::{Tokenizer, Vocab};
use crate::loader::GgufFile;
use crate::{Error, Result};

impl Vocab {
    /// The vocabulary a GGUF file states. `tokenizer.ggml.model` and `tokenizer.ggml.tokens` are
    /// required; every other key may be absent, but a key of the wrong type is an error.
    pub fn from_gguf(file: &GgufFile) -> Result<Vocab> {
        let key = |name: &str| format!("tokenizer.ggml.{name}");
        Ok(Vocab {
            model: file.get_str(&key("model"))?.to_string(),
            pre: optional(file, &key("pre"), |f, k| f.get_str(k).map(String::from))?,
            tokens: file.get_str_array(&key("tokens"))?,
            scores: optional(file, &key("scores"), GgufFile::get_f32_array)?,
            token_types: optional(file, &key("token_type"), GgufFile::get_i32_array)?,
            merges: optional(file, &key("merges"), GgufFile::get_str_array)?,
            bos: token_id(file, &key("bos_token_id"))?,
            eos: token_id(file, &key("eos_token_id"))?,
            eot: token_id(file, &key("eot_token_id"))?,
            unk: token_id(file, &key("unknown_token_id"))?,
            pad: token_id(file, &key("padding_token_id"))?,
            add_bos: optional(file, &key("add_bos_token"), GgufFile::get_bool)?,
            add_eos: optional(file, &key("add_eos_token"), GgufFile::get_bool)?,
            add_space_prefix: optional(file, &key("add_space_prefix"), GgufFile::get_bool)?,
        })
    }
}

impl Tokenizer {
    /// The tokenizer a GGUF file's vocabulary describes.
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer> {
        Tokenizer::from_vocab(&Vocab::from_gguf(file)?)
    }
}

/// `read(file, key)` when the key is present, `None` when it is absent.
fn optional<T>(
    file: &GgufFile,
    key: &str,
    read: impl Fn(&GgufFile, &str) -> Result<T>,
) -> Result<Option<T>> {
    match file.get(key) {
        Some(_) => read(file, key).map(Some),
        None => Ok(None),
    }
}

/// An optional token id, which must fit in u32.
fn token_id(file: &GgufFile, key: &str) -> Result<Option<u32>> {
    let Some(id) = optional(file, key, GgufFile::get_u64)? else {
        return Ok(None);
    };
    u32::try_from(id).map(Some).map_err(|_| {
        Error::format(
            file.path(),
            format!("metadata key '{key}' is {id}, too large for a token id"),
        )
    })
}
