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
    Hold {
        approval: String,
        hold: Duration,
        via_client: bool,
    },
}

/// A call held until a person decides, or its hold ends.
#[derive(Debug, PartialEq, Eq)]
pub struct HeldCall {
    /// The approval request it waits on.
    pub approval: String,
    /// How long to hold it.
    pub hold: Duration,
    /// Whether the agent's own client may decide it (the rule's `via`).
    pub via_client: bool,
    /// The client's line, as it came.
    line: Vec<u8>,
}

impl HeldCall {
    pub(super) fn new(approval: String, hold: Duration, via_client: bool, line: &[u8]) -> Self {
        Self {
            approval,
            hold,
            via_client,
            line: line.to_vec(),
        }
    }

    /// The client's `_meta.progressToken` for the call, if it sent one: progress
    /// notifications under it keep the client from timing out while the call is held.
    pub fn progress_token(&self) -> Option<serde_json::Value> {
        let message: serde_json::Value = serde_json::from_slice(&self.line).ok()?;
        let token = message["params"]["_meta"]["progressToken"].clone();
        (token.is_string() || token.is_number()).then_some(token)
    }
}

/// A line that outlives the held call's buffer.
fn owned(line: ClientLine<'_>) -> ClientLine<'static> {
    match line {
        ClientLine::Forward(f) => ClientLine::Forward(Forward {
            line: Cow::Owned(f.line.into_owned()),
            upstream_id: f.upstream_id,
        }),
        ClientLine::Answer(a) => ClientLine::Answer(a),
        _ => ClientLine::Drop,
    }
}

/// The prefix of the ids of the gateway's own `elicitation/create` requests.
const ELICIT_PREFIX: &str = "toolgate-approval-";

/// Whether `initialize` params declare `capabilities.elicitation` (an object; `{}` means form
/// mode, which is all the gateway asks for).
pub(super) fn declares_elicitation(params: Option<&serde_json::value::RawValue>) -> bool {
    params
        .and_then(|p| serde_json::from_str::<serde_json::Value>(p.get()).ok())
        .is_some_and(|p| p["capabilities"]["elicitation"].is_object())
}

impl Session {
    /// The `elicitation/create` request asking the client's user about `held`, if the client
    /// can show one and the rule lets the client decide. Its answer comes back as a reply line
    /// the session recognises ([`Session::from_client`]).
    pub fn elicitation(&self, held: &HeldCall) -> Option<Vec<u8>> {
        if !held.via_client {
            return None;
        }
        let approvals = self.approvals.as_ref()?;
        let request = approvals.get(&held.approval)?;
        let id = {
            let mut state = self.state();
            if !state.client_elicits {
                return None;
            }
            let id = format!("{ELICIT_PREFIX}{}", uuid::Uuid::new_v4());
            state.elicitations.insert(id.clone(), held.approval.clone());
            id
        };
        let arguments = serde_json::to_string_pretty(&request.arguments).unwrap_or_default();
        let message = format!(
            "An agent (grant {:?}) wants to call {:?}.\nRule {:?}: {:?}\nArguments:\n{arguments}\n\nApprove this call?",
            request.grant, request.tool, request.rule, request.reason
        );
        let line = json!({"jsonrpc": "2.0", "id": id, "method": "elicitation/create", "params": {
            "message": message,
            "requestedSchema": {
                "type": "object",
                "properties": {"decision": {
                    "type": "string", "title": "Decision", "enum": ["approve", "deny"],
                    "description": "Approve lets this one call run; deny refuses it."
                }},
                "required": ["decision"]
            }
        }});
        Some(line.to_string().into_bytes())
    }

    /// A reply from the client to one of the gateway's own elicitations: approve on `accept`
    /// with `approve`, deny on `decline` (or `accept` with `deny`); `cancel` or an error leaves
    /// the request to the other channels. `None`: not an answer to one of ours.
    pub(super) fn elicitation_answer(
        &self,
        line: &[u8],
        id: &serde_json::value::RawValue,
    ) -> Option<ClientLine<'static>> {
        let key: String = serde_json::from_str(id.get()).ok()?;
        if !key.starts_with(ELICIT_PREFIX) {
            return None;
        }
        // One answer per elicitation: a replayed or stale one finds nothing.
        let approval = self.state().elicitations.remove(&key);
        let (Some(approval), Some(approvals)) = (approval, self.approvals.as_ref()) else {
            tracing::warn!(id = %key, "dropped an answer to no pending approval question");
            return Some(ClientLine::Drop);
        };
        let reply: serde_json::Value = serde_json::from_slice(line).unwrap_or_default();
        let result = &reply["result"];
        let by = format!("the user of grant {}", self.identity.grant);
        let decided = match (
            result["action"].as_str(),
            result["content"]["decision"].as_str(),
        ) {
            (Some("accept"), Some("approve")) => Some(approvals.approve(&approval, &by, "client")),
            (Some("accept"), Some("deny")) | (Some("decline"), _) => {
                Some(approvals.deny(&approval, &by, "client", "declined in the agent's client"))
            }
            _ => None,
        };
        match decided {
            Some(Err(e)) => {
                tracing::warn!(approval, error = %e, "the client's answer came too late")
            }
            Some(Ok(_)) => {}
            None => tracing::info!(
                approval,
                "the client did not decide; the request stays with the other channels"
            ),
        }
        Some(ClientLine::Drop)
    }

    /// Asks the approvals for a call the policy sends for approval. `None`: nobody can approve
    /// here (no approvals, or the rule wants the client's own prompt, which this transport
    /// does not have yet), and the refusal stands. `Ok`: an approval already covers it, and
    /// this is the call decided again as approved.
    pub(super) fn ask_approval(
        &self,
        policy: &Policy,
        call: &ToolCall<'_>,
        decision: &Decision,
        raw_params: &str,
    ) -> Option<Result<Outcome, Refused>> {
        let approvals = self.approvals.as_ref()?;
        let settings = policy.approval_for(call.tool);
        let via_client =
            settings.via != Via::Operator && self.client_channel && self.state().client_elicits;
        let via_operator = settings.via != Via::Client && self.operator_channel;
        if !via_client && !via_operator {
            return None;
        }
        // What else of the call reaches the upstream: bound with the arguments.
        let mut extra: serde_json::Value = serde_json::from_str(raw_params).unwrap_or_default();
        if let Some(params) = extra.as_object_mut() {
            params.remove("name");
            params.remove("arguments");
            if let Some(meta) = params.get_mut("_meta").and_then(|m| m.as_object_mut()) {
                meta.remove("progressToken");
            }
        }
        let ticket = approvals.request(
            call,
            &extra,
            &decision.rule,
            &decision.reason,
            policy.digest(),
            &settings,
        );
        match ticket {
            Ok(Ticket::Approved(approval)) => {
                Some(Ok(policy.decide_approved(call, &self.counters, &approval)))
            }
            Ok(Ticket::Pending { id, .. }) => Some(Err(Refused::Hold {
                approval: id,
                hold: settings.hold,
                via_client,
            })),
            // Fail closed: a request the registry will not take is a deny, saying why.
            Err(e) => Some(Ok(Outcome {
                decision: Decision::deny("approval", e.to_string()),
                reservations: Vec::new(),
                instructions: 0,
                peak_memory: 0,
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
        // No longer cancellable by the client: it is decided, or about to be answered.
        let withdrawn = self
            .state()
            .held
            .remove(&jsonrpc::id_key(id.get()))
            .is_none();
        if withdrawn {
            // The client cancelled it: a cancelled request never runs and gets no reply,
            // even if an approval arrived meanwhile.
            return ClientLine::Drop;
        }
        // Approved under another policy than the one now active: the approval covered the
        // call under that policy only. Decided again, and asked again if it still needs it.
        let policy_changed = self
            .approvals
            .as_ref()
            .and_then(|a| a.get(&held.approval))
            // A request no longer known (never, while a call holds it) is treated as changed:
            // decided again, never let through unchecked.
            .is_none_or(|r| r.policy_digest != self.policy.load().digest());
        if policy_changed && matches!(outcome, Held::Approved { .. }) {
            tracing::info!(approval = %held.approval, "the policy changed while the call was held: it is decided again");
            return match self.decide_call(envelope.params, id, None) {
                Ok(kind) => {
                    let key = jsonrpc::id_key(id.get());
                    owned(self.admit(&held.line, id, key, kind))
                }
                Err(Refused::Answer(answer)) => ClientLine::Answer(answer),
                Err(Refused::Hold { approval, .. }) => {
                    self.state().held.remove(&jsonrpc::id_key(id.get()));
                    let again = HeldCall {
                        approval,
                        hold: Duration::ZERO,
                        via_client: false,
                        line: held.line.clone(),
                    };
                    let pending = Held::Undecided {
                        state: State::Pending,
                        expires_ms: 0,
                    };
                    self.state()
                        .held
                        .insert(jsonrpc::id_key(id.get()), again.approval.clone());
                    self.release(&again, pending)
                }
            };
        }
        let refusal =
            |d: Decision| ClientLine::Answer(jsonrpc::result_line(id, &d.to_tool_result()));
        match outcome {
            Held::Approved(approval) => {
                tracing::info!(approval = %held.approval, by = %approval.approver, "approval: the held call is decided again and forwarded");
                match self.decide_call(envelope.params, id, Some(&approval)) {
                    Ok(kind) => {
                        let key = jsonrpc::id_key(id.get());
                        owned(self.admit(&held.line, id, key, kind))
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
