//! The MCP endpoint: POST, GET and DELETE on `/mcp`.
//!
//! One `tools/call` over HTTP ([`post_mcp`]):
//! 1. [`Gateway::admit`] checks `Host`/`Origin` (403: DNS rebinding) and the bearer token
//!    (401), then the media types, before the body is read: a refused request causes no
//!    upstream traffic.
//! 2. [`read_body`] reads the body under the size cap and the client timeout, and
//!    [`Gateway::find`] finds the session by `Mcp-Session-Id` (404 if unknown, or if another
//!    grant opened it).
//! 3. [`decide`]: the session core's `Session::from_client_parsed` decides, exactly as over
//!    stdio. A refusal is answered here as JSON and never reaches the upstream.
//! 4. [`forward`]: a call held for a person becomes an SSE stream ([`super::held`]); an
//!    allowed message goes upstream (an HTTP upstream session, or this
//!    session's own stdio child), and the reply comes back through [`super::relay`].
//!
//! Every refusal the gateway answers itself is a [`GatewayError`].

use super::children::Child;
use super::config::Upstream;
use super::error::{closing, json_response, Failed, GatewayError};
use super::gateway::{ends_when_stopping, Gateway, SMALL_REPLY};
use super::grants::{Grant, Remembered};
use super::headers::{accepts, media_type, MCP_METHOD, MCP_NAME, SESSION_ID};
use super::held;
use super::relay::{relay, response_head, stream_lines, upstream_failed};
use super::sessions::{GwSession, Link, STATELESS_SESSION};
use crate::jsonrpc::Envelope;
use crate::session::{ClientLine, Forward, Session};
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Request;
use serde_json::value::RawValue;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Serves one HTTP request: `/mcp` takes POST, GET and DELETE. `remembered` is the token the
/// connection last presented.
pub(crate) async fn handle(
    gateway: Arc<Gateway>,
    remembered: Arc<Remembered>,
    request: Request<Incoming>,
) -> Response {
    let mcp = request.uri().path() == "/mcp";
    // Only the body of a POST to /mcp is read: any other request's body stays unread.
    let read = mcp && *request.method() == Method::POST;
    let unread = !read && !hyper::body::Body::is_end_stream(request.body());
    let response = if !mcp {
        GatewayError::NotMcpEndpoint.into_response()
    } else {
        match *request.method() {
            Method::POST => return post_mcp(gateway, &remembered, request).await,
            Method::GET => get_mcp(gateway, &remembered, request)
                .await
                .unwrap_or_else(IntoResponse::into_response),
            Method::DELETE => delete_mcp(gateway, &remembered, request)
                .await
                .unwrap_or_else(IntoResponse::into_response),
            _ => GatewayError::MethodNotAllowed.into_response(),
        }
    };
    if unread {
        closing(response)
    } else {
        response
    }
}

/// The body, under the size cap and the client timeout.
async fn read_body(
    gw: &Gateway,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Bytes, GatewayError> {
    let max = gw.limits.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(length) = declared.filter(|&l| l > max) {
        return Err(GatewayError::BodyTooLarge { length, max });
    }
    let limited = http_body_util::Limited::new(body, max);
    match tokio::time::timeout(gw.limits.client_timeout(), limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(GatewayError::BodyTooLarge {
                length: max + 1,
                max,
            })
        }
        Ok(Err(e)) => Err(GatewayError::BodyUnreadable(e.to_string())),
        Err(_) => Err(GatewayError::BodyTimeout {
            seconds: gw.limits.client_timeout_s,
        }),
    }
}

/// What the routing fields of a POSTed message say, parsed once: the session core decides
/// on the same parse.
struct Posted<'b> {
    envelope: Envelope<'b>,
}

impl Posted<'_> {
    fn method(&self) -> Option<&str> {
        self.envelope.method.as_deref()
    }
    /// The raw id, for error replies.
    fn raw_id(&self) -> Option<&RawValue> {
        self.envelope.id
    }
}

async fn post_mcp(
    gw: Arc<Gateway>,
    remembered: &Remembered,
    request: Request<Incoming>,
) -> Response {
    let (parts, body) = request.into_parts();
    // Token and headers first: the body of a request that is refused is never read.
    let grant = match admit_post(&gw, &parts.headers, remembered) {
        Ok(grant) => grant,
        Err(refused) => return closing(refused.into_response()),
    };
    let body = match read_body(&gw, &parts.headers, body).await {
        Ok(body) => body,
        Err(refused) => return closing(refused.into_response()),
    };
    let posted = match Envelope::parse(&body) {
        Ok(envelope) => Posted { envelope },
        Err(fault) => {
            let (code, message) = (fault.code, fault.message);
            return GatewayError::Malformed { code, message }.into_response();
        }
    };
    if posted.method().is_none() && posted.raw_id().is_none() {
        return GatewayError::NotAMessage.into_response();
    }
    if let Err(refused) = routing_headers_agree(&parts.headers, &posted) {
        return refused.reply(posted.raw_id());
    }
    if parts.headers.contains_key(&SESSION_ID) {
        let session = match gw.find(&parts.headers, &grant) {
            Ok(session) => session,
            Err(refused) => return refused.into_response(),
        };
        return forward(&gw, session, &parts.headers, &body, &posted).await;
    }
    if posted.method() == Some("initialize") {
        return initialize(&gw, grant, &parts.headers, &body, &posted).await;
    }
    stateless(&gw, grant, &parts.headers, &body, &posted).await
}

/// The 2026-07-28 routing headers (`Mcp-Method`, and `Mcp-Name` for a `tools/call`), when
/// sent, must say what the body says: they pass upstream with it, and nothing between may
/// route or read another method or tool than the one the gateway decides on.
fn routing_headers_agree(headers: &HeaderMap, posted: &Posted<'_>) -> Result<(), GatewayError> {
    let mismatch = |header: &str| GatewayError::Malformed {
        code: crate::jsonrpc::INVALID_REQUEST,
        message: format!("invalid request: the {header} header does not match the body"),
    };
    if let Some(method) = headers.get(&MCP_METHOD) {
        if Some(method.as_bytes()) != posted.method().map(str::as_bytes) {
            return Err(mismatch("Mcp-Method"));
        }
    }
    if let (Some(name), Some("tools/call")) = (headers.get(&MCP_NAME), posted.method()) {
        let said = name.to_str().ok().and_then(decode_header_value);
        let body = posted
            .envelope
            .params
            .and_then(|p| serde_json::from_str::<serde_json::Value>(p.get()).ok())
            .and_then(|p| p["name"].as_str().map(str::to_owned));
        if said.is_none() || said != body {
            return Err(mismatch("Mcp-Name"));
        }
    }
    Ok(())
}

/// A header value as 2026-07-28 clients write it: as it is, or `=?base64?…?=` (UTF-8).
fn decode_header_value(value: &str) -> Option<String> {
    use base64::Engine;
    let Some(payload) = value
        .strip_prefix("=?base64?")
        .and_then(|v| v.strip_suffix("?="))
    else {
        return Some(value.to_owned());
    };
    let engine = base64::engine::general_purpose::STANDARD;
    let decoded = engine.decode(payload).ok()?;
    // Canonical only, as the SDKs require: one spelling per name.
    (engine.encode(&decoded) == payload).then_some(())?;
    String::from_utf8(decoded).ok()
}

/// The checks a POST passes before its body is read: `Host`/`Origin`, the token, the
/// content type and what the client accepts.
fn admit_post(
    gw: &Gateway,
    headers: &HeaderMap,
    remembered: &Remembered,
) -> Result<Arc<Grant>, GatewayError> {
    let grant = gw.admit(headers, remembered)?;
    if media_type(headers) != "application/json" {
        return Err(GatewayError::NotJson);
    }
    let accepted = accepts(headers);
    if !(accepted.json && accepted.sse) {
        return Err(GatewayError::PostNotAcceptable);
    }
    Ok(grant)
}

/// The session core's verdict on a client message: **where a `tools/call` over HTTP is
/// decided**. A decision that may run plugins leaves the async worker for it (a plugin may
/// use its whole time budget).
fn decide<'b>(
    core: &Session,
    grant: &Grant,
    body: &'b [u8],
    posted: &Posted<'_>,
) -> ClientLine<'b> {
    let may_block = grant.policy.load().may_block() || grant.counters.may_block();
    if posted.method() == Some("tools/call") && may_block {
        tokio::task::block_in_place(|| core.from_client_parsed(body, &posted.envelope))
    } else {
        core.from_client_parsed(body, &posted.envelope)
    }
}

/// What [`decide`] leaves to forward; an answer or a dropped message is the response (boxed:
/// it is the rare path, and a response is large).
fn to_forward(line: ClientLine<'_>) -> Result<Forward<'_>, Box<Response>> {
    match line {
        ClientLine::Forward(forward) => Ok(forward),
        ClientLine::Answer(reply) => Err(Box::new(json_response(StatusCode::OK, reply))),
        // Nothing to forward and nothing to answer (a `tools/call` sent as a notification, a
        // reply to no pending request): accepted, as a notification is.
        ClientLine::Drop => Err(Box::new(StatusCode::ACCEPTED.into_response())),
        // `forward` holds calls before it gets here; anywhere else, refused, never forwarded.
        ClientLine::Hold(held) => Err(Box::new(json_response(
            StatusCode::OK,
            crate::jsonrpc::error_line(
                None,
                crate::jsonrpc::INTERNAL_ERROR,
                &format!("[toolgate] approval {} cannot be held here", held.approval),
            ),
        ))),
    }
}

/// A message in an open session (or a stateless request): decided, then sent upstream.
async fn forward(
    gw: &Arc<Gateway>,
    session: Arc<GwSession>,
    headers: &HeaderMap,
    body: &[u8],
    posted: &Posted<'_>,
) -> Response {
    // Adopted from another replica: first what its opener knew of the upstream's tools.
    if let Err(refused) = super::adopted::catch_up(gw, &session, headers).await {
        if let GatewayError::SessionNotFound = refused {
            gw.sessions.remove(&session.id);
            return refused.into_response();
        }
        return refused.reply(posted.raw_id());
    }
    let forward = match decide(&session.core, &session.grant, body, posted) {
        // Held for a person: the POST becomes a stream (other requests of the session go
        // on), and the call goes upstream once, or the client gets the deny or the pending
        // answer.
        ClientLine::Hold(held) => {
            let (gw, headers, core) = (gw.clone(), headers.clone(), session.clone());
            return held::stream(session, held, move |forward| async move {
                send(&gw, core, &headers, forward).await
            });
        }
        decided => match to_forward(decided) {
            Ok(forward) => forward,
            Err(response) => return *response,
        },
    };
    send(gw, session, headers, forward).await
}

/// An allowed message, upstream: an HTTP upstream session, or this session's own stdio
/// child. The reply comes back through [`super::relay`].
async fn send(
    gw: &Arc<Gateway>,
    session: Arc<GwSession>,
    headers: &HeaderMap,
    forward: Forward<'_>,
) -> Response {
    let (line, upstream_id) = (&forward.line[..], forward.upstream_id);
    let max = gw.limits.max_upstream_message_bytes;
    match &session.link {
        Link::Http(upstream_session) => {
            match gw
                .send_upstream(Method::POST, upstream_session.as_ref(), headers, line)
                .await
            {
                // The upstream no longer has the session (deleted through another replica,
                // expired, restarted): neither does the gateway, and the client hears so.
                Ok(response)
                    if response.status() == StatusCode::NOT_FOUND && upstream_session.is_some() =>
                {
                    if let Some(id) = upstream_id {
                        session
                            .core
                            .abandon(id, true, "the upstream session is gone");
                    }
                    gw.sessions.remove(&session.id);
                    tracing::info!(session = %session.id, "the upstream no longer has the session");
                    GatewayError::SessionNotFound.into_response()
                }
                Ok(response) => relay(max, session, response, None, upstream_id).await,
                Err(failed) => upstream_failed(&session, upstream_id, failed),
            }
        }
        Link::Stdio(child) => match upstream_id {
            Some(id) => match child.request(id, line).await {
                Ok(messages) => stream_lines(
                    session.clone(),
                    messages,
                    None,
                    Some((id, gw.limits.request_timeout())),
                ),
                Err(e) => {
                    let failed = Failed {
                        error: GatewayError::ChildRequest(e.error),
                        written: e.written,
                    };
                    upstream_failed(&session, Some(id), failed)
                }
            },
            None => match child.write(line).await {
                Ok(()) => StatusCode::ACCEPTED.into_response(),
                Err(e) => GatewayError::ChildGone(e).into_response(),
            },
        },
    }
}

/// `initialize` without a session: a slot, a session core, the upstream's session (or a new
/// child), then the session is open under a new gateway id.
async fn initialize(
    gw: &Arc<Gateway>,
    grant: Arc<Grant>,
    headers: &HeaderMap,
    body: &[u8],
    posted: &Posted<'_>,
) -> Response {
    let Some(slot) = gw.sessions.take_slot() else {
        let max = gw.sessions.max();
        return GatewayError::TooManySessions { max }.reply(posted.raw_id());
    };
    let id = uuid::Uuid::new_v4().to_string();
    let core = gw.session_core(&grant, &id);
    let forward = match to_forward(core.from_client_parsed(body, &posted.envelope)) {
        Ok(forward) => forward,
        Err(response) => return *response,
    };
    let (line, upstream_id) = (forward.line.into_owned(), forward.upstream_id);
    let max = gw.limits.max_upstream_message_bytes;
    let (session, response) = match &gw.upstream {
        Upstream::Http { .. } => {
            let response = match gw.send_upstream(Method::POST, None, headers, &line).await {
                Ok(response) => response,
                Err(failed) => return failed.error.into_response(),
            };
            if !response.status().is_success() {
                // No session upstream, so none here either: relay the refusal as it is.
                let throwaway = GwSession::new(id, grant, core, Link::Http(None));
                return relay(max, throwaway, response, None, upstream_id).await;
            }
            let upstream_session = response.headers().get(&SESSION_ID).cloned();
            // With a shared key, the id the client gets is sealed, so that every replica can
            // serve it; the core keeps counting under `id`, as every replica will.
            let id = match sealed_id(gw, &grant.name, upstream_session.as_ref(), &core, &id) {
                Ok(id) => id,
                Err(e) => {
                    tracing::error!(error = %e, "cannot seal a session id");
                    return GatewayError::Malformed {
                        code: crate::jsonrpc::INTERNAL_ERROR,
                        message: "[toolgate] cannot seal a session id".into(),
                    }
                    .reply(posted.raw_id());
                }
            };
            let session = GwSession::new(
                id.clone(),
                grant.clone(),
                core,
                Link::Http(upstream_session),
            );
            let relayed = relay(max, session.clone(), response, Some(&id), upstream_id).await;
            (session, relayed)
        }
        Upstream::Stdio(_) | Upstream::Set(_) => {
            let started = match &gw.upstream {
                Upstream::Set(set) => Child::connect(set, gw.upstreams.clone(), max),
                Upstream::Stdio(command) => Child::spawn(command, max),
                Upstream::Http { .. } => unreachable!("matched above"),
            };
            let child = match started {
                Ok(child) => child,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the upstream command");
                    return GatewayError::ChildSpawn(e).reply(posted.raw_id());
                }
            };
            let session = GwSession::new(id.clone(), grant.clone(), core, Link::Stdio(child));
            let Link::Stdio(child) = &session.link else {
                unreachable!()
            };
            let Some(upstream_id) = upstream_id else {
                unreachable!("initialize is a request")
            };
            let response = match child.request(upstream_id, &line).await {
                Ok(messages) => stream_lines(
                    session.clone(),
                    messages,
                    Some(&id),
                    Some((upstream_id, gw.limits.request_timeout())),
                ),
                Err(e) => return GatewayError::ChildExited(e.error).reply(posted.raw_id()),
            };
            (session, response)
        }
    };
    gw.sessions.open(slot, session);
    gw.stats.sessions_opened.fetch_add(1, Ordering::Relaxed);
    tracing::info!(session = %id, grant = %grant.name, "session opened");
    response
}

/// The session id the client gets: `id` itself, or with a session key, a sealed token that
/// carries what another replica needs to serve the session (`super::sealed`).
fn sealed_id(
    gw: &Gateway,
    grant: &str,
    upstream_session: Option<&axum::http::HeaderValue>,
    core: &Session,
    id: &str,
) -> anyhow::Result<String> {
    let Some(key) = &gw.session_key else {
        return Ok(id.to_owned());
    };
    let upstream = match upstream_session {
        Some(value) => Some(value.to_str()?.to_owned()),
        None => None,
    };
    key.seal(&super::sealed::Sealed {
        grant: grant.to_owned(),
        upstream,
        session: id.to_owned(),
        client_elicits: core.client_elicits(),
    })
}

/// A request sent without a session (the 2026-07-28 stateless protocol, `server/discover`):
/// an HTTP upstream decides whether it serves it; the policy applies all the same.
async fn stateless(
    gw: &Arc<Gateway>,
    grant: Arc<Grant>,
    headers: &HeaderMap,
    body: &[u8],
    posted: &Posted<'_>,
) -> Response {
    if let Upstream::Stdio(_) | Upstream::Set(_) = gw.upstream {
        // A stdio child speaks only the session protocol: answer as such a server would.
        let refused = if posted.method() == Some("server/discover") {
            GatewayError::DiscoverUnsupported
        } else {
            GatewayError::StdioNeedsSession
        };
        return refused.reply(posted.raw_id());
    }
    let core = gw.session_core(&grant, STATELESS_SESSION);
    let session = GwSession::new(STATELESS_SESSION.into(), grant, core, Link::Http(None));
    forward(gw, session, headers, body, posted).await
}

/// A GET: the stream of what the upstream sends unasked, for an open session.
async fn get_mcp(
    gw: Arc<Gateway>,
    remembered: &Remembered,
    request: Request<Incoming>,
) -> Result<Response, GatewayError> {
    let headers = request.headers();
    let grant = gw.admit(headers, remembered)?;
    if !accepts(headers).sse {
        return Err(GatewayError::GetNotAcceptable);
    }
    let session = gw.find(headers, &grant)?;
    let stream = match &session.link {
        Link::Http(upstream_id) => {
            let upstream_id = upstream_id.clone();
            match gw
                .send_upstream(Method::GET, upstream_id.as_ref(), headers, b"")
                .await
            {
                Ok(response) => {
                    let max = gw.limits.max_upstream_message_bytes;
                    relay(max, session, response, None, None).await
                }
                Err(failed) => return Err(failed.error),
            }
        }
        Link::Stdio(child) => {
            let messages = child.listen();
            stream_lines(session.clone(), messages, None, None)
        }
    };
    Ok(ends_when_stopping(&gw, stream))
}

/// A DELETE: the session ends here, then upstream.
async fn delete_mcp(
    gw: Arc<Gateway>,
    remembered: &Remembered,
    request: Request<Incoming>,
) -> Result<Response, GatewayError> {
    let headers = request.headers();
    let grant = gw.admit(headers, remembered)?;
    let session = gw.find(headers, &grant)?;
    gw.sessions.remove(&session.id);
    gw.stats.sessions_deleted.fetch_add(1, Ordering::Relaxed);
    tracing::info!(session = %session.id, grant = %grant.name, "session deleted by the client");
    let Link::Http(Some(upstream_id)) = &session.link else {
        return Ok(StatusCode::OK.into_response());
    };
    let response = gw
        .send_upstream(Method::DELETE, Some(upstream_id), headers, b"")
        .await
        .map_err(|failed| failed.error)?;
    let head = response_head(response.status(), response.headers(), None);
    let body = response.into_body().read_all(SMALL_REPLY).await;
    Ok(head
        .body(Body::from(body.unwrap_or_default()))
        .unwrap_or_else(|_| StatusCode::OK.into_response()))
}
