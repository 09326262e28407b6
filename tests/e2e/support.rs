//! A line-oriented MCP client that drives a `toolgate run` child process.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::Duration;

pub const TOOLGATE: &str = env!("CARGO_BIN_EXE_toolgate");

/// A policy written to a temporary file that lives as long as the value.
pub struct PolicyFile {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

pub fn policy_file(text: &str) -> PolicyFile {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.json");
    std::fs::write(&path, text).unwrap();
    PolicyFile { _dir: dir, path }
}

/// The stand-in upstream as a command: `toolgate standin`.
pub fn standin() -> Vec<String> {
    vec![TOOLGATE.into(), "standin".into()]
}

/// The echo upstream (it has a `crash` tool): `toolgate standin --echo`.
pub fn echo() -> Vec<String> {
    vec![TOOLGATE.into(), "standin".into(), "--echo".into()]
}

/// A client talking to `toolgate run` over its stdin/stdout. Lines arrive on a channel so that
/// a test can wait with a timeout and never hang.
pub struct Client {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// The gateway's stderr, drained continuously so that its logs can never fill the pipe.
    stderr: Option<std::thread::JoinHandle<String>>,
    next_id: i64,
    /// Kept so that the policy file outlives the gateway reading it.
    _policy: Option<PolicyFile>,
}

fn reader_thread(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

impl Client {
    /// Starts `toolgate run --policy <policy> -- <upstream>` with stderr captured to a pipe.
    pub fn start(policy: &str, upstream: &[String]) -> Self {
        Self::start_with(policy, upstream, &[])
    }

    pub fn start_with(policy: &str, upstream: &[String], extra: &[&str]) -> Self {
        let policy = policy_file(policy);
        let mut client = Self::start_at(&policy.path, upstream, extra);
        client._policy = Some(policy);
        client
    }

    /// Starts `toolgate run` on a policy file the test owns (and may rewrite).
    pub fn start_at(policy: &Path, upstream: &[String], extra: &[&str]) -> Self {
        Self::spawn(policy, upstream, extra, true)
    }

    /// As [`Client::start`], at the default log level, with a stderr pipe that is held open
    /// and never read: what a client that never drains it does to the gateway.
    pub fn start_stderr_unread(policy: &str, upstream: &[String]) -> Self {
        let policy = policy_file(policy);
        let mut client = Self::spawn(&policy.path, upstream, &[], false);
        client._policy = Some(policy);
        client
    }

    fn spawn(policy: &Path, upstream: &[String], extra: &[&str], drain: bool) -> Self {
        let mut command = Command::new(TOOLGATE);
        command
            .arg("run")
            .arg("--policy")
            .arg(policy)
            .args(extra)
            .arg("--")
            .args(upstream)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !drain {
            command.env_remove("TOOLGATE_LOG");
        }
        let mut child = command.spawn().unwrap();
        let lines = reader_thread(child.stdout.take().unwrap());
        // Undrained, the pipe stays in `child`, open until the gateway is gone.
        let stderr = drain.then(|| {
            let mut err = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = err.read_to_string(&mut text);
                text
            })
        });
        Self {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
            next_id: 0,
            _policy: None,
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    pub fn send(&mut self, message: &Value) {
        self.send_raw(format!("{message}\n").as_bytes());
    }

    /// The next line from the gateway, parsed; panics after 10 s.
    pub fn recv(&mut self) -> Value {
        let line = match self.lines.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let (status, stderr) = self.wait();
                panic!("the gateway closed its stdout ({status}); its stderr:\n{stderr}")
            }
            Err(e) => panic!("no line from the gateway within 10 s: {e}"),
        };
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("gateway sent non-JSON {line:?}: {e}"))
    }

    /// The next line from the gateway within `wait`, parsed; `None` if none came.
    pub fn recv_within(&mut self, wait: Duration) -> Option<Value> {
        let line = self.lines.recv_timeout(wait).ok()?;
        Some(
            serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("gateway sent non-JSON {line:?}: {e}")),
        )
    }

    /// Waits for the reply with `id`, skipping notifications.
    pub fn reply_to(&mut self, id: &Value) -> Value {
        loop {
            let message = self.recv();
            if message.get("method").is_none() && &message["id"] == id {
                return message;
            }
        }
    }

    pub fn request(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = json!(self.next_id);
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        self.reply_to(&id)
    }

    pub fn initialize(&mut self) -> Value {
        let reply = self.request(
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}}),
        );
        self.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        reply
    }

    /// `tools/call` and its `result` (panics on a JSON-RPC error).
    pub fn call(&mut self, tool: &str, args: Value) -> Value {
        let reply = self.request("tools/call", json!({"name": tool, "arguments": args}));
        assert!(
            reply.get("error").is_none(),
            "tools/call {tool} got a JSON-RPC error: {reply}"
        );
        reply["result"].clone()
    }

    /// Closes stdin and waits (at most 10 s) for the gateway to exit; returns status and stderr.
    pub fn finish(mut self) -> (ExitStatus, String) {
        drop(self.stdin.take());
        self.wait()
    }

    pub fn wait(&mut self) -> (ExitStatus, String) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "gateway did not exit within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = self
            .stderr
            .take()
            .map(|t| t.join().unwrap())
            .unwrap_or_default();
        (status, stderr)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `[toolgate]` text and `_meta.toolgate` of a refusal.
pub fn refusal(result: &Value) -> (String, Value) {
    assert_eq!(result["isError"], true, "expected a refusal, got {result}");
    (
        result["content"][0]["text"].as_str().unwrap().to_owned(),
        result["_meta"]["toolgate"].clone(),
    )
}

/// The JSON inside a stand-in result's text.
pub fn body(result: &Value) -> Value {
    serde_json::from_str(result["content"][0]["text"].as_str().unwrap()).unwrap()
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The workspace's root folder.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// A peer this machine lacks: outside CI the test is skipped, loudly; in CI (`CI` set,
/// where scripts/test installs every peer) it fails.
pub fn missing_peer(what: &str, install: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{what} is missing, and CI is set: scripts/test installs it ({install})");
    }
    // Straight to stderr, not `eprintln!`: the test harness captures that, and a skip must
    // be seen.
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!! SKIPPED: {what} is missing on this machine ({install}); \
         this test checked nothing !!!!!!!!\n"
    );
}

/// The Go-like stand-in (standin/go), built once per test run with `go build` into
/// `target/standin-go/` (its build cache there too; standard library only, no network).
/// `None` when `go` is not installed (and this is not CI).
pub fn go_standin() -> Option<PathBuf> {
    static BUILT: OnceLock<Option<PathBuf>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let target = Path::new(TOOLGATE)
                .parent()
                .and_then(Path::parent)
                .expect("the toolgate binary is in target/<profile>/")
                .join("standin-go");
            let exe = target.join("standin-go");
            let built = Command::new("go")
                .args(["build", "-o"])
                .arg(&exe)
                .arg(".")
                .current_dir(workspace().join("standin/go"))
                .env("GOCACHE", target.join("cache"))
                .env("GOPATH", target.join("gopath"))
                .env("GOPROXY", "off")
                .env("GOTOOLCHAIN", "local")
                .env("GOFLAGS", "-mod=mod")
                .status();
            match built {
                Ok(status) if status.success() => Some(exe),
                Ok(status) => panic!("`go build` of standin/go failed: {status}"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    missing_peer("`go`", "apt-get install -y golang-go");
                    None
                }
                Err(e) => panic!("cannot run `go build`: {e}"),
            }
        })
        .clone()
}

/// The JS-like stand-in (standin/node) as a command.
pub fn node_standin() -> Vec<String> {
    vec![
        "node".into(),
        workspace()
            .join("standin/node/server.js")
            .display()
            .to_string(),
    ]
}

/// server-everything over stdio, from tests/peers (`npm ci` there); `None` when it is not
/// installed (and this is not CI).
pub fn everything() -> Option<Vec<String>> {
    let bin = workspace().join("tests/peers/node_modules/.bin/mcp-server-everything");
    if !bin.exists() {
        missing_peer("server-everything", "cd tests/peers && npm ci");
        return None;
    }
    Some(vec![bin.display().to_string(), "stdio".into()])
}

/// Installs the ring TLS provider as the process default, once. reqwest (and rmcp's client,
/// built on it) needs one: `oci-client`'s `rustls-tls-no-provider` feature, merged into the
/// one reqwest of the build, leaves the choice to the process, as the binary makes it.
pub fn tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    });
}

/// A plain HTTP client for the tests, with the process's TLS provider installed.
pub fn http_client() -> reqwest::Client {
    tls_provider();
    reqwest::Client::new()
}
