//! Several upstream MCP servers behind one gateway.
//!
//! A set of upstreams looks like one server to the session core: [`connect`] starts each one
//! (a child process, or a Streamable HTTP client session) and returns a pipe pair that the
//! transports treat like one server's stdin and stdout. Between the two sits the [`Router`]:
//! - tools and prompts are exposed as `{prefix}{separator}{name}` (`llmgw__session_create`),
//!   resources as `{name}+{uri}`; calls go to their server under its own names;
//! - `initialize` and the listings go to every server and come back merged; listings page
//!   across servers with one opaque cursor;
//! - server→client requests and notifications reach the client and come back to the server
//!   that sent them; a cancellation reaches the server working on the request;
//! - a server that fails to start or dies takes only its own tools down.
//!
//! Policies name tools by their namespaced names, so the engine needs nothing new: the session
//! core decides `llmgw__session_create` as it decided `session_create`, and the router sends the
//! upstream exactly that call under its own name.
//!
//! ## Files
//! - `names.rs`: namespacing and the cross-server cursor.
//! - `router/`: the sans-IO router (`mod.rs` the session side, `replies.rs` the upstreams');
//!   `merge.rs`: merged `initialize` and listing replies.
//! - `legs.rs`: stdio and Streamable HTTP upstreams; `driver.rs`: the thread and the pipes.

pub mod config;
mod driver;
mod legs;
mod merge;
mod names;
mod router;
#[cfg(test)]
mod tests;

pub use driver::{connect, Connected};
pub use names::{check_name, Cursor, Names};
pub use router::{Out, Router, UpState};

use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One upstream server of a set, as the config or the command line names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamSpec {
    /// The upstream's name: `[A-Za-z][A-Za-z0-9-]{0,31}`. Its tools are exposed as
    /// `{prefix}{separator}{tool}`, its resources as `{name}+{uri}`.
    pub name: String,
    /// The tool and prompt prefix (default: the name).
    pub prefix: Option<String>,
    /// Where the server is.
    pub target: Target,
}

/// How to reach an upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A stdio server: its command and arguments.
    Command(Vec<String>),
    /// A Streamable HTTP server: its MCP endpoint, and extra headers to send it.
    Url {
        /// The endpoint (`http://` or `https://`).
        url: String,
        /// Extra headers (its own credentials, say).
        headers: Vec<(String, String)>,
    },
}

/// A set of upstreams and how their names are joined.
#[derive(Clone, Debug)]
pub struct UpstreamSet {
    /// The servers, in the order their tools are listed.
    pub upstreams: Vec<UpstreamSpec>,
    /// Between a prefix and a tool's own name. Default `__`: MCP tool names allow
    /// `A-Z a-z 0-9 _ - .`, and `__` rarely appears in a tool's own name's start.
    pub separator: String,
    /// Longest message accepted from an upstream (one line, one JSON reply or one SSE event).
    /// Default 64 MiB: tool results carry files and images.
    pub max_message: usize,
    /// How long `initialize` and the listings wait for a slow upstream before answering
    /// without it (an upstream that misses `initialize` is taken as down). Default 30 s.
    pub fanout_timeout: Duration,
}

impl UpstreamSet {
    /// A set with the default separator and limits.
    pub fn new(upstreams: Vec<UpstreamSpec>) -> Self {
        Self {
            upstreams,
            separator: "__".into(),
            max_message: 64 << 20,
            fanout_timeout: Duration::from_secs(30),
        }
    }

    /// The names, checked: valid characters, no two upstreams whose names could clash.
    pub fn names(&self) -> Result<Names, String> {
        if self.upstreams.is_empty() {
            return Err("no upstream servers given".into());
        }
        let pairs: Vec<(String, String)> = self
            .upstreams
            .iter()
            .map(|u| {
                (
                    u.name.clone(),
                    u.prefix.clone().unwrap_or_else(|| u.name.clone()),
                )
            })
            .collect();
        Names::new(&self.separator, &pairs)
    }

    /// Reads `NAME=COMMAND` or `NAME=URL` (the command split like a shell would, without
    /// running one): `toolgate run --upstream`.
    pub fn parse_flag(flag: &str) -> Result<UpstreamSpec, String> {
        let (name, rest) = flag
            .split_once('=')
            .ok_or_else(|| format!("`{flag}`: expected NAME=COMMAND or NAME=URL"))?;
        check_name(name)?;
        let target = if rest.starts_with("http://") || rest.starts_with("https://") {
            Target::Url {
                url: rest.to_owned(),
                headers: Vec::new(),
            }
        } else {
            let words = shlex::split(rest)
                .filter(|w| !w.is_empty())
                .ok_or_else(|| {
                    format!("`{flag}`: the command has an unclosed quote or nothing in it")
                })?;
            Target::Command(words)
        };
        Ok(UpstreamSpec {
            name: name.to_owned(),
            prefix: None,
            target,
        })
    }
}

/// How each upstream is doing, across the sessions of a gateway: for `/status`.
#[derive(Clone, Default)]
pub struct Board(Arc<Mutex<BTreeMap<String, Health>>>);

/// One upstream's sessions by state, and its last failure.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Health {
    /// Sessions in which it is starting.
    pub starting: usize,
    /// Sessions in which it serves.
    pub ready: usize,
    /// Sessions in which it failed or went away.
    pub down: usize,
    /// Why it last went down.
    pub last_error: Option<String>,
}

impl Board {
    fn count(&self, name: &str, state: &UpState, delta: isize) {
        let mut board = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let health = board.entry(name.to_owned()).or_default();
        let slot = match state {
            UpState::Starting => &mut health.starting,
            UpState::Ready => &mut health.ready,
            UpState::Down(why) => {
                if delta > 0 {
                    health.last_error = Some(why.clone());
                }
                &mut health.down
            }
        };
        *slot = slot.saturating_add_signed(delta);
    }

    fn joined<'a>(&self, states: impl Iterator<Item = (&'a str, &'a UpState)>) {
        for (name, state) in states {
            self.count(name, state, 1);
        }
    }

    fn left<'a>(&self, states: impl Iterator<Item = (&'a str, &'a UpState)>) {
        for (name, state) in states {
            self.count(name, state, -1);
        }
    }

    fn changed<'a>(
        &self,
        names: impl Iterator<Item = &'a str>,
        before: &[UpState],
        after: &[UpState],
    ) {
        for ((name, before), after) in names.zip(before).zip(after) {
            if before != after {
                self.count(name, before, -1);
                self.count(name, after, 1);
            }
        }
    }

    /// Every upstream's health, by name.
    pub fn snapshot(&self) -> BTreeMap<String, Health> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What one upstream listed, as a client sees it.
#[derive(Clone, Debug)]
pub struct Listing {
    /// The upstream's name (from its spec).
    pub upstream: String,
    /// Its `initialize` result's `serverInfo` (`name`, `version`, ...), if it gave one.
    pub server_info: Option<Value>,
    /// Every tool of every page of its `tools/list`, as it wrote them (names not prefixed).
    pub tools: Vec<Value>,
}

/// Connects to each upstream like a client (`initialize`, `notifications/initialized`, every
/// page of `tools/list`), then closes. Any upstream that cannot be listed fails the whole call.
pub fn list_tools(specs: &[UpstreamSpec], timeout: Duration) -> anyhow::Result<Vec<Listing>> {
    let mut set = UpstreamSet::new(specs.to_vec());
    set.fanout_timeout = timeout;
    let names = set.names().map_err(anyhow::Error::msg)?;
    let Connected { output, mut input } = connect(&set, None, Board::default())?;
    let (lines, heard) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).split(b'\n') {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + timeout + Duration::from_secs(5);
    let mut ask = |id: u64, method: &str, params: Value| -> anyhow::Result<Value> {
        if id == 0 {
            writeln!(input, r#"{{"jsonrpc":"2.0","method":"{method}"}}"#)?;
            return Ok(Value::Null);
        }
        let request = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        writeln!(input, "{request}")?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = heard
                .recv_timeout(left)
                .map_err(|_| anyhow::anyhow!("no answer to `{method}` within {timeout:?}"))??;
            let Ok(message) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            if message.get("method").is_some() {
                // A server's own request (roots, sampling): a lister has none to give.
                if let Some(their) = message.get("id") {
                    let refusal = json!({"jsonrpc": "2.0", "id": their,
                        "error": {"code": -32601, "message": "toolgate is only listing tools"}});
                    writeln!(input, "{refusal}")?;
                }
                continue;
            }
            if message.get("id") != Some(&json!(id)) {
                continue;
            }
            if let Some(error) = message.get("error") {
                anyhow::bail!(
                    "`{method}` failed: {}",
                    error["message"].as_str().unwrap_or("?")
                );
            }
            return Ok(message["result"].clone());
        }
    };
    let init = ask(
        1,
        "initialize",
        json!({"protocolVersion": "2025-11-25", "capabilities": {},
               "clientInfo": {"name": "toolgate-catalog", "version": env!("CARGO_PKG_VERSION")}}),
    )?;
    ask(0, "notifications/initialized", Value::Null)?;
    let servers = &init["_meta"]["toolgate"]["upstreams"];
    let missing: Vec<&str> = (0..names.len())
        .map(|i| names.name(i))
        .filter(|n| servers.get(*n).is_none())
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "these upstream servers could not be initialized: {}",
            missing.join(", ")
        );
    }
    let mut listings: Vec<Listing> = (0..names.len())
        .map(|i| Listing {
            upstream: names.name(i).to_owned(),
            server_info: servers.get(names.name(i)).cloned().filter(|v| !v.is_null()),
            tools: Vec::new(),
        })
        .collect();
    let mut params = json!({});
    for id in 2.. {
        let page = ask(id, "tools/list", params)?;
        for tool in page["tools"].as_array().into_iter().flatten() {
            let Some((i, own)) = tool["name"].as_str().and_then(|n| names.split_tool(n)) else {
                continue;
            };
            let mut tool = tool.clone();
            tool["name"] = Value::String(own.to_owned());
            listings[i].tools.push(tool);
        }
        match page.get("nextCursor").and_then(Value::as_str) {
            Some(cursor) if id < 10_000 => params = json!({"cursor": cursor}),
            _ => break,
        }
    }
    Ok(listings)
}
