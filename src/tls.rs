//! TLS served by the service itself, and client certificates (mutual TLS).
//!
//! With a certificate and key configured, [`crate::connections::incoming`]
//! runs each accepted connection through the TLS handshake (TLS 1.2 or 1.3,
//! ALPN `h2`, rustls with the ring provider) before the gRPC server sees it.
//! With a client CA too, a client may present a certificate signed by it; the
//! handshake refuses one signed by anything else, and a client without a
//! certificate still connects (and authenticates with a bearer token).
//!
//! The files are read again by [`TlsReloader::reload`] (on SIGHUP in the
//! binary): new connections get the new certificate, open ones keep theirs, and
//! a file that does not load is logged and the old configuration kept.
//!
//! A verified client certificate names the calling service ([`caller_of`]): the
//! part after the last `/` of its first URI SAN
//! (`spiffe://mesh/ns/prod/sa/checkout` → `checkout`), or, when it has no URI
//! SAN, the first label of its first DNS SAN (`checkout.internal` → `checkout`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio_rustls::TlsAcceptor;

/// The PEM files TLS is served from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate chain, leaf first.
    pub cert: PathBuf,
    /// The server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CAs client certificates are verified against; none for TLS without
    /// client certificates.
    pub client_ca: Option<PathBuf>,
}

/// The TLS configuration new connections get; shared by the accept path and
/// the [`TlsReloader`].
#[derive(Debug)]
pub struct Tls {
    files: TlsFiles,
    config: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Loads the files; fails (and so does the start) when one does not load.
    pub fn load(files: TlsFiles) -> anyhow::Result<Arc<Self>> {
        let config = server_config(&files)?;
        Ok(Arc::new(Self {
            files,
            config: RwLock::new(config),
        }))
    }

    /// The acceptor for a new connection, with the configuration in force now.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = self
            .config
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        TlsAcceptor::from(config.clone())
    }

    /// Whether client certificates are asked for.
    pub fn verifies_clients(&self) -> bool {
        self.files.client_ca.is_some()
    }

    fn reload(&self) -> anyhow::Result<()> {
        let config = server_config(&self.files)?;
        *self
            .config
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = config;
        Ok(())
    }
}

/// Reads the certificate, key and client CA files again (what SIGHUP does).
#[derive(Debug, Clone)]
pub struct TlsReloader(Arc<Tls>);

impl TlsReloader {
    /// A reloader of `tls`.
    pub fn new(tls: Arc<Tls>) -> Self {
        Self(tls)
    }

    /// Serves the files as they are now to new connections; when one does not
    /// load, logs why and keeps the configuration in force.
    pub fn reload(&self) -> anyhow::Result<()> {
        match self.0.reload() {
            Ok(()) => {
                tracing::info!(cert = %self.0.files.cert.display(), "tls files reloaded");
                Ok(())
            }
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "cannot reload the tls files: keeping the old ones"
                );
                Err(error)
            }
        }
    }
}

/// Builds the rustls configuration from the files.
fn server_config(files: &TlsFiles) -> anyhow::Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("failed to read a private key from {}", files.key.display()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("failed to choose the tls versions")?;
    let builder = match &files.client_ca {
        Some(path) => builder.with_client_cert_verifier(client_verifier(path, provider)?),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).with_context(|| {
        format!(
            "the key {} does not fit the certificate {}",
            files.key.display(),
            files.cert.display()
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Verifies client certificates against the CAs in `path`; a client without a
/// certificate is let through (to authenticate with a token).
fn client_verifier(
    path: &Path,
    provider: Arc<CryptoProvider>,
) -> anyhow::Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let mut roots = RootCertStore::empty();
    for ca in read_certificates(path)? {
        roots
            .add(ca)
            .with_context(|| format!("failed to add a CA of {}", path.display()))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .with_context(|| format!("failed to verify clients against {}", path.display()))
}

/// The certificates of a PEM file; at least one.
fn read_certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("failed to read certificates from {}", path.display()))?;
    anyhow::ensure!(!certificates.is_empty(), "no certificate in {}", path.display());
    Ok(certificates)
}

/// The calling service a verified client certificate names, if it names one:
/// after the last `/` of its first URI SAN, or else the first label of its
/// first DNS SAN.
pub fn caller_of(certificate: &CertificateDer<'_>) -> Option<String> {
    let certificate = webpki::EndEntityCert::try_from(certificate).ok()?;
    let name = match certificate.valid_uri_names().next() {
        Some(uri) => uri.rsplit('/').next()?,
        None => certificate.valid_dns_names().next()?.split('.').next()?,
    };
    (!name.is_empty()).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(sans: Vec<rcgen::SanType>) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans;
        params.self_signed(&key).unwrap().der().clone()
    }

    fn uri(text: &str) -> rcgen::SanType {
        rcgen::SanType::URI(text.try_into().unwrap())
    }

    fn dns(text: &str) -> rcgen::SanType {
        rcgen::SanType::DnsName(text.try_into().unwrap())
    }

    #[test]
    fn the_first_uri_san_names_the_caller_by_its_last_segment() {
        let cert = certificate(vec![
            dns("other.internal"),
            uri("spiffe://mesh/ns/prod/sa/checkout"),
            uri("spiffe://mesh/ns/prod/sa/orders"),
        ]);
        assert_eq!(caller_of(&cert).as_deref(), Some("checkout"));
    }

    #[test]
    fn without_a_uri_san_the_first_dns_label_names_the_caller() {
        let cert = certificate(vec![dns("checkout.internal"), dns("orders.internal")]);
        assert_eq!(caller_of(&cert).as_deref(), Some("checkout"));
    }

    #[test]
    fn a_certificate_without_a_usable_name_names_no_caller() {
        assert_eq!(caller_of(&certificate(vec![])), None);
        assert_eq!(caller_of(&certificate(vec![uri("spiffe://mesh/sa/")])), None);
    }
}
