//! Logprobs of generated tokens: which tokens the text released so far covers, and OpenAI's
//! two shapes for them (chat `logprobs.content[]`, completions `tokens` / `token_logprobs` /
//! `top_logprobs` / `text_offset`).
//!
//! The numbers are the sampler's ([`Sampled`]): log-softmax of the model's logits before bias,
//! penalties, temperature and truncation (vLLM's default). An entry is released with the text
//! chunk that completes its bytes, so streamed chunks carry the entries of their own text and
//! the bytes of all entries, appended, are the returned text. Two exceptions: the token that
//! ends the generation (`<|im_end|>`) has no entry, as its text is not returned; and when a stop
//! string cuts the text, the token holding its start keeps its entry although part of its bytes
//! lie past the end. Bytes that are not UTF-8 reach the text as U+FFFD (three bytes for one),
//! so after such a token the entries' bytes no longer add up to the text exactly; the entries
//! still come out once each, in order.

use crate::sampler::Sampled;
use crate::tokenizer::Tokenizer;
use serde_json::{json, Map, Value};
use std::collections::VecDeque;

/// The most top logprobs a request may ask for (as OpenAI's chat API; the C ABI's
/// `MLXE_MAX_LOGPROBS`).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// A token with its log-probability.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The token id.
    pub id: u32,
    /// The token's text (bytes that are not UTF-8 on their own show as U+FFFD).
    pub text: String,
    /// The exact bytes the token stands for.
    pub bytes: Vec<u8>,
    /// Its log-probability.
    pub logprob: f32,
}

/// One generated token's logprobs.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    /// The chosen token.
    pub chosen: Candidate,
    /// The most likely tokens, best first.
    pub top: Vec<Candidate>,
    /// Characters of the returned text before this token's first byte.
    pub text_offset: usize,
}

/// Follows one generation: takes each sampled token, hands its entry out once the text
/// released to the client covers the token's bytes.
#[derive(Debug, Default)]
pub struct LogprobTracker {
    /// Entries whose bytes are not all released yet, with their byte counts.
    pending: VecDeque<(TokenLogprobs, usize)>,
    /// Released bytes not yet assigned to an entry.
    credit: usize,
    /// Bytes assigned to entries handed out (the next entry's first byte).
    assigned: usize,
    /// The text released so far, and a cursor (byte, char) into it for `text_offset`.
    released: String,
    cursor: (usize, usize),
}

impl LogprobTracker {
    /// Records a sampled token that contributes `bytes` bytes to the text (0 for a special
    /// token the text leaves out).
    pub fn push(&mut self, tokenizer: &Tokenizer, sampled: &Sampled, bytes: usize) {
        let chosen = candidate(
            tokenizer,
            sampled.token,
            sampled.logprob.unwrap_or(f32::NAN),
        );
        let top = sampled
            .top_logprobs
            .iter()
            .map(|&(id, lp)| candidate(tokenizer, id, lp))
            .collect();
        let entry = TokenLogprobs {
            chosen,
            top,
            text_offset: 0,
        };
        self.pending.push_back((entry, bytes));
    }

    /// Text released to the client: returns the entries whose bytes it completes.
    pub fn release(&mut self, text: &str) -> Vec<TokenLogprobs> {
        self.released.push_str(text);
        self.credit += text.len();
        let mut out = vec![];
        while let Some(&(_, bytes)) = self.pending.front() {
            if bytes > self.credit {
                break;
            }
            self.credit -= bytes;
            out.extend(self.hand_out());
        }
        out
    }

    /// The generation ended: every entry left, or after a stop string only the one whose
    /// bytes were partly released.
    pub fn finish(&mut self, stopped: bool) -> Vec<TokenLogprobs> {
        let keep = match stopped {
            true => usize::from(self.credit > 0),
            false => self.pending.len(),
        };
        let out = (0..keep).filter_map(|_| self.hand_out()).collect();
        self.pending.clear();
        self.credit = 0;
        out
    }

    /// Pops the first pending entry and stamps its text offset.
    fn hand_out(&mut self) -> Option<TokenLogprobs> {
        let (mut entry, bytes) = self.pending.pop_front()?;
        entry.text_offset = self.chars_before(self.assigned);
        self.assigned += bytes;
        Some(entry)
    }

    /// Characters of the released text that begin before byte `at` (advancing a cursor:
    /// offsets are asked for in increasing order).
    fn chars_before(&mut self, at: usize) -> usize {
        let (mut byte, mut chars) = self.cursor;
        for c in self.released[byte.min(self.released.len())..].chars() {
            if byte >= at {
                break;
            }
            byte += c.len_utf8();
            chars += 1;
        }
        self.cursor = (byte, chars);
        chars
    }
}

/// A token's text, bytes and logprob (an id the tokenizer lacks shows as U+FFFD).
fn candidate(tokenizer: &Tokenizer, id: u32, logprob: f32) -> Candidate {
    let bytes = tokenizer
        .token_bytes(id)
        .map_or_else(|| "\u{FFFD}".as_bytes().to_vec(), <[u8]>::to_vec);
    Candidate {
        id,
        text: String::from_utf8_lossy(&bytes).into_owned(),
        bytes,
        logprob,
    }
}

/// The bytes token `id` adds to generated text, as the server's decoder (special tokens
/// skipped) produces them.
pub fn contributed_bytes(tokenizer: &Tokenizer, id: u32) -> usize {
    match (tokenizer.token_kind(id), tokenizer.token_bytes(id)) {
        (Some(kind), Some(_)) if kind.is_special() => 0,
        (Some(_), Some(bytes)) => bytes.len(),
        _ => "\u{FFFD}".len(),
    }
}

/// A logprob as JSON (a non-finite value, which finite logits never give, becomes null).
fn number(logprob: f32) -> Value {
    json!(f64::from(logprob))
}

/// How a token is named in a response: its text, or with vLLM's `return_tokens_as_token_ids`
/// `token_id:ID` (the text alone cannot always tell tokens apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenNames {
    /// The token's text.
    #[default]
    Text,
    /// `token_id:ID`.
    Ids,
}

impl TokenNames {
    /// The name of `c`.
    fn of(self, c: &Candidate) -> String {
        match self {
            TokenNames::Text => c.text.clone(),
            TokenNames::Ids => format!("token_id:{}", c.id),
        }
    }
}

/// Chat's `{"token", "logprob", "bytes"}`.
fn chat_candidate(c: &Candidate, names: TokenNames) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("token".into(), json!(names.of(c)));
    m.insert("logprob".into(), number(c.logprob));
    m.insert("bytes".into(), json!(c.bytes));
    m
}

/// Chat's `logprobs` object: `{"content": [{token, logprob, bytes, top_logprobs: [...]}],
/// "refusal": null}`.
pub fn chat_json(entries: &[TokenLogprobs], names: TokenNames) -> Value {
    let content: Vec<Value> = entries
        .iter()
        .map(|e| {
            let mut m = chat_candidate(&e.chosen, names);
            let top: Vec<Value> = e
                .top
                .iter()
                .map(|c| Value::Object(chat_candidate(c, names)))
                .collect();
            m.insert("top_logprobs".into(), Value::Array(top));
            Value::Object(m)
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// Completions' `logprobs` object: parallel arrays `tokens`, `token_logprobs`, `top_logprobs`
/// (one `{text: logprob}` map per token, holding the top N and the chosen token) and
/// `text_offset` (characters into the returned text).
pub fn completion_json(entries: &[TokenLogprobs], names: TokenNames) -> Value {
    let tokens: Vec<String> = entries.iter().map(|e| names.of(&e.chosen)).collect();
    let logprobs: Vec<Value> = entries.iter().map(|e| number(e.chosen.logprob)).collect();
    let top: Vec<Value> = entries
        .iter()
        .map(|e| {
            let mut m = Map::new();
            for c in e.top.iter().chain(std::iter::once(&e.chosen)) {
                m.entry(names.of(c)).or_insert_with(|| number(c.logprob));
            }
            Value::Object(m)
        })
        .collect();
    let offsets: Vec<usize> = entries.iter().map(|e| e.text_offset).collect();
    json!({
        "tokens": tokens,
        "token_logprobs": logprobs,
        "top_logprobs": top,
        "text_offset": offsets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(text: &str) -> (TokenLogprobs, usize) {
        let e = TokenLogprobs {
            chosen: Candidate {
                id: 0,
                text: text.into(),
                bytes: text.as_bytes().to_vec(),
                logprob: -1.0,
            },
            top: vec![],
            text_offset: 0,
        };
        (e, text.len())
    }

    fn tracker(pieces: &[&str]) -> LogprobTracker {
        let mut t = LogprobTracker::default();
        t.pending.extend(pieces.iter().map(|p| entry(p)));
        t
    }

    fn texts(entries: &[TokenLogprobs]) -> Vec<(&str, usize)> {
        entries
            .iter()
            .map(|e| (e.chosen.text.as_str(), e.text_offset))
            .collect()
    }

    #[test]
    fn entries_follow_the_released_text_with_character_offsets() {
        // "é" is two bytes: the offset of "b" counts it as one character.
        let mut t = tracker(&["a", "é", "b", "cd"]);
        assert_eq!(texts(&t.release("a")), [("a", 0)]);
        assert!(t.release("").is_empty());
        assert_eq!(texts(&t.release("éb")), [("é", 1), ("b", 2)]);
        assert!(t.release("c").is_empty(), "half of 'cd' is not enough");
        assert_eq!(texts(&t.release("d")), [("cd", 3)]);
        assert!(t.finish(false).is_empty());
    }

    #[test]
    fn a_stop_string_keeps_only_the_token_it_cut() {
        // Tokens "ab", "cS", "TOP"; stop "STOP": "abc" is released, "cS" straddles the cut.
        let mut t = tracker(&["ab", "cS", "TOP"]);
        assert_eq!(texts(&t.release("abc")), [("ab", 0)]);
        assert_eq!(texts(&t.finish(true)), [("cS", 2)]);
        let mut t = tracker(&["ab", "STOP"]);
        assert_eq!(texts(&t.release("ab")), [("ab", 0)]);
        assert!(t.finish(true).is_empty(), "nothing of STOP was released");
    }

    #[test]
    fn completion_top_maps_hold_the_chosen_token() {
        let e = TokenLogprobs {
            chosen: Candidate {
                id: 5,
                text: "x".into(),
                bytes: b"x".to_vec(),
                logprob: -3.0,
            },
            top: vec![Candidate {
                id: 6,
                text: "y".into(),
                bytes: b"y".to_vec(),
                logprob: -0.5,
            }],
            text_offset: 0,
        };
        let v = completion_json(std::slice::from_ref(&e), TokenNames::Text);
        assert_eq!(v["top_logprobs"][0], json!({"y": -0.5, "x": -3.0}));
        assert_eq!(v["tokens"], json!(["x"]));
        let v = completion_json(std::slice::from_ref(&e), TokenNames::Ids);
        assert_eq!(v["tokens"], json!(["token_id:5"]));
        let c = chat_json(&[e], TokenNames::Text);
        assert_eq!(c["content"][0]["bytes"], json!([120]));
        assert_eq!(c["content"][0]["top_logprobs"][0]["token"], "y");
    }
}
