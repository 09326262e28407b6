//! `save` and `load`: plugins with their signatures in one tar file, for machines without a
//! registry. The tar is an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/<hex>`),
//! the same shape as the store, holding only the plugins asked for; its entries are written in
//! a fixed order with fixed metadata, so the same plugins make the same bytes.
//!
//! `load` never unpacks to disk: it reads every entry into memory, accepts only those three
//! kinds of path (anything else, `..` and links included, refuses the whole bundle), checks
//! every blob against its name, refuses any plugin not in the CNCF wasm layout, and adds to the
//! store only after the whole bundle has passed.

use super::layout::{self, Index, COMPONENT, MAX_MANIFEST, REF_NAME};
use super::{Store, StoreError, MAX_COMPONENT};
use crate::digest::sha256_hex;
use crate::trust::Signature;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;

/// The largest bundle `load` reads (all entries together).
pub const MAX_BUNDLE: u64 = 2 * 1024 * 1024 * 1024;

/// Writes the plugins named (references or digests) with their signatures to the tar `out`
/// (atomically: a temp file beside it, then a rename); returns their sha256s.
pub fn save(store: &Store, plugins: &[String], out: &Path) -> Result<Vec<String>, StoreError> {
    let index = store.read_index()?;
    let mut wanted = Vec::new();
    for plugin in plugins {
        let sha256 = store.resolve(plugin)?.ok_or_else(|| StoreError::NotFound {
            what: plugin.clone(),
            root: store.root().to_path_buf(),
        })?;
        if !wanted.contains(&sha256) {
            wanted.push(sha256);
        }
    }
    let components: BTreeSet<String> = wanted.iter().map(|s| format!("sha256:{s}")).collect();
    let entries: Vec<_> = index
        .manifests
        .iter()
        .filter(|e| {
            e.annotation(COMPONENT)
                .is_some_and(|c| components.contains(c))
        })
        .cloned()
        .collect();
    let mut blobs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for entry in &entries {
        let manifest_bytes = store.blob(&entry.digest, MAX_MANIFEST)?;
        let manifest =
            layout::parse_manifest(&manifest_bytes).map_err(|reason| StoreError::Corrupt {
                path: store.root().join("blobs").join(&entry.digest),
                reason,
            })?;
        for descriptor in std::iter::once(&manifest.config).chain(&manifest.layers) {
            if !blobs.contains_key(&descriptor.digest) {
                let bytes = store.blob(&descriptor.digest, MAX_COMPONENT)?;
                blobs.insert(descriptor.digest.clone(), bytes);
            }
        }
        blobs.insert(entry.digest.clone(), manifest_bytes);
    }
    let bundle_index = Index {
        manifests: entries,
        ..Index::default()
    };
    let index_bytes = serde_json::to_vec_pretty(&bundle_index).expect("an index serializes");

    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile_in(dir, out);
    let result = (|| {
        let file = std::fs::File::create(&tmp).map_err(StoreError::io("create", &tmp))?;
        let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
        let mut append = |path: &str, bytes: &[u8]| {
            let mut header = tar::Header::new_ustar();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut header, path, bytes)
                .map_err(StoreError::io("write", &tmp))
        };
        append("oci-layout", layout::OCI_LAYOUT)?;
        append("index.json", &index_bytes)?;
        for (digest, bytes) in &blobs {
            let hex = layout::digest_hex(digest).expect("store digests are sha256");
            append(&format!("blobs/sha256/{hex}"), bytes)?;
        }
        let writer = tar.into_inner().map_err(StoreError::io("write", &tmp))?;
        let file = writer
            .into_inner()
            .map_err(|e| StoreError::io("write", &tmp)(e.into_error()))?;
        file.sync_all().map_err(StoreError::io("write", &tmp))?;
        std::fs::rename(&tmp, out).map_err(StoreError::io("rename into", out))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| wanted)
}

fn tempfile_in(dir: &Path, out: &Path) -> std::path::PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bundle".into());
    dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()))
}

/// Reads a bundle written by [`save`] (or any OCI image layout tar of toolgate plugins) into
/// the store, every digest re-checked; returns the sha256s added.
pub fn load(store: &Store, bundle: &Path) -> Result<Vec<String>, StoreError> {
    let refuse = |reason: String| StoreError::Bundle {
        path: bundle.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(bundle).map_err(StoreError::io("open", bundle))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut blobs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut index_bytes = None;
    let mut layout_bytes = None;
    let mut total = 0u64;
    let read_error = |e: std::io::Error| StoreError::Bundle {
        path: bundle.to_path_buf(),
        reason: format!("not a readable tar ({e})"),
    };
    for entry in archive.entries().map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = raw.strip_prefix("./").unwrap_or(&raw);
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            if matches!(
                path.trim_end_matches('/'),
                "" | "." | "blobs" | "blobs/sha256"
            ) {
                continue;
            }
            return Err(refuse(format!("unexpected folder `{raw}`")));
        }
        if !kind.is_file() {
            return Err(refuse(format!(
                "`{raw}` is a link or a special file; a bundle holds only regular files"
            )));
        }
        let size = entry.size();
        total += size;
        let max = if path.starts_with("blobs/") {
            MAX_COMPONENT
        } else {
            MAX_MANIFEST
        };
        if size > max || total > MAX_BUNDLE {
            return Err(refuse(format!("`{raw}` is too large ({size} bytes)")));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        entry
            .take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        match path {
            "oci-layout" => layout_bytes = Some(bytes),
            "index.json" => index_bytes = Some(bytes),
            _ => {
                let hex = path
                    .strip_prefix("blobs/sha256/")
                    .filter(|hex| layout::is_hex64(hex))
                    .ok_or_else(|| {
                        refuse(format!(
                            "unexpected entry `{raw}`: a bundle holds only `oci-layout`, \
                             `index.json` and `blobs/sha256/<hex>`"
                        ))
                    })?;
                let actual = sha256_hex(&bytes);
                if actual != hex {
                    return Err(refuse(format!(
                        "`{raw}` hashes to `sha256:{actual}`: the bundle was altered; nothing was loaded"
                    )));
                }
                blobs.insert(format!("sha256:{hex}"), bytes);
            }
        }
    }
    let layout_ok = layout_bytes
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v["imageLayoutVersion"].is_string());
    if !layout_ok {
        return Err(refuse(
            "no valid `oci-layout` file: not an OCI image layout".into(),
        ));
    }
    let index: Index = index_bytes
        .ok_or_else(|| refuse("no `index.json`".into()))
        .and_then(|b| {
            serde_json::from_slice(&b).map_err(|e| refuse(format!("`index.json`: {e}")))
        })?;

    let blob = |digest: &str| {
        blobs
            .get(digest)
            .ok_or_else(|| refuse(format!("`{digest}` is named but not in the bundle")))
    };
    // Every manifest first, so that signatures find their plugin whatever the order.
    let mut plugins: Vec<(String, Option<String>, Vec<u8>)> = Vec::new();
    let mut signatures: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for entry in &index.manifests {
        let manifest = layout::parse_manifest(blob(&entry.digest)?)
            .map_err(|r| refuse(format!("`{}` is {r}", entry.digest)))?;
        if layout::is_signature(&manifest) {
            let (subject, layer) = layout::signature_parts(&manifest)
                .map_err(|r| refuse(format!("the signature `{}`: {r}", entry.digest)))?;
            let text = String::from_utf8(blob(&layer.digest)?.clone())
                .map_err(|_| refuse(format!("the signature `{}` is not UTF-8", layer.digest)))?;
            if seen.insert(entry.digest.clone()) {
                signatures.entry(subject).or_default().push(text);
            }
            continue;
        }
        let reference = entry.annotation(REF_NAME).map(str::to_string);
        let layer =
            layout::plugin_layer(&manifest).map_err(|reason| StoreError::ForeignLayout {
                reference: reference.clone().unwrap_or_else(|| entry.digest.clone()),
                reason,
            })?;
        if let Some(reference) = &reference {
            super::Target::parse(reference)?;
        }
        plugins.push((
            entry.digest.clone(),
            reference,
            blob(&layer.digest)?.clone(),
        ));
    }
    if plugins.is_empty() {
        return Err(refuse("it holds no plugin".into()));
    }
    let mut added = Vec::new();
    for (manifest_digest, reference, component) in &plugins {
        let texts = signatures
            .get(manifest_digest)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let signatures: Vec<_> = texts
            .iter()
            .enumerate()
            .map(|(n, text)| Signature {
                text: text.clone(),
                origin: format!("{}#{}", bundle.display(), n + 1),
            })
            .collect();
        let sha256 = store.add(component, reference.as_deref(), &signatures)?;
        if !added.contains(&sha256) {
            added.push(sha256);
        }
    }
    Ok(added)
}
