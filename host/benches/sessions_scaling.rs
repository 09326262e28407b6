//! Scaling (issue 22, item 6): `toolgate serve` holding 10, 100 and 1,000 MCP sessions at
//! once, each a client of its own (its own keep-alive connection, its own `Mcp-Session-Id`),
//! in front of the workspace's echo server (`toolgate standin --echo --http`).
//!
//! For each size, a fresh `serve` (release build, default worker threads, a bearer token, a
//! grant, a policy with a `deny_if` and a counter on `echo`):
//! 1. every session is opened (`initialize`, `notifications/initialized`) and kept open;
//! 2. **sequential**: one caller goes round the open sessions, one `tools/call echo` each
//!    in turn, `--calls` calls (default 5,000) after one warm-up call per session: the cost
//!    of a call while the gateway holds N sessions;
//! 3. **concurrent**: min(N, 32) caller threads, each going round its share of the sessions
//!    back to back for `--seconds` (default 3): latency with that many calls in flight;
//! 4. the gateway's resident memory (`VmRSS` of `/proc/PID/status`) before any session, with
//!    the N sessions open, and after the calls.
//!
//! Run: `cargo bench --profile release -p toolgate --bench sessions_scaling`
//! (`-- --calls N --seconds S --sizes 10,100,1000`).

use std::path::Path;

use std::time::{Duration, Instant};

#[path = "support/copies.rs"]
mod copies;
#[path = "support/http_peers.rs"]
mod http_peers;
use http_peers::{start_echo, start_serve, toolgate, Conn, Proc, TOKEN};

/// `toolgate serve` whose idle keep-alive connections and sessions outlive the run: the
/// clients wait their turn on them.
fn start_toolgate(dir: &Path, upstream: u16) -> (Proc, u16) {
    let limits =
        "[limits]\nmax_sessions = 2000\nclient_timeout_s = 600\nsession_idle_timeout_s = 3600\n";
    start_serve(&toolgate(), dir, upstream, "", limits)
}

/// The resident set of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

struct Percentiles {
    p50: Duration,
    p90: Duration,
    p99: Duration,
    max: Duration,
    n: usize,
}

fn percentiles(mut samples: Vec<Duration>) -> Percentiles {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Percentiles {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: samples[samples.len() - 1],
        n: samples.len(),
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let calls: usize = arg(&args, "--calls").unwrap_or(5_000);
    let seconds: f64 = arg(&args, "--seconds").unwrap_or(3.0);
    let sizes: Vec<usize> = arg::<String>(&args, "--sizes")
        .map(|s| s.split(',').map(|n| n.parse().unwrap()).collect())
        .unwrap_or_else(|| vec![10, 100, 1_000]);
    let dir = tempfile::tempdir().unwrap();
    let (_echo, upstream) = start_echo(dir.path());
    println!(
        "{:>6} | {:>9} | {:>27} | {:>36} | {:>22}",
        "sessions",
        "open p50",
        "sequential p50/p90/p99 µs",
        "concurrent p50/p90/p99 µs (callers)",
        "RSS KiB: 0 / open / end"
    );
    for n in sizes {
        let dir = tempfile::tempdir().unwrap();
        let (gateway, port) = start_toolgate(dir.path(), upstream);
        let pid = gateway.0.id();
        // Let the process settle (its threads started, the listener up).
        std::thread::sleep(Duration::from_millis(300));
        let rss_empty = rss_kib(pid);
        let mut opens = Vec::with_capacity(n);
        let mut conns: Vec<Conn> = (0..n)
            .map(|_| {
                let started = Instant::now();
                let conn = Conn::open(port, Some(TOKEN));
                assert!(conn.session.is_some(), "no session id");
                opens.push(started.elapsed());
                conn
            })
            .collect();
        let rss_open = rss_kib(pid);
        for conn in &mut conns {
            conn.call_next();
        }
        let mut sequential = Vec::with_capacity(calls);
        for i in 0..calls {
            sequential.push(conns[i % n].call_next());
        }
        let callers = n.min(32);
        let per = n.div_ceil(callers);
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let mut handles = Vec::new();
        while !conns.is_empty() {
            let mut share: Vec<Conn> = conns.drain(..per.min(conns.len())).collect();
            handles.push(std::thread::spawn(move || {
                let mut samples = Vec::new();
                let mut i = 0;
                while Instant::now() < deadline {
                    let k = share.len();
                    samples.push(share[i % k].call_next());
                    i += 1;
                }
                (share, samples)
            }));
        }
        let mut concurrent = Vec::new();
        for handle in handles {
            let (share, samples) = handle.join().unwrap();
            conns.extend(share);
            concurrent.extend(samples);
        }
        let rss_end = rss_kib(pid);
        let open = percentiles(opens);
        let seq = percentiles(sequential);
        let con = percentiles(concurrent);
        println!(
            "{n:>8} | {:>6.0} µs | {:>8.1} / {:>7.1} / {:>7.1} | {:>8.1} / {:>8.1} / {:>8.1} ({callers:>2}) | {rss_empty:>6} / {rss_open:>6} / {rss_end:>6}",
            us(open.p50),
            us(seq.p50),
            us(seq.p90),
            us(seq.p99),
            us(con.p50),
            us(con.p90),
            us(con.p99),
        );
        println!(
            "         (sequential max {:.0} µs over {} calls; concurrent {} calls in {seconds} s = {:.0} calls/s, max {:.0} µs; open max {:.0} µs; RSS per open session {:.1} KiB, after the calls {:.1} KiB)",
            us(seq.max),
            seq.n,
            con.n,
            con.n as f64 / seconds,
            us(con.max),
            us(open.max),
            (rss_open as f64 - rss_empty as f64) / n as f64,
            (rss_end as f64 - rss_empty as f64) / n as f64,
        );
        drop(conns);
        drop(gateway);
    }
}
