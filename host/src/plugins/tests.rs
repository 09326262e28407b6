//! The evaluation permits through real plugins: built from `guest-policies/` with the same
//! `build` the `toolgate plugin build` command runs (the e2e tests build the same crates).

use super::*;
use crate::call::ToolCall;
use crate::clock::ManualClock;
use crate::counters::{CounterStore, MemoryCounterStore};
use crate::decision::Verdict;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Builds the guest crate `name` (under `guest-policies/`) once per test run; tests that build
/// the same crate wait for each other (the component is written in place). The session's
/// tests build theirs here too, for the same reason.
pub(crate) fn built(name: &str) -> PathBuf {
    static BUILT: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get(name) {
        return path.clone();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("guest-policies");
    let path = build::build(&root.join(name), "wasm32-wasip1", None)
        .unwrap_or_else(|e| panic!("building {name}: {e}"));
    built.insert(name.to_owned(), path.clone());
    path
}

/// Polls `done` every millisecond for up to 10 s (a bound for a slow, shared machine, far
/// below the parked epoch ticker's recheck in tests), and says whether it became true.
pub(crate) fn within_10s(mut done: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(10) {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    done()
}

fn counters() -> Arc<dyn CounterStore> {
    Arc::new(MemoryCounterStore::new(ManualClock::starting_at(
        1_700_000_000_000,
    )))
}

/// The arguments plugins see are `PluginCall::arguments`; the record's `args` is not read.
static NO_ARGS: serde_json::Value = serde_json::Value::Null;
static ECHO: ToolCall<'static> = ToolCall {
    tool: "echo",
    args: &NO_ARGS,
    args_text: None,
    grant: "g",
    session: "s",
    server: "",
    annotations: None,
};

fn call(arguments: &str) -> PluginCall<'_> {
    PluginCall {
        call: &ECHO,
        arguments,
        keep_logs: true,
        approval: None,
    }
}

fn load(runtime: &PluginRuntime, name: &str, isolation: Isolation, fuel: u64) -> Arc<Plugin> {
    let limits = PluginLimits {
        fuel,
        memory_bytes: 64 << 20,
        max_input_bytes: 64,
        ..PluginLimits::default()
    };
    runtime
        .load(
            name,
            Source::Path(&built(name)),
            Vetting::default(),
            isolation,
            limits,
        )
        .unwrap_or_else(|e| panic!("{e}"))
}

/// With one permit, every way an evaluation can end gives it back: a plain decision, a trap
/// (panic, fuel), a malformed result, and a call refused before it ran.
#[test]
fn the_permit_comes_back_on_every_path() {
    let runtime = PluginRuntime::new(None)
        .unwrap()
        .with_max_concurrent_evaluations(1);
    let counters = counters();
    let fuel = PluginLimits::default().fuel;
    let cases = [
        ("probe", fuel, "tool=echo"),
        ("hostile/panic", fuel, "panicked"),
        (
            "hostile/loop",
            2_000_000,
            "ran out of fuel after 2000000 instructions",
        ),
        ("hostile/huge-reason", fuel, "returned a malformed result"),
    ];
    for isolation in [Isolation::Fresh, Isolation::Pooled] {
        for (name, fuel, said) in cases {
            let plugin = load(&runtime, name, isolation, fuel);
            for arguments in ["{}", &"x".repeat(65)] {
                let outcome = plugin.evaluate(&call(arguments), "{}", &counters);
                let reason = &outcome.decision.reason;
                let expected = if arguments.len() > 64 {
                    "input cap"
                } else {
                    said
                };
                assert!(reason.contains(expected), "{name}: {reason}");
                assert!(!reason.contains("too many"), "{name}: {reason}");
                let permit = runtime.permits.acquire(std::time::Duration::ZERO);
                assert!(permit.is_some(), "{name} ({isolation:?}) kept its permit");
            }
        }
    }
}

/// A call that finds every permit taken for its whole timeout is denied, naming the plugin,
/// and never touches an instance; the next one, with a permit free, runs.
#[test]
fn a_call_without_a_permit_within_its_timeout_is_denied() {
    let runtime = PluginRuntime::new(None)
        .unwrap()
        .with_max_concurrent_evaluations(1);
    let counters = counters();
    // Long enough that the call that runs never meets its deadline on a busy machine (a 5 ms
    // deadline is one epoch tick, which may come at once); the refused call waits it out.
    let limits = PluginLimits {
        timeout: std::time::Duration::from_millis(250),
        ..PluginLimits::default()
    };
    let plugin = runtime
        .load(
            "probe",
            Source::Path(&built("probe")),
            Vetting::default(),
            Isolation::Fresh,
            limits,
        )
        .unwrap();
    let held = runtime.permits.acquire(std::time::Duration::ZERO).unwrap();
    let refused = plugin.evaluate(&call("{}"), "{}", &counters).decision;
    assert_eq!(refused.verdict, Verdict::Deny);
    assert_eq!(refused.rule, "plugins.probe");
    assert_eq!(
        refused.reason,
        "plugin `probe` was not run: too many plugin evaluations at once \
         (the runtime's 1 permits stayed taken for its timeout of 250 ms)"
    );
    drop(held);
    let ran = plugin.evaluate(&call("{}"), "{}", &counters);
    assert!(
        ran.decision.reason.starts_with("tool=echo"),
        "{}",
        ran.decision.reason
    );
    // What the plugin logged comes back with the outcome, for traces; nothing of an earlier
    // evaluation stays.
    assert_eq!(ran.logs, ["info: probed echo"]);
    assert_eq!(
        plugin.evaluate(&call("{}"), "{}", &counters).logs,
        ["info: probed echo"]
    );
}

/// Every evaluation is counted by how it ended, for `toolgate_plugin_evaluations_total`: a
/// panic is a `trap`, a deadline a `timeout`, spent fuel `out_of_fuel`. (The counts are the
/// process's, and other tests evaluate at the same time: each must at least move by ours.)
#[test]
fn evaluations_are_counted_by_how_they_ended() {
    let runtime = PluginRuntime::new(None).unwrap();
    let counters = counters();
    let count = |outcome: &str| {
        evaluations()
            .into_iter()
            .find(|(o, _)| *o == outcome)
            .map(|(_, n)| n)
            .unwrap()
    };
    let cases = [
        ("hostile/panic", PluginLimits::default().fuel, 1000, "trap"),
        ("hostile/loop", 1_000_000_000_000, 5, "timeout"),
        ("hostile/loop", 2_000_000, 1000, "out_of_fuel"),
    ];
    for (name, fuel, timeout_ms, outcome) in cases {
        let limits = PluginLimits {
            fuel,
            timeout: std::time::Duration::from_millis(timeout_ms),
            ..PluginLimits::default()
        };
        let source = Source::Path(&built(name));
        let plugin = runtime
            .load(name, source, Vetting::default(), Isolation::Fresh, limits)
            .unwrap();
        let before = count(outcome);
        let denied = plugin.evaluate(&call("{}"), "{}", &counters).decision;
        assert_eq!(denied.verdict, Verdict::Deny, "{name}");
        assert!(count(outcome) > before, "{name}: {outcome} did not move");
    }
}

/// A thread that defers teardown keeps its used fresh instances until it says so, at most
/// [`MAX_DEFERRED`] of them, and never one that failed; a thread that did not opt in keeps
/// none, and neither does a pooled plugin's call.
#[test]
fn a_thread_that_defers_teardown_keeps_its_fresh_instances_until_it_tears_them_down() {
    use super::instances::{deferred_len, MAX_DEFERRED};
    let runtime = PluginRuntime::new(None).unwrap();
    let counters = counters();
    let fuel = PluginLimits::default().fuel;
    let fresh = load(&runtime, "probe", Isolation::Fresh, fuel);
    let allowed = |plugin: &Arc<Plugin>| {
        let reason = plugin
            .evaluate(&call("{}"), "{}", &counters)
            .decision
            .reason;
        assert!(reason.starts_with("tool=echo"), "{reason}");
    };
    allowed(&fresh);
    assert_eq!(deferred_len(), 0, "kept without opting in");
    super::defer_teardown_on_this_thread();
    allowed(&fresh);
    assert_eq!(deferred_len(), 1);
    for _ in 0..MAX_DEFERRED + 2 {
        allowed(&fresh);
    }
    assert_eq!(deferred_len(), MAX_DEFERRED, "kept past the bound");
    super::tear_down_deferred();
    assert_eq!(deferred_len(), 0);
    let pooled = load(&runtime, "probe", Isolation::Pooled, fuel);
    allowed(&pooled);
    let panics = load(&runtime, "hostile/panic", Isolation::Fresh, fuel);
    let denied = panics.evaluate(&call("{}"), "{}", &counters).decision;
    assert_eq!(denied.verdict, Verdict::Deny);
    assert_eq!(deferred_len(), 0, "a pooled or failed instance was kept");
    // The instances that waited went back to the pool: the plugin still runs.
    allowed(&fresh);
    assert_eq!(deferred_len(), 1);
}

mod results;

/// Fail closed with a sleeping epoch ticker: once nothing has been armed for a while the
/// ticker parks, and a plugin that loops for ever is still interrupted at its deadline, and
/// denied. (Unlimited fuel: only the deadline can stop it.)
#[test]
fn a_looping_plugin_is_interrupted_at_its_deadline_after_the_ticker_slept() {
    let runtime = PluginRuntime::new(None).unwrap();
    let limits = PluginLimits {
        fuel: 1_000_000_000_000,
        timeout: std::time::Duration::from_millis(20),
        ..PluginLimits::default()
    };
    let source = Source::Path(&built("hostile/loop"));
    let plugin = runtime
        .load(
            "hostile/loop",
            source,
            Vetting::default(),
            Isolation::Pooled,
            limits,
        )
        .unwrap();
    for round in 0..2 {
        // Loading (and the last round) armed stores; the ticker sleeps once they are done.
        assert!(
            within_10s(|| runtime.ticker.is_sleeping()),
            "round {round}: the ticker never slept"
        );
        let (sent, decided) = std::sync::mpsc::channel();
        let plugin = plugin.clone();
        std::thread::spawn(move || {
            let decision = plugin.evaluate(&call("{}"), "{}", &counters()).decision;
            let _ = sent.send(decision);
        });
        // Far above the 20 ms deadline, far below the 60 s a parked ticker waits in tests
        // unless an arming wakes it: a ticker left asleep fails here instead of hanging.
        let decision = decided
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("round {round}: the looping plugin was not interrupted"));
        assert_eq!(decision.verdict, Verdict::Deny);
        assert!(
            decision.reason.contains("timed out after 20 ms"),
            "{}",
            decision.reason
        );
    }
}
