//! Time from a file write to the first decision under the new set, through a real
//! `toolgate run` (file watching on, its default) in front of the echo server:
//! - a declarative change (the policy file flips `echo` between allowed and denied);
//! - a plugin change with a cold compile (a plugin the process has never seen, and no
//!   precompiled artifact on disk: the bytes differ each time by a custom section);
//! - a plugin change with a warm precompile cache (the artifact is on disk, written by
//!   another process, but this process has not loaded it).
//!
//! A client calls `echo` back to back; the latency is from the write (rename) to the first
//! reply that shows the new decision. Run: `cargo bench -p toolgate --bench reload_latency`
//! (`-- --rounds N`, default 20). It builds the plugins it swaps first.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support/plugins.rs"]
mod plugins;

const TOOLGATE: &str = env!("CARGO_BIN_EXE_toolgate");

struct Gateway {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    id: u64,
}

impl Gateway {
    fn start(policy: &Path, cache: &Path) -> Self {
        let mut child = Command::new(TOOLGATE)
            .arg("run")
            .arg("--policy")
            .arg(policy)
            .args([TOOLGATE, "standin", "--echo"])
            .env("TOOLGATE_LOG", "warn")
            .env("TOOLGATE_CACHE_DIR", cache)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut gateway = Self {
            stdin: child.stdin.take().unwrap(),
            stdout: BufReader::new(child.stdout.take().unwrap()),
            child,
            id: 0,
        };
        gateway.request("initialize", json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}));
        gateway
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        self.id += 1;
        let message = json!({"jsonrpc": "2.0", "id": self.id, "method": method, "params": params});
        writeln!(self.stdin, "{message}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    }

    /// Whether `echo` is allowed right now.
    fn allowed(&mut self) -> bool {
        let reply = self.request(
            "tools/call",
            json!({"name": "echo", "arguments": {"message": "m"}}),
        );
        reply["result"].get("isError").is_none()
    }

    /// Writes `bytes` to `path` (temp file renamed over) and returns the time until `echo`'s
    /// decision is `expect`.
    fn swap(&mut self, path: &Path, bytes: &[u8], expect: bool) -> Duration {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes).unwrap();
        let written = Instant::now();
        std::fs::rename(&tmp, path).unwrap();
        loop {
            if self.allowed() == expect {
                return written.elapsed();
            }
            assert!(
                written.elapsed() < Duration::from_secs(30),
                "no swap within 30 s"
            );
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what:<44} median {:>7.1} ms   min {:>7.1} ms   max {:>7.1} ms   ({} swaps)",
        ms(samples[samples.len() / 2]),
        ms(samples[0]),
        ms(samples[samples.len() - 1]),
        samples.len()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds: u64 = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .map_or(20, |n| n.parse().unwrap());
    let allows = plugins::build("rate-cap");
    let denies = plugins::build("probe");
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let policy_path = dir.path().join("policy.json");
    let plugin_path: PathBuf = dir.path().join("plugin.wasm");

    // Declarative: the policy flips echo between allowed and denied.
    let declarative = |allow: bool| {
        json!({"version": "1", "default": "allow",
            "tools": {"echo": {"action": if allow { "allow" } else { "deny" }}}})
        .to_string()
    };
    std::fs::write(&policy_path, declarative(true)).unwrap();
    let mut gateway = Gateway::start(&policy_path, &cache);
    let samples = (1..=rounds)
        .map(|i| {
            let allow = i.is_multiple_of(2);
            gateway.swap(&policy_path, declarative(allow).as_bytes(), allow)
        })
        .collect();
    report("declarative change", samples);
    drop(gateway);

    // Plugins: the plugin file alternates between an allowing and a denying plugin, each
    // time with bytes the gateway has never seen.
    let policy = json!({"version": "1", "default": "allow",
        "plugins": {"p": {"path": "plugin.wasm"}},
        "tools": {"echo": {"use": [{"plugin": "p", "config": {"counter": "c", "window": "minute", "max": 1_000_000_000}}]}}});
    std::fs::write(&policy_path, policy.to_string()).unwrap();
    std::fs::write(&plugin_path, &allows).unwrap();
    let mut gateway = Gateway::start(&policy_path, &cache);
    let pick = |i: u64| {
        if i.is_multiple_of(2) {
            &allows
        } else {
            &denies
        }
    };
    let samples = (1..=rounds)
        .map(|i| {
            gateway.swap(
                &plugin_path,
                &plugins::variant(pick(i), i),
                i.is_multiple_of(2),
            )
        })
        .collect();
    report("plugin change, cold compile", samples);

    // Warm: another process precompiles each variant into the shared disk cache first.
    let samples = (1..=rounds)
        .map(|i| {
            let n = 1_000 + i;
            let bytes = plugins::variant(pick(i), n);
            let staged = dir.path().join(format!("staged-{n}.wasm"));
            std::fs::write(&staged, &bytes).unwrap();
            let check = dir.path().join(format!("check-{n}.json"));
            let mut p = policy.clone();
            p["plugins"]["p"]["path"] = json!(staged);
            std::fs::write(&check, p.to_string()).unwrap();
            let ok = Command::new(TOOLGATE)
                .arg("check")
                .arg(&check)
                .env("TOOLGATE_CACHE_DIR", &cache)
                .output()
                .unwrap();
            assert!(ok.status.success());
            gateway.swap(&plugin_path, &bytes, i.is_multiple_of(2))
        })
        .collect();
    report("plugin change, warm precompile cache", samples);
}
