//! Result hooks on the session's reply path, with a real `policy-with-results` plugin
//! (`guest-policies/hostile/results`): what the client gets for the upstream's result.

use super::*;
use crate::clock::ManualClock;
use crate::counters::MemoryCounterStore;

/// A session whose policy runs the hostile results plugin, configured `config`, after `echo`.
fn session(config: &str, extra: &str) -> (Session, tempfile::TempDir) {
    let component = crate::plugins::tests::built("hostile/results");
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    let text = serde_json::json!({
        "version": "1",
        "default": "deny",
        "plugins": {"results": {"path": component, "grants": ["state", "log"], "fuel": 5_000_000, "timeout_ms": 200}},
        "tools": {"echo": {"use": [{"plugin": "results", "config": config}]}}
    })
    .to_string();
    let text = match extra {
        "" => text,
        extra => text.replacen("\"grants\"", &format!("{extra}, \"grants\""), 1),
    };
    std::fs::write(&policy, text).unwrap();
    let policy = crate::policy::Loader::from_env()
        .load(&policy)
        .expect("the policy loads");
    let session = Session::new(
        Arc::new(policy),
        Arc::new(MemoryCounterStore::new(ManualClock::starting_at(0))),
        Identity {
            grant: "g".into(),
            session: "s".into(),
        },
    );
    (session, dir)
}

const RESULT: &str = r#"{"content":[{"type":"text","text":"sk-live 1234"}],  "isError" :false}"#;

/// Sends `echo` as request `7` and the upstream's reply with `result`: what the client gets.
fn reply(session: &Session, result: &str) -> String {
    let call =
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{}}}"#;
    let upstream_id = match session.from_client(call.as_bytes()) {
        ClientLine::Forward(f) => f.upstream_id.unwrap(),
        other => panic!("not forwarded: {other:?}"),
    };
    let line = format!(r#"{{"jsonrpc":"2.0","id":{upstream_id},"result":{result}}}"#);
    let out = session.from_upstream(line.as_bytes()).expect("a reply");
    String::from_utf8(out.into_owned()).unwrap()
}

fn refused(reply: &str) -> (String, Value) {
    let reply: Value = serde_json::from_str(reply).unwrap();
    assert_eq!(reply["id"], 7, "{reply}");
    assert_eq!(reply["result"]["isError"], true, "{reply}");
    assert_eq!(reply["result"]["_meta"]["toolgate"]["ran"], true, "{reply}");
    let text = reply["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    (text, reply)
}

#[test]
fn a_passed_result_reaches_the_client_byte_for_byte() {
    let (session, _dir) = session("pass", "");
    assert_eq!(
        reply(&session, RESULT),
        format!(r#"{{"jsonrpc":"2.0","id":7,"result":{RESULT}}}"#)
    );
}

#[test]
fn a_replaced_result_is_the_plugins_written_by_the_gateway() {
    let (session, _dir) = session("replace", "");
    let got: Value = serde_json::from_str(&reply(&session, RESULT)).unwrap();
    assert_eq!(got["id"], 7);
    let text = got["result"]["content"][0]["text"].as_str().unwrap();
    assert_eq!(
        text,
        format!("{} bytes", RESULT.len()),
        "the plugin saw the raw result"
    );
    assert!(!got.to_string().contains("sk-live"));
}

#[test]
fn a_refused_result_is_the_gateways_refusal_saying_the_call_ran() {
    let (session, _dir) = session("refuse", "");
    let (text, _) = refused(&reply(&session, RESULT));
    assert!(text.contains("the result is not for you"), "{text}");
}

#[rstest::rstest]
#[case::trap("trap", "trap")]
#[case::endless("loop", "")]
#[case::huge_replacement("huge", "")]
#[case::not_json("garbage", "")]
#[case::not_an_object("array", "")]
fn a_failing_hook_refuses_the_result_and_the_session_goes_on(
    #[case] config: &str,
    #[case] cause: &str,
) {
    let (session, _dir) = session(config, "");
    let (text, whole) = refused(&reply(&session, RESULT));
    assert!(text.contains("plugin `results`"), "{text}");
    assert!(text.contains(cause), "{text}");
    assert!(!whole.to_string().contains("sk-live"), "{whole}");
    // The next call is decided and answered as before.
    let (text, _) = refused(&reply(&session, RESULT));
    assert!(text.contains("plugin `results`"), "{text}");
}

#[test]
fn an_error_reply_is_no_result_and_no_hook_sees_it() {
    let (session, _dir) = session("refuse", "");
    let call =
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{}}}"#;
    let ClientLine::Forward(f) = session.from_client(call.as_bytes()) else {
        panic!("not forwarded")
    };
    let line = format!(
        r#"{{"jsonrpc":"2.0","id":{},"error":{{"code":-32000,"message":"boom"}}}}"#,
        f.upstream_id.unwrap()
    );
    let out = session.from_upstream(line.as_bytes()).unwrap();
    assert_eq!(
        std::str::from_utf8(&out).unwrap(),
        r#"{"jsonrpc":"2.0","id":7,"error":{"code":-32000,"message":"boom"}}"#
    );
}

#[rstest::rstest]
#[case::refused("refuse", true)]
#[case::passed("pass", false)]
fn an_oversized_result_is_not_shown_to_the_plugin(#[case] oversized: &str, #[case] refuse: bool) {
    let extra = format!(r#""results": {{"max_bytes": 16, "oversized": "{oversized}"}}"#);
    let (session, _dir) = session("replace", &extra);
    let got = reply(&session, RESULT);
    if refuse {
        let (text, _) = refused(&got);
        assert!(
            text.contains("larger than plugin `results` may check"),
            "{text}"
        );
    } else {
        assert_eq!(
            got,
            format!(r#"{{"jsonrpc":"2.0","id":7,"result":{RESULT}}}"#)
        );
    }
}

#[test]
fn the_outcome_event_says_what_the_hooks_did_with_the_result() {
    use crate::audit::{DecisionLog, Event, Line, LogSink};
    for (config, did) in [
        ("pass", "passed"),
        ("replace", "replaced"),
        ("refuse", "refused"),
        ("trap", "failed"),
    ] {
        let (session, dir) = session(config, "");
        let path = dir.path().join("decisions.jsonl");
        let sink = LogSink::File {
            path: path.clone(),
            max_bytes: 1 << 20,
            keep: 1,
        };
        let log = Arc::new(DecisionLog::open(sink, 16).unwrap());
        let session = session.with_audit(Some(super::Audit::new(log.clone(), "stdio")));
        reply(&session, RESULT);
        assert!(log.flush(std::time::Duration::from_secs(5)));
        let outcomes: Vec<_> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter_map(|l| match serde_json::from_str::<Line>(l).unwrap().event {
                Event::Outcome(o) => Some(o),
                _ => None,
            })
            .collect();
        assert_eq!(outcomes.len(), 1, "{config}");
        assert_eq!(outcomes[0].result.as_deref(), Some(did), "{config}");
    }
}
