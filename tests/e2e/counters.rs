//! Counter stores over real processes: two `toolgate run` processes (two MCP client
//! sessions) sharing one SQLite file hold one cap between them, and across their restarts.

use crate::support::{refusal, standin, Client};
use serde_json::json;

const SEED: &str = include_str!("../../examples/seed/policy.json");

#[test]
fn two_run_processes_on_one_sqlite_file_hold_one_cap_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("sqlite:{}", dir.path().join("counters.sqlite").display());
    let start = || {
        let mut client = Client::start_with(SEED, &standin(), &["--counters", &spec]);
        client.initialize();
        client
    };
    let mut clients = [start(), start()];
    // Interleaved, then each asks until refused: exactly 30 between them (the seed's cap is
    // 30 a minute per grant, and both run as the default grant).
    let mut admitted = 0;
    for i in 0..40 {
        let result = clients[i % 2].call("session_create", json!({"cli": "codex"}));
        if result.get("isError").is_none() {
            admitted += 1;
        } else {
            let (text, meta) = refusal(&result);
            assert_eq!(meta["decision"], "rate_limited", "{text}");
        }
    }
    assert_eq!(admitted, 30, "one cap for both processes");
    // Restarted, both still find the window full.
    for client in clients {
        let (status, _) = client.finish();
        assert!(status.success());
    }
    let mut clients = [start(), start()];
    for client in &mut clients {
        let result = client.call("session_create", json!({"cli": "codex"}));
        let (text, meta) = refusal(&result);
        assert_eq!(meta["decision"], "rate_limited", "the cap survived: {text}");
    }
    // A bad store is refused at start, naming it.
    let out = std::process::Command::new(crate::support::TOOLGATE)
        .args([
            "run",
            "--policy",
            "x.json",
            "--counters",
            "mongodb://x",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown counter store"));
}
