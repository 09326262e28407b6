//! Coverage: every point a decision can reach, named as [`super::Step`]s name them, so that
//! `toolgate test` can say which ones no case reached.

use super::{PluginUse, Policy, Rule};

impl Policy {
    /// Every point a decision can reach, for coverage: each enforced rule, each condition, and each
    /// plugin use once per kind of decision its manifest says it returns (`... allow`,
    /// `... deny`, `... rate_limited`, `... require_approval`; `allow` and `deny` when it says
    /// nothing): a plugin whose rate limit no case reached is not covered.
    /// [`Step`](super::Step)s name the same points.
    pub fn coverage_points(&self) -> Vec<String> {
        let mut points = Vec::new();
        let uses = |points: &mut Vec<String>, uses: &[std::sync::Arc<PluginUse>]| {
            for u in uses {
                let at = format!("{} (plugin {})", u.site, u.plugin.name());
                for outcome in u.plugin.manifest().outcomes() {
                    points.push(format!("{at} {}", outcome.name()));
                }
            }
        };
        // A shadow rule (`enforce: false`) never decides a call, so no case can reach it.
        let mut rules: Vec<&Rule> = self
            .exact
            .values()
            .chain(self.globs.iter().map(|(_, r)| r))
            .filter(|r| r.enforce)
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
}
