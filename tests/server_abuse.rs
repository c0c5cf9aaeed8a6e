//! `mlx-engine serve` under abuse: the real binary on a loopback port with a small synthetic
//! model, driven over raw TCP by clients that send headers that never finish, bodies that never
//! finish or are too large, garbage bytes, hundreds of idle connections and a flood of
//! connections past the cap. Each must be bounded by a timeout or a limit (a closed connection,
//! or a 408/413/503 in OpenAI's error shape), while an ordinary request is served meanwhile and
//! after, and the server never exits.

mod common;

use serde_json::{json, Value};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// `--header-timeout` of the test servers, seconds.
const HEADER_TIMEOUT: u64 = 2;
/// `--body-timeout` of the test servers, seconds.
const BODY_TIMEOUT: u64 = 3;
/// `--max-body-bytes` of the test servers.
const MAX_BODY: usize = 1 << 20;
/// `--max-connections` of the server the cap is tested on.
const SMALL_CAP: usize = 8;
/// Slack on top of a timeout before a test calls it missed (a shared, loaded machine).
const SLACK: Duration = Duration::from_secs(10);

/// A server: its address (`host:port`), its process id, and the shell that kills it when this
/// test process exits.
struct Server {
    address: String,
    pid: u32,
    _child: Child,
    _stdin: ChildStdin,
}

/// A 2-layer synthetic llama with a ChatML template: loads in well under a second.
fn model() -> PathBuf {
    let shape = "--layers 2 --hidden 64 --heads 4 --kv-heads 2 --ffn 128 --vocab 512 --ctx 256";
    let mut args: Vec<&str> = shape.split(' ').collect();
    args.extend(["--chat-template", "chatml"]);
    common::synthetic("abuse-llama-chatml", &args)
}

/// The server most tests share (default connection cap: 512).
fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| spawn_server("abuse", HEADER_TIMEOUT, &[]))
}

/// Starts `mlx-engine serve` on the synthetic model with the test limits, `header_timeout` and
/// `args`, under `sh`, which kills it as soon as our end of its stdin closes (when this process
/// exits).
fn spawn_server(name: &str, header_timeout: u64, args: &[&str]) -> Server {
    let model = model();
    let log = common::repo_root().join(format!("target/server-abuse-{name}.log"));
    let _ = std::fs::remove_file(&log);
    let script = r#"bin="$1"; log="$2"; shift 2
"$bin" "$@" 2>"$log" & pid=$!
echo $pid
read _ignored
kill $pid; wait $pid 2>/dev/null"#;
    let limits = [
        "--header-timeout".to_string(),
        header_timeout.to_string(),
        "--body-timeout".to_string(),
        BODY_TIMEOUT.to_string(),
        "--max-body-bytes".to_string(),
        MAX_BODY.to_string(),
    ];
    let mut child = Command::new("sh")
        .args(["-c", script, "sh", env!("CARGO_BIN_EXE_mlx-engine")])
        .arg(&log)
        .args(["serve", "--port", "0", "--threads", "1", "--model"])
        .arg(&model)
        .args(limits)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn mlx-engine serve");
    let stdin = child.stdin.take().unwrap();
    let mut pid = String::new();
    let mut stdout = child.stdout.take().unwrap();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
        pid.push(byte[0] as char);
    }
    let pid = pid.trim().parse().expect("the server's pid");
    let address = wait_for_address(&log, &mut child);
    let server = Server {
        address,
        pid,
        _child: child,
        _stdin: stdin,
    };
    wait_until_served(&server);
    server
}

/// Reads the bound address from the server's log ("listening on http://ADDR").
fn wait_for_address(log: &Path, child: &mut Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(rest) = text.split("listening on http://").nth(1) {
            return rest.lines().next().unwrap().trim().to_string();
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the server exited ({status}):\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the server did not report its address");
}

/// Waits until the model is loaded and an ordinary request succeeds.
fn wait_until_served(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Ok((200, _)) = exchange(&server.address, &get("/health")) {
            assert_ordinary_request_served(server);
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the server did not become healthy");
}

/// A GET request that closes its connection after the answer.
fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").into_bytes()
}

/// A POST of `body` that closes its connection after the answer.
fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Sends `request` on a new connection and reads the answer until the server closes:
/// (status, JSON body or Null).
fn exchange(address: &str, request: &[u8]) -> std::io::Result<(u16, Value)> {
    let mut tcp = TcpStream::connect(address)?;
    tcp.set_read_timeout(Some(Duration::from_secs(60)))?;
    tcp.write_all(request)?;
    read_response(&mut tcp)
}

/// Reads one response until the connection closes: (status, JSON body or Null).
fn read_response(tcp: &mut TcpStream) -> std::io::Result<(u16, Value)> {
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// (status, JSON body or Null) of a whole response with a `Content-Length` body.
fn parse_response(raw: &[u8]) -> std::io::Result<(u16, Value)> {
    let text = String::from_utf8_lossy(raw);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// A short completion on a new connection must succeed.
fn assert_ordinary_request_served(server: &Server) {
    let body = json!({"prompt": [1, 2, 3], "max_tokens": 2, "temperature": 0}).to_string();
    let (status, value) = exchange(&server.address, &post("/v1/completions", &body))
        .expect("an ordinary request gets an answer");
    assert_eq!(status, 200, "{value}");
    assert_eq!(value["usage"]["prompt_tokens"], 3, "{value}");
    assert_still_running(server);
}

/// The server process is still alive (it never exits on bad input).
fn assert_still_running(server: &Server) {
    assert!(
        Path::new(&format!("/proc/{}", server.pid)).exists(),
        "the server exited"
    );
}

/// Asserts an error response in OpenAI's shape with this status.
fn assert_openai_error(status: u16, value: &Value, expected: u16) {
    assert_eq!(status, expected, "{value}");
    assert_eq!(value["error"]["code"], expected, "{value}");
    assert!(value["error"]["message"].is_string(), "{value}");
    assert!(value["error"]["type"].is_string(), "{value}");
}

/// Waits until the server closes `tcp` (EOF or reset), returning how long it took and what it
/// sent before closing.
fn wait_for_close(tcp: &mut TcpStream) -> (Duration, Vec<u8>) {
    let started = Instant::now();
    tcp.set_read_timeout(Some(Duration::from_secs(HEADER_TIMEOUT) + SLACK))
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
    }
    (started.elapsed(), seen)
}

/// The number of file descriptors the server process holds.
fn open_fds(server: &Server) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", server.pid))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

#[test]
fn headers_that_never_finish_time_out_while_others_are_served() {
    let server = server();
    let mut slow = TcpStream::connect(&server.address).unwrap();
    slow.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\n")
        .unwrap();
    // Slowloris: a header byte every 200 ms, never the blank line.
    let started = Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(HEADER_TIMEOUT) + SLACK {
        if slow.write_all(b"X").is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        if started.elapsed() < Duration::from_secs(HEADER_TIMEOUT) {
            assert_ordinary_request_served(server);
        }
    }
    if !closed {
        let (_, sent) = wait_for_close(&mut slow);
        assert!(sent.is_empty() || sent.starts_with(b"HTTP/1.1 408"));
    }
    assert!(started.elapsed() >= Duration::from_secs(HEADER_TIMEOUT) - Duration::from_millis(500));
    assert_ordinary_request_served(server);
}

#[test]
fn idle_connections_are_closed_after_the_header_timeout() {
    let server = server();
    // Nothing sent at all.
    let mut silent = TcpStream::connect(&server.address).unwrap();
    // A keep-alive connection left idle after one answered request.
    let mut kept = TcpStream::connect(&server.address).unwrap();
    let body = json!({"prompt": [1, 2], "max_tokens": 1}).to_string();
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    kept.write_all(request.as_bytes()).unwrap();
    let (elapsed_silent, sent) = wait_for_close(&mut silent);
    assert!(sent.is_empty() || sent.starts_with(b"HTTP/1.1 408"));
    assert!(elapsed_silent >= Duration::from_secs(HEADER_TIMEOUT) - Duration::from_millis(500));
    let (_, answer) = wait_for_close(&mut kept);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_ordinary_request_served(server);
}

#[test]
fn bodies_that_never_finish_get_408() {
    let server = server();
    // Announces 100 bytes, sends 10, then nothing.
    let mut stalled = TcpStream::connect(&server.address).unwrap();
    stalled
        .write_all(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n{\"prompt\":")
        .unwrap();
    // Chunked, one byte every 500 ms: each chunk comes well within any per-read timeout.
    let mut trickle = TcpStream::connect(&server.address).unwrap();
    trickle
        .write_all(
            b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .unwrap();
    let started = Instant::now();
    trickle.set_nonblocking(true).unwrap();
    let mut answer = Vec::new();
    while started.elapsed() < Duration::from_secs(BODY_TIMEOUT) + SLACK {
        if trickle.write_all(b"1\r\n \r\n").is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
        let mut buf = [0u8; 4096];
        match trickle.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
            break;
        }
    }
    // What arrived after the last read (the server closes once it has answered).
    trickle.set_nonblocking(false).unwrap();
    trickle
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = trickle.read_to_end(&mut rest);
    answer.extend_from_slice(&rest);
    let (status, value) = parse_response(&answer).unwrap();
    assert_openai_error(status, &value, 408);
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(BODY_TIMEOUT) - Duration::from_millis(500));

    stalled
        .set_read_timeout(Some(Duration::from_secs(BODY_TIMEOUT) + SLACK))
        .unwrap();
    let (status, value) = read_response(&mut stalled).unwrap();
    assert_openai_error(status, &value, 408);
    assert!(value["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not received within"));
    assert_ordinary_request_served(server);
}

#[test]
fn bodies_over_the_limit_get_413() {
    let server = server();
    let ten_mb = 10 << 20;
    // Announced: answered from the header, before any of the body is read.
    let mut announced = TcpStream::connect(&server.address).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: {ten_mb}\r\n\r\n"
    );
    announced.write_all(head.as_bytes()).unwrap();
    announced
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let (status, value) = read_response(&mut announced).unwrap();
    assert_openai_error(status, &value, 413);
    assert_eq!(value["error"]["type"], "invalid_request_error");

    // Chunked, no length announced: refused once the limit is passed. The server may close
    // while we still send, so the answer is read on another thread.
    let mut chunked = TcpStream::connect(&server.address).unwrap();
    chunked
        .write_all(
            b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .unwrap();
    let mut reader = chunked.try_clone().unwrap();
    reader
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let answer = std::thread::spawn(move || {
        let mut raw = Vec::new();
        let _ = reader.read_to_end(&mut raw);
        raw
    });
    let chunk = format!("{:x}\r\n{}\r\n", 64 << 10, " ".repeat(64 << 10));
    for _ in 0..ten_mb / (64 << 10) {
        if chunked.write_all(chunk.as_bytes()).is_err() {
            break;
        }
    }
    let raw = answer.join().unwrap();
    let (status, value) = parse_response(&raw).unwrap();
    assert_openai_error(status, &value, 413);
    assert_ordinary_request_served(server);
}

#[test]
fn garbage_bytes_are_refused_and_the_server_keeps_serving() {
    let server = server();
    let mut random = Vec::new();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..64 << 10 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        random.push(state as u8);
    }
    let huge_header = format!(
        "GET /health HTTP/1.1\r\nHost: test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let inputs: Vec<Vec<u8>> = vec![
        random,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(), // a TLS ClientHello
        b"GET / HTTP/9.9\r\n\r\n".to_vec(),
        b"\r\n\r\n\r\n\r\n".to_vec(),
        b"POST /v1/completions HTTP/1.1\r\nContent-Length: -5\r\n\r\n".to_vec(),
        b"POST /v1/completions HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"
            .to_vec(),
        b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        huge_header.into_bytes(),
        post("/v1/completions", "\u{0}\u{1}{{{{[[[["),
        post("/v1/chat/completions", "{\"messages\": [{\"role\": 7}]}"),
    ];
    for input in &inputs {
        let mut tcp = TcpStream::connect(&server.address).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(HEADER_TIMEOUT) + SLACK))
            .unwrap();
        let _ = tcp.write_all(input);
        let mut raw = Vec::new();
        let _ = tcp.read_to_end(&mut raw);
        if !raw.is_empty() {
            let (status, value) = parse_response(&raw).unwrap();
            assert!((400..600).contains(&status), "{status} {value}");
        }
        assert_still_running(server);
    }
    assert_ordinary_request_served(server);
}

#[test]
fn two_hundred_idle_connections_do_not_stop_an_ordinary_request() {
    let server = server();
    let mut idle = Vec::new();
    for i in 0..200 {
        let mut tcp = TcpStream::connect(&server.address).unwrap();
        if i % 2 == 0 {
            tcp.write_all(b"GET /health HTTP/1.1\r\nHo").unwrap();
        }
        idle.push(tcp);
    }
    assert_ordinary_request_served(server);
    drop(idle);
    assert_ordinary_request_served(server);
}

#[test]
fn connections_past_the_cap_get_503_and_a_flood_holds_no_descriptors() {
    // Held connections must outlive the test: a long header timeout.
    let server = spawn_server("cap", 60, &["--max-connections", &SMALL_CAP.to_string()]);
    let baseline = open_fds(&server);
    let held: Vec<TcpStream> = (0..SMALL_CAP)
        .map(|_| TcpStream::connect(&server.address).unwrap())
        .collect();
    // The cap is reached once the server has accepted them all.
    std::thread::sleep(Duration::from_millis(500));
    let (status, value) = exchange(&server.address, &get("/health")).unwrap();
    assert_openai_error(status, &value, 503);
    assert!(value["error"]["message"]
        .as_str()
        .unwrap()
        .contains("too many connections"));

    // A flood: 300 connections opened and left open.
    let flood: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(&server.address).ok())
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let fds = open_fds(&server);
    assert!(
        fds <= baseline + SMALL_CAP + 64 + 8,
        "the server holds {fds} descriptors (baseline {baseline}) during a flood"
    );
    drop(flood);
    drop(held);
    // Once the held connections close, requests are served again.
    std::thread::sleep(Duration::from_millis(500));
    assert_ordinary_request_served(&server);
}
