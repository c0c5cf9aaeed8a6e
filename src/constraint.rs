//! Grammar-constrained decoding beside the sampler: JSON Schema, any JSON object, a regular
//! expression or a Lark grammar, enforced token by token with `llguidance`.
//!
//! [`GrammarCompiler`] is built once per tokenizer: it turns our [`Tokenizer`] into
//! llguidance's token trie (the bytes of every id; control, unknown and unused tokens marked
//! special with a leading 0xFF byte, as toktrie expects; the end-of-generation ids as its EOS
//! set) and holds the parser factory. [`GrammarCompiler::compile`] makes a [`Constraint`] for
//! one sequence, and a [`crate::sampler::Sampler`] carries it: before a draw the sampler asks
//! whether its unconstrained pick is allowed ([`Constraint::allows`], one token) and computes
//! the whole mask ([`Constraint::mask`]) only when it is not; after the draw it commits the
//! token ([`Constraint::commit`]). [`Constraint::forced_tokens`] hands out the tokens the
//! grammar forces so a caller can feed them without sampling, and [`Constraint::rollback`]
//! undoes committed tokens (speculative decoding).
//!
//! Once the grammar is complete and can take nothing more, only end-of-generation tokens are
//! allowed, so a generation ends by "stop".
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

use crate::tokenizer::{TokenKind, Tokenizer};
use crate::{Error, Result};

/// Whitespace allowed between JSON tokens when a schema does not say (`x-guidance`): one space,
/// or a newline and up to 20 spaces or tabs of indentation (llama.cpp's JSON grammars allow
/// the same), so a model cannot pad forever.
const JSON_WHITESPACE: &str = r"\x20|\x0A[\x20\x09]{0,20}";

/// What a generation must match.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// A JSON Schema (llguidance's subset: see the README's "Structured output").
    JsonSchema(Value),
    /// Any JSON object (OpenAI's `json_object`).
    JsonObject,
    /// A regular expression the whole output must match (Rust `regex` syntax).
    Regex(String),
    /// A grammar in llguidance's Lark dialect.
    Lark(String),
}

impl Grammar {
    /// A JSON Schema given as text; fails when it is not JSON or not an object or boolean.
    pub fn json_schema_text(text: &str) -> Result<Grammar> {
        let schema: Value = serde_json::from_str(text)
            .map_err(|e| Error::Grammar(format!("JSON schema is not valid JSON: {e}")))?;
        Grammar::json_schema(schema)
    }

    /// A JSON Schema given as a value; it must be an object or `true`.
    pub fn json_schema(schema: Value) -> Result<Grammar> {
        match schema {
            Value::Object(_) | Value::Bool(true) => Ok(Grammar::JsonSchema(schema)),
            Value::Bool(false) => Err(Error::Grammar(
                "the JSON schema `false` admits no value".into(),
            )),
            other => Err(Error::Grammar(format!(
                "a JSON schema must be an object or a boolean, not {}",
                json_kind(&other)
            ))),
        }
    }

    /// The grammar in llguidance's form.
    fn to_llguidance(&self) -> TopLevelGrammar {
        match self {
            Grammar::JsonSchema(schema) => {
                TopLevelGrammar::from_json_schema(bounded_json_schema(schema))
            }
            Grammar::JsonObject => {
                let object = serde_json::json!({"type": "object"});
                TopLevelGrammar::from_json_schema(bounded_json_schema(&object))
            }
            Grammar::Regex(rx) => TopLevelGrammar::from_regex(rx),
            Grammar::Lark(text) => TopLevelGrammar::from_lark(text.clone()),
        }
    }
}

/// The schema with [`JSON_WHITESPACE`] as its whitespace unless it sets `x-guidance` itself
/// (what [`Grammar::JsonSchema`] compiles; for embedding a schema in a Lark grammar's
/// `%json`).
pub fn bounded_json_schema(schema: &Value) -> Value {
    let mut schema = match schema {
        Value::Bool(true) => serde_json::json!({}),
        other => other.clone(),
    };
    if let Some(map) = schema.as_object_mut() {
        map.entry("x-guidance")
            .or_insert_with(|| serde_json::json!({ "whitespace_pattern": JSON_WHITESPACE }));
    }
    schema
}

/// "an array", "a string", … for error messages.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Our tokenizer seen through toktrie's interface.
struct TrieEnv {
    trie: TokTrie,
    tokenizer: Tokenizer,
}

impl TokenizerEnv for TrieEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    /// Text through our tokenizer; bytes that are not UTF-8 greedily through the trie.
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        match std::str::from_utf8(s) {
            Ok(text) => self
                .tokenizer
                .encode(text, false)
                .unwrap_or_else(|_| self.trie.greedy_tokenize(s)),
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}

/// The bytes toktrie should see for each id: text tokens as they decode, special ones (control,
/// unknown, unused) as 0xFF followed by their spelling.
fn trie_words(tokenizer: &Tokenizer) -> Vec<Vec<u8>> {
    (0..tokenizer.vocab_size() as u32)
        .map(|id| {
            let bytes = tokenizer.token_bytes(id).unwrap_or_default();
            match tokenizer.token_kind(id) {
                Some(TokenKind::Control | TokenKind::Unknown | TokenKind::Unused) => {
                    let mut marked = Vec::with_capacity(bytes.len() + 1);
                    marked.push(TokTrie::SPECIAL_TOKEN_MARKER);
                    marked.extend_from_slice(bytes);
                    marked
                }
                _ => bytes.to_vec(),
            }
        })
        .collect()
}

/// Compiles grammars for one tokenizer. Building it costs a pass over the vocabulary (the
/// token trie and llguidance's token classes), so it is built once and shared.
#[derive(Clone)]
pub struct GrammarCompiler {
    factory: Arc<ParserFactory>,
    vocab: usize,
}

impl std::fmt::Debug for GrammarCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarCompiler")
            .field("vocab", &self.vocab)
            .finish_non_exhaustive()
    }
}

impl GrammarCompiler {
    /// The compiler for `tokenizer`; its end-of-generation ids end a finished grammar.
    pub fn new(tokenizer: &Tokenizer) -> Result<GrammarCompiler> {
        let vocab = tokenizer.vocab_size();
        let eog = tokenizer.eog_ids();
        let Some(&first_eos) = eog.first() else {
            return Err(Error::Grammar(
                "the tokenizer has no end-of-generation token to end a grammar with".into(),
            ));
        };
        let vocab_u32 = u32::try_from(vocab)
            .map_err(|_| Error::Grammar(format!("a vocabulary of {vocab} tokens is too large")))?;
        let words = trie_words(tokenizer);
        let info = TokRxInfo::new(vocab_u32, first_eos);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(eog);
        let env: TokEnv = Arc::new(TrieEnv {
            trie,
            tokenizer: tokenizer.clone(),
        });
        let mut factory = ParserFactory::new_simple(&env).map_err(grammar_err)?;
        factory.quiet();
        Ok(GrammarCompiler {
            factory: Arc::new(factory),
            vocab,
        })
    }

    /// A fresh constraint for one sequence; a grammar llguidance refuses is an
    /// [`Error::Grammar`] with llguidance's message.
    pub fn compile(&self, grammar: &Grammar) -> Result<Constraint> {
        let parser = self
            .factory
            .create_parser(grammar.to_llguidance())
            .map_err(grammar_err)?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(Error::Grammar(e));
        }
        Ok(Constraint {
            matcher,
            vocab: self.vocab,
            stats: MaskStats::default(),
            check_first: true,
            ended: 0,
        })
    }

    /// How many token ids the trie covers.
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }
}

/// An llguidance error as ours.
fn grammar_err(e: anyhow::Error) -> Error {
    Error::Grammar(format!("{e:#}"))
}

/// Most timings [`MaskStats`] keeps of each kind (later ones are counted, not kept).
const MAX_TIMINGS: usize = 1 << 16;

/// How often the sampler needed the whole mask, and how long each took.
#[derive(Debug, Clone, Default)]
pub struct MaskStats {
    /// Tokens whose unconstrained pick was allowed (one-token check only).
    pub fast: usize,
    /// Times of the whole-mask computations (the first [`MAX_TIMINGS`]).
    pub full: Vec<Duration>,
    /// Times of the one-token checks (the first [`MAX_TIMINGS`]).
    pub checks: Vec<Duration>,
}

/// Keeps `t` unless `times` already holds [`MAX_TIMINGS`].
fn record(times: &mut Vec<Duration>, t: Duration) {
    if times.len() < MAX_TIMINGS {
        times.push(t);
    }
}

/// One sequence's grammar state: which tokens may come next, what has been committed.
#[derive(Clone)]
pub struct Constraint {
    matcher: Matcher,
    vocab: usize,
    stats: MaskStats,
    /// Whether the sampler checks its unconstrained pick before building the whole mask.
    check_first: bool,
    /// End-of-generation tokens committed after the grammar had finished (llguidance does not
    /// take them; [`Constraint::rollback`] undoes them first).
    ended: usize,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("vocab", &self.vocab)
            .field("stopped", &self.matcher.is_stopped())
            .finish_non_exhaustive()
    }
}

impl Constraint {
    /// Whether `token` may come next (one token checked, no mask built). Ids outside the
    /// tokenizer's vocabulary (padding rows of the LM head) never may.
    pub fn allows(&mut self, token: u32) -> Result<bool> {
        let start = Instant::now();
        let ok = match self.matcher.is_stopped() {
            _ if token as usize >= self.vocab => false,
            true => self.is_end(token),
            false => {
                self.matcher
                    .validate_tokens(&[token])
                    .map_err(grammar_err)?
                    == 1
            }
        };
        record(&mut self.stats.checks, start.elapsed());
        Ok(ok)
    }

    /// Sets every disallowed entry of `logits` to -inf (entries past the tokenizer's
    /// vocabulary included). A finished grammar allows only end-of-generation tokens.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<()> {
        let start = Instant::now();
        let allowed: SimpleVob = self.matcher.compute_mask_or_eos().map_err(grammar_err)?;
        let n = self.vocab.min(logits.len());
        allowed.iter_unset_entries(|i| {
            if i < n {
                logits[i] = f32::NEG_INFINITY;
            }
        });
        logits[n..].fill(f32::NEG_INFINITY);
        record(&mut self.stats.full, start.elapsed());
        Ok(())
    }

    /// Advances the grammar by a sampled token; a token it does not allow is an error.
    pub fn commit(&mut self, token: u32) -> Result<()> {
        if self.matcher.is_stopped() && self.is_end(token) {
            self.ended += 1;
            return Ok(());
        }
        self.matcher.consume_token(token).map_err(grammar_err)
    }

    /// The tokens the grammar forces next (possibly none), already committed: feed them to
    /// the model without sampling.
    pub fn forced_tokens(&mut self) -> Result<Vec<u32>> {
        if self.matcher.is_stopped() {
            return Ok(vec![]);
        }
        let tokens = self.matcher.consume_ff_tokens();
        match self.matcher.get_error() {
            Some(e) => Err(Error::Grammar(e)),
            None => Ok(tokens),
        }
    }

    /// Undoes the last `n` committed tokens (a rejected speculative draft).
    pub fn rollback(&mut self, n: usize) -> Result<()> {
        let ended = n.min(self.ended);
        self.ended -= ended;
        self.matcher.rollback(n - ended).map_err(grammar_err)
    }

    /// Whether the output so far is a complete match (an end-of-generation token may come).
    pub fn is_accepting(&mut self) -> Result<bool> {
        self.matcher.is_accepting().map_err(grammar_err)
    }

    /// Whether the grammar is complete and takes no more text.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// Whether the sampler tries its unconstrained pick first (the default) or always builds
    /// the whole mask (for measuring what the check saves).
    pub fn checks_first(&self) -> bool {
        self.check_first
    }

    /// Sets [`Constraint::checks_first`].
    pub fn set_check_first(&mut self, on: bool) {
        self.check_first = on;
    }

    /// Counters and timings of the fast check and the whole mask.
    pub fn stats(&self) -> &MaskStats {
        &self.stats
    }

    /// Records that the sampler's first pick was allowed.
    pub(crate) fn note_fast(&mut self) {
        self.stats.fast += 1;
    }

    /// Whether `token` is one of the trie's end-of-generation ids.
    fn is_end(&self, token: u32) -> bool {
        self.matcher
            .tok_env()
            .map(|env| env.tok_trie().eos_tokens().contains(&token))
            .unwrap_or(false)
    }
}
