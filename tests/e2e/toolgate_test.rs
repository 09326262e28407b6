//! `toolgate test` and `toolgate eval`, run as users run them: the binary, its output and its
//! exit code. The case files are in tests/fixtures/cases/ (some deliberately wrong).

use crate::support::TOOLGATE;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs `toolgate <args>` in the repository root: (stdout, exit code).
fn toolgate(args: &[&str]) -> (String, i32) {
    crate::plugins::plugins(); // the case files use the built components
    let out = Command::new(TOOLGATE)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (format!("{stdout}{stderr}"), out.status.code().unwrap_or(-1))
}

#[test]
fn the_reference_plugins_and_examples_pass_their_cases_with_full_coverage() {
    let (out, code) = toolgate(&[
        "test",
        "examples",
        "guest-policies",
        "--coverage",
        "--fail-under",
        "100",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("FAIL"), "{out}");
    let last = out.lines().last().unwrap();
    let passed: usize = last.split(' ').next().unwrap().parse().unwrap();
    assert!(passed >= 40, "{out}");
    assert!(last.ends_with(" passed, 0 failed"), "{out}");
    // Every example policy and every reference plugin's crate has a case file.
    for dir in [
        "examples/seed",
        "examples/llm-cli-gateway",
        "examples/gw-id-check",
        "examples/rate-cap",
        "guest-policies/gw-id-check",
        "guest-policies/rate-cap",
    ] {
        assert!(out.contains(&format!("PASS {dir}/")), "{dir}: {out}");
    }
}

#[test]
fn wrong_cases_fail_with_readable_diffs_and_a_nonzero_exit() {
    let (out, code) = toolgate(&["test", "tests/fixtures/cases/wrong.failing.json"]);
    assert_eq!(code, 1, "{out}");
    let expected = "\
PASS tests/fixtures/cases/wrong.failing.json: right
FAIL tests/fixtures/cases/wrong.failing.json: wrong decision
  - decision: allow
  + decision: deny
  + reason: requirement not met: `args.cli` in [\"claude\",\"codex\"]
  + rule: tools.session_create
FAIL tests/fixtures/cases/wrong.failing.json: wrong reason
  - decision: deny
  + decision: deny
  - reason containing: UUID
  + reason: denied because `args.sessionId` starts_with \"gw-\"
  + rule: tools.session_delete
FAIL tests/fixtures/cases/wrong.failing.json: wrong on the third repetition
  at repetition 3 of 3
  - decision: allow
  + decision: rate_limited
  + reason: counter daily_creates allows 3 per day; retry in 86400 s
  + rule: tools.session_create
1 passed, 3 failed
";
    assert_eq!(out, expected);
}

#[test]
fn json_output_carries_the_same_results() {
    let (out, code) = toolgate(&["test", "--json", "tests/fixtures/cases/wrong.failing.json"]);
    assert_eq!(code, 1, "{out}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["ok"], false);
    let cases = doc["files"][0]["cases"].as_array().unwrap();
    let passed: Vec<bool> = cases
        .iter()
        .map(|c| c["passed"].as_bool().unwrap())
        .collect();
    assert_eq!(passed, [true, false, false, false]);
    assert_eq!(cases[1]["trace"][0]["point"], "tools.session_create");
    assert_eq!(cases[1]["trace"][1]["result"], "does not hold");
}

#[test]
fn coverage_names_the_condition_no_case_reached_and_gates_on_it() {
    let (out, code) = toolgate(&[
        "test",
        "tests/fixtures/cases/partial.cases.json",
        "--coverage",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("coverage tests/fixtures/cases/policy.json: 3/5 points\n  never reached: tools.session_delete\n  never reached: tools.session_delete.deny_if[0]\n"),
        "{out}"
    );
    let (out, code) = toolgate(&[
        "test",
        "tests/fixtures/cases/partial.cases.json",
        "--fail-under",
        "80",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("coverage 60.0% is under the required 80%"),
        "{out}"
    );
    // With the wrong cases too, every point of the policy is reached.
    let (out, _) = toolgate(&[
        "test",
        "tests/fixtures/cases/partial.cases.json",
        "tests/fixtures/cases/wrong.failing.json",
        "--coverage",
    ]);
    assert!(
        out.contains("coverage tests/fixtures/cases/policy.json: 5/5 points\n"),
        "{out}"
    );
}

#[test]
fn an_instruction_budget_trips_on_the_hostile_loop_plugin() {
    let (out, code) = toolgate(&["test", "--bench", "tests/fixtures/cases/loop.failing.json"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "FAIL tests/fixtures/cases/loop.failing.json: budget  [5000000 instructions, "
        ),
        "{out}"
    );
    assert!(
        out.contains("  - instructions at most: 1000000\n  + instructions: 5000000\n"),
        "{out}"
    );
    // The plugin that never allowed is reported as such.
    let (out, _) = toolgate(&[
        "test",
        "--coverage",
        "tests/fixtures/cases/loop.failing.json",
    ]);
    assert!(
        out.contains("never reached: tools.crash.use[0] (plugin loop) allow"),
        "{out}"
    );
}

#[test]
fn a_one_day_window_runs_on_the_simulated_clock_without_waiting() {
    let started = Instant::now();
    let (out, code) = toolgate(&["test", "tests/fixtures/cases/day.cases.json"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.ends_with("4 passed, 0 failed\n"), "{out}");
    // Not a speed test: a real clock would need a day, and this bound only catches sleeping.
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// A clock step out of range (`1e300` s made `Duration::from_secs_f64` panic) is a failing
/// step that says why; the steps after it are not run on a clock that did not move.
#[test]
fn an_out_of_range_clock_step_fails_with_a_reason_and_no_panic() {
    let (out, code) = toolgate(&["test", "tests/fixtures/cases/huge-advance.failing.json"]);
    assert_eq!(code, 1, "{out}");
    assert!(!out.contains("panicked"), "{out}");
    let expected = "\
PASS tests/fixtures/cases/huge-advance.failing.json: before
PASS tests/fixtures/cases/huge-advance.failing.json: ten years later
FAIL tests/fixtures/cases/huge-advance.failing.json: step 4
  advance_s must be a number of seconds from 0 to 315360000 (10 years), not 1e300
  the step after it was not run
2 passed, 1 failed
";
    assert_eq!(out, expected);
    let (out, code) = toolgate(&["test", "tests/fixtures/cases/negative-advance.failing.json"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL tests/fixtures/cases/negative-advance.failing.json: step 1\n  advance_s must be a number of seconds from 0 to 315360000 (10 years), not -1.0\n"), "{out}");
    assert!(out.ends_with("0 passed, 1 failed\n"), "{out}");
}

/// A call step with a stray `advance_s` is refused, not taken for a clock step.
#[test]
fn a_call_step_with_a_stray_advance_s_is_an_invalid_case_file() {
    let (out, code) = toolgate(&["test", "tests/fixtures/cases/stray-advance.failing.json"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("FAIL tests/fixtures/cases/stray-advance.failing.json: invalid case file:"),
        "{out}"
    );
}

/// `--fail-under NaN` fails the gate; it used to pass everything (`x < NaN` is false).
#[test]
fn a_nan_coverage_bound_fails_the_gate() {
    let (out, code) = toolgate(&[
        "test",
        "tests/fixtures/cases/day.cases.json",
        "--fail-under",
        "NaN",
    ]);
    assert_eq!(code, 1, "{out}");
}

/// A bare `toolgate test` at the repository root finds every case file there (the examples,
/// the reference plugins, the passing fixtures) and passes: the deliberately failing fixtures
/// are `*.failing.json`, which a folder search does not pick up.
#[test]
fn a_bare_toolgate_test_at_the_root_passes() {
    let (out, code) = toolgate(&["test"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("examples/"), "{out}");
    assert!(out.contains("guest-policies/"), "{out}");
    assert!(out.contains("tests/fixtures/cases/day.cases.json"), "{out}");
    assert!(!out.contains(".failing.json"), "{out}");
}

/// After a rebuild, `plugin build --pin POLICY` writes the new sha256 into the policy's entry
/// for that component, and the policy then loads with the pin checked.
#[test]
fn plugin_build_pin_writes_the_digest_into_the_policy() {
    let component = crate::plugins::plugins()["rate-cap"].clone();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    let text = format!(
        r#"{{
  "version": "1",
  "default": "deny",
  "plugins": {{"rate-cap": {{"path": {path}, "sha256": "{stale}"}}}},
  "tools": {{"session_create": {{"use": [{{"plugin": "rate-cap", "config": {{"counter": "c", "window": "minute", "max": 3}}}}]}}}}
}}"#,
        path = serde_json::to_string(&component).unwrap(),
        stale = "0".repeat(64)
    );
    std::fs::write(&policy, &text).unwrap();
    let policy_arg = policy.to_str().unwrap();
    let (out, code) = toolgate(&["check", policy_arg]);
    assert_eq!(code, 2, "a stale pin must fail the load: {out}");
    let (out, code) = toolgate(&[
        "plugin",
        "build",
        "guest-policies/rate-cap",
        "--pin",
        policy_arg,
    ]);
    assert_eq!(code, 0, "{out}");
    let digest = toolgate::digest::sha256_hex(&std::fs::read(&component).unwrap());
    assert!(
        out.contains(&format!("pinned rate-cap in {policy_arg}")),
        "{out}"
    );
    let pinned = std::fs::read_to_string(&policy).unwrap();
    assert_eq!(pinned, text.replace(&"0".repeat(64), &digest));
    let (out, code) = toolgate(&["check", policy_arg]);
    assert_eq!(code, 0, "{out}");
}

/// A plugin's log lines show in `toolgate eval`, under its step, and in `toolgate test --json`.
#[test]
fn a_plugins_log_lines_show_in_eval_and_in_the_json_trace() {
    let component = crate::plugins::plugins()["probe"].clone();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    let policy_json = serde_json::json!({"version": "1", "default": "allow",
        "plugins": {"probe": {"path": component}},
        "tools": {"echo": {"use": [{"plugin": "probe"}]}}});
    std::fs::write(&policy, policy_json.to_string()).unwrap();
    let (out, code) = toolgate(&[
        "eval",
        "--policy",
        policy.to_str().unwrap(),
        "--call",
        r#"{"tool": "echo", "args": {}}"#,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(" instructions]\n   log info: probed echo\ndecision: deny"),
        "{out}"
    );
    let cases = dir.path().join("probe.cases.json");
    let case_file = serde_json::json!({"policy": "policy.json", "steps": [
        {"name": "probed", "call": {"tool": "echo", "args": {}}, "expect": "deny"}]});
    std::fs::write(&cases, case_file.to_string()).unwrap();
    let (out, code) = toolgate(&["test", "--json", cases.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    let trace = &doc["files"][0]["cases"][0]["trace"];
    let plugin_step = trace
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["instructions"].is_u64());
    assert_eq!(
        plugin_step.unwrap()["logs"],
        serde_json::json!(["info: probed echo"]),
        "{trace}"
    );
}

/// For scripts: `--exit-code` makes a refusal exit 1; an allowed call still exits 0.
#[test]
fn eval_exit_code_tells_a_refusal_from_an_allowed_call() {
    let eval = |call: &str, extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--policy",
            "examples/llm-cli-gateway/policy.json",
            "--call",
            call,
        ];
        args.extend_from_slice(extra);
        toolgate(&args)
    };
    let refused = r#"{"tool": "session_create", "args": {"cli": "cobol"}}"#;
    let allowed = r#"{"tool": "claude_request", "args": {"prompt": "hi"}}"#;
    let (out, code) = eval(refused, &["--exit-code"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("decision: deny"), "{out}");
    assert_eq!(eval(refused, &[]).1, 0);
    let (out, code) = eval(allowed, &["--exit-code"]);
    assert!(out.contains("decision: allow"), "{out}");
    assert_eq!(code, 0, "{out}");
}

/// Someone with only the binary has the contract: `plugin wit` prints the WIT it was built
/// with, byte for byte: the newest, or an older version it still loads.
#[test]
fn plugin_wit_prints_the_contract_the_binary_was_built_with() {
    let wit = |version: &str| {
        std::fs::read_to_string(
            crate::support::workspace().join(format!("wit/v{version}/policy.wit")),
        )
        .unwrap()
    };
    let (out, code) = toolgate(&["plugin", "wit"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, wit("0.3.0"));
    assert!(out.contains("world policy"), "{out}");
    let (out, code) = toolgate(&["plugin", "wit", "--version", "0.1.0"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, wit("0.1.0"));
    let (out, code) = toolgate(&["plugin", "wit", "--version", "0.9.0"]);
    assert_eq!(code, 2, "{out}");
}

#[test]
fn eval_prints_the_decision_with_each_step() {
    let (out, code) = toolgate(&[
        "eval",
        "--policy",
        "examples/llm-cli-gateway/policy.json",
        "--call",
        r#"{"tool": "session_create", "args": {"cli": "cobol"}}"#,
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        "1. tools.session_create: matched\n2. tools.session_create.require[0]: does not hold\n\
         decision: deny (rule tools.session_create): session_create takes a provider from the advertised enum and a description of at most 200 characters (requirement not met: `args.cli` in [\"claude\",\"codex\",\"gemini\",\"grok\",\"mistral\",\"grok-api\"])\n"
    );
    let (out, _) = toolgate(&[
        "eval",
        "--policy",
        "examples/gw-id-check/policy.json",
        "--call",
        r#"{"tool": "codex_request", "args": {"sessionId": "gw-1"}}"#,
    ]);
    assert!(
        out.contains("2. all_tools.use[0] (plugin gw-id-check): deny: sessionId `gw-1` is an LLM CLI Gateway tracking id"),
        "{out}"
    );
    assert!(out.contains(" instructions]\n"), "{out}");
}

/// Coverage counts each kind of decision a plugin's manifest says it returns: rate-cap
/// declares `allow` and `rate_limited`, so cases that never fill its window leave one point.
#[test]
fn coverage_counts_each_outcome_a_plugin_declares() {
    crate::plugins::plugins(); // the example policy's component
    let dir = tempfile::tempdir().unwrap();
    let policy = crate::support::workspace().join("examples/rate-cap/policy.json");
    let cases = dir.path().join("allow-only.cases.json");
    std::fs::write(
        &cases,
        serde_json::json!({"policy": policy, "steps": [
            {"call": {"tool": "session_create", "args": {"cli": "codex"}}, "expect": "allow"}
        ]})
        .to_string(),
    )
    .unwrap();
    let (out, code) = toolgate(&["test", cases.to_str().unwrap(), "--coverage"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("never reached: tools.session_create.use[0] (plugin rate-cap) rate_limited"),
        "{out}"
    );
    assert!(!out.contains("(plugin rate-cap) deny"), "{out}");
    assert!(!out.contains("(plugin rate-cap) allow"), "{out}");
}

/// `toolgate test --json` gives each case's decision in the decision log's schema.
#[test]
fn json_results_carry_each_decision_in_the_logs_schema() {
    let (out, code) = toolgate(&["test", "examples/seed", "--json"]);
    assert_eq!(code, 0, "{out}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let cases = doc["files"][0]["cases"].as_array().unwrap();
    let limited = cases
        .iter()
        .find(|c| c["name"] == "the 31st is limited")
        .unwrap();
    let line = &limited["decision"];
    assert_eq!(line["schema"], "toolgate.decision-log/v1");
    assert_eq!(line["event"], "decision");
    assert_eq!(line["tool"], "session_create");
    assert_eq!(line["decision"]["verdict"], "rate_limited");
    assert_eq!(line["decision"]["retry_after_ms"], 60000);
}
