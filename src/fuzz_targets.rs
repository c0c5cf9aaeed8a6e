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
use crate::constraint::{Grammar, GrammarCompiler};
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::loader::gguf::GgufFile;
use crate::loader::safetensors::SafetensorsModel;
use crate::model::ModelConfig;
use crate::server::api;
use crate::tokenizer::Tokenizer;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

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

/// The grammar kinds a grammar input may name (its first byte modulo their count): JSON
/// Schema text, a regular expression, a Lark grammar.
pub const GRAMMAR_KINDS: [&str; 3] = ["json_schema", "regex", "lark"];
/// Tokens a grammar input commits at most after compiling (its walk through the grammar).
pub const GRAMMAR_WALK: usize = 24;

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
        snap.dtype,
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

/// A grammar as the CLI, the C ABI and the server compile it: the first byte picks its kind
/// from [`GRAMMAR_KINDS`], the rest is its text. Compiled for a small byte-fallback
/// vocabulary, then walked for up to [`GRAMMAR_WALK`] tokens: each step takes the mask, checks
/// one token alone, commits an allowed token picked by the input's bytes, and now and then
/// rolls one back, as sampling and speculative decoding do.
pub fn grammar(data: &[u8]) -> Result<()> {
    let (&kind, text) = data.split_first().unwrap_or((&0, &[]));
    let text = std::str::from_utf8(text)
        .map_err(|e| Error::Grammar(format!("grammar text is not UTF-8: {e}")))?;
    let grammar = match GRAMMAR_KINDS[kind as usize % GRAMMAR_KINDS.len()] {
        "json_schema" => Grammar::json_schema_text(text)?,
        "regex" => Grammar::Regex(text.to_string()),
        _ => Grammar::Lark(text.to_string()),
    };
    let compiler = grammar_compiler()?;
    let mut constraint = compiler.compile(&grammar)?;
    let mut logits = vec![0.0f32; compiler.vocab_size()];
    for step in 0..GRAMMAR_WALK {
        if constraint.is_finished() {
            break;
        }
        logits.fill(0.0);
        constraint.mask(&mut logits)?;
        let allowed: Vec<u32> = (0..logits.len() as u32)
            .filter(|&t| logits[t as usize].is_finite())
            .collect();
        let pick = data.get(step % data.len().max(1)).copied().unwrap_or(0) as usize;
        let Some(&token) = allowed.get(pick % allowed.len().max(1)) else {
            break;
        };
        let check = constraint.allows(token)?;
        let committed = constraint.commit(token);
        if !check {
            return Err(Error::Grammar(format!(
                "step {step}: token {token} is in the mask but its check refuses it; commit gave {committed:?}"
            )));
        }
        committed?;
        if pick % 7 == 3 {
            constraint.rollback(1)?;
        }
        constraint.forced_tokens()?;
    }
    constraint.is_accepting().map(drop)
}

/// The grammar harness's compiler, built once: a SentencePiece vocabulary of the 256 byte
/// tokens (so every output is spellable), the JSON punctuation and a few words.
fn grammar_compiler() -> Result<&'static GrammarCompiler> {
    static COMPILER: OnceLock<std::result::Result<GrammarCompiler, String>> = OnceLock::new();
    let built = COMPILER.get_or_init(|| {
        let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
        tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
        let words = [
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            "\"",
            "\u{2581}",
            "true",
            "false",
            "null",
            "0",
            "1",
            "12",
            "-",
            ".",
            "e",
            "a",
            "ab",
            "\u{2581}a",
            "name",
            "x",
        ];
        tokens.extend(words.iter().map(|w| w.to_string()));
        let vocab = crate::tokenizer::Vocab {
            model: "llama".into(),
            tokens,
            bos: Some(1),
            eos: Some(2),
            unk: Some(0),
            ..Default::default()
        };
        Tokenizer::from_vocab(&vocab)
            .and_then(|t| GrammarCompiler::new(&t))
            .map_err(|e| e.to_string())
    });
    built
        .as_ref()
        .map_err(|e| Error::Grammar(format!("the fuzz vocabulary: {e}")))
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
