//! Conditions: every operator, exact numbers, and the errors of loading and evaluating.

use super::*;
use serde_json::json;

fn cond(v: Value) -> Result<Condition, String> {
    serde_json::from_value::<Condition>(v).map_err(|e| e.to_string())
}

fn eval(c: Value, args: Value) -> Result<bool, EvalError> {
    let call = ToolCall {
        tool: "codex_request",
        args: &args,
        args_text: None,
        grant: "g1",
        session: "s1",
        server: "",
        annotations: None,
    };
    cond(c).unwrap().holds(&call)
}

#[rstest::rstest]
#[case(json!({"path": "args.cli", "op": "eq", "value": "codex"}), json!({"cli": "codex"}), true)]
#[case(json!({"path": "args.n", "op": "eq", "value": 1}), json!({"n": 1.0}), true)]
#[case(json!({"path": "args.cli", "op": "ne", "value": "codex"}), json!({}), true)]
#[case(json!({"path": "args.n", "op": "gt", "value": 10}), json!({"n": 11}), true)]
#[case(json!({"path": "args.n", "op": "gte", "value": 10}), json!({"n": 10}), true)]
#[case(json!({"path": "args.n", "op": "lt", "value": 10}), json!({"n": 10}), false)]
#[case(json!({"path": "args.n", "op": "lte", "value": 10}), json!({"n": 10}), true)]
#[case(json!({"path": "args.cli", "op": "in", "value": ["a", "b"]}), json!({"cli": "b"}), true)]
#[case(json!({"path": "args.cli", "op": "not_in", "value": ["a", "b"]}), json!({"cli": "c"}), true)]
#[case(json!({"path": "args.cli", "op": "not_in", "value": ["a"]}), json!({}), true)]
#[case(json!({"path": "args.p", "op": "contains", "value": "rm -rf"}), json!({"p": "do rm -rf /"}), true)]
#[case(json!({"path": "args.tags", "op": "contains", "value": "x"}), json!({"tags": ["y", "x"]}), true)]
#[case(json!({"path": "args.sessionId", "op": "starts_with", "value": "gw-"}), json!({"sessionId": "gw-1"}), true)]
#[case(json!({"path": "args.f", "op": "ends_with", "value": ".rs"}), json!({"f": "a.rs"}), true)]
#[case(json!({"path": "args.id", "op": "regex", "value": "^[0-9a-f-]{36}$"}), json!({"id": "gw-x"}), false)]
#[case(json!({"path": "args.id", "op": "exists"}), json!({"id": null}), true)]
#[case(json!({"path": "args.id", "op": "not_exists"}), json!({}), true)]
#[case(json!({"path": "args.items[1].name", "op": "eq", "value": "b"}), json!({"items": [{"name": "a"}, {"name": "b"}]}), true)]
#[case(json!({"path": "args.items.0", "op": "eq", "value": 5}), json!({"items": [5]}), true)]
#[case(json!({"path": "tool", "op": "ends_with", "value": "_request"}), json!({}), true)]
#[case(json!({"path": "grant", "op": "eq", "value": "g1"}), json!({}), true)]
#[case(json!({"path": "args.missing", "op": "gt", "value": 1}), json!({}), false)]
fn operators(#[case] c: Value, #[case] args: Value, #[case] expected: bool) {
    assert_eq!(eval(c, args), Ok(expected));
}

/// Integers compare exactly, also beyond 2^53 and across i64, u64 and f64.
#[rstest::rstest]
#[case(json!(9007199254740993u64), "eq", json!(9007199254740992u64), false)]
#[case(json!(9007199254740993u64), "ne", json!(9007199254740992u64), true)]
#[case(json!(9007199254740993u64), "eq", json!(9007199254740993u64), true)]
#[case(json!(9007199254740993u64), "gt", json!(9007199254740992u64), true)]
#[case(json!(9007199254740992u64), "lt", json!(9007199254740993u64), true)]
#[case(json!(-9007199254740993i64), "lt", json!(-9007199254740992i64), true)]
#[case(json!(u64::MAX), "gt", json!(-1), true)]
#[case(json!(u64::MAX), "eq", json!(-1), false)]
#[case(json!(i64::MIN), "lt", json!(u64::MAX), true)]
#[case(json!(u64::MAX), "gt", json!(i64::MAX), true)]
#[case(json!(1), "eq", json!(1.0), true)]
#[case(json!(0), "eq", json!(-0.0), true)]
#[case(json!(9007199254740993u64), "eq", json!(9007199254740992.0), false)]
#[case(json!(9007199254740993u64), "gt", json!(9007199254740992.0), true)]
#[case(json!(9007199254740992u64), "eq", json!(9007199254740992.0), true)]
#[case(json!(2), "lt", json!(2.5), true)]
#[case(json!(-2), "gt", json!(-2.5), true)]
#[case(json!(-3), "lt", json!(-2.5), true)]
#[case(json!(u64::MAX), "lt", json!(1e300), true)]
#[case(json!(i64::MIN), "gt", json!(-1e300), true)]
#[case(json!(u64::MAX), "lt", json!(18446744073709551616.0), true)]
#[case(json!(2.5), "gt", json!(2.25), true)]
#[case(json!([1, {"a": 2}]), "eq", json!([1.0, {"a": 2.0}]), true)]
#[case(json!([9007199254740993u64]), "eq", json!([9007199254740992u64]), false)]
#[case(json!(9007199254740993u64), "in", json!([9007199254740992u64]), false)]
#[case(json!([9007199254740993u64]), "contains", json!(9007199254740992u64), false)]
fn numbers_compare_exactly(
    #[case] actual: Value,
    #[case] op: &str,
    #[case] value: Value,
    #[case] expected: bool,
) {
    let c = json!({"path": "args.n", "op": op, "value": value});
    assert_eq!(
        eval(c, json!({ "n": actual })),
        Ok(expected),
        "{actual} {op} {value}"
    );
}

/// The same from policy text, as a policy file and a call are parsed.
#[test]
fn integers_beyond_2_pow_53_parsed_from_text_are_not_rounded() {
    let c: Condition =
        serde_json::from_str(r#"{"path": "args.n", "op": "eq", "value": 9007199254740993}"#)
            .unwrap();
    for (text, expected) in [
        (r#"{"n": 9007199254740993}"#, true),
        (r#"{"n": 9007199254740992}"#, false),
        (r#"{"n": 9007199254740992.0}"#, false),
    ] {
        let args: Value = serde_json::from_str(text).unwrap();
        let call = ToolCall {
            tool: "t",
            args: &args,
            args_text: None,
            grant: "g",
            session: "s",
            server: "",
            annotations: None,
        };
        assert_eq!(c.holds(&call), Ok(expected), "{text}");
    }
}

#[test]
fn type_mismatch_is_an_error_not_a_pass() {
    let err = eval(
        json!({"path": "args.n", "op": "gt", "value": 1}),
        json!({"n": "2"}),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("`args.n` is a string"), "{err}");
    assert!(eval(
        json!({"path": "args.s", "op": "starts_with", "value": "gw-"}),
        json!({"s": 5})
    )
    .is_err());
}

/// The typed errors say what the string errors said before them, word for word.
#[rstest::rstest]
#[case("args..x", "path `args..x` has an empty segment")]
#[case("args.x[0", "path `args.x[0` has an unclosed `[`")]
#[case("args.x[a]", "path `args.x[a]`: `[a]` is not an array index")]
#[case("args.x[0]y", "path `args.x[0]y`: expected `.` or `[` after `]`")]
#[case(
    "argz.x",
    "path `argz.x` must start with `args`, `tool`, `grant` or `session`"
)]
#[case("tool.x", "path `tool.x`: only `args` has fields")]
fn bad_paths_say_why(#[case] path: &str, #[case] expected: &str) {
    assert_eq!(Path::parse(path).unwrap_err().to_string(), expected);
}

#[rstest::rstest]
#[case(json!({"path": "args.x", "op": "eq"}), "operator `eq` needs a `value`")]
#[case(json!({"path": "args.x", "op": "exists", "value": 1}), "operator `exists` takes no `value`")]
#[case(json!({"path": "args.x", "op": "in", "value": 1}), "operator `in` needs an array `value`")]
#[case(json!({"path": "args.x", "op": "gt", "value": []}), "operator `gt` needs a number or string `value`")]
#[case(json!({"path": "args.x", "op": "regex", "value": 1}), "operator `regex` needs a string `value`")]
fn bad_values_say_why(#[case] c: Value, #[case] expected: &str) {
    assert_eq!(cond(c).unwrap_err(), expected);
}

#[test]
fn a_mismatch_says_both_types_and_the_operator() {
    assert_eq!(
        eval(
            json!({"path": "args.s", "op": "starts_with", "value": "gw-"}),
            json!({"s": 5})
        ),
        Err(EvalError::Mismatch {
            path: "args.s".into(),
            found: "a number",
            op: Op::StartsWith,
            value: "a string",
        })
    );
    assert_eq!(
        eval(
            json!({"path": "args.n", "op": "lt", "value": 1}),
            json!({"n": [1]})
        )
        .unwrap_err()
        .to_string(),
        "`args.n` is an array, which operator `lt` cannot compare with a number"
    );
}

#[rstest::rstest]
#[case(json!({"path": "argz.x", "op": "eq", "value": 1}), "must start with")]
#[case(json!({"path": "args.x", "op": "equals", "value": 1}), "unknown variant")]
#[case(json!({"path": "args.x", "op": "eq"}), "needs a `value`")]
#[case(json!({"path": "args.x", "op": "exists", "value": 1}), "takes no `value`")]
#[case(json!({"path": "args.x", "op": "in", "value": 1}), "array")]
#[case(json!({"path": "args.x", "op": "regex", "value": "("}), "not a valid regex")]
#[case(json!({"path": "args.x[", "op": "exists"}), "unclosed")]
#[case(json!({"path": "tool.x", "op": "exists"}), "only `args` has fields")]
#[case(json!({"path": "args.x", "op": "eq", "value": 1, "extra": 2}), "unknown field")]
fn bad_conditions_fail_to_load(#[case] c: Value, #[case] expected: &str) {
    let err = cond(c).unwrap_err();
    assert!(err.contains(expected), "{err}");
}
