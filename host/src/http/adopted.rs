//! A session another replica opened, catching up before its first decision here.
//!
//! The replica that opened the session learned the upstream's tools from the `tools/list`
//! replies that passed through its core: the unknown-tool check, the `inputSchema` checks and
//! the annotations the policy sees all depend on that catalogue (`session/catalogue.rs`). An
//! adopting replica ([`super::gateway::Gateway::find`]) asks the upstream for the listing
//! itself, every page, on the same upstream session and through the same core
//! ([`Session::from_client`](crate::session::Session::from_client) and
//! [`from_upstream`](crate::session::Session::from_upstream)), so that it learns exactly what
//! the listing says, as the opener would have. Until it has, no request of the session is
//! decided here.
//!
//! The opener may never have listed the tools (its catalogue unknown, unlisted tools passed
//! to the upstream to answer): the adopter then knows more, and refuses calls to unlisted
//! tools itself. That is the stricter of the two, never the looser.
//!
//! An upstream that answers 404 no longer has the session (a client DELETE through another
//! replica, an upstream restart): the session is forgotten here and the client gets 404, as
//! the upstream would have said.

use super::error::GatewayError;
use super::gateway::Gateway;
use super::headers::{MCP_METHOD, PROTOCOL_VERSION};
use super::sessions::{GwSession, Link};
use crate::session::ClientLine;
use crate::sse;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::Value;

/// The most pages of one listing: a server that never stops paging does not hold the session.
const MAX_PAGES: usize = 64;

/// Makes sure `session`'s core knows the upstream's tools, once; requests that arrive
/// meanwhile wait. `client` is the request's headers, for the protocol version.
pub(crate) async fn catch_up(
    gw: &Gateway,
    session: &GwSession,
    client: &HeaderMap,
) -> Result<(), GatewayError> {
    session
        .caught_up
        .get_or_try_init(|| learn_tools(gw, session, client))
        .await
        .map(|_| ())
}

async fn learn_tools(
    gw: &Gateway,
    session: &GwSession,
    client: &HeaderMap,
) -> Result<(), GatewayError> {
    let Link::Http(upstream_session) = &session.link else {
        return Ok(());
    };
    let mut headers = HeaderMap::new();
    let accept = HeaderValue::from_static("application/json, text/event-stream");
    headers.insert(header::ACCEPT, accept);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(version) = client.get(&PROTOCOL_VERSION) {
        headers.insert(PROTOCOL_VERSION.clone(), version.clone());
    }
    if client.contains_key(&MCP_METHOD) {
        headers.insert(MCP_METHOD.clone(), HeaderValue::from_static("tools/list"));
    }
    let mut cursor = None;
    for page in 0..MAX_PAGES {
        let id = format!("toolgate-catch-up-{page}");
        let params = match cursor.take() {
            Some(cursor) => serde_json::json!({ "cursor": cursor }),
            None => serde_json::json!({}),
        };
        let line = serde_json::json!({
            "jsonrpc": "2.0", "id": id, "method": "tools/list", "params": params,
        })
        .to_string();
        let (line, upstream_id) = match session.core.from_client(line.as_bytes()) {
            ClientLine::Forward(forward) => (forward.line.into_owned(), forward.upstream_id),
            // The upstream is gone, or the id is taken: nothing can be learned now.
            _ => {
                return Err(GatewayError::UpstreamNoReply {
                    status: StatusCode::BAD_GATEWAY,
                })
            }
        };
        let abandon = |written| {
            if let Some(upstream_id) = upstream_id {
                session
                    .core
                    .abandon(upstream_id, written, "catching up failed");
            }
        };
        let sent = gw
            .send_upstream(Method::POST, upstream_session.as_ref(), &headers, &line)
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(failed) => {
                abandon(failed.written);
                return Err(failed.error);
            }
        };
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            abandon(true);
            return Err(GatewayError::SessionNotFound);
        }
        let reply = match read_reply(gw, session, response, &id).await {
            Some(reply) if status.is_success() => reply,
            _ => {
                abandon(true);
                return Err(GatewayError::UpstreamNoReply { status });
            }
        };
        // An error (a server without tools): the catalogue stays unknown, as the opener's
        // would have, and the upstream answers calls for itself.
        match reply["result"]["nextCursor"].clone() {
            Value::Null => return Ok(()),
            next => cursor = Some(next),
        }
    }
    tracing::warn!(
        pages = MAX_PAGES,
        "catching up: the upstream's tool listing did not end; its tools stay unknown"
    );
    Ok(())
}

/// The reply to the catch-up request `id`, after the core has seen it (and every message the
/// upstream sent before it, which reach no client: this request is the gateway's own).
async fn read_reply(
    gw: &Gateway,
    session: &GwSession,
    response: super::upstream::Response,
    id: &str,
) -> Option<Value> {
    let max = gw.limits.max_upstream_message_bytes;
    let sse = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("text/event-stream"));
    let ours = |message: &[u8]| {
        let out = session.core.from_upstream(message)?;
        let reply: Value = serde_json::from_slice(&out).ok()?;
        (reply["id"] == id).then_some(reply)
    };
    if !sse {
        let body = response.into_body().read_all(max).await.ok()?;
        return ours(&body);
    }
    let mut body = response.into_body();
    let mut parser = sse::Parser::new(max);
    let read = async {
        while let Ok(Some(chunk)) = body.data().await {
            for event in parser.push(&chunk).ok()? {
                if let Some(reply) = event
                    .has_data
                    .then(|| ours(event.data.as_bytes()))
                    .flatten()
                {
                    return Some(reply);
                }
            }
        }
        None
    };
    tokio::time::timeout(gw.limits.request_timeout(), read)
        .await
        .ok()
        .flatten()
}
