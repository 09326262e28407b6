//! The router, driven with bytes: what each upstream and the session get.

use super::names::Names;
use super::router::{Out, Router, UpState};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn router() -> Router {
    let names = Names::new(
        "__",
        &[("llmgw".into(), "llmgw".into()), ("ev".into(), "ev".into())],
    )
    .unwrap();
    Router::new(names)
}

fn text(line: &[u8]) -> &str {
    std::str::from_utf8(line).unwrap().trim_end()
}

fn json_of(line: &[u8]) -> Value {
    serde_json::from_slice(line).unwrap()
}

/// The lines sent to upstream `i`, and to the client.
fn split(out: &[Out]) -> (Vec<(usize, Value)>, Vec<Value>) {
    let mut up = Vec::new();
    let mut client = Vec::new();
    for o in out {
        match o {
            Out::Upstream(i, l) => up.push((*i, json_of(l))),
            Out::Client(l) => client.push(json_of(l)),
        }
    }
    (up, client)
}

/// Initializes both upstreams, with `caps` as each one's capabilities.
fn ready(r: &mut Router, caps: [Value; 2]) {
    let now = Instant::now();
    let out = r.from_client(
        br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{}}}"#,
        now,
    );
    let (up, client) = split(&out);
    assert!(client.is_empty());
    assert_eq!(up.len(), 2);
    let mut last = Vec::new();
    for ((i, request), caps) in up.into_iter().zip(caps) {
        let reply = json!({"jsonrpc": "2.0", "id": request["id"], "result": {
            "protocolVersion": if i == 0 { "2025-06-18" } else { "2025-11-25" },
            "capabilities": caps,
            "serverInfo": {"name": format!("server{i}"), "version": "1"},
            "instructions": format!("use server {i}")}});
        last = r.from_upstream(i, reply.to_string().as_bytes());
    }
    let (_, client) = split(&last);
    assert_eq!(client.len(), 1);
    let result = &client[0]["result"];
    assert_eq!(client[0]["id"], 1);
    assert_eq!(
        result["protocolVersion"], "2025-06-18",
        "the oldest version both speak"
    );
    assert_eq!(
        result["instructions"],
        "## llmgw\nuse server 0\n\n## ev\nuse server 1"
    );
    assert_eq!(
        result["_meta"]["toolgate"]["upstreams"]["ev"]["name"],
        "server1"
    );
    assert!(result["capabilities"].get("tasks").is_none());
    r.from_client(
        br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        now,
    );
}

fn tools_caps() -> [Value; 2] {
    [
        json!({"tools": {}}),
        json!({"tools": {"listChanged": true}, "resources": {}, "tasks": {}}),
    ]
}

#[test]
fn a_call_goes_to_its_server_under_its_own_name_with_every_other_byte_kept() {
    let mut r = router();
    ready(&mut r, tools_caps());
    // Odd spacing, a number no f64 holds, an escaped key: all must reach the server as sent.
    let line = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{ "name" : "llmgw__session_create","arguments":{"cli":"claude","n":123456789012345678901234567890,"x":1.0e0,"s":"\u00e9"}}}"#;
    let out = r.from_client(line, Instant::now());
    let [Out::Upstream(0, sent)] = out.as_slice() else {
        panic!("{out:?}")
    };
    let sent = text(sent);
    assert!(sent.contains(r#""name":"session_create""#), "{sent}");
    assert!(
        sent.contains(r#""arguments":{"cli":"claude","n":123456789012345678901234567890,"x":1.0e0,"s":"\u00e9"}"#),
        "{sent}"
    );
    assert!(sent.starts_with(r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":"#));
    // The reply comes back byte for byte.
    let reply = br#"{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"ok"}]}}"#;
    let out = r.from_upstream(0, reply);
    assert_eq!(out, vec![Out::Client(reply.to_vec())]);
    // Once answered, a second reply to the same id goes nowhere.
    assert!(r.from_upstream(0, reply).is_empty());
}

#[test]
fn a_reply_from_the_wrong_server_is_dropped() {
    let mut r = router();
    ready(&mut r, tools_caps());
    r.from_client(
        br#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"ev__echo","arguments":{}}}"#,
        Instant::now(),
    );
    assert!(r
        .from_upstream(0, br#"{"jsonrpc":"2.0","id":8,"result":{"content":[]}}"#)
        .is_empty());
    assert_eq!(
        r.from_upstream(1, br#"{"jsonrpc":"2.0","id":8.0,"result":{"content":[]}}"#)
            .len(),
        1,
        "an id spelled back as 8.0 is still ours"
    );
}

#[test]
fn unknown_prefixes_and_unroutable_methods_are_refused_here() {
    let mut r = router();
    ready(&mut r, tools_caps());
    let (up, client) = split(&r.from_client(
        br#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"other__x"}}"#,
        Instant::now(),
    ));
    assert!(up.is_empty());
    assert_eq!(client[0]["error"]["code"], -32602);
    let (up, client) = split(&r.from_client(
        br#"{"jsonrpc":"2.0","id":10,"method":"tasks/get","params":{"taskId":"t"}}"#,
        Instant::now(),
    ));
    assert!(up.is_empty());
    assert_eq!(client[0]["error"]["code"], -32601);
    let (_, client) = split(&r.from_client(
        br#"{"jsonrpc":"2.0","id":11,"method":"ping"}"#,
        Instant::now(),
    ));
    assert_eq!(client[0], json!({"jsonrpc": "2.0", "id": 11, "result": {}}));
}

#[test]
fn listings_merge_and_page_across_servers() {
    let mut r = router();
    ready(&mut r, tools_caps());
    let (up, client) = split(&r.from_client(
        br#"{"jsonrpc":"2.0","id":20,"method":"tools/list"}"#,
        Instant::now(),
    ));
    assert!(client.is_empty());
    assert_eq!(up.len(), 2);
    let reply = |i: usize, id: &Value, tools: Value, next: Option<&str>| {
        let mut result = json!({"tools": tools});
        if let Some(next) = next {
            result["nextCursor"] = json!(next);
        }
        (
            i,
            json!({"jsonrpc": "2.0", "id": id, "result": result})
                .to_string()
                .into_bytes(),
        )
    };
    let (i0, l0) = reply(0, &up[0].1["id"], json!([{"name": "a"}]), Some("p2"));
    let (i1, l1) = reply(
        1,
        &up[1].1["id"],
        json!([{"name": "b", "_meta": {"x": 1}}]),
        None,
    );
    assert!(r.from_upstream(i0, &l0).is_empty());
    let (_, client) = split(&r.from_upstream(i1, &l1));
    let page = &client[0]["result"];
    assert_eq!(client[0]["id"], 20);
    let names: Vec<&str> = page["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["llmgw__a", "ev__b"]);
    assert_eq!(
        page["tools"][1]["_meta"],
        json!({"x": 1, "toolgate": {"upstream": "ev"}})
    );
    // The next page asks only the server with pages left, with its own cursor.
    let cursor = page["nextCursor"].as_str().unwrap().to_owned();
    let request =
        json!({"jsonrpc": "2.0", "id": 21, "method": "tools/list", "params": {"cursor": cursor}});
    let (up, _) = split(&r.from_client(request.to_string().as_bytes(), Instant::now()));
    assert_eq!(up.len(), 1);
    assert_eq!((up[0].0, &up[0].1["params"]["cursor"]), (0, &json!("p2")));
    let (i0, l0) = reply(0, &up[0].1["id"], json!([{"name": "c"}]), None);
    let (_, client) = split(&r.from_upstream(i0, &l0));
    assert_eq!(client[0]["result"]["tools"][0]["name"], "llmgw__c");
    assert!(client[0]["result"].get("nextCursor").is_none());
    // A cursor that is not ours.
    let (up, client) = split(&r.from_client(
        br#"{"jsonrpc":"2.0","id":22,"method":"tools/list","params":{"cursor":"p2"}}"#,
        Instant::now(),
    ));
    assert!(up.is_empty());
    assert_eq!(client[0]["error"]["code"], -32602);
    // Resources go only to the server that has them, their URIs prefixed with its name.
    let (up, _) = split(&r.from_client(
        br#"{"jsonrpc":"2.0","id":23,"method":"resources/list"}"#,
        Instant::now(),
    ));
    assert_eq!(up.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1]);
}

#[test]
fn server_requests_are_renumbered_and_answers_go_back_to_the_asker() {
    let mut r = router();
    ready(&mut r, tools_caps());
    // Both servers ask with the same id.
    let ask = br#"{"jsonrpc":"2.0","id":0,"method":"sampling/createMessage","params":{}}"#;
    let (_, a) = split(&r.from_upstream(0, ask));
    let (_, b) = split(&r.from_upstream(1, ask));
    assert_ne!(a[0]["id"], b[0]["id"]);
    let answer = json!({"jsonrpc": "2.0", "id": b[0]["id"], "result": {"ok": true}});
    let (up, _) = split(&r.from_client(answer.to_string().as_bytes(), Instant::now()));
    assert_eq!(
        up,
        vec![(
            1,
            json!({"jsonrpc": "2.0", "id": 0, "result": {"ok": true}})
        )]
    );
    // A second answer to the same request goes nowhere.
    assert!(r
        .from_client(answer.to_string().as_bytes(), Instant::now())
        .is_empty());
    // A server cancelling its own request: the client hears of it under the router's id.
    let cancel =
        br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":0}}"#;
    let (_, client) = split(&r.from_upstream(0, cancel));
    assert_eq!(client[0]["params"]["requestId"], a[0]["id"]);
}

#[test]
fn cancellations_reach_the_server_working_on_the_request() {
    let mut r = router();
    ready(&mut r, tools_caps());
    r.from_client(
        br#"{"jsonrpc":"2.0","id":30,"method":"tools/call","params":{"name":"ev__slow"}}"#,
        Instant::now(),
    );
    let cancel =
        br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":30}}"#;
    assert_eq!(
        r.from_client(cancel, Instant::now()),
        vec![Out::Upstream(1, cancel.to_vec())]
    );
    // The call is forgotten: a late answer goes nowhere, and a second cancel too.
    assert!(r
        .from_upstream(1, br#"{"jsonrpc":"2.0","id":30,"result":{"content":[]}}"#)
        .is_empty());
    assert!(r.from_client(cancel, Instant::now()).is_empty());
    // Notifications that concern every server go to every server.
    let roots = br#"{"jsonrpc":"2.0","method":"notifications/roots/list_changed"}"#;
    assert_eq!(r.from_client(roots, Instant::now()).len(), 2);
}

#[test]
fn a_server_that_goes_takes_only_its_own_tools() {
    let mut r = router();
    ready(&mut r, tools_caps());
    r.from_client(
        br#"{"jsonrpc":"2.0","id":40,"method":"tools/call","params":{"name":"ev__slow"}}"#,
        Instant::now(),
    );
    let (_, client) = split(&r.upstream_gone(1, "exited (signal 9)"));
    assert_eq!(client[0]["id"], 40);
    assert_eq!(
        client[0]["error"]["code"], -32000,
        "it may have run: not a refund"
    );
    assert_eq!(client[1]["method"], "notifications/tools/list_changed");
    let (up, client) = split(&r.from_client(
        br#"{"jsonrpc":"2.0","id":41,"method":"tools/call","params":{"name":"ev__echo"}}"#,
        Instant::now(),
    ));
    assert!(up.is_empty());
    assert_eq!(
        client[0]["error"]["code"], -32602,
        "it certainly did not run"
    );
    assert!(client[0]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("exited (signal 9)"));
    let (up, _) = split(&r.from_client(
        br#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"llmgw__x"}}"#,
        Instant::now(),
    ));
    assert_eq!(up.len(), 1);
    let (up, _) = split(&r.from_client(
        br#"{"jsonrpc":"2.0","id":43,"method":"tools/list"}"#,
        Instant::now(),
    ));
    assert_eq!(up.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0]);
    assert!(matches!(r.states().nth(1), Some((_, UpState::Down(_)))));
}

#[test]
fn a_server_that_never_answers_initialize_is_left_out_after_the_timeout() {
    let mut r = router();
    r.fanout_timeout = Duration::from_secs(5);
    let start = Instant::now();
    let (up, _) = split(&r.from_client(
        br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#,
        start,
    ));
    let reply =
        json!({"jsonrpc": "2.0", "id": up[0].1["id"], "result": {"capabilities": {"tools": {}}}});
    assert!(r.from_upstream(0, reply.to_string().as_bytes()).is_empty());
    assert!(r.expire(start + Duration::from_secs(4)).is_empty());
    let (_, client) = split(&r.expire(start + Duration::from_secs(5)));
    assert_eq!(client[0]["result"]["serverInfo"]["name"], "toolgate");
    let states: Vec<UpState> = r.states().map(|(_, s)| s.clone()).collect();
    assert_eq!(states[0], UpState::Ready);
    assert!(matches!(&states[1], UpState::Down(why) if why.contains("within 5 s")));
}

#[test]
fn no_server_initialized_is_an_error() {
    let mut r = router();
    r.from_client(
        br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#,
        Instant::now(),
    );
    r.upstream_gone(0, "failed to start: no such file");
    let (_, client) = split(&r.upstream_gone(1, "exited (exit status: 1)"));
    let message = client[0]["error"]["message"].as_str().unwrap();
    assert!(message.contains("`llmgw`: failed to start"), "{message}");
}

#[test]
fn a_servers_notifications_reach_the_client_as_sent_and_resource_updates_get_its_prefix() {
    let mut r = router();
    ready(&mut r, tools_caps());
    for line in [
        &br#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"hi"}}"#[..],
        br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"p","progress":1}}"#,
        br#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#,
    ] {
        assert_eq!(r.from_upstream(1, line), vec![Out::Client(line.to_vec())]);
    }
    let (_, client) = split(&r.from_upstream(
        1,
        br#"{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"test://a"}}"#,
    ));
    assert_eq!(client[0]["params"]["uri"], "ev+test://a");
}
