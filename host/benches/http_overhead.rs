//! What `toolgate serve` adds to a Streamable HTTP round trip, against nginx as a bare reverse
//! proxy (the floor of any HTTP proxy on this machine).
//!
//! Eight paths to one upstream, measured in one run:
//! - **direct**: the client talks to the upstream;
//! - **nginx**: through nginx (`proxy_buffering off`, HTTP/1.1 upstream keepalive);
//! - **toolgate**: through `toolgate serve` (release build) with a token, a grant and a policy
//!   that evaluates a rule and a counter on every call, as configured by default (metrics on);
//! - **unobserved**: the same with `metrics = false` (no observer at all), and **observed**:
//!   the same with a decision log to a file beside the metrics (issue 21's pair);
//! - **hyper proxy**: a bare reverse proxy on toolgate's own stack (tokio and hyper, one
//!   thread, nothing parsed: `support/hyper_proxy.rs`), the floor of that stack; **hyper
//!   parse**, the same reading and parsing what passes; **hyper gate**, the same deciding with
//!   toolgate's guarantees and nothing else (`support/hyper_gate.rs`).
//!
//! Every process runs from a copy of its binary of its own (`support/copies.rs`), so that no
//! path's code is warmed by another's: the echo upstream and three gateways are toolgate.
//!
//! Latency: `tools/call echo` round trips, interleaved call by call (one call per path per
//! round, each round in a new random order) so that all see the same machine; medians compared. Run against
//! the echo upstream (`toolgate standin --echo --http`) and, when `tests/peers` is installed,
//! server-everything (`streamableHttp`).
//! Throughput: 32 client threads, each with its own keep-alive connection and session, calling
//! for a fixed time per path, paths alternated over rounds; echo upstream only.
//!
//! Run: `cargo bench -p toolgate --bench http_overhead` (`-- --calls N --seconds S`;
//! `--load-only [hyper|parse]` runs just the throughput load through toolgate (or the hyper
//! proxy, bare or parsing), for a profiler;
//! `TOOLGATE_BASELINE=/path/to/toolgate` adds another build as a ninth latency path, for A/B
//! comparisons in one interleaved run; `TOOLGATE_BINARY` replaces the measured toolgate, see
//! `support/http_peers.rs`'s `toolgate`). Needs
//! `nginx` on PATH or in /usr/sbin (Debian's package), and for the bare TCP relay its stream
//! module (`libnginx-mod-stream`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "support/copies.rs"]
mod copies;
#[path = "support/http_peers.rs"]
mod http_peers;
#[path = "support/hyper_gate.rs"]
mod hyper_gate;
#[path = "support/hyper_proxy.rs"]
mod hyper_proxy;
use http_peers::{free_port, start_echo, start_serve, toolgate, wait_for_port, Conn, Proc, TOKEN};

fn start_everything(root: &Path) -> Option<(Proc, u16)> {
    let bin = root.join("tests/peers/node_modules/.bin/mcp-server-everything");
    if !bin.exists() {
        eprintln!("(server-everything not installed: run scripts/test once; skipping it)");
        return None;
    }
    let port = free_port();
    let child = Command::new("node")
        .arg(bin)
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    wait_for_port(port);
    Some((Proc(child), port))
}

fn nginx_binary() -> PathBuf {
    for candidate in ["/usr/sbin/nginx", "/usr/local/sbin/nginx"] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    "nginx".into()
}

fn start_nginx(dir: &Path, upstream: u16) -> (Proc, u16) {
    let port = free_port();
    let d = dir.display();
    let conf = format!(
        "worker_processes 1;\nerror_log {d}/nginx-error.log;\npid {d}/nginx.pid;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           keepalive_requests 100000000;\n  keepalive_timeout 300s;\n\
           upstream mcp {{ server 127.0.0.1:{upstream}; keepalive 64; keepalive_requests 100000000; }}\n\
           server {{\n    listen 127.0.0.1:{port};\n    location / {{\n\
               proxy_pass http://mcp;\n      proxy_http_version 1.1;\n\
               proxy_set_header Connection \"\";\n      proxy_buffering off;\n\
               proxy_request_buffering off;\n    }}\n  }}\n}}\n"
    );
    let nginx = run_nginx(dir, port, &conf)
        .expect("nginx: install Debian's package (apt-get install nginx)");
    (nginx, port)
}

/// Starts nginx in the foreground with `conf` (which listens on `port`) once that port answers.
fn run_nginx(dir: &Path, port: u16, conf: &str) -> std::io::Result<Proc> {
    let path = dir.join(format!("nginx-{port}.conf"));
    std::fs::write(&path, conf)?;
    let child = Command::new(nginx_binary())
        .arg("-e")
        .arg(dir.join("nginx-error.log"))
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .args(["-g", "daemon off;"])
        .stderr(Stdio::inherit())
        .spawn()?;
    wait_for_port(port);
    Ok(Proc(child))
}

/// nginx as a bare TCP relay (the `stream` module: no HTTP parsing at all, one upstream
/// connection per client connection). Nothing that relays these bytes through a third
/// process can do less work per call, so its throughput is the ceiling of any proxy here.
fn start_tcp_relay(dir: &Path, upstream: u16) -> Option<(Proc, u16)> {
    let module = ["/usr/lib/nginx/modules/ngx_stream_module.so"]
        .into_iter()
        .find(|m| Path::new(m).exists())?;
    let port = free_port();
    let d = dir.display();
    let conf = format!(
        "load_module {module};\nworker_processes 1;\nerror_log {d}/nginx-error.log;\n\
         pid {d}/nginx-stream.pid;\nevents {{ worker_connections 1024; }}\n\
         stream {{ server {{ listen 127.0.0.1:{port}; proxy_pass 127.0.0.1:{upstream}; }} }}\n"
    );
    Some((run_nginx(dir, port, &conf).ok()?, port))
}

/// The bare hyper proxy ([`hyper_proxy`]): this binary again, in `hyper-proxy` mode.
fn start_hyper_proxy(upstream: u16, dir: &Path) -> (Proc, u16) {
    start_hyper("hyper-proxy", upstream, dir)
}

/// The hyper proxy in `mode`: `hyper-proxy`, `hyper-parse` (reading and parsing what
/// passes) or `hyper-gate` ([`hyper_gate`]), from a copy of this binary in `dir`.
fn start_hyper(mode: &str, upstream: u16, dir: &Path) -> (Proc, u16) {
    let port = free_port();
    let child = Command::new(copies::own_copy(std::env::current_exe().unwrap(), dir))
        .args([mode, &port.to_string(), &upstream.to_string()])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port);
    (Proc(child), port)
}

fn start_toolgate(dir: &Path, upstream: u16, threads: usize) -> (Proc, u16) {
    start_toolgate_binary(&toolgate(), dir, upstream, threads, "")
}

/// `toolgate serve` from `binary`, with `extra` lines in its config's top level.
fn start_toolgate_binary(
    binary: &Path,
    dir: &Path,
    upstream: u16,
    threads: usize,
    extra: &str,
) -> (Proc, u16) {
    let top = format!("worker_threads = {threads}\n{extra}");
    start_serve(binary, dir, upstream, &top, "")
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Interleaved latency over the paths; prints medians and the ratio of added latency.
fn latency(name: &str, upstream: u16, dir: &Path, calls: u64) -> (f64, f64) {
    let (_nginx, nginx_port) = start_nginx(dir, upstream);
    // One thread, as nginx runs one worker.
    let (_toolgate, toolgate_port) = start_toolgate(dir, upstream, 1);
    // Issue 21's pair: the same gateway with no observer at all, and with the decision log
    // (to a file) beside the metrics.
    let toolgate = &toolgate();
    let (_unobserved, unobserved_port) =
        start_toolgate_binary(toolgate, dir, upstream, 1, "metrics = false\n");
    // Not beside the policy: every gateway watches its policy's directory, and each flush of
    // a log there would wake all their watchers.
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let log = logs.join(format!("decisions-{name}.jsonl"));
    let observed_config = format!("decision_log = \"{}\"\n", log.display());
    let (_observed, observed_port) =
        start_toolgate_binary(toolgate, dir, upstream, 1, &observed_config);
    let (_hyper, hyper_port) = start_hyper_proxy(upstream, dir);
    let (_parsing, parsing_port) = start_hyper("hyper-parse", upstream, dir);
    let (_gate, gate_port) = start_hyper("hyper-gate", upstream, dir);
    let mut paths = vec![
        ("direct", Conn::open(upstream, None), Vec::new()),
        ("nginx", Conn::open(nginx_port, None), Vec::new()),
        (
            "toolgate",
            Conn::open(toolgate_port, Some(TOKEN)),
            Vec::new(),
        ),
        (
            "unobserved",
            Conn::open(unobserved_port, Some(TOKEN)),
            Vec::new(),
        ),
        (
            "observed",
            Conn::open(observed_port, Some(TOKEN)),
            Vec::new(),
        ),
        ("hyper proxy", Conn::open(hyper_port, None), Vec::new()),
        ("hyper parse", Conn::open(parsing_port, None), Vec::new()),
        ("hyper gate", Conn::open(gate_port, Some(TOKEN)), Vec::new()),
    ];
    // An A/B comparison: another toolgate build as a ninth path, in the same interleaving.
    let baseline = std::env::var_os("TOOLGATE_BASELINE")
        .map(|binary| start_toolgate_binary(Path::new(&binary), dir, upstream, 1, ""));
    if let Some((_, port)) = &baseline {
        let conn = Conn::open(*port, Some(TOKEN));
        paths.push(("baseline toolgate", conn, Vec::new()));
    }
    let n = paths.len();
    for id in 0..calls / 10 {
        for (_, conn, _) in paths.iter_mut() {
            conn.call(id); // warm-up
        }
    }
    // Each round in a new order (shuffled, with a fixed seed), so that no path always goes
    // first, nor always after the same one.
    let mut rng = fastrand::Rng::with_seed(22);
    let mut order: Vec<usize> = (0..n).collect();
    for id in 0..calls {
        rng.shuffle(&mut order);
        for &k in &order {
            let (_, conn, samples) = &mut paths[k];
            samples.push(conn.call(1_000_000 + id));
        }
    }
    let medians: Vec<Duration> = paths.iter_mut().map(|(_, _, s)| median(s)).collect();
    let (direct, nginx, toolgate) = (us(medians[0]), us(medians[1]), us(medians[2]));
    let (nginx_added, toolgate_added) = (nginx - direct, toolgate - direct);
    println!(
        "latency, {name} upstream, {calls} calls each (median): direct {direct:.1} µs, \
         nginx {nginx:.1} µs (+{nginx_added:.1}), toolgate {toolgate:.1} µs (+{toolgate_added:.1}); \
         toolgate adds {:.2}x what nginx adds (target <= 1.25x)",
        toolgate_added / nginx_added
    );
    let (unobserved, observed) = (us(medians[3]) - direct, us(medians[4]) - direct);
    println!(
        "  metrics off {:.1} µs (+{unobserved:.1}), decision log + metrics {:.1} µs \
         (+{observed:.1}): {:.3}x the unobserved gateway's added latency (target <= 1.05x); \
         metrics alone (the default) {:.3}x",
        us(medians[3]),
        us(medians[4]),
        observed / unobserved,
        toolgate_added / unobserved
    );
    let hyper_added = us(medians[5]) - direct;
    println!(
        "  floor: a bare hyper proxy (toolgate's stack, no parsing, no policy) {:.1} µs \
         (+{hyper_added:.1}): {:.2}x what nginx adds",
        us(medians[5]),
        hyper_added / nginx_added
    );
    let parsing_added = us(medians[6]) - direct;
    println!(
        "  floor: the hyper proxy reading and parsing each request and reply whole (the least \
         a deciding gateway does) {:.1} µs (+{parsing_added:.1}): {:.2}x what nginx adds",
        us(medians[6]),
        parsing_added / nginx_added
    );
    let gate_added = us(medians[7]) - direct;
    println!(
        "  floor: the same, deciding with toolgate's guarantees and nothing else (token, session, \
         one-pass key check, rule, counter, the gateway's own ids) {:.1} µs (+{gate_added:.1}): \
         {:.2}x what nginx adds; toolgate adds {:.2}x what it adds",
        us(medians[7]),
        gate_added / nginx_added,
        toolgate_added / gate_added
    );
    if let Some(baseline) = medians.get(8) {
        let added = us(*baseline) - direct;
        println!(
            "  A/B: baseline toolgate {:.1} µs (+{added:.1}), {:.2}x what nginx adds",
            us(*baseline),
            added / nginx_added
        );
    }
    (nginx_added, toolgate_added)
}

/// Calls per second with `clients` threads for `seconds` on one path.
fn throughput(port: u16, token: Option<&'static str>, clients: usize, seconds: f64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut conns: Vec<Conn> = (0..clients).map(|_| Conn::open(port, token)).collect();
    let barrier = Arc::new(std::sync::Barrier::new(clients + 1));
    let threads: Vec<_> = conns
        .drain(..)
        .map(|mut conn| {
            let (stop, done, barrier) = (stop.clone(), done.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let mut id = 0;
                while !stop.load(Ordering::Relaxed) {
                    conn.call(id);
                    id += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let count = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    count as f64 / elapsed
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(mode @ ("hyper-proxy" | "hyper-parse" | "hyper-gate")) =
        args.get(1).map(String::as_str)
    {
        let (listen, upstream) = (args[2].parse().unwrap(), args[3].parse().unwrap());
        if mode == "hyper-gate" {
            hyper_gate::run(listen, upstream, TOKEN);
        }
        hyper_proxy::run(listen, upstream, mode == "hyper-parse");
    }
    let flag = |name: &str, default: f64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let calls = flag("--calls", 3000.0) as u64;
    let seconds = flag("--seconds", 3.0);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();

    let (_echo, echo_port) = start_echo(dir.path());
    if let Some(i) = args.iter().position(|a| a == "--load-only") {
        // For profilers: one proxy (toolgate with one thread, or `--load-only hyper` for the
        // bare hyper proxy, `--load-only parse` for it parsing) under the throughput load,
        // nothing else.
        let ((proxy, port), token) = match args.get(i + 1).map(String::as_str) {
            Some("hyper") => (start_hyper_proxy(echo_port, dir.path()), None),
            Some("parse") => (start_hyper("hyper-parse", echo_port, dir.path()), None),
            _ => (start_toolgate(dir.path(), echo_port, 1), Some(TOKEN)),
        };
        eprintln!("proxy pid {}", proxy.0.id());
        let rate = throughput(port, token, 32, seconds);
        println!("alone, 32 clients: {rate:.0} calls/s");
        return;
    }
    latency("echo", echo_port, dir.path(), calls);
    if let Some((_everything, port)) = start_everything(&root) {
        latency("server-everything", port, dir.path(), calls / 3);
    }

    // nginx too: the same two hops on the same two cores are the floor for any proxy here.
    let (_nginx, nginx_port) = start_nginx(dir.path(), echo_port);
    let nginx = rounds(nginx_port, None, echo_port, seconds);
    println!(
        "throughput, echo upstream, 32 clients, 3 rounds of {seconds} s, nginx (1 worker): \
         direct {:.0} calls/s, nginx {:.0} calls/s = {:.0}% of direct",
        nginx.0,
        nginx.1,
        100.0 * nginx.1 / nginx.0
    );
    match start_tcp_relay(dir.path(), echo_port) {
        Some((_relay, relay_port)) => {
            let (d, r) = rounds(relay_port, None, echo_port, seconds);
            println!(
                "throughput, echo upstream, 32 clients, 3 rounds of {seconds} s, bare TCP relay \
                 (nginx stream, 1 worker): direct {d:.0} calls/s, relay {r:.0} calls/s = {:.0}% of \
                 direct (the ceiling for any proxy on this machine)",
                100.0 * r / d
            );
        }
        None => {
            eprintln!("(nginx's stream module not installed: apt-get install libnginx-mod-stream)")
        }
    }
    {
        let (_hyper, hyper_port) = start_hyper_proxy(echo_port, dir.path());
        let (d, h) = rounds(hyper_port, None, echo_port, seconds);
        println!(
            "throughput, echo upstream, 32 clients, 3 rounds of {seconds} s, bare hyper proxy \
             (1 thread, no parsing): direct {d:.0} calls/s, hyper {h:.0} calls/s = {:.0}% of \
             direct; {:.2}x nginx's share of direct (the floor of toolgate's stack)",
            100.0 * h / d,
            (h / d) / (nginx.1 / nginx.0)
        );
    }
    for threads in [1, 2] {
        let (_toolgate, toolgate_port) = start_toolgate(dir.path(), echo_port, threads);
        let (d, g) = rounds(toolgate_port, Some(TOKEN), echo_port, seconds);
        println!(
            "throughput, echo upstream, 32 clients, 3 rounds of {seconds} s, toolgate with \
             {threads} thread(s): direct {d:.0} calls/s, toolgate {g:.0} calls/s = {:.0}% of \
             direct; {:.2}x nginx's share of direct (target >= 1.0x)",
            100.0 * g / d,
            (g / d) / (nginx.1 / nginx.0)
        );
    }
}

/// Mean calls/s (direct, through) over three rounds, the order alternating.
fn rounds(through: u16, token: Option<&'static str>, direct: u16, seconds: f64) -> (f64, f64) {
    let (mut d, mut t) = (Vec::new(), Vec::new());
    for round in 0..3 {
        for proxied in [round % 2 == 0, round % 2 != 0] {
            if proxied {
                t.push(throughput(through, token, 32, seconds));
            } else {
                d.push(throughput(direct, None, 32, seconds));
            }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    (mean(&d), mean(&t))
}
