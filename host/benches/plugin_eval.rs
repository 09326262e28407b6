//! One decision through each reference plugin, in both isolation modes, with the declarative
//! engine's cost for the same rule measured in the same run.
//!
//! Run: `cargo bench -p toolgate --bench plugin_eval` (it builds the plugins first).

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::{json, Value};
use std::hint::black_box;

use std::sync::Arc;
use std::time::{Duration, Instant};

/// The gap between calls in the spaced group.
const SPACING: Duration = Duration::from_micros(100);
use toolgate::call::ToolCall;
use toolgate::clock::SystemClock;
use toolgate::counters::{CounterStore, MemoryCounterStore};
use toolgate::policy::Loader;

#[path = "support/plugins.rs"]
mod plugins;
use plugins::component;

/// One plugin runtime for every policy here, as a gateway process has one (one engine, one
/// epoch thread, one background thread for instances).
fn loader() -> &'static Loader {
    static LOADER: std::sync::OnceLock<Loader> = std::sync::OnceLock::new();
    LOADER.get_or_init(Loader::from_env)
}

/// One allowed decision of `policy` on a call of `tool` with `args`, as the session makes
/// it: with the arguments' raw text beside the parsed value (`raw`; without it, the host
/// writes the text from the value, as for a decision made outside a session).
fn decider<'a>(
    policy: &Value,
    tool: &'a str,
    args: &'a Value,
    counters: &Arc<dyn CounterStore>,
    raw: bool,
) -> impl Fn() -> toolgate::policy::Outcome + 'a {
    let policy = loader()
        .from_json(&policy.to_string(), "bench.json")
        .unwrap();
    let counters = counters.clone();
    // The arguments' text as a client sent it, which the session hands the plugins.
    let text = raw.then(|| args.to_string());
    move || {
        let outcome = policy.decide(
            &ToolCall {
                tool,
                args,
                args_text: text.as_deref(),
                grant: "g",
                session: "s",
                server: "",
                annotations: None,
            },
            &counters,
        );
        assert!(outcome.decision.is_allow(), "{}", outcome.decision.reason);
        black_box(outcome)
    }
}

fn bench(c: &mut Criterion) {
    let counters: Arc<dyn CounterStore> =
        Arc::new(MemoryCounterStore::new(Arc::new(SystemClock::new())));
    let gw = component("gw-id-check");
    let cap = component("rate-cap");
    // A huge max, so that every iteration takes the same (allowed) path.
    let cap_config = json!({"counter": "bench", "window": "minute", "max": 1_000_000_000u64});
    let gw_args = json!({"prompt": "resume", "sessionId": "0b6f8a52-6c1e-4d0b-9f3e-2a7c9d1e5b40"});
    let cap_args = json!({"cli": "codex"});
    let mut group = c.benchmark_group("one decision");
    let mut fresh = Vec::new();
    let declarative: [(&str, Value, &Value, &str); 2] = [
        (
            "declarative gw-id rule",
            json!({"version": "1", "default": "allow", "tools": {"codex_request": {"deny_if": [{"path": "args.sessionId", "op": "starts_with", "value": "gw-"}]}}}),
            &gw_args,
            "codex_request",
        ),
        (
            "declarative limit",
            json!({"version": "1", "default": "deny", "tools": {"session_create": {"limits": [cap_config.clone()]}}}),
            &cap_args,
            "session_create",
        ),
    ];
    for (name, policy, args, tool) in declarative {
        let decide = decider(&policy, tool, args, &counters, true);
        group.bench_function(name, |b| b.iter(&decide));
    }
    for isolation in ["pooled", "fresh"] {
        for (plugin, path, config, args, tool) in [
            ("gw-id-check", &gw, json!({}), &gw_args, "codex_request"),
            (
                "rate-cap",
                &cap,
                cap_config.clone(),
                &cap_args,
                "session_create",
            ),
        ] {
            let policy = json!({"version": "1", "default": "allow",
                "plugins": {"p": {"path": path, "isolation": isolation}},
                "tools": {tool: {"use": [{"plugin": "p", "config": config}]}}});
            let decide = decider(&policy, tool, args, &counters, true);
            // Back to back: every iteration's instantiation and teardown compete with the
            // next call for the CPU, so this is the CPU cost of a call.
            group.bench_function(format!("{plugin} ({isolation})"), |b| b.iter(&decide));
            if isolation == "pooled" && plugin == "gw-id-check" {
                // What the raw text saves: the same call with the text written from the
                // value, in the same run.
                let written = decider(&policy, tool, args, &counters, false);
                group.bench_function(
                    format!("{plugin} ({isolation}, arguments written from the value)"),
                    |b| b.iter(&written),
                );
            }
            if isolation == "fresh" {
                fresh.push((plugin, decide));
            }
        }
    }
    // The floor under a fresh decision: bare wasmtime, on the gateway's own engine
    // configuration, making an instance of the same component and dropping it, back to back
    // on one thread. Every import is a trap (no linking work at all), fuel and a deadline are
    // set as for every call, and no export is called: a fresh decision costs this much CPU
    // plus a call (the pooled rows) and whatever hands its instances between threads.
    for (plugin, path) in [("gw-id-check", &gw), ("rate-cap", &cap)] {
        let instantiate = floor(path);
        group.bench_function(
            format!("{plugin} (wasmtime floor: new store, instance, drop)"),
            |b| b.iter(&instantiate),
        );
    }
    group.finish();
    // Latency when each call finds the caches cold, as behind an upstream round trip of any
    // real tool.
    let mut spaced = c.benchmark_group("one decision, spaced");
    spaced
        .sample_size(20)
        .measurement_time(Duration::from_secs(1))
        .warm_up_time(Duration::from_millis(200));
    // First each instance torn down at the end of its call, then (this thread opts in for
    // good) after it, as stdio's client thread does once it has forwarded the call.
    for deferred in [false, true] {
        if deferred {
            toolgate::plugins::defer_teardown_on_this_thread();
        }
        let how = if deferred {
            ", torn down after the write"
        } else {
            ""
        };
        for (plugin, decide) in &fresh {
            let name = format!("{plugin} (fresh, calls {SPACING:?} apart{how})");
            spaced.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        std::thread::sleep(SPACING);
                        let started = Instant::now();
                        decide();
                        total += started.elapsed();
                        toolgate::plugins::tear_down_deferred();
                    }
                    total
                })
            });
        }
    }
    spaced.finish();
}

/// Makes a store and an instance of the component at `path` and drops both, as bare wasmtime
/// does on the gateway's engine configuration.
fn floor(path: &std::path::Path) -> impl Fn() {
    use wasmtime::component::{Component, Linker};
    let engine = wasmtime::Engine::new(&toolgate::plugins::engine_config()).unwrap();
    let component = Component::from_file(&engine, path).unwrap();
    let mut linker = Linker::<()>::new(&engine);
    linker.define_unknown_imports_as_traps(&component).unwrap();
    let pre = linker.instantiate_pre(&component).unwrap();
    move || {
        let mut store = wasmtime::Store::new(&engine, ());
        store.set_fuel(u64::MAX).unwrap();
        store.set_epoch_deadline(u64::MAX);
        black_box(pre.instantiate(&mut store).unwrap());
    }
}

/// What loading a shared plugin adds before its compile: reading its manifest (a walk of the
/// component's sections, checked against its imports) and judging three signatures (an author
/// and two reviewers) by a trust file, next to the sha256 the gateway always computed.
fn vetting(c: &mut Criterion) {
    use toolgate::trust::{self, Role, Signature, Trust};
    let path = component("gw-id-check");
    let bytes = std::fs::read(&path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut identities = String::new();
    let mut signatures = Vec::new();
    for (name, role) in [
        ("alice", Role::Author),
        ("bob", Role::Review),
        ("carol", Role::Review),
    ] {
        let (key, public) = trust::keygen(&dir.path().join(name), None).unwrap();
        let public = std::fs::read_to_string(public).unwrap();
        let line = public.lines().nth(1).unwrap();
        identities += &format!("[identities.{name}]\nkeys = [\"{line}\"]\n");
        signatures.push(Signature {
            text: trust::sign(&bytes, "p.wasm", &key, None, role, None).unwrap(),
            origin: name.into(),
        });
    }
    let trust = Trust::parse(
        &format!(
            "default_rule = \"team\"\n{identities}[rules.team]\nrequire = [{{ role = \"author\", any_of = [\"alice\"] }}, {{ role = \"review\", at_least = 2, any_of = [\"bob\", \"carol\"] }}]\n"
        ),
        "bench",
    )
    .unwrap();
    let manifest = toolgate::manifest::Manifest::read(&bytes).unwrap();
    let now = chrono::Utc::now();
    assert!(trust
        .judge(&bytes, &signatures, &manifest.capabilities, now)
        .satisfied());
    let mut group = c.benchmark_group("vetting (gw-id-check, 137 KB)");
    group.bench_function("sha256 (before issue 17 too)", |b| {
        b.iter(|| toolgate::digest::sha256_hex(black_box(&bytes)))
    });
    group.bench_function("manifest read and checked", |b| {
        b.iter(|| toolgate::manifest::Manifest::read(black_box(&bytes)).unwrap())
    });
    group.bench_function("trust judged, 3 signatures", |b| {
        b.iter(|| {
            trust
                .judge(black_box(&bytes), &signatures, &manifest.capabilities, now)
                .satisfied()
        })
    });
    group.finish();
}

criterion_group!(benches, bench, vetting);
criterion_main!(benches);
