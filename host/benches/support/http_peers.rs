//! What the HTTP harnesses (`http_overhead`, `sessions_scaling`) share: their child processes,
//! free ports, the echo upstream, `toolgate serve` with the benchmark's grant and policy, and
//! a minimal MCP client over one keep-alive HTTP/1.1 connection. Included by `#[path]`; a
//! folder, so that cargo does not take it for a bench of its own. A bench that includes it
//! includes `copies.rs` as `copies` too: every process runs from its own copy of its binary.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const TOOLGATE: &str = env!("CARGO_BIN_EXE_toolgate");

/// The toolgate the harnesses measure: `TOOLGATE_BINARY` if set, else [`TOOLGATE`]. Cargo
/// builds a bench's binary with the dev-dependencies' features, so its symbols differ from
/// the README's `--release` build and the PGO profile (`pgo/`) does not apply to it: to
/// measure what a user runs, point this at a copy of `cargo build --release --bin toolgate`.
pub fn toolgate() -> std::path::PathBuf {
    std::env::var_os("TOOLGATE_BINARY").map_or_else(|| TOOLGATE.into(), Into::into)
}

/// The grant's bearer token.
pub const TOKEN: &str = "bench-token";

/// A rule that evaluates a condition and consumes a counter on every call.
pub const POLICY: &str = r#"{"version": "1", "default": "deny", "tools": {"echo": {
    "deny_if": [{"path": "args.message", "op": "contains", "value": "forbidden"}],
    "limits": [{"counter": "echo_rate", "window": "minute", "max": 100000000, "scope": "grant"}]}}}"#;

/// A child process stopped on drop: SIGTERM first, so that nginx's master stops its workers
/// (SIGKILL would leave them running, orphaned), then SIGKILL after 2 s.
pub struct Proc(pub Child);
impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child, which has not been reaped (we hold its handle).
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The echo upstream (`toolgate standin --echo --http`), from a copy of toolgate in `dir`.
pub fn start_echo(dir: &Path) -> (Proc, u16) {
    let port = free_port();
    let child = Command::new(crate::copies::own_copy(TOOLGATE, dir))
        .args(["standin", "--echo", "--http", &format!("127.0.0.1:{port}")])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port);
    (Proc(child), port)
}

/// One HTTP/1.1 response from `reader`: its head and its body (by length or chunked).
pub fn read_response(reader: &mut BufReader<TcpStream>) -> (String, Vec<u8>) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "connection closed"
        );
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let mut body = Vec::new();
    if let Some(length) = header("content-length") {
        body.resize(length.parse().unwrap(), 0);
        reader.read_exact(&mut body).unwrap();
    } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).unwrap();
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    assert!(head.starts_with("HTTP/1.1 2"), "{head}");
    (head, body)
}

/// `toolgate serve` from a copy of `binary` in front of the HTTP upstream on `upstream`, one grant
/// (`TOKEN`) with `POLICY`; `top` goes in the config's top level, `tail` after the grant.
/// Returns the process and its `/mcp` port.
pub fn start_serve(binary: &Path, dir: &Path, upstream: u16, top: &str, tail: &str) -> (Proc, u16) {
    let (port, admin) = (free_port(), free_port());
    std::fs::write(dir.join("policy.json"), POLICY).unwrap();
    let hash = {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(TOKEN.as_bytes()))
    };
    let config = dir.join(format!("toolgate-{port}.toml"));
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\nwatch = false\n\
             {top}[upstream]\nurl = \"http://127.0.0.1:{upstream}/mcp\"\n\
             [[grants]]\nname = \"bench\"\ntoken_sha256 = \"{hash}\"\npolicy = \"policy.json\"\n{tail}"
        ),
    )
    .unwrap();
    let child = Command::new(crate::copies::own_copy(binary, dir))
        .args(["serve", "--config"])
        .arg(&config)
        // The default log level, as a user gets it.
        .env_remove("TOOLGATE_LOG")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port);
    (Proc(child), port)
}

/// One MCP client: a keep-alive HTTP/1.1 connection to `/mcp` and its session.
pub struct Conn {
    port: u16,
    token: Option<&'static str>,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// The session id the server gave, if it gave one.
    pub session: Option<String>,
    next_id: u64,
}

impl Conn {
    /// Connects to `port` and opens a session (`initialize`, `notifications/initialized`).
    pub fn open(port: u16, token: Option<&'static str>) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut conn = Self {
            port,
            token,
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            session: None,
            next_id: 1,
        };
        let init = serde_json::json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "bench", "version": "1"}}});
        let (headers, _) = conn.post(&init.to_string());
        conn.session = headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("mcp-session-id")
                .then(|| v.trim().to_owned())
        });
        conn.post(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        conn
    }

    /// POSTs a message; returns the response head and body (de-chunked).
    pub fn post(&mut self, body: &str) -> (String, Vec<u8>) {
        let mut request = format!(
            "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
             Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2025-11-25\r\n\
             Content-Length: {}\r\n",
            self.port,
            body.len()
        );
        if let Some(token) = self.token {
            request.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        if let Some(session) = &self.session {
            request.push_str(&format!("Mcp-Session-Id: {session}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        self.writer.write_all(request.as_bytes()).unwrap();
        read_response(&mut self.reader)
    }

    /// One `tools/call echo` with request id `id`, timed; its reply must echo the message.
    pub fn call(&mut self, id: u64) -> Duration {
        let message = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"message":"hello {id}"}}}}}}"#
        );
        let started = Instant::now();
        let (_, body) = self.post(&message);
        let elapsed = started.elapsed();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains(&format!("hello {id}")), "{text}");
        elapsed
    }

    /// [`Conn::call`] with the connection's next id.
    #[allow(dead_code)] // sessions_scaling's; http_overhead numbers its calls itself
    pub fn call_next(&mut self) -> Duration {
        self.next_id += 1;
        self.call(self.next_id)
    }
}
