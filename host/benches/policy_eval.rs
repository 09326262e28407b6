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
                    args_text: None,
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
                    args_text: None,
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
                    args_text: None,
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
///
/// Twice: as `toolgate run` has it by default, and observed as `--decision-log FILE
/// --metrics-listen ADDR` has it (the log written to a sink, so that only the gateway's side of
/// the work is timed: the events built, queued and counted). The difference is what the
/// observers cost a call's threads, without the process-to-process noise of the latency
/// harness.
fn session_round_trip(c: &mut Criterion) {
    for observed in [false, true] {
        session_round_trip_with(c, observed);
    }
}

fn session_round_trip_with(c: &mut Criterion, observed: bool) {
    use toolgate::audit::{DecisionLog, Observer, Observers, DEFAULT_CAPACITY};
    let policy = Arc::new(Policy::from_json(EXAMPLE, "example.json").unwrap());
    let counters = Arc::new(MemoryCounterStore::new(Arc::new(SystemClock::new())));
    let audit = observed.then(|| {
        let log = DecisionLog::to_writer(Box::new(std::io::sink()), DEFAULT_CAPACITY).unwrap();
        let observers: Vec<Arc<dyn Observer>> =
            vec![Arc::new(log), Arc::new(toolgate::metrics::Metrics::new())];
        toolgate::session::Audit::new(Arc::new(Observers(observers)), "stdio")
    });
    let session = Session::new(
        policy,
        counters,
        Identity {
            grant: "g".into(),
            session: "s".into(),
        },
    )
    .with_audit(audit);
    let request = br#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"claude_request","arguments":{"prompt":"hello there","model":"latest"}}}"#;
    // The upstream answers under the gateway's id, which changes with every call.
    let (head, tail) = (
        r#"{"jsonrpc":"2.0","id":"#,
        r#","result":{"content":[{"type":"text","text":"{\"success\":true,\"sessionId\":\"gw-4c444474-9ef5-41f6-a6d5-a457adff6725\"}"}]}}"#,
    );
    let mut reply = String::new();
    let name = match observed {
        false => "session: allowed tools/call request + reply",
        true => "session: the same, observed (decision log + metrics)",
    };
    c.bench_function(name, |b| {
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

/// What a counted call costs in each store, and one Redis round trip (`PING` through the same
/// connection and hand-off) as the floor for the Redis store. A 1 ms window keeps every log
/// short. The Redis server is started here, on a free loopback port.
fn counter_stores(c: &mut Criterion) {
    use std::time::Duration;
    use toolgate::counters::{
        CounterKey, RedisCounterStore, RedisOptions, Scope, SqliteCounterStore, Window,
    };
    let clock = Arc::new(SystemClock::new());
    let key = CounterKey::new("bench", Scope::Grant, "g", "s");
    let window = Window {
        max: 1_000_000_000,
        length_ms: 1,
    };
    let mut group = c.benchmark_group("counter_stores");
    let memory = MemoryCounterStore::new(clock.clone());
    group.bench_function("memory consume", |b| {
        b.iter(|| black_box(memory.consume(&[(key.clone(), window)]).unwrap()))
    });
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteCounterStore::open(
        &dir.path().join("c.sqlite"),
        clock.clone(),
        Duration::from_secs(2),
    )
    .unwrap();
    group.bench_function("sqlite consume", |b| {
        b.iter(|| black_box(sqlite.consume(&[(key.clone(), window)]).unwrap()))
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = std::process::Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let options = RedisOptions {
        timeout: Duration::from_secs(1),
        ..RedisOptions::default()
    };
    let redis =
        RedisCounterStore::connect(&format!("redis://127.0.0.1:{port}/0"), options, clock).unwrap();
    group.bench_function("redis PING (same connection)", |b| {
        b.iter(|| redis.ping().unwrap())
    });
    group.bench_function("redis consume", |b| {
        b.iter(|| black_box(redis.consume(&[(key.clone(), window)]).unwrap()))
    });
    group.finish();
    let _ = server.kill();
    let _ = server.wait();
}

criterion_group!(benches, decisions, session_round_trip, counter_stores);
criterion_main!(benches);
