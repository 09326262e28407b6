//! The reference rules in front of the LLM CLI Gateway stand-in.

use crate::support::{body, echo, refusal, standin, Client};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;
use std::time::Duration;
use toolgate::clock::ManualClock;
use toolgate::counters::MemoryCounterStore;
use toolgate::policy::Policy;
use toolgate::session::{Identity, Session};
use toolgate::stdio::{serve, Ending, StdioLimits};

const SEED: &str = include_str!("../../examples/seed/policy.json");
const EXAMPLE: &str = include_str!("../../examples/llm-cli-gateway/policy.json");
const CATALOGUE: &str = include_str!("../../standin/fixtures/llm-cli-gateway-2.10.0.tools.json");

fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 36
        && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
        && b[14] == b'4'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
        && s.chars()
            .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c))
}

#[test]
fn seed_rule_over_real_processes_30_pass_and_the_31st_is_limited() {
    let mut client = Client::start(SEED, &standin());
    client.initialize();
    let listed = client.request("tools/list", json!({}));
    let names: Vec<&str> = listed["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["session_create"],
        "default deny lists only the named tool"
    );
    for i in 0..30 {
        let result = client.call(
            "session_create",
            json!({"cli": "codex", "description": format!("n{i}")}),
        );
        assert!(result.get("isError").is_none(), "call {i}: {result}");
        let record = body(&result);
        assert!(
            is_uuid_v4(record["session"]["id"].as_str().unwrap()),
            "{record}"
        );
    }
    let limited = client.call("session_create", json!({"cli": "codex"}));
    let (text, meta) = refusal(&limited);
    assert!(
        text.starts_with(
            "[toolgate] rate_limited: counter session_create_rate allows 30 per minute; retry in "
        ),
        "{text}"
    );
    assert_eq!(meta["decision"], "rate_limited");
    assert_eq!(meta["rule"], "tools.session_create");
    let retry = meta["retry_after_ms"].as_u64().unwrap();
    assert!(retry > 0 && retry <= 60_000, "{retry}");
    let (status, _) = client.finish();
    assert!(status.success());
}

/// A pipe pair, as `(reader, writer)`.
fn pipe() -> (std::io::PipeReader, std::io::PipeWriter) {
    std::io::pipe().unwrap()
}

/// The client's side of a gateway served in-process on pipes.
struct PipeClient {
    to_gateway: std::io::PipeWriter,
    replies: std::io::Lines<BufReader<std::io::PipeReader>>,
    gateway: std::thread::JoinHandle<Ending>,
}

impl PipeClient {
    /// Serves `policy` (on `clock`) in-process, in front of `upstream`, which gets the
    /// upstream's ends of the pipes: what the gateway sends it, and where it answers.
    fn start(
        policy: &str,
        clock: Arc<ManualClock>,
        upstream: impl FnOnce(std::io::PipeReader, std::io::PipeWriter) + Send + 'static,
    ) -> Self {
        let session = Arc::new(Session::new(
            Arc::new(Policy::from_json(policy, "policy.json").unwrap()),
            Arc::new(MemoryCounterStore::new(clock)),
            Identity {
                grant: "g1".into(),
                session: "s1".into(),
            },
        ));
        let (client_in_r, to_gateway) = pipe();
        let (client_out_r, client_out_w) = pipe();
        let (up_in_r, up_in_w) = pipe();
        let (up_out_r, up_out_w) = pipe();
        std::thread::spawn(move || upstream(up_in_r, up_out_w));
        let gateway = std::thread::spawn(move || {
            serve(
                session,
                client_in_r,
                client_out_w,
                up_out_r,
                up_in_w,
                &StdioLimits::default(),
            )
        });
        Self {
            to_gateway,
            replies: BufReader::new(client_out_r).lines(),
            gateway,
        }
    }

    fn send(&mut self, line: &str) {
        writeln!(self.to_gateway, "{line}").unwrap();
    }

    fn next(&mut self) -> Value {
        serde_json::from_str(&self.replies.next().unwrap().unwrap()).unwrap()
    }

    /// Closes the gateway's stdin and returns how it ended.
    fn close(self) -> Ending {
        drop(self.to_gateway);
        self.gateway.join().unwrap()
    }
}

#[test]
fn seed_rule_on_a_fake_clock_frees_up_exactly_when_the_window_slides() {
    let clock = ManualClock::starting_at(1_700_000_000_000);
    let mut client = PipeClient::start(SEED, clock.clone(), |from_gateway, to_gateway| {
        let _ = toolgate_standin::llm_cli_gateway::serve(BufReader::new(from_gateway), to_gateway);
    });
    let mut call = |id: u64| -> Value {
        client.send(&format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"session_create","arguments":{{"cli":"claude"}}}}}}"#));
        let reply = client.next();
        assert_eq!(reply["id"], id);
        reply["result"].clone()
    };
    for id in 0..30 {
        assert!(call(id).get("isError").is_none());
        clock.advance(Duration::from_secs(1)); // calls at +0 s .. +29 s
    }
    let limited = call(30);
    assert_eq!(
        limited["_meta"]["toolgate"]["retry_after_ms"], 30_000,
        "the +0 s unit leaves at +60 s; now is +30 s"
    );
    clock.advance(Duration::from_millis(29_999));
    assert_eq!(call(31)["_meta"]["toolgate"]["retry_after_ms"], 1);
    clock.advance(Duration::from_millis(1));
    assert!(
        call(32).get("isError").is_none(),
        "the window slid: one unit is free"
    );
    assert_eq!(
        call(33)["_meta"]["toolgate"]["decision"],
        "rate_limited",
        "and only one"
    );
    assert_eq!(
        client.close(),
        Ending::ClientClosed {
            upstream_exited: true
        }
    );
}

#[test]
fn example_policy_enforces_the_reference_rules() {
    let mut client = Client::start(EXAMPLE, &standin());
    client.initialize();

    // tools/list: the hidden tools are gone and every other tool is exactly what the upstream sent.
    let upstream: Value = serde_json::from_str(CATALOGUE).unwrap();
    let listed = client.request("tools/list", json!({}))["result"]["tools"].clone();
    let expected: Vec<&Value> = upstream["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| !["session_clear_all", "cli_upgrade"].contains(&t["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        listed.as_array().unwrap().iter().collect::<Vec<_>>(),
        expected
    );
    assert_eq!(expected.len(), 44);

    // A request tool mints a gw- tracking id; Codex resume with it is refused before the upstream.
    let minted = body(&client.call("claude_request", json!({"prompt": "hi"})));
    let gw = minted["sessionId"].as_str().unwrap().to_owned();
    assert!(gw.starts_with("gw-") && is_uuid_v4(&gw[3..]), "{gw}");
    for tool in ["codex_request", "codex_request_async", "codex_fork_session"] {
        let refused = client.call(tool, json!({"prompt": "resume", "sessionId": gw}));
        let (text, meta) = refusal(&refused);
        assert!(
            text.contains("Codex resume needs a real Codex UUID"),
            "{tool}: {text}"
        );
        assert_eq!(
            (meta["decision"].as_str(), meta["rule"].as_str()),
            (Some("deny"), Some("tools.codex_*"))
        );
    }
    let real = client.call(
        "codex_request",
        json!({"prompt": "resume", "sessionId": "0b6f8a52-6c1e-4d0b-9f3e-2a7c9d1e5b40"}),
    );
    assert!(real.get("isError").is_none(), "{real}");

    // session_create: the cli enum, which the server's own inputSchema already states (so the
    // gateway refuses it from the listing, before the policy and its counter), and the
    // description length.
    let (text, meta) = refusal(&client.call("session_create", json!({"cli": "vim"})));
    assert!(
        text.contains("do not match the tool's inputSchema at `/cli`"),
        "{text}"
    );
    assert_eq!(meta["rule"], "inputSchema");
    let long = "x".repeat(201);
    let (text, _) = refusal(&client.call(
        "session_create",
        json!({"cli": "claude", "description": long}),
    ));
    assert!(
        text.contains("denied because `args.description` regex"),
        "{text}"
    );
    assert!(client
        .call(
            "session_create",
            json!({"cli": "claude", "description": "x".repeat(200)})
        )
        .get("isError")
        .is_none());

    // A hidden tool and a tool that does not exist get the very same answer.
    let hidden = client.call("session_clear_all", json!({}));
    let missing = client.call("no_such_tool", json!({}));
    assert_eq!(hidden, missing);
    assert_eq!(refusal(&hidden).0, "[toolgate] deny: unknown tool");

    let (text, meta) = refusal(&client.call("session_delete", json!({"sessionId": "x"})));
    assert!(text.starts_with("[toolgate] require_approval: "), "{text}");
    assert_eq!(meta["decision"], "require_approval");
    assert!(client.finish().0.success());
}

#[test]
fn an_error_that_may_follow_a_run_keeps_the_unit_and_so_does_a_result() {
    let policy = r#"{"version": "1", "default": "allow", "tools": {
        "fail": {"rate_limit": {"max": 1, "window": "hour"}},
        "echo": {"rate_limit": {"max": 1, "window": "hour"}}}}"#;
    let mut client = Client::start(policy, &echo());
    client.initialize();
    // -32603 does not say the tool did not run: the unit stays spent (only -32700, -32600,
    // -32601 and -32602 refund; see tests/e2e/integrity.rs and the session's unit tests).
    let reply = client.request("tools/call", json!({"name": "fail", "arguments": {}}));
    assert_eq!(reply["error"]["code"], -32603, "{reply}");
    let (text, _) = refusal(&client.call("fail", json!({})));
    assert!(text.starts_with("[toolgate] rate_limited"), "{text}");
    assert_eq!(
        client.call("echo", json!({"message": "one"}))["content"][0]["text"],
        "one"
    );
    let (text, _) = refusal(&client.call("echo", json!({"message": "two"})));
    assert!(text.starts_with("[toolgate] rate_limited"), "{text}");
}

#[test]
fn ids_unknown_methods_and_fields_pass_unchanged() {
    let mut client = Client::start(EXAMPLE, &standin());
    client.initialize();
    client.send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":\"str-id\",\"method\":\"vendor/unknown\",\"params\":{\"x\":1}}\n");
    let reply = client.reply_to(&json!("str-id"));
    assert_eq!(
        reply["error"]["code"], -32601,
        "the upstream's own answer: {reply}"
    );
    // Unknown fields on an allowed call reach the upstream (it echoes nothing, so check the result shape).
    let reply = client.request("tools/call", json!({"name": "session_list", "arguments": {}, "_meta": {"progressToken": 7}, "x-extra": true}));
    assert_eq!(body(&reply["result"])["success"], true);
}

#[test]
fn replies_out_of_order_are_matched_by_id() {
    let policy = r#"{"version": "1", "default": "allow", "hide": ["secret"],
        "tools": {"echo": {"rate_limit": {"max": 1, "window": "hour"}}}}"#;
    // An upstream that reads two requests, then answers the second one first.
    let upstream = |from_gateway, mut to_gateway: std::io::PipeWriter| {
        let mut requests = BufReader::new(from_gateway).lines();
        let first: Value = serde_json::from_str(&requests.next().unwrap().unwrap()).unwrap();
        let second: Value = serde_json::from_str(&requests.next().unwrap().unwrap()).unwrap();
        assert_eq!(
            (first["method"].as_str(), second["method"].as_str()),
            (Some("tools/list"), Some("tools/call"))
        );
        // Under the ids the gateway gave them, which are not the client's.
        let (a, b) = (&first["id"], &second["id"]);
        assert!(a.is_u64() && b.is_u64() && a != b, "{a} {b}");
        writeln!(
            to_gateway,
            r#"{{"jsonrpc":"2.0","id":{b},"error":{{"code":-32602,"message":"busy"}}}}"#
        )
        .unwrap();
        writeln!(to_gateway, r#"{{"jsonrpc":"2.0","id":{a},"result":{{"tools":[{{"name":"secret"}},{{"name":"echo","x-extra":1}}]}}}}"#).unwrap();
        for line in requests {
            let request: Value = serde_json::from_str(&line.unwrap()).unwrap();
            let reply = json!({"jsonrpc": "2.0", "id": request["id"], "result": {"content": [{"type": "text", "text": "ran"}]}});
            writeln!(to_gateway, "{reply}").unwrap();
        }
    };
    let mut client = PipeClient::start(policy, ManualClock::starting_at(0), upstream);
    client.send(r#"{"jsonrpc":"2.0","id":"a","method":"tools/list"}"#);
    client.send(r#"{"jsonrpc":"2.0","id":"b","method":"tools/call","params":{"name":"echo"}}"#);
    let b = client.next();
    assert_eq!(
        (b["id"].as_str(), b["error"]["code"].as_i64()),
        (Some("b"), Some(-32602))
    );
    let a = client.next();
    assert_eq!(a["id"], "a");
    assert_eq!(
        a["result"]["tools"],
        json!([{"name": "echo", "x-extra": 1}]),
        "the list reply was recognised and filtered"
    );
    // -32602 (not executed) refunded echo's unit, so with max 1 the next call still goes through.
    client.send(r#"{"jsonrpc":"2.0","id":"c","method":"tools/call","params":{"name":"echo"}}"#);
    assert_eq!(client.next()["result"]["content"][0]["text"], "ran");
    client.send(r#"{"jsonrpc":"2.0","id":"d","method":"tools/call","params":{"name":"echo"}}"#);
    assert_eq!(
        client.next()["result"]["_meta"]["toolgate"]["decision"],
        "rate_limited"
    );
    assert!(matches!(client.close(), Ending::ClientClosed { .. }));
}
