//! Asking a 2026-07-28 client: that protocol has no requests from server to client, so a call
//! that needs approval is answered at once with an `input_required` result carrying the
//! gateway's question (`inputRequests`) and a `requestState`; the client asks its user and
//! retries the call with the answer (`inputResponses`) and the state.
//!
//! The state is the gateway's own, integrity-protected and single-use
//! ([`crate::approvals::Approvals::open_state`]): a tampered, replayed, foreign or expired one
//! is refused. On the retry the gateway decides the request on the answer, then removes its
//! parts (its `requestState`, its `inputResponses` entry) and decides the call that remains,
//! exactly as it will reach the upstream. A retry carrying the upstream's own state passes as
//! it is.

use super::approval::{owned, question, undecided};
use super::{ClientLine, Session};
use crate::approvals::{Request, State, STATE_PREFIX};
use crate::decision::Decision;
use crate::jsonrpc;
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// The gateway's key in `inputRequests` and `inputResponses`.
const INPUT_KEY: &str = "toolgate-approval";

/// Where a 2026-07-28 request declares what its client can do.
const CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";

/// Where a 2026-07-28 request says which protocol it speaks.
const PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

/// The gateway's own answer to a request, as the request's protocol wants it: a 2026-07-28
/// request (one whose `_meta` names its protocol version) gets results that say
/// `"resultType": "complete"` (its clients refuse a result without it); others get `answer`
/// as it is.
pub(super) fn for_protocol(answer: Vec<u8>, params: Option<&RawValue>) -> Vec<u8> {
    let modern = params
        .and_then(|p| serde_json::from_str::<Value>(p.get()).ok())
        .is_some_and(|p| p["_meta"][PROTOCOL_VERSION].is_string());
    if !modern {
        return answer;
    }
    let Ok(mut reply) = serde_json::from_slice::<Value>(&answer) else {
        return answer;
    };
    match reply.get_mut("result").and_then(Value::as_object_mut) {
        Some(result) if !result.contains_key("resultType") => {
            result.insert("resultType".into(), "complete".into());
            serde_json::to_vec(&reply).unwrap_or(answer)
        }
        _ => answer,
    }
}

/// Whether a `tools/call`'s params declare, the 2026-07-28 way, a client that can be asked
/// (`_meta` client capabilities with `elicitation`).
pub(super) fn elicits(raw_params: &str) -> bool {
    serde_json::from_str::<Value>(raw_params)
        .is_ok_and(|p| p["_meta"][CLIENT_CAPABILITIES]["elicitation"].is_object())
}

impl Session {
    /// The `input_required` reply to call `id`, asking about `request`. Without a state to
    /// give (no key), the call is answered as pending, for the other channels.
    pub(super) fn input_required(&self, id: &RawValue, request: &Request) -> Vec<u8> {
        let sealed = self.approvals.as_ref().map(|approvals| {
            approvals.seal_state(&request.id, &self.identity.grant, request.expires_ms)
        });
        let Some(Ok(state)) = sealed else {
            tracing::error!(approval = %request.id, "cannot protect a requestState; the call waits for an operator");
            let result = undecided(&request.id, State::Pending, request.expires_ms);
            return jsonrpc::result_line(id, &result);
        };
        tracing::info!(approval = %request.id, "approval: asked in the call's result (input_required)");
        let result = json!({
            "resultType": "input_required",
            "inputRequests": {INPUT_KEY: {"method": "elicitation/create", "params": question(request)}},
            "requestState": state,
            "_meta": {"toolgate": {"approval": {
                "id": request.id, "state": "pending", "expires_at_ms": request.expires_ms,
            }}},
        });
        jsonrpc::result_line(id, &result)
    }

    /// A `tools/call` retried with the gateway's `requestState`: the answer decides the
    /// request, then the call without the gateway's parts is decided as any other. `None`:
    /// not a retry of the gateway's (no `requestState`, or the upstream's own).
    pub(super) fn answered_retry(
        &self,
        line: &[u8],
        id: &RawValue,
        params: Option<&RawValue>,
    ) -> Option<ClientLine<'static>> {
        // Every `tools/call` passes here: only one whose params may hold a `requestState`
        // (spelled plainly, or with an escape that could spell it) is parsed whole.
        let raw = params?.get();
        if !raw.contains("requestState") && !raw.contains('\\') {
            return None;
        }
        let mut message: Value = serde_json::from_slice(line).ok()?;
        let params = message.get_mut("params")?.as_object_mut()?;
        let state = params.get("requestState")?.as_str()?;
        if !state.starts_with(STATE_PREFIX) {
            return None;
        }
        let refuse = |why: String| {
            tracing::warn!(%why, "tools/call retry refused");
            Some(ClientLine::Answer(jsonrpc::error_line(
                Some(id),
                jsonrpc::INVALID_PARAMS,
                &format!("invalid params: requestState refused: {why}"),
            )))
        };
        let Some(approvals) = self.approvals.as_ref() else {
            return refuse("this gateway asks no approvals".into());
        };
        let approval = match approvals.open_state(state, &self.identity.grant) {
            Ok(approval) => approval,
            Err(e) => return refuse(e.to_string()),
        };
        params.remove("requestState");
        let answer = match params.get_mut("inputResponses") {
            Some(Value::Object(responses)) => {
                let answer = responses.remove(INPUT_KEY);
                if responses.is_empty() {
                    params.remove("inputResponses");
                }
                answer
            }
            _ => None,
        };
        self.answered(&approval, answer.as_ref().unwrap_or(&Value::Null));
        let Some(request) = approvals.get(&approval) else {
            return refuse("its approval request is no longer known".into());
        };
        match request.state {
            // Approved: the call goes on, and the approval lets it through if it is the call
            // that was approved.
            State::Approved | State::Consumed => {
                let stripped = serde_json::to_vec(&message).ok()?;
                Some(owned(self.from_client(&stripped)))
            }
            State::Denied => {
                let by = request.decided_by.unwrap_or_default();
                let reason = request.note.unwrap_or_default();
                let denied = Decision::deny("approval", format!("denied by {by}: {reason}"));
                Some(ClientLine::Answer(jsonrpc::result_line(
                    id,
                    &denied.to_tool_result(),
                )))
            }
            state => Some(ClientLine::Answer(jsonrpc::result_line(
                id,
                &undecided(&approval, state, request.expires_ms),
            ))),
        }
    }
}
