//! What the session hands the observers: the facts of a decision or an outcome as it holds
//! them when it decides (shared strings, the raw arguments, the clock's instant), cheap to
//! gather on the call's thread. The log writes its lines from them where they are written,
//! off the call's path: the timestamp formatted, the arguments hashed, erased and masked, the
//! ids spelled out. It serializes them through borrowed views ([`DecisionFacts::line`]), with
//! no event of owned strings in between; [`DecisionFacts::event`] is the same line as the
//! schema's type, and a test holds the two equal.

use super::{
    ArgsLogging, DecisionEvent, Fate, LoggedArgs, OutcomeEvent, PluginRef, TraceContext, Verdict,
};
use crate::decision::Decision;
use chrono::{Datelike, Timelike};
use serde::{Serialize, Serializer};
use serde_json::Value;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

/// A decision's id: 128 bits, written as 32 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventId(pub u64, pub u64);

impl EventId {
    /// A new id, unique in this process and unlikely to repeat across processes.
    pub fn fresh() -> Self {
        Self(super::fresh_id(), super::fresh_id())
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}{:016x}", self.0, self.1)
    }
}

/// The policy that decided, as events name it: made once per policy, shared by its events.
#[derive(Debug, PartialEq, Eq)]
pub struct PolicyRef {
    /// Its `name`, if it has one.
    pub name: Option<String>,
    /// The sha256 of its text.
    pub digest: String,
    /// Its plugins.
    pub plugins: Vec<PluginRef>,
}

/// Who decided or called, and where: the same for every event of a session.
#[derive(Debug)]
pub struct Origin {
    /// The gateway process (`hostname:pid`).
    pub instance: Arc<str>,
    /// `stdio` or `http`.
    pub transport: &'static str,
    /// The grant.
    pub grant: Arc<str>,
    /// The session.
    pub session: Arc<str>,
}

/// A decided `tools/call`, as the session knows it.
#[derive(Debug)]
pub struct DecisionFacts {
    /// When it was decided.
    pub at: SystemTime,
    /// The decision's id.
    pub id: EventId,
    /// The session's grant, session and process.
    pub origin: Arc<Origin>,
    /// The policy that decided.
    pub policy: Arc<PolicyRef>,
    /// The client's request id, as JSON text.
    pub request_id: Arc<str>,
    /// The upstream server.
    pub server: Arc<str>,
    /// The tool, as the client named it.
    pub tool: Arc<str>,
    /// The arguments, when an observer reads them (shared with the session).
    pub args: Option<Arc<Value>>,
    /// The rule's `log_args`, if it opts in.
    pub log_args: Option<ArgsLogging>,
    /// What the policy said.
    pub decision: Decision,
    /// How long the decision took, in microseconds.
    pub eval_us: u64,
    /// Instructions its plugins consumed.
    pub instructions: u64,
    /// The call's trace context.
    pub trace: Option<TraceContext>,
}

impl DecisionFacts {
    /// The event the log writes.
    pub fn event(&self) -> DecisionEvent {
        let null = Value::Null;
        let args = self.args.as_deref().unwrap_or(&null);
        let d = &self.decision;
        DecisionEvent {
            time: rfc3339(self.at),
            decision_id: self.id.to_string(),
            instance: self.origin.instance.to_string(),
            transport: self.origin.transport.into(),
            policy: self.policy.name.clone(),
            policy_digest: self.policy.digest.clone(),
            plugins: self.policy.plugins.clone(),
            grant: self.origin.grant.to_string(),
            session: self.origin.session.to_string(),
            method: "tools/call".into(),
            request_id: self.request_id.to_string(),
            server: self.server.to_string(),
            tool: self.tool.to_string(),
            args_sha256: match &self.args {
                Some(args) => super::args_sha256(args),
                None => String::new(),
            },
            args: self.log_args.as_ref().map(|l| l.apply(args)),
            decision: Verdict {
                verdict: d.verdict.as_str().into(),
                rule: d.rule.clone(),
                reason: d.reason.to_string(),
                retry_after_ms: d.retry_after_ms,
            },
            eval_us: self.eval_us,
            plugin_instructions: self.instructions,
            trace_id: self.trace.as_ref().map(TraceContext::trace_hex),
            span_id: self.trace.as_ref().map(TraceContext::span_hex),
        }
    }
}

/// How a forwarded call ended, as the session knows it.
#[derive(Clone, Debug)]
pub struct OutcomeFacts {
    /// When its fate became known.
    pub at: SystemTime,
    /// The decision that let it through.
    pub decision_id: EventId,
    /// The session's grant, session and process.
    pub origin: Arc<Origin>,
    /// The client's request id, as JSON text.
    pub request_id: Arc<str>,
    /// The upstream server.
    pub server: Arc<str>,
    /// The tool.
    pub tool: Arc<str>,
    /// How it ended.
    pub outcome: Fate,
    /// For `jsonrpc_error`: the error's code.
    pub error_code: Option<i64>,
    /// What the call's result hooks did with its result (`passed`, `replaced`, `refused`,
    /// `failed`), when any ran.
    pub result: Option<&'static str>,
    /// From the request leaving the gateway to its fate, in milliseconds.
    pub upstream_ms: f64,
    /// From the request reaching the gateway to its fate, in milliseconds.
    pub server_ms: f64,
}

impl OutcomeFacts {
    /// The event the log writes.
    pub fn event(&self) -> OutcomeEvent {
        OutcomeEvent {
            time: rfc3339(self.at),
            decision_id: self.decision_id.to_string(),
            grant: self.origin.grant.to_string(),
            session: self.origin.session.to_string(),
            request_id: self.request_id.to_string(),
            server: self.server.to_string(),
            tool: self.tool.to_string(),
            outcome: self.outcome,
            error_code: self.error_code,
            result: self.result.map(str::to_owned),
            upstream_ms: self.upstream_ms,
            server_ms: self.server_ms,
        }
    }
}

/// `at` as the log writes times: RFC 3339 with milliseconds, UTC.
pub fn rfc3339(at: SystemTime) -> String {
    Rfc3339(at).to_string()
}

/// RFC 3339 with milliseconds, UTC (`2026-12-02T04:20:00.123Z`), written without a `String`.
struct Rfc3339(SystemTime);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = chrono::DateTime::<chrono::Utc>::from(self.0);
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.timestamp_subsec_millis().min(999)
        )
    }
}

/// A value the log writes as its `Display` text, straight into the line.
struct Shown<T>(T);

impl<T: fmt::Display> Serialize for Shown<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// Lowercase hex of a fixed width (trace ids 32 digits, span ids 16).
struct Hex(u128, usize);

impl fmt::Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:0width$x}", self.0, width = self.1)
    }
}

/// A decision event as the log writes it, borrowed from its facts: the same members, in the
/// same order and with the same omissions, as [`DecisionEvent`].
#[derive(Serialize)]
pub(super) struct DecisionLine<'a> {
    time: Shown<Rfc3339>,
    decision_id: Shown<EventId>,
    instance: &'a str,
    transport: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<&'a str>,
    policy_digest: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    plugins: &'a [PluginRef],
    grant: &'a str,
    session: &'a str,
    method: &'a str,
    request_id: &'a str,
    server: &'a str,
    tool: &'a str,
    args_sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    args: Option<LoggedArgs>,
    decision: VerdictLine<'a>,
    eval_us: u64,
    #[serde(skip_serializing_if = "super::is_zero")]
    plugin_instructions: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<Shown<Hex>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    span_id: Option<Shown<Hex>>,
}

/// [`Verdict`], borrowed.
#[derive(Serialize)]
struct VerdictLine<'a> {
    verdict: &'a str,
    rule: &'a str,
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

/// An outcome event as the log writes it: [`OutcomeEvent`], borrowed from its facts.
#[derive(Serialize)]
pub(super) struct OutcomeLine<'a> {
    time: Shown<Rfc3339>,
    decision_id: Shown<EventId>,
    grant: &'a str,
    session: &'a str,
    request_id: &'a str,
    server: &'a str,
    tool: &'a str,
    outcome: Fate,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a str>,
    upstream_ms: f64,
    server_ms: f64,
}

impl DecisionFacts {
    /// The line the log writes (what [`DecisionFacts::event`] holds, borrowed).
    pub(super) fn line(&self) -> DecisionLine<'_> {
        let null = Value::Null;
        let d = &self.decision;
        DecisionLine {
            time: Shown(Rfc3339(self.at)),
            decision_id: Shown(self.id),
            instance: &self.origin.instance,
            transport: self.origin.transport,
            policy: self.policy.name.as_deref(),
            policy_digest: &self.policy.digest,
            plugins: &self.policy.plugins,
            grant: &self.origin.grant,
            session: &self.origin.session,
            method: "tools/call",
            request_id: &self.request_id,
            server: &self.server,
            tool: &self.tool,
            args_sha256: match &self.args {
                Some(args) => super::args_sha256(args),
                None => String::new(),
            },
            args: self
                .log_args
                .as_ref()
                .map(|l| l.apply(self.args.as_deref().unwrap_or(&null))),
            decision: VerdictLine {
                verdict: d.verdict.as_str(),
                rule: &d.rule,
                reason: &d.reason,
                retry_after_ms: d.retry_after_ms,
            },
            eval_us: self.eval_us,
            plugin_instructions: self.instructions,
            trace_id: self.trace.map(|t| Shown(Hex(t.trace_id, 32))),
            span_id: self.trace.map(|t| Shown(Hex(t.span_id.into(), 16))),
        }
    }
}

impl OutcomeFacts {
    /// The line the log writes (what [`OutcomeFacts::event`] holds, borrowed).
    pub(super) fn line(&self) -> OutcomeLine<'_> {
        OutcomeLine {
            time: Shown(Rfc3339(self.at)),
            decision_id: Shown(self.decision_id),
            grant: &self.origin.grant,
            session: &self.origin.session,
            request_id: &self.request_id,
            server: &self.server,
            tool: &self.tool,
            outcome: self.outcome,
            error_code: self.error_code,
            result: self.result,
            upstream_ms: self.upstream_ms,
            server_ms: self.server_ms,
        }
    }
}
