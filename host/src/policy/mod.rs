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
//!
//! ## Where things are
//! - `document.rs`: the JSON as written (serde types, nothing evaluated).
//! - `compile.rs`: the [`Loader`], which turns a document into a [`Policy`] (the types below)
//!   and loads its plugins into the runtime it was given.
//! - `decide.rs`: [`Policy::decide`], the steps above in code; the line a `tools/call` is
//!   decided on is there.
//! - `condition.rs`: the conditions of `require` and `deny_if`, checked and evaluated.
//! - `results.rs`: after an allowed call ran, its result hooks ([`ResultHooks`]): plugins
//!   that pass the result, replace it or refuse it before the client sees it.
//! - `coverage.rs`: the points a decision can reach, for `toolgate test`.
//! - `error.rs`: why a policy did not load, with its place in the file; `spans.rs` finds that
//!   place from the error's path, and `unique_keys.rs` refuses a key named twice.

mod compile;
mod condition;
mod coverage;
mod decide;
mod document;
mod error;
mod pin;
mod results;
mod spans;
mod unique_keys;
mod weaken;

pub use compile::Loader;
pub use condition::{Condition, Path as ConditionPath};
pub use document::{
    Action, DefaultAction, PolicyDocument, RecordedCatalog, RecordedTool, RiskClass,
};
pub use error::{InvalidPolicy, PolicyError, Problem};
pub use pin::{pin_plugin, PinError};
pub use results::{ResultCheck, ResultFate, ResultHooks};

use crate::counters::{Reservation, Scope, Window};
use crate::decision::Decision;
use crate::plugins::Plugin;
use std::collections::HashMap;
use std::sync::Arc;
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
    all_tools_uses: Vec<Arc<PluginUse>>,
    plugins: Vec<Arc<Plugin>>,
    /// Every key of `args` that a condition reads, at any depth.
    argument_keys: crate::jsonrpc::Spellings,
    /// sha256 of the document's text: an approval is bound to the policy that asked for it.
    digest: String,
    /// How decision events name it, made once (see [`Policy::audit_ref`]).
    audit_ref: std::sync::OnceLock<Arc<crate::audit::PolicyRef>>,
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
    uses: Vec<Arc<PluginUse>>,
    /// How a call it sends for approval is held (`None`: the defaults).
    approval: Option<crate::approvals::ApprovalSettings>,
    /// `log_args`: whether, and how, the decision log shows the arguments.
    log_args: Option<crate::audit::ArgsLogging>,
    /// `enforce: false`: a shadow rule, skipped by the enforced decision.
    enforce: bool,
}

#[derive(Debug)]
struct Limit {
    /// Shared with every counter key made from it: no copy per call.
    counter: Arc<str>,
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
    /// The plugins that see the result of the call, once it ran (an allowed call's uses of
    /// `policy-with-results` plugins, in order; empty for any other).
    pub after: ResultHooks,
}

impl Outcome {
    /// A decision that took no unit and ran nothing: a refusal before the policy's plugins.
    pub fn refused(decision: Decision) -> Self {
        Self {
            decision,
            reservations: Vec::new(),
            instructions: 0,
            peak_memory: 0,
            after: ResultHooks::default(),
        }
    }
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
    /// A plugin step: what it logged (`level: message` each).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<String>,
}

/// The rule name reported for unknown and hidden tools alike, so that they look the same.
pub const UNKNOWN_RULE: &str = "unknown_tool";

impl Policy {
    /// Every key of a call's arguments that some condition of this policy reads: a key that
    /// differs from one of these only in case would be read as it by a case-insensitive
    /// server, and not by the policy.
    pub(crate) fn argument_keys(&self) -> &crate::jsonrpc::Spellings {
        &self.argument_keys
    }

    /// Compiles a policy that names no plugins from its JSON text; `file` names it in errors.
    /// A policy with plugins needs a [`Loader`] with a plugin runtime.
    pub fn from_json(text: &str, file: &str) -> Result<Self, PolicyError> {
        Loader::new().from_json(text, file)
    }

    /// Whether deciding a `tools/call` may run a plugin, and so take up to a plugin's time
    /// budget: an async caller moves such a decision off its worker.
    pub(crate) fn may_block(&self) -> bool {
        !self.plugins.is_empty()
    }

    /// Whether a reply may run a plugin: some plugin sees results.
    pub(crate) fn has_result_hooks(&self) -> bool {
        self.plugins.iter().any(|p| p.has_result_hook())
    }

    /// sha256 of the document's text.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// How a call of `tool` that needs approval is held: its rule's `approval`, or the
    /// defaults.
    pub fn approval_for(&self, tool: &str) -> crate::approvals::ApprovalSettings {
        // The rule that decides for real: a shadow rule's settings never hold a call.
        self.enforced_rule_for(tool)
            .and_then(|r| r.approval.clone())
            .unwrap_or_default()
    }

    /// The rule's `log_args` for `tool`: `None` keeps its arguments out of the decision log.
    pub fn log_args_for(&self, tool: &str) -> Option<&crate::audit::ArgsLogging> {
        self.enforced_rule_for(tool)
            .and_then(|r| r.log_args.as_ref())
    }

    /// Its name, digest and plugins as decision events name them, shared by every event.
    pub fn audit_ref(&self) -> Arc<crate::audit::PolicyRef> {
        self.audit_ref
            .get_or_init(|| {
                Arc::new(crate::audit::PolicyRef {
                    name: self.name.clone(),
                    digest: self.digest.clone(),
                    plugins: self.plugin_refs(),
                })
            })
            .clone()
    }

    /// Its plugins, as decision events name them.
    pub fn plugin_refs(&self) -> Vec<crate::audit::PluginRef> {
        self.plugins
            .iter()
            .map(|p| crate::audit::PluginRef {
                name: p.name().to_owned(),
                digest: p.digest().to_owned(),
            })
            .collect()
    }

    /// The plugins this policy loaded, for status and logs.
    pub fn plugins(&self) -> &[Arc<Plugin>] {
        &self.plugins
    }

    /// Judges the plugins loaded under a trust file again by the trust file at `trust` as it
    /// is now (a reload calls it, whatever then becomes of the reload): a revoked key stops a
    /// plugin already serving. Returns the plugins withdrawn and why.
    pub fn rejudge_plugins(&self, trust: Option<&std::path::Path>) -> Vec<(String, String)> {
        let Some(path) = trust else {
            return Vec::new();
        };
        if self.plugins.is_empty() {
            return Vec::new();
        }
        let trust = crate::trust::Trust::read(path)
            .map(Arc::new)
            .map_err(|e| e.to_string());
        self.plugins
            .iter()
            .filter_map(|p| p.rejudge(&trust).map(|why| (p.name().to_owned(), why)))
            .collect()
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

    /// The rule that decides `tool` for real: as [`Policy::rule_for`], passing over shadow
    /// rules (`enforce: false`) to the next rule that matches, else the default.
    fn enforced_rule_for(&self, tool: &str) -> Option<&Rule> {
        self.exact.get(tool).filter(|r| r.enforce).or_else(|| {
            self.globs
                .iter()
                .find(|(g, r)| r.enforce && g.matches(tool))
                .map(|(_, rule)| rule)
        })
    }

    /// Whether `tool`'s rule is a shadow rule (`enforce: false`), which the call must also be
    /// decided by, in shadow.
    pub fn has_shadow_rule_for(&self, tool: &str) -> bool {
        self.rule_for(tool).is_some_and(|r| !r.enforce)
    }

    /// The rule a call of `tool` is decided by, as a decision names it (`tools.<name or
    /// glob>`), found exactly as a call finds it; `None` when no rule matches (the default
    /// applies).
    pub fn rule_id_for(&self, tool: &str) -> Option<&str> {
        self.rule_for(tool).map(|r| r.id.as_str())
    }

    /// The tool names and globs the rules are written for (the keys of `tools`), sorted.
    pub fn rule_patterns(&self) -> Vec<&str> {
        let mut patterns: Vec<&str> = self
            .exact
            .values()
            .chain(self.globs.iter().map(|(_, rule)| rule))
            .map(|rule| rule.id.strip_prefix("tools.").unwrap_or(&rule.id))
            .collect();
        patterns.sort_unstable();
        patterns
    }

    /// Whether `hide` names `tool`.
    pub fn is_hidden(&self, tool: &str) -> bool {
        self.hide.iter().any(|h| h.matches(tool))
    }

    /// What happens to a tool no rule names.
    pub fn default_action(&self) -> DefaultAction {
        self.default
    }

    /// Whether `tool` appears in `tools/list` (and can be called at all).
    pub fn is_visible(&self, tool: &str) -> bool {
        !self.is_hidden(tool)
            && (self.default == DefaultAction::Allow || self.rule_for(tool).is_some())
    }
}

#[cfg(test)]
mod tests;
