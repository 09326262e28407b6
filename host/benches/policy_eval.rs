//! Criterion benches for the declarative engine: one decision per iteration.
//!
//! Run: `cargo bench -p toolgate --bench policy_eval`.

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;
use std::hint::black_box;
use std::sync::Arc;
use toolgate::call::ToolCall;
use toolgate::clock::SystemClock;
use toolgate::counters::{CounterStore, MemoryCounterStore};
use toolgate::policy::Policy;
use toolgate::session::{ClientLine, Identity, Session};

const EXAMPLE: &str = include_str!("../../examples/llm-cli-gateway/policy.json");

fn decisions(c: &mut Criterion) {
    let policy = Policy::from_json(EXAMPLE, "example.json").unwrap();
    let store: Arc<dyn CounterStore> =
        Arc::new(MemoryCounterStore::new(Arc::new(SystemClock::new())));
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
                    server: "",
                    annotations: None,
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
                    server: "",
                    annotations: None,
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
                    server: "",
                    annotations: None,
                },
                &store,
            ))
        })
    });
    group.finish();
}

/// The whole per-message cost of the session core for one allowed call: the request line in,
/// the reply line out (parsing, policy, counters, the pending map).
fn session_round_trip(c: &mut Criterion) {
    let policy = Arc::new(Policy::from_json(EXAMPLE, "example.json").unwrap());
    let counters = Arc::new(MemoryCounterStore::new(Arc::new(SystemClock::new())));
    let session = Session::new(
        policy,
        counters,
        Identity {
            grant: "g".into(),
            session: "s".into(),
        },
    );
    let request = br#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"claude_request","arguments":{"prompt":"hello there","model":"latest"}}}"#;
    // The upstream answers under the gateway's id, which changes with every call.
    let (head, tail) = (
        r#"{"jsonrpc":"2.0","id":"#,
        r#","result":{"content":[{"type":"text","text":"{\"success\":true,\"sessionId\":\"gw-4c444474-9ef5-41f6-a6d5-a457adff6725\"}"}]}}"#,
    );
    let mut reply = String::new();
    c.bench_function("session: allowed tools/call request + reply", |b| {
        b.iter(|| {
            let ClientLine::Forward(forward) = session.from_client(black_box(request)) else {
                panic!("the call is allowed")
            };
            reply.clear();
            reply.push_str(head);
            reply.push_str(&forward.upstream_id.unwrap().to_string());
            reply.push_str(tail);
            let out = session.from_upstream(black_box(reply.as_bytes()));
            black_box(out.map(|o| o.len()));
        })
    });
}

criterion_group!(benches, decisions, session_round_trip);
criterion_main!(benches);
