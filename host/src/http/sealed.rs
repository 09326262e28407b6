//! Session ids any replica can open (`session_key_file`).
//!
//! With an HTTP upstream and a shared key, the gateway's `Mcp-Session-Id` is not a random id
//! but a sealed token: ChaCha20-Poly1305 (ring) under the key, over what a replica needs to
//! serve the session without having opened it ([`Sealed`]): the grant, the upstream's session
//! id, the session's own id for session-scoped counters, and whether the client declared
//! elicitation. A replica that does not know the id opens it and adopts the session
//! (`Gateway::find`). The token is `tgs1.` and base64url of the nonce (12 random bytes) and
//! the ciphertext with its tag; the prefix is also the associated data, so a token of another
//! format version cannot be passed off as this one.
//!
//! A token that does not open (another key, altered, truncated) is a session that does not
//! exist: the client gets the same 404 as for any unknown id, and learns nothing of why.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What every sealed session id starts with (and the associated data of the seal).
const PREFIX: &str = "tgs1.";

/// What a sealed session id carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Sealed {
    /// The grant that opened the session: only its token may use the id.
    #[serde(rename = "g")]
    pub(crate) grant: String,
    /// The upstream's `Mcp-Session-Id`, if it gave one.
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    pub(crate) upstream: Option<String>,
    /// The session's own id, under which `scope: session` counters count on every replica.
    #[serde(rename = "s")]
    pub(crate) session: String,
    /// Whether the client declared `capabilities.elicitation` in its `initialize`.
    #[serde(rename = "e", default)]
    pub(crate) client_elicits: bool,
}

/// The replicas' shared key.
pub(crate) struct SessionKey(LessSafeKey);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

impl SessionKey {
    /// The key from 32 bytes.
    pub(crate) fn new(bytes: &[u8; 32]) -> Self {
        let key = UnboundKey::new(&CHACHA20_POLY1305, bytes).expect("a 32-byte key");
        Self(LessSafeKey::new(key))
    }

    /// Reads the key file: 64 hex characters (32 bytes, e.g. `openssl rand -hex 32`), owned
    /// by the gateway's user and readable by nobody else, as the plugin cache's key is.
    pub(crate) fn load(path: &Path) -> anyhow::Result<Self> {
        use anyhow::{bail, Context};
        let shown = path.display();
        let meta = std::fs::metadata(path)
            .with_context(|| format!("cannot read the session key file `{shown}`"))?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        if meta.uid() != uid {
            bail!(
                "the session key file `{shown}` is owned by uid {}, not by the gateway's uid {uid}",
                meta.uid()
            );
        }
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!("the session key file `{shown}` has mode {mode:03o}: group and others must have no access (`chmod 600 {shown}`)");
        }
        let text = std::fs::read(path)
            .with_context(|| format!("cannot read the session key file `{shown}`"))?;
        let text = text.trim_ascii();
        let mut key = [0u8; 32];
        match hex::decode_to_slice(text, &mut key) {
            Ok(()) => Ok(Self::new(&key)),
            Err(_) => bail!("the session key file `{shown}` must hold exactly 64 hex characters (32 bytes), e.g. from `openssl rand -hex 32`; it holds {} bytes that are not that", text.len()),
        }
    }

    /// A new session id sealing `what`, with a fresh random nonce.
    pub(crate) fn seal(&self, what: &Sealed) -> anyhow::Result<String> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let mut data = serde_json::to_vec(what)?;
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(PREFIX),
                &mut data,
            )
            .map_err(|_| anyhow::anyhow!("cannot seal a session id"))?;
        let mut token = nonce.to_vec();
        token.extend_from_slice(&data);
        Ok(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(token)))
    }

    /// What a session id seals, if it was sealed under this key and not altered.
    pub(crate) fn open(&self, id: &str) -> Option<Sealed> {
        let token = URL_SAFE_NO_PAD.decode(id.strip_prefix(PREFIX)?).ok()?;
        if token.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = token.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut sealed = sealed.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(PREFIX), &mut sealed)
            .ok()?;
        serde_json::from_slice(plain).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sealed() -> Sealed {
        Sealed {
            grant: "agent-a".into(),
            upstream: Some("up-123".into()),
            session: "0b7c".into(),
            client_elicits: true,
        }
    }

    #[test]
    fn a_sealed_id_opens_under_its_key_only() {
        let key = SessionKey::new(&[7; 32]);
        let id = key.seal(&sealed()).unwrap();
        assert!(id.starts_with(PREFIX));
        assert_eq!(key.open(&id), Some(sealed()));
        assert_ne!(id, key.seal(&sealed()).unwrap(), "a fresh nonce each time");
        assert_eq!(SessionKey::new(&[8; 32]).open(&id), None, "another key");
        let none = Sealed {
            upstream: None,
            ..sealed()
        };
        assert_eq!(key.open(&key.seal(&none).unwrap()), Some(none));
    }

    #[test]
    fn an_altered_id_does_not_open() {
        let key = SessionKey::new(&[7; 32]);
        let id = key.seal(&sealed()).unwrap();
        let body = id.strip_prefix(PREFIX).unwrap();
        for at in [0, 5, body.len() / 2, body.len() - 1] {
            let mut bytes = body.as_bytes().to_vec();
            bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
            let altered = format!("{PREFIX}{}", String::from_utf8(bytes).unwrap());
            assert_eq!(key.open(&altered), None, "altered at {at}");
        }
        assert_eq!(key.open(&id[..id.len() - 4]), None, "truncated");
        assert_eq!(key.open(&format!("tgs2.{body}")), None, "another version");
        assert_eq!(key.open("tgs1."), None);
        assert_eq!(key.open("9d3c3c9e-6f7e-4c36-a2a0-2b1f1b7e1a10"), None);
    }

    #[test]
    fn the_grant_is_sealed_in() {
        // Replacing the grant needs a new seal, which only the key can make: what opens
        // carries the grant it was sealed with, and `Gateway::find` compares it.
        let key = SessionKey::new(&[7; 32]);
        let opened = key.open(&key.seal(&sealed()).unwrap()).unwrap();
        assert_eq!(opened.grant, "agent-a");
        assert_ne!(opened.grant, "agent-b");
    }

    #[test]
    fn a_key_file_must_be_private_and_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, format!("{}\n", "ab".repeat(32))).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let key = SessionKey::load(&path).unwrap();
        assert!(SessionKey::new(&[0xab; 32])
            .open(&key.seal(&sealed()).unwrap())
            .is_some());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = SessionKey::load(&path).unwrap_err().to_string();
        assert!(e.contains("mode 644") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        for bad in ["ab".repeat(16), "zz".repeat(32), "ab".repeat(33)] {
            std::fs::write(&path, bad).unwrap();
            let e = SessionKey::load(&path).unwrap_err().to_string();
            assert!(e.contains("64 hex characters"), "{e}");
        }
        let e = SessionKey::load(&dir.path().join("missing")).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
    }
}
