//! `toolgate serve` end to end: the binary on real sockets, in front of real upstream
//! processes (the LLM CLI Gateway stand-in on stdio, the echo server over Streamable HTTP).
//! Clients: raw HTTP (reqwest) for exact statuses, and rmcp's Streamable HTTP client.
//! The Python SDK, the Inspector CLI and the conformance suite are in `tests/python/`.

use crate::support::{rss_kib, standin, TOOLGATE};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads stderr lines until one starts with `prefix`; returns it. The rest of stderr is
/// copied to ours by a thread (so that the pipe never fills and failures show the log).
fn wait_for_line(child: &mut Child, prefix: &str) -> String {
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    let prefix = prefix.to_owned();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if !sent && line.starts_with(&prefix) {
                let _ = tx.send(line.clone());
                sent = true;
            }
            eprintln!("{line}");
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the process did not start listening")
}

/// A running `toolgate standin --echo --http`.
pub struct EchoUpstream {
    child: Child,
    pub url: String,
}

impl EchoUpstream {
    pub fn start() -> Self {
        let mut child = Command::new(TOOLGATE)
            .args(["standin", "--echo", "--http", "127.0.0.1:0"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let line = wait_for_line(&mut child, "listening on ");
        let url = line.split_whitespace().nth(2).unwrap().to_owned();
        Self { child, url }
    }

    /// `{"requests": N, "sessions": N}`.
    pub async fn stats(&self) -> Value {
        let stats = self.url.replace("/mcp", "/stats");
        reqwest::get(stats).await.unwrap().json().await.unwrap()
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `toolgate serve` with its config and policies in a temporary folder.
pub struct Serve {
    child: Child,
    pub url: String,
    pub admin: String,
    pub dir: tempfile::TempDir,
}

impl Serve {
    /// `config` is the TOML after the listen addresses; `files` are written beside it.
    pub fn start(config: &str, files: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let path = dir.path().join("toolgate.toml");
        let admin_hash = sha256_hex("admin-token");
        std::fs::write(
            &path,
            format!(
                "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
                 admin_token_sha256 = \"{admin_hash}\"\n{config}"
            ),
        )
        .unwrap();
        Self::start_at(dir, &path)
    }

    fn start_at(dir: tempfile::TempDir, config: &std::path::Path) -> Self {
        let mut child = Command::new(TOOLGATE)
            .args(["serve", "--config"])
            .arg(config)
            .env("TOOLGATE_LOG", "toolgate=warn")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let line = wait_for_line(&mut child, "toolgate serve: listening on ");
        // "toolgate serve: listening on http://A/mcp (admin http://B)"
        let words: Vec<&str> = line.split_whitespace().collect();
        let url = words[4].to_owned();
        let admin = words[6].trim_end_matches(')').to_owned();
        Self {
            child,
            url,
            admin,
            dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `host:port` of the `/mcp` listener, for raw TCP clients.
    pub fn address(&self) -> String {
        self.url
            .trim_start_matches("http://")
            .trim_end_matches("/mcp")
            .to_owned()
    }

    /// Sends SIGTERM, then waits up to `limit` for the process to exit.
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let sent = Command::new("kill")
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub async fn status(&self) -> Value {
        crate::support::http_client()
            .get(format!("{}/status", self.admin))
            .bearer_auth("admin-token")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw MCP-over-HTTP client: exact statuses and headers, messages from JSON or SSE bodies.
pub struct Mcp {
    pub http: reqwest::Client,
    pub url: String,
    pub token: Option<String>,
    pub session: Option<String>,
    next_id: u64,
}

/// What one POST returned.
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub messages: Vec<Value>,
}

impl Reply {
    /// The result of the (only) reply in the body.
    pub fn result(&self) -> &Value {
        let reply = self
            .messages
            .iter()
            .find(|m| m.get("method").is_none())
            .unwrap_or_else(|| panic!("no reply in {:?}", self.messages));
        reply
            .get("result")
            .unwrap_or_else(|| panic!("not a result: {reply}"))
    }
    pub fn error(&self) -> &Value {
        &self.messages[0]["error"]
    }
}

pub fn parse_body(content_type: &str, body: &[u8]) -> Vec<Value> {
    let text = String::from_utf8_lossy(body);
    if content_type.starts_with("text/event-stream") {
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    } else if text.trim().is_empty() {
        Vec::new()
    } else {
        vec![serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))]
    }
}

impl Mcp {
    pub fn new(url: &str, token: Option<&str>) -> Self {
        Self {
            http: crate::support::http_client(),
            url: url.to_owned(),
            token: token.map(str::to_owned),
            session: None,
            next_id: 1,
        }
    }

    pub async fn post(&self, message: &Value) -> Reply {
        self.post_raw(serde_json::to_vec(message).unwrap(), "application/json")
            .await
    }

    pub async fn post_raw(&self, body: Vec<u8>, content_type: &str) -> Reply {
        let mut request = self
            .http
            .post(&self.url)
            .header("content-type", content_type)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .body(body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(session) = &self.session {
            request = request.header("mcp-session-id", session);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = response.bytes().await.unwrap();
        Reply {
            status,
            headers,
            messages: parse_body(&content_type, &body),
        }
    }

    pub async fn request(&mut self, method: &str, params: Value) -> Reply {
        let id = self.next_id;
        self.next_id += 1;
        self.post(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await
    }

    /// `initialize` + `notifications/initialized`; keeps the session id.
    pub async fn initialize(&mut self) -> Reply {
        let reply = self
            .request(
                "initialize",
                json!({"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "e2e", "version": "1"}}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.messages);
        self.session = Some(reply.headers["mcp-session-id"].to_str().unwrap().to_owned());
        let ack = self
            .post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        assert_eq!(ack.status, StatusCode::ACCEPTED);
        reply
    }

    pub async fn tool_names(&mut self) -> Vec<String> {
        let reply = self.request("tools/list", json!({})).await;
        let mut names: Vec<String> = reply.result()["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    }

    pub async fn call(&mut self, tool: &str, args: Value) -> Value {
        let reply = self
            .request("tools/call", json!({"name": tool, "arguments": args}))
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        reply.result().clone()
    }
}

fn text(result: &Value) -> &str {
    result["content"][0]["text"].as_str().unwrap_or("")
}

fn standin_upstream() -> String {
    let command: Vec<String> = standin();
    format!(
        "[upstream]\ncommand = {}\n",
        serde_json::to_string(&command).unwrap()
    )
}

/// `serve` in front of the echo upstream with one grant, `a`, whose policy allows everything;
/// `more` is appended to the config (a `[limits]` table, say).
fn allow_all_behind_echo(token: &str, more: &str) -> (EchoUpstream, Serve) {
    let upstream = EchoUpstream::start();
    let config = format!(
        "[upstream]\nurl = \"{}\"\n{}{more}",
        upstream.url,
        grant("a", token, "a.json")
    );
    let serve = Serve::start(
        &config,
        &[("a.json", r#"{"version": "1", "default": "allow"}"#)],
    );
    (upstream, serve)
}

fn grant(name: &str, token: &str, policy: &str) -> String {
    format!(
        "[[grants]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\npolicy = \"{policy}\"\n",
        sha256_hex(token)
    )
}

const POLICY_A: &str = r#"{"version": "1", "default": "allow", "hide": ["codex_request"]}"#;
const POLICY_B: &str = r#"{"version": "1", "default": "allow", "hide": ["claude_request"],
  "tools": {"session_create": {"action": "deny", "reason": "grant b may not create sessions"}}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_grants_see_their_own_lists_decisions_and_sessions() {
    let serve = Serve::start(
        &format!(
            "{}{}{}",
            standin_upstream(),
            grant("a", "token-a", "a.json"),
            grant("b", "token-b", "b.json")
        ),
        &[("a.json", POLICY_A), ("b.json", POLICY_B)],
    );
    let (mut a, mut b) = (
        Mcp::new(&serve.url, Some("token-a")),
        Mcp::new(&serve.url, Some("token-b")),
    );
    a.initialize().await;
    b.initialize().await;
    let (list_a, list_b) = (a.tool_names().await, b.tool_names().await);
    assert!(list_a.contains(&"claude_request".into()) && !list_a.contains(&"codex_request".into()));
    assert!(list_b.contains(&"codex_request".into()) && !list_b.contains(&"claude_request".into()));

    let created = a.call("session_create", json!({"cli": "claude"})).await;
    assert!(text(&created).contains("\"success\":true"), "{created}");
    let refused = b.call("session_create", json!({"cli": "claude"})).await;
    assert_eq!(refused["isError"], true);
    assert_eq!(
        text(&refused),
        "[toolgate] deny: grant b may not create sessions"
    );

    // Grant b holding grant a's session id gets exactly what an unknown id gets.
    let mut thief = Mcp::new(&serve.url, Some("token-b"));
    thief.session = a.session.clone();
    let stolen = thief.request("tools/list", json!({})).await;
    assert_eq!(stolen.status, StatusCode::NOT_FOUND);
    thief.session = Some("no-such-session".into());
    let unknown = thief.request("tools/list", json!({})).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(stolen.messages, unknown.messages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_are_per_grant_even_under_one_policy() {
    let capped = r#"{"version": "1", "default": "allow", "tools": {"session_create": {
        "limits": [{"counter": "creates", "window": "hour", "max": 2, "scope": "grant"}]}}}"#;
    let serve = Serve::start(
        &format!(
            "{}{}{}",
            standin_upstream(),
            grant("a", "token-a", "capped.json"),
            grant("b", "token-b", "capped.json")
        ),
        &[("capped.json", capped)],
    );
    let mut a = Mcp::new(&serve.url, Some("token-a"));
    a.initialize().await;
    for _ in 0..2 {
        assert!(a.call("session_create", json!({"cli": "codex"})).await["isError"].is_null());
    }
    let third = a.call("session_create", json!({"cli": "codex"})).await;
    assert!(
        text(&third).starts_with("[toolgate] rate_limited:"),
        "{third}"
    );
    // A second session of grant a shares the grant's count...
    let mut a2 = Mcp::new(&serve.url, Some("token-a"));
    a2.initialize().await;
    let again = a2.call("session_create", json!({"cli": "codex"})).await;
    assert!(
        text(&again).starts_with("[toolgate] rate_limited:"),
        "{again}"
    );
    // ...grant b, under the same policy file, has a count of its own.
    let mut b = Mcp::new(&serve.url, Some("token-b"));
    b.initialize().await;
    for _ in 0..2 {
        let created = b.call("session_create", json!({"cli": "codex"})).await;
        assert!(created["isError"].is_null(), "{created}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_wrong_token_gets_401_and_no_upstream_traffic() {
    let (upstream, serve) = allow_all_behind_echo("token-a", "");
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}});
    for (token, challenge) in [
        (None, r#"Bearer realm="toolgate""#),
        (
            Some("token-b"),
            r#"Bearer realm="toolgate", error="invalid_token""#,
        ),
        (
            Some(""),
            r#"Bearer realm="toolgate", error="invalid_token""#,
        ),
    ] {
        let reply = Mcp::new(&serve.url, token).post(&initialize).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.headers["www-authenticate"], challenge);
        assert_eq!(reply.error()["code"], -32600);
    }
    let basic = crate::support::http_client()
        .post(&serve.url)
        .header("authorization", "Basic dG9rZW4tYQ==")
        .json(&initialize)
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        upstream.stats().await["requests"],
        0,
        "a refused request reached the upstream"
    );
    // The right token goes through.
    Mcp::new(&serve.url, Some("token-a")).initialize().await;
    assert_eq!(upstream.stats().await["requests"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_status_and_the_gateway_keeps_serving() {
    let (upstream, serve) = allow_all_behind_echo(
        "t",
        "[limits]\nmax_body_bytes = 4096\nclient_timeout_s = 1\n",
    );
    let mut mcp = Mcp::new(&serve.url, Some("t"));
    mcp.initialize().await;
    let before = upstream.stats().await["requests"].as_u64().unwrap();

    // Oversized, with a Content-Length and without one (chunked).
    let big = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "x".repeat(10_000)}}});
    let reply = mcp.post(&big).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(reply.error()["message"]
        .as_str()
        .unwrap()
        .contains("4096-byte limit"));
    let chunks =
        futures_util::stream::iter((0..10).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1000])));
    let chunked = mcp
        .http
        .post(&serve.url)
        .bearer_auth("t")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", mcp.session.clone().unwrap())
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(chunked.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Malformed JSON, a batch, a wrong Content-Type, a missing Accept.
    let reply = mcp
        .post_raw(
            b"{\"jsonrpc\": \"2.0\", \"id\": 1,".to_vec(),
            "application/json",
        )
        .await;
    assert_eq!(
        (reply.status, reply.error()["code"].clone()),
        (StatusCode::BAD_REQUEST, json!(-32700))
    );
    let reply = mcp
        .post_raw(
            b"[{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": \"ping\"}]".to_vec(),
            "application/json",
        )
        .await;
    assert_eq!(
        (reply.status, reply.error()["code"].clone()),
        (StatusCode::BAD_REQUEST, json!(-32600))
    );
    let reply = mcp.post_raw(b"{}".to_vec(), "text/plain").await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let no_accept = mcp
        .http
        .post(&serve.url)
        .bearer_auth("t")
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .body(r#"{"jsonrpc": "2.0", "id": 1, "method": "ping"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(no_accept.status(), StatusCode::NOT_ACCEPTABLE);
    // JSON that is no JSON-RPC message at all (no method, no id).
    let reply = mcp
        .post_raw(b"{\"jsonrpc\": \"2.0\"}".to_vec(), "application/json")
        .await;
    assert_eq!(
        (reply.status, reply.error()["code"].clone()),
        (StatusCode::BAD_REQUEST, json!(-32600))
    );

    // An unknown session id; a GET without one; a method /mcp does not serve; a foreign Host.
    let mut stranger = Mcp::new(&serve.url, Some("t"));
    stranger.session = Some("5b0c5f8e-0000-4000-8000-000000000000".into());
    assert_eq!(
        stranger.request("ping", json!({})).await.status,
        StatusCode::NOT_FOUND
    );
    let get = mcp
        .http
        .get(&serve.url)
        .bearer_auth("t")
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::BAD_REQUEST);
    let put = mcp.http.put(&serve.url).send().await.unwrap();
    assert_eq!(put.status(), StatusCode::METHOD_NOT_ALLOWED);
    let rebinding = mcp
        .http
        .post(&serve.url)
        .header("host", "evil.example.com")
        .header("origin", "http://evil.example.com")
        .bearer_auth("t")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(rebinding.status(), StatusCode::FORBIDDEN);

    // None of it reached the upstream, and the session still works.
    assert_eq!(upstream.stats().await["requests"].as_u64().unwrap(), before);
    let echoed = mcp.call("echo", json!({"message": "still here"})).await;
    assert_eq!(text(&echoed), "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_before_the_body_is_read_says_the_connection_closes() {
    let (_upstream, serve) = allow_all_behind_echo("t", "");
    let addr = serve.address();
    // Each request is refused on its headers; the body is partly or wholly sent.
    let refused = [
        (
            "POST /mcp",
            "Authorization: Bearer wrong\r\nContent-Type: application/json",
            "{\"js",
            "401",
        ),
        (
            "POST /mcp",
            "Authorization: Bearer t\r\nContent-Type: text/plain",
            "{\"jsonrpc\"}",
            "415",
        ),
        (
            "POST /elsewhere",
            "Authorization: Bearer t\r\nContent-Type: application/json",
            "{}",
            "404",
        ),
        (
            "PUT /mcp",
            "Authorization: Bearer t\r\nContent-Type: application/json",
            "{}",
            "405",
        ),
    ];
    for (line, headers, body, status) in refused {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "{line} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n\
             Accept: application/json, text/event-stream\r\nContent-Length: 12\r\n\r\n{body}"
        )
        .unwrap();
        let mut answer = Vec::new();
        // The gateway closes the connection after its answer (a timeout here is an error).
        let read = tokio::task::block_in_place(|| stream.read_to_end(&mut answer));
        let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
        assert!(read.is_ok(), "{line}: {read:?} after {answer}");
        assert!(
            answer.starts_with(&format!("http/1.1 {status}")),
            "{line}: {answer}"
        );
        let head = &answer[..answer.find("\r\n\r\n").unwrap()];
        assert!(head.contains("\r\nconnection: close"), "{line}: {head}");
    }
    // A request whose body was read keeps its connection.
    let mut mcp = Mcp::new(&serve.url, Some("t"));
    let reply = mcp.initialize().await;
    assert!(
        reply.headers.get("connection").is_none(),
        "{:?}",
        reply.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_clients_are_cut_off_while_others_are_served() {
    let (_upstream, serve) = allow_all_behind_echo("t", "[limits]\nclient_timeout_s = 1\n");
    let addr = serve.address();
    let connect = || {
        let stream = std::net::TcpStream::connect(&addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
    };
    // Headers that never end, and a body that never arrives.
    let mut headers_only = connect();
    headers_only
        .write_all(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .unwrap();
    let mut slow_body = connect();
    slow_body
        .write_all(
            b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer t\r\n\
              Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
              Content-Length: 100\r\n\r\n{\"jsonrpc\"",
        )
        .unwrap();
    let started = Instant::now();
    // Meanwhile, a well-behaved client is served.
    let mut mcp = Mcp::new(&serve.url, Some("t"));
    mcp.initialize().await;
    assert_eq!(
        text(&mcp.call("echo", json!({"message": "fine"})).await),
        "fine"
    );

    let (mut a, mut b) = (Vec::new(), Vec::new());
    let _ = headers_only.read_to_end(&mut a); // closed by the server (maybe after a 408)
    let _ = slow_body.read_to_end(&mut b);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the slow clients were not cut off"
    );
    let b = String::from_utf8_lossy(&b);
    assert!(b.starts_with("HTTP/1.1 408"), "{b}");
    assert!(b.contains("request body not received within 1 s"), "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_abandoned_sessions_expire_without_a_leak() {
    let (upstream, serve) = allow_all_behind_echo("t", "[limits]\nsession_idle_timeout_s = 2\n");
    // Warm up, then measure the resident set before and after.
    for _ in 0..50 {
        Mcp::new(&serve.url, Some("t")).initialize().await;
    }
    wait_until(&serve, |s| s["sessions"] == 0).await;
    let rss_before = rss_kib(serve.pid());
    let mut first = None;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let url = serve.url.clone();
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..125 {
                let mut mcp = Mcp::new(&url, Some("t"));
                mcp.initialize().await;
                ids.push(mcp.session.unwrap());
            }
            (worker, ids)
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (worker, ids) = done.unwrap();
        if worker == 0 {
            first = ids.first().cloned();
        }
    }
    let status = serve.status().await;
    assert_eq!(status["sessions_opened"], 1050);
    wait_until(&serve, |s| s["sessions"] == 0).await;
    let status = serve.status().await;
    assert_eq!(status["sessions_expired"], 1050);
    // Every upstream session was deleted too.
    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream.stats().await["sessions"] != 0 {
        assert!(
            Instant::now() < deadline,
            "upstream sessions left: {}",
            upstream.stats().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rss_after = rss_kib(serve.pid());
    assert!(
        rss_after < rss_before + 16 * 1024,
        "resident memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    // An expired id is unknown; a new session works.
    let mut late = Mcp::new(&serve.url, Some("t"));
    late.session = first;
    assert_eq!(
        late.request("ping", json!({})).await.status,
        StatusCode::NOT_FOUND
    );
    let mut fresh = Mcp::new(&serve.url, Some("t"));
    fresh.initialize().await;
    assert_eq!(
        text(&fresh.call("echo", json!({"message": "after"})).await),
        "after"
    );
}

async fn wait_until(serve: &Serve, done: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = serve.status().await;
        if done(&status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting; status: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cap_answers_503_and_a_delete_frees_a_slot() {
    let serve = Serve::start(
        &format!(
            "{}{}[limits]\nmax_sessions = 2\n",
            standin_upstream(),
            grant("a", "t", "a.json")
        ),
        &[("a.json", r#"{"version": "1", "default": "allow"}"#)],
    );
    let mut one = Mcp::new(&serve.url, Some("t"));
    one.initialize().await;
    Mcp::new(&serve.url, Some("t")).initialize().await;
    let mut third = Mcp::new(&serve.url, Some("t"));
    let refused = third
        .request("initialize", json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "x", "version": "1"}}))
        .await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.error()["message"]
        .as_str()
        .unwrap()
        .starts_with("too many sessions"));
    let deleted = one
        .http
        .delete(&serve.url)
        .bearer_auth("t")
        .header("mcp-session-id", one.session.clone().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    assert_eq!(
        one.request("ping", json!({})).await.status,
        StatusCode::NOT_FOUND
    );
    third.initialize().await;
    assert_eq!(serve.status().await["sessions"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_reports_and_reloads_behind_its_own_token() {
    let serve = Serve::start(
        &format!(
            "watch = false\n{}{}",
            standin_upstream(),
            grant("a", "t", "a.json")
        ),
        &[("a.json", POLICY_A)],
    );
    let http = crate::support::http_client();
    let health = http
        .get(format!("{}/healthz", serve.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    for token in [None, Some("t"), Some("wrong")] {
        let mut request = http.get(format!("{}/status", serve.admin));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        assert_eq!(
            request.send().await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let status = serve.status().await;
    let policy = &status["grants"][0]["policy"];
    assert_eq!(status["grants"][0]["name"], "a");
    assert_eq!(policy["version"], 1);
    assert_eq!(policy["digest"].as_str().unwrap().len(), 64);

    let reload = |http: reqwest::Client, admin: String| async move {
        http.post(format!("{admin}/reload"))
            .bearer_auth("admin-token")
            .send()
            .await
            .unwrap()
    };
    std::fs::write(serve.dir.path().join("a.json"), "{ not json").unwrap();
    let failed = reload(http.clone(), serve.admin.clone()).await;
    assert_eq!(failed.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let status = serve.status().await;
    assert!(status["grants"][0]["policy"]["last_error"]
        .as_str()
        .unwrap()
        .contains("a.json"));
    // The old policy still serves.
    let mut mcp = Mcp::new(&serve.url, Some("t"));
    mcp.initialize().await;
    assert!(!mcp.tool_names().await.contains(&"codex_request".into()));
    std::fs::write(serve.dir.path().join("a.json"), POLICY_B).unwrap();
    assert_eq!(
        reload(http.clone(), serve.admin.clone()).await.status(),
        StatusCode::OK
    );
    assert_eq!(serve.status().await["grants"][0]["policy"]["version"], 2);
    assert!(mcp.tool_names().await.contains(&"codex_request".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_add_prints_a_token_once_and_stores_only_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("toolgate.toml");
    std::fs::write(
        dir.path().join("p.json"),
        r#"{"version": "1", "default": "allow"}"#,
    )
    .unwrap();
    std::fs::write(
        &config,
        format!(
            "# my gateway\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{}",
            standin_upstream()
        ),
    )
    .unwrap();
    let add = |name: &str| {
        Command::new(TOOLGATE)
            .args(["grant", "add", name, "--policy", "p.json", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    let added = add("ci-agent");
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let token = String::from_utf8(added.stdout).unwrap().trim().to_owned();
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(
        written.starts_with("# my gateway\n"),
        "the config was rewritten: {written}"
    );
    assert!(!written.contains(&token), "the token itself was written");
    assert!(written.contains(&sha256_hex(&token)));
    let again = add("ci-agent");
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let serve = Serve::start_at(dir, &config);
    Mcp::new(&serve.url, Some(&token)).initialize().await;
    let wrong = Mcp::new(&serve.url, Some(&token[..token.len() - 1]))
        .post(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}))
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rmcp_client_works_through_the_gateway() {
    use rmcp::model::CallToolRequestParams;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::ServiceExt;

    crate::support::tls_provider();
    let serve = Serve::start(
        &format!("{}{}", standin_upstream(), grant("b", "token-b", "b.json")),
        &[("b.json", POLICY_B)],
    );
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(serve.url.as_str()).auth_header("token-b"),
    );
    let client = ().serve(transport).await.expect("rmcp connects through toolgate");
    let tools: Vec<String> = client
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    assert!(tools.contains(&"codex_request".into()) && !tools.contains(&"claude_request".into()));
    let args = |v: Value| v.as_object().cloned().unwrap();
    let listed = client
        .call_tool(CallToolRequestParams::new("session_list").with_arguments(args(json!({}))))
        .await
        .unwrap();
    assert_ne!(listed.is_error, Some(true), "{listed:?}");
    let refused = client
        .call_tool(
            CallToolRequestParams::new("session_create")
                .with_arguments(args(json!({"cli": "codex"}))),
        )
        .await
        .unwrap();
    assert_eq!(refused.is_error, Some(true));
    let refusal = serde_json::to_value(&refused.content[0]).unwrap();
    assert_eq!(
        refusal["text"],
        "[toolgate] deny: grant b may not create sessions"
    );
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_requests_pass_through_under_policy_and_share_one_session_count() {
    let upstream = EchoUpstream::start();
    let policy = r#"{"version": "1", "default": "deny", "tools": {"echo": {
        "deny_if": [{"path": "args.message", "op": "contains", "value": "secret"}],
        "limits": [{"counter": "per_session", "window": "hour", "max": 2, "scope": "session"}]}}}"#;
    let serve = Serve::start(
        &format!(
            "[upstream]\nurl = \"{}\"\n{}",
            upstream.url,
            grant("a", "t", "p.json")
        ),
        &[("p.json", policy)],
    );
    // No initialize, no session id: each request goes upstream on its own, under policy.
    let mut stateless = Mcp::new(&serve.url, Some("t"));
    assert_eq!(
        text(&stateless.call("echo", json!({"message": "one"})).await),
        "one"
    );
    let secret = stateless.call("echo", json!({"message": "a secret"})).await;
    assert!(text(&secret).starts_with("[toolgate] deny:"), "{secret}");
    let other = stateless.call("shell", json!({})).await;
    assert_eq!(other["isError"], true);
    assert_eq!(
        text(&stateless.call("echo", json!({"message": "two"})).await),
        "two"
    );
    // Dropping the session id does not escape a per-session cap: stateless calls share one.
    let third = stateless.call("echo", json!({"message": "three"})).await;
    assert!(
        text(&third).starts_with("[toolgate] rate_limited:"),
        "{third}"
    );
    // Refused calls never reached the upstream; the two allowed ones did.
    assert_eq!(upstream.stats().await["requests"], 2);
    // A real session has its own count.
    let mut session = Mcp::new(&serve.url, Some("t"));
    session.initialize().await;
    assert_eq!(
        text(&session.call("echo", json!({"message": "mine"})).await),
        "mine"
    );
}

/// A precise upstream for the pool's edge cases: each connection serves one request, then the
/// upstream closes it (as a server closes an idle keep-alive connection), although its reply
/// never said `Connection: close`. Replies are SSE, written in pieces with `gap` between.
/// Returns its URL and every request body it received.
fn closing_sse_upstream(gap: Duration) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().unwrap();
                    }
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let request: Value = serde_json::from_slice(&body).unwrap();
            log.lock().unwrap().push(String::from_utf8(body).unwrap());
            let id = request["id"].clone();
            let text = request["params"]["arguments"]["message"].clone();
            let progress = json!({"jsonrpc": "2.0", "method": "notifications/message",
                                  "params": {"level": "info", "data": "working"}});
            let result = json!({"jsonrpc": "2.0", "id": id,
                                "result": {"content": [{"type": "text", "text": text}]}});
            let chunk = |data: String| format!("{:x}\r\n{data}\r\n", data.len());
            let pieces = [
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                 transfer-encoding: chunked\r\n\r\n"
                    .to_owned(),
                chunk(format!("data: {progress}\n\n")),
                // One event split across two chunks, the second with the end after it.
                chunk(format!("data: {}", &result.to_string()[..10])),
                chunk(format!("{}\n\n", &result.to_string()[10..])) + "0\r\n\r\n",
            ];
            for piece in pieces {
                // A client that went away takes the gateway's side of this connection along.
                if stream.write_all(piece.as_bytes()).is_err() {
                    break;
                }
                std::thread::sleep(gap);
            }
            // The keep-alive connection is closed behind the gateway's back.
            drop(stream);
        }
    });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_closing_idle_connections_and_replying_in_pieces_loses_and_repeats_nothing() {
    let (upstream, seen) = closing_sse_upstream(Duration::from_millis(30));
    let serve = Serve::start(
        &format!(
            "[upstream]\nurl = \"{upstream}\"\n{}",
            grant("a", "t", "p.json")
        ),
        &[("p.json", r#"{"version": "1", "default": "allow"}"#)],
    );
    let client = Mcp::new(&serve.url, Some("t"));
    for n in 0..4 {
        let reply = client
            .post(&json!({"jsonrpc": "2.0", "id": n, "method": "tools/call",
                          "params": {"name": "echo", "arguments": {"message": format!("call {n}")}}}))
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        // Both events arrive, the split one whole, in order.
        assert_eq!(reply.messages.len(), 2, "{:?}", reply.messages);
        assert_eq!(reply.messages[0]["method"], "notifications/message");
        assert_eq!(text(reply.result()), format!("call {n}"));
        // Let the upstream's close land before the next call: the pooled connection is dead.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // Each call reached the upstream exactly once.
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 4, "{seen:?}");
    for (n, body) in seen.iter().enumerate() {
        assert!(body.contains(&format!("call {n}")), "{body}");
    }
}

/// The first read of a raw client after its POST: what arrived, and when.
fn first_read(serve: &Serve, token: &str) -> (String, Duration) {
    let address = serve.address();
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "echo", "arguments": {"message": "pieces"}}})
    .to_string();
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let started = Instant::now();
    stream.write_all(request.as_bytes()).unwrap();
    let mut buffer = vec![0; 65536];
    let n = stream.read(&mut buffer).unwrap();
    (
        String::from_utf8_lossy(&buffer[..n]).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_head_leaves_with_the_first_events_but_never_waits_long_for_them() {
    // A gateway in front of an upstream whose events come `gap` after its head.
    let gateway = |gap| {
        let (upstream, _) = closing_sse_upstream(gap);
        let config = format!(
            "[upstream]\nurl = \"{upstream}\"\n{}",
            grant("a", "t", "p.json")
        );
        Serve::start(
            &config,
            &[("p.json", r#"{"version": "1", "default": "allow"}"#)],
        )
    };
    // Events 1 ms behind the head (as Node writes them): one write to the client, so its
    // first read holds the head and the first event.
    let serve = gateway(Duration::from_millis(1));
    for _ in 0..3 {
        let (first, _) = first_read(&serve, "t");
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        assert!(
            first.contains("notifications/message"),
            "head alone: {first}"
        );
    }
    drop(serve);
    // Events 400 ms behind: the head does not wait for them.
    let serve = gateway(Duration::from_millis(400));
    let (first, after) = first_read(&serve, "t");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(!first.contains("notifications/message"), "{first}");
    assert!(
        after < Duration::from_millis(300),
        "the head waited {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_call_in_flight_finish_and_refuses_new_connections() {
    // Each reply takes 3 x 300 ms: time to stop the gateway in the middle of one.
    let (upstream, seen) = closing_sse_upstream(Duration::from_millis(300));
    let mut serve = Serve::start(
        &format!(
            "[upstream]\nurl = \"{upstream}\"\n{}",
            grant("a", "t", "p.json")
        ),
        &[("p.json", r#"{"version": "1", "default": "allow"}"#)],
    );
    let address = serve.address();
    // An idle keep-alive connection, and a call in flight.
    let mut idle = std::net::TcpStream::connect(&address).unwrap();
    let client = Mcp::new(&serve.url, Some("t"));
    let call = tokio::spawn(async move {
        client
            .post(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                          "params": {"name": "echo", "arguments": {"message": "in flight"}}}))
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(seen.lock().unwrap().len(), 1, "the call is upstream");
    let started = Instant::now();
    let status = tokio::task::block_in_place(|| serve.terminate(Duration::from_secs(8)));
    let status = status.expect("the gateway did not exit within 8 s");
    assert!(status.success(), "{status:?}");
    // It waited for the call (about 900 ms in all), not for the 10 s grace.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let reply = call.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(text(reply.result()), "in flight");
    // The idle connection was closed, and nothing listens any more.
    idle.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert_eq!(idle.read(&mut [0; 16]).unwrap_or(0), 0);
    assert!(std::net::TcpStream::connect(&address).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_gateway_deletes_its_upstream_sessions() {
    let (upstream, mut serve) = allow_all_behind_echo("t", "");
    for n in 0..3 {
        let mut mcp = Mcp::new(&serve.url, Some("t"));
        mcp.initialize().await;
        let message = format!("session {n}");
        assert_eq!(
            text(&mcp.call("echo", json!({"message": message})).await),
            message
        );
    }
    assert_eq!(upstream.stats().await["sessions"], 3);
    let status = tokio::task::block_in_place(|| serve.terminate(Duration::from_secs(8)));
    assert!(status
        .expect("the gateway did not exit within 8 s")
        .success());
    // The DELETEs went out before the gateway exited: nothing to wait for.
    assert_eq!(upstream.stats().await["sessions"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_gateway_ends_get_streams_at_once() {
    // A GET stream never ends by itself; with a 60 s grace it would hold the stop for 60 s.
    let config = format!(
        "{}{}[limits]\nshutdown_grace_s = 60\n",
        standin_upstream(),
        grant("a", "t", "a.json")
    );
    let mut serve = Serve::start(
        &config,
        &[("a.json", r#"{"version": "1", "default": "allow"}"#)],
    );
    let mut mcp = Mcp::new(&serve.url, Some("t"));
    mcp.initialize().await;
    let stream = mcp
        .http
        .get(&serve.url)
        .bearer_auth("t")
        .header("accept", "text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .header("mcp-session-id", mcp.session.clone().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let content_type = stream.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let read_to_end = tokio::spawn(stream.bytes());
    let status = tokio::task::block_in_place(|| serve.terminate(Duration::from_secs(15)));
    assert!(status
        .expect("the gateway did not exit within 15 s: the GET stream held its stop")
        .success());
    // The stream ended as a stream ends (the last chunk), not cut off.
    let body = tokio::time::timeout(Duration::from_secs(5), read_to_end)
        .await
        .expect("the GET stream is still open")
        .unwrap();
    assert!(body.is_ok(), "{body:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_without_a_policy_is_denied_everything() {
    let upstream = EchoUpstream::start();
    let serve = Serve::start(
        &format!(
            "[upstream]\nurl = \"{}\"\n[[grants]]\nname = \"bare\"\ntoken_sha256 = \"{}\"\n{}",
            upstream.url,
            sha256_hex("bare-token"),
            grant("full", "full-token", "allow.json")
        ),
        &[("allow.json", r#"{"version": "1", "default": "allow"}"#)],
    );
    let mut bare = Mcp::new(&serve.url, Some("bare-token"));
    bare.initialize().await;
    let refused = bare.call("echo", json!({"message": "hi"})).await;
    assert_eq!(refused["isError"], true, "{refused}");
    assert!(text(&refused).starts_with("[toolgate] deny:"), "{refused}");
    // The same upstream serves the grant that has a policy.
    let mut full = Mcp::new(&serve.url, Some("full-token"));
    full.initialize().await;
    assert_eq!(
        text(&full.call("echo", json!({"message": "hi"})).await),
        "hi"
    );
    // Only the allowed call reached the upstream (besides the two sessions' handshakes).
    let stats = upstream.stats().await;
    assert_eq!(stats["sessions"], 2, "{stats}");
    assert_eq!(stats["requests"], 5, "{stats}"); // 2 x (initialize + initialized) + 1 call
}

/// An upstream that accepts connections and reads requests but never answers.
fn silent_upstream() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream); // open, unanswered
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_slower_than_the_request_timeout_gets_504_and_keeps_the_unit() {
    let policy = r#"{"version": "1", "default": "allow", "tools": {"echo": {
        "limits": [{"counter": "echo_once", "window": "hour", "max": 1, "scope": "grant"}]}}}"#;
    let serve = Serve::start(
        &format!(
            "[upstream]\nurl = \"{}\"\n{}[limits]\nrequest_timeout_s = 1\n",
            silent_upstream(),
            grant("a", "t", "p.json")
        ),
        &[("p.json", policy)],
    );
    let client = Mcp::new(&serve.url, Some("t"));
    let call = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                      "params": {"name": "echo", "arguments": {"message": "hi"}}});
    let reply = tokio::time::timeout(Duration::from_secs(5), client.post(&call))
        .await
        .expect("the gateway answers within its request timeout, not never");
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    // The reply is the request's own JSON-RPC error, with its id.
    assert_eq!(reply.messages[0]["id"], 7, "{:?}", reply.messages);
    assert!(
        reply.error()["message"]
            .as_str()
            .unwrap()
            .contains("did not answer within 1 s"),
        "{:?}",
        reply.messages
    );
    // The request was written: the tool may be running, so its unit stays spent and the
    // next call (max 1) is rate-limited without reaching the upstream.
    let reply = client.post(&call).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.messages[0]["result"]["_meta"]["toolgate"]["decision"], "rate_limited",
        "{:?}",
        reply.messages
    );
    assert_eq!(serve.status().await["grants"][0]["name"], "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_takes_its_stdio_child_with_it() {
    let serve = Serve::start(
        &format!(
            "{}{}[limits]\nsession_idle_timeout_s = 1\n",
            standin_upstream(),
            grant("a", "t", "a.json")
        ),
        &[("a.json", r#"{"version": "1", "default": "allow"}"#)],
    );
    let children = || -> Vec<u32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                // "pid (comm) state ppid ...": the fields after the command's closing paren.
                let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
                rest.split_whitespace().nth(1) == Some(&serve.pid().to_string())
            })
            .collect()
    };
    assert!(children().is_empty());
    let mut mcp = Mcp::new(&serve.url, Some("t"));
    mcp.initialize().await;
    assert!(!mcp.tool_names().await.is_empty());
    assert_eq!(children().len(), 1, "one child for the session");
    wait_until(&serve, |s| s["sessions"] == 0).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !children().is_empty() {
        assert!(Instant::now() < deadline, "the child outlived its session");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The expired session is gone for the client too.
    let gone = mcp.request("tools/list", json!({})).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
}

/// An HTTP upstream that answers every request with `content_type` and a tool list (under
/// the gateway's first id, 1) that names the hidden tool `secret`.
fn listing_upstream(content_type: &'static str) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let body = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"secret"},{"name":"echo"}]}}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

#[rstest::rstest]
#[case::plain_text("text/plain", StatusCode::BAD_GATEWAY)]
#[case::json("application/json", StatusCode::OK)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_body_of_another_content_type_is_a_502_not_an_unfiltered_list(
    #[case] content_type: &'static str,
    #[case] status: StatusCode,
) {
    let policy = r#"{"version": "1", "default": "allow", "hide": ["secret"]}"#;
    let serve = Serve::start(
        &format!(
            "[upstream]\nurl = \"{}\"\n{}",
            listing_upstream(content_type),
            grant("a", "t", "p.json")
        ),
        &[("p.json", policy)],
    );
    let client = Mcp::new(&serve.url, Some("t"));
    let list = json!({"jsonrpc": "2.0", "id": "l", "method": "tools/list"});
    let reply = client.post(&list).await;
    assert_eq!(reply.status, status, "{:?}", reply.messages);
    let text = serde_json::to_string(&reply.messages).unwrap();
    assert!(!text.contains("secret"), "{text}");
    assert_eq!(reply.messages[0]["id"], "l", "{text}");
}
