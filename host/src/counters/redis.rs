//! Counters in Redis, shared by every gateway replica: the same exact sliding logs, one Lua
//! script per call ([`consume.lua`](consume.lua)) that checks every counter the call needs and
//! adds a unit to all of them only if all have room.
//!
//! - **One clock.** The script reads Redis's `TIME` by default, so replicas whose clocks
//!   disagree cannot widen a window. `clock = "gateway"` sends the gateway's time instead,
//!   for services that refuse `TIME` in scripts: then the bound holds only up to the
//!   replicas' clock skew.
//! - **Exact refunds.** Every unit is a sorted-set member with a random id of its own; a
//!   refund removes exactly that member (`ZREM`), so repeating it changes nothing.
//! - **Called by hash.** The script is sent by its SHA-1 (`EVALSHA`); a server that lost it
//!   (a restart, a failover, `SCRIPT FLUSH`) is sent the script again, transparently.
//! - **One slot.** Every key carries the hash tag `{counters}`: a call's keys (its grant's
//!   counters and the global ones) always share a Redis Cluster slot.
//! - **Fail closed.** The store is asked within `timeout` (default 50 ms). When it does not
//!   answer, `on_error` decides: `closed` (the default) refuses every counter-limited call
//!   as `rate_limited` naming the store; `open` admits without counting; `local` counts in
//!   this replica's memory (each replica then admits up to `max`: at most (replicas+1)×max
//!   in a window across the switch). After a failure the store is not asked again for a
//!   second (a circuit breaker), so an outage does not add `timeout` to every call; the
//!   switch to degraded and back is logged and reported in `/status`. Plugin state fails
//!   closed under `open` too (see [`redis_state`](redis_state.rs)).
//!
//! Plugin state lives here too ([`redis_state`](redis_state.rs), one script per operation).

use super::{
    CounterKey, CounterStore, Exhausted, MemoryCounterStore, Refusal, Reservation, StateError,
    StateLimits, StateSpace, Window,
};
use crate::clock::Clock;
use redis::aio::ConnectionManager;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// How long a replica waits for Redis by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

/// How long the breaker keeps a failed store from being asked.
const BREAKER: Duration = Duration::from_secs(1);

/// What to do when Redis does not answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    /// Refuse every counter-limited call (the default).
    Closed,
    /// Admit without counting.
    Open,
    /// Count in this replica's memory.
    Local,
}

/// Whose clock the windows use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockSource {
    /// Redis's `TIME` (the default).
    Redis,
    /// The gateway's.
    Gateway,
}

/// How to reach and use the store.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    pub key_prefix: String,
    pub timeout: Duration,
    pub on_error: OnError,
    pub clock: ClockSource,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            key_prefix: "toolgate:".into(),
            timeout: DEFAULT_TIMEOUT,
            on_error: OnError::Closed,
            clock: ClockSource::Redis,
        }
    }
}

/// Counters in Redis.
pub struct RedisCounterStore {
    url: String,
    options: RedisOptions,
    clock: Arc<dyn Clock>,
    /// Its own runtime: the store is called from plain threads (stdio) and async workers alike.
    runtime: tokio::runtime::Runtime,
    connection: ConnectionManager,
    script: Arc<redis::Script>,
    /// Plugin state's ([`state.lua`](state.lua)).
    state_script: Arc<redis::Script>,
    /// Until when (gateway ms) the store is not asked, after a failure; 0 when healthy.
    degraded_until: AtomicU64,
    /// Since when (gateway ms) it has been failing; 0 when healthy.
    degraded_since: AtomicU64,
    /// The last failure, for status.
    last_error: Mutex<Option<String>>,
    /// `on_error = "local"`'s counts.
    local: MemoryCounterStore,
}

impl RedisCounterStore {
    /// Connects to `url` (`redis://HOST:PORT/DB`, `redis+unix:///PATH`); fails when Redis does
    /// not answer within a few seconds.
    pub fn connect(
        url: &str,
        options: RedisOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("counters-redis")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the Redis client: {e}"))?;
        let client = redis::Client::open(url).map_err(|e| format!("bad Redis URL `{url}`: {e}"))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(options.timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let connection = runtime
            .block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(5),
                    client.get_connection_manager_with_config(config),
                )
                .await
            })
            .map_err(|_| format!("Redis at `{url}` did not answer within 5 s"))?
            .map_err(|e| format!("cannot connect to Redis at `{url}`: {e}"))?;
        // Loaded now, so that the first call is one round trip (it is sent again by hash
        // whenever the server loses it).
        let script = Arc::new(redis::Script::new(include_str!("consume.lua")));
        let state_script = Arc::new(redis::Script::new(include_str!("state.lua")));
        for loaded in [&script, &state_script] {
            let (script, mut connection) = (loaded.clone(), connection.clone());
            runtime
                .block_on(async move { script.prepare_invoke().load_async(&mut connection).await })
                .map_err(|e| format!("Redis at `{url}` refused the counting script: {e}"))?;
        }
        Ok(Self {
            url: url.to_owned(),
            local: MemoryCounterStore::new(clock.clone()),
            options,
            clock,
            runtime,
            connection,
            script,
            state_script,
            degraded_until: AtomicU64::new(0),
            degraded_since: AtomicU64::new(0),
            last_error: Mutex::new(None),
        })
    }

    /// `{store, url, state: "ok" | "degraded", since_ms, error, on_error}` for `/status`.
    fn status_now(&self) -> serde_json::Value {
        let since = self.degraded_since.load(Ordering::Relaxed);
        serde_json::json!({
            "store": "redis",
            "url": redact(&self.url),
            "state": if since == 0 { "ok" } else { "degraded" },
            "since_ms": (since != 0).then_some(since),
            "error": self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            "on_error": format!("{:?}", self.options.on_error).to_lowercase(),
        })
    }

    /// One `PING` through the same connection and hand-off as a call's script: the floor a
    /// counted call's cost is measured against.
    pub fn ping(&self) -> Result<(), String> {
        let mut connection = self.connection.clone();
        self.ask(async move {
            redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
        })
        .map(drop)
    }

    /// The Redis key of a counter's units (and, with `:longest`, of its longest window).
    fn key(&self, key: &CounterKey) -> String {
        let encoded =
            serde_json::to_string(&(key.owner.as_deref(), &*key.counter, &*key.scope_value))
                .unwrap_or_default();
        format!("{}{{counters}}:{encoded}", self.options.key_prefix)
    }

    /// Runs `f` on the store's runtime and waits for it, up to the timeout.
    fn ask<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>> + Send + 'static,
    ) -> Result<T, String> {
        let (tx, rx) = mpsc::sync_channel(1);
        let timeout = self.options.timeout;
        self.runtime.spawn(async move {
            let answer = tokio::time::timeout(timeout, f).await;
            let _ = tx.send(answer);
        });
        match rx.recv_timeout(timeout + Duration::from_millis(20)) {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(e))) => Err(e.to_string()),
            Ok(Err(_)) | Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
        }
    }

    fn failed(&self, why: &str) {
        let now = self.clock.now_ms();
        self.degraded_until
            .store(now + BREAKER.as_millis() as u64, Ordering::Relaxed);
        if self
            .degraded_since
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::error!(url = %redact(&self.url), error = why, on_error = ?self.options.on_error, "the Redis counter store failed: degraded");
        }
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.to_owned());
    }

    fn recovered(&self) {
        self.degraded_until.store(0, Ordering::Relaxed);
        if self.degraded_since.swap(0, Ordering::Relaxed) != 0 {
            tracing::warn!(url = %redact(&self.url), "the Redis counter store answers again: counting there");
        }
    }

    /// The degraded answer, as `on_error` says.
    fn degraded(
        &self,
        requests: &[(CounterKey, Window)],
        why: &str,
    ) -> Result<Vec<Reservation>, Refusal> {
        match self.options.on_error {
            OnError::Closed => Err(Refusal::Unavailable(format!(
                "the Redis counter store at {} is unavailable ({why})",
                redact(&self.url)
            ))),
            OnError::Open => Ok(Vec::new()),
            OnError::Local => self.local.consume(requests),
        }
    }

    fn try_consume(
        &self,
        requests: &[(CounterKey, Window)],
    ) -> Result<Result<Vec<Reservation>, Exhausted>, String> {
        // Distinct counters, in first-named order, each with a fresh unit id.
        let mut distinct: Vec<&CounterKey> = Vec::new();
        for (key, _) in requests {
            if !distinct.contains(&key) {
                distinct.push(key);
            }
        }
        let units: Vec<u64> = distinct.iter().map(|_| random_id()).collect();
        let mut keys = Vec::with_capacity(2 * distinct.len());
        for key in &distinct {
            let key = self.key(key);
            keys.push(format!("{key}:longest"));
            keys.insert(keys.len() - 1, key);
        }
        let mut args: Vec<String> = Vec::with_capacity(2 + 3 * requests.len() + units.len());
        args.push(match self.options.clock {
            ClockSource::Redis => "redis".into(),
            ClockSource::Gateway => self.clock.now_ms().to_string(),
        });
        args.push(requests.len().to_string());
        for (key, window) in requests {
            let j = distinct.iter().position(|k| *k == key).unwrap_or(0) + 1;
            args.push(j.to_string());
            args.push(window.length_ms.to_string());
            args.push(window.max.to_string());
        }
        args.extend(units.iter().map(|unit| format!("{unit:016x}")));
        let (script, mut connection) = (self.script.clone(), self.connection.clone());
        let sent_keys = keys.clone();
        let answer: Vec<i64> = self
            .ask(async move {
                let mut invocation = script.prepare_invoke();
                for key in &keys {
                    invocation.key(key);
                }
                for arg in &args {
                    invocation.arg(arg);
                }
                invocation.invoke_async(&mut connection).await
            })
            .inspect_err(|_| {
                // No answer, but the script may still run when Redis catches up: take its
                // units back (queued behind it on the same connection), so that a call
                // refused as unavailable is not counted either. Not waited for.
                let mut pipe = redis::pipe();
                for (units_key, unit) in sent_keys.iter().step_by(2).zip(&units) {
                    pipe.cmd("ZREM")
                        .arg(units_key)
                        .arg(format!("{unit:016x}"))
                        .ignore();
                }
                let mut connection = self.connection.clone();
                self.runtime.spawn(async move {
                    let _ = pipe.exec_async(&mut connection).await;
                });
            })?;
        match answer.as_slice() {
            [1, now] => Ok(Ok(distinct
                .iter()
                .zip(&units)
                .map(|(key, unit)| Reservation {
                    key: (*key).clone(),
                    at_ms: *now as u64,
                    unit: *unit,
                })
                .collect())),
            [0, index, retry] => Ok(Err(Exhausted {
                index: *index as usize,
                retry_after_ms: *retry as u64,
            })),
            other => Err(format!("unexpected answer from the script: {other:?}")),
        }
    }
}

/// A random 64-bit unit id.
fn random_id() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // Unique enough within one process without randomness: time and a counter.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        return NEXT.fetch_add(1, Ordering::Relaxed) ^ (std::process::id() as u64) << 40;
    }
    u64::from_le_bytes(bytes)
}

/// A URL without its password, for logs and status.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

impl CounterStore for RedisCounterStore {
    fn consume(&self, requests: &[(CounterKey, Window)]) -> Result<Vec<Reservation>, Refusal> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.clock.now_ms();
        let until = self.degraded_until.load(Ordering::Relaxed);
        if until != 0 && now < until {
            return self.degraded(requests, "failing; asked again shortly");
        }
        match self.try_consume(requests) {
            Ok(Ok(reservations)) => {
                self.recovered();
                Ok(reservations)
            }
            Ok(Err(exhausted)) => {
                self.recovered();
                Err(Refusal::Exhausted(exhausted))
            }
            Err(why) => {
                self.failed(&why);
                self.degraded(requests, &why)
            }
        }
    }

    fn refund(&self, reservations: &[Reservation]) {
        let mut pipe = redis::pipe();
        for r in reservations {
            pipe.cmd("ZREM")
                .arg(self.key(&r.key))
                .arg(format!("{:016x}", r.unit))
                .ignore();
        }
        // Units counted locally while degraded are the local store's (their ids never match a
        // Redis member, nor the other way round).
        self.local.refund(reservations);
        let mut connection = self.connection.clone();
        let sent = self.ask(async move { pipe.exec_async(&mut connection).await });
        if let Err(e) = sent {
            // The units stay counted: the cap errs on the side of admitting less.
            tracing::error!(url = %redact(&self.url), error = %e, "a refund was not recorded in Redis");
        }
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    fn may_block(&self) -> bool {
        true
    }

    fn status(&self) -> serde_json::Value {
        self.status_now()
    }

    fn state_get(&self, space: StateSpace<'_>, key: &str) -> Result<Option<String>, StateError> {
        self.redis_state_get(space, key)
    }

    fn state_set(
        &self,
        space: StateSpace<'_>,
        key: &str,
        value: &str,
        ttl: Duration,
        limits: &StateLimits,
    ) -> Result<(), StateError> {
        self.redis_state_set(space, key, value, ttl, limits)
    }

    fn state_delete(&self, space: StateSpace<'_>, key: &str) -> Result<(), StateError> {
        self.redis_state_delete(space, key)
    }
}

#[path = "redis_state.rs"]
mod redis_state;

#[cfg(test)]
#[path = "redis_tests.rs"]
pub(crate) mod tests;
