//! What `toolgate run` adds to a stdio MCP round trip, against the floor of any stdio proxy.
//!
//! Three setups run side by side in one process, each a real child process on real pipes:
//! - **direct**: the client talks to the echo server (`toolgate standin --echo`);
//! - **relay**: through a bare byte relay (two threads copying bytes, no parsing);
//! - **toolgate**: through `toolgate run` with a policy that evaluates a rule and a counter;
//! - **toolgate-bare**: through `toolgate run` with `{"default": "allow"}`, no rule at all, to
//!   split the cost of routing from the cost of the policy.
//!
//! - **observed**: **toolgate** with the decision log (a file) and metrics on, at defaults;
//! - **toolgate-again**: a second **toolgate**, the same in every way: how far two identical
//!   gateways' medians drift apart in one run is the floor under any comparison of two setups.
//! - **relay-parse**: the relay, parsing each message as JSON both ways (into a
//!   `serde_json::Value`) and forwarding its bytes unchanged: the floor of any gateway that
//!   reads what it forwards, which a policy gateway must.
//!
//! Every process runs from a copy of its binary of its own (`support/copies.rs`), so that no
//! setup's code is warmed by another's: every setup's echo server is toolgate too.
//!
//! Calls are interleaved (one call to each setup per round, each round in a new random order) so
//! that all see the same machine state, and the medians are compared: toolgate's added latency over the relay's.
//! Beside latency, each gateway's CPU time per call, from the kernel's per-thread run time
//! (`/proc/PID/task/*/schedstat`, nanoseconds): it does not move with the scheduler's
//! placement the way latency does, and it says on which threads the time went.
//!
//! Run: `cargo bench -p toolgate --bench stdio_overhead` (`-- --calls N` to change 10 000).
//! `TOOLGATE_BASELINE=/path/to/toolgate` adds another build as an eighth setup, **baseline**
//! (toolgate's policy and flags), for A/B comparisons in one interleaved run, and
//! `TOOLGATE_BINARY` replaces the gateways' own build (cargo builds it with the
//! dev-dependencies' features, so the PGO profile in `pgo/` does not match it).

use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support/copies.rs"]
mod copies;

const TOOLGATE: &str = env!("CARGO_BIN_EXE_toolgate");

const POLICY: &str = r#"{"version": "1", "default": "deny", "tools": {"echo": {
    "deny_if": [{"path": "args.message", "op": "contains", "value": "forbidden"}],
    "limits": [{"counter": "echo_rate", "window": "minute", "max": 10000000, "scope": "grant"}]}}}"#;

struct Peer {
    name: &'static str,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    samples: Vec<Duration>,
    line: String,
}

impl Peer {
    fn start(name: &'static str, program: &str, args: &[&str]) -> Self {
        let mut child = Command::new(program)
            .args(args)
            // The default log level, as a user gets it (the harness used `warn` until
            // 2026-12-02, which hid a stderr line per call).
            .env_remove("TOOLGATE_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (stdin, stdout) = (
            child.stdin.take().unwrap(),
            BufReader::new(child.stdout.take().unwrap()),
        );
        let mut peer = Self {
            name,
            child,
            stdin,
            stdout,
            samples: Vec::new(),
            line: String::new(),
        };
        peer.round_trip(&json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}})
        .to_string());
        writeln!(
            peer.stdin,
            r#"{{"jsonrpc":"2.0","method":"notifications/initialized"}}"#
        )
        .unwrap();
        peer
    }

    /// Sends one line and reads one reply line; returns the reply. The line goes in one
    /// write, as MCP clients send it: written in two (the text, then its newline), a byte
    /// relay would pass on two writes and wake the server twice, a cost of the client's.
    fn round_trip(&mut self, request: &str) -> &str {
        let mut line = Vec::with_capacity(request.len() + 1);
        line.extend_from_slice(request.as_bytes());
        line.push(b'\n');
        self.stdin.write_all(&line).unwrap();
        self.stdin.flush().unwrap();
        self.line.clear();
        self.stdout.read_line(&mut self.line).unwrap();
        &self.line
    }

    fn timed_call(&mut self, id: u64) {
        let request = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"message":"call {id}"}}}}}}"#
        );
        let start = Instant::now();
        let name = self.name;
        let reply = self.round_trip(&request);
        let elapsed = start.elapsed();
        assert!(
            reply.contains(&format!("\"call {id}\"")),
            "{name}: unexpected reply {reply}"
        );
        self.samples.push(elapsed);
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    // Relay mode: this binary re-executed as the byte relay in front of the echo server.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("relay") {
        std::process::exit(toolgate_standin::relay::run(&args[2..]).unwrap());
    }
    if args.get(1).map(String::as_str) == Some("relay-parse") {
        std::process::exit(toolgate_standin::relay::run_parsing(&args[2..]).unwrap());
    }
    if args.iter().any(|a| a == "--list") {
        return; // `cargo bench -- --list` compatibility
    }
    let calls: u64 = args
        .iter()
        .position(|a| a == "--calls")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, POLICY).unwrap();
    let bare = dir.path().join("bare.json");
    std::fs::write(&bare, r#"{"version": "1", "default": "allow"}"#).unwrap();
    let bare = bare.to_str().unwrap();
    let me = std::env::current_exe().unwrap();
    let me = me.to_str().unwrap();
    let policy = policy.to_str().unwrap();
    // The log in a directory of its own: every gateway watches its policy's directory, and
    // a log written beside the policy would wake all their watchers on every flush.
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("decisions.jsonl");
    let log = log.to_str().unwrap();
    // Every process from a copy of its binary of its own (`support/copies.rs`): from one
    // file, toolgate's processes (and every path's echo upstream) warmed each other's code.
    // Not beside the policy either: each copy written there would wake the watchers.
    let bins = tempfile::tempdir().unwrap();
    let copy = |binary: &str| {
        copies::own_copy(binary, bins.path())
            .to_string_lossy()
            .into_owned()
    };
    // The toolgate measured: `TOOLGATE_BINARY`, or the one cargo built beside this bench (whose
    // symbols, built with the dev-dependencies' features, the PGO profile does not match).
    let gateway_binary = std::env::var_os("TOOLGATE_BINARY")
        .map_or_else(|| TOOLGATE.into(), |b| b.to_string_lossy().into_owned());
    // `toolgate run` from `binary` with `policy` and `flags`, in front of the echo server.
    let run_from = |binary: &str, name: &'static str, policy: &str, flags: &[&str]| {
        let upstream = copy(TOOLGATE);
        let mut args = vec!["run", "--policy", policy];
        args.extend_from_slice(flags);
        args.extend(["--", upstream.as_str(), "standin", "--echo"]);
        Peer::start(name, &copy(binary), &args)
    };
    let gateway = |name, policy, flags| run_from(&gateway_binary, name, policy, flags);
    let mut peers = vec![
        Peer::start("direct", &copy(TOOLGATE), &["standin", "--echo"]),
        Peer::start(
            "relay",
            &copy(me),
            &["relay", &copy(TOOLGATE), "standin", "--echo"],
        ),
        gateway("toolgate-bare", bare, &[]),
        gateway("toolgate", policy, &[]),
        // The same, observed at default settings: the decision log (a file) and metrics.
        gateway(
            "observed",
            policy,
            &["--decision-log", log, "--metrics-listen", "127.0.0.1:0"],
        ),
        gateway("toolgate-again", policy, &[]),
        Peer::start(
            "relay-parse",
            &copy(me),
            &["relay-parse", &copy(TOOLGATE), "standin", "--echo"],
        ),
    ];
    // Another build of toolgate as an eighth path, for A/B comparisons in one run (and to
    // train a PGO build: `scripts/pgo-build`).
    if let Ok(binary) = std::env::var("TOOLGATE_BASELINE") {
        peers.push(run_from(&binary, "baseline", policy, &[]));
    }
    // Warm up every path (page cache, branch predictors, allocator) before measuring.
    for id in 1..=500 {
        peers.iter_mut().for_each(|p| p.timed_call(id));
    }
    peers.iter_mut().for_each(|p| p.samples.clear());
    let cpu_before: Vec<_> = peers.iter().map(|p| cpu_by_thread(p.child.id())).collect();
    // Each round in a new order (shuffled, with a fixed seed): the slot in the round moved a
    // gateway's median by up to 1.6x in a first version, and a rotation still left each setup
    // the same one before it, which put two identical gateways 5-9% apart in every run.
    let n = peers.len();
    let mut rng = fastrand::Rng::with_seed(22);
    let mut order: Vec<usize> = (0..n).collect();
    for id in 1..=calls {
        rng.shuffle(&mut order);
        for &k in &order {
            peers[k].timed_call(1000 + id);
        }
    }
    let cpu_after: Vec<_> = peers.iter().map(|p| cpu_by_thread(p.child.id())).collect();
    let mut medians = Vec::new();
    println!("stdio round trips: {calls} sequential tools/call per setup, interleaved\n");
    println!(
        "{:<10} {:>10} {:>10} {:>10}",
        "setup", "p50 µs", "p90 µs", "p99 µs"
    );
    for peer in peers.iter_mut() {
        peer.samples.sort();
        let s = &peer.samples;
        println!(
            "{:<10} {:>10.1} {:>10.1} {:>10.1}",
            peer.name,
            micros(percentile(s, 0.5)),
            micros(percentile(s, 0.9)),
            micros(percentile(s, 0.99))
        );
        medians.push(micros(percentile(s, 0.5)));
    }
    let relay_added = medians[1] - medians[0];
    let bare_added = medians[2] - medians[0];
    let toolgate_added = medians[3] - medians[0];
    println!(
        "\nadded over direct (medians): relay {relay_added:.1} µs, toolgate-bare {bare_added:.1} µs, toolgate {toolgate_added:.1} µs"
    );
    println!(
        "toolgate / relay added latency: {:.2}x (target <= 1.25x)",
        toolgate_added / relay_added
    );
    let observed_added = medians[4] - medians[0];
    println!(
        "decision log + metrics: {observed_added:.1} µs added, {:.3}x toolgate's (target <= 1.05x)",
        observed_added / toolgate_added
    );
    let again_added = medians[5] - medians[0];
    println!(
        "control: toolgate-again adds {again_added:.1} µs, {:.3}x toolgate's (two identical gateways)",
        again_added / toolgate_added
    );
    let parse_added = medians[6] - medians[0];
    println!(
        "floor: relay-parse (the relay, parsing each message both ways) adds {parse_added:.1} µs, {:.2}x the relay's",
        parse_added / relay_added
    );
    if let Some(baseline) = medians.get(7) {
        let added = baseline - medians[0];
        println!(
            "A/B: baseline toolgate adds {added:.1} µs, {:.2}x the relay's",
            added / relay_added
        );
    }
    println!("\nCPU per call in each gateway process, by thread (µs, from schedstat):");
    for (i, peer) in peers.iter().enumerate().skip(2) {
        let mut threads: Vec<(String, f64)> = cpu_after[i]
            .iter()
            .map(|(name, ns)| {
                let before = cpu_before[i].get(name).copied().unwrap_or(0);
                (name.clone(), (ns - before) as f64 / 1000.0 / calls as f64)
            })
            .filter(|(_, us)| *us >= 0.05)
            .collect();
        threads.sort_by(|a, b| b.1.total_cmp(&a.1));
        let total: f64 = threads.iter().map(|(_, us)| us).sum();
        let parts: Vec<String> = threads
            .iter()
            .map(|(name, us)| format!("{name} {us:.2}"))
            .collect();
        println!("{:<15} {total:>7.2}  ({})", peer.name, parts.join(", "));
    }
    for mut peer in peers {
        drop(peer.stdin);
        let _ = peer.child.wait();
    }
}

/// Run time so far of each thread of process `pid`, in nanoseconds, summed by thread name.
fn cpu_by_thread(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut by_name = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let ns: u64 = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        *by_name.entry(name.trim().to_owned()).or_insert(0) += ns;
    }
    by_name
}
