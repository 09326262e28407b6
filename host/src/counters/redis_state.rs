//! Plugin state in Redis: each operation is one run of [`state.lua`](state.lua) on its space's
//! three keys, so a `set`'s check of the bounds and its write are one atomic step for every
//! replica.
//!
//! - **Keys.** A space is `<key_prefix>{counters}:state:<space>` with `:values` (a hash of the
//!   entries), `:expiries` (a sorted set of each entry's last live millisecond) and `:bytes`
//!   (their keys' and values' bytes, kept with every write). `<space>` is the JSON array of
//!   plugin and grant, so no two spaces share a key whatever their names hold, and the
//!   `{counters}` hash tag keeps them in the counters' Redis Cluster slot. The keys expire a
//!   minute after the space's last entry does.
//! - **Clock.** As for counters: Redis's `TIME`, or the gateway's with `clock = "gateway"`.
//! - **When Redis does not answer** (within `timeout`, or while the breaker is open): with
//!   `on_error = "local"` the entries are this replica's memory's, until Redis answers again
//!   (then Redis's are seen again, and the local ones are not copied there). With `closed`
//!   *and with `open`* every operation is [`StateError::Unavailable`]: admitting a call
//!   without counting it loses nothing but a unit, while a state operation has no harmless
//!   answer. A `get` that said "absent" would tell `session-ids` an id was never recorded, and
//!   a `set` that said "stored" would lose what the plugin means to rely on; so the plugin is
//!   told, and its policy decides. A `set` that timed out may still be applied when Redis
//!   catches up: like any remote write, unknown, and reported as unavailable.

use super::super::state::{self, StateError, StateLimits, StateSpace};
use super::{ClockSource, CounterStore, OnError, RedisCounterStore};
use crate::counters::MemoryCounterStore;
use std::sync::atomic::Ordering;
use std::time::Duration;

impl RedisCounterStore {
    /// The space's keys: values, expiries, bytes.
    fn state_keys(&self, space: StateSpace<'_>) -> [String; 3] {
        let base = format!(
            "{}{{counters}}:state:{}",
            self.options.key_prefix,
            state::encode_space(space)
        );
        [
            format!("{base}:values"),
            format!("{base}:expiries"),
            format!("{base}:bytes"),
        ]
    }

    /// Runs the state script for `op` on `space` with `args` after the clock and the
    /// operation; `Err` with why when Redis was not asked or did not answer.
    fn state_script(
        &self,
        space: StateSpace<'_>,
        op: &str,
        args: &[&str],
    ) -> Result<Vec<String>, String> {
        let until = self.degraded_until.load(Ordering::Relaxed);
        if until != 0 && self.clock.now_ms() < until {
            return Err("failing; asked again shortly".into());
        }
        let keys = self.state_keys(space);
        let mut argv: Vec<String> = Vec::with_capacity(2 + args.len());
        argv.push(match self.options.clock {
            ClockSource::Redis => "redis".into(),
            ClockSource::Gateway => self.clock.now_ms().to_string(),
        });
        argv.push(op.to_owned());
        argv.extend(args.iter().map(|arg| (*arg).to_owned()));
        let (script, mut connection) = (self.state_script.clone(), self.connection.clone());
        let answer = self.ask(async move {
            let mut invocation = script.prepare_invoke();
            for key in &keys {
                invocation.key(key);
            }
            for arg in &argv {
                invocation.arg(arg);
            }
            invocation
                .invoke_async::<Vec<String>>(&mut connection)
                .await
        });
        match answer {
            Ok(answer) => {
                self.recovered();
                Ok(answer)
            }
            Err(why) => {
                self.failed(&why);
                Err(why)
            }
        }
    }

    /// The answer when Redis was not asked or did not answer, as `on_error` says.
    fn state_degraded<T>(
        &self,
        why: &str,
        local: impl FnOnce(&MemoryCounterStore) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        match self.options.on_error {
            OnError::Local => local(&self.local),
            OnError::Closed | OnError::Open => Err(StateError::Unavailable(format!(
                "the Redis counter store at {} is unavailable for plugin state ({why})",
                super::redact(&self.url)
            ))),
        }
    }

    pub(super) fn redis_state_get(
        &self,
        space: StateSpace<'_>,
        key: &str,
    ) -> Result<Option<String>, StateError> {
        match self.state_script(space, "get", &[key]) {
            Ok(answer) => Ok(answer.into_iter().next()),
            Err(why) => self.state_degraded(&why, |local| local.state_get(space, key)),
        }
    }

    pub(super) fn redis_state_set(
        &self,
        space: StateSpace<'_>,
        key: &str,
        value: &str,
        ttl: Duration,
        limits: &StateLimits,
    ) -> Result<(), StateError> {
        let ttl_ms = state::check_set(key, ttl, limits)?.to_string();
        let (max_entries, max_bytes) =
            (limits.max_entries.to_string(), limits.max_bytes.to_string());
        let args = [key, value, &ttl_ms, &max_entries, &max_bytes];
        let answer = match self.state_script(space, "set", &args) {
            Ok(answer) => answer,
            Err(why) => {
                return self.state_degraded(&why, |local| {
                    local.state_set(space, key, value, ttl, limits)
                })
            }
        };
        match answer.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            ["ok"] => Ok(()),
            ["entries"] => Err(state::entries_refused(limits)),
            ["bytes", total] => Err(state::bytes_refused(
                total.parse().unwrap_or(u64::MAX),
                limits,
            )),
            _ => Err(StateError::Unavailable(format!(
                "unexpected answer from the Redis state script: {answer:?}"
            ))),
        }
    }

    pub(super) fn redis_state_delete(
        &self,
        space: StateSpace<'_>,
        key: &str,
    ) -> Result<(), StateError> {
        match self.state_script(space, "del", &[key]) {
            Ok(_) => Ok(()),
            Err(why) => self.state_degraded(&why, |local| local.state_delete(space, key)),
        }
    }
}
