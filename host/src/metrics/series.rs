//! The series each decision and outcome feeds, found once per distinct key and kept.
//!
//! Finding a series in a family means building its label set (a vector of owned strings),
//! hashing it and comparing it, and the bounded tool label takes a lock: thirteen
//! allocations for a call's two facts. The labels a key gets never change (a tool's label is
//! fixed the first time its grant uses it, see `labels.rs`), so the counting thread keeps the
//! series' handles by key (grant, tool, rule, verdict for a decision; grant, tool, server,
//! fate for an outcome) and looks them up without allocating. The keys are the facts' own
//! values, which a client chooses (tool names), so the map is bounded: past [`MAX_KEYS`]
//! keys or [`MAX_KEY_BYTES`] of their text it starts again empty, and every key is found
//! again from the families.

use super::{fate, Counts, Labels};
use crate::audit::{DecisionFacts, Fate, OutcomeFacts};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

/// Keys kept at most.
const MAX_KEYS: usize = 4096;

/// The keys' text (tool, rule, server names) kept at most, besides the one being added.
const MAX_KEY_BYTES: usize = 1 << 20;

/// What a decision feeds.
pub(super) struct DecisionSeries {
    /// `toolgate_tool_calls_total{grant, tool, decision, rule}`.
    pub(super) calls: Counter,
    /// For a refusal, `mcp_server_operation_duration_seconds{..., error_type}`.
    pub(super) refused: Option<Histogram>,
}

/// What an outcome feeds.
pub(super) struct OutcomeSeries {
    /// `toolgate_tool_call_outcomes_total{outcome}`.
    pub(super) outcomes: Counter,
    /// `toolgate_upstream_calls_total{upstream, outcome}`.
    pub(super) upstream_calls: Counter,
    /// `mcp_client_operation_duration_seconds{...}`.
    pub(super) upstream: Histogram,
    /// `mcp_server_operation_duration_seconds{...}`.
    pub(super) server: Histogram,
}

struct DecisionKey {
    grant: Arc<str>,
    tool: Arc<str>,
    rule: Box<str>,
    verdict: &'static str,
}

struct OutcomeKey {
    grant: Arc<str>,
    tool: Arc<str>,
    server: Arc<str>,
    fate: Fate,
}

/// The handles found so far, by key (a hash, then the keys that share it).
#[derive(Default)]
pub(super) struct Series {
    state: RandomState,
    decisions: HashMap<u64, Vec<(DecisionKey, DecisionSeries)>>,
    outcomes: HashMap<u64, Vec<(OutcomeKey, OutcomeSeries)>>,
    keys: usize,
    bytes: usize,
}

impl Series {
    /// The series `facts` feeds.
    pub(super) fn decision(&mut self, counts: &Counts, facts: &DecisionFacts) -> &DecisionSeries {
        let (grant, tool) = (&*facts.origin.grant, &*facts.tool);
        let (rule, verdict) = (
            facts.decision.rule.as_str(),
            facts.decision.verdict.as_str(),
        );
        let hash = self.state.hash_one((grant, tool, rule, verdict));
        let found = self.decisions.get(&hash).and_then(|keys| {
            keys.iter().position(|(k, _)| {
                (&*k.grant, &*k.tool, &*k.rule, k.verdict) == (grant, tool, rule, verdict)
            })
        });
        let index = match found {
            Some(index) => index,
            None => {
                self.make_room(tool.len() + rule.len());
                let series = counts.decision_series(facts);
                let key = DecisionKey {
                    grant: facts.origin.grant.clone(),
                    tool: facts.tool.clone(),
                    rule: rule.into(),
                    verdict,
                };
                let keys = self.decisions.entry(hash).or_default();
                keys.push((key, series));
                keys.len() - 1
            }
        };
        &self.decisions[&hash][index].1
    }

    /// The series `facts` feeds.
    pub(super) fn outcome(&mut self, counts: &Counts, facts: &OutcomeFacts) -> &OutcomeSeries {
        let (grant, tool, server) = (&*facts.origin.grant, &*facts.tool, &*facts.server);
        let hash = self
            .state
            .hash_one((grant, tool, server, fate(facts.outcome)));
        let found = self.outcomes.get(&hash).and_then(|keys| {
            keys.iter().position(|(k, _)| {
                (&*k.grant, &*k.tool, &*k.server, k.fate) == (grant, tool, server, facts.outcome)
            })
        });
        let index = match found {
            Some(index) => index,
            None => {
                self.make_room(tool.len() + server.len());
                let series = counts.outcome_series(facts);
                let key = OutcomeKey {
                    grant: facts.origin.grant.clone(),
                    tool: facts.tool.clone(),
                    server: facts.server.clone(),
                    fate: facts.outcome,
                };
                let keys = self.outcomes.entry(hash).or_default();
                keys.push((key, series));
                keys.len() - 1
            }
        };
        &self.outcomes[&hash][index].1
    }

    /// Makes room for a key of `bytes` of text.
    fn make_room(&mut self, bytes: usize) {
        if self.keys >= MAX_KEYS || self.bytes >= MAX_KEY_BYTES {
            self.decisions.clear();
            self.outcomes.clear();
            (self.keys, self.bytes) = (0, 0);
        }
        self.keys += 1;
        self.bytes += bytes;
    }
}

/// A label set of `pairs` (the families' type).
pub(super) fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_keys_are_bounded_in_number_and_in_bytes() {
        let mut series = Series::default();
        for n in 0..MAX_KEYS * 3 {
            series.make_room(n % 7);
            assert!(series.keys <= MAX_KEYS);
        }
        let mut series = Series::default();
        for _ in 0..100 {
            series.make_room(MAX_KEY_BYTES / 10);
            assert!(series.bytes <= MAX_KEY_BYTES + MAX_KEY_BYTES / 10);
        }
    }
}
