//! The log's writer: lines that parse back, rotation, and a sink that blocks.

use super::*;
use std::io::BufRead;
use std::time::{Duration, Instant};

fn decision(n: u64) -> DecisionFacts {
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
