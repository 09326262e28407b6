//! `toolgate catalog`, `toolgate init` and `toolgate check --against`, as a user runs them: on
//! the saved LLM CLI Gateway catalogues, then the policy `init` wrote in front of the
//! stand-in serving that catalogue.

use crate::support::{body, refusal, workspace, Client, TOOLGATE};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const V2_10: &str = "llm-cli-gateway-2.10.0.tools.json";
const V3_1: &str = "llm-cli-gateway-3.1.0-rc.8.tools.json";

fn fixture(name: &str) -> PathBuf {
    workspace().join("standin/fixtures").join(name)
}

fn toolgate(args: &[&str]) -> Output {
    Command::new(TOOLGATE).args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `toolgate init --tools <fixture> --out <dir>/policy.json`, checked to succeed.
fn init(fixture_name: &str, dir: &Path) -> PathBuf {
    let out = dir.join(format!("{fixture_name}.policy.json"));
    let tools = fixture(fixture_name);
    let made = toolgate(&[
        "init",
        "--tools",
        tools.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(made.status.success(), "{}", text(&made.stderr));
    out
}

#[rstest::rstest]
#[case::v2_10(V2_10, "46 tools: 20 read, 4 write, 22 destructive")]
#[case::v3_1(V3_1, "64 tools: 28 read, 7 write, 29 destructive")]
fn catalog_then_init_then_check(#[case] fixture_name: &str, #[case] counts: &str) {
    let tools = fixture(fixture_name);
    let listed = toolgate(&["catalog", "--tools", tools.to_str().unwrap()]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let table = text(&listed.stdout);
    assert!(table.contains(counts), "{table}");
    let session_create = table
        .lines()
        .find(|l| l.starts_with("session_create "))
        .unwrap();
    assert!(session_create.contains(" write "), "{session_create}");

    let json = toolgate(&["catalog", "--tools", tools.to_str().unwrap(), "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let session_delete = doc["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "session_delete")
        .unwrap();
    assert_eq!(session_delete["class"], "destructive");

    let dir = tempfile::tempdir().unwrap();
    let policy = init(fixture_name, dir.path());
    let checked = toolgate(&["check", policy.to_str().unwrap()]);
    assert!(checked.status.success(), "{}", text(&checked.stderr));
    assert_eq!(text(&checked.stdout), format!("{}: ok\n", policy.display()));

    // Without --force an existing file is kept.
    let again = toolgate(&[
        "init",
        "--tools",
        tools.to_str().unwrap(),
        "--out",
        policy.to_str().unwrap(),
    ]);
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again.stderr).contains("pass --force"));
}

#[test]
fn check_against_gates_ci_only_on_drift() {
    let dir = tempfile::tempdir().unwrap();
    let policy = init(V2_10, dir.path());
    let policy = policy.to_str().unwrap();
    let same = fixture(V2_10);
    let newer = fixture(V3_1);

    let clean = toolgate(&[
        "check",
        policy,
        "--against-tools",
        same.to_str().unwrap(),
        "--strict",
    ]);
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean.stdout));
    assert!(text(&clean.stdout).ends_with("no drift\n"));

    let drifted = toolgate(&[
        "check",
        policy,
        "--against-tools",
        newer.to_str().unwrap(),
        "--strict",
    ]);
    assert_eq!(drifted.status.code(), Some(1), "{}", text(&drifted.stderr));
    let report = text(&drifted.stdout);
    for heading in [
        "rules that decide no tool the server lists (1):\n  grok_api_request\n",
        "server tools no rule names (default: deny) (19):",
        "tools added since the policy's catalog (19):",
        "tools removed since the policy's catalog (1):\n  grok_api_request\n",
    ] {
        assert!(report.contains(heading), "{heading:?} not in\n{report}");
    }
    assert!(!report.contains("reclassified"), "{report}");

    // Without --strict drift is reported, and the exit is 0.
    let lenient = toolgate(&["check", policy, "--against-tools", newer.to_str().unwrap()]);
    assert_eq!(lenient.status.code(), Some(0));
    assert_eq!(text(&lenient.stdout), report);

    // A policy that does not load outranks drift, and the other files are still checked.
    let broken = dir.path().join("broken.json");
    std::fs::write(
        &broken,
        r#"{"version": "1", "tools": {"x": {"action": "perhaps"}}}"#,
    )
    .unwrap();
    let both = toolgate(&[
        "check",
        broken.to_str().unwrap(),
        policy,
        "--against-tools",
        newer.to_str().unwrap(),
        "--strict",
    ]);
    assert_eq!(both.status.code(), Some(2));
    assert_eq!(text(&both.stdout), report);

    // A serve config that cannot be read is an error that names it, not an empty catalogue.
    let config = toolgate(&["catalog", "--config", "no-such-toolgate.toml"]);
    assert_eq!(config.status.code(), Some(2));
    assert!(
        text(&config.stderr).contains("no-such-toolgate.toml"),
        "{}",
        text(&config.stderr)
    );

    // --strict with nothing to compare with is a usage error, not a silent pass.
    let nothing = toolgate(&["check", policy, "--strict"]);
    assert_eq!(nothing.status.code(), Some(2));
    assert!(text(&nothing.stderr).contains("--against-tools FILE"));
}

/// The stand-in serving a saved catalogue, as an upstream command.
fn standin_serving(fixture_name: &str) -> Vec<String> {
    vec![
        "env".into(),
        format!("STANDIN_CATALOGUE={}", fixture(fixture_name).display()),
        TOOLGATE.into(),
        "standin".into(),
    ]
}

#[rstest::rstest]
#[case::v2_10(V2_10, 46)]
#[case::v3_1(V3_1, 64)]
fn the_init_policy_in_front_of_the_server_limits_the_31st_session_create(
    #[case] fixture_name: &str,
    #[case] tools: usize,
) {
    let dir = tempfile::tempdir().unwrap();
    // `init` from the live server, as a user would run it: the same policy as from the
    // saved listing, plus what it learnt of the server.
    let policy = dir.path().join("live.json");
    let mut args = vec!["init", "--out", policy.to_str().unwrap(), "--"];
    let upstream = standin_serving(fixture_name);
    args.extend(upstream.iter().map(String::as_str));
    let made = toolgate(&args);
    assert!(made.status.success(), "{}", text(&made.stderr));
    let read = |path: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let (live, saved) = (read(&policy), read(&init(fixture_name, dir.path())));
    assert_eq!(live["tools"], saved["tools"]);
    assert_eq!(
        live["tools"]["session_clear_all"]["action"],
        "require_approval"
    );
    let checked = toolgate(&["check", policy.to_str().unwrap()]);
    assert!(checked.status.success(), "{}", text(&checked.stderr));
    let mut client = Client::start_at(&policy, &upstream, &[]);
    client.initialize();
    let listed = client.request("tools/list", json!({}));
    assert_eq!(
        listed["result"]["tools"].as_array().unwrap().len(),
        tools,
        "every tool has a rule, so every tool is listed"
    );
    let mut id = String::new();
    for i in 0..30 {
        let result = client.call("session_create", json!({"cli": "codex"}));
        assert!(result.get("isError").is_none(), "call {i}: {result}");
        id = body(&result)["session"]["id"].as_str().unwrap().to_owned();
    }
    let limited = client.call("session_create", json!({"cli": "codex"}));
    let (text, meta) = refusal(&limited);
    assert_eq!(meta["decision"], "rate_limited", "{text}");
    assert!(
        text.contains("counter session_create_rate allows 30 per minute"),
        "{text}"
    );
    // A read is not spent by the writes; a destructive tool waits for a person (none here).
    let read = client.call("session_get", json!({"sessionId": id}));
    assert!(read.get("isError").is_none(), "{read}");
    let delete = client.call("session_delete", json!({"sessionId": id}));
    assert_eq!(refusal(&delete).1["decision"], "require_approval");
    let (status, _) = client.finish();
    assert!(status.success());
}

#[test]
fn a_live_server_is_catalogued_initialised_and_checked() {
    let upstream = standin_serving(V3_1);
    let live = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.push("--");
        all.extend(upstream.iter().map(String::as_str));
        toolgate(&all)
    };
    let listed = live(&["catalog"]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    assert!(text(&listed.stdout).contains("64 tools: 28 read, 7 write, 29 destructive"));

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("live.json");
    let made = live(&["init", "--out", out.to_str().unwrap()]);
    assert!(made.status.success(), "{}", text(&made.stderr));
    let policy: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(
        policy["catalog"]["servers"]["upstream"],
        json!({"name": "llm-cli-gateway", "version": "3.1.0-rc.8"})
    );
    let clean = live(&["check", out.to_str().unwrap(), "--strict", "--against"]);
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean.stdout));

    let old = init(V2_10, dir.path());
    let drifted = live(&["check", old.to_str().unwrap(), "--strict", "--against"]);
    assert_eq!(drifted.status.code(), Some(1), "{}", text(&drifted.stderr));
    // The live 3.1.0-rc.8 server drifts from the 2.10.0 policy exactly as its saved listing
    // does (the lists the saved-listing test pins): all but the first line, which names the
    // source.
    let saved = toolgate(&[
        "check",
        old.to_str().unwrap(),
        "--against-tools",
        fixture(V3_1).to_str().unwrap(),
    ]);
    let body = |out: &std::process::Output| {
        text(&out.stdout)
            .split_once('\n')
            .map(|(_, rest)| rest.to_owned())
    };
    assert_eq!(body(&drifted), body(&saved));
    assert!(text(&drifted.stdout).contains("tools added since the policy's catalog (19):"));
}

/// A `serve` config's `[[upstreams]]`: every server listed, each tool under its namespaced name.
#[test]
fn a_serve_configs_whole_stack_is_catalogued() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("toolgate.toml");
    let words = |cmd: Vec<String>| serde_json::to_string(&cmd).unwrap();
    std::fs::write(
        &config,
        format!(
            "[[upstreams]]\nname = \"llmgw\"\ncommand = {}\n\n[[upstreams]]\nname = \"echo\"\nprefix = \"e\"\ncommand = {}\n",
            words(standin_serving(V2_10)),
            words(crate::support::echo()),
        ),
    )
    .unwrap();
    let listed = toolgate(&["catalog", "--json", "--config", config.to_str().unwrap()]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let catalog: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let names: Vec<&str> = catalog["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names.iter().filter(|n| n.starts_with("llmgw__")).count(),
        46
    );
    assert!(names.contains(&"e__echo"), "{names:?}");
    assert_eq!(
        names.len(),
        46 + 3,
        "the echo server has echo, crash and fail"
    );
    let made = toolgate(&["init", "--config", config.to_str().unwrap()]);
    assert!(made.status.success(), "{}", text(&made.stderr));
    let policy: serde_json::Value = serde_json::from_slice(&made.stdout).unwrap();
    assert_eq!(
        policy["tools"]["llmgw__session_create"]["limits"][0]["max"], 30,
        "{}",
        policy["tools"]["llmgw__session_create"]
    );
}
