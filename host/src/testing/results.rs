//! The results part of a case: a step's `result` (the upstream's), what the policy's result
//! hooks make of it, and how that compares with `expect.result*`.

use super::Detailed;
use crate::call::ToolCall;
use crate::counters::CounterStore;
use crate::policy::{ResultFate, ResultHooks, Step};
use serde_json::Value;
use std::sync::Arc;

/// What `expect.result` may say.
const FATES: [&str; 4] = ["pass", "replace", "refuse", "error"];

/// What the client would get for a step's `result`: its fate's name, the reply's result as
/// JSON text, and a refusal's reason.
pub struct SeenResult {
    /// `pass`, `replace`, `refuse` or `error`.
    pub fate: &'static str,
    /// The result the client gets, as JSON text.
    pub text: String,
    /// A refused result's reason.
    pub reason: Option<String>,
    /// Instructions the hooks consumed.
    pub instructions: u64,
}

/// A step's `result` expectations that cannot be checked: an unknown fate, or a `result`
/// expectation on a step that gives no result (`has_result`).
pub(super) fn spec_problem(has_result: bool, expected: &Detailed) -> Option<String> {
    if let Some(fate) = &expected.result {
        if !FATES.contains(&fate.as_str()) {
            return Some(format!(
                "expect: unknown result `{fate}` (one of {})",
                FATES.join(", ")
            ));
        }
    }
    let expects_result = expected.result.is_some()
        || expected.result_contains.is_some()
        || expected.result_lacks.is_some()
        || expected.result_reason_contains.is_some();
    (expects_result && !has_result)
        .then(|| "expect: a `result` expectation needs the step's `result` (the upstream's)".into())
}

/// Runs `hooks` on the upstream's `result`, as the session would, noting their steps.
pub fn seen(
    hooks: &ResultHooks,
    call: &ToolCall<'_>,
    result: &Value,
    counters: &Arc<dyn CounterStore>,
    trace: &mut Vec<Step>,
) -> SeenResult {
    let text = result.to_string();
    let check = hooks.run_traced(call, &text, counters, Some(trace));
    let (fate, text, reason) = match check.fate {
        ResultFate::Pass => ("pass", text, None),
        ResultFate::Replace(replaced) => ("replace", replaced, None),
        ResultFate::Refuse(d) => (
            "refuse",
            d.to_tool_result().to_string(),
            Some(d.reason.into_owned()),
        ),
        ResultFate::Failed(d) => (
            "error",
            d.to_tool_result().to_string(),
            Some(d.reason.into_owned()),
        ),
    };
    SeenResult {
        fate,
        text,
        reason,
        instructions: check.instructions,
    }
}

/// The result expectations `seen` does not meet (`seen`: `None` when no hook ran because
/// the call was refused).
pub(super) fn mismatches(expected: &Detailed, seen: Option<&SeenResult>) -> Vec<&'static str> {
    let mut wrong = Vec::new();
    let fate = seen.map_or("none", |s| s.fate);
    if expected.result.as_deref().is_some_and(|f| f != fate) {
        wrong.push("result");
    }
    let text = seen.map_or("", |s| s.text.as_str());
    if expected
        .result_contains
        .as_deref()
        .is_some_and(|needle| !text.contains(needle))
    {
        wrong.push("result_contains");
    }
    if expected
        .result_lacks
        .as_deref()
        .is_some_and(|needle| text.contains(needle))
    {
        wrong.push("result_lacks");
    }
    let reason = seen.and_then(|s| s.reason.as_deref()).unwrap_or("");
    if expected
        .result_reason_contains
        .as_deref()
        .is_some_and(|needle| !reason.contains(needle))
    {
        wrong.push("result_reason");
    }
    wrong
}

/// The result lines of a failed case's diff.
pub(super) fn diff(expected: &Detailed, seen: Option<&SeenResult>, diff: &mut Vec<String>) {
    let wanted = expected.result.is_some()
        || expected.result_contains.is_some()
        || expected.result_lacks.is_some()
        || expected.result_reason_contains.is_some();
    if !wanted {
        return;
    }
    if let Some(fate) = &expected.result {
        diff.push(format!("  - result: {fate}"));
    }
    if let Some(needle) = &expected.result_contains {
        diff.push(format!("  - result containing: {needle}"));
    }
    if let Some(needle) = &expected.result_lacks {
        diff.push(format!("  - result without: {needle}"));
    }
    if let Some(needle) = &expected.result_reason_contains {
        diff.push(format!("  - result reason containing: {needle}"));
    }
    match seen {
        None => diff.push("  + result: none (the call was not allowed, so no hook ran)".into()),
        Some(s) => {
            diff.push(format!("  + result: {}", s.fate));
            diff.push(format!("  + the client gets: {}", s.text));
            if let Some(reason) = &s.reason {
                diff.push(format!("  + result reason: {reason}"));
            }
        }
    }
}
