//! A `tools/call` that needs a person: asking the session's approvals, and releasing a held
//! call once its hold ends (approved: decided again and forwarded once; denied: the
//! approver's reason; undecided: `require_approval` with the request's id, so that the
//! identical retry passes once someone approves).

use super::{ClientLine, Forward, Session};
use crate::approvals::{Held, State, Ticket, Via};
use crate::call::ToolCall;
use crate::decision::{Decision, Verdict};
use crate::jsonrpc::{self, Envelope};
use crate::policy::{Outcome, Policy};
use serde_json::json;
use std::borrow::Cow;
use std::time::Duration;

/// Why a `tools/call` does not go upstream now.
pub(super) enum Refused {
    /// Answer the client with this line.
    Answer(Vec<u8>),
    /// Hold the call on approval request `approval` for up to `hold`.
    Hold { approval: String, hold: Duration },
}

/// A call held until a person decides, or its hold ends.
#[derive(Debug, PartialEq, Eq)]
pub struct HeldCall {
    /// The approval request it waits on.
    pub approval: String,
    /// How long to hold it.
    pub hold: Duration,
    /// The client's line, as it came.
    line: Vec<u8>,
}

impl HeldCall {
    pub(super) fn new(approval: String, hold: Duration, line: &[u8]) -> Self {
        Self {
            approval,
            hold,
            line: line.to_vec(),
        }
    }
}

impl Session {
    /// Asks the approvals for a call the policy sends for approval. `None`: nobody can approve
    /// here (no approvals, or the rule wants the client's own prompt, which this transport
    /// does not have yet), and the refusal stands. `Ok`: an approval already covers it, and
    /// this is the call decided again as approved.
    pub(super) fn ask_approval(
        &self,
        policy: &Policy,
        call: &ToolCall<'_>,
        decision: &Decision,
    ) -> Option<Result<Outcome, Refused>> {
        let approvals = self.approvals.as_ref()?;
        let settings = policy.approval_for(call.tool);
        if settings.via == Via::Client {
            return None;
        }
        match approvals.request(
            call,
            &decision.rule,
            &decision.reason,
            policy.digest(),
            &settings,
        ) {
            Ticket::Approved { .. } => Some(Ok(policy.decide_approved(call, &self.counters))),
            Ticket::Pending { id, .. } => Some(Err(Refused::Hold {
                approval: id,
                hold: settings.hold,
            })),
        }
    }

    /// What becomes of `held` now that its hold ended with `outcome`.
    pub fn release(&self, held: &HeldCall, outcome: Held) -> ClientLine<'static> {
        let Ok(envelope) = Envelope::parse(&held.line) else {
            return ClientLine::Drop;
        };
        let Some(id) = envelope.id else {
            return ClientLine::Drop;
        };
        let refusal =
            |d: Decision| ClientLine::Answer(jsonrpc::result_line(id, &d.to_tool_result()));
        match outcome {
            Held::Approved { by } => {
                tracing::info!(approval = %held.approval, by, "approval: the held call is decided again and forwarded");
                match self.decide_call(envelope.params, id, true) {
                    Ok(kind) => {
                        let key = jsonrpc::id_key(id.get());
                        match self.admit(&held.line, id, key, kind) {
                            ClientLine::Forward(f) => ClientLine::Forward(Forward {
                                line: Cow::Owned(f.line.into_owned()),
                                upstream_id: f.upstream_id,
                            }),
                            ClientLine::Answer(a) => ClientLine::Answer(a),
                            _ => ClientLine::Drop,
                        }
                    }
                    Err(Refused::Answer(answer)) => ClientLine::Answer(answer),
                    Err(Refused::Hold { .. }) => ClientLine::Drop,
                }
            }
            Held::Denied { by, reason } => refusal(Decision::deny(
                "approval",
                format!("denied by {by}: {reason}"),
            )),
            Held::Undecided { state, expires_ms } => {
                let mut result = Decision {
                    verdict: Verdict::RequireApproval,
                    rule: "approval".into(),
                    reason: match state {
                        State::Pending => format!(
                            "waiting for approval (request {}); retry the same call once it is approved",
                            held.approval
                        ),
                        other => format!("approval request {} {}", held.approval, other.as_str()),
                    },
                    retry_after_ms: None,
                }
                .to_tool_result();
                result["_meta"]["toolgate"]["approval"] = json!({
                    "id": held.approval,
                    "state": state.as_str(),
                    "expires_at_ms": expires_ms,
                });
                ClientLine::Answer(jsonrpc::result_line(id, &result))
            }
        }
    }
}
