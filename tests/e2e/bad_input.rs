//! Bad input gets a clear error and the gateway keeps serving; a bad policy never starts it.

use crate::support::{echo, policy_file, standin, Client, TOOLGATE};
use serde_json::json;
use std::process::Command;

const ALLOW_ALL: &str = r#"{"version": "1", "default": "allow"}"#;

#[test]
fn malformed_json_gets_parse_error_and_the_session_survives() {
    let mut client = Client::start(ALLOW_ALL, &standin());
    client.initialize();
    client.send_raw(b"{\"jsonrpc\": \"2.0\", \"id\": 9, \"method\": \n");
    let error = client.recv();
    assert_eq!(error["error"]["code"], -32700, "{error}");
    assert!(error["id"].is_null());
    client.send_raw(b"[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"session_clear_all\"}}]\n");
    let batch = client.recv();
    assert_eq!(batch["error"]["code"], -32600);
    assert!(
        batch["error"]["message"]
            .as_str()
            .unwrap()
            .contains("batch"),
        "{batch}"
    );
    client.send_raw(
        b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"method\":\"ping\"}\n",
    );
    assert_eq!(
        client.recv()["error"]["code"],
        -32600,
        "a duplicated key is refused, never guessed at"
    );
    client.send_raw(
        b"{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/call\",\"params\":{\"arguments\":{}}}\n",
    );
    let no_name = client.reply_to(&json!(3));
    assert_eq!(no_name["error"]["code"], -32602, "{no_name}");
    assert_eq!(
        client.call("session_list", json!({}))["content"][0]["type"],
        "text"
    );
    assert!(client.finish().0.success());
}

#[test]
fn an_oversized_message_is_refused_and_the_next_one_works() {
    let mut client = Client::start_with(ALLOW_ALL, &echo(), &["--max-message-bytes", "1024"]);
    client.initialize();
    let big = format!("{{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"message\":\"{}\"}}}}}}\n", "a".repeat(5000));
    client.send_raw(big.as_bytes());
    let error = client.recv();
    assert_eq!(error["error"]["code"], -32600);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exceeds the gateway's 1024-byte limit"),
        "{error}"
    );
    assert_eq!(
        client.call("echo", json!({"message": "still here"}))["content"][0]["text"],
        "still here"
    );
}

#[test]
fn an_invalid_policy_never_starts_the_gateway_or_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("upstream-started");
    let bad = policy_file("{\"version\": \"1\",\n  \"tools\": {\"x\": {\"action\": \"perhaps\"}}}");
    let out = Command::new(TOOLGATE)
        .arg("run")
        .arg("--policy")
        .arg(&bad.path)
        .arg("--")
        .args(["sh", "-c", &format!("touch {}; cat", marker.display())])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 2, column"), "{stderr}");
    assert!(stderr.contains("unknown variant `perhaps`"), "{stderr}");
    assert!(
        stderr.contains("an action is `allow`, `deny` or `require_approval`"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!marker.exists(), "the upstream must not start");
    assert!(out.stdout.is_empty(), "nothing on the protocol channel");

    let check = Command::new(TOOLGATE)
        .arg("check")
        .arg(&bad.path)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&check.stderr).contains("tools.x.action"));
    let good = policy_file(ALLOW_ALL);
    let check = Command::new(TOOLGATE)
        .arg("check")
        .arg(&good.path)
        .output()
        .unwrap();
    assert!(check.status.success());
}

#[test]
fn an_upstream_that_dies_mid_call_gives_errors_not_a_hang() {
    let mut client = Client::start(ALLOW_ALL, &echo());
    client.initialize();
    let reply = client.request("tools/call", json!({"name": "crash", "arguments": {}}));
    assert_eq!(reply["error"]["code"], -32000, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exited"),
        "{reply}"
    );
    let (status, stderr) = client.wait();
    assert!(!status.success());
    assert!(
        stderr.contains("exited (exit status: 3)") && stderr.contains("1 pending request(s)"),
        "{stderr}"
    );
}

#[test]
fn closing_stdin_shuts_the_upstream_down_cleanly() {
    let mut client = Client::start(ALLOW_ALL, &standin());
    client.initialize();
    let (status, stderr) = client.finish();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("client closed; upstream stopped"),
        "{stderr}"
    );
}

/// Children of `pid`, from /proc (Linux).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .flat_map(|t| {
                    std::fs::read_to_string(t.path().join("children"))
                        .unwrap_or_default()
                        .split_whitespace()
                        .map(|p| p.parse().unwrap())
                        .collect::<Vec<u32>>()
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn an_upstream_never_outlives_a_killed_gateway() {
    // `sleep` ignores its stdin, like servers that do not exit on EOF.
    let good = policy_file(ALLOW_ALL);
    let mut gateway = Command::new(TOOLGATE)
        .arg("run")
        .arg("--policy")
        .arg(&good.path)
        .args(["--", "sleep", "300"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let upstream = loop {
        if let Some(&pid) = children(gateway.id()).first() {
            break pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "upstream never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    gateway.kill().unwrap(); // SIGKILL: no handler in the gateway can run
    gateway.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{upstream}")).exists()
        && !std::fs::read_to_string(format!("/proc/{upstream}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "upstream {upstream} outlived its gateway"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
