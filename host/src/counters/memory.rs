//! The embedded store: exact sliding logs in this process's memory. The zero-setup default;
//! its counts start from zero with each process.

use super::{CounterKey, CounterStore, Exhausted, Refusal, Reservation, Window};
use crate::clock::Clock;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

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
    fn consume(&self, requests: &[(CounterKey, Window)]) -> Result<Vec<Reservation>, Refusal> {
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
            return Err(Refusal::Exhausted(exhausted));
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
    use super::super::Scope;
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
        let err = store
            .consume(&[(key("c"), w)])
            .unwrap_err()
            .exhausted()
            .cloned()
            .unwrap();
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
            .unwrap_err()
            .exhausted()
            .cloned()
            .unwrap();
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
            .unwrap_err()
            .exhausted()
            .cloned()
            .unwrap();
        assert_eq!((full.index, full.retry_after_ms), (0, 60_000));
        clock.advance(Duration::from_secs(60));
        for _ in 0..2 {
            store
                .consume(&[(key("two"), minute), (key("two"), hour)])
                .unwrap();
        }
        let full = store
            .consume(&[(key("two"), minute), (key("two"), hour)])
            .unwrap_err()
            .exhausted()
            .cloned()
            .unwrap();
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
            .unwrap_err()
            .exhausted()
            .cloned()
            .unwrap();
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
