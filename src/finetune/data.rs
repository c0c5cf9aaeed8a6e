//! Training data: JSON lines of `{"text": …}` (loss on every token) or `{"messages": […]}`
//! rendered with the model's chat template (loss on the assistant turns only), tokenized into
//! [`Example`]s and cut into padded batches.

use crate::chat_template::{ChatMessage, ChatTemplate};
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use std::path::Path;

/// One tokenized example: the tokens and, per token, whether predicting it counts in the loss.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    /// Token ids.
    pub tokens: Vec<u32>,
    /// `loss[i]`: token i is a target (it is predicted from tokens 0..i).
    pub loss: Vec<bool>,
}

impl Example {
    /// How many tokens count in the loss (excluding the first, which nothing predicts).
    pub fn targets(&self) -> usize {
        self.loss.iter().skip(1).filter(|&&l| l).count()
    }
}

/// What turns a data line into tokens: the tokenizer, and the chat template for `messages`.
pub struct Encoder<'a> {
    /// The model's tokenizer.
    pub tokenizer: &'a Tokenizer,
    /// The model's chat template, needed only by `messages` lines.
    pub template: Option<&'a ChatTemplate>,
}

/// Reads a JSON-lines file into examples, each cut to `seq_len` tokens. Blank lines are skipped;
/// any other bad line is an error naming the file and the line.
pub fn load_jsonl(path: &Path, enc: &Encoder, seq_len: usize) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |what: String| Error::format(path, format!("line {}: {what}", i + 1));
        let json: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
        let mut ex = encode_line(&json, enc).map_err(|e| match e {
            Error::InvalidArgument(m) => bad(m),
            other => bad(other.to_string()),
        })?;
        ex.tokens.truncate(seq_len);
        ex.loss.truncate(seq_len);
        if ex.tokens.len() < 2 || ex.targets() == 0 {
            return Err(bad(
                "nothing to learn: fewer than two tokens, or no target token \
                 (an assistant turn cut off by --seq-len?)"
                    .into(),
            ));
        }
        out.push(ex);
    }
    if out.is_empty() {
        return Err(Error::format(path, "no examples"));
    }
    Ok(out)
}

/// One line's example: `{"text": …}` or `{"messages": [{"role", "content"}, …]}`.
pub fn encode_line(json: &serde_json::Value, enc: &Encoder) -> Result<Example> {
    let obj = json
        .as_object()
        .ok_or_else(|| Error::InvalidArgument("expected a JSON object".into()))?;
    match (obj.get("text"), obj.get("messages")) {
        (Some(t), None) => {
            let t = t
                .as_str()
                .ok_or_else(|| Error::InvalidArgument("\"text\" must be a string".into()))?;
            let mut tokens = enc.tokenizer.encode(t, true)?;
            if let Some(eos) = enc.tokenizer.eos() {
                tokens.push(eos);
            }
            let loss = vec![true; tokens.len()];
            Ok(Example { tokens, loss })
        }
        (None, Some(m)) => encode_messages(m, enc),
        (Some(_), Some(_)) => Err(Error::InvalidArgument(
            "a line has either \"text\" or \"messages\", not both".into(),
        )),
        (None, None) => Err(Error::InvalidArgument(
            "expected a \"text\" or a \"messages\" field".into(),
        )),
    }
}

/// A conversation rendered through the template; the text each assistant turn adds is the
/// loss region. The rendering of every prefix must be a prefix of the whole rendering.
fn encode_messages(m: &serde_json::Value, enc: &Encoder) -> Result<Example> {
    let template = enc.template.ok_or_else(|| {
        Error::InvalidArgument("\"messages\" needs a model with a chat template".into())
    })?;
    let list = m
        .as_array()
        .ok_or_else(|| Error::InvalidArgument("\"messages\" must be an array".into()))?;
    let mut messages = Vec::with_capacity(list.len());
    for (j, item) in list.iter().enumerate() {
        let field = |name: &str| {
            item.get(name).and_then(|v| v.as_str()).ok_or_else(|| {
                Error::InvalidArgument(format!("messages[{j}].{name} must be a string"))
            })
        };
        messages.push(ChatMessage::new(field("role")?, field("content")?));
    }
    if !messages.iter().any(|m| m.role == "assistant") {
        return Err(Error::InvalidArgument(
            "\"messages\" has no assistant turn to learn".into(),
        ));
    }
    // Byte ranges of the assistant turns in the rendering of the whole conversation.
    let mut regions: Vec<(usize, usize)> = Vec::new();
    let mut done = String::new();
    for j in 0..messages.len() {
        if messages[j].role != "assistant" {
            continue;
        }
        let before = template.render(&messages[..j], true)?;
        let after = template.render(&messages[..=j], false)?;
        if !before.starts_with(done.as_str()) || !after.starts_with(&before) {
            return Err(Error::InvalidArgument(format!(
                "the chat template does not render messages[..{j}] as a prefix of the \
                 conversation, so the assistant turn cannot be told apart"
            )));
        }
        regions.push((before.len(), after.len()));
        done = after;
    }
    // One tokenization of the whole text (segment by segment would differ at the seams);
    // each token's byte span, from the vocabulary's bytes, decides whether it is learned.
    let tokens = enc.tokenizer.encode(&done, false)?;
    let spans: Vec<usize> = tokens
        .iter()
        .map(|&t| enc.tokenizer.token_bytes(t).map_or(0, <[u8]>::len))
        .collect();
    let total: usize = spans.iter().sum();
    // A SentencePiece vocabulary may add one space in front of the text.
    let shift = match total.checked_sub(done.len()) {
        Some(s @ (0 | 1)) => s,
        _ => {
            return Err(Error::InvalidArgument(format!(
                "the tokens of the rendered conversation spell {total} bytes, the text has {}: \
                 cannot locate the assistant turns",
                done.len()
            )))
        }
    };
    let mut loss = Vec::with_capacity(tokens.len());
    let mut at = 0usize;
    for len in spans {
        let (start, end) = (at.saturating_sub(shift), (at + len).saturating_sub(shift));
        at += len;
        loss.push(regions.iter().any(|&(a, b)| start < b && end > a));
    }
    Ok(Example { tokens, loss })
}

/// A batch of B examples padded to the longest: inputs [B, L] and per position the target
/// token and its weight (0 for padding and non-loss tokens), both [B, L] row-major.
pub struct Batch {
    /// Sequences in the batch.
    pub b: usize,
    /// Positions per sequence (the longest example minus one).
    pub l: usize,
    /// Input tokens [B, L] (padding repeats token 0).
    pub inputs: Vec<u32>,
    /// Target tokens [B, L]: input position t predicts `targets[t]`.
    pub targets: Vec<u32>,
    /// 1.0 where the target counts in the loss, else 0.0 [B, L].
    pub weights: Vec<f32>,
}

impl Batch {
    /// The batch of `examples` (at least one).
    pub fn new(examples: &[&Example]) -> Batch {
        let l = examples
            .iter()
            .map(|e| e.tokens.len().saturating_sub(1))
            .max()
            .unwrap_or(0)
            .max(1);
        let b = examples.len();
        let mut batch = Batch {
            b,
            l,
            inputs: vec![0; b * l],
            targets: vec![0; b * l],
            weights: vec![0.0; b * l],
        };
        for (s, e) in examples.iter().enumerate() {
            for t in 0..e.tokens.len().saturating_sub(1) {
                batch.inputs[s * l + t] = e.tokens[t];
                batch.targets[s * l + t] = e.tokens[t + 1];
                batch.weights[s * l + t] = if e.loss[t + 1] { 1.0 } else { 0.0 };
            }
        }
        batch
    }

    /// Tokens that count in the loss.
    pub fn target_count(&self) -> usize {
        self.weights.iter().filter(|&&w| w > 0.0).count()
    }
}
