//! Chat templates: the Jinja template a model ships (`tokenizer.chat_template`) rendered with
//! minijinja the way Hugging Face renders it.
//!
//! Like transformers' renderer: `trim_blocks` and `lstrip_blocks` on, loop controls, the
//! context `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, and the functions
//! real templates call: `raise_exception`, `strftime_now`, a Python-style `tojson`, and Python
//! string and dict methods (`.strip()`, `.startswith()`, `.split()`, `.items()` …).
//!
//! Templates come from model files and are untrusted, so every render runs under three limits
//! ([`MAX_FUEL`], [`MAX_RECURSION`], [`MAX_OUTPUT_BYTES`]); a template that passes one fails
//! with [`Error::Template`] naming it, in bounded time and memory.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, ValueKind};
use minijinja::{Environment, ErrorKind, State, Value};

use crate::{Error, Result};

/// The name the template is stored under in its environment.
const TEMPLATE: &str = "chat";

/// The work one render may do, in minijinja fuel: one per instruction executed plus one per
/// 64 bytes of data created or processed (output, strings, list slots), so it bounds both time
/// and allocation (about 64 × this many bytes, 64 MB).
///
/// Measured with the Qwen 2.5 (with tools), Llama 3, Gemma, ChatML and Zephyr templates:
/// 200 messages of 200 bytes take 6,800–9,400 fuel (about 47 per message); 200 messages of
/// 20 KB (a 4 MB prompt) 190,000–320,000 (about 80 per KB); 20,000 messages of 200 bytes
/// (4.6 MB) 680,000–930,000. A prompt at [`MAX_OUTPUT_BYTES`] therefore needs at most about
/// 230,000 (4× headroom in that worst shape, 100× for a 200-message conversation). A template
/// that burns it all stops after 0.1–0.4 s on the 2-core test host (nested loops, string
/// doubling by `~`, `+` or `join`), ~0.9 s for the slowest case found (`str.replace` doubling
/// a string).
pub const MAX_FUEL: u64 = 1_000_000;

/// minijinja's recursion limit: each `for`/`if` level costs 1, a macro call about 6–8, an
/// include 10 (minijinja's default and cap is 500). 200 allows 30 nested macro calls, far
/// more than real templates use (they nest a few `for`/`if` levels and seldom call macros),
/// and hits the limit on less than 256 KiB of stack (500 needs up to 512 KiB), so it is safe
/// on 2 MiB threads.
pub const MAX_RECURSION: usize = 200;

/// The longest rendered prompt, in bytes: 1 MiB, about 250k tokens, twice the largest context
/// window of the models we run (128k tokens, 0.4–0.6 MB of text). Output is written through a
/// writer that fails once it passes this, so a template that emits a huge text never holds
/// more.
pub const MAX_OUTPUT_BYTES: usize = 1 << 20;

/// The deepest value `tojson` writes; it recurses once per level.
const MAX_JSON_DEPTH: usize = 128;

/// Gemma's turn format, for Gemma GGUF files that ship no template: `<start_of_turn>user` /
/// `<start_of_turn>model` turns closed by `<end_of_turn>`, a system message folded into the
/// first user turn, BOS first.
pub const GEMMA_TEMPLATE: &str = concat!(
    "{{ bos_token }}",
    "{% if messages and messages[0].role == 'system' %}",
    "{% set prefix = messages[0].content ~ '\\n\\n' %}{% set turns = messages[1:] %}",
    "{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}",
    "{% for m in turns %}",
    "{{ '<start_of_turn>' ~ ('model' if m.role == 'assistant' else m.role) ~ '\\n' }}",
    "{{ (prefix if loop.first else '') ~ (m.content | trim) ~ '<end_of_turn>\\n' }}",
    "{% endfor %}",
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}",
);

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`, …
    pub role: String,
    /// The message text.
    pub content: String,
    /// An assistant's tool calls, as templates expect them (Hugging Face's convention):
    /// `{"id", "type": "function", "function": {"name", "arguments": {…}}}` with the arguments
    /// an object, not a string. Empty for other messages.
    pub tool_calls: Vec<serde_json::Value>,
    /// A `tool` message's `tool_call_id`.
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// A message with any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            tool_calls: vec![],
            tool_call_id: None,
        }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("assistant", content)
    }
}

/// A message as the template sees it: a map with `role` and `content`, in that order, then
/// `tool_calls` and `tool_call_id` when the message has them.
impl Object for ChatMessage {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "role" => Some(Value::from(self.role.as_str())),
            "content" => Some(Value::from(self.content.as_str())),
            "tool_calls" if !self.tool_calls.is_empty() => Some(Value::from(
                self.tool_calls.iter().map(json_value).collect::<Vec<_>>(),
            )),
            "tool_call_id" => self.tool_call_id.as_deref().map(Value::from),
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        match (self.tool_calls.is_empty(), self.tool_call_id.is_some()) {
            (true, false) => Enumerator::Str(&["role", "content"]),
            (false, false) => Enumerator::Str(&["role", "content", "tool_calls"]),
            (true, true) => Enumerator::Str(&["role", "content", "tool_call_id"]),
            (false, true) => Enumerator::Str(&["role", "content", "tool_calls", "tool_call_id"]),
        }
    }
}

/// A JSON value as a template value (objects become maps with the same keys).
fn json_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(u)) => Value::from(u),
            _ => Value::from(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(items) => {
            Value::from(items.iter().map(json_value).collect::<Vec<_>>())
        }
        serde_json::Value::Object(map) => Value::from(
            map.iter()
                .map(|(k, v)| (k.clone(), json_value(v)))
                .collect::<BTreeMap<String, Value>>(),
        ),
    }
}

/// A compiled chat template. Cloning copies the compiled environment.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source`; `bos` and `eos` are the texts of the model's BOS and EOS tokens (the
    /// template's `bos_token` and `eos_token`). A syntax error is an `Err`.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_syntax(syntax()?);
        env.set_fuel(Some(MAX_FUEL));
        env.set_recursion_limit(MAX_RECURSION);
        env.set_unknown_method_callback(python_method);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE, source.to_string())
            .map_err(template_err)?;
        Ok(ChatTemplate {
            env,
            bos: bos.to_string(),
            eos: eos.to_string(),
        })
    }

    /// Renders a conversation; with `add_generation_prompt` the text ends where the assistant's
    /// reply begins. A template error (including `raise_exception`) is an `Err`.
    /// A template that exceeds [`MAX_FUEL`], [`MAX_RECURSION`] or [`MAX_OUTPUT_BYTES`] is an `Err`
    /// naming the limit.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with_tools(messages, &[], add_generation_prompt)
    }

    /// [`ChatTemplate::render`] with tool definitions (OpenAI's `tools` entries,
    /// `{"type": "function", "function": {…}}`) as the template's `tools`; none leaves
    /// `tools` undefined, as without them.
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: &[serde_json::Value],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let mut ctx = self.context(messages, add_generation_prompt);
        if !tools.is_empty() {
            ctx.insert(
                "tools",
                Value::from(tools.iter().map(json_value).collect::<Vec<_>>()),
            );
        }
        self.render_context(Value::from(ctx)).map(|(text, _)| text)
    }

    /// The variables a template sees.
    fn context(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> BTreeMap<&'static str, Value> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| Value::from_object(m.clone()))
            .collect();
        BTreeMap::from([
            ("messages", Value::from(messages)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("bos_token", Value::from(self.bos.as_str())),
            ("eos_token", Value::from(self.eos.as_str())),
        ])
    }

    /// Renders with any context under the limits; returns the text and the fuel it used.
    fn render_context(&self, ctx: Value) -> Result<(String, u64)> {
        let template = self.env.get_template(TEMPLATE).map_err(template_err)?;
        let mut out = BoundedWriter::default();
        let rendered = template.render_captured_to(ctx, &mut out);
        if out.overflowed {
            return Err(Error::Template(format!(
                "the rendered prompt exceeds the limit of {MAX_OUTPUT_BYTES} bytes"
            )));
        }
        let fuel = rendered
            .map_err(render_err)?
            .state()
            .fuel_levels()
            .map_or(0, |(used, _)| used);
        let text = String::from_utf8(out.buf)
            .map_err(|_| Error::Template("the rendered prompt is not UTF-8".to_string()))?;
        Ok((text, fuel))
    }
}

/// The render output: collects up to [`MAX_OUTPUT_BYTES`] and fails the write that would pass it.
#[derive(Default)]
struct BoundedWriter {
    buf: Vec<u8>,
    overflowed: bool,
}

impl io::Write for BoundedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > MAX_OUTPUT_BYTES {
            self.overflowed = true;
            return Err(io::Error::other("output limit reached"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Hugging Face's Jinja settings: `trim_blocks` and `lstrip_blocks` on.
fn syntax() -> Result<SyntaxConfig> {
    SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
        .map_err(template_err)
}

/// A minijinja error as ours, with the template line when known.
fn template_err(e: minijinja::Error) -> Error {
    let line = e.line().map(|l| format!(" (line {l})")).unwrap_or_default();
    let detail = e.detail().map(|d| format!(": {d}")).unwrap_or_default();
    Error::Template(format!("{}{detail}{line}", e.kind()))
}

/// A render error as ours, naming the limit when one was passed (here or in an error it wraps,
/// as an `include` does).
fn render_err(e: minijinja::Error) -> Error {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = cause {
        if let Some(limit) = err.downcast_ref().and_then(limit_passed) {
            return limit;
        }
        cause = err.source();
    }
    template_err(e)
}

/// The error naming the limit that `e` reports passing, if it is one.
fn limit_passed(e: &minijinja::Error) -> Option<Error> {
    match e.kind() {
        ErrorKind::OutOfFuel => Some(Error::Template(format!(
            "the template exceeds its work limit of {MAX_FUEL} fuel \
             (instructions plus data created / 64 bytes)"
        ))),
        ErrorKind::InvalidOperation if e.detail() == Some("recursion limit exceeded") => {
            Some(Error::Template(format!(
                "the template exceeds the recursion limit of {MAX_RECURSION}"
            )))
        }
        _ => None,
    }
}

/// Python methods on values (minijinja-contrib's `pycompat`), with `str.format` first charged
/// for the text it may create: pycompat formats without checking widths against the fuel, so
/// `'{:>999999999}'.format(x)` would allocate a gigabyte.
fn python_method(
    state: &mut State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> std::result::Result<Value, minijinja::Error> {
    if let (Some(format), "format") = (value.as_str(), method) {
        charge_str_format(state, format, args)?;
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// Charges fuel for an upper bound of what `format.format(*args)` creates: the format string,
/// every number inside a `{…}` field (widths and precisions are among them) and, per field,
/// the longest argument. Fails past [`MAX_OUTPUT_BYTES`].
fn charge_str_format(
    state: &State,
    format: &str,
    args: &[Value],
) -> std::result::Result<(), minijinja::Error> {
    let mut fields = 0usize;
    let mut numbers = 0usize;
    let mut rest = format;
    while let Some(open) = rest.find('{') {
        rest = &rest[open + 1..];
        if let Some(after) = rest.strip_prefix('{') {
            rest = after;
            continue;
        }
        let close = rest.find('}').unwrap_or(rest.len());
        fields += 1;
        for digits in rest[..close].split(|c: char| !c.is_ascii_digit()) {
            let n =
                digits
                    .parse::<usize>()
                    .unwrap_or(if digits.is_empty() { 0 } else { usize::MAX });
            numbers = numbers.saturating_add(n);
        }
        rest = &rest[close..];
    }
    let longest_arg = args
        .iter()
        .map(|a| a.as_str().map_or_else(|| a.to_string().len(), str::len))
        .max()
        .unwrap_or(0);
    let bound = format
        .len()
        .saturating_add(numbers)
        .saturating_add(fields.saturating_mul(longest_arg));
    if bound > MAX_OUTPUT_BYTES {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("str.format may create {bound} bytes, over the limit of {MAX_OUTPUT_BYTES}"),
        ));
    }
    state.consume_fuel((bound / 64) as u64)
}

/// `raise_exception(message)`: templates call it to reject a conversation.
fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// `strftime_now(format)`: the current UTC time, formatted as Python's `strftime` does for
/// `%Y %y %m %d %e %j %H %I %M %S %p %B %b %A %a %%`.
fn strftime_now(format: String) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    strftime(&format, secs)
}

/// Formats a Unix time (UTC) with a `strftime` format.
pub(crate) fn strftime(format: &str, unix_secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
    let month_name = MONTHS[(month - 1) as usize];
    let weekday = DAYS[(days % 7) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(spec) = chars.next() else {
            out.push('%');
            break;
        };
        let text = match spec {
            'Y' => year.to_string(),
            'y' => format!("{:02}", year % 100),
            'm' => format!("{month:02}"),
            'd' => format!("{day:02}"),
            'e' => format!("{day:>2}"),
            'j' => format!("{:03}", days - days_from_civil(year, 1, 1) + 1),
            'H' => format!("{hour:02}"),
            'I' => format!("{:02}", (hour + 11) % 12 + 1),
            'M' => format!("{minute:02}"),
            'S' => format!("{second:02}"),
            'p' => (if hour < 12 { "AM" } else { "PM" }).to_string(),
            'B' => month_name.to_string(),
            'b' => month_name[..3].to_string(),
            'A' => weekday.to_string(),
            'a' => weekday[..3].to_string(),
            '%' => "%".to_string(),
            other => format!("%{other}"),
        };
        out.push_str(&text);
    }
    out
}

/// (year, month 1-12, day 1-31) of a count of days since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a date on or after it; the inverse of [`civil_from_days`].
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y % 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `tojson` as transformers defines it, Python's `json.dumps(value, ensure_ascii=False)`:
/// `", "` and `": "` separators, no HTML escaping; with `indent`, one item per line. The text
/// is bounded by [`MAX_OUTPUT_BYTES`] and the nesting by [`MAX_JSON_DEPTH`] (an indent of 10⁹
/// or a value nested 10⁵ deep is an error, not a huge allocation or a stack overflow).
fn tojson(
    value: &Value,
    indent: Option<usize>,
    kwargs: Kwargs,
) -> std::result::Result<String, minijinja::Error> {
    let indent = match indent {
        Some(n) => Some(n),
        None => kwargs.get::<Option<usize>>("indent")?,
    };
    for accepted in ["ensure_ascii", "separators", "sort_keys"] {
        let _: Option<Value> = kwargs.get(accepted)?;
    }
    let mut out = String::new();
    write_json(value, indent, 0, &mut out)?;
    Ok(out)
}

/// The error of a `tojson` that passes one of its limits.
fn json_limit(what: String) -> minijinja::Error {
    minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {what}"))
}

/// Appends a newline and the indent of nesting `depth`, within [`MAX_OUTPUT_BYTES`].
fn push_indent(
    out: &mut String,
    indent: usize,
    depth: usize,
) -> std::result::Result<(), minijinja::Error> {
    let width = indent.saturating_mul(depth);
    if out.len().saturating_add(width) >= MAX_OUTPUT_BYTES {
        return Err(json_limit(format!(
            "the text exceeds the limit of {MAX_OUTPUT_BYTES} bytes"
        )));
    }
    out.push('\n');
    out.extend(std::iter::repeat_n(' ', width));
    Ok(())
}

/// Appends the JSON text of `value` at nesting `depth`.
fn write_json(
    value: &Value,
    indent: Option<usize>,
    depth: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    if depth > MAX_JSON_DEPTH {
        return Err(json_limit(format!(
            "the value is nested deeper than {MAX_JSON_DEPTH} levels"
        )));
    }
    if out.len() > MAX_OUTPUT_BYTES {
        return Err(json_limit(format!(
            "the text exceeds the limit of {MAX_OUTPUT_BYTES} bytes"
        )));
    }
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&json_number(value)),
        ValueKind::String => out.push_str(&json_string(value.as_str().unwrap_or_default())),
        ValueKind::Map => write_json_items(value, true, indent, depth, out)?,
        ValueKind::Seq | ValueKind::Iterable => write_json_items(value, false, indent, depth, out)?,
        _ => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("cannot serialize {} to JSON", value.kind()),
            ))
        }
    }
    Ok(())
}

/// Appends a JSON object (`map`) or array.
fn write_json_items(
    value: &Value,
    map: bool,
    indent: Option<usize>,
    depth: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    let (open, close) = if map { ('{', '}') } else { ('[', ']') };
    let items: Vec<Value> = value.try_iter()?.collect();
    out.push(open);
    for (i, item) in items.iter().enumerate() {
        out.push_str(match (i, indent) {
            (0, _) => "",
            (_, Some(_)) => ",",
            (_, None) => ", ",
        });
        if let Some(n) = indent {
            push_indent(out, n, depth + 1)?;
        }
        if map {
            out.push_str(&json_string(&item.to_string()));
            out.push_str(": ");
            write_json(&value.get_item(item)?, indent, depth + 1, out)?;
        } else {
            write_json(item, indent, depth + 1, out)?;
        }
    }
    if let (Some(n), false) = (indent, items.is_empty()) {
        push_indent(out, n, depth)?;
    }
    out.push(close);
    Ok(())
}

/// A number as Python's `json.dumps` writes it: integers plain, floats with a fraction.
fn json_number(value: &Value) -> String {
    if let Some(i) = value.as_i64() {
        return i.to_string();
    }
    match f64::try_from(value.clone()) {
        Ok(f) if f.is_nan() => "NaN".to_string(),
        Ok(f) if f.is_infinite() => (if f > 0.0 { "Infinity" } else { "-Infinity" }).to_string(),
        Ok(f) if f.fract() == 0.0 && f.abs() < 1e16 => format!("{f:.1}"),
        Ok(f) => f.to_string(),
        Err(_) => value.to_string(),
    }
}

/// A JSON string literal; non-ASCII characters stay as they are.
fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemma_template_folds_the_system_message_into_the_first_turn() {
        let t = ChatTemplate::new(GEMMA_TEMPLATE, "<bos>", "<eos>").unwrap();
        let messages = [
            ChatMessage::system("Be brief."),
            ChatMessage::user("Hi "),
            ChatMessage::assistant("Hello."),
            ChatMessage::user("Capital of France?"),
        ];
        assert_eq!(
            t.render(&messages, true).unwrap(),
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n\
             <start_of_turn>model\nHello.<end_of_turn>\n\
             <start_of_turn>user\nCapital of France?<end_of_turn>\n<start_of_turn>model\n"
        );
        assert_eq!(
            t.render(&messages[1..2], false).unwrap(),
            "<bos><start_of_turn>user\nHi<end_of_turn>\n"
        );
    }

    /// The real templates of `tests/data` and Gemma's, by name.
    fn real_templates() -> [(&'static str, &'static str); 5] {
        [
            (
                "qwen2.5",
                include_str!("../tests/data/qwen2.5_chat_template.jinja"),
            ),
            (
                "llama3",
                include_str!("../tests/data/llama3_chat_template.jinja"),
            ),
            (
                "chatml",
                include_str!("../tests/data/chatml_chat_template.jinja"),
            ),
            (
                "zephyr",
                include_str!("../tests/data/zephyr_chat_template.jinja"),
            ),
            ("gemma", GEMMA_TEMPLATE),
        ]
    }

    /// A system message, then `n` user/assistant turns of `len` bytes.
    fn conversation(n: usize, len: usize) -> Vec<ChatMessage> {
        let text = "word ".repeat(len / 5);
        let turns = (0..n).map(|i| match i % 2 {
            0 => ChatMessage::user(text.as_str()),
            _ => ChatMessage::assistant(text.as_str()),
        });
        std::iter::once(ChatMessage::system("You are helpful."))
            .chain(turns)
            .collect()
    }

    /// One function in the OpenAI tool format, as Qwen's template lists them.
    fn weather_tool() -> Value {
        let city = Value::from_iter([("type", "string"), ("description", "City name")]);
        let parameters = Value::from_iter([
            ("type", Value::from("object")),
            ("properties", Value::from_iter([("city", city)])),
            ("required", Value::from(vec!["city"])),
        ]);
        let function = Value::from_iter([
            ("name", Value::from("get_weather")),
            ("description", Value::from("Get the weather")),
            ("parameters", parameters),
        ]);
        Value::from_iter([("type", Value::from("function")), ("function", function)])
    }

    #[test]
    fn real_templates_use_a_small_part_of_the_fuel() {
        for (name, source) in real_templates() {
            let t = ChatTemplate::new(source, "<s>", "</s>").unwrap();
            let mut ctx = t.context(&conversation(200, 200), true);
            ctx.insert("tools", Value::from(vec![weather_tool()]));
            let (text, fuel) = t.render_context(Value::from(ctx)).unwrap();
            assert!(text.len() > 200 * 200, "{name}: {}", text.len());
            // Measured 6,800-9,400.
            assert!(fuel > 1_000 && fuel < MAX_FUEL / 50, "{name}: {fuel}");
        }
    }

    #[test]
    fn a_prompt_near_the_output_limit_fits_in_the_fuel() {
        // The costliest shape measured: many short messages (~47 fuel each).
        let messages = conversation(MAX_OUTPUT_BYTES * 9 / 10 / 230, 200);
        for (name, source) in real_templates() {
            let t = ChatTemplate::new(source, "<s>", "</s>").unwrap();
            let ctx = t.context(&messages, true);
            let (text, fuel) = t.render_context(Value::from(ctx)).unwrap();
            assert!(
                text.len() > MAX_OUTPUT_BYTES * 3 / 4,
                "{name}: {}",
                text.len()
            );
            assert!(fuel < MAX_FUEL / 3, "{name}: {fuel}");
        }
    }

    #[test]
    fn strftime_formats_a_known_date() {
        // 2024-07-26 13:05:09 UTC, a Friday.
        let t = 1_721_999_109;
        assert_eq!(strftime("%d %B %Y", t), "26 July 2024");
        assert_eq!(strftime("%Y-%m-%d %H:%M:%S", t), "2024-07-26 13:05:09");
        assert_eq!(
            strftime("%a %b %e %I%p %j %y %%", t),
            "Fri Jul 26 01PM 208 24 %"
        );
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
    }
}
