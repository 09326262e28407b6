//! What a new policy no longer enforces that the old one did: the operator's warning when a
//! reload weakens enforcement (a rule put in shadow or removed, a deny made an allow, a limit
//! raised, a tool no longer hidden, the default opened).

use super::{Limit, Policy, Rule};
use crate::policy::document::{Action, DefaultAction};

impl Policy {
    /// How `new` enforces less than `self`, one line each; empty when it does not.
    pub fn weakened_by(&self, new: &Policy) -> Vec<String> {
        let mut found = Vec::new();
        if self.default == DefaultAction::Deny && new.default == DefaultAction::Allow {
            found.push("`default` changed from deny to allow".to_owned());
        }
        for hidden in &self.hide {
            let pattern = hidden.to_string();
            if !new.hide.iter().any(|h| h.to_string() == pattern) {
                found.push(format!("`{pattern}` is no longer hidden"));
            }
        }
        weaker_limits(
            &mut found,
            "all_tools",
            &self.all_tools_limits,
            &new.all_tools_limits,
        );
        for old in self.rules().filter(|r| r.enforce) {
            match new.rules().find(|r| r.id == old.id) {
                None => found.push(format!("rule `{}` was removed", old.id)),
                Some(rule) if !rule.enforce => found.push(format!(
                    "rule `{}` is now in shadow (`enforce: false`)",
                    old.id
                )),
                Some(rule) => weaker_rule(&mut found, old, rule),
            }
        }
        found
    }

    fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.exact
            .values()
            .chain(self.globs.iter().map(|(_, rule)| rule))
    }
}

fn strictness(action: Action) -> u8 {
    match action {
        Action::Allow => 0,
        Action::RequireApproval => 1,
        Action::Deny => 2,
    }
}

fn weaker_rule(found: &mut Vec<String>, old: &Rule, new: &Rule) {
    if strictness(new.action) < strictness(old.action) {
        found.push(format!(
            "rule `{}`: action {:?} became {:?}",
            old.id, old.action, new.action
        ));
    }
    let conditions = |r: &Rule| r.require.len() + r.deny_if.len();
    if conditions(new) < conditions(old) {
        found.push(format!(
            "rule `{}` has {} condition(s), down from {}",
            old.id,
            conditions(new),
            conditions(old)
        ));
    }
    if new.uses.len() < old.uses.len() {
        found.push(format!("rule `{}` uses fewer plugins", old.id));
    }
    weaker_limits(found, &old.id, &old.limits, &new.limits);
}

fn weaker_limits(found: &mut Vec<String>, site: &str, old: &[Limit], new: &[Limit]) {
    for limit in old {
        let same = new
            .iter()
            .find(|l| l.counter == limit.counter && l.scope == limit.scope);
        match same {
            None => found.push(format!(
                "`{site}` no longer limits counter `{}`",
                limit.counter
            )),
            // More units per unit of time: max/length grew.
            Some(l)
                if u128::from(l.window.max) * u128::from(limit.window.length_ms)
                    > u128::from(limit.window.max) * u128::from(l.window.length_ms) =>
            {
                found.push(format!(
                    "`{site}` raised counter `{}` from {} {} to {} {}",
                    limit.counter, limit.window.max, limit.label, l.window.max, l.label
                ))
            }
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Policy {
        Policy::from_json(text, "p.json").unwrap()
    }

    const STRICT: &str = r#"{"version":"1","default":"deny","hide":["secret"],
        "tools":{"create":{"limits":[{"counter":"c","window":"minute","max":30,"scope":"grant"}]},
                 "delete":{"action":"deny"},
                 "codex_*":{"deny_if":[{"path":"args.id","op":"starts_with","value":"gw-"}]}}}"#;

    #[test]
    fn the_same_policy_or_a_stricter_one_weakens_nothing() {
        assert!(policy(STRICT).weakened_by(&policy(STRICT)).is_empty());
        let stricter = STRICT.replace("\"max\":30", "\"max\":10");
        assert!(policy(STRICT).weakened_by(&policy(&stricter)).is_empty());
    }

    #[test]
    fn every_kind_of_weakening_is_named() {
        let weaker = r#"{"version":"1","default":"allow",
            "tools":{"create":{"limits":[{"counter":"c","window":"minute","max":60,"scope":"grant"}]},
                     "delete":{"action":"require_approval"},
                     "codex_*":{"enforce":false}}}"#;
        let found = policy(STRICT).weakened_by(&policy(weaker));
        let text = found.join("\n");
        for expected in [
            "`default` changed from deny to allow",
            "`secret` is no longer hidden",
            "raised counter `c`",
            "rule `tools.delete`: action Deny became RequireApproval",
            "rule `tools.codex_*` is now in shadow",
        ] {
            assert!(text.contains(expected), "{expected} not in:\n{text}");
        }
        let removed = policy(STRICT).weakened_by(&policy(
            r#"{"version":"1","default":"deny","hide":["secret"]}"#,
        ));
        assert!(
            removed
                .iter()
                .any(|l| l == "rule `tools.delete` was removed"),
            "{removed:?}"
        );
    }
}
