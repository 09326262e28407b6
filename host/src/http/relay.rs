//! Replies on their way back to the client, each message through the session core
//! ([`Session::from_upstream`](crate::session::Session::from_upstream): refunds, `tools/list`
//! filtering): an HTTP upstream's JSON reply whole or its SSE stream event by event
//! ([`relay`]), a stdio child's lines as an SSE stream ([`stream_lines`]), and a failed
//! exchange as the request's own error reply ([`upstream_failed`]).

use super::error::{json_response, Failed, GatewayError};
use super::headers::{PROTOCOL_VERSION, SESSION_ID};
use super::sessions::{GwSession, StreamGuard};
use super::upstream::{Body as UpstreamBody, Response as UpstreamResponse};
use crate::sse;
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long an SSE response head may wait for the upstream's first events (see [`relay`]).
const HEAD_WAITS_FOR_EVENTS: Duration = Duration::from_millis(5);

/// Status and headers for a relayed response: the content type and protocol version as the
/// upstream sent them, and the gateway's own session id.
pub(crate) fn response_head(
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
    if let Some(value) = upstream.get(&PROTOCOL_VERSION) {
        builder = builder.header(&PROTOCOL_VERSION, value);
    }
    if let Some(id) = session_id {
        builder = builder.header(&SESSION_ID, id);
    }
    builder
}

/// A failed upstream exchange: the session forgets the request (refunding a call's units
/// only if none of it was written) and the client gets the error as the request's reply.
pub(crate) fn upstream_failed(
    session: &GwSession,
    upstream_id: Option<u64>,
    failed: Failed,
) -> Response {
    let Failed { error, written } = failed;
    let abandoned =
        upstream_id.and_then(|id| session.core.abandon(id, written, &error.to_string()));
    match abandoned {
        Some(line) => json_response(error.status(), line),
        None => error.into_response(),
    }
}

/// Relays an HTTP upstream's response: an SSE stream event by event, a JSON reply whole,
/// each message through the session; an empty body (202) as it is. A body of any other
/// content type is a 502: it could carry a message the session never saw. No message over
/// `max` bytes is relayed. `upstream_id` is the gateway's id of the request this response
/// answers, if any.
pub(crate) async fn relay(
    max: usize,
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
        Err(e) => return GatewayError::UpstreamBody(e).into_response(),
    };
    if body.is_empty() {
        return head
            .body(Body::empty())
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    if !content_type.starts_with("application/json") {
        tracing::warn!(%status, content_type, "upstream body of an unexpected content type; not relayed");
        let failed = Failed {
            error: GatewayError::UpstreamContentType {
                status,
                content_type,
            },
            written: true,
        };
        return upstream_failed(&session, upstream_id, failed);
    }
    match from_upstream(&session.core, &body) {
        Some(out) => head
            .body(Body::from(out.into_owned()))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()),
        None => {
            // Not the reply to this request (nor to any other pending one): an upstream's
            // HTTP error keeps its status, with the request's own error reply.
            let failed = Failed {
                error: GatewayError::UpstreamNoReply { status },
                written: true,
            };
            upstream_failed(&session, upstream_id, failed)
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
    first: Option<Option<Result<hyper::body::Frame<Bytes>, Infallible>>>,
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
            let Some(line) = from_upstream(&self.guard.session().core, data) else {
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
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
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
pub(crate) fn stream_lines(
    session: Arc<GwSession>,
    lines: mpsc::Receiver<Vec<u8>>,
    new_session_id: Option<&str>,
    request: Option<(u64, Duration)>,
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
                        let reply = guard.session().core.abandon(id, true, &message)?;
                        let event = sse::Event::message(&reply).encode();
                        return Some((Ok::<_, Infallible>(Bytes::from(event)), (None, guard)));
                    }
                },
            };
            let encoded = from_upstream(&guard.session().core, &line)
                .map(|out| sse::Event::message(&out).encode())
                .unwrap_or_default();
            Some((Ok(Bytes::from(encoded)), (Some(lines), guard)))
        });
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache");
    if let Some(id) = new_session_id {
        builder = builder.header(&SESSION_ID, id);
    }
    builder
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// [`crate::session::Session::from_upstream`] on an async worker: moved off it
/// (`block_in_place`) when a result hook may run, since a plugin may use its whole time budget.
fn from_upstream<'l>(
    core: &crate::session::Session,
    line: &'l [u8],
) -> Option<std::borrow::Cow<'l, [u8]>> {
    if core.replies_may_block() {
        tokio::task::block_in_place(|| core.from_upstream(line))
    } else {
        core.from_upstream(line)
    }
}
