//! What the policy says about one `tools/call`, and how a refusal reaches the agent.
//!
//! A refusal is an MCP **tool result** with `isError: true`, as PolicyLayer and LLM CLI Gateway
//! return them, so an agent reads it like any failed tool: JSON-RPC errors stay reserved for
//! protocol faults. The text starts with the stable prefix `[toolgate]`, then the decision and
//! the reason; `_meta.toolgate` carries the same facts for programs.

use serde_json::{json, Value};

/// The four outcomes of evaluating a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Forward the call upstream.
    Allow,
    /// Refuse the call.
    Deny,
    /// The call needs a human's approval first.
    RequireApproval,
    /// A counter is full; the call may succeed later.
    RateLimited,
}

impl Verdict {
    /// The verdict's name in text and `_meta`: `allow`, `deny`, `require_approval`, `rate_limited`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::RequireApproval => "require_approval",
            Verdict::RateLimited => "rate_limited",
        }
    }
}

/// A verdict with the rule that produced it and a reason a person can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// What happens to the call.
    pub verdict: Verdict,
    /// Where in the policy the verdict came from, e.g. `tools.session_create` or `default`.
    pub rule: String,
    /// Why, in words.
    pub reason: std::borrow::Cow<'static, str>,
    /// For `rate_limited`: milliseconds until the call can succeed.
    pub retry_after_ms: Option<u64>,
}

impl Decision {
    /// An allow from `rule`.
    pub fn allow(rule: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Allow,
            rule: rule.into(),
            reason: "allowed".into(),
            retry_after_ms: None,
        }
    }

    /// A deny from `rule` with `reason`.
    pub fn deny(
        rule: impl Into<String>,
        reason: impl Into<std::borrow::Cow<'static, str>>,
    ) -> Self {
        Self {
            verdict: Verdict::Deny,
            rule: rule.into(),
            reason: reason.into(),
            retry_after_ms: None,
        }
    }

    /// Whether the call goes upstream.
    pub fn is_allow(&self) -> bool {
        self.verdict == Verdict::Allow
    }

    /// The text the agent reads: `[toolgate] <verdict>: <reason>`.
    pub fn text(&self) -> String {
        format!("[toolgate] {}: {}", self.verdict.as_str(), self.reason)
    }

    /// The MCP `CallToolResult` that answers a refused call.
    pub fn to_tool_result(&self) -> Value {
        let mut meta = json!({
            "decision": self.verdict.as_str(),
            "rule": self.rule,
            "reason": self.reason,
        });
        if let Some(ms) = self.retry_after_ms {
            meta["retry_after_ms"] = json!(ms);
        }
        json!({
            "content": [{"type": "text", "text": self.text()}],
            "isError": true,
            "_meta": {"toolgate": meta}
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_is_an_error_tool_result_with_meta() {
        let d = Decision {
            verdict: Verdict::RateLimited,
            rule: "tools.session_create".into(),
            reason: "counter c allows 30 per minute; retry in 12 s".into(),
            retry_after_ms: Some(11_500),
        };
        let r = d.to_tool_result();
        assert_eq!(r["isError"], true);
        assert_eq!(
            r["content"][0]["text"],
            "[toolgate] rate_limited: counter c allows 30 per minute; retry in 12 s"
        );
        assert_eq!(r["_meta"]["toolgate"]["retry_after_ms"], 11_500);
        assert_eq!(r["_meta"]["toolgate"]["rule"], "tools.session_create");
        assert!(
            Decision::deny("default", "x").to_tool_result()["_meta"]["toolgate"]
                .get("retry_after_ms")
                .is_none()
        );
    }
}
