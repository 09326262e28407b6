//! Property tests of the sliding window: no interval of the window's length ever admits more
//! than `max`, and a call is refused only when the window really is full; a counter that
//! several limits name takes one unit per call.
//!
//! The last property reads its limits from a policy, as a user writes them, so it reaches
//! [`crate::policy::Policy`] (a dependency of these tests only). How refunds keep a cap exact
//! through a session (id reuse, errors, timeouts, crashes) is `session::tests`'
//! `a_cap_of_30_admits_exactly_30`.

use super::*;
use crate::call::ToolCall;
use crate::clock::{Clock, ManualClock};
use crate::policy::Policy;
use proptest::prelude::*;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// The most units admitted in any half-open interval `[t, t + window)`. The busiest interval
/// can always be slid to start at an admitted unit, so checking those starts is enough.
/// A key's scope value is shared with the thread's last key for the same grant or session,
/// never with one for another: keys of different grants stay different counters.
#[test]
fn scope_values_are_shared_only_between_keys_of_the_same_grant_or_session() {
    let key = |scope, grant, session| CounterKey::new("c", scope, grant, session);
    let (a, b) = (key(Scope::Grant, "a", "s"), key(Scope::Grant, "a", "t"));
    assert_eq!(&*a.scope_value, "grant:a");
    assert!(Arc::ptr_eq(&a.scope_value, &b.scope_value));
    // Names that share a prefix or a suffix, or are empty, are not the same grant.
    for (grant, expected) in [
        ("ab", "grant:ab"),
        ("b", "grant:b"),
        ("", "grant:"),
        ("a", "grant:a"),
    ] {
        assert_eq!(&*key(Scope::Grant, grant, "s").scope_value, expected);
    }
    assert_eq!(&*key(Scope::Grant, "nt:a", "s").scope_value, "grant:nt:a");
    assert_eq!(&*key(Scope::Session, "a", "s1").scope_value, "session:s1");
    assert_eq!(&*key(Scope::Session, "a", "s2").scope_value, "session:s2");
    assert_eq!(&*key(Scope::Global, "a", "s2").scope_value, "global");
    assert_ne!(key(Scope::Grant, "x", "s"), key(Scope::Grant, "y", "s"));
}

fn busiest_interval(admitted: &[u64], window_ms: u64) -> usize {
    let mut sorted = admitted.to_vec();
    sorted.sort_unstable();
    (0..sorted.len())
        .map(|i| {
            sorted[i..]
                .iter()
                .take_while(|&&t| t < sorted[i] + window_ms)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// Sequential callers on `store` (whose clock is `clock`): never more than `max` in any
/// interval of the window, refused only when the window is full, and the retry time exact.
fn sequential(
    store: &dyn CounterStore,
    clock: &ManualClock,
    gaps: Vec<u64>,
    window_ms: u64,
    max: u64,
) -> Result<(), TestCaseError> {
    let key = CounterKey::new("c", Scope::Grant, "g", "s");
    let window = Window {
        max,
        length_ms: window_ms,
    };
    let mut admitted = Vec::new();
    for gap in gaps {
        clock.advance(Duration::from_millis(gap));
        let now = clock.now_ms();
        let in_window = admitted.iter().filter(|&&t| t + window_ms > now).count() as u64;
        match store.consume(&[(key.clone(), window)]) {
            Ok(r) => {
                prop_assert!(in_window < max, "admitted with a full window");
                admitted.push(r[0].at_ms());
            }
            Err(e) => {
                let e = e.exhausted().cloned().unwrap();
                prop_assert_eq!(in_window, max, "refused with room in the window");
                // Retrying exactly when told must succeed, and a millisecond earlier must not.
                let oldest = admitted[admitted.len() - max as usize];
                prop_assert_eq!(now + e.retry_after_ms, oldest + window_ms);
            }
        }
    }
    prop_assert!(busiest_interval(&admitted, window_ms) as u64 <= max);
    Ok(())
}

/// A SQLite store in a new file of its own.
fn sqlite(clock: Arc<ManualClock>) -> SqliteCounterStore {
    let dir = tempfile::tempdir().unwrap().keep();
    SqliteCounterStore::open(&dir.join("c.sqlite"), clock, sqlite::DEFAULT_BUSY_TIMEOUT).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sequential_callers_never_exceed_max_and_are_refused_only_when_full(
        gaps in prop::collection::vec(0u64..2_500, 1..400),
        window_ms in 1u64..10_000,
        max in 1u64..20,
    ) {
        let clock = ManualClock::starting_at(1_000_000);
        sequential(&MemoryCounterStore::new(clock.clone()), &clock, gaps, window_ms, max)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn sequential_callers_on_sqlite_never_exceed_max_and_are_refused_only_when_full(
        gaps in prop::collection::vec(0u64..2_500, 1..200),
        window_ms in 1u64..10_000,
        max in 1u64..20,
    ) {
        let clock = ManualClock::starting_at(1_000_000);
        sequential(&sqlite(clock.clone()), &clock, gaps, window_ms, max)?;
    }
}

/// A Redis store on the manual clock (the gateway-clock mode), on a server of its own.
fn redis(clock: Arc<ManualClock>) -> (RedisCounterStore, super::redis::tests::Server) {
    let server = super::redis::tests::Server::start();
    let options = RedisOptions {
        clock: ClockSource::Gateway,
        timeout: Duration::from_secs(2),
        ..RedisOptions::default()
    };
    let store = RedisCounterStore::connect(&server.url, options, clock).unwrap();
    (store, server)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn sequential_callers_on_redis_never_exceed_max_and_are_refused_only_when_full(
        gaps in prop::collection::vec(0u64..2_500, 1..200),
        window_ms in 1u64..10_000,
        max in 1u64..20,
    ) {
        let clock = ManualClock::starting_at(1_000_000);
        let (store, _server) = redis(clock.clone());
        sequential(&store, &clock, gaps, window_ms, max)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4))]

    #[test]
    fn sixty_four_concurrent_callers_on_redis_never_exceed_max(
        window_ms in 5u64..200,
        max in 1u64..16,
        ticks in prop::collection::vec(0u64..4, 64),
    ) {
        let clock = ManualClock::starting_at(0);
        let (store, _server) = redis(clock.clone());
        concurrent(Arc::new(store), clock, window_ms, max, ticks, 20)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn sixty_four_concurrent_callers_never_exceed_max(
        window_ms in 5u64..200,
        max in 1u64..16,
        ticks in prop::collection::vec(0u64..4, 64),
    ) {
        let clock = ManualClock::starting_at(0);
        let store: Arc<dyn CounterStore> = Arc::new(MemoryCounterStore::new(clock.clone()));
        concurrent(store, clock, window_ms, max, ticks, 200)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4))]

    #[test]
    fn sixty_four_concurrent_callers_on_sqlite_never_exceed_max(
        window_ms in 5u64..200,
        max in 1u64..16,
        ticks in prop::collection::vec(0u64..4, 64),
    ) {
        let clock = ManualClock::starting_at(0);
        let store: Arc<dyn CounterStore> = Arc::new(sqlite(clock.clone()));
        concurrent(store, clock, window_ms, max, ticks, 20)?;
    }
}

/// 64 threads (one per tick) taking from one counter of `store`, `calls` times each, moving
/// the clock on by their tick after each: never more than `max` in any interval.
fn concurrent(
    store: Arc<dyn CounterStore>,
    clock: Arc<ManualClock>,
    window_ms: u64,
    max: u64,
    ticks: Vec<u64>,
    calls: usize,
) -> Result<(), TestCaseError> {
    {
        let key = CounterKey::new("shared", Scope::Global, "g", "s");
        let window = Window {
            max,
            length_ms: window_ms,
        };
        let threads: Vec<_> = ticks
            .into_iter()
            .map(|tick| {
                let (store, clock, key) = (store.clone(), clock.clone(), key.clone());
                std::thread::spawn(move || {
                    let mut admitted = Vec::new();
                    for _ in 0..calls {
                        if let Ok(r) = store.consume(&[(key.clone(), window)]) {
                            admitted.push(r[0].at_ms());
                        }
                        clock.advance(Duration::from_millis(tick));
                    }
                    admitted
                })
            })
            .collect();
        let admitted: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        prop_assert!(!admitted.is_empty());
        prop_assert!(
            busiest_interval(&admitted, window_ms) as u64 <= max,
            "an interval of {} ms admitted {} > {}",
            window_ms,
            busiest_interval(&admitted, window_ms),
            max
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// One counter named by several limits, in `all_tools` and in the rule, with the same or
    /// different windows and maxes: each allowed call takes one unit, a call is admitted
    /// exactly when every window has room, and a refund gives the unit back.
    #[test]
    fn a_counter_named_by_several_limits_takes_one_unit_per_call(
        limits in prop::collection::vec((any::<bool>(), 1u64..5_000, 1u64..8), 1..5),
        calls in prop::collection::vec((0u64..1_500, any::<bool>()), 1..200),
    ) {
        // (in all_tools, window in ms, max)
        let specs = |in_all_tools: bool| -> Vec<serde_json::Value> {
            limits
                .iter()
                .filter(|l| l.0 == in_all_tools)
                .map(|&(_, window, max)| json!({"counter": "c", "window": format!("{window}ms"), "max": max}))
                .collect()
        };
        let text = json!({"version": "1", "default": "deny",
            "all_tools": {"limits": specs(true)},
            "tools": {"t": {"limits": specs(false)}}})
        .to_string();
        let policy = Policy::from_json(&text, "prop.json").unwrap();
        let clock = ManualClock::starting_at(1_000_000);
        let store: Arc<dyn CounterStore> = Arc::new(MemoryCounterStore::new(clock.clone()));
        let args = json!({});
        let call = ToolCall { tool: "t", args: &args, args_text: None, grant: "g", session: "s", server: "", annotations: None };
        let mut admitted: Vec<u64> = Vec::new();
        for (gap, refund) in calls {
            clock.advance(Duration::from_millis(gap));
            let now = clock.now_ms();
            let room = limits.iter().all(|&(_, window, max)| {
                (admitted.iter().filter(|&&t| t + window > now).count() as u64) < max
            });
            let outcome = policy.decide(&call, &store);
            prop_assert_eq!(outcome.decision.is_allow(), room, "{}", outcome.decision.reason);
            if outcome.decision.is_allow() {
                prop_assert_eq!(outcome.reservations.len(), 1, "one unit per call");
                if refund {
                    store.refund(&outcome.reservations);
                } else {
                    admitted.push(now);
                }
            }
        }
        for &(_, window, max) in &limits {
            prop_assert!(busiest_interval(&admitted, window) as u64 <= max);
        }
    }
}
