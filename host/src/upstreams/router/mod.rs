//! The router: one session's lines, between the session core and several upstreams. Sans-IO,
//! like [`crate::session::Session`]: bytes in, bytes out, time passed in.
//!
//! The session core sees one server. Each line it sends upstream comes here, and goes:
//! - **to one upstream, renamed**: `tools/call` and `prompts/get` by the name's prefix,
//!   `resources/read`, `resources/subscribe` and `resources/unsubscribe` by the URI's,
//!   `completion/complete` by its `ref`. The name (or URI) is the only thing changed: the
//!   `params` object is rewritten member by member from the raw bytes (every other member,
//!   `arguments` included, is copied byte for byte) and spliced back into the line. The
//!   session has already refused lines with duplicate or case-folded keys, so the name the
//!   policy decided is the one name in the line.
//! - **to every live upstream, merged**: `initialize` (capabilities joined, instructions under
//!   each upstream's name), the four listings (`tools/list`, `prompts/list`, `resources/list`,
//!   `resources/templates/list`, paged across upstreams with one opaque [`Cursor`]) and
//!   `logging/setLevel`. Each upstream gets the request under the router's own string id
//!   (`"tg-mux-N"`); the session's ids are integers, so the two never meet.
//! - **to every live upstream as is**: notifications (`initialized`, `roots/list_changed`).
//!   A cancellation goes where its request went.
//! - **answered here**: `ping`; and an error for a request no single upstream can take.
//!
//! Server→client requests (sampling, elicitation, roots) get a fresh integer id here, so that
//! the client's reply finds its way back to the server that asked, under that server's id.
//! Replies to `tools/call` come back byte for byte: nothing in a tool's result is rewritten.
//!
//! **An upstream that is gone takes only its own tools.** Its pending requests are answered
//! with `-32000` (the call may have run: its units stay spent), a call to one of its tools
//! gets `-32602` (it certainly did not run: the units come back), listings leave it out, and
//! the client is told the tool list changed.

mod replies;

use super::merge::{initialize_result, list_page, Answer};
use super::names::{Cursor, Names};
use crate::jsonrpc::{self, Envelope, INVALID_PARAMS, METHOD_NOT_FOUND, UPSTREAM_GONE};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// A line to send.
#[derive(Debug, PartialEq, Eq)]
pub enum Out {
    /// To the session core (and on to the client).
    Client(Vec<u8>),
    /// To the upstream with this index.
    Upstream(usize, Vec<u8>),
}

/// Where an upstream is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpState {
    /// Started; its `initialize` not answered yet.
    Starting,
    /// Initialized: its tools are listed and callable.
    Ready,
    /// Failed to start, refused `initialize`, or went away: why.
    Down(String),
}

/// What a merged request is waiting for.
#[derive(Debug)]
enum Kind {
    Initialize,
    /// A listing: the result member holding the items.
    List(&'static str),
    /// A request every upstream answers with `{}`.
    Empty,
}

/// A request sent to several upstreams, waiting for their replies.
struct Fanout {
    client_id: Box<RawValue>,
    kind: Kind,
    /// The upstreams still to answer: their sub-request's id text.
    waiting: BTreeMap<usize, String>,
    answers: Vec<(usize, Answer)>,
    deadline: Instant,
}

/// A request sent to one upstream.
struct Routed {
    upstream: usize,
    /// `resources/read`: the contents' URIs get the upstream's prefix.
    resource: bool,
}

/// One session's router. See the module doc.
pub struct Router {
    names: Names,
    states: Vec<UpState>,
    /// Each upstream's `initialize` capabilities: listings go only to those that have them.
    capabilities: Vec<Value>,
    routed: HashMap<String, Routed>,
    fanouts: HashMap<u64, Fanout>,
    /// Sub-request id text → (fanout, upstream).
    subs: HashMap<String, (u64, usize)>,
    /// The session's id key → its fanout (to cancel it).
    fanout_of: HashMap<String, u64>,
    next_sub: u64,
    /// Server→client requests by the router's id: the upstream and its id.
    server_requests: HashMap<u64, (usize, Box<RawValue>)>,
    next_server: u64,
    /// How long a merged request waits for a slow upstream before answering without it.
    pub fanout_timeout: Duration,
    initialized: bool,
    /// Bumped whenever an upstream's state changes: the driver looks at the states only then.
    generation: u64,
}

/// The key of a request id the session gave (an integer, however the peer spells it back).
fn key(raw: &RawValue) -> String {
    jsonrpc::gateway_id(raw)
        .map(|n| n.to_string())
        .unwrap_or_else(|| jsonrpc::id_key(raw.get()))
}

fn raw(text: String) -> Box<RawValue> {
    RawValue::from_string(text).expect("serde_json wrote valid JSON")
}

/// `params` with the string at `path` replaced by `new` (raw JSON), rewritten member by
/// member from the raw text: every other member keeps its bytes. `None` if the path is not
/// an object member.
fn replace_member(params: &str, path: &[&str], new: &str) -> Option<String> {
    let (first, rest) = path.split_first()?;
    let mut members: BTreeMap<String, Box<RawValue>> = serde_json::from_str(params).ok()?;
    let slot = members.get_mut(*first)?;
    *slot = if rest.is_empty() {
        raw(new.to_owned())
    } else {
        raw(replace_member(slot.get(), rest, new)?)
    };
    serde_json::to_string(&members).ok()
}

/// The string at `path` in `params`.
fn member<'p>(params: &'p Value, path: &[&str]) -> Option<&'p str> {
    path.iter()
        .try_fold(params, |value, key| value.get(key))?
        .as_str()
}

impl Router {
    /// A router for upstreams named by `names`, all starting.
    pub fn new(names: Names) -> Self {
        let states = vec![UpState::Starting; names.len()];
        Self {
            capabilities: vec![Value::Null; names.len()],
            names,
            states,
            routed: HashMap::new(),
            fanouts: HashMap::new(),
            subs: HashMap::new(),
            fanout_of: HashMap::new(),
            next_sub: 0,
            server_requests: HashMap::new(),
            next_server: 0,
            fanout_timeout: Duration::from_secs(30),
            initialized: false,
            generation: 0,
        }
    }

    /// Each upstream's name and state.
    pub fn states(&self) -> impl Iterator<Item = (&str, &UpState)> {
        self.states
            .iter()
            .enumerate()
            .map(|(i, s)| (self.names.name(i), s))
    }

    /// Changes with every change of an upstream's state.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn live(&self) -> Vec<usize> {
        (0..self.states.len())
            .filter(|&i| self.states[i] == UpState::Ready)
            .collect()
    }

    /// A line from the session core.
    pub fn from_client(&mut self, line: &[u8], now: Instant) -> Vec<Out> {
        let Ok(envelope) = Envelope::parse(line) else {
            tracing::warn!("unreadable line from the session dropped");
            return Vec::new();
        };
        match (envelope.method.as_deref(), envelope.id) {
            (Some(method), Some(id)) => self.request(line, method, id, envelope.params, now),
            (Some(method), None) => self.notification(line, method, envelope.params),
            (None, Some(id)) => self.reply_to_server(line, id),
            (None, None) => Vec::new(),
        }
    }

    fn error(id: &RawValue, code: i64, message: &str) -> Vec<Out> {
        vec![Out::Client(jsonrpc::error_line(Some(id), code, message))]
    }

    fn request(
        &mut self,
        line: &[u8],
        method: &str,
        id: &RawValue,
        params: Option<&RawValue>,
        now: Instant,
    ) -> Vec<Out> {
        let parsed: Value = params
            .and_then(|p| serde_json::from_str(p.get()).ok())
            .unwrap_or(Value::Null);
        match method {
            "initialize" => {
                let targets: Vec<usize> = (0..self.states.len())
                    .filter(|&i| self.states[i] == UpState::Starting)
                    .collect();
                self.fan_out(id, Kind::Initialize, targets, now, |sub| {
                    jsonrpc::splice(line, id, sub.as_bytes())
                })
            }
            "ping" => vec![Out::Client(jsonrpc::result_line(id, &json!({})))],
            "logging/setLevel" => {
                let live = self.live();
                self.fan_out(id, Kind::Empty, live, now, |sub| {
                    jsonrpc::splice(line, id, sub.as_bytes())
                })
            }
            "tools/list" => self.list(id, &parsed, "tools/list", "tools", now),
            "prompts/list" => self.list(id, &parsed, "prompts/list", "prompts", now),
            "resources/list" => self.list(id, &parsed, "resources/list", "resources", now),
            "resources/templates/list" => self.list(
                id,
                &parsed,
                "resources/templates/list",
                "resourceTemplates",
                now,
            ),
            "tools/call" | "prompts/get" => self.route(line, id, params, &parsed, &["name"], false),
            "resources/read" => self.route(line, id, params, &parsed, &["uri"], true),
            "resources/subscribe" | "resources/unsubscribe" => {
                self.route(line, id, params, &parsed, &["uri"], false)
            }
            "completion/complete" => {
                let path: &[&str] = if parsed.pointer("/ref/uri").is_some() {
                    &["ref", "uri"]
                } else {
                    &["ref", "name"]
                };
                self.route(line, id, params, &parsed, path, false)
            }
            _ => Self::error(
                id,
                METHOD_NOT_FOUND,
                &format!("`{method}` cannot be sent to one of several upstream servers: toolgate routes tools, prompts, resources and completions by name"),
            ),
        }
    }

    /// Sends a request to one upstream, its name or URI at `path` turned back into that
    /// upstream's own.
    fn route(
        &mut self,
        line: &[u8],
        id: &RawValue,
        params: Option<&RawValue>,
        parsed: &Value,
        path: &[&str],
        resource: bool,
    ) -> Vec<Out> {
        let (Some(params), Some(name)) = (params, member(parsed, path)) else {
            return Self::error(
                id,
                INVALID_PARAMS,
                &format!("`{}` is missing", path.join(".")),
            );
        };
        let by_uri = path.last() == Some(&"uri");
        let split = if by_uri {
            self.names.split_uri(name)
        } else {
            self.names.split_tool(name)
        };
        let Some((upstream, own)) = split else {
            let what = if by_uri { "URI" } else { "name" };
            return Self::error(
                id,
                INVALID_PARAMS,
                &format!(
                    "unknown {what} `{name}`: it names none of this gateway's upstream servers"
                ),
            );
        };
        let unavailable = match &self.states[upstream] {
            UpState::Ready => None,
            UpState::Down(why) => Some(why.clone()),
            UpState::Starting => Some("not initialized yet".to_owned()),
        };
        if let Some(why) = unavailable {
            return Self::error(
                id,
                INVALID_PARAMS,
                &format!(
                    "`{name}`: upstream server `{}` is not available ({why}); it was not called",
                    self.names.name(upstream)
                ),
            );
        }
        let own = serde_json::to_string(own).expect("a string serializes");
        let Some(line) = replace_member(params.get(), path, &own)
            .and_then(|new| jsonrpc::splice(line, params, new.as_bytes()))
        else {
            return Self::error(id, INVALID_PARAMS, "the request's params cannot be read");
        };
        self.routed.insert(key(id), Routed { upstream, resource });
        vec![Out::Upstream(upstream, line)]
    }

    fn list(
        &mut self,
        id: &RawValue,
        params: &Value,
        method: &'static str,
        items: &'static str,
        now: Instant,
    ) -> Vec<Out> {
        // Without a cursor every live upstream from its first page; with one, the
        // upstreams it names from where each had got to.
        // Only upstreams that declared the capability are asked (`resources` for templates).
        let capability = match items {
            "resourceTemplates" => "resources",
            other => other,
        };
        let pages: Vec<(usize, Option<String>)> = match params.get("cursor") {
            None | Some(Value::Null) => self
                .live()
                .into_iter()
                .filter(|&i| self.capabilities[i].get(capability).is_some())
                .map(|i| (i, None))
                .collect(),
            Some(cursor) => {
                let Some(cursor) = cursor.as_str().and_then(Cursor::decode) else {
                    return Self::error(id, INVALID_PARAMS, "invalid cursor");
                };
                cursor
                    .pages
                    .into_iter()
                    .filter_map(|(name, c)| {
                        let i = (0..self.names.len()).find(|&i| self.names.name(i) == name)?;
                        (self.states[i] == UpState::Ready).then_some((i, c))
                    })
                    .collect()
            }
        };
        let cursors: HashMap<usize, Option<String>> = pages.iter().cloned().collect();
        let targets = pages.iter().map(|(i, _)| *i).collect();
        self.fan_out_each(id, Kind::List(items), targets, now, |sub, i| {
            let params = match &cursors[&i] {
                Some(c) => json!({"cursor": c}),
                None => json!({}),
            };
            let mut line =
                format!(r#"{{"jsonrpc":"2.0","id":{sub},"method":"{method}","params":{params}}}"#)
                    .into_bytes();
            line.push(b'\n');
            Some(line)
        })
    }

    fn fan_out(
        &mut self,
        id: &RawValue,
        kind: Kind,
        targets: Vec<usize>,
        now: Instant,
        line: impl Fn(&str) -> Option<Vec<u8>>,
    ) -> Vec<Out> {
        self.fan_out_each(id, kind, targets, now, |sub, _| line(sub))
    }

    fn fan_out_each(
        &mut self,
        id: &RawValue,
        kind: Kind,
        targets: Vec<usize>,
        now: Instant,
        line: impl Fn(&str, usize) -> Option<Vec<u8>>,
    ) -> Vec<Out> {
        self.next_sub += 1;
        let number = self.next_sub;
        let mut fanout = Fanout {
            client_id: raw(id.get().to_owned()),
            kind,
            waiting: BTreeMap::new(),
            answers: Vec::new(),
            deadline: now + self.fanout_timeout,
        };
        let mut out = Vec::new();
        for upstream in targets {
            let sub = format!("\"tg-mux-{number}-{upstream}\"");
            if let Some(line) = line(&sub, upstream) {
                self.subs.insert(sub.clone(), (number, upstream));
                fanout.waiting.insert(upstream, sub);
                out.push(Out::Upstream(upstream, line));
            }
        }
        self.fanout_of.insert(key(id), number);
        self.fanouts.insert(number, fanout);
        out.extend(self.finish_if_done(number));
        out
    }

    fn finish_if_done(&mut self, number: u64) -> Vec<Out> {
        if !self
            .fanouts
            .get(&number)
            .is_some_and(|f| f.waiting.is_empty())
        {
            return Vec::new();
        }
        let fanout = self.fanouts.remove(&number).expect("checked above");
        self.fanout_of.remove(&key(&fanout.client_id));
        let id = &fanout.client_id;
        let line = match fanout.kind {
            Kind::Initialize => {
                for (upstream, answer) in &fanout.answers {
                    self.generation += 1;
                    self.states[*upstream] = match answer {
                        Answer::Result(result) => {
                            self.capabilities[*upstream] = result["capabilities"].clone();
                            UpState::Ready
                        }
                        Answer::Error(why) => UpState::Down(format!("initialize failed: {why}")),
                    };
                }
                match initialize_result(&self.names, &fanout.answers) {
                    Ok(result) => jsonrpc::result_line(id, &result),
                    Err(why) => jsonrpc::error_line(Some(id), UPSTREAM_GONE, &why),
                }
            }
            Kind::List(items) => {
                jsonrpc::result_line(id, &list_page(&self.names, items, &fanout.answers))
            }
            Kind::Empty => jsonrpc::result_line(id, &json!({})),
        };
        vec![Out::Client(line)]
    }

    fn notification(&mut self, line: &[u8], method: &str, params: Option<&RawValue>) -> Vec<Out> {
        if method == "notifications/initialized" {
            self.initialized = true;
        }
        if method != "notifications/cancelled" {
            return self
                .live()
                .into_iter()
                .map(|i| Out::Upstream(i, line.to_vec()))
                .collect();
        }
        #[derive(serde::Deserialize)]
        struct Cancelled<'a> {
            #[serde(borrow, rename = "requestId")]
            request_id: &'a RawValue,
        }
        let Some(cancelled) = params.and_then(|p| serde_json::from_str::<Cancelled>(p.get()).ok())
        else {
            return Vec::new();
        };
        let request = key(cancelled.request_id);
        // Forgotten here as the session forgets it: a server that never answers a cancelled
        // call must not leave it behind, and a late answer goes nowhere.
        if let Some(routed) = self.routed.remove(&request) {
            return vec![Out::Upstream(routed.upstream, line.to_vec())];
        }
        // A merged request: each upstream still working on it is told, under its sub-id.
        let Some(fanout) = self
            .fanout_of
            .remove(&request)
            .and_then(|n| self.fanouts.remove(&n))
        else {
            return Vec::new();
        };
        fanout
            .waiting
            .into_iter()
            .map(|(upstream, sub)| {
                self.subs.remove(&sub);
                let mut line = format!(
                    r#"{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{{"requestId":{sub}}}}}"#
                )
                .into_bytes();
                line.push(b'\n');
                Out::Upstream(upstream, line)
            })
            .collect()
    }

    /// The client's reply to a server→client request: back to the server that asked, under
    /// its own id.
    fn reply_to_server(&mut self, line: &[u8], id: &RawValue) -> Vec<Out> {
        let Some((upstream, own)) =
            jsonrpc::gateway_id(id).and_then(|n| self.server_requests.remove(&n))
        else {
            return Vec::new();
        };
        jsonrpc::splice(line, id, own.get().as_bytes())
            .map(|line| vec![Out::Upstream(upstream, line)])
            .unwrap_or_default()
    }
}
