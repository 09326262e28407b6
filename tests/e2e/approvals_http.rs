//! Require approval over `toolgate serve`: a held POST waits while an approver decides on the
//! admin listener's API with a token of their own; grant tokens and other grants' approvers
//! are refused; a decision cannot be replayed into a second call.

use crate::http::{Mcp, Serve};
use crate::support::standin;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const POLICY: &str = r#"{"version": "1", "default": "allow", "tools": {
  "session_delete": {"action": "require_approval", "approval": {"hold": "20s"}}}}"#;

fn hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

fn serve() -> Serve {
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
    );
    Serve::start(&config, &[("p.json", POLICY)])
}

async fn api(
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

async fn pending(serve: &Serve) -> String {
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

async fn created(mcp: &mut Mcp) -> String {
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
