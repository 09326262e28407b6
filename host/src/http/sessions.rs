//! The gateway's sessions: who opened each, how it reaches its upstream, when it expires.
//!
//! The gateway's session ids are its own (random UUIDs), mapped to the upstream's in
//! [`Link::Http`]: a client never learns an upstream session id, and a session answers only
//! to the grant that opened it ([`Sessions::find`]). A session counts against
//! `max_sessions` from the moment its `initialize` is accepted ([`Slot`]) until it is
//! deleted or expires; one with a response stream open is never idle ([`StreamGuard`]).

use super::children::Child;
use super::grants::Grant;
use crate::session::Session;
use axum::http::HeaderValue;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Session-scoped counters of requests sent without a session share this key per grant, so a
/// client cannot escape a per-session cap by dropping its session id.
pub(crate) const STATELESS_SESSION: &str = "stateless";

/// How a session reaches its upstream.
pub(crate) enum Link {
    /// An HTTP upstream; the upstream's session id, `None` when it gave none (a stateless
    /// server).
    Http(Option<HeaderValue>),
    /// This session's own child process.
    Stdio(Child),
}

/// One MCP session through the gateway.
pub(crate) struct GwSession {
    /// The gateway's id for it (what the client sends as `Mcp-Session-Id`).
    pub(crate) id: String,
    /// The grant that opened it, and the only one it answers to.
    pub(crate) grant: Arc<Grant>,
    /// The sans-IO session core (the same as over stdio): every message in both directions
    /// passes through it, and it decides each `tools/call`.
    pub(crate) core: Session,
    pub(crate) link: Link,
    last_active: Mutex<Instant>,
    /// Response streams open right now: a session with an open stream is not idle.
    streams: AtomicUsize,
    /// Set once the core knows what the session's opener knew of the upstream's tools: at
    /// once for a session opened here, after a `tools/list` of its own for one adopted from
    /// another replica (`super::adopted`).
    pub(crate) caught_up: tokio::sync::OnceCell<()>,
}

impl GwSession {
    /// A session, active as of now.
    pub(crate) fn new(id: String, grant: Arc<Grant>, core: Session, link: Link) -> Arc<Self> {
        Self::with_catalogue(
            id,
            grant,
            core,
            link,
            tokio::sync::OnceCell::new_with(Some(())),
        )
    }

    /// A session another replica opened, whose upstream tool catalogue this core has yet to
    /// learn.
    pub(crate) fn adopted(id: String, grant: Arc<Grant>, core: Session, link: Link) -> Arc<Self> {
        Self::with_catalogue(id, grant, core, link, tokio::sync::OnceCell::new())
    }

    fn with_catalogue(
        id: String,
        grant: Arc<Grant>,
        core: Session,
        link: Link,
        caught_up: tokio::sync::OnceCell<()>,
    ) -> Arc<Self> {
        Arc::new(Self {
            id,
            grant,
            core,
            link,
            last_active: Mutex::new(Instant::now()),
            streams: AtomicUsize::new(0),
            caught_up,
        })
    }

    fn touch(&self) {
        *self.last_active.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        self.last_active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }
}

/// The open sessions, by the gateway's id, and the slots that cap them.
pub(crate) struct Sessions {
    map: Mutex<HashMap<String, Arc<GwSession>>>,
    /// Sessions open or being opened: a slot is taken before `initialize` goes upstream.
    slots: AtomicUsize,
    max: usize,
}

/// A session slot taken by an `initialize` in progress. It is given back when dropped: on
/// every refusal, and when the client goes away before the upstream answers.
pub(crate) struct Slot<'s>(&'s Sessions);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.slots.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Sessions {
    /// No sessions; at most `max` open or opening at once.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            slots: AtomicUsize::new(0),
            max,
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<GwSession>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Open sessions.
    pub(crate) fn count(&self) -> usize {
        self.map().len()
    }

    /// The most sessions open or opening at once.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// A slot for a new session, unless `max` are open or opening.
    pub(crate) fn take_slot(&self) -> Option<Slot<'_>> {
        if self.slots.fetch_add(1, Ordering::SeqCst) >= self.max {
            self.slots.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Slot(self))
    }

    /// The session opened: it keeps its slot until [`Sessions::remove`] or expiry.
    pub(crate) fn open(&self, slot: Slot<'_>, session: Arc<GwSession>) {
        std::mem::forget(slot);
        self.map().insert(session.id.clone(), session);
    }

    /// Opens an adopted session, unless a request that came at the same time already did:
    /// then that one is the session, and `slot` is given back.
    pub(crate) fn open_or_existing(
        &self,
        slot: Slot<'_>,
        session: Arc<GwSession>,
    ) -> Arc<GwSession> {
        let mut map = self.map();
        if let Some(existing) = map.get(&session.id) {
            return existing.clone();
        }
        std::mem::forget(slot);
        map.insert(session.id.clone(), session.clone());
        session
    }

    /// The session `id`, if it exists and belongs to `grant`; it is active as of now.
    pub(crate) fn find(&self, id: &str, grant: &Arc<Grant>) -> Option<Arc<GwSession>> {
        match self.map().get(id) {
            Some(session) if Arc::ptr_eq(&session.grant, grant) => {
                session.touch();
                Some(session.clone())
            }
            // Another grant's session looks exactly like one that does not exist.
            _ => None,
        }
    }

    /// Forgets a session and gives back its slot.
    pub(crate) fn remove(&self, id: &str) -> Option<Arc<GwSession>> {
        let removed = self.map().remove(id);
        if removed.is_some() {
            self.slots.fetch_sub(1, Ordering::SeqCst);
        }
        removed
    }

    /// Removes the sessions idle for `idle` or longer, with no stream open.
    pub(crate) fn take_idle(&self, idle: Duration) -> Vec<Arc<GwSession>> {
        let expired: Vec<Arc<GwSession>> = {
            let mut sessions = self.map();
            let ids: Vec<String> = sessions
                .values()
                .filter(|s| s.streams.load(Ordering::SeqCst) == 0 && s.idle_for() >= idle)
                .map(|s| s.id.clone())
                .collect();
            ids.iter().filter_map(|id| sessions.remove(id)).collect()
        };
        self.slots.fetch_sub(expired.len(), Ordering::SeqCst);
        expired
    }

    /// Removes every session.
    pub(crate) fn take_all(&self) -> Vec<Arc<GwSession>> {
        let all: Vec<Arc<GwSession>> = self.map().drain().map(|(_, s)| s).collect();
        self.slots.fetch_sub(all.len(), Ordering::SeqCst);
        all
    }
}

/// Holds a session out of idleness while a response stream is open; when the stream ends,
/// the session is active as of then.
pub(crate) struct StreamGuard(Arc<GwSession>);

impl StreamGuard {
    /// A stream of `session` opened.
    pub(crate) fn new(session: Arc<GwSession>) -> Self {
        session.streams.fetch_add(1, Ordering::SeqCst);
        Self(session)
    }

    /// The session whose stream this is.
    pub(crate) fn session(&self) -> &GwSession {
        &self.0
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.streams.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::counters::MemoryCounterStore;
    use crate::policy::Policy;
    use crate::session::Identity;

    fn grant(name: &str) -> Arc<Grant> {
        let policy = Policy::from_json(r#"{"version": "1"}"#, "<test>").unwrap();
        Arc::new(Grant {
            name: name.into(),
            live: None,
            shadow: None,
            policy: Arc::new(arc_swap::ArcSwap::from_pointee(policy)),
            counters: Arc::new(MemoryCounterStore::new(Arc::new(SystemClock::new()))),
        })
    }

    fn session(id: &str, grant: &Arc<Grant>) -> Arc<GwSession> {
        let identity = Identity {
            grant: grant.name.clone(),
            session: id.into(),
        };
        let core = Session::live(grant.policy.clone(), grant.counters.clone(), identity);
        GwSession::new(id.into(), grant.clone(), core, Link::Http(None))
    }

    #[test]
    fn slots_cap_sessions_open_or_opening() {
        let (sessions, a) = (Sessions::new(2), grant("a"));
        let first = sessions.take_slot().unwrap();
        let opening = sessions.take_slot().unwrap();
        assert!(sessions.take_slot().is_none(), "two open or opening");
        sessions.open(first, session("s1", &a));
        drop(opening); // an initialize refused, or its client gone
        let second = sessions.take_slot().expect("the dropped slot is back");
        sessions.open(second, session("s2", &a));
        assert!(sessions.take_slot().is_none());
        assert_eq!(sessions.count(), 2);
        assert!(sessions.remove("s1").is_some());
        assert!(sessions.remove("s1").is_none(), "a slot is given back once");
        sessions.open(sessions.take_slot().unwrap(), session("s3", &a));
        assert!(sessions.take_slot().is_none());
        assert_eq!(sessions.take_all().len(), 2);
        assert!(sessions.take_slot().is_some());
    }

    #[test]
    fn a_session_answers_only_to_its_grant() {
        let (sessions, a, b) = (Sessions::new(4), grant("a"), grant("a"));
        sessions.open(sessions.take_slot().unwrap(), session("s1", &a));
        assert!(sessions.find("s1", &a).is_some());
        // Same name, another grant: the session does not exist for it.
        assert!(sessions.find("s1", &b).is_none());
        assert!(sessions.find("s2", &a).is_none());
    }

    #[test]
    fn a_session_with_an_open_stream_never_expires() {
        let (sessions, a) = (Sessions::new(4), grant("a"));
        sessions.open(sessions.take_slot().unwrap(), session("streaming", &a));
        sessions.open(sessions.take_slot().unwrap(), session("quiet", &a));
        let stream = StreamGuard::new(sessions.find("streaming", &a).unwrap());
        let expired = sessions.take_idle(Duration::ZERO);
        let ids: Vec<&str> = expired.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["quiet"]);
        assert!(sessions.take_idle(Duration::from_secs(3600)).is_empty());
        drop(stream);
        assert_eq!(sessions.take_idle(Duration::ZERO).len(), 1);
        assert_eq!(sessions.count(), 0);
        assert_eq!(sessions.take_slot().iter().count(), 1);
    }
}
