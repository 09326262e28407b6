//! The store's file discipline: every write goes to a temp file inside the store (same file
//! system), is fsynced, re-read and re-hashed, then renamed into place and the folder fsynced;
//! writers and `gc` hold an exclusive lock on the `oci-layout` file (never replaced, so the
//! lock is always on the same inode); readers take no lock (every file they read is replaced
//! whole by a rename).

use super::StoreError;
use crate::digest::sha256_hex;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The folder of temp files, inside the store.
pub const TMP: &str = ".tmp";

/// Held while writing the store; released on drop.
pub struct Lock {
    _file: File,
}

/// Creates the layout (folders, `oci-layout`) if missing and locks the store.
pub fn lock(root: &Path) -> Result<Lock, StoreError> {
    for dir in [root.join("blobs").join("sha256"), root.join(TMP)] {
        std::fs::create_dir_all(&dir).map_err(StoreError::io("create", &dir))?;
    }
    let path = root.join("oci-layout");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(StoreError::io("open", &path))?;
    file.lock().map_err(StoreError::io("lock", &path))?;
    if file
        .metadata()
        .map_err(StoreError::io("read", &path))?
        .len()
        == 0
    {
        file.write_all(super::layout::OCI_LAYOUT)
            .and_then(|()| file.sync_all())
            .map_err(StoreError::io("write", &path))?;
        sync_dir(root)?;
    }
    Ok(Lock { _file: file })
}

fn temp_path(root: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    root.join(TMP).join(format!(
        "{}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        uuid::Uuid::new_v4().simple()
    ))
}

/// Writes `bytes` to `dest` atomically: temp file in the store, fsync, re-read and re-hash,
/// rename, fsync the folder. The caller holds the [`Lock`].
pub fn write_atomic(root: &Path, dest: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = temp_path(root);
    let result = (|| {
        let mut file = File::create(&tmp).map_err(StoreError::io("create", &tmp))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(StoreError::io("write", &tmp))?;
        drop(file);
        let expected = sha256_hex(bytes);
        let written = std::fs::read(&tmp).map_err(StoreError::io("read back", &tmp))?;
        let actual = sha256_hex(&written);
        if actual != expected {
            return Err(StoreError::Tampered {
                root: root.to_path_buf(),
                expected,
                actual,
            });
        }
        std::fs::rename(&tmp, dest).map_err(StoreError::io("rename into", dest))?;
        sync_dir(dest.parent().unwrap_or(root))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("sync", dir))
}

/// The path of the blob `hex` under `root`.
pub fn blob_path(root: &Path, hex: &str) -> PathBuf {
    root.join("blobs").join("sha256").join(hex)
}

/// Reads a blob once and re-hashes it: `Ok(None)` if it is absent, [`StoreError::Tampered`]
/// if its bytes are not the ones its name says, and a refusal if it is over `max` bytes.
pub fn read_blob(root: &Path, hex: &str, max: u64) -> Result<Option<Vec<u8>>, StoreError> {
    let path = blob_path(root, hex);
    // A regular file only (a FIFO planted in the store must not hang a load), within `max`.
    let bytes = match crate::bounded::read_regular(&path, max) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
            ) =>
        {
            return Err(StoreError::Corrupt {
                path,
                reason: e.to_string(),
            })
        }
        Err(e) => return Err(StoreError::io("read", &path)(e)),
    };
    let actual = sha256_hex(&bytes);
    if actual != hex {
        return Err(StoreError::Tampered {
            root: root.to_path_buf(),
            expected: hex.to_string(),
            actual,
        });
    }
    Ok(Some(bytes))
}

/// Writes a blob unless an intact copy is there (a damaged one is replaced).
pub fn write_blob(root: &Path, bytes: &[u8]) -> Result<String, StoreError> {
    let hex = sha256_hex(bytes);
    match read_blob(root, &hex, bytes.len() as u64) {
        Ok(Some(_)) => return Ok(hex),
        Ok(None) | Err(StoreError::Tampered { .. }) | Err(StoreError::Corrupt { .. }) => {}
        Err(e) => return Err(e),
    }
    write_atomic(root, &blob_path(root, &hex), bytes)?;
    Ok(hex)
}
