//! The log's writer: lines that parse back, rotation, and a sink that blocks.

use super::*;
use std::io::BufRead;
use std::time::{Duration, Instant};

pub(super) fn decision(n: u64) -> DecisionFacts {
    DecisionFacts {
        at: std::time::SystemTime::now(),
        id: EventId(0, n),
        origin: Arc::new(Origin {
            instance: Arc::from(instance()),
            transport: "stdio",
            grant: Arc::from("g"),
            session: Arc::from("s"),
        }),
        policy: Arc::new(PolicyRef {
            name: Some("p".into()),
            digest: "ab".repeat(32),
            plugins: vec![],
        }),
        request_id: n.to_string().into(),
        server: Arc::from("srv"),
        tool: Arc::from("t"),
        args: Some(Arc::new(serde_json::json!({}))),
        log_args: None,
        decision: crate::decision::Decision::allow("default"),
        eval_us: 3,
        instructions: 0,
        trace: None,
    }
}

pub(super) fn outcome() -> OutcomeFacts {
    let d = decision(1);
    OutcomeFacts {
        at: std::time::SystemTime::now(),
        decision_id: d.id,
        origin: d.origin,
        request_id: d.request_id,
        server: d.server,
        tool: d.tool,
        outcome: Fate::Ran,
        error_code: None,
        result: None,
        upstream_ms: 1.0,
        server_ms: 2.0,
    }
}

fn wait_for(log: &DecisionLog, written: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.stats().written < written && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn lines_parse_back_with_their_schema_and_files_rotate_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    let sink = LogSink::File {
        path: path.clone(),
        max_bytes: 2000,
        keep: 2,
    };
    let log = DecisionLog::open(sink, 1024).unwrap();
    for n in 0..40 {
        log.decision(&Arc::new(decision(n)));
    }
    wait_for(&log, 40);
    assert_eq!(
        log.stats(),
        LogStats {
            written: 40,
            dropped: 0
        }
    );
    drop(log);
    let read = |p: &std::path::Path| -> Vec<Line> {
        std::io::BufReader::new(std::fs::File::open(p).unwrap())
            .lines()
            .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
            .collect()
    };
    let current = read(&path);
    let older = read(&dir.path().join("decisions.jsonl.1"));
    assert!(std::fs::metadata(&path).unwrap().len() <= 2000);
    assert!(dir.path().join("decisions.jsonl.2").exists());
    assert!(!dir.path().join("decisions.jsonl.3").exists(), "keep = 2");
    assert!(current.iter().chain(&older).all(|l| l.schema == SCHEMA));
    let Event::Decision(last) = &current.last().unwrap().event else {
        panic!()
    };
    assert_eq!(last.decision_id, EventId(0, 39).to_string());
}

/// A sink nobody reads: the pipe fills, the writer blocks, the channel fills, and then events
/// are dropped and counted, while `decision` itself keeps returning at once.
#[test]
fn a_sink_that_blocks_drops_events_and_never_blocks_the_caller() {
    let (reader, writer) = std::io::pipe().unwrap();
    let log = DecisionLog::to_writer(Box::new(writer), 16).unwrap();
    let started = Instant::now();
    for n in 0..20_000 {
        log.decision(&Arc::new(decision(n)));
    }
    let took = started.elapsed();
    let stats = log.stats();
    assert!(stats.dropped > 0, "{stats:?}");
    assert!(stats.written + stats.dropped <= 20_000);
    // Not a timing assertion on speed: the loop must finish at all while nothing reads.
    assert!(took < Duration::from_secs(60));
    drop(reader);
}

/// The line the writer serializes from borrowed facts reads back as the schema's event, for
/// every optional member present and absent.
#[test]
fn the_written_line_is_the_schemas_event() {
    use crate::decision::Decision;
    let mut plain = decision(7);
    plain.policy = Arc::new(PolicyRef {
        name: None,
        digest: "cd".repeat(32),
        plugins: vec![],
    });
    plain.args = None;
    let mut full = decision(8);
    full.policy = Arc::new(PolicyRef {
        name: Some("p \"quoted\"".into()),
        digest: "ef".repeat(32),
        plugins: vec![PluginRef {
            name: "rate-cap".into(),
            digest: "01".repeat(32),
        }],
    });
    full.args = Some(Arc::new(
        serde_json::json!({"apiKey": "sk-1", "q": "x\ny", "n": 1.5}),
    ));
    full.log_args = Some(ArgsLogging {
        erase: vec!["/apiKey".into()],
        mask: vec!["/q".into()],
    });
    full.decision = Decision {
        retry_after_ms: Some(1500),
        ..Decision::deny("tools.t", "counter c allows 1 per minute; retry in 2 s")
    };
    full.decision.verdict = crate::decision::Verdict::RateLimited;
    full.instructions = 12345;
    full.trace = Some(TraceContext {
        trace_id: 0x0af7651916cd43dd8448eb211c80319c,
        parent_span_id: Some(1),
        span_id: 0x00f067aa0ba902b7,
    });
    full.at = std::time::UNIX_EPOCH + Duration::from_millis(1_764_648_000_999);
    for facts in [plain, full] {
        let line = serde_json::to_vec(&facts.line()).unwrap();
        let read: DecisionEvent = serde_json::from_slice(&line).unwrap();
        assert_eq!(read, facts.event());
        assert_eq!(line, serde_json::to_vec(&facts.event()).unwrap());
    }
    let outcome = |result, error_code| OutcomeFacts {
        at: std::time::SystemTime::now(),
        decision_id: EventId(1, 2),
        origin: decision(1).origin,
        request_id: Arc::from("\"a\""),
        server: Arc::from("srv"),
        tool: Arc::from("t"),
        outcome: Fate::JsonrpcError,
        error_code,
        result,
        upstream_ms: 1.25,
        server_ms: 2.0,
    };
    for facts in [outcome(None, None), outcome(Some("replaced"), Some(-32603))] {
        let line = serde_json::to_vec(&facts.line()).unwrap();
        assert_eq!(line, serde_json::to_vec(&facts.event()).unwrap());
    }
}

#[test]
fn times_are_written_as_chrono_writes_rfc_3339_with_milliseconds() {
    for ms in [0u64, 999, 1_000, 1_764_648_000_123, 4_102_444_799_999] {
        let at = std::time::UNIX_EPOCH + Duration::from_millis(ms) + Duration::from_nanos(999_999);
        assert_eq!(
            rfc3339(at),
            chrono::DateTime::<chrono::Utc>::from(at)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        );
    }
}
