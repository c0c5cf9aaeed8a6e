//! The OpenAI request and response shapes: reading a JSON body field by field (so every error
//! names its field), and building responses, stream chunks and errors.

use super::logprobs::{self, TokenLogprobs, TokenNames, MAX_TOP_LOGPROBS};
use super::tools::{self, Tools};
use crate::chat_template::ChatMessage;
use crate::constraint::Grammar;
use crate::sampler::{SamplerParams, MAX_LOGIT_BIAS};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

/// An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for a person.
    pub message: String,
    /// The request field at fault, if one is.
    pub param: Option<String>,
}

impl ApiError {
    /// A 400 about `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!("{param}: {}", message.into()),
            param: Some(param.to_string()),
        }
    }

    /// An error with this status and no particular field.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            param: None,
        }
    }

    /// OpenAI's `type` for the status.
    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            404 => "not_found_error",
            429 | 503 => "server_overloaded",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind(),
            "param": self.param,
            "code": self.status.as_u16(),
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// What to run the model on.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// A conversation, rendered with the chat template.
    Messages(Vec<ChatMessage>),
    /// Text, tokenized with the model's special tokens.
    Text(String),
    /// Token ids, used as they are.
    Tokens(Vec<u32>),
}

/// A parsed generation request (chat or completion).
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    /// The `model` field, if given.
    pub model: Option<String>,
    /// The input.
    pub prompt: Prompt,
    /// Sampler settings.
    pub sampling: SamplerParams,
    /// `max_completion_tokens` or `max_tokens`; `None` runs to the context limit.
    pub max_tokens: Option<usize>,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Answer with server-sent events.
    pub stream: bool,
    /// Send a usage chunk at the end of a stream.
    pub include_usage: bool,
    /// Logprobs asked for: `Some(n)` reports each token's and the `n` most likely
    /// (`sampling` is set to compute them).
    pub logprobs: Option<usize>,
    /// How logprobs name tokens (`return_tokens_as_token_ids`, vLLM's extension).
    pub token_names: TokenNames,
    /// `speculative` (our extension): false opts out of a speculating server's drafts.
    pub speculative: bool,
    /// The grammar `response_format` (or `tool_choice` required / a named function) asks
    /// for, with the field to blame if it fails to compile.
    pub grammar: Option<RequestGrammar>,
    /// Chat's `tools` and `tool_choice`.
    pub tools: Option<Tools>,
}

/// A grammar a request asks for and the request field it came from.
#[derive(Debug, Clone)]
pub struct RequestGrammar {
    /// What the output must match.
    pub grammar: Grammar,
    /// The field named in a 400 when it does not compile.
    pub param: String,
}

/// Most stop strings one request may give.
pub const MAX_STOP_STRINGS: usize = 16;

/// Fields we know but cannot honour yet: refused when set to anything but their neutral value.
const UNSUPPORTED: &[&str] = &["functions", "function_call", "echo", "suffix", "best_of"];

/// Parses a JSON body into an object.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")))?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the request body must be a JSON object",
        )),
    }
}

/// Reads a `/v1/chat/completions` body.
pub fn chat_request(obj: &Map<String, Value>) -> Result<GenerationRequest, ApiError> {
    let messages = match obj.get("messages") {
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, m)| message(i, m))
            .collect::<Result<Vec<_>, _>>()?,
        Some(Value::Array(_)) => return Err(ApiError::invalid("messages", "must not be empty")),
        Some(_) => return Err(ApiError::invalid("messages", "must be an array")),
        None => return Err(ApiError::invalid("messages", "is required")),
    };
    let logprobs = chat_logprobs(obj)?;
    let mut request = generation_request(obj, Prompt::Messages(messages), logprobs)?;
    let tools = tools::parse(obj)?;
    if let Some(grammar) = tools.as_ref().and_then(Tools::grammar) {
        if request.grammar.is_some() {
            return Err(ApiError::invalid(
                "tool_choice",
                "a required or named tool cannot be combined with response_format",
            ));
        }
        request.grammar = Some(RequestGrammar {
            grammar,
            param: "tools".into(),
        });
    }
    request.tools = tools;
    Ok(request)
}

/// Chat's `logprobs` (a boolean) and `top_logprobs` (0 to 20, only with `logprobs: true`).
fn chat_logprobs(obj: &Map<String, Value>) -> Result<Option<usize>, ApiError> {
    let top = top_count(obj, "top_logprobs")?;
    match (opt_bool(obj, "logprobs")?.unwrap_or(false), top) {
        (true, top) => Ok(Some(top.unwrap_or(0))),
        (false, None | Some(0)) => Ok(None),
        (false, Some(_)) => Err(ApiError::invalid(
            "top_logprobs",
            "needs \"logprobs\": true",
        )),
    }
}

/// An optional count of top logprobs in 0..=[`MAX_TOP_LOGPROBS`].
fn top_count(obj: &Map<String, Value>, name: &str) -> Result<Option<usize>, ApiError> {
    match opt_int(obj, name)? {
        Some(n) if (0..=MAX_TOP_LOGPROBS as i64).contains(&n) => Ok(Some(n as usize)),
        Some(n) => Err(ApiError::invalid(
            name,
            format!("must be between 0 and {MAX_TOP_LOGPROBS}, got {n}"),
        )),
        None => Ok(None),
    }
}

/// Reads a `/v1/completions` body.
pub fn completion_request(obj: &Map<String, Value>) -> Result<GenerationRequest, ApiError> {
    let prompt = match obj.get("prompt") {
        None | Some(Value::Null) => return Err(ApiError::invalid("prompt", "is required")),
        Some(value) => prompt(value)?,
    };
    for name in ["tools", "tool_choice"] {
        if !matches!(obj.get(name), None | Some(Value::Null)) {
            return Err(ApiError::invalid(
                name,
                "is only accepted by /v1/chat/completions",
            ));
        }
    }
    // Completions' `logprobs` is the count itself (OpenAI allows up to 5; we allow 20).
    let logprobs = top_count(obj, "logprobs")?;
    generation_request(obj, prompt, logprobs)
}

/// The fields chat and completions share.
fn generation_request(
    obj: &Map<String, Value>,
    prompt: Prompt,
    logprobs: Option<usize>,
) -> Result<GenerationRequest, ApiError> {
    refuse_unsupported(obj)?;
    if let Some(n) = opt_int(obj, "n")? {
        if n != 1 {
            return Err(ApiError::invalid("n", "only n = 1 is supported"));
        }
    }
    let max_tokens = match opt_int(obj, "max_completion_tokens")? {
        Some(n) => Some(("max_completion_tokens", n)),
        None => opt_int(obj, "max_tokens")?.map(|n| ("max_tokens", n)),
    };
    if let Some((name, n)) = max_tokens {
        if n < 1 {
            return Err(ApiError::invalid(
                name,
                format!("must be at least 1, got {n}"),
            ));
        }
    }
    let sampling = SamplerParams {
        logprobs: logprobs.is_some(),
        n_logprobs: logprobs.unwrap_or(0),
        ..sampling(obj)?
    };
    Ok(GenerationRequest {
        model: opt_string(obj, "model")?,
        prompt,
        sampling,
        max_tokens: max_tokens.map(|(_, n)| usize::try_from(n).unwrap_or(usize::MAX)),
        stop: stop_strings(obj)?,
        stream: opt_bool(obj, "stream")?.unwrap_or(false),
        include_usage: include_usage(obj)?,
        logprobs,
        token_names: match opt_bool(obj, "return_tokens_as_token_ids")? {
            Some(true) => TokenNames::Ids,
            _ => TokenNames::Text,
        },
        grammar: response_format(obj)?,
        tools: None,
        speculative: opt_bool(obj, "speculative")?.unwrap_or(true),
    })
}

/// `response_format`: `{"type": "text"}` (none), `{"type": "json_object"}`, or
/// `{"type": "json_schema", "json_schema": {"name", "schema", "strict", "description"}}`.
fn response_format(obj: &Map<String, Value>) -> Result<Option<RequestGrammar>, ApiError> {
    let format = match obj.get("response_format") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(f)) => f,
        Some(_) => return Err(ApiError::invalid("response_format", "must be an object")),
    };
    let grammar = |grammar, param: &str| {
        Ok(Some(RequestGrammar {
            grammar,
            param: param.to_string(),
        }))
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => grammar(Grammar::JsonObject, "response_format"),
        Some("json_schema") => {
            let at = "response_format.json_schema";
            let spec = match format.get("json_schema") {
                Some(Value::Object(spec)) => spec,
                _ => return Err(ApiError::invalid(at, "must be an object")),
            };
            match spec.get("name") {
                Some(Value::String(n)) if valid_schema_name(n) => {}
                _ => {
                    return Err(ApiError::invalid(
                        &format!("{at}.name"),
                        "must be a string of 1 to 64 letters, digits, '_' or '-'",
                    ))
                }
            }
            if !matches!(
                spec.get("strict"),
                None | Some(Value::Null | Value::Bool(_))
            ) {
                return Err(ApiError::invalid(
                    &format!("{at}.strict"),
                    "must be a boolean",
                ));
            }
            let param = format!("{at}.schema");
            let schema = spec.get("schema").cloned().unwrap_or(json!({}));
            let schema = Grammar::json_schema(schema)
                .map_err(|e| ApiError::invalid(&param, e.to_string()))?;
            grammar(schema, &param)
        }
        _ => Err(ApiError::invalid(
            "response_format.type",
            "must be \"text\", \"json_object\" or \"json_schema\"",
        )),
    }
}

/// OpenAI's rule for `json_schema.name`.
fn valid_schema_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The sampler settings a request asks for; OpenAI's defaults (temperature 1, no truncation).
fn sampling(obj: &Map<String, Value>) -> Result<SamplerParams, ApiError> {
    let neutral = SamplerParams {
        temperature: 1.0,
        ..SamplerParams::greedy()
    };
    let top_k = match opt_int(obj, "top_k")? {
        Some(k) if k < 0 => return Err(ApiError::invalid("top_k", "must be >= 0 (0: off)")),
        Some(k) => usize::try_from(k).unwrap_or(usize::MAX),
        None => 0,
    };
    let seed = opt_int(obj, "seed")?.map(|s| s as u64);
    Ok(SamplerParams {
        temperature: ranged(obj, "temperature", 0.0..=2.0)?.unwrap_or(neutral.temperature),
        top_p: match ranged(obj, "top_p", 0.0..=1.0)? {
            Some(p) if p <= 0.0 => return Err(ApiError::invalid("top_p", "must be in (0, 1]")),
            Some(p) => p,
            None => 1.0,
        },
        min_p: ranged(obj, "min_p", 0.0..=1.0)?.unwrap_or(neutral.min_p),
        top_k,
        presence_penalty: ranged(obj, "presence_penalty", -2.0..=2.0)?.unwrap_or(0.0),
        frequency_penalty: ranged(obj, "frequency_penalty", -2.0..=2.0)?.unwrap_or(0.0),
        repetition_penalty: match ranged(obj, "repetition_penalty", 0.0..=10.0)? {
            Some(p) if p <= 0.0 => {
                return Err(ApiError::invalid("repetition_penalty", "must be > 0"))
            }
            Some(p) => p,
            None => 1.0,
        },
        logit_bias: logit_bias(obj)?,
        seed,
        ..neutral
    })
}

/// `logit_bias`: `{"token id": bias}`, each bias in [-100, 100]; keys naming one id twice
/// ("7", "07") keep one bias. Ids are checked against the vocabulary once the model is known.
fn logit_bias(obj: &Map<String, Value>) -> Result<Vec<(u32, f32)>, ApiError> {
    let entries = match obj.get("logit_bias") {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(ApiError::invalid(
                "logit_bias",
                "must be an object mapping token ids to biases",
            ))
        }
    };
    let mut biases = std::collections::BTreeMap::new();
    for (key, value) in entries {
        let id: u32 = key.trim().parse().map_err(|_| {
            ApiError::invalid("logit_bias", format!("key {key:?} is not a token id"))
        })?;
        let range = -f64::from(MAX_LOGIT_BIAS)..=f64::from(MAX_LOGIT_BIAS);
        match value.as_f64() {
            Some(b) if range.contains(&b) => biases.insert(id, b as f32),
            _ => {
                return Err(ApiError::invalid(
                    "logit_bias",
                    format!(
                        "the bias of token {id} must be a number in [-{MAX_LOGIT_BIAS}, \
                         {MAX_LOGIT_BIAS}], got {value}"
                    ),
                ))
            }
        };
    }
    Ok(biases.into_iter().collect())
}

/// `stream_options.include_usage`.
fn include_usage(obj: &Map<String, Value>) -> Result<bool, ApiError> {
    match obj.get("stream_options") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Object(options)) => match options.get("include_usage") {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(ApiError::invalid(
                "stream_options.include_usage",
                "must be a boolean",
            )),
        },
        Some(_) => Err(ApiError::invalid("stream_options", "must be an object")),
    }
}

/// Refuses a field we cannot honour unless it holds its neutral value.
fn refuse_unsupported(obj: &Map<String, Value>) -> Result<(), ApiError> {
    for &name in UNSUPPORTED {
        let neutral = match obj.get(name) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => true,
            Some(Value::Object(m)) => m.is_empty() || m.get("type") == Some(&json!("text")),
            Some(Value::Array(a)) => a.is_empty(),
            Some(Value::String(s)) => s.is_empty() || (name == "tool_choice" && s == "none"),
            Some(Value::Number(n)) => name == "best_of" && n.as_u64() == Some(1),
            Some(Value::Bool(true)) => false,
        };
        if !neutral {
            return Err(ApiError::invalid(name, "is not supported by this server"));
        }
    }
    Ok(())
}

/// `stop`: a string or an array of non-empty strings.
fn stop_strings(obj: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let stops = match obj.get("stop") {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::invalid("stop", "must be a string or an array of strings"))?,
        Some(_) => {
            return Err(ApiError::invalid(
                "stop",
                "must be a string or an array of strings",
            ))
        }
    };
    if stops.len() > MAX_STOP_STRINGS {
        return Err(ApiError::invalid(
            "stop",
            format!("at most {MAX_STOP_STRINGS} stop strings"),
        ));
    }
    if stops.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", "stop strings must not be empty"));
    }
    Ok(stops)
}

/// One chat message: a role and a string or text parts; an assistant's `tool_calls`, a `tool`
/// message's `tool_call_id`.
fn message(i: usize, value: &Value) -> Result<ChatMessage, ApiError> {
    let at = format!("messages[{i}]");
    let obj = value
        .as_object()
        .ok_or_else(|| ApiError::invalid(&at, "must be an object"))?;
    let roles = ["system", "developer", "user", "assistant", "tool"];
    let role = match obj.get("role") {
        Some(Value::String(r)) if roles.contains(&&**r) => {
            if r == "developer" {
                "system".to_string()
            } else {
                r.clone()
            }
        }
        Some(Value::String(r)) => {
            return Err(ApiError::invalid(
                &format!("{at}.role"),
                format!("unsupported role '{r}' (system, developer, user, assistant or tool)"),
            ))
        }
        _ => return Err(ApiError::invalid(&format!("{at}.role"), "must be a string")),
    };
    let content = match obj.get("content") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) if role == "assistant" => String::new(),
        Some(Value::Array(parts)) => text_parts(&at, parts)?,
        _ => {
            return Err(ApiError::invalid(
                &format!("{at}.content"),
                "must be a string or an array of text parts",
            ))
        }
    };
    let mut message = ChatMessage::new(role, content);
    match obj.get("tool_calls") {
        None | Some(Value::Null) => {}
        Some(calls) if message.role == "assistant" => {
            message.tool_calls = tools::template_calls(&format!("{at}.tool_calls"), calls)?;
        }
        Some(_) => {
            return Err(ApiError::invalid(
                &format!("{at}.tool_calls"),
                "only assistant messages carry tool calls",
            ))
        }
    }
    match obj.get("tool_call_id") {
        None | Some(Value::Null) => {}
        Some(Value::String(id)) => message.tool_call_id = Some(id.clone()),
        Some(_) => {
            return Err(ApiError::invalid(
                &format!("{at}.tool_call_id"),
                "must be a string",
            ))
        }
    }
    Ok(message)
}

/// The text of `[{"type": "text", "text": …}, …]`, concatenated.
fn text_parts(at: &str, parts: &[Value]) -> Result<String, ApiError> {
    let mut text = String::new();
    for (j, part) in parts.iter().enumerate() {
        let field = format!("{at}.content[{j}]");
        let kind = part.get("type").and_then(Value::as_str);
        match (kind, part.get("text").and_then(Value::as_str)) {
            (Some("text"), Some(t)) => text.push_str(t),
            (Some("text"), None) => {
                return Err(ApiError::invalid(
                    &field,
                    "a text part needs a string 'text'",
                ))
            }
            _ => return Err(ApiError::invalid(&field, "only text parts are supported")),
        }
    }
    Ok(text)
}

/// `prompt`: a string, token ids, or a one-element array of either.
fn prompt(value: &Value) -> Result<Prompt, ApiError> {
    let bad = || {
        ApiError::invalid(
            "prompt",
            "must be a string, an array of token ids, or an array holding one of those",
        )
    };
    match value {
        Value::String(s) => Ok(Prompt::Text(s.clone())),
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_number) => items
            .iter()
            .map(|v| v.as_u64().and_then(|t| u32::try_from(t).ok()))
            .collect::<Option<Vec<u32>>>()
            .map(Prompt::Tokens)
            .ok_or_else(|| ApiError::invalid("prompt", "token ids must be non-negative integers")),
        Value::Array(items) if items.len() == 1 => match &items[0] {
            Value::Array(_) | Value::String(_) => prompt(&items[0]),
            _ => Err(bad()),
        },
        Value::Array(items) if items.len() > 1 => Err(ApiError::invalid(
            "prompt",
            "only one prompt per request is supported",
        )),
        _ => Err(bad()),
    }
}

/// An optional string field.
fn opt_string(obj: &Map<String, Value>, name: &str) -> Result<Option<String>, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid(name, "must be a string")),
    }
}

/// An optional boolean field.
fn opt_bool(obj: &Map<String, Value>, name: &str) -> Result<Option<bool>, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::invalid(name, "must be a boolean")),
    }
}

/// An optional integer field (a float with no fraction counts).
fn opt_int(obj: &Map<String, Value>, name: &str) -> Result<Option<i64>, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_u64().map(|u| u as i64))
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| ApiError::invalid(name, "must be an integer")),
        Some(_) => Err(ApiError::invalid(name, "must be an integer")),
    }
}

/// An optional number field within `range`.
fn ranged(
    obj: &Map<String, Value>,
    name: &str,
    range: std::ops::RangeInclusive<f64>,
) -> Result<Option<f32>, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(x) if range.contains(&x) => Ok(Some(x as f32)),
            _ => Err(ApiError::invalid(
                name,
                format!(
                    "must be between {} and {}, got {n}",
                    range.start(),
                    range.end()
                ),
            )),
        },
        Some(_) => Err(ApiError::invalid(name, "must be a number")),
    }
}

/// Token counts of a finished request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens read.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Prompt positions reused from the prefix cache.
    pub cached_tokens: usize,
}

impl Usage {
    /// OpenAI's `usage` object.
    pub fn to_json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        })
    }
}

/// Which endpoint a response belongs to (they differ in `object` and in choice shape).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completions,
}

/// The identity every response and chunk of one request shares.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    /// `chatcmpl-…` or `cmpl-…`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// The served model's name.
    pub model: String,
    /// Chat or completions.
    pub endpoint: Endpoint,
    /// Whether choices carry logprobs (otherwise `logprobs: null`).
    pub logprobs: bool,
    /// How logprobs name tokens.
    pub token_names: TokenNames,
    /// Whether the output is parsed for tool calls (chat with tools, `tool_choice` not none).
    pub tool_calls: bool,
}

impl ResponseHead {
    /// A complete chat response whose output held tool calls: `message.tool_calls`,
    /// `content` the text before them (null when none), `finish_reason: "tool_calls"`.
    pub fn tool_call_response(
        &self,
        content: &str,
        calls: &[tools::ToolCall],
        logprobs: &[TokenLogprobs],
        usage: Usage,
    ) -> Value {
        let mut body = self.response(content, logprobs, "tool_calls", usage);
        let message = &mut body["choices"][0]["message"];
        if content.is_empty() {
            message["content"] = Value::Null;
        }
        message["tool_calls"] = tools::calls_json(calls, &self.id);
        body
    }

    /// A stream chunk carrying call `index` whole in `delta.tool_calls`.
    pub fn tool_call_chunk(&self, call: &tools::ToolCall, index: usize) -> Value {
        let delta = json!({"tool_calls": tools::delta_json(call, index, &self.id)});
        let choice = json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": null});
        self.envelope(self.chunk_object(), vec![choice], None)
    }
    /// A complete (non-streamed) response; `logprobs` are the entries of every token.
    pub fn response(
        &self,
        text: &str,
        logprobs: &[TokenLogprobs],
        finish: &str,
        usage: Usage,
    ) -> Value {
        let logprobs = self.logprobs_json(logprobs, true);
        let choice = match self.endpoint {
            Endpoint::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": logprobs,
                "finish_reason": finish,
            }),
            Endpoint::Completions => json!({
                "index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish,
            }),
        };
        let object = match self.endpoint {
            Endpoint::Chat => "chat.completion",
            Endpoint::Completions => "text_completion",
        };
        self.envelope(object, vec![choice], Some(usage.to_json()))
    }

    /// A stream chunk carrying `text` and the logprobs of its tokens (and the role, on the
    /// first chat chunk), or the finish reason.
    pub fn chunk(
        &self,
        text: Option<&str>,
        logprobs: &[TokenLogprobs],
        role: bool,
        finish: Option<&str>,
    ) -> Value {
        let logprobs = self.logprobs_json(logprobs, text.is_some());
        let choice = match self.endpoint {
            Endpoint::Chat => {
                let mut delta = Map::new();
                if role {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = text {
                    delta.insert("content".into(), json!(t));
                }
                json!({"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
            }
            Endpoint::Completions => json!({
                "index": 0, "text": text.unwrap_or(""), "logprobs": logprobs,
                "finish_reason": finish,
            }),
        };
        self.envelope(self.chunk_object(), vec![choice], None)
    }

    /// The `logprobs` of a choice: null unless asked for and `carries` (a chunk of text, or a
    /// whole response).
    fn logprobs_json(&self, entries: &[TokenLogprobs], carries: bool) -> Value {
        match (self.logprobs && carries, self.endpoint) {
            (false, _) => Value::Null,
            (true, Endpoint::Chat) => logprobs::chat_json(entries, self.token_names),
            (true, Endpoint::Completions) => logprobs::completion_json(entries, self.token_names),
        }
    }

    /// The final usage chunk of a stream (`choices: []`).
    pub fn usage_chunk(&self, usage: Usage) -> Value {
        self.envelope(self.chunk_object(), vec![], Some(usage.to_json()))
    }

    fn chunk_object(&self) -> &'static str {
        match self.endpoint {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Completions => "text_completion",
        }
    }

    fn envelope(&self, object: &str, choices: Vec<Value>, usage: Option<Value>) -> Value {
        let mut v = json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
        });
        if let Some(u) = usage {
            v["usage"] = u;
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: Value) -> Result<GenerationRequest, ApiError> {
        chat_request(body.as_object().unwrap())
    }

    fn param_of(body: Value) -> String {
        chat(body).unwrap_err().param.unwrap()
    }

    #[test]
    fn out_of_range_and_wrongly_typed_fields_are_named() {
        let msgs = json!([{"role": "user", "content": "hi"}]);
        assert_eq!(param_of(json!({"messages": msgs, "top_p": 2})), "top_p");
        assert_eq!(param_of(json!({"messages": msgs, "top_p": 0})), "top_p");
        assert_eq!(
            param_of(json!({"messages": msgs, "max_tokens": 0})),
            "max_tokens"
        );
        assert_eq!(
            param_of(json!({"messages": msgs, "max_tokens": -3})),
            "max_tokens"
        );
        assert_eq!(
            param_of(json!({"messages": msgs, "temperature": "hot"})),
            "temperature"
        );
        assert_eq!(param_of(json!({"messages": msgs, "stop": [1]})), "stop");
        assert_eq!(param_of(json!({"messages": msgs, "n": 2})), "n");
        for bad in [
            json!({"x": 5}),
            json!({"1": 101}),
            json!({"1": "5"}),
            json!([1]),
        ] {
            assert_eq!(
                param_of(json!({"messages": msgs, "logit_bias": bad})),
                "logit_bias"
            );
        }
        assert_eq!(
            param_of(json!({"messages": msgs, "logprobs": 1})),
            "logprobs"
        );
        assert_eq!(
            param_of(json!({"messages": msgs, "logprobs": true, "top_logprobs": 21})),
            "top_logprobs"
        );
        assert_eq!(
            param_of(json!({"messages": msgs, "top_logprobs": 2})),
            "top_logprobs"
        );
        assert_eq!(param_of(json!({"messages": []})), "messages");
        assert_eq!(
            param_of(json!({"messages": [{"role": "user"}]})),
            "messages[0].content"
        );
        assert_eq!(
            param_of(json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})),
            "messages[0].content[0]"
        );
    }

    #[test]
    fn fields_map_onto_the_sampler_and_unknown_ones_are_ignored() {
        let r = chat(json!({
            "messages": [{"role": "system", "content": "s"},
                         {"role": "user", "content": [{"type": "text", "text": "a"},
                                                       {"type": "text", "text": "b"}]}],
            "temperature": 0.5, "top_p": 0.9, "top_k": 7, "min_p": 0.1, "seed": 3,
            "presence_penalty": 0.5, "frequency_penalty": -0.5, "repetition_penalty": 1.1,
            "max_completion_tokens": 9, "max_tokens": 100, "stop": "x", "stream": true,
            "stream_options": {"include_usage": true}, "n": 1, "logprobs": false,
            "whatever": {"nested": 1},
        }))
        .unwrap();
        let s = &r.sampling;
        assert_eq!(
            (s.temperature, s.top_p, s.top_k, s.min_p),
            (0.5, 0.9, 7, 0.1)
        );
        assert_eq!((s.presence_penalty, s.frequency_penalty), (0.5, -0.5));
        assert_eq!((s.repetition_penalty, s.seed), (1.1, Some(3)));
        assert_eq!(r.max_tokens, Some(9));
        assert_eq!(r.logprobs, None);
        assert!(!s.logprobs && s.logit_bias.is_empty());
        assert_eq!(r.stop, ["x"]);
        assert!(r.stream && r.include_usage);
        assert_eq!(
            r.prompt,
            Prompt::Messages(vec![ChatMessage::system("s"), ChatMessage::user("ab")])
        );
    }

    #[test]
    fn logprobs_and_logit_bias_reach_the_sampler() {
        let r = chat(json!({
            "messages": [{"role": "user", "content": "hi"}],
            "logprobs": true, "top_logprobs": 3, "logit_bias": {"7": -100, "2": 1.5},
        }))
        .unwrap();
        assert_eq!(r.logprobs, Some(3));
        assert!(r.sampling.logprobs);
        assert_eq!(r.sampling.n_logprobs, 3);
        assert_eq!(r.sampling.logit_bias, [(2, 1.5), (7, -100.0)]);
        let c = completion_request(json!({"prompt": "a", "logprobs": 0}).as_object().unwrap());
        let c = c.unwrap();
        assert_eq!((c.logprobs, c.sampling.logprobs), (Some(0), true));
        let c = completion_request(json!({"prompt": "a", "logprobs": 6}).as_object().unwrap());
        assert_eq!(c.unwrap().logprobs, Some(6));
        let c = completion_request(json!({"prompt": "a", "logprobs": 21}).as_object().unwrap());
        assert_eq!(c.unwrap_err().param.unwrap(), "logprobs");
    }

    #[test]
    fn completion_prompts_take_text_or_token_ids() {
        let p = |v: Value| completion_request(json!({ "prompt": v }).as_object().unwrap());
        assert_eq!(p(json!("hi")).unwrap().prompt, Prompt::Text("hi".into()));
        assert_eq!(p(json!([1, 2])).unwrap().prompt, Prompt::Tokens(vec![1, 2]));
        assert_eq!(p(json!(["hi"])).unwrap().prompt, Prompt::Text("hi".into()));
        assert_eq!(p(json!([[5]])).unwrap().prompt, Prompt::Tokens(vec![5]));
        assert!(p(json!([-1])).is_err());
        assert!(p(json!(["a", "b"])).is_err());
        assert!(p(json!(7)).is_err());
        assert!(p(json!([])).is_err());
    }
}
