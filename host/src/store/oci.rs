//! `push` and `pull` against an OCI registry (oci-client, on a current-thread tokio runtime
//! made for the one command: the rest of toolgate never opens a connection to a registry).
//!
//! In the registry (`HOST[:PORT]/REPO`):
//! - `REPO:TAG` → the plugin manifest (`layout::plugin_artifact`: the CNCF wasm layout, fixed
//!   `created`, so a re-push is the same manifest digest);
//! - one manifest per signature (`artifactType` `application/vnd.toolgate.minisign.v1`, one
//!   layer holding the `.minisig` text, `subject` = the plugin manifest), pushed by digest;
//! - `REPO:sha256-<plugin manifest hex>` → an image index of those signature manifests (the
//!   referrers tag schema, for registries without the referrers API), merged with what is
//!   there.
//!
//! `pull` reads the manifest under the tag, refuses any other layout, compares the layer's
//! digest with `--sha256` before downloading it, downloads and re-hashes the component, finds
//! the signatures through the referrers API or else the fallback tag (both through
//! `Client::pull_referrers`), re-hashes each, and adds everything to the store. Plain HTTP is
//! spoken only to loopback hosts, or to any host with `insecure`.

use super::layout::{self, Descriptor, INDEX, MANIFEST, MAX_MANIFEST, MAX_SIGNATURE};
use super::{Store, StoreError, MAX_COMPONENT};
use crate::digest::sha256_hex;
use crate::trust::Signature;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use std::fmt;
use std::path::Path;

/// A parsed `[oci://]HOST[:PORT]/REPO:TAG`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `HOST[:PORT]`.
    pub registry: String,
    /// The repository, e.g. `team/rules`.
    pub repository: String,
    /// The tag.
    pub tag: String,
}

impl Target {
    /// Parses `[oci://]HOST[:PORT]/REPO:TAG`. The host is always explicit (no implicit Docker
    /// Hub), and the tag is required (toolgate pins by sha256, and the tag is what people read).
    pub fn parse(text: &str) -> Result<Target, StoreError> {
        let bad = |reason: &str| StoreError::BadReference {
            reference: text.to_string(),
            reason: reason.to_string(),
        };
        let rest = text.strip_prefix("oci://").unwrap_or(text);
        let (registry, path) = rest.split_once('/').ok_or_else(|| bad("no `/REPO`"))?;
        let host_ok = !registry.is_empty()
            && registry
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
        if !host_ok {
            return Err(bad("the host is not `HOST[:PORT]`"));
        }
        let (repository, tag) = path.rsplit_once(':').ok_or_else(|| bad("no `:TAG`"))?;
        let repo_ok = !repository.is_empty()
            && repository.split('/').all(|part| {
                !part.is_empty()
                    && part.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            });
        if !repo_ok {
            return Err(bad(
                "the repository must be lowercase letters, digits, `._-` and `/`",
            ));
        }
        let tag_ok = (1..=128).contains(&tag.len())
            && !tag.starts_with(['.', '-'])
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !tag_ok {
            return Err(bad("the tag must be up to 128 letters, digits, `._-`"));
        }
        Ok(Target {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag: tag.to_string(),
        })
    }

    /// Whether the host is on loopback (`localhost`, `127.0.0.0/8`, `[::1]`).
    pub fn is_loopback(&self) -> bool {
        let host = match self.registry.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or(rest),
            None => self.registry.split(':').next().unwrap_or(&self.registry),
        };
        host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    fn tagged(&self, tag: &str) -> Reference {
        Reference::with_tag(
            self.registry.clone(),
            self.repository.clone(),
            tag.to_string(),
        )
    }

    fn by_digest(&self, digest: &str) -> Reference {
        Reference::with_digest(
            self.registry.clone(),
            self.repository.clone(),
            digest.to_string(),
        )
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.registry, self.repository, self.tag)
    }
}

/// What `push` sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushReport {
    /// `HOST[:PORT]/REPO:TAG`.
    pub reference: String,
    /// The component's sha256 (hex).
    pub sha256: String,
    /// The plugin manifest's digest (`sha256:<hex>`): the same on every push of these bytes.
    pub manifest_digest: String,
    /// How many signatures went with it.
    pub signatures: usize,
}

/// Pushes the component at `file` and the signatures beside it
/// ([`crate::trust::signatures_beside`]) to `reference`.
pub fn push(file: &Path, reference: &str, insecure: bool) -> Result<PushReport, StoreError> {
    let target = Target::parse(reference)?;
    let component = read_component(file)?;
    let signatures = crate::trust::signatures_beside(file);
    let plugin = layout::plugin_artifact(&component);
    let subject = plugin.descriptor();
    let signature_artifacts: Vec<_> = signatures
        .iter()
        .map(|s| layout::signature_artifact(&subject, &s.text))
        .collect();
    let remote = Remote::new(&target, insecure);
    runtime()?.block_on(async {
        let image = target.tagged(&target.tag);
        remote.push_artifact(&image, &plugin).await?;
        let mut referrers = Vec::new();
        for artifact in &signature_artifacts {
            let digest = artifact.digest();
            remote
                .push_artifact(&target.by_digest(&digest), artifact)
                .await?;
            let mut entry = artifact.descriptor();
            entry.artifact_type = Some(layout::SIGNATURE_ARTIFACT.to_string());
            referrers.push(entry);
        }
        if !referrers.is_empty() {
            remote
                .merge_referrers_tag(&plugin.digest(), &referrers)
                .await?;
        }
        Ok::<_, StoreError>(())
    })?;
    Ok(PushReport {
        reference: target.to_string(),
        sha256: sha256_hex(&component),
        manifest_digest: plugin.digest(),
        signatures: signature_artifacts.len(),
    })
}

/// Pulls `reference` and its signatures into `store`; returns the component's sha256. With
/// `sha256`, a different component under the tag is refused before it is downloaded.
pub fn pull(
    store: &Store,
    reference: &str,
    sha256: Option<&str>,
    insecure: bool,
) -> Result<String, StoreError> {
    let target = Target::parse(reference)?;
    let expected = sha256.map(super::parse_digest).transpose()?;
    let remote = Remote::new(&target, insecure);
    let (component, signatures) = runtime()?.block_on(async {
        let image = target.tagged(&target.tag);
        let (body, _) = remote
            .client
            .pull_manifest_raw(
                &image,
                &RegistryAuth::Anonymous,
                &[MANIFEST, INDEX, DOCKER_MANIFEST, DOCKER_LIST],
            )
            .await
            .map_err(|e| remote.error(e))?;
        let manifest_digest = format!("sha256:{}", sha256_hex(&body));
        let foreign = |reason: String| StoreError::ForeignLayout {
            reference: target.to_string(),
            reason,
        };
        let manifest = layout::parse_manifest(&body).map_err(|r| foreign(format!("it is {r}")))?;
        if layout::is_signature(&manifest) {
            return Err(foreign("it is a signature, not a component".into()));
        }
        let layer = layout::plugin_layer(&manifest).map_err(foreign)?;
        let actual = layout::digest_hex(&layer.digest).unwrap_or_default();
        if let Some(expected) = &expected {
            if expected != actual {
                return Err(StoreError::DigestMismatch {
                    reference: target.to_string(),
                    expected: expected.clone(),
                    actual: actual.to_string(),
                });
            }
        }
        let component = remote.blob(layer, MAX_COMPONENT, "the component").await?;
        let signatures = remote.signatures(&manifest_digest).await?;
        Ok::<_, StoreError>((component, signatures))
    })?;
    store.add(&component, Some(&target.to_string()), &signatures)
}

/// A blob's bytes as they arrive, refused past the size its descriptor gave.
struct Bounded {
    bytes: Vec<u8>,
    max: usize,
}

impl tokio::io::AsyncWrite for Bounded {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.bytes.len() + buf.len() > self.max {
            return std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "the registry sent more than the {} bytes its descriptor says",
                    self.max
                ),
            )));
        }
        self.bytes.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

fn read_component(file: &Path) -> Result<Vec<u8>, StoreError> {
    let size = std::fs::metadata(file)
        .map_err(StoreError::io("read", file))?
        .len();
    if size > MAX_COMPONENT {
        return Err(StoreError::TooLarge {
            what: format!("`{}`", file.display()),
            size,
            max: MAX_COMPONENT,
        });
    }
    std::fs::read(file).map_err(StoreError::io("read", file))
}

fn runtime() -> Result<tokio::runtime::Runtime, StoreError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StoreError::io("start a runtime for", "the registry client"))
}

/// One registry, as this command talks to it.
struct Remote<'t> {
    target: &'t Target,
    client: Client,
}

impl<'t> Remote<'t> {
    fn new(target: &'t Target, insecure: bool) -> Remote<'t> {
        // oci-client's reqwest is built without a crypto provider: use the ring one this
        // binary already links (an error only means one is installed already).
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let protocol = if insecure || target.is_loopback() {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        let client = Client::new(ClientConfig {
            protocol,
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            platform_resolver: None,
            ..ClientConfig::default()
        });
        Remote { target, client }
    }

    fn error(&self, e: OciDistributionError) -> StoreError {
        let mut message = match &e {
            OciDistributionError::RegistryError { envelope, .. }
                if envelope.errors.iter().any(|e| {
                    matches!(
                        e.code,
                        OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown
                    )
                }) =>
            {
                format!(
                    "no `{}` there; check the repository and the tag",
                    self.target
                )
            }
            OciDistributionError::UnauthorizedError { .. } => {
                "not authorized: toolgate talks to registries anonymously".to_string()
            }
            _ => e.to_string(),
        };
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        if matches!(e, OciDistributionError::RequestError(_)) {
            message.push_str(if self.target.is_loopback() {
                " (is the registry running? toolgate speaks plain HTTP to loopback)"
            } else {
                " (is the registry reachable over HTTPS? for plain HTTP pass --insecure-registry)"
            });
        }
        StoreError::Registry {
            registry: self.target.registry.clone(),
            message,
        }
    }

    async fn auth(&self) {
        let registry = self.target.tagged("x");
        self.client
            .store_auth_if_needed(registry.resolve_registry(), &RegistryAuth::Anonymous)
            .await;
    }

    /// Pushes an artifact's blobs (unless there) and then its manifest under `image`.
    async fn push_artifact(
        &self,
        image: &Reference,
        artifact: &layout::Artifact,
    ) -> Result<(), StoreError> {
        self.auth().await;
        for (descriptor, bytes) in &artifact.blobs {
            let there = self
                .client
                .blob_exists(image, &descriptor.digest)
                .await
                .map_err(|e| self.error(e))?;
            if !there {
                self.client
                    .push_blob(image, bytes.clone(), &descriptor.digest)
                    .await
                    .map_err(|e| self.error(e))?;
            }
        }
        self.client
            .push_manifest_raw(
                image,
                artifact.manifest.clone(),
                MANIFEST.parse().expect("a header value"),
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Adds `entries` to the index under the tag `sha256-<hex>` (the referrers tag schema),
    /// keeping whatever other tools put there.
    async fn merge_referrers_tag(
        &self,
        subject: &str,
        entries: &[Descriptor],
    ) -> Result<(), StoreError> {
        let tag = subject.replace(':', "-");
        let image = self.target.tagged(&tag);
        let existing = match self
            .client
            .pull_manifest_raw(&image, &RegistryAuth::Anonymous, &[INDEX])
            .await
        {
            Ok((body, _)) => Some(serde_json::from_slice::<serde_json::Value>(&body).map_err(
                |e| StoreError::Registry {
                    registry: self.target.registry.clone(),
                    message: format!("the referrers tag `{tag}` is not JSON ({e})"),
                },
            )?),
            Err(e) if not_found(&e) => None,
            Err(e) => return Err(self.error(e)),
        };
        let mut index = existing.clone().unwrap_or_else(
            || serde_json::json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": []}),
        );
        let manifests = index
            .get_mut("manifests")
            .and_then(serde_json::Value::as_array_mut)
            .ok_or_else(|| StoreError::Registry {
                registry: self.target.registry.clone(),
                message: format!("the referrers tag `{tag}` is not an image index"),
            })?;
        for entry in entries {
            if !manifests
                .iter()
                .any(|m| m["digest"] == entry.digest.as_str())
            {
                manifests.push(serde_json::to_value(entry).expect("a descriptor serializes"));
            }
        }
        if existing.as_ref() == Some(&index) {
            return Ok(());
        }
        let body = serde_json::to_vec(&index).expect("an index serializes");
        self.client
            .push_manifest_raw(&image, body, INDEX.parse().expect("a header value"))
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// A blob, checked against its descriptor's size and digest.
    async fn blob(
        &self,
        descriptor: &Descriptor,
        max: u64,
        what: &str,
    ) -> Result<Vec<u8>, StoreError> {
        if descriptor.size > max {
            return Err(StoreError::TooLarge {
                what: format!("{what} in `{}`", self.target),
                size: descriptor.size,
                max,
            });
        }
        let image = self.target.tagged(&self.target.tag);
        // The registry may send more than the descriptor says: stop at its size, not at the
        // end of whatever arrives.
        let mut bounded = Bounded {
            bytes: Vec::with_capacity(descriptor.size as usize),
            max: descriptor.size as usize,
        };
        self.client
            .pull_blob(&image, descriptor.digest.as_str(), &mut bounded)
            .await
            .map_err(|e| self.error(e))?;
        self.verify(what, &descriptor.digest, &bounded.bytes)?;
        Ok(bounded.bytes)
    }

    fn verify(&self, what: &str, digest: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let actual = format!("sha256:{}", sha256_hex(bytes));
        if actual != digest {
            return Err(StoreError::Unverified {
                what: what.to_string(),
                reference: self.target.to_string(),
                expected: digest.to_string(),
                actual,
            });
        }
        Ok(())
    }

    /// The signatures whose subject is the plugin manifest `subject`: the referrers API, or
    /// else the tag `sha256-<hex>`. Artifacts that are not toolgate signatures are skipped.
    async fn signatures(&self, subject: &str) -> Result<Vec<Signature>, StoreError> {
        let referrers = self
            .client
            .pull_referrers(
                &self.target.by_digest(subject),
                Some(layout::SIGNATURE_ARTIFACT),
            )
            .await
            .map_err(|e| self.error(e))?;
        let mut signatures = Vec::new();
        for entry in &referrers.manifests {
            if entry.artifact_type.as_deref() != Some(layout::SIGNATURE_ARTIFACT) {
                continue;
            }
            if entry.size < 0 || entry.size > MAX_MANIFEST as i64 {
                continue;
            }
            let (body, _) = self
                .client
                .pull_manifest_raw(
                    &self.target.by_digest(&entry.digest),
                    &RegistryAuth::Anonymous,
                    &[MANIFEST],
                )
                .await
                .map_err(|e| self.error(e))?;
            self.verify("a signature manifest", &entry.digest, &body)?;
            let layer = match layout::parse_manifest(&body)
                .and_then(|m| layout::signature_layer(&m, subject).cloned())
            {
                Ok(layer) => layer,
                Err(reason) => {
                    tracing::warn!(digest = %entry.digest, %reason, "skipping a referrer that is not a toolgate signature");
                    continue;
                }
            };
            let text = self.blob(&layer, MAX_SIGNATURE, "a signature").await?;
            let Ok(text) = String::from_utf8(text) else {
                tracing::warn!(digest = %layer.digest, "skipping a signature that is not UTF-8");
                continue;
            };
            signatures.push(Signature {
                text,
                origin: format!("oci://{}@{}", self.target, entry.digest),
            });
        }
        Ok(signatures)
    }
}

fn not_found(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown
            )
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::Target;

    #[test]
    fn references_need_a_host_a_repository_and_a_tag() {
        let t = Target::parse("oci://127.0.0.1:5000/team/rules:v1").unwrap();
        assert_eq!(t.registry, "127.0.0.1:5000");
        assert_eq!(t.repository, "team/rules");
        assert_eq!(t.tag, "v1");
        assert_eq!(t.to_string(), "127.0.0.1:5000/team/rules:v1");
        assert!(t.is_loopback());
        assert!(Target::parse("localhost/r:1").unwrap().is_loopback());
        assert!(Target::parse("[::1]:5000/r:1").unwrap().is_loopback());
        assert!(!Target::parse("ghcr.io/acme/rules:1").unwrap().is_loopback());
        for bad in [
            "rules:v1",
            "oci://host/Rules:v1",
            "host/rules",
            "host/rules:",
            "/rules:v1",
            "host//r:1",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
