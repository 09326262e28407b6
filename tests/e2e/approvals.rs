//! Require approval, for real, over stdio: `toolgate run --admin-socket` holds a call that
//! needs a person while the session's other calls flow, and `toolgate approvals` (another
//! process, on the admin socket) approves or denies it. The upstream is the LLM CLI Gateway
//! stand-in, whose `session_delete` says whether the session existed: a call that ran twice
//! would say "not found" the second time.

use crate::support::{refusal, standin, Client, TOOLGATE};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// `session_delete` waits for a person up to 20 s; `session_get` only 1 s (the agent gets
/// `pending` and retries); the rest is allowed.
const POLICY: &str = r#"{"version": "1", "default": "allow",
  "tools": {
    "session_delete": {"action": "require_approval", "reason": "deleting needs a person",
                       "approval": {"hold": "20s"}},
    "session_get": {"action": "require_approval", "approval": {"hold": "1s"}}
  }}"#;

pub(crate) fn approvals(socket: &Path, args: &[&str]) -> Value {
    let out = Command::new(TOOLGATE)
        .arg("approvals")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "toolgate approvals {args:?}: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Waits (10 s at most) for a pending request of `tool` and returns its id.
pub(crate) fn pending(socket: &Path, tool: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = approvals(socket, &["list", "--json"]);
        if let Some(r) = list["requests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["tool"] == tool && r["state"] == "pending")
        {
            return r["id"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no pending {tool}: {list}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn gateway() -> (Client, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let mut client = Client::start_with(
        POLICY,
        &standin(),
        &["--admin-socket", socket.to_str().unwrap(), "--no-watch"],
    );
    client.initialize();
    (client, dir, socket)
}

pub(crate) fn created(client: &mut Client) -> String {
    let result = client.call("session_create", json!({"cli": "codex"}));
    let body: Value = serde_json::from_str(result["content"][0]["text"].as_str().unwrap()).unwrap();
    body["session"]["id"].as_str().unwrap().to_owned()
}

#[test]
fn a_held_call_runs_once_when_approved_and_is_refused_when_denied_while_others_flow() {
    let (mut client, _dir, socket) = gateway();
    let doomed = created(&mut client);
    client.send(
        &json!({"jsonrpc": "2.0", "id": "del-1", "method": "tools/call",
        "params": {"name": "session_delete", "arguments": {"sessionId": doomed}}}),
    );
    let id = pending(&socket, "session_delete");
    // While it is held, the session's other calls flow.
    let listed = client.call("session_list", json!({}));
    assert!(listed.get("isError").is_none(), "{listed}");
    let shown = approvals(&socket, &["show", &id]);
    assert_eq!(shown["request"]["arguments"]["sessionId"], doomed.as_str());
    assert_eq!(
        shown["request"]["reason"],
        "deleting needs a person (a person must approve this call)"
    );
    let approved = approvals(&socket, &["approve", &id]);
    assert_eq!(approved["ok"], true, "{approved}");
    let reply = client.reply_to(&json!("del-1"));
    let text = reply["result"]["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains(&format!("\"deleted\":\"{doomed}\"")),
        "{reply}"
    );
    assert!(reply["result"].get("_meta").is_none(), "{reply}");
    // Approving again changes nothing and runs nothing; the session is gone upstream.
    assert_eq!(
        approvals(&socket, &["approve", &id])["request"]["state"],
        "consumed"
    );

    // A deny: the agent learns who and why; the upstream never sees the call.
    let kept = created(&mut client);
    client.send(
        &json!({"jsonrpc": "2.0", "id": "del-2", "method": "tools/call",
        "params": {"name": "session_delete", "arguments": {"sessionId": kept}}}),
    );
    let id = pending(&socket, "session_delete");
    let denied = approvals(&socket, &["deny", &id, "--reason", "keep it for the audit"]);
    assert_eq!(denied["ok"], true, "{denied}");
    let reply = client.reply_to(&json!("del-2"));
    let (text, meta) = refusal(&reply["result"]);
    assert!(text.contains("keep it for the audit"), "{text}");
    assert_eq!(meta["decision"], "deny", "{meta}");
    let got = client.call("session_list", json!({}));
    assert!(
        got["content"][0]["text"].as_str().unwrap().contains(&kept),
        "{got}"
    );
    // A decided request cannot be decided the other way.
    let again = approvals(&socket, &["approve", &id]);
    assert_eq!(again["ok"], false, "{again}");
    assert!(
        again["error"].as_str().unwrap().contains("denied"),
        "{again}"
    );
}

#[test]
fn a_hold_that_ends_leaves_a_pending_request_whose_identical_retry_passes_once_approved() {
    let (mut client, _dir, socket) = gateway();
    let session = created(&mut client);
    let args = json!({"sessionId": session});
    let first = client.call("session_get", args.clone());
    let (text, meta) = refusal(&first);
    assert_eq!(meta["decision"], "require_approval", "{first}");
    assert_eq!(meta["approval"]["state"], "pending", "{first}");
    assert!(text.contains("retry the same call"), "{text}");
    let id = meta["approval"]["id"].as_str().unwrap().to_owned();
    assert_eq!(approvals(&socket, &["approve", &id])["ok"], true);
    // The identical retry passes, once.
    let retry = client.call("session_get", args.clone());
    assert!(retry.get("isError").is_none(), "{retry}");
    assert!(retry["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains(&session));
    let third = client.call("session_get", args);
    let (_, meta) = refusal(&third);
    assert_eq!(meta["approval"]["state"], "pending", "{third}");
    assert_ne!(
        meta["approval"]["id"],
        id.as_str(),
        "a once approval was used twice"
    );
    // Other arguments are another call: asked again.
    let other = client.call("session_get", json!({"sessionId": "another"}));
    let (_, meta) = refusal(&other);
    assert_eq!(meta["decision"], "require_approval", "{other}");
}

#[test]
fn without_an_approval_channel_a_call_that_needs_approval_is_refused_at_once() {
    let mut client = Client::start(POLICY, &standin());
    client.initialize();
    let started = Instant::now();
    let result = client.call("session_delete", json!({"sessionId": "x"}));
    let (text, meta) = refusal(&result);
    assert_eq!(meta["decision"], "require_approval");
    assert!(text.contains("approval not configured"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A client that declares elicitation is asked inside the held call, before its result.
fn eliciting_gateway(extra: &[&str]) -> Client {
    let mut client = Client::start_with(POLICY, &standin(), extra);
    client.request(
        "initialize",
        json!({"protocolVersion": "2025-11-25", "capabilities": {"elicitation": {}},
               "clientInfo": {"name": "e2e-eliciting", "version": "1"}}),
    );
    client.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    client
}

/// Sends `session_delete` and returns the `elicitation/create` request the gateway asks.
fn asked(client: &mut Client, call_id: &str, session: &str) -> Value {
    client.send(
        &json!({"jsonrpc": "2.0", "id": call_id, "method": "tools/call",
        "params": {"name": "session_delete", "arguments": {"sessionId": session}}}),
    );
    let question = client.recv();
    assert_eq!(question["method"], "elicitation/create", "{question}");
    let id = question["id"]
        .as_str()
        .expect("a string id of the gateway's own");
    assert!(id.starts_with("toolgate-approval-"), "{question}");
    let message = question["params"]["message"].as_str().unwrap();
    assert!(
        message.contains("session_delete") && message.contains(session),
        "{message}"
    );
    let schema = &question["params"]["requestedSchema"];
    assert_eq!(
        schema["properties"]["decision"]["enum"],
        json!(["approve", "deny"])
    );
    question
}

fn answer(client: &mut Client, question: &Value, result: Value) {
    client.send(&json!({"jsonrpc": "2.0", "id": question["id"], "result": result}));
}

#[test]
fn the_agents_own_client_approves_or_declines_through_elicitation() {
    let mut client = eliciting_gateway(&[]);
    let doomed = created(&mut client);
    let question = asked(&mut client, "e1", &doomed);
    answer(
        &mut client,
        &question,
        json!({"action": "accept", "content": {"decision": "approve"}}),
    );
    let reply = client.reply_to(&json!("e1"));
    let text = reply["result"]["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains(&format!("\"deleted\":\"{doomed}\"")),
        "{reply}"
    );

    let kept = created(&mut client);
    let question = asked(&mut client, "e2", &kept);
    answer(&mut client, &question, json!({"action": "decline"}));
    let reply = client.reply_to(&json!("e2"));
    let (text, meta) = refusal(&reply["result"]);
    assert_eq!(meta["decision"], "deny", "{reply}");
    assert!(text.contains("declined in the agent's client"), "{text}");
    // A replayed (stale) answer changes nothing: the session is still there, nothing ran.
    answer(
        &mut client,
        &question,
        json!({"action": "accept", "content": {"decision": "approve"}}),
    );
    let listed = client.call("session_list", json!({}));
    assert!(
        listed["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains(&kept),
        "{listed}"
    );
}

#[test]
fn a_cancelled_elicitation_leaves_the_call_to_the_operator() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let mut client = eliciting_gateway(&["--admin-socket", socket.to_str().unwrap(), "--no-watch"]);
    let doomed = created(&mut client);
    let question = asked(&mut client, "e3", &doomed);
    answer(&mut client, &question, json!({"action": "cancel"}));
    let id = pending(&socket, "session_delete");
    assert_eq!(approvals(&socket, &["approve", &id])["ok"], true);
    let reply = client.reply_to(&json!("e3"));
    let text = reply["result"]["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains(&format!("\"deleted\":\"{doomed}\"")),
        "{reply}"
    );
}

/// While held, a call whose client asked for progress gets progress notifications (clients
/// reset their timeout on them); a cancelled held call is withdrawn and never runs; a held
/// call's id cannot be reused meanwhile.
#[test]
fn held_calls_report_progress_and_a_cancel_withdraws_them() {
    let (mut client, _dir, socket) = gateway();
    let doomed = created(&mut client);
    client.send(
        &json!({"jsonrpc": "2.0", "id": "p1", "method": "tools/call",
        "params": {"name": "session_delete", "arguments": {"sessionId": doomed},
                   "_meta": {"progressToken": "tok-1"}}}),
    );
    let id = pending(&socket, "session_delete");
    // Reusing the held call's id is refused, and costs nothing.
    let reused = client.request("tools/list", json!({}));
    assert!(reused.get("result").is_some());
    client.send(
        &json!({"jsonrpc": "2.0", "id": "p1", "method": "tools/call",
        "params": {"name": "session_list", "arguments": {}}}),
    );
    let refused = client.recv();
    assert_eq!(refused["id"], "p1");
    assert!(
        refused["error"]["message"].as_str().unwrap().contains("p1"),
        "{refused}"
    );
    // A progress notification within the 10 s interval (+ slack).
    let progress = client
        .recv_within(Duration::from_secs(15))
        .expect("a progress notification");
    assert_eq!(progress["method"], "notifications/progress", "{progress}");
    assert_eq!(progress["params"]["progressToken"], "tok-1");
    // The client gives up: the request is withdrawn, and no reply comes.
    client.send(
        &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": {"requestId": "p1", "reason": "user gave up"}}),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let shown = approvals(&socket, &["show", &id]);
        if shown["request"]["state"] == "cancelled" {
            break;
        }
        assert!(Instant::now() < deadline, "{shown}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let late = approvals(&socket, &["approve", &id]);
    assert_eq!(late["ok"], false, "{late}");
    assert!(client.recv_within(Duration::from_millis(500)).is_none());
    let listed = client.call("session_list", json!({}));
    assert!(
        listed["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains(&doomed),
        "{listed}"
    );
}

/// From review: an approval covers the call under the policy that asked. If the policy is
/// swapped while the call is held, an approval given afterwards does not let it through: the
/// call is decided again under the new policy (and asks again if it still needs a person).
#[test]
fn a_call_held_across_a_policy_swap_is_decided_again() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, POLICY).unwrap();
    let mut client = Client::start_at(
        &policy,
        &standin(),
        &["--admin-socket", socket.to_str().unwrap(), "--no-watch"],
    );
    client.initialize();
    let doomed = created(&mut client);
    client.send(
        &json!({"jsonrpc": "2.0", "id": "s1", "method": "tools/call",
        "params": {"name": "session_delete", "arguments": {"sessionId": doomed}}}),
    );
    let id = pending(&socket, "session_delete");
    // The new policy still wants a person, with another reason: another digest.
    std::fs::write(
        &policy,
        POLICY.replace("deleting needs a person", "still needs a person"),
    )
    .unwrap();
    let out = Command::new(TOOLGATE)
        .args(["reload", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(approvals(&socket, &["approve", &id])["ok"], true);
    let reply = client.reply_to(&json!("s1"));
    let (_, meta) = refusal(&reply["result"]);
    assert_eq!(meta["decision"], "require_approval", "{reply}");
    assert_ne!(meta["approval"]["id"], id.as_str(), "{reply}");
    let listed = client.call("session_list", json!({}));
    assert!(
        listed["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains(&doomed),
        "{listed}"
    );
}

/// A plugin's `require-approval` holds the call like a rule's: approved, the call is decided
/// again with the plugin's question met, and goes upstream once.
#[test]
fn a_plugins_require_approval_is_held_and_met_by_an_approval() {
    let probe = crate::plugins::plugins()["probe"].display().to_string();
    let policy = json!({"version": "1", "default": "allow",
        "plugins": {"probe": {"path": probe, "grants": ["log"]}},
        "tools": {"session_delete": {"use": [{"plugin": "probe", "config": "ask"}],
                                     "approval": {"hold": "20s"}}}});
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let mut client = Client::start_with(
        &policy.to_string(),
        &standin(),
        &["--admin-socket", socket.to_str().unwrap(), "--no-watch"],
    );
    client.initialize();
    let doomed = created(&mut client);
    client.send(
        &json!({"jsonrpc": "2.0", "id": "pl-1", "method": "tools/call",
        "params": {"name": "session_delete", "arguments": {"sessionId": doomed}}}),
    );
    let id = pending(&socket, "session_delete");
    let shown = approvals(&socket, &["show", &id]);
    assert_eq!(shown["request"]["rule"], "plugins.probe", "{shown}");
    assert_eq!(approvals(&socket, &["approve", &id])["ok"], true);
    let reply = client.reply_to(&json!("pl-1"));
    let text = reply["result"]["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains(&format!("\"deleted\":\"{doomed}\"")),
        "{reply}"
    );
}
