//! One suite for every counter store: each store's tests run these same cases (its own
//! `conformance::suite!` line), so memory, SQLite and Redis keep the same exact semantics.

use super::{CounterKey, CounterStore, MemoryCounterStore, Scope, SqliteCounterStore, Window};
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
