//! `toolgate approvals` against `toolgate serve`'s admin listener: the same subcommands as
//! over `toolgate run`'s socket, as the approver whose token it is; an approver may choose
//! how far an approval reaches (`--reuse`).

use crate::approvals_http::{created, pending, serve_with};
use crate::http::{Mcp, Serve};
use crate::support::TOOLGATE;
use serde_json::{json, Value};
use std::process::{Command, Output};

fn cli(serve: &Serve, token: &str, args: &[&str]) -> Output {
    let token_file = serve.dir.path().join(format!("{token}.txt"));
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    Command::new(TOOLGATE)
        .args(["approvals", "--admin", &serve.admin, "--token-file"])
        .arg(&token_file)
        .args(args)
        .output()
        .unwrap()
}

fn json_out(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_decides_over_the_admin_listener_as_an_approver_and_may_widen_reuse() {
    let serve = serve_with("", &[]);
    let mut mcp = Mcp::new(&serve.url, Some("token-a"));
    mcp.initialize().await;
    let kept = created(&mut mcp).await;
    // `session_get` is allowed: the held call is a delete of an unknown id, which the
    // stand-in answers with an error, so it can be repeated.
    let mut held = Mcp::new(&serve.url, Some("token-a"));
    held.session = mcp.session.clone();
    let args = json!({"sessionId": "not-a-session"});
    let first = {
        let args = args.clone();
        tokio::spawn(async move { held.call("session_delete", args).await })
    };
    let id = pending(&serve).await;

    // The table shows it; --json gives the API's answer.
    let out = cli(&serve, "ops-token", &["list"]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("ID "), "{table}");
    assert!(
        table.contains(&id) && table.contains("session_delete"),
        "{table}"
    );
    let listed = json_out(&cli(&serve, "ops-token", &["list", "--json"]));
    assert_eq!(listed["requests"][0]["id"], id.as_str(), "{listed}");

    // A grant's token, another grant's approver and a bad reuse decide nothing.
    for (token, args) in [
        ("token-a", vec!["approve", id.as_str()]),
        ("b-ops-token", vec!["approve", id.as_str()]),
    ] {
        let out = cli(&serve, token, &args);
        assert!(!out.status.success(), "{token} approved");
    }
    let out = cli(&serve, "ops-token", &["approve", &id, "--reuse", "25h"]);
    assert_eq!(out.status.code(), Some(2));
    let shown = json_out(&cli(&serve, "ops-token", &["show", &id]));
    assert_eq!(shown["request"]["state"], "pending", "{shown}");

    // Approved for the session: the held call and the identical calls after it run.
    let out = cli(&serve, "ops-token", &["approve", &id, "--reuse", "session"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json_out(&out)["request"]["decided_by"], "ops");
    let result = first.await.unwrap();
    assert!(
        result.to_string().contains("not-a-session"),
        "the held call ran upstream: {result}"
    );
    for _ in 0..2 {
        let again = mcp.call("session_delete", args.clone()).await;
        assert!(
            again["_meta"]["toolgate"]["decision"] != "require_approval",
            "{again}"
        );
    }
    // Other arguments still ask (and the approver denies with a reason).
    let mut other = Mcp::new(&serve.url, Some("token-a"));
    other.session = mcp.session.clone();
    let denied = tokio::spawn(async move {
        other
            .call("session_delete", json!({"sessionId": kept}))
            .await
    });
    let id = loop {
        let listed = json_out(&cli(&serve, "ops-token", &["list", "--json"]));
        let pending = listed["requests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["state"] == "pending")
            .map(|r| r["id"].as_str().unwrap().to_owned());
        if let Some(id) = pending {
            break id;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let out = cli(&serve, "ops-token", &["deny", &id, "--reason", "keep it"]);
    assert!(out.status.success());
    let result = denied.await.unwrap();
    assert!(result.to_string().contains("keep it"), "{result}");
}
