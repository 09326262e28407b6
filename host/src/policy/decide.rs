//! Deciding a `tools/call`: [`Policy::decide`] walks the steps listed in the module doc, in
//! that order, and [`Policy::decide_traced`] records each one.

use super::{
    Action, DefaultAction, Limit, Outcome, PluginUse, Policy, ResultHooks, Rule, Step, UNKNOWN_RULE,
};
use crate::call::{Approval, ToolCall};
use crate::counters::{CounterKey, CounterStore, Refusal, Window};
use crate::decision::{Decision, Verdict};
use crate::plugins::PluginCall;
use smallvec::SmallVec;
use std::sync::Arc;

/// Collects steps when tracing; does nothing (and allocates nothing) otherwise.
struct Tracer<'t>(Option<&'t mut Vec<Step>>);

impl Tracer<'_> {
    fn step(&mut self, point: impl FnOnce() -> String, result: impl FnOnce() -> String) {
        if let Some(steps) = self.0.as_mut() {
            steps.push(Step {
                point: point(),
                result: result(),
                instructions: None,
                logs: Vec::new(),
            });
        }
    }
}

impl Policy {
    /// Decides one call, consuming counter units if it is allowed.
    pub fn decide(&self, call: &ToolCall<'_>, counters: &Arc<dyn CounterStore>) -> Outcome {
        self.decide_inner(call, counters, Tracer(None), None)
    }

    /// What the policy would decide with its shadow rules in force (`enforce: false`
    /// counts as true), for the decision log. `counters` must be the shadow's own: a shadow
    /// decision never consumes a real unit.
    pub fn decide_shadow(&self, call: &ToolCall<'_>, counters: &Arc<dyn CounterStore>) -> Outcome {
        self.decide_mode(call, counters, Tracer(None), None, true)
    }

    /// Decides a call a person approved (`approval`): as [`Policy::decide`], except that the
    /// rule's `require_approval` and a plugin's `require-approval` are met. Every other check
    /// runs again, now, and counter units are consumed now, not when the call was held.
    /// Plugins of `toolgate:policy@0.2.0` see `approval` (and may still deny the call); 0.1.0
    /// plugins are called as for any call.
    pub fn decide_approved(
        &self,
        call: &ToolCall<'_>,
        counters: &Arc<dyn CounterStore>,
        approval: &Approval,
    ) -> Outcome {
        self.decide_inner(call, counters, Tracer(None), Some(approval))
    }

    /// Decides one call like [`Policy::decide`], and records each step in `steps`: which rule
    /// matched, each condition and what it gave, the limits, each plugin and its decision.
    pub fn decide_traced(
        &self,
        call: &ToolCall<'_>,
        counters: &Arc<dyn CounterStore>,
        steps: &mut Vec<Step>,
    ) -> Outcome {
        self.decide_inner(call, counters, Tracer(Some(steps)), None)
    }

    /// `approval`: the call is decided again because a person approved it.
    fn decide_inner(
        &self,
        call: &ToolCall<'_>,
        counters: &Arc<dyn CounterStore>,
        trace: Tracer<'_>,
        approval: Option<&Approval>,
    ) -> Outcome {
        self.decide_mode(call, counters, trace, approval, false)
    }

    /// `shadow`: shadow rules decide too (see [`Policy::decide_shadow`]).
    fn decide_mode(
        &self,
        call: &ToolCall<'_>,
        counters: &Arc<dyn CounterStore>,
        mut trace: Tracer<'_>,
        approval: Option<&Approval>,
        shadow: bool,
    ) -> Outcome {
        let refuse = Outcome::refused;
        let rule = if shadow {
            self.rule_for(call.tool)
        } else {
            self.enforced_rule_for(call.tool)
        };
        let unlisted = rule.is_none() && self.default == DefaultAction::Deny;
        let hidden = self.hide.iter().any(|h| h.matches(call.tool));
        if unlisted || hidden {
            trace.step(
                || "hide".into(),
                || {
                    if hidden {
                        "hidden"
                    } else {
                        "no rule under default: deny"
                    }
                    .into()
                },
            );
            tracing::debug!(tool = call.tool, "call to a hidden or unlisted tool");
            return refuse(Decision::deny(UNKNOWN_RULE, "unknown tool"));
        }
        let rule_id = rule.map_or("default", |r| r.id.as_str());
        trace.step(|| rule_id.to_owned(), || "matched".into());
        let with_reason = |rule: &Rule, detail: String| match &rule.reason {
            Some(reason) => format!("{reason} ({detail})"),
            None => detail,
        };
        if let Some(rule) = rule {
            if rule.action != Action::Allow {
                trace.step(
                    || format!("{rule_id}.action"),
                    || match rule.action {
                        Action::RequireApproval => "require_approval".into(),
                        _ => "deny".into(),
                    },
                );
            }
            if rule.action == Action::Deny {
                let reason = rule
                    .reason
                    .clone()
                    .unwrap_or_else(|| format!("`{}` is denied by policy", call.tool));
                return refuse(Decision::deny(rule_id, reason));
            }
            for (i, condition) in rule.require.iter().enumerate() {
                let holds = condition.holds(call);
                trace.step(|| format!("{rule_id}.require[{i}]"), || said(&holds));
                match holds {
                    Ok(true) => {}
                    Ok(false) => {
                        return refuse(Decision::deny(
                            rule_id,
                            with_reason(rule, format!("requirement not met: {condition}")),
                        ))
                    }
                    Err(e) => {
                        return refuse(Decision::deny(
                            rule_id,
                            format!("policy evaluation error: {e}"),
                        ))
                    }
                }
            }
            for (i, condition) in rule.deny_if.iter().enumerate() {
                let holds = condition.holds(call);
                trace.step(|| format!("{rule_id}.deny_if[{i}]"), || said(&holds));
                match holds {
                    Ok(false) => {}
                    Ok(true) => {
                        return refuse(Decision::deny(
                            rule_id,
                            with_reason(rule, format!("denied because {condition}")),
                        ))
                    }
                    Err(e) => {
                        return refuse(Decision::deny(
                            rule_id,
                            format!("policy evaluation error: {e}"),
                        ))
                    }
                }
            }
            if rule.action == Action::RequireApproval && approval.is_none() {
                let detail = "a person must approve this call".to_owned();
                return refuse(Decision {
                    verdict: Verdict::RequireApproval,
                    rule: rule_id.to_owned(),
                    reason: with_reason(rule, detail).into(),
                    retry_after_ms: None,
                });
            }
        }
        // On the stack: a rule has a few limits and plugins, and this runs on every call.
        let limits: SmallVec<[&Limit; 4]> = self
            .all_tools_limits
            .iter()
            .chain(rule.into_iter().flat_map(|r| &r.limits))
            .collect();
        let uses: SmallVec<[&Arc<PluginUse>; 4]> = self
            .all_tools_uses
            .iter()
            .chain(rule.into_iter().flat_map(|r| &r.uses))
            .collect();
        if limits.is_empty() && uses.is_empty() {
            return refuse(Decision::allow(rule_id));
        }
        let requests: SmallVec<[(CounterKey, Window); 4]> = limits
            .iter()
            .map(|l| {
                (
                    CounterKey::new(l.counter.clone(), l.scope, call.grant, call.session),
                    l.window,
                )
            })
            .collect();
        let consumed = counters.consume(&requests);
        if !limits.is_empty() {
            trace.step(
                || "limits".into(),
                || match &consumed {
                    Ok(_) => "consumed".into(),
                    Err(Refusal::Exhausted(e)) => {
                        format!("exhausted: counter {}", limits[e.index].counter)
                    }
                    Err(Refusal::Unavailable(why)) => format!("not counted: {why}"),
                },
            );
        }
        match consumed {
            Ok(reservations) => self.run_plugins(
                call,
                &uses,
                counters,
                rule_id,
                reservations,
                &mut trace,
                approval,
            ),
            // Fail closed: a store that cannot count refuses every limited call, saying why.
            Err(Refusal::Unavailable(why)) => refuse(Decision {
                verdict: Verdict::RateLimited,
                rule: "counters".into(),
                reason: format!("the call could not be counted, so it is refused: {why}").into(),
                retry_after_ms: Some(1000),
            }),
            Err(Refusal::Exhausted(exhausted)) => {
                let limit = limits[exhausted.index];
                let retry_s = exhausted.retry_after_ms.div_ceil(1000);
                refuse(Decision {
                    verdict: Verdict::RateLimited,
                    rule: if exhausted.index < self.all_tools_limits.len() {
                        "all_tools".into()
                    } else {
                        rule_id.to_owned()
                    },
                    reason: format!(
                        "counter {} allows {} {}; retry in {retry_s} s",
                        limit.counter, limit.window.max, limit.label
                    )
                    .into(),
                    retry_after_ms: Some(exhausted.retry_after_ms),
                })
            }
        }
    }

    /// Runs the plugins in order after the declarative checks passed. The first refusal wins,
    /// and every unit the call took (declarative and plugin) is refunded with it; with an
    /// `approval`, a plugin's `require-approval` is met, not a refusal.
    // The decision's whole context, each piece used once: a struct for it would only rename them.
    #[allow(clippy::too_many_arguments)]
    fn run_plugins(
        &self,
        call: &ToolCall<'_>,
        uses: &[&Arc<PluginUse>],
        counters: &Arc<dyn CounterStore>,
        rule_id: &str,
        mut reservations: Vec<crate::counters::Reservation>,
        trace: &mut Tracer<'_>,
        approval: Option<&Approval>,
    ) -> Outcome {
        let (mut instructions, mut peak_memory) = (0, 0);
        if !uses.is_empty() {
            let arguments = call.args_json();
            let plugin_call = PluginCall {
                call,
                arguments: &arguments,
                keep_logs: trace.0.is_some(),
                approval,
            };
            for u in uses {
                let outcome = u.plugin.evaluate(&plugin_call, &u.config, counters);
                reservations.extend(outcome.reservations);
                instructions += outcome.instructions;
                peak_memory = peak_memory.max(outcome.peak_memory);
                if let Some(steps) = trace.0.as_mut() {
                    let d = &outcome.decision;
                    steps.push(Step {
                        point: format!("{} (plugin {})", u.site, u.plugin.name()),
                        result: match d.verdict {
                            Verdict::Allow => "allow".to_owned(),
                            verdict => format!("{}: {}", verdict.as_str(), d.reason),
                        },
                        instructions: Some(outcome.instructions),
                        logs: outcome.logs,
                    });
                }
                let met =
                    approval.is_some() && outcome.decision.verdict == Verdict::RequireApproval;
                if !outcome.decision.is_allow() && !met {
                    counters.refund(&reservations);
                    return Outcome {
                        decision: outcome.decision,
                        reservations: Vec::new(),
                        instructions,
                        peak_memory,
                        after: ResultHooks::default(),
                    };
                }
            }
        }
        Outcome {
            decision: Decision::allow(rule_id),
            reservations,
            instructions,
            peak_memory,
            after: ResultHooks::of(uses),
        }
    }
}

/// A condition's result, in a trace's words.
fn said<E: std::fmt::Display>(holds: &Result<bool, E>) -> String {
    match holds {
        Ok(true) => "holds".into(),
        Ok(false) => "does not hold".into(),
        Err(e) => format!("error: {e}"),
    }
}
