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
//!
//! ## A sans-IO core
//! The transports ([`crate::stdio`], [`crate::http`]) own the pipes, sockets and threads;
//! they hand each line to [`Session::from_client`] or [`Session::from_upstream`] and do what
//! the answer says ([`ClientLine`]). Time enters only through [`Session::expire`], and the
//! loss of the upstream through [`Session::upstream_gone`] and [`Session::abandon`]. So the
//! whole of the gateway's logic can be driven with bytes in a unit test (`tests.rs`).
//!
//! ## How one `tools/call` is decided
//! [`Session::from_client`] parses the envelope ([`jsonrpc::Envelope`]) and refuses what
//! some server would read another way; `Session::request` refuses an invalid or reused id
//! and hands a `tools/call` to `Session::decide_call`, which, in this order: reads the
//! params, refuses keys that shadow a member or an argument the policy or the tool's schema
//! names, answers "unknown tool" for a tool a complete listing did not show, checks the
//! arguments against the tool's `inputSchema`, and then asks the policy
//! (`self.policy.load().decide(..)`, [`Policy::decide`]). An allowed call keeps its counter
//! reservations until its reply; a refused one becomes the tool result the client gets.
//!
//! ## Files
//! - `mod.rs`: the [`Session`] type, the dispatch of client and upstream lines, the decision.
//! - `ids.rs`: the gateway's own ids: the pending requests, the client's ids, server→client
//!   requests, cancellations both ways, refunds on abandon, timeouts and upstream loss.
//! - `setup.rs`: making a session: its policy, counters and identity, and what it reports to
//!   and holds calls on.
//! - `catalogue.rs`: the upstream's tool listings: filtering hidden tools from every page,
//!   the per-tool annotations and `inputSchema` checks ([`SchemaChecks`]), shadowed keys.

mod approval;
mod audited;
mod catalogue;
mod ids;
mod input_required;
mod results;
mod setup;
mod shadow;

pub use approval::{HeldCall, PROGRESS_EVERY};
pub use audited::Audit;
pub use catalogue::SchemaChecks;
pub use shadow::ShadowRunner;

use crate::call::ToolCall;
use crate::counters::CounterStore;
use crate::decision::{Decision, Verdict};
use crate::jsonrpc::{self, Envelope, Fault, IdKind};
use crate::policy::{Outcome, Policy, UNKNOWN_RULE};
use approval::{declares_elicitation, Refused};
use arc_swap::ArcSwap;
use catalogue::{has_cursor, listing, schema_problem, unreadable_list, Catalogue, Listing};
use ids::{reused, truncated, Kind, Pending};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
    /// A `tools/call` waiting for a person: hold it on the session's approvals (without
    /// stopping other lines), then pass the outcome to [`Session::release`].
    Hold(HeldCall),
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

#[derive(Default)]
struct State {
    /// The last id the gateway gave a request upstream.
    last_id: u64,
    /// Requests waiting for the upstream's reply, by the gateway's id. Both maps are used on
    /// every request and reply: hashed with foldhash (seeded per process), not SipHash.
    pending: HashMap<u64, Pending, foldhash::fast::RandomState>,
    /// The same requests by the client's canonical id.
    client_ids: HashMap<String, u64, foldhash::fast::RandomState>,
    /// The last id the gateway gave a server→client request.
    last_server_id: u64,
    /// Server→client requests waiting for the client's reply: the upstream's id, by ours.
    server_requests: HashMap<u64, Box<RawValue>>,
    catalogue: Catalogue,
    /// The upstream's `serverInfo.name`, once its `initialize` reply has passed.
    server: Arc<str>,
    /// Whether the client declared `capabilities.elicitation` in its `initialize`.
    client_elicits: bool,
    /// The gateway's own `elicitation/create` requests to the client, waiting for its answer:
    /// the approval request each asks about, by the request's id (a string: the ids of
    /// server→client requests the gateway forwards are integers, so they cannot collide).
    elicitations: HashMap<String, String>,
    /// Calls held for approval: the approval request, by the client's canonical id (a
    /// cancellation withdraws it).
    held: HashMap<String, String>,
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
    /// Where calls that need approval are held; `None`: nobody can approve, and they are
    /// refused at once.
    approvals: Option<Arc<crate::approvals::Approvals>>,
    /// Whether an operator can decide on `approvals` (an admin socket, approvers).
    operator_channel: bool,
    /// Whether this transport can ask the client's user (elicitation).
    client_channel: bool,
    /// Where decisions and outcomes are reported (the decision log, metrics); `None`: nowhere.
    audit: Option<Arc<Audit>>,
    /// The grant's shadow policy: decided beside every call, never enforced.
    shadow_policy: Option<Arc<ArcSwap<Policy>>>,
    /// Write the call's trace context into the forwarded `params._meta.traceparent` (a byte
    /// change, off unless asked for).
    inject_trace: bool,
}

impl Session {
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
            self.audit_refused(envelope, echo, &message);
            return ClientLine::Answer(jsonrpc::error_line(echo, code, &message));
        }
        if let Some(shadow) = &envelope.shadow {
            let message = format!(
                "invalid request: key `{}` differs only in case from a JSON-RPC member, which some servers would read it as",
                truncated(shadow)
            );
            self.audit_refused(envelope, echo, &message);
            return ClientLine::Answer(jsonrpc::error_line(
                echo,
                jsonrpc::INVALID_REQUEST,
                &message,
            ));
        }
        match (envelope.method.as_deref(), envelope.id) {
            (Some(method), Some(id)) => match self.request(line, method, id, envelope.params) {
                ClientLine::Answer(answer) => {
                    ClientLine::Answer(input_required::for_protocol(answer, envelope.params))
                }
                line => line,
            },
            (Some(method), None) => self.client_notification(line, method, envelope.params),
            (None, Some(id)) => match self.elicitation_answer(line, id) {
                Some(answered) => answered,
                None => self.reply_to_server(line, id),
            },
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
        if self.is_pending(&client_key) {
            return ClientLine::Answer(reused(id));
        }
        // A 2026-07-28 retry answering the gateway's own question: decided on, then the call
        // goes on without the gateway's parts.
        if method == "tools/call" {
            if let Some(retried) = self.answered_retry(line, id, params) {
                return retried;
            }
        }
        let kind = match method {
            "tools/call" => match self.decide_call(params, id, None) {
                Ok(kind) => kind,
                Err(Refused::Answer(answer)) => return ClientLine::Answer(answer),
                Err(Refused::Hold {
                    approval,
                    hold,
                    via_client,
                }) => {
                    self.state().held.insert(client_key, approval.clone());
                    return ClientLine::Hold(HeldCall::new(approval, hold, via_client, line));
                }
            },
            "tools/list" => Kind::ToolsList {
                first_page: !has_cursor(params),
            },
            "initialize" => {
                self.state().client_elicits = declares_elicitation(params);
                Kind::Initialize
            }
            _ => Kind::Other,
        };
        if let Some(injected) = self.inject_trace(line, params, &kind) {
            // The id is spliced by its place in the line: read it again from the new one.
            if let Some(id) = Envelope::parse(&injected).ok().and_then(|e| e.id) {
                return approval::owned(self.admit(&injected, id, client_key, kind));
            }
        }
        self.admit(line, id, client_key, kind)
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
            "notifications/cancelled" => self.cancelled_by_client(line, params),
            _ => ClientLine::Forward(Forward {
                line: Cow::Borrowed(line),
                upstream_id: None,
            }),
        }
    }

    /// [`Session::decide_call`], noting in `trail` what the decision log reports.
    fn decide_call_traced(
        &self,
        params: Option<&RawValue>,
        id: &RawValue,
        approved: Option<&crate::call::Approval>,
        trail: &mut audited::Trail,
    ) -> Result<Kind, Refused> {
        let raw_params = params.map_or("null", RawValue::get);
        let parsed = serde_json::from_str::<jsonrpc::CallParams>(raw_params).and_then(|params| {
            let args = params.arguments.map(|a| serde_json::from_str(a.get()));
            Ok((params, args.transpose()?))
        });
        let (params, args) = match parsed {
            Ok(parsed) => parsed,
            Err(e) => {
                let message = format!("invalid tools/call params: {e}");
                tracing::warn!(%message, "bad tools/call from client");
                trail.decision = Some(Decision::deny("invalid_request", message.clone()));
                return Err(Refused::Answer(jsonrpc::error_line(
                    Some(id),
                    jsonrpc::INVALID_PARAMS,
                    &message,
                )));
            }
        };
        // Shared, not copied, with the decision log and shadow decisions.
        let args_text = params.arguments.map(RawValue::get);
        let args = Arc::new(args.unwrap_or(Value::Object(Default::default())));
        if trail.wanted {
            trail.tool = Arc::from(params.name.as_ref());
        }
        // Copied only for an observer that reads them, or a shadow decision that needs them.
        if let Some(audit) = &self.audit {
            if audit.wants_args
                || self.shadow_policy.is_some()
                || self.policy.load().has_shadow_rule_for(&trail.tool)
            {
                trail.args = Some(args.clone()); // an `Arc`
            }
        }
        let (listed, info, server) = {
            let state = self.state();
            let (listed, info) = match &state.catalogue {
                Catalogue::Complete(tools) => match tools.get(params.name.as_ref()) {
                    Some(info) => (true, Some(info.clone())),
                    None => (false, None),
                },
                _ => (true, None),
            };
            let server = info.as_ref().and_then(|i| i.upstream.clone());
            (listed, info, server.unwrap_or_else(|| state.server.clone()))
        };
        // A hidden tool is a missing one, for every check below: its schema must not tell the
        // client it exists.
        let (listed, info) = match self.policy.load().is_visible(&params.name) {
            true => (listed, info),
            false => (false, None),
        };
        trail.server = server.clone();
        trail.annotations = info.as_ref().and_then(|i| i.annotations);
        if let Some(problem) = self.ambiguous_call(params.shadow.as_deref(), &args, info.as_deref())
        {
            tracing::warn!(%problem, "tools/call refused");
            trail.decision = Some(Decision::deny("invalid_request", problem.clone()));
            return Err(Refused::Answer(jsonrpc::error_line(
                Some(id),
                jsonrpc::INVALID_REQUEST,
                &format!("invalid request: {problem}"),
            )));
        }
        let call = ToolCall {
            tool: &params.name,
            args: &args,
            args_text,
            grant: &self.identity.grant,
            session: &self.identity.session,
            server: &server,
            annotations: info.as_ref().and_then(|i| i.annotations),
        };
        let outcome = if !listed {
            Outcome::refused(Decision::deny(UNKNOWN_RULE, "unknown tool"))
        } else if let Some(problem) = info
            .as_deref()
            .filter(|_| self.schemas.applies_to(call.tool))
            .and_then(|info| schema_problem(call.tool, info, &args))
        {
            Outcome::refused(Decision::deny("inputSchema", problem))
        } else {
            // The decision. Last, so that every refusal above costs no counter unit.
            let policy = self.policy.load();
            let outcome = match approved {
                Some(approval) => policy.decide_approved(&call, &self.counters, approval),
                None => policy.decide(&call, &self.counters),
            };
            if outcome.decision.verdict == Verdict::RequireApproval && approved.is_none() {
                // Held, let through by an approval already given, or refused as before.
                match self.ask_approval(&policy, &call, &outcome.decision, (id, raw_params)) {
                    None => {
                        let mut outcome = outcome;
                        outcome.decision.reason += " (approval not configured: this gateway has no approvers, so calls that need approval are refused; `toolgate run --admin-socket` holds them for `toolgate approvals`)";
                        outcome
                    }
                    Some(Ok(approved)) => approved,
                    Some(Err(held)) => {
                        // A held call's decision, for the log: require_approval.
                        if trail.wanted {
                            trail.decision = Some(outcome.decision);
                        }
                        return Err(held);
                    }
                }
            } else {
                outcome
            }
        };
        if self.audit.is_some() {
            trail.log_args = self.policy.load().log_args_for(call.tool).cloned();
        }
        let d = &outcome.decision;
        // Debug, not info: stderr is written on the call's thread, and a stderr pipe nobody
        // drains would hold every call once it filled. The decision log is the per-call
        // record (bounded, never blocking); this line is for `TOOLGATE_LOG=debug`.
        tracing::debug!(tool = call.tool, server = call.server, grant = call.grant, decision = d.verdict.as_str(), rule = %d.rule, reason = %d.reason, "tools/call");
        let answer = if d.verdict == Verdict::Allow {
            let after = results::HookedCall::of(outcome.after, &call, &args);
            Ok(Kind::ToolsCall(outcome.reservations, None, after))
        } else {
            let mut result = d.to_tool_result();
            if let Some(upstream) = info.as_ref().and_then(|i| i.upstream.as_deref()) {
                result["_meta"]["toolgate"]["upstream"] = Value::from(upstream);
            }
            Err(Refused::Answer(jsonrpc::result_line(id, &result)))
        };
        if trail.wanted {
            // Moved, not copied: the decision is not read again here.
            trail.decision = Some(outcome.decision);
            trail.instructions = outcome.instructions;
        }
        answer
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
        let unreadable = if !envelope.utf8 {
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
            let pending = envelope
                .id
                .and_then(jsonrpc::gateway_id)
                .and_then(|n| self.take_pending(n));
            return pending.map(|p| {
                Cow::Owned(jsonrpc::error_line(
                    Some(&p.client_id),
                    jsonrpc::INTERNAL_ERROR,
                    &format!("[toolgate] the upstream's reply could not be read the way every client would read it, so it was not forwarded: {why}"),
                ))
            });
        }
        match (envelope.method.as_deref(), envelope.id) {
            (Some(_), Some(id)) => self.server_request(line, id),
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
            "notifications/cancelled" => self.cancelled_by_server(line, params),
            _ => Some(Cow::Borrowed(line)),
        }
    }

    fn reply_to_client<'l>(
        &self,
        line: &'l [u8],
        envelope: &Envelope,
        id: &RawValue,
    ) -> Option<Cow<'l, [u8]>> {
        let pending = jsonrpc::gateway_id(id).and_then(|n| self.take_pending(n));
        let Some(pending) = pending else {
            // Cancelled, timed out, replayed (`Last-Event-ID`), or never asked: nobody waits.
            tracing::warn!(id = %truncated(id.get()), "dropped a reply from the upstream to no pending request");
            return None;
        };
        let code = envelope.error_code();
        if let Kind::ToolsCall(reservations, audited, after) = &pending.kind {
            if code.is_some_and(jsonrpc::not_executed) {
                self.counters.refund(reservations);
            }
            let checked = match (after, envelope.result) {
                (Some(after), Some(result)) => {
                    Some(self.check_result(after, result, &pending.client_id))
                }
                _ => None,
            };
            if audited.is_some() {
                let fate = (audited::fate_of(code, envelope.result), code);
                let did = checked.as_ref().map(|(_, did)| *did);
                self.audit_outcome(audited.as_deref(), pending.sent, fate, did);
            }
            if let Some((Some(instead), _)) = checked {
                return Some(Cow::Owned(instead));
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

#[cfg(test)]
mod audit_tests;
#[cfg(test)]
mod results_tests;
#[cfg(test)]
mod tests;
