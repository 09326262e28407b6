//! Input builders and oracles shared by the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`) and
//! the CI smoke run (`tests/e2e/fuzz_smoke.rs`), which both include this file with
//! `#[path = ...] mod harness;`. It depends only on `toolgate`, `serde`, `serde_json` and
//! `arbitrary`. Every `check_*` function returns `Err(what failed)` when an oracle is broken;
//! a panic inside the gateway is a failure too.
//!
//! The oracles read what the gateway lets through the way the two kinds of peer stacks the
//! security model names read it (README, "Security model"):
//! - **exact**: JavaScript's `JSON.parse`, Python, serde: keys compared exactly, the last
//!   duplicate wins;
//! - **folded**: Go's `encoding/json`: keys matched after case folding (the same fold as
//!   [`jsonrpc::fold_key`]), the last match wins.

use arbitrary::{Result as AResult, Unstructured};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use toolgate::call::ToolCall;
use toolgate::clock::ManualClock;
use toolgate::counters::{CounterStore, MemoryCounterStore};
use toolgate::decision::Verdict;
use toolgate::jsonrpc::{self, Envelope};
use toolgate::policy::Policy;
use toolgate::session::{ClientLine, Identity, Session};

/// The policy of the session targets: everything allowed, `secret` hidden, at most 2 `create`
/// calls (the clock never moves, so "per minute" is "ever").
pub const POLICY: &str = r#"{"version":"1","default":"allow","hide":["secret"],
 "tools":{"create":{"limits":[{"counter":"creates","window":"minute","max":2,"scope":"session"}]}}}"#;
/// The hidden tool.
pub const HIDDEN: &str = "secret";
/// The capped tool, and its cap.
pub const CAPPED: &str = "create";
pub const CAP: usize = 2;

/// Findings that are known, reported, and not yet fixed: inputs that reach them are skipped so
/// that a fuzzing run can look for anything else. Each names its reproducer in
/// `tests/e2e/fuzz_smoke.rs`. Empty when the gateway has no known bug.
#[derive(Clone, Copy, Debug, Default)]
pub struct Known {
    /// A routing key (`method`, `id`, `params`, `result`, `error`, `name`) spelled in another
    /// case (`Method`, `ID`, `Name`...) and not also spelled exactly: the gateway reads it as
    /// an unknown member, a Go server as the routing field (`known_bug_*` tests).
    pub lone_case_variant_key: bool,
    /// A reply from the upstream whose tool list a case-folding client reads differently from
    /// the gateway's filter (`Result` for `result`, a tool with `name` and `Name`): only the
    /// exact reading of lines for the client is checked (`known_bug_*` tests).
    pub upstream_case_variant_key: bool,
    /// An upstream line with invalid UTF-8 in a member the gateway does not read is forwarded
    /// as it is: not JSON (`known_bug_*` test). Such a line is checked as its lossy decoding.
    pub upstream_invalid_utf8: bool,
}

/// What the fuzz targets and the smoke run tolerate today (see [`Known`]).
pub const KNOWN: Known = Known {
    lone_case_variant_key: false,
    upstream_case_variant_key: false,
    upstream_invalid_utf8: false,
};

/// `line` as text: invalid UTF-8 is an error unless `known` tolerates it (then lossy).
fn text_for_client(line: &[u8], known: Known) -> Result<String, String> {
    match std::str::from_utf8(line) {
        Ok(text) => Ok(text.to_owned()),
        Err(_) if known.upstream_invalid_utf8 => Ok(String::from_utf8_lossy(line).into_owned()),
        Err(_) => Err(format!(
            "a line that is not UTF-8 (so not JSON) reached the client: {}",
            String::from_utf8_lossy(line)
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// The reference readers.

/// One JSON object's members, in document order, duplicates kept.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    out.push((key, map.next_value::<&'de RawValue>()?));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The members of `raw` if it is a JSON object.
pub fn members(raw: &str) -> Option<Vec<(String, &RawValue)>> {
    serde_json::from_str::<Members>(raw).ok().map(|m| m.0)
}

/// How a peer stack matches keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reading {
    Exact,
    Folded,
}

/// `key`'s value in `object` (its raw text) under `reading`: the last match wins.
pub fn get<'a>(object: &'a str, key: &str, reading: Reading) -> Option<&'a RawValue> {
    let members = members(object)?;
    members
        .into_iter()
        .rev()
        .find(|(k, _)| match reading {
            Reading::Exact => k == key,
            Reading::Folded => jsonrpc::fold_key(k) == jsonrpc::fold_key(key),
        })
        .map(|(_, v)| v)
}

fn get_path<'a>(object: &'a str, path: &[&str], reading: Reading) -> Option<&'a RawValue> {
    let (first, rest) = path.split_first()?;
    let value = get(object, first, reading)?;
    if rest.is_empty() {
        Some(value)
    } else {
        get_path(value.get(), rest, reading)
    }
}

fn as_str(raw: Option<&RawValue>) -> Option<String> {
    raw.and_then(|r| serde_json::from_str::<String>(r.get()).ok())
}

/// What a peer reads from one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// `method`, if it is a string (`null` or absent: none; another type: `Some("<not a string>")`).
    pub method: Option<String>,
    /// `id` as written (`null` included).
    pub id: Option<String>,
    /// `params.name`, decoded, if a string.
    pub name: Option<String>,
}

impl Message {
    pub fn read(line: &str, reading: Reading) -> Option<Self> {
        members(line)?;
        let method = get(line, "method", reading).and_then(|m| match m.get() {
            "null" => None,
            _ => Some(as_str(Some(m)).unwrap_or_else(|| "<not a string>".into())),
        });
        Some(Self {
            method,
            id: get(line, "id", reading).map(|r| r.get().to_owned()),
            name: as_str(get_path(line, &["params", "name"], reading)),
        })
    }

    /// A request: a method and a non-null id.
    pub fn is_request(&self) -> bool {
        self.method.is_some() && self.id.as_deref().is_some_and(|id| id != "null")
    }
}

/// Whether some object in `line`, at any depth, has a key that folds to one of the routing
/// keys without being spelled exactly like it (see [`Known::lone_case_variant_key`]).
pub fn has_case_variant_routing_key(line: &[u8]) -> bool {
    const ROUTING: [&str; 7] = ["method", "id", "params", "result", "error", "name", "tools"];
    fn walk(value: &Value) -> bool {
        match value {
            Value::Object(map) => map.iter().any(|(k, v)| {
                let folded = jsonrpc::fold_key(k);
                (ROUTING.contains(&folded.as_ref()) && !ROUTING.contains(&k.as_str())) || walk(v)
            }),
            Value::Array(items) => items.iter().any(walk),
            _ => false,
        }
    }
    serde_json::from_slice::<Value>(line).is_ok_and(|v| walk(&v))
}

/// The names (decoded strings) in the tool list of a reply, as `reading` reads
/// `result.tools[*].name`.
pub fn listed_names(line: &str, reading: Reading) -> Vec<String> {
    let Some(tools) = get_path(line, &["result", "tools"], reading) else {
        return Vec::new();
    };
    let Ok(tools) = serde_json::from_str::<Vec<&RawValue>>(tools.get()) else {
        return Vec::new();
    };
    tools
        .iter()
        .filter_map(|tool| as_str(get(tool.get(), "name", reading)))
        .collect()
}

/// Oracle (i): no reading of `line` lists the hidden tool.
pub fn check_no_hidden_listed(line: &[u8], known: Known) -> Result<(), String> {
    let text = &text_for_client(line, known)?;
    for reading in [Reading::Exact, Reading::Folded] {
        if listed_names(text, reading).iter().any(|n| n == HIDDEN) {
            if reading == Reading::Folded && known.upstream_case_variant_key {
                continue;
            }
            return Err(format!(
                "the hidden tool is listed ({reading:?} reading) in a line for the client: {text}"
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Target `envelope`.

/// Oracle: if `check_keys` accepts a line, serde_json reads it, and a case-folding,
/// last-wins reader sees the method, id and `params.name` that `Envelope::parse` (and the
/// session's exact reading of `params.name`) sees.
pub fn check_envelope(data: &[u8], known: Known) -> Result<(), String> {
    let envelope = Envelope::parse(data);
    if let Ok(envelope) = &envelope {
        let _ = envelope.id_key();
        let _ = envelope.error_code();
    }
    if jsonrpc::check_keys(data).is_err() {
        return Ok(());
    }
    let text = std::str::from_utf8(data)
        .map_err(|_| format!("check_keys accepted a line that is not UTF-8: {data:?}"))?;
    serde_json::from_str::<Value>(text)
        .map_err(|e| format!("check_keys accepted a line serde_json cannot read ({e}): {text}"))?;
    let Ok(envelope) = envelope else {
        return Ok(()); // refused by the gateway: nothing to compare
    };
    // Refused by the session: a top-level key that is a JSON-RPC member in another case, or
    // a tools/call params key that is `name`, `arguments` or `_meta` in another case.
    let is_call = envelope.method.as_deref() == Some("tools/call");
    if envelope.shadow.is_some()
        || (is_call
            && envelope
                .params
                // Params it cannot read (no `name`) are refused as well.
                .is_some_and(|p| {
                    serde_json::from_str::<jsonrpc::CallParams>(p.get())
                        .map_or(true, |params| params.shadow.is_some())
                }))
    {
        return Ok(());
    }
    let Some(folded) = Message::read(text, Reading::Folded) else {
        return Err(format!(
            "Envelope::parse accepted a line that is not an object: {text}"
        ));
    };
    let exact_name = envelope
        .params
        .and_then(|p| as_str(get(p.get(), "name", Reading::Exact)));
    let gateway = Message {
        method: envelope.method.as_deref().map(str::to_owned),
        id: envelope.id.map(|id| id.get().to_owned()),
        name: exact_name,
    };
    // The tool name is read only from a tools/call: elsewhere params are the server's.
    let (gateway, folded) = if is_call {
        (gateway, folded)
    } else {
        (
            Message {
                name: None,
                ..gateway
            },
            Message {
                name: None,
                ..folded
            },
        )
    };
    if gateway != folded {
        if known.lone_case_variant_key && has_case_variant_routing_key(data) {
            return Ok(());
        }
        return Err(format!(
            "the gateway reads {gateway:?}, a case-folding last-wins reader {folded:?}: {text}"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Target `policy`.

/// Oracle: loading arbitrary text never panics; a policy that loads decides a few calls
/// without panicking, and never allows a tool it does not show.
pub fn check_policy(data: &[u8]) -> Result<(), String> {
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(());
    };
    // A `plugins` entry makes the loader read (and compile) a file named by the input: the
    // fuzzer could name /dev/zero. Plugins have their own hostile-input tests.
    if let Ok(Value::Object(doc)) = serde_json::from_str::<Value>(text) {
        if doc
            .get("plugins")
            .and_then(Value::as_object)
            .is_some_and(|p| !p.is_empty())
        {
            return Ok(());
        }
    }
    let Ok(policy) = Policy::from_json(text, "fuzz.json") else {
        return Ok(());
    };
    let _ = policy.coverage_points();
    let clock = ManualClock::starting_at(1_000_000);
    let counters: Arc<dyn CounterStore> = Arc::new(MemoryCounterStore::new(clock.clone()));
    let args = [
        serde_json::json!({}),
        serde_json::json!({"sessionId": "gw-1", "cli": "claude", "n": 9007199254740993u64, "items": [{"name": "x"}]}),
    ];
    // Tool names: fixed ones, and the policy's own keys (so that rules and patterns match).
    let mut tools: Vec<String> = ["create", "secret", "x", "", "session_create"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    if let Ok(Value::Object(doc)) = serde_json::from_str::<Value>(text) {
        for key in ["tools", "hide"] {
            match doc.get(key) {
                Some(Value::Object(rules)) => tools.extend(rules.keys().take(4).cloned()),
                Some(Value::Array(items)) => tools.extend(
                    items
                        .iter()
                        .filter_map(Value::as_str)
                        .take(4)
                        .map(str::to_owned),
                ),
                _ => {}
            }
        }
    }
    for tool in &tools {
        for args in &args {
            for _ in 0..2 {
                let call = ToolCall {
                    tool,
                    args,
                    args_text: None,
                    grant: "g",
                    session: "s",
                    server: "srv",
                    annotations: None,
                };
                let outcome = policy.decide(&call, &counters);
                if outcome.decision.verdict == Verdict::Allow && !policy.is_visible(tool) {
                    return Err(format!(
                        "a tool the policy hides or does not list, `{tool}`, was allowed: {text}"
                    ));
                }
                if outcome.decision.verdict != Verdict::Allow && !outcome.reservations.is_empty() {
                    return Err(format!("a refused call kept counter units: {text}"));
                }
                counters.refund(&outcome.reservations);
            }
            clock.advance(Duration::from_secs(61));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The session under test.

fn policy() -> Arc<Policy> {
    static POLICY_: OnceLock<Arc<Policy>> = OnceLock::new();
    POLICY_
        .get_or_init(|| {
            Arc::new(Policy::from_json(POLICY, "fuzz.json").expect("the fuzz policy loads"))
        })
        .clone()
}

fn new_session() -> Session {
    let clock = ManualClock::starting_at(1_000_000);
    Session::new(
        policy(),
        Arc::new(MemoryCounterStore::new(clock)),
        Identity {
            grant: "g".into(),
            session: "s".into(),
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Target `list_filter`.

/// Oracle: after a pending `tools/list`, whatever the upstream answers, what reaches the client
/// is JSON (or nothing) and lists no hidden tool in any reading.
pub fn check_list_filter(data: &[u8], known: Known) -> Result<(), String> {
    let session = new_session();
    let (mode, body) = data.split_first().unwrap_or((&0, &[]));
    let client_id = ["1", "\"a\"", "-5", "\"\\u0031\""][usize::from(mode & 3)];
    let request = format!(r#"{{"jsonrpc":"2.0","id":{client_id},"method":"tools/list"}}"#);
    let ClientLine::Forward(forward) = session.from_client(request.as_bytes()) else {
        return Err("the tools/list was not forwarded".into());
    };
    let upstream_id = forward.upstream_id.ok_or("no upstream id")?;
    // Mode bit 2: the body is the whole line; otherwise it is the `result` of a reply to the
    // pending request (so that the fuzzer spends its time inside lists).
    let line = if mode & 4 != 0 {
        body.to_vec()
    } else {
        let mut line = format!(r#"{{"jsonrpc":"2.0","id":{upstream_id},"result":"#).into_bytes();
        line.extend_from_slice(body);
        line.push(b'}');
        line
    };
    let Some(out) = session.from_upstream(&line) else {
        return Ok(());
    };
    let text = text_for_client(&out, known)?;
    if !is_json(&text) {
        return Err(format!(
            "a line that is not JSON reached the client: {text}"
        ));
    }
    check_no_hidden_listed(&out, known)
}

// ---------------------------------------------------------------------------------------------
// Target `session`: a client and a harness upstream talk through one session.

/// A request as the harness upstream (a Go-like, case-folding server) read it.
struct UpRequest {
    /// Its id as the upstream read it (raw).
    id: String,
    is_create: bool,
    answered: bool,
}

/// A request of the client's that the session forwarded.
struct ClientRequest {
    raw_id: String,
    key: String,
    open: bool,
}

struct World {
    session: Session,
    known: Known,
    /// Ids the client has used, raw (it likes to reuse them).
    client_ids: Vec<String>,
    /// The client's forwarded requests.
    client_requests: Vec<ClientRequest>,
    /// The requests the upstream received.
    received: Vec<UpRequest>,
    /// Of `received`, `create` calls, and those the upstream answered "not executed".
    creates: usize,
    creates_not_run: usize,
    /// The largest upstream id seen so far.
    last_upstream_id: u64,
    /// Ids of server→client requests as the client saw them, and the upstream's own ids.
    server_ids_client_side: Vec<String>,
    server_ids_upstream_side: Vec<String>,
    /// Set when an input reached a known bug: the rest of the run is not checked.
    tainted: bool,
}

fn canonical(raw: &str) -> String {
    serde_json::from_str::<Value>(raw)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| raw.to_owned())
}

fn pick<'a, T>(u: &mut Unstructured, items: &'a [T]) -> AResult<&'a T> {
    u.choose(items)
}

/// A key, usually spelled exactly, sometimes in another case or with escapes.
fn key(u: &mut Unstructured, key: &str) -> AResult<String> {
    Ok(match u.int_in_range(0..=15u8)? {
        0 => {
            let mut k = key.to_owned();
            k[..1].make_ascii_uppercase();
            k
        }
        1 => key.to_ascii_uppercase(),
        2 => {
            let mut chars = key.chars();
            let first = chars.next().unwrap_or('x');
            format!("\\u{:04x}{}", u32::from(first), chars.as_str())
        }
        _ => key.to_owned(),
    })
}

fn id_text(u: &mut Unstructured, w: &World) -> AResult<String> {
    Ok(match u.int_in_range(0..=13u8)? {
        0..=3 if !w.client_ids.is_empty() => pick(u, &w.client_ids)?.clone(),
        0..=5 => u.int_in_range(0..=12u8)?.to_string(),
        6 => pick(u, &[r#""a""#, r#""1""#, r#""\u0061""#, r#""""#, r#""7""#])?.to_string(),
        7 => pick(u, &["1.0", "1e0", "-0", "-1", "7.0"])?.to_string(),
        8 => pick(
            u,
            &[
                "9007199254740993",
                "18446744073709551616",
                "18446744073709551615",
            ],
        )?
        .to_string(),
        9 => pick(u, &["null", "true", "[1]", "{}"])?.to_string(),
        10 => (w.last_upstream_id + u.int_in_range(0..=2u64)?).to_string(),
        _ => u.int_in_range(0..=6u8)?.to_string(),
    })
}

fn tool_name(u: &mut Unstructured) -> AResult<&'static str> {
    pick(
        u,
        &[
            "\"create\"",
            "\"create\"",
            "\"secret\"",
            "\"other\"",
            "\"Create\"",
            "\"cr\\u0065ate\"",
            "\"SECRET\"",
            "\"secret \"",
            "1",
        ],
    )
    .copied()
}

fn object(members: &[(String, String)]) -> String {
    let body: Vec<String> = members
        .iter()
        .map(|(k, v)| format!("\"{k}\":{v}"))
        .collect();
    format!("{{{}}}", body.join(","))
}

/// Shuffles, sometimes adds a copy of a member under another spelling, and joins.
fn finish(u: &mut Unstructured, mut members: Vec<(String, String)>) -> AResult<String> {
    if !members.is_empty() && u.ratio(1, 8)? {
        let i = u.choose_index(members.len())?;
        let k = serde_json::from_str::<String>(&format!("\"{}\"", members[i].0))
            .unwrap_or_else(|_| members[i].0.clone());
        let other = key(u, &k)?;
        let value = pick(
            u,
            &[
                "\"tools/call\"",
                "\"ping\"",
                "1",
                "{\"name\":\"secret\"}",
                "null",
            ],
        )?;
        members.push((other, value.to_string()));
    }
    for i in (1..members.len()).rev() {
        let j = u.int_in_range(0..=i)?;
        members.swap(i, j);
    }
    Ok(object(&members))
}

fn call_params(u: &mut Unstructured) -> AResult<String> {
    let mut params = vec![(key(u, "name")?, tool_name(u)?.to_string())];
    if u.ratio(1, 2)? {
        let args = pick(
            u,
            &[
                "{}",
                "{\"a\":1}",
                "{\"a\":1,\"A\":2}",
                "[]",
                "null",
                "{\"sessionId\":\"gw-1\"}",
            ],
        )?;
        params.push((key(u, "arguments")?, args.to_string()));
    }
    if u.ratio(1, 10)? {
        params.push(("name".into(), tool_name(u)?.to_string()));
    }
    finish(u, params)
}

fn client_request(u: &mut Unstructured, w: &World) -> AResult<String> {
    let method = *pick(
        u,
        &[
            "tools/call",
            "tools/call",
            "tools/call",
            "tools/list",
            "ping",
            "initialize",
            "nope",
            "notifications/cancelled",
        ],
    )?;
    let mut m = Vec::new();
    if u.ratio(3, 4)? {
        m.push(("jsonrpc".to_string(), "\"2.0\"".to_string()));
    }
    if !u.ratio(1, 16)? {
        m.push((key(u, "id")?, id_text(u, w)?));
    }
    m.push((key(u, "method")?, format!("\"{method}\"")));
    match method {
        "tools/call" if !u.ratio(1, 16)? => m.push((key(u, "params")?, call_params(u)?)),
        "tools/list" if u.ratio(1, 3)? => {
            let p = pick(u, &["{}", "{\"cursor\":\"c\"}", "{\"cursor\":null}", "[]"])?;
            m.push(("params".into(), p.to_string()));
        }
        _ => {}
    }
    finish(u, m)
}

fn client_notification(u: &mut Unstructured, w: &World) -> AResult<String> {
    let mut m = vec![("jsonrpc".to_string(), "\"2.0\"".to_string())];
    match u.int_in_range(0..=3u8)? {
        0 | 1 => {
            m.push((key(u, "method")?, "\"notifications/cancelled\"".into()));
            let id = id_text(u, w)?;
            m.push((
                "params".into(),
                format!("{{\"requestId\":{id},\"reason\":\"x\"}}"),
            ));
        }
        2 => {
            m.push((key(u, "method")?, "\"tools/call\"".into()));
            m.push(("params".into(), call_params(u)?));
        }
        _ => {
            let method = pick(
                u,
                &["\"notifications/initialized\"", "\"nope\"", "\"ping\""],
            )?;
            m.push((key(u, "method")?, method.to_string()));
        }
    }
    if u.ratio(1, 6)? {
        // An `id` spelled so that the gateway may not see it.
        m.push((key(u, "id")?, id_text(u, w)?));
    }
    finish(u, m)
}

fn client_reply(u: &mut Unstructured, w: &World) -> AResult<String> {
    let id = if !w.server_ids_client_side.is_empty() && u.ratio(3, 4)? {
        pick(u, &w.server_ids_client_side)?.clone()
    } else {
        id_text(u, w)?
    };
    let mut m = vec![
        ("jsonrpc".to_string(), "\"2.0\"".to_string()),
        (key(u, "id")?, id),
        (key(u, "result")?, "{\"roots\":[]}".to_string()),
    ];
    if u.ratio(1, 4)? {
        // A reply that also looks like a request to somebody.
        m.push((key(u, "method")?, "\"tools/call\"".into()));
        m.push((key(u, "params")?, call_params(u)?));
    }
    finish(u, m)
}

fn tools_result(u: &mut Unstructured) -> AResult<String> {
    const TOOLS: &[&str] = &[
        r#"{"name":"secret","description":"hidden"}"#,
        r#"{"name":"create","inputSchema":{"type":"object"}}"#,
        r#"{"name":"create","inputSchema":{"type":"object","properties":{"a":{"type":"string"}}}}"#,
        r#"{"name":"other","inputSchema":{"type":"object"},"annotations":{"readOnlyHint":true}}"#,
        r#"{"name":"s\u0065cret"}"#,
        r#"{"name":"x","name":"secret"}"#,
        r#"{"name":"secret","name":"x"}"#,
        r#"{"Name":"secret"}"#,
        r#"{"name":"ok","Name":"secret"}"#,
        r#"{"name":"SECRET"}"#,
        r#"{"name":1}"#,
        r#""secret""#,
    ];
    let n = u.int_in_range(0..=4usize)?;
    let mut tools = Vec::new();
    for _ in 0..n {
        tools.push(*pick(u, TOOLS)?);
    }
    let mut m = vec![(key(u, "tools")?, format!("[{}]", tools.join(",")))];
    if u.ratio(1, 5)? {
        m.push((
            "nextCursor".into(),
            pick(u, &["\"p2\"", "null"])?.to_string(),
        ));
    }
    if u.ratio(1, 10)? {
        m.push(("tools".into(), format!("[{}]", TOOLS[0])));
    }
    finish(u, m)
}

/// What the harness upstream answers.
enum Outcome {
    Ran,
    NotRun,
}

fn upstream_reply(u: &mut Unstructured, id: &str) -> AResult<(String, Outcome)> {
    let id = match id.parse::<u64>() {
        Ok(n) => match u.int_in_range(0..=9u8)? {
            0 => format!("{n}.0"),
            1 => format!("\"{n}\""),
            2 => format!("{n}e0"),
            _ => n.to_string(),
        },
        Err(_) => id.to_owned(),
    };
    let mut m = vec![
        ("jsonrpc".to_string(), "\"2.0\"".to_string()),
        (key(u, "id")?, id),
    ];
    let outcome = match u.int_in_range(0..=7u8)? {
        0 | 1 => {
            m.push((key(u, "result")?, tools_result(u)?));
            Outcome::Ran
        }
        2 => {
            let r = r#"{"content":[{"type":"text","text":"done"}],"isError":true}"#;
            m.push(("result".into(), r.into()));
            Outcome::Ran
        }
        3 | 4 => {
            let code = *pick(
                u,
                &[-32700i64, -32600, -32601, -32602, -32603, -32000, 0, 1],
            )?;
            let spelled = if u.ratio(1, 8)? {
                format!("{code}.0")
            } else {
                code.to_string()
            };
            let error = format!(r#"{{"code":{spelled},"message":"m"}}"#);
            m.push((key(u, "error")?, error));
            if jsonrpc::not_executed(code) {
                Outcome::NotRun
            } else {
                Outcome::Ran
            }
        }
        _ => {
            m.push(("result".into(), "{}".into()));
            Outcome::Ran
        }
    };
    Ok((finish(u, m)?, outcome))
}

impl World {
    fn fail(&self, what: String) -> Result<(), String> {
        if self.tainted {
            Ok(())
        } else {
            Err(what)
        }
    }

    /// A line the client receives from the session.
    fn deliver_to_client(&mut self, line: &[u8], is_answer: bool) -> Result<(), String> {
        let text = match text_for_client(line, self.known) {
            Ok(text) => text,
            Err(e) => return self.fail(e),
        };
        let text = text.trim_end_matches('\n');
        if !is_json(text) {
            return self.fail(format!(
                "a line that is not JSON reached the client: {text}"
            ));
        }
        if let Err(e) = check_no_hidden_listed(text.as_bytes(), self.known) {
            return self.fail(e);
        }
        let exact =
            Message::read(text, Reading::Exact).ok_or("a line for the client is not an object")?;
        if exact.method.is_some() {
            if let Some(id) = exact.id {
                self.server_ids_client_side.push(id);
            }
            return Ok(());
        }
        if is_answer {
            return Ok(());
        }
        // Oracle (iii): a reply goes to an open request, under the id the client wrote.
        let Some(id) = exact.id else {
            return self.fail(format!("a reply with no id reached the client: {text}"));
        };
        match self
            .client_requests
            .iter_mut()
            .find(|r| r.open && r.raw_id == id)
        {
            Some(request) => {
                request.open = false;
                Ok(())
            }
            None => self.fail(format!(
                "a reply reached the client under id {id}, which no open request of the client's has: {text}"
            )),
        }
    }

    /// A line the session forwards to the upstream; `upstream_id` from the session.
    fn deliver_upstream(
        &mut self,
        line: &[u8],
        upstream_id: Option<u64>,
        client_line: &str,
    ) -> Result<(), String> {
        let text = std::str::from_utf8(line)
            .map_err(|_| format!("a line for the upstream is not UTF-8: {line:?}"))?;
        if serde_json::from_str::<Value>(text).is_err() {
            return self.fail(format!("a line that is not JSON went upstream: {text}"));
        }
        let exact =
            Message::read(text, Reading::Exact).ok_or("a forwarded line is not an object")?;
        let folded =
            Message::read(text, Reading::Folded).ok_or("a forwarded line is not an object")?;
        if exact != folded {
            self.fail(format!(
                "one forwarded line, two readings: exact {exact:?}, folded {folded:?}: {text}"
            ))?;
        }
        // The upstream is Go-like: it acts on the folded reading.
        let msg = folded;
        if msg.is_request() {
            // Oracle (iii): a forwarded request carries a fresh id of the gateway's.
            let id = msg.id.clone().unwrap_or_default();
            match (upstream_id, id.parse::<u64>()) {
                (Some(ours), Ok(read)) if ours == read && ours > self.last_upstream_id => {
                    self.last_upstream_id = ours;
                }
                _ => self.fail(format!(
                    "a request went upstream under id {id}, not a fresh id of the gateway's ({upstream_id:?}): {text}"
                ))?,
            }
            if msg.method.as_deref() == Some("tools/call") && msg.name.as_deref() == Some(HIDDEN) {
                self.fail(format!("a call to the hidden tool went upstream: {text}"))?;
            }
            let is_create =
                msg.method.as_deref() == Some("tools/call") && msg.name.as_deref() == Some(CAPPED);
            if is_create {
                self.creates += 1;
            }
            self.received.push(UpRequest {
                id,
                is_create,
                answered: false,
            });
            if let Some(raw) = get(client_line, "id", Reading::Exact) {
                self.client_requests.push(ClientRequest {
                    raw_id: raw.get().to_owned(),
                    key: canonical(raw.get()),
                    open: true,
                });
            }
        } else if msg.method.as_deref() == Some("notifications/cancelled") {
            if let Some(request_id) =
                get_path(client_line, &["params", "requestId"], Reading::Exact)
            {
                let key = canonical(request_id.get());
                for r in self.client_requests.iter_mut().filter(|r| r.key == key) {
                    r.open = false;
                }
            }
        } else if msg.method.is_some() && msg.id.is_none() {
            // A notification.
            if msg.method.as_deref() == Some("tools/call") {
                self.fail(format!("a tools/call notification went upstream: {text}"))?;
            }
        } else if upstream_id.is_some() {
            self.fail(format!(
                "the session gave an upstream id to a line that is not a request: {text}"
            ))?;
        }
        // Oracle (ii): at most CAP create calls ran.
        let ran = self.creates - self.creates_not_run;
        if ran > CAP {
            self.fail(format!(
                "{ran} `create` calls ran upstream, over the cap of {CAP} (last: {text})"
            ))?;
        }
        Ok(())
    }

    fn step(&mut self, u: &mut Unstructured) -> AResult<Result<(), String>> {
        Ok(match u.int_in_range(0..=19u8)? {
            0..=5 => {
                let line = client_request(u, self)?;
                self.client_sends(u, line)?
            }
            6 | 7 => {
                let line = client_notification(u, self)?;
                self.client_sends(u, line)?
            }
            8 => {
                let line = client_reply(u, self)?;
                self.client_sends(u, line)?
            }
            9..=13 => {
                let open: Vec<usize> = (0..self.received.len())
                    .filter(|&i| !self.received[i].answered || u.ratio(1, 8).unwrap_or(false))
                    .collect();
                let Ok(&i) = u.choose(&open) else {
                    return Ok(Ok(()));
                };
                let (line, outcome) = upstream_reply(u, &self.received[i].id.clone())?;
                let request = &mut self.received[i];
                // An upstream answers a request once. A second answer saying "not executed"
                // after the first (which the gateway may have dropped as unreadable) would be
                // the upstream contradicting itself: the gateway trusts those codes (README,
                // Counters), so that is out of the model.
                if request.answered && matches!(outcome, Outcome::NotRun) {
                    return Ok(Ok(()));
                }
                if !request.answered {
                    request.answered = true;
                    if request.is_create && matches!(outcome, Outcome::NotRun) {
                        self.creates_not_run += 1;
                    }
                }
                self.upstream_sends(line.as_bytes())
            }
            14 => {
                // A reply under any id. If the id is that of a request the upstream received
                // and has not answered, this is its answer, and it counts as one.
                let id = id_text(u, self)?;
                let (line, outcome) = upstream_reply(u, &id)?;
                let same = |r: &UpRequest| {
                    id.parse::<f64>().is_ok() && r.id.parse::<f64>().ok() == id.parse::<f64>().ok()
                };
                if let Some(request) = self.received.iter_mut().find(|r| same(r)) {
                    if request.answered && matches!(outcome, Outcome::NotRun) {
                        return Ok(Ok(())); // as above: out of the model
                    }
                    if !request.answered {
                        request.answered = true;
                        if request.is_create && matches!(outcome, Outcome::NotRun) {
                            self.creates_not_run += 1;
                        }
                    }
                }
                self.upstream_sends(line.as_bytes())
            }
            15 => {
                let id = pick(u, &["1", "\"s1\"", "7", "\"x\"", "1.0"])?.to_string();
                self.server_ids_upstream_side.push(id.clone());
                let method = pick(u, &["roots/list", "sampling/createMessage", "ping"])?;
                let line = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}"}}"#);
                self.upstream_sends(line.as_bytes())
            }
            16 => {
                let line = match u.int_in_range(0..=2u8)? {
                    0 => r#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#.to_string(),
                    1 => {
                        let id = if self.server_ids_upstream_side.is_empty() {
                            "1".to_string()
                        } else {
                            pick(u, &self.server_ids_upstream_side)?.clone()
                        };
                        format!(r#"{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{{"requestId":{id}}}}}"#)
                    }
                    _ => r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}"#.to_string(),
                };
                self.upstream_sends(line.as_bytes())
            }
            17 => {
                // Raw bytes, either way.
                let len = u.int_in_range(0..=40usize)?;
                let bytes = u.bytes(len)?.to_vec();
                if u.ratio(1, 2)? {
                    let text = String::from_utf8_lossy(&bytes).into_owned();
                    self.client_sends(u, text)?
                } else {
                    self.upstream_sends(&bytes)
                }
            }
            18 => {
                trace("expire", b"");
                let lines = self.session.expire(Duration::ZERO);
                self.all_to_client(lines)
            }
            _ => {
                if u.ratio(1, 4)? {
                    trace("upstream gone", b"");
                    let lines = self.session.upstream_gone("gone");
                    self.all_to_client(lines)
                } else {
                    Ok(())
                }
            }
        })
    }

    fn all_to_client(&mut self, lines: Vec<Vec<u8>>) -> Result<(), String> {
        for line in lines {
            self.deliver_to_client(&line, false)?;
        }
        Ok(())
    }

    fn client_sends(&mut self, u: &mut Unstructured, line: String) -> AResult<Result<(), String>> {
        trace("client>", line.as_bytes());
        if let Some(id) = get(&line, "id", Reading::Exact) {
            if self.client_ids.len() < 32 {
                self.client_ids.push(id.get().to_owned());
            }
        }
        if self.known.lone_case_variant_key && has_case_variant_routing_key(line.as_bytes()) {
            // Past a known bug: keep running the session (for panics), check nothing more.
            self.tainted = true;
        }
        let out = self.session.from_client(line.as_bytes());
        Ok(match out {
            ClientLine::Forward(forward) => {
                let upstream_id = forward.upstream_id;
                let bytes = forward.line.into_owned();
                // How the transport delivers it: usually written; sometimes never written
                // (refunded), or written and then given up on.
                let delivery = if upstream_id.is_some() {
                    u.int_in_range(0..=15u8)?
                } else {
                    2
                };
                match (delivery, upstream_id) {
                    (0, Some(n)) => match self.abandon_unwritten(n) {
                        Some(reply) => {
                            // The client's request, answered: record it so the reply matches.
                            if let Some(raw) = get(&line, "id", Reading::Exact) {
                                self.client_requests.push(ClientRequest {
                                    raw_id: raw.get().to_owned(),
                                    key: canonical(raw.get()),
                                    open: true,
                                });
                            }
                            self.deliver_to_client(&reply, false)
                        }
                        None => {
                            Err("abandon found no pending request for a fresh upstream id".into())
                        }
                    },
                    (1, Some(n)) => {
                        self.deliver_upstream(&bytes, upstream_id, &line)
                            .and_then(|()| match self.session.abandon(n, true, "broken pipe") {
                                Some(reply) => self.deliver_to_client(&reply, false),
                                None => Ok(()),
                            })
                    }
                    _ => self.deliver_upstream(&bytes, upstream_id, &line),
                }
            }
            ClientLine::Answer(reply) => self.deliver_to_client(&reply, true),
            ClientLine::Drop => Ok(()),
            // The harness's sessions have no approvals: nothing is ever held.
            ClientLine::Hold(held) => panic!("a session without approvals held a call: {held:?}"),
        })
    }

    fn abandon_unwritten(&mut self, n: u64) -> Option<Vec<u8>> {
        trace("abandon unwritten", n.to_string().as_bytes());
        self.session.abandon(n, false, "not written")
    }

    fn upstream_sends(&mut self, line: &[u8]) -> Result<(), String> {
        trace("upstream>", line);
        match self.session.from_upstream(line) {
            Some(out) => {
                let out = out.into_owned();
                self.deliver_to_client(&out, false)
            }
            None => Ok(()),
        }
    }
}

/// Whether `text` is JSON. serde_json refuses numbers beyond f64 (`1e400`) and escapes of
/// lone surrogates (`"\ude66"`), which RFC 8259's grammar allows (it lets a parser set limits,
/// and JavaScript servers emit such strings): the gateway forwards them as the upstream wrote
/// them, outside a tool list (where it fails closed), and that is not what these oracles are
/// about.
fn is_json(text: &str) -> bool {
    match serde_json::from_str::<Value>(text) {
        Ok(_) => true,
        Err(e) => {
            let e = e.to_string();
            e.contains("number out of range") || e.contains("surrogate")
        }
    }
}

/// With `HARNESS_TRACE` set, prints the conversation (to see what a failing input did).
fn trace(who: &str, line: &[u8]) {
    if std::env::var_os("HARNESS_TRACE").is_some() {
        eprintln!("{who} {}", String::from_utf8_lossy(line));
    }
}

/// Oracles (i)-(iv) over one conversation built from `data` (see the crate's TESTING.md).
pub fn check_session(data: &[u8], known: Known) -> Result<(), String> {
    let mut u = Unstructured::new(data);
    let mut w = World {
        session: new_session(),
        known,
        client_ids: Vec::new(),
        client_requests: Vec::new(),
        received: Vec::new(),
        creates: 0,
        creates_not_run: 0,
        last_upstream_id: 0,
        server_ids_client_side: Vec::new(),
        server_ids_upstream_side: Vec::new(),
        tainted: false,
    };
    for _ in 0..64 {
        if u.is_empty() {
            break;
        }
        match w.step(&mut u) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => break, // out of input
        }
    }
    Ok(())
}

/// A deterministic byte source for the smoke run (xorshift64*).
pub struct Bytes(pub u64);

impl Bytes {
    pub fn fill(&mut self, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                self.0 ^= self.0 >> 12;
                self.0 ^= self.0 << 25;
                self.0 ^= self.0 >> 27;
                (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
            })
            .collect()
    }
}
