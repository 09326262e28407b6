//! Result hooks: what happens to an allowed call's result before the client sees it.
//!
//! A plugin of the `policy-with-results` world (`toolgate:policy@0.3.0`) also exports
//! `after-call`. Every use of such a plugin on an allowed call's path (`all_tools.use`, then
//! the rule's `use`, the order the call was decided in) sees the upstream's `result` once it
//! arrives, and passes it, replaces it, or refuses it:
//! - **pass**: the next hook sees the same result; when every hook passes, the client gets
//!   the upstream's bytes unchanged;
//! - **replace**: the next hook sees the replacement, and the client gets the last one, as
//!   the gateway writes it (a JSON object, each key once);
//! - **refuse**: the client gets the gateway's refusal with the plugin's reason, like a denied
//!   call's. The upstream has run the call: a refusal hides its result, it undoes nothing.
//!
//! It fails closed, as a decision does: a hook that traps, runs out of fuel or time, or returns
//! something malformed refuses the result with the failure as the reason (the [`ResultFate::Failed`]
//! fate, told apart for `toolgate test`). A result larger than a plugin's `results.max_bytes`
//! is not handed to it: the plugin's `results.oversized` says whether it passes or is refused.
//! A JSON-RPC error reply is not a result, and no hook sees it.

use super::{PluginUse, Step};
use crate::call::ToolCall;
use crate::counters::CounterStore;
use crate::decision::Decision;
use crate::plugins::{AfterCall, Oversized, PluginCall};
use std::sync::Arc;

/// The result hooks of one allowed call, in order; empty (and free) for most calls.
#[derive(Clone, Debug, Default)]
pub struct ResultHooks(Vec<Arc<PluginUse>>);

/// What the hooks made of a result.
#[derive(Debug, PartialEq)]
pub enum ResultFate {
    /// The client gets the upstream's result, byte for byte.
    Pass,
    /// The client gets this result (the JSON text of an object) instead.
    Replace(String),
    /// A plugin refused the result: the client gets this refusal.
    Refuse(Decision),
    /// A plugin failed on it (trap, timeout, malformed verdict): the client gets this refusal.
    Failed(Decision),
}

/// A [`ResultFate`] and what it cost.
#[derive(Debug)]
pub struct ResultCheck {
    /// What the client gets.
    pub fate: ResultFate,
    /// Instructions the hooks consumed, together.
    pub instructions: u64,
    /// The most linear memory any hook held, in bytes.
    pub peak_memory: usize,
}

impl ResultHooks {
    /// The uses among `uses` whose plugin sees results.
    pub(super) fn of(uses: &[&Arc<PluginUse>]) -> Self {
        Self(
            uses.iter()
                .filter(|u| u.plugin.has_result_hook())
                .map(|u| Arc::clone(u))
                .collect(),
        )
    }

    /// Whether no plugin sees the result.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Runs the hooks on `result` (the JSON text of the reply's `result`) of `call`.
    pub fn run(
        &self,
        call: &ToolCall<'_>,
        result: &str,
        counters: &Arc<dyn CounterStore>,
    ) -> ResultCheck {
        self.run_traced(call, result, counters, None)
    }

    /// [`ResultHooks::run`], noting each hook's step in `steps` (`toolgate test`, `eval`).
    pub fn run_traced(
        &self,
        call: &ToolCall<'_>,
        result: &str,
        counters: &Arc<dyn CounterStore>,
        mut steps: Option<&mut Vec<Step>>,
    ) -> ResultCheck {
        let mut check = ResultCheck {
            fate: ResultFate::Pass,
            instructions: 0,
            peak_memory: 0,
        };
        if self.0.is_empty() {
            return check;
        }
        let arguments = call.args_json();
        let plugin_call = PluginCall {
            call,
            arguments: &arguments,
            approval: None,
            keep_logs: steps.is_some(),
        };
        let mut replaced: Option<String> = None;
        for u in &self.0 {
            let rule = format!("plugins.{}", u.plugin.name());
            let point = format!("{} (plugin {}) after-call", u.site, u.plugin.name());
            let current = replaced.as_deref().unwrap_or(result);
            let (max_bytes, oversized) = u.plugin.result_limits();
            if current.len() > max_bytes {
                let said = match oversized {
                    Oversized::Pass => "pass: not shown to the plugin (oversized)".to_owned(),
                    Oversized::Refuse => "refuse: oversized".to_owned(),
                };
                if let Some(steps) = steps.as_deref_mut() {
                    steps.push(step(point, said, None, Vec::new()));
                }
                if oversized == Oversized::Refuse {
                    check.fate = ResultFate::Refuse(Decision::deny(
                        rule,
                        format!(
                            "the result ({} bytes) is larger than plugin `{}` may check ({max_bytes} bytes, `results.max_bytes`), and its policy refuses such results (`results.oversized`)",
                            current.len(),
                            u.plugin.name()
                        ),
                    ));
                    return check;
                }
                continue;
            }
            let outcome = u
                .plugin
                .after_call(&plugin_call, current, &u.config, counters);
            check.instructions += outcome.instructions;
            check.peak_memory = check.peak_memory.max(outcome.peak_memory);
            let said = match &outcome.verdict {
                AfterCall::Pass => "pass".to_owned(),
                AfterCall::Replace(_) => "replace".to_owned(),
                AfterCall::Refuse(reason) => format!("refuse: {reason}"),
                AfterCall::Failed(why) => format!("error: {why}"),
            };
            if let Some(steps) = steps.as_deref_mut() {
                steps.push(step(point, said, Some(outcome.instructions), outcome.logs));
            }
            match outcome.verdict {
                AfterCall::Pass => {}
                AfterCall::Replace(text) => replaced = Some(text),
                AfterCall::Refuse(reason) => {
                    check.fate = ResultFate::Refuse(Decision::deny(rule, reason));
                    return check;
                }
                AfterCall::Failed(why) => {
                    tracing::warn!(plugin = u.plugin.name(), reason = %why, "result hook failed; the result is refused");
                    check.fate = ResultFate::Failed(Decision::deny(rule, why));
                    return check;
                }
            }
        }
        if let Some(text) = replaced {
            check.fate = ResultFate::Replace(text);
        }
        check
    }
}

fn step(point: String, result: String, instructions: Option<u64>, logs: Vec<String>) -> Step {
    Step {
        point,
        result,
        instructions,
        logs,
    }
}
