//! Plugin state: a small key-value store per plugin and grant, kept in the counter store.
//!
//! A `toolgate:policy@0.3.0` plugin that is granted `state` can remember things between
//! calls: `session-ids` records the ids `session_create` returned, to refuse them later where
//! a provider's id is needed. The entries live where the policy's counters live (memory,
//! SQLite, Redis), so they survive hot swaps, and with a shared store restarts and replicas.
//!
//! Every entry has a time to live on the store's clock (`now_ms`): set at `now` for `ttl`, it is
//! live through `now + ttl` and gone a millisecond later. Every plugin and grant
//! ([`StateSpace`]) is bounded in entries and bytes ([`StateLimits`], from the policy): a `set` that would break a bound is
//! refused and stores nothing; the check and the write are one atomic step, so callers racing
//! for the last entry cannot both win. Expired entries count for nothing, and are removed
//! lazily: by the next `set` in their space, or a `get` of them.

use std::time::Duration;

/// Whose entries: one plugin (its name in the policy's `plugins`) for one grant.
#[derive(Clone, Copy, Debug)]
pub struct StateSpace<'a> {
    /// The plugin's name in the policy.
    pub plugin: &'a str,
    /// The calling grant.
    pub grant: &'a str,
}

/// The bounds of one [`StateSpace`], from the policy's `plugins.<name>.state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateLimits {
    /// Live entries at most.
    pub max_entries: u32,
    /// Bytes of keys and values together at most, over the live entries.
    pub max_bytes: u64,
    /// The longest time to live an entry may ask for.
    pub max_ttl: Duration,
}

impl Default for StateLimits {
    /// 1,000 entries, 256 KiB, 30 days (LLM CLI Gateway's session lifetime).
    fn default() -> Self {
        Self {
            max_entries: 1_000,
            max_bytes: 256 << 10,
            max_ttl: Duration::from_secs(30 * 86_400),
        }
    }
}

/// The longest key a plugin may use, in bytes.
pub const MAX_STATE_KEY_BYTES: usize = 256;

/// Why a state operation did nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateError {
    /// The entry would break a bound (entries, bytes, key length, time to live): the text says
    /// which, for the plugin.
    Refused(String),
    /// The store could not be asked (a server that does not answer in time), or keeps no
    /// state. The text names the store.
    Unavailable(String),
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateError::Refused(why) | StateError::Unavailable(why) => f.write_str(why),
        }
    }
}

/// The milliseconds of `ttl`, or why a plugin may not ask for it: under 1 ms, or over
/// `limits.max_ttl`. Also refuses a key that is empty or longer than [`MAX_STATE_KEY_BYTES`].
/// Every store checks a `set` with this before it writes anything.
pub(crate) fn check_set(key: &str, ttl: Duration, limits: &StateLimits) -> Result<u64, StateError> {
    if key.is_empty() {
        return Err(StateError::Refused("a state key cannot be empty".into()));
    }
    if key.len() > MAX_STATE_KEY_BYTES {
        return Err(StateError::Refused(format!(
            "the state key is {} bytes, over the bound of {MAX_STATE_KEY_BYTES} bytes",
            key.len()
        )));
    }
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    if ttl_ms < 1 {
        return Err(StateError::Refused(
            "a state entry's time to live is at least 1 ms".into(),
        ));
    }
    if ttl > limits.max_ttl {
        return Err(StateError::Refused(format!(
            "a time to live of {ttl_ms} ms is over the policy's bound (max_ttl) of {} ms",
            limits.max_ttl.as_millis()
        )));
    }
    Ok(ttl_ms)
}

/// The bytes an entry counts for against `max_bytes`: its key's and its value's.
pub(crate) fn entry_bytes(key: &str, value: &str) -> u64 {
    (key.len() + value.len()) as u64
}

/// Why a `set` that would leave `entries` live entries and `bytes` live bytes in its space
/// (counting the new entry, not the value it replaces) is refused, if it is.
pub(crate) fn check_bounds(
    entries: u64,
    bytes: u64,
    limits: &StateLimits,
) -> Result<(), StateError> {
    if entries > u64::from(limits.max_entries) {
        return Err(entries_refused(limits));
    }
    if bytes > limits.max_bytes {
        return Err(bytes_refused(bytes, limits));
    }
    Ok(())
}

/// The refusal of a new key in a space that holds `limits.max_entries` live entries.
pub(crate) fn entries_refused(limits: &StateLimits) -> StateError {
    StateError::Refused(format!(
        "the plugin's state for this grant holds its bound (max_entries) of {} entries: \
         delete one, or wait for one to expire",
        limits.max_entries
    ))
}

/// The refusal of an entry that would bring its space to `bytes` live bytes.
pub(crate) fn bytes_refused(bytes: u64, limits: &StateLimits) -> StateError {
    StateError::Refused(format!(
        "the entry would bring the plugin's state for this grant to {bytes} bytes of keys and \
         values, over its bound (max_bytes) of {} bytes",
        limits.max_bytes
    ))
}

/// A space as one text that no other space spells, whatever its names contain: plugin and
/// grant as a JSON array (`["a:b","c"]` is not `["a","b:c"]`). The text always ends in `]`.
pub(crate) fn encode_space(space: StateSpace<'_>) -> String {
    serde_json::to_string(&(space.plugin, space.grant)).unwrap_or_default()
}
