//! Named counters over sliding windows: the state behind every rate limit.
//!
//! A counter is identified by its name and a scope value (the grant, the MCP session, or
//! nothing for a global counter). [`CounterStore::consume`] is the only way in: it checks every
//! requested counter and takes one unit from each **atomically, all or nothing**, so two
//! callers racing for the last unit can never both win, and a call limited by its second counter
//! does not spend its first. A backend that lives elsewhere (Redis) implements the same two
//! calls with a script; nothing else about counters leaks into the policy engine.
//!
//! A call takes **one unit per distinct counter** (name and scope value), however many of its
//! limits name it: a counter in both `all_tools.limits` and the rule's limits, or with a
//! minute and an hour window, takes one unit, which every window naming it must admit. So a
//! cap of `max` admits exactly `max` calls, whichever limits spell it.
//!
//! ## Why an exact sliding window
//! The store keeps the timestamp of every unit consumed within the window (a sliding log) and
//! admits a call only while fewer than `max` timestamps lie in `(now - window, now]`. So **no
//! interval of the window's length ever admits more than `max`**. A fixed window (reset every
//! minute on the minute) is cheaper, but admits `max` calls at 00:59 and `max` more at 01:00:
//! twice the limit inside two seconds, which is exactly the burst a rate cap exists to stop.
//! The cost is memory: up to `max` timestamps (8 bytes each) per live counter.

use crate::clock::Clock;
use std::sync::Arc;

#[cfg(test)]
mod conformance;
mod memory;
mod redis;
mod sqlite;
mod state;

pub use self::redis::{ClockSource, OnError, RedisCounterStore, RedisOptions};
pub use memory::MemoryCounterStore;
pub use sqlite::SqliteCounterStore;
pub use state::{StateError, StateLimits, StateSpace, MAX_STATE_KEY_BYTES};

/// The store a spec names: `memory` (the default: this process only), or `sqlite:PATH` (a
/// file several processes on one machine share, kept across restarts).
pub fn open(spec: &str, clock: Arc<dyn Clock>) -> Result<Arc<dyn CounterStore>, String> {
    if spec == "memory" {
        return Ok(Arc::new(MemoryCounterStore::new(clock)));
    }
    if let Some(path) = spec.strip_prefix("sqlite:") {
        if path.is_empty() {
            return Err(
                "`sqlite:` needs a file path: `sqlite:/var/lib/toolgate/counters.sqlite`".into(),
            );
        }
        let store = SqliteCounterStore::open(
            std::path::Path::new(path),
            clock,
            sqlite::DEFAULT_BUSY_TIMEOUT,
        )
        .map_err(|e| format!("cannot open the SQLite counter store `{path}`: {e}"))?;
        return Ok(Arc::new(store));
    }
    if spec.starts_with("redis://")
        || spec.starts_with("rediss://")
        || spec.starts_with("redis+unix://")
        || spec.starts_with("unix://")
    {
        let (url, options) = redis_options(spec)?;
        return Ok(Arc::new(RedisCounterStore::connect(&url, options, clock)?));
    }
    Err(format!(
        "unknown counter store `{spec}`: `memory`, `sqlite:PATH` or `redis://HOST:PORT/DB`"
    ))
}

/// The Redis URL without toolgate's own query parameters (`key_prefix`, `timeout_ms`,
/// `on_error`, `clock`), and the options they give.
fn redis_options(spec: &str) -> Result<(String, RedisOptions), String> {
    let mut url = url::Url::parse(spec).map_err(|e| format!("bad Redis URL `{spec}`: {e}"))?;
    let mut options = RedisOptions::default();
    let mut kept = Vec::new();
    for (name, value) in url.query_pairs() {
        match &*name {
            "key_prefix" => options.key_prefix = value.into_owned(),
            "timeout_ms" => {
                let ms: u64 = value
                    .parse()
                    .ok()
                    .filter(|ms| (1..=10_000).contains(ms))
                    .ok_or_else(|| format!("`timeout_ms` is 1..=10000 ms, not `{value}`"))?;
                options.timeout = std::time::Duration::from_millis(ms);
            }
            "on_error" => {
                options.on_error = match &*value {
                    "closed" => OnError::Closed,
                    "open" => OnError::Open,
                    "local" => OnError::Local,
                    other => {
                        return Err(format!(
                            "`on_error` is `closed`, `open` or `local`, not `{other}`"
                        ))
                    }
                }
            }
            "clock" => {
                options.clock = match &*value {
                    "redis" => ClockSource::Redis,
                    "gateway" => ClockSource::Gateway,
                    other => return Err(format!("`clock` is `redis` or `gateway`, not `{other}`")),
                }
            }
            _ => kept.push((name.into_owned(), value.into_owned())),
        }
    }
    if kept.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok((url.to_string(), options))
}

/// Who shares a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// One count per grant (agent identity): every session of the agent shares it.
    Grant,
    /// One count per MCP session (one client connection).
    Session,
    /// One count for everybody.
    Global,
}

impl Scope {
    /// The scope's name as policies write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Grant => "grant",
            Scope::Session => "session",
            Scope::Global => "global",
        }
    }
}

/// The identity of one counter: its owner and name plus the scope value it is kept for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CounterKey {
    /// `None` for the policy's own counters (its limits, and those it grants a plugin by
    /// name); a plugin's name for the counters that plugin keeps for itself. A plugin's own
    /// counters can never be the policy's or another plugin's, whatever their names.
    pub owner: Option<std::sync::Arc<str>>,
    /// The counter's name from the policy (or the plugin).
    pub counter: Arc<str>,
    /// `grant:<name>`, `session:<id>` or `global`.
    pub scope_value: Arc<str>,
}

impl CounterKey {
    /// The key of `counter` as seen by a call from `grant` in `session`. A key is made for
    /// every limit of every call: the name is shared with the policy, and the scope's value
    /// with the last key this thread made for the same grant or session.
    pub fn new(counter: impl Into<Arc<str>>, scope: Scope, grant: &str, session: &str) -> Self {
        Self {
            owner: None,
            counter: counter.into(),
            scope_value: scope_value(scope, grant, session),
        }
    }

    /// The same counter, kept apart as `plugin`'s own.
    pub fn owned_by(self, plugin: std::sync::Arc<str>) -> Self {
        Self {
            owner: Some(plugin),
            ..self
        }
    }
}

/// The longest window a counter may have: a week. Every unit is kept (as a timestamp) for its
/// window, so a longer window holds memory for longer; policies and plugins are held to it.
/// `grant:<name>`, `session:<id>` or `global`, shared with the last value this thread made for
/// the same scope when it names the same grant or session (a gateway's calls mostly do).
fn scope_value(scope: Scope, grant: &str, session: &str) -> Arc<str> {
    use std::cell::RefCell;
    thread_local! {
        static LAST: RefCell<[Option<Arc<str>>; 3]> = const { RefCell::new([None, None, None]) };
    }
    let (slot, prefix, name) = match scope {
        Scope::Grant => (0, "grant:", grant),
        Scope::Session => (1, "session:", session),
        Scope::Global => (2, "global", ""),
    };
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        match &last[slot] {
            Some(value)
                if value.len() == prefix.len() + name.len()
                    && value.starts_with(prefix)
                    && value.ends_with(name) =>
            {
                value.clone()
            }
            _ => {
                let value: Arc<str> = Arc::from(format!("{prefix}{name}"));
                last[slot] = Some(value.clone());
                value
            }
        }
    })
}

pub const MAX_WINDOW_MS: u64 = 7 * 86_400_000;

/// How many units a window admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Units admitted per window; at least 1.
    pub max: u64,
    /// The window's length in milliseconds; at least 1.
    pub length_ms: u64,
}

/// One unit taken from one counter, returned by [`CounterStore::consume`] so it can be refunded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    key: CounterKey,
    at_ms: u64,
    /// Which unit, where a store tells units apart (the SQLite row, the Redis member): a
    /// refund removes exactly that one, once.
    unit: u64,
}

impl Reservation {
    /// When the unit was taken, in the store's clock's milliseconds.
    pub fn at_ms(&self) -> u64 {
        self.at_ms
    }
}

/// A request that [`CounterStore::consume`] refused: the window that is full and when the call
/// would be admitted. When several are full, it is the one that frees up last: a retry any
/// earlier would be refused by it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exhausted {
    /// Index into the requests of the window that refused (the one full the longest).
    pub index: usize,
    /// Milliseconds until every requested window has room for one more unit.
    pub retry_after_ms: u64,
}

/// Why [`CounterStore::consume`] took nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A window is full.
    Exhausted(Exhausted),
    /// The store could not be asked (a server that does not answer in time): nothing is
    /// counted, so a limited call is refused (fail closed). The text names the store.
    Unavailable(String),
}

impl Refusal {
    /// The full window, if that is why.
    pub fn exhausted(&self) -> Option<&Exhausted> {
        match self {
            Refusal::Exhausted(e) => Some(e),
            Refusal::Unavailable(_) => None,
        }
    }
}

impl From<Exhausted> for Refusal {
    fn from(e: Exhausted) -> Self {
        Refusal::Exhausted(e)
    }
}

/// Storage for counters. Implementations must make `consume` atomic across all its requests.
pub trait CounterStore: Send + Sync {
    /// Takes one unit from every distinct key in `requests`, or from none of them. A key that
    /// appears several times (with the same or different windows) takes one unit, admitted
    /// only if each of its windows has room for it; one [`Reservation`] is returned per key.
    fn consume(&self, requests: &[(CounterKey, Window)]) -> Result<Vec<Reservation>, Refusal>;
    /// Gives back units taken by `consume` (the call never ran upstream).
    fn refund(&self, reservations: &[Reservation]);
    /// The store's clock, in milliseconds: what plugins see as "now".
    fn now_ms(&self) -> u64;
    /// Whether `consume` may wait on another machine (an async worker then steps aside).
    fn may_block(&self) -> bool {
        false
    }
    /// How the store is doing, for `/status` (a remote store: reachable or degraded).
    fn status(&self) -> serde_json::Value {
        serde_json::json!({"state": "ok"})
    }
    /// The live value of `key` in `space` (see `state.rs`).
    fn state_get(&self, _space: StateSpace<'_>, _key: &str) -> Result<Option<String>, StateError> {
        Err(StateError::Unavailable(
            "this counter store keeps no plugin state".into(),
        ))
    }
    /// Stores `value` under `key` in `space` for `ttl`, replacing any value it had, or
    /// nothing when that would break one of `limits`.
    fn state_set(
        &self,
        _space: StateSpace<'_>,
        _key: &str,
        _value: &str,
        _ttl: std::time::Duration,
        _limits: &StateLimits,
    ) -> Result<(), StateError> {
        Err(StateError::Unavailable(
            "this counter store keeps no plugin state".into(),
        ))
    }
    /// Removes `key`'s entry in `space`, if any.
    fn state_delete(&self, _space: StateSpace<'_>, _key: &str) -> Result<(), StateError> {
        Err(StateError::Unavailable(
            "this counter store keeps no plugin state".into(),
        ))
    }
}

#[cfg(test)]
mod tests;
