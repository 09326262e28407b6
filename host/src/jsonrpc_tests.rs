//! The routing fields, key checks and id handling on their own; the round trip of an id
//! through the gateway as property tests.

use super::*;

#[test]
fn routes_by_decoded_method_and_rejects_tricks() {
    let e =
        Envelope::parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools\/call","params":{}}"#).unwrap();
    assert_eq!(e.method.as_deref(), Some("tools/call"));
    assert_eq!(e.id_key().as_deref(), Some("1"));
    let dup =
        Envelope::parse(br#"{"id":1,"method":"tools/list","method":"tools/call"}"#).unwrap_err();
    assert_eq!(dup.code, INVALID_REQUEST);
    assert_eq!(Envelope::parse(b"{nope").unwrap_err().code, PARSE_ERROR);
    assert_eq!(Envelope::parse(b"[1]").unwrap_err().code, INVALID_REQUEST);
    assert_eq!(Envelope::parse(b"42").unwrap_err().code, INVALID_REQUEST);
    assert_eq!(
        Envelope::parse(br#"{"id":1,"method":7}"#).unwrap_err().code,
        INVALID_REQUEST
    );
}

#[test]
fn a_null_id_is_present_and_invalid() {
    let e = Envelope::parse(br#"{"id":null,"method":"tools/call"}"#).unwrap();
    assert_eq!(e.id.map(RawValue::get), Some("null"));
    assert!(Envelope::parse(br#"{"method":"x"}"#).unwrap().id.is_none());
    let kinds: Vec<IdKind> = [
        "1", "-3", "\"a\"", "null", "1.0", "1e0", "true", "{}", "[]", "-",
    ]
    .iter()
    .map(|t| {
        id_kind(
            &RawValue::from_string((*t).into())
                .unwrap_or_else(|_| RawValue::from_string("null".into()).unwrap()),
        )
    })
    .collect();
    use IdKind::*;
    assert_eq!(
        kinds,
        [Integer, Integer, String, Invalid, Invalid, Invalid, Invalid, Invalid, Invalid, Invalid]
    );
}

#[test]
fn gateway_ids_read_back_however_spelled() {
    let raw = |t: &str| RawValue::from_string(t.into()).unwrap();
    assert_eq!(gateway_id(&raw("7")), Some(7));
    assert_eq!(gateway_id(&raw("7.0")), Some(7));
    assert_eq!(gateway_id(&raw("7e0")), Some(7));
    assert_eq!(gateway_id(&raw("7.5")), None);
    assert_eq!(gateway_id(&raw("\"7\"")), None);
    assert_eq!(gateway_id(&raw("-1")), None);
}

#[test]
fn splice_replaces_exactly_the_value() {
    let line = br#"{"id" : 17 ,"method":"x"}"#;
    let e = Envelope::parse(line).unwrap();
    let out = splice(line, e.id.unwrap(), b"\"abc\"").unwrap();
    assert_eq!(out, br#"{"id" : "abc" ,"method":"x"}"#);
    let elsewhere = RawValue::from_string("1".into()).unwrap();
    assert!(splice(line, &elsewhere, b"2").is_none());
}

#[test]
fn keys_equal_under_case_folding_are_refused_at_any_depth() {
    let refused = [
        r#"{"method":"ping","Method":"tools/call"}"#,
        r#"{"id":1,"ID":2}"#,
        r#"{"params":{"name":"a","Name":"b"}}"#,
        r#"{"params":{"arguments":{"sessionId":"x","SessionId":"gw-1"}}}"#,
        "{\"params\":{\"arguments\":{\"sessionId\":1,\"\u{17f}essionId\":2}}}",
        "{\"a\":[{\"kind\":1,\"\u{212a}ind\":2}]}",
        r#"{"\u004dethod":"x","method":"y"}"#,
        r#"{"a":1,"a":1}"#,
        r#"{"s":"\ud800"}"#,
    ];
    for text in refused {
        let fault = check_keys(text.as_bytes()).unwrap_err();
        assert_eq!(fault.code, INVALID_REQUEST, "{text}");
    }
    for text in [
        r#"{"id":1,"method":"tools/call","params":{"name":"a","arguments":{"x":[{"y":1},{"y":2}]}}}"#,
        r#"{"a":{"a":{"a":1}}}"#,
        r#"{"é":1,"e":2}"#,
    ] {
        assert_eq!(check_keys(text.as_bytes()), Ok(()), "{text}");
    }
    // Many keys: the hash-set path.
    let many: Vec<String> = (0..100).map(|i| format!("\"k{i}\":{i}")).collect();
    let ok = format!("{{{}}}", many.join(","));
    assert_eq!(check_keys(ok.as_bytes()), Ok(()));
    let bad = format!("{{{},\"K50\":0}}", many.join(","));
    assert!(check_keys(bad.as_bytes()).is_err());
}

/// Each object's keys are checked in a list on the stack, one per level: objects nested as
/// deep as serde reads them pass on a thread with the smallest stack the gateway gives one
/// (tokio's and std's 2 MiB), and deeper ones are refused with an error, not a crash.
#[test]
fn nested_objects_are_checked_to_serdes_depth_and_refused_past_it() {
    let nested = |depth: usize| {
        let mut text = String::new();
        for i in 0..depth {
            text.push_str(&format!("{{\"k{i}\":1,\"n\":"));
        }
        text.push('0');
        text.push_str(&"}".repeat(depth));
        text
    };
    let (ok, deep) = (nested(127), nested(100_000));
    let checked = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || (check_keys(ok.as_bytes()), check_keys(deep.as_bytes())))
        .unwrap()
        .join()
        .expect("no stack overflow");
    assert_eq!(checked.0, Ok(()));
    let refused = checked.1.unwrap_err();
    assert!(
        refused.message.contains("recursion limit"),
        "{}",
        refused.message
    );
}

/// `text` as a JSON string, each character written the way `how` picks: as itself where
/// JSON allows, as a short escape where there is one, or as `\u` escapes (upper or lower
/// case hex, a surrogate pair beyond the BMP).
fn spelled(text: &str, how: &[u8]) -> String {
    let mut out = String::from("\"");
    for (i, c) in text.chars().enumerate() {
        let pick = how.get(i % how.len().max(1)).copied().unwrap_or(0) % 4;
        let short = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '/' => Some("\\/"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            _ => None,
        };
        let literal_ok = !matches!(c, '"' | '\\') && c >= ' ';
        match (pick, short) {
            (0, _) if literal_ok => out.push(c),
            (1, Some(short)) => out.push_str(short),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    if pick == 3 {
                        out.push_str(&format!("\\u{unit:04X}"));
                    } else {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
            }
        }
    }
    out.push('"');
    out
}

/// Any id a client may write: a string, spelled any way, or an integer of any size.
fn client_id() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![
        (
            any::<String>(),
            proptest::collection::vec(any::<u8>(), 1..8)
        )
            .prop_map(|(text, how)| spelled(&text, &how)),
        ("-?(0|[1-9][0-9]{0,40})").prop_map(|n| n.to_string()),
    ]
}

proptest::proptest! {
    /// The gateway's round trip of an id: the client's id is read as written, the
    /// gateway's id spliced in is read back by [`gateway_id`] however the upstream spells
    /// it, and the client's id spliced into the reply is byte for byte what it wrote.
    #[test]
    fn an_id_goes_up_and_comes_back_byte_for_byte(
        written in client_id(),
        ours in 0u64..(1 << 53),
        echo in 0usize..4,
        space in "[ \t]{0,2}",
    ) {
        let request = format!(r#"{{"jsonrpc":"2.0","id":{space}{written}{space},"method":"ping"}}"#);
        let envelope = Envelope::parse(request.as_bytes()).unwrap();
        let id = envelope.id.unwrap();
        proptest::prop_assert_eq!(id.get(), written.as_str());
        proptest::prop_assert_ne!(id_kind(id), IdKind::Invalid);
        proptest::prop_assert_eq!(check_keys(request.as_bytes()), Ok(()));

        let up = splice(request.as_bytes(), id, ours.to_string().as_bytes()).unwrap();
        proptest::prop_assert_eq!(
            String::from_utf8(up.clone()).unwrap(),
            format!(r#"{{"jsonrpc":"2.0","id":{space}{ours}{space},"method":"ping"}}"#)
        );
        let sent = Envelope::parse(&up).unwrap();
        proptest::prop_assert_eq!(sent.id.and_then(gateway_id), Some(ours));

        let echoed = match echo {
            0 => ours.to_string(),
            1 => format!("{ours}.0"),
            2 => format!("{ours}e0"),
            _ => format!("{ours}0e-1"),
        };
        let reply = format!(r#"{{"jsonrpc":"2.0","id":{space}{echoed}{space},"result":{{}}}}"#);
        let back = Envelope::parse(reply.as_bytes()).unwrap();
        let their_id = back.id.unwrap();
        proptest::prop_assert_eq!(gateway_id(their_id), Some(ours));
        let restored = splice(reply.as_bytes(), their_id, written.as_bytes()).unwrap();
        proptest::prop_assert_eq!(
            String::from_utf8(restored.clone()).unwrap(),
            format!(r#"{{"jsonrpc":"2.0","id":{space}{written}{space},"result":{{}}}}"#)
        );
        proptest::prop_assert_eq!(
            Envelope::parse(&restored).unwrap().id.map(RawValue::get),
            Some(written.as_str())
        );
    }

    /// Two spellings of an id have one key exactly when they are the same JSON value.
    #[test]
    fn id_keys_are_equal_exactly_when_the_ids_are(
        a in proptest::prelude::any::<String>(),
        b in proptest::prelude::any::<String>(),
        how_a in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..8),
        how_b in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..8),
        n in proptest::prelude::any::<i64>(),
    ) {
        proptest::prop_assert_eq!(id_key(&spelled(&a, &how_a)), id_key(&spelled(&a, &how_b)));
        proptest::prop_assert_eq!(
            id_key(&spelled(&a, &how_a)) == id_key(&spelled(&b, &how_b)),
            a == b
        );
        // A string and an integer never share a key, even when they read alike.
        proptest::prop_assert_ne!(id_key(&n.to_string()), id_key(&spelled(&n.to_string(), &how_a)));
        proptest::prop_assert_eq!(id_key(&n.to_string()), n.to_string());
    }
}

#[test]
fn id_keys_ignore_spelling() {
    assert_eq!(id_key(r#" "a\u0062" "#), id_key(r#""ab""#));
    assert_eq!(id_key("17"), "17");
    assert_eq!(id_key(r#""abc""#), r#""abc""#);
    assert_eq!(id_key(r#""\/""#), id_key(r#""/""#));
    assert_eq!(id_key("1e2"), "100.0");
    assert_eq!(id_key(" 5 "), "5");
}

/// One reading of `tools/call` params gives the name, the arguments' exact text and any key
/// a case-insensitive server would read as `name`, `arguments` or `_meta`.
#[test]
fn call_params_read_the_name_the_arguments_text_and_a_shadowing_key_at_once() {
    fn read(text: &str) -> serde_json::Result<CallParams<'_>> {
        serde_json::from_str(text)
    }
    let p = read(r#"{"name":"echo","arguments":{"n": 1.0e2},"_meta":{}}"#).unwrap();
    assert_eq!(
        (&*p.name, p.arguments.map(RawValue::get), p.shadow),
        ("echo", Some(r#"{"n": 1.0e2}"#), None)
    );
    assert!(matches!(p.name, Cow::Borrowed(_)));
    for (text, shadow) in [
        (r#"{"name":"a","Name":"b"}"#, "Name"),
        (r#"{"name":"a","ARGUMENTS":{}}"#, "ARGUMENTS"),
        (r#"{"name":"a","argumentſ":{}}"#, "argumentſ"),
        (r#"{"name":"a","_META":{},"NAME":1}"#, "_META"),
        (r#"{"N\u0061me":"b","name":"a"}"#, "Name"),
    ] {
        assert_eq!(
            read(text).unwrap().shadow.as_deref(),
            Some(shadow),
            "{text}"
        );
    }
    assert_eq!(
        read(r#"{"name":"e\u0063ho","arguments":null,"other":1}"#)
            .unwrap()
            .name,
        "echo"
    );
    assert_eq!(
        read(r#"{"name":"a","arguments":null}"#)
            .unwrap()
            .arguments
            .map(RawValue::get),
        None
    );
    for (text, error) in [
        (r#"{"arguments":{}}"#, "missing field `name`"),
        (r#"{"name":"a","name":"b"}"#, "duplicate field `name`"),
        (
            r#"{"name":"a","arguments":{},"arguments":{}}"#,
            "duplicate field `arguments`",
        ),
        (r#"{"name":1}"#, "expected a string"),
        (r#"[]"#, "expected struct CallParams"),
    ] {
        let e = read(text).unwrap_err().to_string();
        assert!(e.contains(error), "{text}: {e}");
    }
}
