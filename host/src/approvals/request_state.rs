//! The `requestState` of the 2026-07-28 protocol's `input_required` round trip: clients on it
//! take no requests from the server, so the gateway answers a call that needs approval with
//! the question and an opaque state, and the client retries the call with its user's answer
//! and that state.
//!
//! The state names the approval request it asks about, and is **integrity-protected and
//! single-use**: `tg1.<payload>.<mac>`, the payload (base64url JSON: request id, grant, a
//! random nonce, an expiry) under HMAC-SHA256 with a key drawn at start. A state is accepted
//! once, from the grant it was issued to, before it expires; a tampered, replayed, foreign or
//! stale one is refused. The key lives only in this process: a restart loses pending requests,
//! and with them every state issued for them.

use super::Approvals;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::Mutex;

/// What every state the gateway issues starts with: a retry's `requestState` without it is
/// the upstream's own, and passes untouched.
pub const STATE_PREFIX: &str = "tg1.";

/// At most this many states outstanding; beyond it, the oldest ones are forgotten (their
/// retries are refused as unknown, and the client asks again).
const MAX_OUTSTANDING: usize = 10_000;

/// The key and the states issued and not yet used.
pub(super) struct RequestStates {
    key: [u8; 32],
    /// Nonce → expiry (ms).
    issued: Mutex<HashMap<String, u64>>,
}

impl RequestStates {
    pub(super) fn new() -> Self {
        let mut key = [0u8; 32];
        // No randomness means no state can be trusted: an all-zero key is never used, since
        // `seal` refuses then.
        if getrandom::fill(&mut key).is_err() {
            key = [0; 32];
        }
        Self {
            key,
            issued: Mutex::new(HashMap::new()),
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length")
    }
}

#[derive(Serialize, Deserialize)]
struct Payload {
    /// The approval request.
    a: String,
    /// The grant it was issued to.
    g: String,
    /// Single use.
    n: String,
    /// Expiry, ms since the epoch.
    e: u64,
}

/// Why a `requestState` is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("it is not one the gateway issued (malformed)")]
    Malformed,
    #[error("it was altered: its signature does not match")]
    Tampered,
    #[error("it was issued to another grant")]
    OtherGrant,
    #[error("it has expired")]
    Expired,
    #[error("it was already used, or is no longer known")]
    Used,
    #[error("the gateway has no key to protect it with")]
    NoKey,
}

impl Approvals {
    /// A fresh state for approval request `approval`, asked of grant `grant`, valid until
    /// `expires_ms`.
    pub fn seal_state(
        &self,
        approval: &str,
        grant: &str,
        expires_ms: u64,
    ) -> Result<String, StateError> {
        let states = &self.states;
        if states.key == [0; 32] {
            return Err(StateError::NoKey);
        }
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        {
            let now = self.clock.now_ms();
            let mut issued = states.issued.lock().unwrap_or_else(|e| e.into_inner());
            issued.retain(|_, &mut expires| expires > now);
            if issued.len() >= MAX_OUTSTANDING {
                let oldest = issued
                    .iter()
                    .min_by_key(|(_, &expires)| expires)
                    .map(|(n, _)| n.clone());
                if let Some(oldest) = oldest {
                    issued.remove(&oldest);
                }
            }
            issued.insert(nonce.clone(), expires_ms);
        }
        let payload = Payload {
            a: approval.to_owned(),
            g: grant.to_owned(),
            n: nonce,
            e: expires_ms,
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap_or_default());
        let mut mac = states.mac();
        mac.update(payload.as_bytes());
        let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        Ok(format!("{STATE_PREFIX}{payload}.{tag}"))
    }

    /// The approval request a retry's `state` answers, if the state is genuine, was issued to
    /// `grant`, has not expired and was not used before. Using it spends it.
    pub fn open_state(&self, state: &str, grant: &str) -> Result<String, StateError> {
        let rest = state
            .strip_prefix(STATE_PREFIX)
            .ok_or(StateError::Malformed)?;
        let (payload, tag) = rest.split_once('.').ok_or(StateError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| StateError::Malformed)?;
        let mut mac = self.states.mac();
        mac.update(payload.as_bytes());
        // Constant time, so the tag cannot be guessed byte by byte.
        mac.verify_slice(&tag).map_err(|_| StateError::Tampered)?;
        let payload: Payload = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|p| serde_json::from_slice(&p).ok())
            .ok_or(StateError::Malformed)?;
        if payload.g != grant {
            return Err(StateError::OtherGrant);
        }
        let mut issued = self.states.issued.lock().unwrap_or_else(|e| e.into_inner());
        if payload.e <= self.clock.now_ms() {
            issued.remove(&payload.n);
            return Err(StateError::Expired);
        }
        issued.remove(&payload.n).ok_or(StateError::Used)?;
        Ok(payload.a)
    }
}
