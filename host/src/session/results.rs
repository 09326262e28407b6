//! The session's half of result hooks ([`crate::policy::ResultHooks`]): an allowed call whose
//! policy has plugins that see results keeps what they need until its reply, and the reply's
//! `result` goes through them before the client sees it.

use super::Session;
use crate::call::{ToolAnnotations, ToolCall};
use crate::jsonrpc;
use crate::policy::{ResultFate, ResultHooks};
use serde_json::value::RawValue;
use serde_json::Value;
use std::sync::Arc;

/// A forwarded call whose result plugins will see: the call, as they saw it decided.
#[derive(Debug)]
pub(super) struct HookedCall {
    hooks: ResultHooks,
    tool: String,
    /// Shared with the decision (and the decision log), not copied.
    args: Arc<Value>,
    server: Arc<str>,
    annotations: Option<ToolAnnotations>,
}

impl HookedCall {
    /// What `hooks` will need of `call` (whose arguments are `args`) once it ran; `None` when
    /// no plugin sees its result.
    pub(super) fn of(
        hooks: ResultHooks,
        call: &ToolCall<'_>,
        args: &Arc<Value>,
    ) -> Option<Box<Self>> {
        if hooks.is_empty() {
            return None;
        }
        Some(Box::new(Self {
            hooks,
            tool: call.tool.to_owned(),
            args: args.clone(),
            server: Arc::from(call.server),
            annotations: call.annotations,
        }))
    }
}

impl Session {
    /// Whether [`Session::from_upstream`] may run a result hook, and so take up to a plugin's
    /// time budget: an async caller then moves it off its worker.
    pub fn replies_may_block(&self) -> bool {
        self.policy.load().has_result_hooks()
    }

    /// The reply the client gets instead of the upstream's `result` (under `client_id`), or
    /// `None` when the hooks pass it and the upstream's bytes go through unchanged; and what
    /// the hooks did, as the outcome event says (`passed`, `replaced`, `refused`, `failed`).
    pub(super) fn check_result(
        &self,
        after: &HookedCall,
        result: &RawValue,
        client_id: &RawValue,
    ) -> (Option<Vec<u8>>, &'static str) {
        let call = ToolCall {
            tool: &after.tool,
            args: &after.args,
            args_text: None,
            grant: &self.identity.grant,
            session: &self.identity.session,
            server: &after.server,
            annotations: after.annotations,
        };
        let check = after.hooks.run(&call, result.get(), &self.counters);
        let (refusal, did) = match check.fate {
            ResultFate::Pass => return (None, "passed"),
            ResultFate::Replace(text) => match serde_json::from_str::<Value>(&text) {
                // Written by the gateway: what every client reads is what the plugin meant.
                Ok(value @ Value::Object(_)) => {
                    tracing::info!(tool = %after.tool, grant = %self.identity.grant, "result replaced by a plugin");
                    return (Some(jsonrpc::result_line(client_id, &value)), "replaced");
                }
                _ => (
                    crate::decision::Decision::deny(
                        "results",
                        "a plugin's replacement result is not a JSON object, so it was not forwarded",
                    ),
                    "failed",
                ),
            },
            ResultFate::Refuse(decision) => (decision, "refused"),
            ResultFate::Failed(decision) => (decision, "failed"),
        };
        tracing::info!(tool = %after.tool, grant = %self.identity.grant, rule = %refusal.rule, reason = %refusal.reason, "result refused");
        let mut refused = refusal.to_tool_result();
        refused["_meta"]["toolgate"]["ran"] = Value::Bool(true);
        (Some(jsonrpc::result_line(client_id, &refused)), did)
    }
}
