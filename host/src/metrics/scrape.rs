//! What `/metrics` reads when it is scraped rather than counts as events arrive: the state
//! the transports and the plugin runtime already keep (sessions, refusals, reloads, the
//! decision log's drops, plugin evaluations), so that nothing on the call path changes.

use crate::audit::LogStats;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use std::sync::OnceLock;

/// One grant's live policy, as `/metrics` shows it.
#[derive(Clone, Debug, Default)]
pub struct PolicyState {
    /// The grant (`default` for `toolgate run` unless `--grant`).
    pub grant: String,
    /// The active set's digest (`reload::Status::digest`).
    pub digest: String,
    /// Reloads tried, and how many of them failed.
    pub reloads: u64,
    /// Reloads that failed.
    pub failed_reloads: u64,
}

/// The scrape-time values a transport reports; `None` and empty are left out.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Sessions open now (`serve`).
    pub sessions_open: Option<u64>,
    /// Sessions opened since the start (`serve`).
    pub sessions_opened: Option<u64>,
    /// Requests the HTTP gateway refused itself (with an HTTP status or a JSON-RPC error of
    /// its own), by reason (`auth`, `host`, `session_not_found`, `too_many_sessions`, ...).
    pub refusals: Vec<(&'static str, u64)>,
    /// Each grant's policy.
    pub policies: Vec<PolicyState>,
    /// The decision log's counts, when one is configured.
    pub decision_log: Option<LogStats>,
    /// Whether the counter store is degraded (a remote store it cannot reach).
    pub counter_store_degraded: Option<bool>,
}

type Read = Box<dyn Fn() -> Snapshot + Send + Sync>;

/// Where snapshots come from, set once.
#[derive(Default)]
pub(super) struct Source(OnceLock<Read>);

impl Source {
    pub(super) fn set(&self, read: Read) {
        let _ = self.0.set(read);
    }
}

/// The registry's collector over a [`Source`] and the plugin runtime's counts.
pub(super) struct Collector(pub(super) std::sync::Arc<Source>);

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("metrics::Collector")
    }
}

/// One family of constant values: `(labels, value)` each.
fn family<const N: usize>(
    encoder: &mut DescriptorEncoder,
    (name, help, kind): (&str, &str, MetricType),
    samples: impl IntoIterator<Item = ([(&'static str, String); N], u64)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        let sample = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value).encode(sample)?,
            _ => ConstGauge::new(value as i64).encode(sample)?,
        }
    }
    Ok(())
}

/// One value without labels.
fn single(
    encoder: &mut DescriptorEncoder,
    (name, help, kind): (&str, &str, MetricType),
    value: u64,
) -> std::fmt::Result {
    family(encoder, (name, help, kind), [([], value)])
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        use MetricType::{Counter, Gauge};
        family(
            &mut encoder,
            (
                "toolgate_plugin_evaluations",
                "Plugin evaluations by outcome: the plugin's verdict, or how it failed (trap, timeout, out_of_fuel, memory, limit, busy, not_run, error)",
                Counter,
            ),
            crate::plugins::evaluations()
                .into_iter()
                .map(|(outcome, n)| ([("outcome", outcome.to_owned())], n)),
        )?;
        let Some(read) = self.0 .0.get() else {
            return Ok(());
        };
        let snapshot = read();
        if let Some(open) = snapshot.sessions_open {
            single(
                &mut encoder,
                ("toolgate_sessions_open", "Sessions open now", Gauge),
                open,
            )?;
        }
        if let Some(opened) = snapshot.sessions_opened {
            let help = "Sessions opened since the start";
            single(
                &mut encoder,
                ("toolgate_sessions_opened", help, Counter),
                opened,
            )?;
        }
        if !snapshot.refusals.is_empty() {
            family(
                &mut encoder,
                (
                    "toolgate_http_refusals",
                    "HTTP requests the gateway refused itself, by reason (auth: no or a wrong token; host: Host or Origin not admitted; session_not_found, too_many_sessions, upstream_failed, ...)",
                    Counter,
                ),
                snapshot
                    .refusals
                    .iter()
                    .map(|(reason, n)| ([("reason", (*reason).to_owned())], *n)),
            )?;
        }
        let policies = &snapshot.policies;
        family(
            &mut encoder,
            (
                "toolgate_policy_reloads",
                "Policy reloads by grant and result (ok: loaded, changed or not; failed: the last good policy stayed)",
                Counter,
            ),
            policies.iter().flat_map(|p| {
                let ok = p.reloads.saturating_sub(p.failed_reloads);
                [
                    ([("grant", p.grant.clone()), ("result", "ok".into())], ok),
                    ([("grant", p.grant.clone()), ("result", "failed".into())], p.failed_reloads),
                ]
            }),
        )?;
        family(
            &mut encoder,
            (
                "toolgate_policy_info",
                "The active policy set of each grant, by its digest (always 1)",
                Gauge,
            ),
            policies.iter().map(|p| {
                (
                    [("grant", p.grant.clone()), ("digest", p.digest.clone())],
                    1,
                )
            }),
        )?;
        if let Some(log) = &snapshot.decision_log {
            let help = "Decision log events written";
            single(
                &mut encoder,
                ("toolgate_decision_log_written", help, Counter),
                log.written,
            )?;
            let help = "Decision log events dropped because the writer could not keep up";
            single(
                &mut encoder,
                ("toolgate_decision_log_dropped", help, Counter),
                log.dropped,
            )?;
        }
        if let Some(degraded) = snapshot.counter_store_degraded {
            let help =
                "1 while the counter store is degraded (a remote store that cannot be reached)";
            let kind = ("toolgate_counter_store_degraded", help, Gauge);
            single(&mut encoder, kind, u64::from(degraded))?;
        }
        Ok(())
    }
}
