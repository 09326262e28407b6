//! One suite for every counter store: each store's tests run these same cases (its own
//! `conformance::suite!` line), so memory, SQLite and Redis keep the same exact semantics.
//! Plugin state has its own suite, `conformance::state_suite!`.

use super::{
    CounterKey, CounterStore, MemoryCounterStore, Scope, SqliteCounterStore, StateError,
    StateLimits, StateSpace, Window, MAX_STATE_KEY_BYTES,
};
use crate::clock::ManualClock;
use std::sync::Arc;
use std::time::Duration;

/// A store under test, and how many units it counts in a window.
pub(super) trait Counting: CounterStore {
    fn counted(&self, key: &CounterKey, window: Window) -> u64;
}

impl Counting for MemoryCounterStore {
    fn counted(&self, key: &CounterKey, window: Window) -> u64 {
        self.count(key, window)
    }
}

impl Counting for SqliteCounterStore {
    fn counted(&self, key: &CounterKey, window: Window) -> u64 {
        self.count(key, window).unwrap()
    }
}

/// A fresh, empty store on `clock`.
pub(super) type Make = dyn Fn(Arc<ManualClock>) -> Box<dyn Counting>;

fn key(name: &str) -> CounterKey {
    CounterKey::new(name, Scope::Grant, "g", "s")
}

pub(super) fn admits_max_then_reports_when_the_oldest_unit_leaves(make: &Make) {
    let clock = ManualClock::starting_at(1_000_000);
    let store = make(clock.clone());
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

pub(super) fn consume_is_all_or_nothing_and_refund_gives_back(make: &Make) {
    let clock = ManualClock::starting_at(0);
    let store = make(clock.clone());
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
        store.counted(&key("a"), roomy),
        0,
        "a refused call spends nothing"
    );
    let r = store.consume(&[(key("a"), roomy)]).unwrap();
    assert_eq!(store.counted(&key("a"), roomy), 1);
    store.refund(&r);
    assert_eq!(store.counted(&key("a"), roomy), 0);
}

pub(super) fn a_key_named_twice_takes_one_unit_that_every_window_must_admit(make: &Make) {
    let clock = ManualClock::starting_at(0);
    let store = make(clock.clone());
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
    assert_eq!(store.counted(&key("same"), minute), 5);
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
    assert_eq!(store.counted(&key("two"), hour), 7);
}

pub(super) fn a_clock_at_the_end_of_time_does_not_wrap_a_window_open(make: &Make) {
    let clock = ManualClock::starting_at(u64::MAX - 10);
    let store = make(clock.clone());
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

pub(super) fn the_retry_time_is_when_the_last_full_window_frees_up(make: &Make) {
    let clock = ManualClock::starting_at(0);
    let store = make(clock.clone());
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

pub(super) fn a_refund_gives_back_exactly_that_unit_once(make: &Make) {
    let clock = ManualClock::starting_at(5_000);
    let store = make(clock.clone());
    let w = Window {
        max: 2,
        length_ms: 60_000,
    };
    // Two units in the same millisecond: refunding one of them twice gives back one.
    let first = store.consume(&[(key("c"), w)]).unwrap();
    let _second = store.consume(&[(key("c"), w)]).unwrap();
    store.refund(&first);
    store.refund(&first);
    assert_eq!(
        store.counted(&key("c"), w),
        1,
        "a refund is exact and idempotent"
    );
    store.consume(&[(key("c"), w)]).unwrap();
    assert!(store.consume(&[(key("c"), w)]).is_err(), "the cap holds");
}

pub(super) fn counters_of_other_owners_and_scopes_are_apart(make: &Make) {
    let clock = ManualClock::starting_at(0);
    let store = make(clock.clone());
    let w = Window {
        max: 1,
        length_ms: 60_000,
    };
    let plain = CounterKey::new("c", Scope::Grant, "a", "s");
    let plugin = plain.clone().owned_by("probe".into());
    let other = CounterKey::new("c", Scope::Grant, "b", "s");
    for k in [&plain, &plugin, &other] {
        store.consume(&[(k.clone(), w)]).unwrap();
    }
    for k in [&plain, &plugin, &other] {
        assert!(store.consume(&[(k.clone(), w)]).is_err());
    }
}

/// The suite as `#[test]`s, for the store that `$make` builds.
macro_rules! suite {
    ($make:expr) => {
        #[test]
        fn admits_max_then_reports_when_the_oldest_unit_leaves() {
            $crate::counters::conformance::admits_max_then_reports_when_the_oldest_unit_leaves(&$make)
        }
        #[test]
        fn consume_is_all_or_nothing_and_refund_gives_back() {
            $crate::counters::conformance::consume_is_all_or_nothing_and_refund_gives_back(&$make)
        }
        #[test]
        fn a_key_named_twice_takes_one_unit_that_every_window_must_admit() {
            $crate::counters::conformance::a_key_named_twice_takes_one_unit_that_every_window_must_admit(&$make)
        }
        #[test]
        fn a_clock_at_the_end_of_time_does_not_wrap_a_window_open() {
            $crate::counters::conformance::a_clock_at_the_end_of_time_does_not_wrap_a_window_open(&$make)
        }
        #[test]
        fn the_retry_time_is_when_the_last_full_window_frees_up() {
            $crate::counters::conformance::the_retry_time_is_when_the_last_full_window_frees_up(&$make)
        }
        #[test]
        fn a_refund_gives_back_exactly_that_unit_once() {
            $crate::counters::conformance::a_refund_gives_back_exactly_that_unit_once(&$make)
        }
        #[test]
        fn counters_of_other_owners_and_scopes_are_apart() {
            $crate::counters::conformance::counters_of_other_owners_and_scopes_are_apart(&$make)
        }
    };
}
pub(super) use suite;

const SPACE: StateSpace<'static> = StateSpace {
    plugin: "session-ids",
    grant: "g",
};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn refused(result: Result<(), StateError>) -> String {
    match result {
        Err(StateError::Refused(why)) => why,
        other => panic!("not refused: {other:?}"),
    }
}

pub(super) fn state_gets_sets_replaces_and_deletes(make: &Make) {
    let store = make(ManualClock::starting_at(1_000));
    let limits = StateLimits::default();
    assert_eq!(store.state_get(SPACE, "k"), Ok(None));
    store
        .state_set(SPACE, "k", "one", secs(60), &limits)
        .unwrap();
    assert_eq!(store.state_get(SPACE, "k"), Ok(Some("one".into())));
    store
        .state_set(SPACE, "k", "two", secs(60), &limits)
        .unwrap();
    assert_eq!(store.state_get(SPACE, "k"), Ok(Some("two".into())));
    // Any text, empty values and keys that look like the store's own syntax included.
    for key in ["é ü 🦀", "a:b", "{counters}", "[\"x\"]", "%", "k\n"] {
        store.state_set(SPACE, key, "", secs(60), &limits).unwrap();
        assert_eq!(
            store.state_get(SPACE, key),
            Ok(Some(String::new())),
            "{key:?}"
        );
    }
    store.state_delete(SPACE, "k").unwrap();
    assert_eq!(store.state_get(SPACE, "k"), Ok(None));
    store.state_delete(SPACE, "k").unwrap();
    store.state_delete(SPACE, "never").unwrap();
}

pub(super) fn state_entries_live_for_their_ttl_on_the_stores_clock(make: &Make) {
    let clock = ManualClock::starting_at(50_000);
    let store = make(clock.clone());
    let limits = StateLimits::default();
    store
        .state_set(SPACE, "short", "v", Duration::from_millis(1_000), &limits)
        .unwrap();
    store
        .state_set(SPACE, "long", "v", secs(3_600), &limits)
        .unwrap();
    clock.advance(Duration::from_millis(1_000));
    assert_eq!(
        store.state_get(SPACE, "short"),
        Ok(Some("v".into())),
        "live through now + ttl"
    );
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        store.state_get(SPACE, "short"),
        Ok(None),
        "gone a millisecond later"
    );
    assert_eq!(store.state_get(SPACE, "long"), Ok(Some("v".into())));
    // Setting again renews the time to live; a shorter one shortens it.
    store
        .state_set(SPACE, "long", "w", secs(2), &limits)
        .unwrap();
    clock.advance(Duration::from_millis(2_001));
    assert_eq!(store.state_get(SPACE, "long"), Ok(None));
    // An expired entry set again is a new entry.
    store
        .state_set(SPACE, "short", "x", secs(1), &limits)
        .unwrap();
    assert_eq!(store.state_get(SPACE, "short"), Ok(Some("x".into())));
}

pub(super) fn state_refuses_what_breaks_a_bound_and_stores_nothing(make: &Make) {
    let store = make(ManualClock::starting_at(0));
    let limits = StateLimits {
        max_entries: 2,
        max_bytes: 10,
        max_ttl: secs(60),
    };
    let why = refused(store.state_set(SPACE, "", "v", secs(1), &limits));
    assert!(why.contains("empty"), "{why}");
    let long = "k".repeat(MAX_STATE_KEY_BYTES + 1);
    let why = refused(store.state_set(SPACE, &long, "", secs(1), &StateLimits::default()));
    assert!(why.contains("257 bytes") && why.contains("256"), "{why}");
    let longest = "k".repeat(MAX_STATE_KEY_BYTES);
    store
        .state_set(SPACE, &longest, "", secs(1), &StateLimits::default())
        .unwrap();
    store.state_delete(SPACE, &longest).unwrap();
    let why = refused(store.state_set(SPACE, "k", "v", Duration::ZERO, &limits));
    assert!(why.contains("1 ms"), "{why}");
    let why = refused(store.state_set(SPACE, "k", "v", Duration::from_micros(999), &limits));
    assert!(why.contains("1 ms"), "{why}");
    let why = refused(store.state_set(SPACE, "k", "v", Duration::from_millis(60_001), &limits));
    assert!(why.contains("max_ttl") && why.contains("60000 ms"), "{why}");
    store.state_set(SPACE, "k", "v", secs(60), &limits).unwrap();
    // Bytes: "k"+"v" = 2 so far; "b"+"123456789" = 10 more would make 12.
    let why = refused(store.state_set(SPACE, "b", "123456789", secs(1), &limits));
    assert!(
        why.contains("max_bytes") && why.contains("10 bytes") && why.contains("12"),
        "{why}"
    );
    assert_eq!(store.state_get(SPACE, "b"), Ok(None), "nothing stored");
    store
        .state_set(SPACE, "b", "1234567", secs(1), &limits)
        .unwrap(); // exactly 10
                   // Entries: two live; a third key is refused, whatever its size.
    let why = refused(store.state_set(SPACE, "c", "", secs(1), &limits));
    assert!(
        why.contains("max_entries") && why.contains("2 entries"),
        "{why}"
    );
    assert_eq!(store.state_get(SPACE, "c"), Ok(None), "nothing stored");
    store.state_delete(SPACE, "b").unwrap();
    store.state_set(SPACE, "c", "", secs(1), &limits).unwrap();
}

pub(super) fn state_replacing_at_the_bound_counts_the_new_size_only(make: &Make) {
    let store = make(ManualClock::starting_at(0));
    let limits = StateLimits {
        max_entries: 2,
        max_bytes: 12,
        max_ttl: secs(60),
    };
    store
        .state_set(SPACE, "a", "12345", secs(60), &limits)
        .unwrap(); // 6
    store
        .state_set(SPACE, "b", "12345", secs(60), &limits)
        .unwrap(); // 12: both bounds full
                   // Replacing a key at the entry bound is not a new entry; its new size replaces the old.
    store.state_set(SPACE, "a", "1", secs(60), &limits).unwrap(); // 2 + 6 = 8
    store
        .state_set(SPACE, "a", "12345", secs(60), &limits)
        .unwrap(); // 12 again
    let why = refused(store.state_set(SPACE, "a", "123456", secs(60), &limits));
    assert!(why.contains("13"), "{why}");
    assert_eq!(
        store.state_get(SPACE, "a"),
        Ok(Some("12345".into())),
        "the old value stays"
    );
}

pub(super) fn state_spaces_are_apart(make: &Make) {
    let store = make(ManualClock::starting_at(0));
    let limits = StateLimits {
        max_entries: 1,
        ..StateLimits::default()
    };
    let spaces = [
        StateSpace {
            plugin: "a",
            grant: "g1",
        },
        StateSpace {
            plugin: "a",
            grant: "g2",
        },
        StateSpace {
            plugin: "b",
            grant: "g1",
        },
        // A separator in a name makes no other space.
        StateSpace {
            plugin: "a:b",
            grant: "c",
        },
        StateSpace {
            plugin: "a",
            grant: "b:c",
        },
        StateSpace {
            plugin: "a\",\"b",
            grant: "c",
        },
        StateSpace {
            plugin: "a",
            grant: "b\",\"c",
        },
        StateSpace {
            plugin: "",
            grant: "a:b:c",
        },
    ];
    for (i, space) in spaces.iter().enumerate() {
        // One entry each, at each space's own bound of one.
        store
            .state_set(*space, "k", &i.to_string(), secs(60), &limits)
            .unwrap_or_else(|e| panic!("{space:?}: {e}"));
    }
    for (i, space) in spaces.iter().enumerate() {
        assert_eq!(
            store.state_get(*space, "k"),
            Ok(Some(i.to_string())),
            "{space:?}"
        );
    }
    store.state_delete(spaces[0], "k").unwrap();
    assert_eq!(store.state_get(spaces[0], "k"), Ok(None));
    assert_eq!(store.state_get(spaces[1], "k"), Ok(Some("1".into())));
}

pub(super) fn state_expired_entries_count_for_nothing(make: &Make) {
    let clock = ManualClock::starting_at(10_000);
    let store = make(clock.clone());
    let limits = StateLimits {
        max_entries: 3,
        max_bytes: 30,
        max_ttl: secs(60),
    };
    for key in ["a", "b", "c"] {
        store
            .state_set(SPACE, key, "123456789", secs(1), &limits)
            .unwrap();
    }
    assert!(store.state_set(SPACE, "d", "", secs(1), &limits).is_err());
    clock.advance(Duration::from_millis(1_001));
    // All three expired: the space is empty again, in entries and in bytes.
    for key in ["d", "e", "f"] {
        store
            .state_set(SPACE, key, "123456789", secs(1), &limits)
            .unwrap();
    }
    assert_eq!(store.state_get(SPACE, "a"), Ok(None));
    // A replaced key's old expiry no longer matters: "d" lives on with its new one.
    store.state_set(SPACE, "d", "x", secs(10), &limits).unwrap();
    clock.advance(Duration::from_millis(1_001));
    assert_eq!(store.state_get(SPACE, "d"), Ok(Some("x".into())));
    for key in ["g", "h"] {
        store.state_set(SPACE, key, "", secs(1), &limits).unwrap();
    }
}

pub(super) fn state_callers_racing_for_the_last_entries_win_exactly_the_bound(make: &Make) {
    let store = make(ManualClock::starting_at(0));
    let limits = StateLimits {
        max_entries: 5,
        ..StateLimits::default()
    };
    let store = &*store;
    let won: usize = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..8)
            .map(|t| {
                scope.spawn(move || {
                    (0..4)
                        .filter(|i| {
                            store
                                .state_set(SPACE, &format!("{t}-{i}"), "v", secs(60), &limits)
                                .is_ok()
                        })
                        .count()
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).sum()
    });
    assert_eq!(won, 5);
}

/// The plugin state suite as `#[test]`s, for the store that `$make` builds.
macro_rules! state_suite {
    ($make:expr) => {
        #[test]
        fn state_gets_sets_replaces_and_deletes() {
            $crate::counters::conformance::state_gets_sets_replaces_and_deletes(&$make)
        }
        #[test]
        fn state_entries_live_for_their_ttl_on_the_stores_clock() {
            $crate::counters::conformance::state_entries_live_for_their_ttl_on_the_stores_clock(&$make)
        }
        #[test]
        fn state_refuses_what_breaks_a_bound_and_stores_nothing() {
            $crate::counters::conformance::state_refuses_what_breaks_a_bound_and_stores_nothing(&$make)
        }
        #[test]
        fn state_replacing_at_the_bound_counts_the_new_size_only() {
            $crate::counters::conformance::state_replacing_at_the_bound_counts_the_new_size_only(&$make)
        }
        #[test]
        fn state_spaces_are_apart() {
            $crate::counters::conformance::state_spaces_are_apart(&$make)
        }
        #[test]
        fn state_expired_entries_count_for_nothing() {
            $crate::counters::conformance::state_expired_entries_count_for_nothing(&$make)
        }
        #[test]
        fn state_callers_racing_for_the_last_entries_win_exactly_the_bound() {
            $crate::counters::conformance::state_callers_racing_for_the_last_entries_win_exactly_the_bound(&$make)
        }
    };
}
pub(super) use state_suite;
