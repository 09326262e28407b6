//! Both versions of the plugin contract in one gateway: the `probe` (built against
//! `toolgate:policy@0.2.0`) sees the approval that covers a held call, who gave it and through
//! which channel, and may still refuse it; `gw-id-check` (built against 0.1.0, unchanged) loads
//! and decides beside it as it always did, approved call or not. Over stdio, approved with
//! `toolgate approvals` on the admin socket (the helpers of `approvals.rs`).

use crate::approvals::{approvals, created, pending};
use crate::plugins::plugins;
use crate::support::{refusal, standin, Client};
use serde_json::json;
use toolgate::capability::{self, World};
use toolgate::manifest::Manifest;

/// Each built plugin's manifest names the world its imports name: the 0.2.0 probe, the 0.1.0
/// reference plugins.
#[test]
fn each_plugin_is_built_for_the_world_its_imports_name() {
    for (name, world) in [
        ("probe", World::V0_2),
        ("gw-id-check", World::V0_1),
        ("rate-cap", World::V0_1),
    ] {
        let bytes = std::fs::read(&plugins()[name]).unwrap();
        assert_eq!(capability::world_of(&bytes), Ok(Some(world)), "{name}");
        let manifest = Manifest::read(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(manifest.world, world.name(), "{name}");
    }
}

#[test]
fn a_0_2_plugin_sees_the_approval_and_a_0_1_plugin_decides_as_before() {
    let probe = plugins()["probe"].display().to_string();
    let gw = plugins()["gw-id-check"].display().to_string();
    let policy = json!({"version": "1", "default": "allow",
        "plugins": {"probe": {"path": probe, "grants": ["log"]},
                    "gw": {"path": gw, "grants": []}},
        "tools": {
            // Asks a person; once approved, allows only an approval that came through `cli`.
            "session_delete": {"use": [{"plugin": "probe", "config": "ask-then-allow-cli"}],
                               "approval": {"hold": "20s"}},
            // Asks a person; once approved, refuses, quoting the approval it saw.
            "session_get": {"use": [{"plugin": "probe", "config": "ask-then-deny"}],
                            "approval": {"hold": "20s"}},
            // The 0.1.0 plugin behind a rule's approval: decided again when approved, and
            // still refusing a gw- id.
            "codex_request": {"action": "require_approval",
                              "use": [{"plugin": "gw", "config": {}}],
                              "approval": {"hold": "20s"}},
            "codex_request_async": {"use": [{"plugin": "gw", "config": {}}]}}});
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let mut client = Client::start_with(
        &policy.to_string(),
        &standin(),
        &["--admin-socket", socket.to_str().unwrap(), "--no-watch"],
    );
    client.initialize();

    // Without an approval the probe asks; approved through the CLI, it allows, and the call
    // runs upstream once.
    let doomed = created(&mut client);
    client.send(
        &json!({"jsonrpc": "2.0", "id": "v2-allow", "method": "tools/call",
        "params": {"name": "session_delete", "arguments": {"sessionId": doomed}}}),
    );
    let id = pending(&socket, "session_delete");
    let shown = approvals(&socket, &["show", &id]);
    assert_eq!(shown["request"]["rule"], "plugins.probe", "{shown}");
    assert_eq!(approvals(&socket, &["approve", &id])["ok"], true);
    let reply = client.reply_to(&json!("v2-allow"));
    let text = reply["result"]["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains(&format!("\"deleted\":\"{doomed}\"")),
        "{reply}"
    );
    let listed = client.call("session_list", json!({}));
    assert!(
        !listed["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains(&doomed),
        "{listed}"
    );

    // Approved, and refused all the same: the probe quotes the approval it was handed, the
    // request's id, the approver the registry recorded and the channel.
    let kept = created(&mut client);
    client.send(
        &json!({"jsonrpc": "2.0", "id": "v2-deny", "method": "tools/call",
        "params": {"name": "session_get", "arguments": {"sessionId": kept}}}),
    );
    let id = pending(&socket, "session_get");
    let approved = approvals(&socket, &["approve", &id]);
    assert_eq!(approved["ok"], true, "{approved}");
    let approver = approved["request"]["decided_by"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(approver.contains("(uid "), "{approved}");
    let reply = client.reply_to(&json!("v2-deny"));
    let (_, meta) = refusal(&reply["result"]);
    assert_eq!(
        meta["reason"],
        format!("the probe refuses a call approved by {approver} via cli as {id}"),
        "{reply}"
    );
    assert_eq!(meta["decision"], "deny", "{meta}");
    assert_eq!(meta["rule"], "plugins.probe", "{meta}");

    // The 0.1.0 plugin, unchanged, with no person involved: a gw- id refused, a UUID let
    // through.
    let gw_id = json!({"prompt": "p", "sessionId": "gw-1"});
    let (text, meta) = refusal(&client.call("codex_request_async", gw_id.clone()));
    assert!(text.contains("tracking id"), "{text}");
    assert_eq!(meta["rule"], "plugins.gw", "{meta}");
    let uuid = json!({"prompt": "p", "sessionId": "7f3e2a10-9c4b-4d2e-8f1a-2b3c4d5e6f70"});
    let fine = client.call("codex_request_async", uuid);
    assert!(fine.get("isError").is_none(), "{fine}");

    // Behind a rule's approval: approved, the call is decided again, and gw-id-check (which
    // is never handed the approval) refuses a gw- id as it always did.
    client.send(
        &json!({"jsonrpc": "2.0", "id": "v1", "method": "tools/call",
        "params": {"name": "codex_request", "arguments": gw_id}}),
    );
    let id = pending(&socket, "codex_request");
    assert_eq!(approvals(&socket, &["approve", &id])["ok"], true);
    let reply = client.reply_to(&json!("v1"));
    let (text, meta) = refusal(&reply["result"]);
    assert!(
        text.contains("Codex resume needs a real Codex UUID"),
        "{text}"
    );
    assert_eq!(meta["rule"], "plugins.gw", "{meta}");
}
