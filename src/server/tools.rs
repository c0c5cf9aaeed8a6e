//! Tool calls on `/v1/chat/completions`: reading `tools` and `tool_choice`, the grammar that
//! makes `required` or a named function emit a valid call, and turning the model's
//! `<tool_call>{"name": …, "arguments": {…}}</tool_call>` blocks (Qwen2.5's and Hermes'
//! format, which their chat templates teach) into OpenAI's `tool_calls`, whole or streamed.

use super::api::ApiError;
use crate::constraint::{self, Grammar};
use serde_json::{json, Map, Value};

/// Where a call begins and ends in the model's output.
const CALL_OPEN: &str = "<tool_call>";
const CALL_CLOSE: &str = "</tool_call>";

/// Most tools one request may list.
pub const MAX_TOOLS: usize = 128;

/// What `tool_choice` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// Never call a tool (the tools are still shown to the model).
    None,
    /// The model decides; calls in its output are parsed.
    Auto,
    /// The output is one call of a listed tool (grammar-constrained).
    Required,
    /// The output is one call of this tool (grammar-constrained).
    Named(String),
}

/// A request's tools.
#[derive(Debug, Clone)]
pub struct Tools {
    /// The entries as given (`{"type": "function", "function": {…}}`), for the template.
    pub definitions: Vec<Value>,
    /// Each tool's name and `parameters` schema (`{}` when absent: any arguments).
    pub functions: Vec<(String, Value)>,
    /// What `tool_choice` asks for.
    pub choice: ToolChoice,
}

/// One parsed call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// The function's name.
    pub name: String,
    /// Its arguments as JSON text (OpenAI sends a string).
    pub arguments: String,
}

/// `tools` and `tool_choice`; `None` without tools (a `tool_choice` other than "none" then is
/// a 400).
pub fn parse(obj: &Map<String, Value>) -> Result<Option<Tools>, ApiError> {
    let definitions = match obj.get("tools") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(items)) if items.len() <= MAX_TOOLS => items.clone(),
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid(
                "tools",
                format!("at most {MAX_TOOLS} tools"),
            ))
        }
        Some(_) => return Err(ApiError::invalid("tools", "must be an array")),
    };
    let functions = definitions
        .iter()
        .enumerate()
        .map(|(i, t)| function(i, t))
        .collect::<Result<Vec<_>, _>>()?;
    let choice = tool_choice(obj.get("tool_choice"), !functions.is_empty())?;
    if functions.is_empty() {
        return match choice {
            ToolChoice::None | ToolChoice::Auto => Ok(None),
            _ => Err(ApiError::invalid(
                "tool_choice",
                "needs a non-empty \"tools\"",
            )),
        };
    }
    if let ToolChoice::Named(name) = &choice {
        if !functions.iter().any(|(n, _)| n == name) {
            return Err(ApiError::invalid(
                "tool_choice.function.name",
                format!("'{name}' is not one of the listed tools"),
            ));
        }
    }
    Ok(Some(Tools {
        definitions,
        functions,
        choice,
    }))
}

/// `tools[i]`: a function's name (OpenAI's rule: 1 to 64 of `[A-Za-z0-9_-]`) and parameters.
fn function(i: usize, tool: &Value) -> Result<(String, Value), ApiError> {
    let at = format!("tools[{i}]");
    if tool.get("type").and_then(Value::as_str) != Some("function") {
        return Err(ApiError::invalid(
            &format!("{at}.type"),
            "must be \"function\"",
        ));
    }
    let Some(f) = tool.get("function").and_then(Value::as_object) else {
        return Err(ApiError::invalid(
            &format!("{at}.function"),
            "must be an object",
        ));
    };
    let name = match f.get("name").and_then(Value::as_str) {
        Some(n) if valid_name(n) => n.to_string(),
        _ => {
            return Err(ApiError::invalid(
                &format!("{at}.function.name"),
                "must be a string of 1 to 64 letters, digits, '_' or '-'",
            ))
        }
    };
    let parameters = match f.get("parameters") {
        None | Some(Value::Null) => json!({}),
        Some(p @ (Value::Object(_) | Value::Bool(_))) => p.clone(),
        Some(_) => {
            return Err(ApiError::invalid(
                &format!("{at}.function.parameters"),
                "must be a JSON schema object",
            ))
        }
    };
    Ok((name, parameters))
}

/// OpenAI's rule for function names.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `tool_choice`: "none", "auto", "required" or `{"type": "function", "function": {"name"}}`;
/// absent means "auto" with tools and "none" without.
fn tool_choice(value: Option<&Value>, have_tools: bool) -> Result<ToolChoice, ApiError> {
    let invalid = || {
        ApiError::invalid(
            "tool_choice",
            "must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \
             \"function\": {\"name\": …}}",
        )
    };
    match value {
        None | Some(Value::Null) => Ok(match have_tools {
            true => ToolChoice::Auto,
            false => ToolChoice::None,
        }),
        Some(Value::String(s)) => match s.as_str() {
            "none" => Ok(ToolChoice::None),
            "auto" => Ok(ToolChoice::Auto),
            "required" => Ok(ToolChoice::Required),
            _ => Err(invalid()),
        },
        Some(Value::Object(o)) if o.get("type").and_then(Value::as_str) == Some("function") => {
            match o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
            {
                Some(name) => Ok(ToolChoice::Named(name.to_string())),
                None => Err(ApiError::invalid(
                    "tool_choice.function.name",
                    "must be a string",
                )),
            }
        }
        Some(_) => Err(invalid()),
    }
}

impl Tools {
    /// Whether the output is parsed for calls (not with `tool_choice: "none"`).
    pub fn parses_calls(&self) -> bool {
        self.choice != ToolChoice::None
    }

    /// For `required` or a named function: a Lark grammar whose only outputs are one
    /// `<tool_call>` block calling a listed (or the named) tool with arguments valid against
    /// its `parameters`, written as the chat template shows the model.
    pub fn grammar(&self) -> Option<Grammar> {
        let wanted: Vec<&(String, Value)> = match &self.choice {
            ToolChoice::None | ToolChoice::Auto => return None,
            ToolChoice::Required => self.functions.iter().collect(),
            ToolChoice::Named(name) => self.functions.iter().filter(|(n, _)| n == name).collect(),
        };
        let mut lark = format!(
            "start: {} call {}\ncall: {}\n",
            literal(&format!("{CALL_OPEN}\n")),
            literal(&format!("\n{CALL_CLOSE}")),
            (0..wanted.len())
                .map(|i| format!("call_{i}"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        for (i, (name, parameters)) in wanted.iter().enumerate() {
            let head = format!("{{\"name\": \"{name}\", \"arguments\": ");
            let schema = constraint::bounded_json_schema(parameters);
            lark.push_str(&format!(
                "call_{i}: {} args_{i} \"}}\"\nargs_{i}: %json {schema}\n",
                literal(&head)
            ));
        }
        Some(Grammar::Lark(lark))
    }
}

/// A Lark string literal for `text` (JSON escapes).
fn literal(text: &str) -> String {
    Value::from(text).to_string()
}

/// The calls in a complete output and the text before the first one; `None` when the output
/// holds no well-formed call (then it is plain content).
pub fn split_calls(text: &str) -> Option<(String, Vec<ToolCall>)> {
    let start = text.find(CALL_OPEN)?;
    let mut calls = vec![];
    let mut rest = &text[start..];
    while let Some(open) = rest.find(CALL_OPEN) {
        let body_start = open + CALL_OPEN.len();
        let (body, after) = match rest[body_start..].find(CALL_CLOSE) {
            Some(close) => (
                &rest[body_start..body_start + close],
                &rest[body_start + close + CALL_CLOSE.len()..],
            ),
            None => (&rest[body_start..], ""),
        };
        calls.push(parse_call(body)?);
        rest = after;
    }
    Some((text[..start].trim_end().to_string(), calls))
}

/// `{"name": "...", "arguments": {...}}` (arguments may also be a JSON string).
fn parse_call(body: &str) -> Option<ToolCall> {
    let value: Value = serde_json::from_str(body.trim()).ok()?;
    let name = value.get("name")?.as_str()?.to_string();
    let arguments = match value.get("arguments") {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    Some(ToolCall { name, arguments })
}

/// Holds back streamed text from where a call may begin, so `<tool_call>` blocks never reach
/// the client as content.
#[derive(Debug, Default)]
pub struct CallFilter {
    /// Everything generated so far.
    text: String,
    /// Bytes of `text` already sent as content.
    sent: usize,
    /// A `<tool_call>` has been seen: nothing more is sent as content.
    calling: bool,
}

impl CallFilter {
    /// Adds generated text; returns the content that can be sent now.
    pub fn push(&mut self, piece: &str) -> String {
        self.text.push_str(piece);
        if self.calling {
            return String::new();
        }
        let pending = &self.text[self.sent..];
        let safe = match pending.find(CALL_OPEN) {
            Some(at) => {
                self.calling = true;
                at
            }
            None => pending.len() - partial_open(pending),
        };
        let out = pending[..safe].to_string();
        self.sent += safe;
        out
    }

    /// At the end: the content still held back and the calls, or only content when the
    /// output holds no well-formed call.
    pub fn finish(self) -> (String, Vec<ToolCall>) {
        match split_calls(&self.text) {
            Some((_, calls)) => (String::new(), calls),
            None => (self.text[self.sent..].to_string(), vec![]),
        }
    }
}

/// How many trailing bytes of `text` could begin `<tool_call>`.
fn partial_open(text: &str) -> usize {
    (1..CALL_OPEN.len())
        .rev()
        .find(|&n| {
            text.len() >= n
                && text.is_char_boundary(text.len() - n)
                && CALL_OPEN.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

/// OpenAI's `tool_calls` array for a response message; ids are `call_<response id>_<i>`.
pub fn calls_json(calls: &[ToolCall], response_id: &str) -> Value {
    Value::Array(
        calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                json!({
                    "id": format!("call_{response_id}_{i}"),
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                })
            })
            .collect(),
    )
}

/// A streamed `delta.tool_calls` entry: the whole call in one chunk, with its index.
pub fn delta_json(call: &ToolCall, index: usize, response_id: &str) -> Value {
    json!([{
        "index": index,
        "id": format!("call_{response_id}_{index}"),
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }])
}

/// An assistant message's `tool_calls` as templates expect them: `arguments` parsed into a
/// value (a string that is not JSON stays a string).
pub fn template_calls(at: &str, value: &Value) -> Result<Vec<Value>, ApiError> {
    let Some(items) = value.as_array() else {
        return Err(ApiError::invalid(at, "must be an array"));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, call)| {
            let field = format!("{at}[{i}]");
            let f = call
                .get("function")
                .and_then(Value::as_object)
                .ok_or_else(|| {
                    ApiError::invalid(&format!("{field}.function"), "must be an object")
                })?;
            let name = f.get("name").and_then(Value::as_str).ok_or_else(|| {
                ApiError::invalid(&format!("{field}.function.name"), "must be a string")
            })?;
            let arguments = match f.get("arguments") {
                Some(Value::String(s)) => {
                    serde_json::from_str(s).unwrap_or(Value::from(s.as_str()))
                }
                None | Some(Value::Null) => json!({}),
                Some(other) => other.clone(),
            };
            Ok(json!({
                "id": call.get("id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_split_from_text() {
        let text = "Sure.\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call>";
        let (content, calls) = split_calls(text).unwrap();
        assert_eq!(content, "Sure.");
        assert_eq!(
            calls,
            vec![ToolCall {
                name: "f".into(),
                arguments: "{\"a\":1}".into()
            }]
        );
        assert!(split_calls("no calls").is_none());
        assert!(split_calls("<tool_call>\n{not json}\n</tool_call>").is_none());
    }

    #[test]
    fn the_filter_holds_back_what_may_begin_a_call() {
        let mut f = CallFilter::default();
        assert_eq!(f.push("Hello <tool"), "Hello ");
        assert_eq!(f.push("box>"), "<toolbox>");
        assert_eq!(f.push(" <tool_call>\n{\"name\": \"g\"}"), " ");
        assert_eq!(f.push("\n</tool_call>"), "");
        let (rest, calls) = f.finish();
        assert_eq!(rest, "");
        assert_eq!(calls[0].name, "g");
        assert_eq!(calls[0].arguments, "{}");
    }
}
