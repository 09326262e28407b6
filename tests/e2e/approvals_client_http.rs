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
