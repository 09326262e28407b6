//! Plugins that see results (issue 23, `toolgate:policy@0.3.0`, world `policy-with-results`),
//! through the real gateway: `session-ids` remembers the session record ids LLM CLI Gateway's
//! `session_create` returned and refuses them as a Codex `sessionId`, across a hot swap and,
//! on the SQLite store, a restart; `redact` replaces a key planted in a result, over stdio and
//! over HTTP, and a result it cannot finish in its fuel is refused, never leaked; the 0.1.0
//! `gw-id-check` loads and decides beside them as it always did.

use crate::http::{Mcp, Serve};
use crate::plugins::plugins;
use crate::support::{body, echo, refusal, standin, Client};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};
use toolgate::manifest::{self, Manifest};

/// Fake secrets of real shapes (none is a live credential; AWS's is its documented example).
const OPENAI_KEY: &str = "sk-proj-EXAMPLEonlyNOTaREALkey00000000";
const GITHUB_TOKEN: &str = "ghp_EXAMPLEonlyNOTaREALtoken0000000000";
const AWS_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";

fn component(name: &str) -> String {
    plugins()[name].display().to_string()
}

/// `session-ids`' plugin entry: `state` (30 days, the server's session lifetime) and `log`.
fn session_ids_entry() -> Value {
    json!({"path": component("session-ids"), "grants": ["log", "state"],
           "state": {"max_entries": 100, "max_bytes": 65536, "max_ttl_s": 2_592_000}})
}

/// `session-ids` on every call (so both its `after-call` on `session_create` and its
/// `evaluate` on the resume tools run), and `tools` beside it.
fn session_ids_policy(tools: Value) -> Value {
    json!({"version": "1", "default": "allow",
        "plugins": {"session-ids": session_ids_entry()},
        "all_tools": {"use": [{"plugin": "session-ids", "config": {}}]},
        "tools": tools})
}

fn redact_policy() -> Value {
    json!({"version": "1", "default": "allow",
        "plugins": {"redact": {"path": component("redact"), "grants": []}},
        "all_tools": {"use": [{"plugin": "redact", "config": {}}]}})
}

/// `session_create` through the gateway; the record id it returned.
fn create(client: &mut Client) -> String {
    let created = client.call("session_create", json!({"cli": "codex"}));
    assert!(created.get("isError").is_none(), "{created}");
    body(&created)["session"]["id"].as_str().unwrap().to_owned()
}

/// `result` is session-ids' refusal of `id`.
fn assert_refused_as_record_id(result: &Value, id: &str) {
    let (text, meta) = refusal(result);
    assert!(
        text.starts_with(&format!(
            "[toolgate] deny: sessionId `{id}` is a session record id that session_create returned"
        )),
        "{text}"
    );
    assert!(
        text.contains("Codex resume needs a Codex session UUID"),
        "{text}"
    );
    assert_eq!(meta["decision"], "deny", "{meta}");
    assert!(
        meta["rule"].as_str().unwrap_or("").contains("session-ids"),
        "{meta}"
    );
}

/// `result` is what the stand-in answers a request tool it ran, resuming `id`.
fn assert_ran(result: &Value, id: &str) {
    assert!(result.get("isError").is_none(), "{result}");
    assert_eq!(body(result)["sessionId"], id, "{result}");
}

fn resume(id: &str) -> Value {
    json!({"prompt": "continue", "sessionId": id})
}

fn fresh_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[test]
fn a_session_record_id_is_refused_as_a_codex_session_and_a_fresh_uuid_passes() {
    let mut client = Client::start(&session_ids_policy(json!({})).to_string(), &standin());
    client.initialize();
    let id = create(&mut client);
    for tool in ["codex_request", "codex_request_async", "codex_fork_session"] {
        assert_refused_as_record_id(&client.call(tool, resume(&id)), &id);
    }
    // UUIDs are case-insensitive: the upper-case spelling is the same record.
    let upper = id.to_uppercase();
    assert_refused_as_record_id(&client.call("codex_request", resume(&upper)), &upper);

    // An id the gateway never saw returned is left to Codex, and the call runs.
    let fresh = fresh_uuid();
    assert_ran(&client.call("codex_request", resume(&fresh)), &fresh);
    // No sessionId: a fresh session (the stand-in mints a gw- tracking id).
    let started = client.call("codex_request", json!({"prompt": "start"}));
    assert!(
        body(&started)["sessionId"]
            .as_str()
            .unwrap()
            .starts_with("gw-"),
        "{started}"
    );
    // The record tools themselves are not resume tools.
    let got = client.call("session_get", json!({"sessionId": id}));
    assert_eq!(body(&got)["session"]["id"], id.as_str(), "{got}");

    // A case variant that a Go server would read as sessionId: refused, not guessed at.
    let (text, _) = refusal(&client.call(
        "codex_request",
        json!({"prompt": "p", "SessionId": id.as_str()}),
    ));
    assert!(text.contains("send `sessionId` exactly once"), "{text}");
    // A duplicated key never reaches the server, whichever layer refuses it.
    client.send_raw(
        format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":\"dup\",\"method\":\"tools/call\",\"params\":{{\"name\":\"codex_request\",\"arguments\":{{\"prompt\":\"p\",\"sessionId\":\"{fresh}\",\"sessionId\":\"{id}\"}}}}}}\n"
        )
        .as_bytes(),
    );
    let dup = client.reply_to(&json!("dup"));
    assert!(
        dup.get("error").is_some() || dup["result"]["isError"] == true,
        "{dup}"
    );
    let (status, stderr) = client.finish();
    assert!(status.success(), "{stderr}");
}

/// Replaces `path`'s content as editors and deploy tools do: a temporary file renamed over.
fn write_atomically(path: &Path, value: &Value) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, value.to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls `session_list` until the swapped policy (which refuses it) serves; at most 10 s.
fn wait_for_swap(client: &mut Client) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = client.call("session_list", json!({}));
        if listed["isError"] == true {
            let (text, _) = refusal(&listed);
            assert!(text.contains("the swapped policy"), "{text}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the rewritten policy was not serving within 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn recorded_ids_outlive_a_hot_swap_and_on_sqlite_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    let counters = format!("sqlite:{}", dir.path().join("counters.db").display());
    write_atomically(&policy, &session_ids_policy(json!({})));
    let mut client = Client::start_at(&policy, &standin(), &["--counters", &counters]);
    client.initialize();
    let before = create(&mut client);
    assert_refused_as_record_id(&client.call("codex_request", resume(&before)), &before);

    // A hot swap: the policy rewritten (a new rule beside the plugin), a new plugin instance.
    let swapped = session_ids_policy(json!({
        "session_list": {"action": "deny", "reason": "the swapped policy"}}));
    write_atomically(&policy, &swapped);
    wait_for_swap(&mut client);
    assert_refused_as_record_id(&client.call("codex_request", resume(&before)), &before);
    let after = create(&mut client);
    assert_refused_as_record_id(&client.call("codex_request_async", resume(&after)), &after);
    let (status, stderr) = client.finish();
    assert!(status.success(), "{stderr}");

    // A restart on the same SQLite file: both ids are still known.
    let mut restarted = Client::start_at(&policy, &standin(), &["--counters", &counters]);
    restarted.initialize();
    for id in [&before, &after] {
        assert_refused_as_record_id(&restarted.call("codex_request", resume(id)), id);
    }
    let fresh = fresh_uuid();
    assert_ran(&restarted.call("codex_request", resume(&fresh)), &fresh);
    drop(restarted);

    // The limit the README states: the memory store forgets with the process.
    let mut forgetful = Client::start_at(&policy, &standin(), &[]);
    forgetful.initialize();
    assert_ran(&forgetful.call("codex_request", resume(&before)), &before);
}

#[test]
fn a_key_planted_in_a_result_is_redacted_over_stdio() {
    let mut client = Client::start(&redact_policy().to_string(), &echo());
    client.initialize();
    let planted = format!("OPENAI_API_KEY={OPENAI_KEY}\naws_access_key_id = {AWS_KEY_ID}");
    let result = client.call("echo", json!({"message": planted}));
    assert_eq!(
        result["content"][0]["text"], "OPENAI_API_KEY=[REDACTED]\naws_access_key_id = [REDACTED]",
        "{result}"
    );
    assert_eq!(result["_meta"]["toolgate"]["redactions"], 2, "{result}");
    assert!(!result.to_string().contains(OPENAI_KEY), "{result}");
    // Nothing to redact: the upstream's result, untouched.
    let clean = client.call("echo", json!({"message": "nothing secret here"}));
    assert_eq!(
        clean,
        json!({"content": [{"type": "text", "text": "nothing secret here"}]})
    );
    let (status, stderr) = client.finish();
    assert!(status.success(), "{stderr}");
}

fn grant(name: &str, token: &str, policy: &str) -> String {
    format!(
        "[[grants]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\npolicy = \"{policy}\"\n",
        toolgate::digest::sha256_hex(token.as_bytes())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_a_planted_key_is_redacted_and_record_ids_are_the_grants_own() {
    // Both plugins on one policy, for two grants, in front of the LLM CLI Gateway stand-in.
    let policy = json!({"version": "1", "default": "allow",
        "plugins": {"session-ids": session_ids_entry(),
                    "redact": {"path": component("redact"), "grants": []}},
        "all_tools": {"use": [{"plugin": "session-ids", "config": {}},
                              {"plugin": "redact", "config": {}}]}});
    let upstream = format!(
        "[upstream]\ncommand = {}\n",
        serde_json::to_string(&standin()).unwrap()
    );
    let serve = Serve::start(
        &format!(
            "{upstream}{}{}",
            grant("a", "token-a", "p.json"),
            grant("b", "token-b", "p.json")
        ),
        &[("p.json", &policy.to_string())],
    );
    let (mut a, mut b) = (
        Mcp::new(&serve.url, Some("token-a")),
        Mcp::new(&serve.url, Some("token-b")),
    );
    a.initialize().await;
    b.initialize().await;

    // The stand-in returns the description it was given: a key planted there comes back
    // redacted, and the record id beside it is still recorded.
    let created = a
        .call(
            "session_create",
            json!({"cli": "codex", "description": format!("token {GITHUB_TOKEN}")}),
        )
        .await;
    assert!(!created.to_string().contains(GITHUB_TOKEN), "{created}");
    assert_eq!(created["_meta"]["toolgate"]["redactions"], 1, "{created}");
    let record = body(&created);
    assert_eq!(record["session"]["description"], "token [REDACTED]");
    let id = record["session"]["id"].as_str().unwrap().to_owned();

    assert_refused_as_record_id(&a.call("codex_request", resume(&id)).await, &id);
    // Grant b never saw that id returned: its state is its own.
    assert_ran(&b.call("codex_request", resume(&id)).await, &id);
    // A clean result passes untouched.
    let clean = b.call("session_create", json!({"cli": "claude"})).await;
    assert!(clean.get("_meta").is_none(), "{clean}");
    assert!(body(&clean)["session"]["description"].is_null(), "{clean}");
}

#[test]
fn a_0_1_plugin_still_loads_and_decides_beside_the_0_3_plugins() {
    for (name, capabilities) in [("session-ids", r#"["log","state"]"#), ("redact", "[]")] {
        let bytes = std::fs::read(&plugins()[name]).unwrap();
        let m = Manifest::read(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(m.world.ends_with("@0.3.0"), "{name}: {}", m.world);
        assert_eq!(manifest::capability_names(&m.capabilities), capabilities);
    }
    let gw = Manifest::read(&std::fs::read(&plugins()["gw-id-check"]).unwrap()).unwrap();
    assert_eq!(gw.world, "toolgate:policy/policy@0.1.0");

    let policy = json!({"version": "1", "default": "allow",
        "plugins": {"gw": {"path": component("gw-id-check"), "grants": []},
                    "session-ids": session_ids_entry(),
                    "redact": {"path": component("redact"), "grants": []}},
        "all_tools": {"use": [{"plugin": "gw", "config": {}},
                              {"plugin": "session-ids", "config": {}},
                              {"plugin": "redact", "config": {}}]}});
    let mut client = Client::start(&policy.to_string(), &standin());
    client.initialize();

    // gw-id-check, as before: a gw- tracking id on a resume path, a malformed id, a cli
    // outside the enum.
    let (text, meta) = refusal(&client.call("codex_request", resume("gw-1")));
    assert!(
        text.contains("Codex resume needs a real Codex UUID"),
        "{text}"
    );
    assert_eq!(meta["rule"], "plugins.gw", "{meta}");
    let (text, _) = refusal(&client.call("session_get", json!({"sessionId": "gw-123"})));
    assert!(text.contains("expected a UUID v4"), "{text}");
    let (text, _) = refusal(&client.call("session_create", json!({"cli": "cobol"})));
    assert!(text.contains("is not one of"), "{text}");

    // A call all three allow: recorded by session-ids, redacted by redact.
    let created = client.call(
        "session_create",
        json!({"cli": "codex", "description": format!("key {OPENAI_KEY}")}),
    );
    assert_eq!(body(&created)["session"]["description"], "key [REDACTED]");
    let id = body(&created)["session"]["id"].as_str().unwrap().to_owned();
    // A well-formed UUID, so gw-id-check lets it through; session-ids knows better.
    assert_refused_as_record_id(&client.call("codex_request", resume(&id)), &id);
    let fresh = fresh_uuid();
    assert_ran(&client.call("codex_request", resume(&fresh)), &fresh);
    let (status, stderr) = client.finish();
    assert!(status.success(), "{stderr}");
}

#[test]
fn a_result_redact_cannot_finish_in_its_fuel_is_refused_never_leaked() {
    // About 65 instructions a byte for a result with a key in it (the README's table): 3 M
    // cover 20 KB, not 100 KB.
    let mut policy = redact_policy();
    policy["plugins"]["redact"]["fuel"] = json!(3_000_000);
    let mut client = Client::start(&policy.to_string(), &echo());
    client.initialize();
    let prose = "The quick brown fox jumps over the lazy dog. ";
    let small = format!("{}{OPENAI_KEY}", prose.repeat(400));
    let redacted = client.call("echo", json!({"message": small}));
    assert_eq!(redacted["_meta"]["toolgate"]["redactions"], 1, "{redacted}");
    let large = format!("{}{OPENAI_KEY}", prose.repeat(2_500));
    let refused = client.call("echo", json!({"message": large}));
    let (text, meta) = refusal(&refused);
    assert!(text.contains("ran out of fuel"), "{text}");
    assert_eq!(meta["ran"], true, "{meta}");
    assert!(!refused.to_string().contains(OPENAI_KEY), "{refused}");
    // The same size without a key is decided on the raw text, well within the fuel.
    let clean = prose.repeat(2_500);
    let passed = client.call("echo", json!({"message": clean}));
    assert_eq!(passed["content"][0]["text"], clean.as_str());
    let (status, stderr) = client.finish();
    assert!(status.success(), "{stderr}");
}

/// Hostile result hooks through the real binary: an endless loop, a trap, a 2 MiB replacement
/// on every call, and a state flood. The client gets the gateway's refusal each time (never
/// the upstream's result), the gateway keeps serving, and its resident memory stays flat.
#[test]
fn hostile_result_hooks_get_the_gateways_error_and_the_gateway_stays_bounded() {
    use crate::support::rss_kib;
    for (config, cause, calls) in [("loop", "", 40), ("trap", "trap", 200), ("huge", "", 300)] {
        let policy = json!({"version": "1", "default": "deny",
            "plugins": {"hostile": {"path": crate::plugins::plugin_path("hostile/results"),
                "grants": ["state", "log"], "fuel": 20_000_000, "timeout_ms": 100}},
            "tools": {"echo": {"use": [{"plugin": "hostile", "config": config}]}}});
        let mut client = Client::start_with(&policy.to_string(), &echo(), &[]);
        client.initialize();
        let (mut early, mut late) = (u64::MAX, u64::MAX);
        for i in 0..calls {
            let result = client.call("echo", json!({"message": "sk-secret-result"}));
            let (text, meta) = refusal(&result);
            assert!(text.contains("plugin `hostile`"), "{config}: {text}");
            assert!(text.contains(cause), "{config}: {text}");
            assert_eq!(meta["ran"], true, "{config}: {result}");
            assert!(
                !result.to_string().contains("sk-secret-result"),
                "{config}: {result}"
            );
            if (calls / 10..calls / 10 + 10).contains(&i) {
                early = early.min(rss_kib(client.child.id()));
            }
            if (calls - 10..calls).contains(&i) {
                late = late.min(rss_kib(client.child.id()));
            }
        }
        // Still serving: a listing goes through.
        let listed = client.request("tools/list", json!({}));
        assert!(listed["result"]["tools"].is_array(), "{config}: {listed}");
        let grown = late.saturating_sub(early);
        assert!(
            grown < 16 * 1024,
            "{config}: resident memory grew by {grown} KiB"
        );
        let (status, _) = client.finish();
        assert!(status.success());
    }
    // A state flood: past its bounds every `set` is refused, and the plugin is told so.
    let policy = json!({"version": "1", "default": "deny",
        "plugins": {"hostile": {"path": crate::plugins::plugin_path("hostile/results"),
            "grants": ["state"], "state": {"max_entries": 5, "max_bytes": 65536}}},
        "tools": {"echo": {"use": [{"plugin": "hostile", "config": "flood"}]}}});
    let mut client = Client::start_with(&policy.to_string(), &echo(), &[]);
    client.initialize();
    let (text, _) = refusal(&client.call("echo", json!({"message": "x"})));
    assert!(text.contains("refused 55"), "{text}");
    assert!(text.contains("max_entries"), "{text}");
    let (status, _) = client.finish();
    assert!(status.success());
}

/// `toolgate eval --result`: the result hooks run on the given result of an allowed call, and
/// eval prints what the client would get (`--exit-code` fails on a refused one).
#[test]
fn eval_runs_the_result_hooks_on_a_given_result() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, redact_policy().to_string()).unwrap();
    let key = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789";
    let result = json!({"content": [{"type": "text", "text": format!("the key is {key}")}]});
    let out = std::process::Command::new(crate::support::TOOLGATE)
        .args(["eval", "--policy"])
        .arg(&policy)
        .args(["--call", r#"{"tool": "echo", "args": {}}"#, "--result"])
        .arg(result.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("result: "))
        .unwrap_or_else(|| panic!("no result line: {stdout}"));
    assert!(line.starts_with("result: replace: "), "{line}");
    assert!(!line.contains(key), "{line}");
    assert!(
        stdout.contains("after-call"),
        "the hook's step is traced: {stdout}"
    );
}
