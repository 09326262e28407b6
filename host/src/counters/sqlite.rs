//! The persistent store for one machine: the same exact sliding logs, in a SQLite file.
//!
//! Several `toolgate run` processes (one per MCP client session) can share one file, so a
//! grant's cap holds across them and survives their restarts without running a server. Each
//! `consume` is one `BEGIN IMMEDIATE` transaction (SQLite's write lock, taken before the first
//! read): the check of every window and the units taken are one atomic step across processes.
//! The file is in WAL mode, and a process waits for the lock up to the busy timeout; past it,
//! or on any other error, the store cannot count and a limited call is refused.
//!
//! Every unit is a row with its own id, so a refund removes exactly that unit, once. The clock
//! is the gateway's (processes on one machine share it).
//!
//! Plugin state is a table of its own in the same file, one row per entry with the last
//! millisecond it is live. A `set` is one `BEGIN IMMEDIATE` transaction too: it removes its
//! space's expired entries, sums the others, checks the bounds and writes, so two processes
//! sharing the file cannot both take the last entry.

use super::state::{self, StateError, StateLimits, StateSpace};
use super::{CounterKey, CounterStore, Exhausted, Refusal, Reservation, Window};
use crate::clock::Clock;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// After this many `consume` (and state `set`) calls in this process, drop units whose longest
/// window has passed, for every counter, so that counters of sessions long gone do not
/// accumulate; and expired state entries, of every space.
const SWEEP_EVERY: u32 = 4096;

/// How long a process waits for another's transaction by default.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(2);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS toolgate_counter_keys (
    key TEXT PRIMARY KEY,
    longest_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS toolgate_counter_units (
    unit INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS toolgate_counter_units_by_key
    ON toolgate_counter_units (key, at_ms);
CREATE TABLE IF NOT EXISTS toolgate_plugin_state (
    space TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    PRIMARY KEY (space, key)
) WITHOUT ROWID;
";

/// Counters in a SQLite file.
pub struct SqliteCounterStore {
    path: PathBuf,
    clock: Arc<dyn Clock>,
    connection: Mutex<Connection>,
    consumes_since_sweep: Mutex<u32>,
}

impl SqliteCounterStore {
    /// Opens (creating if need be) the store at `path`, waiting up to `busy_timeout` for
    /// other processes' transactions.
    pub fn open(
        path: &Path,
        clock: Arc<dyn Clock>,
        busy_timeout: Duration,
    ) -> Result<Self, rusqlite::Error> {
        let connection = Connection::open(path)?;
        connection.busy_timeout(busy_timeout)?;
        // WAL: readers never wait for the writer, and a crash mid-transaction loses nothing
        // that was committed. The mode stays with the file.
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        connection.execute_batch(SCHEMA)?;
        Ok(Self {
            path: path.to_owned(),
            clock,
            connection: Mutex::new(connection),
            consumes_since_sweep: Mutex::new(0),
        })
    }

    fn unavailable(&self, e: rusqlite::Error) -> Refusal {
        tracing::error!(path = %self.path.display(), error = %e, "the SQLite counter store cannot count");
        Refusal::Unavailable(format!(
            "the SQLite counter store `{}` failed: {e}",
            self.path.display()
        ))
    }

    fn try_consume(
        &self,
        requests: &[(CounterKey, Window)],
    ) -> Result<Result<Vec<Reservation>, Exhausted>, rusqlite::Error> {
        let mut connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Read under the write lock, as the memory store does under its mutex: every unit is
        // stamped in the order the lock was taken.
        let now = self.clock.now_ms();
        let mut exhausted: Option<Exhausted> = None;
        for (index, (key, window)) in requests.iter().enumerate() {
            let retry_after_ms = check(&tx, &encode(key), *window, now)?;
            if let Some(retry_after_ms) = retry_after_ms {
                if exhausted
                    .as_ref()
                    .is_none_or(|e| retry_after_ms > e.retry_after_ms)
                {
                    exhausted = Some(Exhausted {
                        index,
                        retry_after_ms,
                    });
                }
            }
        }
        if let Some(exhausted) = exhausted {
            // Nothing written: the transaction rolls back when dropped.
            return Ok(Err(exhausted));
        }
        let mut reservations: Vec<Reservation> = Vec::with_capacity(requests.len());
        for (key, _) in requests {
            if reservations.iter().any(|r| &r.key == key) {
                continue; // named twice: one unit
            }
            let encoded = encode(key);
            // The longest window any call gave this key decides how long its units are kept.
            let longest = requests
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, w)| w.length_ms)
                .max()
                .unwrap_or(1);
            tx.execute(
                "INSERT INTO toolgate_counter_keys (key, longest_ms) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET longest_ms = max(longest_ms, excluded.longest_ms)",
                params![encoded, to_sql(longest)],
            )?;
            tx.execute(
                // `at_ms` alone on one side: a range of the (key, at_ms) index, so only the
                // expired units are read, not every unit of the key.
                "DELETE FROM toolgate_counter_units WHERE key = ?1 AND at_ms <= ?2 - (
                     SELECT longest_ms FROM toolgate_counter_keys WHERE key = ?1)",
                params![encoded, to_sql(now)],
            )?;
            tx.execute(
                "INSERT INTO toolgate_counter_units (key, at_ms) VALUES (?1, ?2)",
                params![encoded, to_sql(now)],
            )?;
            reservations.push(Reservation {
                key: key.clone(),
                at_ms: now,
                unit: tx.last_insert_rowid() as u64,
            });
        }
        if self.sweep_due() {
            tx.execute(
                "DELETE FROM toolgate_counter_units WHERE at_ms + (
                     SELECT longest_ms FROM toolgate_counter_keys k
                     WHERE k.key = toolgate_counter_units.key) <= ?1",
                params![to_sql(now)],
            )?;
            tx.execute(
                "DELETE FROM toolgate_counter_keys WHERE NOT EXISTS (
                     SELECT 1 FROM toolgate_counter_units u WHERE u.key = toolgate_counter_keys.key)",
                [],
            )?;
            sweep_state(&tx, now)?;
        }
        tx.commit()?;
        Ok(Ok(reservations))
    }

    /// Whether this call (`consume` or state `set`) is the [`SWEEP_EVERY`]th since the last
    /// sweep.
    fn sweep_due(&self) -> bool {
        let mut since = self
            .consumes_since_sweep
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *since += 1;
        let due = *since >= SWEEP_EVERY;
        if due {
            *since = 0;
        }
        due
    }

    fn state_failed(&self, e: rusqlite::Error) -> StateError {
        tracing::error!(path = %self.path.display(), error = %e, "the SQLite counter store cannot keep plugin state");
        StateError::Unavailable(format!(
            "the SQLite counter store `{}` failed: {e}",
            self.path.display()
        ))
    }

    fn try_state_get(&self, space: &str, key: &str) -> Result<Option<String>, rusqlite::Error> {
        let connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        let now = to_sql(self.clock.now_ms());
        let found: Option<(String, i64)> = connection
            .query_row(
                "SELECT value, expires_ms FROM toolgate_plugin_state WHERE space = ?1 AND key = ?2",
                params![space, key],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        match found {
            Some((value, expires_ms)) if expires_ms >= now => Ok(Some(value)),
            Some(_) => {
                // Expired: removed now, unless set again meanwhile.
                connection.execute(
                    "DELETE FROM toolgate_plugin_state
                     WHERE space = ?1 AND key = ?2 AND expires_ms < ?3",
                    params![space, key, now],
                )?;
                Ok(None)
            }
            None => Ok(None),
        }
    }

    fn try_state_set(
        &self,
        space: &str,
        key: &str,
        value: &str,
        ttl_ms: u64,
        limits: &StateLimits,
    ) -> Result<Result<(), StateError>, rusqlite::Error> {
        let mut connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = self.clock.now_ms();
        tx.execute(
            "DELETE FROM toolgate_plugin_state WHERE space = ?1 AND expires_ms < ?2",
            params![space, to_sql(now)],
        )?;
        if self.sweep_due() {
            sweep_state(&tx, now)?;
        }
        let (others, other_bytes): (i64, i64) = tx.query_row(
            "SELECT count(*), coalesce(sum(bytes), 0) FROM toolgate_plugin_state
             WHERE space = ?1 AND key != ?2",
            params![space, key],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        let bytes = state::entry_bytes(key, value);
        if let Err(refused) =
            state::check_bounds(others as u64 + 1, other_bytes as u64 + bytes, limits)
        {
            // The expired entries stay removed.
            tx.commit()?;
            return Ok(Err(refused));
        }
        tx.execute(
            "INSERT INTO toolgate_plugin_state (space, key, value, bytes, expires_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (space, key) DO UPDATE SET
                 value = excluded.value, bytes = excluded.bytes, expires_ms = excluded.expires_ms",
            params![
                space,
                key,
                value,
                to_sql(bytes),
                to_sql(now.saturating_add(ttl_ms))
            ],
        )?;
        tx.commit()?;
        Ok(Ok(()))
    }

    /// Units currently counted in `key`'s window (for tests and status).
    pub fn count(&self, key: &CounterKey, window: Window) -> Result<u64, rusqlite::Error> {
        let connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.clock.now_ms();
        let n: i64 = connection.query_row(
            "SELECT count(*) FROM toolgate_counter_units WHERE key = ?1 AND at_ms > ?3 - ?2",
            params![encode(key), to_sql(window.length_ms), to_sql(now)],
            |row| row.get(0),
        )?;
        Ok(n as u64)
    }
}

/// `None` if `key`'s `window` has room for one more unit at `now`; else the ms until it has.
fn check(
    tx: &rusqlite::Transaction<'_>,
    key: &str,
    window: Window,
    now: u64,
) -> Result<Option<u64>, rusqlite::Error> {
    if window.max == 0 {
        return Ok(Some(window.length_ms.max(1)));
    }
    let inside: i64 = tx.query_row(
        "SELECT count(*) FROM toolgate_counter_units WHERE key = ?1 AND at_ms > ?3 - ?2",
        params![key, to_sql(window.length_ms), to_sql(now)],
        |row| row.get(0),
    )?;
    if (inside as u64) < window.max {
        return Ok(None);
    }
    // Full: the oldest of the newest `max` units must leave the window first.
    let oldest_blocking: Option<i64> = tx
        .query_row(
            "SELECT at_ms FROM toolgate_counter_units WHERE key = ?1
             ORDER BY at_ms DESC, unit DESC LIMIT 1 OFFSET ?2",
            params![key, to_sql(window.max - 1)],
            |row| row.get(0),
        )
        .optional()?;
    let oldest = oldest_blocking.unwrap_or(0).max(0) as u64;
    Ok(Some(
        oldest
            .saturating_add(window.length_ms)
            .saturating_sub(now)
            .max(1),
    ))
}

/// Removes the expired state entries of every space (spaces nobody sets in again included).
fn sweep_state(tx: &rusqlite::Transaction<'_>, now: u64) -> Result<(), rusqlite::Error> {
    tx.execute(
        "DELETE FROM toolgate_plugin_state WHERE expires_ms < ?1",
        params![to_sql(now)],
    )
    .map(drop)
}

/// A key as one text that no other key spells: owner, counter and scope value, as a JSON
/// array.
fn encode(key: &CounterKey) -> String {
    serde_json::to_string(&(key.owner.as_deref(), &*key.counter, &*key.scope_value))
        .unwrap_or_default()
}

/// SQLite integers are signed 64-bit: times and windows past that are held at its maximum
/// (a unit then stays counted, never expires early).
fn to_sql(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl CounterStore for SqliteCounterStore {
    fn consume(&self, requests: &[(CounterKey, Window)]) -> Result<Vec<Reservation>, Refusal> {
        match self.try_consume(requests) {
            Ok(Ok(reservations)) => Ok(reservations),
            Ok(Err(exhausted)) => Err(Refusal::Exhausted(exhausted)),
            Err(e) => Err(self.unavailable(e)),
        }
    }

    fn refund(&self, reservations: &[Reservation]) {
        let connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        for reservation in reservations {
            let removed = connection.execute(
                "DELETE FROM toolgate_counter_units WHERE unit = ?1",
                params![reservation.unit as i64],
            );
            if let Err(e) = removed {
                // The unit stays counted: the cap errs on the side of admitting less.
                tracing::error!(path = %self.path.display(), error = %e, "a refund was not recorded");
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    fn state_get(&self, space: StateSpace<'_>, key: &str) -> Result<Option<String>, StateError> {
        self.try_state_get(&state::encode_space(space), key)
            .map_err(|e| self.state_failed(e))
    }

    fn state_set(
        &self,
        space: StateSpace<'_>,
        key: &str,
        value: &str,
        ttl: Duration,
        limits: &StateLimits,
    ) -> Result<(), StateError> {
        let ttl_ms = state::check_set(key, ttl, limits)?;
        self.try_state_set(&state::encode_space(space), key, value, ttl_ms, limits)
            .map_err(|e| self.state_failed(e))?
    }

    fn state_delete(&self, space: StateSpace<'_>, key: &str) -> Result<(), StateError> {
        let connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        connection
            .execute(
                "DELETE FROM toolgate_plugin_state WHERE space = ?1 AND key = ?2",
                params![state::encode_space(space), key],
            )
            .map(drop)
            .map_err(|e| self.state_failed(e))
    }
}

#[cfg(test)]
mod tests {
    use super::super::conformance::{self, Counting};
    use super::*;
    use crate::clock::ManualClock;

    fn store(clock: Arc<ManualClock>) -> Box<dyn Counting> {
        // Each store its own file, kept for the test's life.
        let dir = tempfile::tempdir().unwrap().keep();
        let path = dir.join("counters.sqlite");
        Box::new(SqliteCounterStore::open(&path, clock, DEFAULT_BUSY_TIMEOUT).unwrap())
    }

    conformance::suite!(store);
    conformance::state_suite!(store);

    #[test]
    fn two_processes_sharing_the_file_cannot_both_take_the_last_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counters.sqlite");
        let clock = ManualClock::starting_at(0);
        let handles: Vec<SqliteCounterStore> = (0..2)
            .map(|_| {
                SqliteCounterStore::open(&path, clock.clone(), Duration::from_secs(10)).unwrap()
            })
            .collect();
        let limits = StateLimits {
            max_entries: 7,
            ..StateLimits::default()
        };
        let space = StateSpace {
            plugin: "p",
            grant: "g",
        };
        let won: usize = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..6)
                .map(|t| {
                    let store = &handles[t % 2];
                    scope.spawn(move || {
                        (0..5)
                            .filter(|i| {
                                let key = format!("{t}-{i}");
                                store
                                    .state_set(space, &key, "v", Duration::from_secs(60), &limits)
                                    .is_ok()
                            })
                            .count()
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).sum()
        });
        assert_eq!(won, 7);
        // The other handle sees the first's entries: one store.
        handles[0]
            .state_set(
                space,
                "shared",
                "x",
                Duration::from_secs(60),
                &StateLimits::default(),
            )
            .unwrap();
        assert_eq!(handles[1].state_get(space, "shared"), Ok(Some("x".into())));
    }

    #[test]
    fn a_file_from_before_plugin_state_gains_its_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counters.sqlite");
        {
            let old = Connection::open(&path).unwrap();
            old.execute_batch(
                "CREATE TABLE toolgate_counter_keys (key TEXT PRIMARY KEY, longest_ms INTEGER NOT NULL) WITHOUT ROWID;",
            )
            .unwrap();
        }
        let store =
            SqliteCounterStore::open(&path, ManualClock::starting_at(0), DEFAULT_BUSY_TIMEOUT)
                .unwrap();
        let space = StateSpace {
            plugin: "p",
            grant: "g",
        };
        store
            .state_set(
                space,
                "k",
                "v",
                Duration::from_secs(1),
                &StateLimits::default(),
            )
            .unwrap();
        assert_eq!(store.state_get(space, "k"), Ok(Some("v".into())));
    }
}
