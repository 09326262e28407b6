//! `toolgate test`: runs case files (`*.cases.json`) against a policy on the production
//! engine, limits and plugin runtime, with a simulated clock and no upstream.
//!
//! A case file names a policy (relative to itself) and a list of steps. A step is a call with
//! its expected decision, optionally repeated, or `{"advance_s": N}`, which moves the simulated
//! clock. Steps run in order against one evolving state (counters persist from step to step);
//! each file starts from empty counters at [`START_MS`]. Nothing sleeps.

mod results;

pub use results::{seen as seen_result, SeenResult};

use crate::call::ToolCall;
use crate::clock::ManualClock;
use crate::counters::{CounterStore, MemoryCounterStore};
use crate::policy::{Loader, Policy, Step};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the simulated clock starts: 2026-01-01T00:00:00Z.
pub const START_MS: u64 = 1_767_225_600_000;

/// The grant and session of a call that names none.
pub const DEFAULT_GRANT: &str = "test-grant";
/// See [`DEFAULT_GRANT`].
pub const DEFAULT_SESSION: &str = "test-session";

/// A case file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    /// The policy, relative to the case file.
    policy: PathBuf,
    /// What the cases are about (shown nowhere; for readers).
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    steps: Vec<StepSpec>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StepSpec {
    Advance(AdvanceStep),
    Call(Box<CallStep>),
}

/// `{"advance_s": N}`. Its own struct so that unknown keys are refused: a call step with a
/// stray `advance_s` must not silently become a clock step.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdvanceStep {
    advance_s: f64,
}

/// The largest clock step a case may take: ten years (365-day years), in seconds. Windows are
/// at most 7 days, so a larger step tests nothing more, and a bound keeps the simulated clock
/// far from overflowing.
pub const MAX_ADVANCE_S: f64 = 10.0 * 365.0 * 86_400.0;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallStep {
    #[serde(default)]
    name: Option<String>,
    #[serde(default = "one")]
    repeat: u32,
    call: CallSpec,
    /// The upstream's `result` for the call, when it is allowed: the policy's result hooks
    /// see it (`expect.result` says what they should make of it).
    #[serde(default)]
    result: Option<Value>,
    expect: Expect,
}

fn one() -> u32 {
    1
}

/// A call in a case file (and `toolgate eval --call`): only `tool` is required.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallSpec {
    tool: String,
    #[serde(default)]
    args: Option<Value>,
    #[serde(default)]
    grant: Option<String>,
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    server: Option<String>,
}

/// `{}`: the arguments of a call that has none.
static NO_ARGS: std::sync::LazyLock<Value> =
    std::sync::LazyLock::new(|| Value::Object(Default::default()));

impl CallSpec {
    /// The call as the engine sees it, with the defaults filled in.
    pub fn tool_call(&self) -> ToolCall<'_> {
        ToolCall {
            tool: &self.tool,
            args: self.args.as_ref().unwrap_or(&NO_ARGS),
            args_text: None,
            grant: self.grant.as_deref().unwrap_or(DEFAULT_GRANT),
            session: self.session.as_deref().unwrap_or(DEFAULT_SESSION),
            server: self.server.as_deref().unwrap_or(""),
            annotations: None,
        }
    }
}

/// What a case expects: a decision, or a decision with details.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(untagged)]
enum Expect {
    Decision(String),
    Detailed(Detailed),
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Detailed {
    decision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason_contains: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry_after_ms_max: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_instructions: Option<u64>,
    /// What the result hooks made of the step's `result`: `pass`, `replace`, `refuse` or
    /// `error` (a hook failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<String>,
    /// Text the result the client gets contains (its JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result_contains: Option<String>,
    /// Text the result the client gets does not contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result_lacks: Option<String>,
    /// Text the reason of a refused result contains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result_reason_contains: Option<String>,
}

const DECISIONS: [&str; 4] = ["allow", "deny", "require_approval", "rate_limited"];

/// One case's result.
#[derive(Debug, Serialize)]
pub struct CaseResult {
    /// The case's name (`step N` when it has none).
    pub name: String,
    /// Whether every repetition met the expectation.
    pub passed: bool,
    /// Expected against actual, line by line (`- expected`, `+ actual`); empty when passed.
    pub diff: Vec<String>,
    /// Plugin instructions, the most any repetition took.
    pub instructions: u64,
    /// Plugin linear memory, the most any repetition held, in bytes.
    pub peak_memory: usize,
    /// Wall time of all repetitions.
    pub wall_us: u64,
    /// The steps of the last repetition (or the failing one).
    pub trace: Vec<Step>,
    /// That repetition's decision as the decision log writes it (`toolgate test --json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<crate::audit::Line>,
}

/// One case file's results.
#[derive(Debug, Serialize)]
pub struct FileResult {
    /// The case file.
    pub file: String,
    /// The policy it tests.
    pub policy: String,
    /// A file that could not run at all (unreadable, invalid, or its policy failed to load).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its cases, in order.
    pub cases: Vec<CaseResult>,
    /// Coverage points of the policy, and whether this file reached each.
    #[serde(skip)]
    pub points: BTreeMap<String, bool>,
}

/// Finds `*.cases.json` under `paths` (files are taken as given), sorted, skipping `target`,
/// `node_modules` and hidden directories.
pub fn find_case_files(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if entry.file_type()?.is_dir() {
                if !(name.starts_with('.') || name == "target" || name == "node_modules") {
                    walk(&path, out)?;
                }
            } else if name.ends_with(".cases.json") {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            walk(path, &mut out)?;
        } else {
            out.push(path.clone());
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Runs one case file.
pub fn run_file(loader: &Loader, path: &Path) -> FileResult {
    let mut result = FileResult {
        file: path.display().to_string(),
        policy: String::new(),
        error: None,
        cases: Vec::new(),
        points: BTreeMap::new(),
    };
    let cases: CaseFile = match std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()))
    {
        Ok(cases) => cases,
        Err(e) => {
            result.error = Some(format!("invalid case file: {e}"));
            return result;
        }
    };
    let policy_path = path.parent().unwrap_or(Path::new(".")).join(&cases.policy);
    result.policy = policy_path.display().to_string();
    let policy = match loader.load(&policy_path) {
        Ok(policy) => policy,
        Err(e) => {
            result.error = Some(format!("the policy does not load: {e}"));
            return result;
        }
    };
    result.points = policy
        .coverage_points()
        .into_iter()
        .map(|p| (p, false))
        .collect();
    let clock = ManualClock::starting_at(START_MS);
    let counters: Arc<dyn CounterStore> = Arc::new(MemoryCounterStore::new(clock.clone()));
    for (index, step) in cases.steps.iter().enumerate() {
        match step {
            StepSpec::Advance(AdvanceStep { advance_s }) => match advance(*advance_s) {
                Ok(by) => clock.advance(by),
                Err(e) => {
                    // The steps after it expect a clock that did not move: not run.
                    let rest = cases.steps.len() - index - 1;
                    let mut diff = vec![format!("  {e}")];
                    match rest {
                        0 => {}
                        1 => diff.push("  the step after it was not run".into()),
                        n => diff.push(format!("  the {n} steps after it were not run")),
                    }
                    result.cases.push(CaseResult {
                        name: format!("step {}", index + 1),
                        passed: false,
                        diff,
                        instructions: 0,
                        peak_memory: 0,
                        wall_us: 0,
                        trace: Vec::new(),
                        decision: None,
                    });
                    break;
                }
            },
            StepSpec::Call(step) => {
                let case = run_case(&policy, &counters, step, index, &mut result.points);
                result.cases.push(case);
            }
        }
    }
    result
}

/// An `advance_s` that is not a clock step: negative, NaN, infinite or over [`MAX_ADVANCE_S`].
#[derive(Debug, thiserror::Error)]
#[error("advance_s must be a number of seconds from 0 to {MAX_ADVANCE_S} (10 years), not {0:?}")]
struct BadAdvance(f64);

/// An `advance_s` as a clock step: finite, at least 0, at most [`MAX_ADVANCE_S`].
fn advance(seconds: f64) -> Result<Duration, BadAdvance> {
    if !(0.0..=MAX_ADVANCE_S).contains(&seconds) {
        return Err(BadAdvance(seconds));
    }
    // In range, so this cannot panic (it does on a negative, NaN or overflowing value).
    Ok(Duration::from_secs_f64(seconds))
}

fn run_case(
    policy: &Policy,
    counters: &Arc<dyn CounterStore>,
    step: &CallStep,
    index: usize,
    points: &mut BTreeMap<String, bool>,
) -> CaseResult {
    let name = step
        .name
        .clone()
        .unwrap_or_else(|| format!("step {}", index + 1));
    let expected = match &step.expect {
        Expect::Decision(d) => Detailed {
            decision: d.clone(),
            reason_contains: None,
            retry_after_ms_max: None,
            max_instructions: None,
            result: None,
            result_contains: None,
            result_lacks: None,
            result_reason_contains: None,
        },
        Expect::Detailed(d) => d.clone(),
    };
    let mut case = CaseResult {
        name,
        passed: true,
        diff: Vec::new(),
        instructions: 0,
        peak_memory: 0,
        wall_us: 0,
        trace: Vec::new(),
        decision: None,
    };
    if !DECISIONS.contains(&expected.decision.as_str()) {
        case.passed = false;
        case.diff.push(format!(
            "  expect: unknown decision `{}` (one of {})",
            expected.decision,
            DECISIONS.join(", ")
        ));
        return case;
    }
    if let Some(problem) = results::spec_problem(step.result.is_some(), &expected) {
        case.passed = false;
        case.diff.push(format!("  {problem}"));
        return case;
    }
    let call = step.call.tool_call();
    let started = Instant::now();
    for repetition in 1..=step.repeat.max(1) {
        let mut trace = Vec::new();
        let decided = Instant::now();
        let outcome = policy.decide_traced(&call, counters, &mut trace);
        let eval_us = decided.elapsed().as_micros() as u64;
        case.decision = Some(decision_event(policy, &call, &outcome, eval_us));
        for s in &trace {
            let point = match s.instructions {
                // A plugin step: covered by the kind of its decision (`deny: <reason>`).
                Some(_) => {
                    let kind = s.result.split(':').next().unwrap_or_default();
                    format!("{} {kind}", s.point)
                }
                None => s.point.clone(),
            };
            if let Some(hit) = points.get_mut(&point) {
                *hit = true;
            }
        }
        let seen = step
            .result
            .as_ref()
            .filter(|_| outcome.decision.is_allow())
            .map(|result| results::seen(&outcome.after, &call, result, counters, &mut trace));
        let hooks_cost = seen.as_ref().map_or(0, |s| s.instructions);
        case.instructions = case.instructions.max(outcome.instructions + hooks_cost);
        case.peak_memory = case.peak_memory.max(outcome.peak_memory);
        case.trace = trace;
        let d = &outcome.decision;
        let mut wrong = results::mismatches(&expected, seen.as_ref());
        if d.verdict.as_str() != expected.decision {
            wrong.push("decision");
        }
        if let Some(needle) = &expected.reason_contains {
            if !d.reason.contains(needle.as_str()) {
                wrong.push("reason");
            }
        }
        if let Some(max) = expected.retry_after_ms_max {
            if d.retry_after_ms.is_none_or(|r| r > max) {
                wrong.push("retry_after_ms");
            }
        }
        if let Some(max) = expected.max_instructions {
            if outcome.instructions > max {
                wrong.push("instructions");
            }
        }
        if !wrong.is_empty() {
            case.passed = false;
            if step.repeat > 1 {
                case.diff
                    .push(format!("  at repetition {repetition} of {}", step.repeat));
            }
            case.diff
                .push(format!("  - decision: {}", expected.decision));
            case.diff
                .push(format!("  + decision: {}", d.verdict.as_str()));
            if let Some(needle) = &expected.reason_contains {
                case.diff.push(format!("  - reason containing: {needle}"));
            }
            case.diff.push(format!("  + reason: {}", d.reason));
            case.diff.push(format!("  + rule: {}", d.rule));
            if let Some(max) = expected.retry_after_ms_max {
                case.diff.push(format!("  - retry_after_ms at most: {max}"));
                case.diff.push(format!(
                    "  + retry_after_ms: {}",
                    d.retry_after_ms
                        .map_or("none".to_owned(), |r| r.to_string())
                ));
            }
            if let Some(max) = expected.max_instructions {
                case.diff.push(format!("  - instructions at most: {max}"));
                case.diff
                    .push(format!("  + instructions: {}", outcome.instructions));
            }
            results::diff(&expected, seen.as_ref(), &mut case.diff);
            break;
        }
    }
    case.wall_us = started.elapsed().as_micros() as u64;
    case
}

/// Coverage of one policy over every case file that tests it.
#[derive(Debug, Serialize)]
pub struct Coverage {
    /// The policy file.
    pub policy: String,
    /// Points reached.
    pub covered: usize,
    /// All points.
    pub total: usize,
    /// The points no case reached.
    pub missed: Vec<String>,
}

/// Merges the files' coverage by policy.
pub fn coverage(files: &[FileResult]) -> Vec<Coverage> {
    // Keyed by the canonical path (case files reach a policy by different relative paths),
    // shown as the first case file named it.
    let mut by_policy: BTreeMap<String, (String, BTreeMap<String, bool>)> = BTreeMap::new();
    for f in files.iter().filter(|f| f.error.is_none()) {
        let key =
            std::fs::canonicalize(&f.policy).map_or(f.policy.clone(), |p| p.display().to_string());
        let (_, merged) = by_policy
            .entry(key)
            .or_insert_with(|| (f.policy.clone(), BTreeMap::new()));
        for (point, hit) in &f.points {
            *merged.entry(point.clone()).or_default() |= hit;
        }
    }
    by_policy
        .into_values()
        .map(|(policy, points)| {
            let missed: Vec<String> = points
                .iter()
                .filter(|(_, hit)| !**hit)
                .map(|(p, _)| p.clone())
                .collect();
            Coverage {
                policy,
                covered: points.len() - missed.len(),
                total: points.len(),
                missed,
            }
        })
        .collect()
}

/// The share of all points covered, in percent (100 when there are none).
pub fn percent(coverage: &[Coverage]) -> f64 {
    let total: usize = coverage.iter().map(|c| c.total).sum();
    let covered: usize = coverage.iter().map(|c| c.covered).sum();
    if total == 0 {
        100.0
    } else {
        covered as f64 * 100.0 / total as f64
    }
}

/// How `toolgate test` reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReportOptions {
    /// Print per-case instructions and wall time.
    pub bench: bool,
    /// Print coverage.
    pub coverage: bool,
    /// Fail when coverage is under this percentage.
    pub fail_under: Option<f64>,
}

/// The human report and whether the run passed (every case, and the coverage gate).
pub fn report(files: &[FileResult], options: ReportOptions) -> (String, bool) {
    use std::fmt::Write;
    let mut out = String::new();
    let (mut passed, mut failed) = (0, 0);
    for f in files {
        if let Some(error) = &f.error {
            failed += 1;
            let _ = writeln!(out, "FAIL {}: {error}", f.file);
            continue;
        }
        for case in &f.cases {
            let verdict = if case.passed { "PASS" } else { "FAIL" };
            let _ = write!(out, "{verdict} {}: {}", f.file, case.name);
            if options.bench {
                let _ = write!(
                    out,
                    "  [{} instructions, {} KiB peak memory, {} µs]",
                    case.instructions,
                    case.peak_memory >> 10,
                    case.wall_us
                );
            }
            out.push('\n');
            for line in &case.diff {
                let _ = writeln!(out, "{line}");
            }
            if case.passed {
                passed += 1;
            } else {
                failed += 1;
            }
        }
    }
    let mut ok = failed == 0;
    if options.coverage || options.fail_under.is_some() {
        let coverage = coverage(files);
        for c in &coverage {
            let _ = writeln!(
                out,
                "coverage {}: {}/{} points",
                c.policy, c.covered, c.total
            );
            for point in &c.missed {
                let _ = writeln!(out, "  never reached: {point}");
            }
        }
        let percent = percent(&coverage);
        let _ = writeln!(out, "coverage: {percent:.1}%");
        if let Some(min) = options.fail_under {
            // A NaN bound fails the gate instead of passing everything.
            if percent.partial_cmp(&min).is_none_or(|o| o.is_lt()) {
                ok = false;
                let _ = writeln!(out, "coverage {percent:.1}% is under the required {min}%");
            }
        }
    }
    let _ = writeln!(out, "{passed} passed, {failed} failed");
    (out, ok)
}

/// A decision made outside a gateway (`toolgate eval --log`, `toolgate test --json`), as the
/// decision log writes it: the same schema, transport `eval`, request id `null`.
pub fn decision_line(
    policy: &crate::policy::Policy,
    call: &ToolCall<'_>,
    outcome: &crate::policy::Outcome,
    eval_us: u64,
) -> String {
    serde_json::to_string(&decision_event(policy, call, outcome, eval_us))
        .expect("an event serializes")
}

/// [`decision_line`], not yet written.
pub fn decision_event(
    policy: &crate::policy::Policy,
    call: &ToolCall<'_>,
    outcome: &crate::policy::Outcome,
    eval_us: u64,
) -> crate::audit::Line {
    use crate::audit;
    let d = &outcome.decision;
    let event = audit::DecisionEvent {
        time: audit::now(),
        decision_id: uuid::Uuid::new_v4().to_string(),
        instance: audit::instance(),
        transport: "eval".into(),
        policy: policy.name().map(str::to_owned),
        policy_digest: policy.digest().to_owned(),
        plugins: policy.plugin_refs(),
        grant: call.grant.to_owned(),
        session: call.session.to_owned(),
        method: "tools/call".into(),
        request_id: "null".into(),
        server: call.server.to_owned(),
        tool: call.tool.to_owned(),
        args_sha256: audit::args_sha256(call.args),
        args: policy.log_args_for(call.tool).map(|l| l.apply(call.args)),
        decision: audit::Verdict {
            verdict: d.verdict.as_str().into(),
            rule: d.rule.clone(),
            reason: d.reason.to_string(),
            retry_after_ms: d.retry_after_ms,
        },
        eval_us,
        plugin_instructions: outcome.instructions,
        trace_id: None,
        span_id: None,
    };
    audit::Line {
        schema: audit::SCHEMA.into(),
        event: audit::Event::Decision(Box::new(event)),
    }
}
