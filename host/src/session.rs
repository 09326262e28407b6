//! One MCP session through the gateway: where every `tools/call` is decided.
//!
//! A [`Session`] sees each line from the client and from the upstream, in order, and says what
//! to do with it. It does no I/O itself, so the stdio and HTTP transports only move bytes.
//!
//! **What the gateway decides is exactly what the upstream runs.** The rules that make it so:
//! - **Every request is decided.** A message with a `method` and an `id` member is a request,
//!   whatever the id. MCP ids are strings or integers: any other id (`null`, `1.0`, `true`) is
//!   refused with `-32600` and never forwarded. A `tools/call` sent as a notification (no id)
//!   is dropped and logged: it would run upstream with no decision and no reply.
//! - **One reading of a message.** A client message with two keys that some server stack
//!   would read as one (duplicates, or keys equal under case folding, at any depth) is
//!   refused ([`jsonrpc::check_keys`]).
//! - **Upstream ids are the gateway's own.** Each request goes upstream under a fresh id the
//!   gateway chose, spliced into the client's bytes; the reply gets the client's id back.
//!   Correlation, refunds and filtering key on ids the client cannot choose or misspell, and
//!   a client reusing an id that is still pending gets `-32600`. Server→client requests are
//!   renumbered the same way in the other direction.
//! - **Refunds only when the call certainly did not run**: the upstream answered with an
//!   error that means "not executed" ([`jsonrpc::not_executed`]), or the transport never wrote
//!   the request ([`Session::abandon`]). A timeout, a lost upstream or an `isError` result
//!   keeps the units spent.
//! - **Tool lists are filtered, failing closed**: any reply carrying `result.tools` is
//!   filtered, pending or not; one that cannot be read becomes a JSON-RPC error.
//! - **Arguments match the tool's advertised `inputSchema`** before any counter is consumed
//!   (when a listing has shown it), so a call the server would refuse costs no unit.
//!
//! Everything else passes through unchanged. A refused call is answered here with a tool
//! result (`isError: true`) and never reaches the upstream.

use crate::call::{ToolAnnotations, ToolCall};
use crate::counters::{CounterStore, Reservation};
use crate::decision::{Decision, Verdict};
use crate::jsonrpc::{self, Envelope, Fault, IdKind};
use crate::policy::{Outcome, Policy, UNKNOWN_RULE};
use arc_swap::ArcSwap;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// What to do with a line from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientLine<'l> {
    /// Send these bytes to the upstream.
    Forward(Forward<'l>),
    /// Do not forward; send this reply line to the client instead.
    Answer(Vec<u8>),
    /// Send nothing anywhere (logged): a `tools/call` notification, or a reply or
    /// cancellation for a request that is not pending.
    Drop,
}

/// A client line on its way upstream.
#[derive(Debug, PartialEq, Eq)]
pub struct Forward<'l> {
    /// The bytes to send: the client's, with the gateway's id in place of a request's id.
    pub line: Cow<'l, [u8]>,
    /// For a request, the gateway's id for it: the upstream's reply will carry this id.
    pub upstream_id: Option<u64>,
}

/// Who is calling, for counters and conditions.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The grant (agent identity) the session belongs to.
    pub grant: String,
    /// This session's id: counters with `scope: session` are kept per id.
    pub session: String,
}

/// Which tools' arguments are checked against their advertised `inputSchema`.
#[derive(Clone, Debug, Default)]
pub struct SchemaChecks {
    /// No tool's arguments are checked (a server whose schemas are known to be wrong).
    pub off: bool,
    /// These tools' arguments are not checked.
    pub skip: HashSet<String>,
}

impl SchemaChecks {
    /// From the words of `--skip-schema` / `skip_schema`: tool names, or `*` for all.
    pub fn skipping(tools: impl IntoIterator<Item = String>) -> Self {
        let mut checks = Self::default();
        for tool in tools {
            if tool == "*" {
                checks.off = true;
            } else {
                checks.skip.insert(tool);
            }
        }
        checks
    }

    fn applies_to(&self, tool: &str) -> bool {
        !self.off && !self.skip.contains(tool)
    }
}

/// What the session remembers about a request until its reply passes.
#[derive(Debug)]
struct Pending {
    /// The client's id, as the client wrote it: the reply goes back under it.
    client_id: Box<RawValue>,
    /// The client's id, canonical: reuse of a pending id is refused.
    client_key: String,
    kind: Kind,
    sent: Instant,
}

#[derive(Debug)]
enum Kind {
    /// `first_page`: the request had no `cursor`, so its reply starts a fresh catalogue.
    ToolsList {
        first_page: bool,
    },
    ToolsCall(Vec<Reservation>),
    /// `initialize`: its reply names the server (`serverInfo.name`), which plugins see.
    Initialize,
    Other,
}

/// What the gateway knows of one tool from the upstream's listing.
#[derive(Default)]
struct ToolInfo {
    annotations: Option<ToolAnnotations>,
    input_schema: Option<Value>,
    /// The property names of `input_schema`, at any depth.
    schema_keys: jsonrpc::Spellings,
    /// Compiled on the first call that needs it; `None` when the schema does not compile.
    validator: OnceLock<Option<jsonschema::Validator>>,
}

impl std::fmt::Debug for ToolInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolInfo")
            .field("annotations", &self.annotations)
            .field("input_schema", &self.input_schema.is_some())
            .finish()
    }
}

/// The upstream's tools, as its `tools/list` replies showed them.
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

type Tools = HashMap<String, Arc<ToolInfo>>;

#[derive(Default)]
struct State {
    /// The last id the gateway gave a request upstream.
    last_id: u64,
    /// Requests waiting for the upstream's reply, by the gateway's id.
    pending: HashMap<u64, Pending>,
    /// The same requests by the client's canonical id.
    client_ids: HashMap<String, u64>,
    /// The last id the gateway gave a server→client request.
    last_server_id: u64,
    /// Server→client requests waiting for the client's reply: the upstream's id, by ours.
    server_requests: HashMap<u64, Box<RawValue>>,
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
    schemas: SchemaChecks,
    state: Mutex<State>,
}

#[derive(Deserialize)]
struct CallParams<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(default)]
    arguments: Option<Value>,
}

#[derive(Deserialize)]
struct CancelledParams<'a> {
    #[serde(rename = "requestId", borrow)]
    request_id: &'a RawValue,
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

/// Whether a reply's `result` carries a tool list, read the way any client might read it.
enum Listing {
    No,
    /// `result.tools`, exactly once and an array.
    Tools,
    /// A key that some client would read as `tools` but that is not plainly one: refused.
    Ambiguous,
}

fn listing(result: &RawValue) -> Listing {
    let text = result.get().as_bytes();
    if text.first() != Some(&b'{') {
        return Listing::No;
    }
    // Fast path: no `tools` in any case, no `\u` escape and no `ſ` means no key can read as
    // `tools` (other escapes cannot spell a letter).
    let maybe = memchr::memmem::find(text, b"\\u").is_some()
        || memchr::memmem::find(text, "ſ".as_bytes()).is_some()
        || memchr::memchr2_iter(b't', b'T', text).any(|at| {
            text.get(at..at + 5)
                .is_some_and(|w| w.eq_ignore_ascii_case(b"tools"))
        });
    if !maybe {
        return Listing::No;
    }
    let Ok(keys) = serde_json::from_str::<TopKeys>(result.get()) else {
        return Listing::Ambiguous;
    };
    let mut matches = keys
        .0
        .into_iter()
        .filter(|(key, _)| jsonrpc::fold_key(key) == "tools");
    match (matches.next(), matches.next()) {
        (None, _) => Listing::No,
        (Some((key, value)), None) if key == "tools" && value.get().starts_with('[') => {
            Listing::Tools
        }
        _ => Listing::Ambiguous,
    }
}

/// An object's top-level keys and raw values, duplicates kept.
struct TopKeys<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for TopKeys<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TopKeys<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut keys = Vec::new();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    keys.push((key, map.next_value::<&'de RawValue>()?));
                }
                Ok(TopKeys(keys))
            }
        }
        d.deserialize_map(V)
    }
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
            schemas: SchemaChecks::default(),
            state: Mutex::new(State::default()),
        }
    }

    /// Which tools' arguments are checked against their `inputSchema` (all, by default).
    pub fn with_schema_checks(mut self, schemas: SchemaChecks) -> Self {
        self.schemas = schemas;
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Handles one line from the client (without its newline).
    pub fn from_client<'l>(&self, line: &'l [u8]) -> ClientLine<'l> {
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
    pub fn from_client_parsed<'l>(&self, line: &'l [u8], envelope: &Envelope) -> ClientLine<'l> {
        // An id that is not a string or an integer is not echoed: it is what was wrong.
        let echo = envelope
            .id
            .filter(|id| jsonrpc::id_kind(id) != IdKind::Invalid);
        if let Err(Fault { code, message }) = jsonrpc::check_keys(line) {
            tracing::warn!(code, %message, "client message refused");
            return ClientLine::Answer(jsonrpc::error_line(echo, code, &message));
        }
        if let Some(shadow) = &envelope.shadow {
            return ClientLine::Answer(jsonrpc::error_line(
                echo,
                jsonrpc::INVALID_REQUEST,
                &format!(
                    "invalid request: key `{}` differs only in case from a JSON-RPC member, which some servers would read it as",
                    truncated(shadow)
                ),
            ));
        }
        match (envelope.method.as_deref(), envelope.id) {
            (Some(method), Some(id)) => self.request(line, method, id, envelope.params),
            (Some(method), None) => self.client_notification(line, method, envelope.params),
            (None, Some(id)) => self.reply_to_server(line, id),
            (None, None) => ClientLine::Answer(jsonrpc::error_line(
                None,
                jsonrpc::INVALID_REQUEST,
                "invalid request: neither a request, a notification nor a reply",
            )),
        }
    }

    fn request<'l>(
        &self,
        line: &'l [u8],
        method: &str,
        id: &RawValue,
        params: Option<&RawValue>,
    ) -> ClientLine<'l> {
        if jsonrpc::id_kind(id) == IdKind::Invalid {
            tracing::warn!(
                id = id.get(),
                method,
                "request with an id that is not a string or an integer"
            );
            return ClientLine::Answer(jsonrpc::error_line(
                None,
                jsonrpc::INVALID_REQUEST,
                &format!(
                    "invalid request: a request id must be a string or an integer, not `{}`",
                    truncated(id.get())
                ),
            ));
        }
        let client_key = jsonrpc::id_key(id.get());
        // A reused id is refused before the policy runs: it must not cost a counter unit.
        if self.state().client_ids.contains_key(&client_key) {
            return ClientLine::Answer(reused(id));
        }
        let kind = match method {
            "tools/call" => match self.decide_call(params, id) {
                Ok(kind) => kind,
                Err(answer) => return ClientLine::Answer(answer),
            },
            "tools/list" => Kind::ToolsList {
                first_page: !has_cursor(params),
            },
            "initialize" => Kind::Initialize,
            _ => Kind::Other,
        };
        let mut state = self.state();
        let refused = if state.upstream_gone {
            Some(jsonrpc::error_line(
                Some(id),
                jsonrpc::UPSTREAM_GONE,
                "upstream MCP server has exited",
            ))
        } else if state.client_ids.contains_key(&client_key) {
            Some(reused(id)) // the same id, sent twice at once over HTTP
        } else {
            None
        };
        if let Some(answer) = refused {
            drop(state);
            if let Kind::ToolsCall(reservations) = kind {
                self.counters.refund(&reservations);
            }
            return ClientLine::Answer(answer);
        }
        state.last_id += 1;
        let upstream_id = state.last_id;
        let Some(forwarded) = jsonrpc::splice(line, id, upstream_id.to_string().as_bytes()) else {
            unreachable!("the envelope was parsed from this line")
        };
        // Remembered before it is forwarded, so that its reply can never arrive first.
        state.client_ids.insert(client_key.clone(), upstream_id);
        state.pending.insert(
            upstream_id,
            Pending {
                client_id: id.to_owned(),
                client_key,
                kind,
                sent: Instant::now(),
            },
        );
        ClientLine::Forward(Forward {
            line: Cow::Owned(forwarded),
            upstream_id: Some(upstream_id),
        })
    }

    fn client_notification<'l>(
        &self,
        line: &'l [u8],
        method: &str,
        params: Option<&RawValue>,
    ) -> ClientLine<'l> {
        match method {
            "tools/call" => {
                tracing::warn!("dropped a tools/call sent as a notification (no id): it would run with no decision");
                ClientLine::Drop
            }
            "notifications/cancelled" => {
                let Some(params) =
                    params.and_then(|p| serde_json::from_str::<CancelledParams>(p.get()).ok())
                else {
                    return ClientLine::Drop;
                };
                let key = jsonrpc::id_key(params.request_id.get());
                // The request will get no reply: forget it. Its counter units stay spent,
                // because the tool may already have run. A late reply is dropped.
                let upstream_id = {
                    let mut state = self.state();
                    let upstream_id = state.client_ids.remove(&key);
                    if let Some(upstream_id) = upstream_id {
                        state.pending.remove(&upstream_id);
                    }
                    upstream_id
                };
                match upstream_id {
                    Some(upstream_id) => ClientLine::Forward(Forward {
                        line: Cow::Owned(
                            jsonrpc::splice(
                                line,
                                params.request_id,
                                upstream_id.to_string().as_bytes(),
                            )
                            .unwrap_or_default(),
                        ),
                        upstream_id: None,
                    }),
                    None => ClientLine::Drop,
                }
            }
            _ => ClientLine::Forward(Forward {
                line: Cow::Borrowed(line),
                upstream_id: None,
            }),
        }
    }

    /// The client's reply to a server→client request goes back under the upstream's id.
    fn reply_to_server<'l>(&self, line: &'l [u8], id: &RawValue) -> ClientLine<'l> {
        let upstream =
            jsonrpc::gateway_id(id).and_then(|n| self.state().server_requests.remove(&n));
        match upstream.and_then(|upstream| jsonrpc::splice(line, id, upstream.get().as_bytes())) {
            Some(forwarded) => ClientLine::Forward(Forward {
                line: Cow::Owned(forwarded),
                upstream_id: None,
            }),
            None => {
                tracing::warn!(id = %truncated(id.get()), "dropped a reply from the client to no pending server request");
                ClientLine::Drop
            }
        }
    }

    /// Decides a `tools/call`. `Err` holds the reply to send instead of forwarding.
    fn decide_call(&self, params: Option<&RawValue>, id: &RawValue) -> Result<Kind, Vec<u8>> {
        let raw_params = params.map_or("null", RawValue::get);
        let params: CallParams = match serde_json::from_str(raw_params) {
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
        let args = params.arguments.as_ref().unwrap_or(&empty);
        let (listed, info, server) = {
            let state = self.state();
            let (listed, info) = match &state.catalogue {
                Catalogue::Complete(tools) => match tools.get(params.name.as_ref()) {
                    Some(info) => (true, Some(info.clone())),
                    None => (false, None),
                },
                _ => (true, None),
            };
            (listed, info, state.server.clone())
        };
        if let Some(problem) = self.ambiguous_call(raw_params, args, info.as_deref()) {
            tracing::warn!(%problem, "tools/call refused");
            return Err(jsonrpc::error_line(
                Some(id),
                jsonrpc::INVALID_REQUEST,
                &format!("invalid request: {problem}"),
            ));
        }
        let call = ToolCall {
            tool: &params.name,
            args,
            grant: &self.identity.grant,
            session: &self.identity.session,
            server: &server,
            annotations: info.as_ref().and_then(|i| i.annotations),
        };
        let outcome = if !listed {
            refusal(Decision::deny(UNKNOWN_RULE, "unknown tool"))
        } else if let Some(problem) = info
            .as_deref()
            .filter(|_| self.schemas.applies_to(call.tool))
            .and_then(|info| schema_problem(call.tool, info, args))
        {
            refusal(Decision::deny("inputSchema", problem))
        } else {
            self.policy.load().decide(&call, &self.counters)
        };
        let d = &outcome.decision;
        tracing::info!(tool = call.tool, grant = call.grant, decision = d.verdict.as_str(), rule = %d.rule, reason = %d.reason, "tools/call");
        if d.verdict == Verdict::Allow {
            return Ok(Kind::ToolsCall(outcome.reservations));
        }
        Err(jsonrpc::result_line(id, &d.to_tool_result()))
    }

    /// A key of the call that the gateway and a case-insensitive server would read as
    /// different members: `Name` beside no `name` in the params, or an argument key that
    /// differs only in case from one the policy's conditions or the tool's `inputSchema` name.
    fn ambiguous_call(
        &self,
        raw_params: &str,
        args: &Value,
        info: Option<&ToolInfo>,
    ) -> Option<String> {
        if let Some(key) = jsonrpc::call_params_shadow(raw_params) {
            return Some(format!(
                "params key `{}` differs only in case from a tools/call member, which some servers would read it as",
                truncated(&key)
            ));
        }
        let policy = self.policy.load();
        let known = [
            Some(policy.argument_keys()),
            info.map(|info| &info.schema_keys),
        ];
        let known: Vec<&jsonrpc::Spellings> = known
            .into_iter()
            .flatten()
            .filter(|k| !k.is_empty())
            .collect();
        if known.is_empty() {
            return None;
        }
        let found = shadowed_key(args, &known)?;
        Some(format!(
            "argument key `{}` differs only in case from one the policy or the tool's inputSchema names, which some servers would read it as",
            truncated(&found)
        ))
    }

    /// Handles one line from the upstream (without its newline): the bytes to send to the
    /// client (the same, with the client's id restored, or a filtered tool list), or `None`
    /// when the line must not reach the client (a reply to nothing pending, a line that is
    /// not JSON-RPC).
    pub fn from_upstream<'l>(&self, line: &'l [u8]) -> Option<Cow<'l, [u8]>> {
        let envelope = match Envelope::parse(line) {
            Ok(envelope) => envelope,
            Err(fault) => {
                tracing::warn!(message = %fault.message, "dropped a line from the upstream that is not JSON-RPC");
                return None;
            }
        };
        // What a client would read differently from the session is not forwarded: bytes that
        // are not UTF-8 (serde skips what it does not read), a member spelled in another case.
        let unreadable = if std::str::from_utf8(line).is_err() {
            Some("it is not valid UTF-8".to_owned())
        } else {
            envelope.shadow.as_ref().map(|key| {
                format!(
                    "key `{}` differs only in case from a JSON-RPC member",
                    truncated(key)
                )
            })
        };
        if let Some(why) = unreadable {
            tracing::error!(%why, "dropped a message from the upstream");
            let pending = envelope.id.and_then(jsonrpc::gateway_id).and_then(|n| {
                let mut state = self.state();
                let pending = state.pending.remove(&n)?;
                state.client_ids.remove(&pending.client_key);
                Some(pending)
            });
            return pending.map(|p| {
                Cow::Owned(jsonrpc::error_line(
                    Some(&p.client_id),
                    jsonrpc::INTERNAL_ERROR,
                    &format!("[toolgate] the upstream's reply could not be read the way every client would read it, so it was not forwarded: {why}"),
                ))
            });
        }
        match (envelope.method.as_deref(), envelope.id) {
            (Some(_), Some(id)) => {
                // A server→client request: under an id of the gateway's, like the client's.
                let ours = {
                    let mut state = self.state();
                    state.last_server_id += 1;
                    let ours = state.last_server_id;
                    state.server_requests.insert(ours, id.to_owned());
                    ours
                };
                jsonrpc::splice(line, id, ours.to_string().as_bytes()).map(Cow::Owned)
            }
            (Some(method), None) => self.server_notification(line, method, envelope.params),
            (None, Some(id)) => self.reply_to_client(line, &envelope, id),
            (None, None) => {
                tracing::warn!("dropped a message from the upstream with neither method nor id");
                None
            }
        }
    }

    fn server_notification<'l>(
        &self,
        line: &'l [u8],
        method: &str,
        params: Option<&RawValue>,
    ) -> Option<Cow<'l, [u8]>> {
        match method {
            "notifications/tools/list_changed" => {
                self.state().catalogue = Catalogue::Unknown;
                Some(Cow::Borrowed(line))
            }
            "notifications/cancelled" => {
                // The server gave up on one of its requests: name it by the client's id.
                let params =
                    params.and_then(|p| serde_json::from_str::<CancelledParams>(p.get()).ok())?;
                let key = jsonrpc::id_key(params.request_id.get());
                let ours = {
                    let mut state = self.state();
                    let ours = state
                        .server_requests
                        .iter()
                        .find(|(_, upstream)| jsonrpc::id_key(upstream.get()) == key)
                        .map(|(ours, _)| *ours)?;
                    state.server_requests.remove(&ours);
                    ours
                };
                jsonrpc::splice(line, params.request_id, ours.to_string().as_bytes())
                    .map(Cow::Owned)
            }
            _ => Some(Cow::Borrowed(line)),
        }
    }

    fn reply_to_client<'l>(
        &self,
        line: &'l [u8],
        envelope: &Envelope,
        id: &RawValue,
    ) -> Option<Cow<'l, [u8]>> {
        let pending = jsonrpc::gateway_id(id).and_then(|n| {
            let mut state = self.state();
            let pending = state.pending.remove(&n)?;
            state.client_ids.remove(&pending.client_key);
            Some(pending)
        });
        let Some(pending) = pending else {
            // Cancelled, timed out, replayed (`Last-Event-ID`), or never asked: nobody waits.
            tracing::warn!(id = %truncated(id.get()), "dropped a reply from the upstream to no pending request");
            return None;
        };
        if let Some(code) = envelope.error_code() {
            if let Kind::ToolsCall(reservations) = &pending.kind {
                if jsonrpc::not_executed(code) {
                    self.counters.refund(reservations);
                }
            }
        }
        let restore = || jsonrpc::splice(line, id, pending.client_id.get().as_bytes());
        let Some(result) = envelope.result else {
            return restore().map(Cow::Owned);
        };
        let first_page = match pending.kind {
            Kind::ToolsList { first_page } => Some(first_page),
            _ => None,
        };
        match listing(result) {
            Listing::No => {}
            Listing::Tools => {
                return self
                    .filter_tools_list(line, first_page, &pending.client_id)
                    .map(Cow::Owned)
            }
            Listing::Ambiguous => {
                return Some(Cow::Owned(unreadable_list(
                    &pending.client_id,
                    "a key that reads as `tools` is not plainly one",
                )))
            }
        }
        if let Kind::Initialize = pending.kind {
            #[derive(Deserialize)]
            struct Info<'a> {
                #[serde(borrow, rename = "serverInfo")]
                server_info: Option<Named<'a>>,
            }
            #[derive(Deserialize)]
            struct Named<'a> {
                #[serde(borrow)]
                name: Cow<'a, str>,
            }
            if let Ok(Info {
                server_info: Some(named),
            }) = serde_json::from_str(result.get())
            {
                self.state().server = Arc::from(named.name.as_ref());
            }
        }
        restore().map(Cow::Owned)
    }

    /// A reply carrying a tool list: hidden tools removed, the client's id restored. A list
    /// that cannot be read becomes an error: an unfiltered list never passes.
    fn filter_tools_list(
        &self,
        line: &[u8],
        first_page: Option<bool>,
        client_id: &RawValue,
    ) -> Option<Vec<u8>> {
        let mut reply = match serde_json::from_slice::<Value>(line) {
            Ok(reply) => reply,
            Err(e) => return Some(unreadable_list(client_id, &e.to_string())),
        };
        let more_pages = reply
            .pointer("/result/nextCursor")
            .is_some_and(|c| !c.is_null());
        let Some(tools) = reply
            .pointer_mut("/result/tools")
            .and_then(Value::as_array_mut)
        else {
            return Some(unreadable_list(client_id, "`result.tools` is not a list"));
        };
        if let Some(first_page) = first_page {
            self.record_catalogue(tools, first_page, more_pages);
        }
        let before = tools.len();
        let policy = self.policy.load();
        // A tool is kept only if its name reads the same to every client: exactly one key
        // that folds to `name`, spelled `name`.
        tools.retain(|tool| {
            let plain = tool
                .as_object()
                .is_some_and(|o| o.keys().filter(|k| jsonrpc::fold_key(k) == "name").count() == 1);
            plain
                && tool
                    .get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|name| policy.is_visible(name))
        });
        if tools.len() != before {
            tracing::debug!(hidden = before - tools.len(), "filtered tools/list");
        }
        if let Some(object) = reply.as_object_mut() {
            object.insert("id".into(), Value::Null);
        }
        let encoded = serde_json::to_vec(&reply).ok()?;
        let envelope = Envelope::parse(&encoded).ok()?;
        jsonrpc::splice(&encoded, envelope.id?, client_id.get().as_bytes())
    }

    fn record_catalogue(&self, tools: &[Value], first_page: bool, more_pages: bool) {
        let names = tools.iter().filter_map(|t| {
            let name = t.get("name").and_then(Value::as_str)?;
            let input_schema = t.get("inputSchema").cloned();
            let mut names = Vec::new();
            if let Some(schema) = &input_schema {
                property_names(schema, &mut names);
            }
            let info = ToolInfo {
                annotations: t
                    .get("annotations")
                    .and_then(|a| ToolAnnotations::deserialize(a).ok()),
                schema_keys: jsonrpc::Spellings::of(names),
                input_schema,
                validator: OnceLock::new(),
            };
            Some((name.to_owned(), Arc::new(info)))
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

    /// The transport could not deliver the request it was given under `upstream_id`:
    /// forgets it and returns the error reply for the client. `written` says whether any of
    /// it may have reached the upstream: only if not are a call's counter units refunded.
    pub fn abandon(&self, upstream_id: u64, written: bool, why: &str) -> Option<Vec<u8>> {
        let pending = {
            let mut state = self.state();
            let pending = state.pending.remove(&upstream_id)?;
            state.client_ids.remove(&pending.client_key);
            pending
        };
        if let (false, Kind::ToolsCall(reservations)) = (written, &pending.kind) {
            self.counters.refund(reservations);
        }
        Some(jsonrpc::error_line(
            Some(&pending.client_id),
            jsonrpc::UPSTREAM_GONE,
            why,
        ))
    }

    /// Requests sent more than `timeout` ago: forgotten, each answered with an error. Their
    /// counter units stay spent (the tool may be running); a late reply is dropped.
    pub fn expire(&self, timeout: Duration) -> Vec<Vec<u8>> {
        let expired: Vec<Pending> = {
            let mut state = self.state();
            let old: Vec<u64> = state
                .pending
                .iter()
                .filter(|(_, p)| p.sent.elapsed() >= timeout)
                .map(|(id, _)| *id)
                .collect();
            let state = &mut *state;
            old.into_iter()
                .filter_map(|id| state.pending.remove(&id))
                .inspect(|p| {
                    state.client_ids.remove(&p.client_key);
                })
                .collect()
        };
        let message = format!(
            "[toolgate] the upstream MCP server did not answer within {} s",
            timeout.as_secs_f64()
        );
        expired
            .iter()
            .map(|p| {
                tracing::warn!(id = %truncated(p.client_id.get()), "request timed out upstream");
                jsonrpc::error_line(Some(&p.client_id), jsonrpc::UPSTREAM_GONE, &message)
            })
            .collect()
    }

    /// The upstream is gone: returns an error reply for every request still waiting. Their
    /// counter units stay spent: the upstream may have run them before it went. Requests that
    /// arrive later are answered with an error at once.
    pub fn upstream_gone(&self, why: &str) -> Vec<Vec<u8>> {
        let drained: Vec<Pending> = {
            let mut state = self.state();
            state.upstream_gone = true;
            state.client_ids.clear();
            state.server_requests.clear();
            state.pending.drain().map(|(_, p)| p).collect()
        };
        drained
            .iter()
            .map(|p| jsonrpc::error_line(Some(&p.client_id), jsonrpc::UPSTREAM_GONE, why))
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

fn refusal(decision: Decision) -> Outcome {
    Outcome {
        decision,
        reservations: Vec::new(),
        instructions: 0,
        peak_memory: 0,
    }
}

fn reused(id: &RawValue) -> Vec<u8> {
    jsonrpc::error_line(
        Some(id),
        jsonrpc::INVALID_REQUEST,
        &format!(
            "invalid request: id `{}` is already used by a request that awaits its reply",
            truncated(id.get())
        ),
    )
}

fn unreadable_list(client_id: &RawValue, why: &str) -> Vec<u8> {
    tracing::error!(
        why,
        "the upstream's tool list could not be read; not forwarded"
    );
    jsonrpc::error_line(
        Some(client_id),
        jsonrpc::INTERNAL_ERROR,
        &format!(
            "[toolgate] the upstream's tool list could not be read, so it was not forwarded: {why}"
        ),
    )
}

/// Why `args` do not match the tool's advertised `inputSchema`, if they do not.
fn schema_problem(tool: &str, info: &ToolInfo, args: &Value) -> Option<String> {
    let schema = info.input_schema.as_ref()?;
    let validator = info.validator.get_or_init(|| match jsonschema::validator_for(schema) {
        Ok(validator) => Some(validator),
        Err(e) => {
            // The server's own schema is broken: the policy still decides; say so once.
            tracing::warn!(tool, error = %e, "the tool's inputSchema does not compile; its arguments are not checked");
            None
        }
    });
    let error = validator.as_ref()?.iter_errors(args).next()?;
    let path = error.instance_path().to_string();
    let at = if path.is_empty() {
        String::new()
    } else {
        format!(" at `{path}`")
    };
    Some(format!(
        "the arguments do not match the tool's inputSchema{at}: {error}"
    ))
}

/// The names of every `properties` object in a JSON Schema, at any depth.
fn property_names<'s>(schema: &'s Value, out: &mut Vec<&'s str>) {
    match schema {
        Value::Object(object) => {
            for (key, value) in object {
                if key == "properties" {
                    if let Value::Object(properties) = value {
                        out.extend(properties.keys().map(String::as_str));
                    }
                }
                property_names(value, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| property_names(v, out)),
        _ => {}
    }
}

/// A key anywhere in `value` that folds to a name in `known` but is spelled as none of them.
fn shadowed_key(value: &Value, known: &[&jsonrpc::Spellings]) -> Option<String> {
    match value {
        Value::Object(object) => object.iter().find_map(|(key, value)| {
            if known.iter().any(|k| k.shadows(key)) {
                Some(key.clone())
            } else {
                shadowed_key(value, known)
            }
        }),
        Value::Array(items) => items.iter().find_map(|v| shadowed_key(v, known)),
        _ => None,
    }
}

/// An id or other client text, shortened for a message or log.
fn truncated(text: &str) -> Cow<'_, str> {
    const MAX: usize = 64;
    if text.len() <= MAX {
        return Cow::Borrowed(text);
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &text[..end]))
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
