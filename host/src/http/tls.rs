//! TLS for `serve`, with rustls and its `ring` provider: the client side for an `https://`
//! upstream, the server side for the listeners. TLS 1.2 and 1.3, HTTP/1.1 by ALPN.

use super::config::UpstreamTls;
use crate::reload::{ReloadError, Reloadable};
use anyhow::Context;
use arc_swap::ArcSwap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

const ALPN: &[u8] = b"http/1.1";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates in a PEM file; none is an error.
fn certificates(path: &Path, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect)
        .with_context(|| format!("{what} `{}`", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{what} `{}` holds no certificate", path.display());
    }
    Ok(certs)
}

/// The TLS client for an https upstream: its certificate must chain to a CA in `ca_file`
/// or, without one, to Mozilla's public roots (bundled, so the machine's store is not read);
/// with a client certificate, it is presented when the upstream asks for one.
pub(crate) fn connector(tls: &UpstreamTls) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    match tls.ca_file.as_deref() {
        Some(path) => {
            for cert in certificates(path, "[upstream] ca_file")? {
                roots
                    .add(cert)
                    .with_context(|| format!("[upstream] ca_file `{}`", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match &tls.client {
        None => config.with_no_client_auth(),
        Some((cert, key)) => {
            let (chain, private) = identity(cert, key, "[upstream] client_")?;
            config
                .with_client_auth_cert(chain, private)
                .with_context(|| mismatch("[upstream] client_", cert, key))?
        }
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// A certificate chain and its private key, from PEM files (`what`: the config keys' prefix,
/// `[tls] ` or `[upstream] client_`).
fn identity(
    cert_file: &Path,
    key_file: &Path,
    what: &str,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = certificates(cert_file, &format!("{what}cert_file"))?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .with_context(|| format!("{what}key_file `{}`", key_file.display()))?;
    Ok((chain, key))
}

fn mismatch(what: &str, cert_file: &Path, key_file: &Path) -> String {
    format!(
        "{what}key_file `{}` does not fit {what}cert_file `{}`",
        key_file.display(),
        cert_file.display()
    )
}

/// The listeners' certificate and key, read again on reload (SIGHUP, the admin's
/// `POST /reload`) so that a renewed certificate is served without a restart. Each handshake
/// takes the current one; open connections keep theirs. A reload that fails (a missing file,
/// a key that does not fit) keeps serving the old one.
#[derive(Debug)]
pub(crate) struct ListenerCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// Why the last reload failed, if it did (for the admin's `/status`).
    last_error: std::sync::Mutex<Option<String>>,
}

impl ListenerCert {
    pub(crate) fn load(cert_file: &Path, key_file: &Path) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(certified(cert_file, key_file)?),
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            last_error: Default::default(),
        }))
    }

    /// The files, and why the last reload failed (`null` if it did not).
    pub(crate) fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "cert_file": self.cert_file,
            "key_file": self.key_file,
            "last_reload_error": *self.last_error.lock().unwrap_or_else(|e| e.into_inner()),
        })
    }
}

/// `changed`: whether the certificate chain changed. A failure is recorded (the log,
/// `/status`) and the old certificate keeps serving.
impl Reloadable for ListenerCert {
    fn files(&self) -> Vec<PathBuf> {
        vec![self.cert_file.clone(), self.key_file.clone()]
    }

    fn try_reload(&self, trigger: &str) -> Result<bool, ReloadError> {
        let fresh = certified(&self.cert_file, &self.key_file).map_err(ReloadError::Certificate)?;
        let changed = self.current.load().cert != fresh.cert;
        self.current.store(Arc::new(fresh));
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        tracing::info!(trigger, changed, "listener certificate reloaded");
        Ok(changed)
    }

    fn record_failure(&self, trigger: &str, error: &ReloadError) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.to_string());
        tracing::error!(trigger, %error, "listener certificate not reloaded; the old one stays");
    }
}

impl ResolvesServerCert for ListenerCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn certified(cert_file: &Path, key_file: &Path) -> anyhow::Result<CertifiedKey> {
    let (chain, key) = identity(cert_file, key_file, "[tls] ")?;
    CertifiedKey::from_der(chain, key, &provider())
        .with_context(|| mismatch("[tls] ", cert_file, key_file))
}

/// The TLS server for the listeners, serving `cert`.
pub(crate) fn acceptor(cert: Arc<ListenerCert>) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
