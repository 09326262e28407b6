//! The embedded store: exact sliding logs in this process's memory. The zero-setup default;
//! its counts start from zero with each process. Plugin state lives in the same map's lock,
//! one map of entries per plugin and grant.

use super::state::{self, StateError, StateLimits, StateSpace};
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
    /// Hashed with foldhash (seeded per process): each call looks its keys up several times.
    logs: HashMap<CounterKey, Log, foldhash::fast::RandomState>,
    /// `consume` and state `set` calls since the last sweep.
    consumes_since_sweep: u32,
    /// The last unit id handed out.
    next_unit: u64,
    /// Plugin state: the entries of each (plugin, grant) that has any. A space with none left
    /// is removed, so the map holds only spaces with entries, each within its bounds.
    spaces: HashMap<(String, String), HashMap<String, Entry>>,
}

/// One plugin state entry.
struct Entry {
    value: String,
    /// The last millisecond it is live (set at `now` for `ttl`: `now + ttl`).
    expires_ms: u64,
}

/// The units taken within the longest window seen for the key: (timestamp, unit id), sorted.
struct Log {
    stamps: VecDeque<(u64, u64)>,
    longest_window_ms: u64,
}

/// After this many `consume` (and state `set`) calls, drop logs whose units have all expired,
/// so that counters for sessions that are gone do not accumulate, and expired state entries.
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
                    .filter(|&&(t, _)| expires(t, window) > now)
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

    /// Entries held for `space`, expired ones not yet removed included (for tests of the
    /// lazy removal).
    pub fn state_held(&self, space: StateSpace<'_>) -> usize {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .spaces
            .get(&(space.plugin.to_owned(), space.grant.to_owned()))
            .map_or(0, HashMap::len)
    }
}

impl State {
    /// Every [`SWEEP_EVERY`] calls (`consume` and state `set`), drops counters whose units
    /// have all expired, and expired state entries of every space (spaces nobody sets in
    /// again included).
    fn sweep_when_due(&mut self, now: u64) {
        self.consumes_since_sweep += 1;
        if self.consumes_since_sweep < SWEEP_EVERY {
            return;
        }
        self.consumes_since_sweep = 0;
        self.logs.retain(|_, log| {
            let longest = Window {
                max: 1,
                length_ms: log.longest_window_ms,
            };
            log.stamps
                .back()
                .is_some_and(|&(t, _)| expires(t, longest) > now)
        });
        self.spaces.retain(|_, entries| {
            entries.retain(|_, entry| entry.expires_ms >= now);
            !entries.is_empty()
        });
    }
}

fn space_key(space: StateSpace<'_>) -> (String, String) {
    (space.plugin.to_owned(), space.grant.to_owned())
}

/// Units in `(now - window, now]` and, when the window is full, ms until the oldest leaves it.
fn check(stamps: &VecDeque<(u64, u64)>, window: Window, now: u64) -> Result<(), u64> {
    if window.max == 0 {
        // Admits nothing (the policy loader and the plugin host refuse such limits already).
        return Err(window.length_ms.max(1));
    }
    let inside = (stamps.len() - expired(stamps, window, now)) as u64;
    if inside < window.max {
        return Ok(());
    }
    // The window is full: the oldest of the newest `max` stamps must leave it first.
    let (oldest_blocking, _) = stamps[stamps.len() - window.max as usize];
    Err(expires(oldest_blocking, window).saturating_sub(now).max(1))
}

/// How many of `stamps` (sorted) have left `window`: they are all at the front.
fn expired(stamps: &VecDeque<(u64, u64)>, window: Window, now: u64) -> usize {
    // Each consume drops what has left the key's longest window, so for a key with one
    // window at most a few stamps at the front have left it since. Counted from the front
    // first: that reads the deque's first cache line, where a binary search over a deep log
    // (a 100,000,000-a-minute cap holds one stamp per call of the last minute) reads about
    // twenty lines that a gateway between calls has long evicted. Past a few, a binary search
    // (O(log n): a counter with a large `max` costs no more per call than a small one).
    const FROM_THE_FRONT: usize = 8;
    let gone = |&(t, _): &(u64, u64)| expires(t, window) <= now;
    match stamps.iter().take(FROM_THE_FRONT).position(|s| !gone(s)) {
        Some(expired) => expired,
        None => stamps.partition_point(gone),
    }
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
            // Looked up before inserting: the key is copied only for a new log.
            match state.logs.get_mut(key) {
                Some(log) => log.longest_window_ms = log.longest_window_ms.max(window.length_ms),
                None => {
                    let log = Log {
                        stamps: VecDeque::new(),
                        longest_window_ms: window.length_ms,
                    };
                    state.logs.insert(key.clone(), log);
                }
            }
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
                .is_some_and(|&(t, _)| expires(t, longest) <= now)
            {
                log.stamps.pop_front();
            }
            state.next_unit += 1;
            let unit = state.next_unit;
            let Some(log) = state.logs.get_mut(key) else {
                continue;
            };
            log.stamps.push_back((now, unit));
            reservations.push(Reservation {
                key: key.clone(),
                at_ms: now,
                unit,
            });
        }
        state.sweep_when_due(now);
        Ok(reservations)
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    fn refund(&self, reservations: &[Reservation]) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for reservation in reservations {
            if let Some(log) = state.logs.get_mut(&reservation.key) {
                // Exactly that unit, once: a second refund of it finds nothing.
                if let Some(pos) = log
                    .stamps
                    .iter()
                    .rposition(|&u| u == (reservation.at_ms, reservation.unit))
                {
                    log.stamps.remove(pos);
                }
            }
        }
    }

    fn state_get(&self, space: StateSpace<'_>, key: &str) -> Result<Option<String>, StateError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.clock.now_ms();
        let space = space_key(space);
        let Some(entries) = state.spaces.get_mut(&space) else {
            return Ok(None);
        };
        let value = match entries.get(key) {
            Some(entry) if entry.expires_ms >= now => Some(entry.value.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        };
        if entries.is_empty() {
            state.spaces.remove(&space);
        }
        Ok(value)
    }

    fn state_set(
        &self,
        space: StateSpace<'_>,
        key: &str,
        value: &str,
        ttl: std::time::Duration,
        limits: &StateLimits,
    ) -> Result<(), StateError> {
        let ttl_ms = state::check_set(key, ttl, limits)?;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.clock.now_ms();
        state.sweep_when_due(now);
        let space = space_key(space);
        let entries = state.spaces.entry(space.clone()).or_default();
        entries.retain(|_, entry| entry.expires_ms >= now);
        // The space after the write: every other live entry, and this one at its new size.
        let (others, other_bytes) = entries
            .iter()
            .filter(|(k, _)| k.as_str() != key)
            .fold((0u64, 0u64), |(n, bytes), (k, entry)| {
                (n + 1, bytes + state::entry_bytes(k, &entry.value))
            });
        let checked = state::check_bounds(
            others + 1,
            other_bytes + state::entry_bytes(key, value),
            limits,
        );
        if let Err(refused) = checked {
            if entries.is_empty() {
                state.spaces.remove(&space);
            }
            return Err(refused);
        }
        entries.insert(
            key.to_owned(),
            Entry {
                value: value.to_owned(),
                expires_ms: now.saturating_add(ttl_ms),
            },
        );
        Ok(())
    }

    fn state_delete(&self, space: StateSpace<'_>, key: &str) -> Result<(), StateError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let space = space_key(space);
        if let Some(entries) = state.spaces.get_mut(&space) {
            entries.remove(key);
            if entries.is_empty() {
                state.spaces.remove(&space);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::conformance::{self, Counting};
    use super::super::Scope;
    use super::*;
    use crate::clock::ManualClock;
    use std::time::Duration;

    conformance::suite!(|clock: Arc<ManualClock>| -> Box<dyn Counting> {
        Box::new(MemoryCounterStore::new(clock))
    });
    conformance::state_suite!(|clock: Arc<ManualClock>| -> Box<dyn Counting> {
        Box::new(MemoryCounterStore::new(clock))
    });

    /// The count from the front and the binary search past it agree with a plain count, at
    /// every depth around the switch between them.
    #[test]
    fn expired_stamps_are_counted_as_a_plain_count_would() {
        let window = Window {
            max: 1,
            length_ms: 10,
        };
        for len in [0usize, 1, 7, 8, 9, 20, 1000] {
            let stamps: VecDeque<(u64, u64)> = (0..len as u64).map(|t| (t, t)).collect();
            for now in 0..len as u64 + 12 {
                let plain = stamps
                    .iter()
                    .filter(|&&(t, _)| expires(t, window) <= now)
                    .count();
                assert_eq!(expired(&stamps, window, now), plain, "len {len}, now {now}");
            }
        }
    }

    fn key(name: &str) -> CounterKey {
        CounterKey::new(name, Scope::Grant, "g", "s")
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
mod state_tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::counters::StateLimits;
    use std::time::Duration;

    const SPACE: StateSpace<'static> = StateSpace {
        plugin: "p",
        grant: "g",
    };

    #[test]
    fn expired_entries_are_removed_by_a_set_in_their_space_or_a_get_of_them() {
        let clock = ManualClock::starting_at(0);
        let store = MemoryCounterStore::new(clock.clone());
        let limits = StateLimits::default();
        for key in ["a", "b", "c"] {
            store
                .state_set(SPACE, key, "v", Duration::from_millis(10), &limits)
                .unwrap();
        }
        clock.advance(Duration::from_millis(11));
        assert_eq!(store.state_held(SPACE), 3, "removed lazily");
        assert_eq!(store.state_get(SPACE, "a"), Ok(None));
        assert_eq!(
            store.state_held(SPACE),
            2,
            "a get removes what it finds expired"
        );
        store
            .state_set(SPACE, "d", "v", Duration::from_millis(10), &limits)
            .unwrap();
        assert_eq!(
            store.state_held(SPACE),
            1,
            "a set removes its space's expired entries"
        );
        store.state_delete(SPACE, "d").unwrap();
        assert_eq!(
            store.state.lock().unwrap().spaces.len(),
            0,
            "an empty space is dropped"
        );
    }

    #[test]
    fn the_sweep_drops_expired_entries_of_spaces_nobody_sets_in_again() {
        let clock = ManualClock::starting_at(0);
        let store = MemoryCounterStore::new(clock.clone());
        let limits = StateLimits::default();
        let ttl = Duration::from_millis(10);
        for i in 0..SWEEP_EVERY {
            let grant = i.to_string();
            let space = StateSpace {
                plugin: "p",
                grant: &grant,
            };
            store.state_set(space, "k", "v", ttl, &limits).unwrap();
            clock.advance(Duration::from_millis(1));
        }
        let left = store.state.lock().unwrap().spaces.len();
        assert!(left <= 11, "{left} spaces left");
    }
}
