//! One MCP session through the gateway: where every `tools/call` is decided.
//!
//! A [`Session`] sees each line from the client and from the upstream, in order, and says what
//! to do with it. It does no I/O itself, so the stdio transport (and later the HTTP one) only
//! move bytes. Everything passes through unchanged except:
//! - **`tools/call`**: the policy decides. An allowed call is forwarded as the client wrote it;
//!   a refused one is answered here with a tool result (`isError: true`) and never reaches the
//!   upstream.
//! - **`tools/list` replies**: tools the policy hides are removed; everything else in the reply
//!   is kept as it was.
//! - **Lines that are not JSON-RPC**: answered here with `-32700` or `-32600`; the session goes on.
//!
//! Requests are remembered by id until their reply passes, for three reasons: a `tools/list`
//! reply must be recognised to be filtered, an allowed call's counter units are refunded when
//! the upstream answers it with a JSON-RPC error (the tool never ran), and when the upstream dies
//! every request still waiting gets an error instead of hanging.

use crate::counters::{CounterStore, Reservation};
use crate::decision::Decision;
use crate::decision::Verdict;
use crate::jsonrpc::{self, Envelope, Fault};
use crate::policy::{Outcome, Policy, ToolAnnotations, ToolCall, UNKNOWN_RULE};
use arc_swap::ArcSwap;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What to do with a line from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientLine {
    /// Send the line to the upstream as it is.
    Forward,
    /// Do not forward; send this reply line to the client instead.
    Answer(Vec<u8>),
}

/// Who is calling, for counters and conditions.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The grant (agent identity) the session belongs to.
    pub grant: String,
    /// This session's id: counters with `scope: session` are kept per id.
    pub session: String,
}

/// What the session remembers about a request until its reply passes.
#[derive(Debug)]
enum Pending {
    /// `first_page`: the request had no `cursor`, so its reply starts a fresh catalogue.
    ToolsList {
        first_page: bool,
    },
    ToolsCall(Vec<Reservation>),
    /// `initialize`: its reply names the server (`serverInfo.name`), which plugins see.
    Initialize,
    Other,
}

/// The upstream's tool names, as its `tools/list` replies showed them.
///
/// Once a complete listing has passed, a call to a tool that is not in it is answered
/// "unknown tool" here, the same answer a hidden tool gets: a hidden tool cannot be told apart
/// from one that does not exist. Until then (and after `notifications/tools/list_changed`)
/// such calls go upstream, which answers for itself.
#[derive(Debug, Default)]
enum Catalogue {
    #[default]
    Unknown,
    /// Pages seen so far of a listing that has a `nextCursor`.
    Partial(Tools),
    Complete(Tools),
}

/// Tool names and their annotations (when the listing gave them).
type Tools = HashMap<String, Option<ToolAnnotations>>;

#[derive(Default)]
struct State {
    pending: HashMap<String, Pending>,
    catalogue: Catalogue,
    /// The upstream's `serverInfo.name`, once its `initialize` reply has passed.
    server: Arc<str>,
    /// Set when the upstream is gone: later requests are answered with an error at once.
    upstream_gone: bool,
}

/// The gateway's view of one MCP session.
pub struct Session {
    /// The active policy: read once per decision, so that a swap never splits one.
    policy: Arc<ArcSwap<Policy>>,
    counters: Arc<dyn CounterStore>,
    identity: Identity,
    state: Mutex<State>,
    /// How many `tools/list` and `initialize` requests await their reply: replies the session
    /// must read before the client sees them (kept outside the lock: it is read for every line
    /// from the upstream).
    lists_pending: AtomicUsize,
}

#[derive(Deserialize)]
struct CallParams<'a> {
    #[serde(borrow)]
    name: std::borrow::Cow<'a, str>,
    #[serde(default)]
    arguments: Option<Value>,
}

#[derive(Deserialize)]
struct CancelledNotification {
    params: CancelledParams,
}

#[derive(Deserialize)]
struct CancelledParams {
    #[serde(rename = "requestId")]
    request_id: Box<RawValue>,
}

/// Whether a `tools/list` request asks for a later page.
fn has_cursor(params: Option<&RawValue>) -> bool {
    #[derive(Deserialize)]
    struct ListParams {
        #[serde(default)]
        cursor: Option<Value>,
    }
    params
        .and_then(|p| {
            serde_json::from_str::<Option<ListParams>>(p.get())
                .ok()
                .flatten()
        })
        .and_then(|p| p.cursor)
        .is_some_and(|c| !c.is_null())
}

impl Session {
    /// A session for `identity` under `policy`, counting in `counters`.
    pub fn new(policy: Arc<Policy>, counters: Arc<dyn CounterStore>, identity: Identity) -> Self {
        Self::live(Arc::new(ArcSwap::new(policy)), counters, identity)
    }

    /// A session that follows the policy in `policy`, swapped by [`crate::reload`].
    pub fn live(
        policy: Arc<ArcSwap<Policy>>,
        counters: Arc<dyn CounterStore>,
        identity: Identity,
    ) -> Self {
        Self {
            policy,
            counters,
            identity,
            state: Mutex::new(State::default()),
            lists_pending: AtomicUsize::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Handles one line from the client (without its newline).
    pub fn from_client(&self, line: &[u8]) -> ClientLine {
        match Envelope::parse(line) {
            Ok(envelope) => self.from_client_parsed(line, &envelope),
            Err(Fault { code, message }) => {
                tracing::warn!(code, %message, "bad message from client");
                ClientLine::Answer(jsonrpc::error_line(None, code, &message))
            }
        }
    }

    /// [`Session::from_client`] for a line whose envelope the caller has already parsed
    /// (the HTTP front reads the routing fields before it finds the session).
    pub fn from_client_parsed(&self, line: &[u8], envelope: &Envelope) -> ClientLine {
        let (Some(method), Some(id)) = (envelope.method.as_deref(), envelope.id) else {
            if envelope.method.as_deref() == Some("notifications/cancelled") {
                self.forget_cancelled(line);
            }
            return ClientLine::Forward; // notifications, and replies to the server's requests
        };
        let pending = match method {
            "tools/call" => match self.decide_call(envelope.params, id) {
                Ok(pending) => pending,
                Err(answer) => return ClientLine::Answer(answer),
            },
            "tools/list" => Pending::ToolsList {
                first_page: !has_cursor(envelope.params),
            },
            "initialize" => Pending::Initialize,
            _ => Pending::Other,
        };
        let mut state = self.state();
        if state.upstream_gone {
            drop(state);
            if let Pending::ToolsCall(reservations) = pending {
                self.counters.refund(&reservations);
            }
            return ClientLine::Answer(jsonrpc::error_line(
                Some(id),
                jsonrpc::UPSTREAM_GONE,
                "upstream MCP server has exited",
            ));
        }
        // Remember the request before it is forwarded, so that its reply can never arrive first.
        if matches!(pending, Pending::ToolsList { .. } | Pending::Initialize) {
            self.lists_pending.fetch_add(1, Ordering::SeqCst);
        }
        if let Some(Pending::ToolsList { .. } | Pending::Initialize) =
            state.pending.insert(jsonrpc::id_key(id.get()), pending)
        {
            self.lists_pending.fetch_sub(1, Ordering::SeqCst); // a client reused a pending id
        }
        ClientLine::Forward
    }

    /// Decides a `tools/call`. `Err` holds the reply to send instead of forwarding.
    fn decide_call(&self, params: Option<&RawValue>, id: &RawValue) -> Result<Pending, Vec<u8>> {
        let params = params.map_or("null", RawValue::get);
        let params: CallParams = match serde_json::from_str(params) {
            Ok(params) => params,
            Err(e) => {
                let message = format!("invalid tools/call params: {e}");
                tracing::warn!(%message, "bad tools/call from client");
                return Err(jsonrpc::error_line(
                    Some(id),
                    jsonrpc::INVALID_PARAMS,
                    &message,
                ));
            }
        };
        let empty = Value::Object(Default::default());
        let (listed, annotations, server) = {
            let state = self.state();
            let (listed, annotations) = match &state.catalogue {
                Catalogue::Complete(tools) => match tools.get(params.name.as_ref()) {
                    Some(annotations) => (true, *annotations),
                    None => (false, None),
                },
                _ => (true, None),
            };
            (listed, annotations, state.server.clone())
        };
        let call = ToolCall {
            tool: &params.name,
            args: params.arguments.as_ref().unwrap_or(&empty),
            grant: &self.identity.grant,
            session: &self.identity.session,
            server: &server,
            annotations,
        };
        let outcome = if listed {
            self.policy.load().decide(&call, &self.counters)
        } else {
            Outcome {
                decision: Decision::deny(UNKNOWN_RULE, "unknown tool"),
                reservations: Vec::new(),
                instructions: 0,
                peak_memory: 0,
            }
        };
        let d = &outcome.decision;
        tracing::info!(tool = call.tool, grant = call.grant, decision = d.verdict.as_str(), rule = %d.rule, reason = %d.reason, "tools/call");
        if d.verdict == Verdict::Allow {
            return Ok(Pending::ToolsCall(outcome.reservations));
        }
        Err(jsonrpc::result_line(id, &d.to_tool_result()))
    }

    /// A cancelled request will get no reply: forget it. Its counter units stay spent, because
    /// the tool may already have run.
    fn forget_cancelled(&self, line: &[u8]) {
        if let Ok(n) = serde_json::from_slice::<CancelledNotification>(line) {
            let removed = self
                .state()
                .pending
                .remove(&jsonrpc::id_key(n.params.request_id.get()));
            if let Some(Pending::ToolsList { .. } | Pending::Initialize) = removed {
                self.lists_pending.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Handles one line from the upstream (without its newline): `forward` gets the line to
    /// send to the client, the same bytes or a filtered `tools/list` reply.
    ///
    /// While no `tools/list` or `initialize` is pending, a line cannot change on its way or
    /// teach the session anything a later call needs, and a line without an `"error"` key
    /// cannot refund anything; such a line is forwarded first and the
    /// bookkeeping (the pending map) is done after, so the reply's latency does not include
    /// parsing it. Any other line is accounted for first: a client that retries the moment it
    /// sees an error must find its counter unit already back.
    pub fn from_upstream<R>(&self, line: &[u8], forward: impl FnOnce(&[u8]) -> R) -> R {
        let may_refund = memchr::memmem::find(line, b"\"error\"").is_some();
        if !may_refund && self.lists_pending.load(Ordering::SeqCst) == 0 {
            let forwarded = forward(line);
            let _ = self.account_upstream(line);
            forwarded
        } else {
            forward(&self.account_upstream(line))
        }
    }

    fn account_upstream<'l>(&self, line: &'l [u8]) -> std::borrow::Cow<'l, [u8]> {
        let envelope = match Envelope::parse(line) {
            Ok(envelope) => envelope,
            Err(fault) => {
                // Not ours to repair: the client sees exactly what the server sent.
                tracing::warn!(message = %fault.message, "upstream sent a line that is not JSON-RPC");
                return line.into();
            }
        };
        if let Some(method) = envelope.method.as_deref() {
            if method == "notifications/tools/list_changed" {
                self.state().catalogue = Catalogue::Unknown;
            }
            return line.into(); // the server's own requests and notifications
        }
        let Some(key) = envelope.id_key() else {
            return line.into();
        };
        let pending = self.state().pending.remove(&key);
        if let Some(Pending::ToolsList { .. } | Pending::Initialize) = pending {
            self.lists_pending.fetch_sub(1, Ordering::SeqCst);
        }
        match pending {
            Some(Pending::ToolsCall(reservations)) if envelope.error.is_some() => {
                // A JSON-RPC error means the call was not executed: give the units back.
                self.counters.refund(&reservations);
                line.into()
            }
            Some(Pending::ToolsList { first_page }) if envelope.error.is_none() => {
                self.filter_tools_list(line, first_page)
            }
            Some(Pending::Initialize) => {
                if let Some(name) = serde_json::from_slice::<Value>(line)
                    .ok()
                    .as_ref()
                    .and_then(|reply| reply.pointer("/result/serverInfo/name"))
                    .and_then(Value::as_str)
                {
                    self.state().server = Arc::from(name);
                }
                line.into()
            }
            _ => line.into(),
        }
    }

    fn filter_tools_list<'l>(
        &self,
        line: &'l [u8],
        first_page: bool,
    ) -> std::borrow::Cow<'l, [u8]> {
        let Ok(mut reply) = serde_json::from_slice::<Value>(line) else {
            return line.into();
        };
        let more_pages = reply
            .pointer("/result/nextCursor")
            .is_some_and(|c| !c.is_null());
        let Some(tools) = reply
            .pointer_mut("/result/tools")
            .and_then(Value::as_array_mut)
        else {
            return line.into();
        };
        self.record_catalogue(tools, first_page, more_pages);
        let before = tools.len();
        let policy = self.policy.load();
        tools.retain(|tool| {
            tool.get("name")
                .and_then(Value::as_str)
                .is_some_and(|name| policy.is_visible(name))
        });
        if tools.len() == before {
            return line.into();
        }
        tracing::debug!(hidden = before - tools.len(), "filtered tools/list");
        serde_json::to_vec(&reply).map_or_else(|_| line.into(), Into::into)
    }

    fn record_catalogue(&self, tools: &[Value], first_page: bool, more_pages: bool) {
        let names = tools.iter().filter_map(|t| {
            let name = t.get("name").and_then(Value::as_str)?;
            let annotations = t
                .get("annotations")
                .and_then(|a| ToolAnnotations::deserialize(a).ok());
            Some((name.to_owned(), annotations))
        });
        let mut state = self.state();
        let mut seen = match std::mem::take(&mut state.catalogue) {
            _ if first_page => Tools::new(),
            Catalogue::Partial(seen) => seen,
            // A later page without its first: not enough to call anything unknown.
            other => {
                state.catalogue = other;
                return;
            }
        };
        seen.extend(names);
        state.catalogue = if more_pages {
            Catalogue::Partial(seen)
        } else {
            Catalogue::Complete(seen)
        };
    }

    /// The upstream is gone: refunds what it never ran and returns an error reply for every
    /// request still waiting. Requests that arrive later are answered with an error at once.
    pub fn upstream_gone(&self, why: &str) -> Vec<Vec<u8>> {
        let drained: Vec<(String, Pending)> = {
            let mut state = self.state();
            state.upstream_gone = true;
            self.lists_pending.store(0, Ordering::SeqCst);
            state.pending.drain().collect()
        };
        drained
            .into_iter()
            .map(|(key, pending)| {
                if let Pending::ToolsCall(reservations) = pending {
                    self.counters.refund(&reservations);
                }
                let id = RawValue::from_string(key).expect("keys are re-encoded JSON");
                jsonrpc::error_line(Some(&id), jsonrpc::UPSTREAM_GONE, why)
            })
            .collect()
    }

    /// How many requests are waiting for the upstream.
    pub fn pending_requests(&self) -> usize {
        self.state().pending.len()
    }

    /// The reply to a client line longer than the size cap (its id cannot be read).
    pub fn oversized_client_line(&self, length: usize, max: usize) -> Vec<u8> {
        tracing::warn!(length, max, "client message over the size cap");
        jsonrpc::error_line(
            None,
            jsonrpc::INVALID_REQUEST,
            &format!("message of {length} bytes exceeds the gateway's {max}-byte limit"),
        )
    }
}
