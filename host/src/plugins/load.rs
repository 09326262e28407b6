//! The first four steps of the lifecycle, each a function: load ([`read`]) → verify
//! (`vet.rs`) → compile ([`Compiler::compile`]) → [`pre_instantiate`], ending in a [`PluginPre`]: the
//! component linked against the granted imports, with what an instance of it needs. The
//! runtime strings them together (`PluginRuntime::load`).
//!
//! Everything that can be wrong with a plugin file is found here, at load time, and fails
//! the policy load with a [`PluginError`]; nothing here runs on a request's path.

use super::bindings::{PluginMetadata, WorldInstance, WorldPre};
use super::cache::CompileCache;
use super::epoch::EpochTicker;
use super::error::{ConfigRejected, EvalFailure, PluginError};
use super::host::{EvalState, MemoryBudget, UngrantedImport};
use super::limits::{PluginLimits, EPOCH_TICK, LOAD_TIMEOUT};
use super::vet::Candidate;
use crate::capability::World;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker, LinkerInstance, ResourceType};
use wasmtime::{Engine, Store};

/// A plugin compiled and linked, ready to be rehydrated into instances (`rehydrate`, in
/// `instances`): the pre-instantiated component with the engine it belongs to and the limits
/// every instance of it runs under.
pub(crate) struct PluginPre {
    pre: WorldPre,
    /// The world it implements (its manifest's, which its imports name).
    pub(crate) world: World,
    engine: Engine,
    /// The engine's epoch thread, which every arming keeps awake until its deadline.
    ticker: EpochTicker,
    /// The plugin's name, for its instances' logs.
    pub(crate) name: Arc<str>,
    pub(crate) limits: PluginLimits,
}

/// The largest component file read (the store's cap too): a plugin is a few hundred KB.
pub(crate) const MAX_COMPONENT_BYTES: u64 = 256 << 20;

/// Where a plugin's bytes come from.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// A file (development, or a plugin kept beside the policy); its signatures are the
    /// `.minisig` files beside it.
    Path(&'a Path),
    /// The digest-keyed store: the component with this sha256, and the signatures stored
    /// with it. `reference` only names it in messages; nothing follows a tag.
    Store {
        /// The store.
        store: &'a crate::store::Store,
        /// The policy's `ref`.
        reference: &'a str,
        /// The policy's `sha256`.
        sha256: &'a str,
    },
}

/// Step 1, load: the bytes, read once, and the signatures found for them.
pub(crate) fn read(source: Source<'_>) -> Result<Candidate, PluginError> {
    match source {
        Source::Path(path) => {
            let bytes =
                crate::bounded::read_regular(path, MAX_COMPONENT_BYTES).map_err(|source| {
                    PluginError::Read {
                        path: path.display().to_string(),
                        source,
                    }
                })?;
            Ok(Candidate {
                shown: path.display().to_string(),
                file: Some(path.to_owned()),
                bytes,
                signatures: crate::trust::signatures_beside(path),
            })
        }
        Source::Store {
            store,
            reference,
            sha256,
        } => {
            let store_error = |e: crate::store::StoreError| {
                PluginError::Store(e.for_reference(reference).to_string())
            };
            let bytes = store.component(sha256).map_err(store_error)?;
            let signatures = store.signatures(sha256).map_err(store_error)?;
            Ok(Candidate {
                shown: format!("{reference}@sha256:{sha256}"),
                file: None,
                bytes,
                signatures,
            })
        }
    }
}

/// Step 3, compile: each component once per process (by content digest), through the disk
/// cache when there is one.
pub(crate) struct Compiler {
    /// The on-disk compile cache, `None` when it is off.
    cache: Option<CompileCache>,
    /// Compiled components by content digest.
    compiled: Mutex<HashMap<String, Component>>,
}

impl Compiler {
    /// A compiler keeping its artifacts in `cache` (`None`: in this process only).
    pub(crate) fn new(cache: Option<CompileCache>) -> Self {
        Self {
            cache,
            compiled: Mutex::new(HashMap::new()),
        }
    }

    /// Compiles the component, once per content digest in this process, through the disk
    /// cache when there is one.
    pub(crate) fn compile(
        &self,
        engine: &Engine,
        digest: &str,
        bytes: &[u8],
        path: &str,
    ) -> Result<Component, PluginError> {
        if let Some(component) = self
            .compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(digest)
        {
            return Ok(component.clone());
        }
        let cache = self.cache.as_ref().and_then(CompileCache::open);
        let from_cache = cache.as_ref().and_then(|cache| {
            let artifact = cache.load(digest)?;
            // SAFETY: `artifact` is bytes in memory (never the file again), whose HMAC-SHA256
            // under the cache's key was checked just now over these bytes, this component's
            // sha256 and this engine's wasmtime version and configuration. The key is 32
            // random bytes in a file only this uid can read, in a folder only this uid can
            // write (both checked on the opened file and folder), so the artifact is one this
            // uid's gateway produced with `Component::serialize` from this very component on
            // an engine like this one: what `deserialize` requires. It checks the version and
            // configuration again itself.
            unsafe { Component::deserialize(engine, &artifact) }
                .map_err(|e| tracing::warn!(digest, error = %e, "ignoring a plugin cache entry that does not load"))
                .ok()
        });
        let component = match from_cache {
            Some(component) => {
                tracing::debug!(
                    path,
                    digest,
                    "loaded the plugin's compiled form from the cache"
                );
                component
            }
            None => {
                let started = std::time::Instant::now();
                let component =
                    Component::new(engine, bytes).map_err(|e| invalid(path, format!("{e:#}")))?;
                release_compiler_heap();
                tracing::info!(
                    path,
                    digest,
                    ms = started.elapsed().as_millis() as u64,
                    "compiled plugin"
                );
                if let Some(cache) = &cache {
                    match component.serialize() {
                        Ok(artifact) => cache.store(digest, &artifact),
                        Err(e) => {
                            tracing::warn!(digest, error = %e, "cannot serialize a compiled plugin for the cache")
                        }
                    }
                }
                component
            }
        };
        self.compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(digest.to_owned(), component.clone());
        Ok(component)
    }
}

/// Hands the heap pages the compiler freed back to the kernel. Cranelift allocates several
/// MiB per component on the compile threads, and glibc keeps the freed pages in those
/// threads' arenas, resident for the process's life: a gateway that compiled 10 plugins
/// held 41 MiB, 35 MiB with this (`plugins_memory` bench; 24 MiB from the cache). Costs
/// about a millisecond, once per compile (never on a call, nor on a load from the cache).
fn release_compiler_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only returns free memory to the kernel; it touches no live
    // allocation and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Step 4, pre-instantiate: links the component against the granted imports once, and checks
/// that it exports toolgate's `policy` world of version `world`. A plugin that imports
/// anything else fails here: `linker` holds only the interfaces of `world` the policy grants,
/// and only WASI imports are stubbed. Its instances run on the engine `component` was
/// compiled for, whose epoch `ticker` advances.
pub(crate) fn pre_instantiate(
    ticker: &EpochTicker,
    world: World,
    linker: &Linker<EvalState>,
    name: &str,
    path: &str,
    component: &Component,
    limits: PluginLimits,
) -> Result<PluginPre, PluginError> {
    let engine = component.engine();
    // Imports the host does not grant: WASI (from a guest's standard library) links to
    // functions that trap when called; anything else fails the load here.
    for (import, _) in component.component_type().imports(engine) {
        if !import.starts_with("wasi:") && !import.starts_with("toolgate:policy/") {
            return Err(invalid(
                path,
                format!("it imports `{import}`, which toolgate does not grant"),
            ));
        }
    }
    let mut linker = linker.clone();
    link_ungranted_to_traps(&mut linker, engine, component)
        .map_err(|e| invalid(path, format!("{e:#}")))?;
    let instance_pre = linker
        .instantiate_pre(component)
        .map_err(|e| invalid(path, format!("{e:#}")))?;
    let pre = WorldPre::new(world, instance_pre).map_err(|e| {
        invalid(
            path,
            format!("it does not implement toolgate's `policy` world (`{world}`, as its manifest says): {e:#}"),
        )
    })?;
    Ok(PluginPre {
        pre,
        world,
        engine: engine.clone(),
        ticker: ticker.clone(),
        name: Arc::from(name),
        limits,
    })
}

/// Links every import the linker does not define to a function that traps with
/// [`UngrantedImport`] naming it, and every imported resource to an empty host resource. This
/// is what `Linker::define_unknown_imports_as_traps` does, except for its trap: wasmtime's
/// carries only a message, and the deny must tell this cause apart by type.
fn link_ungranted_to_traps(
    linker: &mut Linker<EvalState>,
    engine: &Engine,
    component: &Component,
) -> wasmtime::Result<()> {
    let mut root = linker.root();
    for (name, import) in component.component_type().imports(engine) {
        // Only WASI is stubbed: a toolgate interface the policy did not grant stays undefined,
        // so the load fails even if the checks before this one missed it.
        if !name.starts_with("wasi:") {
            continue;
        }
        link_to_trap(&mut root, engine, name, None, import.ty)?;
    }
    Ok(())
}

fn link_to_trap(
    linker: &mut LinkerInstance<'_, EvalState>,
    engine: &Engine,
    name: &str,
    parent: Option<&str>,
    item: ComponentItem,
) -> wasmtime::Result<()> {
    // Defining a name already defined fails: that is how a granted import keeps its host
    // implementation. Any other failure leaves the import undefined, and the load fails at
    // `instantiate_pre`: never a plugin with an import silently missing.
    match item {
        ComponentItem::ComponentFunc(_) => {
            let import = match parent {
                Some(parent) => format!("{parent}#{name}"),
                None => name.to_owned(),
            };
            let _ = linker.func_new(name, move |_, _, _, _| {
                Err(UngrantedImport(import.clone()).into())
            });
        }
        ComponentItem::ComponentInstance(instance) => {
            let mut inner = linker.instance(name)?;
            for (export, item) in instance.exports(engine) {
                link_to_trap(&mut inner, engine, export, Some(name), item.ty)?;
            }
        }
        ComponentItem::Resource(_) => {
            let _ = linker.resource(name, ResourceType::host::<()>(), |_, _| Ok(()));
        }
        ComponentItem::Component(_) | ComponentItem::Module(_) => {
            wasmtime::bail!(
                "it imports `{name}`, a component or module, which toolgate cannot stub"
            )
        }
        ComponentItem::CoreFunc(_) | ComponentItem::Type(_) => {}
    }
    Ok(())
}

fn invalid(path: &str, reason: impl ToString) -> PluginError {
    PluginError::Invalid {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

impl PluginPre {
    /// A new store under the plugin's memory budget, not yet armed.
    pub(crate) fn new_store(&self) -> Store<EvalState> {
        let limits = MemoryBudget::new(self.limits.memory_bytes, 8);
        let state = EvalState::idle(
            self.name.clone(),
            self.limits.shared_counters.clone(),
            limits,
        );
        let mut store = Store::new(
            &self.engine,
            EvalState {
                state_limits: self.limits.state,
                ..state
            },
        );
        store.limiter(|state| &mut state.limits);
        store
    }

    /// Arms fuel and a deadline of the plugin's timeout, for one evaluation.
    pub(crate) fn arm(&self, store: &mut Store<EvalState>) -> Result<(), EvalFailure> {
        self.arm_for(store, self.limits.timeout)
    }

    /// Arms fuel and a deadline of `timeout` (rounded to epoch ticks, at least one), and
    /// keeps the epoch ticker awake until that deadline. Every store that runs guest code
    /// (instantiation included) is armed here: the ticker sleeps when nothing is armed, so a
    /// store armed any other way could run past its deadline.
    fn arm_for(&self, store: &mut Store<EvalState>, timeout: Duration) -> Result<(), EvalFailure> {
        store
            .set_fuel(self.limits.fuel)
            .map_err(|e| EvalFailure::Arm(e.to_string()))?;
        let ticks = (timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        // After the deadline is set, not before: `keep_awake` counts from an epoch read
        // after the deadline's.
        self.ticker.keep_awake(ticks);
        Ok(())
    }

    /// An instance in `store`.
    pub(crate) fn instantiate(
        &self,
        store: &mut Store<EvalState>,
    ) -> Result<WorldInstance, EvalFailure> {
        self.pre
            .instantiate(store)
            .map_err(|e| EvalFailure::Instantiate(format!("{e:#}")))
    }

    /// Arms `store` for instantiation or a load-time call: the plugin's fuel, and its timeout
    /// or [`LOAD_TIMEOUT`], whichever is longer.
    pub(crate) fn arm_for_load(&self, store: &mut Store<EvalState>) -> Result<(), EvalFailure> {
        self.arm_for(store, self.limits.timeout.max(LOAD_TIMEOUT))
    }

    /// An instance in a store armed for a load-time call ([`Self::arm_for_load`]).
    fn instantiate_for_load(&self) -> Result<(Store<EvalState>, WorldInstance), EvalFailure> {
        let mut store = self.new_store();
        self.arm_for_load(&mut store)?;
        let instance = self.instantiate(&mut store)?;
        Ok((store, instance))
    }

    /// Fuel the store's current call consumed.
    pub(crate) fn fuel_used(&self, store: &Store<EvalState>) -> u64 {
        self.limits
            .fuel
            .saturating_sub(store.get_fuel().unwrap_or(0))
    }

    /// Why a call into the plugin failed, from its error and what the store consumed.
    pub(crate) fn failure(&self, error: &wasmtime::Error, store: &Store<EvalState>) -> EvalFailure {
        EvalFailure::classify(error, &self.limits, self.fuel_used(store))
    }

    /// Calls `metadata` on a fresh instance (the last check of loading).
    pub(crate) fn metadata(&self) -> Result<PluginMetadata, EvalFailure> {
        let (mut store, instance) = self.instantiate_for_load()?;
        instance
            .metadata(&mut store)
            .map_err(|e| self.failure(&e, &store))
    }

    /// Runs `validate-config` on `config` (JSON text), on a fresh instance.
    pub(crate) fn validate_config(&self, config: &str) -> Result<(), ConfigRejected> {
        let limits = &self.limits;
        if config.len() > limits.max_config_bytes {
            return Err(ConfigRejected::TooLarge {
                len: config.len(),
                cap: limits.max_config_bytes,
            });
        }
        let (mut store, instance) = self.instantiate_for_load()?;
        match instance.validate_config(&mut store, config) {
            Ok(result) => result.map_err(|reason| {
                ConfigRejected::Rejected(truncate(&reason, limits.max_reason_bytes))
            }),
            Err(e) => Err(self.failure(&e, &store).into()),
        }
    }
}

/// `text`, cut to at most `max` bytes (on a character boundary), saying how long it was.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes in all)", &text[..end], text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_cuts_on_a_character_boundary_and_says_how_long_it_was() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("ééé", 3), "é... (6 bytes in all)");
    }
}
