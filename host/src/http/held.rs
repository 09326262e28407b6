//! A `tools/call` held for a person, over HTTP: the POST is answered at once with an SSE
//! stream, and the call's reply comes last on it.
//!
//! While the call is held, the stream carries what a client needs to wait well:
//! - the gateway's own `elicitation/create` question, when the client declared elicitation
//!   and the rule lets the client decide; the client answers with a separate POST of a
//!   JSON-RPC reply, which the session core takes as the decision
//!   ([`Session::from_client_parsed`](crate::session::Session::from_client_parsed));
//! - every [`PROGRESS_EVERY`], a `notifications/progress` under the call's `progressToken`
//!   if it sent one, or else an SSE comment, so that neither the client nor a proxy between
//!   gives up on a quiet connection.
//!
//! When the hold ends, the session core releases the call: approved, it goes upstream once
//! and the upstream's reply is the stream's last event (an SSE reply passes event by event);
//! otherwise the deny or the `pending` answer is. A client that closes the stream meanwhile
//! is gone: its call never runs, and its approval request (or the approval itself, if it
//! came during the hold) stays for an identical retry.

use super::sessions::{GwSession, StreamGuard};
use crate::approvals::{Held, State};
use crate::session::{ClientLine, Forward, HeldCall, PROGRESS_EVERY};
use crate::sse;
use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Events waiting for a slow client: beyond this the held call's task waits for it.
const BUFFERED_EVENTS: usize = 8;

/// The SSE response of `held`, a call of `session`'s; `send` takes the call upstream once
/// it is approved and gives the upstream's reply as a response.
pub(crate) fn stream<S, F>(session: Arc<GwSession>, held: HeldCall, send: S) -> Response
where
    S: FnOnce(Forward<'static>) -> F + Send + 'static,
    F: Future<Output = Response> + Send,
{
    let (tx, rx) = mpsc::channel::<Bytes>(BUFFERED_EVENTS);
    tokio::spawn(async move {
        let guard = StreamGuard::new(session);
        let core = &guard.session().core;
        let Some(outcome) = wait(&guard, &held, &tx).await else {
            tracing::info!(approval = %held.approval, "the client closed a held call's stream: the call will not run");
            core.abandon_held(&held);
            return;
        };
        match core.release(&held, outcome) {
            ClientLine::Answer(reply) => {
                let _ = tx.send(message(&reply)).await;
            }
            ClientLine::Forward(forward) => pipe(send(forward).await, &tx).await,
            ClientLine::Drop | ClientLine::Hold(_) => {}
        }
    });
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        Some((Ok::<_, Infallible>(event), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(events))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Asks the client (if it can be asked) and keeps its stream alive until the hold ends.
/// `None`: the client closed the stream first.
async fn wait(guard: &StreamGuard, held: &HeldCall, tx: &mpsc::Sender<Bytes>) -> Option<Held> {
    let core = &guard.session().core;
    if let Some(question) = core.elicitation(held) {
        tx.send(message(&question)).await.ok()?;
    }
    let Some(approvals) = core.approvals().cloned() else {
        return Some(Held::Undecided {
            state: State::Expired,
            expires_ms: 0,
        });
    };
    let (id, hold) = (held.approval.clone(), held.hold);
    // The registry's wait blocks: off the async workers.
    let mut decided = tokio::task::spawn_blocking(move || approvals.hold(&id, hold));
    let token = held.progress_token();
    let start = tokio::time::Instant::now() + PROGRESS_EVERY;
    let mut ticks = tokio::time::interval_at(start, PROGRESS_EVERY);
    let mut step = 0;
    loop {
        tokio::select! {
            outcome = &mut decided => {
                return Some(outcome.unwrap_or(Held::Undecided { state: State::Pending, expires_ms: 0 }));
            }
            _ = ticks.tick() => {
                step += 1;
                let event = match &token {
                    Some(token) => message(&held.progress(token, step)),
                    None => Bytes::from_static(b": waiting for a person to approve\n\n"),
                };
                tx.send(event).await.ok()?;
            }
            _ = tx.closed() => {
                // The client left: the call will not run. An approval that comes while the
                // hold lasts is given back, for the identical retry.
                if let Ok(Held::Approved { .. }) = decided.await {
                    if let Some(approvals) = core.approvals() {
                        approvals.give_back(&held.approval);
                    }
                }
                return None;
            }
        }
    }
}

/// The upstream's reply to the approved call, onto the held stream: an SSE reply as its
/// events (already through the session), a JSON reply as one event.
async fn pipe(response: Response, tx: &mpsc::Sender<Bytes>) {
    let sse = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("text/event-stream"));
    let mut body = response.into_body().into_data_stream();
    if sse {
        while let Some(Ok(chunk)) = body.next().await {
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
        return;
    }
    // The gateway's own reply (already bounded by the upstream message cap): whole.
    let mut reply = Vec::new();
    while let Some(Ok(chunk)) = body.next().await {
        reply.extend_from_slice(&chunk);
    }
    if !reply.trim_ascii().is_empty() {
        let _ = tx.send(message(&reply)).await;
    }
}

/// One JSON-RPC message as an SSE event.
fn message(line: &[u8]) -> Bytes {
    Bytes::from(sse::Event::message(line).encode())
}
