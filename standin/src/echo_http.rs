//! A small, fast Streamable HTTP MCP server with one tool, `echo`: the upstream for the HTTP
//! benchmarks (where the upstream must cost next to nothing) and for tests that count what
//! reaches the upstream. `toolgate standin --echo --http ADDR` runs it. (It is [`crate::echo`]
//! over HTTP, with the smaller catalogue the benchmarks were measured with.)
//!
//! It answers JSON (not SSE), keeps sessions (404 for an unknown one; a request with no
//! session id is served statelessly, as the 2026-07-28 protocol does), and reports at
//! `GET /stats` how many requests reached it and how many sessions are open.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Echo {
    requests: AtomicU64,
    sessions: Mutex<HashSet<String>>,
}

/// Serves until the process ends; prints `listening on http://ADDR/mcp` to stderr first.
pub fn serve(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        eprintln!("listening on http://{}/mcp", listener.local_addr()?);
        let echo = Arc::new(Echo::default());
        let app = Router::new()
            .route(
                "/mcp",
                post(message)
                    .delete(end)
                    .get(|| async { StatusCode::METHOD_NOT_ALLOWED }),
            )
            .route("/stats", get(stats))
            .with_state(echo);
        axum::serve(listener, app).await?;
        Ok(())
    })
}

fn session_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn message(State(echo): State<Arc<Echo>>, headers: HeaderMap, body: Bytes) -> Response {
    echo.requests.fetch_add(1, Ordering::Relaxed);
    let Ok(message) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "not JSON").into_response();
    };
    let method = message["method"].as_str().unwrap_or("");
    let id = message.get("id").cloned();
    if method == "initialize" {
        let session = uuid::Uuid::new_v4().to_string();
        echo.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(session.clone());
        let result = json!({
            "protocolVersion": message["params"]["protocolVersion"].as_str().unwrap_or("2025-11-25"),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "toolgate-echo-http", "version": env!("CARGO_PKG_VERSION")}
        });
        let reply = json!({"jsonrpc": "2.0", "id": id, "result": result});
        return ([("mcp-session-id", session)], Json(reply)).into_response();
    }
    // No session id: a stateless (2026-07-28) request, served as it is.
    let known = session_of(&headers).is_none_or(|s| {
        echo.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&s)
    });
    if !known {
        return (StatusCode::NOT_FOUND, "unknown session").into_response();
    }
    let Some(id) = id else {
        return StatusCode::ACCEPTED.into_response(); // a notification or a reply
    };
    let result = match method {
        "tools/list" => json!({"tools": [{
            "name": "echo",
            "description": "Returns its message",
            "inputSchema": {"type": "object", "properties": {"message": {"type": "string"}}}
        }]}),
        // Like a server of the 2026-07-28 round trip, it refuses a state it never issued:
        // a gateway must not pass its own on.
        "tools/call"
            if message["params"].get("requestState").is_some()
                || message["params"].get("inputResponses").is_some() =>
        {
            let error = json!({"code": -32602, "message": "invalid params: this server issued no requestState"});
            return Json(json!({"jsonrpc": "2.0", "id": id, "error": error})).into_response();
        }
        "tools/call" => {
            let text = message["params"]["arguments"]["message"]
                .as_str()
                .unwrap_or("");
            json!({"content": [{"type": "text", "text": text}]})
        }
        "ping" => json!({}),
        _ => {
            let error = json!({"code": -32601, "message": format!("method not found: {method}")});
            return Json(json!({"jsonrpc": "2.0", "id": id, "error": error})).into_response();
        }
    };
    Json(json!({"jsonrpc": "2.0", "id": id, "result": result})).into_response()
}

async fn end(State(echo): State<Arc<Echo>>, headers: HeaderMap) -> StatusCode {
    echo.requests.fetch_add(1, Ordering::Relaxed);
    let removed = session_of(&headers).is_some_and(|s| {
        echo.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&s)
    });
    if removed {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
}

async fn stats(State(echo): State<Arc<Echo>>) -> Json<Value> {
    let sessions = echo
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .len();
    Json(json!({"requests": echo.requests.load(Ordering::Relaxed), "sessions": sessions}))
}
