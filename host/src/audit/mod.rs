//! The decision log: one JSON line per decision, one per outcome of a call that went upstream.
//!
//! "Allowed" and "executed" are different facts, so they are different events:
//! - a `decision` event for every `tools/call` the gateway decided: who asked (grant,
//!   session, request id), what (server, tool, the arguments' sha256), what the policy said
//!   (verdict, rule, reason, retry-after), which policy said it (name and digest, the
//!   plugins' digests) and what it cost (evaluation time, plugin instructions);
//! - an `outcome` event for every call that went upstream, when its fate is known: `ran` (a
//!   result), `tool_error` (a result with `isError`), `jsonrpc_error`, `gone` (the upstream went
//!   away first), `cancelled` (by the client), `timeout`; with the upstream's duration.
//!
//! The two share a `decision_id`. Arguments are never logged unless the tool's rule opts in
//! (`log_args`), and then with the JSON pointers it names erased (removed) or masked (replaced
//! by `"***"`); the event lists what was erased and masked, as OPA's decision logs do.
//!
//! Events are handed to an [`Observer`]. The one that writes JSON lines ([`DecisionLog`]) never
//! blocks a call: events go through a bounded channel to a writer thread, and when the channel
//! is full an event is dropped and counted instead.
//!
//! ## Files
//! - `mod.rs`: the events (the log's schema) and the [`Observer`] hook the session calls.
//! - `log.rs`: the JSON-lines writer: sinks, size rotation, the drop counter.
//! - `args.rs`: the arguments' digest, and erasing and masking by JSON pointer.
//! - `spent.rs`: facts the observers are done with, freed back on the calls' threads.

mod args;
mod deferred;
mod facts;
mod log;
mod spent;

pub use args::{args_sha256, ArgsLogging, LoggedArgs};
pub use deferred::{
    defer_on_this_thread, report_decision, report_deferred, report_outcome, DecisionReport,
};
pub use facts::{rfc3339, DecisionFacts, EventId, Origin, OutcomeFacts, PolicyRef};
pub use log::{DecisionLog, LogSink, LogStats, DEFAULT_CAPACITY};
pub use spent::{retire, sweep, Facts};

use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The schema of every line; a reader refuses lines of another major version.
pub const SCHEMA: &str = "toolgate.decision-log/v1";

/// What the policy said, as the log records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// `allow`, `deny`, `require_approval` or `rate_limited`.
    pub verdict: String,
    /// The rule that decided (`tools.session_create`, `default`, `unknown_tool`, ...).
    pub rule: String,
    /// Why, as the agent was told.
    pub reason: String,
    /// For `rate_limited`: when a retry can succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// A plugin that took part, by name and digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginRef {
    /// Its name in the policy.
    pub name: String,
    /// The sha256 of its component.
    pub digest: String,
}

/// One decided `tools/call`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecisionEvent {
    /// When, RFC 3339 with milliseconds, UTC.
    pub time: String,
    /// This decision's id; its outcome event carries the same.
    pub decision_id: String,
    /// The gateway process (`hostname:pid`).
    pub instance: String,
    /// `stdio` or `http`.
    pub transport: String,
    /// The policy's `name`, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The sha256 of the policy that decided.
    pub policy_digest: String,
    /// Its plugins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<PluginRef>,
    /// The grant (agent identity).
    pub grant: String,
    /// The session.
    pub session: String,
    /// The MCP method (`tools/call`).
    pub method: String,
    /// The client's request id, as JSON text (`7`, `"a"`).
    pub request_id: String,
    /// The upstream server (its `serverInfo.name`, or the upstream's name in a set).
    pub server: String,
    /// The tool, as the client named it.
    pub tool: String,
    /// The sha256 of the arguments' canonical JSON: calls can be matched without their
    /// contents being logged.
    pub args_sha256: String,
    /// The arguments, when the tool's rule opts in (`log_args`), erased and masked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<LoggedArgs>,
    /// What the policy said.
    pub decision: Verdict,
    /// How long the decision took, in microseconds.
    pub eval_us: u64,
    /// Instructions (fuel) its plugins consumed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub plugin_instructions: u64,
    /// The W3C trace id of the call's span, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The span id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// How a call that went upstream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fate {
    /// A result without `isError`.
    Ran,
    /// A result with `isError: true`: the tool ran and reported a failure.
    ToolError,
    /// A JSON-RPC error reply.
    JsonrpcError,
    /// The upstream went away (or could not be written to) before answering.
    Gone,
    /// The client cancelled it.
    Cancelled,
    /// No reply within the reply timeout.
    Timeout,
}

/// The outcome of one forwarded call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutcomeEvent {
    /// When, RFC 3339 with milliseconds, UTC.
    pub time: String,
    /// The decision that let it through.
    pub decision_id: String,
    /// The grant.
    pub grant: String,
    /// The session.
    pub session: String,
    /// The client's request id, as JSON text.
    pub request_id: String,
    /// The upstream server.
    pub server: String,
    /// The tool.
    pub tool: String,
    /// How it ended.
    pub outcome: Fate,
    /// For `jsonrpc_error`: the error's code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
    /// What the policy's result hooks did with the result before the client saw it:
    /// `passed`, `replaced`, `refused` (by a plugin) or `failed` (a plugin failed on it, and
    /// the result was refused). Absent when no hook ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// From the request leaving the gateway to its fate, in milliseconds.
    pub upstream_ms: f64,
    /// From the request reaching the gateway (its decision included) to its fate: the
    /// gateway's own time as the client's MCP server.
    #[serde(default)]
    pub server_ms: f64,
}

/// What a shadow rule or shadow policy would have decided about a call: logged beside the
/// call's decision, never in its place.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShadowEvent {
    /// When, RFC 3339 with milliseconds, UTC.
    pub time: String,
    /// The decision it shadows.
    pub decision_id: String,
    /// The grant.
    pub grant: String,
    /// The session.
    pub session: String,
    /// The tool.
    pub tool: String,
    /// `rule` (a rule with `enforce: false` in the policy) or `policy` (the grant's shadow
    /// policy).
    pub source: String,
    /// The digest of the policy that decided in shadow.
    pub policy_digest: String,
    /// What was enforced: `allow`, `deny`, `require_approval` or `rate_limited`.
    pub enforced: String,
    /// What the shadow decided.
    pub shadow: Verdict,
    /// Whether the two differ.
    pub differs: bool,
    /// `would_deny` (the shadow refuses what was allowed), `would_allow` (the shadow allows
    /// what was refused), `would_<verdict>` for another difference, or `same`.
    pub would: String,
}

/// How a call held for a person's approval came out of its hold: logged between its
/// `require_approval` decision and the decision that follows an approval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApprovalEvent {
    /// When, RFC 3339 with milliseconds, UTC.
    pub time: String,
    /// The approval request's id.
    pub approval_id: String,
    /// The grant.
    pub grant: String,
    /// The session.
    pub session: String,
    /// The client's request id, as JSON text.
    pub request_id: String,
    /// `approved`, `denied`, or the state an undecided hold ended in (`pending`, `expired`,
    /// `cancelled`).
    pub outcome: String,
    /// Who decided, as the channel recorded them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The channel it came through (`cli`, `http`, `page`, `client`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// A denial's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One line of the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A decision.
    Decision(Box<DecisionEvent>),
    /// An outcome.
    Outcome(Box<OutcomeEvent>),
    /// A shadow decision.
    Shadow(Box<ShadowEvent>),
    /// A held call's approval.
    Approval(Box<ApprovalEvent>),
}

/// A line as written: the schema, then the event.
#[derive(Debug, Serialize, Deserialize)]
pub struct Line {
    /// [`SCHEMA`].
    pub schema: String,
    /// The event.
    #[serde(flatten)]
    pub event: Event,
}

/// Where the session reports decisions and outcomes. Implementations must not block: they
/// run on the call's path.
pub trait Observer: Send + Sync {
    /// A `tools/call` was decided. Shared, so that an observer that keeps it (the log's
    /// queue) need not copy it; [`DecisionFacts::event`] makes the event, where it is wanted.
    fn decision(&self, facts: &Arc<DecisionFacts>);
    /// A call that went upstream ended.
    fn outcome(&self, facts: &Arc<OutcomeFacts>);
    /// A shadow rule or policy decided a call (off the call's path, after its decision).
    fn shadow(&self, event: &ShadowEvent) {
        let _ = event;
    }
    /// A call held for approval was approved, denied, or left its hold undecided.
    fn approval(&self, event: &ApprovalEvent) {
        let _ = event;
    }
    /// Whether it reads a decision's `args_sha256` or `args`: if no observer does, the
    /// session neither copies nor hashes a call's arguments (metrics alone cost less).
    fn wants_args(&self) -> bool {
        true
    }
}

/// Several observers as one (the log and the metrics, say).
pub struct Observers(pub Vec<Arc<dyn Observer>>);

impl Observer for Observers {
    fn decision(&self, facts: &Arc<DecisionFacts>) {
        for o in &self.0 {
            o.decision(facts);
        }
    }
    fn outcome(&self, facts: &Arc<OutcomeFacts>) {
        for o in &self.0 {
            o.outcome(facts);
        }
    }
    fn shadow(&self, event: &ShadowEvent) {
        for o in &self.0 {
            o.shadow(event);
        }
    }
    fn approval(&self, event: &ApprovalEvent) {
        for o in &self.0 {
            o.approval(event);
        }
    }
    fn wants_args(&self) -> bool {
        self.0.iter().any(|o| o.wants_args())
    }
}

/// A fresh 64-bit id: unique in this process (a counter), and across processes with
/// overwhelming odds (mixed with 64 random bits drawn once). Ids are made on every decision:
/// a `getrandom` call each, as UUIDs v4 would cost, is a syscall on the call's path.
pub fn fresh_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| uuid::Uuid::new_v4().as_u128() as u64);
    // SplitMix64 of the seeded counter: a bijection, so distinct counters give distinct ids.
    let mut z = seed.wrapping_add(
        COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The current time as the log writes it.
pub fn now() -> String {
    rfc3339(std::time::SystemTime::now())
}

/// This process, as `instance` names it: `hostname:pid`.
pub fn instance() -> String {
    let mut name = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer we own.
    let host = if unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) } == 0 {
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        String::from_utf8_lossy(&name[..end]).into_owned()
    } else {
        "unknown".into()
    };
    format!("{host}:{}", std::process::id())
}

#[cfg(test)]
mod tests;

/// A call's place in a distributed trace: the W3C trace context (`traceparent`) its client
/// sent in `params._meta`, or a new trace when it sent none. Numbers, written as hex only
/// where a log line or a forwarded `traceparent` needs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace (32 lowercase hex digits written).
    pub trace_id: u128,
    /// The client's span, when it sent one: the call's span's parent.
    pub parent_span_id: Option<u64>,
    /// The call's own span (16 hex digits written).
    pub span_id: u64,
}

impl TraceContext {
    /// The context of a call whose `_meta.traceparent` is `traceparent` (SEP-414); a missing
    /// or malformed one (W3C: version `00`, lowercase hex ids, not all zero) starts a new trace.
    pub fn of(traceparent: Option<&str>) -> Self {
        let span_id = fresh_id();
        let parsed = traceparent.and_then(|t| {
            let mut parts = t.split('-');
            let (version, trace, parent, flags) =
                (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
            let hex = |s: &str, n: usize| {
                s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            };
            let well_formed = parts.next().is_none()
                && version == "00"
                && hex(trace, 32)
                && hex(parent, 16)
                && hex(flags, 2);
            if !well_formed {
                return None;
            }
            let trace = u128::from_str_radix(trace, 16).ok()?;
            let parent = u64::from_str_radix(parent, 16).ok()?;
            (trace != 0 && parent != 0).then_some((trace, parent))
        });
        match parsed {
            Some((trace_id, parent)) => Self {
                trace_id,
                parent_span_id: Some(parent),
                span_id,
            },
            None => Self {
                trace_id: (u128::from(fresh_id()) << 64) | u128::from(fresh_id()),
                parent_span_id: None,
                span_id,
            },
        }
    }

    /// The trace id as W3C writes it: 32 lowercase hex digits.
    pub fn trace_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The call's span id as W3C writes it: 16 lowercase hex digits.
    pub fn span_hex(&self) -> String {
        format!("{:016x}", self.span_id)
    }
}

#[cfg(test)]
mod trace_tests {
    use super::TraceContext;

    #[test]
    fn a_valid_traceparent_is_the_parent_and_anything_else_starts_a_trace() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceContext::of(Some(tp));
        assert_eq!(ctx.trace_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.parent_span_id, Some(0x00f0_67aa_0ba9_02b7));
        assert_eq!(ctx.span_hex().len(), 16);
        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "garbage",
        ] {
            let ctx = TraceContext::of(Some(bad));
            assert_eq!(ctx.parent_span_id, None, "{bad}");
            assert_eq!(ctx.trace_hex().len(), 32);
        }
    }
}
