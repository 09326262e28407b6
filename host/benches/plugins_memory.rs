//! Memory (issue 22, target 5a): the resident memory of `toolgate run` with 10 distinct
//! plugins loaded, fresh and pooled mixed, after 20 calls to each, with an empty compile cache
//! (cold: the gateway compiles every plugin) and then from the cache it filled. Prints
//! `VmRSS` and where it sits (`/proc/PID/smaps`, grouped by mapping).
//!
//! Run: `cargo bench --profile release -p toolgate --bench plugins_memory` (it builds the
//! plugins first). Not criterion: one figure per start, `RUNS` starts each.

use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[path = "support/plugins.rs"]
mod plugins;

const TOOLGATE: &str = env!("CARGO_BIN_EXE_toolgate");
const PLUGINS: usize = 10;
const CALLS_EACH: usize = 20;
const RUNS: usize = 3;

/// Plugin `i`: gw-id-check for even `i`, rate-cap (a cap of `CALLS_EACH / 2`, so that half its
/// calls are refused: proof that it ran) for odd; fresh and pooled in pairs.
fn policy(dir: &Path) -> String {
    let (gw, cap) = (plugins::build("gw-id-check"), plugins::build("rate-cap"));
    let mut plugins = Map::new();
    let mut tools = Map::new();
    for i in 0..PLUGINS {
        let path = dir.join(format!("p{i}.wasm"));
        let (bytes, config) = match i % 2 {
            0 => (&gw, json!({})),
            _ => (
                &cap,
                json!({"counter": format!("c{i}"), "window": "minute", "max": CALLS_EACH / 2}),
            ),
        };
        std::fs::write(&path, plugins::variant(bytes, i as u64)).unwrap();
        let isolation = if (i / 2) % 2 == 0 { "fresh" } else { "pooled" };
        plugins.insert(
            format!("p{i}"),
            json!({"path": path, "isolation": isolation}),
        );
        tools.insert(
            format!("tool_{i}"),
            json!({"use": [{"plugin": format!("p{i}"), "config": config}]}),
        );
    }
    json!({"version": "1", "default": "allow", "plugins": plugins, "tools": tools}).to_string()
}

/// One start of the gateway: its `VmRSS` after the calls (KiB), and its smaps grouped.
fn measure(policy: &Path, cache: &Path) -> (u64, BTreeMap<String, u64>) {
    let mut child = Command::new(TOOLGATE)
        .arg("run")
        .arg("--policy")
        .arg(policy)
        .args(["--", TOOLGATE, "standin", "--echo"])
        .env("TOOLGATE_CACHE_DIR", cache)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut rpc = |id: usize, method: &str, params: Value| -> Value {
        let line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        writeln!(stdin, "{line}").unwrap();
        loop {
            let reply: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
            if reply["id"] == id {
                return reply;
            }
        }
    };
    rpc(
        1,
        "initialize",
        json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "mem", "version": "1"}}),
    );
    let mut refused = [0; PLUGINS];
    for round in 0..CALLS_EACH {
        for (i, refused) in refused.iter_mut().enumerate() {
            let args = match i % 2 {
                0 => json!({"sessionId": "0b6f8a52-6c1e-4d0b-9f3e-2a7c9d1e5b40"}),
                _ => json!({"cli": "codex"}),
            };
            let id = 100 + round * PLUGINS + i;
            let reply = rpc(
                id,
                "tools/call",
                json!({"name": format!("tool_{i}"), "arguments": args}),
            );
            *refused += reply.to_string().contains("[toolgate]") as usize;
        }
    }
    for (i, refused) in refused.iter().enumerate() {
        let expected = if i % 2 == 0 { 0 } else { CALLS_EACH / 2 };
        assert_eq!(*refused, expected, "plugin {i} did not decide as expected");
    }
    // Let the background thread finish preparing and tearing down instances.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let pid = child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    drop(stdin);
    child.wait().unwrap();
    (rss, grouped(&smaps))
}

/// Resident KiB per mapping: the file's name, or `anon <perms>`, `[heap]`, `[stack]`.
fn grouped(smaps: &str) -> BTreeMap<String, u64> {
    let mut groups = BTreeMap::new();
    let mut current = String::new();
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields
            .first()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            current = match fields.get(5) {
                Some(name) => name.rsplit('/').next().unwrap_or(name).to_owned(),
                None => format!("anon {}", fields[1]),
            };
        } else if fields.first() == Some(&"Rss:") {
            *groups.entry(current.clone()).or_default() += fields[1].parse::<u64>().unwrap();
        }
    }
    groups
}

fn main() {
    // `cargo bench` passes `--bench`; a filter has nothing to select here.
    let dir = tempfile::tempdir().unwrap();
    let policy_path: PathBuf = dir.path().join("policy.json");
    std::fs::write(&policy_path, policy(dir.path())).unwrap();
    for run in 0..RUNS {
        let cache = dir.path().join(format!("cache-{run}"));
        for state in ["cold", "cached"] {
            let (rss, groups) = measure(&policy_path, &cache);
            let mut top: Vec<_> = groups.into_iter().filter(|(_, kib)| *kib >= 256).collect();
            top.sort_by_key(|(_, kib)| std::cmp::Reverse(*kib));
            let top: Vec<String> = top.iter().map(|(k, v)| format!("{k} {v}")).collect();
            println!(
                "{PLUGINS} plugins, {state}: VmRSS {:.1} MiB ({rss} KiB); KiB by mapping: {}",
                rss as f64 / 1024.0,
                top.join(", ")
            );
        }
    }
}
