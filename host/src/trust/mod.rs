//! Trust: minisign signatures over a plugin's bytes, and the operator's trust file that says
//! whose signatures a plugin needs before the gateway runs it.
//!
//! A plugin's identity is the sha256 of its bytes, and a signature is a detached minisign
//! signature over exactly those bytes, so the `minisign` CLI and toolgate read each other's
//! keys and signatures. One file per idea:
//! - `sign.rs`: key pairs, signing, the signed trusted comment (who vouches, in which role,
//!   until when) and `--expires` dates;
//! - `file.rs`: the operator's `trust.toml`, read and checked whole before anything is judged;
//! - `judge.rs`: a component's signatures against a rule, into a [`Verdict`].
//!
//! # The trusted comment
//!
//! The role and the expiry sit in minisign's *trusted* comment, which the signature covers, so
//! neither can be changed without the key. toolgate writes
//!
//! ```text
//! toolgate role=author expires=2027-01-01T23:59:59Z timestamp=2026-12-10T09:30:00Z file=NAME
//! ```
//!
//! and reads a comment as whitespace-separated tokens only when it is toolgate's (first token
//! `toolgate`) or starts with `role=` or `expires=`, and only up to its `file=`/`file:` token
//! (a file name is not the signer's word: the CLI's default comment carries the raw name, and a
//! file named `x role=review.wasm` must not make a review). Any other comment, such as the
//! CLI's default `timestamp:... file:... hashed`, is an author signature without expiry.
//! Only `role=` and `expires=` mean anything:
//! - `role=author` or `role=review`; no `role=` means author; any other value, or two
//!   `role=`, makes the signature unparseable, and it is ignored;
//! - `expires=` (optional, at most once) is RFC 3339, or YYYY-MM-DD meaning the end of that
//!   day in UTC (23:59:59Z); a signature counts while `now <= expires`;
//! - everything else (`toolgate`, `timestamp=`, `file=`, the CLI's `timestamp:` and `file:`)
//!   is information for people. `file=` comes last, its whitespace replaced by `_`.
//!
//! So `minisign -S -s KEY -m FILE -t 'role=review expires=2027-06-30'` makes a review
//! signature toolgate accepts.

use std::path::{Path, PathBuf};

mod file;
mod judge;
mod sign;
#[cfg(test)]
mod tests;

pub use file::Trust;
pub use judge::{Counted, Ignored, Verdict};
pub use sign::{
    keygen, keygen_prompting, parse_expiry, public_key_id, sign, signature_key_id, signature_path,
    Role,
};

/// Why a trust operation failed: reading or checking a trust file, making keys, signing.
/// Judging never fails: a signature that cannot be used is ignored, with its reason, in the
/// [`Verdict`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// A file could not be read.
    #[error("cannot read `{path}`: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write `{path}`: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `keygen` never overwrites a key.
    #[error("`{0}` already exists: keygen never overwrites a key, choose another name")]
    Exists(PathBuf),
    /// The trust file is not the TOML it should be (syntax, unknown fields, wrong types).
    #[error("trust file `{origin}`: {message}")]
    Syntax {
        /// The trust file.
        origin: String,
        /// The TOML reader's message, with line and column.
        message: String,
    },
    /// The trust file is TOML, but a rule, identity or key in it is unusable.
    #[error("trust file `{origin}`: {place}: {message}")]
    Invalid {
        /// The trust file.
        origin: String,
        /// Where, as a TOML path (`rules.team.require[1].at_least`).
        place: String,
        /// What is wrong.
        message: String,
    },
    /// A judgement asked for a rule the trust file does not define.
    #[error("trust file `{origin}`: rule `{rule}` is not defined")]
    UnknownRule {
        /// The trust file.
        origin: String,
        /// The rule asked for.
        rule: String,
    },
    /// A secret key could not be used (not a minisign key, wrong password).
    #[error("secret key `{path}`: {message}")]
    SecretKey {
        /// The key file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// Key generation or signing failed inside minisign.
    #[error("{0}")]
    Minisign(String),
    /// Not a date `--expires` or `expires=` understands.
    #[error("`{0}` is not an expiry date: write YYYY-MM-DD (the end of that day, UTC) or RFC 3339 (2027-01-01T00:00:00Z)")]
    Expiry(String),
    /// Not `author` or `review`.
    #[error("`{0}` is not a role: write `author` or `review`")]
    Role(String),
}

/// One detached minisign signature (the text of a `.minisig` file), with where it was found.
#[derive(Debug, Clone)]
pub struct Signature {
    /// The `.minisig` text.
    pub text: String,
    /// Where it came from (a file's path, or the store), for messages.
    pub origin: String,
}

/// The largest `.minisig` read: one is about 300 bytes.
pub const MAX_SIGNATURE_BYTES: u64 = 64 * 1024;

/// The signatures beside a component file: `FILE.minisig` (where the `minisign` CLI writes
/// one) and `FILE.<anything>.minisig` (where `toolgate plugin sign` writes one per key).
/// Unreadable files are skipped: a signature that cannot be read (not a regular file, over
/// [`MAX_SIGNATURE_BYTES`], not UTF-8) counts as absent.
pub fn signatures_beside(component: &Path) -> Vec<Signature> {
    let (Some(dir), Some(name)) = (component.parent(), component.file_name()) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let name = name.to_string_lossy();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().map(|f| f.to_string_lossy()).is_some_and(|f| {
                f.strip_prefix(&*name).is_some_and(|rest| {
                    rest == ".minisig" || (rest.starts_with('.') && rest.ends_with(".minisig"))
                })
            })
        })
        .collect();
    paths.sort();
    paths
        .into_iter()
        .filter_map(|path| {
            let bytes = crate::bounded::read_regular(&path, MAX_SIGNATURE_BYTES).ok()?;
            let text = String::from_utf8(bytes).ok()?;
            Some(Signature {
                text,
                origin: path.display().to_string(),
            })
        })
        .collect()
}
