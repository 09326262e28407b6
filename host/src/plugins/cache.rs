//! The compile cache: compiled plugins on disk, each trusted only if it proves itself.
//!
//! A compiled artifact is native code, and `Component::deserialize` runs whatever it is
//! given: whoever can write the cache folder could plant native code, or an allow-all rule
//! under a trusted plugin's digest. So the cache is used only when:
//!
//! - its folder is a directory owned by the gateway's uid, with no group or other permission
//!   bits (0700; the gateway creates it so). Otherwise it is refused as ssh refuses a loose
//!   `~/.ssh`: a warning, and plugins are compiled without the cache; the gateway keeps
//!   working;
//! - its key file (`hmac-key`, 32 random bytes) is a regular file owned by the same uid, with
//!   no group or other bits (created 0600, atomically). A wrong one refuses the cache too;
//! - each artifact carries an HMAC-SHA256 under that key over the component's sha256, the
//!   engine (wasmtime version and configuration hash) and the artifact bytes. It is checked, in
//!   constant time, on the bytes read into memory, and only those bytes are deserialized: the
//!   file is not opened again. An artifact that fails the check (planted, tampered with, or
//!   another component's) is ignored with a warning; the plugin is compiled again and the
//!   entry rewritten.
//!
//! The key never leaves the folder, and a file the gateway did not write under it cannot
//! carry a valid tag, so a loaded artifact is one this uid's gateway compiled from a
//! component with exactly that digest, for exactly this engine.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use subtle::ConstantTimeEq;

/// The first bytes of a cache entry: the format, so that an older layout is never misread.
const MAGIC: &[u8; 16] = b"toolgate-cwasm1\n";
/// HMAC-SHA256 tags are 32 bytes.
const TAG_BYTES: usize = 32;
/// The key file's name, and its length.
const KEY_FILE: &str = "hmac-key";
const KEY_BYTES: usize = 32;
/// Entries larger than this are not read (a planted file could be any size). Compiled
/// plugins are a few MiB at most.
const MAX_ENTRY_BYTES: u64 = 256 << 20;

/// The cache folder of one engine; nothing on disk is touched until [`CompileCache::open`].
pub(crate) struct CompileCache {
    dir: PathBuf,
    /// Names the engine: `wasmtime<version>-<configuration hash>`.
    engine: String,
}

/// The cache, checked and keyed: good for one lookup or store.
pub(crate) struct OpenCache<'a> {
    cache: &'a CompileCache,
    key: [u8; KEY_BYTES],
}

impl CompileCache {
    /// A cache in `dir` for artifacts of the engine named `engine`.
    pub(crate) fn new(dir: PathBuf, engine: String) -> Self {
        Self { dir, engine }
    }

    /// Checks the folder and its key (creating both if missing). `None`, after a warning
    /// saying why and how to fix it, if the cache must not be trusted.
    pub(crate) fn open(&self) -> Option<OpenCache<'_>> {
        match self.checked_key() {
            Ok(key) => Some(OpenCache { cache: self, key }),
            Err(reason) => {
                tracing::warn!(
                    dir = %self.dir.display(),
                    "not using the plugin cache: {reason}; plugins are compiled without it"
                );
                None
            }
        }
    }

    fn checked_key(&self) -> Result<[u8; KEY_BYTES], CacheRefused> {
        let dir = &self.dir;
        let shown = || dir.display().to_string();
        if !dir.exists() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| CacheRefused::Create {
                    dir: shown(),
                    source,
                })?;
        }
        let meta = std::fs::metadata(dir).map_err(|source| CacheRefused::Stat {
            dir: shown(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(CacheRefused::NotADirectory { dir: shown() });
        }
        private(
            &meta,
            &format!("`{}`", shown()),
            &format!("chmod 700 {}", shown()),
        )?;
        let path = dir.join(KEY_FILE);
        match read_key(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                create_key(dir, &path).map_err(CacheRefused::CreateKey)?;
                read_key(&path)
            }
            other => other,
        }
        .map_err(|source| CacheRefused::Key {
            path: path.display().to_string(),
            source,
        })
    }
}

/// Why the cache is not used (the gateway then compiles without it).
#[derive(Debug, thiserror::Error)]
enum CacheRefused {
    #[error("cannot create `{dir}`: {source}")]
    Create { dir: String, source: std::io::Error },
    #[error("cannot read `{dir}`: {source}")]
    Stat { dir: String, source: std::io::Error },
    #[error("`{dir}` is not a directory")]
    NotADirectory { dir: String },
    #[error(transparent)]
    NotPrivate(#[from] NotPrivate),
    #[error("cannot create its key: {0}")]
    CreateKey(std::io::Error),
    #[error("its key `{path}`: {source}")]
    Key {
        path: String,
        source: std::io::Error,
    },
}

/// Why a folder or key file is not private to the gateway's uid; `what` names it, `fix` is
/// the command that makes it private.
#[derive(Debug, thiserror::Error)]
enum NotPrivate {
    #[error("{what} is owned by uid {owner}, not by the gateway's uid {uid}")]
    Owner { what: String, owner: u32, uid: u32 },
    #[error("{what} has mode {mode:03o}: group and others must have no access (`{fix}`)")]
    Mode {
        what: String,
        mode: u32,
        fix: String,
    },
}

/// Owned by this process's effective uid, with no group or other permission bits.
fn private(meta: &std::fs::Metadata, what: &str, fix: &str) -> Result<(), NotPrivate> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if meta.uid() != uid {
        return Err(NotPrivate::Owner {
            what: what.to_owned(),
            owner: meta.uid(),
            uid,
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(NotPrivate::Mode {
            what: what.to_owned(),
            mode,
            fix: fix.to_owned(),
        });
    }
    Ok(())
}

/// Opens `path` for reading without following a symlink or blocking on a FIFO, and checks
/// what was opened (not the path: it could change in between).
fn open_regular(path: &Path) -> std::io::Result<(File, std::fs::Metadata)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok((file, meta))
}

fn read_key(path: &Path) -> std::io::Result<[u8; KEY_BYTES]> {
    let (mut file, meta) = open_regular(path)?;
    private(&meta, "it", &format!("chmod 600 {}", path.display()))
        .map_err(std::io::Error::other)?;
    if meta.len() != KEY_BYTES as u64 {
        return Err(std::io::Error::other(format!(
            "it has {} bytes, not {KEY_BYTES}",
            meta.len()
        )));
    }
    let mut key = [0; KEY_BYTES];
    file.read_exact(&mut key)?;
    Ok(key)
}

/// A temporary name in the cache folder, unique in this process and among processes.
fn temporary(dir: &Path, name: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{name}.{}-{n}.tmp", std::process::id()))
}

/// Writes `bytes` to a new 0600 file next to `path`, then gives it `path`'s name: a reader
/// sees the whole file or none. `replace`: a file already there is replaced; otherwise it is
/// kept (and this one dropped).
fn publish(dir: &Path, path: &Path, bytes: &[u8], replace: bool) -> std::io::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("entry");
    let tmp = temporary(dir, name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        if replace {
            std::fs::rename(&tmp, path)
        } else {
            match std::fs::hard_link(&tmp, path) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                other => other,
            }
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

/// A new random key, unless another process made one first (then that one is kept).
fn create_key(dir: &Path, path: &Path) -> std::io::Result<()> {
    let mut key = [0; KEY_BYTES];
    getrandom::fill(&mut key).map_err(|e| std::io::Error::other(e.to_string()))?;
    publish(dir, path, &key, false)
}

impl OpenCache<'_> {
    fn path(&self, digest: &str) -> PathBuf {
        self.cache
            .dir
            .join(format!("{digest}-{}.cwasm", self.cache.engine))
    }

    /// The tag of `artifact` as the compiled form of the component with sha256 `digest`.
    fn tag(&self, digest: &str, artifact: &[u8]) -> [u8; TAG_BYTES] {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        // Each field length-prefixed: no two different triples give the same input.
        for field in [
            MAGIC.as_slice(),
            digest.as_bytes(),
            self.cache.engine.as_bytes(),
            artifact,
        ] {
            mac.update(&(field.len() as u64).to_le_bytes());
            mac.update(field);
        }
        mac.finalize().into_bytes().into()
    }

    /// The verified artifact of `digest`, or `None`: no entry, or one that failed the check
    /// (with a warning; the caller compiles and [`OpenCache::store`]s it again).
    pub(crate) fn load(&self, digest: &str) -> Option<Vec<u8>> {
        let path = self.path(digest);
        let read = || -> std::io::Result<Vec<u8>> {
            let (file, meta) = open_regular(&path)?;
            if meta.len() > MAX_ENTRY_BYTES {
                return Err(std::io::Error::other(format!(
                    "{} bytes, over the {MAX_ENTRY_BYTES}-byte cap",
                    meta.len()
                )));
            }
            let mut bytes = Vec::with_capacity(meta.len() as usize);
            file.take(MAX_ENTRY_BYTES).read_to_end(&mut bytes)?;
            Ok(bytes)
        };
        let bytes = match read() {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable plugin cache entry");
                return None;
            }
        };
        let verified = bytes
            .strip_prefix(MAGIC.as_slice())
            .filter(|rest| rest.len() >= TAG_BYTES)
            .map(|rest| rest.split_at(TAG_BYTES))
            .filter(|(tag, artifact)| bool::from(self.tag(digest, artifact).ct_eq(tag)));
        match verified {
            Some((_, artifact)) => Some(artifact.to_vec()),
            None => {
                tracing::warn!(
                    path = %path.display(),
                    "ignoring a plugin cache entry that this gateway did not write (its tag does not verify); compiling the plugin again"
                );
                None
            }
        }
    }

    /// Writes `artifact` as the compiled form of `digest`, tagged, replacing any entry.
    pub(crate) fn store(&self, digest: &str, artifact: &[u8]) {
        let path = self.path(digest);
        let mut bytes = Vec::with_capacity(MAGIC.len() + TAG_BYTES + artifact.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&self.tag(digest, artifact));
        bytes.extend_from_slice(artifact);
        if let Err(e) = publish(&self.cache.dir, &path, &bytes, true) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the plugin cache");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "ab";

    fn cache(dir: &Path) -> CompileCache {
        CompileCache::new(dir.join("plugins"), "wasmtime-test".into())
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_new_cache_is_private_and_keeps_what_it_stores() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = cache(tmp.path());
        let open = cache.open().expect("a new cache opens");
        assert_eq!(mode(&cache.dir), 0o700);
        assert_eq!(mode(&cache.dir.join(KEY_FILE)), 0o600);
        assert_eq!(open.load(DIGEST), None);
        open.store(DIGEST, b"artifact");
        assert_eq!(mode(&open.path(DIGEST)), 0o600);
        // A second opening reads the same key back.
        let again = cache.open().unwrap();
        assert_eq!(again.load(DIGEST).as_deref(), Some(&b"artifact"[..]));
        let leftovers: Vec<_> = std::fs::read_dir(&cache.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn an_entry_without_a_valid_tag_is_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = cache(tmp.path());
        let open = cache.open().unwrap();
        open.store(DIGEST, b"artifact");
        let path = open.path(DIGEST);
        let good = std::fs::read(&path).unwrap();
        // Planted raw bytes, a flipped artifact byte, a flipped tag byte, a truncated entry.
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let mut bad_tag = good.clone();
        bad_tag[MAGIC.len()] ^= 1;
        for bytes in [
            b"artifact".to_vec(),
            flipped,
            bad_tag,
            good[..MAGIC.len() + 5].to_vec(),
        ] {
            std::fs::write(&path, &bytes).unwrap();
            assert_eq!(open.load(DIGEST), None, "{bytes:?}");
        }
        // Another component's valid entry, copied under this digest.
        open.store("cd", b"other");
        std::fs::copy(open.path("cd"), &path).unwrap();
        assert_eq!(open.load(DIGEST), None);
        // Another engine's key: its tags do not verify here.
        let other = CompileCache::new(tmp.path().join("elsewhere"), "wasmtime-test".into());
        let other = other.open().unwrap();
        other.store(DIGEST, b"artifact");
        std::fs::copy(other.path(DIGEST), &path).unwrap();
        assert_eq!(open.load(DIGEST), None);
    }

    #[test]
    fn a_loose_folder_or_key_refuses_the_cache() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = cache(tmp.path());
        assert!(cache.open().is_some());
        set_mode(&cache.dir, 0o770);
        assert!(cache.open().is_none(), "a group-writable folder");
        set_mode(&cache.dir, 0o705);
        assert!(cache.open().is_none(), "a world-readable folder");
        set_mode(&cache.dir, 0o700);
        let key = cache.dir.join(KEY_FILE);
        set_mode(&key, 0o640);
        assert!(cache.open().is_none(), "a group-readable key");
        set_mode(&key, 0o600);
        std::fs::write(&key, b"short").unwrap();
        assert!(cache.open().is_none(), "a key of the wrong length");
        std::fs::remove_file(&key).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("elsewhere"), &key).unwrap();
        assert!(cache.open().is_none(), "a symlinked key");
        std::fs::remove_file(&key).unwrap();
        assert!(cache.open().is_some(), "a missing key is made again");
        let file = tmp.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(CompileCache::new(file, "e".into()).open().is_none());
    }

    #[test]
    fn concurrent_openings_agree_on_one_key() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = cache(tmp.path());
        let keys: Vec<[u8; KEY_BYTES]> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| cache.open().unwrap().key))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.windows(2).all(|w| w[0] == w[1]));
    }
}
