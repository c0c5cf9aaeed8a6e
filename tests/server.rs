//! `mlx-engine serve` end to end: the real binary on a loopback port with the real Qwen model,
//! driven by plain HTTP (bad input, exact usage, streamed = unstreamed, seeds, stop strings,
//! concurrent streams, a client that disconnects, `/metrics` read by the official Prometheus
//! parser, the prefix cache, SIGTERM) and by the official `openai` Python client
//! (`tests/reference/openai_client.py`).
//!
//! One server serves every test that needs no flags of its own. Tests take [`turn`] so that
//! only one talks to it at a time (the concurrency test makes its own parallel requests): a
//! greedy reply is then compared with another greedy reply computed under the same batching,
//! and the metrics move only by what the test did.

mod common;

use mlx_engine::chat_template::{ChatMessage, ChatTemplate};
use mlx_engine::loader::gguf::GgufFile;
use mlx_engine::tokenizer::Tokenizer;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// The API key the test server requires.
const KEY: &str = "test-key";
/// Positions per sequence: small, so an over-long prompt is cheap to build.
const CTX: usize = 256;
/// The served model's name (the registry name given to --model).
const MODEL: &str = "qwen2.5-coder-0.5b";

/// The shared server: its base URL, and the shell that kills it when this process exits.
struct Server {
    base: String,
    _child: Child,
    _stdin: ChildStdin,
}

/// Starts the shared server once.
fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let ctx = CTX.to_string();
        let args = ["--parallel", "4", "--ctx-size", &ctx, "--max-queue", "8"];
        spawn_server("shared", &args)
    })
}

/// Starts a server with `args` (and the test key) and waits until it is healthy. It runs under
/// `sh`, which kills it as soon as our end of its stdin closes (when this test process exits,
/// however it exits).
fn spawn_server(name: &str, args: &[&str]) -> Server {
    common::qwen_model(); // fetched into the cache the server resolves its name from
    spawn_server_for(name, MODEL, args)
}

/// [`spawn_server`] for another `--model` (a registry name or a file).
fn spawn_server_for(name: &str, model: &str, args: &[&str]) -> Server {
    let log = common::repo_root().join(format!("target/server-test-{name}.log"));
    let _ = std::fs::remove_file(&log);
    let script = r#"bin="$1"; log="$2"; shift 2
"$bin" "$@" 2>"$log" & pid=$!
read _ignored
kill $pid; wait $pid 2>/dev/null"#;
    let mut child = Command::new("sh")
        .args(["-c", script, "sh", env!("CARGO_BIN_EXE_mlx-engine")])
        .arg(&log)
        .args(["serve", "--port", "0", "--api-key", KEY, "--model", model])
        .args(args)
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn mlx-engine serve");
    let stdin = child.stdin.take().unwrap();
    let base = wait_for_address(&log, &mut child);
    wait_for_health(&base);
    Server {
        base,
        _child: child,
        _stdin: stdin,
    }
}

/// Reads the bound address from the server's log ("listening on http://ADDR").
fn wait_for_address(log: &PathBuf, child: &mut Child) -> String {
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

/// Waits until `/health` answers 200 (it answers 503 while the model loads).
fn wait_for_health(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        if let Ok((status, _)) = request_at(base, "GET", "/health", "", None) {
            assert!(status == 200 || status == 503, "health answered {status}");
            if status == 200 {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the server did not become healthy");
}

/// One test at a time talks to the server.
fn turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// An HTTP agent that returns 4xx/5xx responses instead of errors.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// A request to the server at `base` with an optional key: (status, JSON body).
fn request_at(
    base: &str,
    method: &str,
    path: &str,
    body: &str,
    key: Option<&str>,
) -> Result<(u16, Value), ureq::Error> {
    let url = format!("{base}{path}");
    let agent = agent();
    let mut response = match method {
        "GET" => {
            let mut r = agent.get(&url);
            if let Some(k) = key {
                r = r.header("Authorization", &format!("Bearer {k}"));
            }
            r.call()?
        }
        _ => {
            let mut r = agent.post(&url).header("Content-Type", "application/json");
            if let Some(k) = key {
                r = r.header("Authorization", &format!("Bearer {k}"));
            }
            r.send(body)?
        }
    };
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string()?;
    let value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!("{method} {path} answered {status} with non-JSON ({e}): {text}")
    });
    Ok((status, value))
}

/// A request with the right key: (status, JSON body).
fn call(method: &str, path: &str, body: &str) -> (u16, Value) {
    request_at(&server().base, method, path, body, Some(KEY)).expect("request")
}

/// A successful POST's JSON body.
fn post_ok(path: &str, body: &Value) -> Value {
    let (status, value) = call("POST", path, &body.to_string());
    assert_eq!(status, 200, "{path} {body}: {value}");
    value
}

/// A streamed request: every `data:` chunk before `[DONE]` (which must come last).
fn stream(path: &str, body: &Value) -> Vec<Value> {
    stream_timed(path, body)
        .into_iter()
        .map(|(_, c)| c)
        .collect()
}

/// [`stream`] to the server at `base`.
fn stream_at(base: &str, path: &str, body: &Value) -> Vec<Value> {
    stream_timed_at(base, path, body)
        .into_iter()
        .map(|(_, c)| c)
        .collect()
}

/// [`stream`], with the time each chunk arrived.
fn stream_timed(path: &str, body: &Value) -> Vec<(Instant, Value)> {
    stream_timed_at(&server().base, path, body)
}

/// [`stream_timed`] to the server at `base`.
fn stream_timed_at(base: &str, path: &str, body: &Value) -> Vec<(Instant, Value)> {
    let mut response = agent()
        .post(&format!("{base}{path}"))
        .header("Authorization", &format!("Bearer {KEY}"))
        .send(body.to_string())
        .expect("stream request");
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let reader = BufReader::new(response.body_mut().as_reader());
    let mut chunks = vec![];
    for line in reader.lines() {
        let line = line.unwrap();
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            return chunks;
        }
        chunks.push((Instant::now(), serde_json::from_str(data).unwrap()));
    }
    panic!("the stream ended without [DONE] after {chunks:?}");
}

/// The text of streamed chat chunks, checking their shape on the way.
fn streamed_chat_text(chunks: &[Value]) -> (String, String) {
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut text = String::new();
    let mut finish = None;
    for c in chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], chunks[0]["id"]);
        assert_eq!(c["model"], MODEL);
        if let Some(choice) = c["choices"].get(0) {
            if let Some(t) = choice["delta"]["content"].as_str() {
                text.push_str(t);
            }
            if let Some(f) = choice["finish_reason"].as_str() {
                assert!(finish.is_none(), "two finish chunks");
                finish = Some(f.to_string());
            }
        }
    }
    (text, finish.expect("a chunk with finish_reason"))
}

fn chat_body(user: &str, max_tokens: usize) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "system", "content": "You are terse."},
                     {"role": "user", "content": user}],
        "max_tokens": max_tokens,
        "temperature": 0,
    })
}

fn message_text(reply: &Value) -> String {
    reply["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Our tokenizer and chat template, read from the GGUF independently of the server.
fn tokenizer_and_template() -> (Tokenizer, ChatTemplate) {
    let file = GgufFile::open(&common::qwen_model()).unwrap();
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    let source = file
        .get("tokenizer.chat_template")
        .and_then(|v| v.as_str())
        .unwrap()
        .to_string();
    let piece = |id: Option<u32>| {
        id.and_then(|i| tokenizer.id_to_token(i))
            .unwrap_or("")
            .to_string()
    };
    let template =
        ChatTemplate::new(&source, &piece(tokenizer.bos()), &piece(tokenizer.eos())).unwrap();
    (tokenizer, template)
}

/// A small request that must succeed: the server still serves after whatever came before.
fn assert_still_serving() {
    let reply = post_ok(
        "/v1/completions",
        &json!({"prompt": "1, 2, 3,", "max_tokens": 2, "temperature": 0}),
    );
    assert_eq!(reply["usage"]["completion_tokens"], 2);
}

#[test]
fn bad_requests_get_a_4xx_naming_the_problem_and_the_server_keeps_serving() {
    let _turn = turn();
    let chat = |extra: Value| {
        let mut body = chat_body("hi", 4);
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body.to_string()
    };
    let long_prompt = "word ".repeat(CTX * 2);
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "malformed JSON",
            "/v1/chat/completions",
            "{\"messages\": [".into(),
            400,
            "malformed JSON",
        ),
        (
            "not an object",
            "/v1/chat/completions",
            "[1, 2]".into(),
            400,
            "JSON object",
        ),
        (
            "wrong type",
            "/v1/chat/completions",
            chat(json!({"temperature": "hot"})),
            400,
            "temperature",
        ),
        (
            "wrong type",
            "/v1/chat/completions",
            chat(json!({"stream": "yes"})),
            400,
            "stream",
        ),
        (
            "empty messages",
            "/v1/chat/completions",
            json!({"messages": []}).to_string(),
            400,
            "messages",
        ),
        (
            "no content",
            "/v1/chat/completions",
            json!({"messages": [{"role": "user"}]}).to_string(),
            400,
            "messages[0].content",
        ),
        (
            "max_tokens 0",
            "/v1/chat/completions",
            chat(json!({"max_tokens": 0})),
            400,
            "max_tokens",
        ),
        (
            "max_tokens < 0",
            "/v1/chat/completions",
            chat(json!({"max_tokens": -5})),
            400,
            "max_tokens",
        ),
        (
            "top_p 2",
            "/v1/chat/completions",
            chat(json!({"top_p": 2})),
            400,
            "top_p",
        ),
        (
            "temperature 3",
            "/v1/chat/completions",
            chat(json!({"temperature": 3})),
            400,
            "temperature",
        ),
        (
            "n 2",
            "/v1/chat/completions",
            chat(json!({"n": 2})),
            400,
            "n",
        ),
        (
            "top_logprobs above 20",
            "/v1/chat/completions",
            chat(json!({"logprobs": true, "top_logprobs": 21})),
            400,
            "top_logprobs",
        ),
        (
            "logprobs of the wrong type",
            "/v1/completions",
            json!({"prompt": "a", "logprobs": "yes"}).to_string(),
            400,
            "logprobs",
        ),
        (
            "logit_bias outside the vocabulary",
            "/v1/chat/completions",
            chat(json!({"logit_bias": {"999999999": 3}})),
            400,
            "vocabulary",
        ),
        (
            "logit_bias above 100",
            "/v1/chat/completions",
            chat(json!({"logit_bias": {"15": 300}})),
            400,
            "logit_bias",
        ),
        (
            "empty stop",
            "/v1/chat/completions",
            chat(json!({"stop": [""]})),
            400,
            "stop",
        ),
        (
            "unknown model",
            "/v1/chat/completions",
            chat(json!({"model": "gpt-9"})),
            404,
            "gpt-9",
        ),
        (
            "over the context",
            "/v1/completions",
            json!({"prompt": long_prompt}).to_string(),
            400,
            "n_ctx = 256",
        ),
        (
            "token id outside the vocabulary",
            "/v1/completions",
            json!({"prompt": [1, 999999]}).to_string(),
            400,
            "vocabulary",
        ),
        (
            "bad prompt",
            "/v1/completions",
            json!({"prompt": {"a": 1}}).to_string(),
            400,
            "prompt",
        ),
        (
            "unknown route",
            "/v1/nothing",
            "{}".into(),
            404,
            "unknown route",
        ),
    ];
    for (what, path, body, want, needle) in cases {
        let (status, value) = call("POST", path, &body);
        assert_eq!(status, want, "{what}: {value}");
        let message = value["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: {value}"));
        assert!(
            message.contains(needle),
            "{what}: '{message}' lacks '{needle}'"
        );
        assert!(value["error"]["type"].is_string(), "{what}: {value}");
        assert_still_serving();
    }
    let over = call(
        "POST",
        "/v1/completions",
        &json!({"prompt": "word ".repeat(CTX * 2)}).to_string(),
    )
    .1;
    assert!(
        over["error"]["message"]
            .as_str()
            .unwrap()
            .contains("n_prompt_tokens = "),
        "{over}"
    );

    let base = &server().base;
    for key in [Some("wrong-key"), None] {
        let (status, value) =
            request_at(base, "POST", "/v1/chat/completions", &chat(json!({})), key).unwrap();
        assert_eq!(status, 401, "{value}");
        assert_eq!(value["error"]["type"], "authentication_error");
        assert_still_serving();
    }
    let (status, _) = request_at(base, "GET", "/health", "", None).unwrap();
    assert_eq!(status, 200, "/health needs no key");
    let (status, value) = request_at(base, "GET", "/v1/chat/completions", "", Some(KEY)).unwrap();
    assert_eq!(status, 405, "{value}");
    assert!(value["error"]["message"].is_string());

    assert_eq!(post_body_of_size(10 << 20), 413);
    assert_still_serving();
}

/// Sends a POST announcing a `size`-byte body and returns the status line's code (the server
/// must answer from the announced length, without reading 10 MB).
fn post_body_of_size(size: usize) -> u16 {
    let address = server().base.trim_start_matches("http://");
    let mut tcp = TcpStream::connect(address).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).unwrap();
    let _ = tcp.write_all(&vec![b' '; 64 << 10]);
    let mut reply = String::new();
    let _ = BufReader::new(&tcp).read_line(&mut reply);
    reply.split(' ').nth(1).unwrap().parse().unwrap()
}

#[test]
fn streamed_text_equals_unstreamed_text_and_usage_is_exact() {
    let _turn = turn();
    let body = chat_body("Write a haiku about rust.", 24);
    let reply = post_ok("/v1/chat/completions", &body);
    assert_eq!(reply["object"], "chat.completion");
    assert_eq!(reply["model"], MODEL);
    assert!(reply["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let text = message_text(&reply);
    let finish = reply["choices"][0]["finish_reason"].as_str().unwrap();
    assert!(["stop", "length"].contains(&finish));

    let (tokenizer, template) = tokenizer_and_template();
    let rendered = template
        .render(
            &[
                ChatMessage::system("You are terse."),
                ChatMessage::user("Write a haiku about rust."),
            ],
            true,
        )
        .unwrap();
    let prompt_tokens = tokenizer.encode(&rendered, false).unwrap().len();
    let usage = &reply["usage"];
    assert_eq!(usage["prompt_tokens"], prompt_tokens);
    let completion = usage["completion_tokens"].as_u64().unwrap();
    assert_eq!(usage["total_tokens"], prompt_tokens as u64 + completion);
    match finish {
        "length" => assert_eq!(completion, 24),
        _ => assert!(completion <= 24),
    }
    // Re-encoding the reply gives its token count (an end token, when it stopped, adds one).
    let reencoded = tokenizer.encode(&text, false).unwrap().len() as u64;
    let end = u64::from(finish == "stop");
    assert!(
        reencoded.abs_diff(completion - end) <= 2,
        "{reencoded} vs {completion}"
    );

    let mut streaming = body.clone();
    streaming["stream"] = json!(true);
    streaming["stream_options"] = json!({"include_usage": true});
    let chunks = stream("/v1/chat/completions", &streaming);
    let (streamed, streamed_finish) = streamed_chat_text(&chunks);
    assert_eq!(streamed, text);
    assert_eq!(streamed_finish, finish);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    // The same counts; the prompt now comes from the prefix cache, all but its last token
    // (which gives the first token's logits).
    let mut expected = usage.clone();
    expected["prompt_tokens_details"]["cached_tokens"] = json!(prompt_tokens - 1);
    assert_eq!(last["usage"], expected);

    let prompt = "def fibonacci(n):";
    let completion_body = json!({"prompt": prompt, "max_tokens": 16, "temperature": 0});
    let reply = post_ok("/v1/completions", &completion_body);
    assert_eq!(reply["object"], "text_completion");
    let mut streaming = completion_body.clone();
    streaming["stream"] = json!(true);
    let chunks = stream("/v1/completions", &streaming);
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(streamed, reply["choices"][0]["text"].as_str().unwrap());
    assert_eq!(
        reply["usage"]["prompt_tokens"],
        tokenizer.encode(prompt, true).unwrap().len()
    );
    // Token ids as the prompt give the same reply as the text they encode.
    let ids = tokenizer.encode(prompt, true).unwrap();
    let by_ids = post_ok(
        "/v1/completions",
        &json!({"prompt": ids, "max_tokens": 16, "temperature": 0}),
    );
    assert_eq!(by_ids["choices"][0]["text"], reply["choices"][0]["text"]);
}

#[test]
fn the_same_seed_gives_the_same_text() {
    let _turn = turn();
    let body = |seed: u64| {
        let mut b = chat_body("Name a color.", 16);
        b["temperature"] = json!(1.0);
        b["top_k"] = json!(40);
        b["seed"] = json!(seed);
        b
    };
    let a = message_text(&post_ok("/v1/chat/completions", &body(11)));
    let b = message_text(&post_ok("/v1/chat/completions", &body(11)));
    assert_eq!(a, b);
    let others: Vec<String> = (12..16)
        .map(|s| message_text(&post_ok("/v1/chat/completions", &body(s))))
        .collect();
    assert!(
        others.iter().any(|o| *o != a),
        "five seeds, one text: {a:?}"
    );
}

#[test]
fn stop_strings_end_the_text_before_them_streamed_or_not() {
    let _turn = turn();
    let body = json!({"prompt": "for i in range(10):\n", "max_tokens": 24, "temperature": 0});
    let full = post_ok("/v1/completions", &body)["choices"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    let stop: String = full
        .chars()
        .skip(full.chars().count() / 2)
        .take(3)
        .collect();
    assert!(!stop.is_empty(), "{full:?}");
    let expected = &full[..full.find(&stop).unwrap()];
    let mut stopped = body.clone();
    stopped["stop"] = json!(["NEVER-IN-THE-TEXT", stop]);
    let reply = post_ok("/v1/completions", &stopped);
    assert_eq!(
        reply["choices"][0]["text"], expected,
        "stop {stop:?} in {full:?}"
    );
    assert_eq!(reply["choices"][0]["finish_reason"], "stop");
    stopped["stream"] = json!(true);
    let chunks = stream("/v1/completions", &stopped);
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(streamed, expected);
    let finish = chunks
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str());
    assert_eq!(finish, Some("stop"));
}

#[test]
fn four_concurrent_streams_each_equal_the_request_run_alone() {
    let _turn = turn();
    let prompts = [
        "Count to five.",
        "Name three fruits.",
        "What is Rust?",
        "Say hello in French.",
    ];
    let alone: Vec<String> = prompts
        .iter()
        .map(|p| message_text(&post_ok("/v1/chat/completions", &chat_body(p, 20))))
        .collect();
    // While they run, /metrics is polled for the most sequences busy at once.
    let (running, most_busy) = (AtomicBool::new(true), AtomicI64::new(0));
    let together: Vec<(String, Instant, Instant)> = std::thread::scope(|scope| {
        scope.spawn(|| {
            while running.load(Ordering::Relaxed) {
                let busy = gauge(&scrape(&server().base), "mlx_engine_busy_sequences");
                most_busy.fetch_max(busy as i64, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| {
                scope.spawn(move || {
                    let mut body = chat_body(p, 20);
                    body["stream"] = json!(true);
                    let timed = stream_timed("/v1/chat/completions", &body);
                    let chunks: Vec<Value> = timed.iter().map(|(_, c)| c.clone()).collect();
                    let (first, last) = (timed[1].0, timed[timed.len() - 1].0);
                    (streamed_chat_text(&chunks).0, first, last)
                })
            })
            .collect();
        let results = handles.into_iter().map(|h| h.join().unwrap()).collect();
        running.store(false, Ordering::Relaxed);
        results
    });
    for (i, (text, _, _)) in together.iter().enumerate() {
        assert_eq!(*text, alone[i], "stream {i} ({})", prompts[i]);
    }
    // They progressed together: several sequences were busy at once, and every stream had its
    // first token before any stream ended.
    let most_busy = most_busy.into_inner();
    assert!(
        most_busy >= 2,
        "at most {most_busy} sequence busy at a time"
    );
    let latest_first = together.iter().map(|t| t.1).max().unwrap();
    let earliest_last = together.iter().map(|t| t.2).min().unwrap();
    assert!(
        latest_first < earliest_last,
        "the streams ran one after another"
    );
}

/// The `/metrics` text of the server at `base`.
fn scrape(base: &str) -> String {
    let mut response = agent()
        .get(&format!("{base}/metrics"))
        .header("Authorization", &format!("Bearer {KEY}"))
        .call()
        .expect("GET /metrics");
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    response.body_mut().read_to_string().unwrap()
}

/// The value of an unlabelled sample, read from one line of the exposition (for polling; the
/// tests that check counts parse the whole text with [`parse_metrics`]).
fn gauge(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// Expositions parsed by the official Prometheus client (`tests/reference/parse_metrics.py`):
/// per text, `name{label="value",...}` → value.
fn parse_metrics(texts: &[&str]) -> Vec<HashMap<String, f64>> {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let path = dir.path().join(format!("metrics-{i}.txt"));
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect();
    let script = common::repo_root().join("tests/reference/parse_metrics.py");
    let out = openai_python()
        .arg(&script)
        .args(&paths)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// How much each sample moved between two parsed scrapes (a sample absent before counts 0).
fn moved(before: &HashMap<String, f64>, after: &HashMap<String, f64>, key: &str) -> f64 {
    let now = after
        .get(key)
        .unwrap_or_else(|| panic!("no {key} in {after:?}"));
    now - before.get(key).copied().unwrap_or(0.0)
}

#[test]
fn metrics_move_by_exactly_what_the_requests_did() {
    let _turn = turn();
    let base = &server().base;
    let before = scrape(base);
    let bodies = [
        json!({"prompt": "The capital of France is", "max_tokens": 5, "temperature": 0}),
        json!({"prompt": "fn add(a: i32, b: i32)", "max_tokens": 3, "temperature": 0}),
    ];
    let usages: Vec<Value> = bodies
        .iter()
        .map(|b| post_ok("/v1/completions", b)["usage"].clone())
        .collect();
    let (status, _) = call(
        "POST",
        "/v1/completions",
        &json!({"prompt": "x", "top_p": 2}).to_string(),
    );
    assert_eq!(status, 400);
    let after = scrape(base);
    let parsed = parse_metrics(&[&before, &after]);
    let (before, after) = (&parsed[0], &parsed[1]);
    let sum = |f: &dyn Fn(&Value) -> u64| usages.iter().map(f).sum::<u64>() as f64;
    let prompt = sum(&|u| u["prompt_tokens"].as_u64().unwrap());
    let generated = sum(&|u| u["completion_tokens"].as_u64().unwrap());
    let cached = sum(&|u| {
        u["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
    });
    let completions = |status: u16| {
        format!("mlx_engine_requests_total{{endpoint=\"/v1/completions\",status=\"{status}\"}}")
    };
    let moves = [
        (completions(200), 2.0),
        (completions(400), 1.0),
        ("mlx_engine_prompt_tokens_total".into(), prompt),
        ("mlx_engine_prefill_tokens_total".into(), prompt - cached),
        ("mlx_engine_generated_tokens_total".into(), generated),
        ("mlx_engine_time_to_first_token_seconds_count".into(), 2.0),
        // Every token after a request's first follows another.
        (
            "mlx_engine_inter_token_latency_seconds_count".into(),
            generated - 2.0,
        ),
        ("mlx_engine_decode_batch_size_count".into(), generated - 2.0),
    ];
    for (key, want) in moves {
        assert_eq!(moved(before, after, &key), want, "{key}");
    }
    let hits = moved(before, after, "mlx_engine_prefix_cache_hit_tokens_count");
    let misses = moved(before, after, "mlx_engine_prefix_cache_misses_total");
    assert_eq!(hits + misses, 2.0, "one cache lookup per request");
    let reused = moved(before, after, "mlx_engine_prefix_cache_hit_tokens_sum");
    assert_eq!(reused, cached);
    for idle in ["mlx_engine_busy_sequences", "mlx_engine_queue_depth"] {
        assert_eq!(after[idle], 0.0, "{idle}");
    }
    let count = after["mlx_engine_time_to_first_token_seconds_count"];
    let inf = r#"mlx_engine_time_to_first_token_seconds_bucket{le="+Inf"}"#;
    assert_eq!(after[inf], count, "+Inf bucket = count");
}

/// Opens a streamed completion of `max_tokens` over raw TCP and returns the connection once
/// two chunks have arrived (the sequence is then decoding).
fn open_stream(base: &str, max_tokens: usize) -> TcpStream {
    let address = base.trim_start_matches("http://");
    // Counting goes on for a long time at temperature 0.
    let body = json!({"prompt": "1, 2, 3, 4, 5,", "max_tokens": max_tokens, "stream": true,
                      "temperature": 0})
    .to_string();
    let mut tcp = TcpStream::connect(address).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(head.as_bytes()).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while seen.windows(5).filter(|w| w == b"data:").count() < 2 {
        let n = tcp.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the stream closed early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(
        seen.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    tcp
}

#[test]
fn a_full_queue_answers_503_and_a_client_that_leaves_frees_its_slot() {
    // One slot and a queue of one: a long stream holds the slot, a second request waits.
    let args = ["--parallel", "1", "--max-queue", "1", "--ctx-size", "4096"];
    let server = spawn_server("queue", &args);
    let long = open_stream(&server.base, 4000);
    let base = server.base.clone();
    let waiting = std::thread::spawn(move || {
        let body = json!({"prompt": "1, 2, 3,", "max_tokens": 2, "temperature": 0});
        let started = Instant::now();
        let reply = request_at(
            &base,
            "POST",
            "/v1/completions",
            &body.to_string(),
            Some(KEY),
        );
        (reply.unwrap(), started.elapsed())
    });
    std::thread::sleep(Duration::from_secs(1)); // the waiting request is queued first
    let body = json!({"prompt": "1, 2, 3,", "max_tokens": 2}).to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, value) = loop {
        let reply = request_at(&server.base, "POST", "/v1/completions", &body, Some(KEY));
        let (status, value) = reply.unwrap();
        if status == 503 || Instant::now() > deadline {
            break (status, value);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status, 503, "{value}");
    assert!(value["error"]["message"].as_str().unwrap().contains("busy"));
    // 4000 tokens would take minutes: the waiting request ends soon only if dropping the
    // stream frees its slot.
    drop(long);
    let ((status, value), waited) = waiting.join().unwrap();
    assert_eq!(status, 200, "{value}");
    assert!(waited < Duration::from_secs(30), "waited {waited:?}");

    // A client that gives up on a non-streamed request frees the slot too.
    let impatient: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    let long = json!({"prompt": "1, 2, 3, 4, 5,", "max_tokens": 4000, "temperature": 0});
    let gave_up = impatient
        .post(&format!("{}/v1/completions", server.base))
        .header("Authorization", &format!("Bearer {KEY}"))
        .send(long.to_string());
    assert!(gave_up.is_err(), "4000 tokens in 2 s?");
    let started = Instant::now();
    let body = json!({"prompt": "1, 2, 3,", "max_tokens": 2, "temperature": 0}).to_string();
    let (status, value) =
        request_at(&server.base, "POST", "/v1/completions", &body, Some(KEY)).unwrap();
    assert_eq!(status, 200, "{value}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );

    // A client that leaves during a long prefill frees its slot within one engine step: the
    // prefill stops early (a 256-position chunk per step) instead of reading the whole prompt.
    let metrics = || parse_metrics(&[&scrape(&server.base)]).remove(0);
    let computed = |m: &HashMap<String, f64>| m["mlx_engine_prefill_tokens_total"];
    let before = metrics();
    let long_prompt: Vec<u32> = (0..3800).map(|i| 1000 + i % 500).collect();
    let long = json!({"prompt": long_prompt, "max_tokens": 1, "temperature": 0});
    let gave_up = impatient
        .post(&format!("{}/v1/completions", server.base))
        .header("Authorization", &format!("Bearer {KEY}"))
        .send(long.to_string());
    assert!(gave_up.is_err(), "3800 positions prefilled in 2 s?");
    let (status, value) =
        request_at(&server.base, "POST", "/v1/completions", &body, Some(KEY)).unwrap();
    assert_eq!(status, 200, "{value}");
    let usage = &value["usage"];
    let small = usage["prompt_tokens"].as_u64().unwrap()
        - usage["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap();
    let after = metrics();
    let of_long = computed(&after) - computed(&before) - small as f64;
    assert!(
        of_long < long_prompt.len() as f64,
        "the abandoned prompt was prefilled to the end ({of_long} positions)"
    );
    assert_eq!(after["mlx_engine_busy_sequences"], 0.0);
}

/// A GGUF's KV bytes per position (K and V, every layer, in the server's default cache dtype),
/// from its metadata.
fn kv_bytes_per_position() -> usize {
    let file = GgufFile::open(&common::qwen_model()).unwrap();
    let config = mlx_engine::model::ModelConfig::from_gguf(&file).unwrap();
    let element = mlx_engine::kv_cache::KvDtype::default().dtype().size();
    2 * config.n_layers * config.n_kv_heads * config.head_dim * element
}

#[test]
fn the_prefix_cache_reuses_a_shared_prefix_and_stays_under_its_bound() {
    // Chat entries of ~400 positions hold 512 (the cache grows in steps of 256), completion
    // entries 256: the bound holds two chat entries, or one and two completions.
    let entry = 512 * kv_bytes_per_position();
    let bound = entry * 12 / 5;
    let bound_arg = bound.to_string();
    let args = ["--parallel", "2", "--ctx-size", "1024"];
    let server = spawn_server(
        "prefix",
        &[&args[..], &["--prefix-cache-bytes", &bound_arg]].concat(),
    );
    let rules: Vec<String> = (0..30)
        .map(|i| format!("Rule {i}: be precise about item {i}."))
        .collect();
    let system = format!("You are a careful assistant. {}", rules.join(" "));
    let chat = |user: &str| {
        json!({"model": MODEL, "max_tokens": 16, "temperature": 0,
               "messages": [{"role": "system", "content": system},
                            {"role": "user", "content": user}]})
    };
    let post = |body: &Value| {
        let (status, value) = request_at(
            &server.base,
            "POST",
            if body.get("messages").is_some() {
                "/v1/chat/completions"
            } else {
                "/v1/completions"
            },
            &body.to_string(),
            Some(KEY),
        )
        .unwrap();
        assert_eq!(status, 200, "{value}");
        let cached = value["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap();
        (value, cached)
    };
    let metrics = || parse_metrics(&[&scrape(&server.base)]).remove(0);

    let (first, cached) = post(&chat("What is 2 + 2?"));
    assert_eq!(cached, 0, "an empty cache");
    assert!(first["usage"]["prompt_tokens"].as_u64().unwrap() > 300);
    let (second, cached) = post(&chat("Name a color."));
    assert!(cached >= 300, "cached_tokens {cached}");
    let second_text = message_text(&second);
    let m = metrics();
    assert_eq!(m["mlx_engine_prefix_cache_bytes"], (2 * entry) as f64);
    assert_eq!(m["mlx_engine_prefix_cache_hit_tokens_sum"], cached as f64);

    // Three short completions push both chat entries out, least recently used first.
    for word in ["alpha", "beta", "gamma"] {
        post(&json!({"prompt": format!("{word} {word}"), "max_tokens": 2, "temperature": 0}));
    }
    let m = metrics();
    assert_eq!(m["mlx_engine_prefix_cache_evictions_total"], 2.0);
    assert!(m["mlx_engine_prefix_cache_bytes"] <= bound as f64);
    assert_eq!(m["mlx_engine_prefix_cache_entries"], 3.0);

    // The same request with nothing cached computes the same text as with the prefix reused.
    let (fresh, cached) = post(&chat("Name a color."));
    assert_eq!(cached, 0, "evicted");
    assert_eq!(message_text(&fresh), second_text);
    let m = metrics();
    assert!(m["mlx_engine_prefix_cache_bytes"] <= bound as f64);

    // Streamed, the usage chunk reports the reuse (all but the last prompt token).
    let mut streaming = chat("Name a color.");
    streaming["stream"] = json!(true);
    streaming["stream_options"] = json!({"include_usage": true});
    let mut response = agent()
        .post(&format!("{}/v1/chat/completions", server.base))
        .header("Authorization", &format!("Bearer {KEY}"))
        .send(streaming.to_string())
        .unwrap();
    let text = response.body_mut().read_to_string().unwrap();
    let chunks: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .take_while(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(streamed_chat_text(&chunks).0, second_text);
    let usage = &chunks.last().unwrap()["usage"];
    let prompt = usage["prompt_tokens"].as_u64().unwrap();
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], prompt - 1);
}

/// A server process spawned directly (so it can be signalled), killed if the test fails.
struct Signalled {
    child: Child,
    base: String,
}

impl Drop for Signalled {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sigterm_ends_streams_with_a_final_chunk_and_exits_0() {
    common::qwen_model();
    let log = common::repo_root().join("target/server-test-sigterm.log");
    let _ = std::fs::remove_file(&log);
    let mut child = Command::new(env!("CARGO_BIN_EXE_mlx-engine"))
        .args(["serve", "--port", "0", "--api-key", KEY, "--model", MODEL])
        .args(["--ctx-size", "4096"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn mlx-engine serve");
    let base = wait_for_address(&log, &mut child);
    let mut server = Signalled { child, base };
    wait_for_health(&server.base);
    let mut tcp = open_stream(&server.base, 4000);
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut rest = Vec::new();
    tcp.read_to_end(&mut rest).expect("the stream ends");
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.contains(r#""finish_reason":"length""#),
        "no final chunk in {rest}"
    );
    let done = rest.find("data: [DONE]").expect("[DONE]");
    assert!(!rest[done..].contains("\"text\""), "text after [DONE]");
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = server.child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "the server did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit status {exit}");
    let address = server.base.trim_start_matches("http://").to_string();
    assert!(TcpStream::connect(address).is_err(), "still accepting");
}

#[test]
fn a_stream_keeps_receiving_tokens_while_a_long_prompt_is_read() {
    let _turn = turn();
    let mut tcp = open_stream(&server().base, 200);
    tcp.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    // 250 positions: four steps of 64 while a stream decodes (one step of 256 alone).
    let long: Vec<u32> = (0..250).map(|i| 2000 + i % 300).collect();
    let body = json!({"prompt": long, "max_tokens": 1, "temperature": 0});
    let reading = std::thread::spawn(move || {
        let started = Instant::now();
        post_ok("/v1/completions", &body);
        (started, Instant::now())
    });
    let mut arrivals = Vec::new();
    let mut buf = [0u8; 4096];
    while !reading.is_finished() {
        if let Ok(n) = tcp.read(&mut buf) {
            let events = buf[..n].windows(5).filter(|w| w == b"data:").count();
            arrivals.extend(std::iter::repeat_n(Instant::now(), events));
        }
    }
    let (started, ended) = reading.join().unwrap();
    let during = arrivals
        .iter()
        .filter(|&&t| t > started && t <= ended)
        .count();
    assert!(
        during >= 3,
        "{during} stream chunks while the prompt was read"
    );
}

#[test]
fn a_client_disconnecting_mid_stream_leaves_the_server_serving() {
    let _turn = turn();
    for _ in 0..3 {
        drop(open_stream(&server().base, 200));
    }
    let started = Instant::now();
    for _ in 0..3 {
        assert_still_serving();
    }
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn models_health_tokenize_and_detokenize() {
    let _turn = turn();
    let (status, models) = call("GET", "/v1/models", "");
    assert_eq!(status, 200);
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], MODEL);
    let (tokenizer, _) = tokenizer_and_template();
    let text = "fn main() { println!(\"héllo\"); }";
    let tokens = post_ok("/tokenize", &json!({"content": text}))["tokens"].clone();
    assert_eq!(tokens, json!(tokenizer.encode(text, false).unwrap()));
    let back = post_ok("/detokenize", &json!({"tokens": tokens}));
    assert_eq!(back["content"], text);
    let (status, value) = call("POST", "/detokenize", &json!({"tokens": [-1]}).to_string());
    assert_eq!(status, 400, "{value}");
    assert_eq!(value["error"]["param"], "tokens");
}

#[test]
fn the_openai_python_client_talks_to_the_server() {
    let _turn = turn();
    let server = server();
    let script = common::repo_root().join("tests/reference/openai_client.py");
    let out = openai_python()
        .arg(&script)
        .args([&format!("{}/v1", server.base), KEY, MODEL])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{} failed:\n{}\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("openai client: all checks passed"));
}

/// Python with the pinned `openai` package (tests/reference/requirements-server.txt).
fn openai_python() -> Command {
    common::python_with("requirements-server.txt", "pydeps-server")
}

/// Largest |logprob| difference allowed against the reference: both run the float32 weights of
/// the synthetic model, ours on the CPU kernels (F32 weights take float32 activations, no int8
/// rounding; another summation order), so only float32 rounding separates them (measured
/// 1.7e-6 over 8 steps × top 5 on a 2-layer model; a log-softmax moves by at most twice the
/// largest logit difference).
const REFERENCE_LOGPROB_TOL: f64 = 1e-4;

/// log-softmax of a row in f64.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&l| (f64::from(l) - max).exp()).sum();
    row.iter().map(|&l| f64::from(l) - max - sum.ln()).collect()
}

/// `token_id:N` → N.
fn id_of(name: &str) -> u32 {
    name.strip_prefix("token_id:")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{name:?} is not token_id:N"))
}

#[test]
fn logprobs_are_the_log_softmax_of_the_reference_forward_pass() {
    if common::skip_requested() {
        return;
    }
    let model = common::synthetic(
        "qwen2-F32-seed5",
        &["--arch", "qwen2", "--quant", "F32", "--seed", "5"],
    );
    let file = GgufFile::open(&model).unwrap();
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    // A float32 KV cache: the tolerance is float32 rounding, which f16 rows would exceed.
    let server = spawn_server_for(
        "logprobs",
        model.to_str().unwrap(),
        &["--parallel", "1", "--cache-type", "f32"],
    );
    // End tokens are banned so that all 8 tokens are generated; the bias must not show in the
    // reported logprobs, which are compared with the unbiased reference.
    let banned: serde_json::Map<String, Value> = tokenizer
        .eog_ids()
        .iter()
        .map(|id| (id.to_string(), json!(-100)))
        .collect();
    let prompt = [1u32, 300, 17, 42, 511, 260, 3, 99];
    let body = json!({"prompt": prompt, "max_tokens": 8, "temperature": 0, "logprobs": 5,
                      "logit_bias": banned, "return_tokens_as_token_ids": true});
    let (status, reply) = request_at(
        &server.base,
        "POST",
        "/v1/completions",
        &body.to_string(),
        Some(KEY),
    )
    .unwrap();
    assert_eq!(status, 200, "{reply}");
    let lp = &reply["choices"][0]["logprobs"];
    let chosen: Vec<u32> = lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| id_of(t.as_str().unwrap()))
        .collect();
    assert_eq!(chosen.len(), 8, "{reply}");

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("logits.bin");
    let teacher: Vec<String> = prompt
        .iter()
        .chain(&chosen[..chosen.len() - 1])
        .map(u32::to_string)
        .collect();
    let script = common::repo_root().join("tests/reference/forward.py");
    common::run_python(
        &script,
        &[
            model.to_str().unwrap(),
            "--tokens",
            &teacher.join(","),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let logits = common::read_f32(&out);
    let vocab = logits.len() / teacher.len();
    let mut worst = 0f64;
    for (i, &token) in chosen.iter().enumerate() {
        let row = prompt.len() - 1 + i;
        let reference = log_softmax(&logits[row * vocab..(row + 1) * vocab]);
        let spread = reference.iter().copied().fold(f64::NEG_INFINITY, f64::max)
            - reference.iter().copied().fold(f64::INFINITY, f64::min);
        // A spread of nats between the likeliest and the least likely token: a wrong
        // distribution (uniform, or biased) could not pass (measured 3.4-4.2).
        assert!(
            spread > 1.0,
            "step {i}: the reference row is nearly flat ({spread})"
        );
        let ours = lp["token_logprobs"][i].as_f64().unwrap();
        worst = worst.max((ours - reference[token as usize]).abs());
        let top = lp["top_logprobs"][i].as_object().unwrap();
        assert!(top.len() >= 5, "{top:?}");
        for (name, value) in top {
            let d = (value.as_f64().unwrap() - reference[id_of(name) as usize]).abs();
            worst = worst.max(d);
        }
        // Greedy over the unbanned tokens: the reference's best, barring a near-tie.
        let best = (0..vocab)
            .filter(|t| !tokenizer.is_eog(*t as u32))
            .max_by(|&a, &b| reference[a].total_cmp(&reference[b]))
            .unwrap();
        let gap = reference[best] - reference[token as usize];
        assert!(
            best == token as usize || gap < REFERENCE_LOGPROB_TOL,
            "step {i}: chose {token}, the reference's best is {best} by {gap}"
        );
    }
    println!("max |logprob - reference| = {worst:.2e}");
    assert!(
        worst <= REFERENCE_LOGPROB_TOL,
        "max |logprob - reference| {worst} beyond {REFERENCE_LOGPROB_TOL}"
    );
}

/// A completion prompt whose continuation repeats most of it (prompt lookup drafts it).
const EDIT_PROMPT: &str =
    "def area(width, height):\n    \"\"\"The area of a rectangle.\"\"\"\n    \
return width * height\n\n\ndef perimeter(width, height):\n    \"\"\"The perimeter of a \
rectangle.\"\"\"\n    return 2 * (width + height)\n\n\n# The same two functions again, \
unchanged:\n\n";

/// A top-1 mismatch is a near-tie when the plain run's top-2 gap there is below this (the rule
/// of `model_fidelity.rs` and `speculative.rs`: a verify pass rounds several rows at once).
const TIE_GAP: f64 = 1.0;

/// A greedy completion of [`EDIT_PROMPT`] on `base`: token ids, and per token the gap between
/// its logprob and the runner-up's.
fn greedy_ids_and_gaps(base: &str, speculative: bool) -> (Vec<String>, Vec<f64>) {
    let body = json!({
        "prompt": EDIT_PROMPT, "max_tokens": 48, "temperature": 0, "logprobs": 2,
        "return_tokens_as_token_ids": true, "speculative": speculative,
    });
    let (status, reply) = request_at(
        base,
        "POST",
        "/v1/completions",
        &body.to_string(),
        Some(KEY),
    )
    .expect("request");
    assert_eq!(status, 200, "{reply}");
    let lp = &reply["choices"][0]["logprobs"];
    let tokens: Vec<String> = serde_json::from_value(lp["tokens"].clone()).unwrap();
    let gaps = lp["top_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|top| {
            let mut values: Vec<f64> = top
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_f64().unwrap())
                .collect();
            values.sort_by(|a, b| b.total_cmp(a));
            values[0] - values.get(1).copied().unwrap_or(f64::NEG_INFINITY)
        })
        .collect();
    (tokens, gaps)
}

#[test]
fn a_speculating_server_gives_the_plain_greedy_text_and_counts_its_drafts() {
    check_speculating_server("speculative", &["--speculative", "lookup"]);
}

#[test]
fn a_server_with_a_draft_model_gives_the_plain_greedy_text() {
    // The model drafting for itself: what matters here is the path (its own cache following
    // the sequence, drafts verified and counted), not the speed.
    check_speculating_server(
        "draft-model",
        &["--speculative", "draft", "--draft-model", MODEL],
    );
}

#[test]
fn a_draft_model_without_draft_speculation_is_refused() {
    for (args, want) in [
        (&["--speculative", "draft"][..], "--draft-model NAME|PATH"),
        (&["--draft-model", MODEL][..], "needs --speculative draft"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_mlx-engine"))
            .args(["serve", "--port", "0", "--model", MODEL])
            .args(args)
            .output()
            .expect("run mlx-engine serve");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started a server");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}

/// A server speculating with `args`: greedy text equal to the opted-out run up to a near-tie,
/// drafts counted in `/metrics`, streamed text equal to unstreamed.
fn check_speculating_server(name: &str, args: &[&str]) {
    let mut all = vec!["--parallel", "2", "--ctx-size", "512"];
    all.extend_from_slice(args);
    // Whether speculation pays depends on the host; the pacer may pause it.
    all.push("--draft-fixed");
    let server = spawn_server(name, &all);
    let base = &server.base;
    let counts = |text: &str| {
        let m = &parse_metrics(&[text])[0];
        let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
        (
            get("mlx_engine_drafted_tokens_total"),
            get("mlx_engine_accepted_tokens_total"),
        )
    };
    let before = counts(&scrape(base));
    let (plain, gaps) = greedy_ids_and_gaps(base, false);
    let opted_out = counts(&scrape(base));
    assert_eq!(opted_out, before, "a request that opted out drafted");
    let (ours, _) = greedy_ids_and_gaps(base, true);
    let after = counts(&scrape(base));
    let (drafted, accepted) = (after.0 - before.0, after.1 - before.1);
    assert!(accepted >= 10.0, "drafted {drafted}, accepted {accepted}");
    assert!(accepted <= drafted);
    let agreed = plain.iter().zip(&ours).take_while(|(a, b)| a == b).count();
    if agreed < plain.len().min(ours.len()) {
        assert!(
            gaps[agreed] < TIE_GAP,
            "the texts part at token {agreed} where the top-2 gap is {}",
            gaps[agreed]
        );
    } else {
        assert_eq!(ours.len(), plain.len(), "{ours:?} vs {plain:?}");
    }
    // Streamed, the accepted drafts arrive as text like any other tokens.
    let mut body =
        json!({"prompt": EDIT_PROMPT, "max_tokens": 48, "temperature": 0, "stream": true});
    let chunks = stream_at(base, "/v1/completions", &body);
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    body["stream"] = json!(false);
    let (_, reply) = request_at(
        base,
        "POST",
        "/v1/completions",
        &body.to_string(),
        Some(KEY),
    )
    .expect("request");
    assert_eq!(streamed, reply["choices"][0]["text"].as_str().unwrap());
}
