//! Scaling (issue 22, item 6): each figure against its size.
//!
//! - `decide/rules`: one decision against a policy of N rules, half exact names, half globs,
//!   for a tool named exactly, a tool only a glob matches, and a tool no rule names;
//!   `compile/rules`: `Policy::from_json` of the same policies;
//! - `tools_list/tools`: the session core filtering a `tools/list` reply of N tools (the
//!   request in, the reply out);
//! - `counter/depth`: one counted call (consume, then refund, so the depth stays put) on a
//!   counter holding D units of a one-day window, in the memory and SQLite stores;
//! - `reload/plugins`: loading a policy naming P plugins into a fresh runtime, with an empty
//!   compile cache (cold) and a warm one.
//!
//! Run: `cargo bench --profile release -p toolgate --bench scaling` (a group alone:
//! `-- decide/rules`). It builds the plugin it loads first.

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use serde_json::{json, Map, Value};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use toolgate::call::ToolCall;
use toolgate::clock::{ManualClock, SystemClock};
use toolgate::counters::{
    CounterKey, CounterStore, MemoryCounterStore, Scope, SqliteCounterStore, Window,
};
use toolgate::plugins::PluginRuntime;
use toolgate::policy::{Loader, Policy};
use toolgate::session::{ClientLine, Identity, Session};

#[path = "support/plugins.rs"]
mod plugins;

/// A policy of `n` rules: `tool_0`, `tool_1`, ... for the even half (exact names, `allow`),
/// `ns_0_*`, `ns_1_*`, ... for the other half (globs).
fn rules_policy(n: usize) -> String {
    let mut tools = Map::new();
    for i in 0..n.div_ceil(2) {
        tools.insert(format!("tool_{i}"), json!({}));
    }
    for i in 0..n / 2 {
        tools.insert(format!("ns_{i}_*"), json!({}));
    }
    json!({"version": "1", "default": "allow", "tools": tools}).to_string()
}

const RULES: [usize; 4] = [10, 100, 1_000, 10_000];

fn decide_rules(c: &mut Criterion) {
    let store: Arc<dyn CounterStore> =
        Arc::new(MemoryCounterStore::new(Arc::new(SystemClock::new())));
    let args = json!({"prompt": "hello"});
    let mut group = c.benchmark_group("decide/rules");
    for n in RULES {
        let policy = Policy::from_json(&rules_policy(n), "scaling.json").unwrap();
        let exact = format!("tool_{}", n / 4);
        // Globs are tried most literal characters first, then alphabetically: `ns_9_*` (or
        // `ns_4_*` at 10 rules) is the glob looked at last, after every other.
        let last = (n / 2 - 1).min(9);
        let globbed = format!("ns_{last}_x");
        let cases = [
            (
                "exact",
                exact.as_str(),
                Some(format!("tools.tool_{}", n / 4)),
            ),
            ("glob", globbed.as_str(), Some(format!("tools.ns_{last}_*"))),
            ("unknown", "unlisted_tool", None),
        ];
        for (case, tool, rule) in cases {
            let call = ToolCall {
                tool,
                args: &args,
                args_text: None,
                grant: "g",
                session: "s",
                server: "",
                annotations: None,
            };
            let outcome = policy.decide(&call, &store);
            assert!(outcome.decision.is_allow());
            assert_eq!(policy.rule_id_for(tool), rule.as_deref(), "{case} at {n}");
            group.bench_with_input(BenchmarkId::new(case, n), &call, |b, call| {
                b.iter(|| black_box(policy.decide(black_box(call), &store)))
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("compile/rules");
    group.sample_size(20);
    for n in RULES {
        let text = rules_policy(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &text, |b, text| {
            b.iter(|| black_box(Policy::from_json(text, "scaling.json").unwrap()))
        });
    }
    group.finish();
}

/// A `tools/list` reply (without its id's value) of `n` tools, each with a small input
/// schema; one in ten is `secret_*`, which the policy hides.
fn tools_reply(n: usize) -> (String, String) {
    let tools: Vec<Value> = (0..n)
        .map(|i| {
            let name = if i % 10 == 9 {
                format!("secret_{i}")
            } else {
                format!("tool_{i}")
            };
            json!({
                "name": name,
                "description": format!("Tool number {i}: does one thing and does it well."),
                "inputSchema": {"type": "object",
                    "properties": {"prompt": {"type": "string"}, "limit": {"type": "integer"}},
                    "required": ["prompt"]}
            })
        })
        .collect();
    let tail = json!({"tools": tools}).to_string();
    (
        r#"{"jsonrpc":"2.0","id":"#.to_owned(),
        format!(r#","result":{tail}}}"#),
    )
}

const TOOLS: [usize; 3] = [100, 1_000, 10_000];

fn tools_list(c: &mut Criterion) {
    let policy = json!({"version": "1", "default": "allow", "hide": ["secret_*", "admin_*"],
        "tools": {"tool_1": {}, "tool_2": {"action": "deny"}, "ns_*": {}}});
    let policy = Arc::new(Policy::from_json(&policy.to_string(), "scaling.json").unwrap());
    let counters = Arc::new(MemoryCounterStore::new(Arc::new(SystemClock::new())));
    let session = Session::new(
        policy,
        counters,
        Identity {
            grant: "g".into(),
            session: "s".into(),
        },
    );
    let request = br#"{"jsonrpc":"2.0","id":7,"method":"tools/list","params":{}}"#;
    let mut group = c.benchmark_group("tools_list/tools");
    for n in TOOLS {
        let (head, tail) = tools_reply(n);
        let mut reply = String::with_capacity(head.len() + tail.len() + 20);
        let mut round_trip = || {
            let ClientLine::Forward(forward) = session.from_client(black_box(request)) else {
                panic!("tools/list is forwarded")
            };
            reply.clear();
            reply.push_str(&head);
            reply.push_str(&forward.upstream_id.unwrap().to_string());
            reply.push_str(&tail);
            session
                .from_upstream(black_box(reply.as_bytes()))
                .map(|o| o.into_owned())
        };
        let out: Value = serde_json::from_slice(&round_trip().unwrap()).unwrap();
        assert_eq!(out["id"], 7);
        assert_eq!(out["result"]["tools"].as_array().unwrap().len(), n - n / 10);
        if n >= 10_000 {
            group.sample_size(30);
        }
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| black_box(round_trip().map(|o| o.len())))
        });
    }
    group.finish();
}

const DEPTHS: [u64; 3] = [30, 10_000, 1_000_000];
/// A day's window admitting 1,000,000 units, with room for the one the bench takes.
const DAY: Window = Window {
    max: 1_000_000 + 1_000,
    length_ms: 86_400_000,
};
/// Units are spread 80 ms apart while filling: 1,000,000 of them span 22 hours, all inside
/// the window.
const SPACING_MS: u64 = 80;

fn counter_depth(c: &mut Criterion) {
    let key = CounterKey::new("daily", Scope::Grant, "g", "s");
    let requests = [(key.clone(), DAY)];
    let mut group = c.benchmark_group("counter/depth");
    for depth in DEPTHS {
        let clock = ManualClock::starting_at(1_000_000_000_000);
        let store = MemoryCounterStore::new(clock.clone());
        for _ in 0..depth {
            store.consume(&requests).unwrap();
            clock.advance(Duration::from_millis(SPACING_MS));
        }
        assert_eq!(store.count(&key, DAY), depth);
        group.bench_function(BenchmarkId::new("memory consume + refund", depth), |b| {
            b.iter(|| {
                let taken = store.consume(black_box(&requests)).unwrap();
                store.refund(&taken);
            })
        });
        assert_eq!(store.count(&key, DAY), depth);
    }
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.measurement_time(Duration::from_secs(5));
    for depth in DEPTHS {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counters.sqlite");
        let clock = ManualClock::starting_at(1_000_000_000_000);
        let store = SqliteCounterStore::open(&path, clock.clone(), Duration::from_secs(2)).unwrap();
        // The first unit through the store (it writes the key's row and its encoding); the
        // rest straight into the file in one transaction, as the store would have written
        // them one by one: through `consume`, each fill call counts the whole log, so filling
        // a million would take hours.
        store.consume(&requests).unwrap();
        let filled = Instant::now();
        {
            let mut db = rusqlite::Connection::open(&path).unwrap();
            let tx = db.transaction().unwrap();
            let (encoded, first): (String, i64) = tx
                .query_row(
                    "SELECT key, at_ms FROM toolgate_counter_units LIMIT 1",
                    [],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .unwrap();
            {
                let mut insert = tx
                    .prepare("INSERT INTO toolgate_counter_units (key, at_ms) VALUES (?1, ?2)")
                    .unwrap();
                for i in 1..depth as i64 {
                    insert
                        .execute(rusqlite::params![encoded, first + i * SPACING_MS as i64])
                        .unwrap();
                }
            }
            tx.commit().unwrap();
        }
        clock.advance(Duration::from_millis(depth * SPACING_MS));
        eprintln!(
            "sqlite: {depth} units written in {:.1} s",
            filled.elapsed().as_secs_f64()
        );
        assert_eq!(store.count(&key, DAY).unwrap(), depth);
        group.bench_function(BenchmarkId::new("sqlite consume + refund", depth), |b| {
            b.iter(|| {
                let taken = store.consume(black_box(&requests)).unwrap();
                store.refund(&taken);
            })
        });
        assert_eq!(store.count(&key, DAY).unwrap(), depth);
    }
    group.finish();
}

/// A policy naming `paths` as plugins `p0`, `p1`, ..., each used by a rule of its own.
fn plugins_policy(paths: &[PathBuf]) -> String {
    let mut plugins = Map::new();
    let mut tools = Map::new();
    for (i, path) in paths.iter().enumerate() {
        plugins.insert(format!("p{i}"), json!({"path": path, "grants": []}));
        tools.insert(
            format!("tool_{i}"),
            json!({"use": [{"plugin": format!("p{i}"), "config": {"max_description_chars": 200}}]}),
        );
    }
    json!({"version": "1", "default": "allow", "plugins": plugins, "tools": tools}).to_string()
}

const PLUGINS: [usize; 3] = [1, 10, 50];

fn reload_plugins(c: &mut Criterion) {
    let bytes = plugins::build("gw-id-check");
    let dir = tempfile::tempdir().unwrap();
    // Distinct copies: each its own digest, so each is compiled (or found in the cache) on
    // its own, as P different plugins would be.
    let distinct: Vec<PathBuf> = (0..*PLUGINS.iter().max().unwrap())
        .map(|i| {
            let path = dir.path().join(format!("plugin-{i}.wasm"));
            std::fs::write(&path, plugins::variant(&bytes, i as u64)).unwrap();
            path
        })
        .collect();
    let shared = dir.path().join("shared.wasm");
    std::fs::write(&shared, &bytes).unwrap();
    let warm_cache = dir.path().join("warm-cache");
    // Each load into a fresh runtime; only the load is timed (making the runtime, and
    // dropping it with the policy, are not).
    let timed_loads = |text: &str, cache: Option<&Path>, iters: u64| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let fresh = tempfile::tempdir().unwrap();
            let dir = cache.map_or_else(|| fresh.path().join("c"), Path::to_owned);
            let runtime = Arc::new(PluginRuntime::new(Some(dir)).unwrap());
            let started = Instant::now();
            let policy = Loader::with_plugins(runtime.clone())
                .from_json(text, "scaling.json")
                .unwrap();
            total += started.elapsed();
            assert!(!policy.plugins().is_empty());
            drop(policy);
            drop(runtime);
        }
        total
    };
    let mut group = c.benchmark_group("reload/plugins");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(5));
    for p in PLUGINS {
        let text = plugins_policy(&distinct[..p]);
        // Fill the warm cache: a fresh runtime then finds every artifact on disk.
        timed_loads(&text, Some(&warm_cache), 1);
        group.bench_function(BenchmarkId::new("cold, distinct plugins", p), |b| {
            b.iter_custom(|iters| timed_loads(&text, None, iters))
        });
        group.bench_function(BenchmarkId::new("cached, distinct plugins", p), |b| {
            b.iter_custom(|iters| timed_loads(&text, Some(&warm_cache), iters))
        });
        let same = plugins_policy(&vec![shared.clone(); p]);
        group.bench_function(BenchmarkId::new("cold, one component", p), |b| {
            b.iter_custom(|iters| timed_loads(&same, None, iters))
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    decide_rules,
    tools_list,
    counter_depth,
    reload_plugins
);
criterion_main!(benches);
