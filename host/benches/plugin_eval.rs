//! One decision through each reference plugin, in both isolation modes, with the declarative
//! engine's cost for the same rule measured in the same run.
//!
//! Run: `cargo bench -p toolgate --bench plugin_eval` (it builds the plugins first).

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::{json, Value};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use toolgate::clock::SystemClock;
use toolgate::counters::{CounterStore, MemoryCounterStore};
use toolgate::policy::{Policy, ToolCall};

fn component(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .args(["plugin", "build"])
        .arg(root.join("guest-policies").join(name))
        .output()
        .unwrap();
    assert!(out.status.success(), "plugin build {name} failed");
    PathBuf::from(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
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
        let policy = Policy::from_json(&policy.to_string(), "bench.json").unwrap();
        group.bench_function(name, |b| {
            b.iter(|| {
                black_box(policy.decide(
                    &ToolCall {
                        tool,
                        args,
                        grant: "g",
                        session: "s",
                    },
                    &counters,
                ))
            })
        });
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
            let policy = Policy::from_json(&policy.to_string(), "bench.json").unwrap();
            group.bench_function(format!("{plugin} ({isolation})"), |b| {
                b.iter(|| {
                    let outcome = policy.decide(
                        &ToolCall {
                            tool,
                            args,
                            grant: "g",
                            session: "s",
                        },
                        &counters,
                    );
                    assert!(outcome.decision.is_allow(), "{}", outcome.decision.reason);
                    black_box(outcome)
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
