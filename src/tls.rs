//! HTTPS: the certificate chain and key from PEM files, served through a
//! resolver whose pair can be swapped while connections come and go, so a
//! renewed certificate takes effect without a restart (SIGHUP or a change
//! of the files' modification time).
//!
//! Owns: the current certificate and the rustls server configuration, and
//! how outgoing connections are made: whom https trusts (`client_trust`)
//! and the connector every outbound client shares (`client_connector`).
//! Must not: accept connections (the server does) or watch files itself.

use rustls::crypto::ring as provider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate file {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("key file {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

#[derive(Debug)]
pub struct CertResolver {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertResolver {
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<CertResolver, TlsError> {
        let ck = load_pair(cert_path, key_path)?;
        Ok(CertResolver {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: RwLock::new(Arc::new(ck)),
        })
    }

    /// Re-reads both files; on any error the pair in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let ck = load_pair(&self.cert_path, &self.key_path)?;
        if let Ok(mut g) = self.current.write() {
            *g = Arc::new(ck);
        }
        Ok(())
    }

    pub fn paths(&self) -> [&Path; 2] {
        [&self.cert_path, &self.key_path]
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match self.current.read() {
            Ok(g) => Some(g.clone()),
            Err(p) => Some(p.into_inner().clone()),
        }
    }
}

/// rustls configuration serving `resolver`'s certificate, offering HTTP/2
/// and HTTP/1.1 by ALPN.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut c = ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

fn load_pair(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_err = |reason: String| TlsError::Cert {
        path: cert_path.to_owned(),
        reason,
    };
    let key_err = |reason: String| TlsError::Key {
        path: key_path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_err("no CERTIFICATE block".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| key_err(e.to_string()))?;
    let signing = provider::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| key_err(e.to_string()))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match()
        .map_err(|e| key_err(format!("does not match the certificate: {e}")))?;
    Ok(ck)
}

pub(crate) fn client_builder(
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, String> {
    ClientConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))
}

/// The connector of every outbound client (object store, upstream
/// registries, webhook receivers): http or https (verified with `tls`),
/// HTTP/1.1, TCP_NODELAY, keepalive probes, a connect deadline.
pub fn client_connector(
    tls: ClientConfig,
    connect_timeout: std::time::Duration,
) -> hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector> {
    let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
    tcp.set_connect_timeout(Some(connect_timeout));
    tcp.set_nodelay(true);
    tcp.set_keepalive(Some(std::time::Duration::from_secs(30)));
    tcp.enforce_http(false);
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp)
}

/// An outbound request's error and its chain of causes on one line, so
/// hyper's "client error (Connect)" says which connect failed and why (a
/// refused port, an untrusted certificate).
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// Whether an outgoing connection failed because TLS refused the peer (an
/// untrusted or wrong-named certificate): final, unlike a reset or a
/// timeout, so not worth retrying.
pub fn refused_by_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        let inner_tls = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .is_some_and(|inner| inner.is::<rustls::Error>());
        if inner_tls || c.is::<rustls::Error>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// A client configuration for plain-http endpoints (never used to verify).
pub fn client_trusting_nothing() -> Result<ClientConfig, String> {
    Ok(client_builder()?
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth())
}

/// Trust for an outgoing https connection (an object store, an upstream
/// registry): the system's roots (SSL_CERT_FILE and SSL_CERT_DIR are
/// honoured), plus `ca_file` (the setting named `setting`) or else the
/// bundle the variable `env_bundle` names. A `ca_file` that cannot be read
/// is a configuration error; an unreadable variable's bundle is only
/// warned about, since it is set machine-wide for other tools and must not
/// stop the registry.
pub fn client_trust(
    ca_file: Option<&Path>,
    setting: &str,
    env_bundle: Option<&str>,
) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    let extra = |path: &Path| -> Result<Vec<CertificateDer<'static>>, String> {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        match certs.is_empty() {
            true => Err(format!("{}: no PEM certificate in it", path.display())),
            false => Ok(certs),
        }
    };
    let mut extra_added = 0;
    if let Some(path) = ca_file {
        let certs = extra(path).map_err(|e| format!("{setting}: {e}"))?;
        extra_added = roots.add_parsable_certificates(certs).0;
    } else if let Some(path) = env_bundle
        .and_then(std::env::var_os)
        .filter(|p| !p.is_empty())
    {
        match extra(Path::new(&path)) {
            Ok(certs) => extra_added = roots.add_parsable_certificates(certs).0,
            Err(e) => tracing::warn!(error = %e, "{} not used", env_bundle.unwrap_or("")),
        }
    }
    if added + extra_added == 0 {
        return Err(format!(
            "https endpoint but no trusted certificate found (install ca-certificates or set {setting})"
        ));
    }
    Ok(client_builder()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
