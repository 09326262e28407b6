//! The registry's change feed: every request made and every change of state (decided,
//! expired, cancelled, consumed) is told to whoever watches, so that an approver's screen
//! can show requests as they come instead of asking again and again.
//!
//! - **In order, from a snapshot.** Changes are sent while the registry's lock is held, and
//!   [`Approvals::watch`] subscribes under that same lock as it takes its snapshot: a watcher
//!   sees each change after the snapshot exactly once, none that the snapshot already holds,
//!   and a request's states in the order they happened.
//! - **Bounded.** The feed is a ring of [`FEED_CAPACITY`] changes shared by every watcher; a
//!   watcher that falls further behind is told it lagged (the oldest changes are gone) and
//!   watches again from a fresh snapshot. A slow reader costs the ring, never more.
//! - **Expiry is lazy.** A pending request becomes expired when the registry next looks at
//!   it, and nothing looks at an idle registry. A watcher that wants to see expiries on time
//!   calls [`Approvals::expire_due`] when the time it returned comes (the HTTP event stream
//!   does): the expiry is then sent to every watcher.

use super::{expire, Approvals, Request, State};
use std::sync::Arc;
use tokio::sync::broadcast;

/// How many changes a watcher may fall behind before it must take a fresh snapshot. Larger
/// keeps a burst (one agent's 100 pending requests decided at once) from making every slow
/// page reload its snapshot; smaller holds fewer requests in memory when nobody reads.
pub const FEED_CAPACITY: usize = 256;

/// One change, as the registry told it.
#[derive(Debug, Clone)]
pub enum Change {
    /// A new pending request.
    Requested(Arc<Request>),
    /// A request changed state: decided, expired, cancelled, or consumed. It carries the
    /// request as it is now.
    Changed(Arc<Request>),
}

impl Change {
    /// The request, as it is after the change (arguments masked).
    pub fn request(&self) -> &Request {
        match self {
            Change::Requested(r) | Change::Changed(r) => r,
        }
    }
}

/// What [`Approvals::watch`] gives: where things stand, and what changes after.
pub struct Watch {
    /// Every request the registry holds, newest first (as [`Approvals::list`]).
    pub requests: Vec<Request>,
    /// The changes after `requests` was taken. `Err(Lagged)`: the watcher fell more than
    /// [`FEED_CAPACITY`] behind and should watch again.
    pub changes: broadcast::Receiver<Change>,
}

/// The sending side, held by the registry.
pub(super) struct Feed {
    sender: broadcast::Sender<Change>,
}

impl Feed {
    pub(super) fn new() -> Self {
        Self {
            sender: broadcast::Sender::new(FEED_CAPACITY),
        }
    }

    /// Tells watchers of a new request (call with the registry locked).
    pub(super) fn requested(&self, request: &Request) {
        if self.sender.receiver_count() > 0 {
            let _ = self
                .sender
                .send(Change::Requested(Arc::new(request.clone())));
        }
    }

    /// Tells watchers that `request` changed state (call with the registry locked).
    pub(super) fn changed(&self, request: &Request) {
        if self.sender.receiver_count() > 0 {
            let _ = self.sender.send(Change::Changed(Arc::new(request.clone())));
        }
    }
}

impl Approvals {
    /// Every request now, and every change from now on, with nothing lost or told twice
    /// between them.
    pub fn watch(&self) -> Watch {
        let mut inner = self.lock();
        expire(&mut inner, self.clock.now_ms(), &self.feed);
        let changes = self.feed.sender.subscribe();
        let mut requests: Vec<Request> = inner.requests.values().cloned().collect();
        drop(inner);
        requests.sort_by_key(|r| std::cmp::Reverse(r.created_ms));
        Watch { requests, changes }
    }

    /// Expires the pending requests whose time has come (telling watchers), and says when
    /// the next one will (ms since the epoch, on the registry's clock), if any is pending.
    pub fn expire_due(&self) -> Option<u64> {
        let mut inner = self.lock();
        expire(&mut inner, self.clock.now_ms(), &self.feed);
        let pending = inner
            .requests
            .values()
            .filter(|r| r.state == State::Pending);
        pending.map(|r| r.expires_ms).min()
    }

    /// The registry's clock (ms since the epoch): what `expires_ms` is measured against.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ApprovalSettings, Held, Ticket};
    use super::*;
    use crate::call::ToolCall;
    use crate::clock::ManualClock;
    use serde_json::{json, Value};
    use std::time::Duration;

    fn request(approvals: &Approvals, args: &Value) -> String {
        let call = ToolCall {
            tool: "session_delete",
            args,
            args_text: None,
            grant: "agent",
            session: "c1",
            server: "",
            annotations: None,
        };
        let settings = ApprovalSettings {
            timeout: Duration::from_secs(60),
            ..ApprovalSettings::default()
        };
        match approvals.request(&call, &Value::Null, "rule", "why", "p1", &settings) {
            Ok(Ticket::Pending { id, .. }) => id,
            other => panic!("expected pending, got {other:?}"),
        }
    }

    /// The next change already sent, as (kind, id, state).
    fn next(watch: &mut Watch) -> (&'static str, String, State) {
        let change = watch.changes.try_recv().expect("a change");
        let kind = match change {
            Change::Requested(_) => "requested",
            Change::Changed(_) => "changed",
        };
        let r = change.request();
        (kind, r.id.clone(), r.state)
    }

    #[test]
    fn a_watcher_sees_the_snapshot_then_each_change_once_in_order() {
        let clock = ManualClock::starting_at(1_700_000_000_000);
        let approvals = Approvals::new(clock.clone());
        let before = request(&approvals, &json!({"n": 1}));
        let mut watch = approvals.watch();
        assert_eq!(watch.requests.len(), 1);
        assert_eq!(watch.requests[0].id, before);
        assert!(
            watch.changes.try_recv().is_err(),
            "the snapshot is not told again"
        );

        let id = request(&approvals, &json!({"n": 2, "apiKey": "sk-live"}));
        let (kind, seen, state) = next(&mut watch);
        assert_eq!(
            (kind, seen.as_str(), state),
            ("requested", id.as_str(), State::Pending)
        );
        approvals.approve(&id, "ops", "http").unwrap();
        assert_eq!(next(&mut watch), ("changed", id.clone(), State::Approved));
        assert!(matches!(
            approvals.hold(&id, Duration::ZERO),
            Held::Approved { .. }
        ));
        assert_eq!(next(&mut watch), ("changed", id.clone(), State::Consumed));
        approvals.deny(&before, "ops", "http", "no").unwrap();
        assert_eq!(next(&mut watch), ("changed", before.clone(), State::Denied));
        assert!(watch.changes.try_recv().is_err());
    }

    #[test]
    fn arguments_on_the_feed_are_masked() {
        let approvals = Approvals::new(ManualClock::starting_at(1));
        let mut watch = approvals.watch();
        request(&approvals, &json!({"path": "/x", "apiKey": "sk-live-123"}));
        let change = watch.changes.try_recv().unwrap();
        assert_eq!(
            change.request().arguments,
            json!({"path": "/x", "apiKey": "***"})
        );
    }

    #[test]
    fn an_expiry_nobody_looked_at_is_told_when_expire_due_is_called() {
        let clock = ManualClock::starting_at(1_700_000_000_000);
        let approvals = Approvals::new(clock.clone());
        let id = request(&approvals, &json!({}));
        let mut watch = approvals.watch();
        assert_eq!(approvals.expire_due(), Some(1_700_000_060_000));
        assert!(watch.changes.try_recv().is_err(), "not due yet");
        clock.advance(Duration::from_secs(60));
        assert_eq!(approvals.expire_due(), None, "nothing left pending");
        assert_eq!(next(&mut watch), ("changed", id, State::Expired));
    }

    #[test]
    fn a_watcher_that_falls_behind_is_told_and_the_ring_stays_bounded() {
        let approvals = Approvals::new(ManualClock::starting_at(1));
        let mut watch = approvals.watch();
        let mut ids = Vec::new();
        for n in 0..(FEED_CAPACITY / 2 + 1) {
            let id = request(&approvals, &json!({"n": n}));
            approvals.cancel(&id);
            ids.push(id);
        }
        assert!(matches!(
            watch.changes.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
        // Watching again: the snapshot has them all, the feed nothing more.
        let mut again = approvals.watch();
        assert_eq!(again.requests.len(), ids.len());
        assert!(again.requests.iter().all(|r| r.state == State::Cancelled));
        assert!(again.changes.try_recv().is_err());
    }
}
