use super::*;
use crate::audit::Observer;

fn origin(grant: &str) -> Arc<audit::Origin> {
    Arc::new(audit::Origin {
        instance: Arc::from("test:1"),
        transport: "stdio",
        grant: Arc::from(grant),
        session: Arc::from("s"),
    })
}

fn decision(grant: &str, tool: &str, verdict: &str, rule: &str) -> Arc<DecisionFacts> {
    let verdict = match verdict {
        "allow" => crate::decision::Verdict::Allow,
        "deny" => crate::decision::Verdict::Deny,
        "rate_limited" => crate::decision::Verdict::RateLimited,
        "require_approval" => crate::decision::Verdict::RequireApproval,
        other => panic!("no verdict {other}"),
    };
    Arc::new(DecisionFacts {
        at: std::time::SystemTime::now(),
        id: audit::EventId(1, 2),
        origin: origin(grant),
        policy: Arc::new(audit::PolicyRef {
            name: None,
            digest: "0".repeat(64),
            plugins: Vec::new(),
        }),
        request_id: Arc::from("1"),
        server: Arc::from("echo"),
        tool: Arc::from(tool),
        args: None,
        log_args: None,
        decision: crate::decision::Decision {
            verdict,
            rule: rule.into(),
            reason: "secret reason text".into(),
            retry_after_ms: None,
        },
        eval_us: 42,
        instructions: 0,
        trace: None,
    })
}

fn outcome(tool: &str, fate: Fate, ms: f64) -> Arc<OutcomeFacts> {
    Arc::new(OutcomeFacts {
        at: std::time::SystemTime::now(),
        decision_id: audit::EventId(1, 2),
        origin: origin("alice"),
        request_id: Arc::from("1"),
        server: Arc::from("echo"),
        tool: Arc::from(tool),
        outcome: fate,
        error_code: None,
        result: None,
        upstream_ms: ms,
        server_ms: ms,
    })
}

/// The value of the sample whose line starts with `prefix` (name and labels, as encoded).
fn value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The samples (non-comment lines) of the families whose names start with `family`.
fn series(text: &str, family: &str) -> usize {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(family))
        .count()
}

#[test]
fn counters_move_as_events_arrive() {
    let metrics = Metrics::new();
    let allowed = r#"toolgate_tool_calls_total{grant="alice",tool="echo",decision="allow",rule="tools.echo"}"#;
    assert_eq!(value(&metrics.encode(), allowed), None);
    metrics.decision(&decision("alice", "echo", "allow", "tools.echo"));
    metrics.decision(&decision("alice", "echo", "allow", "tools.echo"));
    metrics.decision(&decision("alice", "rm", "deny", "default"));
    metrics.outcome(&outcome("echo", Fate::Ran, 12.0));
    metrics.outcome(&outcome("echo", Fate::ToolError, 3000.0));
    let text = metrics.encode();
    assert_eq!(value(&text, allowed), Some(2.0), "{text}");
    let denied =
        r#"toolgate_tool_calls_total{grant="alice",tool="rm",decision="deny",rule="default"}"#;
    assert_eq!(value(&text, denied), Some(1.0), "{text}");
    assert_eq!(
        value(&text, "toolgate_policy_evaluation_duration_seconds_count"),
        Some(3.0)
    );
    assert_eq!(
        value(&text, r#"toolgate_tool_call_outcomes_total{outcome="ran"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            r#"toolgate_tool_call_outcomes_total{outcome="tool_error"}"#
        ),
        Some(1.0)
    );
    let ran = r#"mcp_client_operation_duration_seconds_count{mcp_method_name="tools/call",gen_ai_tool_name="echo"}"#;
    assert_eq!(value(&text, ran), Some(1.0), "{text}");
    let failed = r#"mcp_client_operation_duration_seconds_bucket{mcp_method_name="tools/call",gen_ai_tool_name="echo",error_type="tool_error",le="5"}"#;
    assert_eq!(value(&text, failed), Some(1.0), "{text}");
    let under_two = r#"mcp_client_operation_duration_seconds_bucket{mcp_method_name="tools/call",gen_ai_tool_name="echo",error_type="tool_error",le="2"}"#;
    assert_eq!(value(&text, under_two), Some(0.0), "{text}");
    assert!(
        !text.contains("secret reason text"),
        "a reason is never a label"
    );
    assert!(text.contains(&format!(
        "toolgate_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));
}

#[test]
fn ten_thousand_unknown_tools_are_one_series() {
    let metrics = Metrics::new();
    for i in 0..10_000 {
        metrics.decision(&decision(
            "alice",
            &format!("no_such_tool_{i}"),
            "deny",
            "unknown_tool",
        ));
    }
    let text = metrics.encode();
    assert_eq!(series(&text, "toolgate_tool_calls_total"), 1, "{text}");
    let unknown = r#"toolgate_tool_calls_total{grant="alice",tool="unknown_tool",decision="deny",rule="unknown_tool"}"#;
    assert_eq!(value(&text, unknown), Some(10_000.0));
    assert!(!text.contains("no_such_tool_"));
}

#[test]
fn a_grants_tool_labels_are_capped() {
    let metrics = Metrics::with_tool_cap(3);
    for i in 0..10 {
        metrics.decision(&decision("alice", &format!("t{i}"), "allow", "default"));
    }
    // A tool named before the cap keeps its name; another grant has its own cap.
    metrics.decision(&decision("alice", "t0", "allow", "default"));
    metrics.decision(&decision("bob", "t9", "allow", "default"));
    metrics.outcome(&outcome("t7", Fate::Ran, 1.0));
    let text = metrics.encode();
    assert_eq!(series(&text, "toolgate_tool_calls_total"), 5, "{text}");
    let label = |grant: &str, tool: &str| {
        format!(
            r#"toolgate_tool_calls_total{{grant="{grant}",tool="{tool}",decision="allow",rule="default"}}"#
        )
    };
    assert_eq!(value(&text, &label("alice", "t0")), Some(2.0));
    assert_eq!(value(&text, &label("alice", "other")), Some(7.0), "{text}");
    assert_eq!(value(&text, &label("bob", "t9")), Some(1.0));
    assert_eq!(value(&text, &label("alice", "t5")), None);
    let other = r#"mcp_client_operation_duration_seconds_count{mcp_method_name="tools/call",gen_ai_tool_name="other"}"#;
    assert_eq!(value(&text, other), Some(1.0), "{text}");
}

#[test]
fn a_snapshot_is_read_at_each_scrape() {
    let metrics = Metrics::new();
    assert!(!metrics.encode().contains("toolgate_sessions_open"));
    let opened = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = opened.clone();
    metrics.read_from(move || Snapshot {
        sessions_open: Some(1),
        sessions_opened: Some(seen.load(std::sync::atomic::Ordering::Relaxed)),
        refusals: vec![("auth", 4), ("host", 0)],
        policies: vec![PolicyState {
            grant: "alice".into(),
            digest: "ab".repeat(32),
            reloads: 3,
            failed_reloads: 1,
        }],
        decision_log: Some(audit::LogStats {
            written: 9,
            dropped: 2,
        }),
        counter_store_degraded: Some(false),
    });
    opened.store(5, std::sync::atomic::Ordering::Relaxed);
    let text = metrics.encode();
    assert_eq!(value(&text, "toolgate_sessions_open"), Some(1.0), "{text}");
    assert_eq!(value(&text, "toolgate_sessions_opened_total"), Some(5.0));
    assert_eq!(
        value(&text, r#"toolgate_http_refusals_total{reason="auth"}"#),
        Some(4.0)
    );
    let ok = r#"toolgate_policy_reloads_total{grant="alice",result="ok"}"#;
    assert_eq!(value(&text, ok), Some(2.0));
    let info = format!(
        r#"toolgate_policy_info{{grant="alice",digest="{}"}}"#,
        "ab".repeat(32)
    );
    assert_eq!(value(&text, &info), Some(1.0), "{text}");
    assert_eq!(
        value(&text, "toolgate_decision_log_dropped_total"),
        Some(2.0)
    );
    assert_eq!(value(&text, "toolgate_counter_store_degraded"), Some(0.0));
    assert!(text.contains("toolgate_plugin_evaluations_total{outcome=\"trap\"}"));
}

/// The gateway's own server time: a refusal's decision, an allowed call's arrival to its fate.
#[test]
fn the_server_side_duration_counts_refusals_and_forwarded_calls() {
    let metrics = Metrics::new();
    metrics.decision(&decision("alice", "echo", "allow", "tools.echo"));
    metrics.decision(&decision("alice", "rm", "deny", "tools.rm"));
    metrics.outcome(&outcome("echo", Fate::Ran, 12.0));
    let text = metrics.encode();
    let refused = r#"mcp_server_operation_duration_seconds_count{mcp_method_name="tools/call",gen_ai_tool_name="rm",error_type="deny"}"#;
    assert_eq!(value(&text, refused), Some(1.0), "{text}");
    let served = r#"mcp_server_operation_duration_seconds_count{mcp_method_name="tools/call",gen_ai_tool_name="echo"}"#;
    assert_eq!(value(&text, served), Some(1.0), "{text}");
    // The allowed decision alone is not a server operation: its outcome is.
    assert_eq!(
        series(&text, "mcp_server_operation_duration_seconds_count"),
        2,
        "{text}"
    );
}

/// Forwarded calls name the upstream that ran them, and the label is bounded.
#[test]
fn outcomes_name_their_upstream_and_the_names_are_bounded() {
    let metrics = Metrics::new();
    metrics.outcome(&outcome("llmgw__session_create", Fate::Ran, 1.0));
    let text = metrics.encode();
    let llmgw = r#"toolgate_upstream_calls_total{upstream="echo",outcome="ran"}"#;
    assert_eq!(value(&text, llmgw), Some(1.0), "{text}");
    for i in 0..100 {
        let mut event = (*outcome("t", Fate::Ran, 1.0)).clone();
        event.server = Arc::from(format!("server-{i}"));
        metrics.outcome(&Arc::new(event));
    }
    let text = metrics.encode();
    assert_eq!(
        series(&text, "toolgate_upstream_calls_total"),
        UPSTREAMS + 1,
        "{text}"
    );
    assert!(text.contains(r#"upstream="other""#));
}
