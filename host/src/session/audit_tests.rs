//! The decision log as the session writes it: exactly one decision event per decided call,
//! exactly one outcome event per forwarded call, with the right fields.

use super::*;
use crate::audit::{DecisionEvent, Fate, Observer, OutcomeEvent};
use crate::clock::ManualClock;
use crate::counters::MemoryCounterStore;
use serde_json::json;
use std::time::Duration;

#[derive(Default)]
struct Recorder {
    decisions: Mutex<Vec<DecisionEvent>>,
    outcomes: Mutex<Vec<OutcomeEvent>>,
    shadows: Mutex<Vec<crate::audit::ShadowEvent>>,
    approvals: Mutex<Vec<crate::audit::ApprovalEvent>>,
}

impl Observer for Recorder {
    fn decision(&self, facts: &Arc<crate::audit::DecisionFacts>) {
        self.decisions.lock().unwrap().push(facts.event());
    }
    fn outcome(&self, facts: &Arc<crate::audit::OutcomeFacts>) {
        self.outcomes.lock().unwrap().push(facts.event());
    }
    fn shadow(&self, event: &crate::audit::ShadowEvent) {
        self.shadows.lock().unwrap().push(event.clone());
    }
    fn approval(&self, event: &crate::audit::ApprovalEvent) {
        self.approvals.lock().unwrap().push(event.clone());
    }
}

impl Recorder {
    fn decisions(&self) -> Vec<DecisionEvent> {
        std::mem::take(&mut *self.decisions.lock().unwrap())
    }
    fn outcomes(&self) -> Vec<OutcomeEvent> {
        std::mem::take(&mut *self.outcomes.lock().unwrap())
    }
}

const POLICY: &str = r#"{"version":"1","name":"audited","default":"deny","hide":["secret"],
  "tools":{"create":{"limits":[{"counter":"c","window":"minute","max":1,"scope":"grant"}]},
           "echo":{"log_args":{"erase":["/apiKey"],"mask":["/token"]}},
           "quiet":{}}}"#;

fn session() -> (Session, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let session = Session::new(
        Arc::new(Policy::from_json(POLICY, "policy.json").unwrap()),
        Arc::new(MemoryCounterStore::new(ManualClock::starting_at(0))),
        Identity {
            grant: "g".into(),
            session: "s".into(),
        },
    )
    .with_audit(Some(Audit::new(recorder.clone(), "stdio")));
    (session, recorder)
}

fn call(id: u64, tool: &str, args: Value) -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": tool, "arguments": args}})
    .to_string()
    .into_bytes()
}

/// Sends a call; the gateway's id if it was forwarded.
fn send(session: &Session, line: &[u8]) -> Option<u64> {
    match session.from_client(line) {
        ClientLine::Forward(f) => f.upstream_id,
        _ => None,
    }
}

fn one(events: Vec<DecisionEvent>) -> DecisionEvent {
    assert_eq!(events.len(), 1, "{events:#?}");
    events.into_iter().next().unwrap()
}

#[test]
fn every_decision_path_writes_exactly_one_event_with_its_verdict_and_rule() {
    let (s, log) = session();
    let cases: [(&[u8], &str, &str, &str); 5] = [
        (&call(1, "create", json!({})), "allow", "tools.create", "create"),
        (&call(2, "create", json!({})), "rate_limited", "tools.create", "create"),
        (&call(3, "nothing", json!({})), "deny", "unknown_tool", "nothing"),
        (&call(4, "secret", json!({})), "deny", "unknown_tool", "secret"),
        // Refused by the integrity checks: a key some server would read as another.
        (
            br#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"echo","arguments":{},"Arguments":{"x":1}}}"#,
            "deny",
            "invalid_request",
            "echo",
        ),
    ];
    for (line, verdict, rule, tool) in cases {
        s.from_client(line);
        let event = one(log.decisions());
        assert_eq!(
            (
                event.decision.verdict.as_str(),
                event.decision.rule.as_str(),
                event.tool.as_str()
            ),
            (verdict, rule, tool),
            "{}",
            String::from_utf8_lossy(line)
        );
        assert_eq!((event.grant.as_str(), event.session.as_str()), ("g", "s"));
        assert_eq!(event.transport, "stdio");
        assert_eq!(event.policy.as_deref(), Some("audited"));
        assert_eq!(event.policy_digest.len(), 64);
        assert_eq!(event.method, "tools/call");
        assert!(event.args.is_none(), "arguments are off by default");
    }
}

#[test]
fn rate_limited_decisions_carry_their_retry_after() {
    let (s, log) = session();
    send(&s, &call(1, "create", json!({})));
    send(&s, &call(2, "create", json!({})));
    let events = log.decisions();
    assert_eq!(events[1].decision.retry_after_ms, Some(60_000));
}

#[test]
fn a_secret_in_the_arguments_is_never_logged_unless_opted_in_and_then_only_masked() {
    let (s, log) = session();
    let args = json!({"apiKey": "sk-SECRET-1", "token": "tk-SECRET-2", "text": "hello"});
    send(&s, &call(1, "quiet", args.clone()));
    let quiet = one(log.decisions());
    let text = serde_json::to_string(&quiet).unwrap();
    assert!(!text.contains("SECRET"), "{text}");
    assert_eq!(quiet.args_sha256, crate::audit::args_sha256(&args));
    send(&s, &call(2, "echo", args));
    let echoed = one(log.decisions());
    let text = serde_json::to_string(&echoed).unwrap();
    assert!(!text.contains("SECRET"), "{text}");
    let logged = echoed.args.unwrap();
    assert_eq!(logged.value, json!({"token": "***", "text": "hello"}));
    assert_eq!(
        (logged.erased, logged.masked),
        (vec!["/apiKey".to_string()], vec!["/token".to_string()])
    );
}

#[test]
fn every_forwarded_call_gets_one_outcome_by_how_it_ended() {
    let (s, log) = session();
    let reply = |id: u64, body: Value| {
        let mut line = json!({"jsonrpc": "2.0", "id": id});
        line.as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        s.from_upstream(line.to_string().as_bytes());
    };
    let ran = send(&s, &call(1, "echo", json!({}))).unwrap();
    reply(ran, json!({"result": {"content": []}}));
    let failed = send(&s, &call(2, "echo", json!({}))).unwrap();
    reply(failed, json!({"result": {"content": [], "isError": true}}));
    let error = send(&s, &call(3, "echo", json!({}))).unwrap();
    reply(error, json!({"error": {"code": -32603, "message": "boom"}}));
    send(&s, &call(4, "echo", json!({}))).unwrap();
    s.from_client(
        br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":4}}"#,
    );
    send(&s, &call(5, "echo", json!({}))).unwrap();
    assert_eq!(s.expire(Duration::ZERO).len(), 1);
    send(&s, &call(6, "echo", json!({}))).unwrap();
    assert_eq!(s.upstream_gone("exited").len(), 1);
    let decisions = log.decisions();
    let outcomes = log.outcomes();
    let fates: Vec<(Fate, Option<i64>, &str)> = outcomes
        .iter()
        .map(|o| (o.outcome, o.error_code, o.request_id.as_str()))
        .collect();
    assert_eq!(
        fates,
        [
            (Fate::Ran, None, "1"),
            (Fate::ToolError, None, "2"),
            (Fate::JsonrpcError, Some(-32603), "3"),
            (Fate::Cancelled, None, "4"),
            (Fate::Timeout, None, "5"),
            (Fate::Gone, None, "6"),
        ]
    );
    // Each outcome names its decision.
    for (decision, outcome) in decisions.iter().zip(&outcomes) {
        assert_eq!(decision.decision_id, outcome.decision_id);
    }
    // A late reply to the cancelled call adds nothing.
    reply(ran + 3, json!({"result": {"content": []}}));
    assert!(log.outcomes().is_empty());
}

#[test]
fn refused_calls_have_no_outcome_and_no_observer_costs_nothing() {
    let (s, log) = session();
    send(&s, &call(1, "nothing", json!({})));
    assert_eq!(log.decisions().len(), 1);
    assert!(log.outcomes().is_empty());
}

/// Waits for `n` shadow events (they are decided on a thread of their own).
fn shadows(log: &Recorder, n: usize) -> Vec<crate::audit::ShadowEvent> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = log.shadows.lock().unwrap().len();
        if got >= n || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::mem::take(&mut *log.shadows.lock().unwrap())
}

fn shadowed(
    policy: &str,
    shadow_policy: Option<&str>,
) -> (Session, Arc<Recorder>, Arc<dyn CounterStore>) {
    let recorder = Arc::new(Recorder::default());
    let counters: Arc<dyn CounterStore> =
        Arc::new(MemoryCounterStore::new(ManualClock::starting_at(0)));
    let shadow = shadow_policy.map(|p| {
        Arc::new(ArcSwap::from_pointee(
            Policy::from_json(p, "shadow.json").unwrap(),
        ))
    });
    let session = Session::new(
        Arc::new(Policy::from_json(policy, "policy.json").unwrap()),
        counters.clone(),
        Identity {
            grant: "g".into(),
            session: "s".into(),
        },
    )
    .with_audit(Some(Audit::new(recorder.clone(), "stdio")))
    .with_shadow_policy(shadow);
    (session, recorder, counters)
}

#[test]
fn a_shadow_rule_that_would_deny_leaves_the_call_allowed_and_logs_would_deny() {
    let (s, log, _) = shadowed(
        r#"{"version":"1","default":"allow","tools":{"echo":{"deny_if":[{"path":"args.cmd","op":"contains","value":"rm"}],"enforce":false}}}"#,
        None,
    );
    assert!(
        send(&s, &call(1, "echo", json!({"cmd": "rm -rf /"}))).is_some(),
        "allowed"
    );
    let decision = one(log.decisions());
    assert_eq!(
        (
            decision.decision.verdict.as_str(),
            decision.decision.rule.as_str()
        ),
        ("allow", "default")
    );
    let shadow = shadows(&log, 1);
    assert_eq!(shadow.len(), 1);
    assert_eq!(shadow[0].decision_id, decision.decision_id);
    assert_eq!(
        (shadow[0].source.as_str(), shadow[0].would.as_str()),
        ("rule", "would_deny")
    );
    assert_eq!(shadow[0].shadow.rule, "tools.echo");
    assert!(shadow[0].differs);
    // A call the rule has no objection to: the same.
    send(&s, &call(2, "echo", json!({"cmd": "ls"})));
    assert_eq!(shadows(&log, 1)[0].would, "same");
}

#[test]
fn a_shadow_rule_can_never_turn_a_deny_into_an_allow() {
    let (s, log, _) = shadowed(
        r#"{"version":"1","default":"deny","tools":{"echo":{"enforce":false}}}"#,
        None,
    );
    assert_eq!(send(&s, &call(1, "echo", json!({}))), None, "refused");
    assert_eq!(one(log.decisions()).decision.verdict, "deny");
    let shadow = shadows(&log, 1);
    assert_eq!(
        (shadow[0].enforced.as_str(), shadow[0].would.as_str()),
        ("deny", "would_allow")
    );
}

#[test]
fn a_shadow_policys_limit_never_spends_a_real_unit() {
    // The real policy and the shadow count under the same counter name, scope and grant.
    let limited = r#"{"version":"1","default":"deny","tools":{"echo":{"limits":[{"counter":"c","window":"minute","max":2,"scope":"grant"}]}}}"#;
    let (s, log, _) = shadowed(limited, Some(limited));
    for n in 1..=2 {
        assert!(send(&s, &call(n, "echo", json!({}))).is_some(), "call {n}");
        // Each shadow decision is made before the next call, so that a shared counter would show.
        assert_eq!(shadows(&log, 1)[0].would, "same");
    }
    assert_eq!(
        send(&s, &call(3, "echo", json!({}))),
        None,
        "the third is limited"
    );
    assert_eq!(shadows(&log, 1)[0].shadow.verdict, "rate_limited");
}

#[test]
fn a_held_call_logs_its_hold_its_approval_and_the_decision_after_it() {
    let recorder = Arc::new(Recorder::default());
    let approvals = Arc::new(crate::approvals::Approvals::new(ManualClock::starting_at(
        0,
    )));
    let s = Session::new(
        Arc::new(
            Policy::from_json(
                r#"{"version":"1","default":"deny","tools":{"del":{"action":"require_approval"}}}"#,
                "p.json",
            )
            .unwrap(),
        ),
        Arc::new(MemoryCounterStore::new(ManualClock::starting_at(0))),
        Identity {
            grant: "g".into(),
            session: "s".into(),
        },
    )
    .with_audit(Some(Audit::new(recorder.clone(), "stdio")))
    .with_approvals(approvals.clone(), true, false);
    let ClientLine::Hold(held) = s.from_client(&call(1, "del", json!({}))) else {
        panic!("not held")
    };
    approvals.approve(&held.approval, "alice", "cli").unwrap();
    let outcome = approvals.hold(&held.approval, Duration::ZERO);
    assert!(matches!(s.release(&held, outcome), ClientLine::Forward(_)));
    let verdicts: Vec<String> = recorder
        .decisions()
        .into_iter()
        .map(|d| d.decision.verdict)
        .collect();
    assert_eq!(verdicts, ["require_approval", "allow"]);
    let approved = std::mem::take(&mut *recorder.approvals.lock().unwrap());
    assert_eq!(approved.len(), 1);
    assert_eq!(
        (
            approved[0].outcome.as_str(),
            approved[0].by.as_deref(),
            approved[0].channel.as_deref()
        ),
        ("approved", Some("alice"), Some("cli"))
    );
    assert_eq!(approved[0].approval_id, held.approval);
}

/// Trace injection (opt-in): the forwarded call carries the call's own span as
/// `_meta.traceparent`, in the client's trace; nothing else of the line changes. Off, the
/// forwarded bytes are the client's (but for the id).
#[test]
fn trace_injection_writes_only_the_traceparent_and_only_when_asked() {
    let line = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"quiet","arguments":{"n":123456789012345678901234567890},"_meta":{"progressToken":"p","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}}"#;
    let forwarded = |s: &Session| match s.from_client(line) {
        ClientLine::Forward(f) => String::from_utf8(f.line.into_owned()).unwrap(),
        other => panic!("{other:?}"),
    };
    let (plain, _) = session();
    let text = forwarded(&plain);
    // The gateway's first id is 1, the client's too: the very same bytes.
    assert_eq!(text, std::str::from_utf8(line).unwrap());
    let (s, log) = session();
    let s = s.with_trace_injection(true);
    let text = forwarded(&s);
    assert!(
        text.contains(r#""arguments":{"n":123456789012345678901234567890}"#),
        "{text}"
    );
    assert!(text.contains(r#""progressToken":"p""#), "{text}");
    let sent: Value = serde_json::from_str(&text).unwrap();
    let traceparent = sent["params"]["_meta"]["traceparent"].as_str().unwrap();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(
        parts[1], "4bf92f3577b34da6a3ce929d0e0e4736",
        "the client's trace"
    );
    assert_ne!(
        parts[2], "00f067aa0ba902b7",
        "the gateway's span, not the client's"
    );
    let decision = one(log.decisions());
    assert_eq!(decision.span_id.as_deref(), Some(parts[2]));
}

/// The log's trace id is the client's, however the client spelled `traceparent`'s key, and a
/// new one when it sent none.
#[test]
fn the_logged_trace_is_the_clients_however_its_key_is_spelled() {
    let (s, log) = session();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let sent = |id: u64, key: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"quiet","arguments":{{}},"_meta":{{"{key}":"00-{trace}-00f067aa0ba902b7-01"}}}}}}"#
        )
    };
    for (id, key) in [(1, "traceparent"), (2, r"trace\u0070arent")] {
        s.from_client(sent(id, key).as_bytes());
        assert_eq!(
            one(log.decisions()).trace_id.as_deref(),
            Some(trace),
            "{key}"
        );
    }
    s.from_client(&call(3, "quiet", json!({})));
    let fresh = one(log.decisions()).trace_id.unwrap();
    assert_ne!(fresh, trace);
    assert_eq!(fresh.len(), 32);
}

/// A result's `isError` is read however the upstream spelled its key; the quick look that
/// skips the parse never skips a result that has one.
#[test]
fn a_tool_error_is_told_apart_however_its_flag_is_spelled() {
    use super::audited::fate_of;
    let fate = |result: &str| {
        let raw = serde_json::value::RawValue::from_string(result.to_owned()).unwrap();
        fate_of(None, Some(&raw))
    };
    assert_eq!(fate(r#"{"content":[],"isError":true}"#), Fate::ToolError);
    assert_eq!(
        fate(r#"{"content":[],"is\u0045rror":true}"#),
        Fate::ToolError
    );
    assert_eq!(
        fate(r#"{"content":[],"\u0069sError":true}"#),
        Fate::ToolError
    );
    assert_eq!(fate(r#"{"content":[],"isError":false}"#), Fate::Ran);
    assert_eq!(
        fate(r#"{"content":[{"type":"text","text":"isError"}]}"#),
        Fate::Ran
    );
    assert_eq!(fate(r#"{"content":[]}"#), Fate::Ran);
    assert_eq!(fate_of(Some(-32603), None), Fate::JsonrpcError);
}
