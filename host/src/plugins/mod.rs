//! Plugins: rules as sandboxed WebAssembly components.
//!
//! A plugin is a component implementing the `policy` world of `wit/policy.wit`. Its
//! lifecycle has five steps, named the same in types, logs and docs:
//!
//! 1. **load**: read the file;
//! 2. **verify**: check its sha256 against the policy's `sha256` (when given), and that it is a
//!    component, not a core module;
//! 3. **compile**: once per content digest in this process, and cached on disk keyed by
//!    sha256 + wasmtime version + engine configuration, so a restart loads it in a fraction of
//!    a millisecond. A cached artifact is native code: it is used only from a private folder
//!    and with a valid tag under the folder's own key (see [`cache`]);
//! 4. **pre-instantiate**: link it against the granted imports once ([`wasmtime::component::InstancePre`]);
//!    a plugin that needs anything else, or exports another world, fails here, at load time;
//! 5. **evaluate**: run `evaluate` under a fuel budget, an epoch deadline, one memory budget
//!    for the whole instance and a cap on every import (see [`host`]).
//!    Every trap, timeout, limit hit or malformed result is a **deny** naming the plugin and
//!    the cause; the next evaluation starts from a clean instance.
//!
//! The sandbox grants the three toolgate interfaces (counters, clock, log) and nothing else:
//! every WASI import a guest's standard library brings is linked to a function that traps, so
//! a plugin has no filesystem, environment, network, clock or randomness of its own.

mod bindings;
pub mod build;
mod cache;
mod host;

use crate::counters::{CounterStore, Reservation};
use crate::decision::{Decision, Verdict};
use bindings::toolgate::policy::types as wit;
use cache::CompileCache;
use host::{BudgetExceeded, EvalState, ImportRefused, MemoryBudget};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};

/// Log bytes one evaluation may write; past this the plugin traps (and the call is denied).
pub const LOG_BYTES_PER_EVALUATION: usize = 4096;

/// Calls of each import (`counters.consume`, `clock.now-ms`, `log.log`) one evaluation may
/// make; the next one traps (and the call is denied). What an import keeps is host memory,
/// outside the plugin's memory cap, and a counter keeps its units for up to its window (a
/// week): this bounds what one call can leave behind. A rule needing more counters than this
/// per call should be several plugins or declarative limits.
pub const IMPORT_CALLS_PER_EVALUATION: u32 = 64;

/// The longest counter name a plugin may pass to `counters.consume`, in bytes; a longer one
/// traps (and the call is denied). The name is kept with the counter for its whole window.
pub const MAX_COUNTER_NAME_BYTES: usize = 256;

/// The wasmtime version pinned in Cargo.toml (`=48.0.8`): part of the compile cache's key.
const WASMTIME_VERSION: &str = "48.0.8";

/// How often the epoch advances. The wall-clock deadline is counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The least wall-clock time a load-time call gets (see `Plugin::arm_for_load`).
const LOAD_TIMEOUT: Duration = Duration::from_secs(1);

/// Never-used instances a `fresh` plugin keeps ready, instantiated in the background.
const PREPARED: usize = 2;

/// Warm instances a `pooled` plugin keeps, over all grants; past this the least recently
/// used is torn down. An instance serves one grant only, so a plugin used by many grants
/// would otherwise keep an instance (and a pool slot) per grant. More keeps more grants warm
/// and more pool slots (256 in all) taken.
const POOLED_IDLE: usize = 16;

/// Used instances queued for teardown, at most; past this a call tears its own down (so
/// that calls faster than the background thread cannot exhaust the instance pool).
const DISCARDS_QUEUED: usize = 16;

/// How evaluations of one plugin are isolated from each other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// A new store and instance for every evaluation (Kubewarden's model). Nothing a plugin
    /// does can carry over to the next call, and a trap costs nothing to recover from. Costs
    /// an instantiation and a teardown per call (about 15 µs of CPU with the pooling
    /// allocator, see BENCHMARKS.md), both done off the request path: a background thread
    /// keeps a few never-used instances ready and tears used ones down, so the call waits
    /// only for the evaluation itself unless calls outrun it.
    #[default]
    Fresh,
    /// Warm instances are kept and reused, which makes a call cost about as much as the
    /// plugin's own work (a few µs). The price: a plugin can keep state between calls (its
    /// globals, its heap), so one call can influence the next of the same grant. An instance
    /// only ever serves one grant (grants that share a policy never share an instance), and
    /// is thrown away after any trap and after `recycle_after` calls, which bounds how long
    /// state can live.
    Pooled,
}

/// Limits on one plugin's evaluations. Each says what raising it costs.
#[derive(Clone, Debug)]
pub struct PluginLimits {
    /// Fuel per evaluation, reported as "instructions": deterministic, so a plugin that passes
    /// its cases passes them on every machine. It does not count time spent in host imports,
    /// which is what `timeout` is for. Default 50 million (tens of ms of pure computation).
    pub fuel: u64,
    /// Wall-clock backstop per evaluation, counted in epoch ticks of 5 ms. Default 250 ms.
    /// A plugin runs on the calling session's thread: this is the longest a call can wait.
    pub timeout: Duration,
    /// Memory per instance: one budget for all its linear memories (a component may have
    /// several) and tables together. A std guest starts at about 1.1 MiB. Default 32 MiB.
    pub memory_bytes: usize,
    /// Largest `arguments` JSON passed in. Default 1 MiB; a larger call is denied.
    pub max_input_bytes: usize,
    /// Largest `config` JSON. Default 64 KiB; a larger config fails the policy load.
    pub max_config_bytes: usize,
    /// Longest reason a plugin may return. Default 1 KiB; a longer one is a malformed
    /// result, and the call is denied with a reason saying so.
    pub max_reason_bytes: usize,
    /// Pooled mode: an instance serves at most this many calls. Default 1000.
    pub recycle_after: u32,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            fuel: 50_000_000,
            timeout: Duration::from_millis(250),
            memory_bytes: 32 << 20,
            max_input_bytes: 1 << 20,
            max_config_bytes: 64 << 10,
            max_reason_bytes: 1024,
            recycle_after: 1000,
        }
    }
}

/// Why a plugin did not load.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file could not be read.
    #[error("cannot read `{path}`: {source}")]
    Read {
        /// The resolved path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The content does not have the digest the policy pins.
    #[error(
        "digest mismatch for `{path}`: the policy pins sha256 {expected}, the file has {actual}"
    )]
    DigestMismatch {
        /// The resolved path.
        path: String,
        /// What the policy says.
        expected: String,
        /// What the file has.
        actual: String,
    },
    /// The file is not a component, or does not implement toolgate's world.
    #[error("`{path}` is not a usable plugin: {reason}")]
    Invalid {
        /// The resolved path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The engine could not be set up.
    #[error("the plugin engine cannot start: {0}")]
    Engine(String),
}

/// One engine for the process, with the linker every plugin is instantiated through.
pub struct PluginRuntime {
    engine: Engine,
    linker: Linker<EvalState>,
    /// The on-disk compile cache, `None` when it is off.
    cache: Option<CompileCache>,
    /// Compiled components by content digest: each is compiled once per process.
    compiled: Mutex<HashMap<String, Component>>,
    /// The background thread that prepares and tears down instances.
    chores: Chores,
}

/// The queue to the background thread, and how many discards it holds.
#[derive(Clone)]
struct Chores {
    queue: Sender<Chore>,
    discards: Arc<std::sync::atomic::AtomicUsize>,
}

/// Work kept off the request path.
enum Chore {
    /// Instantiate never-used instances until the plugin has [`PREPARED`] ready.
    Prepare(Weak<Plugin>),
    /// Drop a used instance: resetting its memory slot costs several µs.
    Discard(Box<Warm>),
}

fn do_chores(
    chores: std::sync::mpsc::Receiver<Chore>,
    discards: Arc<std::sync::atomic::AtomicUsize>,
) {
    for chore in chores {
        match chore {
            Chore::Discard(warm) => {
                drop(warm);
                discards.fetch_sub(1, Ordering::AcqRel);
            }
            Chore::Prepare(plugin) => {
                let Some(plugin) = plugin.upgrade() else {
                    continue;
                };
                while plugin.ready_len() < PREPARED {
                    match plugin.instantiate() {
                        Ok(warm) => plugin.idle().push(warm),
                        Err(reason) => {
                            tracing::warn!(plugin = %plugin.name, %reason, "cannot prepare an instance");
                            break;
                        }
                    }
                }
                plugin.preparing.store(false, Ordering::Release);
            }
        }
    }
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

    /// A runtime with its own engine; `cache_dir` holds precompiled artifacts (`None`: no disk cache).
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self, PluginError> {
        let engine_error = |e: wasmtime::Error| PluginError::Engine(format!("{e:#}"));
        let mut pool = PoolingAllocationConfig::default();
        // Slots for instances alive at once (pooled warm instances plus fresh ones in flight).
        pool.total_component_instances(256)
            .total_core_instances(1024)
            .total_memories(512)
            .total_tables(512)
            .max_memories_per_component(4)
            .max_tables_per_component(4)
            .max_memory_size(256 << 20)
            // Reset a freed memory by rewriting only the pages the last instance dirtied
            // (PAGEMAP_SCAN, Linux 6.7+) or a memset of the low addresses, instead of an
            // madvise that drops the pages and makes the next instance fault them back in.
            .linear_memory_keep_resident(4 << 20)
            .table_keep_resident(64 << 10)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut config = wasmtime::Config::new();
        config
            .wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(engine_error)?;
        let mut linker = Linker::new(&engine);
        bindings::toolgate::policy::types::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(engine_error)?;
        bindings::toolgate::policy::counters::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(engine_error)?;
        bindings::toolgate::policy::clock::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(engine_error)?;
        bindings::toolgate::policy::log::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(engine_error)?;
        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| PluginError::Engine(e.to_string()))?;
        let (queue, todo) = channel();
        let chores = Chores {
            queue,
            discards: Arc::default(),
        };
        let discards = chores.discards.clone();
        std::thread::Builder::new()
            .name("plugin-chores".into())
            .spawn(move || do_chores(todo, discards))
            .map_err(|e| PluginError::Engine(e.to_string()))?;
        let cache = cache_dir.map(|dir| CompileCache::new(dir, engine_name(&engine)));
        Ok(Self {
            engine,
            linker,
            cache,
            compiled: Mutex::new(HashMap::new()),
            chores,
        })
    }

    fn compile(&self, digest: &str, bytes: &[u8], path: &str) -> Result<Component, PluginError> {
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
            unsafe { Component::deserialize(&self.engine, &artifact) }
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
                    Component::new(&self.engine, bytes).map_err(|e| PluginError::Invalid {
                        path: path.to_owned(),
                        reason: format!("{e:#}"),
                    })?;
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

    /// Loads, verifies, compiles and pre-instantiates the plugin at `path`.
    pub fn load(
        &self,
        name: &str,
        path: &Path,
        sha256: Option<&str>,
        isolation: Isolation,
        limits: PluginLimits,
    ) -> Result<Arc<Plugin>, PluginError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| PluginError::Read {
            path: shown.clone(),
            source,
        })?;
        let digest = crate::digest::sha256_hex(&bytes);
        match sha256 {
            Some(expected) if !expected.eq_ignore_ascii_case(&digest) => {
                return Err(PluginError::DigestMismatch {
                    path: shown,
                    expected: expected.to_owned(),
                    actual: digest,
                })
            }
            Some(_) => {}
            None => {
                tracing::warn!(plugin = name, path = %shown, sha256 = %digest, "plugin loaded without a pinned sha256")
            }
        }
        let invalid = |reason: String| PluginError::Invalid {
            path: shown.clone(),
            reason,
        };
        if !build::is_component(&bytes) {
            let reason = if build::is_core_module(&bytes) {
                "it is a core wasm module, not a component; build it with `toolgate plugin build`"
                    .to_owned()
            } else {
                "it is not WebAssembly (truncated, or another file)".to_owned()
            };
            return Err(invalid(reason));
        }
        let component = self.compile(&digest, &bytes, &shown)?;
        // Imports the host does not grant: WASI (from a guest's standard library) links to
        // functions that trap when called; anything else fails the load here.
        for (import, _) in component.component_type().imports(&self.engine) {
            if !import.starts_with("wasi:") && !import.starts_with("toolgate:policy/") {
                return Err(invalid(format!(
                    "it imports `{import}`, which toolgate does not grant"
                )));
            }
        }
        let mut linker = self.linker.clone();
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(|e| invalid(format!("{e:#}")))?;
        let instance_pre = linker
            .instantiate_pre(&component)
            .map_err(|e| invalid(format!("{e:#}")))?;
        let pre = bindings::PolicyPre::new(instance_pre).map_err(|e| {
            invalid(format!(
                "it does not implement toolgate's `policy` world: {e:#}"
            ))
        })?;
        let plugin = Arc::new_cyclic(|me| Plugin {
            name: Arc::from(name),
            path: path.to_owned(),
            digest,
            engine: self.engine.clone(),
            pre,
            isolation,
            limits,
            idle: Mutex::new(Vec::new()),
            rule: format!("plugins.{name}"),
            me: me.clone(),
            chores: self.chores.clone(),
            preparing: AtomicBool::new(false),
        });
        let metadata = plugin.metadata().map_err(invalid)?;
        tracing::info!(plugin = name, sha256 = %plugin.digest, metadata.name, metadata.version, ?isolation, "pre-instantiated plugin");
        plugin.prepare();
        Ok(plugin)
    }
}

/// Names what makes an artifact unusable elsewhere: the wasmtime version and the engine's
/// configuration. Part of a cache entry's name and of its tag.
fn engine_name(engine: &Engine) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("wasmtime{WASMTIME_VERSION}-{:016x}", hasher.finish())
}

/// An instance with its store: ready (never used) for a fresh plugin, warm for a pooled one.
struct Warm {
    store: Store<EvalState>,
    instance: bindings::Policy,
    calls: u32,
    /// The grant it serves: set by its first call, `None` until then. It never serves another.
    grant: Option<String>,
    /// The call record, its strings reused from call to call.
    call: wit::ToolCall,
}

/// Replaces `buf`'s text without allocating, unless it grows (a huge call's buffer shrinks back).
fn refill(buf: &mut String, text: &str) {
    buf.clear();
    buf.shrink_to(64 << 10);
    buf.push_str(text);
}

/// A loaded plugin: one pre-instantiated component, ready to evaluate.
pub struct Plugin {
    name: Arc<str>,
    /// The file it was loaded from.
    path: PathBuf,
    digest: String,
    engine: Engine,
    pre: bindings::PolicyPre<EvalState>,
    isolation: Isolation,
    limits: PluginLimits,
    /// Instances waiting for a call: never used (fresh), or warm for one grant each (pooled),
    /// least recently used first.
    idle: Mutex<Vec<Warm>>,
    /// `plugins.<name>`: the rule its decisions report.
    rule: String,
    me: Weak<Plugin>,
    chores: Chores,
    /// A `Prepare` chore is queued or running.
    preparing: AtomicBool,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("sha256", &self.digest)
            .finish()
    }
}

/// What the plugin sees of a call.
pub struct PluginCall<'a> {
    /// The tool's name.
    pub tool: &'a str,
    /// The arguments as JSON text.
    pub arguments: &'a str,
    /// The calling grant.
    pub grant: &'a str,
    /// The calling session.
    pub session: &'a str,
    /// The upstream's name, empty if unknown.
    pub server: &'a str,
    /// The tool's MCP annotations, if the upstream listed them.
    pub annotations: Option<crate::call::ToolAnnotations>,
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

impl Plugin {
    /// The name the policy gives the plugin.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The sha256 of the component's bytes.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn new_store(&self) -> Store<EvalState> {
        let limits = MemoryBudget::new(self.limits.memory_bytes, 8);
        let mut store = Store::new(&self.engine, EvalState::idle(self.name.clone(), limits));
        store.limiter(|state| &mut state.limits);
        store
    }

    fn arm(&self, store: &mut Store<EvalState>) -> Result<(), String> {
        self.arm_for(store, self.limits.timeout)
    }

    /// Arms fuel and a deadline of `timeout` (rounded to epoch ticks, at least one).
    fn arm_for(&self, store: &mut Store<EvalState>, timeout: Duration) -> Result<(), String> {
        store
            .set_fuel(self.limits.fuel)
            .map_err(|e| e.to_string())?;
        let ticks = (timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        Ok(())
    }

    /// Load-time calls (`metadata`, `validate-config`) are on no request's path: they get the
    /// plugin's timeout or [`LOAD_TIMEOUT`], whichever is longer, so that a plugin with a
    /// tight per-call deadline still loads on a busy machine.
    fn arm_for_load(&self, store: &mut Store<EvalState>) -> Result<(), String> {
        self.arm_for(store, self.limits.timeout.max(LOAD_TIMEOUT))
    }

    /// Calls `metadata` on a fresh instance (part of loading).
    pub fn metadata(&self) -> Result<PluginMetadata, String> {
        let mut store = self.new_store();
        self.arm_for_load(&mut store)?;
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| format!("cannot instantiate it: {e:#}"))?;
        let m = instance
            .call_metadata(&mut store)
            .map_err(|e| self.describe(&e, &store))?;
        Ok(PluginMetadata {
            name: m.name,
            version: m.version,
            description: m.description,
        })
    }

    /// Runs the plugin's `validate-config` on `config` (JSON text).
    pub fn validate_config(&self, config: &str) -> Result<(), String> {
        if config.len() > self.limits.max_config_bytes {
            return Err(format!(
                "config of {} bytes exceeds the {}-byte cap",
                config.len(),
                self.limits.max_config_bytes
            ));
        }
        let mut store = self.new_store();
        self.arm_for_load(&mut store)?;
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| format!("cannot instantiate it: {e:#}"))?;
        match instance.call_validate_config(&mut store, config) {
            Ok(result) => result.map_err(|reason| truncate(&reason, self.limits.max_reason_bytes)),
            Err(e) => Err(self.describe(&e, &store)),
        }
    }

    /// Why an evaluation failed, in words: the cause, never a Rust type name.
    fn describe(&self, error: &wasmtime::Error, store: &Store<EvalState>) -> String {
        let used = self
            .limits
            .fuel
            .saturating_sub(store.get_fuel().unwrap_or(0));
        let chain = format!("{error:#}");
        if let Some(refused) = error.downcast_ref::<ImportRefused>() {
            return refused.to_string();
        }
        if error.downcast_ref::<BudgetExceeded>().is_some() {
            return format!(
                "exceeded its memory cap of {} MiB (all its memories and tables together)",
                self.limits.memory_bytes >> 20
            );
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => format!("ran out of fuel after {used} instructions"),
            Some(Trap::Interrupt) => {
                format!("timed out after {} ms", self.limits.timeout.as_millis())
            }
            _ if chain.contains("growing memory") => {
                format!(
                    "exceeded its memory cap of {} MiB",
                    self.limits.memory_bytes >> 20
                )
            }
            _ if chain.contains("log cap exceeded") => {
                format!("exceeded the log cap of {LOG_BYTES_PER_EVALUATION} bytes per evaluation")
            }
            _ if chain.contains("unknown import") || chain.contains("has not been defined") => {
                let import = chain.split('`').nth(1).unwrap_or("an import");
                // Rust's panic handler reads the environment (RUST_BACKTRACE), then writes the
                // message to stderr: both are WASI, so a panic shows up as this trap.
                let panic = if import.starts_with("wasi:cli/environment")
                    || import.starts_with("wasi:cli/stderr")
                {
                    " (the plugin panicked, most likely: its panic handler reads the environment and writes stderr)"
                } else {
                    ""
                };
                format!("trapped calling `{import}`, which toolgate does not grant{panic}")
            }
            Some(Trap::UnreachableCodeReached) => {
                "trapped: unreachable code reached (a panic or abort in the plugin)".to_owned()
            }
            Some(trap) => format!("trapped: {trap}"),
            None => format!("failed: {chain}"),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Warm>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ready_len(&self) -> usize {
        self.idle().len()
    }

    /// A fresh plugin: asks the background thread to top up the ready instances.
    fn prepare(&self) {
        if self.isolation == Isolation::Fresh
            && !self.preparing.swap(true, Ordering::AcqRel)
            && self
                .chores
                .queue
                .send(Chore::Prepare(self.me.clone()))
                .is_err()
        {
            self.preparing.store(false, Ordering::Release);
        }
    }

    fn instantiate(&self) -> Result<Warm, String> {
        let mut store = self.new_store();
        self.arm(&mut store)?;
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| format!("cannot instantiate it: {e:#}"))?;
        Ok(Warm {
            store,
            instance,
            calls: 0,
            grant: None,
            call: wit::ToolCall {
                tool: String::new(),
                arguments: String::new(),
                grant: String::new(),
                session: String::new(),
                server: String::new(),
                annotations: None,
            },
        })
    }

    /// An idle instance that may serve `grant` (never used, or warm from `grant`'s own calls),
    /// else a new one made here and now. It is `grant`'s from now on.
    fn take_instance(&self, grant: &str) -> Result<Warm, String> {
        let idle = {
            let mut idle = self.idle();
            idle.iter()
                .rposition(|warm| warm.grant.as_deref().is_none_or(|g| g == grant))
                .map(|i| idle.remove(i))
        };
        self.prepare();
        let mut warm = match idle {
            Some(warm) => warm,
            None => self.instantiate()?,
        };
        if warm.grant.is_none() {
            warm.grant = Some(grant.to_owned());
        }
        Ok(warm)
    }

    /// After a call: a pooled instance that may serve again goes back, any other is torn
    /// down on the background thread.
    fn release(&self, mut warm: Warm, reusable: bool) {
        warm.calls += 1;
        if reusable && self.isolation == Isolation::Pooled && warm.calls < self.limits.recycle_after
        {
            let mut idle = self.idle();
            idle.push(warm);
            if idle.len() <= POOLED_IDLE {
                return;
            }
            warm = idle.remove(0);
        }
        let discards = &self.chores.discards;
        if discards.fetch_add(1, Ordering::AcqRel) >= DISCARDS_QUEUED
            || self
                .chores
                .queue
                .send(Chore::Discard(Box::new(warm)))
                .is_err()
        {
            // Torn down here (in the `send` error, if that is what failed).
            discards.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Evaluates one call. Never fails: a failure is a deny that names the plugin and the cause.
    pub fn evaluate(
        &self,
        call: &PluginCall<'_>,
        config: &str,
        counters: &Arc<dyn CounterStore>,
    ) -> PluginOutcome {
        let rule = self.rule.clone();
        let failed = |reason: String, reservations: Vec<Reservation>, instructions| PluginOutcome {
            decision: Decision::deny(rule.clone(), format!("plugin `{}` {reason}", self.name)),
            reservations,
            instructions,
            peak_memory: 0,
        };
        if call.arguments.len() > self.limits.max_input_bytes {
            let reason = format!(
                "was not run: arguments of {} bytes exceed its {}-byte input cap",
                call.arguments.len(),
                self.limits.max_input_bytes
            );
            return failed(reason, Vec::new(), 0);
        }
        let mut warm = match self.take_instance(call.grant) {
            Ok(warm) => warm,
            Err(reason) => return failed(reason, Vec::new(), 0),
        };
        if let Err(reason) = self.arm(&mut warm.store) {
            return failed(reason, Vec::new(), 0);
        }
        {
            let state = warm.store.data_mut();
            state.counters = Some(counters.clone());
            refill(&mut state.grant, call.grant);
            refill(&mut state.session, call.session);
            state.start_evaluation();
        }
        let record = &mut warm.call;
        refill(&mut record.tool, call.tool);
        refill(&mut record.arguments, call.arguments);
        refill(&mut record.grant, call.grant);
        refill(&mut record.session, call.session);
        refill(&mut record.server, call.server);
        record.annotations = call.annotations.map(|a| wit::Annotations {
            read_only_hint: a.read_only_hint,
            destructive_hint: a.destructive_hint,
            idempotent_hint: a.idempotent_hint,
            open_world_hint: a.open_world_hint,
        });
        let result = warm
            .instance
            .call_evaluate(&mut warm.store, &warm.call, config);
        let instructions = self
            .limits
            .fuel
            .saturating_sub(warm.store.get_fuel().unwrap_or(0));
        let (reservations, peak_memory) = {
            let state = warm.store.data_mut();
            state.counters = None;
            (std::mem::take(&mut state.reservations), state.limits.peak)
        };
        let decision = match result {
            Err(e) => {
                // After a trap the instance refuses further calls: it is discarded.
                let reason = self.describe(&e, &warm.store);
                self.release(warm, false);
                tracing::warn!(plugin = %self.name, %reason, "plugin failed; the call is denied");
                return PluginOutcome {
                    peak_memory,
                    ..failed(reason, reservations, instructions)
                };
            }
            Ok(decision) => decision,
        };
        self.release(warm, true);
        let max = self.limits.max_reason_bytes;
        let reason_len = match &decision {
            wit::Decision::Allow => 0,
            wit::Decision::Deny(reason) | wit::Decision::RequireApproval(reason) => reason.len(),
            wit::Decision::RateLimited(r) => r.reason.len(),
        };
        if reason_len > max {
            let reason = format!(
                "returned a malformed result: a reason of {reason_len} bytes, over the {max}-byte cap"
            );
            return PluginOutcome {
                peak_memory,
                ..failed(reason, reservations, instructions)
            };
        }
        let decision = match decision {
            wit::Decision::Allow => Decision::allow(rule),
            wit::Decision::Deny(reason) => Decision::deny(rule, reason),
            wit::Decision::RequireApproval(reason) => Decision {
                verdict: Verdict::RequireApproval,
                rule,
                reason: format!("{reason} (approval not configured: this gateway has no approvers, so calls that need approval are refused)"),
                retry_after_ms: None,
            },
            wit::Decision::RateLimited(r) => Decision {
                verdict: Verdict::RateLimited,
                rule,
                reason: r.reason,
                retry_after_ms: Some(r.retry_after_ms),
            },
        };
        PluginOutcome {
            decision,
            reservations,
            instructions,
            peak_memory,
        }
    }
}

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
    use wasmtime::{Memory, MemoryType};

    /// A component may define several memories: they spend one budget, on the real engine.
    #[test]
    fn the_memories_of_one_store_spend_one_budget() {
        let runtime = PluginRuntime::new(None).unwrap();
        let budget = MemoryBudget::new(4 << 20, 8);
        let mut store = Store::new(&runtime.engine, EvalState::idle("t".into(), budget));
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
}
