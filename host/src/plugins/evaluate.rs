//! The last step of the lifecycle: a loaded [`Plugin`] evaluates one call, under a permit, on
//! an instance, and what the plugin returned (or how it failed) becomes a [`Decision`]. A
//! `policy-with-results` plugin is also shown the result of a call it allowed, in the same
//! sandbox, and its verdict (or failure) becomes an [`AfterCall`].

use super::bindings::{refill, PluginDecision, PluginMetadata, ResultVerdict, WorldInstance};
use super::error::{ConfigRejected, EvalFailure};
use super::host::EvalState;
use super::instances::{Instances, Warm};
use super::limits::{Oversized, PluginLimits};
use super::permits::Permits;
use super::vouch::Vouched;
use crate::counters::{CounterStore, Reservation};
use crate::decision::{Decision, Verdict};
use crate::manifest::Manifest;
use crate::trust::Trust;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wasmtime::Store;

/// What a `policy-with-results` plugin made of a call's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterCall {
    /// The client gets the result as the upstream sent it.
    Pass,
    /// The client gets this result instead: the JSON text of a `CallToolResult` object,
    /// checked to be a JSON object of at most `max_result_bytes`.
    Replace(String),
    /// The client gets the gateway's refusal with this reason (the plugin's own).
    Refuse(String),
    /// The plugin failed (a trap, a timeout, fuel, memory, a malformed verdict, no permit,
    /// withdrawn trust, an oversized result the policy refuses): the whole message, naming
    /// the plugin and the cause (`plugin \`x\` trapped: ...`). The result is withheld.
    Failed(String),
}

/// The result of one `after-call`.
pub struct AfterCallOutcome {
    /// What the plugin made of the result, or how it failed.
    pub verdict: AfterCall,
    /// Fuel consumed: the plugin's instructions.
    pub instructions: u64,
    /// The most linear memory the instance held during the call, in bytes.
    pub peak_memory: usize,
    /// What the plugin logged, `level: message` each (only when the call asked for them,
    /// [`PluginCall::keep_logs`]).
    pub logs: Vec<String>,
}

/// A loaded plugin: one pre-instantiated component and its instances, ready to evaluate.
pub struct Plugin {
    name: Arc<str>,
    /// The file it was loaded from (`None`: from the store).
    path: Option<PathBuf>,
    digest: String,
    /// `plugins.<name>`: the rule its decisions report.
    rule: String,
    instances: Arc<Instances>,
    /// The runtime's evaluation permits, shared with its other plugins.
    permits: Arc<Permits>,
    /// What the component says it is, read from its bytes at load.
    manifest: Manifest,
    /// The manifest's `config_schema`, compiled.
    config_schema: Option<jsonschema::Validator>,
    /// What its trust rests on, when a trust file is configured: judged again while it runs.
    vouched: Option<Vouched>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("sha256", &self.digest)
            .finish()
    }
}

/// What the plugin sees of a call: the call record the policy sees, with the arguments as
/// JSON text (written once per decision, however many plugins run).
pub struct PluginCall<'a> {
    /// The call.
    pub call: &'a crate::call::ToolCall<'a>,
    /// `call.args` as JSON text.
    pub arguments: &'a str,
    /// The approval that covers the call, when it is decided again because a person approved
    /// it (`Policy::decide_approved`); `None` otherwise. Only a plugin of a world that has the
    /// field (`toolgate:policy@0.2.0` on) sees it.
    pub approval: Option<&'a crate::call::Approval>,
    /// Keep what the plugin logs for [`PluginOutcome::logs`] (a traced decision); otherwise
    /// its lines only go to the log, and a call costs no copy of them.
    pub keep_logs: bool,
}

/// The result of one evaluation.
pub struct PluginOutcome {
    /// The plugin's decision, or a deny describing its failure.
    pub decision: Decision,
    /// Counter units the plugin took (refund them if the call does not go ahead).
    pub reservations: Vec<Reservation>,
    /// Fuel consumed: the plugin's instructions.
    pub instructions: u64,
    /// The most linear memory the instance held during the evaluation, in bytes.
    pub peak_memory: usize,
    /// What the plugin logged during the evaluation, `level: message` each (only when the
    /// call asked for them, [`PluginCall::keep_logs`]).
    pub logs: Vec<String>,
}

impl Plugin {
    /// A plugin of these instances; `digest` is its component's sha256.
    pub(crate) fn new(
        path: Option<&Path>,
        digest: String,
        instances: Arc<Instances>,
        permits: Arc<Permits>,
        manifest: Manifest,
        config_schema: Option<jsonschema::Validator>,
        vouched: Option<Vouched>,
    ) -> Self {
        let name = instances.pre.name.clone();
        Self {
            vouched,
            manifest,
            config_schema,
            rule: format!("plugins.{name}"),
            name,
            path: path.map(Path::to_owned),
            digest,
            instances,
            permits,
        }
    }

    /// The name the policy gives the plugin.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The sha256 of the component's bytes.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The file it was loaded from (`None`: it came from the store).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Calls `metadata` on a fresh instance (part of loading).
    pub fn metadata(&self) -> Result<PluginMetadata, EvalFailure> {
        self.instances.pre.metadata()
    }

    /// Judges it again by the trust file a reload just read (`Err`: it could not be read,
    /// and the plugin is withdrawn: fail closed). A plugin loaded without a trust file is
    /// left alone. Returns why it may no longer run, if it may not.
    pub fn rejudge(&self, trust: &Result<Arc<Trust>, String>) -> Option<String> {
        let vouched = self.vouched.as_ref()?;
        let why = match trust {
            Ok(trust) => vouched.rejudge(trust.clone()),
            Err(e) => Some(vouched.withdraw(format!("cannot be judged: {e}"))),
        };
        why.map(str::to_owned)
    }

    /// sha256 over the signatures its trust rests on (`None`: no trust file was configured).
    pub fn signatures_digest(&self) -> Option<String> {
        self.vouched.as_ref().map(Vouched::signatures_digest)
    }

    /// The world it implements (`toolgate:policy/policy@0.2.0`).
    pub fn world(&self) -> crate::capability::World {
        self.instances.pre.world
    }

    /// What the component's manifest says it is.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Checks `config` (JSON text) against the manifest's config schema, if it has one, then
    /// runs the plugin's own `validate-config` on it.
    pub fn validate_config(&self, config: &str) -> Result<(), ConfigRejected> {
        if let Some(schema) = &self.config_schema {
            let value: serde_json::Value =
                serde_json::from_str(config).map_err(|e| ConfigRejected::Schema {
                    at: String::new(),
                    error: e.to_string(),
                })?;
            let problem = schema.iter_errors(&value).next().map(|error| {
                let path = error.instance_path().to_string();
                ConfigRejected::Schema {
                    at: if path.is_empty() {
                        String::new()
                    } else {
                        format!(" at `{path}`")
                    },
                    error: error.to_string(),
                }
            });
            if let Some(problem) = problem {
                return Err(problem);
            }
        }
        self.instances.pre.validate_config(config)
    }

    /// Evaluates one call. Never fails: a failure is a deny that names the plugin and the cause.
    ///
    /// The call first takes one of the runtime's evaluation permits, waiting at most the
    /// plugin's `timeout`; the permit is held until the instance is back in the pool or on
    /// its way to teardown, and given back on every path.
    pub fn evaluate(
        &self,
        call: &PluginCall<'_>,
        config: &str,
        counters: &Arc<dyn CounterStore>,
    ) -> PluginOutcome {
        let ran = self.run(call, counters, |instance, store| {
            instance.evaluate(store, config)
        });
        let decision = ran.result.and_then(|decision| {
            let (len, max) = (decision.reason_len(), self.limits().max_reason_bytes);
            if len > max {
                return Err(EvalFailure::MalformedReason { len, max });
            }
            Ok(decision)
        });
        let decision = match decision {
            Ok(decision) => decision,
            Err(failure) => {
                return PluginOutcome {
                    logs: ran.logs,
                    ..self.failed(failure, ran.reservations, ran.instructions, ran.peak_memory)
                }
            }
        };
        let decision = self.decision(decision);
        super::stats::answered(decision.verdict);
        PluginOutcome {
            decision,
            reservations: ran.reservations,
            instructions: ran.instructions,
            peak_memory: ran.peak_memory,
            logs: ran.logs,
        }
    }

    /// Whether it exports `after-call` (world `policy-with-results`): the gateway then hands
    /// it each call's result that it allowed.
    pub fn has_result_hook(&self) -> bool {
        self.world().has_results()
    }

    /// The largest result it is handed ([`PluginLimits::max_result_bytes`]), and what happens
    /// to a larger one.
    pub fn result_limits(&self) -> (usize, Oversized) {
        let limits = self.limits();
        (limits.max_result_bytes, limits.oversized_results)
    }

    /// Shows the plugin a call's `result` (the JSON text of the upstream's `result` object)
    /// once the call ran. Never fails: a failure is [`AfterCall::Failed`], naming the plugin
    /// and the cause. The sandbox, the permit and the limits are [`Plugin::evaluate`]'s.
    ///
    /// A plugin without the export passes every result. A result over
    /// [`PluginLimits::max_result_bytes`] is not shown to the plugin: it passes or fails as
    /// [`PluginLimits::oversized_results`] says. Counter units the plugin takes here stay
    /// taken: the call has already run.
    pub fn after_call(
        &self,
        call: &PluginCall<'_>,
        result: &str,
        config: &str,
        counters: &Arc<dyn CounterStore>,
    ) -> AfterCallOutcome {
        let limits = self.limits();
        let passed = AfterCallOutcome {
            verdict: AfterCall::Pass,
            instructions: 0,
            peak_memory: 0,
            logs: Vec::new(),
        };
        if !self.has_result_hook() {
            return passed;
        }
        let max = limits.max_result_bytes;
        if result.len() > max {
            if limits.oversized_results == Oversized::Pass {
                return passed;
            }
            let failure = EvalFailure::ResultTooLarge {
                len: result.len(),
                max,
            };
            return AfterCallOutcome {
                verdict: self.after_call_failed(failure),
                ..passed
            };
        }
        let ran = self.run(call, counters, |instance, store| {
            instance.after_call(store, result, config)
        });
        let verdict = ran.result.and_then(|verdict| self.result_verdict(verdict));
        let verdict = match verdict {
            Ok(verdict) => {
                super::stats::answered_result(&verdict);
                verdict
            }
            Err(failure) => self.after_call_failed(failure),
        };
        AfterCallOutcome {
            verdict,
            instructions: ran.instructions,
            peak_memory: ran.peak_memory,
            logs: ran.logs,
        }
    }

    /// The plugin's verdict on a result, checked: a replacement must be a JSON object of at
    /// most `max_result_bytes`, a reason at most `max_reason_bytes`.
    fn result_verdict(&self, verdict: ResultVerdict) -> Result<AfterCall, EvalFailure> {
        let limits = self.limits();
        Ok(match verdict {
            ResultVerdict::Pass => AfterCall::Pass,
            ResultVerdict::Replace(result) => {
                if result.len() > limits.max_result_bytes {
                    return Err(EvalFailure::MalformedResult(format!(
                        "a replacement result of {} bytes, over the {}-byte cap",
                        result.len(),
                        limits.max_result_bytes
                    )));
                }
                match serde_json::from_str::<serde_json::Value>(&result) {
                    Ok(serde_json::Value::Object(_)) => AfterCall::Replace(result),
                    Ok(_) => {
                        return Err(EvalFailure::MalformedResult(
                            "a replacement result that is not a JSON object".into(),
                        ))
                    }
                    Err(e) => {
                        return Err(EvalFailure::MalformedResult(format!(
                            "a replacement result that is not JSON ({e})"
                        )))
                    }
                }
            }
            ResultVerdict::Refuse(reason) => {
                let (len, max) = (reason.len(), limits.max_reason_bytes);
                if len > max {
                    return Err(EvalFailure::MalformedReason { len, max });
                }
                AfterCall::Refuse(reason)
            }
        })
    }

    /// [`AfterCall::Failed`] naming the plugin and the failure, counted and logged.
    fn after_call_failed(&self, failure: EvalFailure) -> AfterCall {
        super::stats::failed(&failure);
        tracing::warn!(plugin = %self.name, reason = %failure, "plugin failed on a call's result; the result is withheld");
        AfterCall::Failed(format!("plugin `{}` {failure}", self.name))
    }

    fn limits(&self) -> &PluginLimits {
        &self.instances.pre.limits
    }

    /// The sandbox every call into the plugin runs in: the trust check, the input cap, a
    /// permit, an armed instance readied for `call`, then `f` on it. The instance goes back
    /// (or to teardown) on every path; after a failure of `f` it is discarded.
    fn run<T>(
        &self,
        call: &PluginCall<'_>,
        counters: &Arc<dyn CounterStore>,
        f: impl FnOnce(&WorldInstance, &mut Store<EvalState>) -> wasmtime::Result<T>,
    ) -> Ran<T> {
        let pre = &self.instances.pre;
        let limits = &pre.limits;
        let not_run = |failure| Ran {
            result: Err(failure),
            reservations: Vec::new(),
            instructions: 0,
            peak_memory: 0,
            logs: Vec::new(),
        };
        if let Some(why) = self.vouched.as_ref().and_then(Vouched::withdrawn) {
            return not_run(EvalFailure::Untrusted(why.to_owned()));
        }
        if call.arguments.len() > limits.max_input_bytes {
            return not_run(EvalFailure::InputTooLarge {
                len: call.arguments.len(),
                cap: limits.max_input_bytes,
            });
        }
        let Some(_permit) = self.permits.acquire(limits.timeout) else {
            let failure = EvalFailure::Busy {
                permits: self.permits.max(),
                timeout_ms: limits.timeout.as_millis(),
            };
            tracing::warn!(plugin = %self.name, reason = %failure, "no evaluation permit; the plugin is not run");
            return not_run(failure);
        };
        let mut warm = match self
            .instances
            .take(call.call.grant)
            .and_then(|mut warm| pre.arm(&mut warm.store).map(|()| warm))
        {
            Ok(warm) => warm,
            Err(failure) => return not_run(failure),
        };
        fill(&mut warm, call, counters);
        let result = f(&warm.instance, &mut warm.store);
        let instructions = pre.fuel_used(&warm.store);
        let state = warm.store.data_mut();
        state.counters = None;
        let logs = std::mem::take(&mut state.logs);
        let reservations = std::mem::take(&mut state.reservations);
        let peak_memory = state.limits.peak;
        let result = match result {
            Err(e) => {
                // After a trap the instance refuses further calls: it is discarded.
                let failure = pre.failure(&e, &warm.store);
                self.instances.release(warm, false);
                tracing::warn!(plugin = %self.name, reason = %failure, "plugin failed");
                Err(failure)
            }
            Ok(answer) => {
                self.instances.release(warm, true);
                Ok(answer)
            }
        };
        Ran {
            result,
            reservations,
            instructions,
            peak_memory,
            logs,
        }
    }

    /// A deny naming the plugin and the failure.
    fn failed(
        &self,
        failure: EvalFailure,
        reservations: Vec<Reservation>,
        instructions: u64,
        peak_memory: usize,
    ) -> PluginOutcome {
        super::stats::failed(&failure);
        PluginOutcome {
            decision: Decision::deny(
                self.rule.clone(),
                format!("plugin `{}` {failure}", self.name),
            ),
            reservations,
            instructions,
            peak_memory,
            logs: Vec::new(),
        }
    }

    /// The plugin's decision as the gateway's, reported under `plugins.<name>`.
    fn decision(&self, decision: PluginDecision) -> Decision {
        let rule = self.rule.clone();
        match decision {
            PluginDecision::Allow => Decision::allow(rule),
            PluginDecision::Deny(reason) => Decision::deny(rule, reason),
            PluginDecision::RequireApproval(reason) => Decision {
                verdict: Verdict::RequireApproval,
                rule,
                reason: reason.into(),
                retry_after_ms: None,
            },
            PluginDecision::RateLimited {
                reason,
                retry_after_ms,
            } => Decision {
                verdict: Verdict::RateLimited,
                rule,
                reason: reason.into(),
                retry_after_ms: Some(retry_after_ms),
            },
        }
    }
}

/// What one call into the plugin left: its answer or failure, and what it consumed.
struct Ran<T> {
    result: Result<T, EvalFailure>,
    reservations: Vec<Reservation>,
    instructions: u64,
    peak_memory: usize,
    logs: Vec<String>,
}

/// Readies the instance's store and call record for `call`, reusing their buffers.
fn fill(warm: &mut Warm, plugin_call: &PluginCall<'_>, counters: &Arc<dyn CounterStore>) {
    let call = plugin_call.call;
    let state = warm.store.data_mut();
    state.counters = Some(counters.clone());
    refill(&mut state.grant, call.grant);
    refill(&mut state.session, call.session);
    state.keep_logs = plugin_call.keep_logs;
    state.start_evaluation();
    warm.instance
        .fill(call, plugin_call.arguments, plugin_call.approval);
}
