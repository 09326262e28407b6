//! How plugin evaluations ended, counted for the whole process: the metrics read these at
//! scrape time (`toolgate_plugin_evaluations_total{outcome}`). Atomic adds, so counting costs
//! an evaluation nothing it would notice, and no registry reaches down into the runtime.

use super::error::EvalFailure;
use crate::decision::Verdict;
use std::sync::atomic::{AtomicU64, Ordering};

/// Every outcome, in the order [`evaluations`] lists them.
const OUTCOMES: [&str; 15] = [
    "allow",
    "deny",
    "require_approval",
    "rate_limited",
    "trap",
    "timeout",
    "out_of_fuel",
    "memory",
    "limit",
    "busy",
    "not_run",
    "error",
    "pass",
    "replace",
    "refuse",
];

static COUNTS: [AtomicU64; OUTCOMES.len()] = [const { AtomicU64::new(0) }; OUTCOMES.len()];

fn count(index: usize) {
    COUNTS[index].fetch_add(1, Ordering::Relaxed);
}

/// A plugin answered with `verdict`.
pub(super) fn answered(verdict: Verdict) {
    count(match verdict {
        Verdict::Allow => 0,
        Verdict::Deny => 1,
        Verdict::RequireApproval => 2,
        Verdict::RateLimited => 3,
    });
}

/// A `policy-with-results` plugin answered a call's result: `pass`, `replace` or `refuse`
/// (its failures are counted by [`failed`], as an evaluation's).
pub(super) fn answered_result(verdict: &super::AfterCall) {
    count(match verdict {
        super::AfterCall::Pass => 12,
        super::AfterCall::Replace(_) => 13,
        super::AfterCall::Refuse(_) => 14,
        super::AfterCall::Failed(_) => return,
    });
}

/// An evaluation, or an `after-call`, failed (a deny, or a withheld result, naming the plugin).
pub(super) fn failed(failure: &EvalFailure) {
    count(match failure {
        EvalFailure::Unreachable | EvalFailure::Trap(_) | EvalFailure::UngrantedImport { .. } => 4,
        EvalFailure::TimedOut { .. } => 5,
        EvalFailure::OutOfFuel { .. } => 6,
        EvalFailure::MemoryBudget { .. } | EvalFailure::MemoryGrowFailed { .. } => 7,
        EvalFailure::ImportRefused(_)
        | EvalFailure::LogCap
        | EvalFailure::MalformedReason { .. }
        | EvalFailure::MalformedResult(_) => 8,
        EvalFailure::Busy { .. } => 9,
        EvalFailure::Untrusted(_)
        | EvalFailure::InputTooLarge { .. }
        | EvalFailure::ResultTooLarge { .. } => 10,
        EvalFailure::Arm(_) | EvalFailure::Instantiate(_) | EvalFailure::Other(_) => 11,
    });
}

/// Evaluations since the process started, by outcome: the plugin's own verdicts (`allow`,
/// `deny`, `require_approval`, `rate_limited`, and on results `pass`, `replace`, `refuse`)
/// and its failures (`trap`, `timeout`,
/// `out_of_fuel`, `memory`, `limit` (an import or log cap, an oversized reason), `busy` (no
/// permit in time), `not_run` (untrusted, input too large), `error`).
pub fn evaluations() -> Vec<(&'static str, u64)> {
    OUTCOMES
        .iter()
        .zip(&COUNTS)
        .map(|(outcome, n)| (*outcome, n.load(Ordering::Relaxed)))
        .collect()
}
