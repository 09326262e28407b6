//! The plugin store: components kept by the sha256 of their bytes, with their signatures, on
//! disk as an OCI image layout; and the ways in and out of it (`oci.rs`: push and pull against
//! a registry; `bundle.rs`: save and load a tar for air-gapped machines).
//!
//! **One identity: the sha256 of the component's bytes.** Tags, paths and OCI manifest digests
//! are transport; signatures (detached minisign texts) cover those exact bytes. The gateway
//! resolves a policy entry `{"ref": "HOST[:PORT]/REPO:TAG", "sha256": "<hex>"}` from the store
//! only, by its sha256 ([`Store::component`]: one read, re-hashed; the caller compiles that
//! same buffer). It never opens a connection and never follows a tag at run time; the `ref` is
//! for people and for the message when the component is missing
//! ([`StoreError::for_reference`]: "run `toolgate plugin pull oci://REF --sha256 HEX`").
//!
//! ## On disk (`TOOLGATE_STORE`, else `$XDG_DATA_HOME/toolgate/store`, else
//! `~/.local/share/toolgate/store`)
//! ```text
//! oci-layout            {"imageLayoutVersion":"1.0.0"}; writers lock this file
//! index.json            an OCI image index: one entry per plugin reference, one per signature
//! blobs/sha256/<hex>    manifests, configs, components, .minisig texts
//! .tmp/                 temp files of writes in progress (removed by `gc`)
//! ```
//! `index.json` entries (all `application/vnd.oci.image.manifest.v1+json`):
//! - a plugin: annotations `org.opencontainers.image.ref.name` = `HOST[:PORT]/REPO:TAG` (absent
//!   for a plugin added without a reference; one entry per reference) and
//!   `dev.toolgate.component` = `sha256:<component hex>`;
//! - a signature: `artifactType` `application/vnd.toolgate.minisign.v1`, annotation
//!   `dev.toolgate.component`; its manifest's `subject` is the plugin manifest.
//!
//! Manifests are built by `layout.rs` from the component alone (the CNCF wasm layout with a
//! fixed `created`), so a component has the same plugin manifest in the store, in a registry
//! and in a bundle. Writes: temp file in the store, fsync, re-hash, rename (`files.rs`).

mod bundle;
mod error;
mod files;
pub mod layout;
mod oci;

pub use bundle::{load, save};
pub use error::StoreError;
pub use oci::{pull, push, PushReport, Target};

use crate::digest::sha256_hex;
use crate::trust::Signature;
use layout::{Descriptor, Index, COMPONENT, MANIFEST, MAX_MANIFEST, MAX_SIGNATURE, REF_NAME};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The largest component the store takes (a std guest is about 1 to 3 MiB).
pub const MAX_COMPONENT: u64 = 256 * 1024 * 1024;

/// The plugin store at one folder. Cheap to make: nothing is read or created until used.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// One plugin in the store, as `toolgate plugin ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoreEntry {
    /// The component's sha256 (hex): its identity.
    pub sha256: String,
    /// The references it was pulled, loaded or added under (`HOST[:PORT]/REPO:TAG`), sorted.
    pub refs: Vec<String>,
    /// The component's size in bytes (0 if its blob is missing).
    pub size: u64,
    /// How many signatures the store keeps for it.
    pub signatures: usize,
}

/// What `remove` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// The component the reference or digest named.
    pub sha256: String,
    /// Whether the component itself went (false: only a reference, others remain).
    pub component_removed: bool,
    /// The blobs that became unused and were deleted.
    pub gc: GcReport,
}

/// What `gc` deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    /// Blobs no index entry reaches.
    pub blobs_removed: usize,
    /// Their bytes, plus those of leftover temp files.
    pub bytes_freed: u64,
    /// Temp files of interrupted writes.
    pub temp_files_removed: usize,
}

impl Store {
    /// The store at `TOOLGATE_STORE`, or the default folder under the user's data folder.
    pub fn from_env() -> Result<Store, StoreError> {
        let var = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        if let Some(root) = var("TOOLGATE_STORE") {
            return Ok(Store::at(root));
        }
        let data = var("XDG_DATA_HOME")
            .filter(|p| p.is_absolute())
            .or_else(|| var("HOME").map(|home| home.join(".local").join("share")))
            .ok_or(StoreError::NoStoreFolder)?;
        Ok(Store::at(data.join("toolgate").join("store")))
    }

    /// The store at `root`.
    pub fn at(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    /// The store's folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Adds a component and its signatures, under `reference` (`[oci://]HOST[:PORT]/REPO:TAG`)
    /// if given, atomically; returns its sha256. A reference already naming another component
    /// moves to this one (the other stays, by digest). Adding what is there changes nothing.
    pub fn add(
        &self,
        component: &[u8],
        reference: Option<&str>,
        signatures: &[Signature],
    ) -> Result<String, StoreError> {
        let reference = reference
            .map(|r| Target::parse(r).map(|t| t.to_string()))
            .transpose()?;
        if component.len() as u64 > MAX_COMPONENT {
            return Err(StoreError::TooLarge {
                what: "the component".into(),
                size: component.len() as u64,
                max: MAX_COMPONENT,
            });
        }
        for signature in signatures {
            check_signature(signature)?;
        }
        let sha256 = sha256_hex(component);
        let plugin = layout::plugin_artifact(component);
        let subject = plugin.descriptor();
        let signatures: Vec<_> = signatures
            .iter()
            .map(|s| layout::signature_artifact(&subject, &s.text))
            .collect();

        let _lock = files::lock(&self.root)?;
        for artifact in std::iter::once(&plugin).chain(&signatures) {
            for (_, bytes) in &artifact.blobs {
                files::write_blob(&self.root, bytes)?;
            }
            files::write_blob(&self.root, &artifact.manifest)?;
        }
        let mut index = self.read_index()?;
        let component_digest = format!("sha256:{sha256}");
        if let Some(reference) = &reference {
            untag(&mut index, reference, &component_digest);
            index.manifests.retain(|e| {
                !(e.annotation(COMPONENT) == Some(&component_digest)
                    && e.artifact_type.is_none()
                    && e.annotation(REF_NAME).is_none())
            });
        }
        let has_entry = index.manifests.iter().any(|e| {
            e.annotation(COMPONENT) == Some(&component_digest) && e.artifact_type.is_none()
        });
        if reference.is_some() || !has_entry {
            let entry = plugin_entry(&subject, &sha256, reference.as_deref());
            if !index.manifests.contains(&entry) {
                index.manifests.push(entry);
            }
        }
        for signature in &signatures {
            let mut entry = signature.descriptor();
            entry.artifact_type = Some(layout::SIGNATURE_ARTIFACT.to_string());
            entry.annotations = Some(BTreeMap::from([(
                COMPONENT.into(),
                component_digest.clone(),
            )]));
            if !index.manifests.contains(&entry) {
                index.manifests.push(entry);
            }
        }
        self.write_index(&index)?;
        Ok(sha256)
    }

    /// Adds one signature (a `.minisig` text) to a component already in the store.
    pub fn add_signature(&self, sha256: &str, signature_text: &str) -> Result<(), StoreError> {
        let sha256 = parse_digest(sha256)?;
        let component = self.component(&sha256)?;
        let signature = Signature {
            text: signature_text.to_string(),
            origin: "signature".into(),
        };
        self.add(&component, None, &[signature]).map(|_| ())
    }

    /// The component's bytes, read once and re-hashed: [`StoreError::Missing`] if the store
    /// does not have it, [`StoreError::Tampered`] if the bytes do not hash to `sha256`.
    pub fn component(&self, sha256: &str) -> Result<Vec<u8>, StoreError> {
        let sha256 = parse_digest(sha256)?;
        let index = self.read_index()?;
        let digest = format!("sha256:{sha256}");
        let entries: Vec<_> = plugin_entries(&index)
            .filter(|e| e.annotation(COMPONENT) == Some(&digest))
            .collect();
        let missing = || StoreError::Missing {
            reference: entries
                .iter()
                .find_map(|e| e.annotation(REF_NAME))
                .map(str::to_string),
            sha256: sha256.clone(),
            root: self.root.clone(),
        };
        if entries.is_empty() {
            return Err(missing());
        }
        files::read_blob(&self.root, &sha256, MAX_COMPONENT)?.ok_or_else(missing)
    }

    /// The component's signatures, in the order they were added; `origin` is
    /// `store:<first 12 hex>/<n>`.
    pub fn signatures(&self, sha256: &str) -> Result<Vec<Signature>, StoreError> {
        let sha256 = parse_digest(sha256)?;
        let index = self.read_index()?;
        let digest = format!("sha256:{sha256}");
        let mut out = Vec::new();
        for entry in index.manifests.iter().filter(|e| {
            e.artifact_type.as_deref() == Some(layout::SIGNATURE_ARTIFACT)
                && e.annotation(COMPONENT) == Some(&digest)
        }) {
            let manifest = self.manifest(entry)?;
            let (_, layer) = layout::signature_parts(&manifest)
                .map_err(|reason| self.corrupt(&entry.digest, reason))?;
            let text = self.blob(&layer.digest, MAX_SIGNATURE)?;
            let text = String::from_utf8(text)
                .map_err(|_| self.corrupt(&layer.digest, "a signature that is not UTF-8".into()))?;
            out.push(Signature {
                text,
                origin: format!("store:{}/{}", &sha256[..12], out.len() + 1),
            });
        }
        Ok(out)
    }

    /// The sha256 a reference (`[oci://]HOST[:PORT]/REPO:TAG`) or digest (`[sha256:]HEX`) names
    /// in the store, if any.
    pub fn resolve(&self, ref_or_digest: &str) -> Result<Option<String>, StoreError> {
        let index = self.read_index()?;
        Ok(resolve_in(&index, ref_or_digest))
    }

    /// The plugins in the store, by sha256.
    pub fn list(&self) -> Result<Vec<StoreEntry>, StoreError> {
        let index = self.read_index()?;
        let mut entries: BTreeMap<String, StoreEntry> = BTreeMap::new();
        for entry in plugin_entries(&index) {
            let Some(sha256) = entry.annotation(COMPONENT).and_then(layout::digest_hex) else {
                continue;
            };
            let item = entries
                .entry(sha256.to_string())
                .or_insert_with(|| StoreEntry {
                    sha256: sha256.to_string(),
                    refs: Vec::new(),
                    size: std::fs::metadata(files::blob_path(&self.root, sha256))
                        .map(|m| m.len())
                        .unwrap_or(0),
                    signatures: 0,
                });
            if let Some(reference) = entry.annotation(REF_NAME) {
                item.refs.push(reference.to_string());
            }
        }
        for entry in &index.manifests {
            if entry.artifact_type.as_deref() == Some(layout::SIGNATURE_ARTIFACT) {
                let sha256 = entry.annotation(COMPONENT).and_then(layout::digest_hex);
                if let Some(item) = sha256.and_then(|s| entries.get_mut(s)) {
                    item.signatures += 1;
                }
            }
        }
        Ok(entries
            .into_values()
            .map(|mut e| {
                e.refs.sort();
                e
            })
            .collect())
    }

    /// Removes a reference, or (given a digest, or the last reference of a component) the
    /// component with its signatures; then deletes the blobs nothing uses any more.
    pub fn remove(&self, ref_or_digest: &str) -> Result<Removed, StoreError> {
        let lock = files::lock(&self.root)?;
        let mut index = self.read_index()?;
        let sha256 = resolve_in(&index, ref_or_digest).ok_or_else(|| StoreError::NotFound {
            what: ref_or_digest.to_string(),
            root: self.root.clone(),
        })?;
        let digest = format!("sha256:{sha256}");
        let by_reference = Target::parse(ref_or_digest)
            .ok()
            .map(|t| t.to_string())
            .filter(|r| plugin_entries(&index).any(|e| e.annotation(REF_NAME) == Some(r)));
        if let Some(reference) = &by_reference {
            index.manifests.retain(|e| {
                !(e.artifact_type.is_none() && e.annotation(REF_NAME) == Some(reference))
            });
        }
        let remains = by_reference.is_some()
            && plugin_entries(&index).any(|e| e.annotation(COMPONENT) == Some(&digest));
        if !remains {
            index
                .manifests
                .retain(|e| e.annotation(COMPONENT) != Some(&digest));
        }
        self.write_index(&index)?;
        let gc = self.collect(&index)?;
        drop(lock);
        Ok(Removed {
            sha256,
            component_removed: !remains,
            gc,
        })
    }

    /// Deletes the blobs no index entry reaches, and temp files of interrupted writes.
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        if !self.root.join("oci-layout").exists() {
            return Ok(GcReport::default());
        }
        let _lock = files::lock(&self.root)?;
        let index = self.read_index()?;
        self.collect(&index)
    }

    fn collect(&self, index: &Index) -> Result<GcReport, StoreError> {
        let mut keep = BTreeSet::new();
        for entry in &index.manifests {
            keep.insert(entry.digest.clone());
            // A damaged manifest keeps only itself: what it named is unreachable anyway.
            if let Ok(manifest) = self.manifest(entry) {
                keep.insert(manifest.config.digest.clone());
                keep.extend(manifest.layers.iter().map(|l| l.digest.clone()));
            }
        }
        let mut report = GcReport::default();
        let blobs = self.root.join("blobs").join("sha256");
        for (dir, is_blob) in [(blobs, true), (self.root.join(files::TMP), false)] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if is_blob && (!layout::is_hex64(&name) || keep.contains(&format!("sha256:{name}")))
                {
                    continue;
                }
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                std::fs::remove_file(entry.path())
                    .map_err(StoreError::io("remove", entry.path()))?;
                report.bytes_freed += size;
                if is_blob {
                    report.blobs_removed += 1;
                } else {
                    report.temp_files_removed += 1;
                }
            }
        }
        Ok(report)
    }

    pub(crate) fn read_index(&self) -> Result<Index, StoreError> {
        let path = self.root.join("index.json");
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Index::default()),
            Err(e) => return Err(StoreError::io("read", &path)(e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            path,
            reason: e.to_string(),
        })
    }

    fn write_index(&self, index: &Index) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(index).expect("an index serializes");
        files::write_atomic(&self.root, &self.root.join("index.json"), &bytes)
    }

    /// A blob named by a `sha256:<hex>` digest, verified; missing is damage here.
    pub(crate) fn blob(&self, digest: &str, max: u64) -> Result<Vec<u8>, StoreError> {
        let hex = layout::digest_hex(digest)
            .ok_or_else(|| self.corrupt(digest, "not a sha256 digest".into()))?;
        files::read_blob(&self.root, hex, max)?
            .ok_or_else(|| self.corrupt(digest, "the blob is missing".into()))
    }

    pub(crate) fn manifest(&self, entry: &Descriptor) -> Result<layout::Manifest, StoreError> {
        let bytes = self.blob(&entry.digest, MAX_MANIFEST)?;
        layout::parse_manifest(&bytes).map_err(|reason| self.corrupt(&entry.digest, reason))
    }

    fn corrupt(&self, digest: &str, reason: String) -> StoreError {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        StoreError::Corrupt {
            path: files::blob_path(&self.root, hex),
            reason,
        }
    }
}

/// Removes `reference` from the plugin entry that has it, unless that entry is already
/// `component`'s; a component left without any entry keeps one without a reference (a policy
/// may name it by digest).
fn untag(index: &mut Index, reference: &str, component: &str) {
    let Some(pos) = index
        .manifests
        .iter()
        .position(|e| e.artifact_type.is_none() && e.annotation(REF_NAME) == Some(reference))
    else {
        return;
    };
    if index.manifests[pos].annotation(COMPONENT) == Some(component) {
        return;
    }
    let mut entry = index.manifests.remove(pos);
    let other = entry.annotation(COMPONENT).map(str::to_string);
    let orphaned = !plugin_entries(index).any(|e| e.annotation(COMPONENT) == other.as_deref());
    if orphaned {
        if let Some(annotations) = entry.annotations.as_mut() {
            annotations.remove(REF_NAME);
        }
        index.manifests.insert(pos, entry);
    }
}

/// The index entry of a plugin manifest.
fn plugin_entry(manifest: &Descriptor, sha256: &str, reference: Option<&str>) -> Descriptor {
    let mut annotations = BTreeMap::from([(COMPONENT.to_string(), format!("sha256:{sha256}"))]);
    if let Some(reference) = reference {
        annotations.insert(REF_NAME.to_string(), reference.to_string());
    }
    Descriptor {
        media_type: MANIFEST.to_string(),
        digest: manifest.digest.clone(),
        size: manifest.size,
        artifact_type: None,
        annotations: Some(annotations),
    }
}

fn plugin_entries(index: &Index) -> impl Iterator<Item = &Descriptor> {
    index
        .manifests
        .iter()
        .filter(|e| e.artifact_type.is_none() && e.annotation(COMPONENT).is_some())
}

fn resolve_in(index: &Index, ref_or_digest: &str) -> Option<String> {
    let wanted = match parse_digest(ref_or_digest) {
        Ok(sha256) => format!("sha256:{sha256}"),
        Err(_) => {
            let reference = Target::parse(ref_or_digest).ok()?.to_string();
            return plugin_entries(index)
                .find(|e| e.annotation(REF_NAME) == Some(&reference))
                .and_then(|e| e.annotation(COMPONENT))
                .and_then(layout::digest_hex)
                .map(str::to_string);
        }
    };
    plugin_entries(index)
        .any(|e| e.annotation(COMPONENT) == Some(&wanted))
        .then(|| wanted["sha256:".len()..].to_string())
}

/// `[sha256:]<64 hex>` → the hex.
pub fn parse_digest(text: &str) -> Result<String, StoreError> {
    let hex = text.strip_prefix("sha256:").unwrap_or(text);
    if layout::is_hex64(hex) {
        Ok(hex.to_string())
    } else {
        Err(StoreError::BadDigest(text.to_string()))
    }
}

fn check_signature(signature: &Signature) -> Result<(), StoreError> {
    let reason = if signature.text.len() as u64 > MAX_SIGNATURE {
        format!("over {MAX_SIGNATURE} bytes")
    } else if signature.text.trim().is_empty() {
        "empty".to_string()
    } else {
        return Ok(());
    };
    Err(StoreError::BadSignature {
        origin: signature.origin.clone(),
        reason,
    })
}

#[cfg(test)]
mod tests;
