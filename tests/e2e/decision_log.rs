//! The decision log through the real binary: `toolgate run --decision-log`, read back with
//! `toolgate log`. Every decision path writes one decision event, every forwarded call one
//! outcome; a sink nobody reads never holds a call up.

use crate::support::{echo, Client, TOOLGATE};
use serde_json::{json, Value};
use std::process::Command;

fn events(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits for the writer thread to have written `n` lines.
fn wait_lines(path: &std::path::Path, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let got = std::fs::read_to_string(path)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if got >= n || std::time::Instant::now() > deadline {
            return events(path);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn every_decision_and_outcome_is_one_line_and_log_reads_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.jsonl");
    let policy = json!({"version": "1", "name": "logged", "default": "allow", "hide": ["secret"],
        "plugins": {"trap": {"path": crate::plugins::plugin_path("hostile/panic")},
                    "slow": {"path": crate::plugins::plugin_path("hostile/loop"), "timeout_ms": 5}},
        "tools": {
            "echo": {"limits": [{"counter": "e", "window": "minute", "max": 1, "scope": "grant"}],
                     "log_args": {"mask": ["/message"]}},
            "nope": {"action": "deny", "reason": "never"},
            "crash": {"use": [{"plugin": "trap"}]},
            "spin": {"use": [{"plugin": "slow"}]}}});
    let mut client = Client::start_with(
        &policy.to_string(),
        &echo(),
        &["--decision-log", log.to_str().unwrap()],
    );
    client.initialize();
    client.call("echo", json!({"message": "SECRET-1"}));
    client.call("echo", json!({"message": "SECRET-2"})); // rate-limited
    client.call("nope", json!({}));
    client.call("secret", json!({}));
    client.call("crash", json!({})); // the plugin traps: denied, never reaches `crash`
    client.call("spin", json!({})); // the plugin times out
    client.request("tools/call", json!({"name": "fail", "arguments": {}}));
    client.send(
        &json!({"jsonrpc": "2.0", "id": "dup", "method": "tools/call",
        "params": {"name": "echo", "arguments": {}}, "Params": {}}),
    );
    client.recv();
    let (status, _) = client.finish();
    assert!(status.success());
    let lines = wait_lines(&log, 10);
    assert!(lines
        .iter()
        .all(|l| l["schema"] == "toolgate.decision-log/v1"));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("SECRET"), "masked or not logged: {text}");
    let decisions: Vec<(&str, &str, &str)> = lines
        .iter()
        .filter(|l| l["event"] == "decision")
        .map(|l| {
            (
                l["tool"].as_str().unwrap(),
                l["decision"]["verdict"].as_str().unwrap(),
                l["decision"]["rule"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        decisions,
        [
            ("echo", "allow", "tools.echo"),
            ("echo", "rate_limited", "tools.echo"),
            ("nope", "deny", "tools.nope"),
            ("secret", "deny", "unknown_tool"),
            ("crash", "deny", "plugins.trap"),
            ("spin", "deny", "plugins.slow"),
            ("fail", "allow", "default"),
            ("echo", "deny", "invalid_request"),
        ]
    );
    let outcomes: Vec<(&str, &str)> = lines
        .iter()
        .filter(|l| l["event"] == "outcome")
        .map(|l| (l["tool"].as_str().unwrap(), l["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(outcomes, [("echo", "ran"), ("fail", "jsonrpc_error")]);
    let first = &lines[0];
    assert_eq!(first["args"]["value"], json!({"message": "***"}));
    assert_eq!(first["policy"], "logged");
    assert_eq!(first["transport"], "stdio");
    assert_eq!(
        lines[1]["decision_id"], first["decision_id"],
        "the outcome names its decision"
    );

    let stats = Command::new(TOOLGATE)
        .args(["log", "stats", "--json", log.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        stats.status.success(),
        "{}",
        String::from_utf8_lossy(&stats.stderr)
    );
    let stats: Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats["total"]["calls"], 8);
    assert_eq!(stats["total"]["denied"], 6);
    assert_eq!(
        stats["by_rule"]["tools.echo"]["verdicts"],
        json!({"allow": 1, "rate_limited": 1})
    );
    assert_eq!(stats["outcomes"], json!({"ran": 1, "jsonrpc_error": 1}));
    let tail = Command::new(TOOLGATE)
        .args(["log", "tail", "-n", "3", log.to_str().unwrap()])
        .output()
        .unwrap();
    let tail = String::from_utf8(tail.stdout).unwrap();
    assert_eq!(tail.lines().count(), 3, "{tail}");
    assert!(tail.contains("invalid_request"), "{tail}");
    assert!(
        !tail.contains('\x1b'),
        "no colour when stdout is not a terminal"
    );
}

/// A log written into a pipe nobody reads: the pipe fills, the writer blocks, the queue fills,
/// and events are dropped. Every call is still answered.
#[test]
fn a_sink_nobody_reads_never_holds_a_call_up() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("log.fifo");
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads the path, which outlives the call.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    // Held open and never read until the end: without a reader, opening for writing blocks.
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let mut client = Client::start_with(
        r#"{"version": "1", "default": "allow"}"#,
        &echo(),
        &["--decision-log", fifo.to_str().unwrap()],
    );
    client.initialize();
    let calls = 6000;
    for i in 0..calls {
        let result = client.call("echo", json!({"message": format!("m{i}")}));
        assert_eq!(result["content"][0]["text"], format!("m{i}"));
    }
    let (status, _) = client.finish();
    assert!(status.success());
    // What reached the pipe: at most a pipe's worth, far fewer than the calls.
    use std::io::Read;
    let mut written = Vec::new();
    let _ = (&reader).read_to_end(&mut written);
    let lines = written
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    assert!(
        lines < calls,
        "{lines} lines for {calls} calls: nothing was dropped?"
    );
}

use std::os::unix::fs::OpenOptionsExt;

/// A stderr pipe that nobody drains never holds a call up. At the default level a decision
/// is not a stderr line (it was until 2026-12-02: after about 300 calls the full pipe held
/// every call). And what a client sends can still make the gateway warn once a message (here:
/// a call with `name` and `Name`, refused): those lines go through a bounded queue, dropped
/// when it is full, never written on the call's thread.
#[test]
fn a_stderr_nobody_reads_never_holds_a_call_up() {
    let policy = r#"{"version": "1", "default": "allow"}"#;
    let mut client = Client::start_stderr_unread(policy, &echo());
    client.initialize();
    // Each reply waits at most 10 s: a held call fails here.
    for i in 1..=3000 {
        let result = client.call("echo", json!({"message": format!("m{i}")}));
        assert_eq!(result["content"][0]["text"], format!("m{i}"));
        let id = json!(format!("refused-{i}"));
        client.send(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "echo", "Name": "echo", "arguments": {"message": "x"}}}));
        let reply = client.reply_to(&id);
        assert_eq!(reply["error"]["code"], -32600, "{reply}");
    }
    let (status, _) = client.finish();
    assert!(status.success());
}

/// `toolgate eval --log` prints the decision in the log's own schema.
#[test]
fn eval_prints_a_decision_in_the_logs_schema() {
    let out = Command::new(TOOLGATE)
        .current_dir(crate::support::workspace())
        .args([
            "eval",
            "--policy",
            "examples/seed/policy.json",
            "--call",
            r#"{"tool": "session_list", "args": {"token": "x"}}"#,
            "--log",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["schema"], "toolgate.decision-log/v1");
    assert_eq!(line["event"], "decision");
    assert_eq!(line["transport"], "eval");
    assert_eq!(
        (
            &line["tool"],
            &line["decision"]["verdict"],
            &line["decision"]["rule"]
        ),
        (
            &json!("session_list"),
            &json!("deny"),
            &json!("unknown_tool")
        )
    );
    assert_eq!(line["args_sha256"].as_str().unwrap().len(), 64);
    assert!(line.get("args").is_none());
}

/// A shadow policy whose plugin traps: the call is decided and answered as if there were no
/// shadow; only the shadow event says deny.
#[test]
fn a_trapping_shadow_plugin_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.jsonl");
    let shadow = dir.path().join("shadow.json");
    std::fs::write(
        &shadow,
        json!({"version": "1", "default": "allow",
            "plugins": {"trap": {"path": crate::plugins::plugin_path("hostile/panic")}},
            "tools": {"echo": {"use": [{"plugin": "trap"}]}}})
        .to_string(),
    )
    .unwrap();
    let mut client = Client::start_with(
        r#"{"version": "1", "default": "allow"}"#,
        &echo(),
        &[
            "--decision-log",
            log.to_str().unwrap(),
            "--shadow-policy",
            shadow.to_str().unwrap(),
        ],
    );
    client.initialize();
    for i in 0..3 {
        let result = client.call("echo", json!({"message": format!("m{i}")}));
        assert_eq!(result["content"][0]["text"], format!("m{i}"), "{result}");
    }
    let (status, _) = client.finish();
    assert!(status.success());
    let lines = wait_lines(&log, 9);
    let shadows: Vec<&Value> = lines.iter().filter(|l| l["event"] == "shadow").collect();
    assert_eq!(shadows.len(), 3, "{lines:#?}");
    for s in shadows {
        assert_eq!(s["enforced"], "allow");
        assert_eq!(s["shadow"]["verdict"], "deny");
        assert_eq!(s["shadow"]["rule"], "plugins.trap");
        assert_eq!(s["would"], "would_deny");
        assert_eq!(s["source"], "policy");
    }
    let ran = lines
        .iter()
        .filter(|l| l["event"] == "outcome" && l["outcome"] == "ran")
        .count();
    assert_eq!(ran, 3);
}
