//! The approvals an approver may decide, live, as server-sent events: `GET
//! /approvals/api/events` (an approver's bearer token, like the rest of `/approvals/api`) and
//! the page's `GET /approvals/events` (its session cookie). Both are this one stream, fed by
//! the registry's change feed (`approvals/feed.rs`).
//!
//! The events, each `data` one JSON object:
//! - `pending`, first and again whenever the stream had to catch up:
//!   `{"pending": [...], "recent": [...], "now_ms": ...}`, the approver's pending requests and
//!   its [`RECENT`] latest decided ones, newest first, as `/approvals/api` shows them, and the
//!   gateway's clock (the `expires_ms` countdowns run against it).
//! - `request`: a new pending request.
//! - `decided`: a request changed state (`approved`, `denied`, `expired`, `cancelled`,
//!   `consumed`); the data is the request as it is now.
//! - a `:keep-alive` comment every [`KEEP_ALIVE`], so that proxies keep the connection.
//!
//! Only the grants the approver names, and arguments masked as everywhere an approver looks
//! (the registry holds them masked). Events carry no `id`, and `Last-Event-ID` is ignored: a
//! reconnect starts with a fresh `pending`, which is all the state an approver's view needs
//! (older decisions are in `/approvals/api`).
//!
//! A stream costs one connection of the admin listener and a cursor in the feed's ring: a
//! reader that falls [`FEED_CAPACITY`](crate::approvals::FEED_CAPACITY) changes behind gets a
//! fresh `pending` instead of the changes it missed, so a slow reader never grows memory. At
//! most [`MAX_APPROVAL_STREAMS`] are open at once (503 past it), so that streams cannot take every
//! connection from `/status` and the decisions. A stream ends when the gateway stops, and
//! the page's when its session ends (checked before each event).

use super::error::GatewayError;
use super::gateway::{ends_when_stopping, Approver, Gateway, MAX_APPROVAL_STREAMS};
use crate::approvals::{Approvals, Change, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::{error::RecvError, Receiver};

/// How often an idle stream sends a comment: under the 30 to 60 s after which proxies and
/// load balancers commonly drop a silent connection.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How many decided requests a `pending` event carries (the page's "recent decisions").
pub(crate) const RECENT: usize = 20;

/// The stream for `approver`. `alive` is asked before each event: once it says no (the page's
/// session has ended) the stream ends.
pub(crate) fn stream(
    gateway: &Gateway,
    approver: &Approver,
    alive: impl Fn() -> bool + Send + 'static,
) -> Response {
    let Ok(permit) = gateway.approval_streams.clone().try_acquire_owned() else {
        let max = MAX_APPROVAL_STREAMS;
        return GatewayError::ApprovalStreamsFull { max }.into_response();
    };
    let watcher = Watcher {
        approvals: gateway.approvals.clone(),
        grants: approver.grants.clone(),
        changes: None,
        alive: Box::new(alive),
        _permit: permit,
    };
    let events = futures_util::stream::unfold(watcher, |mut watcher| async move {
        let event = watcher.next().await?;
        Some((Ok::<_, Infallible>(event), watcher))
    });
    let keep_alive = KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive");
    let response = Sse::new(events).keep_alive(keep_alive).into_response();
    ends_when_stopping(gateway, response)
}

/// One open stream: where it is in the feed.
struct Watcher {
    approvals: Arc<Approvals>,
    grants: Vec<String>,
    /// `None`: the next event is a `pending` snapshot (at the start, and after a lag).
    changes: Option<Receiver<Change>>,
    alive: Box<dyn Fn() -> bool + Send>,
    /// Held while the stream is open.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Watcher {
    /// The next event for this approver; `None` ends the stream.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if !(self.alive)() {
                return None;
            }
            let Some(changes) = &mut self.changes else {
                return Some(self.snapshot());
            };
            // Expiry is lazy in the registry: wake when the next pending request is due, so
            // that its expiry is told (to every watcher) on time.
            let next_expiry = self.approvals.expire_due();
            let due = next_expiry.map_or(Duration::from_secs(3600), |at| {
                Duration::from_millis(at.saturating_sub(self.approvals.now_ms()))
            });
            let change = tokio::select! {
                change = changes.recv() => change,
                _ = tokio::time::sleep(due) => continue,
            };
            match change {
                Ok(change) if self.grants.contains(&change.request().grant) => {
                    let name = match change {
                        Change::Requested(_) => "request",
                        Change::Changed(_) => "decided",
                    };
                    let data = serde_json::to_string(change.request()).unwrap_or_default();
                    return Some(Event::default().event(name).data(data));
                }
                Ok(_) => {}
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "approvals events: a slow reader gets a snapshot");
                    self.changes = None;
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// A `pending` event, and the feed from right after it.
    fn snapshot(&mut self) -> Event {
        let watch = self.approvals.watch();
        self.changes = Some(watch.changes);
        let (pending, decided): (Vec<_>, Vec<_>) = watch
            .requests
            .into_iter()
            .filter(|r| self.grants.contains(&r.grant))
            .partition(|r| r.state == State::Pending);
        let recent: Vec<_> = decided.into_iter().take(RECENT).collect();
        let now_ms = self.approvals.now_ms();
        let data = json!({"pending": pending, "recent": recent, "now_ms": now_ms});
        Event::default().event("pending").data(data.to_string())
    }
}
