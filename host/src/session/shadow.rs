//! Shadow decisions: what a shadow rule (`enforce: false`) or the grant's shadow policy would
//! have decided about a call, worked out after the call's own decision, on a thread of their
//! own, with counters of their own, and logged beside it ([`crate::audit::ShadowEvent`]).
//!
//! Nothing a shadow decides reaches the call: the job is queued only once the call's decision
//! is made, a full queue drops the job (counted), and a shadow plugin that traps or runs out
//! of time only makes the shadow's own verdict a deny.

use super::audited::Trail;
use super::Session;
use crate::audit::{self, Observer, ShadowEvent, Verdict};
use crate::call::ToolCall;
use crate::counters::CounterStore;
use crate::decision::Verdict as V;
use crate::policy::Policy;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;

/// Shadow jobs waiting before new ones are dropped.
const QUEUE: usize = 1024;

/// The thread shadow decisions run on, and their counters.
pub struct ShadowRunner {
    tx: SyncSender<Job>,
    dropped: Arc<AtomicU64>,
    /// Jobs queued and not yet decided.
    pending: Arc<AtomicU64>,
}

struct Job {
    trail: Trail,
    decision_id: String,
    grant: String,
    session: String,
    enforced: V,
    policies: Vec<(&'static str, Arc<Policy>)>,
    observer: Arc<dyn Observer>,
    /// The call's decision, while its report is deferred: reported before the shadow's.
    decision: Option<Arc<crate::audit::DecisionReport>>,
}

impl ShadowRunner {
    /// Starts the shadow thread, with its own counters (`counters`: never the real ones).
    pub fn start(counters: Arc<dyn CounterStore>) -> std::io::Result<Arc<Self>> {
        let (tx, rx) = sync_channel::<Job>(QUEUE);
        let pending = Arc::new(AtomicU64::new(0));
        let done = pending.clone();
        std::thread::Builder::new()
            .name("shadow".into())
            .spawn(move || {
                for job in rx {
                    run(job, &counters);
                    done.fetch_sub(1, Ordering::Relaxed);
                }
            })?;
        Ok(Arc::new(Self {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
            pending,
        }))
    }

    /// Waits (at most `within`) until every queued shadow decision is made and reported.
    pub fn flush(&self, within: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        while self.pending.load(Ordering::Relaxed) > 0 {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        true
    }

    /// Jobs dropped because the shadow thread could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn run(job: Job, counters: &Arc<dyn CounterStore>) {
    if let Some(decision) = &job.decision {
        decision.report();
    }
    let null = serde_json::Value::Null;
    let call = ToolCall {
        tool: &job.trail.tool,
        args: job.trail.args.as_deref().unwrap_or(&null),
        args_text: None,
        grant: &job.grant,
        session: &job.session,
        server: &job.trail.server,
        annotations: job.trail.annotations,
    };
    for (source, policy) in &job.policies {
        let outcome = policy.decide_shadow(&call, counters);
        let shadow = outcome.decision;
        let differs = shadow.verdict != job.enforced;
        let would = match (differs, job.enforced == V::Allow, shadow.verdict) {
            (false, _, _) => "same".to_owned(),
            (true, true, _) => "would_deny".to_owned(),
            (true, false, V::Allow) => "would_allow".to_owned(),
            (true, false, other) => format!("would_{}", other.as_str()),
        };
        job.observer.shadow(&ShadowEvent {
            time: audit::now(),
            decision_id: job.decision_id.clone(),
            grant: job.grant.clone(),
            session: job.session.clone(),
            tool: job.trail.tool.to_string(),
            source: (*source).to_owned(),
            policy_digest: policy.digest().to_owned(),
            enforced: job.enforced.as_str().to_owned(),
            shadow: Verdict {
                verdict: shadow.verdict.as_str().into(),
                rule: shadow.rule,
                reason: shadow.reason.into_owned(),
                retry_after_ms: shadow.retry_after_ms,
            },
            differs,
            would,
        });
        // Units the shadow took are its own; an allowed shadow "call" never runs, so they
        // stay spent in the shadow's counters, as the real ones would.
    }
}

impl Session {
    /// Queues the shadow decisions a call needs: its rule's, if the rule is a shadow rule,
    /// and the grant's shadow policy's.
    pub(super) fn shadow(
        &self,
        trail: Trail,
        reported: Option<(
            crate::audit::EventId,
            Option<Arc<crate::audit::DecisionReport>>,
        )>,
        enforced: Option<V>,
    ) {
        let (Some(audit), Some((decision_id, decision)), Some(enforced)) =
            (&self.audit, reported, enforced)
        else {
            return;
        };
        let Some(runner) = &audit.shadow else {
            return;
        };
        let policy = self.policy.load_full();
        let mut policies = Vec::new();
        if policy.has_shadow_rule_for(&trail.tool) {
            policies.push(("rule", policy));
        }
        if let Some(shadow) = &self.shadow_policy {
            policies.push(("policy", shadow.load_full()));
        }
        if policies.is_empty() || trail.args.is_none() {
            return;
        }
        let job = Job {
            trail,
            decision_id: decision_id.to_string(),
            grant: self.identity.grant.clone(),
            session: self.identity.session.clone(),
            enforced,
            policies,
            observer: audit.observer.clone(),
            decision,
        };
        runner.pending.fetch_add(1, Ordering::Relaxed);
        if runner.tx.try_send(job).is_err() {
            runner.pending.fetch_sub(1, Ordering::Relaxed);
            runner.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
