//! Issue 15, enforcement integrity: what the gateway decides is exactly what the upstream runs,
//! and no refusal is undone by a refund.
//!
//! Each attack of the issue runs over stdio (`toolgate run`) and over HTTP (`toolgate serve`
//! with a stdio child per session), in front of upstreams that read JSON the way the vulnerable
//! stacks do:
//! - `standin/go`: `encoding/json` into structs, so keys match case-insensitively, `ſ`→`s` and
//!   `K`→`k` fold and the last match wins (mark3labs/mcp-go, the Go SDK before v1.3.1);
//! - `standin/node`: `JSON.parse` (last duplicate wins) and ids as JavaScript numbers, so `7.0`
//!   is answered as `7` and 2^53+1 comes back rounded (the TypeScript SDK);
//! - server-everything, the TypeScript SDK itself, for the id-spelling attacks.
//!
//! Both stand-ins run a request whose id is `null` and a `tools/call` without any id, and
//! append every tool execution to `STANDIN_LOG`: the assertions are on what the upstream ran
//! (that log) and on what the client received, not on the gateway's wording. The contract:
//! - a request (`method` and an `id` member) whose id is not a string or an integer gets
//!   `-32600` and is never forwarded; a `tools/call` notification is never forwarded;
//! - reusing an id that is still pending gets `-32600`;
//! - a client message with duplicate keys, or keys equal under Unicode case folding, at any
//!   depth, gets `-32600` and is never forwarded;
//! - counter units come back only when the upstream certainly did not run the call (errors
//!   `-32600`/`-32601`/`-32602`/`-32700`, or nothing written), never after a timeout or a crash;
//! - no `tools/list` reply the client sees contains a hidden tool.

use crate::http::{Mcp, Serve};
use crate::support::{everything, go_standin, node_standin, Client};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{self, Child, Command};
use std::time::{Duration, Instant};

/// A cap of 2 on `session_create`, a hidden `session_clear_all`, and `echo_args` denied for
/// a `gw-` session id or a workdir under /etc.
const POLICY: &str = r#"{"version": "1", "default": "deny", "hide": ["session_clear_all"],
  "tools": {
    "session_create": {"limits": [{"counter": "sc", "window": "minute", "max": 2, "scope": "grant"}]},
    "echo_args": {"deny_if": [
      {"path": "args.sessionId", "op": "starts_with", "value": "gw-"},
      {"path": "args.workdir", "op": "starts_with", "value": "/etc"}]},
    "slow": {}, "never": {}, "crash": {}, "stats": {}}}"#;

/// server-everything with a cap of 2 on `echo` and on `trigger-long-running-operation`, and
/// `get-sum` hidden.
const EVERYTHING_POLICY: &str = r#"{"version": "1", "default": "allow", "hide": ["get-sum"],
  "tools": {
    "echo": {"limits": [{"counter": "echo", "window": "minute", "max": 2, "scope": "grant"}]},
    "trigger-long-running-operation": {"limits": [
      {"counter": "long", "window": "minute", "max": 2, "scope": "grant"}]}}}"#;

/// How long an HTTP exchange may wait for a reply that, on a broken gateway, never comes.
const HTTP_WAIT: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Go,
    Node,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Stdio,
    Http,
}
use Kind::{Go, Node};
use Transport::{Http, Stdio};

/// A stand-in's command line (`env STANDIN_LOG=... <stand-in>`) and the log it writes.
struct Upstream {
    _dir: tempfile::TempDir,
    log: PathBuf,
    command: Vec<String>,
}

impl Upstream {
    /// `None` when the Go toolchain is missing (and this is not CI): the test is skipped.
    fn new(kind: Kind, env: &[(&str, &str)]) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("standin.log");
        let mut command = vec!["env".to_owned(), format!("STANDIN_LOG={}", log.display())];
        command.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
        match kind {
            Go => command.push(go_standin()?.display().to_string()),
            Node => command.extend(node_standin()),
        }
        Some(Self {
            _dir: dir,
            log,
            command,
        })
    }

    /// Every execution the stand-in logged, across all its processes.
    fn entries(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// How many times the upstream ran `tool`.
    fn runs(&self, tool: &str) -> usize {
        self.entries().iter().filter(|e| e["tool"] == tool).count()
    }
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `toolgate serve` with one grant (token `t`) under `policy`; `upstream` is the
/// `[upstream]` table's body, `limits` the `[limits]` table's.
fn serve(upstream: &str, policy: &str, limits: &str) -> Serve {
    let config = format!(
        "[upstream]\n{upstream}\n[[grants]]\nname = \"a\"\ntoken_sha256 = \"{}\"\n\
         policy = \"p.json\"\n[limits]\n{limits}\n",
        sha256_hex("t")
    );
    Serve::start(&config, &[("p.json", policy)])
}

fn command_table(command: &[String]) -> String {
    format!("command = {}", serde_json::to_string(command).unwrap())
}

/// A client of the gateway over either transport.
enum Gate {
    Stdio(Client),
    Http { _serve: Serve, mcp: Mcp },
}

impl Gate {
    /// The gateway in front of `command` (a stdio server), initialized.
    async fn open(transport: Transport, policy: &str, command: &[String]) -> Self {
        match transport {
            Stdio => {
                let mut client = Client::start(policy, command);
                client.initialize();
                Gate::Stdio(client)
            }
            Http => Self::http(serve(&command_table(command), policy, "")).await,
        }
    }

    async fn http(serve: Serve) -> Self {
        let mut mcp = Mcp::new(&serve.url, Some("t"));
        mcp.initialize().await;
        Gate::Http { _serve: serve, mcp }
    }

    /// A `tools/call`; returns the reply message.
    async fn call(&mut self, tool: &str, args: Value) -> Value {
        let params = json!({"name": tool, "arguments": args});
        match self {
            Gate::Stdio(client) => client.request("tools/call", params),
            Gate::Http { mcp, .. } => {
                let reply = mcp.request("tools/call", params).await;
                reply
                    .messages
                    .into_iter()
                    .find(is_reply)
                    .unwrap_or(Value::Null)
            }
        }
    }

    /// Sends each line on its own and returns, per line, the messages the client got for it:
    /// over stdio everything before a `ping` sent after it was answered; over HTTP the POST's
    /// response (the POSTs run concurrently, each waiting at most [`HTTP_WAIT`]), then a `ping`
    /// so that the upstream has read every line before this returns.
    async fn each(&mut self, lines: &[String]) -> Vec<Vec<Value>> {
        match self {
            Gate::Stdio(client) => lines
                .iter()
                .map(|line| {
                    client.send_raw(format!("{line}\n").as_bytes());
                    sync(client)
                })
                .collect(),
            Gate::Http { mcp, .. } => {
                let posts: Vec<_> = lines.iter().map(|l| post(mcp, l)).collect();
                let mut got = Vec::new();
                for p in posts {
                    got.push(p.await.unwrap().map(|(_, m)| m).unwrap_or_default());
                }
                http_sync(mcp).await;
                got
            }
        }
    }

    /// Sends `lines` together (stdio: in one write) and returns every message the client got.
    async fn together(&mut self, lines: &[String]) -> Vec<Value> {
        match self {
            Gate::Stdio(client) => {
                client.send_raw(format!("{}\n", lines.join("\n")).as_bytes());
                sync(client)
            }
            Gate::Http { .. } => self.each(lines).await.concat(),
        }
    }

    fn mcp(&self) -> &Mcp {
        match self {
            Gate::Http { mcp, .. } => mcp,
            Gate::Stdio(_) => unreachable!("an HTTP-only step"),
        }
    }
}

/// A reply (not a request or notification).
fn is_reply(m: &Value) -> bool {
    m.get("method").is_none() && (m.get("result").is_some() || m.get("error").is_some())
}

fn error_code(m: &Value) -> Option<i64> {
    m.pointer("/error/code").and_then(Value::as_i64)
}

/// A tool result that the gateway produced itself (a refusal: `_meta.toolgate`).
fn is_refusal(m: &Value) -> bool {
    m.pointer("/result/_meta/toolgate").is_some()
}

/// Whether any `tools/list` result among `messages` lists `tool`.
fn lists(messages: &[Value], tool: &str) -> bool {
    messages.iter().any(|m| {
        m.pointer("/result/tools")
            .and_then(Value::as_array)
            .is_some_and(|tools| tools.iter().any(|t| t["name"] == tool))
    })
}

fn created(reply: &Value) -> bool {
    reply["result"]["isError"] == false
        && reply["result"]["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("\"success\":true"))
}

/// Sends a `ping` and returns every message that came before its reply.
fn sync(client: &mut Client) -> Vec<Value> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = format!(
        "sync-{}",
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    client.send(&json!({"jsonrpc": "2.0", "id": id, "method": "ping"}));
    let mut before = Vec::new();
    loop {
        let m = client.recv();
        if m["id"] == id.as_str() && is_reply(&m) {
            return before;
        }
        before.push(m);
    }
}

/// Collects what the gateway sends within `wait`, stopping early once `done` holds.
fn collect(client: &mut Client, wait: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    while !done(&got) {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.recv_within(left) {
            Some(m) => got.push(m),
            None => break,
        }
    }
    got
}

/// A copy of the session's client, for a concurrent POST.
fn fork(mcp: &Mcp) -> Mcp {
    let mut copy = Mcp::new(&mcp.url, mcp.token.as_deref());
    copy.session = mcp.session.clone();
    copy
}

type Posted = tokio::task::JoinHandle<Option<(StatusCode, Vec<Value>)>>;

/// POSTs one raw line on the session; the task ends with the response, or `None` if none
/// came within [`HTTP_WAIT`].
fn post(mcp: &Mcp, line: &str) -> Posted {
    let (mcp, body) = (fork(mcp), line.as_bytes().to_vec());
    tokio::spawn(async move {
        let reply = tokio::time::timeout(HTTP_WAIT, mcp.post_raw(body, "application/json"))
            .await
            .ok()?;
        Some((reply.status, reply.messages))
    })
}

async fn messages(posted: Posted) -> Vec<Value> {
    posted.await.unwrap().map(|(_, m)| m).unwrap_or_default()
}

/// A `ping` on the session, answered: the upstream has read every line posted before it.
async fn http_sync(mcp: &Mcp) {
    let reply = mcp
        .post(&json!({"jsonrpc": "2.0", "id": "sync", "method": "ping"}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.messages);
}

fn call_line(id: &str, tool: &str, args: Value) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{}}}"#,
        json!({"name": tool, "arguments": args})
    )
}

/// Uses up the cap of 2: two `session_create` run, the third is rate-limited.
async fn fill_cap(gate: &mut Gate) {
    for _ in 0..2 {
        let reply = gate.call("session_create", json!({"cli": "claude"})).await;
        assert!(created(&reply), "{reply}");
    }
    let over = gate.call("session_create", json!({"cli": "claude"})).await;
    assert!(
        is_refusal(&over)
            && over["result"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains("rate_limited"),
        "the third session_create is rate-limited: {over}"
    );
}

/// Generates one `#[tokio::test]` per case: `mod attack { fn case() { attack(args).await } }`.
macro_rules! cases {
    ($attack:ident: $($case:ident => ($($arg:expr),*)),+ $(,)?) => {
        mod $attack {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$attack($($arg),*).await
                }
            )+
        }
    };
}

// (1) `"id": null` (and ids that are neither strings nor integers) after the cap, and to a
// hidden tool: JSON-RPC 2.0 allows null, and Go and JS servers run such a request.
cases!(odd_ids_are_refused_and_never_run:
    stdio_go => (Stdio, Go), stdio_node => (Stdio, Node),
    http_go => (Http, Go), http_node => (Http, Node));

async fn odd_ids_are_refused_and_never_run(transport: Transport, kind: Kind) {
    let Some(upstream) = Upstream::new(kind, &[]) else {
        return;
    };
    let mut gate = Gate::open(transport, POLICY, &upstream.command).await;
    fill_cap(&mut gate).await;
    let create = json!({"cli": "claude"});
    let mut lines: Vec<String> = ["null", "null", "1.0", "1e0", "-0.0", "true", "{}", "[3]"]
        .iter()
        .map(|id| call_line(id, "session_create", create.clone()))
        .collect();
    lines.push(call_line("null", "session_clear_all", json!({})));
    lines.push(call_line("2.5", "session_clear_all", json!({})));
    let replies = gate.each(&lines).await;
    assert_eq!(
        (
            upstream.runs("session_create"),
            upstream.runs("session_clear_all")
        ),
        (2, 0),
        "(session_create, session_clear_all) runs upstream, with a cap of 2 and the second \
         hidden; the upstream ran: {:#?}",
        upstream.entries()
    );
    for (line, got) in lines.iter().zip(&replies) {
        assert!(
            got.iter().any(|m| error_code(m) == Some(-32600))
                && !got.iter().any(|m| m.get("result").is_some()),
            "{line}\n  should get -32600 and no result; got {got:?}"
        );
    }
}

// (2) `{"id":7.0,"method":"nope"}` while a `tools/call` with id 7 is pending: a JS upstream
// answers `7.0` as `7`, so its "method not found" looked like the call's reply and refunded it.
cases!(fractional_id_pairs_cannot_refund_a_call:
    stdio_node => (Stdio), http_node => (Http));

async fn fractional_id_pairs_cannot_refund_a_call(transport: Transport) {
    let Some(upstream) = Upstream::new(Node, &[("STANDIN_CREATE_MS", "150")]) else {
        return;
    };
    let mut gate = Gate::open(transport, POLICY, &upstream.command).await;
    let create = json!({"cli": "claude"});
    let mut pending = Vec::new();
    for k in 100..120 {
        let call = call_line(&k.to_string(), "session_create", create.clone());
        let nope = format!(r#"{{"jsonrpc":"2.0","id":{k}.0,"method":"nope"}}"#);
        match &mut gate {
            Gate::Stdio(client) => {
                client.send_raw(format!("{call}\n{nope}\n").as_bytes());
                client.reply_to(&json!(k));
            }
            Gate::Http { mcp, .. } => {
                // The call first, so that the upstream's answer to `nope` finds it waiting.
                let call = post(mcp, &call);
                tokio::time::sleep(Duration::from_millis(30)).await;
                pending.push(post(mcp, &nope));
                let _ = call.await;
            }
        }
    }
    if let Gate::Http { mcp, .. } = &gate {
        http_sync(mcp).await;
    }
    for p in pending {
        p.abort();
    }
    let runs = upstream.runs("session_create");
    assert!(
        runs <= 2,
        "20 (call id k, nope id k.0) pairs under a cap of 2: the upstream ran session_create \
         {runs} times"
    );
}

/// server-everything: 20 pairs of `nope` with id k.0 and a capped tool with id k. Returns how
/// many of the calls reached the upstream (their replies were not the gateway's refusals).
async fn everything_pairs(transport: Transport) -> Option<usize> {
    let command = everything()?;
    let mut gate = Gate::open(transport, EVERYTHING_POLICY, &command).await;
    let mut forwarded = std::collections::BTreeSet::new();
    let mut pending = Vec::new();
    let mut seen = |k: u64, messages: &[Value]| {
        if messages
            .iter()
            .any(|m| is_reply(m) && m["id"] == k && !is_refusal(m) && error_code(m) != Some(-32600))
        {
            forwarded.insert(k);
        }
    };
    for k in 100..120u64 {
        let nope = format!(r#"{{"jsonrpc":"2.0","id":{k}.0,"method":"nope"}}"#);
        match &mut gate {
            Gate::Stdio(client) => {
                // `nope` first: the gateway reads both lines before the server answers either.
                let echo = call_line(
                    &k.to_string(),
                    "echo",
                    json!({"message": format!("pair {k}")}),
                );
                client.send_raw(format!("{nope}\n{echo}\n").as_bytes());
                let got = collect(client, Duration::from_secs(3), |got| {
                    got.iter().any(|m| is_reply(m) && m["id"] == k)
                });
                seen(k, &got);
            }
            Gate::Http { mcp, .. } => {
                // The call first (it runs for 300 ms), so that the server's answer to `nope`
                // finds it waiting.
                let args = json!({"duration": 0.3, "steps": 1});
                let call = post(
                    mcp,
                    &call_line(&k.to_string(), "trigger-long-running-operation", args),
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
                pending.push(post(mcp, &nope));
                seen(k, &messages(call).await);
            }
        }
    }
    for p in pending {
        p.abort();
    }
    Some(forwarded.len())
}

cases!(fractional_id_pairs_against_server_everything:
    stdio => (Stdio), http => (Http));

async fn fractional_id_pairs_against_server_everything(transport: Transport) {
    let Some(forwarded) = everything_pairs(transport).await else {
        return;
    };
    assert!(
        forwarded <= 2,
        "20 (nope id k.0, capped call id k) pairs under a cap of 2 against server-everything: \
         {forwarded} calls reached it"
    );
}

// (3) `tools/list` ids that a JS upstream re-spells (`1.0` → `1`, 2^53+1 → 2^53): the reply
// missed its pending entry and went out unfiltered. Over HTTP the re-spelt reply goes to the
// POST of a call pending under the re-spelt id.
cases!(respelt_list_ids_never_leak_a_hidden_tool:
    stdio_node => (Stdio, false), http_node => (Http, false),
    stdio_everything => (Stdio, true), http_everything => (Http, true));

async fn respelt_list_ids_never_leak_a_hidden_tool(transport: Transport, on_everything: bool) {
    let (command, policy, hidden, upstream);
    if on_everything {
        let Some(c) = everything() else { return };
        (command, policy, hidden, upstream) = (c, EVERYTHING_POLICY, "get-sum", None);
    } else {
        let Some(u) = Upstream::new(Node, &[]) else {
            return;
        };
        (command, policy, hidden) = (u.command.clone(), POLICY, "session_clear_all");
        upstream = Some(u);
    }
    let mut gate = Gate::open(transport, policy, &command).await;
    // (the id as the client writes it, the id a JS server answers with, whether it is valid)
    let cases = [
        ("1.0", 1u64, false),
        ("2e0", 2, false),
        ("9007199254740993", 9007199254740992, true),
    ];
    let mut wrong = Vec::new();
    for (id, respelt, valid) in cases {
        let list = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list"}}"#);
        let (own, others) = match &mut gate {
            Gate::Stdio(client) => {
                client.send_raw(format!("{list}\n").as_bytes());
                // server-everything may answer a later ping first: wait for this one's answer.
                let got = collect(client, Duration::from_secs(2), |got| {
                    got.iter()
                        .any(|m| m.pointer("/result/tools").is_some() || error_code(m).is_some())
                });
                (got, Vec::new())
            }
            Gate::Http { mcp, .. } => {
                let slow = if on_everything {
                    call_line(
                        &respelt.to_string(),
                        "trigger-long-running-operation",
                        json!({"duration": 0.4, "steps": 1}),
                    )
                } else {
                    call_line(&respelt.to_string(), "slow", json!({"ms": 400}))
                };
                let slow = post(mcp, &slow);
                tokio::time::sleep(Duration::from_millis(50)).await;
                let own = post(mcp, &list);
                (messages(own).await, messages(slow).await)
            }
        };
        let all: Vec<Value> = own.iter().chain(&others).cloned().collect();
        if lists(&all, hidden) {
            wrong.push(format!(
                "id {id}: the client saw the hidden `{hidden}`: {all:?}"
            ));
        } else if valid {
            // Exactly as written: serde_json keeps 2^53+1 as an exact u64.
            let written: Value = serde_json::from_str(id).unwrap();
            let reply = own.iter().find(|m| is_reply(m));
            if !reply.is_some_and(|r| r["id"] == written && r.pointer("/result/tools").is_some()) {
                wrong.push(format!(
                    "id {id}: no filtered list under its own id: {own:?}"
                ));
            }
        } else if !own.iter().any(|m| error_code(m) == Some(-32600)) {
            wrong.push(format!("id {id}: no -32600: {own:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "tools/list with re-spellable ids:\n{}",
        wrong.join("\n")
    );
    if let Some(upstream) = upstream {
        assert_eq!(upstream.runs("session_clear_all"), 0);
    }
}

// (3, continued) `tools/list` id 5 then `ping` id 5, and a `notifications/cancelled` for a
// pending `tools/list`: the list reply lost its pending entry and went out unfiltered.
cases!(reused_or_cancelled_list_ids_never_leak_a_hidden_tool:
    stdio_go => (Stdio, Go), stdio_node => (Stdio, Node),
    http_go => (Http, Go), http_node => (Http, Node));

async fn reused_or_cancelled_list_ids_never_leak_a_hidden_tool(transport: Transport, kind: Kind) {
    // Lists are answered after 200 ms: the second line is always read before the reply.
    let Some(upstream) = Upstream::new(kind, &[("STANDIN_LIST_MS", "200")]) else {
        return;
    };
    let mut gate = Gate::open(transport, POLICY, &upstream.command).await;
    let attacks = [
        (
            r#"{"jsonrpc":"2.0","id":5,"method":"tools/list"}"#,
            r#"{"jsonrpc":"2.0","id":5,"method":"ping"}"#,
        ),
        (
            r#"{"jsonrpc":"2.0","id":6,"method":"tools/list"}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":6,"reason":"x"}}"#,
        ),
    ];
    let mut leaks = Vec::new();
    for (list, second) in attacks {
        let got = match &mut gate {
            Gate::Stdio(client) => {
                client.send_raw(format!("{list}\n{second}\n").as_bytes());
                // Until the list's reply (or what the gateway made of it) has had time to come.
                collect(client, Duration::from_millis(800), |got| {
                    got.iter().any(|m| m.pointer("/result/tools").is_some())
                })
            }
            Gate::Http { mcp, .. } => {
                let first = post(mcp, list);
                tokio::time::sleep(Duration::from_millis(50)).await;
                let second = post(mcp, second);
                let mut got = messages(first).await;
                got.extend(messages(second).await);
                got
            }
        };
        if lists(&got, "session_clear_all") {
            leaks.push(format!("{list} then {second}: {got:?}"));
        }
    }
    assert!(
        leaks.is_empty(),
        "the client saw the hidden tool:\n{}",
        leaks.join("\n")
    );
}

// (4) One line, two readings: keys that differ only by case or by Unicode case folding (`ſ`,
// the Kelvin sign), or spelled with escapes, or duplicated, at any depth. The gateway decided on
// one key; a Go server reads the last match, a JS server the last duplicate.
cases!(keys_equal_under_case_folding_are_refused:
    stdio_go => (Stdio, Go), stdio_node => (Stdio, Node),
    http_go => (Http, Go), http_node => (Http, Node));

/// (label, line, whether the gateway must answer it with -32600). The last is a tools/call
/// without an `id` (only `ID`): a notification, dropped, with no reply required.
fn key_corpus() -> Vec<(&'static str, String, bool)> {
    let uuid = "6f1c3b0e-8d4a-4c1e-9a43-2b7d5e0f9c11";
    let call = |id: &str, params: &str| {
        format!(r#"{{"jsonrpc":"2.0","id":"{id}","method":"tools/call","params":{params}}}"#)
    };
    vec![
        (
            "method + Method",
            r#"{"jsonrpc":"2.0","id":"k1","method":"ping","Method":"tools/call","params":{"name":"session_clear_all","arguments":{}}}"#.into(),
            true,
        ),
        (
            "method + Method, same value",
            r#"{"jsonrpc":"2.0","id":"k2","method":"tools/call","Method":"tools/call","params":{"name":"echo_args","arguments":{}}}"#.into(),
            true,
        ),
        (
            "method + \\u004dethod",
            r#"{"jsonrpc":"2.0","id":"k3","method":"ping","\u004dethod":"tools/call","params":{"name":"session_clear_all","arguments":{}}}"#.into(),
            true,
        ),
        (
            "method + \\u006dethod (an exact duplicate once unescaped)",
            r#"{"jsonrpc":"2.0","id":"k4","method":"ping","\u006dethod":"tools/call","params":{"name":"session_clear_all","arguments":{}}}"#.into(),
            true,
        ),
        (
            "name + Name",
            call("k5", r#"{"name":"echo_args","Name":"session_clear_all","arguments":{}}"#),
            true,
        ),
        (
            "params + paramſ",
            r#"{"jsonrpc":"2.0","id":"k6","method":"tools/call","params":{"name":"echo_args","arguments":{}},"paramſ":{"name":"session_clear_all","arguments":{}}}"#.into(),
            true,
        ),
        (
            "sessionId + SessionId",
            call("k7", &format!(r#"{{"name":"echo_args","arguments":{{"sessionId":"{uuid}","SessionId":"gw-1234"}}}}"#)),
            true,
        ),
        (
            "sessionId + ſessionId",
            call("k8", &format!(r#"{{"name":"echo_args","arguments":{{"sessionId":"{uuid}","ſessionId":"gw-1234"}}}}"#)),
            true,
        ),
        (
            "sessionId + \\u017fessionId",
            call("k9", &format!(r#"{{"name":"echo_args","arguments":{{"sessionId":"{uuid}","\u017fessionId":"gw-1234"}}}}"#)),
            true,
        ),
        (
            "workdir + worKdir (Kelvin sign)",
            call("k10", r#"{"name":"echo_args","arguments":{"workdir":"/tmp","worKdir":"/etc/cron.d"}}"#),
            true,
        ),
        (
            "workdir + wor\\u212adir",
            call("k11", r#"{"name":"echo_args","arguments":{"workdir":"/tmp","wor\u212adir":"/etc/cron.d"}}"#),
            true,
        ),
        (
            "sessionId twice",
            call("k12", &format!(r#"{{"name":"echo_args","arguments":{{"sessionId":"{uuid}","sessionId":"gw-1234"}}}}"#)),
            true,
        ),
        (
            "name twice",
            call("k13", r#"{"name":"echo_args","name":"session_clear_all","arguments":{}}"#),
            true,
        ),
        (
            "params twice",
            r#"{"jsonrpc":"2.0","id":"k14","method":"tools/call","params":{"name":"echo_args","arguments":{}},"params":{"name":"session_clear_all","arguments":{}}}"#.into(),
            true,
        ),
        (
            "nested keys equal under folding",
            call("k15", r#"{"name":"echo_args","arguments":{"message":"x","opts":{"mode":"a","MODE":"b"}}}"#),
            true,
        ),
        (
            "id + Id",
            r#"{"jsonrpc":"2.0","id":"k16","Id":"k17","method":"tools/call","params":{"name":"echo_args","arguments":{}}}"#.into(),
            true,
        ),
        (
            "ID only (a tools/call notification to the gateway, a request to a Go server)",
            r#"{"jsonrpc":"2.0","ID":"k18","method":"tools/call","params":{"name":"session_clear_all","arguments":{}}}"#.into(),
            false,
        ),
    ]
}

async fn keys_equal_under_case_folding_are_refused(transport: Transport, kind: Kind) {
    let Some(upstream) = Upstream::new(kind, &[]) else {
        return;
    };
    let mut gate = Gate::open(transport, POLICY, &upstream.command).await;
    let corpus = key_corpus();
    let lines: Vec<String> = corpus.iter().map(|(_, line, _)| line.clone()).collect();
    let replies = gate.each(&lines).await;
    let ran = upstream.entries();
    let mut wrong = Vec::new();
    for ((label, _, refused), got) in corpus.iter().zip(&replies) {
        let result = got.iter().any(|m| m.get("result").is_some());
        let invalid = got.iter().any(|m| error_code(m) == Some(-32600));
        if result || (*refused && !invalid) {
            wrong.push(format!("{label}: {got:?}"));
        }
    }
    assert!(
        ran.is_empty() && wrong.is_empty(),
        "no line of the corpus may run anything upstream; it ran (ids as it read them):\n{}\n\
         lines that did not get -32600, or got a result:\n{}",
        ran.iter()
            .map(|e| format!("  {} {} {}", e["id"], e["tool"], e["arguments"]))
            .collect::<Vec<_>>()
            .join("\n"),
        wrong.join("\n")
    );
}

// (5) Refunds, cap 2: a unit comes back only when the upstream certainly did not run the call.

// A client that reuses a pending id: `nope` with the call's id answers first, with an error.
cases!(reused_pending_ids_cannot_refund_a_call:
    stdio_go => (Stdio, Go), stdio_node => (Stdio, Node),
    http_go => (Http, Go), http_node => (Http, Node));

async fn reused_pending_ids_cannot_refund_a_call(transport: Transport, kind: Kind) {
    // `nope` is answered after 100 ms, the call after 150: the call is always read (and
    // pending) before the error for `nope` comes back under the same id.
    let env = [("STANDIN_UNKNOWN_MS", "100"), ("STANDIN_CREATE_MS", "150")];
    let Some(upstream) = Upstream::new(kind, &env) else {
        return;
    };
    let mut gate = Gate::open(transport, POLICY, &upstream.command).await;
    let create = json!({"cli": "claude"});
    let mut pending = Vec::new();
    for k in 100..120 {
        let call = call_line(&k.to_string(), "session_create", create.clone());
        let nope = format!(r#"{{"jsonrpc":"2.0","id":{k},"method":"nope"}}"#);
        match &mut gate {
            Gate::Stdio(client) => {
                client.send_raw(format!("{nope}\n{call}\n").as_bytes());
                client.reply_to(&json!(k));
                // Both replies, whichever comes first, before the next pair.
                collect(client, Duration::from_millis(300), |got| {
                    got.iter().any(|m| is_reply(m) && m["id"] == k)
                });
            }
            Gate::Http { mcp, .. } => {
                pending.push(post(mcp, &nope));
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = post(mcp, &call).await;
            }
        }
    }
    if let Gate::Http { mcp, .. } = &gate {
        http_sync(mcp).await;
    }
    for p in pending {
        p.abort();
    }
    let runs = upstream.runs("session_create");
    assert!(
        runs <= 2,
        "20 (nope id k, call id k) pairs under a cap of 2: the upstream ran session_create \
         {runs} times"
    );
}

// Upstream errors: -32602 means "not executed" (refunded); -32603 after running is not.
cases!(only_not_executed_errors_refund:
    stdio_go => (Stdio, Go), stdio_node => (Stdio, Node),
    http_go => (Http, Go), http_node => (Http, Node));

async fn only_not_executed_errors_refund(transport: Transport, kind: Kind) {
    let Some(upstream) = Upstream::new(kind, &[]) else {
        return;
    };
    let mut gate = Gate::open(transport, POLICY, &upstream.command).await;
    let fail = |code: i64| json!({"cli": "claude", "description": format!("error:{code}")});
    for _ in 0..3 {
        let reply = gate.call("session_create", fail(-32602)).await;
        assert_eq!(error_code(&reply), Some(-32602), "{reply}");
    }
    for _ in 0..4 {
        let _ = gate.call("session_create", fail(-32603)).await;
    }
    let last = gate.call("session_create", json!({"cli": "claude"})).await;
    assert_eq!(
        upstream.runs("session_create"),
        2,
        "3 calls answered -32602 (not run), 4 answered -32603 after running, 1 valid, cap 2: \
         the upstream ran session_create this many times; the last call got {last}"
    );
    assert!(is_refusal(&last), "the cap was used up: {last}");
}

// A timeout after the request was written: the upstream may well run the call (here it does).
// Only over HTTP: `toolgate run` has no reply timeout today, and the stdio child of `serve` had
// none either; the HTTP upstream is the Go stand-in in `--http` mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_after_the_write_does_not_refund() {
    let Some(upstream) = Upstream::new(Go, &[("STANDIN_CREATE_MS", "1500")]) else {
        return;
    };
    let http = GoHttp::start(&upstream);
    let serve = serve(
        &format!("url = \"{}\"", http.url),
        POLICY,
        "request_timeout_s = 1",
    );
    let mut gate = Gate::http(serve).await;
    let mut replies = Vec::new();
    for _ in 0..3 {
        replies.push(gate.call("session_create", json!({"cli": "claude"})).await);
    }
    assert_eq!(
        upstream.runs("session_create"),
        2,
        "3 calls that each ran longer than the request timeout, cap 2: the upstream ran \
         session_create this many times; the client got {replies:?}"
    );
}

/// The Go stand-in serving Streamable HTTP (`--http 127.0.0.1:0`).
struct GoHttp {
    child: Child,
    url: String,
}

impl GoHttp {
    fn start(upstream: &Upstream) -> Self {
        let (program, args) = upstream.command.split_first().unwrap();
        let mut child = Command::new(program)
            .args(args)
            .args(["--http", "127.0.0.1:0"])
            .stderr(process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        let url = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("standin-go --http said {line:?}"))
            .trim()
            .to_owned();
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::stderr()));
        Self { child, url }
    }
}

impl Drop for GoHttp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// An upstream that crashes with calls in flight. `serve` starts a new child for the next
// session, and the grant's counters outlive both. (Over stdio the gateway ends with its
// upstream, and its counters with it: nothing to get back there.)
cases!(a_crash_with_calls_in_flight_does_not_refund:
    go => (Go), node => (Node));

async fn a_crash_with_calls_in_flight_does_not_refund(kind: Kind) {
    let Some(upstream) = Upstream::new(kind, &[("STANDIN_CREATE_MS", "1000")]) else {
        return;
    };
    let serve = serve(&command_table(&upstream.command), POLICY, "");
    let mut first = Mcp::new(&serve.url, Some("t"));
    first.initialize().await;
    let create = call_line("1", "session_create", json!({"cli": "claude"}));
    let in_flight = [
        post(&first, &create),
        post(&first, &create.replace("\"id\":1", "\"id\":2")),
    ];
    // Both have started (the stand-in logs a call before it sleeps) when the crash comes.
    let deadline = Instant::now() + Duration::from_secs(3);
    while upstream.runs("session_create") < 2 {
        assert!(Instant::now() < deadline, "the two calls never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let crash = messages(post(&first, &call_line("3", "crash", json!({})))).await;
    for call in in_flight {
        let _ = call.await;
    }
    let mut second = Mcp::new(&serve.url, Some("t"));
    second.initialize().await;
    let mut after = Vec::new();
    for _ in 0..2 {
        after.push(
            second
                .call("session_create", json!({"cli": "claude"}))
                .await,
        );
    }
    assert_eq!(
        upstream.runs("session_create"),
        2,
        "2 calls in flight when the upstream crashed, then 2 more in a new session, cap 2: the \
         upstream ran session_create this many times (crash: {crash:?}; after: {after:?})"
    );
}

// (6) A `tools/call` notification (no id) was forwarded without a decision.
cases!(tools_call_notifications_never_reach_the_upstream:
    stdio_go => (Stdio, Go), stdio_node => (Stdio, Node),
    http_go => (Http, Go), http_node => (Http, Node));

async fn tools_call_notifications_never_reach_the_upstream(transport: Transport, kind: Kind) {
    let Some(upstream) = Upstream::new(kind, &[]) else {
        return;
    };
    let mut gate = Gate::open(transport, POLICY, &upstream.command).await;
    fill_cap(&mut gate).await;
    let notify = |tool: &str, args: Value| {
        format!(
            r#"{{"jsonrpc":"2.0","method":"tools/call","params":{}}}"#,
            json!({"name": tool, "arguments": args})
        )
    };
    let mut lines = vec![notify("session_create", json!({"cli": "claude"})); 3];
    lines.push(notify("session_clear_all", json!({})));
    lines.push(notify("echo_args", json!({"sessionId": "gw-1234"})));
    let got = gate.together(&lines).await;
    assert!(
        upstream
            .entries()
            .iter()
            .all(|e| e["tool"] == "session_create")
            && upstream.runs("session_create") == 2,
        "tools/call notifications reached the upstream, which ran: {:#?}",
        upstream.entries()
    );
    assert!(
        !got.iter().any(|m| m.get("result").is_some()),
        "no result for a notification: {got:?}"
    );
    if let Gate::Http { .. } = gate {
        // Over HTTP each notification gets 202 or a 4xx, never a forwarded call.
        let replies = gate
            .mcp()
            .post_raw(lines[0].clone().into_bytes(), "application/json")
            .await;
        assert!(
            replies.status == StatusCode::ACCEPTED || replies.status.is_client_error(),
            "{}",
            replies.status
        );
        http_sync(gate.mcp()).await;
        assert_eq!(upstream.runs("session_create"), 2);
    }
}

// No request waits forever: a stdio upstream that is slower than the reply timeout (over
// `toolgate run`, `--reply-timeout-s`; over `serve`'s stdio children, `request_timeout_s`)
// gets its client an error naming the gateway, and the call's unit stays spent.
#[rstest::rstest]
#[case::stdio(Stdio)]
#[case::http(Http)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_timeout_answers_the_client_and_keeps_the_unit(#[case] transport: Transport) {
    let Some(upstream) = Upstream::new(Go, &[("STANDIN_CREATE_MS", "1500")]) else {
        return;
    };
    let mut gate = match transport {
        Stdio => {
            let mut client =
                Client::start_with(POLICY, &upstream.command, &["--reply-timeout-s", "1"]);
            client.initialize();
            Gate::Stdio(client)
        }
        Http => {
            let serve = serve(
                &command_table(&upstream.command),
                POLICY,
                "request_timeout_s = 1",
            );
            Gate::http(serve).await
        }
    };
    let started = Instant::now();
    let mut replies = Vec::new();
    for _ in 0..3 {
        replies.push(gate.call("session_create", json!({"cli": "claude"})).await);
    }
    for reply in &replies[..2] {
        assert_eq!(error_code(reply), Some(-32000), "{replies:?}");
        assert!(
            reply["error"]["message"]
                .as_str()
                .unwrap()
                .contains("[toolgate]"),
            "{reply}"
        );
    }
    assert!(
        is_refusal(&replies[2]),
        "the third is rate-limited: {replies:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    std::thread::sleep(Duration::from_millis(1200)); // both slow calls finish upstream
    assert_eq!(upstream.runs("session_create"), 2, "{replies:?}");
}
