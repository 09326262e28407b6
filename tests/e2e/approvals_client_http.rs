//! Require approval over `toolgate serve`, through the agent's own client: the held POST
//! becomes an SSE stream that carries the gateway's `elicitation/create` question (answered by
//! a separate POST) or progress notifications, and ends with the call's outcome. Stale and
//! foreign answers decide nothing; a client that leaves never has its call run.

use crate::approvals_http::{api, created, pending, serve_with};
use crate::http::Mcp;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

/// A session of grant `a` whose client declares `elicitation` (or not).
async fn session(url: &str, elicits: bool) -> Mcp {
    let mut mcp = Mcp::new(url, Some("token-a"));
    let capabilities = if elicits {
        json!({"elicitation": {}})
    } else {
        json!({})
    };
    let reply = mcp
        .request(
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": capabilities,
                   "clientInfo": {"name": "e2e", "version": "1"}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.messages);
    mcp.session = Some(reply.headers["mcp-session-id"].to_str().unwrap().to_owned());
    let ack = mcp
        .post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await;
    assert_eq!(ack.status, StatusCode::ACCEPTED);
    mcp
}

/// An open POST's SSE stream, read message by message.
struct Stream {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl Stream {
    async fn post(mcp: &Mcp, message: Value) -> Self {
        let response = mcp
            .http
            .post(&mcp.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .header("mcp-session-id", mcp.session.as_deref().unwrap())
            .bearer_auth(mcp.token.as_deref().unwrap())
            .json(&message)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        Self {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    /// The next message (comments and empty events skipped); `None` at the end.
    async fn next(&mut self) -> Option<Value> {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let event: String = self.buffer.drain(..end + 2).collect();
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim)
                    .collect();
                if !data.is_empty() {
                    return Some(serde_json::from_str(&data.join("\n")).unwrap());
                }
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.body.next())
                .await
                .expect("the held stream went quiet for 30 s")?
                .unwrap();
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

const TOOL_CALL_ID: u64 = 77;

fn delete(id: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": TOOL_CALL_ID, "method": "tools/call",
           "params": {"name": "session_delete", "arguments": {"sessionId": id}}})
}

fn answer(question: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": question["id"], "result": result})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_client_is_asked_on_the_held_stream_and_its_answer_decides() {
    let serve = serve_with("", &[]);
    let mut mcp = session(&serve.url, true).await;
    let doomed = created(&mut mcp).await;

    let mut held = Stream::post(&mcp, delete(&doomed)).await;
    let question = held.next().await.unwrap();
    assert_eq!(question["method"], "elicitation/create", "{question}");
    assert!(question["id"]
        .as_str()
        .unwrap()
        .starts_with("toolgate-approval-"));
    let message = question["params"]["message"].as_str().unwrap();
    assert!(
        message.contains("session_delete") && message.contains(&doomed),
        "{message}"
    );
    let approve = answer(
        &question,
        json!({"action": "accept", "content": {"decision": "approve"}}),
    );
    // Another session of the same grant cannot answer this session's question.
    let other = session(&serve.url, true).await;
    assert_eq!(other.post(&approve).await.status, StatusCode::ACCEPTED);
    let id = pending(&serve).await;
    let (_, shown) = api(&serve, "ops-token", "GET", &format!("/{id}"), Value::Null).await;
    assert_eq!(shown["request"]["state"], "pending", "{shown}");

    // The session's own answer approves: the call runs once and its result ends the stream.
    assert_eq!(mcp.post(&approve).await.status, StatusCode::ACCEPTED);
    let reply = held.next().await.unwrap();
    assert_eq!(reply["id"], TOOL_CALL_ID, "{reply}");
    assert!(reply["result"].get("isError").is_none(), "{reply}");
    assert!(
        reply["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("deleted"),
        "{reply}"
    );
    assert!(
        held.next().await.is_none(),
        "the stream ends with the reply"
    );

    // A second call: a replayed (stale) accept decides nothing, a decline denies.
    let kept = created(&mut mcp).await;
    let mut held = Stream::post(&mcp, delete(&kept)).await;
    let question = held.next().await.unwrap();
    assert_eq!(question["method"], "elicitation/create");
    assert_eq!(mcp.post(&approve).await.status, StatusCode::ACCEPTED);
    let decline = answer(&question, json!({"action": "decline"}));
    assert_eq!(mcp.post(&decline).await.status, StatusCode::ACCEPTED);
    let reply = held.next().await.unwrap();
    assert_eq!(reply["id"], TOOL_CALL_ID, "{reply}");
    assert_eq!(reply["result"]["isError"], true, "{reply}");
    let text = reply["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("declined"), "{text}");
    // And the session it asked to delete is still there.
    let listed = mcp.call("session_list", json!({})).await;
    assert!(listed.to_string().contains(&kept), "{listed}");
    // Answering again after the decision changes nothing either.
    let accept = answer(
        &question,
        json!({"action": "accept", "content": {"decision": "approve"}}),
    );
    assert_eq!(mcp.post(&accept).await.status, StatusCode::ACCEPTED);
    let listed = mcp.call("session_list", json!({})).await;
    assert!(listed.to_string().contains(&kept), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_post_reports_progress_until_an_approver_decides() {
    let serve = serve_with("", &[]);
    let mut mcp = session(&serve.url, false).await;
    let doomed = created(&mut mcp).await;
    let mut call = delete(&doomed);
    call["params"]["_meta"] = json!({"progressToken": "held-1"});
    let mut held = Stream::post(&mcp, call).await;
    let progress = held.next().await.unwrap();
    assert_eq!(progress["method"], "notifications/progress", "{progress}");
    assert_eq!(progress["params"]["progressToken"], "held-1");
    assert_eq!(progress["params"]["progress"], 1);
    let id = pending(&serve).await;
    let (status, _) = api(
        &serve,
        "ops-token",
        "POST",
        &format!("/{id}/approve"),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let reply = held.next().await.unwrap();
    assert_eq!(reply["id"], TOOL_CALL_ID, "{reply}");
    assert!(reply["result"].get("isError").is_none(), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_a_held_post_never_has_its_call_run() {
    let serve = serve_with("", &[]);
    let mut mcp = session(&serve.url, false).await;
    let doomed = created(&mut mcp).await;
    let held = Stream::post(&mcp, delete(&doomed)).await;
    let id = pending(&serve).await;
    drop(held);
    // The gateway notices the closed stream at its next write (a keep-alive) at the latest;
    // approving it now lets nothing run that nobody waits for.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = api(
        &serve,
        "ops-token",
        "POST",
        &format!("/{id}/approve"),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let listed = mcp.call("session_list", json!({})).await;
    assert!(
        listed.to_string().contains(&doomed),
        "the abandoned call ran: {listed}"
    );
    // The identical retry is what the approval covers: it runs, once.
    let result = mcp
        .call("session_delete", json!({"sessionId": doomed}))
        .await;
    assert!(result.get("isError").is_none(), "{result}");
    let listed = mcp.call("session_list", json!({})).await;
    assert!(!listed.to_string().contains(&doomed), "{listed}");
}

/// A stateless 2026-07-28 `tools/call` of `echo` by `token`, from a client that can be asked.
async fn call_2026(url: &str, token: &str, message: &str, retry: Option<(&str, Value)>) -> Value {
    let mut params = json!({"name": "echo", "arguments": {"message": message},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}}}});
    if let Some((state, answer)) = retry {
        params["requestState"] = json!(state);
        params["inputResponses"] = json!({"toolgate-approval": answer});
    }
    let response = crate::support::http_client()
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .bearer_auth(token)
        .json(&json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": params}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.bytes().await.unwrap();
    let messages = crate::http::parse_body(&content_type, &body);
    messages.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2026_client_is_asked_in_the_result_and_answers_in_its_protected_retry() {
    let upstream = crate::http::EchoUpstream::start();
    let policy = r#"{"version": "1", "default": "allow", "tools": {
      "echo": {"action": "require_approval", "approval": {"hold": "5s"}}}}"#;
    let config = format!(
        "[upstream]\nurl = \"{}\"\n\
         [[grants]]\nname = \"a\"\ntoken_sha256 = \"{}\"\npolicy = \"p.json\"\n\
         [[grants]]\nname = \"b\"\ntoken_sha256 = \"{}\"\npolicy = \"p.json\"\n",
        upstream.url,
        crate::approvals_http::hash("token-a"),
        crate::approvals_http::hash("token-b"),
    );
    let serve = crate::http::Serve::start(&config, &[("p.json", policy)]);
    let approve = json!({"action": "accept", "content": {"decision": "approve"}});

    let asked = call_2026(&serve.url, "token-a", "hi", None).await;
    let result = &asked["result"];
    assert_eq!(result["resultType"], "input_required", "{asked}");
    let question = &result["inputRequests"]["toolgate-approval"];
    assert_eq!(question["method"], "elicitation/create", "{asked}");
    assert!(question["params"]["message"]
        .as_str()
        .unwrap()
        .contains("echo"));
    let state = result["requestState"].as_str().unwrap().to_owned();
    assert_eq!(upstream.stats().await["requests"], 0, "nothing ran yet");

    // A tampered state, and the genuine one from another grant, are refused.
    let mut tampered = state.clone().into_bytes();
    tampered[6] = if tampered[6] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for (token, state, why) in [
        ("token-a", tampered.as_str(), "altered"),
        ("token-b", state.as_str(), "another grant"),
    ] {
        let refused = call_2026(&serve.url, token, "hi", Some((state, approve.clone()))).await;
        assert_eq!(refused["error"]["code"], -32602, "{refused}");
        let message = refused["error"]["message"].as_str().unwrap();
        assert!(message.contains(why), "{message}");
    }

    // The genuine retry approves; the call runs once, without the gateway's parts (the
    // upstream refuses any requestState it did not issue).
    let done = call_2026(&serve.url, "token-a", "hi", Some((&state, approve.clone()))).await;
    assert_eq!(done["result"]["content"][0]["text"], "hi", "{done}");
    assert!(done["result"].get("isError").is_none(), "{done}");
    // The same retry again: the state was single-use.
    let replayed = call_2026(&serve.url, "token-a", "hi", Some((&state, approve.clone()))).await;
    assert_eq!(replayed["error"]["code"], -32602, "{replayed}");
    assert!(replayed["error"]["message"]
        .as_str()
        .unwrap()
        .contains("already used"));

    // A decline denies, and nothing runs.
    let before = upstream.stats().await["requests"].clone();
    let asked = call_2026(&serve.url, "token-a", "bye", None).await;
    let state = asked["result"]["requestState"].as_str().unwrap().to_owned();
    let declined = call_2026(
        &serve.url,
        "token-a",
        "bye",
        Some((&state, json!({"action": "decline"}))),
    )
    .await;
    assert_eq!(declined["result"]["isError"], true, "{declined}");
    // The gateway's own results to a 2026-07-28 request say so, as its clients require.
    assert_eq!(declined["result"]["resultType"], "complete", "{declined}");
    assert!(declined["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("declined"));
    assert_eq!(upstream.stats().await["requests"], before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_headers_that_disagree_with_the_body_are_refused() {
    let upstream = crate::http::EchoUpstream::start();
    let config = format!(
        "anonymous_grant = \"a\"\n[upstream]\nurl = \"{}\"\n[[grants]]\nname = \"a\"\npolicy = \"p.json\"\n",
        upstream.url
    );
    let policy = r#"{"version": "1", "default": "allow", "tools": {"echo": {"action": "deny"}}}"#;
    let serve = crate::http::Serve::start(&config, &[("p.json", policy)]);
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "echo", "arguments": {"message": "x"}}});
    // `=?base64?ZWNobw==?=` is "echo": it agrees; "other" and a tools/list method do not.
    for (method, name, agrees) in [
        ("tools/call", "=?base64?ZWNobw==?=", true),
        ("tools/call", "other", false),
        ("tools/list", "echo", false),
    ] {
        let response = crate::support::http_client()
            .post(&serve.url)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-method", method)
            .header("mcp-name", name)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let reply: Value = response.json().await.unwrap();
        if agrees {
            assert_eq!(status, StatusCode::OK, "{reply}");
            assert_eq!(
                reply["result"]["isError"], true,
                "the policy decided: {reply}"
            );
        } else {
            assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {name}: {reply}");
            assert_eq!(reply["error"]["code"], -32600, "{reply}");
        }
    }
    assert_eq!(upstream.stats().await["requests"], 0);
}
