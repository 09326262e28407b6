//! Require approval over `toolgate serve`: a held POST waits while an approver decides on the
//! admin listener's API with a token of their own; grant tokens and other grants' approvers
//! are refused; a decision cannot be replayed into a second call. Its helpers (a gateway with
//! two grants and an approver for each, the API, a held call's record) serve
//! `approvals_events.rs` too.

use crate::http::{Mcp, Serve};
use crate::support::standin;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const POLICY: &str = r#"{"version": "1", "default": "allow", "tools": {
  "session_delete": {"action": "require_approval", "approval": {"hold": "20s"}}}}"#;

pub(crate) fn hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

pub(crate) fn serve() -> Serve {
    serve_with("", &[])
}

pub(crate) fn serve_with(extra: &str, files: &[(&str, &str)]) -> Serve {
    let command = serde_json::to_string(&standin()).unwrap();
    let config = format!(
        "[upstream]\ncommand = {command}\n\
         [[grants]]\nname = \"a\"\ntoken_sha256 = \"{}\"\npolicy = \"p.json\"\n\
         [[grants]]\nname = \"b\"\ntoken_sha256 = \"{}\"\npolicy = \"p.json\"\n\
         [[approvers]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\ngrants = [\"a\"]\n\
         [[approvers]]\nname = \"b-ops\"\ntoken_sha256 = \"{}\"\ngrants = [\"b\"]\n",
        hash("token-a"),
        hash("token-b"),
        hash("ops-token"),
        hash("b-ops-token")
    ) + extra;
    let mut all = vec![("p.json", POLICY)];
    all.extend_from_slice(files);
    Serve::start(&config, &all)
}

pub(crate) async fn api(
    serve: &Serve,
    token: &str,
    method: &str,
    path: &str,
    body: Value,
) -> (StatusCode, Value) {
    let client = crate::support::http_client();
    let url = format!("{}/approvals/api{path}", serve.admin);
    let request = match method {
        "GET" => client.get(url),
        _ => client.post(url).json(&body),
    };
    let response = request.bearer_auth(token).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub(crate) async fn pending(serve: &Serve) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, list) = api(serve, "ops-token", "GET", "", Value::Null).await;
        if let Some(r) = list["requests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["state"] == "pending")
        {
            return r["id"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "nothing pending: {list}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn created(mcp: &mut Mcp) -> String {
    let result = mcp.call("session_create", json!({"cli": "codex"})).await;
    let body: Value = serde_json::from_str(result["content"][0]["text"].as_str().unwrap()).unwrap();
    body["session"]["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approver_decides_a_held_post_and_nobody_else_can() {
    let serve = serve();
    let mut mcp = Mcp::new(&serve.url, Some("token-a"));
    mcp.initialize().await;
    let doomed = created(&mut mcp).await;
    let mut held = Mcp::new(&serve.url, Some("token-a"));
    held.session = mcp.session.clone();
    let call = tokio::spawn(async move {
        held.call("session_delete", json!({"sessionId": doomed}))
            .await
    });
    let id = pending(&serve).await;
    // The session's other calls go on while one is held.
    let listed = mcp.call("session_list", json!({})).await;
    assert!(listed.get("isError").is_none(), "{listed}");

    // A grant's token, and another grant's approver, are refused; nothing is decided.
    let (status, _) = api(
        &serve,
        "token-a",
        "POST",
        &format!("/{id}/approve"),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = api(
        &serve,
        "b-ops-token",
        "POST",
        &format!("/{id}/approve"),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (_, shown) = api(&serve, "ops-token", "GET", &format!("/{id}"), Value::Null).await;
    assert_eq!(shown["request"]["state"], "pending", "{shown}");

    let (status, body) = api(
        &serve,
        "ops-token",
        "POST",
        &format!("/{id}/approve"),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let result = call.await.unwrap();
    assert!(result.get("isError").is_none(), "{result}");
    assert!(
        result["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("deleted"),
        "{result}"
    );
    // A replayed approval lets nothing more through.
    let (status, body) = api(
        &serve,
        "ops-token",
        "POST",
        &format!("/{id}/approve"),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["request"]["state"], "consumed", "{body}");

    // A deny with a reason reaches the agent; a deny without one is refused.
    let kept = created(&mut mcp).await;
    let mut held = Mcp::new(&serve.url, Some("token-a"));
    held.session = mcp.session.clone();
    let call = tokio::spawn(async move {
        held.call("session_delete", json!({"sessionId": kept}))
            .await
    });
    let id = pending(&serve).await;
    let (status, _) = api(
        &serve,
        "ops-token",
        "POST",
        &format!("/{id}/deny"),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = api(
        &serve,
        "ops-token",
        "POST",
        &format!("/{id}/deny"),
        json!({"reason": "not during the audit"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let result = call.await.unwrap();
    assert_eq!(result["isError"], true, "{result}");
    assert!(result["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("not during the audit"));
    let (status, _) = api(
        &serve,
        "ops-token",
        "POST",
        &format!("/{id}/approve"),
        json!({}),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a denied request cannot be approved"
    );
}

/// 50 held calls over 5 MCP sessions, decided through the API in a scrambled order: each gets
/// its own outcome, and the upstream sees exactly the approved ones, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_held_calls_across_five_sessions_each_get_their_own_outcome_once() {
    let serve = serve();
    let mut sessions = Vec::new();
    for _ in 0..5 {
        let mut mcp = Mcp::new(&serve.url, Some("token-a"));
        mcp.initialize().await;
        sessions.push(mcp);
    }
    // Each MCP session has its own stand-in child: 10 records in each.
    let mut records = Vec::new();
    for i in 0..50 {
        records.push((i, created(&mut sessions[i % 5]).await));
    }
    let mut calls = Vec::new();
    for (i, record) in &records {
        let mut held = Mcp::new(&serve.url, Some("token-a"));
        held.session = sessions[i % 5].session.clone();
        let record = record.clone();
        // Ids of their own: a held call's id is taken until it is answered.
        let id = format!("held-{i}");
        calls.push(tokio::spawn(async move {
            let reply = held
                .post(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                    "params": {"name": "session_delete", "arguments": {"sessionId": record}}}))
                .await;
            reply.result().clone()
        }));
    }
    // Every one pending, each known by the record it would delete.
    let deadline = Instant::now() + Duration::from_secs(30);
    let by_record = loop {
        let (_, list) = api(&serve, "ops-token", "GET", "", Value::Null).await;
        let pending: Vec<(String, String)> = list["requests"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["state"] == "pending")
            .map(|r| {
                (
                    r["arguments"]["sessionId"].as_str().unwrap().to_owned(),
                    r["id"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        if pending.len() == 50 {
            break pending
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>();
        }
        assert!(Instant::now() < deadline, "{} pending of 50", pending.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut order: Vec<usize> = (0..50).collect();
    order.sort_by_key(|i| (i * 37) % 50);
    for i in order {
        let id = &by_record[&records[i].1];
        let (status, body) = if i % 2 == 0 {
            api(
                &serve,
                "ops-token",
                "POST",
                &format!("/{id}/approve"),
                json!({}),
            )
            .await
        } else {
            let reason = json!({"reason": format!("keep {i}")});
            api(&serve, "ops-token", "POST", &format!("/{id}/deny"), reason).await
        };
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    for (i, call) in calls.into_iter().enumerate() {
        let result = call.await.unwrap();
        let text = result["content"][0]["text"].as_str().unwrap();
        if i % 2 == 0 {
            assert!(result.get("isError").is_none(), "{i}: {result}");
            assert!(
                text.contains(&format!("\"deleted\":\"{}\"", records[i].1)),
                "{i}: {text}"
            );
        } else {
            assert_eq!(result["isError"], true, "{i}: {result}");
            assert!(text.contains(&format!("keep {i}")), "{i}: {text}");
        }
    }
    // Upstream: exactly the denied records are left, in every session.
    for (s, mcp) in sessions.iter_mut().enumerate() {
        let listed = mcp.call("session_list", json!({})).await;
        let text = listed["content"][0]["text"].as_str().unwrap().to_owned();
        for (i, record) in records.iter().filter(|(i, _)| i % 5 == s) {
            assert_eq!(
                text.contains(record.as_str()),
                i % 2 == 1,
                "session {s}, record {i}: {text}"
            );
        }
    }
}

/// A new request is announced to the webhook: signed with HMAC-SHA256 over the body, with the
/// id, grant, tool, rule and a link, and never the arguments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_request_is_announced_to_the_webhook_signed_and_without_arguments() {
    use axum::{routing::post, Router};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    let app = Router::new().route(
        "/hook",
        post(move |headers: axum::http::HeaderMap, body: String| {
            let tx = tx.clone();
            async move {
                let signature = headers["x-toolgate-signature"].to_str().unwrap().to_owned();
                let _ = tx.send((signature, body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let key = "a-webhook-secret-of-some-length";
    let serve = serve_with(
        &format!("[approvals_webhook]\nurl = \"{hook}\"\nsecret_file = \"hook.key\"\nlink = \"https://admin.example/approvals\"\n"),
        &[("hook.key", key)],
    );
    let mut mcp = Mcp::new(&serve.url, Some("token-a"));
    mcp.initialize().await;
    let secret_session = created(&mut mcp).await;
    let mut held = Mcp::new(&serve.url, Some("token-a"));
    held.session = mcp.session.clone();
    let arg = secret_session.clone();
    let call = tokio::spawn(async move {
        held.call(
            "session_delete",
            json!({"sessionId": arg, "apiKey": "sk-live-123"}),
        )
        .await
    });
    let (signature, body) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the webhook was called within 10 s")
        .unwrap();
    let expected = {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(body.as_bytes());
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    };
    assert_eq!(signature, expected, "{body}");
    let announced: Value = serde_json::from_str(&body).unwrap();
    let id = pending(&serve).await;
    assert_eq!(announced["id"], id.as_str());
    assert_eq!(announced["grant"], "a");
    assert_eq!(announced["tool"], "session_delete");
    assert_eq!(
        announced["link"],
        format!("https://admin.example/approvals#{id}").as_str()
    );
    assert!(
        !body.contains(&secret_session) && !body.contains("sk-live"),
        "{body}"
    );
    assert!(announced.get("arguments").is_none(), "{body}");
    let (status, _) = api(
        &serve,
        "ops-token",
        "POST",
        &format!("/{id}/deny"),
        json!({"reason": "no"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let result = call.await.unwrap();
    assert_eq!(result["isError"], true);
}
