//! The bodies of the `cargo fuzz` targets in `fuzz/`: one function per untrusted input, each
//! taking arbitrary bytes and running them through the same code a real file or request goes
//! through. Plain library functions, so that `tests/fuzz_corpora.rs` runs every committed
//! corpus file through them on stable Rust (the harnesses keep compiling and past findings stay
//! fixed) while libFuzzer drives them on nightly.
//!
//! Each returns the first `Err` the input met (rejecting input is the expected outcome); what
//! must never happen is a panic, an abort, a hang or unbounded memory.
#![forbid(unsafe_code)]

use crate::backend::snapshot::{self, Fingerprint, KvShape};
use crate::chat_template::{ChatMessage, ChatTemplate};
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::loader::gguf::GgufFile;
use crate::loader::safetensors::SafetensorsModel;
use crate::model::ModelConfig;
use crate::server::api;
use crate::tokenizer::Tokenizer;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The model a fuzzed KV snapshot is hydrated into: its fingerprint (all zeros), cache shape
/// and context length.
pub const SNAPSHOT_FINGERPRINT: Fingerprint = [0; 32];
/// See [`SNAPSHOT_FINGERPRINT`].
pub const SNAPSHOT_SHAPE: KvShape = KvShape {
    layers: 2,
    kv_heads: 1,
    head_dim: 4,
};
/// See [`SNAPSHOT_FINGERPRINT`].
pub const SNAPSHOT_CONTEXT: usize = 64;

/// Separates a chat-template input's template from its messages, and the messages from each
/// other.
pub const CHAT_SEPARATOR: u8 = 0;
/// The roles a chat-template input's message may take (its first byte modulo their count).
pub const CHAT_ROLES: [&str; 5] = ["system", "user", "assistant", "tool", "ipython"];

/// A GGUF file: opened and validated, then its model config, its tokenizer (encoding and
/// decoding a short text) and its chat template (rendering a short conversation).
pub fn gguf(data: &[u8]) -> Result<()> {
    let path = scratch_file("model.gguf", data)?;
    let result = gguf_at(&path);
    let _ = std::fs::remove_file(&path);
    result
}

fn gguf_at(path: &Path) -> Result<()> {
    let file = GgufFile::open(path)?;
    let config = ModelConfig::from_gguf(&file);
    let tokenizer = Tokenizer::from_gguf(&file);
    let template = file
        .get("tokenizer.chat_template")
        .and_then(|v| v.as_str())
        .map(|source| ChatTemplate::new(source, "<s>", "</s>"));
    if let Ok(tokenizer) = &tokenizer {
        exercise_tokenizer(tokenizer)?;
    }
    if let Some(template) = template {
        template?.render(&[ChatMessage::user("Hello")], true)?;
    }
    config?;
    tokenizer.map(drop)
}

/// A single-file safetensors checkpoint: header validated, every tensor looked up.
pub fn safetensors(data: &[u8]) -> Result<()> {
    let path = scratch_file("model.safetensors", data)?;
    let result = SafetensorsModel::open(&path).map(|model| {
        for name in model.names() {
            let _ = model.tensor(name);
        }
    });
    let _ = std::fs::remove_file(&path);
    result
}

/// A KV snapshot hydrated as `Backend::hydrate` does, into a cache of [`SNAPSHOT_SHAPE`]. The
/// input is decoded twice: as it is, and with a correct checksum appended, so that mutations
/// reach the checks behind the checksum.
pub fn kv_snapshot(data: &[u8]) -> Result<()> {
    let _ = snapshot::decode(data);
    let mut sealed = data.to_vec();
    sealed.extend_from_slice(&Sha256::digest(data));
    let snap = snapshot::decode(&sealed)?;
    snap.check_against(&SNAPSHOT_FINGERPRINT, SNAPSHOT_SHAPE, SNAPSHOT_CONTEXT)?;
    let shape = SNAPSHOT_SHAPE;
    let mut cache = KvCache::new(
        shape.layers,
        shape.kv_heads,
        shape.head_dim,
        SNAPSHOT_CONTEXT,
    );
    cache.load_host(snap.len, &snap.keys, &snap.values)?;
    crate::mlx::transforms::eval(&cache.arrays())
}

/// A Hugging Face `tokenizer.json`, loaded, then encoding and decoding a short text.
pub fn tokenizer_json(data: &[u8]) -> Result<()> {
    let path = scratch_file("tokenizer.json", data)?;
    let result = Tokenizer::from_file(&path);
    let _ = std::fs::remove_file(&path);
    exercise_tokenizer(&result?)
}

/// A chat template and a conversation, both hostile: the bytes before the first
/// [`CHAT_SEPARATOR`] are the template, each later separated part a message whose first byte
/// picks its role from [`CHAT_ROLES`] and whose rest is its content.
pub fn chat_template(data: &[u8]) -> Result<()> {
    let mut parts = data.split(|&b| b == CHAT_SEPARATOR);
    let source = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let messages: Vec<ChatMessage> = parts
        .map(|part| {
            let (role, content) = part.split_first().unwrap_or((&0, &[]));
            let role = CHAT_ROLES[*role as usize % CHAT_ROLES.len()];
            ChatMessage::new(role, String::from_utf8_lossy(content))
        })
        .collect();
    let template = ChatTemplate::new(&source, "<s>", "</s>")?;
    template.render(&messages, true)?;
    template.render(&messages, false).map(drop)
}

/// A request body as `/v1/chat/completions` and `/v1/completions` read it.
pub fn request_body(data: &[u8]) -> Result<()> {
    let obj = api::parse_object(data).map_err(api_error)?;
    let chat = api::chat_request(&obj).map_err(api_error);
    let completion = api::completion_request(&obj).map_err(api_error);
    chat.or(completion).map(drop)
}

fn api_error(e: api::ApiError) -> Error {
    Error::InvalidArgument(format!("{}: {}", e.status, e.message))
}

/// Encodes a short text with special tokens and decodes the ids again.
fn exercise_tokenizer(tokenizer: &Tokenizer) -> Result<()> {
    let ids = tokenizer.encode("Hello, world! <s> 123 \u{e9}\u{1f600}", true)?;
    tokenizer.decode(&ids, false)?;
    tokenizer.decode(&ids, true).map(drop)
}

/// Writes `data` to `name` in a directory of this process and thread (the loaders read files;
/// tests call the harnesses from parallel threads).
fn scratch_file(name: &str, data: &[u8]) -> Result<PathBuf> {
    thread_local! {
        static DIR: PathBuf = std::env::temp_dir().join(format!(
            "mlx-engine-fuzz-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ).replace(['(', ')'], ""));
    }
    let dir = DIR.with(PathBuf::clone);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let path = dir.join(name);
    std::fs::write(&path, data).map_err(|e| Error::io(&path, e))?;
    Ok(path)
}
