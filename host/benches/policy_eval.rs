//! Criterion benches for the declarative engine: one decision per iteration.
//!
//! Run: `cargo bench -p toolgate --bench policy_eval`.

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;
use std::hint::black_box;
use std::sync::Arc;
use toolgate::clock::SystemClock;
use toolgate::counters::MemoryCounterStore;
use toolgate::policy::{Policy, ToolCall};

const EXAMPLE: &str = include_str!("../../examples/llm-cli-gateway/policy.json");

fn decisions(c: &mut Criterion) {
    let policy = Policy::from_json(EXAMPLE, "example.json").unwrap();
    let store = MemoryCounterStore::new(Arc::new(SystemClock::new()));
    let mut group = c.benchmark_group("declarative");

    let args = json!({"prompt": "hello", "sessionId": "gw-4c444474-9ef5-41f6-a6d5-a457adff6725"});
    group.bench_function("deny_if on a glob rule (codex_request, gw- id)", |b| {
        b.iter(|| {
            black_box(policy.decide(
                &ToolCall {
                    tool: "codex_request",
                    args: &args,
                    grant: "g",
                    session: "s",
                },
                &store,
            ))
        })
    });
    let args = json!({"prompt": "hello"});
    group.bench_function("no rule, default allow (claude_request)", |b| {
        b.iter(|| {
            black_box(policy.decide(
                &ToolCall {
                    tool: "claude_request",
                    args: &args,
                    grant: "g",
                    session: "s",
                },
                &store,
            ))
        })
    });
    let args = json!({"cli": "codex"});
    group.bench_function("require + deny_if + a full counter (session_create)", |b| {
        b.iter(|| {
            black_box(policy.decide(
                &ToolCall {
                    tool: "session_create",
                    args: &args,
                    grant: "g",
                    session: "s",
                },
                &store,
            ))
        })
    });
    group.finish();
}

criterion_group!(benches, decisions);
criterion_main!(benches);
