//! Prometheus metrics: one registry per gateway, fed by the same events as the decision log.
//!
//! [`Metrics`] is an [`audit::Observer`]: the session reports each decided `tools/call` and
//! each forwarded call's outcome to it, as it does to the decision log, and it counts them.
//! What is not an event (sessions, refusals, reloads, the policies' digests, plugin
//! evaluations, dropped log lines) is read when `/metrics` is scraped: the transport hands
//! over a [`Snapshot`] source ([`Metrics::read_from`]) and the plugin runtime keeps its own
//! process-wide counts ([`crate::plugins::evaluations`]).
//!
//! Label values are bounded, so that no client can grow the series without limit: a tool is
//! named only when its decision's rule is not `unknown_tool` (else `unknown_tool`), and at
//! most [`TOOLS_PER_GRANT`] tools per grant are named (the rest are `other`); grants and rules
//! come from the operator's config and policies; a reason is never a label.
//!
//! The crate is `prometheus-client`, the Prometheus project's own Rust client: typed
//! families, no global registry, and the text format a Prometheus server or any of its
//! parsers reads.
//!
//! ## Files
//! - `mod.rs`: the registry and its families, and the observer that feeds them.
//! - `labels.rs`: the bounded tool label.
//! - `series.rs`: the series each decision and outcome feeds, found once per key.
//! - `scrape.rs`: what is read at scrape time (the [`Snapshot`], plugin evaluations).
//! - `listen.rs`: `toolgate run --metrics-listen`, a small HTTP listener for `/metrics`.

mod labels;
mod listen;
mod scrape;
mod series;

pub use listen::listen;
pub use scrape::{PolicyState, Snapshot};

use crate::audit::{self, DecisionFacts, Facts, Fate, OutcomeFacts};
use labels::ToolLabels;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex};

/// Distinct tool label values one grant may have; further tools are counted as `other`.
/// 500 is more than any single MCP server lists, and 500 × grants × rules × decisions series
/// stays in what a Prometheus server keeps without noticing.
pub const TOOLS_PER_GRANT: usize = 500;

/// Distinct `upstream` label values; further servers are `other`. A single upstream names
/// itself (`serverInfo.name`), a set has its configured names: a handful either way.
pub const UPSTREAMS: usize = 32;

/// The `Content-Type` of [`Metrics::encode`]'s text (the Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The advisory buckets of the MCP semantic conventions' operation durations, in seconds.
const MCP_DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Labels as `(name, value)` pairs: the families below differ in which names they carry.
type Labels = Vec<(&'static str, String)>;

fn mcp_duration() -> Histogram {
    Histogram::new(MCP_DURATION_BUCKETS)
}

/// The gateway's metrics: the registry and the families the events feed.
///
/// Decisions and outcomes are counted off the call's thread: the observer only queues their
/// facts (a lock and a push), and a thread of the metrics' own counts them every
/// [`COUNT_EVERY`]; a scrape counts what is queued first, so `/metrics` always includes every
/// call answered before it.
pub struct Metrics {
    registry: Registry,
    counts: Arc<Counts>,
    /// Facts not counted yet.
    queued: Arc<Mutex<Vec<Facts>>>,
    /// `toolgate_shadow_decisions_total{source, would}`: shadow rules and policies, by how
    /// their verdict compares with the enforced one.
    shadows: Family<Labels, Counter>,
    /// Where the scrape-time values come from, once the transport has set it.
    source: Arc<scrape::Source>,
}

/// How often the metrics' thread counts the queued facts.
pub const COUNT_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

/// Queued facts past which the observer counts them itself (the counting thread is stuck).
const MAX_QUEUED: usize = 1 << 16;

/// The families decisions and outcomes feed, and their bounded labels.
struct Counts {
    /// Held while a batch is counted: a scrape waits for the batch the thread took.
    counting: Mutex<()>,
    tools: ToolLabels,
    /// `toolgate_tool_calls_total{grant, tool, decision, rule}`.
    calls: Family<Labels, Counter>,
    /// `toolgate_policy_evaluation_duration_seconds`.
    evaluation: Histogram,
    /// `toolgate_tool_call_outcomes_total{outcome}`.
    outcomes: Family<Labels, Counter>,
    /// `toolgate_upstream_calls_total{upstream, outcome}`: forwarded calls by the server
    /// that ran them (in a set of upstreams, its name; else its `serverInfo.name`).
    upstream_calls: Family<Labels, Counter>,
    /// The upstream label, bounded like the tool label (at most 32 names, then `other`).
    upstream_names: ToolLabels,
    /// `mcp_client_operation_duration_seconds{mcp_method_name, gen_ai_tool_name, error_type}`:
    /// the gateway is the upstream's MCP client.
    upstream: Family<Labels, Histogram, fn() -> Histogram>,
    /// `mcp_server_operation_duration_seconds{mcp_method_name, gen_ai_tool_name, error_type}`:
    /// the gateway as the client's MCP server, from a `tools/call`'s arrival to its answer
    /// (a refusal's decision, or the forwarded call's fate).
    server: Family<Labels, Histogram, fn() -> Histogram>,
    /// The series each fact's key feeds, found once (taken with `counting`).
    series: Mutex<series::Series>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every family, at zero.
    pub fn new() -> Self {
        Self::with_tool_cap(TOOLS_PER_GRANT)
    }

    /// The same, naming at most `cap` tools per grant.
    pub fn with_tool_cap(cap: usize) -> Self {
        let mut registry = Registry::default();
        let calls = Family::<Labels, Counter>::default();
        registry.register(
            "toolgate_tool_calls",
            "Decided tools/call requests, by grant, tool, decision and the rule that decided",
            calls.clone(),
        );
        // 5 µs to about 0.66 s: a decision without plugins takes microseconds, one with
        // plugins or a remote counter store up to its timeout.
        let evaluation = Histogram::new(exponential_buckets(5e-6, 2.0, 18));
        registry.register(
            "toolgate_policy_evaluation_duration_seconds",
            "Time to decide a tools/call (policy, plugins, counters)",
            evaluation.clone(),
        );
        let outcomes = Family::<Labels, Counter>::default();
        registry.register(
            "toolgate_tool_call_outcomes",
            "Forwarded tools/call requests by how they ended (ran, tool_error, jsonrpc_error, gone, cancelled, timeout)",
            outcomes.clone(),
        );
        let upstream_calls = Family::<Labels, Counter>::default();
        registry.register(
            "toolgate_upstream_calls",
            "Forwarded tools/call requests by the upstream server that got them and how they ended",
            upstream_calls.clone(),
        );
        let upstream = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
            mcp_duration as fn() -> Histogram,
        );
        registry.register(
            "mcp_client_operation_duration_seconds",
            "MCP requests the gateway sent upstream, from sending to the reply (semconv mcp.client.operation.duration)",
            upstream.clone(),
        );
        let server = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
            mcp_duration as fn() -> Histogram,
        );
        registry.register(
            "mcp_server_operation_duration_seconds",
            "tools/call requests the gateway served, from arrival to answer, its decision included (semconv mcp.server.operation.duration)",
            server.clone(),
        );
        let shadows = Family::<Labels, Counter>::default();
        registry.register(
            "toolgate_shadow_decisions",
            "Shadow decisions (rules with enforce: false, shadow policies) by source and by how they compare with the enforced one (same, would_deny, would_allow, ...)",
            shadows.clone(),
        );
        registry.register(
            "toolgate_build",
            "The toolgate build",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION").to_owned())]),
        );
        let source = Arc::new(scrape::Source::default());
        registry.register_collector(Box::new(scrape::Collector(source.clone())));
        let counts = Arc::new(Counts {
            counting: Mutex::new(()),
            tools: ToolLabels::new(cap),
            calls,
            evaluation,
            outcomes,
            upstream_calls,
            upstream_names: ToolLabels::new(UPSTREAMS),
            upstream,
            server,
            series: Mutex::default(),
        });
        let queued = Arc::new(Mutex::new(Vec::new()));
        let (weak, thread_counts) = (Arc::downgrade(&queued), counts.clone());
        let counting = std::thread::Builder::new()
            .name("metrics-count".into())
            .spawn(move || loop {
                std::thread::sleep(COUNT_EVERY);
                // Gone with its metrics.
                let Some(queued) = weak.upgrade() else {
                    return;
                };
                thread_counts.count(&queued);
            });
        if let Err(e) = counting {
            tracing::error!(error = %e, "no thread to count metrics; scrapes count them");
        }
        Self {
            registry,
            counts,
            queued,
            shadows,
            source,
        }
    }

    /// Scrape-time values (sessions, refusals, policies, the log's drops) come from `read`;
    /// set once, by the transport that owns them (a second call is ignored).
    pub fn read_from(&self, read: impl Fn() -> Snapshot + Send + Sync + 'static) {
        self.source.set(Box::new(read));
    }

    fn queue(&self, facts: Facts) {
        let mut queued = self.queued.lock().unwrap_or_else(|e| e.into_inner());
        queued.push(facts);
        if queued.len() >= MAX_QUEUED {
            drop(queued);
            self.counts.count(&self.queued);
        }
    }

    /// Everything, in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        self.counts.count(&self.queued);
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

impl Counts {
    /// Counts the facts queued so far.
    fn count(&self, queued: &Mutex<Vec<Facts>>) {
        let _counting = self.counting.lock().unwrap_or_else(|e| e.into_inner());
        let mut batch = std::mem::take(&mut *queued.lock().unwrap_or_else(|e| e.into_inner()));
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        for facts in &batch {
            match facts {
                Facts::Decision(facts) => {
                    let s = series.decision(self, facts);
                    s.calls.inc();
                    self.evaluation.observe(facts.eval_us as f64 / 1e6);
                    if let Some(refused) = &s.refused {
                        refused.observe(facts.eval_us as f64 / 1e6);
                    }
                }
                Facts::Outcome(facts) => {
                    let s = series.outcome(self, facts);
                    s.outcomes.inc();
                    s.upstream_calls.inc();
                    s.upstream.observe(facts.upstream_ms / 1000.0);
                    s.server.observe(facts.server_ms / 1000.0);
                }
            }
        }
        drop(series);
        // Freed on a call's thread, where they were made (see `audit::retire`).
        audit::retire(&mut batch);
        // The emptied queue goes back, so that queueing does not grow a new one.
        let mut queued = queued.lock().unwrap_or_else(|e| e.into_inner());
        if queued.is_empty() {
            std::mem::swap(&mut *queued, &mut batch);
        }
    }

    /// The series a decision with `event`'s key feeds (found once per key, see `series.rs`).
    fn decision_series(&self, event: &DecisionFacts) -> series::DecisionSeries {
        let (grant, verdict) = (&*event.origin.grant, &event.decision);
        let decision = verdict.verdict.as_str();
        let tool = self.tools.label(grant, &verdict.rule, &event.tool);
        let calls = self.calls.get_or_create(&series::labels(&[
            ("grant", grant),
            ("tool", &tool),
            ("decision", decision),
            ("rule", &verdict.rule),
        ]));
        // A refusal is answered here: its decision is the whole of the server's time. An
        // allowed call's time is observed with its outcome.
        let refused = (!verdict.is_allow()).then(|| {
            self.server
                .get_or_create(&series::labels(&[
                    ("mcp_method_name", "tools/call"),
                    ("gen_ai_tool_name", &tool),
                    ("error_type", decision),
                ]))
                .clone()
        });
        series::DecisionSeries {
            calls: calls.clone(),
            refused,
        }
    }

    /// The series an outcome with `event`'s key feeds.
    fn outcome_series(&self, event: &OutcomeFacts) -> series::OutcomeSeries {
        let outcome = fate(event.outcome);
        let upstream_name = self.upstream_names.label("", "", &event.server);
        // Only allowed calls have outcomes: their tool was not unknown.
        let tool = self.tools.label(&event.origin.grant, "", &event.tool);
        let mut labels = vec![
            ("mcp_method_name", "tools/call"),
            ("gen_ai_tool_name", &*tool),
        ];
        if event.outcome != Fate::Ran {
            labels.push(("error_type", outcome));
        }
        let labels = series::labels(&labels);
        series::OutcomeSeries {
            outcomes: self
                .outcomes
                .get_or_create(&series::labels(&[("outcome", outcome)]))
                .clone(),
            upstream_calls: self
                .upstream_calls
                .get_or_create(&series::labels(&[
                    ("upstream", &upstream_name),
                    ("outcome", outcome),
                ]))
                .clone(),
            upstream: self.upstream.get_or_create(&labels).clone(),
            server: self.server.get_or_create(&labels).clone(),
        }
    }
}

impl audit::Observer for Metrics {
    fn decision(&self, facts: &Arc<DecisionFacts>) {
        self.queue(Facts::Decision(facts.clone()));
    }

    fn outcome(&self, facts: &Arc<OutcomeFacts>) {
        self.queue(Facts::Outcome(facts.clone()));
    }

    fn shadow(&self, event: &audit::ShadowEvent) {
        self.shadows
            .get_or_create(&vec![
                ("source", event.source.clone()),
                ("would", event.would.clone()),
            ])
            .inc();
    }

    fn wants_args(&self) -> bool {
        false
    }
}

/// A fate's name, as the decision log writes it.
fn fate(fate: Fate) -> &'static str {
    match fate {
        Fate::Ran => "ran",
        Fate::ToolError => "tool_error",
        Fate::JsonrpcError => "jsonrpc_error",
        Fate::Gone => "gone",
        Fate::Cancelled => "cancelled",
        Fate::Timeout => "timeout",
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
