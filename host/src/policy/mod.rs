//! The policy engine: load a policy document, then decide each `tools/call` and each tool's
//! visibility in `tools/list`.
//!
//! ## How a call is decided
//! 1. A tool in `hide`, or one no rule names under `default: deny`, is **unknown**: refused with
//!    the reason "unknown tool", exactly as a tool that does not exist.
//! 2. The tool's rule is its exact name in `tools` or, failing that, the most specific glob
//!    (most literal characters; ties broken alphabetically). No rule under `default: allow`
//!    means the call only has to pass `all_tools`.
//! 3. `action: deny` refuses with the rule's `reason`.
//! 4. Every `require` condition must hold, and no `deny_if` condition may hold. A condition
//!    that cannot be evaluated (a type mismatch) refuses the call: evaluation fails closed.
//! 5. `action: require_approval` refuses with `require_approval` until approvals exist.
//! 6. The limits of `all_tools` and of the rule are consumed together, all or nothing; a full
//!    counter gives `rate_limited` with the time until it frees up.
//! 7. Otherwise the call is allowed, holding the counter reservations so that the gateway can
//!    refund them if the upstream never runs the tool.

mod condition;
mod document;
mod error;
pub(crate) mod unique_keys;

use crate::call::ToolCall;
pub use condition::{Condition, Op, Path as ConditionPath};
pub use document::{Action, DefaultAction, PolicyDocument};
pub use error::{InvalidPolicy, PolicyError};

use crate::counters::{CounterKey, CounterStore, Reservation, Scope, Window};
use crate::decision::{Decision, Verdict};
use crate::plugins::{Plugin, PluginCall, PluginLimits, PluginRuntime};
use document::UseSpec;
use document::{LimitSpec, RateLimitSpec};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use wildmatch::WildMatch;

/// A loaded, validated policy, ready to decide calls. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Policy {
    name: Option<String>,
    default: DefaultAction,
    /// Hidden names and patterns.
    hide: Vec<WildMatch>,
    exact: HashMap<String, Rule>,
    /// Glob rules, most specific first.
    globs: Vec<(WildMatch, Rule)>,
    all_tools_limits: Vec<Limit>,
    all_tools_uses: Vec<PluginUse>,
    plugins: Vec<Arc<Plugin>>,
    /// Every key of `args` that a condition reads, at any depth.
    argument_keys: crate::jsonrpc::Spellings,
}

/// A rule's use of a plugin, with its config as JSON text.
#[derive(Debug)]
struct PluginUse {
    plugin: Arc<Plugin>,
    config: String,
    /// `tools.<pattern>.use[i]` or `all_tools.use[i]`.
    site: String,
}

#[derive(Debug)]
struct Rule {
    /// `tools.<name or glob>`: reported as the decision's `rule`.
    id: String,
    action: Action,
    reason: Option<String>,
    require: Vec<Condition>,
    deny_if: Vec<Condition>,
    limits: Vec<Limit>,
    uses: Vec<PluginUse>,
}

#[derive(Debug)]
struct Limit {
    counter: String,
    scope: Scope,
    window: Window,
    label: String,
}

/// A decision plus the counter units it took. Refund them if the tool never ran.
#[derive(Debug)]
pub struct Outcome {
    /// What to do with the call.
    pub decision: Decision,
    /// Units consumed by an allowed call.
    pub reservations: Vec<Reservation>,
    /// Instructions (fuel) the plugins that ran consumed, together.
    pub instructions: u64,
    /// The most linear memory any plugin that ran held, in bytes.
    pub peak_memory: usize,
}

/// One step of a decision, as [`Policy::decide_traced`] records it: what was checked and what
/// it gave. `point` names the place in the policy, in the words of its load errors
/// (`tools.session_create.require[0]`, `all_tools.use[1]`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Step {
    /// The place in the policy.
    pub point: String,
    /// What it gave: `matched`, `holds`, `does not hold`, `error: ...`, `consumed`,
    /// `exhausted`, or a plugin's decision (`allow`, `deny: <reason>`, ...).
    pub result: String,
    /// A plugin step: the instructions it consumed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions: Option<u64>,
}

/// Collects steps when tracing; does nothing (and allocates nothing) otherwise.
struct Tracer<'t>(Option<&'t mut Vec<Step>>);

impl Tracer<'_> {
    fn step(&mut self, point: impl FnOnce() -> String, result: impl FnOnce() -> String) {
        if let Some(steps) = self.0.as_mut() {
            steps.push(Step {
                point: point(),
                result: result(),
                instructions: None,
            });
        }
    }
}

/// The rule name reported for unknown and hidden tools alike, so that they look the same.
pub const UNKNOWN_RULE: &str = "unknown_tool";

/// Tool patterns: `*` matches any run of characters (also none), `?` exactly one. Tool names
/// are not paths, so nothing else is special and every pattern is valid.
fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?'])
}

impl Policy {
    /// Every key of a call's arguments that some condition of this policy reads: a key that
    /// differs from one of these only in case would be read as it by a case-insensitive
    /// server, and not by the policy.
    pub fn argument_keys(&self) -> &crate::jsonrpc::Spellings {
        &self.argument_keys
    }

    /// Compiles a policy that names no plugins from its JSON text; `file` names it in errors.
    /// A policy with plugins needs a [`Loader`] with a plugin runtime.
    pub fn from_json(text: &str, file: &str) -> Result<Self, PolicyError> {
        Loader::new().from_json(text, file)
    }

    /// Whether deciding a `tools/call` may run a plugin, and so take up to a plugin's time
    /// budget: an async caller moves such a decision off its worker.
    pub fn may_block(&self) -> bool {
        !self.plugins.is_empty()
    }
}

/// Compiles policies: the one way a [`Policy`] is made. It carries what compiling needs from
/// outside the document, the plugin runtime that loads a policy's plugins; it is given, never
/// reached through a global (Kubewarden's evaluator takes its engine the same way). Without a
/// runtime, a policy that names plugins fails to load.
#[derive(Clone)]
pub struct Loader {
    /// The runtime, or why there is none (said when a policy names plugins).
    plugins: Result<Arc<PluginRuntime>, Arc<str>>,
}

impl Default for Loader {
    fn default() -> Self {
        Self {
            plugins: Err("no plugin runtime was given to load it with".into()),
        }
    }
}

impl Loader {
    /// A loader for policies without plugins.
    pub fn new() -> Self {
        Self::default()
    }

    /// A loader whose policies load their plugins into `runtime`.
    pub fn with_plugins(runtime: Arc<PluginRuntime>) -> Self {
        Self {
            plugins: Ok(runtime),
        }
    }

    /// A loader with a new plugin runtime configured from the environment
    /// ([`PluginRuntime::from_env`]). If the engine cannot start, policies without plugins
    /// still load, and one that names plugins fails saying why.
    pub fn from_env() -> Self {
        Self {
            plugins: PluginRuntime::from_env()
                .map(Arc::new)
                .map_err(|e| e.to_string().into()),
        }
    }

    /// Reads and compiles the policy at `path`.
    pub fn load(&self, path: &std::path::Path) -> Result<Policy, PolicyError> {
        self.load_with_text(path).map(|(policy, _)| policy)
    }

    /// Like [`Loader::load`], and also returns the text it loaded (read once, so that a
    /// digest of it is the digest of what was loaded).
    pub fn load_with_text(&self, path: &std::path::Path) -> Result<(Policy, String), PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let policy = self.from_json_in(&text, &path.display().to_string(), base)?;
        Ok((policy, text))
    }

    /// Compiles a policy from its JSON text; `file` names it in errors. Plugin paths are
    /// relative to the current directory.
    pub fn from_json(&self, text: &str, file: &str) -> Result<Policy, PolicyError> {
        self.from_json_in(text, file, Path::new("."))
    }

    /// Compiles a policy from its JSON text, resolving plugin paths against `base`.
    pub fn from_json_in(&self, text: &str, file: &str, base: &Path) -> Result<Policy, PolicyError> {
        let located = |err: serde_path_to_error::Error<serde_json::Error>| {
            let location = match err.path().to_string() {
                p if p == "." => "the document".to_owned(),
                p => p,
            };
            let inner = err.inner();
            let full = inner.to_string();
            let message = match full.rfind(" at line ") {
                Some(i) => full[..i].to_owned(),
                None => full,
            };
            PolicyError::at_line_column(file, text, inner.line(), inner.column(), location, message)
        };
        let mut de = serde_json::Deserializer::from_str(text);
        let doc: PolicyDocument = serde_path_to_error::deserialize(&mut de).map_err(located)?;
        // The typed parse keeps the last copy of a key named twice in a map; refuse instead.
        let _: unique_keys::UniqueKeys =
            serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(text))
                .map_err(located)?;
        de.end().map_err(|e| {
            PolicyError::at_line_column(
                file,
                text,
                e.line(),
                e.column(),
                "the document".into(),
                "trailing characters after the policy object".into(),
            )
        })?;
        Policy::compile(
            doc,
            text,
            file,
            base,
            self.plugins.as_deref().map_err(|e| &**e),
        )
    }
}

impl Policy {
    fn compile(
        doc: PolicyDocument,
        text: &str,
        file: &str,
        base: &Path,
        runtime: Result<&PluginRuntime, &str>,
    ) -> Result<Self, PolicyError> {
        let invalid = |needle: &str, location: String, message: String| {
            PolicyError::at_text(file, text, needle, location, message)
        };
        // Plugins first: load → verify → compile → pre-instantiate, each failure a load error.
        let mut plugins: HashMap<String, Arc<Plugin>> = HashMap::new();
        if !doc.plugins.is_empty() {
            let runtime = runtime.map_err(|why| {
                invalid(
                    "\"plugins\"",
                    "plugins".into(),
                    format!("this policy names plugins, and {why}"),
                )
            })?;
            for (name, spec) in &doc.plugins {
                let defaults = PluginLimits::default();
                let limits = PluginLimits {
                    fuel: spec.fuel.unwrap_or(defaults.fuel),
                    timeout: spec
                        .timeout_ms
                        .map_or(defaults.timeout, Duration::from_millis),
                    memory_bytes: spec
                        .memory_mib
                        .map_or(defaults.memory_bytes, |m| (m as usize) << 20),
                    recycle_after: spec.recycle_after.unwrap_or(defaults.recycle_after),
                    ..defaults
                };
                let plugin = runtime
                    .load(
                        name,
                        &base.join(&spec.path),
                        spec.sha256.as_deref(),
                        spec.isolation,
                        limits,
                    )
                    .map_err(|e| {
                        invalid(
                            &format!("\"{name}\""),
                            format!("plugins.{name}"),
                            format!("cannot load plugin `{name}`: {e}"),
                        )
                    })?;
                plugins.insert(name.clone(), plugin);
            }
        }
        let uses = |specs: &[UseSpec], location: &str| -> Result<Vec<PluginUse>, PolicyError> {
            specs
                .iter()
                .enumerate()
                .map(|(i, spec)| {
                    let at = format!("{location}.use[{i}]");
                    let plugin = plugins.get(&spec.plugin).ok_or_else(|| {
                        invalid(
                            &format!("\"{}\"", spec.plugin),
                            format!("{at}.plugin"),
                            format!("no plugin named `{}` in `plugins`", spec.plugin),
                        )
                    })?;
                    let config = spec.config.to_string();
                    plugin.validate_config(&config).map_err(|e| {
                        invalid(
                            &format!("\"{}\"", spec.plugin),
                            format!("{at}.config"),
                            format!("plugin `{}` rejects its config: {e}", spec.plugin),
                        )
                    })?;
                    Ok(PluginUse {
                        plugin: plugin.clone(),
                        config,
                        site: at,
                    })
                })
                .collect()
        };
        let limits = |specs: &[LimitSpec],
                      shorthand: &Option<RateLimitSpec>,
                      location: &str,
                      default_counter: &str| {
            let mut out = Vec::new();
            for (i, spec) in specs.iter().enumerate() {
                if spec.counter.trim().is_empty() {
                    return Err(invalid(
                        "\"counter\"",
                        format!("{location}.limits[{i}].counter"),
                        "a counter needs a name".into(),
                    ));
                }
                out.push((
                    spec.counter.clone(),
                    spec.scope,
                    spec.max,
                    &spec.window,
                    format!("{location}.limits[{i}].max"),
                ));
            }
            if let Some(rl) = shorthand {
                let counter = rl
                    .counter
                    .clone()
                    .unwrap_or_else(|| default_counter.to_owned());
                out.push((
                    counter,
                    rl.scope,
                    rl.max,
                    &rl.window,
                    format!("{location}.rate_limit.max"),
                ));
            }
            out.into_iter()
                .map(|(counter, scope, max, window, max_location)| {
                    if max == 0 {
                        return Err(invalid(
                            "\"max\"",
                            max_location,
                            "`max` must be at least 1; to refuse every call use `\"action\": \"deny\"`".into(),
                        ));
                    }
                    Ok(Limit {
                        counter,
                        scope,
                        window: Window { max, length_ms: window.length_ms },
                        label: window.label.clone(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };

        let hide = doc.hide.iter().map(|p| WildMatch::new(p)).collect();
        let all_tools_limits = limits(
            &doc.all_tools.limits,
            &doc.all_tools.rate_limit,
            "all_tools",
            "rate:all_tools",
        )?;

        let mut exact = HashMap::new();
        let mut globs = Vec::new();
        for (pattern, spec) in doc.tools {
            let location = format!("tools.{pattern}");
            let rule = Rule {
                limits: limits(
                    &spec.limits,
                    &spec.rate_limit,
                    &location,
                    &format!("rate:{pattern}"),
                )?,
                id: location.clone(),
                action: spec.action,
                reason: spec.reason,
                require: spec.require,
                deny_if: spec.deny_if,
                uses: uses(&spec.uses, &location)?,
            };
            if is_glob(&pattern) {
                globs.push((pattern, rule));
            } else {
                exact.insert(pattern, rule);
            }
        }
        // Most specific glob first: the most literal characters, then alphabetical for stability.
        let literal_len = |p: &str| p.chars().filter(|c| !"*?".contains(*c)).count();
        globs.sort_by(|(a, _): &(String, Rule), (b, _)| {
            literal_len(b).cmp(&literal_len(a)).then_with(|| a.cmp(b))
        });
        let globs: Vec<(WildMatch, Rule)> = globs
            .into_iter()
            .map(|(p, rule)| (WildMatch::new(&p), rule))
            .collect();
        let argument_keys = crate::jsonrpc::Spellings::of(
            exact
                .values()
                .chain(globs.iter().map(|(_, rule)| rule))
                .flat_map(|rule: &Rule| rule.require.iter().chain(&rule.deny_if))
                .flat_map(|condition| condition.path.argument_keys()),
        );
        Ok(Self {
            argument_keys,
            name: doc.name,
            default: doc.default,
            hide,
            exact,
            globs,
            all_tools_limits,
            all_tools_uses: uses(&doc.all_tools.uses, "all_tools")?,
            plugins: plugins.into_values().collect(),
        })
    }

    /// Runs the plugins in order after the declarative checks passed. The first refusal wins,
    /// and every unit the call took (declarative and plugin) is refunded with it.
    fn run_plugins(
        &self,
        call: &ToolCall<'_>,
        uses: &[&PluginUse],
        counters: &Arc<dyn CounterStore>,
        rule_id: &str,
        mut reservations: Vec<crate::counters::Reservation>,
        trace: &mut Tracer<'_>,
    ) -> Outcome {
        let (mut instructions, mut peak_memory) = (0, 0);
        if !uses.is_empty() {
            let arguments = call.args.to_string();
            let plugin_call = PluginCall {
                tool: call.tool,
                arguments: &arguments,
                grant: call.grant,
                session: call.session,
                server: call.server,
                annotations: call.annotations,
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
                    });
                }
                if !outcome.decision.is_allow() {
                    counters.refund(&reservations);
                    return Outcome {
                        decision: outcome.decision,
                        reservations: Vec::new(),
                        instructions,
                        peak_memory,
                    };
                }
            }
        }
        Outcome {
            decision: Decision::allow(rule_id),
            reservations,
            instructions,
            peak_memory,
        }
    }

    /// The plugins this policy loaded, for status and logs.
    pub fn plugins(&self) -> &[Arc<Plugin>] {
        &self.plugins
    }

    /// The policy's `name`, if it has one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    fn rule_for(&self, tool: &str) -> Option<&Rule> {
        self.exact.get(tool).or_else(|| {
            self.globs
                .iter()
                .find(|(g, _)| g.matches(tool))
                .map(|(_, rule)| rule)
        })
    }

    /// Whether `tool` appears in `tools/list` (and can be called at all).
    pub fn is_visible(&self, tool: &str) -> bool {
        !self.hide.iter().any(|h| h.matches(tool))
            && (self.default == DefaultAction::Allow || self.rule_for(tool).is_some())
    }

    /// Every point a decision can reach, for coverage: each rule, each condition, each
    /// plugin use twice (`... allow` and `... refuse`: a plugin that never refused in any case
    /// is not covered). [`Step`]s name the same points.
    pub fn coverage_points(&self) -> Vec<String> {
        let mut points = Vec::new();
        let uses = |points: &mut Vec<String>, uses: &[PluginUse]| {
            for u in uses {
                let at = format!("{} (plugin {})", u.site, u.plugin.name());
                points.push(format!("{at} allow"));
                points.push(format!("{at} refuse"));
            }
        };
        let mut rules: Vec<&Rule> = self
            .exact
            .values()
            .chain(self.globs.iter().map(|(_, r)| r))
            .collect();
        rules.sort_by(|a, b| a.id.cmp(&b.id));
        for rule in rules {
            points.push(rule.id.clone());
            for i in 0..rule.require.len() {
                points.push(format!("{}.require[{i}]", rule.id));
            }
            for i in 0..rule.deny_if.len() {
                points.push(format!("{}.deny_if[{i}]", rule.id));
            }
            uses(&mut points, &rule.uses);
        }
        uses(&mut points, &self.all_tools_uses);
        points
    }

    /// Decides one call, consuming counter units if it is allowed.
    pub fn decide(&self, call: &ToolCall<'_>, counters: &Arc<dyn CounterStore>) -> Outcome {
        self.decide_inner(call, counters, Tracer(None))
    }

    /// Decides one call like [`Policy::decide`], and records each step in `steps`: which rule
    /// matched, each condition and what it gave, the limits, each plugin and its decision.
    pub fn decide_traced(
        &self,
        call: &ToolCall<'_>,
        counters: &Arc<dyn CounterStore>,
        steps: &mut Vec<Step>,
    ) -> Outcome {
        self.decide_inner(call, counters, Tracer(Some(steps)))
    }

    fn decide_inner(
        &self,
        call: &ToolCall<'_>,
        counters: &Arc<dyn CounterStore>,
        mut trace: Tracer<'_>,
    ) -> Outcome {
        let refuse = |decision| Outcome {
            decision,
            reservations: Vec::new(),
            instructions: 0,
            peak_memory: 0,
        };
        let rule = self.rule_for(call.tool);
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
            if rule.action == Action::RequireApproval {
                let detail = "approval not configured: this gateway has no approvers, so calls that need approval are refused".to_owned();
                return refuse(Decision {
                    verdict: Verdict::RequireApproval,
                    rule: rule_id.to_owned(),
                    reason: with_reason(rule, detail),
                    retry_after_ms: None,
                });
            }
        }
        let limits: Vec<&Limit> = self
            .all_tools_limits
            .iter()
            .chain(rule.into_iter().flat_map(|r| &r.limits))
            .collect();
        let uses: Vec<&PluginUse> = self
            .all_tools_uses
            .iter()
            .chain(rule.into_iter().flat_map(|r| &r.uses))
            .collect();
        if limits.is_empty() && uses.is_empty() {
            return refuse(Decision::allow(rule_id));
        }
        let requests: Vec<(CounterKey, Window)> = limits
            .iter()
            .map(|l| {
                (
                    CounterKey::new(&l.counter, l.scope, call.grant, call.session),
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
                    Err(e) => format!("exhausted: counter {}", limits[e.index].counter),
                },
            );
        }
        match consumed {
            Ok(reservations) => {
                self.run_plugins(call, &uses, counters, rule_id, reservations, &mut trace)
            }
            Err(exhausted) => {
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
                    ),
                    retry_after_ms: Some(exhausted.retry_after_ms),
                })
            }
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

#[cfg(test)]
mod tests;
