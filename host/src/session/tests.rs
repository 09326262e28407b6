//! The session core on its own: bytes in, forwarded bytes or the gateway's answer out.

use super::*;
use crate::clock::ManualClock;
use crate::counters::MemoryCounterStore;
use serde_json::json;
use std::time::Duration;

const POLICY: &str = r#"{"version":"1","default":"deny","hide":["secret"],
  "tools":{"create":{"limits":[{"counter":"c","window":"minute","max":1,"scope":"grant"}]},
           "echo":{}}}"#;

fn session() -> Session {
    Session::new(
        Arc::new(Policy::from_json(POLICY, "policy.json").unwrap()),
        Arc::new(MemoryCounterStore::new(ManualClock::starting_at(0))),
        Identity {
            grant: "g".into(),
            session: "s".into(),
        },
    )
}

/// The bytes a client line sends upstream, and the gateway's id for it.
fn forwarded(session: &Session, line: &str) -> (Value, Option<u64>) {
    match session.from_client(line.as_bytes()) {
        ClientLine::Forward(f) => (serde_json::from_slice(&f.line).unwrap(), f.upstream_id),
        other => panic!("{line} was not forwarded: {other:?}"),
    }
}

fn answered(session: &Session, line: &str) -> Value {
    match session.from_client(line.as_bytes()) {
        ClientLine::Answer(reply) => serde_json::from_slice(&reply).unwrap(),
        other => panic!("{line} was not answered: {other:?}"),
    }
}

fn upstream(session: &Session, line: &str) -> Option<String> {
    session
        .from_upstream(line.as_bytes())
        .map(|out| String::from_utf8(out.into_owned()).unwrap())
}

fn call(id: &str, tool: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{{}}}}}}"#
    )
}

#[test]
fn requests_go_up_under_the_gateways_id_and_come_back_under_the_clients_as_written() {
    let s = session();
    for client_id in [
        r#""a\u0062""#,
        "7",
        "-3",
        "123456789012345678901234567890",
        r#""""#,
    ] {
        let (sent, id) = forwarded(
            &s,
            &format!(r#"{{"jsonrpc":"2.0","id":{client_id},"method":"ping"}}"#),
        );
        let id = id.unwrap();
        assert_eq!(sent["id"], json!(id));
        let back = upstream(
            &s,
            &format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{}}}}"#),
        )
        .unwrap();
        assert_eq!(
            back,
            format!(r#"{{"jsonrpc":"2.0","id":{client_id},"result":{{}}}}"#)
        );
    }
    // A JavaScript upstream respelling the gateway's id still finds it.
    let (_, id) = forwarded(&s, r#"{"jsonrpc":"2.0","id":"x","method":"ping"}"#);
    let back = upstream(
        &s,
        &format!(
            r#"{{"jsonrpc":"2.0","id":{}.0,"result":{{}}}}"#,
            id.unwrap()
        ),
    );
    assert!(back.unwrap().contains(r#""id":"x""#));
    assert_eq!(s.pending_requests(), 0);
}

#[test]
fn every_request_is_decided_and_odd_ids_are_refused() {
    let s = session();
    for id in ["null", "1.0", "1e0", "true", "{}", "[1]"] {
        let reply = answered(&s, &call(id, "create"));
        assert_eq!(reply["error"]["code"], -32600, "id {id}");
        let reply = answered(
            &s,
            &format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#),
        );
        assert_eq!(reply["error"]["code"], -32600, "id {id}");
    }
    let notification = r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"create"}}"#;
    assert_eq!(s.from_client(notification.as_bytes()), ClientLine::Drop);
    // None of it cost the one unit.
    let (_, id) = forwarded(&s, &call("1", "create"));
    assert!(id.is_some());
}

#[test]
fn a_pending_id_cannot_be_reused() {
    let s = session();
    let (_, id) = forwarded(&s, r#"{"jsonrpc":"2.0","id":5,"method":"tools/list"}"#);
    assert_eq!(
        answered(&s, r#"{"jsonrpc":"2.0","id":5,"method":"ping"}"#)["error"]["code"],
        -32600
    );
    // Spelled another way, the same id.
    assert_eq!(answered(&s, &call("5", "echo"))["error"]["code"], -32600);
    upstream(
        &s,
        &format!(
            r#"{{"jsonrpc":"2.0","id":{},"result":{{"tools":[]}}}}"#,
            id.unwrap()
        ),
    )
    .unwrap();
    forwarded(&s, r#"{"jsonrpc":"2.0","id":5,"method":"ping"}"#);
}

#[test]
fn keys_that_some_stack_reads_as_one_are_refused() {
    let s = session();
    for line in [
        r#"{"jsonrpc":"2.0","id":1,"method":"ping","Method":"tools/call"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","Name":"secret"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"a":1,"A":2}}}"#,
    ] {
        assert_eq!(answered(&s, line)["error"]["code"], -32600, "{line}");
    }
    assert_eq!(s.pending_requests(), 0);
}

#[rstest::rstest]
#[case::parse_error(-32700, true)]
#[case::invalid_request(-32600, true)]
#[case::method_not_found(-32601, true)]
#[case::invalid_params(-32602, true)]
#[case::internal_error(-32603, false)]
#[case::server_error(-32000, false)]
fn only_not_executed_errors_refund(#[case] code: i64, #[case] refunded: bool) {
    let s = session();
    let (_, id) = forwarded(&s, &call("1", "create"));
    let error = format!(
        r#"{{"jsonrpc":"2.0","id":{},"error":{{"code":{code},"message":"x"}}}}"#,
        id.unwrap()
    );
    assert!(upstream(&s, &error).unwrap().contains(r#""id":1"#));
    match s.from_client(call("2", "create").as_bytes()) {
        ClientLine::Forward(_) => assert!(refunded, "{code} refunded"),
        ClientLine::Answer(reply) => {
            assert!(!refunded, "{code} not refunded");
            assert!(String::from_utf8(reply).unwrap().contains("rate_limited"));
        }
        ClientLine::Drop => panic!("dropped"),
    }
}

#[test]
fn lost_and_late_requests_keep_their_units() {
    let s = session();
    let (_, id) = forwarded(&s, &call("1", "create"));
    let expired = s.expire(Duration::ZERO);
    assert_eq!(expired.len(), 1);
    assert!(String::from_utf8_lossy(&expired[0]).contains(r#""id":1"#));
    // The late reply reaches nobody; the unit stays spent.
    assert_eq!(
        upstream(
            &s,
            &format!(
                r#"{{"jsonrpc":"2.0","id":{},"error":{{"code":-32601,"message":"x"}}}}"#,
                id.unwrap()
            )
        ),
        None
    );
    assert!(matches!(
        s.from_client(call("2", "create").as_bytes()),
        ClientLine::Answer(_)
    ));

    let s = session();
    forwarded(&s, &call("1", "create"));
    assert_eq!(s.upstream_gone("gone").len(), 1);
    assert!(matches!(
        s.from_client(call("2", "create").as_bytes()),
        ClientLine::Answer(_)
    ));

    // Not written at all: the unit comes back.
    let s = session();
    let (_, id) = forwarded(&s, &call("1", "create"));
    assert!(s.abandon(id.unwrap(), false, "no").is_some());
    forwarded(&s, &call("2", "create"));
}

#[test]
fn every_tool_list_is_filtered_and_an_unreadable_one_never_passes() {
    let s = session();
    let list = |id: u64, tools: &str| {
        format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{"tools":{tools}}}}}"#)
    };
    let (_, id) = forwarded(&s, r#"{"jsonrpc":"2.0","id":"l","method":"tools/list"}"#);
    let out = upstream(
        &s,
        &list(id.unwrap(), r#"[{"name":"echo"},{"name":"secret"}]"#),
    )
    .unwrap();
    let out: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(out["id"], "l");
    assert_eq!(out["result"]["tools"], json!([{"name": "echo"}]));

    // A list in the reply to another request (a ping) is filtered all the same.
    let (_, id) = forwarded(&s, r#"{"jsonrpc":"2.0","id":"p","method":"ping"}"#);
    let out = upstream(&s, &list(id.unwrap(), r#"[{"name":"secret"}]"#)).unwrap();
    assert!(!out.contains("secret"), "{out}");

    // A lone surrogate, a key that reads as `tools`: an error, not the list.
    for body in [
        r#"{"tools":[{"name":"secret\ud800"}]}"#,
        r#"{"Tools":[{"name":"secret"}]}"#,
        r#"{"tools":[],"tools":[{"name":"secret"}]}"#,
        r#"{"t\u006fols":[{"name":"secret"}]}"#,
    ] {
        let (_, id) = forwarded(&s, r#"{"jsonrpc":"2.0","id":"q","method":"tools/list"}"#);
        let out = upstream(
            &s,
            &format!(
                r#"{{"jsonrpc":"2.0","id":{},"result":{body}}}"#,
                id.unwrap()
            ),
        )
        .unwrap();
        assert!(
            !out.contains("secret") || out.contains("\"error\""),
            "{body}: {out}"
        );
        if !body.starts_with(r#"{"t\u006f"#) {
            assert!(out.contains("-32603"), "{body}: {out}");
        }
    }
    // A reply to nothing pending (replayed, say) is dropped.
    assert_eq!(upstream(&s, &list(999, r#"[{"name":"secret"}]"#)), None);
}

#[test]
fn server_requests_are_renumbered_both_ways() {
    let s = session();
    let out = upstream(
        &s,
        r#"{"jsonrpc":"2.0","id":"srv-1","method":"roots/list"}"#,
    )
    .unwrap();
    let ours = serde_json::from_str::<Value>(&out).unwrap()["id"]
        .as_u64()
        .unwrap();
    let (sent, _) = forwarded(
        &s,
        &format!(r#"{{"jsonrpc":"2.0","id":{ours},"result":{{"roots":[]}}}}"#),
    );
    assert_eq!(sent["id"], "srv-1");
    // Replying twice, or to an id the server never used, reaches nobody.
    let again = format!(r#"{{"jsonrpc":"2.0","id":{ours},"result":{{}}}}"#);
    assert_eq!(s.from_client(again.as_bytes()), ClientLine::Drop);
}

#[test]
fn a_cancellation_names_the_gateways_id_and_the_late_reply_is_dropped() {
    let s = session();
    let (_, id) = forwarded(&s, r#"{"jsonrpc":"2.0","id":"l","method":"tools/list"}"#);
    let (sent, _) = forwarded(
        &s,
        r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"l"}}"#,
    );
    assert_eq!(sent["params"]["requestId"], json!(id.unwrap()));
    let late = format!(
        r#"{{"jsonrpc":"2.0","id":{},"result":{{"tools":[{{"name":"secret"}}]}}}}"#,
        id.unwrap()
    );
    assert_eq!(upstream(&s, &late), None);
    // Cancelling what is not pending sends nothing.
    let stray =
        r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"zz"}}"#;
    assert_eq!(s.from_client(stray.as_bytes()), ClientLine::Drop);
}

#[test]
fn arguments_are_checked_against_the_advertised_schema_before_a_unit_is_spent() {
    let s = session();
    let (_, id) = forwarded(&s, r#"{"jsonrpc":"2.0","id":"l","method":"tools/list"}"#);
    let tools = json!([{"name": "create", "inputSchema": {"type": "object",
        "properties": {"cli": {"enum": ["claude", "codex"]}}, "required": ["cli"],
        "additionalProperties": false}}]);
    upstream(
        &s,
        &json!({"jsonrpc": "2.0", "id": id.unwrap(), "result": {"tools": tools}}).to_string(),
    )
    .unwrap();
    for args in [
        json!({"cli": "bogus"}),
        json!({}),
        json!({"cli": "claude", "x": 1}),
    ] {
        let line = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "create", "arguments": args}})
        .to_string();
        let reply = answered(&s, &line);
        assert_eq!(
            reply["result"]["_meta"]["toolgate"]["rule"], "inputSchema",
            "{args}"
        );
    }
    let good = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "create", "arguments": {"cli": "codex"}}})
    .to_string();
    forwarded(&s, &good); // the one unit was still there

    // Switched off for the tool: the policy alone decides.
    let s = session().with_schema_checks(SchemaChecks::skipping(["create".to_string()]));
    let (_, id) = forwarded(&s, r#"{"jsonrpc":"2.0","id":"l","method":"tools/list"}"#);
    upstream(
        &s,
        &json!({"jsonrpc": "2.0", "id": id.unwrap(), "result": {"tools": tools}}).to_string(),
    )
    .unwrap();
    let bogus = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "create", "arguments": {"cli": "bogus"}}})
    .to_string();
    forwarded(&s, &bogus);
}

/// What a test upstream does with a request it was sent.
#[derive(Clone, Debug)]
enum Fate {
    /// Runs it and answers with a result.
    Result,
    /// Answers with this JSON-RPC error code (runs it unless the code means "not executed").
    Error(i64),
}

#[derive(Clone, Debug)]
enum Step {
    /// The client calls `create` under one of a few ids (so ids get reused).
    Call(u8),
    /// The upstream answers the n-th call in flight.
    Answer(usize, Fate),
    /// Every call in flight times out (the upstream runs them anyway).
    Expire,
    /// The upstream crashes with the calls in flight run; the next session shares counters.
    Crash,
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    let fate = prop_oneof![
        Just(Fate::Result),
        proptest::sample::select(vec![-32700, -32600, -32601, -32602, -32603, -32000, 1])
            .prop_map(Fate::Error),
    ];
    prop_oneof![
        6 => (0u8..4).prop_map(Step::Call),
        6 => (0usize..8, fate).prop_map(|(n, f)| Step::Answer(n, f)),
        1 => Just(Step::Expire),
        1 => Just(Step::Crash),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
    /// A cap of 30 admits exactly 30 executions, whatever mix of id reuse, errors, timeouts
    /// and upstream crashes the client arranges: never more, and no unit is lost.
    #[test]
    fn a_cap_of_30_admits_exactly_30(steps in proptest::collection::vec(step(), 1..300)) {
        let policy = r#"{"version":"1","default":"deny","tools":{"create":
            {"limits":[{"counter":"c","window":"hour","max":30,"scope":"grant"}]}}}"#;
        let policy = Arc::new(Policy::from_json(policy, "p.json").unwrap());
        let counters: Arc<dyn CounterStore> =
            Arc::new(MemoryCounterStore::new(ManualClock::starting_at(0)));
        let open = || Session::new(policy.clone(), counters.clone(), Identity {
            grant: "g".into(), session: "s".into() });
        let mut session = open();
        let mut in_flight: Vec<u64> = Vec::new();
        let mut ran = 0usize;
        for step in steps {
            match step {
                Step::Call(id) => {
                    if let ClientLine::Forward(f) = session.from_client(call(&id.to_string(), "create").as_bytes()) {
                        in_flight.push(f.upstream_id.unwrap());
                    }
                }
                Step::Answer(n, fate) if !in_flight.is_empty() => {
                    let id = in_flight.remove(n % in_flight.len());
                    let line = match fate {
                        Fate::Result => {
                            ran += 1;
                            format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{"content":[]}}}}"#)
                        }
                        Fate::Error(code) => {
                            if !jsonrpc::not_executed(code) {
                                ran += 1;
                            }
                            format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":{code},"message":"x"}}}}"#)
                        }
                    };
                    session.from_upstream(line.as_bytes());
                }
                Step::Answer(..) => {}
                Step::Expire => {
                    ran += in_flight.len();
                    in_flight.clear();
                    session.expire(Duration::ZERO);
                }
                Step::Crash => {
                    ran += in_flight.len();
                    in_flight.clear();
                    session.upstream_gone("crash");
                    session = open();
                }
            }
            proptest::prop_assert!(ran + in_flight.len() <= 30, "ran {} + in flight {}", ran, in_flight.len());
        }
        // Whatever happened, exactly the units not spent on a (possible) execution are left.
        ran += in_flight.len();
        session.expire(Duration::ZERO);
        let mut more = 0;
        for i in 0..40 {
            if let ClientLine::Forward(f) = session.from_client(call(&format!("\"m{i}\""), "create").as_bytes()) {
                more += 1;
                let id = f.upstream_id.unwrap();
                session.from_upstream(format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{}}}}"#).as_bytes());
            }
        }
        proptest::prop_assert_eq!(ran + more, 30);
    }
}

#[test]
fn a_lone_key_in_another_case_is_refused_where_a_server_would_read_it() {
    let policy = r#"{"version":"1","default":"allow","tools":{"codex":{"deny_if":[
        {"path":"args.session.id","op":"starts_with","value":"gw-"}]}}}"#;
    let s = Session::new(
        Arc::new(Policy::from_json(policy, "p.json").unwrap()),
        Arc::new(MemoryCounterStore::new(ManualClock::starting_at(0))),
        Identity {
            grant: "g".into(),
            session: "s".into(),
        },
    );
    for line in [
        // The envelope: `Method`, `ID`, `Params` alone are members to Go, unknown to serde.
        r#"{"jsonrpc":"2.0","id":1,"Method":"tools/call","params":{"name":"codex"}}"#,
        r#"{"jsonrpc":"2.0","method":"nope","ID":1}"#,
        r#"{"jsonrpc":"2.0","id":1,"result":{},"Method":"tools/call"}"#,
        // The params of a call.
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"codex","Arguments":{}}}"#,
        // An argument key the policy reads, spelled another way, at its depth.
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"codex","arguments":{"Session":{"id":"gw-1"}}}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"codex","arguments":{"session":{"ID":"gw-1"}}}}"#,
    ] {
        assert_eq!(answered(&s, line)["error"]["code"], -32600, "{line}");
    }
    // Keys the policy does not read, in any case, and the exact spelling, pass.
    forwarded(
        &s,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"codex","arguments":{"Prompt":"x","session":{"id":"ok"}}}}"#,
    );
}

#[test]
fn an_upstream_message_some_client_would_read_otherwise_is_not_forwarded() {
    let s = session();
    let (_, id) = forwarded(&s, r#"{"jsonrpc":"2.0","id":"l","method":"tools/list"}"#);
    let id = id.unwrap();
    let out = upstream(
        &s,
        &format!(r#"{{"jsonrpc":"2.0","id":{id},"Result":{{"tools":[{{"name":"secret"}}]}}}}"#),
    )
    .unwrap();
    assert!(
        out.contains("-32603") && out.contains(r#""id":"l""#),
        "{out}"
    );
    // Not UTF-8 in a member the session skips: an error for the request, not the bytes.
    let (_, id) = forwarded(&s, r#"{"jsonrpc":"2.0","id":"m","method":"ping"}"#);
    let mut line = format!(
        r#"{{"jsonrpc":"2.0","id":{},"result":{{}},"x":""#,
        id.unwrap()
    )
    .into_bytes();
    line.extend_from_slice(b"\xff\"}");
    let out = s.from_upstream(&line).unwrap();
    assert!(std::str::from_utf8(&out).unwrap().contains("UTF-8"));
    // A listed tool with `Name` beside `name` is not kept.
    let (_, id) = forwarded(&s, r#"{"jsonrpc":"2.0","id":"n","method":"tools/list"}"#);
    let out = upstream(
        &s,
        &format!(r#"{{"jsonrpc":"2.0","id":{},"result":{{"tools":[{{"name":"echo","Name":"secret"}},{{"name":"echo"}}]}}}}"#, id.unwrap()),
    )
    .unwrap();
    let out: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(out["result"]["tools"], json!([{"name": "echo"}]));
}
