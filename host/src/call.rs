//! The call record: what the policy's conditions and a plugin both see of one `tools/call`.
//!
//! It sits in a module of its own so that neither `policy` nor `plugins` has to import the
//! other to name it.

use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;

/// One `tools/call` as the policy evaluates it.
#[derive(Clone, Copy, Debug)]
pub struct ToolCall<'a> {
    /// The tool's name (`params.name`).
    pub tool: &'a str,
    /// The call's arguments (`params.arguments`; `{}` when absent).
    pub args: &'a Value,
    /// The arguments' JSON text exactly as the client sent it, when the call came from a
    /// request (`None`: written from `args` when a plugin needs it). It must be the text
    /// `args` was parsed from: a plugin parses it, and must see what the conditions see.
    pub args_text: Option<&'a str>,
    /// The grant (agent identity) making the call.
    pub grant: &'a str,
    /// The MCP session the call arrived on.
    pub session: &'a str,
    /// The upstream's name (`serverInfo.name` from its `initialize` reply; empty if unknown).
    pub server: &'a str,
    /// The tool's MCP annotations from the upstream's `tools/list`, when it listed them.
    pub annotations: Option<ToolAnnotations>,
}

impl<'a> ToolCall<'a> {
    /// The arguments as JSON text, for a plugin: the client's own text when there is one
    /// (no copy, and the bytes the upstream runs), else `args` written out.
    pub fn args_json(&self) -> Cow<'a, str> {
        match self.args_text {
            Some(text) => Cow::Borrowed(text),
            None => Cow::Owned(self.args.to_string()),
        }
    }
}

/// The approval that covers a call being decided again because a person approved it (see
/// `Policy::decide_approved`): what a plugin of `toolgate:policy@0.2.0` sees as the call's
/// `approval`. Made by the approvals registry from the request it decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approval {
    /// The approval request's id (a UUID).
    pub id: String,
    /// Who approved it, as the channel recorded them (`alice (uid 1000)`).
    pub approver: String,
    /// The channel it came through: `cli`, `http`, `page` or `client`.
    pub channel: String,
}

/// A tool's MCP annotations: hints the upstream gives about it (never guarantees).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolAnnotations {
    /// `readOnlyHint`
    pub read_only_hint: Option<bool>,
    /// `destructiveHint`
    pub destructive_hint: Option<bool>,
    /// `idempotentHint`
    pub idempotent_hint: Option<bool>,
    /// `openWorldHint`
    pub open_world_hint: Option<bool>,
}
