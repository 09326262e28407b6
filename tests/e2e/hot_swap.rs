//! Hot swap under live traffic: gateways (`toolgate run`, each with an admin socket) on a
//! policy and plugin files that the test rewrites while calls flow.

use crate::plugins::plugins;
use crate::support::{echo, refusal, standin, Client, TOOLGATE};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A gateway's status through `toolgate status`.
fn status(socket: &Path) -> Value {
    let out = Command::new(TOOLGATE)
        .args(["status", "--socket"])
        .arg(socket)
        .output()
        .unwrap();
    let answer: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    answer["status"].clone()
}

/// Waits (at most 10 s) until the gateway's status satisfies `done`.
fn wait_for(socket: &Path, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(socket);
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "waited 10 s for {what}: {s:#}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Replaces `path`'s content the way most editors and deploy tools do: a temp file renamed over.
fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Gateway {
    dir: tempfile::TempDir,
    socket: PathBuf,
    client: Client,
}

impl Gateway {
    fn start(policy: &Value, upstream: &[String]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy.json"), policy.to_string()).unwrap();
        Self::start_in(dir, upstream)
    }

    fn start_in(dir: tempfile::TempDir, upstream: &[String]) -> Self {
        let socket = dir.path().join("admin.sock");
        let mut client = Client::start_at(
            &dir.path().join("policy.json"),
            upstream,
            &["--admin-socket", socket.to_str().unwrap()],
        );
        client.initialize();
        wait_for(&socket, "the admin socket", |s| s["version"] == 1);
        Self {
            dir,
            socket,
            client,
        }
    }

    fn policy_path(&self) -> PathBuf {
        self.dir.path().join("policy.json")
    }
}

fn gw_policy(extra: Value) -> Value {
    let mut policy = json!({"version": "1", "default": "allow",
        "plugins": {"gw": {"path": "plugin.wasm"}},
        "tools": {"codex_request": {"use": [{"plugin": "gw", "config": {}}]}}});
    policy
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    policy
}

#[test]
fn broken_swaps_keep_the_last_good_set_serving_and_a_good_write_recovers() {
    let built = plugins();
    let good_plugin = std::fs::read(&built["gw-id-check"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("plugin.wasm"), &good_plugin).unwrap();
    std::fs::write(
        dir.path().join("policy.json"),
        gw_policy(json!({})).to_string(),
    )
    .unwrap();
    let mut gw = Gateway::start_in(dir, &standin());
    let policy = gw.policy_path();
    let plugin = gw.dir.path().join("plugin.wasm");
    let gw_refused = |client: &mut Client| {
        let result = client.call("codex_request", json!({"prompt": "p", "sessionId": "gw-1"}));
        let (text, _) = refusal(&result);
        assert!(
            text.contains("Codex resume needs a real Codex UUID"),
            "{text}"
        );
    };
    gw_refused(&mut gw.client);

    let wrong_world = std::fs::read(&built["hostile/wrong-world"]).unwrap();
    let edited = |edit: &dyn Fn(&mut Value)| {
        let mut bad = gw_policy(json!({}));
        edit(&mut bad);
        bad.to_string().into_bytes()
    };
    // (what, file, bytes, renamed over (else written in place), the cause status must show)
    let cases: Vec<(&str, &Path, Vec<u8>, bool, &str)> = vec![
        (
            "invalid JSON",
            &policy,
            b"{\"version\": \"1\", ".to_vec(),
            false,
            "invalid policy",
        ),
        (
            "a missing plugin",
            &policy,
            edited(&|b| b["plugins"]["gw"]["path"] = json!("missing.wasm")),
            true,
            "cannot read",
        ),
        (
            "a digest mismatch",
            &policy,
            edited(&|b| b["plugins"]["gw"]["sha256"] = json!("00".repeat(32))),
            true,
            "digest mismatch",
        ),
        (
            "a wasm file truncated mid-write",
            &plugin,
            good_plugin[..good_plugin.len() / 2].to_vec(),
            false,
            "not a usable plugin",
        ),
        (
            "a plugin of the wrong world",
            &plugin,
            wrong_world,
            true,
            "does not implement toolgate's `policy` world",
        ),
        (
            "a config the plugin's validate-config rejects",
            &policy,
            edited(&|b| b["tools"]["codex_request"]["use"][0]["config"] = json!({"typo": 1})),
            true,
            "rejects its config",
        ),
    ];
    for (i, (name, file, bytes, renamed, cause)) in cases.into_iter().enumerate() {
        let before = status(&gw.socket);
        if renamed {
            write_atomically(file, &bytes);
        } else {
            std::fs::write(file, &bytes).unwrap();
        }
        let failed = before["failed_reloads"].as_u64().unwrap();
        let s = wait_for(&gw.socket, name, |s| {
            s["failed_reloads"].as_u64().unwrap() > failed
        });
        let error = s["last_error"].as_str().unwrap_or_default();
        assert!(error.contains(cause), "{name}: {error}");
        assert_eq!(
            s["digest"], before["digest"],
            "{name}: the set changed: {before:#} {s:#}"
        );
        // The old set still serves.
        gw_refused(&mut gw.client);
        // A later good write recovers: plugin restored, policy renamed to make a new set.
        write_atomically(&plugin, &good_plugin);
        write_atomically(
            &policy,
            gw_policy(json!({"name": format!("good {i}")}))
                .to_string()
                .as_bytes(),
        );
        let version = before["version"].as_u64().unwrap();
        let s = wait_for(&gw.socket, "recovery", |s| {
            s["version"].as_u64().unwrap() > version && s["last_error"].is_null()
        });
        assert_ne!(s["digest"], before["digest"], "{name}");
        gw_refused(&mut gw.client);
    }
    let (status, _) = gw.client.finish();
    assert!(status.success());
}

#[test]
fn a_rate_cap_keeps_its_count_across_five_swaps_and_a_new_max_applies_at_once() {
    let policy = |name: &str, max: u32| {
        json!({"version": "1", "name": name, "default": "deny",
            "tools": {"session_create": {"limits": [{"counter": "creates", "window": "minute", "max": max}]}}})
    };
    let mut gw = Gateway::start(&policy("v0", 30), &standin());
    let path = gw.policy_path();
    let mut allowed = 0;
    for swap in 1..=5 {
        for _ in 0..6 {
            let result = gw.client.call("session_create", json!({"cli": "codex"}));
            assert!(result.get("isError").is_none(), "{result}");
            allowed += 1;
        }
        write_atomically(
            &path,
            policy(&format!("v{swap}"), 30).to_string().as_bytes(),
        );
        wait_for(&gw.socket, "the swap", |s| s["version"] == swap + 1);
    }
    assert_eq!(allowed, 30);
    let (text, meta) = refusal(&gw.client.call("session_create", json!({"cli": "codex"})));
    assert_eq!(meta["decision"], "rate_limited", "{text}");
    // Raising max takes effect from the next call, on the same count.
    write_atomically(&path, policy("v6", 31).to_string().as_bytes());
    wait_for(&gw.socket, "the raise", |s| s["version"] == 7);
    let result = gw.client.call("session_create", json!({"cli": "codex"}));
    assert!(result.get("isError").is_none(), "{result}");
    let (_, meta) = refusal(&gw.client.call("session_create", json!({"cli": "codex"})));
    assert_eq!(meta["decision"], "rate_limited");
    let (status, _) = gw.client.finish();
    assert!(status.success());
}

#[test]
fn an_atomic_rename_and_an_in_place_rewrite_both_reload() {
    let policy = |default: &str| json!({"version": "1", "default": default, "tools": {"echo": {}}});
    let mut gw = Gateway::start(&policy("deny"), &echo());
    let path = gw.policy_path();
    let unlisted = |client: &mut Client| client.call("crash", json!({}));
    let (text, _) = refusal(&unlisted(&mut gw.client));
    assert!(text.contains("unknown tool"));
    // Rename over: `crash` stays refused, but by an explicit deny now.
    let renamed = json!({"version": "1", "default": "allow", "tools": {"crash": {"action": "deny", "reason": "renamed in"}}});
    write_atomically(&path, renamed.to_string().as_bytes());
    wait_for(&gw.socket, "the renamed policy", |s| s["version"] == 2);
    let (text, _) = refusal(&unlisted(&mut gw.client));
    assert!(text.contains("renamed in"), "{text}");
    // In place (truncate and write, as `>` in a shell does).
    let in_place = json!({"version": "1", "default": "allow", "tools": {"crash": {"action": "deny", "reason": "written in place"}}});
    std::fs::write(&path, in_place.to_string()).unwrap();
    wait_for(&gw.socket, "the rewritten policy", |s| s["version"] == 3);
    let (text, _) = refusal(&unlisted(&mut gw.client));
    assert!(text.contains("written in place"), "{text}");
    // `toolgate reload` reloads too (nothing changed: no new version).
    let out = Command::new(TOOLGATE)
        .args(["reload", "--socket"])
        .arg(&gw.socket)
        .output()
        .unwrap();
    assert!(out.status.success());
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["changed"], false);
    let (status, _) = gw.client.finish();
    assert!(status.success());
}

/// 100 swaps of a plugin between an allowing and a denying version, under continuous load
/// from several sessions: no call fails, every decision is one of the two versions', and after
/// the last swap every call follows it.
#[test]
fn a_hundred_plugin_swaps_under_load_fail_no_call() {
    const SESSIONS: usize = 4;
    const SWAPS: usize = 100;
    let built = plugins();
    let allows = std::fs::read(&built["rate-cap"]).unwrap();
    let denies = std::fs::read(&built["probe"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("plugin.wasm");
    std::fs::write(&plugin, &allows).unwrap();
    // rate-cap with a max no test reaches allows every call; probe denies every call. Both
    // accept this config.
    let policy = json!({"version": "1", "default": "allow",
        "plugins": {"swapped": {"path": "plugin.wasm"}},
        "tools": {"echo": {"use": [{"plugin": "swapped", "config": {"counter": "c", "window": "minute", "max": 1_000_000_000}}]}}});
    std::fs::write(dir.path().join("policy.json"), policy.to_string()).unwrap();
    let policy_path = dir.path().join("policy.json");
    let mut gateways: Vec<(PathBuf, Client)> = (0..SESSIONS)
        .map(|i| {
            let socket = dir.path().join(format!("admin{i}.sock"));
            let mut client = Client::start_at(
                &policy_path,
                &echo(),
                &["--admin-socket", socket.to_str().unwrap()],
            );
            client.initialize();
            wait_for(&socket, "start", |s| s["version"] == 1);
            (socket, client)
        })
        .collect();
    let sockets: Vec<PathBuf> = gateways.iter().map(|(s, _)| s.clone()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = gateways
        .drain(..)
        .map(|(_, mut client)| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut allowed, mut denied) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let result = client.call("echo", json!({"message": "m"}));
                    if result.get("isError").is_none() {
                        assert_eq!(result["content"][0]["text"], "m", "{result}");
                        allowed += 1;
                    } else {
                        let (text, _) = refusal(&result);
                        assert!(
                            text.starts_with("[toolgate] deny: tool=echo arguments="),
                            "a decision from neither version: {text}"
                        );
                        denied += 1;
                    }
                }
                (client, allowed, denied)
            })
        })
        .collect();
    for swap in 1..=SWAPS {
        let bytes = if swap % 2 == 1 { &denies } else { &allows };
        write_atomically(&plugin, bytes);
        for socket in &sockets {
            wait_for(socket, "every gateway to swap", |s| {
                s["version"].as_u64() == Some(swap as u64 + 1)
            });
        }
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    for socket in &sockets {
        assert_eq!(status(socket)["failed_reloads"], 0);
    }
    let mut total = 0;
    for worker in workers {
        let (mut client, allowed, denied) = worker.join().expect("a call failed");
        total += allowed + denied;
        assert!(
            allowed > 0 && denied > 0,
            "allowed {allowed}, denied {denied}"
        );
        // After the last swap (to the allowing version) every call follows it.
        for _ in 0..20 {
            let result = client.call("echo", json!({"message": "after"}));
            assert_eq!(result["content"][0]["text"], "after", "{result}");
        }
        let (status, _) = client.finish();
        assert!(status.success());
    }
    eprintln!(
        "{total} calls in {elapsed:.1?} across {SESSIONS} sessions and {SWAPS} swaps: {:.0} calls/s",
        total as f64 / elapsed.as_secs_f64()
    );
}

#[test]
fn with_watching_off_sighup_and_toolgate_reload_still_reload() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.json");
    let policy = |reason: &str| {
        json!({"version": "1", "default": "allow", "tools": {"crash": {"action": "deny", "reason": reason}}})
            .to_string()
    };
    std::fs::write(&path, policy("v1")).unwrap();
    let socket = dir.path().join("admin.sock");
    let mut client = Client::start_at(
        &path,
        &echo(),
        &["--admin-socket", socket.to_str().unwrap(), "--no-watch"],
    );
    client.initialize();
    wait_for(&socket, "start", |s| s["version"] == 1);
    write_atomically(&path, policy("v2").as_bytes());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        status(&socket)["version"],
        1,
        "--no-watch reloaded on a write"
    );
    // SAFETY: kill(2) on the gateway child this test started and still owns.
    assert_eq!(
        unsafe { libc::kill(client.child.id() as i32, libc::SIGHUP) },
        0
    );
    wait_for(&socket, "SIGHUP", |s| s["version"] == 2);
    let (text, _) = refusal(&client.call("crash", json!({})));
    assert!(text.contains("v2"), "{text}");
    write_atomically(&path, policy("v3").as_bytes());
    let out = Command::new(TOOLGATE)
        .args(["reload", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["changed"], true, "{answer}");
    assert_eq!(answer["status"]["version"], 3, "{answer}");
    let (text, _) = refusal(&client.call("crash", json!({})));
    assert!(text.contains("v3"), "{text}");
    // A broken file through `toolgate reload`: exit 1 and the error, the old set serving.
    std::fs::write(&path, "{").unwrap();
    let out = Command::new(TOOLGATE)
        .args(["reload", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        answer["error"].as_str().unwrap().contains("invalid policy"),
        "{answer}"
    );
    let (text, _) = refusal(&client.call("crash", json!({})));
    assert!(text.contains("v3"), "{text}");
    let (status, _) = client.finish();
    assert!(status.success());
}

#[test]
fn ten_writes_in_a_burst_make_one_reload() {
    let policy = |n: u32| {
        json!({"version": "1", "default": "allow", "tools": {"crash": {"action": "deny", "reason": format!("write {n}")}}})
            .to_string()
    };
    let mut gw = Gateway::start(&serde_json::from_str(&policy(0)).unwrap(), &echo());
    let path = gw.policy_path();
    // A burst is writes less than the debounce (20 ms) apart. On a loaded machine this thread
    // can be descheduled between two writes for longer than that, which splits the burst:
    // each such gap may add one reload, and nothing else may.
    let mut gaps = 0;
    let mut last = std::time::Instant::now();
    for n in 1..=10 {
        std::fs::write(&path, policy(n)).unwrap();
        if n > 1 && last.elapsed() >= Duration::from_millis(20) {
            gaps += 1;
        }
        last = std::time::Instant::now();
    }
    wait_for(&gw.socket, "the reload", |s| {
        s["version"].as_u64() >= Some(2)
    });
    // Several debounce periods later, one reload per burst, the last of the last write.
    std::thread::sleep(Duration::from_millis(300));
    let s = status(&gw.socket);
    let reloads = s["reloads"].as_u64().unwrap();
    assert!(
        (1..=1 + gaps).contains(&reloads),
        "{gaps} gaps over 20 ms: {s:#}"
    );
    assert_eq!(s["failed_reloads"], 0, "{s:#}");
    let (text, _) = refusal(&gw.client.call("crash", json!({})));
    assert!(text.contains("write 10"), "{text}");
    let (status, _) = gw.client.finish();
    assert!(status.success());
}

#[test]
fn a_reload_does_not_set_off_another() {
    let gw = Gateway::start(&json!({"version": "1", "default": "allow"}), &echo());
    let denying = json!({"version": "1", "default": "deny"}).to_string();
    write_atomically(&gw.policy_path(), denying.as_bytes());
    wait_for(&gw.socket, "the reload", |s| s["version"] == 2);
    // The reload opened and read the file; many debounce periods later, it is still the only
    // reload (a reload's own read once set off the next one, 50 a second).
    std::thread::sleep(Duration::from_millis(500));
    let s = status(&gw.socket);
    assert_eq!(s["reloads"], 1, "{s:#}");
    let (status, _) = gw.client.finish();
    assert!(status.success());
}

/// `--admin-socket` on a path that holds a regular file refuses to start and leaves the file
/// alone (it used to delete any file there); a path that is free gets a socket only its owner
/// can use.
#[test]
fn the_admin_socket_never_replaces_a_file_and_only_its_owner_can_connect() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        json!({"version": "1", "default": "allow"}).to_string(),
    )
    .unwrap();
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "precious").unwrap();
    let out = Command::new(TOOLGATE)
        .arg("run")
        .arg("--policy")
        .arg(&policy)
        .arg("--admin-socket")
        .arg(&file)
        .arg("--")
        .args(echo())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is not a socket; refusing to replace it"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");

    let socket = dir.path().join("admin.sock");
    let mut client = Client::start_at(
        &policy,
        &echo(),
        &["--admin-socket", socket.to_str().unwrap()],
    );
    client.initialize();
    wait_for(&socket, "the admin socket", |s| s["version"] == 1);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::symlink_metadata(&socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // Another user, who can reach the directory, still cannot connect.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        use std::os::unix::process::CommandExt;
        let out = Command::new(TOOLGATE)
            .args(["status", "--socket"])
            .arg(&socket)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{stderr}");
        assert!(stderr.contains("Permission denied"), "{stderr}");
    }
}

/// A reload that weakens enforcement says so in the status (and the log), naming each change;
/// the next reload that does not clears it.
#[test]
fn a_reload_that_weakens_enforcement_is_shown_in_the_status() {
    let strict = json!({"version": "1", "default": "deny", "tools": {
        "echo": {"limits": [{"counter": "e", "window": "minute", "max": 5, "scope": "grant"}]},
        "crash": {"action": "deny"}}});
    let gw = Gateway::start(&strict, &echo());
    assert_eq!(status(&gw.socket)["weakened"], json!([]));
    let weaker = json!({"version": "1", "default": "deny", "tools": {
        "echo": {"limits": [{"counter": "e", "window": "minute", "max": 50, "scope": "grant"}]},
        "crash": {"action": "deny", "enforce": false}}});
    write_atomically(&gw.policy_path(), weaker.to_string().as_bytes());
    let s = wait_for(&gw.socket, "the reload", |s| s["version"] == 2);
    let mut weakened: Vec<&str> = s["weakened"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    weakened.sort_unstable();
    assert_eq!(
        weakened,
        [
            "`tools.echo` raised counter `e` from 5 per minute to 50 per minute",
            "rule `tools.crash` is now in shadow (`enforce: false`)"
        ],
        "{s:#}"
    );
    write_atomically(&gw.policy_path(), strict.to_string().as_bytes());
    let s = wait_for(&gw.socket, "the reload", |s| s["version"] == 3);
    assert_eq!(s["weakened"], json!([]), "{s:#}");
}
