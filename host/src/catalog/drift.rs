//! A policy against what a server lists now (`toolgate check --against`).
//!
//! Rules and tools are matched by the policy engine itself ([`Policy::rule_id_for`]), so a glob
//! here covers exactly the tools it covers in the gateway. The tools added, removed and
//! reclassified are found against the policy's `catalog` key, what `toolgate init` saw.

use super::Catalog;
use crate::policy::{DefaultAction, Policy, RecordedCatalog, RiskClass};
use serde::Serialize;

/// A tool whose class changed since the policy recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reclassified {
    /// The tool.
    pub name: String,
    /// Its class in the policy's `catalog`.
    pub was: RiskClass,
    /// Its class now.
    pub now: RiskClass,
    /// The hints it has now, and where they came from.
    pub why: String,
}

/// What differs between a policy and a server's tools. Empty means no drift.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Drift {
    /// Rule patterns (`tools` keys) that decide no tool the server lists: a name it does not
    /// have, a glob that matches nothing, or one whose every match has a more specific rule.
    pub rules_without_tools: Vec<String>,
    /// Server tools no rule matches (nor `hide`): the policy's `default` decides them.
    pub tools_on_default: Vec<String>,
    /// The `default` those tools get.
    pub default: &'static str,
    /// Whether the policy has a `catalog` to compare with; without one the three lists below
    /// stay empty.
    pub recorded: bool,
    /// Tools listed now that the recorded catalogue does not have.
    pub added: Vec<String>,
    /// Tools of the recorded catalogue no longer listed.
    pub removed: Vec<String>,
    /// Tools whose risk class changed.
    pub reclassified: Vec<Reclassified>,
    /// Tools whose open-world flag changed (class unchanged or not).
    pub open_world_changed: Vec<String>,
}

/// Compares `policy` (and its recorded catalogue, if any) with `now`.
pub fn drift(policy: &Policy, recorded: Option<&RecordedCatalog>, now: &Catalog) -> Drift {
    let rules_without_tools = policy
        .rule_patterns()
        .into_iter()
        .filter(|pattern| {
            let id = format!("tools.{pattern}");
            !now.tools
                .iter()
                .any(|t| policy.rule_id_for(&t.name) == Some(id.as_str()))
        })
        .map(str::to_owned)
        .collect();
    let tools_on_default = now
        .tools
        .iter()
        .filter(|t| policy.rule_id_for(&t.name).is_none() && !policy.is_hidden(&t.name))
        .map(|t| t.name.clone())
        .collect();
    let mut drift = Drift {
        rules_without_tools,
        tools_on_default,
        default: match policy.default_action() {
            DefaultAction::Allow => "allow",
            DefaultAction::Deny => "deny",
        },
        recorded: recorded.is_some(),
        ..Drift::default()
    };
    let Some(recorded) = recorded else {
        return drift;
    };
    for tool in &now.tools {
        let c = &tool.classification;
        match recorded.tools.get(&tool.name) {
            None => drift.added.push(tool.name.clone()),
            Some(was) => {
                if was.class != c.class {
                    drift.reclassified.push(Reclassified {
                        name: tool.name.clone(),
                        was: was.class,
                        now: c.class,
                        why: c.why(),
                    });
                }
                if was.open_world != c.open_world {
                    drift.open_world_changed.push(tool.name.clone());
                }
            }
        }
    }
    drift.removed = recorded
        .tools
        .keys()
        .filter(|name| now.tool(name).is_none())
        .cloned()
        .collect();
    drift
}

impl Drift {
    /// No difference at all.
    pub fn is_empty(&self) -> bool {
        self.rules_without_tools.is_empty()
            && self.tools_on_default.is_empty()
            && self.added.is_empty()
            && self.removed.is_empty()
            && self.reclassified.is_empty()
            && self.open_world_changed.is_empty()
    }

    /// The report for people: one section per kind of drift that has entries.
    pub fn report(&self) -> String {
        let mut out = String::new();
        let mut section = |title: String, items: Vec<String>| {
            if !items.is_empty() {
                out.push_str(&format!("{title} ({}):\n", items.len()));
                for item in items {
                    out.push_str(&format!("  {item}\n"));
                }
            }
        };
        section(
            "rules that decide no tool the server lists".into(),
            self.rules_without_tools.clone(),
        );
        section(
            format!("server tools no rule names (default: {})", self.default),
            self.tools_on_default.clone(),
        );
        section(
            "tools added since the policy's catalog".into(),
            self.added.clone(),
        );
        section(
            "tools removed since the policy's catalog".into(),
            self.removed.clone(),
        );
        section(
            "tools reclassified since the policy's catalog".into(),
            self.reclassified
                .iter()
                .map(|r| {
                    format!(
                        "{}: {} -> {} ({})",
                        r.name,
                        r.was.as_str(),
                        r.now.as_str(),
                        r.why
                    )
                })
                .collect(),
        );
        section(
            "tools whose openWorldHint changed".into(),
            self.open_world_changed.clone(),
        );
        if !self.recorded {
            out.push_str("the policy has no `catalog` (written by `toolgate init`): tools added, removed and reclassified are not known\n");
        }
        if self.is_empty() {
            out.push_str("no drift\n");
        }
        out
    }
}
