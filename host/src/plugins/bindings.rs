//! Host bindings, one module per version of the `toolgate:policy` package (`wit/v0.1.0/`,
//! `wit/v0.2.0/`, `wit/v0.3.0/`, whose module holds both its worlds over one set of interface
//! types), and the types the rest of `plugins` uses so that it names no version: [`WorldPre`] (a
//! component of one world, pre-instantiated), [`WorldInstance`] (an instance of it, with the
//! call record its world's `evaluate` takes), [`PluginDecision`] and [`ResultVerdict`].
//!
//! A component's world is the one its imports (and, for 0.3.0, its `after-call` export) name
//! and its manifest says
//! ([`crate::capability::World`]); it is instantiated with that world's bindings and handed
//! the record of that world: a 0.1.0 plugin gets the call as it always did, and never the
//! approval. Adding a version: a module here, a variant in each enum, a line in `host.rs`'s
//! `host_imports!` and a match arm in `runtime.rs`'s `linker`. A second world of one version
//! is bound with `with:` to the first's interfaces, so that one implementation of each
//! import, and one `tool-call` type, serve both.

use super::host::EvalState;
use crate::call::{Approval, ToolCall};
use crate::capability::World;
use wasmtime::component::InstancePre;
use wasmtime::Store;

/// `toolgate:policy/policy@0.1.0`.
pub(crate) mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.1.0",
        world: "policy",
        // Every host function may trap: that is how a capped import (the log) stops a plugin.
        imports: { default: trappable },
    });
}

/// `toolgate:policy/policy@0.2.0`: 0.1.0 with `tool-call.approval`.
pub(crate) mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.2.0",
        world: "policy",
        imports: { default: trappable },
    });
}

/// `toolgate:policy@0.3.0`: 0.2.0 plus the `state` import (world `policy`), and the world
/// `policy-with-results`, which also exports `after-call`.
pub(crate) mod v0_3 {
    /// World `policy`: its bindings generate the package's interfaces.
    pub(crate) mod policy {
        wasmtime::component::bindgen!({
            path: "../wit/v0.3.0",
            world: "policy",
            imports: { default: trappable },
        });
    }

    /// World `policy-with-results`, over `policy`'s interface types and host traits (`with`):
    /// one implementation of each import serves both worlds.
    pub(crate) mod results {
        wasmtime::component::bindgen!({
            path: "../wit/v0.3.0",
            world: "policy-with-results",
            imports: { default: trappable },
            with: {
                "toolgate:policy/types": super::policy::toolgate::policy::types,
                "toolgate:policy/counters": super::policy::toolgate::policy::counters,
                "toolgate:policy/clock": super::policy::toolgate::policy::clock,
                "toolgate:policy/log": super::policy::toolgate::policy::log,
                "toolgate:policy/state": super::policy::toolgate::policy::state,
            },
        });
    }

    pub(crate) use policy::toolgate;
}

/// The plugin's name and version, as it reports them.
pub struct PluginMetadata {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// What it does.
    pub description: String,
}

/// What a plugin returned, whatever its world.
pub(crate) enum PluginDecision {
    Allow,
    Deny(String),
    RequireApproval(String),
    RateLimited { reason: String, retry_after_ms: u64 },
}

impl PluginDecision {
    /// The length of its reason, in bytes (0 for an allow).
    pub(crate) fn reason_len(&self) -> usize {
        match self {
            PluginDecision::Allow => 0,
            PluginDecision::Deny(reason) | PluginDecision::RequireApproval(reason) => reason.len(),
            PluginDecision::RateLimited { reason, .. } => reason.len(),
        }
    }
}

/// What a `policy-with-results` plugin said about a call's result, whatever its world.
pub(crate) enum ResultVerdict {
    Pass,
    Replace(String),
    Refuse(String),
}

impl From<v0_3::toolgate::policy::types::ResultVerdict> for ResultVerdict {
    fn from(verdict: v0_3::toolgate::policy::types::ResultVerdict) -> Self {
        use v0_3::toolgate::policy::types::ResultVerdict as V;
        match verdict {
            V::Pass => ResultVerdict::Pass,
            V::Replace(result) => ResultVerdict::Replace(result),
            V::Refuse(reason) => ResultVerdict::Refuse(reason),
        }
    }
}

/// The conversions every world shares (its `decision` and `metadata` are 0.1.0's).
macro_rules! same_in_every_world {
    ($($v:ident),*) => {$(
        impl From<$v::toolgate::policy::types::Decision> for PluginDecision {
            fn from(decision: $v::toolgate::policy::types::Decision) -> Self {
                use $v::toolgate::policy::types::Decision as D;
                match decision {
                    D::Allow => PluginDecision::Allow,
                    D::Deny(reason) => PluginDecision::Deny(reason),
                    D::RequireApproval(reason) => PluginDecision::RequireApproval(reason),
                    D::RateLimited(r) => PluginDecision::RateLimited {
                        reason: r.reason,
                        retry_after_ms: r.retry_after_ms,
                    },
                }
            }
        }

        impl From<$v::toolgate::policy::types::Metadata> for PluginMetadata {
            fn from(m: $v::toolgate::policy::types::Metadata) -> Self {
                PluginMetadata {
                    name: m.name,
                    version: m.version,
                    description: m.description,
                }
            }
        }
    )*};
}
same_in_every_world!(v0_1, v0_2, v0_3);

/// Fills the fields of `record` that every world's `tool-call` has (0.1.0's), reusing its
/// strings' buffers.
macro_rules! fill_common {
    ($v:ident, $record:expr, $call:expr, $arguments:expr) => {{
        let (record, call) = ($record, $call);
        refill(&mut record.tool, call.tool);
        refill(&mut record.arguments, $arguments);
        refill(&mut record.grant, call.grant);
        refill(&mut record.session, call.session);
        refill(&mut record.server, call.server);
        record.annotations = call
            .annotations
            .map(|a| $v::toolgate::policy::types::Annotations {
                read_only_hint: a.read_only_hint,
                destructive_hint: a.destructive_hint,
                idempotent_hint: a.idempotent_hint,
                open_world_hint: a.open_world_hint,
            });
    }};
}

/// Fills a `tool-call` record of a world that has `approval` (0.2.0 on).
macro_rules! fill_with_approval {
    ($v:ident, $record:expr, $call:expr, $arguments:expr, $approval:expr) => {{
        let record = $record;
        fill_common!($v, &mut *record, $call, $arguments);
        record.approval = $approval.map(|a| $v::toolgate::policy::types::Approval {
            id: a.id.clone(),
            approver: a.approver.clone(),
            channel: a.channel.clone(),
        });
    }};
}

/// An empty `tool-call` record of a world that has `approval` (0.2.0 on).
macro_rules! empty_call {
    ($v:ident) => {
        $v::toolgate::policy::types::ToolCall {
            tool: String::new(),
            arguments: String::new(),
            grant: String::new(),
            session: String::new(),
            server: String::new(),
            annotations: None,
            approval: None,
        }
    };
}

/// A component pre-instantiated as one world's `policy`.
pub(crate) enum WorldPre {
    V0_1(v0_1::PolicyPre<EvalState>),
    V0_2(v0_2::PolicyPre<EvalState>),
    V0_3(v0_3::policy::PolicyPre<EvalState>),
    V0_3Results(v0_3::results::PolicyWithResultsPre<EvalState>),
}

impl WorldPre {
    /// `pre` as `world`'s `policy`: fails if the component does not export that world's
    /// functions with that world's types.
    pub(crate) fn new(world: World, pre: InstancePre<EvalState>) -> wasmtime::Result<Self> {
        Ok(match world {
            World::V0_1 => WorldPre::V0_1(v0_1::PolicyPre::new(pre)?),
            World::V0_2 => WorldPre::V0_2(v0_2::PolicyPre::new(pre)?),
            World::V0_3 => WorldPre::V0_3(v0_3::policy::PolicyPre::new(pre)?),
            World::V0_3Results => {
                WorldPre::V0_3Results(v0_3::results::PolicyWithResultsPre::new(pre)?)
            }
        })
    }

    /// An instance in `store`, with an empty call record of its world.
    pub(crate) fn instantiate(
        &self,
        store: &mut Store<EvalState>,
    ) -> wasmtime::Result<WorldInstance> {
        Ok(match self {
            WorldPre::V0_1(pre) => WorldInstance::V0_1 {
                instance: pre.instantiate(store)?,
                call: v0_1::toolgate::policy::types::ToolCall {
                    tool: String::new(),
                    arguments: String::new(),
                    grant: String::new(),
                    session: String::new(),
                    server: String::new(),
                    annotations: None,
                },
            },
            WorldPre::V0_2(pre) => WorldInstance::V0_2 {
                instance: pre.instantiate(store)?,
                call: empty_call!(v0_2),
            },
            WorldPre::V0_3(pre) => WorldInstance::V0_3 {
                instance: pre.instantiate(store)?,
                call: empty_call!(v0_3),
            },
            WorldPre::V0_3Results(pre) => WorldInstance::V0_3Results {
                instance: pre.instantiate(store)?,
                call: empty_call!(v0_3),
            },
        })
    }
}

/// An instance of one world's `policy`, with the call record it is handed, its strings reused
/// from call to call.
pub(crate) enum WorldInstance {
    V0_1 {
        instance: v0_1::Policy,
        call: v0_1::toolgate::policy::types::ToolCall,
    },
    V0_2 {
        instance: v0_2::Policy,
        call: v0_2::toolgate::policy::types::ToolCall,
    },
    V0_3 {
        instance: v0_3::policy::Policy,
        call: v0_3::toolgate::policy::types::ToolCall,
    },
    V0_3Results {
        instance: v0_3::results::PolicyWithResults,
        call: v0_3::toolgate::policy::types::ToolCall,
    },
}

impl WorldInstance {
    /// Readies the call record for `call` (`arguments`: its arguments as JSON text). The
    /// approval reaches only a world that has the field (0.2.0 on).
    pub(crate) fn fill(
        &mut self,
        call: &ToolCall<'_>,
        arguments: &str,
        approval: Option<&Approval>,
    ) {
        match self {
            WorldInstance::V0_1 { call: record, .. } => fill_common!(v0_1, record, call, arguments),
            WorldInstance::V0_2 { call: record, .. } => {
                fill_with_approval!(v0_2, record, call, arguments, approval)
            }
            WorldInstance::V0_3 { call: record, .. }
            | WorldInstance::V0_3Results { call: record, .. } => {
                fill_with_approval!(v0_3, record, call, arguments, approval)
            }
        }
    }

    /// Calls `evaluate` on the record [`WorldInstance::fill`] readied.
    pub(crate) fn evaluate(
        &self,
        store: &mut Store<EvalState>,
        config: &str,
    ) -> wasmtime::Result<PluginDecision> {
        Ok(match self {
            WorldInstance::V0_1 { instance, call } => {
                instance.call_evaluate(store, call, config)?.into()
            }
            WorldInstance::V0_2 { instance, call } => {
                instance.call_evaluate(store, call, config)?.into()
            }
            WorldInstance::V0_3 { instance, call } => {
                instance.call_evaluate(store, call, config)?.into()
            }
            WorldInstance::V0_3Results { instance, call } => {
                instance.call_evaluate(store, call, config)?.into()
            }
        })
    }

    /// Calls `after-call` on the record [`WorldInstance::fill`] readied, with the call's
    /// `result` (JSON text); a world without the export passes every result.
    pub(crate) fn after_call(
        &self,
        store: &mut Store<EvalState>,
        result: &str,
        config: &str,
    ) -> wasmtime::Result<ResultVerdict> {
        Ok(match self {
            WorldInstance::V0_3Results { instance, call } => instance
                .call_after_call(store, call, result, config)?
                .into(),
            _ => ResultVerdict::Pass,
        })
    }

    /// Calls `validate-config`.
    pub(crate) fn validate_config(
        &self,
        store: &mut Store<EvalState>,
        config: &str,
    ) -> wasmtime::Result<Result<(), String>> {
        match self {
            WorldInstance::V0_1 { instance, .. } => instance.call_validate_config(store, config),
            WorldInstance::V0_2 { instance, .. } => instance.call_validate_config(store, config),
            WorldInstance::V0_3 { instance, .. } => instance.call_validate_config(store, config),
            WorldInstance::V0_3Results { instance, .. } => {
                instance.call_validate_config(store, config)
            }
        }
    }

    /// Calls `metadata`.
    pub(crate) fn metadata(
        &self,
        store: &mut Store<EvalState>,
    ) -> wasmtime::Result<PluginMetadata> {
        Ok(match self {
            WorldInstance::V0_1 { instance, .. } => instance.call_metadata(store)?.into(),
            WorldInstance::V0_2 { instance, .. } => instance.call_metadata(store)?.into(),
            WorldInstance::V0_3 { instance, .. } => instance.call_metadata(store)?.into(),
            WorldInstance::V0_3Results { instance, .. } => instance.call_metadata(store)?.into(),
        })
    }
}

/// Replaces `buf`'s text without allocating, unless it grows (a huge call's buffer shrinks back).
pub(crate) fn refill(buf: &mut String, text: &str) {
    buf.clear();
    buf.shrink_to(64 << 10);
    buf.push_str(text);
}
