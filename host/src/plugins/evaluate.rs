//! The last step of the lifecycle: a loaded [`Plugin`] evaluates one call, under a permit, on
//! an instance, and what the plugin returned (or how it failed) becomes a [`Decision`].

use super::bindings::{refill, PluginDecision, PluginMetadata};
use super::error::{ConfigRejected, EvalFailure};
use super::instances::{Instances, Warm};
use super::permits::Permits;
use super::vouch::Vouched;
use crate::counters::{CounterStore, Reservation};
use crate::decision::{Decision, Verdict};
use crate::manifest::Manifest;
use crate::trust::Trust;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
        let pre = &self.instances.pre;
        let limits = &pre.limits;
        if let Some(why) = self.vouched.as_ref().and_then(Vouched::withdrawn) {
            return self.failed(EvalFailure::Untrusted(why.to_owned()), Vec::new(), 0, 0);
        }
        if call.arguments.len() > limits.max_input_bytes {
            return self.failed(
                EvalFailure::InputTooLarge {
                    len: call.arguments.len(),
                    cap: limits.max_input_bytes,
                },
                Vec::new(),
                0,
                0,
            );
        }
        let Some(_permit) = self.permits.acquire(limits.timeout) else {
            let failure = EvalFailure::Busy {
                permits: self.permits.max(),
                timeout_ms: limits.timeout.as_millis(),
            };
            tracing::warn!(plugin = %self.name, reason = %failure, "no evaluation permit; the call is denied");
            return self.failed(failure, Vec::new(), 0, 0);
        };
        let mut warm = match self
            .instances
            .take(call.call.grant)
            .and_then(|mut warm| pre.arm(&mut warm.store).map(|()| warm))
        {
            Ok(warm) => warm,
            Err(failure) => return self.failed(failure, Vec::new(), 0, 0),
        };
        fill(&mut warm, call, counters);
        let result = warm.instance.evaluate(&mut warm.store, config);
        let instructions = pre.fuel_used(&warm.store);
        let (reservations, peak_memory, logs) = {
            let state = warm.store.data_mut();
            state.counters = None;
            let logs = std::mem::take(&mut state.logs);
            (
                std::mem::take(&mut state.reservations),
                state.limits.peak,
                logs,
            )
        };
        let decision = match result {
            Err(e) => {
                // After a trap the instance refuses further calls: it is discarded.
                let failure = pre.failure(&e, &warm.store);
                self.instances.release(warm, false);
                tracing::warn!(plugin = %self.name, reason = %failure, "plugin failed; the call is denied");
                return PluginOutcome {
                    logs,
                    ..self.failed(failure, reservations, instructions, peak_memory)
                };
            }
            Ok(decision) => decision,
        };
        self.instances.release(warm, true);
        let max = limits.max_reason_bytes;
        let len = decision.reason_len();
        if len > max {
            let failure = EvalFailure::MalformedReason { len, max };
            return PluginOutcome {
                logs,
                ..self.failed(failure, reservations, instructions, peak_memory)
            };
        }
        let decision = self.decision(decision);
        super::stats::answered(decision.verdict);
        PluginOutcome {
            decision,
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
                reason,
                retry_after_ms: None,
            },
            PluginDecision::RateLimited {
                reason,
                retry_after_ms,
            } => Decision {
                verdict: Verdict::RateLimited,
                rule,
                reason,
                retry_after_ms: Some(retry_after_ms),
            },
        }
    }
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
