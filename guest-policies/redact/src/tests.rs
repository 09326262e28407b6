use super::*;

fn redacted(config: &str, text: &str) -> Option<(String, usize)> {
    compile(config).unwrap().redact(text)
}

#[test]
fn each_default_pattern_is_replaced() {
    let keys = [
        ("sk-proj-abcdefghijklmnopqrstuvwxyz0123456789", "[REDACTED]"),
        ("sk-ant-api03-abcdefghijklmnopqrstuvwxyz_0123", "[REDACTED]"),
        ("ghp_abcdefghijklmnopqrstuvwxyz0123456789", "[REDACTED]"),
        (
            "github_pat_11ABCDEFG0abcdefghijklmnop_qrstuvwxyz",
            "[REDACTED]",
        ),
        ("AKIAIOSFODNN7EXAMPLE", "[REDACTED]"),
        (
            "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc",
            "Authorization: Bearer [REDACTED]",
        ),
        (
            "authorization: bearer abcdefghijklmnopqrstu",
            "authorization: bearer [REDACTED]",
        ),
    ];
    for (key, want) in keys {
        assert_eq!(redacted("", key), Some((want.to_owned(), 1)), "{key}");
        let quoted = format!("key=\"{key}\", é");
        let (got, n) = redacted("", &quoted).unwrap();
        assert_eq!((got, n), (format!("key=\"{want}\", é"), 1));
    }
}

#[test]
fn near_misses_are_left_alone() {
    for text in [
        "task-abcdefghijklmnopqrstuvwxyz",       // `sk-` inside a word
        "sk-short",                              // too short
        "AKIAIOSFODNN7EXAMPLE1",                 // 17 after AKIA: not a key id
        "Bearer authentication",                 // a word, not a token
        "my_ghp_abcdefghijklmnopqrstuvwxyz0123", // `_` before the prefix
        "nothing to see",
        "",
    ] {
        assert_eq!(redacted("", text), None, "{text}");
    }
    assert_eq!(
        redacted(
            r#"{"defaults": false}"#,
            "sk-proj-abcdefghijklmnopqrstuvwxyz"
        ),
        None
    );
}

#[test]
fn config_patterns_and_replacement() {
    let config = r#"{"replacement": "***", "patterns": [
        {"name": "slack", "prefix": "xoxb-", "charset": "A-Za-z0-9-", "min_len": 10},
        {"prefix": "token=", "keep_prefix": true, "ignore_case": true, "min_len": 4, "max_len": 8}]}"#;
    assert_eq!(
        redacted(
            config,
            "a xoxb-1234-abcd-5678 b TOKEN=abcd c sk-ant-abcdefghijklmnopqrstuvwxyz"
        ),
        Some(("a *** b TOKEN=*** c ***".to_owned(), 3))
    );
    assert_eq!(redacted(config, "token=abcdefghijk"), None);
    for bad in [
        r#"{"pattern": []}"#,
        r#"{"patterns": [{"prefix": ""}]}"#,
        r#"{"patterns": [{"prefix": "é"}]}"#,
        r#"{"patterns": [{"prefix": "a", "charset": "z-a"}]}"#,
        r#"{"patterns": [{"prefix": "a", "charset": ""}]}"#,
        r#"{"patterns": [{"prefix": "a", "min_len": 0}]}"#,
        r#"{"patterns": [{"prefix": "a", "min_len": 5, "max_len": 4}]}"#,
        r#"{"patterns": [{"regex": "a"}]}"#,
        r#"{"patterns": [{"name": "nothing"}]}"#,
        r#"{"replacement": 5}"#,
    ] {
        assert!(compile(bad).is_err(), "{bad}");
    }
}

#[test]
fn results_are_rewritten_only_when_something_was_redacted() {
    let r = compile("").unwrap();
    let plain = serde_json::json!({"content": [{"type": "text", "text": "fine"}]}).to_string();
    assert_eq!(r.redact_result(&plain), None);
    assert_eq!(r.redact_result("not json"), None);
    assert_eq!(
        r.redact_result("not json sk-abcdefghijklmnopqrstuvwxyz"),
        None
    );
    // An escaped prefix is found: the fast path gives way to a parse.
    let escaped = r#"{"content":[{"type":"text","text":"\u0073k-abcdefghijklmnopqrstuvwxyz"}]}"#;
    assert_eq!(r.redact_result(escaped).unwrap().1, 1);
    assert!(!r.might_match(&plain));
    let key = "sk-abcdefghijklmnopqrstuvwxyz";
    let result = serde_json::json!({
        "content": [
            {"type": "text", "text": format!("k {key} and ghp_abcdefghijklmnopqrstuvwxyz")},
            {"type": "image", "data": key, "mimeType": "image/png"},
            {"type": "resource", "resource": {"uri": "file:///k", "text": key}}],
        "structuredContent": {"nested": [{"key": key}], "n": 1},
        "_meta": {"other": true, "toolgate": {"redactions": 2, "x": 1}}});
    let (text, n) = r.redact_result(&result.to_string()).unwrap();
    assert_eq!(n, 4);
    let got: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(got["content"][0]["text"], "k [REDACTED] and [REDACTED]");
    assert_eq!(got["content"][1]["data"], key, "not text: left alone");
    assert_eq!(got["content"][2]["resource"]["text"], "[REDACTED]");
    assert_eq!(got["structuredContent"]["nested"][0]["key"], "[REDACTED]");
    assert_eq!(
        got["_meta"],
        serde_json::json!({"other": true, "toolgate": {"redactions": 6, "x": 1}})
    );
    let off = compile(r#"{"structured_content": false}"#).unwrap();
    let only_structured =
        serde_json::json!({"content": [], "structuredContent": {"k": key}, "_meta": 3});
    assert_eq!(off.redact_result(&only_structured.to_string()), None);
    let (text, _) = r.redact_result(&only_structured.to_string()).unwrap();
    assert!(
        text.contains(r#""_meta":{"toolgate":{"redactions":1}}"#),
        "{text}"
    );
}

#[test]
fn look_alikes_need_no_parse() {
    let r = compile("").unwrap();
    let text =
        serde_json::json!({"content": [{"type": "text", "text": "task-list sk-x ".repeat(100)}]});
    assert!(!r.might_match(&text.to_string()));
}
