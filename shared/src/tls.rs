//! TLS on a service's listener, by configuration (`tls_cert_file`,
//! `tls_key_file`: PEM files). `server::serve` serves HTTPS with it through
//! the same accept loop, limits and graceful shutdown as plain HTTP; each
//! handshake runs in its connection's task, bounded by
//! [`HANDSHAKE_TIMEOUT`], so a client that stalls its handshake holds up
//! nobody else.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Longest a client may take over its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server side of TLS from a certificate chain and its private key
/// (PEM), with rustls's safe defaults (TLS 1.2 and 1.3), HTTP/1.1.
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading the certificates in {}", cert_file.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate in {}", cert_file.display());
    }
    // The key's own error text could quote it: say only where it failed.
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|_| anyhow::anyhow!("no readable PEM private key in {}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "the key in {} does not fit the certificate in {}",
                key_file.display(),
                cert_file.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The TLS settings of a listener: both files, or neither (plain HTTP).
pub fn settings(
    cert_file: Option<&Path>,
    key_file: Option<&Path>,
) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    match (cert_file, key_file) {
        (Some(cert), Some(key)) => Ok(Some(server_config(cert, key)?)),
        (None, None) => Ok(None),
        _ => anyhow::bail!("tls_cert_file and tls_key_file go together: set both, or neither"),
    }
}
