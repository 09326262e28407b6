//! Sharing vetted plugins, as the gateway enforces it: a policy set whose plugin is signed and
//! satisfies the operator's trust file loads; every way of getting other bytes, another
//! manifest, fewer or worse signatures, or more capabilities past it is refused with a message
//! naming the cause, and on hot swap the old set keeps serving.
//!
//! The keys, signatures and trust file are made with the CLI (`toolgate plugin keygen`,
//! `sign`), as an operator would make them; the reload is the one `toolgate run` performs on a
//! file change or `SIGHUP` (`Reloadable::reload`).

use crate::plugins::plugins;
use crate::support::TOOLGATE;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use toolgate::manifest::{self, Manifest};
use toolgate::policy::Loader;
use toolgate::reload::{LivePolicy, Reloadable};

/// One plugin runtime for these tests, as a process has one.
fn loader() -> &'static Loader {
    static LOADER: OnceLock<Loader> = OnceLock::new();
    LOADER.get_or_init(|| Loader::from_env().with_trust(None))
}

fn toolgate(args: &[&str]) -> String {
    let out = Command::new(TOOLGATE).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "toolgate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A key pair made with `toolgate plugin keygen --unencrypted`; returns the secret key's path
/// and the public key's base64 line.
pub fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let base = dir.join(name);
    toolgate(&[
        "plugin",
        "keygen",
        "--out",
        base.to_str().unwrap(),
        "--unencrypted",
    ]);
    let public = std::fs::read_to_string(base.with_extension("pub")).unwrap();
    let line = public
        .lines()
        .find(|l| !l.starts_with("untrusted comment:") && !l.trim().is_empty())
        .unwrap()
        .trim()
        .to_owned();
    (base.with_extension("key"), line)
}

/// `toolgate plugin sign`; returns the signature's path (the last line it prints).
pub fn sign(component: &Path, key: &Path, role: &str, extra: &[&str]) -> PathBuf {
    let mut args = vec![
        "plugin",
        "sign",
        component.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--role",
        role,
    ];
    args.extend_from_slice(extra);
    PathBuf::from(toolgate(&args).lines().last().unwrap())
}

/// Keys of an author and three reviewers (and a stranger), and a trust file requiring the
/// author and two distinct reviewers other than the author.
struct Team {
    dir: tempfile::TempDir,
    author: PathBuf,
    reviewers: Vec<PathBuf>,
    stranger: PathBuf,
    public: Vec<String>,
}

impl Team {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (author, a) = keygen(dir.path(), "alice");
        let (r1, b) = keygen(dir.path(), "bob");
        let (r2, c) = keygen(dir.path(), "carol");
        let (stranger, _) = keygen(dir.path(), "mallory");
        let team = Self {
            dir,
            author,
            reviewers: vec![r1, r2],
            stranger,
            public: vec![a, b, c],
        };
        team.write_trust(&[]);
        team
    }

    fn trust_path(&self) -> PathBuf {
        self.dir.path().join("trust.toml")
    }

    fn write_trust(&self, revoked: &[&str]) {
        let [a, b, c] = &self.public[..] else {
            unreachable!()
        };
        let revoked: Vec<String> = revoked.iter().map(|k| format!("{k:?}")).collect();
        let text = format!(
            r#"default_rule = "team"
revoked = [{}]
[identities.alice]
keys = ["{a}"]
[identities.bob]
keys = ["{b}"]
[identities.carol]
keys = ["{c}"]
[rules.team]
require = [
  {{ role = "author", any_of = ["alice"] }},
  {{ role = "review", at_least = 2, any_of = ["alice", "bob", "carol"] }},
]
capabilities = ["counters", "log"]
"#,
            revoked.join(", ")
        );
        std::fs::write(self.trust_path(), text).unwrap();
    }

    /// Signs `component` as its author and both reviewers; returns the three signatures, in
    /// that order.
    fn sign_all(&self, component: &Path) -> Vec<PathBuf> {
        let mut made = vec![sign(component, &self.author, "author", &[])];
        for reviewer in &self.reviewers {
            made.push(sign(component, reviewer, "review", &[]));
        }
        made
    }
}

fn signatures(component: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = toolgate::trust::signatures_beside(component)
        .into_iter()
        .map(|s| PathBuf::from(s.origin))
        .collect();
    found.sort();
    found
}

/// A policy set in a temp folder: `policy.json` using `plugin.wasm` (a copy of a reference
/// plugin, signed by the whole team), loaded live with the team's trust file.
struct Set {
    dir: tempfile::TempDir,
    team: Team,
    live: Arc<LivePolicy>,
    /// The author's, then the two reviewers' signatures.
    signatures: Vec<PathBuf>,
}

impl Set {
    fn new(guest: &str, entry: Value) -> Self {
        let team = Team::new();
        let dir = tempfile::tempdir().unwrap();
        let component = dir.path().join("plugin.wasm");
        std::fs::copy(&plugins()[guest], &component).unwrap();
        let signatures = team.sign_all(&component);
        let mut plugin = json!({"path": "plugin.wasm"});
        plugin
            .as_object_mut()
            .unwrap()
            .extend(entry.as_object().unwrap().clone());
        let policy = json!({"version": "1", "default": "allow",
            "plugins": {"p": plugin},
            "all_tools": {"use": [{"plugin": "p", "config": config_for(guest)}]}});
        std::fs::write(dir.path().join("policy.json"), policy.to_string()).unwrap();
        let live = LivePolicy::load(
            &dir.path().join("policy.json"),
            loader().clone().with_trust(Some(team.trust_path())),
        )
        .unwrap_or_else(|e| panic!("the signed set must load: {e}"));
        Self {
            dir,
            team,
            live,
            signatures,
        }
    }

    fn component(&self) -> PathBuf {
        self.dir.path().join("plugin.wasm")
    }

    /// Reloads, expecting a refusal that names `cause`; the old set must still be active.
    fn refused(&self, what: &str, cause: &str) {
        let before = self.live.status().digest.clone();
        let error = self
            .live
            .reload("test")
            .err()
            .unwrap_or_else(|| panic!("{what}: the reload was accepted"))
            .to_string();
        assert!(error.contains(cause), "{what}: `{cause}` not in:\n{error}");
        assert_eq!(self.live.status().digest, before, "{what}: the set changed");
        assert!(
            self.live.status().last_error.is_some(),
            "{what}: the failure is not recorded"
        );
    }

    fn accepted(&self, what: &str) {
        self.live
            .reload("test")
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
}

fn config_for(guest: &str) -> Value {
    match guest {
        "rate-cap" => {
            json!({"counter": "sessions", "max": 2, "window": "minute", "scope": "grant"})
        }
        _ => json!({}),
    }
}

fn manifest_of(path: &Path) -> Manifest {
    Manifest::read(&std::fs::read(path).unwrap()).unwrap()
}

/// Rewrites `path` with `manifest` embedded in place of its own.
fn rewrite_manifest(path: &Path, edit: impl FnOnce(&mut Manifest)) {
    let bytes = std::fs::read(path).unwrap();
    let mut manifest = Manifest::read(&bytes).unwrap();
    edit(&mut manifest);
    std::fs::write(path, manifest::embed(&bytes, &manifest).unwrap()).unwrap();
}

#[test]
fn every_way_around_the_trust_file_is_refused_and_the_old_set_keeps_serving() {
    let set = Set::new("gw-id-check", json!({"grants": ["log"]}));
    let component = set.component();
    let good = std::fs::read(&component).unwrap();
    let sigs = set.signatures.clone();
    assert_eq!(signatures(&component), {
        let mut all = sigs.clone();
        all.sort();
        all
    });
    let saved: Vec<(PathBuf, Vec<u8>)> = sigs
        .iter()
        .map(|p| (p.clone(), std::fs::read(p).unwrap()))
        .collect();
    let restore = || {
        std::fs::write(&component, &good).unwrap();
        for path in signatures(&component) {
            std::fs::remove_file(path).unwrap();
        }
        for (path, bytes) in &saved {
            std::fs::write(path, bytes).unwrap();
        }
        set.team.write_trust(&[]);
    };

    // A flipped byte in the guest's code (a string it compares against), the wasm still valid.
    let mut flipped = good.clone();
    let at = flipped
        .windows(3)
        .position(|w| w == b"gw-")
        .expect("gw-id-check holds the `gw-` prefix");
    flipped[at] ^= 0x20;
    std::fs::write(&component, &flipped).unwrap();
    set.refused("a flipped byte", "does not satisfy rule `team`");
    restore();

    rewrite_manifest(&component, |m| m.version = "9.9.9".into());
    set.refused("a changed manifest field", "does not satisfy rule `team`");
    restore();

    std::fs::remove_file(&sigs[2]).unwrap();
    set.refused("a removed signature", "1 found");
    restore();

    std::fs::remove_file(&sigs[2]).unwrap();
    sign(&component, &set.team.stranger, "review", &[]);
    set.refused("a signature by an unknown key", "1 found");
    restore();

    set.team.write_trust(&[&set.team.public[2]]);
    set.refused("a revoked key", "1 found");
    restore();

    // A valid signature, by a trusted reviewer, over another component's bytes.
    let other = set.dir.path().join("other.wasm");
    std::fs::copy(&plugins()["rate-cap"], &other).unwrap();
    let foreign = sign(&other, &set.team.reviewers[1], "review", &[]);
    std::fs::remove_file(&sigs[2]).unwrap();
    std::fs::copy(&foreign, component.with_extension("wasm.foreign.minisig")).unwrap();
    set.refused("a signature over another digest", "1 found");
    restore();

    std::fs::remove_file(&sigs[2]).unwrap();
    sign(
        &component,
        &set.team.reviewers[1],
        "review",
        &["--expires", "2020-01-01"],
    );
    set.refused("an expired signature", "expired");
    restore();

    // The author's own review does not count towards the reviewers (signing again with the
    // same key replaces its file: keep the author signature under another name).
    std::fs::rename(&sigs[0], component.with_extension("wasm.by-author.minisig")).unwrap();
    std::fs::remove_file(&sigs[2]).unwrap();
    sign(&component, &set.team.author, "review", &[]);
    set.refused("a review by the author", "1 found");
    restore();

    // After all that, the untouched set reloads (nothing changed) and still enforces.
    set.accepted("the restored set");
    let policy = set.live.current();
    assert_eq!(
        policy.plugins()[0].digest(),
        toolgate::digest::sha256_hex(&good)
    );
}

#[test]
fn capabilities_are_granted_at_link_time_and_must_match_the_manifest() {
    // rate-cap imports `counters` (and `log`); granting only `log` stops the load, naming the
    // import and the line to write.
    let error = LivePolicy::load(
        &write_policy("rate-cap", json!({"grants": ["log"]})),
        loader().clone(),
    )
    .err()
    .expect("rate-cap without `counters` must not load")
    .to_string();
    assert!(error.contains("toolgate:policy/counters"), "{error}");
    assert!(error.contains(r#""grants": ["counters","log"]"#), "{error}");

    // The same plugin with both granted loads.
    LivePolicy::load(
        &write_policy("rate-cap", json!({"grants": ["counters", "log"]})),
        loader().clone(),
    )
    .unwrap_or_else(|e| panic!("{e}"));

    // A manifest claiming fewer capabilities than the component imports.
    let policy = write_policy("rate-cap", json!({}));
    let component = policy.parent().unwrap().join("plugin.wasm");
    rewrite_manifest(&component, |m| m.capabilities.clear());
    let error = LivePolicy::load(&policy, loader().clone())
        .err()
        .expect("a manifest that lies about its imports must not load")
        .to_string();
    assert!(error.contains("capabilit"), "{error}");

    // A manifest naming another world than the component's (0.1.0) imports name.
    let policy = write_policy("rate-cap", json!({}));
    let component = policy.parent().unwrap().join("plugin.wasm");
    rewrite_manifest(&component, |m| {
        m.world = "toolgate:policy/policy@0.2.0".into()
    });
    let error = LivePolicy::load(&policy, loader().clone())
        .err()
        .expect("an unsupported world must not load")
        .to_string();
    assert!(error.contains("0.2.0"), "{error}");
    assert_eq!(
        manifest_of(&plugins()["rate-cap"]).world,
        toolgate::capability::World::V0_1.name()
    );
}

/// A policy in a new temp folder (kept for the test run) using a copy of `guest` as
/// `plugin.wasm`, with `entry` merged into its plugin entry.
fn write_policy(guest: &str, entry: Value) -> PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::copy(&plugins()[guest], dir.join("plugin.wasm")).unwrap();
    let mut plugin = json!({"path": "plugin.wasm"});
    plugin
        .as_object_mut()
        .unwrap()
        .extend(entry.as_object().unwrap().clone());
    let policy = json!({"version": "1", "default": "allow", "plugins": {"p": plugin},
        "all_tools": {"use": [{"plugin": "p", "config": config_for(guest)}]}});
    std::fs::write(dir.join("policy.json"), policy.to_string()).unwrap();
    dir.join("policy.json")
}

/// The whole way a plugin travels, as its users run it: `plugin new` → `build` → `toolgate
/// test` → `keygen` → `sign` (author, then two reviewers) → `push` to a real registry →
/// `pull` into an empty store → a policy entry by `ref` and `sha256` → enforced on live
/// traffic with `--trust`; then `save` → `load` into another empty store with the registry
/// stopped, where the same policy still loads.
#[test]
fn a_plugin_travels_from_new_to_live_traffic_through_a_registry_and_a_bundle() {
    use crate::registry::Registry;
    use crate::support::{refusal, standin, Client};
    let Some(mut registry) = Registry::start() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let run = |args: &[&str], env: &[(&str, &Path)]| {
        let out = Command::new(TOOLGATE)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "toolgate {args:?}:\n{text}");
        String::from_utf8(out.stdout).unwrap()
    };
    let last = |out: String| out.lines().last().unwrap().to_owned();

    // Author: a new crate builds outside the repository and passes its own cases.
    let made = last(run(
        &[
            "plugin",
            "new",
            "no-deletes",
            "--dir",
            work.path().to_str().unwrap(),
        ],
        &[],
    ));
    let component = PathBuf::from(last(run(&["plugin", "build", &made], &[])));
    let out = run(&["test", &made, "--coverage", "--fail-under", "100"], &[]);
    assert!(out.contains("2 passed, 0 failed"), "{out}");

    // Vouching: the author and two reviewers sign; the operator trusts the three.
    let team = Team::new();
    team.sign_all(&component);
    let out = run(
        &[
            "plugin",
            "verify",
            component.to_str().unwrap(),
            "--trust",
            team.trust_path().to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.contains("satisfied"), "{out}");

    // Distribution: push, then pull into an empty store, by the digest the author announced.
    let sha256 = toolgate::digest::sha256_hex(&std::fs::read(&component).unwrap());
    let reference = format!("oci://{}/team/no-deletes:0.1.0", registry.addr);
    run(
        &["plugin", "push", component.to_str().unwrap(), &reference],
        &[],
    );
    let store = work.path().join("store");
    let entry: Value = serde_json::from_str(&last(run(
        &["plugin", "pull", &reference, "--sha256", &sha256],
        &[("TOOLGATE_STORE", &store)],
    )))
    .unwrap();
    assert_eq!(entry["sha256"], sha256.as_str(), "{entry}");
    let inspect = run(
        &[
            "plugin",
            "inspect",
            &sha256,
            "--trust",
            team.trust_path().to_str().unwrap(),
            "--json",
        ],
        &[("TOOLGATE_STORE", &store)],
    );
    let inspect: Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(inspect["manifest"]["name"], "no-deletes", "{inspect:#}");
    assert_eq!(
        inspect["signatures"].as_array().unwrap().len(),
        3,
        "{inspect:#}"
    );
    assert_eq!(
        inspect["trust"]["rules"][0]["satisfied"], true,
        "{inspect:#}"
    );

    // The operator's policy names it by ref and sha256 only: no path, no network.
    let mut plugin = entry.clone();
    plugin["grants"] = json!([]);
    let policy = json!({"version": "1", "default": "allow",
        "plugins": {"no-deletes": plugin},
        "all_tools": {"use": [{"plugin": "no-deletes"}]}});
    let policy_path = work.path().join("policy.json");
    std::fs::write(&policy_path, policy.to_string()).unwrap();
    let trust = team.trust_path();
    let operator = [
        "--trust",
        trust.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
    ];
    let mut client = Client::start_at(&policy_path, &standin(), &operator);
    client.initialize();
    let (text, _) = refusal(&client.call("session_delete", json!({"session_id": "x"})));
    assert!(text.contains("session_delete is off limits"), "{text}");
    let listed = client.call("session_list", json!({}));
    assert!(listed["result"]["isError"] != true, "{listed}");
    drop(client);

    // Air gap: save, stop the registry, load into another empty store: the policy loads.
    let bundle = work.path().join("bundle.tar");
    run(
        &["plugin", "save", &sha256, "-o", bundle.to_str().unwrap()],
        &[("TOOLGATE_STORE", &store)],
    );
    registry.stop();
    let other = work.path().join("other-store");
    run(
        &["plugin", "load", bundle.to_str().unwrap()],
        &[("TOOLGATE_STORE", &other)],
    );
    let mut check = vec!["check", policy_path.to_str().unwrap()];
    check.extend_from_slice(&operator[..2]);
    check.extend_from_slice(&["--store", other.to_str().unwrap()]);
    let out = run(&check, &[]);
    assert!(out.contains(": ok"), "{out}");
}

/// One decision of the live set on a call gw-id-check allows.
fn decide(live: &LivePolicy) -> toolgate::decision::Decision {
    use toolgate::clock::ManualClock;
    use toolgate::counters::{CounterStore, MemoryCounterStore};
    let counters: Arc<dyn CounterStore> = Arc::new(MemoryCounterStore::new(
        ManualClock::starting_at(1_700_000_000_000),
    ));
    let args = json!({});
    let call = toolgate::call::ToolCall {
        tool: "session_list",
        args: &args,
        args_text: None,
        grant: "g",
        session: "s",
        server: "",
        annotations: None,
    };
    live.current().decide(&call, &counters).decision
}

/// A revoked key stops a plugin already serving, though the failed reload keeps the old set;
/// and a signature that expires while it serves stops it too, without any reload.
#[test]
fn revocation_and_expiry_withdraw_a_running_plugin() {
    let set = Set::new("gw-id-check", json!({"grants": []}));
    assert!(decide(&set.live).is_allow());
    set.team.write_trust(&[&set.team.public[2]]);
    set.refused("a revoked key", "1 found");
    let d = decide(&set.live);
    assert!(!d.is_allow(), "the revoked plugin still decides: {d:?}");
    assert!(
        d.reason.contains("no longer satisfies rule `team`"),
        "{}",
        d.reason
    );
    // Restoring the trust file and reloading loads a new, trusted set.
    set.team.write_trust(&[]);
    set.live.reload("test").unwrap();
    assert!(decide(&set.live).is_allow());

    // A reviewer's signature that expires in two seconds, the other reviewer's removed.
    let expiring = Set::new("gw-id-check", json!({"grants": []}));
    std::fs::remove_file(&expiring.signatures[2]).unwrap();
    let at = chrono::Utc::now() + chrono::Duration::seconds(2);
    let at = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    sign(
        &expiring.component(),
        &expiring.team.reviewers[1],
        "review",
        &["--expires", &at],
    );
    expiring.live.reload("test").unwrap();
    assert!(decide(&expiring.live).is_allow());
    std::thread::sleep(std::time::Duration::from_millis(3100));
    let d = decide(&expiring.live);
    assert!(!d.is_allow(), "an expired vouching still decides: {d:?}");
    assert!(d.reason.contains("no longer satisfies"), "{}", d.reason);
}
