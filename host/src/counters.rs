//! Named counters over sliding windows: the state behind every rate limit.
//!
//! A counter is identified by its name and a scope value (the grant, the MCP session, or
//! nothing for a global counter). [`CounterStore::consume`] is the only way in: it checks every
//! requested counter and takes one unit from each **atomically, all or nothing**, so two
//! callers racing for the last unit can never both win, and a call limited by its second counter
//! does not spend its first. A backend that lives elsewhere (Redis) implements the same two
//! calls with a script; nothing else about counters leaks into the policy engine.
//!
//! A call takes **one unit per distinct counter** (name and scope value), however many of its
//! limits name it: a counter in both `all_tools.limits` and the rule's limits, or with a
//! minute and an hour window, takes one unit, which every window naming it must admit. So a
//! cap of `max` admits exactly `max` calls, whichever limits spell it.
//!
//! ## Why an exact sliding window
//! The store keeps the timestamp of every unit consumed within the window (a sliding log) and
//! admits a call only while fewer than `max` timestamps lie in `(now - window, now]`. So **no
//! interval of the window's length ever admits more than `max`**. A fixed window (reset every
//! minute on the minute) is cheaper, but admits `max` calls at 00:59 and `max` more at 01:00:
//! twice the limit inside two seconds, which is exactly the burst a rate cap exists to stop.
//! The cost is memory: up to `max` timestamps (8 bytes each) per live counter.

use crate::clock::Clock;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Who shares a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// One count per grant (agent identity): every session of the agent shares it.
    Grant,
    /// One count per MCP session (one client connection).
    Session,
    /// One count for everybody.
    Global,
}

impl Scope {
    /// The scope's name as policies write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Grant => "grant",
            Scope::Session => "session",
            Scope::Global => "global",
        }
    }
}

/// The identity of one counter: its owner and name plus the scope value it is kept for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CounterKey {
    /// `None` for the policy's own counters (its limits, and those it grants a plugin by
    /// name); a plugin's name for the counters that plugin keeps for itself. A plugin's own
    /// counters can never be the policy's or another plugin's, whatever their names.
    pub owner: Option<std::sync::Arc<str>>,
    /// The counter's name from the policy (or the plugin).
    pub counter: String,
    /// `grant:<name>`, `session:<id>` or `global`.
    pub scope_value: String,
}

impl CounterKey {
    /// The key of `counter` as seen by a call from `grant` in `session`.
    pub fn new(counter: &str, scope: Scope, grant: &str, session: &str) -> Self {
        let scope_value = match scope {
            Scope::Grant => format!("grant:{grant}"),
            Scope::Session => format!("session:{session}"),
            Scope::Global => "global".to_owned(),
        };
        Self {
            owner: None,
            counter: counter.to_owned(),
            scope_value,
        }
    }

    /// The same counter, kept apart as `plugin`'s own.
    pub fn owned_by(self, plugin: std::sync::Arc<str>) -> Self {
        Self {
            owner: Some(plugin),
            ..self
        }
    }
}

/// The longest window a counter may have: a week. Every unit is kept (as a timestamp) for its
/// window, so a longer window holds memory for longer; policies and plugins are held to it.
pub const MAX_WINDOW_MS: u64 = 7 * 86_400_000;

/// How many units a window admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Units admitted per window; at least 1.
    pub max: u64,
    /// The window's length in milliseconds; at least 1.
    pub length_ms: u64,
}

/// One unit taken from one counter, returned by [`CounterStore::consume`] so it can be refunded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    key: CounterKey,
    at_ms: u64,
}

impl Reservation {
    /// When the unit was taken, in the store's clock's milliseconds.
    pub fn at_ms(&self) -> u64 {
        self.at_ms
    }
}

/// A request that [`CounterStore::consume`] refused: the window that is full and when the call
/// would be admitted. When several are full, it is the one that frees up last: a retry any
/// earlier would be refused by it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exhausted {
    /// Index into the requests of the window that refused (the one full the longest).
    pub index: usize,
    /// Milliseconds until every requested window has room for one more unit.
    pub retry_after_ms: u64,
}

/// Storage for counters. Implementations must make `consume` atomic across all its requests.
pub trait CounterStore: Send + Sync {
    /// Takes one unit from every distinct key in `requests`, or from none of them. A key that
    /// appears several times (with the same or different windows) takes one unit, admitted
    /// only if each of its windows has room for it; one [`Reservation`] is returned per key.
    fn consume(&self, requests: &[(CounterKey, Window)]) -> Result<Vec<Reservation>, Exhausted>;
    /// Gives back units taken by `consume` (the call never ran upstream).
    fn refund(&self, reservations: &[Reservation]);
    /// The store's clock, in milliseconds: what plugins see as "now".
    fn now_ms(&self) -> u64;
}

/// The embedded store: sliding logs in a map behind one mutex.
///
/// The lock is held for a few hundred nanoseconds per call; the clock is read under it so that
/// every log stays sorted even with many concurrent callers.
pub struct MemoryCounterStore {
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    logs: HashMap<CounterKey, Log>,
    consumes_since_sweep: u32,
}

/// The timestamps of the units taken within the longest window seen for the key.
struct Log {
    stamps: VecDeque<u64>,
    longest_window_ms: u64,
}

/// After this many `consume` calls, drop logs whose units have all expired, so that counters
/// for sessions that are gone do not accumulate.
const SWEEP_EVERY: u32 = 4096;

impl MemoryCounterStore {
    /// An empty store reading time from `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            state: Mutex::new(State::default()),
        }
    }

    /// Units currently counted in `key`'s window (for tests and status).
    pub fn count(&self, key: &CounterKey, window: Window) -> u64 {
        let now = self.clock.now_ms();
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .logs
            .get(key)
            .map(|log| {
                log.stamps
                    .iter()
                    .filter(|&&t| expires(t, window) > now)
                    .count() as u64
            })
            .unwrap_or(0)
    }

    /// How many counters the store holds (for tests of the sweep).
    pub fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .logs
            .len()
    }

    /// Whether the store holds no counters.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Units in `(now - window, now]` and, when the window is full, ms until the oldest leaves it.
fn check(stamps: &VecDeque<u64>, window: Window, now: u64) -> Result<(), u64> {
    if window.max == 0 {
        // Admits nothing (the policy loader and the plugin host refuse such limits already).
        return Err(window.length_ms.max(1));
    }
    // Stamps are sorted: binary-search the first one inside the window (O(log n), so a
    // counter with a large `max` costs no more per call than a small one).
    let inside = (stamps.len() - stamps.partition_point(|&t| expires(t, window) <= now)) as u64;
    if inside < window.max {
        return Ok(());
    }
    // The window is full: the oldest of the newest `max` stamps must leave it first.
    let oldest_blocking = stamps[stamps.len() - window.max as usize];
    Err(expires(oldest_blocking, window).saturating_sub(now).max(1))
}

/// When a unit taken at `stamp` leaves `window`. Saturating: a clock near the end of time
/// keeps the unit counted rather than wrapping to an early expiry (which would over-admit).
fn expires(stamp: u64, window: Window) -> u64 {
    stamp.saturating_add(window.length_ms)
}

impl CounterStore for MemoryCounterStore {
    fn consume(&self, requests: &[(CounterKey, Window)]) -> Result<Vec<Reservation>, Exhausted> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.clock.now_ms();
        // Check every window of every key against the units already taken: this call adds
        // one unit per key, so each window must have room for exactly one more.
        // All of them: the retry time is when the last full window frees up.
        let mut exhausted: Option<Exhausted> = None;
        for (index, (key, window)) in requests.iter().enumerate() {
            let empty = VecDeque::new();
            let stamps = state.logs.get(key).map_or(&empty, |log| &log.stamps);
            if let Err(retry_after_ms) = check(stamps, *window, now) {
                if exhausted
                    .as_ref()
                    .is_none_or(|e| retry_after_ms > e.retry_after_ms)
                {
                    exhausted = Some(Exhausted {
                        index,
                        retry_after_ms,
                    });
                }
            }
        }
        if let Some(exhausted) = exhausted {
            return Err(exhausted);
        }
        // Every window of a key decides how long its stamps are kept: record them all before
        // any expired stamp is dropped.
        for (key, window) in requests {
            let log = state.logs.entry(key.clone()).or_insert_with(|| Log {
                stamps: VecDeque::new(),
                longest_window_ms: 0,
            });
            log.longest_window_ms = log.longest_window_ms.max(window.length_ms);
        }
        let mut reservations: Vec<Reservation> = Vec::with_capacity(requests.len());
        for (key, _) in requests {
            if reservations.iter().any(|r| &r.key == key) {
                continue; // named twice: one unit
            }
            let Some(log) = state.logs.get_mut(key) else {
                continue; // inserted just above
            };
            let longest = Window {
                max: 1,
                length_ms: log.longest_window_ms,
            };
            while log
                .stamps
                .front()
                .is_some_and(|&t| expires(t, longest) <= now)
            {
                log.stamps.pop_front();
            }
            log.stamps.push_back(now);
            reservations.push(Reservation {
                key: key.clone(),
                at_ms: now,
            });
        }
        state.consumes_since_sweep += 1;
        if state.consumes_since_sweep >= SWEEP_EVERY {
            state.consumes_since_sweep = 0;
            state.logs.retain(|_, log| {
                let longest = Window {
                    max: 1,
                    length_ms: log.longest_window_ms,
                };
                log.stamps
                    .back()
                    .is_some_and(|&t| expires(t, longest) > now)
            });
        }
        Ok(reservations)
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    fn refund(&self, reservations: &[Reservation]) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for reservation in reservations {
            if let Some(log) = state.logs.get_mut(&reservation.key) {
                // Remove the newest stamp with this time: stamps are sorted, search from the back.
                if let Some(pos) = log.stamps.iter().rposition(|&t| t == reservation.at_ms) {
                    log.stamps.remove(pos);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::time::Duration;

    fn key(name: &str) -> CounterKey {
        CounterKey::new(name, Scope::Grant, "g", "s")
    }

    #[test]
    fn admits_max_then_reports_when_the_oldest_unit_leaves() {
        let clock = ManualClock::starting_at(1_000_000);
        let store = MemoryCounterStore::new(clock.clone());
        let w = Window {
            max: 3,
            length_ms: 60_000,
        };
        for _ in 0..3 {
            store.consume(&[(key("c"), w)]).unwrap();
            clock.advance(Duration::from_secs(10));
        }
        // now = +30 s; the first unit (at +0) leaves the window at +60 s.
        let err = store.consume(&[(key("c"), w)]).unwrap_err();
        assert_eq!(err.retry_after_ms, 30_000);
        clock.advance(Duration::from_millis(29_999));
        assert!(store.consume(&[(key("c"), w)]).is_err());
        clock.advance(Duration::from_millis(1));
        assert!(store.consume(&[(key("c"), w)]).is_ok());
    }

    #[test]
    fn consume_is_all_or_nothing_and_refund_gives_back() {
        let clock = ManualClock::starting_at(0);
        let store = MemoryCounterStore::new(clock.clone());
        let roomy = Window {
            max: 10,
            length_ms: 1000,
        };
        let full = Window {
            max: 1,
            length_ms: 1000,
        };
        store.consume(&[(key("b"), full)]).unwrap();
        let err = store
            .consume(&[(key("a"), roomy), (key("b"), full)])
            .unwrap_err();
        assert_eq!(err.index, 1);
        assert_eq!(
            store.count(&key("a"), roomy),
            0,
            "a refused call spends nothing"
        );
        let r = store.consume(&[(key("a"), roomy)]).unwrap();
        assert_eq!(store.count(&key("a"), roomy), 1);
        store.refund(&r);
        assert_eq!(store.count(&key("a"), roomy), 0);
    }

    #[test]
    fn a_key_named_twice_takes_one_unit_that_every_window_must_admit() {
        let clock = ManualClock::starting_at(0);
        let store = MemoryCounterStore::new(clock.clone());
        let minute = Window {
            max: 5,
            length_ms: 60_000,
        };
        let hour = Window {
            max: 7,
            length_ms: 3_600_000,
        };
        // The same window twice: a cap of 5 admits exactly 5 calls, one unit each.
        for i in 0..5 {
            let r = store.consume(&[(key("same"), minute), (key("same"), minute)]);
            assert_eq!(r.map(|r| r.len()), Ok(1), "call {i}");
        }
        assert_eq!(store.count(&key("same"), minute), 5);
        assert!(store
            .consume(&[(key("same"), minute), (key("same"), minute)])
            .is_err());
        // Two windows: 5 a minute, 7 an hour; each call is one unit in both.
        for _ in 0..5 {
            store
                .consume(&[(key("two"), minute), (key("two"), hour)])
                .unwrap();
        }
        let full = store
            .consume(&[(key("two"), minute), (key("two"), hour)])
            .unwrap_err();
        assert_eq!((full.index, full.retry_after_ms), (0, 60_000));
        clock.advance(Duration::from_secs(60));
        for _ in 0..2 {
            store
                .consume(&[(key("two"), minute), (key("two"), hour)])
                .unwrap();
        }
        let full = store
            .consume(&[(key("two"), minute), (key("two"), hour)])
            .unwrap_err();
        assert_eq!(full.index, 1, "the hour is full: 7 units");
        assert_eq!(store.count(&key("two"), hour), 7);
    }

    #[test]
    fn a_clock_at_the_end_of_time_does_not_wrap_a_window_open() {
        let clock = ManualClock::starting_at(u64::MAX - 10);
        let store = MemoryCounterStore::new(clock.clone());
        let w = Window {
            max: 1,
            length_ms: 60_000,
        };
        store.consume(&[(key("c"), w)]).unwrap();
        assert!(store.consume(&[(key("c"), w)]).is_err());
        assert!(store
            .consume(&[(
                key("zero"),
                Window {
                    max: 0,
                    length_ms: 1
                }
            )])
            .is_err());
    }

    #[test]
    fn the_retry_time_is_when_the_last_full_window_frees_up() {
        let clock = ManualClock::starting_at(0);
        let store = MemoryCounterStore::new(clock.clone());
        let minute = Window {
            max: 1,
            length_ms: 60_000,
        };
        let hour = Window {
            max: 1,
            length_ms: 3_600_000,
        };
        store
            .consume(&[(key("m"), minute), (key("h"), hour)])
            .unwrap();
        clock.advance(Duration::from_secs(1));
        // Both full: the minute frees up in 59 s, the hour in 3599 s; a retry at 59 s would be
        // refused by the hour.
        let err = store
            .consume(&[(key("m"), minute), (key("h"), hour)])
            .unwrap_err();
        assert_eq!((err.index, err.retry_after_ms), (1, 3_599_000));
        clock.advance(Duration::from_millis(err.retry_after_ms));
        assert!(store
            .consume(&[(key("m"), minute), (key("h"), hour)])
            .is_ok());
    }

    #[test]
    fn scopes_keep_separate_counts() {
        assert_ne!(
            CounterKey::new("c", Scope::Grant, "a", "s"),
            CounterKey::new("c", Scope::Grant, "b", "s")
        );
        assert_eq!(
            CounterKey::new("c", Scope::Global, "a", "s"),
            CounterKey::new("c", Scope::Global, "b", "t")
        );
        assert_ne!(
            CounterKey::new("c", Scope::Session, "a", "s"),
            CounterKey::new("c", Scope::Session, "a", "t")
        );
    }

    #[test]
    fn expired_counters_are_swept() {
        let clock = ManualClock::starting_at(0);
        let store = MemoryCounterStore::new(clock.clone());
        let w = Window {
            max: 5,
            length_ms: 1000,
        };
        for i in 0..SWEEP_EVERY {
            store.consume(&[(key(&format!("k{i}")), w)]).unwrap();
            clock.advance(Duration::from_millis(1));
        }
        assert!(
            store.len() < 1100,
            "old counters were dropped, {} left",
            store.len()
        );
    }
}

#[cfg(test)]
#[path = "counters_tests.rs"]
mod properties;
