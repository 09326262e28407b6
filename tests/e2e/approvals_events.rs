//! The approvals event stream (`GET /approvals/api/events`) of `toolgate serve`: an approver
//! sees a held call's request arrive with its arguments masked, then its decision, and never a
//! request of a grant it does not decide for; grant tokens are refused; an expiry nobody looked
//! at is still told; the streams are bounded in number and end when the gateway stops.

use crate::approvals_http::{api, created, hash, serve, serve_with};
use crate::http::{Mcp, Serve};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// An open event stream, read event by event.
struct Events {
    response: reqwest::Response,
    buffer: String,
    /// Everything read so far.
    seen: String,
}

impl Events {
    /// Opens the stream with `token`; its status, and the stream if it was 200.
    async fn open(serve: &Serve, token: Option<&str>) -> (StatusCode, Option<Events>) {
        let mut request =
            crate::support::http_client().get(format!("{}/approvals/api/events", serve.admin));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        if status != StatusCode::OK {
            return (status, None);
        }
        let kind = response.headers()["content-type"].to_str().unwrap();
        assert!(kind.starts_with("text/event-stream"), "{kind}");
        let events = Events {
            response,
            buffer: String::new(),
            seen: String::new(),
        };
        (status, Some(events))
    }

    /// The next event with data, as (name, data), waiting up to `within`; `None` if none came
    /// (keep-alive comments are skipped). Panics if the stream ended.
    async fn next_within(&mut self, within: Duration) -> Option<(String, Value)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        name = value.trim().to_owned();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.strip_prefix(' ').unwrap_or(value));
                    }
                }
                if data.is_empty() {
                    continue; // a comment
                }
                return Some((name, serde_json::from_str(&data).unwrap()));
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk()).await;
            match chunk {
                Err(_) => return None,
                Ok(chunk) => {
                    let chunk = chunk.unwrap().expect("the stream ended");
                    let text = std::str::from_utf8(&chunk).unwrap();
                    self.buffer.push_str(text);
                    self.seen.push_str(text);
                }
            }
        }
    }

    /// The next event, which must come within 10 s.
    async fn next(&mut self) -> (String, Value) {
        let event = self.next_within(Duration::from_secs(10)).await;
        event.expect("an event within 10 s")
    }

    /// Whether the stream ends within `within` (keep-alives and events before the end are
    /// skipped).
    async fn ends_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Err(_) => return false,
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None) | Err(_)) => return true,
            }
        }
    }
}

/// A held `session_delete` of the record `doomed` by grant `token`, with a secret beside it.
fn hold(serve: &Serve, mcp: &Mcp, token: &str, doomed: String) -> tokio::task::JoinHandle<Value> {
    let mut held = Mcp::new(&serve.url, Some(token));
    held.session = mcp.session.clone();
    tokio::spawn(async move {
        let args = json!({"sessionId": doomed, "apiKey": "sk-live-123"});
        held.call("session_delete", args).await
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approver_sees_requests_of_its_grants_arrive_masked_and_get_decided() {
    let serve = serve();
    // Nobody but an approver: no token, a grant's token, the admin token.
    for token in [None, Some("token-a"), Some("admin-token")] {
        let (status, _) = Events::open(&serve, token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
    }
    let (_, ops) = Events::open(&serve, Some("ops-token")).await;
    let (_, b_ops) = Events::open(&serve, Some("b-ops-token")).await;
    let (mut ops, mut b_ops) = (ops.unwrap(), b_ops.unwrap());
    for stream in [&mut ops, &mut b_ops] {
        let (name, snapshot) = stream.next().await;
        assert_eq!(name, "pending", "{snapshot}");
        assert_eq!(snapshot["pending"], json!([]), "{snapshot}");
        assert!(snapshot["now_ms"].as_u64().unwrap() > 0, "{snapshot}");
    }

    // Grant a's held call: ops sees it come, masked, then approved, then consumed.
    let mut mcp = Mcp::new(&serve.url, Some("token-a"));
    mcp.initialize().await;
    let doomed = created(&mut mcp).await;
    let call = hold(&serve, &mcp, "token-a", doomed.clone());
    let (name, request) = ops.next().await;
    assert_eq!(name, "request", "{request}");
    assert_eq!(request["state"], "pending");
    assert_eq!(
        (&request["grant"], &request["tool"]),
        (&json!("a"), &json!("session_delete"))
    );
    assert_eq!(
        request["arguments"],
        json!({"sessionId": doomed, "apiKey": "***"}),
        "masked as in the list API"
    );
    let id = request["id"].as_str().unwrap().to_owned();
    let (_, listed) = api(&serve, "ops-token", "GET", &format!("/{id}"), Value::Null).await;
    assert_eq!(listed["request"], request, "the same shape as the list API");
    let (status, _) = api(
        &serve,
        "ops-token",
        "POST",
        &format!("/{id}/approve"),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (name, decided) = ops.next().await;
    assert_eq!((name.as_str(), &decided["id"]), ("decided", &json!(id)));
    assert_eq!(decided["state"], "approved", "{decided}");
    assert_eq!(
        (&decided["decided_by"], &decided["channel"]),
        (&json!("ops"), &json!("http"))
    );
    let (name, consumed) = ops.next().await;
    assert_eq!(
        (name.as_str(), &consumed["state"]),
        ("decided", &json!("consumed"))
    );
    let result = call.await.unwrap();
    assert!(result.get("isError").is_none(), "{result}");
    assert!(
        !ops.seen.contains("sk-live"),
        "never unmasked: {}",
        ops.seen
    );

    // Grant b's held call: b-ops's first event after its snapshot, so nothing of a's reached
    // it; and ops's next event is a's next request, so nothing of b's reached ops.
    let mut mcp_b = Mcp::new(&serve.url, Some("token-b"));
    mcp_b.initialize().await;
    let kept = created(&mut mcp_b).await;
    let call_b = hold(&serve, &mcp_b, "token-b", kept);
    let (name, request_b) = b_ops.next().await;
    assert_eq!(
        (name.as_str(), &request_b["grant"]),
        ("request", &json!("b"))
    );
    let id_b = request_b["id"].as_str().unwrap().to_owned();
    let deny = json!({"reason": "not now"});
    let (status, _) = api(
        &serve,
        "b-ops-token",
        "POST",
        &format!("/{id_b}/deny"),
        deny,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (name, denied) = b_ops.next().await;
    assert_eq!(
        (name.as_str(), &denied["state"]),
        ("decided", &json!("denied"))
    );
    assert_eq!(call_b.await.unwrap()["isError"], true);

    let again = created(&mut mcp).await;
    let call = hold(&serve, &mcp, "token-a", again.clone());
    let (name, request) = ops.next().await;
    assert_eq!(
        (name.as_str(), &request["grant"]),
        ("request", &json!("a")),
        "{request}"
    );
    assert_eq!(request["arguments"]["sessionId"], again.as_str());

    // A new stream starts with what is pending, masked.
    let (_, late) = Events::open(&serve, Some("ops-token")).await;
    let (name, snapshot) = late.unwrap().next().await;
    assert_eq!(name, "pending");
    assert_eq!(snapshot["pending"], json!([request]), "{snapshot}");
    let recent: Vec<&str> = snapshot["recent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(recent, [id.as_str()], "its own grants' decisions only");
    let id = request["id"].as_str().unwrap();
    let deny = json!({"reason": "done"});
    api(&serve, "ops-token", "POST", &format!("/{id}/deny"), deny).await;
    assert_eq!(call.await.unwrap()["isError"], true);
}

/// A request nobody looks at still expires on the stream; past the cap a stream is refused
/// (503) instead of taking the admin listener's connections; a stop ends the streams at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwatched_expiry_is_told_the_streams_are_capped_and_a_stop_ends_them() {
    let policy = r#"{"version": "1", "default": "allow", "tools": {
      "session_delete": {"action": "require_approval", "approval": {"hold": "1s", "timeout": "2s"}}}}"#;
    let extra = format!(
        "[[grants]]\nname = \"c\"\ntoken_sha256 = \"{}\"\npolicy = \"q.json\"\n\
         [[approvers]]\nname = \"c-ops\"\ntoken_sha256 = \"{}\"\ngrants = [\"c\"]\n",
        hash("token-c"),
        hash("c-ops-token")
    );
    let mut serve = serve_with(&extra, &[("q.json", policy)]);
    let (_, events) = Events::open(&serve, Some("c-ops-token")).await;
    let mut events = events.unwrap();
    assert_eq!(events.next().await.0, "pending");
    let mut mcp = Mcp::new(&serve.url, Some("token-c"));
    mcp.initialize().await;
    let record = created(&mut mcp).await;
    let started = Instant::now();
    // Held for 1 s, then answered "approval required": the request stays pending, unwatched.
    let reply = hold(&serve, &mcp, "token-c", record).await.unwrap();
    assert_eq!(reply["isError"], true, "{reply}");
    let (name, request) = events.next().await;
    assert_eq!(
        (name.as_str(), &request["state"]),
        ("request", &json!("pending"))
    );
    let (name, expired) = events.next().await;
    assert_eq!(
        (name.as_str(), &expired["state"]),
        ("decided", &json!("expired"))
    );
    assert_eq!(expired["id"], request["id"]);
    let late = started.elapsed();
    assert!(
        late < Duration::from_secs(4),
        "told {late:?} after the call, for a 2 s timeout"
    );

    // 32 streams at once, then 503; one closed makes room again.
    let mut open = Vec::new();
    while open.len() < 31 {
        let (status, stream) = Events::open(&serve, Some("ops-token")).await;
        assert_eq!(status, StatusCode::OK, "stream {}", open.len() + 2);
        open.push(stream.unwrap());
    }
    let (status, _) = Events::open(&serve, Some("ops-token")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = Events::open(&serve, Some("ops-token")).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a closed stream's place was never freed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A stop ends the stream at once, not after the 10 s grace.
    let stopping = Instant::now();
    let stopped = std::thread::spawn(move || serve.terminate(Duration::from_secs(8)));
    assert!(
        events.ends_within(Duration::from_secs(3)).await,
        "the stream outlived the stop"
    );
    assert!(stopping.elapsed() < Duration::from_secs(3));
    drop(open);
    assert!(
        stopped.join().unwrap().is_some(),
        "the gateway did not exit"
    );
}
