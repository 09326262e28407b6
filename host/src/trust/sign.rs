//! Key pairs, signatures and the trusted comment (its format is in the module doc of
//! `trust/mod.rs`). Keys and signatures are minisign's own files, made with the `minisign`
//! crate, so the `minisign` CLI reads them and toolgate reads the CLI's.

use super::TrustError;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use minisign::{KeyPair, PublicKey, SecretKey, SecretKeyBox, SignatureBox};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What a signer vouches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The signer wrote the plugin (or builds and publishes it).
    Author,
    /// The signer read the plugin's source and vouches for it; never the author.
    Review,
}

impl Role {
    /// Its name, as written in trusted comments, trust files and `--role`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Author => "author",
            Role::Review => "review",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = TrustError;
    fn from_str(s: &str) -> Result<Role, TrustError> {
        match s {
            "author" => Ok(Role::Author),
            "review" => Ok(Role::Review),
            _ => Err(TrustError::Role(s.to_owned())),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `NAME` with `suffix` appended (`alice` → `alice.key`; `keys/alice.v2` → `keys/alice.v2.key`:
/// appended, never a replaced extension).
fn with_suffix(name: &Path, suffix: &str) -> PathBuf {
    let mut os = name.as_os_str().to_owned();
    os.push(suffix);
    PathBuf::from(os)
}

/// Makes a minisign key pair and writes `NAME.key` (the secret key, mode 0600 on unix) and
/// `NAME.pub`; `password: None` leaves the secret key unencrypted (for CI). Never overwrites:
/// either file existing is an error, checked before any key is made.
pub fn keygen(name: &Path, password: Option<&str>) -> Result<(PathBuf, PathBuf), TrustError> {
    write_pair(name, || match password {
        None => KeyPair::generate_unencrypted_keypair(),
        Some(password) => KeyPair::generate_encrypted_keypair(Some(password.to_owned())),
    })
}

/// [`keygen`] with an encrypted secret key whose password minisign asks for twice on the
/// terminal (its messages go to stdout).
pub fn keygen_prompting(name: &Path) -> Result<(PathBuf, PathBuf), TrustError> {
    write_pair(name, || KeyPair::generate_encrypted_keypair(None))
}

fn write_pair(
    name: &Path,
    generate: impl FnOnce() -> minisign::Result<KeyPair>,
) -> Result<(PathBuf, PathBuf), TrustError> {
    let (secret, public) = (with_suffix(name, ".key"), with_suffix(name, ".pub"));
    for path in [&secret, &public] {
        if path.exists() {
            return Err(TrustError::Exists(path.clone()));
        }
    }
    let pair = generate().map_err(|e| TrustError::Minisign(format!("cannot make a key: {e}")))?;
    let id = key_id(pair.pk.keynum());
    let secret_text = pair
        .sk
        .to_box(Some(&format!("toolgate secret key {id}")))
        .map_err(|e| TrustError::Minisign(e.to_string()))?
        .to_string();
    let public_text = pair
        .pk
        .to_box()
        .map_err(|e| TrustError::Minisign(e.to_string()))?
        .to_string();
    write_new(&secret, &secret_text, true)?;
    write_new(&public, &public_text, false)?;
    Ok((secret, public))
}

fn write_new(path: &Path, text: &str, secret: bool) -> Result<(), TrustError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let write = |path: &Path| -> std::io::Result<()> {
        let mut file = options.open(path)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    };
    write(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => TrustError::Exists(path.to_owned()),
        _ => TrustError::Write {
            path: path.to_owned(),
            source,
        },
    })
}

/// A minisign key ID as the CLI prints it: the 8 key-number bytes as a little-endian u64, in
/// 16 uppercase hex digits (`minisign public key FAA6B01E8D58ACC1`).
pub(crate) fn key_id(keynum: &[u8]) -> String {
    let mut bytes = [0u8; 8];
    let n = keynum.len().min(8);
    bytes[..n].copy_from_slice(&keynum[..n]);
    format!("{:016X}", u64::from_le_bytes(bytes))
}

/// The key ID of a public key given as its base64 line (the second line of a `.pub` file).
pub fn public_key_id(base64: &str) -> Result<String, String> {
    let key = PublicKey::from_base64(base64.trim()).map_err(|e| e.to_string())?;
    minisign_verify::PublicKey::from_base64(base64.trim()).map_err(|e| e.to_string())?;
    Ok(key_id(key.keynum()))
}

/// The key ID a `.minisig` text names, or `None` if it is not a minisign signature.
pub fn signature_key_id(text: &str) -> Option<String> {
    let signature = SignatureBox::from_string(text).ok()?;
    Some(key_id(signature.keynum()))
}

/// Where `toolgate plugin sign` writes a signature: `FILE.<KEYID>.minisig` beside the
/// component, one per key (signing again with the same key replaces it).
pub fn signature_path(component: &Path, public_key_id: &str) -> PathBuf {
    with_suffix(component, &format!(".{public_key_id}.minisig"))
}

/// Reads a secret key: unencrypted keys as they are, encrypted ones with `password` (`None`:
/// minisign asks on the terminal).
fn read_secret_key(path: &Path, password: Option<&str>) -> Result<SecretKey, TrustError> {
    let text = std::fs::read_to_string(path).map_err(|source| TrustError::Read {
        path: path.to_owned(),
        source,
    })?;
    let unusable = |e: minisign::PError| TrustError::SecretKey {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let boxed = SecretKeyBox::from_string(&text).map_err(unusable)?;
    match SecretKey::from_unencrypted_box(boxed.clone()) {
        Ok(key) => Ok(key),
        // An unencrypted key whose checksum is wrong: corrupt, no password would help.
        Err(e) if matches!(e.kind(), minisign::ErrorKind::Verify) => Err(unusable(e)),
        Err(_) => SecretKey::from_box(boxed, password.map(str::to_owned)).map_err(unusable),
    }
}

/// The trusted comment toolgate writes (format in the module doc of `trust/mod.rs`).
pub(crate) fn trusted_comment(
    role: Role,
    expires: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    file_name: &str,
) -> String {
    let mut comment = format!("toolgate role={role}");
    if let Some(expires) = expires {
        comment += &format!(" expires={}", rfc3339(expires));
    }
    let file: String = file_name
        .chars()
        .map(|c| {
            if c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    comment + &format!(" timestamp={} file={file}", rfc3339(now))
}

/// A date as toolgate writes it: RFC 3339, UTC, whole seconds (`2027-01-01T23:59:59Z`).
pub(crate) fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// What a trusted comment says: the role and the expiry.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Vouch {
    pub role: Role,
    pub expires: Option<DateTime<Utc>>,
}

/// Reads a trusted comment: `role=` (absent: author) and `expires=`, each at most once; the
/// other tokens are for people.
///
/// Only a comment that is toolgate's (`toolgate role=...`) or that starts with one of the two
/// keys (`minisign -t 'role=review'`) is read, and only up to its `file=`/`file:` token: a
/// file name is not the signer's word. The `minisign` CLI's default comment
/// (`timestamp:N\tfile:NAME\thashed`) puts the raw file name in it, so a file named
/// `q role=review.wasm` would otherwise turn an author's signature into a review.
pub(crate) fn read_comment(comment: &str) -> Result<Vouch, String> {
    let (mut role, mut expires) = (None, None);
    let mut tokens = comment.split_whitespace().peekable();
    let ours = match tokens.peek() {
        Some(&"toolgate") => {
            tokens.next();
            true
        }
        Some(first) => first.starts_with("role=") || first.starts_with("expires="),
        None => false,
    };
    if !ours {
        return Ok(Vouch {
            role: Role::Author,
            expires: None,
        });
    }
    for token in tokens {
        if token.starts_with("file=") || token.starts_with("file:") {
            break;
        }
        let Some((key, value)) = token.split_once('=') else {
            continue;
        };
        match key {
            "role" if role.is_some() => return Err("`role=` appears twice".into()),
            "role" => role = Some(value.parse::<Role>().map_err(|e| e.to_string())?),
            "expires" if expires.is_some() => return Err("`expires=` appears twice".into()),
            "expires" => expires = Some(parse_expiry(value).map_err(|e| e.to_string())?),
            _ => {}
        }
    }
    Ok(Vouch {
        role: role.unwrap_or(Role::Author),
        expires,
    })
}

/// Reads `--expires` or `expires=`: RFC 3339 (any offset, kept as the same instant in UTC), or
/// YYYY-MM-DD meaning the last second of that day in UTC (`2027-01-01` → `2027-01-01T23:59:59Z`),
/// so a signature "until the 1st" still counts on the 1st everywhere.
pub fn parse_expiry(text: &str) -> Result<DateTime<Utc>, TrustError> {
    let text = text.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .filter(|_| text.len() == 10)
        .and_then(|day| day.and_hms_opt(23, 59, 59))
        .map(|at| at.and_utc())
        .ok_or_else(|| TrustError::Expiry(text.to_owned()))
}

/// Signs `component` with the secret key at `secret_key` and returns the `.minisig` text: a
/// prehashed minisign signature whose trusted comment names `role`, `expires` (if any), the
/// time and `file_name`. `password` opens an encrypted key (`None`: minisign asks on the
/// terminal; ignored for an unencrypted key). The signature is checked against the key's own
/// public half before it is returned. An `expires` in the past is not refused here: judging
/// is where a date matters.
pub fn sign(
    component: &[u8],
    file_name: &str,
    secret_key: &Path,
    password: Option<&str>,
    role: Role,
    expires: Option<DateTime<Utc>>,
) -> Result<String, TrustError> {
    let secret = read_secret_key(secret_key, password)?;
    let public = PublicKey::from_secret_key(&secret).map_err(|e| TrustError::SecretKey {
        path: secret_key.to_owned(),
        message: e.to_string(),
    })?;
    let id = key_id(public.keynum());
    let comment = trusted_comment(role, expires, Utc::now(), file_name);
    let untrusted = format!("toolgate {role} signature, minisign key {id}");
    let signature = minisign::sign(
        Some(&public),
        &secret,
        std::io::Cursor::new(component),
        Some(&comment),
        Some(&untrusted),
    )
    .map_err(|e| TrustError::Minisign(format!("cannot sign: {e}")))?;
    Ok(signature.into_string())
}
