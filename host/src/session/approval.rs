//! A `tools/call` that needs a person: asking the session's approvals, and releasing a held
//! call once its hold ends (approved: decided again and forwarded once; denied: the
//! approver's reason; undecided: `require_approval` with the request's id, so that the
//! identical retry passes once someone approves).

use super::{input_required, ClientLine, Forward, Session};
use crate::approvals::{Held, Request, State, Ticket, Via};
use crate::call::ToolCall;
use crate::decision::{Decision, Verdict};
use crate::jsonrpc::{self, Envelope};
use crate::policy::{Outcome, Policy};
use serde_json::json;
use serde_json::value::RawValue;
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

    /// The `step`th progress notification for a held call whose client sent `token`.
    pub fn progress(&self, token: &serde_json::Value, step: u64) -> Vec<u8> {
        json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {
            "progressToken": token, "progress": step,
            "message": format!("waiting for a person to approve (request {})", self.approval),
        }})
        .to_string()
        .into_bytes()
    }
}

/// How often a held call tells a client that asked for progress that it is still waiting
/// (clients reset their request timeout on it).
pub const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// A line that outlives the buffer it was decided from.
pub(super) fn owned(line: ClientLine<'_>) -> ClientLine<'static> {
    match line {
        ClientLine::Forward(f) => ClientLine::Forward(Forward {
            line: Cow::Owned(f.line.into_owned()),
            upstream_id: f.upstream_id,
        }),
        ClientLine::Answer(a) => ClientLine::Answer(a),
        ClientLine::Hold(h) => ClientLine::Hold(h),
        ClientLine::Drop => ClientLine::Drop,
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
        let line = json!({"jsonrpc": "2.0", "id": id, "method": "elicitation/create",
                          "params": question(&request)});
        Some(line.to_string().into_bytes())
    }

    /// Decides `approval` on the client's answer to the gateway's question (an
    /// `elicitation/create` result): approve on `accept` with `approve`, deny on `decline` (or
    /// `accept` with `deny`); anything else (`cancel`, an error) leaves it to the other
    /// channels.
    pub(super) fn answered(&self, approval: &str, result: &serde_json::Value) {
        let Some(approvals) = self.approvals.as_ref() else {
            return;
        };
        let by = format!("the user of grant {}", self.identity.grant);
        let decided = match (
            result["action"].as_str(),
            result["content"]["decision"].as_str(),
        ) {
            (Some("accept"), Some("approve")) => Some(approvals.approve(approval, &by, "client")),
            (Some("accept"), Some("deny")) | (Some("decline"), _) => {
                Some(approvals.deny(approval, &by, "client", "declined in the agent's client"))
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
        let Some(approval) = self.state().elicitations.remove(&key) else {
            tracing::warn!(id = %key, "dropped an answer to no pending approval question");
            return Some(ClientLine::Drop);
        };
        let reply: serde_json::Value = serde_json::from_slice(line).unwrap_or_default();
        self.answered(&approval, &reply["result"]);
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
        (id, raw_params): (&RawValue, &str),
    ) -> Option<Result<Outcome, Refused>> {
        let approvals = self.approvals.as_ref()?;
        let settings = policy.approval_for(call.tool);
        let client = settings.via != Via::Operator && self.client_channel;
        // A 2026-07-28 client takes no requests from the server: it is asked in the call's
        // result instead (`input_required`), and answers in its retry.
        let round_trip = client && input_required::elicits(raw_params);
        let via_client = client && (round_trip || self.state().client_elicits);
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
            Ok(Ticket::Pending { id: approval, .. }) if round_trip => {
                let request = approvals.get(&approval)?;
                Some(Err(Refused::Answer(self.input_required(id, &request))))
            }
            Ok(Ticket::Pending { id, .. }) => Some(Err(Refused::Hold {
                approval: id,
                hold: settings.hold,
                via_client,
            })),
            // Fail closed: a request the registry will not take is a deny, saying why.
            Err(e) => Some(Ok(Outcome::refused(Decision::deny(
                "approval",
                e.to_string(),
            )))),
        }
    }

    /// Forgets `held` without answering it: its client has gone (an HTTP client closed the
    /// held POST). The call never runs; its approval request stays for the other channels,
    /// so that an identical retry passes once it is approved.
    pub fn abandon_held(&self, held: &HeldCall) {
        if let Ok(Some(id)) = Envelope::parse(&held.line).map(|e| e.id) {
            self.state().held.remove(&jsonrpc::id_key(id.get()));
        }
    }

    /// What becomes of `held` now that its hold ended with `outcome`.
    pub fn release(&self, held: &HeldCall, outcome: Held) -> ClientLine<'static> {
        let Ok(envelope) = Envelope::parse(&held.line) else {
            return ClientLine::Drop;
        };
        match self.released(held, &envelope, outcome) {
            ClientLine::Answer(answer) => {
                ClientLine::Answer(input_required::for_protocol(answer, envelope.params))
            }
            line => line,
        }
    }

    fn released(&self, held: &HeldCall, envelope: &Envelope, outcome: Held) -> ClientLine<'static> {
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
        self.audit_approval(&held.approval, id, &outcome);
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
            Held::Undecided { state, expires_ms } => ClientLine::Answer(jsonrpc::result_line(
                id,
                &undecided(&held.approval, state, expires_ms),
            )),
        }
    }
}

/// The `elicitation/create` params asking a person about `request`: what is called, by whom,
/// under which rule, with the masked arguments, and a choice of approve or deny.
pub(super) fn question(request: &Request) -> serde_json::Value {
    let arguments = serde_json::to_string_pretty(&request.arguments).unwrap_or_default();
    let message = format!(
        "An agent (grant {:?}) wants to call {:?}.\nRule {:?}: {:?}\nArguments:\n{arguments}\n\nApprove this call?",
        request.grant, request.tool, request.rule, request.reason
    );
    json!({
        "message": message,
        "requestedSchema": {
            "type": "object",
            "properties": {"decision": {
                "type": "string", "title": "Decision", "enum": ["approve", "deny"],
                "description": "Approve lets this one call run; deny refuses it."
            }},
            "required": ["decision"]
        }
    })
}

/// The result for a call whose approval request `approval` is still undecided (`pending`:
/// the identical retry passes once someone approves) or ended undecided.
pub(super) fn undecided(approval: &str, state: State, expires_ms: u64) -> serde_json::Value {
    let mut result = Decision {
        verdict: Verdict::RequireApproval,
        rule: "approval".into(),
        reason: match state {
            State::Pending => format!(
                "waiting for approval (request {approval}); retry the same call once it is approved"
            )
            .into(),
            other => format!("approval request {approval} {}", other.as_str()).into(),
        },
        retry_after_ms: None,
    }
    .to_tool_result();
    result["_meta"]["toolgate"]["approval"] = json!({
        "id": approval,
        "state": state.as_str(),
        "expires_at_ms": expires_ms,
    });
    result
}
