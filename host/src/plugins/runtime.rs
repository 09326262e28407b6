//! The runtime: one engine, its configuration, the epoch thread, the linker every plugin is
//! instantiated through, the bound on evaluations running at once, and
//! [`PluginRuntime::load`], which walks a plugin through the steps of `load`.
//!
//! Each knob of the engine says what it costs where it is set. A process makes one runtime
//! and hands it to every [`crate::policy::Loader`]; plugins loaded through it share its
//! engine, instance pool, compile cache and background threads.

use super::bindings;
use super::cache::CompileCache;
use super::epoch::EpochTicker;
use super::error::PluginError;
use super::evaluate::Plugin;
use super::host::EvalState;
use super::instances::{Chores, Instances};
use super::limits::{Isolation, PluginLimits};
use super::load::{self, Compiler, Source};
use super::permits::{Permits, DEFAULT_MAX_CONCURRENT_EVALUATIONS};
use super::vet::{self, Vetting};
use crate::capability::{json_list, Capability, World};
use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// The wasmtime version pinned in Cargo.toml (`=48.0.8`): part of the compile cache's key.
const WASMTIME_VERSION: &str = "48.0.8";

/// Component instances alive at once, over every plugin of the runtime: pooled warm
/// instances, those queued for teardown and those evaluating. Each slot
/// reserves address space (not memory) up front; see [`DEFAULT_MAX_CONCURRENT_EVALUATIONS`]
/// for how evaluations share them with idle instances.
pub(crate) const INSTANCE_SLOTS: u32 = 256;

/// One engine for the process, with what every plugin is loaded and run through.
pub struct PluginRuntime {
    engine: Engine,
    /// The thread advancing the engine's epoch while a plugin may run; shared with every
    /// plugin, whose arming wakes it.
    pub(crate) ticker: EpochTicker,
    /// Compiles each component once per process, through the disk cache if there is one.
    compiler: Compiler,
    /// The background thread that prepares and tears down instances.
    chores: Chores,
    /// Permits to evaluate, shared by every plugin loaded through this runtime.
    pub(crate) permits: Arc<Permits>,
}

/// `$TOOLGATE_CACHE_DIR` (empty: no disk cache), else `$XDG_CACHE_HOME/toolgate/plugins`,
/// else `~/.cache/toolgate/plugins`.
fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("TOOLGATE_CACHE_DIR") {
        return (!dir.is_empty()).then(|| PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("toolgate").join("plugins"))
}

impl PluginRuntime {
    /// A runtime caching compiled plugins in `$TOOLGATE_CACHE_DIR` (default
    /// `~/.cache/toolgate/plugins`; set but empty: no cache). A process makes one and hands it
    /// to every [`crate::policy::Loader`]: each runtime has its own engine, epoch thread and
    /// instance pool.
    pub fn from_env() -> Result<Self, PluginError> {
        Self::new(default_cache_dir())
    }

    /// A runtime with its own engine; `cache_dir` holds precompiled artifacts (`None`: no disk
    /// cache). At most [`DEFAULT_MAX_CONCURRENT_EVALUATIONS`] evaluations run at once (see
    /// [`PluginRuntime::with_max_concurrent_evaluations`]).
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self, PluginError> {
        let engine = Engine::new(&engine_config()).map_err(engine_error)?;
        let ticker = EpochTicker::start(&engine)?;
        let chores = Chores::start()?;
        let cache = cache_dir.map(|dir| CompileCache::new(dir, engine_name(&engine)));
        Ok(Self {
            engine,
            ticker,
            compiler: Compiler::new(cache),
            chores,
            permits: Arc::new(Permits::new(DEFAULT_MAX_CONCURRENT_EVALUATIONS)),
        })
    }

    /// At most `max` evaluations run at once (at least one); past that, a call waits up to
    /// its plugin's `timeout` for one to finish, and is denied if none does. Applies to the
    /// plugins loaded after this call. More than the default leaves fewer of the pool's
    /// 256 instance slots to idle instances (a burst can then fail at instantiation); fewer
    /// makes bursts wait.
    pub fn with_max_concurrent_evaluations(mut self, max: usize) -> Self {
        self.permits = Arc::new(Permits::new(max));
        self
    }

    /// How many evaluations may run at once.
    pub fn max_concurrent_evaluations(&self) -> usize {
        self.permits.max()
    }

    /// Loads, verifies, compiles and pre-instantiates the plugin from `source`, under what
    /// `vetting` requires of it.
    pub fn load(
        &self,
        name: &str,
        source: Source<'_>,
        vetting: Vetting<'_>,
        isolation: Isolation,
        limits: PluginLimits,
    ) -> Result<Arc<Plugin>, PluginError> {
        let candidate = load::read(source)?;
        let shown = candidate.shown.clone();
        let vetted = vet::vet(name, &candidate, vetting)?;
        let digest = vetted.digest;
        let component = self
            .compiler
            .compile(&self.engine, &digest, &candidate.bytes, &shown)?;
        let file = candidate.file.clone();
        drop(candidate);
        let world = vetted.world;
        let linker = linker(&self.engine, world, &vetted.linked)?;
        let pre = load::pre_instantiate(
            &self.ticker,
            world,
            &linker,
            name,
            &shown,
            &component,
            limits,
        )?;
        let metadata = pre.metadata().map_err(|e| PluginError::Invalid {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        tracing::info!(plugin = name, sha256 = %digest, metadata.name, metadata.version, %world, manifest = %vetted.manifest.name, capabilities = %json_list(&vetted.linked), ?isolation, "pre-instantiated plugin");
        let config_schema = match &vetted.manifest.config_schema {
            Some(schema) => {
                Some(
                    jsonschema::validator_for(schema).map_err(|e| PluginError::Manifest {
                        path: shown.clone(),
                        reason: format!("its config_schema is not a usable JSON Schema: {e}"),
                    })?,
                )
            }
            None => None,
        };
        let instances = Instances::new(pre, isolation, self.chores.clone());
        Ok(Arc::new(Plugin::new(
            file.as_deref(),
            digest,
            instances,
            self.permits.clone(),
            vetted.manifest,
            config_schema,
            vetted.vouched,
        )))
    }
}

fn engine_error(e: wasmtime::Error) -> PluginError {
    PluginError::Engine(format!("{e:#}"))
}

/// The engine's configuration: what a plugin may use, and what the host pays for it. Public
/// so that a benchmark can measure bare wasmtime on the same engine (the floor under a fresh
/// decision).
pub fn engine_config() -> wasmtime::Config {
    let mut pool = PoolingAllocationConfig::default();
    // Slots reserved up front: instantiation takes a slot instead of mapping memory (tens of
    // µs saved per fresh call, see BENCHMARKS.md), at the price of reserving address space
    // for every slot whether used or not.
    pool.total_component_instances(INSTANCE_SLOTS)
        .total_core_instances(1024)
        .total_memories(512)
        .total_tables(512)
        .max_memories_per_component(4)
        .max_tables_per_component(4)
        // The most one memory can ever grow to, whatever a policy's `memory_mib`: the
        // address space each memory slot reserves.
        .max_memory_size(256 << 20)
        // Reset a freed memory by rewriting only the pages the last instance dirtied
        // (PAGEMAP_SCAN, Linux 6.7+) or a memset of the low addresses, instead of an
        // madvise that drops the pages and makes the next instance fault them back in.
        // Costs up to this much resident memory per idle slot.
        .linear_memory_keep_resident(super::limits::KEEP_RESIDENT)
        .table_keep_resident(64 << 10)
        .pagemap_scan(wasmtime::Enabled::Auto);
    let mut config = wasmtime::Config::new();
    config
        .wasm_component_model(true)
        // Deterministic instruction budgets; a check on every loop back-edge and call, not
        // measurable on a tiny call, about +40% on a 24 KB JSON parse (WASM-NOTES).
        .consume_fuel(true)
        // The wall-clock backstop fuel cannot be (time in host imports); a cheaper check
        // than fuel, driven by the epoch thread (`epoch.rs`), which ticks while a plugin may
        // be running.
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// A linker holding `world`'s `types` interface and only its `granted` capabilities: an
/// import of anything else (another world's interfaces included) is undefined, and the plugin
/// fails to pre-instantiate (WASI imports are linked to traps per plugin, in `load`). Built
/// per load: microseconds, next to a compile.
fn linker(
    engine: &Engine,
    world: World,
    granted: &BTreeSet<Capability>,
) -> Result<Linker<EvalState>, PluginError> {
    let mut linker = Linker::new(engine);
    // The same lines for every world: its bindings' `add_to_linker` of each interface. A
    // world without `state` never imports it (its manifest could not say so), so a grant of
    // it links nothing there.
    macro_rules! link {
        (@state $v:ident state) => {
            bindings::$v::toolgate::policy::state::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
        };
        (@state $v:ident) => {
            Ok(())
        };
        ($v:ident $(, $state:ident)?) => {{
            use bindings::$v::toolgate::policy as wit;
            wit::types::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(engine_error)?;
            for capability in granted {
                match capability {
                    Capability::Counters => {
                        wit::counters::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
                    }
                    Capability::Clock => {
                        wit::clock::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
                    }
                    Capability::Log => wit::log::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s),
                    Capability::State => link!(@state $v $($state)?),
                }
                .map_err(engine_error)?;
            }
        }};
    }
    match world {
        World::V0_1 => link!(v0_1),
        World::V0_2 => link!(v0_2),
        // Both 0.3.0 worlds import the same interfaces, generated once.
        World::V0_3 | World::V0_3Results => link!(v0_3, state),
    }
    Ok(linker)
}

/// Names what makes an artifact unusable elsewhere: the wasmtime version and the engine's
/// configuration. Part of a cache entry's name and of its tag.
fn engine_name(engine: &Engine) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("wasmtime{WASMTIME_VERSION}-{:016x}", hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::host::{BudgetExceeded, MemoryBudget};
    use wasmtime::{Memory, MemoryType, Store};

    /// A component may define several memories: they spend one budget, on the real engine.
    #[test]
    fn the_memories_of_one_store_spend_one_budget() {
        let runtime = PluginRuntime::new(None).unwrap();
        let budget = MemoryBudget::new(4 << 20, 8);
        let mut store = Store::new(
            &runtime.engine,
            EvalState::idle("t".into(), Arc::new([]), budget),
        );
        store.limiter(|state| &mut state.limits);
        let page = 64 << 10;
        let a = Memory::new(&mut store, MemoryType::new(2 * 16, None)).unwrap();
        let b = Memory::new(&mut store, MemoryType::new(16, None)).unwrap();
        assert_eq!(store.data().limits.peak, 3 << 20);
        b.grow(&mut store, 16).unwrap();
        // Each memory is 2 MiB, well under a 4 MiB per-memory cap; together they are at 4.
        let refused = a.grow(&mut store, 1).unwrap_err();
        assert!(
            refused.downcast_ref::<BudgetExceeded>().is_some(),
            "{refused:#}"
        );
        assert!(b.grow(&mut store, 1).is_err());
        assert_eq!(a.data_size(&store) + b.data_size(&store), 4 << 20);
        assert!(Memory::new(&mut store, MemoryType::new(1, None)).is_err());
        assert_eq!(store.data().limits.peak, 64 * page);
    }

    #[test]
    fn evaluations_at_once_are_capped_by_default_and_settable() {
        let runtime = PluginRuntime::new(None).unwrap();
        assert_eq!(
            runtime.max_concurrent_evaluations(),
            DEFAULT_MAX_CONCURRENT_EVALUATIONS
        );
        assert!(DEFAULT_MAX_CONCURRENT_EVALUATIONS < INSTANCE_SLOTS as usize);
        let runtime = runtime.with_max_concurrent_evaluations(3);
        assert_eq!(runtime.max_concurrent_evaluations(), 3);
    }
}
