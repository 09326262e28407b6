//! `toolgate:policy@0.3.0` through a real plugin (`guest-policies/hostile/results`): its
//! `state` import over a store that keeps state, and its `after-call`, in every way it can
//! answer or fail; and the older worlds, which still load and decide as before.

use super::{built, call, counters, ECHO};
use crate::call::ToolCall;
use crate::capability::{Capability, World};
use crate::counters::{
    CounterKey, CounterStore, MemoryCounterStore, Refusal, Reservation, StateError, StateLimits,
    StateSpace, Window,
};
use crate::decision::Verdict;
use crate::plugins::{
    AfterCall, Isolation, Oversized, Plugin, PluginCall, PluginLimits, PluginRuntime, Source,
    Vetting,
};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const NAME: &str = "hostile/results";

/// `(plugin, grant, key)`.
type EntryId = (String, String, String);

/// A counter store that keeps plugin state in a map, bounded as the real stores are: what
/// the plugin sees does not depend on which store the gateway runs.
struct StateStore {
    counters: MemoryCounterStore,
    /// `(plugin, grant, key)` → `(value, expires at, in ms)`.
    entries: Mutex<HashMap<EntryId, (String, u64)>>,
    down: AtomicBool,
}

impl StateStore {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            counters: MemoryCounterStore::new(crate::clock::ManualClock::starting_at(
                1_700_000_000_000,
            )),
            entries: Mutex::default(),
            down: AtomicBool::new(false),
        })
    }

    fn check(&self) -> Result<(), StateError> {
        if self.down.load(Ordering::Relaxed) {
            return Err(StateError::Unavailable("the test store is down".into()));
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }
}

fn id(space: StateSpace<'_>, key: &str) -> EntryId {
    (space.plugin.into(), space.grant.into(), key.into())
}

impl CounterStore for StateStore {
    fn consume(&self, requests: &[(CounterKey, Window)]) -> Result<Vec<Reservation>, Refusal> {
        self.counters.consume(requests)
    }

    fn refund(&self, reservations: &[Reservation]) {
        self.counters.refund(reservations)
    }

    fn now_ms(&self) -> u64 {
        self.counters.now_ms()
    }

    fn state_get(&self, space: StateSpace<'_>, key: &str) -> Result<Option<String>, StateError> {
        self.check()?;
        let now = self.now_ms();
        let entries = self.entries.lock().unwrap();
        Ok(entries
            .get(&id(space, key))
            .filter(|(_, expires)| *expires > now)
            .map(|(value, _)| value.clone()))
    }

    fn state_set(
        &self,
        space: StateSpace<'_>,
        key: &str,
        value: &str,
        ttl: Duration,
        limits: &StateLimits,
    ) -> Result<(), StateError> {
        self.check()?;
        let now = self.now_ms();
        let mut entries = self.entries.lock().unwrap();
        let others = entries.iter().filter(|((p, g, k), (_, expires))| {
            p == space.plugin && g == space.grant && k != key && *expires > now
        });
        let (count, bytes) = others.fold((0u32, 0u64), |(n, b), ((_, _, k), (v, _))| {
            (n + 1, b + (k.len() + v.len()) as u64)
        });
        if count >= limits.max_entries {
            return Err(StateError::Refused(format!(
                "the plugin already keeps max_entries ({}) for this grant",
                limits.max_entries
            )));
        }
        if bytes + (key.len() + value.len()) as u64 > limits.max_bytes {
            return Err(StateError::Refused("over max_bytes".into()));
        }
        let expires = now + ttl.as_millis() as u64;
        entries.insert(id(space, key), (value.into(), expires));
        Ok(())
    }

    fn state_delete(&self, space: StateSpace<'_>, key: &str) -> Result<(), StateError> {
        self.check()?;
        self.entries.lock().unwrap().remove(&id(space, key));
        Ok(())
    }
}

fn load_with(runtime: &PluginRuntime, limits: PluginLimits) -> Arc<Plugin> {
    load_isolated(runtime, limits, Isolation::Fresh)
}

fn load_isolated(
    runtime: &PluginRuntime,
    limits: PluginLimits,
    isolation: Isolation,
) -> Arc<Plugin> {
    let path = built(NAME);
    runtime
        .load(
            NAME,
            Source::Path(&path),
            Vetting::default(),
            isolation,
            limits,
        )
        .unwrap_or_else(|e| panic!("{e}"))
}

fn store_of(store: &Arc<StateStore>) -> Arc<dyn CounterStore> {
    store.clone()
}

/// What `evaluate` says with `config` (its reason; an allow has none).
fn said_by(
    plugin: &Plugin,
    call: &PluginCall<'_>,
    config: &str,
    store: &Arc<dyn CounterStore>,
) -> String {
    let decision = plugin.evaluate(call, config, store).decision;
    match decision.verdict {
        Verdict::Allow => "allow".into(),
        _ => decision.reason.to_string(),
    }
}

#[test]
fn state_round_trips_per_plugin_and_grant() {
    let runtime = PluginRuntime::new(None).unwrap();
    let plugin = load_with(&runtime, PluginLimits::default());
    assert_eq!(plugin.world(), World::V0_3Results);
    assert!(plugin.has_result_hook());
    let state = StateStore::new();
    let store = store_of(&state);
    let args = r#"{"a":1}"#;
    assert_eq!(said_by(&plugin, &call(args), "remember", &store), "allow");
    assert_eq!(
        said_by(&plugin, &call("{}"), "recall", &store),
        r#"recalled Some("{\"a\":1}")"#
    );
    // `after-call` sees the same entries.
    let recalled = plugin
        .after_call(&call("{}"), "{}", "recall", &store)
        .verdict;
    assert_eq!(
        recalled,
        AfterCall::Replace(r#"{"content":[{"type":"text","text":"{'a':1}"}]}"#.into())
    );
    // Another grant has entries of its own.
    let other = ToolCall { grant: "h", ..ECHO };
    let other = PluginCall {
        call: &other,
        ..call("{}")
    };
    assert_eq!(said_by(&plugin, &other, "recall", &store), "recalled None");
    assert_eq!(said_by(&plugin, &call("{}"), "forget", &store), "allow");
    assert_eq!(
        said_by(&plugin, &call("{}"), "recall", &store),
        "recalled None"
    );
    assert_eq!(state.len(), 0);
}

#[test]
fn state_past_its_bounds_is_an_error_the_plugin_sees_and_the_host_keeps_nothing_more() {
    let runtime = PluginRuntime::new(None).unwrap();
    let limits = PluginLimits {
        state: StateLimits {
            max_entries: 5,
            max_bytes: 1 << 20,
            max_ttl: Duration::from_secs(3600),
        },
        ..PluginLimits::default()
    };
    let plugin = load_with(&runtime, limits);
    let state = StateStore::new();
    let store = store_of(&state);
    let flood = said_by(&plugin, &call("{}"), "flood", &store);
    assert!(
        flood.starts_with("refused 55: ") && flood.contains("max_entries (5)"),
        "{flood}"
    );
    assert_eq!(state.len(), 5);
    // Bounds the host checks before the store: the key's length and the time to live.
    let long = said_by(&plugin, &call("{}"), "long-key", &store);
    assert!(
        long.contains("1000 bytes is over the 256-byte cap"),
        "{long}"
    );
    let ttl = said_by(&plugin, &call("{}"), "ttl-0", &store);
    assert!(ttl.contains("time to live of 0 ms"), "{ttl}");
    // More calls than the per-evaluation cap: a trap, and a deny naming the cap.
    let calls = said_by(&plugin, &call("{}"), "flood-calls", &store);
    assert!(
        calls.starts_with("plugin `hostile/results` ")
            && calls.contains("`state.set` more than 64 times"),
        "{calls}"
    );
    assert_eq!(state.len(), 5);
    // A value alone over `max_bytes` is refused by the host.
    let small = PluginLimits {
        state: StateLimits {
            max_bytes: 512,
            ..StateLimits::default()
        },
        ..PluginLimits::default()
    };
    let plugin = load_with(&runtime, small);
    let flood = said_by(&plugin, &call("{}"), "flood", &store_of(&StateStore::new()));
    assert!(
        flood.starts_with("refused 60: ") && flood.contains("max_bytes (512)"),
        "{flood}"
    );
}

#[test]
fn a_store_that_cannot_answer_fails_get_and_delete_closed_and_refuses_set() {
    let runtime = PluginRuntime::new(None).unwrap();
    let plugin = load_with(&runtime, PluginLimits::default());
    let state = StateStore::new();
    state.down.store(true, Ordering::Relaxed);
    let store = store_of(&state);
    assert_eq!(
        said_by(&plugin, &call("{}"), "remember", &store),
        "not stored: the test store is down"
    );
    for config in ["recall", "forget"] {
        let failed = said_by(&plugin, &call("{}"), config, &store);
        assert!(
            failed.starts_with("plugin `hostile/results` ")
                && failed.contains("state: the test store is down"),
            "{config}: {failed}"
        );
    }
    let failed = plugin
        .after_call(&call("{}"), "{}", "recall", &store)
        .verdict;
    assert!(
        matches!(&failed, AfterCall::Failed(why) if why.contains("the test store is down")),
        "{failed:?}"
    );
}

#[test]
fn after_call_answers_are_checked_and_every_failure_names_the_plugin() {
    let runtime = PluginRuntime::new(None).unwrap();
    let plugin = load_with(&runtime, PluginLimits::default());
    let store = counters();
    let result = r#"{"content":[{"type":"text","text":"hello"}]}"#;
    let verdict = |config: &str| {
        plugin
            .after_call(&call("{}"), result, config, &store)
            .verdict
    };
    assert_eq!(verdict("pass"), AfterCall::Pass);
    assert_eq!(
        verdict("replace"),
        AfterCall::Replace(r#"{"content":[{"type":"text","text":"44 bytes"}]}"#.into())
    );
    assert_eq!(
        verdict("refuse"),
        AfterCall::Refuse("the result is not for you".into())
    );
    let failures = [
        ("trap", "plugin `hostile/results` trapped: unreachable code reached"),
        (
            "huge",
            "plugin `hostile/results` returned a malformed result: a replacement result of 2097191 bytes, over the 1048576-byte cap",
        ),
        (
            "garbage",
            "plugin `hostile/results` returned a malformed result: a replacement result that is not JSON",
        ),
        (
            "array",
            "plugin `hostile/results` returned a malformed result: a replacement result that is not a JSON object",
        ),
        (
            "long-reason",
            "plugin `hostile/results` returned a malformed result: a reason of 5000 bytes, over the 1024-byte cap",
        ),
    ];
    for (config, expected) in failures {
        match verdict(config) {
            AfterCall::Failed(why) => assert!(why.starts_with(expected), "{config}: {why}"),
            other => panic!("{config}: {other:?}"),
        }
        // The failed instance is gone: the next call runs on a clean one.
        assert_eq!(verdict("pass"), AfterCall::Pass, "after {config}");
    }
    // The call's own costs come back, and the verdict is counted (the counts are the
    // process's, and other tests run at the same time: ours must at least move it).
    let replaced = || {
        crate::plugins::evaluations()
            .into_iter()
            .find(|(o, _)| *o == "replace")
            .map_or(0, |(_, n)| n)
    };
    let before = replaced();
    let outcome = plugin.after_call(&call("{}"), result, "replace", &store);
    assert!(outcome.instructions > 0 && outcome.peak_memory > 0);
    assert!(replaced() > before);
}

#[test]
fn a_runaway_after_call_is_stopped_by_fuel_or_its_deadline() {
    let runtime = PluginRuntime::new(None).unwrap();
    let store = counters();
    let cases = [
        (
            2_000_000,
            1000,
            "ran out of fuel after 2000000 instructions",
        ),
        (1_000_000_000_000, 20, "timed out after 20 ms"),
    ];
    for (fuel, timeout_ms, expected) in cases {
        let limits = PluginLimits {
            fuel,
            timeout: Duration::from_millis(timeout_ms),
            ..PluginLimits::default()
        };
        let plugin = load_with(&runtime, limits);
        let verdict = plugin.after_call(&call("{}"), "{}", "loop", &store).verdict;
        assert_eq!(
            verdict,
            AfterCall::Failed(format!("plugin `hostile/results` {expected}"))
        );
    }
}

#[test]
fn an_oversized_result_is_never_shown_and_passes_or_fails_as_the_policy_says() {
    let runtime = PluginRuntime::new(None).unwrap();
    let store = counters();
    let result = format!(
        r#"{{"content":[{{"type":"text","text":"{}"}}]}}"#,
        "x".repeat(200)
    );
    for (oversized, expected) in [
        (Oversized::Pass, AfterCall::Pass),
        (
            Oversized::Refuse,
            AfterCall::Failed(format!(
                "plugin `hostile/results` was not run: the call's result of {} bytes is over its max_result_bytes (100), and oversized results are refused",
                result.len()
            )),
        ),
    ] {
        let limits = PluginLimits {
            max_result_bytes: 100,
            oversized_results: oversized,
            ..PluginLimits::default()
        };
        let plugin = load_with(&runtime, limits);
        assert_eq!(plugin.result_limits(), (100, oversized));
        // `refuse` would refuse the result, were the plugin shown it.
        let outcome = plugin.after_call(&call("{}"), &result, "refuse", &store);
        assert_eq!(outcome.verdict, expected);
        assert_eq!(outcome.instructions, 0);
    }
}

/// 0.1.0 and 0.2.0 plugins, and a 0.3.0 `policy` one, load and decide as they did; having no
/// `after-call`, they pass every result without running.
#[test]
fn every_world_without_results_loads_decides_and_passes_every_result() {
    let runtime = PluginRuntime::new(None).unwrap();
    let store = counters();
    for (name, world, said) in [
        ("probe", World::V0_2, "tool=echo"),
        (
            "hostile/huge-reason",
            World::V0_1,
            "returned a malformed result",
        ),
    ] {
        let plugin = runtime
            .load(
                name,
                Source::Path(&built(name)),
                Vetting::default(),
                Isolation::Fresh,
                PluginLimits::default(),
            )
            .unwrap();
        assert_eq!(plugin.world(), world);
        assert!(!plugin.has_result_hook());
        let reason = said_by(&plugin, &call("{}"), "{}", &store);
        assert!(reason.contains(said), "{name}: {reason}");
        let outcome = plugin.after_call(&call("{}"), "{}", "refuse", &store);
        assert_eq!(
            (outcome.verdict, outcome.instructions),
            (AfterCall::Pass, 0)
        );
    }
}

#[test]
fn state_must_be_granted() {
    let runtime = PluginRuntime::new(None).unwrap();
    let grants: BTreeSet<Capability> = [Capability::Log].into();
    let err = runtime
        .load(
            NAME,
            Source::Path(&built(NAME)),
            Vetting {
                grants: Some(&grants),
                ..Vetting::default()
            },
            Isolation::Fresh,
            PluginLimits::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("toolgate:policy/state@0.3.0") && err.contains(r#""grants": ["log","state"]"#),
        "{err}"
    );
}

/// A pooled instance serves `evaluate` and `after-call` alike; one that trapped in
/// `after-call` is discarded, and the grant's next call, of either kind, runs on a new one.
#[test]
fn a_pooled_instance_serves_both_calls_and_is_discarded_after_a_trap() {
    let runtime = PluginRuntime::new(None).unwrap();
    let plugin = load_isolated(&runtime, PluginLimits::default(), Isolation::Pooled);
    let store = store_of(&StateStore::new());
    for _ in 0..3 {
        assert_eq!(said_by(&plugin, &call("{}"), "remember", &store), "allow");
        let verdict = plugin
            .after_call(&call("{}"), "{}", "recall", &store)
            .verdict;
        assert_eq!(
            verdict,
            AfterCall::Replace(r#"{"content":[{"type":"text","text":"{}"}]}"#.into())
        );
        let trapped = plugin.after_call(&call("{}"), "{}", "trap", &store).verdict;
        assert!(matches!(trapped, AfterCall::Failed(_)), "{trapped:?}");
    }
}
