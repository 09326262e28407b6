//! The Streamable HTTP front (`/mcp`): where an HTTP request meets its grant's policy.
//!
//! One `tools/call` over HTTP:
//! 1. [`Gateway::admit`] checks `Host`/`Origin` (403: DNS rebinding) and the bearer token
//!    (401), before anything else is read: a refused request causes no upstream traffic.
//! 2. [`post`] checks the media types, reads the body under the size cap and the client
//!    timeout, and finds the session by `Mcp-Session-Id` (404 if unknown, or if another
//!    grant opened it).
//! 3. The session's [`Session::from_client`] decides, exactly as over stdio. A refusal is
//!    answered here as JSON and never reaches the upstream.
//! 4. An allowed message goes upstream ([`Link`]: an HTTP upstream session, or this session's
//!    own stdio child). The reply, JSON or an SSE stream, passes back message by message
//!    through [`Session::from_upstream`] (refunds, `tools/list` filtering).
//!
//! The gateway's session ids are its own (random UUIDs), mapped to the upstream's: a client
//! never learns an upstream session id, and a session answers only to the grant that opened it.

// A refusal is the HTTP response itself, built once on a slow path: boxing it buys nothing.
#![allow(clippy::result_large_err)]
use super::children::Child;
use super::config::{Limits, Upstream};
use super::grants::{AuthError, Grant, Grants, Remembered};
use super::sse;
use super::upstream::{Body as UpstreamBody, Pool, Response as UpstreamResponse, SendError};
use crate::jsonrpc::{self, Envelope};
use crate::session::{ClientLine, Forward, Identity, SchemaChecks, Session};
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Request;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc;

// Looked up as `HeaderName`s: a lookup by `&str` parses the name again each time.
static SESSION_HEADER: HeaderName = HeaderName::from_static("mcp-session-id");
static VERSION_HEADER: HeaderName = HeaderName::from_static("mcp-protocol-version");
static LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
/// Session-scoped counters of requests sent without a session share this key per grant, so a
/// client cannot escape a per-session cap by dropping its session id.
const STATELESS_SESSION: &str = "stateless";
/// The most read of an upstream reply to a DELETE (which carries no message).
const SMALL_REPLY: usize = 64 * 1024;
/// How long an SSE response head may wait for the upstream's first events (see [`relay`]).
const HEAD_WAITS_FOR_EVENTS: std::time::Duration = std::time::Duration::from_millis(5);

/// How a session reaches its upstream.
enum Link {
    /// An HTTP upstream; `None` when the upstream gave no session id (a stateless server).
    Http(Option<HeaderValue>),
    /// This session's own child process.
    Stdio(Child),
}

/// One MCP session through the gateway.
pub struct GwSession {
    id: String,
    grant: Arc<Grant>,
    policy: Session,
    link: Link,
    last_active: Mutex<Instant>,
    /// Response streams open right now: a session with an open stream is not idle.
    streams: AtomicUsize,
}

impl GwSession {
    fn new(id: String, grant: Arc<Grant>, policy: Session, link: Link) -> Arc<Self> {
        Arc::new(Self {
            id,
            grant,
            policy,
            link,
            last_active: Mutex::new(Instant::now()),
            streams: AtomicUsize::new(0),
        })
    }

    fn touch(&self) {
        *self.last_active.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }
    fn idle_for(&self) -> std::time::Duration {
        self.last_active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }
}

/// Counts for the admin status.
#[derive(Default)]
pub struct Stats {
    pub sessions_opened: AtomicU64,
    pub sessions_expired: AtomicU64,
    pub sessions_deleted: AtomicU64,
    pub refused_auth: AtomicU64,
    pub refused_host: AtomicU64,
}

/// The gateway's shared state.
pub struct Gateway {
    pub grants: Grants,
    upstream: Upstream,
    /// Connections to an HTTP upstream.
    pool: Option<Arc<Pool>>,
    sessions: Mutex<HashMap<String, Arc<GwSession>>>,
    /// Sessions open or being opened: a slot is taken before `initialize` goes upstream.
    slots: AtomicUsize,
    pub limits: Limits,
    allowed_hosts: Vec<String>,
    allowed_origins: Vec<String>,
    pub stats: Stats,
    /// Whose arguments are checked against their `inputSchema`.
    schemas: SchemaChecks,
    /// Becomes true when the gateway stops: the listeners close, GET streams end.
    stopping: tokio::sync::watch::Sender<bool>,
}

/// A session slot taken by an `initialize` in progress. It is given back when dropped: on
/// every refusal, and when the client goes away before the upstream answers.
struct Slot<'g>(&'g Gateway);

impl Slot<'_> {
    /// The session opened: the slot is released by [`Gateway::remove`] or expiry instead.
    fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.slots.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Releases a stream's hold on its session's idleness when the stream ends.
struct StreamGuard(Arc<GwSession>);

impl StreamGuard {
    fn new(session: Arc<GwSession>) -> Self {
        session.streams.fetch_add(1, Ordering::SeqCst);
        Self(session)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.streams.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A JSON-RPC error as an HTTP response.
fn rpc_error(status: StatusCode, id: Option<&RawValue>, code: i64, message: &str) -> Response {
    json_response(status, jsonrpc::error_line(id, code, message))
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// The host part of a `Host` header or an origin's authority (`[::1]:80` → `[::1]`).
fn host_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.split_inclusive(']').next().unwrap_or(authority);
    }
    authority.split(':').next().unwrap_or(authority)
}

fn is_loopback(host: &str) -> bool {
    ["localhost", "127.0.0.1", "[::1]"]
        .iter()
        .any(|name| host.eq_ignore_ascii_case(name))
}

fn media_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map_or("", str::trim)
}

/// What `Accept` lists, each media type by name or by a wildcard covering it.
struct Accepts {
    json: bool,
    sse: bool,
}

fn accepts(headers: &HeaderMap) -> Accepts {
    let mut out = Accepts {
        json: false,
        sse: false,
    };
    for value in headers.get_all(header::ACCEPT) {
        for item in value.as_bytes().split(|&b| b == b',') {
            let item = item.split(|&b| b == b';').next().unwrap_or_default();
            let item = item.trim_ascii();
            let any = item == b"*/*";
            out.json |= any
                || item.eq_ignore_ascii_case(b"application/json")
                || item.eq_ignore_ascii_case(b"application/*");
            out.sse |= any
                || item.eq_ignore_ascii_case(b"text/event-stream")
                || item.eq_ignore_ascii_case(b"text/*");
        }
    }
    out
}

/// Serves one HTTP request: `/mcp` takes POST, GET and DELETE. `remembered` is the token the
/// connection last presented.
pub async fn handle(
    gateway: Arc<Gateway>,
    remembered: Arc<Remembered>,
    request: Request<Incoming>,
) -> Response {
    let mcp = request.uri().path() == "/mcp";
    // Only the body of a POST to /mcp is read: any other request's body stays unread.
    let read = mcp && *request.method() == Method::POST;
    let unread = !read && !hyper::body::Body::is_end_stream(request.body());
    let response = if !mcp {
        rpc_error(
            StatusCode::NOT_FOUND,
            None,
            jsonrpc::INVALID_REQUEST,
            "not found: the MCP endpoint is /mcp",
        )
    } else {
        match *request.method() {
            Method::POST => return post_mcp(gateway, &remembered, request).await,
            Method::GET => get_mcp(gateway, &remembered, request).await,
            Method::DELETE => delete_mcp(gateway, &remembered, request).await,
            _ => {
                let mut response = StatusCode::METHOD_NOT_ALLOWED.into_response();
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
                response
            }
        }
    };
    if unread {
        closing(response)
    } else {
        response
    }
}

impl Gateway {
    pub fn new(
        grants: Grants,
        upstream: Upstream,
        limits: Limits,
        hosts: Vec<String>,
        origins: Vec<String>,
    ) -> anyhow::Result<Self> {
        let pool = match &upstream {
            Upstream::Http { url, tls, .. } => Some(Arc::new(Pool::new(url, tls)?)),
            Upstream::Stdio(_) => None,
        };
        Ok(Self {
            grants,
            upstream,
            pool,
            sessions: Mutex::new(HashMap::new()),
            slots: AtomicUsize::new(0),
            limits,
            allowed_hosts: hosts,
            allowed_origins: origins,
            stopping: tokio::sync::watch::Sender::new(false),
            stats: Stats::default(),
            schemas: SchemaChecks::default(),
        })
    }

    /// Which tools' arguments are checked against their `inputSchema` (all, by default).
    pub fn with_schema_checks(mut self, schemas: SchemaChecks) -> Self {
        self.schemas = schemas;
        self
    }

    /// Says that the gateway is stopping: to the listeners, and to the GET streams.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Sees the gateway stop: it becomes true once [`Gateway::stop`] is called.
    pub fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// A slot for a new session, unless `max_sessions` are open or opening.
    fn take_slot(&self) -> Option<Slot<'_>> {
        if self.slots.fetch_add(1, Ordering::SeqCst) >= self.limits.max_sessions {
            self.slots.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Slot(self))
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<GwSession>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Open sessions.
    pub fn session_count(&self) -> usize {
        self.sessions().len()
    }

    /// `Host`/`Origin` (DNS rebinding), then the bearer token.
    fn admit(&self, headers: &HeaderMap, remembered: &Remembered) -> Result<Arc<Grant>, Response> {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let host_ok = is_loopback(host_of(host))
            || self
                .allowed_hosts
                .iter()
                .any(|a| a.eq_ignore_ascii_case(host) || a.eq_ignore_ascii_case(host_of(host)));
        let origin_ok = match headers.get(header::ORIGIN).map(|v| v.to_str()) {
            None => true,
            Some(Ok(origin)) => {
                let authority = origin.split_once("://").map_or("", |(_, rest)| rest);
                is_loopback(host_of(authority))
                    || self
                        .allowed_origins
                        .iter()
                        .any(|a| a.eq_ignore_ascii_case(origin))
            }
            Some(Err(_)) => false,
        };
        if !host_ok || !origin_ok {
            self.stats.refused_host.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(host, origin = ?headers.get(header::ORIGIN), "refused Host/Origin");
            return Err(rpc_error(
                StatusCode::FORBIDDEN,
                None,
                jsonrpc::INVALID_REQUEST,
                "forbidden: Host or Origin is not allowed (DNS rebinding protection)",
            ));
        }
        let authorization = headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        self.grants
            .authenticate(authorization, remembered)
            .map_err(|why| {
                self.stats.refused_auth.fetch_add(1, Ordering::Relaxed);
                let (challenge, message) = match why {
                    AuthError::Missing => (
                        r#"Bearer realm="toolgate""#,
                        "unauthorized: send `Authorization: Bearer <token>`",
                    ),
                    AuthError::Invalid => (
                        r#"Bearer realm="toolgate", error="invalid_token""#,
                        "unauthorized: the bearer token is not valid",
                    ),
                };
                let mut response = rpc_error(
                    StatusCode::UNAUTHORIZED,
                    None,
                    jsonrpc::INVALID_REQUEST,
                    message,
                );
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
                response
            })
    }

    /// The session a request names, if it exists and belongs to `grant`.
    fn find(&self, headers: &HeaderMap, grant: &Arc<Grant>) -> Result<Arc<GwSession>, Response> {
        let Some(id) = headers.get(&SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
            return Err(rpc_error(
                StatusCode::BAD_REQUEST,
                None,
                jsonrpc::INVALID_REQUEST,
                "bad request: Mcp-Session-Id header is required",
            ));
        };
        match self.sessions().get(id) {
            Some(session) if Arc::ptr_eq(&session.grant, grant) => {
                session.touch();
                Ok(session.clone())
            }
            // Another grant's session looks exactly like one that does not exist.
            _ => Err(rpc_error(
                StatusCode::NOT_FOUND,
                None,
                jsonrpc::INVALID_REQUEST,
                "session not found: it expired or was deleted; send initialize again",
            )),
        }
    }

    fn remove(&self, id: &str) -> Option<Arc<GwSession>> {
        let removed = self.sessions().remove(id);
        if removed.is_some() {
            self.slots.fetch_sub(1, Ordering::SeqCst);
        }
        removed
    }

    /// The headers for an upstream request: the MCP headers the client sent, the upstream
    /// session, and the config's own.
    fn upstream_headers<'a>(
        &'a self,
        client: &'a HeaderMap,
        upstream_session: Option<&'a HeaderValue>,
    ) -> Vec<(&'a str, &'a HeaderValue)> {
        let mut headers = Vec::with_capacity(8);
        for name in [
            &header::ACCEPT,
            &header::CONTENT_TYPE,
            &LAST_EVENT_ID,
            &VERSION_HEADER,
        ] {
            if let Some(value) = client.get(name) {
                headers.push((name.as_str(), value));
            }
        }
        if let Some(id) = upstream_session {
            headers.push((SESSION_HEADER.as_str(), id));
        }
        if let Upstream::Http { headers: own, .. } = &self.upstream {
            headers.extend(own.iter().map(|(n, v)| (n.as_str(), v)));
        }
        headers
    }

    /// Sends a request to the HTTP upstream, copying the MCP headers the client sent.
    async fn send_upstream(
        &self,
        method: Method,
        upstream_session: Option<&HeaderValue>,
        client: &HeaderMap,
        body: &[u8],
    ) -> Result<UpstreamResponse, Failed> {
        let Some(pool) = &self.pool else {
            unreachable!("only HTTP upstreams are sent requests")
        };
        let headers = self.upstream_headers(client, upstream_session);
        let sent = pool.send(method, &headers, body);
        match tokio::time::timeout(self.limits.request_timeout(), sent).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(SendError { error, written })) => {
                tracing::warn!(%error, written, "upstream request failed");
                Err(Failed {
                    status: StatusCode::BAD_GATEWAY,
                    message: format!("upstream MCP server unreachable: {error}"),
                    written,
                })
            }
            // The request may be running upstream: its counter units stay spent.
            Err(_) => Err(Failed {
                status: StatusCode::GATEWAY_TIMEOUT,
                message: format!(
                    "upstream MCP server did not answer within {} s",
                    self.limits.request_timeout_s
                ),
                written: true,
            }),
        }
    }

    /// Closes sessions idle for longer than the limit; returns how many.
    pub fn expire_idle(self: &Arc<Self>) -> usize {
        let idle = self.limits.idle();
        let expired: Vec<Arc<GwSession>> = {
            let mut sessions = self.sessions();
            let ids: Vec<String> = sessions
                .values()
                .filter(|s| s.streams.load(Ordering::SeqCst) == 0 && s.idle_for() >= idle)
                .map(|s| s.id.clone())
                .collect();
            ids.iter().filter_map(|id| sessions.remove(id)).collect()
        };
        self.slots.fetch_sub(expired.len(), Ordering::SeqCst);
        self.stats
            .sessions_expired
            .fetch_add(expired.len() as u64, Ordering::Relaxed);
        for session in &expired {
            tracing::info!(session = %session.id, grant = %session.grant.name, "session expired (idle)");
            self.close_upstream(session);
        }
        expired.len()
    }

    /// Ends every session when the gateway stops, after the connections have finished: the
    /// HTTP upstream's sessions get their DELETEs, all at once and for at most `within`, so
    /// that the upstream frees them now instead of at its own idle expiry; stdio children are
    /// stopped as their sessions drop. Returns how many sessions there were.
    pub async fn close_all(self: &Arc<Self>, within: std::time::Duration) -> usize {
        let closed: Vec<Arc<GwSession>> = self.sessions().drain().map(|(_, s)| s).collect();
        self.slots.fetch_sub(closed.len(), Ordering::SeqCst);
        let mut deletes = tokio::task::JoinSet::new();
        for session in &closed {
            if let Link::Http(Some(upstream_id)) = &session.link {
                deletes.spawn(self.clone().delete_upstream(upstream_id.clone()));
            }
        }
        let all_sent = async { while deletes.join_next().await.is_some() {} };
        if tokio::time::timeout(within, all_sent).await.is_err() {
            tracing::warn!(
                left = deletes.len(),
                "stopping: the upstream did not answer every session DELETE in time"
            );
        }
        closed.len()
    }

    /// Ends the upstream side of a session that is gone: DELETE for HTTP (in the
    /// background), the child is killed when the last reference drops.
    fn close_upstream(self: &Arc<Self>, session: &GwSession) {
        if let Link::Http(Some(upstream_id)) = &session.link {
            tokio::spawn(self.clone().delete_upstream(upstream_id.clone()));
        }
    }

    /// DELETEs one upstream session; the upstream's answer does not matter.
    async fn delete_upstream(self: Arc<Self>, upstream_id: HeaderValue) {
        let no_client = HeaderMap::new();
        let sent = self.send_upstream(Method::DELETE, Some(&upstream_id), &no_client, b"");
        if let Ok(response) = sent.await {
            let _ = response.into_body().read_all(SMALL_REPLY).await;
        }
    }
}

/// The body, under the size cap and the client timeout.
async fn read_body(gw: &Gateway, headers: &HeaderMap, body: Incoming) -> Result<Bytes, Response> {
    let max = gw.limits.max_body_bytes;
    let too_big = |length: usize| {
        rpc_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
            jsonrpc::INVALID_REQUEST,
            &format!("request body of {length} bytes exceeds the gateway's {max}-byte limit"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(length) = declared.filter(|&l| l > max) {
        return Err(too_big(length));
    }
    let limited = http_body_util::Limited::new(body, max);
    match tokio::time::timeout(gw.limits.client_timeout(), limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_big(max + 1)),
        Ok(Err(e)) => Err(rpc_error(
            StatusCode::BAD_REQUEST,
            None,
            jsonrpc::INVALID_REQUEST,
            &format!("cannot read the request body: {e}"),
        )),
        Err(_) => Err(rpc_error(
            StatusCode::REQUEST_TIMEOUT,
            None,
            jsonrpc::INVALID_REQUEST,
            &format!(
                "request body not received within {} s",
                gw.limits.client_timeout_s
            ),
        )),
    }
}

/// An upstream exchange that failed before a response head arrived.
struct Failed {
    status: StatusCode,
    message: String,
    /// Whether any of the request may have reached the upstream.
    written: bool,
}

impl Failed {
    fn into_response(self) -> Response {
        rpc_error(self.status, None, jsonrpc::UPSTREAM_GONE, &self.message)
    }
}

/// What the routing fields of a POSTed message say, parsed once: the session's policy
/// decides on the same parse.
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
        Err(refused) => return closing(refused),
    };
    let body = match read_body(&gw, &parts.headers, body).await {
        Ok(body) => body,
        Err(refused) => return closing(refused),
    };
    let posted = match Envelope::parse(&body) {
        Ok(envelope) => Posted { envelope },
        Err(fault) => return rpc_error(StatusCode::BAD_REQUEST, None, fault.code, &fault.message),
    };
    if posted.method().is_none() && posted.raw_id().is_none() {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            None,
            jsonrpc::INVALID_REQUEST,
            "invalid request: neither a request, a notification nor a reply",
        );
    }
    if parts.headers.contains_key(&SESSION_HEADER) {
        let session = match gw.find(&parts.headers, &grant) {
            Ok(session) => session,
            Err(refused) => return refused,
        };
        return forward(&gw, session, &parts.headers, &body, &posted).await;
    }
    if posted.method() == Some("initialize") {
        return initialize(&gw, grant, &parts.headers, &body, &posted).await;
    }
    stateless(&gw, grant, &parts.headers, &body, &posted).await
}

/// The checks a POST passes before its body is read: `Host`/`Origin`, the token, the
/// content type and what the client accepts.
fn admit_post(
    gw: &Gateway,
    headers: &HeaderMap,
    remembered: &Remembered,
) -> Result<Arc<Grant>, Response> {
    let grant = gw.admit(headers, remembered)?;
    if media_type(headers) != "application/json" {
        return Err(rpc_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
            jsonrpc::INVALID_REQUEST,
            "unsupported media type: Content-Type must be application/json",
        ));
    }
    let accepted = accepts(headers);
    if !(accepted.json && accepted.sse) {
        return Err(rpc_error(
            StatusCode::NOT_ACCEPTABLE,
            None,
            jsonrpc::INVALID_REQUEST,
            "not acceptable: Accept must list both application/json and text/event-stream",
        ));
    }
    Ok(grant)
}

/// A refusal sent before the request's body was read whole ends the connection, and says so
/// (`Connection: close`). The rest of the body may still be on its way, so hyper cannot keep
/// the connection; without the header, a client could send its next request on it and lose
/// that request when it closes.
fn closing(mut refused: Response) -> Response {
    refused
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    refused
}

/// The policy's verdict on a client message. A decision that may run plugins leaves the async
/// worker for it (a plugin may use its whole time budget).
fn decide<'b>(
    policy: &Session,
    grant: &Grant,
    body: &'b [u8],
    posted: &Posted<'_>,
) -> ClientLine<'b> {
    if posted.method() == Some("tools/call") && grant.policy.load().may_block() {
        tokio::task::block_in_place(|| policy.from_client_parsed(body, &posted.envelope))
    } else {
        policy.from_client_parsed(body, &posted.envelope)
    }
}

/// A failed upstream exchange: the session forgets the request (refunding a call's units
/// only if none of it was written) and the client gets the error as the request's reply.
fn upstream_failed(policy: &Session, upstream_id: Option<u64>, failed: Failed) -> Response {
    let status = failed.status;
    match upstream_id.and_then(|id| policy.abandon(id, failed.written, &failed.message)) {
        Some(line) => json_response(status, line),
        None => failed.into_response(),
    }
}

/// What [`decide`] leaves to forward: an answer or a dropped message is the response.
fn to_forward<'b>(line: ClientLine<'b>) -> Result<Forward<'b>, Response> {
    match line {
        ClientLine::Forward(forward) => Ok(forward),
        ClientLine::Answer(reply) => Err(json_response(StatusCode::OK, reply)),
        // Nothing to forward and nothing to answer (a `tools/call` sent as a notification, a
        // reply to no pending request): accepted, as a notification is.
        ClientLine::Drop => Err(StatusCode::ACCEPTED.into_response()),
    }
}

async fn forward(
    gw: &Arc<Gateway>,
    session: Arc<GwSession>,
    headers: &HeaderMap,
    body: &[u8],
    posted: &Posted<'_>,
) -> Response {
    let forward = match to_forward(decide(&session.policy, &session.grant, body, posted)) {
        Ok(forward) => forward,
        Err(response) => return response,
    };
    let (line, upstream_id) = (&forward.line[..], forward.upstream_id);
    match &session.link {
        Link::Http(upstream_session) => {
            match gw
                .send_upstream(Method::POST, upstream_session.as_ref(), headers, line)
                .await
            {
                Ok(response) => relay(gw, session, response, None, upstream_id).await,
                Err(failed) => upstream_failed(&session.policy, upstream_id, failed),
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
                        status: StatusCode::BAD_GATEWAY,
                        message: e.error.to_string(),
                        written: e.written,
                    };
                    upstream_failed(&session.policy, Some(id), failed)
                }
            },
            None => match child.write(line).await {
                Ok(()) => StatusCode::ACCEPTED.into_response(),
                Err(e) => rpc_error(
                    StatusCode::BAD_GATEWAY,
                    None,
                    jsonrpc::UPSTREAM_GONE,
                    &format!("upstream MCP server has exited: {e}"),
                ),
            },
        },
    }
}

async fn initialize(
    gw: &Arc<Gateway>,
    grant: Arc<Grant>,
    headers: &HeaderMap,
    body: &[u8],
    posted: &Posted<'_>,
) -> Response {
    let Some(slot) = gw.take_slot() else {
        return rpc_error(
            StatusCode::SERVICE_UNAVAILABLE,
            posted.raw_id(),
            jsonrpc::UPSTREAM_GONE,
            &format!(
                "too many sessions: the gateway's limit of {} is reached; retry later",
                gw.limits.max_sessions
            ),
        );
    };
    let id = uuid::Uuid::new_v4().to_string();
    let policy = session_policy(gw, &grant, &id);
    let forward = match to_forward(policy.from_client_parsed(body, &posted.envelope)) {
        Ok(forward) => forward,
        Err(response) => return response,
    };
    let (line, upstream_id) = (forward.line.into_owned(), forward.upstream_id);
    let new_session = |link| GwSession::new(id.clone(), grant.clone(), policy, link);
    let (session, response) = match &gw.upstream {
        Upstream::Http { .. } => {
            let response = match gw.send_upstream(Method::POST, None, headers, &line).await {
                Ok(response) => response,
                Err(failed) => return failed.into_response(),
            };
            if !response.status().is_success() {
                // No session upstream, so none here either: relay the refusal as it is.
                let throwaway = new_session(Link::Http(None));
                return relay(gw, throwaway, response, None, upstream_id).await;
            }
            let upstream_session = response.headers().get(&SESSION_HEADER).cloned();
            let session = new_session(Link::Http(upstream_session));
            let relayed = relay(gw, session.clone(), response, Some(&id), upstream_id).await;
            (session, relayed)
        }
        Upstream::Stdio(command) => {
            let child = match Child::spawn(command, gw.limits.max_upstream_message_bytes) {
                Ok(child) => child,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the upstream command");
                    return rpc_error(
                        StatusCode::BAD_GATEWAY,
                        posted.raw_id(),
                        jsonrpc::UPSTREAM_GONE,
                        &format!("cannot start the upstream MCP server: {e}"),
                    );
                }
            };
            let session = new_session(Link::Stdio(child));
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
                Err(e) => {
                    return rpc_error(
                        StatusCode::BAD_GATEWAY,
                        posted.raw_id(),
                        jsonrpc::UPSTREAM_GONE,
                        &format!("upstream MCP server exited: {}", e.error),
                    );
                }
            };
            (session, response)
        }
    };
    slot.keep();
    gw.sessions().insert(id.clone(), session);
    gw.stats.sessions_opened.fetch_add(1, Ordering::Relaxed);
    tracing::info!(session = %id, grant = %grant.name, "session opened");
    response
}

/// The policy side of a session: the grant's policy and counters, counting as `id`.
fn session_policy(gw: &Gateway, grant: &Grant, id: &str) -> Session {
    Session::live(
        grant.policy.clone(),
        grant.counters.clone(),
        Identity {
            grant: grant.name.clone(),
            session: id.to_owned(),
        },
    )
    .with_schema_checks(gw.schemas.clone())
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
    if let Upstream::Stdio(_) = gw.upstream {
        // A stdio child speaks only the session protocol: answer as such a server would.
        return if posted.method() == Some("server/discover") {
            rpc_error(
                StatusCode::OK,
                posted.raw_id(),
                -32601,
                "method not found: server/discover",
            )
        } else {
            rpc_error(
                StatusCode::BAD_REQUEST,
                posted.raw_id(),
                jsonrpc::INVALID_REQUEST,
                "bad request: Mcp-Session-Id header is required (send initialize first)",
            )
        };
    }
    let policy = session_policy(gw, &grant, STATELESS_SESSION);
    let session = GwSession::new(STATELESS_SESSION.into(), grant, policy, Link::Http(None));
    forward(gw, session, headers, body, posted).await
}

async fn get_mcp(
    gw: Arc<Gateway>,
    remembered: &Remembered,
    request: Request<Incoming>,
) -> Response {
    let headers = request.headers();
    let grant = match gw.admit(headers, remembered) {
        Ok(grant) => grant,
        Err(refused) => return refused,
    };
    if !accepts(headers).sse {
        return rpc_error(
            StatusCode::NOT_ACCEPTABLE,
            None,
            jsonrpc::INVALID_REQUEST,
            "not acceptable: Accept must list text/event-stream",
        );
    }
    let session = match gw.find(headers, &grant) {
        Ok(session) => session,
        Err(refused) => return refused,
    };
    let stream = match &session.link {
        Link::Http(upstream_id) => {
            let upstream_id = upstream_id.clone();
            match gw
                .send_upstream(Method::GET, upstream_id.as_ref(), headers, b"")
                .await
            {
                Ok(response) => relay(&gw, session, response, None, None).await,
                Err(failed) => failed.into_response(),
            }
        }
        Link::Stdio(child) => {
            let messages = child.listen();
            stream_lines(session.clone(), messages, None, None)
        }
    };
    ends_when_stopping(&gw, stream)
}

/// A GET stream carries only what the server sends unasked, and it never ends by itself. When
/// the gateway stops, the stream ends at once (the client reconnects, to the next gateway)
/// instead of holding the stop for the whole grace period. POST replies are requests in
/// flight: they keep the grace period to finish.
fn ends_when_stopping(gw: &Gateway, response: Response) -> Response {
    use futures_util::StreamExt;
    let mut stopping = gw.stopping();
    let stopped = async move {
        // An error means the gateway is gone: the stream ends then too.
        let _ = stopping.wait_for(|stopping| *stopping).await;
    };
    response.map(|body| Body::from_stream(body.into_data_stream().take_until(stopped)))
}

async fn delete_mcp(
    gw: Arc<Gateway>,
    remembered: &Remembered,
    request: Request<Incoming>,
) -> Response {
    let headers = request.headers();
    let grant = match gw.admit(headers, remembered) {
        Ok(grant) => grant,
        Err(refused) => return refused,
    };
    let session = match gw.find(headers, &grant) {
        Ok(session) => session,
        Err(refused) => return refused,
    };
    gw.remove(&session.id);
    gw.stats.sessions_deleted.fetch_add(1, Ordering::Relaxed);
    tracing::info!(session = %session.id, grant = %grant.name, "session deleted by the client");
    match &session.link {
        Link::Http(Some(upstream_id)) => {
            match gw
                .send_upstream(Method::DELETE, Some(upstream_id), headers, b"")
                .await
            {
                Ok(response) => {
                    let head = response_head(response.status(), response.headers(), None);
                    let body = response.into_body().read_all(SMALL_REPLY).await;
                    head.body(Body::from(body.unwrap_or_default()))
                        .unwrap_or_else(|_| StatusCode::OK.into_response())
                }
                Err(failed) => failed.into_response(),
            }
        }
        _ => StatusCode::OK.into_response(),
    }
}

/// Status and headers for a relayed response: the content type and protocol version as the
/// upstream sent them, and the gateway's own session id.
fn response_head(
    status: StatusCode,
    upstream: &HeaderMap,
    session_id: Option<&str>,
) -> axum::http::response::Builder {
    let mut builder = Response::builder().status(status);
    for name in [header::CONTENT_TYPE, header::CACHE_CONTROL] {
        if let Some(value) = upstream.get(&name) {
            builder = builder.header(name, value);
        }
    }
    if let Some(value) = upstream.get(&VERSION_HEADER) {
        builder = builder.header(&VERSION_HEADER, value);
    }
    if let Some(id) = session_id {
        builder = builder.header(&SESSION_HEADER, id);
    }
    builder
}

/// Relays an HTTP upstream's response: an SSE stream event by event, a JSON reply whole,
/// each message through the session; an empty body (202) as it is. A body of any other
/// content type is a 502: it could carry a message the session never saw.
/// `upstream_id` is the gateway's id of the request this response answers, if any.
async fn relay(
    gw: &Arc<Gateway>,
    session: Arc<GwSession>,
    response: UpstreamResponse,
    new_session_id: Option<&str>,
    upstream_id: Option<u64>,
) -> Response {
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let head = response_head(status, response.headers(), new_session_id);
    let max = gw.limits.max_upstream_message_bytes;
    if content_type.starts_with("text/event-stream") {
        let mut relay = SseRelay {
            upstream: response.into_body(),
            parser: sse::Parser::new(max),
            guard: StreamGuard::new(session),
            done: false,
            first: None,
        };
        // Servers often write the head and the first events separately (Node does): wait a
        // moment for the events, so that the client gets them with the head in one write and
        // wakes once. Only the head can be held back, never an event.
        let first =
            std::future::poll_fn(|cx| hyper::body::Body::poll_frame(Pin::new(&mut relay), cx));
        if let Ok(frame) = tokio::time::timeout(HEAD_WAITS_FOR_EVENTS, first).await {
            relay.first = Some(frame);
        }
        return head
            .body(Body::new(relay))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    let body = match response.into_body().read_all(max).await {
        Ok(body) => body,
        Err(e) => {
            return rpc_error(
                StatusCode::BAD_GATEWAY,
                None,
                jsonrpc::UPSTREAM_GONE,
                &e.to_string(),
            )
        }
    };
    if body.is_empty() {
        return head
            .body(Body::empty())
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    if !content_type.starts_with("application/json") {
        tracing::warn!(%status, content_type, "upstream body of an unexpected content type; not relayed");
        let failed = Failed {
            status: StatusCode::BAD_GATEWAY,
            message: format!(
                "the upstream answered HTTP {status} with a body of content type `{content_type}`, not JSON or SSE"
            ),
            written: true,
        };
        return upstream_failed(&session.policy, upstream_id, failed);
    }
    match session.policy.from_upstream(&body) {
        Some(out) => head
            .body(Body::from(out.into_owned()))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()),
        None => {
            // Not the reply to this request (nor to any other pending one): an upstream's
            // HTTP error keeps its status, with the request's own error reply.
            let failed = Failed {
                status: if status.is_client_error() || status.is_server_error() {
                    status
                } else {
                    StatusCode::BAD_GATEWAY
                },
                message: format!(
                    "the upstream answered HTTP {status} without a reply to this request"
                ),
                written: true,
            };
            upstream_failed(&session.policy, upstream_id, failed)
        }
    }
}

/// An upstream SSE body on its way to the client, polled by the client's connection itself
/// (no task, no channel). Each upstream read becomes one write of the events it completes,
/// each through the session; when the upstream's end came in the same read, hyper learns it
/// from [`hyper::body::Body::is_end_stream`] and writes the end with the last events.
struct SseRelay {
    upstream: UpstreamBody,
    parser: sse::Parser,
    guard: StreamGuard,
    done: bool,
    /// The first frame, read before the response head was handed to hyper.
    first: Option<Option<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>>>,
}

impl SseRelay {
    /// The events in one upstream chunk, re-encoded after the session has seen them.
    fn relay(&mut self, chunk: &[u8]) -> Vec<u8> {
        let events = match self.parser.push(chunk) {
            Ok(events) => events,
            Err(sse::Oversized(length)) => {
                tracing::error!(length, "upstream event over the size cap; stream closed");
                self.done = true;
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for event in events {
            // Events without a message (the priming event) pass as they are.
            if event.data.trim().is_empty() {
                out.extend_from_slice(&event.encode());
                continue;
            }
            let data = event.data.as_bytes();
            let Some(line) = self.guard.0.policy.from_upstream(data) else {
                continue; // not for the client (see `Session::from_upstream`)
            };
            let encoded = match line {
                std::borrow::Cow::Borrowed(_) => event.encode_with(event.data.trim_ascii_end()), // as it came: no copy
                std::borrow::Cow::Owned(line) => {
                    event.encode_with(&String::from_utf8_lossy(line.trim_ascii_end()))
                }
            };
            if out.is_empty() {
                out = encoded;
            } else {
                out.extend_from_slice(&encoded);
            }
        }
        out
    }
}

impl hyper::body::Body for SseRelay {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            return Poll::Ready(first);
        }
        while !this.done {
            let chunk = match this.upstream.poll_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(Some(chunk))) => chunk,
                // The end, or an error: the stream is over either way.
                Poll::Ready(Ok(None) | Err(_)) => break,
            };
            let out = this.relay(&chunk);
            if this.upstream.is_end() {
                this.done = true;
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(hyper::body::Frame::data(out.into()))));
            }
        }
        this.done = true;
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.first.is_none()
    }
}

/// Lines from a stdio child as an SSE response, each through the session. For a POST,
/// `request` is the gateway's id of its request and how long its reply may take: then the
/// stream ends with an error reply (the call's units stay spent).
fn stream_lines(
    session: Arc<GwSession>,
    lines: mpsc::Receiver<Vec<u8>>,
    new_session_id: Option<&str>,
    request: Option<(u64, std::time::Duration)>,
) -> Response {
    let guard = StreamGuard::new(session);
    let deadline =
        request.map(|(id, timeout)| (id, timeout, tokio::time::Instant::now() + timeout));
    let stream =
        futures_util::stream::unfold((Some(lines), guard), move |(lines, guard)| async move {
            let mut lines = lines?;
            let line = match deadline {
                None => lines.recv().await?,
                Some((id, timeout, at)) => match tokio::time::timeout_at(at, lines.recv()).await {
                    Ok(line) => line?,
                    Err(_) => {
                        let message = format!(
                            "[toolgate] the upstream MCP server did not answer within {} s",
                            timeout.as_secs()
                        );
                        let reply = guard.0.policy.abandon(id, true, &message)?;
                        let event = sse::Event::message(&reply).encode();
                        return Some((
                            Ok::<_, std::convert::Infallible>(Bytes::from(event)),
                            (None, guard),
                        ));
                    }
                },
            };
            let encoded = guard
                .0
                .policy
                .from_upstream(&line)
                .map(|out| sse::Event::message(&out).encode())
                .unwrap_or_default();
            Some((Ok(Bytes::from(encoded)), (Some(lines), guard)))
        });
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache");
    if let Some(id) = new_session_id {
        builder = builder.header(&SESSION_HEADER, id);
    }
    builder
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_accept_lists() {
        assert_eq!(host_of("[::1]:7400"), "[::1]");
        assert_eq!(host_of("localhost:80"), "localhost");
        assert_eq!(host_of("evil.example.com"), "evil.example.com");
        assert!(is_loopback("LOCALHOST") && !is_loopback("localhost.evil.com"));
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json;q=0.9, text/*"),
        );
        let both = accepts(&h);
        assert!(both.json && both.sse);
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("image/png, text/html"),
        );
        let neither = accepts(&h);
        assert!(!neither.json && !neither.sse);
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("Text/Event-Stream"),
        );
        h.append(
            header::ACCEPT,
            HeaderValue::from_static(" application/JSON ; q=1"),
        );
        let split = accepts(&h);
        assert!(split.json && split.sse);
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(accepts(&h).json && accepts(&h).sse);
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/jsonx, text/event"),
        );
        let near = accepts(&h);
        assert!(!near.json && !near.sse);
    }
}
