//! Plugins through the real runtime: the reference plugins against the declarative engine on
//! shared tables, the hostile plugins in live sessions, and plugins that must not load.

use crate::support::{echo, refusal, rss_kib, Client, TOOLGATE};
use rstest::rstest;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use toolgate::call::ToolCall;
use toolgate::clock::ManualClock;
use toolgate::counters::{CounterStore, MemoryCounterStore};
use toolgate::decision::Verdict;
use toolgate::digest::sha256_hex;
use toolgate::policy::{Loader, Policy, PolicyError};

const PLUGINS: &[&str] = &[
    "gw-id-check",
    "rate-cap",
    "probe",
    "hostile/loop",
    "hostile/import-loop",
    "hostile/memory-bomb",
    "hostile/panic",
    "hostile/huge-reason",
    "hostile/log-flood",
    "hostile/ungranted-import",
    "hostile/wrong-world",
    "hostile/foreign-import",
    "hostile/import-flood",
    "hostile/remember",
    "hostile/results",
    "session-ids",
    "redact",
];

/// One plugin runtime for these tests, as a process has one.
fn loader() -> &'static Loader {
    static LOADER: OnceLock<Loader> = OnceLock::new();
    LOADER.get_or_init(Loader::from_env)
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds every guest crate once per test run with `toolgate plugin build` (the command users
/// run), and returns the components by crate path.
pub fn plugins() -> &'static HashMap<&'static str, PathBuf> {
    static BUILT: OnceLock<HashMap<&'static str, PathBuf>> = OnceLock::new();
    BUILT.get_or_init(|| {
        PLUGINS
            .iter()
            .map(|name| {
                let out = Command::new(TOOLGATE)
                    .args(["plugin", "build"])
                    .arg(root().join("guest-policies").join(name))
                    .stderr(std::process::Stdio::inherit())
                    .output()
                    .unwrap();
                assert!(out.status.success(), "building {name} failed");
                let stdout = String::from_utf8(out.stdout).unwrap();
                let path = PathBuf::from(stdout.lines().last().expect("the path is the last line"));
                assert!(path.exists(), "{name}: {path:?}");
                (*name, path)
            })
            .collect()
    })
}

pub fn plugin_path(name: &str) -> String {
    plugins()[name].display().to_string()
}

fn pinned(name: &str) -> String {
    sha256_hex(&std::fs::read(&plugins()[name]).unwrap())
}

struct Engine {
    policy: Policy,
    counters: Arc<dyn CounterStore>,
    clock: Arc<ManualClock>,
}

impl Engine {
    fn new(policy: Value) -> Self {
        let clock = ManualClock::starting_at(1_700_000_000_000);
        let counters: Arc<dyn CounterStore> = Arc::new(MemoryCounterStore::new(clock.clone()));
        let policy = loader()
            .from_json(&policy.to_string(), "test.json")
            .unwrap_or_else(|e| panic!("{e}"));
        Self {
            policy,
            counters,
            clock,
        }
    }

    fn decide(&self, tool: &str, args: &Value) -> toolgate::decision::Decision {
        let call = ToolCall {
            tool,
            args,
            args_text: None,
            grant: "g1",
            session: "s1",
            server: "",
            annotations: None,
        };
        self.policy.decide(&call, &self.counters).decision
    }
}

const UUID: &str = "0b6f8a52-6c1e-4d0b-9f3e-2a7c9d1e5b40";
const UUID_V1: &str = "0b6f8a52-6c1e-1d0b-9f3e-2a7c9d1e5b40";

/// The gw-id-check rules written declaratively: the same table must give the same verdicts.
fn declarative_gw_id_check() -> Value {
    let uuid =
        "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-4[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}";
    let gw_resume =
        json!({"deny_if": [{"path": "args.sessionId", "op": "starts_with", "value": "gw-"}]});
    let well_formed = json!({"require": [{"path": "args.sessionId", "op": "regex", "value": format!("^(gw-)?{uuid}$")}]});
    json!({"version": "1", "default": "allow", "tools": {
        "codex_request": gw_resume, "codex_request_async": gw_resume, "codex_fork_session": gw_resume,
        "grok_request*": gw_resume, "gemini_request*": gw_resume,
        "session_get": well_formed, "session_delete": well_formed, "session_set_active": well_formed,
        "session_create": {
            "require": [{"path": "args.cli", "op": "in", "value": ["claude", "codex", "gemini", "grok", "mistral", "grok-api"]}],
            "deny_if": [{"path": "args.description", "op": "regex", "value": "^[\\s\\S]{201,}$"}]
        }
    }})
}

fn plugin_gw_id_check(isolation: &str) -> Value {
    json!({"version": "1", "default": "allow",
        "plugins": {"gw-id-check": {"path": plugin_path("gw-id-check"), "sha256": pinned("gw-id-check"), "isolation": isolation}},
        "all_tools": {"use": [{"plugin": "gw-id-check"}]}})
}

#[rstest]
#[case("codex_request", json!({"prompt": "p", "sessionId": format!("gw-{UUID}")}), "deny", "Codex resume needs a real Codex UUID")]
#[case("codex_request_async", json!({"prompt": "p", "sessionId": format!("gw-{UUID}")}), "deny", "tracking id")]
#[case("codex_fork_session", json!({"sessionId": "gw-anything"}), "deny", "tracking id")]
#[case("grok_request_async", json!({"sessionId": "gw-x"}), "deny", "tracking id")]
#[case("gemini_request", json!({"sessionId": "gw-x"}), "deny", "tracking id")]
#[case("codex_request", json!({"prompt": "p", "sessionId": UUID}), "allow", "")]
#[case("codex_request", json!({"prompt": "p"}), "allow", "")]
#[case("claude_request", json!({"sessionId": "gw-x"}), "allow", "")]
#[case("session_get", json!({"sessionId": UUID}), "allow", "")]
#[case("session_get", json!({"sessionId": format!("gw-{UUID}")}), "allow", "")]
#[case("session_get", json!({"sessionId": UUID_V1}), "deny", "malformed sessionId")]
#[case("session_delete", json!({"sessionId": "gw-123"}), "deny", "malformed sessionId")]
#[case("session_set_active", json!({"sessionId": 42}), "deny", "malformed sessionId")]
#[case("session_get", json!({}), "deny", "sessionId is required")]
#[case("session_create", json!({"cli": "codex"}), "allow", "")]
#[case("session_create", json!({"cli": "vim"}), "deny", "cli `vim` is not one of")]
#[case("session_create", json!({"cli": "claude", "description": "d".repeat(200)}), "allow", "")]
#[case("session_create", json!({"cli": "claude", "description": "é".repeat(201)}), "deny", "201 characters")]
#[case("session_list", json!({}), "allow", "")]
fn gw_id_check_table_on_both_engines(
    #[case] tool: &str,
    #[case] args: Value,
    #[case] verdict: &str,
    #[case] reason: &str,
) {
    let declarative = Engine::new(declarative_gw_id_check()).decide(tool, &args);
    assert_eq!(
        declarative.verdict.as_str(),
        verdict,
        "declarative engine on {tool} {args}: {}",
        declarative.reason
    );
    for isolation in ["fresh", "pooled"] {
        let d = Engine::new(plugin_gw_id_check(isolation)).decide(tool, &args);
        assert_eq!(
            d.verdict.as_str(),
            verdict,
            "plugin ({isolation}) on {tool} {args}: {}",
            d.reason
        );
        assert!(
            d.reason.contains(reason),
            "plugin ({isolation}) reason {:?} lacks {reason:?}",
            d.reason
        );
        if verdict == "deny" {
            assert_eq!(d.rule, "plugins.gw-id-check");
        }
    }
}

#[rstest]
#[case::fresh("fresh")]
#[case::pooled("pooled")]
fn rate_cap_behaves_exactly_like_the_declarative_limit(#[case] isolation: &str) {
    let seed_limit =
        json!({"counter": "session_create_rate", "window": "minute", "max": 30, "scope": "grant"});
    let declarative = Engine::new(
        json!({"version": "1", "default": "deny", "tools": {"session_create": {"limits": [seed_limit]}}}),
    );
    let plugin = Engine::new(json!({"version": "1", "default": "deny",
        "plugins": {"rate-cap": {"path": plugin_path("rate-cap"), "isolation": isolation}},
        "tools": {"session_create": {"use": [{"plugin": "rate-cap", "config": seed_limit}]}}}));
    // One table: (advance the clock by ms, then call) and the expected verdict.
    // Calls at +0 s .. +29 s; the 31st at +29 s waits for the +0 s unit to leave at +60 s.
    let mut table: Vec<(u64, Verdict)> = vec![(0, Verdict::Allow)];
    table.extend((1..30).map(|_| (1_000, Verdict::Allow)));
    table.extend([
        (0, Verdict::RateLimited),
        (30_999, Verdict::RateLimited),
        (1, Verdict::Allow),
        (0, Verdict::RateLimited),
    ]);
    for (step, (advance, expected)) in table.into_iter().enumerate() {
        let mut decisions = Vec::new();
        for engine in [&declarative, &plugin] {
            engine.clock.advance(Duration::from_millis(advance));
            decisions.push(engine.decide("session_create", &json!({"cli": "codex"})));
        }
        let (d, p) = (&decisions[0], &decisions[1]);
        assert_eq!(
            d.verdict, expected,
            "declarative, step {step}: {}",
            d.reason
        );
        assert_eq!(p.verdict, expected, "plugin, step {step}: {}", p.reason);
        assert_eq!(
            (&d.reason, d.retry_after_ms),
            (&p.reason, p.retry_after_ms),
            "step {step}"
        );
    }
}

/// A plugin's counters are its own unless the policy shares one by name (issue 17, item 10):
/// five calls through a plugin that names the policy's counter used to drain the policy's
/// limit on another tool.
#[rstest]
#[case::kept_apart(json!([]), [true, true, true, false])]
#[case::shared_by_name(json!(["session_create_rate"]), [false, false, false, false])]
fn a_plugin_draws_the_policys_counters_only_when_they_are_shared(
    #[case] shared: Value,
    #[case] session_create_allowed: [bool; 4],
) {
    let limit =
        json!({"counter": "session_create_rate", "window": "minute", "max": 3, "scope": "grant"});
    let plugin_cap =
        json!({"counter": "session_create_rate", "window": "minute", "max": 100, "scope": "grant"});
    let engine = Engine::new(json!({"version": "1", "default": "deny",
    "plugins": {"rate-cap": {"path": plugin_path("rate-cap"), "counters": shared}},
    "tools": {
        "session_create": {"limits": [limit]},
        "session_list": {"use": [{"plugin": "rate-cap", "config": plugin_cap}]}
    }}));
    for _ in 0..5 {
        let d = engine.decide("session_list", &json!({}));
        assert_eq!(d.verdict, Verdict::Allow, "{}", d.reason);
    }
    let got: Vec<bool> = (0..4)
        .map(|_| {
            engine
                .decide("session_create", &json!({"cli": "codex"}))
                .verdict
                == Verdict::Allow
        })
        .collect();
    assert_eq!(got, session_create_allowed);
}

#[test]
fn a_shared_counter_that_no_limit_names_stops_the_load() {
    let err = load_error(json!({"version": "1", "default": "deny",
        "plugins": {"rate-cap": {"path": plugin_path("rate-cap"), "counters": ["sesion_create_rate"]}},
        "tools": {"session_create": {"limits": [
            {"counter": "session_create_rate", "window": "minute", "max": 3}]}}}));
    assert!(
        err.contains("plugin `rate-cap` is given counter `sesion_create_rate`, which no limit of this policy names"),
        "{err}"
    );
}

#[test]
fn a_refused_call_refunds_the_units_plugins_took() {
    // rate-cap allows, then gw-id-check refuses: rate-cap's unit must come back.
    let engine = Engine::new(json!({"version": "1", "default": "allow",
        "plugins": {"rate-cap": {"path": plugin_path("rate-cap")}, "gw-id-check": {"path": plugin_path("gw-id-check")}},
        "tools": {"codex_request": {"use": [
            {"plugin": "rate-cap", "config": {"counter": "c", "window": "hour", "max": 1}},
            {"plugin": "gw-id-check"}]}}}));
    for _ in 0..3 {
        let d = engine.decide("codex_request", &json!({"sessionId": "gw-1"}));
        assert_eq!(d.rule, "plugins.gw-id-check", "{}", d.reason);
    }
    assert!(engine
        .decide("codex_request", &json!({"sessionId": UUID}))
        .is_allow());
    assert_eq!(
        engine
            .decide("codex_request", &json!({"sessionId": UUID}))
            .verdict,
        Verdict::RateLimited
    );
}

fn load_error(policy: Value) -> String {
    match loader().from_json(&policy.to_string(), "bad.json") {
        Ok(_) => panic!("the policy loaded"),
        Err(PolicyError::Invalid(e)) => format!("{}: {}", e.location, e.message),
        Err(e) => e.to_string(),
    }
}

fn with_plugin(spec: Value, config: Value) -> Value {
    json!({"version": "1", "default": "allow", "plugins": {"p": spec}, "tools": {"echo": {"use": [{"plugin": "p", "config": config}]}}})
}

#[test]
fn plugins_that_must_not_load_stop_the_policy_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"definitely not wasm").unwrap();
    let bytes = std::fs::read(&plugins()["gw-id-check"]).unwrap();
    let truncated = dir.path().join("truncated.wasm");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let fifo = dir.path().join("fifo.wasm");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let core = root().join("guest-policies/target/wasm32-wasip1/release/gw_id_check.wasm");

    let cases = [
        (
            json!({"path": garbage}),
            json!({}),
            "plugins.p: cannot load plugin `p`",
            "not WebAssembly",
        ),
        (
            json!({"path": truncated}),
            json!({}),
            "plugins.p",
            "not a usable plugin",
        ),
        (
            json!({"path": core}),
            json!({}),
            "plugins.p",
            "core wasm module, not a component",
        ),
        (
            json!({"path": plugin_path("hostile/wrong-world")}),
            json!({}),
            "plugins.p",
            "does not implement toolgate's `policy` world",
        ),
        (
            json!({"path": plugin_path("hostile/foreign-import")}),
            json!({}),
            "plugins.p",
            "it imports `hostile:foreign-import/socket`, which toolgate does not grant",
        ),
        (
            json!({"path": plugin_path("gw-id-check"), "sha256": "00".repeat(32)}),
            json!({}),
            "plugins.p",
            "digest mismatch",
        ),
        (
            // A FIFO (or a device) named as the component: refused at once, never a hang.
            json!({"path": fifo}),
            json!({}),
            "plugins.p",
            "not a regular file",
        ),
        (
            json!({"path": dir.path().join("missing.wasm")}),
            json!({}),
            "plugins.p",
            "cannot read",
        ),
        (
            json!({"path": plugin_path("rate-cap")}),
            json!({"counter": "c", "window": "minute", "max": 0}),
            "tools.echo.use[0].config",
            "`max` must be at least 1",
        ),
        (
            json!({"path": plugin_path("gw-id-check")}),
            json!({"typo": true}),
            "tools.echo.use[0].config",
            "unknown field `typo`",
        ),
    ];
    for (spec, config, location, message) in cases {
        let error = load_error(with_plugin(spec.clone(), config));
        assert!(
            error.starts_with(location) && error.contains(message),
            "{spec}: {error}"
        );
    }
    let unknown =
        load_error(json!({"version": "1", "tools": {"echo": {"use": [{"plugin": "nope"}]}}}));
    assert!(unknown.contains("no plugin named `nope`"), "{unknown}");
}

#[test]
fn the_wasip2_build_path_produces_a_component_that_loads() {
    let out = tempfile::tempdir()
        .unwrap()
        .keep()
        .join("gw_id_check_p2.wasm");
    let status = Command::new(TOOLGATE)
        .args(["plugin", "build", "--target", "wasm32-wasip2", "-o"])
        .arg(&out)
        .arg(root().join("guest-policies/gw-id-check"))
        .status()
        .unwrap();
    assert!(status.success());
    let engine = Engine::new(json!({"version": "1", "default": "allow",
        "plugins": {"gw": {"path": out}}, "all_tools": {"use": [{"plugin": "gw"}]}}));
    assert!(engine
        .decide("codex_request", &json!({"sessionId": UUID}))
        .is_allow());
    assert_eq!(
        engine
            .decide("codex_request", &json!({"sessionId": "gw-1"}))
            .verdict,
        Verdict::Deny
    );
}

/// Effectively no fuel limit: the case is about another limit.
const UNLIMITED_FUEL: u64 = 1_000_000_000_000;

/// Hostile calls per case: enough that a leak of a few KiB per call shows in resident memory.
const HOSTILE_CALLS: usize = 1000;
/// Calls whose resident memory makes one sample (see the loop).
const WINDOW: usize = 20;

// Each case sets its limits so that exactly the limit it is about trips, with generous
// margins elsewhere: CI machines are slow and shared, and a tight deadline would turn a
// memory or fuel case into a timeout. The loops get small budgets (200k instructions, a 5 ms
// deadline) so that a thousand of them stay fast; what trips is the same limit.
#[rstest]
#[case::loop_(
    "hostile/loop",
    "ran out of fuel after 200000 instructions",
    200_000,
    5_000,
    8
)]
#[case::import_loop(
    "hostile/import-loop",
    "called `clock.now-ms` more than 64 times in one evaluation",
    UNLIMITED_FUEL,
    5_000,
    8
)]
#[case::deadline("hostile/loop", "timed out after 5 ms", UNLIMITED_FUEL, 5, 8)]
#[case::memory_bomb(
    "hostile/memory-bomb",
    "exceeded its memory cap of 8 MiB",
    UNLIMITED_FUEL,
    5_000,
    8
)]
#[case::panic("hostile/panic", "panicked", 2_000_000, 5_000, 8)]
#[case::huge_reason(
    "hostile/huge-reason",
    "malformed result: a reason of 10485760 bytes",
    UNLIMITED_FUEL,
    5_000,
    64
)]
#[case::log_flood(
    "hostile/log-flood",
    "exceeded the log cap of 4096 bytes",
    2_000_000,
    5_000,
    8
)]
#[case::ungranted_import(
    "hostile/ungranted-import",
    "trapped calling `wasi:",
    2_000_000,
    5_000,
    8
)]
fn hostile_plugins_are_denied_and_the_gateway_keeps_serving(
    #[case] name: &str,
    #[case] cause: &str,
    #[case] fuel: u64,
    #[case] timeout_ms: u64,
    #[case] memory_mib: u64,
) {
    let policy = json!({"version": "1", "default": "allow",
        "plugins": {"hostile": {"path": plugin_path(name), "fuel": fuel, "timeout_ms": timeout_ms, "memory_mib": memory_mib}},
        "tools": {"crash": {"use": [{"plugin": "hostile"}]}}});
    // The plugin guards `crash`, which would kill the upstream if it ever got through.
    let mut client = Client::start_with(&policy.to_string(), &echo(), &[]);
    client.initialize();
    let calls = HOSTILE_CALLS;
    // Resident memory is sampled after every call of two windows, and each window's lowest
    // sample is compared: a leak raises every sample, while the gateway's transient buffers
    // (a hostile reason is 10 MiB) raise single ones, depending on when a sample falls.
    let (early, late) = (calls / 10..calls / 10 + WINDOW, calls - WINDOW..calls);
    let (mut baseline, mut last) = (u64::MAX, u64::MAX);
    for i in 0..calls {
        let result = client.call("crash", json!({}));
        let (text, meta) = refusal(&result);
        assert!(
            text.starts_with("[toolgate] deny: plugin `hostile` "),
            "{text}"
        );
        assert!(text.contains(cause), "{name}: {text}");
        assert_eq!(meta["rule"], "plugins.hostile");
        if early.contains(&i) {
            baseline = baseline.min(rss_kib(client.child.id()));
        }
        if late.contains(&i) {
            last = last.min(rss_kib(client.child.id()));
        }
        if i % 100 == 0 || i == calls - 1 {
            // The gateway still serves: a call that no plugin guards goes through.
            let plain = client.call("echo", json!({"message": format!("after {i}")}));
            assert_eq!(plain["content"][0]["text"], format!("after {i}"));
        }
    }
    let grown = last.saturating_sub(baseline);
    eprintln!("{name}: resident memory grew by {grown} KiB (from {baseline} KiB)");
    assert!(
        grown < 16 * 1024,
        "{name}: resident memory grew by {grown} KiB over {} calls",
        late.start - early.start
    );
    let (status, _) = client.finish();
    assert!(status.success());
}

#[test]
fn the_plugin_examples_load_and_enforce_their_rules() {
    plugins(); // builds the components where the examples expect them
    let gw = loader()
        .load(&root().join("examples/gw-id-check/policy.json"))
        .unwrap_or_else(|e| panic!("{e}"));
    let cap = loader()
        .load(&root().join("examples/rate-cap/policy.json"))
        .unwrap_or_else(|e| panic!("{e}"));
    let clock = ManualClock::starting_at(0);
    let counters: Arc<dyn CounterStore> = Arc::new(MemoryCounterStore::new(clock));
    let decide = |policy: &Policy, tool: &str, args: Value| {
        policy
            .decide(
                &ToolCall {
                    tool,
                    args: &args,
                    args_text: None,
                    grant: "g",
                    session: "s",
                    server: "",
                    annotations: None,
                },
                &counters,
            )
            .decision
    };
    let refused = decide(
        &gw,
        "codex_request",
        json!({"prompt": "p", "sessionId": "gw-1"}),
    );
    assert!(
        refused
            .reason
            .contains("Codex resume needs a real Codex UUID"),
        "{}",
        refused.reason
    );
    for _ in 0..30 {
        assert!(decide(&cap, "session_create", json!({"cli": "codex"})).is_allow());
    }
    assert_eq!(
        decide(&cap, "session_create", json!({"cli": "codex"})).verdict,
        Verdict::RateLimited
    );
}

#[test]
fn a_plugin_sees_the_whole_call_record_with_the_servers_name_and_the_tools_annotations() {
    let policy = json!({"version": "1", "default": "allow",
        "plugins": {"probe": {"path": plugin_path("probe")}},
        "tools": {"echo": {"use": [{"plugin": "probe"}]}, "crash": {"use": [{"plugin": "probe"}]}}});
    let mut client = Client::start_with(&policy.to_string(), &echo(), &["--grant", "probe-grant"]);
    client.initialize();
    // Before any tools/list the gateway knows no annotations.
    let (text, _) = refusal(&client.call("echo", json!({"message": "hi"})));
    assert!(
        text.contains(r#"tool=echo arguments={"message":"hi"} grant=probe-grant session="#),
        "{text}"
    );
    assert!(text.ends_with("server=mcp-echo annotations=none"), "{text}");
    client.request("tools/list", json!({}));
    let (text, _) = refusal(&client.call("echo", json!({"message": "hi"})));
    assert!(
        text.ends_with("server=mcp-echo annotations=readOnly=Some(true) destructive=None idempotent=Some(true) openWorld=Some(false)"),
        "{text}"
    );
    let (text, _) = refusal(&client.call("crash", json!({})));
    assert!(
        text.ends_with(
            "annotations=readOnly=None destructive=Some(true) idempotent=None openWorld=None"
        ),
        "{text}"
    );
    let (status, _) = client.finish();
    assert!(status.success());
}

/// A plugin is handed the arguments' text as the client wrote it (spacing, number spelling,
/// escapes: the bytes the upstream runs), not a copy written from the parsed value; where no
/// text came with the call (no `arguments`, or a decision made outside a session), the host
/// writes it from the value.
#[test]
fn a_plugin_sees_the_arguments_text_exactly_as_the_client_sent_it() {
    let policy = json!({"version": "1", "default": "allow",
        "plugins": {"probe": {"path": plugin_path("probe")}},
        "tools": {"echo": {"use": [{"plugin": "probe"}]}}});
    let mut client = Client::start(&policy.to_string(), &echo());
    client.initialize();
    let sent = r#"{ "message" : "hi",  "n": 1.0e2, "s": "\u0041", "list": [ 1,2 ] }"#;
    client.send_raw(
        format!(
            r#"{{"jsonrpc": "2.0", "id": 70, "method": "tools/call", "params": {{"name": "echo", "arguments": {sent}}}}}"#
        )
        .as_bytes(),
    );
    client.send_raw(b"\n");
    let (text, _) = refusal(&client.reply_to(&json!(70))["result"]);
    assert!(
        text.contains(&format!("tool=echo arguments={sent} grant=")),
        "{text}"
    );
    // No `arguments` member: the plugin sees `{}`, written by the host.
    let reply = client.request("tools/call", json!({"name": "echo"}));
    let (text, _) = refusal(&reply["result"]);
    assert!(text.contains("tool=echo arguments={} grant="), "{text}");
    let (status, _) = client.finish();
    assert!(status.success());
    // Outside a session (no raw text): the value, written out.
    let engine = Engine::new(policy);
    let args: Value = serde_json::from_str(sent).unwrap();
    let decision = engine.decide("echo", &args);
    assert!(
        decision
            .reason
            .contains(r#"arguments={"message":"hi","n":100.0,"s":"A","list":[1,2]} grant="#),
        "{}",
        decision.reason
    );
}

fn decide_as(
    policy: &Policy,
    counters: &Arc<dyn CounterStore>,
    grant: &str,
) -> toolgate::decision::Decision {
    let args = json!({});
    let call = ToolCall {
        tool: "echo",
        args: &args,
        args_text: None,
        grant,
        session: "s1",
        server: "",
        annotations: None,
    };
    policy.decide(&call, counters).decision
}

/// Every host import is bounded per evaluation, and a plugin past a bound is denied (its
/// units refunded) without the counter store keeping what it passed.
#[rstest]
#[case::names_at_the_cap("names 64", "")]
#[case::names_past_the_cap(
    "names 65",
    "called `counters.consume` more than 64 times in one evaluation"
)]
#[case::name_at_the_cap("long-name 256", "")]
#[case::name_past_the_cap("long-name 257", "a counter name of 257 bytes, over the 256-byte cap")]
#[case::name_of_30_mib(
    "long-name 31457280",
    "a counter name of 31457280 bytes, over the 256-byte cap"
)]
#[case::week_window("window 604800000", "")]
#[case::window_past_a_week(
    "window 604800001",
    "a window of 604800001 ms; a window is 1 ms to 7 days"
)]
#[case::empty_window("window 0", "a window of 0 ms")]
#[case::clock_at_the_cap("now 64", "")]
#[case::clock_past_the_cap("now 65", "called `clock.now-ms` more than 64 times in one evaluation")]
#[case::empty_logs_at_the_cap("log 64", "")]
#[case::empty_logs_past_the_cap("log 65", "called `log.log` more than 64 times in one evaluation")]
fn host_imports_are_bounded_per_evaluation(#[case] config: &str, #[case] refused: &str) {
    let clock = ManualClock::starting_at(1_700_000_000_000);
    let store = Arc::new(MemoryCounterStore::new(clock));
    let counters: Arc<dyn CounterStore> = store.clone();
    for isolation in ["fresh", "pooled"] {
        let policy = json!({"version": "1", "default": "deny",
            "plugins": {"flood": {"path": plugin_path("hostile/import-flood"), "isolation": isolation, "memory_mib": 96}},
            "tools": {"echo": {"use": [{"plugin": "flood", "config": config}]}}});
        let policy = loader()
            .from_json(&policy.to_string(), "flood.json")
            .unwrap_or_else(|e| panic!("{e}"));
        // Twice: a pooled instance that served a refused call is not reused in a bad state.
        for _ in 0..2 {
            let d = decide_as(&policy, &counters, "g1");
            if refused.is_empty() {
                assert!(d.is_allow(), "{config} ({isolation}): {}", d.reason);
            } else {
                assert_eq!(d.verdict, Verdict::Deny, "{config} ({isolation})");
                assert_eq!(d.rule, "plugins.flood");
                assert!(d.reason.starts_with("plugin `flood` "), "{}", d.reason);
                assert!(
                    d.reason.contains(refused),
                    "{config} ({isolation}): {}",
                    d.reason
                );
            }
        }
    }
    if config.starts_with("long-name") && !refused.is_empty() {
        assert!(
            store.is_empty(),
            "{config}: the store kept {} counters",
            store.len()
        );
    }
}

/// A pooled instance keeps its heap between calls, so it must never serve two grants: grants
/// that share a policy file would otherwise see (and steer) each other's plugin state.
#[test]
fn pooled_instances_are_never_shared_across_grants() {
    let policy = json!({"version": "1", "default": "deny",
        "plugins": {"remember": {"path": plugin_path("hostile/remember"), "isolation": "pooled"}},
        "tools": {"echo": {"use": [{"plugin": "remember"}]}}});
    let policy = loader()
        .from_json(&policy.to_string(), "remember.json")
        .unwrap_or_else(|e| panic!("{e}"));
    let clock = ManualClock::starting_at(0);
    let counters: Arc<dyn CounterStore> = Arc::new(MemoryCounterStore::new(clock));
    let said = |grant: &str| {
        let d = decide_as(&policy, &counters, grant);
        assert_eq!(d.verdict, Verdict::Deny);
        d.reason
    };
    let served = |grants: &str| format!("this instance served before: [{grants}]");
    assert_eq!(said("alice"), served(""));
    // Within a grant the instance is pooled: it remembers.
    assert_eq!(said("alice"), served("alice"));
    // Another grant gets an instance of its own, never alice's.
    assert_eq!(said("bob"), served(""));
    assert_eq!(said("bob"), served("bob"));
    assert_eq!(said("alice"), served("alice,alice"));
    // Many grants: each still only ever sees its own calls.
    for round in 0..3 {
        for i in 0..20 {
            let grant = format!("g{i}");
            let reason = said(&grant);
            let seen = reason
                .strip_prefix("this instance served before: [")
                .and_then(|r| r.strip_suffix(']'))
                .unwrap();
            assert!(
                seen.split(',')
                    .filter(|s| !s.is_empty())
                    .all(|s| s == grant),
                "round {round}, {grant}: {reason}"
            );
        }
    }
}

/// `toolgate run` in front of the echo server, with the compile cache in `cache` (an empty
/// value: off), `HOME` and `XDG_CACHE_HOME` under `home`, in `cwd`: the text `echo` got back
/// (`hi` if allowed) and the gateway's log.
fn run_with_cache(
    policy: &Value,
    cache: &std::ffi::OsStr,
    home: &Path,
    cwd: &Path,
) -> (String, String) {
    use std::io::{BufRead, BufReader, Read, Write};
    let file = home.join("policy.json");
    std::fs::write(&file, policy.to_string()).unwrap();
    let mut child = Command::new(TOOLGATE)
        .args(["run", "--policy"])
        .arg(&file)
        .arg("--")
        .args(echo())
        .env("TOOLGATE_CACHE_DIR", cache)
        .env("TOOLGATE_LOG", "toolgate=debug")
        .env("HOME", home)
        .env("XDG_CACHE_HOME", home.join("xdg"))
        .current_dir(cwd)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = err.read_to_string(&mut text);
        text
    });
    let mut stdin = child.stdin.take().unwrap();
    for message in [
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}}}),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "hi"}}}),
    ] {
        writeln!(stdin, "{message}").unwrap();
    }
    let reply = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(|line| serde_json::from_str::<Value>(&line.unwrap()).unwrap())
        .find(|reply| reply["id"] == 2)
        .expect("a reply to the call");
    drop(stdin);
    assert!(child.wait().unwrap().success());
    let text = reply["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("{reply}"))
        .to_owned();
    (text, log.join().unwrap())
}

/// gw-id-check allows `echo` (it names other tools); probe denies every call.
fn one_plugin(name: &str) -> Value {
    json!({"version": "1", "default": "deny",
        "plugins": {"p": {"path": plugin_path(name), "sha256": pinned(name)}},
        "tools": {"echo": {"use": [{"plugin": "p"}]}}})
}

fn cache_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

const COMPILED: &str = "compiled plugin";
const FROM_CACHE: &str = "loaded the plugin's compiled form from the cache";

#[test]
fn a_planted_cache_entry_is_not_used_and_is_rewritten() {
    let home = tempfile::tempdir().unwrap();
    let cache = home.path().join("cache");
    let run = |name: &str| {
        run_with_cache(
            &one_plugin(name),
            cache.as_os_str(),
            home.path(),
            home.path(),
        )
    };
    let (decision, log) = run("gw-id-check");
    assert_eq!(decision, "hi", "{log}");
    assert!(log.contains(COMPILED), "{log}");
    // The cache works: the next process loads the artifact instead of compiling.
    let (decision, log) = run("gw-id-check");
    assert_eq!(decision, "hi", "{log}");
    assert!(log.contains(FROM_CACHE) && !log.contains(COMPILED), "{log}");
    // Plant the allow-all artifact under the name of the deny-all plugin's entry.
    let (allow, deny) = (pinned("gw-id-check"), pinned("probe"));
    let planted_from = cache_entries(&cache)
        .into_iter()
        .find(|n| n.starts_with(&allow) && n.ends_with(".cwasm"))
        .expect("gw-id-check's entry");
    let planted = cache.join(planted_from.replacen(&allow, &deny, 1));
    std::fs::copy(cache.join(&planted_from), &planted).unwrap();
    let (decision, log) = run("probe");
    assert!(
        decision.starts_with("[toolgate] deny: tool=echo"),
        "the planted artifact decided: {decision}\n{log}"
    );
    assert!(log.contains("ignoring a plugin cache entry"), "{log}");
    assert!(log.contains(COMPILED), "{log}");
    // The entry was rewritten with probe's own artifact, which the next run trusts.
    let (decision, log) = run("probe");
    assert!(
        decision.starts_with("[toolgate] deny: tool=echo"),
        "{decision}"
    );
    assert!(
        log.contains(FROM_CACHE) && !log.contains("ignoring"),
        "{log}"
    );
}

#[test]
fn a_group_writable_cache_folder_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().unwrap();
    let cache = home.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o770)).unwrap();
    for _ in 0..2 {
        let (decision, log) = run_with_cache(
            &one_plugin("gw-id-check"),
            cache.as_os_str(),
            home.path(),
            home.path(),
        );
        assert_eq!(decision, "hi", "{log}");
        assert!(log.contains("not using the plugin cache"), "{log}");
        assert!(
            log.contains("has mode 770: group and others must have no access"),
            "{log}"
        );
        assert!(log.contains(COMPILED) && !log.contains(FROM_CACHE), "{log}");
        assert_eq!(cache_entries(&cache), Vec::<String>::new());
    }
}

#[test]
fn an_empty_cache_dir_setting_turns_the_cache_off() {
    let home = tempfile::tempdir().unwrap();
    let cwd = home.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    for _ in 0..2 {
        let (decision, log) =
            run_with_cache(&one_plugin("gw-id-check"), "".as_ref(), home.path(), &cwd);
        assert_eq!(decision, "hi", "{log}");
        assert!(log.contains(COMPILED) && !log.contains(FROM_CACHE), "{log}");
    }
    // Nothing written: not in the working directory, nor in the default places.
    assert_eq!(cache_entries(&cwd), Vec::<String>::new());
    assert_eq!(
        cache_entries(home.path()),
        vec!["cwd".to_owned(), "policy.json".to_owned()]
    );
}
