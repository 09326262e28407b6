//! What the session tells the decision log ([`crate::audit`]): a decision event for every
//! `tools/call` it decides, and an outcome event for every call it forwarded, when its fate
//! is known. Nothing here changes a decision; with no observer it costs one branch.

use super::approval::Refused;
use super::ids::Kind;
use super::Session;
use crate::audit::{self, Fate, Observer, OutcomeFacts};
use crate::decision::Decision;
use serde_json::value::RawValue;
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;

/// Where a session's events go, and what every event of this process says.
#[derive(Clone)]
pub struct Audit {
    /// The log, the metrics, or both.
    pub observer: Arc<dyn Observer>,
    /// `stdio` or `http`.
    pub transport: &'static str,
    /// `hostname:pid`.
    pub instance: Arc<str>,
    /// Where shadow rules and shadow policies are decided (`None`: they are not).
    pub shadow: Option<Arc<super::ShadowRunner>>,
    /// Whether the observer reads the arguments (their digest, their masked copy).
    pub wants_args: bool,
    /// The session's grant and id, as its events share them (set by [`Audit::for_session`]).
    origin: Option<Arc<audit::Origin>>,
}

impl Audit {
    /// Events from a session on `transport` go to `observer`.
    pub fn new(observer: Arc<dyn Observer>, transport: &'static str) -> Arc<Self> {
        Arc::new(Self {
            wants_args: observer.wants_args(),
            observer,
            transport,
            instance: Arc::from(audit::instance()),
            shadow: super::ShadowRunner::start(Arc::new(crate::counters::MemoryCounterStore::new(
                Arc::new(crate::clock::SystemClock::new()),
            )))
            .inspect_err(
                |e| tracing::error!(error = %e, "no thread for shadow decisions; they are off"),
            )
            .ok(),
            origin: None,
        })
    }

    /// The same, for the session of `identity`: its events share one copy of it.
    pub(super) fn for_session(&self, identity: &super::Identity) -> Arc<Self> {
        Arc::new(Self {
            origin: Some(Arc::new(audit::Origin {
                instance: self.instance.clone(),
                transport: self.transport,
                grant: Arc::from(identity.grant.as_str()),
                session: Arc::from(identity.session.as_str()),
            })),
            ..self.clone()
        })
    }
}

/// What a decision found out, filled in as it goes (when `wanted`).
#[derive(Default)]
pub(super) struct Trail {
    /// Whether anything reads the trail (a log or metrics, a traced span, trace injection):
    /// without it a decision copies nothing for it.
    pub(super) wanted: bool,
    pub(super) tool: Arc<str>,
    pub(super) server: Arc<str>,
    pub(super) args: Option<Arc<Value>>,
    /// The decision, when one was reached (the policy's, or an integrity refusal's).
    pub(super) decision: Option<Decision>,
    pub(super) instructions: u64,
    /// The call's trace context (from `_meta.traceparent`).
    pub(super) trace: Option<audit::TraceContext>,
    /// The tool's annotations, for a shadow decision's conditions.
    pub(super) annotations: Option<crate::call::ToolAnnotations>,
    /// The rule's `log_args`, if it opts in.
    pub(super) log_args: Option<crate::audit::ArgsLogging>,
}

/// A forwarded call's decision, kept until its outcome.
#[derive(Debug)]
pub(super) struct Audited {
    decision_id: audit::EventId,
    tool: Arc<str>,
    server: Arc<str>,
    request_id: Arc<str>,
    /// When the request reached the gateway.
    started: Instant,
    /// The call's trace context, for `with_trace_injection`.
    trace: Option<audit::TraceContext>,
    /// The decision, while its report is deferred: reported before the outcome.
    decision: Option<Arc<audit::DecisionReport>>,
}

impl Session {
    /// Decides a `tools/call` (`approved`: a person approved it, see
    /// [`crate::policy::Policy::decide_approved`]). `Err` is the reply to send instead of
    /// forwarding, or the approval to hold it on.
    pub(super) fn decide_call(
        &self,
        params: Option<&RawValue>,
        id: &RawValue,
        approved: Option<&crate::call::Approval>,
    ) -> Result<Kind, Refused> {
        let started = std::time::Instant::now();
        let mut trail = Trail::default();
        let span = self.call_span(params, id, &mut trail);
        let entered = span.enter();
        let mut decided = self.decide_call_traced(params, id, approved, &mut trail);
        if let Some(decision) = &trail.decision {
            span.record("toolgate.decision", decision.verdict.as_str());
            span.record("toolgate.rule", decision.rule.as_str());
            if !decision.is_allow() {
                span.record("error.type", decision.verdict.as_str());
            }
        }
        drop(entered);
        if self.audit.is_some() {
            let enforced = trail.decision.as_ref().map(|d| d.verdict);
            let reported = self.audit_decision(&mut trail, id, started, &mut decided.as_mut().ok());
            self.shadow(trail, reported, enforced);
        } else if let Ok(Kind::ToolsCall(_, slot @ None, _)) = &mut decided {
            if self.inject_trace {
                *slot = Some(Box::new(Audited {
                    decision_id: audit::EventId(0, 0),
                    tool: trail.tool,
                    server: trail.server,
                    request_id: Arc::from(id.get()),
                    started,
                    trace: trail.trace,
                    decision: None,
                }));
            }
        }
        decided
    }

    /// Reports the decision `trail` reached on the request `id` (begun at `started`), and
    /// attaches what the outcome event will need to a forwarded call.
    /// Returns the decision's id, and its report while that is deferred.
    pub(super) fn audit_decision(
        &self,
        trail: &mut Trail,
        id: &RawValue,
        started: Instant,
        kind: &mut Option<&mut Kind>,
    ) -> Option<(audit::EventId, Option<Arc<audit::DecisionReport>>)> {
        let audit = self.audit.as_ref()?;
        let eval_us = started.elapsed().as_micros() as u64;
        // Taken, not copied: the log is the last to read it.
        let decision = trail
            .decision
            .take()
            .unwrap_or_else(|| Decision::deny("invalid_request", "the call could not be read"));
        let decision_id = audit::EventId::fresh();
        let tool = trail.tool.clone();
        let request_id: Arc<str> = Arc::from(id.get());
        // The facts as they are: the log makes its event from them, off the call's thread.
        let facts = audit::DecisionFacts {
            at: std::time::SystemTime::now(),
            id: decision_id,
            origin: self.origin(audit),
            policy: self.policy.load().audit_ref(),
            request_id: request_id.clone(),
            server: trail.server.clone(),
            tool: tool.clone(),
            args: trail.args.clone().filter(|_| audit.wants_args),
            log_args: trail.log_args.clone(),
            decision,
            eval_us,
            instructions: trail.instructions,
            trace: trail.trace,
        };
        // With what the observers are done with freed on this thread (see `audit::retire`).
        let report = audit::report_decision(&audit.observer, facts);
        if let Some(Kind::ToolsCall(_, slot, _)) = kind {
            *slot = Some(Box::new(Audited {
                started,
                trace: trail.trace,
                decision_id,
                tool,
                server: trail.server.clone(),
                request_id,
                decision: report.clone(),
            }));
        }
        Some((decision_id, report))
    }

    /// The session's grant and id as its events share them.
    fn origin(&self, audit: &Audit) -> Arc<audit::Origin> {
        audit.origin.clone().unwrap_or_else(|| {
            audit
                .for_session(&self.identity)
                .origin
                .clone()
                .expect("just set")
        })
    }

    /// Reports a `tools/call` refused before it could be read as one (keys some server would
    /// read another way): the tool as far as a lenient reading names it.
    pub(super) fn audit_refused(
        &self,
        envelope: &crate::jsonrpc::Envelope,
        id: Option<&RawValue>,
        why: &str,
    ) {
        if self.audit.is_none() || envelope.method.as_deref() != Some("tools/call") {
            return;
        }
        let params: Value = envelope
            .params
            .and_then(|p| serde_json::from_str(p.get()).ok())
            .unwrap_or(Value::Null);
        let mut trail = Trail {
            tool: Arc::from(params["name"].as_str().unwrap_or_default()),
            decision: Some(Decision::deny("invalid_request", why.to_owned())),
            ..Trail::default()
        };
        let null = RawValue::from_string("null".into()).expect("valid JSON");
        self.audit_decision(&mut trail, id.unwrap_or(&null), Instant::now(), &mut None);
    }

    /// The call's span, named and attributed by the OpenTelemetry semantic conventions for
    /// MCP (`tools/call {tool}`, `mcp.method.name`, `gen_ai.tool.name`, `mcp.session.id`,
    /// `jsonrpc.request.id`) plus `toolgate.*`, parented (with the `otel` feature) by the
    /// client's `_meta.traceparent`. The trace context goes in `trail` for the log.
    pub(super) fn call_span(
        &self,
        params: Option<&RawValue>,
        id: &RawValue,
        trail: &mut Trail,
    ) -> tracing::Span {
        // `Cow`s, not `Option<Cow>`s: serde borrows only a bare `Cow` (an `Option` of one
        // always copies), and this runs on every observed call.
        #[derive(serde::Deserialize)]
        struct Params<'a> {
            #[serde(borrow, default)]
            name: std::borrow::Cow<'a, str>,
            #[serde(borrow, default, rename = "_meta")]
            meta: Option<Meta<'a>>,
        }
        #[derive(serde::Deserialize)]
        struct Meta<'a> {
            #[serde(borrow, default)]
            traceparent: std::borrow::Cow<'a, str>,
        }
        // Nothing wants the span or the trail: no second reading of the params.
        let traced = tracing::enabled!(target: "toolgate::mcp", tracing::Level::DEBUG);
        if !traced && self.audit.is_none() && !self.inject_trace {
            return tracing::Span::none();
        }
        trail.wanted = true;
        // Read only when something reads the span's tool, or the params can hold a
        // `traceparent` (its name, or any escape, which could spell it).
        let may_trace = |p: &&RawValue| {
            // One pass (a one-shot `memmem` builds its searcher on every call).
            let text = p.get().as_bytes();
            memchr::memchr2_iter(b'\\', b't', text)
                .any(|at| text[at] == b'\\' || text[at..].starts_with(b"traceparent"))
        };
        let parsed = params
            .filter(|p| traced || may_trace(p))
            .and_then(|p| serde_json::from_str::<Params>(p.get()).ok());
        let tool = parsed.as_ref().map_or("", |p| &p.name);
        // At debug level: stderr's log (info by default) does not repeat the span on every
        // line; the OpenTelemetry layer enables it for itself.
        let span = tracing::debug_span!(
            target: "toolgate::mcp",
            "tools/call",
            otel.name = %format_args!("tools/call {tool}"),
            otel.kind = "server",
            mcp.method.name = "tools/call",
            gen_ai.tool.name = tool,
            gen_ai.operation.name = "execute_tool",
            mcp.session.id = %self.identity.session,
            jsonrpc.request.id = %id.get(),
            toolgate.grant = %self.identity.grant,
            toolgate.decision = tracing::field::Empty,
            toolgate.rule = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        if self.audit.is_none() && !self.inject_trace && span.is_disabled() {
            return span;
        }

        let traceparent = parsed
            .as_ref()
            .and_then(|p| p.meta.as_ref())
            .map(|m| &*m.traceparent)
            .filter(|t| !t.is_empty());
        #[cfg(feature = "otel")]
        if let Some(traceparent) = traceparent {
            crate::telemetry::set_parent(&span, traceparent);
        }
        trail.trace = Some(audit::TraceContext::of(traceparent));
        span
    }

    /// Reports how a held call came out of its hold.
    pub(super) fn audit_approval(
        &self,
        approval: &str,
        id: &RawValue,
        outcome: &crate::approvals::Held,
    ) {
        use crate::approvals::Held;
        let Some(audit) = &self.audit else {
            return;
        };
        let (outcome, by, channel, reason) = match outcome {
            Held::Approved(a) => (
                "approved".to_owned(),
                Some(a.approver.clone()),
                Some(a.channel.clone()),
                None,
            ),
            Held::Denied { by, reason } => (
                "denied".to_owned(),
                Some(by.clone()),
                None,
                Some(reason.clone()),
            ),
            Held::Undecided { state, .. } => (state.as_str().to_owned(), None, None, None),
        };
        audit.observer.approval(&audit::ApprovalEvent {
            time: audit::now(),
            approval_id: approval.to_owned(),
            grant: self.identity.grant.clone(),
            session: self.identity.session.clone(),
            request_id: id.get().to_owned(),
            outcome,
            by,
            channel,
            reason,
        });
    }

    /// Reports how a forwarded call ended (`sent`: when it left; `result`: what its result
    /// hooks did with its result, if any ran).
    pub(super) fn audit_outcome(
        &self,
        audited: Option<&Audited>,
        sent: Instant,
        (outcome, error_code): (Fate, Option<i64>),
        result: Option<&'static str>,
    ) {
        let (Some(audit), Some(audited)) = (&self.audit, audited) else {
            return;
        };
        audit::report_outcome(
            &audit.observer,
            OutcomeFacts {
                at: std::time::SystemTime::now(),
                decision_id: audited.decision_id,
                origin: self.origin(audit),
                request_id: audited.request_id.clone(),
                server: audited.server.clone(),
                tool: audited.tool.clone(),
                outcome,
                error_code,
                result,
                upstream_ms: sent.elapsed().as_secs_f64() * 1000.0,
                server_ms: audited.started.elapsed().as_secs_f64() * 1000.0,
            },
            audited.decision.clone(),
        );
    }
}

impl Session {
    /// The client's line with `params._meta.traceparent` set to the call's own span, when
    /// trace injection is on and the call goes upstream. Only `_meta` is rewritten, member by
    /// member from the raw bytes; every other member keeps its bytes.
    pub(super) fn inject_trace(
        &self,
        line: &[u8],
        params: Option<&RawValue>,
        kind: &Kind,
    ) -> Option<Vec<u8>> {
        use std::collections::BTreeMap;
        if !self.inject_trace {
            return None;
        }
        let Kind::ToolsCall(_, Some(audited), _) = kind else {
            return None;
        };
        let trace = audited.trace.as_ref()?;
        let params = params?;
        let mut members: BTreeMap<String, Box<RawValue>> =
            serde_json::from_str(params.get()).ok()?;
        let mut meta: BTreeMap<String, Box<RawValue>> = match members.get("_meta") {
            Some(meta) => serde_json::from_str(meta.get()).ok()?,
            None => BTreeMap::new(),
        };
        let traceparent = format!("\"00-{}-{}-01\"", trace.trace_hex(), trace.span_hex());
        meta.insert(
            "traceparent".into(),
            RawValue::from_string(traceparent).ok()?,
        );
        members.insert(
            "_meta".into(),
            RawValue::from_string(serde_json::to_string(&meta).ok()?).ok()?,
        );
        let rewritten = serde_json::to_string(&members).ok()?;
        crate::jsonrpc::splice(line, params, rewritten.as_bytes())
    }
}

/// How a reply says a call ended: a JSON-RPC error, a result with `isError`, or a result.
pub(super) fn fate_of(error_code: Option<i64>, result: Option<&RawValue>) -> Fate {
    if error_code.is_some() {
        return Fate::JsonrpcError;
    }
    #[derive(serde::Deserialize)]
    struct Flag {
        #[serde(rename = "isError", default)]
        is_error: bool,
    }
    // Read only when the flag can be there: a result of any size costs a scan, not a parse.
    // (A key spelled with escapes, `"is\u0045rror"`, is read as the client would.)
    let text = result.map_or("", RawValue::get).as_bytes();
    // One pass for both (a one-shot `memmem` builds its searcher on every call).
    let maybe = memchr::memchr2_iter(b'\\', b'i', text).any(|at| match text[at] {
        b'\\' => text.get(at + 1) == Some(&b'u'),
        _ => text[at..].starts_with(b"isError"),
    });
    if !maybe {
        return Fate::Ran;
    }
    match result.and_then(|r| serde_json::from_str::<Flag>(r.get()).ok()) {
        Some(Flag { is_error: true }) => Fate::ToolError,
        _ => Fate::Ran,
    }
}
