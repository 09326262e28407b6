//! The session core on its own: bytes in, forwarded bytes or the gateway's answer out.

use super::*;
use crate::clock::ManualClock;
use crate::counters::MemoryCounterStore;
use crate::policy::UNKNOWN_RULE;
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

// ---------------------------------------------------------------------------------------------
// Tables: bytes in, bytes out. Each case is one line; the gateway's ids start at 1 in every
// session, so what goes upstream and what comes back are known to the byte.
// ---------------------------------------------------------------------------------------------

/// A policy that allows what it does not hide, to see what the catalogue alone decides.
const OPEN: &str = r#"{"version":"1","default":"allow","hide":["secret"]}"#;

fn session_with(policy: &str, counters: &Arc<dyn CounterStore>) -> Session {
    Session::new(
        Arc::new(Policy::from_json(policy, "policy.json").unwrap()),
        counters.clone(),
        Identity {
            grant: "g".into(),
            session: "s".into(),
        },
    )
}

fn counters() -> Arc<dyn CounterStore> {
    Arc::new(MemoryCounterStore::new(ManualClock::starting_at(0)))
}

/// The bytes a client line sends upstream (it must be forwarded).
fn up(session: &Session, line: &str) -> String {
    match session.from_client(line.as_bytes()) {
        ClientLine::Forward(f) => String::from_utf8(f.line.into_owned()).unwrap(),
        other => panic!("{line} was not forwarded: {other:?}"),
    }
}

/// The gateway's own answer to a client line (it must not be forwarded).
fn answer(session: &Session, line: &str) -> String {
    match session.from_client(line.as_bytes()) {
        ClientLine::Answer(reply) => String::from_utf8(reply).unwrap(),
        other => panic!("{line} was not answered: {other:?}"),
    }
}

/// The id of a reply line, as written, and its error code if it is an error.
fn id_and_code(reply: &str) -> (String, Option<i64>) {
    let envelope = Envelope::parse(reply.trim_end().as_bytes()).unwrap();
    (
        envelope.id.expect("a reply has an id").get().to_owned(),
        envelope.error_code(),
    )
}

/// The line `error_line` writes: what the client gets when the gateway answers with an error.
fn error(id: &str, code: i64, message: &str) -> String {
    format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"error\":{}}}\n",
        json!({"code": code, "message": message})
    )
}

/// `_meta.toolgate` of a refused call's tool result, with the id it came back under.
fn refusal_meta(reply: &str) -> (Value, Value) {
    let reply: Value = serde_json::from_str(reply).unwrap();
    assert_eq!(reply["result"]["isError"], true, "{reply}");
    (
        reply["id"].clone(),
        reply["result"]["_meta"]["toolgate"].clone(),
    )
}

#[rstest::rstest]
#[case::plain_string(r#""abc""#)]
#[case::escaped_letter(r#""a\u0062""#)]
#[case::escaped_quote_and_backslash(r#""q\"\\""#)]
#[case::escaped_slash(r#""\/""#)]
#[case::surrogate_pair(r#""\ud83d\ude00""#)]
#[case::non_ascii("\"é\"")]
#[case::empty_string(r#""""#)]
#[case::zero("0")]
#[case::integer("7")]
#[case::negative("-3")]
#[case::beyond_u64("123456789012345678901234567890")]
fn the_clients_id_comes_back_exactly_as_written(
    #[case] client_id: &str,
    #[values("1", "1.0", "1e0", "10e-1")] echoed: &str,
) {
    let s = session();
    let sent = up(
        &s,
        &format!(r#"{{"jsonrpc":"2.0","id":{client_id},"method":"ping"}}"#),
    );
    assert_eq!(sent, r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
    // However the upstream spells the gateway's id back, the client gets its own.
    let reply = format!(r#"{{"jsonrpc":"2.0","id":{echoed},"result":{{}}}}"#);
    assert_eq!(
        upstream(&s, &reply),
        Some(format!(
            r#"{{"jsonrpc":"2.0","id":{client_id},"result":{{}}}}"#
        ))
    );
    assert_eq!(s.pending_requests(), 0);
    assert_eq!(upstream(&s, &reply), None, "a second reply reaches nobody");
    // The gateway's own answers carry it too: a refused call, a call refused for its id.
    let (id, meta) = refusal_meta(&answer(&s, &call(client_id, "nope")));
    assert_eq!(id, serde_json::from_str::<Value>(client_id).unwrap());
    assert_eq!(meta["decision"], "deny");
    let sent = up(&s, &call(client_id, "echo"));
    assert_eq!(
        sent,
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{}}}"#
    );
    let reused = answer(
        &s,
        &format!(r#"{{"jsonrpc":"2.0","id":{client_id},"method":"ping"}}"#),
    );
    assert_eq!(id_and_code(&reused), (client_id.to_owned(), Some(-32600)));
}

#[test]
fn only_the_id_is_replaced_whitespace_and_all() {
    let s = session();
    let sent = up(
        &s,
        r#"{ "jsonrpc" : "2.0" , "id" :  "x"  , "method" : "ping" }"#,
    );
    assert_eq!(
        sent,
        r#"{ "jsonrpc" : "2.0" , "id" :  1  , "method" : "ping" }"#
    );
    let back = upstream(&s, r#"{"id" : 1 ,"jsonrpc":"2.0","result":{"a":[1,2]}}"#);
    assert_eq!(
        back.as_deref(),
        Some(r#"{"id" : "x" ,"jsonrpc":"2.0","result":{"a":[1,2]}}"#)
    );
}

#[rstest::rstest]
fn an_id_that_is_not_a_string_or_an_integer_is_refused_and_costs_nothing(
    #[values(
        "null",
        "1.0",
        "1e0",
        "-0.5",
        "true",
        "false",
        "{}",
        "[1]",
        r#"{"a":1}"#
    )]
    id: &str,
    #[values("ping", "tools/call", "tools/list", "initialize")] method: &str,
) {
    let s = session();
    let line = format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{{"name":"create","arguments":{{}}}}}}"#
    );
    // Not echoed: the id is what was wrong.
    assert_eq!(
        id_and_code(&answer(&s, &line)),
        ("null".into(), Some(-32600))
    );
    assert_eq!(s.pending_requests(), 0);
    // The one `create` unit is still there, and the first gateway id unused.
    assert_eq!(
        up(&s, &call("1", "create")),
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"create","arguments":{}}}"#
    );
}

#[rstest::rstest]
#[case::same_integer("5", "5", true)]
#[case::same_string(r#""ab""#, r#""ab""#, true)]
#[case::string_spelled_with_an_escape(r#""ab""#, r#""a\u0062""#, true)]
#[case::slash_spelled_with_an_escape(r#""/""#, r#""\/""#, true)]
#[case::integer_and_its_string("5", r#""5""#, false)]
#[case::strings_differing_in_case(r#""a""#, r#""A""#, false)]
#[case::integers_differing("5", "6", false)]
fn a_pending_id_cannot_be_reused(
    #[case] first: &str,
    #[case] second: &str,
    #[case] reused: bool,
    #[values("ping", "tools/call")] method: &str,
) {
    let s = session();
    let list = |id: &str| format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list"}}"#);
    assert_eq!(
        up(&s, &list(first)),
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#
    );
    let line = match method {
        "ping" => format!(r#"{{"jsonrpc":"2.0","id":{second},"method":"ping"}}"#),
        _ => call(second, "create"),
    };
    if reused {
        // Refused under the id as the client wrote it this time, before any unit is spent.
        assert_eq!(
            id_and_code(&answer(&s, &line)),
            (second.to_owned(), Some(-32600))
        );
        assert_eq!(s.pending_requests(), 1);
    } else {
        up(&s, &line);
        assert_eq!(s.pending_requests(), 2);
    }
    // Once the first is answered, its id is free again.
    let back = upstream(
        &s,
        r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"create"}]}}"#,
    );
    assert_eq!(
        back,
        Some(format!(
            r#"{{"jsonrpc":"2.0","id":{first},"result":{{"tools":[{{"name":"create"}}]}}}}"#
        ))
    );
    if reused {
        assert_eq!(
            up(&s, &line),
            line.replacen(&format!(r#""id":{second}"#), r#""id":2"#, 1)
        );
    }
}

#[rstest::rstest]
#[case::integer("6", "6")]
#[case::string(r#""l""#, r#""l""#)]
#[case::string_spelled_another_way(r#""l""#, r#""\u006c""#)]
fn a_client_cancellation_goes_up_under_the_gateways_id(#[case] id: &str, #[case] named: &str) {
    let s = session();
    up(&s, r#"{"jsonrpc":"2.0","id":"other","method":"ping"}"#);
    up(
        &s,
        &format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list"}}"#),
    );
    let cancel = format!(
        r#"{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{{"requestId":{named},"reason":"x"}}}}"#
    );
    assert_eq!(
        up(&s, &cancel),
        r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":2,"reason":"x"}}"#
    );
    assert_eq!(s.pending_requests(), 1);
    // The late reply reaches nobody, however it is spelled; the id is free again.
    let late = r#"{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"secret"}]}}"#;
    assert_eq!(upstream(&s, late), None);
    assert_eq!(upstream(&s, &late.replace(":2,", ":2.0,")), None);
    assert_eq!(s.from_client(cancel.as_bytes()), ClientLine::Drop);
    assert_eq!(
        up(
            &s,
            &format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#)
        ),
        r#"{"jsonrpc":"2.0","id":3,"method":"ping"}"#
    );
}

#[rstest::rstest]
#[case::cancelling_an_id_not_pending(
    r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"zz"}}"#
)]
#[case::cancelling_the_gateways_id_not_the_clients(
    r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}"#
)]
#[case::cancelling_with_no_params(r#"{"jsonrpc":"2.0","method":"notifications/cancelled"}"#)]
#[case::cancelling_with_no_request_id(
    r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"reason":"l"}}"#
)]
#[case::a_tools_call_without_an_id(
    r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"create","arguments":{}}}"#
)]
#[case::a_reply_to_no_server_request(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#)]
#[case::an_error_reply_to_no_server_request(
    r#"{"jsonrpc":"2.0","id":"l","error":{"code":1,"message":"x"}}"#
)]
fn a_client_line_for_nothing_pending_goes_nowhere(#[case] line: &str) {
    let s = session();
    up(&s, r#"{"jsonrpc":"2.0","id":"l","method":"tools/list"}"#);
    assert_eq!(s.from_client(line.as_bytes()), ClientLine::Drop);
    // Nothing pending was touched, and no unit was spent.
    assert_eq!(s.pending_requests(), 1);
    up(&s, &call("2", "create"));
}

#[rstest::rstest]
#[case::string(r#""srv-1""#)]
#[case::integer("7")]
#[case::escaped(r#""\u0073""#)]
fn server_requests_are_renumbered_both_ways(
    #[case] theirs: &str,
    #[values("1", "1.0")] echoed: &str,
) {
    let s = session();
    // The client's own request holds gateway id 1 upstream; the server's is numbered apart.
    up(&s, r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
    let request = format!(r#"{{"jsonrpc":"2.0","id":{theirs},"method":"roots/list"}}"#);
    assert_eq!(
        upstream(&s, &request).as_deref(),
        Some(r#"{"jsonrpc":"2.0","id":1,"method":"roots/list"}"#)
    );
    let reply = format!(r#"{{"jsonrpc":"2.0","id":{echoed},"result":{{"roots":[]}}}}"#);
    assert_eq!(
        up(&s, &reply),
        format!(r#"{{"jsonrpc":"2.0","id":{theirs},"result":{{"roots":[]}}}}"#)
    );
    // Replying twice reaches nobody.
    assert_eq!(s.from_client(reply.as_bytes()), ClientLine::Drop);
    assert_eq!(s.pending_requests(), 1);
}

#[rstest::rstest]
#[case::as_sent(r#""srv-1""#, r#""srv-1""#)]
#[case::spelled_another_way(r#""srv-1""#, r#""\u0073rv-1""#)]
#[case::integer("7", "7")]
fn a_server_cancellation_comes_down_under_the_clients_id_for_it(
    #[case] theirs: &str,
    #[case] named: &str,
) {
    let s = session();
    upstream(
        &s,
        &format!(r#"{{"jsonrpc":"2.0","id":{theirs},"method":"roots/list"}}"#),
    )
    .unwrap();
    let cancel = format!(
        r#"{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{{"requestId":{named}}}}}"#
    );
    assert_eq!(
        upstream(&s, &cancel).as_deref(),
        Some(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}"#)
    );
    // The client's late reply reaches nobody; cancelling again sends nothing.
    let late = r#"{"jsonrpc":"2.0","id":1,"result":{"roots":[]}}"#;
    assert_eq!(s.from_client(late.as_bytes()), ClientLine::Drop);
    assert_eq!(upstream(&s, &cancel), None);
}

/// The pages of one listing: what the client asks, what the upstream lists, what the client
/// gets. The hidden tool is on every page.
const PAGES: [(&str, &str, &str); 3] = [
    (
        r#"{}"#,
        r#"{"tools":[{"name":"a"},{"name":"secret"}],"nextCursor":"c2"}"#,
        r#"{"tools":[{"name":"a"}],"nextCursor":"c2"}"#,
    ),
    (
        r#"{"cursor":"c2"}"#,
        r#"{"tools":[{"name":"secret","inputSchema":{"type":"object"}},{"name":"b"}],"nextCursor":"c3"}"#,
        r#"{"tools":[{"name":"b"}],"nextCursor":"c3"}"#,
    ),
    (
        r#"{"cursor":"c3","_meta":{}}"#,
        r#"{"tools":[{"name":"secret"}],"nextCursor":null}"#,
        r#"{"tools":[],"nextCursor":null}"#,
    ),
];

/// Passes page `n` of [`PAGES`] through `s` under the client id `"p{n}"`, checking both sides.
fn page(s: &Session, n: usize) {
    let (params, listed, shown) = PAGES[n];
    let request =
        format!(r#"{{"jsonrpc":"2.0","id":"p{n}","method":"tools/list","params":{params}}}"#);
    let sent = up(s, &request);
    let ours = Envelope::parse(sent.as_bytes())
        .unwrap()
        .id
        .unwrap()
        .get()
        .to_owned();
    assert_eq!(sent, request.replace(&format!(r#""p{n}""#), &ours));
    assert_eq!(
        upstream(
            s,
            &format!(r#"{{"jsonrpc":"2.0","id":{ours},"result":{listed}}}"#)
        ),
        Some(format!(
            r#"{{"jsonrpc":"2.0","id":"p{n}","result":{shown}}}"#
        )),
        "page {n}"
    );
}

#[rstest::rstest]
#[case::no_listing_yet(&[], false, "other", true)]
#[case::first_page_of_three(&[0], false, "other", true)]
#[case::two_pages_of_three(&[0, 1], false, "other", true)]
#[case::a_later_page_without_its_first(&[1, 2], false, "other", true)]
#[case::complete_a_tool_not_listed(&[0, 1, 2], false, "other", false)]
#[case::complete_a_tool_on_the_first_page(&[0, 1, 2], false, "a", true)]
#[case::complete_a_tool_on_the_second_page(&[0, 1, 2], false, "b", true)]
#[case::complete_then_list_changed(&[0, 1, 2], true, "other", true)]
#[case::listed_again_from_the_first_page(&[0, 1, 2, 0], false, "other", true)]
#[case::listed_again_to_the_end(&[0, 1, 2, 0, 1, 2], false, "other", false)]
#[case::hidden_before_any_listing(&[], false, "secret", false)]
#[case::hidden_though_listed(&[0, 1, 2], false, "secret", false)]
fn hidden_tools_are_dropped_from_every_page_and_a_complete_listing_knows_the_rest(
    #[case] pages: &[usize],
    #[case] list_changed: bool,
    #[case] tool: &str,
    #[case] forwarded: bool,
) {
    let s = session_with(OPEN, &counters());
    for &n in pages {
        page(&s, n);
    }
    if list_changed {
        let changed = r#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#;
        assert_eq!(upstream(&s, changed).as_deref(), Some(changed));
    }
    let line = call(r#""c""#, tool);
    match s.from_client(line.as_bytes()) {
        ClientLine::Forward(_) => assert!(forwarded, "{tool} was forwarded"),
        ClientLine::Answer(reply) => {
            assert!(!forwarded, "{tool} was refused");
            let (id, meta) = refusal_meta(std::str::from_utf8(&reply).unwrap());
            assert_eq!(id, "c");
            // Hidden and unknown read the same: nothing tells them apart.
            assert_eq!(meta["rule"], UNKNOWN_RULE, "{meta}");
            assert_eq!(meta["reason"], "unknown tool", "{meta}");
        }
        ClientLine::Drop | ClientLine::Hold(_) => panic!("dropped or held"),
    }
}

/// How the one `create` call in flight ends.
#[derive(Debug)]
enum End {
    /// The upstream answers with this JSON-RPC error code.
    Error(i64),
    /// The upstream answers with a tool result: `isError` or not.
    Result { is_error: bool },
    /// The transport gives up on it, after writing it or not.
    Abandon { written: bool },
    /// It times out; then, maybe, the upstream answers late with this code.
    Expire(Option<i64>),
    /// The client cancels it; then, maybe, the upstream answers late with this code.
    Cancel(Option<i64>),
    /// The upstream goes away.
    Gone,
}

#[rstest::rstest]
#[case::parse_error(End::Error(-32700), true)]
#[case::invalid_request(End::Error(-32600), true)]
#[case::method_not_found(End::Error(-32601), true)]
#[case::invalid_params(End::Error(-32602), true)]
#[case::internal_error(End::Error(-32603), false)]
#[case::server_error(End::Error(-32000), false)]
#[case::application_error(End::Error(1), false)]
#[case::result(End::Result { is_error: false }, false)]
#[case::is_error_result(End::Result { is_error: true }, false)]
#[case::abandoned_unwritten(End::Abandon { written: false }, true)]
#[case::abandoned_written(End::Abandon { written: true }, false)]
#[case::timed_out(End::Expire(None), false)]
#[case::timed_out_then_not_executed(End::Expire(Some(-32601)), false)]
#[case::cancelled(End::Cancel(None), false)]
#[case::cancelled_then_not_executed(End::Cancel(Some(-32601)), false)]
#[case::upstream_gone(End::Gone, false)]
fn how_a_call_ends_decides_its_refund(#[case] end: End, #[case] refunded: bool) {
    let counters = counters();
    let s = session_with(POLICY, &counters);
    assert_eq!(
        up(&s, &call(r#""c1""#, "create")),
        call("1", "create"),
        "the gateway's id 1"
    );
    let late = |code: i64| {
        let line = format!(r#"{{"jsonrpc":"2.0","id":1,"error":{{"code":{code},"message":"x"}}}}"#);
        assert_eq!(upstream(&s, &line), None, "a late reply reaches nobody");
    };
    match end {
        End::Error(code) => {
            let line =
                format!(r#"{{"jsonrpc":"2.0","id":1,"error":{{"code":{code},"message":"x"}}}}"#);
            assert_eq!(
                upstream(&s, &line),
                Some(line.replacen(r#""id":1,"#, r#""id":"c1","#, 1))
            );
        }
        End::Result { is_error } => {
            let line = format!(
                r#"{{"jsonrpc":"2.0","id":1,"result":{{"content":[],"isError":{is_error}}}}}"#
            );
            assert_eq!(
                upstream(&s, &line),
                Some(line.replacen(r#""id":1,"#, r#""id":"c1","#, 1))
            );
        }
        End::Abandon { written } => {
            assert_eq!(
                s.abandon(1, written, "no"),
                Some(error(r#""c1""#, -32000, "no").into_bytes())
            );
            assert_eq!(s.abandon(1, written, "no"), None, "abandoned once");
        }
        End::Expire(code) => {
            let message = "[toolgate] the upstream MCP server did not answer within 0 s";
            assert_eq!(
                s.expire(Duration::ZERO),
                vec![error(r#""c1""#, -32000, message).into_bytes()]
            );
            code.map(late);
        }
        End::Cancel(code) => {
            up(
                &s,
                r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"c1"}}"#,
            );
            code.map(late);
        }
        End::Gone => {
            assert_eq!(
                s.upstream_gone("gone"),
                vec![error(r#""c1""#, -32000, "gone").into_bytes()]
            );
        }
    }
    assert_eq!(s.pending_requests(), 0);
    // Another session on the same counters: the cap of 1 has room only if the unit came back.
    let other = session_with(POLICY, &counters);
    match other.from_client(call("2", "create").as_bytes()) {
        ClientLine::Forward(_) => assert!(refunded, "{end:?} refunded"),
        ClientLine::Answer(reply) => {
            assert!(!refunded, "{end:?} not refunded");
            let (id, meta) = refusal_meta(std::str::from_utf8(&reply).unwrap());
            assert_eq!(id, 2);
            assert_eq!(meta["decision"], "rate_limited", "{meta}");
        }
        ClientLine::Drop | ClientLine::Hold(_) => panic!("dropped or held"),
    }
}

#[rstest::rstest]
#[case::nothing_pending(&[])]
#[case::one_call(&[r#""c""#])]
#[case::ids_of_every_kind(&[r#""a""#, "7", r#""b\u0063""#, "-1", r#""""#])]
fn upstream_loss_answers_every_pending_request_and_every_later_one(#[case] ids: &[&str]) {
    let s = session();
    for (n, id) in ids.iter().enumerate() {
        let line = match n % 3 {
            0 => call(id, "echo"),
            1 => format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list"}}"#),
            _ => format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#),
        };
        up(&s, &line);
    }
    // A server request in flight: the client's reply to it will reach nobody.
    upstream(&s, r#"{"jsonrpc":"2.0","id":"srv","method":"roots/list"}"#).unwrap();
    let mut answered = s.upstream_gone("the upstream exited");
    answered.sort();
    let mut expected: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| error(id, -32000, "the upstream exited").into_bytes())
        .collect();
    expected.sort();
    assert_eq!(answered, expected);
    assert_eq!(s.pending_requests(), 0);
    assert!(s.upstream_gone("again").is_empty(), "answered once");
    // Late replies reach nobody; later requests are answered at once.
    assert_eq!(
        upstream(&s, r#"{"jsonrpc":"2.0","id":1,"result":{}}"#),
        None
    );
    assert_eq!(
        s.from_client(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#),
        ClientLine::Drop
    );
    for line in [
        call("9", "echo"),
        r#"{"jsonrpc":"2.0","id":9,"method":"ping"}"#.into(),
    ] {
        assert_eq!(
            answer(&s, &line),
            error("9", -32000, "upstream MCP server has exited")
        );
    }
    assert_eq!(s.pending_requests(), 0);
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

/// What the client gets for a reply carrying a tool list: the filtered `result`, or an error
/// (`-32603`) in its place.
#[rstest::rstest]
#[case::hidden_dropped(
    r#"{"tools":[{"name":"echo"},{"name":"secret"}]}"#,
    Some(r#"{"tools":[{"name":"echo"}]}"#)
)]
#[case::only_hidden(r#"{"tools":[{"name":"secret"}]}"#, Some(r#"{"tools":[]}"#))]
#[case::other_members_kept(
    r#"{"tools":[{"name":"secret"},{"name":"echo","x":[1]}],"nextCursor":"n","_meta":{}}"#,
    Some(r#"{"tools":[{"name":"echo","x":[1]}],"nextCursor":"n","_meta":{}}"#)
)]
#[case::not_in_the_policy(r#"{"tools":[{"name":"other"}]}"#, Some(r#"{"tools":[]}"#))]
#[case::tools_key_spelled_with_an_escape(
    r#"{"t\u006fols":[{"name":"secret"},{"name":"echo"}]}"#,
    Some(r#"{"tools":[{"name":"echo"}]}"#)
)]
#[case::name_spelled_with_an_escape(
    r#"{"tools":[{"n\u0061me":"s\u0065cret"},{"name":"echo"}]}"#,
    Some(r#"{"tools":[{"name":"echo"}]}"#)
)]
#[case::name_beside_a_name_in_another_case(
    r#"{"tools":[{"name":"echo","Name":"secret"},{"name":"echo"}]}"#,
    Some(r#"{"tools":[{"name":"echo"}]}"#)
)]
#[case::a_tool_without_a_name(r#"{"tools":[{"title":"secret"},7]}"#, Some(r#"{"tools":[]}"#))]
#[case::lone_surrogate(r#"{"tools":[{"name":"secret\ud800"}]}"#, None)]
#[case::tools_in_another_case(r#"{"Tools":[{"name":"secret"}]}"#, None)]
#[case::tools_twice(r#"{"tools":[],"tools":[{"name":"secret"}]}"#, None)]
#[case::tools_and_an_escaped_twin(r#"{"tools":[],"tool\u0073":[{"name":"secret"}]}"#, None)]
#[case::tools_not_a_list(r#"{"tools":{"name":"secret"}}"#, None)]
// Spelled with nothing the quick look finds but an escape, or an `ſ`.
#[case::tools_only_escaped(r#"{"tool\u0073":[{"name":"secret"}]}"#, Some(r#"{"tools":[]}"#))]
#[case::tools_with_a_long_s(r#"{"toolſ":[{"name":"secret"}]}"#, None)]
fn every_tool_list_is_filtered_and_an_unreadable_one_never_passes(
    #[case] result: &str,
    #[case] shown: Option<&str>,
    // A list in the reply to another request is filtered all the same.
    #[values("tools/list", "ping")] method: &str,
) {
    let s = session();
    up(
        &s,
        &format!(r#"{{"jsonrpc":"2.0","id":"q","method":"{method}"}}"#),
    );
    let out = upstream(
        &s,
        &format!(r#"{{"jsonrpc":"2.0","id":1,"result":{result}}}"#),
    )
    .unwrap();
    match shown {
        Some(shown) => assert_eq!(
            out,
            format!(r#"{{"jsonrpc":"2.0","id":"q","result":{shown}}}"#)
        ),
        None => {
            assert_eq!(id_and_code(&out), (r#""q""#.into(), Some(-32603)), "{out}");
            assert!(!out.contains("\"result\""), "{out}");
        }
    }
    assert_eq!(s.pending_requests(), 0);
    // A reply to nothing pending (replayed, say) is dropped.
    let replayed = r#"{"jsonrpc":"2.0","id":999,"result":{"tools":[{"name":"secret"}]}}"#;
    assert_eq!(upstream(&s, replayed), None);
}

/// A hidden tool's schema must not give it away: with arguments its schema refuses, it gets
/// the answer a tool that does not exist gets, byte for byte.
#[test]
fn a_hidden_tool_with_bad_arguments_is_as_unknown_as_a_missing_one() {
    let s = session();
    let (_, id) = forwarded(&s, r#"{"jsonrpc":"2.0","id":"l","method":"tools/list"}"#);
    let tools = json!([{"name": "secret", "inputSchema": {"type": "object",
        "properties": {"cli": {"type": "string"}}, "required": ["cli"]}}]);
    upstream(
        &s,
        &json!({"jsonrpc": "2.0", "id": id.unwrap(), "result": {"tools": tools}}).to_string(),
    )
    .unwrap();
    // A key its schema names in another case; a required property missing.
    for args in [json!({"Cli": 1}), json!({})] {
        let ask = |tool: &str| {
            answer(
                &s,
                &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                    "params": {"name": tool, "arguments": args}})
                .to_string(),
            )
        };
        let missing = ask("nothing");
        assert!(missing.contains("unknown tool"), "{missing}");
        assert_eq!(ask("secret"), missing, "{args}");
    }
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
