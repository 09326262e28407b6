//! Grants: bearer tokens → agent identities, each with its own policy and its own counters.
//!
//! Tokens are never stored: the config holds their sha256. A presented token is hashed and
//! compared with every grant's hash in constant time (all of them, with no early exit), so
//! the time taken says nothing about which grant, or which prefix, came close. A connection
//! remembers the last token it presented and its grant (`Remembered`): the next request on
//! it with the same token (compared in constant time) skips the hash.
//!
//! Each grant has its own [`CounterStore`]: one grant can neither read nor spend another's
//! counts, whatever the counters are named. In `serve`, a `global` counter therefore counts
//! every session of its grant (as `grant` does); sessions are kept apart by the gateway's own
//! session ids, which are bound to the grant that opened them.

use super::config::{parse_sha256, Config, GrantConfig};
use crate::clock::SystemClock;
use crate::counters::CounterStore;
use crate::policy::{Loader, Policy};
use crate::reload::{LivePolicy, Status};
use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use subtle::ConstantTimeEq;

/// A grant with no policy: no rule, so the default (deny) answers every call.
const DENY_ALL: &str = r#"{"version": "1"}"#;

/// The last valid token a connection presented, and its grant. Clients send the same token
/// on every request of a connection; a token that matches it is not hashed again.
#[derive(Default)]
pub(crate) struct Remembered(Mutex<Option<TokenGrant>>);

/// A token, as presented, and the grant it named.
type TokenGrant = (Box<[u8]>, Arc<Grant>);

/// One agent identity.
pub(crate) struct Grant {
    pub(crate) name: String,
    /// The grant's policy, hot-swapped; `None` when the grant names no policy (deny all).
    pub(crate) live: Option<Arc<LivePolicy>>,
    /// Where sessions read the active policy.
    pub(crate) policy: Arc<ArcSwap<Policy>>,
    /// `shadow_policy`: decided beside `policy`, logged, never enforced; hot-swapped too.
    pub(crate) shadow: Option<Arc<LivePolicy>>,
    pub(crate) counters: Arc<dyn CounterStore>,
}

/// Why a request has no grant.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AuthError {
    /// No `Authorization` header and no anonymous grant.
    Missing,
    /// A header that is not `Bearer <token>`, or a token no grant has.
    Invalid,
}

/// Every grant, by token hash.
pub(crate) struct Grants {
    by_hash: Vec<([u8; 32], Arc<Grant>)>,
    anonymous: Option<Arc<Grant>>,
    all: Vec<Arc<Grant>>,
}

impl Grants {
    /// Loads every grant's policy (one load per distinct policy file).
    pub(crate) fn load(config: &Config, loader: &Loader) -> anyhow::Result<Self> {
        // One store for every grant: a `grant` counter is the grant's, a `global` one
        // everybody's.
        let counters =
            crate::counters::open(&config.counters.spec()?, Arc::new(SystemClock::new()))
                .map_err(|e| anyhow::anyhow!("[counters]: {e}"))?;
        let mut policies: HashMap<PathBuf, Arc<LivePolicy>> = HashMap::new();
        let mut by_hash = Vec::new();
        let mut all = Vec::new();
        for GrantConfig {
            name,
            token_sha256,
            policy,
            shadow_policy,
        } in &config.grants
        {
            let mut load = |path: &PathBuf, what: &str| -> anyhow::Result<Arc<LivePolicy>> {
                if let Some(live) = policies.get(path) {
                    return Ok(live.clone());
                }
                let live = LivePolicy::load(path, loader.clone()).map_err(|e| {
                    anyhow::anyhow!("{:?}", miette::Report::new(e))
                        .context(format!("grant `{name}`: cannot load its {what}"))
                })?;
                policies.insert(path.clone(), live.clone());
                Ok(live)
            };
            let live = policy.as_ref().map(|p| load(p, "policy")).transpose()?;
            let shadow = shadow_policy
                .as_ref()
                .map(|p| load(p, "shadow policy"))
                .transpose()?;
            let policy = match &live {
                Some(live) => live.cell(),
                None => Arc::new(ArcSwap::from_pointee(
                    Policy::from_json(DENY_ALL, "<no policy>")
                        .map_err(|e| anyhow::anyhow!("{e}"))?,
                )),
            };
            let grant = Arc::new(Grant {
                name: name.clone(),
                live,
                policy,
                shadow,
                counters: counters.clone(),
            });
            if let Some(hash) = token_sha256 {
                by_hash.push((parse_sha256(hash)?, grant.clone()));
            }
            all.push(grant);
        }
        let anonymous = config
            .anonymous_grant
            .as_ref()
            .and_then(|name| all.iter().find(|g| &g.name == name).cloned());
        Ok(Self {
            by_hash,
            anonymous,
            all,
        })
    }

    /// The grant an `Authorization` header value names; `remembered` is the connection's.
    pub(crate) fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        remembered: &Remembered,
    ) -> Result<Arc<Grant>, AuthError> {
        let Some(header) = authorization else {
            return self.anonymous.clone().ok_or(AuthError::Missing);
        };
        let token = header
            .strip_prefix(b"Bearer ")
            .or_else(|| header.strip_prefix(b"bearer "))
            .ok_or(AuthError::Invalid)?
            .trim_ascii();
        let mut last = remembered.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((known, grant)) = &*last {
            if bool::from(known.ct_eq(token)) {
                return Ok(grant.clone());
            }
        }
        let presented: [u8; 32] = Sha256::digest(token).into();
        let mut found = None;
        for (hash, grant) in &self.by_hash {
            if bool::from(hash.ct_eq(&presented)) {
                found = Some(grant.clone());
            }
        }
        let found = found.ok_or(AuthError::Invalid)?;
        *last = Some((token.into(), found.clone()));
        Ok(found)
    }

    /// Every grant, in config order.
    pub(crate) fn all(&self) -> &[Arc<Grant>] {
        &self.all
    }

    /// The distinct live policies (grants may share one).
    pub(crate) fn live_policies(&self) -> Vec<Arc<LivePolicy>> {
        let mut out: Vec<Arc<LivePolicy>> = Vec::new();
        let lives = self.all.iter().flat_map(|g| g.live.iter().chain(&g.shadow));
        for live in lives.cloned() {
            if !out.iter().any(|o| Arc::ptr_eq(o, &live)) {
                out.push(live);
            }
        }
        out
    }
}

impl Grant {
    /// The grant's policy status (`None`: the grant has no policy and denies everything).
    pub(crate) fn status(&self) -> Option<Status> {
        self.live.as_ref().map(|live| live.status())
    }
}

/// A new random token (256 bits from the OS, hex) and its sha256 (hex), for `grant add`.
pub fn new_token() -> std::io::Result<(String, String)> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    let token = format!("tg_{}", hex::encode(bytes));
    let hash = crate::digest::sha256_hex(token.as_bytes());
    Ok((token, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(anonymous: Option<&str>) -> Grants {
        let hash_a = hex::encode(Sha256::digest(b"token-a"));
        let hash_b = hex::encode(Sha256::digest(b"token-b"));
        let toml = format!(
            "anonymous_grant = {}\n[upstream]\nurl = \"http://127.0.0.1:1/mcp\"\n\
             [[grants]]\nname = \"a\"\ntoken_sha256 = \"{hash_a}\"\n\
             [[grants]]\nname = \"b\"\ntoken_sha256 = \"{hash_b}\"\n",
            anonymous.map_or("\"b\"".to_owned(), |a| format!("\"{a}\""))
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).unwrap();
        Grants::load(&Config::load(&path).unwrap(), &Loader::new()).unwrap()
    }

    #[test]
    fn tokens_map_to_their_grant_and_wrong_ones_to_nothing() {
        let g = grants(Some("b"));
        // One connection, so each answer also goes through the remembered token.
        let conn = Remembered::default();
        let name = |header: Option<&[u8]>| g.authenticate(header, &conn).map(|g| g.name.clone());
        assert_eq!(name(Some(b"Bearer token-a")).unwrap(), "a");
        assert_eq!(name(Some(b"Bearer token-a")).unwrap(), "a");
        assert_eq!(name(Some(b"Bearer token-b")).unwrap(), "b");
        assert_eq!(
            name(Some(b"Bearer token-c")).err(),
            Some(AuthError::Invalid)
        );
        assert_eq!(name(Some(b"Bearer token-b")).unwrap(), "b");
        // A prefix or an extension of the remembered token is not it.
        assert_eq!(name(Some(b"Bearer token-")).err(), Some(AuthError::Invalid));
        assert_eq!(
            name(Some(b"Bearer token-bb")).err(),
            Some(AuthError::Invalid)
        );
        assert_eq!(name(Some(b"Bearer token-a")).unwrap(), "a");
        assert_eq!(
            name(Some(b"Basic dG9rZW4tYQ==")).err(),
            Some(AuthError::Invalid)
        );
        assert_eq!(name(Some(b"Bearer ")).err(), Some(AuthError::Invalid));
        // No header: the anonymous grant; a wrong header never falls back to it.
        assert_eq!(name(None).unwrap(), "b");
    }

    #[test]
    fn a_new_token_hashes_to_what_grant_add_stores() {
        let (token, hash) = new_token().unwrap();
        assert!(token.starts_with("tg_") && token.len() == 67);
        assert_eq!(hash, hex::encode(Sha256::digest(token.as_bytes())));
        assert_ne!(new_token().unwrap().0, token);
    }
}
