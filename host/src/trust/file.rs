//! The operator's trust file (`trust.toml`): who the identities are (their minisign public
//! keys), which keys are revoked, and what each rule requires. It is read and checked whole:
//! a rule that could never be met, or that would trust anything, is refused here, naming its
//! place, rather than discovered when a plugin fails to load.
//!
//! ```toml
//! default_rule = "team"                  # the rule plugins are judged by
//! revoked = ["RWQ...", "FAA6B01E8D58ACC1"] # public keys (base64 line) or key IDs; optional
//!
//! [identities.alice]
//! keys = ["RWQ...", "RWQ..."]            # one or more (rotation); each counts as alice
//!
//! [rules.team]
//! capabilities = ["counters", "log"]     # the most a plugin may link; default all of them
//! require = [
//!   { role = "author", any_of = ["alice"] },
//!   { role = "review", at_least = 2, any_of = ["bob", "carol", "dave"] },
//! ]
//! ```
//!
//! `at_least` defaults to 1. Unknown fields anywhere are errors.

use super::judge::Requirement;
use super::sign::{public_key_id, Role};
use super::TrustError;
use crate::capability::Capability;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    default_rule: String,
    #[serde(default)]
    revoked: Vec<String>,
    #[serde(default)]
    identities: BTreeMap<String, IdentityDoc>,
    #[serde(default)]
    rules: BTreeMap<String, RuleDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityDoc {
    keys: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDoc {
    require: Vec<RequirementDoc>,
    capabilities: Option<Vec<Capability>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequirementDoc {
    role: Role,
    #[serde(default = "one")]
    at_least: usize,
    any_of: Vec<String>,
}

fn one() -> usize {
    1
}

/// One public key the trust file knows, by key ID.
pub(crate) struct Key {
    /// The identity it belongs to.
    pub identity: String,
    /// The key, to verify with.
    pub key: minisign_verify::PublicKey,
}

/// One rule: its requirements and the most it lets a plugin link.
pub(crate) struct Rule {
    pub require: Vec<Requirement>,
    pub capabilities: BTreeSet<Capability>,
}

/// A trust file, read and checked: the identities' keys, the revoked key IDs, the rules.
pub struct Trust {
    pub(crate) origin: String,
    pub(crate) default_rule: String,
    /// By key ID (16 uppercase hex digits).
    pub(crate) keys: BTreeMap<String, Key>,
    /// Key IDs; a revoked key never counts, even if an identity still lists it.
    pub(crate) revoked: BTreeSet<String>,
    pub(crate) rules: BTreeMap<String, Rule>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("origin", &self.origin)
            .field("default_rule", &self.default_rule)
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .field("revoked", &self.revoked)
            .field("rules", &self.rules.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Trust {
    /// Reads and checks the trust file at `path`.
    pub fn read(path: &Path) -> Result<Trust, TrustError> {
        let text = std::fs::read_to_string(path).map_err(|source| TrustError::Read {
            path: path.to_owned(),
            source,
        })?;
        Trust::parse(&text, &path.display().to_string())
    }

    /// `$TOOLGATE_TRUST` if set and non-empty, read with [`Trust::read`].
    pub fn from_env() -> Result<Option<Trust>, TrustError> {
        match std::env::var_os("TOOLGATE_TRUST") {
            Some(path) if !path.is_empty() => Trust::read(Path::new(&path)).map(Some),
            _ => Ok(None),
        }
    }

    /// Where it was read from, for messages.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The rule plugins are judged by.
    pub fn default_rule(&self) -> &str {
        &self.default_rule
    }

    /// The names of its rules, in order.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.keys().map(String::as_str)
    }

    /// Reads and checks a trust file's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Trust, TrustError> {
        let doc: Document = toml::from_str(text).map_err(|e| TrustError::Syntax {
            origin: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let invalid = |place: String, message: String| TrustError::Invalid {
            origin: origin.to_owned(),
            place,
            message,
        };

        let mut keys: BTreeMap<String, Key> = BTreeMap::new();
        // Each Ed25519 key once, whatever ID it is written under: else one key holder could
        // count as two identities, or keep signing under an ID nobody revoked.
        let mut by_bytes: BTreeMap<[u8; 32], String> = BTreeMap::new();
        for (identity, doc) in &doc.identities {
            let place = format!("identities.{identity}.keys");
            if doc.keys.is_empty() {
                return Err(invalid(place, "an identity needs at least one key".into()));
            }
            for (i, line) in doc.keys.iter().enumerate() {
                let place = format!("{place}[{i}]");
                let (id, key, bytes) = public_key(line).map_err(|m| invalid(place.clone(), m))?;
                if let Some(other_id) = by_bytes.get(&bytes).filter(|other| **other != id) {
                    let other = &keys[other_id].identity;
                    return Err(invalid(
                        place,
                        format!(
                            "key {id} is the same Ed25519 key as key {other_id} of `{other}` under another ID: a key belongs to one identity, once"
                        ),
                    ));
                }
                by_bytes.insert(bytes, id.clone());
                if let Some(other) = keys.get(&id).map(|k: &Key| &k.identity) {
                    let whose = if other == identity {
                        "listed twice".to_owned()
                    } else {
                        format!("already a key of `{other}`: a key belongs to one identity")
                    };
                    return Err(invalid(place, format!("key {id} is {whose}")));
                }
                let identity = identity.clone();
                keys.insert(id, Key { identity, key });
            }
        }

        let mut revoked = BTreeSet::new();
        for (i, entry) in doc.revoked.iter().enumerate() {
            let entry = entry.trim();
            if is_key_id(entry) {
                revoked.insert(entry.to_ascii_uppercase());
                continue;
            }
            let (id, _, bytes) = public_key(entry).map_err(|m| {
                let m = format!("{m} (nor a 16-hex-digit key ID)");
                invalid(format!("revoked[{i}]"), m)
            })?;
            // A revoked key is revoked under whatever ID it is enrolled with.
            if let Some(enrolled) = by_bytes.get(&bytes) {
                revoked.insert(enrolled.clone());
            }
            revoked.insert(id);
        }

        let mut rules = BTreeMap::new();
        for (name, rule) in doc.rules {
            let place = format!("rules.{name}");
            let require =
                check_rule(&rule, &doc.identities, &place).map_err(|(p, m)| invalid(p, m))?;
            let capabilities = match rule.capabilities {
                Some(list) => list.into_iter().collect(),
                None => Capability::ALL.into_iter().collect(),
            };
            rules.insert(
                name,
                Rule {
                    require,
                    capabilities,
                },
            );
        }

        if !rules.contains_key(&doc.default_rule) {
            let defined: Vec<String> = rules.keys().map(|r| format!("`{r}`")).collect();
            let defined = match defined.is_empty() {
                true => "no rule is defined".to_owned(),
                false => format!("defined: {}", defined.join(", ")),
            };
            let message = format!("rule `{}` is not defined ({defined})", doc.default_rule);
            return Err(invalid("default_rule".into(), message));
        }

        Ok(Trust {
            origin: origin.to_owned(),
            default_rule: doc.default_rule,
            keys,
            revoked,
            rules,
        })
    }
}

fn is_key_id(text: &str) -> bool {
    text.len() == 16 && text.chars().all(|c| c.is_ascii_hexdigit())
}

/// A public key from its base64 line, with its key ID.
fn public_key(line: &str) -> Result<(String, minisign_verify::PublicKey, [u8; 32]), String> {
    let line = line.trim();
    let not_a_key = |why: String| {
        format!("`{line}` is not a minisign public key (the second line of a .pub file): {why}")
    };
    let id = public_key_id(line).map_err(not_a_key)?;
    let key =
        minisign_verify::PublicKey::from_base64(line).map_err(|e| not_a_key(e.to_string()))?;
    Ok((id, key, ed25519_bytes(line).map_err(not_a_key)?))
}

/// The Ed25519 key of a public key line (`Ed` ‖ key ID ‖ 32 bytes). The key ID is a label
/// neither the key nor a signature covers: one key can be written under any ID, so keys are
/// told apart by these bytes.
fn ed25519_bytes(line: &str) -> Result<[u8; 32], String> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(line)
        .map_err(|e| e.to_string())?;
    raw.get(10..42)
        .filter(|_| raw.len() == 42)
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| format!("{} bytes, not 42", raw.len()))
}

/// Checks one rule's requirements: each names defined identities, at least one, and can be
/// met. Errors carry their place.
fn check_rule(
    rule: &RuleDoc,
    identities: &BTreeMap<String, IdentityDoc>,
    place: &str,
) -> Result<Vec<Requirement>, (String, String)> {
    if rule.require.is_empty() {
        let message =
            "a rule needs at least one requirement (an empty rule would trust any plugin)";
        return Err((format!("{place}.require"), message.into()));
    }
    let mut require = Vec::new();
    for (i, req) in rule.require.iter().enumerate() {
        let place = format!("{place}.require[{i}]");
        let mut any_of = BTreeSet::new();
        for name in &req.any_of {
            if !identities.contains_key(name) {
                let message = format!("identity `{name}` is not defined under [identities]");
                return Err((format!("{place}.any_of"), message));
            }
            if !any_of.insert(name.clone()) {
                return Err((
                    format!("{place}.any_of"),
                    format!("`{name}` is listed twice"),
                ));
            }
        }
        if any_of.is_empty() {
            return Err((format!("{place}.any_of"), "names no identity".into()));
        }
        if req.at_least == 0 {
            let message = "must be 1 or more (0 would require nothing)".to_owned();
            return Err((format!("{place}.at_least"), message));
        }
        if req.at_least > any_of.len() {
            let message = format!(
                "is {} but any_of names {} identit{}: the rule could never be met",
                req.at_least,
                any_of.len(),
                if any_of.len() == 1 { "y" } else { "ies" }
            );
            return Err((format!("{place}.at_least"), message));
        }
        require.push(Requirement {
            role: req.role,
            at_least: req.at_least,
            any_of,
        });
    }
    // Identities every satisfying plugin has as authors (an author requirement that takes all
    // of its any_of) can never review it: a review requirement must be met without them.
    let forced_authors: BTreeSet<&String> = require
        .iter()
        .filter(|r| r.role == Role::Author && r.at_least == r.any_of.len())
        .flat_map(|r| &r.any_of)
        .collect();
    for (i, req) in require.iter().enumerate() {
        let left = req.any_of.iter().filter(|n| !forced_authors.contains(n));
        if req.role == Role::Review && left.count() < req.at_least {
            let authors: Vec<String> = forced_authors.iter().map(|n| format!("`{n}`")).collect();
            let message = format!(
                "needs {} reviewer(s) but, without the author(s) {} (an author never counts as a reviewer), fewer are left: the rule could never be met",
                req.at_least,
                authors.join(", ")
            );
            return Err((format!("{place}.require[{i}]"), message));
        }
    }
    Ok(require)
}
