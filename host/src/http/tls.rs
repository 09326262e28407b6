//! TLS for `serve`, with rustls and its `ring` provider: the client side for an `https://`
//! upstream, the server side for the listeners. TLS 1.2 and 1.3, HTTP/1.1 by ALPN.

use super::config::UpstreamTls;
use anyhow::Context;
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

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
pub fn connector(tls: &UpstreamTls) -> anyhow::Result<tokio_rustls::TlsConnector> {
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

/// The TLS server for the listeners, from `[tls]`'s certificate chain and key.
pub fn acceptor(cert_file: &Path, key_file: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let (chain, key) = identity(cert_file, key_file, "[tls] ")?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .with_context(|| mismatch("[tls] ", cert_file, key_file))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
