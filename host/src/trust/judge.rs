//! Judging a component's signatures against a rule of the trust file.
//!
//! Each signature is used or ignored on its own (not minisign, unknown key, revoked key, not
//! over these bytes, unreadable trusted comment, expired), and an ignored one is only ever
//! reported, never fatal: a stray file beside a plugin cannot make it fail, only not count.
//! The requirements then count **distinct identities** (two keys of one identity are one
//! signer), and an identity that signed these bytes as author never counts as a reviewer.

use super::file::{Rule, Trust};
use super::sign::{read_comment, rfc3339, signature_key_id, Role};
use super::{Signature, TrustError};
use crate::capability::Capability;
use crate::digest::sha256_hex;
use chrono::{DateTime, Utc};
use std::collections::BTreeSet;

/// One requirement of a rule: at least `at_least` distinct identities of `any_of` signed in
/// `role`.
#[derive(Debug)]
pub(crate) struct Requirement {
    pub role: Role,
    pub at_least: usize,
    pub any_of: BTreeSet<String>,
}

/// A signature that counts: valid over these bytes, by a known, unrevoked key, unexpired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    /// The identity its key belongs to.
    pub identity: String,
    /// The role its trusted comment names.
    pub role: Role,
    /// The key's ID (16 uppercase hex digits).
    pub key_id: String,
    /// Where the signature was found.
    pub origin: String,
    /// Until when it counts, if it says.
    pub expires: Option<DateTime<Utc>>,
}

/// A signature that does not count, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    /// Where the signature was found.
    pub origin: String,
    /// Why it does not count.
    pub reason: String,
}

/// The judgement of one component by one rule.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The rule it was judged by.
    pub rule: String,
    /// The signatures that count.
    pub counted: Vec<Counted>,
    /// The signatures that do not, with why.
    pub ignored: Vec<Ignored>,
    /// One line per unmet requirement (signatures or capabilities); empty when satisfied.
    pub unmet: Vec<String>,
}

impl Verdict {
    /// Whether every requirement of the rule is met.
    pub fn satisfied(&self) -> bool {
        self.unmet.is_empty()
    }

    /// The verdict in lines, for messages: the outcome, then what counted, what was ignored
    /// and why, and what is unmet.
    pub fn explain(&self) -> String {
        let outcome = if self.satisfied() {
            "satisfied"
        } else {
            "not satisfied"
        };
        let mut out = format!("rule `{}`: {outcome}", self.rule);
        if !self.counted.is_empty() {
            out += "\ncounted:";
            for c in &self.counted {
                let until = c.expires.map(|e| format!(", until {}", rfc3339(e)));
                out += &format!(
                    "\n  {} ({}, key {}{}): {}",
                    c.identity,
                    c.role,
                    c.key_id,
                    until.unwrap_or_default(),
                    c.origin
                );
            }
        }
        if !self.ignored.is_empty() {
            out += "\nignored:";
            for i in &self.ignored {
                out += &format!("\n  {}: {}", i.origin, i.reason);
            }
        }
        if !self.unmet.is_empty() {
            out += "\nunmet:";
            for line in &self.unmet {
                out += &format!("\n  {line}");
            }
        }
        out
    }
}

impl Trust {
    /// Judges `component`'s signatures by the default rule, including that `capabilities`
    /// (what the plugin may link) are within the rule's maximum.
    pub fn judge(
        &self,
        component: &[u8],
        signatures: &[Signature],
        capabilities: &BTreeSet<Capability>,
        now: DateTime<Utc>,
    ) -> Verdict {
        match self.rules.get(&self.default_rule) {
            Some(rule) => self.verdict(
                &self.default_rule,
                rule,
                component,
                signatures,
                capabilities,
                now,
            ),
            // `parse` refuses a file whose default rule is not defined; kept total all the same.
            None => Verdict {
                rule: self.default_rule.clone(),
                counted: Vec::new(),
                ignored: Vec::new(),
                unmet: vec![format!("rule `{}` is not defined", self.default_rule)],
            },
        }
    }

    /// [`Trust::judge`] by the rule named `rule` instead of the default one.
    pub fn judge_by(
        &self,
        rule: &str,
        component: &[u8],
        signatures: &[Signature],
        capabilities: &BTreeSet<Capability>,
        now: DateTime<Utc>,
    ) -> Result<Verdict, TrustError> {
        let found = self
            .rules
            .get(rule)
            .ok_or_else(|| TrustError::UnknownRule {
                origin: self.origin.clone(),
                rule: rule.to_owned(),
            })?;
        Ok(self.verdict(rule, found, component, signatures, capabilities, now))
    }

    fn verdict(
        &self,
        name: &str,
        rule: &Rule,
        component: &[u8],
        signatures: &[Signature],
        capabilities: &BTreeSet<Capability>,
        now: DateTime<Utc>,
    ) -> Verdict {
        let (mut counted, mut ignored) = (Vec::new(), Vec::new());
        for signature in signatures {
            match self.check(component, signature, now) {
                Ok(c) => counted.push(c),
                Err(reason) => ignored.push(Ignored {
                    origin: signature.origin.clone(),
                    reason,
                }),
            }
        }

        // An author of these bytes is never their reviewer.
        let authors: BTreeSet<String> = counted
            .iter()
            .filter(|c| c.role == Role::Author)
            .map(|c| c.identity.clone())
            .collect();
        let (self_reviews, counted): (Vec<Counted>, Vec<Counted>) = counted
            .into_iter()
            .partition(|c| c.role == Role::Review && authors.contains(&c.identity));
        for c in self_reviews {
            let reason = format!(
                "a review by `{0}` (key {1}) does not count: `{0}` also signed these bytes as author",
                c.identity, c.key_id
            );
            ignored.push(Ignored {
                origin: c.origin,
                reason,
            });
        }

        let mut unmet = Vec::new();
        for req in &rule.require {
            let found: BTreeSet<&str> = counted
                .iter()
                .filter(|c| c.role == req.role && req.any_of.contains(&c.identity))
                .map(|c| c.identity.as_str())
                .collect();
            if found.len() < req.at_least {
                unmet.push(describe(req, &found));
            }
        }
        let over: Vec<Capability> = capabilities
            .difference(&rule.capabilities)
            .copied()
            .collect();
        for capability in over {
            let allowed: Vec<&str> = rule.capabilities.iter().map(|c| c.name()).collect();
            let allowed = match allowed.is_empty() {
                true => "allows none".to_owned(),
                false => format!("allows {}", allowed.join(", ")),
            };
            unmet.push(format!(
                "capability `{capability}` is not allowed by rule `{name}` ({allowed})"
            ));
        }
        Verdict {
            rule: name.to_owned(),
            counted,
            ignored,
            unmet,
        }
    }

    /// One signature on its own: counted, or why not.
    fn check(
        &self,
        component: &[u8],
        signature: &Signature,
        now: DateTime<Utc>,
    ) -> Result<Counted, String> {
        let parsed = minisign_verify::Signature::decode(&signature.text)
            .map_err(|e| format!("not a minisign signature: {e}"))?;
        let id = signature_key_id(&signature.text)
            .ok_or_else(|| "not a minisign signature: no key ID".to_owned())?;
        if self.revoked.contains(&id) {
            return Err(format!("key {id} is revoked by the trust file"));
        }
        let key = self
            .keys
            .get(&id)
            .ok_or_else(|| format!("key {id} is not in the trust file"))?;
        let identity = &key.identity;
        key.key.verify(component, &parsed, false).map_err(|e| match e {
            minisign_verify::Error::UnexpectedAlgorithm => format!(
                "key {id} ({identity}): a legacy signature (not prehashed), which toolgate does not accept; sign again with a current minisign"
            ),
            _ => format!(
                "key {id} ({identity}): the signature is not over these bytes (sha256 {}), or its trusted comment was altered",
                sha256_hex(component)
            ),
        })?;
        let comment = parsed.trusted_comment();
        let vouch = read_comment(comment).map_err(|e| {
            format!("key {id} ({identity}): trusted comment `{comment}` cannot be read: {e}")
        })?;
        if let Some(expires) = vouch.expires.filter(|e| now > *e) {
            return Err(format!(
                "key {id} ({identity}): {} signature expired on {}",
                vouch.role,
                rfc3339(expires)
            ));
        }
        Ok(Counted {
            identity: identity.clone(),
            role: vouch.role,
            key_id: id,
            origin: signature.origin.clone(),
            expires: vouch.expires,
        })
    }
}

/// An unmet requirement in one line: what it asks, and what was found.
fn describe(req: &Requirement, found: &BTreeSet<&str>) -> String {
    let names: Vec<&str> = req.any_of.iter().map(String::as_str).collect();
    let names = names.join(", ");
    let other = match req.role {
        Role::Review => " other than the author",
        Role::Author => "",
    };
    let asked = match req.at_least {
        1 => format!(
            "{} {} signature by one of {names}{other}",
            if req.role == Role::Author { "an" } else { "a" },
            req.role
        ),
        n => format!(
            "{n} {} signatures by distinct identities of {names}{other}",
            req.role
        ),
    };
    let found = match found.len() {
        0 => "none found".to_owned(),
        n => format!(
            "{n} found ({})",
            found.iter().copied().collect::<Vec<_>>().join(", ")
        ),
    };
    format!("{asked}: {found}")
}
