//! The OCI shapes toolgate writes and accepts: media types, descriptors, manifests and indexes
//! as plain serde structs (annotations in a `BTreeMap`, so the same inputs always serialize to
//! the same bytes, hence the same manifest digest), the two artifacts (a plugin, a signature),
//! and the checks that refuse any other wasm-in-OCI layout.
//!
//! The same builders serve the store, `push` and `save`: a component has one plugin manifest
//! wherever it is, and its signature manifests name that manifest as their `subject`.

use crate::digest::sha256_hex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An OCI image manifest.
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// An OCI image index (the store's `index.json`, a bundle's, the referrers fallback tag).
pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// The CNCF wasm artifact's config.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// The CNCF wasm artifact's one layer: the component's bytes.
pub const WASM_LAYER: &str = "application/wasm";
/// A signature artifact's `artifactType`.
pub const SIGNATURE_ARTIFACT: &str = "application/vnd.toolgate.minisign.v1";
/// A signature artifact's one layer: the `.minisig` text.
pub const SIGNATURE_LAYER: &str = "application/vnd.toolgate.minisign.signature.v1";
/// The empty config of artifacts that have none (OCI image spec 1.1).
pub const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
const EMPTY_CONFIG_DATA: &[u8] = b"{}";
/// The `created` of every plugin config: fixed, so that a re-push is the same manifest.
pub const CREATED: &str = "1970-01-01T00:00:00Z";
/// The index annotation naming a plugin entry's reference (`HOST[:PORT]/REPO:TAG`).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The index annotation naming the component (`sha256:<hex>`) an entry belongs to.
pub const COMPONENT: &str = "dev.toolgate.component";
/// The `oci-layout` file's contents.
pub const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// A signature's largest size: a `.minisig` is a few hundred bytes.
pub const MAX_SIGNATURE: u64 = 64 * 1024;
/// A manifest's largest size.
pub const MAX_MANIFEST: u64 = 4 * 1024 * 1024;

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Descriptor {
    /// The descriptor of `bytes` as `media_type`.
    pub fn of(media_type: &str, bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest: format!("sha256:{}", sha256_hex(bytes)),
            size: bytes.len() as u64,
            artifact_type: None,
            annotations: None,
        }
    }

    /// One annotation's value.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

/// An OCI image manifest (the fields toolgate reads and writes).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
}

/// An OCI image index.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

impl Default for Index {
    fn default() -> Index {
        Index {
            schema_version: 2,
            media_type: Some(INDEX.to_string()),
            manifests: Vec::new(),
        }
    }
}

/// The CNCF wasm config (`application/vnd.wasm.config.v0+json`), with a fixed `created`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WasmConfig<'a> {
    created: &'a str,
    architecture: &'a str,
    os: &'a str,
    layer_digests: [&'a str; 1],
}

/// A manifest with the blobs it names (config first, then layers), ready to write or push.
pub struct Artifact {
    /// The manifest's bytes.
    pub manifest: Vec<u8>,
    /// The config and layer blobs.
    pub blobs: Vec<(Descriptor, Vec<u8>)>,
}

impl Artifact {
    fn new(manifest: &Manifest, blobs: Vec<(Descriptor, Vec<u8>)>) -> Artifact {
        let manifest = serde_json::to_vec(manifest).expect("a manifest serializes");
        Artifact { manifest, blobs }
    }

    /// The manifest's own descriptor.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::of(MANIFEST, &self.manifest)
    }

    /// The manifest's digest, `sha256:<hex>`.
    pub fn digest(&self) -> String {
        self.descriptor().digest
    }
}

/// A component as a CNCF wasm artifact: the wasm config (fixed `created`) and one
/// `application/wasm` layer holding the component's bytes.
pub fn plugin_artifact(component: &[u8]) -> Artifact {
    let layer = Descriptor::of(WASM_LAYER, component);
    let config = serde_json::to_vec(&WasmConfig {
        created: CREATED,
        architecture: "wasm",
        os: "wasip2",
        layer_digests: [&layer.digest],
    })
    .expect("a config serializes");
    let config_descriptor = Descriptor::of(WASM_CONFIG, &config);
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MANIFEST.to_string()),
        artifact_type: None,
        config: config_descriptor.clone(),
        layers: vec![layer.clone()],
        subject: None,
    };
    Artifact::new(
        &manifest,
        vec![(config_descriptor, config), (layer, component.to_vec())],
    )
}

/// A signature as its own artifact: the empty config, one layer holding the `.minisig` text,
/// and the plugin's manifest as its `subject`.
pub fn signature_artifact(subject: &Descriptor, text: &str) -> Artifact {
    let config = Descriptor::of(EMPTY_CONFIG, EMPTY_CONFIG_DATA);
    let layer = Descriptor::of(SIGNATURE_LAYER, text.as_bytes());
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MANIFEST.to_string()),
        artifact_type: Some(SIGNATURE_ARTIFACT.to_string()),
        config: config.clone(),
        layers: vec![layer.clone()],
        subject: Some(Descriptor {
            media_type: subject.media_type.clone(),
            digest: subject.digest.clone(),
            size: subject.size,
            artifact_type: None,
            annotations: None,
        }),
    };
    Artifact::new(
        &manifest,
        vec![
            (config, EMPTY_CONFIG_DATA.to_vec()),
            (layer, text.as_bytes().to_vec()),
        ],
    )
}

/// The hex of a `sha256:<hex>` digest, if it is one.
pub fn digest_hex(digest: &str) -> Option<&str> {
    digest.strip_prefix("sha256:").filter(|hex| is_hex64(hex))
}

/// 64 lowercase hex digits.
pub fn is_hex64(hex: &str) -> bool {
    hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether a manifest is a signature artifact (by its `artifactType`, or, as artifacts written
/// before image spec 1.1 do, by its config's media type).
pub fn is_signature(manifest: &Manifest) -> bool {
    manifest.artifact_type.as_deref() == Some(SIGNATURE_ARTIFACT)
        || manifest.config.media_type == SIGNATURE_ARTIFACT
}

/// Parses a manifest's bytes.
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, String> {
    let manifest: Manifest =
        serde_json::from_slice(bytes).map_err(|e| format!("not an OCI image manifest ({e})"))?;
    if manifest.schema_version != 2 {
        return Err(format!(
            "schemaVersion {} (expected 2)",
            manifest.schema_version
        ));
    }
    match manifest.media_type.as_deref() {
        None | Some(MANIFEST) => Ok(manifest),
        Some(other) => Err(format!("a `{other}` (expected `{MANIFEST}`)")),
    }
}

/// The component layer of a plugin manifest in the CNCF wasm layout, or why the manifest is
/// another layout (several layers, another config type, a layer that is not `application/wasm`).
pub fn plugin_layer(manifest: &Manifest) -> Result<&Descriptor, String> {
    if manifest.config.media_type != WASM_CONFIG {
        return Err(format!(
            "its config is `{}`, not `{WASM_CONFIG}`",
            manifest.config.media_type
        ));
    }
    let [layer] = manifest.layers.as_slice() else {
        return Err(format!(
            "it has {} layers, not exactly one `{WASM_LAYER}` layer",
            manifest.layers.len()
        ));
    };
    if layer.media_type != WASM_LAYER {
        return Err(format!(
            "its layer is `{}`, not `{WASM_LAYER}`",
            layer.media_type
        ));
    }
    digest_hex(&layer.digest)
        .ok_or_else(|| format!("its layer's digest `{}` is not sha256", layer.digest))?;
    Ok(layer)
}

/// A signature manifest's own subject (the plugin manifest it signs) and its `.minisig`
/// layer, or why it is not one.
pub fn signature_parts(manifest: &Manifest) -> Result<(String, &Descriptor), String> {
    let subject = manifest
        .subject
        .as_ref()
        .map(|s| s.digest.clone())
        .ok_or("it has no subject")?;
    let layer = signature_layer(manifest, &subject)?;
    Ok((subject, layer))
}

/// The `.minisig` layer of a signature manifest whose subject is `subject` (a manifest
/// digest), or why it is not one.
pub fn signature_layer<'m>(
    manifest: &'m Manifest,
    subject: &str,
) -> Result<&'m Descriptor, String> {
    if !is_signature(manifest) {
        return Err(format!("its artifactType is not `{SIGNATURE_ARTIFACT}`"));
    }
    if manifest.subject.as_ref().map(|s| s.digest.as_str()) != Some(subject) {
        return Err(format!("its subject is not `{subject}`"));
    }
    let [layer] = manifest.layers.as_slice() else {
        return Err(format!("it has {} layers, not one", manifest.layers.len()));
    };
    if layer.media_type != SIGNATURE_LAYER {
        return Err(format!(
            "its layer is `{}`, not `{SIGNATURE_LAYER}`",
            layer.media_type
        ));
    }
    if layer.size > MAX_SIGNATURE {
        return Err(format!("its layer is {} bytes", layer.size));
    }
    digest_hex(&layer.digest)
        .ok_or_else(|| format!("its layer's digest `{}` is not sha256", layer.digest))?;
    Ok(layer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_component_makes_the_same_manifest() {
        let a = plugin_artifact(b"\0asm component");
        let b = plugin_artifact(b"\0asm component");
        assert_eq!(a.manifest, b.manifest);
        let manifest = parse_manifest(&a.manifest).unwrap();
        let layer = plugin_layer(&manifest).unwrap();
        assert_eq!(
            digest_hex(&layer.digest).unwrap(),
            sha256_hex(b"\0asm component")
        );
        let config = String::from_utf8(a.blobs[0].1.clone()).unwrap();
        assert!(config.contains(CREATED), "{config}");
    }

    #[test]
    fn a_signature_names_its_plugin_as_subject() {
        let plugin = plugin_artifact(b"x");
        let signature = signature_artifact(&plugin.descriptor(), "untrusted comment: x\n");
        let manifest = parse_manifest(&signature.manifest).unwrap();
        assert!(signature_layer(&manifest, &plugin.digest()).is_ok());
        assert!(signature_layer(&manifest, "sha256:00").is_err());
    }

    #[test]
    fn other_layouts_are_named_in_the_refusal() {
        let plugin = plugin_artifact(b"x");
        let mut manifest = parse_manifest(&plugin.manifest).unwrap();
        manifest.layers.push(manifest.layers[0].clone());
        assert!(plugin_layer(&manifest).unwrap_err().contains("2 layers"));
        manifest.layers.pop();
        manifest.layers[0].media_type = "application/octet-stream".into();
        assert!(plugin_layer(&manifest)
            .unwrap_err()
            .contains("octet-stream"));
        manifest.config.media_type = "application/vnd.wasm.config.v1+json".into();
        assert!(plugin_layer(&manifest).unwrap_err().contains("config"));
    }
}
