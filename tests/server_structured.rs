//! Structured output through `mlx-engine serve` on the real Qwen 0.5B: `response_format`
//! (json_schema, json_object) and tool calls driven by the official `openai` client
//! (`tests/reference/openai_structured.py`, which validates with Python `jsonschema`), and bad
//! `response_format` / `tools` fields answered 400 naming the field, the server still serving.

mod common;

use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "test-key";
const MODEL: &str = "qwen2.5-coder-0.5b";

/// A server process, killed (through `sh`) when our end of its stdin closes.
struct Server {
    base: String,
    _child: Child,
    _stdin: ChildStdin,
}

fn spawn_server() -> Server {
    common::qwen_model();
    let log = common::repo_root().join("target/server-test-structured.log");
    let _ = std::fs::remove_file(&log);
    let script = r#"bin="$1"; log="$2"; shift 2
"$bin" "$@" 2>"$log" & pid=$!
read _ignored
kill $pid; wait $pid 2>/dev/null"#;
    let mut child = Command::new("sh")
        .args(["-c", script, "sh", env!("CARGO_BIN_EXE_mlx-engine")])
        .arg(&log)
        .args(["serve", "--port", "0", "--api-key", KEY, "--model", MODEL])
        .args(["--ctx-size", "1024", "--parallel", "2"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn mlx-engine serve");
    let stdin = child.stdin.take().unwrap();
    let base = wait_for_address(&log, &mut child);
    let deadline = Instant::now() + Duration::from_secs(300);
    while post(&base, "/health", None).0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the server did not become healthy"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Server {
        base,
        _child: child,
        _stdin: stdin,
    }
}

fn wait_for_address(log: &Path, child: &mut Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(rest) = text.split("listening on ").nth(1) {
            return rest.lines().next().unwrap().trim().to_string();
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the server exited ({status}):\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the server did not report its address");
}

/// POSTs `body` (GET without one): (status, JSON body or null).
fn post(base: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let url = format!("{base}{path}");
    let auth = format!("Bearer {KEY}");
    let response = match body {
        Some(b) => agent
            .post(&url)
            .header("Authorization", &auth)
            .header("Content-Type", "application/json")
            .send(b.to_string()),
        None => agent.get(&url).header("Authorization", &auth).call(),
    };
    match response {
        Ok(mut r) => {
            let status = r.status().as_u16();
            let text = r.body_mut().read_to_string().unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// A chat request with `extra` fields.
fn chat(extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 8,
        "temperature": 0
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[test]
fn structured_output_and_tools_through_the_server() {
    if common::skip_requested() {
        return;
    }
    let server = spawn_server();
    let base = &server.base;
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
    let tool = json!({"type": "function", "function": {"name": "f", "parameters": schema}});
    let bad: Vec<(Value, &str)> = vec![
        (json!({"response_format": "json"}), "response_format"),
        (
            json!({"response_format": {"type": "yaml"}}),
            "response_format.type",
        ),
        (
            json!({"response_format": {"type": "json_schema"}}),
            "response_format.json_schema",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"schema": schema}}}),
            "response_format.json_schema.name",
        ),
        (
            json!({"response_format": {"type": "json_schema",
                   "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}}}),
            "response_format.json_schema.schema",
        ),
        (
            json!({"response_format": {"type": "json_schema",
                   "json_schema": {"name": "x", "schema": [1]}}}),
            "response_format.json_schema.schema",
        ),
        (
            json!({"response_format": {"type": "json_schema",
                   "json_schema": {"name": "x", "schema": schema, "strict": "yes"}}}),
            "response_format.json_schema.strict",
        ),
        (json!({"tools": "f"}), "tools"),
        (
            json!({"tools": [{"type": "function"}]}),
            "tools[0].function",
        ),
        (
            json!({"tools": [tool], "tool_choice": "sometimes"}),
            "tool_choice",
        ),
        (
            json!({"tools": [tool], "tool_choice": {"type": "function", "function": {"name": "g"}}}),
            "tool_choice.function.name",
        ),
        (json!({"tool_choice": "required"}), "tool_choice"),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f",
                   "parameters": {"type": "no-such-type"}}}], "tool_choice": "required"}),
            "tools",
        ),
    ];
    for (extra, param) in bad {
        let (status, body) = post(base, "/v1/chat/completions", Some(&chat(extra.clone())));
        assert_eq!(status, 400, "{extra}: {body}");
        assert_eq!(body["error"]["param"], json!(param), "{extra}: {body}");
    }
    // Still serving, and a plain JSON-object request works over raw HTTP.
    let extra = json!({"response_format": {"type": "json_object"}, "max_tokens": 40,
                       "messages": [{"role": "user", "content": "A JSON object with a key x."}]});
    let (status, body) = post(base, "/v1/chat/completions", Some(&chat(extra)));
    assert_eq!(status, 200, "{body}");
    assert!(body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .trim_start()
        .starts_with('{'));

    let script = common::repo_root().join("tests/reference/openai_structured.py");
    let out = common::python_with(
        "requirements-structured-server.txt",
        "pydeps-structured-server",
    )
    .arg(&script)
    .args([&format!("{base}/v1"), KEY, MODEL, "--tools"])
    .output()
    .expect("python3 runs");
    assert!(
        out.status.success(),
        "{} failed:\n{}\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("all checks passed"));
}
