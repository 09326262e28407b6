use super::*;
use crate::call::ToolCall;
use crate::clock::ManualClock;
use crate::counters::{CounterStore, MemoryCounterStore};
use crate::decision::{Decision, Verdict};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const SEED: &str = r#"{"version":"1","default":"deny","tools":{"session_create":{"limits":[{"counter":"session_create_rate","window":"minute","max":30,"scope":"grant"}]}}}"#;

fn policy(v: Value) -> Policy {
    Policy::from_json(&v.to_string(), "test.json").unwrap()
}

fn decide_as(
    p: &Policy,
    store: &Arc<MemoryCounterStore>,
    grant: &str,
    tool: &str,
    args: Value,
) -> Decision {
    p.decide(
        &ToolCall {
            tool,
            args: &args,
            args_text: None,
            grant,
            session: "s1",
            server: "",
            annotations: None,
        },
        &(store.clone() as Arc<dyn CounterStore>),
    )
    .decision
}

fn store() -> (Arc<ManualClock>, Arc<MemoryCounterStore>) {
    let clock = ManualClock::starting_at(1_000_000);
    (clock.clone(), Arc::new(MemoryCounterStore::new(clock)))
}

#[test]
fn the_seed_rule_caps_session_create_at_30_per_minute_per_grant() {
    let p = Policy::from_json(SEED, "seed.json").unwrap();
    let (clock, store) = store();
    assert!(p.is_visible("session_create"));
    assert!(
        !p.is_visible("session_list"),
        "default deny hides unlisted tools"
    );
    for i in 0..30 {
        assert!(
            decide_as(&p, &store, "g1", "session_create", json!({"cli": "codex"})).is_allow(),
            "call {i}"
        );
        clock.advance(Duration::from_millis(100));
    }
    let limited = decide_as(&p, &store, "g1", "session_create", json!({"cli": "codex"}));
    assert_eq!(limited.verdict, Verdict::RateLimited);
    assert_eq!(limited.rule, "tools.session_create");
    // The first call was at +0 ms, now is +3000 ms: it leaves the window at +60 000 ms.
    assert_eq!(limited.retry_after_ms, Some(57_000));
    assert_eq!(
        limited.text(),
        "[toolgate] rate_limited: counter session_create_rate allows 30 per minute; retry in 57 s"
    );
    assert!(
        decide_as(&p, &store, "g2", "session_create", json!({})).is_allow(),
        "another grant has its own count"
    );
    clock.advance(Duration::from_millis(57_000));
    assert!(decide_as(&p, &store, "g1", "session_create", json!({})).is_allow());
    assert_eq!(
        decide_as(&p, &store, "g1", "session_list", json!({})).reason,
        "unknown tool"
    );
}

#[test]
fn hidden_and_missing_tools_get_the_same_answer() {
    let p = policy(
        json!({"version": "1", "default": "deny", "hide": ["secret_*"], "tools": {"secret_x": {}, "ok": {}}}),
    );
    let (_, store) = store();
    let hidden = decide_as(&p, &store, "g", "secret_x", json!({}));
    let unlisted = decide_as(&p, &store, "g", "nope", json!({}));
    assert_eq!(
        (hidden.verdict, &hidden.rule, &hidden.reason),
        (unlisted.verdict, &unlisted.rule, &unlisted.reason)
    );
    assert_eq!(hidden.reason, "unknown tool");
    assert!(!p.is_visible("secret_x"), "hide wins over a rule");
}

#[test]
fn explicit_deny_stays_visible_and_says_why() {
    let p = policy(
        json!({"version": "1", "default": "allow", "tools": {"rm": {"action": "deny", "reason": "never"}}}),
    );
    let (_, store) = store();
    assert!(p.is_visible("rm"));
    let d = decide_as(&p, &store, "g", "rm", json!({}));
    assert_eq!(
        (d.verdict, &*d.reason, d.rule.as_str()),
        (Verdict::Deny, "never", "tools.rm")
    );
    assert!(decide_as(&p, &store, "g", "anything", json!({})).is_allow());
}

#[test]
fn exact_names_beat_globs_and_longer_globs_beat_shorter() {
    let p = policy(json!({"version": "1", "default": "deny", "tools": {
        "*": {"action": "deny", "reason": "star"},
        "codex_*": {"action": "deny", "reason": "codex"},
        "codex_request_*": {"action": "deny", "reason": "codex request"},
        "codex_request": {}
    }}));
    let (_, store) = store();
    assert!(decide_as(&p, &store, "g", "codex_request", json!({})).is_allow());
    assert_eq!(
        decide_as(&p, &store, "g", "codex_request_async", json!({})).reason,
        "codex request"
    );
    assert_eq!(
        decide_as(&p, &store, "g", "codex_fork_session", json!({})).reason,
        "codex"
    );
    assert_eq!(
        decide_as(&p, &store, "g", "claude_request", json!({})).reason,
        "star"
    );
}

#[test]
fn require_deny_if_and_evaluation_errors() {
    let p = policy(
        json!({"version": "1", "default": "deny", "tools": {"codex_request": {
            "require": [{"path": "args.prompt", "op": "exists"}],
            "deny_if": [{"path": "args.sessionId", "op": "starts_with", "value": "gw-"}],
            "reason": "Codex resume needs a real Codex UUID"
        }}}),
    );
    let (_, store) = store();
    let missing = decide_as(&p, &store, "g", "codex_request", json!({}));
    assert_eq!(
        missing.reason,
        "Codex resume needs a real Codex UUID (requirement not met: `args.prompt` exists)"
    );
    let gw = decide_as(
        &p,
        &store,
        "g",
        "codex_request",
        json!({"prompt": "x", "sessionId": "gw-1"}),
    );
    assert_eq!(gw.verdict, Verdict::Deny);
    assert!(
        gw.reason
            .contains("denied because `args.sessionId` starts_with \"gw-\""),
        "{}",
        gw.reason
    );
    let odd = decide_as(
        &p,
        &store,
        "g",
        "codex_request",
        json!({"prompt": "x", "sessionId": 7}),
    );
    assert_eq!(odd.verdict, Verdict::Deny, "a type mismatch fails closed");
    assert!(
        odd.reason.starts_with("policy evaluation error"),
        "{}",
        odd.reason
    );
    assert!(decide_as(
        &p,
        &store,
        "g",
        "codex_request",
        json!({"prompt": "x", "sessionId": "0b6f8a52-6c1e-4d0b-9f3e-2a7c9d1e5b40"})
    )
    .is_allow());
}

#[test]
fn require_approval_is_its_own_refusal_until_a_person_approves() {
    let p = policy(
        json!({"version": "1", "default": "allow", "tools": {"session_delete": {"action": "require_approval"}}}),
    );
    let (_, store) = store();
    let d = decide_as(&p, &store, "g", "session_delete", json!({}));
    assert_eq!(d.verdict, Verdict::RequireApproval);
    assert!(d.reason.contains("a person must approve"), "{}", d.reason);
}

#[test]
fn all_tools_limits_and_rate_limit_shorthand_are_consumed_together() {
    let p = policy(json!({"version": "1", "default": "allow",
        "all_tools": {"limits": [{"counter": "everything", "window": 60, "max": 3, "scope": "session"}]},
        "tools": {"a": {"rate_limit": {"max": 1, "window": "hour"}}}}));
    let (_, store) = store();
    assert!(decide_as(&p, &store, "g", "a", json!({})).is_allow());
    let second_a = decide_as(&p, &store, "g", "a", json!({}));
    assert_eq!(
        (second_a.verdict, second_a.rule.as_str()),
        (Verdict::RateLimited, "tools.a")
    );
    assert!(
        second_a.reason.contains("counter rate:a allows 1 per hour"),
        "{}",
        second_a.reason
    );
    // The refused call spent nothing from `everything`: two more calls fit.
    assert!(decide_as(&p, &store, "g", "b", json!({})).is_allow());
    assert!(decide_as(&p, &store, "g", "c", json!({})).is_allow());
    let fourth = decide_as(&p, &store, "g", "d", json!({}));
    assert_eq!(
        (fourth.verdict, fourth.rule.as_str()),
        (Verdict::RateLimited, "all_tools")
    );
}

#[test]
fn a_counter_in_all_tools_and_in_the_rule_takes_one_unit_per_call() {
    // The same counter twice with one max: a cap of 5 admits exactly 5 calls.
    let p = policy(json!({"version": "1", "default": "allow",
        "all_tools": {"limits": [{"counter": "c", "window": "minute", "max": 5}]},
        "tools": {"a": {"limits": [{"counter": "c", "window": "minute", "max": 5}]}}}));
    let (_, store) = store();
    for i in 0..5 {
        assert!(
            decide_as(&p, &store, "g", "a", json!({})).is_allow(),
            "call {i}"
        );
    }
    assert_eq!(
        decide_as(&p, &store, "g", "a", json!({})).verdict,
        Verdict::RateLimited
    );
    // A tool only `all_tools` limits sees the same 5 units, not 10.
    assert_eq!(
        decide_as(&p, &store, "g", "b", json!({})).verdict,
        Verdict::RateLimited
    );
    // Different maxes: the smaller one caps.
    let (_, store) = self::store();
    let p = policy(json!({"version": "1", "default": "allow",
        "all_tools": {"limits": [{"counter": "c", "window": "minute", "max": 5}]},
        "tools": {"a": {"limits": [{"counter": "c", "window": "minute", "max": 3}]}}}));
    for _ in 0..3 {
        assert!(decide_as(&p, &store, "g", "a", json!({})).is_allow());
    }
    assert!(!decide_as(&p, &store, "g", "a", json!({})).is_allow());
    for _ in 0..2 {
        assert!(decide_as(&p, &store, "g", "b", json!({})).is_allow());
    }
    assert!(!decide_as(&p, &store, "g", "b", json!({})).is_allow());
}

#[test]
fn a_counter_with_a_minute_and_an_hour_window_takes_one_unit_per_call() {
    let p = policy(json!({"version": "1", "default": "deny",
        "tools": {"a": {"limits": [
            {"counter": "c", "window": "minute", "max": 5},
            {"counter": "c", "window": "hour", "max": 20}]}}}));
    let (clock, store) = store();
    let mut admitted = 0;
    for _ in 0..60 {
        for _ in 0..10 {
            admitted += decide_as(&p, &store, "g", "a", json!({})).is_allow() as u32;
        }
        clock.advance(Duration::from_secs(60));
    }
    // 5 a minute for the first four minutes, then the hour is full.
    assert_eq!(admitted, 20);
}

#[test]
fn only_star_and_question_mark_are_wildcards() {
    let p = policy(json!({"version": "1", "default": "deny", "tools": {"a[1]": {}, "v?_*": {}}}));
    assert!(p.is_visible("a[1]") && !p.is_visible("a1"));
    assert!(p.is_visible("v1_x") && p.is_visible("v2_") && !p.is_visible("v12_x"));
}

#[test]
fn default_is_deny_when_absent() {
    let p = policy(json!({"version": 1, "tools": {"a": {}}}));
    assert!(p.is_visible("a") && !p.is_visible("b"));
}

/// The help miette shows for an error, or nothing.
fn help_of(invalid: &InvalidPolicy) -> String {
    use miette::Diagnostic;
    invalid.help().map(|h| h.to_string()).unwrap_or_default()
}

fn load_error(text: &str) -> PolicyError {
    Policy::from_json(text, "bad.json").unwrap_err()
}

#[rstest::rstest]
#[case(
    "{\"version\": \"1\",\n \"default\": \"maybe\"}",
    2,
    "unknown variant `maybe`",
    "`default` is `allow` or `deny`"
)]
#[case(
    "{\"version\": \"2\"}",
    1,
    "unsupported policy version",
    "write `\"version\": \"1\"`"
)]
#[case(
    "{\"version\": \"1\",\n \"tools\": {\"a\": {\"deny-if\": []}}}",
    2,
    "unknown field `deny-if`",
    "snake_case"
)]
#[case("{\"version\": \"1\",\n \"tools\": {\"a\": {\n \"limits\": [{\"counter\": \"c\", \"window\": \"fortnight\", \"max\": 1}]}}}", 3, "invalid window", "a window is")]
#[case("{\"version\": \"1\",\n \"tools\": {\"a\": {\n \"require\": [{\"path\": \"x\", \"op\": \"eq\", \"value\": 1}]}}}", 3, "must start with", "a path starts at")]
#[case("{\"version\": \"1\",\n \"tools\": {\"a\": {\n \"limits\": [{\"counter\": \"c\", \"window\": 1, \"max\": 0}]}}}", 3, "at least 1", "")]
#[case("{\"version\": \"1\",\n \"tools\": {\"a\": {\n \"limits\": [{\"counter\": \" \", \"window\": 1, \"max\": 1}]}}}", 3, "a counter needs a name", "")]
#[case("{\"version\": \"1\",\n \"tools\": {\n", 3, "EOF", "missing comma")]
#[case("{\"version\": \"1\"} {}", 1, "trailing", "")]
fn bad_policies_name_line_message_and_hint(
    #[case] text: &str,
    #[case] line: usize,
    #[case] message: &str,
    #[case] help: &str,
) {
    match load_error(text) {
        PolicyError::Invalid(invalid) => {
            let h = help_of(&invalid);
            let InvalidPolicy {
                line: l,
                message: m,
                file,
                ..
            } = *invalid;
            assert_eq!(file, "bad.json");
            assert_eq!(l, line, "line of {m}");
            assert!(m.contains(message), "{m}");
            assert!(h.contains(help), "hint for {m}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// A key named twice in one object is refused with its line, column and place, wherever it
/// is: a serde map keeps the last copy silently, and a reader may believe the first.
#[rstest::rstest]
#[case(
    "{\"version\": \"1\",\n \"tools\": {\"exec\": {\"action\": \"deny\"},\n \"exec\": {}}}",
    3,
    7,
    "tools",
    "duplicate key `exec`"
)]
#[case(
    "{\"version\": \"1\", \"tools\": {\"a\": {\"require\": [\n {\"path\": \"args.x\", \"op\": \"eq\", \"value\": {\"k\": 1, \"k\": 2}}]}}}",
    2, 53, "tools.a.require[0].value", "duplicate key `k`"
)]
#[case(
    "{\"version\": \"1\",\n \"tools\": {\"x\": {}, \"\\u0078\": {}}}",
    2,
    28,
    "tools",
    "duplicate key `x`"
)]
#[case(
    "{\"version\": \"1\",\n \"default\": \"deny\", \"default\": \"allow\"}",
    2,
    29,
    "the document",
    "duplicate field `default`"
)]
#[case(
    "{\"version\": \"1\", \"tools\": {\"a\": {\"action\": \"deny\",\n \"action\": \"allow\"}}}",
    2,
    9,
    "tools.a",
    "duplicate field `action`"
)]
fn a_key_named_twice_is_refused_where_it_is(
    #[case] text: &str,
    #[case] line: usize,
    #[case] column: usize,
    #[case] location: &str,
    #[case] message: &str,
) {
    match load_error(text) {
        PolicyError::Invalid(invalid) => {
            assert_eq!(invalid.message, message);
            assert_eq!(
                (invalid.line, invalid.column, invalid.location.as_str()),
                (line, column, location),
                "{text}"
            );
            assert!(help_of(&invalid).contains("name each key once"), "{text}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_rendered_error_shows_the_file_location_and_snippet() {
    let err = load_error("{\"version\": \"1\",\n \"tools\": {\"a\": {\"action\": \"nuke\"}}}");
    let mut rendered = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .render_report(&mut rendered, &err)
        .unwrap();
    assert!(rendered.contains("bad.json:2:"), "{rendered}");
    assert!(rendered.contains("tools.a.action"), "{rendered}");
    assert!(rendered.contains("require_approval"), "{rendered}");
}

/// The span of an error found on the compiled document, as text.
fn underlined(text: &str) -> (String, String, usize) {
    match load_error(text) {
        PolicyError::Invalid(invalid) => {
            let (start, len) = (invalid.span.offset(), invalid.span.len());
            (
                invalid.location.clone(),
                text[start..start + len].to_owned(),
                start,
            )
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// An error is underlined where its path leads, not at the first text that looks like it:
/// the second rule's `max` is the second rule's, though the first rule has a `max` too.
#[test]
fn an_error_in_the_second_rule_is_underlined_in_the_second_rule() {
    let text = r#"{"version": "1", "tools": {
  "a": {"limits": [{"counter": "c", "window": 1, "max": 5}]},
  "b": {"limits": [{"counter": "c", "window": 1, "max": 1}, {"counter": "d", "window": 1, "max": 0}]}}}"#;
    let (location, shown, start) = underlined(text);
    assert_eq!(location, "tools.b.limits[1].max");
    assert_eq!(shown, "0");
    assert!(start > text.find("\"b\"").unwrap(), "{start}");
    match load_error(text) {
        PolicyError::Invalid(invalid) => {
            let third = text.lines().nth(2).unwrap();
            let column = third.find("\"max\": 0").unwrap() + "\"max\": ".len() + 1;
            assert_eq!((invalid.line, invalid.column), (3, column));
            assert_eq!(invalid.kind, Problem::ZeroMax);
        }
        other => panic!("unexpected {other:?}"),
    }

    let text = r#"{"version": "1",
  "all_tools": {"rate_limit": {"max": 3, "window": 1}},
  "tools": {"a": {"rate_limit": {"max": 0, "window": 1}}}}"#;
    let (location, shown, start) = underlined(text);
    assert_eq!(location, "tools.a.rate_limit.max");
    assert_eq!(shown, "0");
    assert!(start > text.find("\"tools\"").unwrap());

    let text = r#"{"version": "1", "tools": {"a": {"limits": [{"counter": "counter", "window": 1, "max": 1}]},
  "b": {"limits": [{"counter": "ok", "window": 1, "max": 1}, {"counter": "", "window": 1, "max": 1}]}}}"#;
    let (location, shown, start) = underlined(text);
    assert_eq!(location, "tools.b.limits[1].counter");
    assert_eq!(shown, "\"\"");
    assert!(start > text.find("\"b\"").unwrap());
}

#[test]
fn a_use_of_an_undeclared_plugin_is_underlined_at_its_name() {
    let text = r#"{"version": "1", "tools": {"a": {"description": "nope"},
  "b": {"use": [{"plugin": "nope"}]}}}"#;
    let (location, shown, start) = underlined(text);
    assert_eq!(location, "tools.b.use[0].plugin");
    assert_eq!(shown, "\"nope\"");
    assert!(start > text.find("\"b\"").unwrap());
    match load_error(text) {
        PolicyError::Invalid(invalid) => {
            assert_eq!(invalid.message, "no plugin named `nope` in `plugins`");
            assert!(help_of(&invalid).contains("under `plugins`"));
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// A policy with plugins and no runtime to load them into: the place is `plugins`.
#[test]
fn plugins_without_a_runtime_are_refused_at_plugins() {
    let text = r#"{"version": "1", "tools": {"plugins": {}},
  "plugins": {"p": {"path": "p.wasm"}}}"#;
    let (location, shown, start) = underlined(text);
    assert_eq!(location, "plugins");
    assert_eq!(shown, r#"{"p": {"path": "p.wasm"}}"#);
    assert_eq!(start, text.find(r#"{"p""#).unwrap());
}

/// Each kind of problem brings its own help, chosen by the place serde failed at.
#[rstest::rstest]
#[case("tools.a.action", "unknown variant `x`", "an action is")]
#[case("tools.a.limits[0].window", "invalid window", "a window is")]
#[case("tools.a.limits[0]", "missing field `window`", "a window is")]
#[case("all_tools.rate_limit", "missing field `max`", "a limit is")]
#[case("tools.a.rate_limit.max", "invalid type", "a limit is")]
#[case("tools.a.limits[0].scope", "unknown variant `x`", "a scope is")]
#[case(
    "tools.a.require[0]",
    "operator `in` needs an array `value`",
    "operators:"
)]
#[case("tools.a.deny_if[1]", "path `x` must start with", "a path starts at")]
#[case("tools.a.require[0].path", "invalid type", "a path starts at")]
#[case("tools.a.require[0].op", "unknown variant `equals`", "operators:")]
#[case("version", "unsupported policy version", "write `\"version\": \"1\"`")]
#[case("default", "unknown variant `x`", "`default` is")]
#[case("tools.a", "unknown field `deny-if`, expected one of", "snake_case")]
#[case("the document", "duplicate field `default`", "name each key once")]
fn a_problem_from_reading_has_the_help_of_its_place(
    #[case] location: &str,
    #[case] message: &str,
    #[case] help: &str,
) {
    use miette::Diagnostic;
    let kind = Problem::of_serde(location, message.to_owned());
    assert_eq!(kind.to_string(), message);
    let shown = kind.help().map(|h| h.to_string()).unwrap_or_default();
    assert!(shown.contains(help), "{location}: {shown}");
}

/// A value of the wrong type elsewhere gets no help rather than a wrong one (the JSON
/// syntax hint used to answer any message with `expected` in it).
#[test]
fn a_wrong_type_elsewhere_has_no_misleading_help() {
    use miette::Diagnostic;
    let kind = Problem::of_serde(
        "hide",
        "invalid type: integer `1`, expected a sequence".into(),
    );
    assert!(kind.help().is_none());
}

#[test]
fn a_rendered_compile_error_points_at_its_own_line() {
    let err = load_error(
        "{\"version\": \"1\", \"tools\": {\n \"a\": {\"rate_limit\": {\"max\": 2, \"window\": 1}},\n \"b\": {\"rate_limit\": {\"max\": 0, \"window\": 1}}}}",
    );
    let mut rendered = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .render_report(&mut rendered, &err)
        .unwrap();
    assert!(rendered.contains("bad.json:3:"), "{rendered}");
    assert!(rendered.contains("tools.b.rate_limit.max"), "{rendered}");
    assert!(rendered.contains("at least 1"), "{rendered}");
}

/// A shadow rule over an enforcing glob: the glob decides, and its settings (how a call is
/// held, what is logged) are the ones that apply.
#[test]
fn a_shadow_rule_lends_none_of_its_settings_to_the_enforced_decision() {
    let policy = Policy::from_json(
        r#"{"version":"1","default":"deny","tools":{
            "del":{"action":"require_approval","approval":{"hold":"1s"},"log_args":{"mask":["/x"]},"enforce":false},
            "d*":{"action":"require_approval","approval":{"hold":"30s"}}}}"#,
        "p.json",
    )
    .unwrap();
    assert_eq!(
        policy.approval_for("del").hold,
        std::time::Duration::from_secs(30)
    );
    assert!(policy.log_args_for("del").is_none());
    assert!(policy.has_shadow_rule_for("del"));
}
