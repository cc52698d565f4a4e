//! TLS to PostgreSQL, with libpq's URL parameters and meanings: `sslmode`
//! (`disable`, `allow`/`prefer`, `require`, `verify-ca`, `verify-full`),
//! `sslrootcert` (a PEM file, or `system` for the system's roots),
//! `sslcert` and `sslkey` (a client certificate). The client library
//! knows only disable/prefer/require and no certificate files, so those
//! keys are taken out of the URL here and become a rustls configuration.
//!
//! Owns: reading those keys, the rustls client configuration they mean,
//! and the `MakeTlsConnect` the `postgres` client connects through.
//! Must not: connect (the pool does), or weaken a verifying mode: `require`
//! with `sslrootcert` verifies as `verify-ca`, as libpq does.

use super::MetaError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Encrypted, the certificate not checked (libpq's `prefer`/`require`).
    Nothing,
    /// The chain to a trusted root, not the host name (`verify-ca`).
    Chain,
    /// The chain and the host name (`verify-full`).
    Full,
}

/// The TLS keys of a libpq URL, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsParams {
    pub mode: SslMode,
    pub verify: Verify,
    pub root_cert: Option<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsParams {
    /// What the connection will do, in words: `wharf config check`.
    pub fn summary(&self) -> String {
        let roots = match self.root_cert.as_deref() {
            Some("system") => "the system's roots".to_owned(),
            Some(file) => file.to_owned(),
            None => "~/.postgresql/root.crt".to_owned(),
        };
        let mut said = match (self.mode, self.verify) {
            (SslMode::Disable, _) => "TLS off (sslmode=disable)".to_owned(),
            (SslMode::Prefer, _) => {
                "TLS when the server offers it, its certificate not checked (sslmode=prefer)"
                    .to_owned()
            }
            (_, Verify::Nothing) => {
                "TLS required, the certificate not checked (sslmode=require)".to_owned()
            }
            (_, Verify::Chain) => {
                format!("TLS required, the chain checked against {roots} (verify-ca)")
            }
            (_, Verify::Full) => {
                format!("TLS required, the chain checked against {roots} and the host name (verify-full)")
            }
        };
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            said.push_str(&format!(
                "; client certificate {} (key {})",
                cert.display(),
                key.display()
            ));
        }
        said
    }
}

/// Splits `url` into what the client library parses and the TLS keys it
/// does not know. Both of libpq's forms: `postgres://...?k=v&...` and
/// `k=v k=v`.
pub fn split(url: &str) -> Result<(String, TlsParams), MetaError> {
    let bad = |why: String| MetaError::Config(format!("metadata.url: {why}"));
    let uri = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let (base, pairs): (String, Vec<(String, String)>) = match uri {
        true => match url.split_once('?') {
            None => (url.to_owned(), Vec::new()),
            Some((base, query)) => (
                base.to_owned(),
                query
                    .split('&')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').unwrap_or((p, ""));
                        (k.to_owned(), percent_decode(v))
                    })
                    .collect(),
            ),
        },
        false => (
            String::new(),
            url.split_whitespace()
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (k.to_owned(), v.trim_matches('\'').to_owned())
                })
                .collect(),
        ),
    };
    let mut params = TlsParams {
        mode: SslMode::Prefer,
        verify: Verify::Nothing,
        root_cert: None,
        cert: None,
        key: None,
    };
    let mut sslmode = "prefer".to_owned();
    let mut kept = Vec::new();
    for (k, v) in pairs {
        match k.as_str() {
            "sslmode" => sslmode = v,
            "sslrootcert" => params.root_cert = Some(v),
            "sslcert" => params.cert = Some(PathBuf::from(v)),
            "sslkey" => params.key = Some(PathBuf::from(v)),
            _ => kept.push((k, v)),
        }
    }
    (params.mode, params.verify) = match sslmode.as_str() {
        "disable" => (SslMode::Disable, Verify::Nothing),
        // The client cannot try plain first and TLS second; `prefer` is
        // the closer of the two, and what libpq does by default.
        "allow" | "prefer" => (SslMode::Prefer, Verify::Nothing),
        // libpq: `require` with a root certificate verifies the chain.
        "require" if params.root_cert.is_some() => (SslMode::Require, Verify::Chain),
        "require" => (SslMode::Require, Verify::Nothing),
        "verify-ca" => (SslMode::Require, Verify::Chain),
        "verify-full" => (SslMode::Require, Verify::Full),
        other => {
            return Err(bad(format!(
            "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
        )))
        }
    };
    if params.cert.is_some() != params.key.is_some() {
        return Err(bad("sslcert and sslkey go together".into()));
    }
    let rest = match uri {
        true if kept.is_empty() => base,
        true => {
            let query: Vec<String> = kept
                .iter()
                .map(|(k, v)| format!("{k}={}", percent_encode(v)))
                .collect();
            format!("{base}?{}", query.join("&"))
        }
        false => kept
            .iter()
            .map(|(k, v)| format!("{k}='{v}'"))
            .collect::<Vec<_>>()
            .join(" "),
    };
    Ok((rest, params))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1..i + 3)) {
            (b'%', Some(hex)) => match u8::from_str_radix(&String::from_utf8_lossy(hex), 16) {
                Ok(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'.'
            | b'_'
            | b'~'
            | b'/'
            | b':'
            | b',' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// The connector the pool makes connections through: TLS as `params`
/// say (the client library decides, from `sslmode`, whether to use it).
#[derive(Clone)]
pub struct PgTls {
    config: Arc<ClientConfig>,
}

impl PgTls {
    pub fn new(params: &TlsParams) -> Result<PgTls, MetaError> {
        let bad = |why: String| MetaError::Config(format!("metadata.url: {why}"));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = crate::tls::client_builder().map_err(bad)?;
        let webpki = match params.verify {
            Verify::Nothing => None,
            Verify::Chain | Verify::Full => {
                let roots = roots(params.root_cert.as_deref()).map_err(bad)?;
                let verifier =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| bad(format!("sslrootcert: {e}")))?;
                Some(verifier)
            }
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PgVerifier {
                webpki,
                names: params.verify == Verify::Full,
                provider,
            }));
        let config = match (&params.cert, &params.key) {
            (Some(cert), Some(key)) => {
                let certs = CertificateDer::pem_file_iter(cert)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| bad(format!("sslcert {}: {e}", cert.display())))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| bad(format!("sslkey {}: {e}", key.display())))?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| bad(format!("sslcert/sslkey: {e}")))?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(PgTls {
            config: Arc::new(config),
        })
    }
}

/// The roots a verifying mode trusts: `sslrootcert`'s file, the system's
/// for `system`, else libpq's default `~/.postgresql/root.crt`.
fn roots(root_cert: Option<&str>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let path = match root_cert {
        Some("system") => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            return Ok(roots);
        }
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("HOME")
            .map(|h| Path::new(&h).join(".postgresql/root.crt"))
            .filter(|p| p.is_file())
            .ok_or("sslmode verify-ca/verify-full needs sslrootcert (a PEM file, or \"system\")")?,
    };
    let certs = CertificateDer::pem_file_iter(&path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
    if roots.add_parsable_certificates(certs).0 == 0 {
        return Err(format!(
            "sslrootcert {}: no certificate in it",
            path.display()
        ));
    }
    Ok(roots)
}

/// The server's certificate checked as the mode says: `Nothing`
/// (encrypted, the peer not authenticated, as libpq's `prefer`/`require`;
/// signatures are still checked, so the handshake is a real one), `Chain`
/// (webpki, a wrong name forgiven) or `Full` (webpki).
#[derive(Debug)]
struct PgVerifier {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    names: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PgVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.names => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, self.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, self.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms().supported_schemes()
    }
}

impl PgVerifier {
    fn algorithms(&self) -> &rustls::crypto::WebPkiSupportedAlgorithms {
        &self.provider.signature_verification_algorithms
    }
}

impl<S> MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<PgTlsConnect> {
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(PgTlsConnect {
            connector: tokio_rustls::TlsConnector::from(self.config.clone()),
            name,
        })
    }
}

pub struct PgTlsConnect {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PgTlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = self.connector.connect(self.name, stream).await?;
            Ok(PgTlsStream(tls))
        })
    }
}

/// A TLS connection to PostgreSQL. No channel binding: SCRAM works
/// without it (the `-PLUS` variant is not offered).
pub struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for PgTlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_keys_come_out_of_the_url_and_mean_what_libpq_says() {
        let (rest, p) = split(
            "postgres://wharf@db1:5432,db2:5432/wharf?sslmode=verify-full&sslrootcert=/etc/ca.pem&target_session_attrs=read-write",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgres://wharf@db1:5432,db2:5432/wharf?target_session_attrs=read-write"
        );
        assert_eq!((p.mode, p.verify), (SslMode::Require, Verify::Full));
        assert_eq!(p.root_cert.as_deref(), Some("/etc/ca.pem"));
        let (rest, p) = split("postgres://h/db").unwrap();
        assert_eq!(
            (rest.as_str(), p.mode, p.verify),
            ("postgres://h/db", SslMode::Prefer, Verify::Nothing)
        );
        let (_, p) = split("postgres://h/db?sslmode=require&sslrootcert=%2Fca.pem").unwrap();
        assert_eq!(
            (p.verify, p.root_cert.as_deref()),
            (Verify::Chain, Some("/ca.pem"))
        );
        let (_, p) = split("postgres://h/db?sslmode=require").unwrap();
        assert_eq!(p.verify, Verify::Nothing);
        let (rest, p) = split("host=h dbname=d sslmode=verify-ca sslcert=/c sslkey=/k").unwrap();
        assert_eq!(rest, "host='h' dbname='d'");
        assert_eq!(p.verify, Verify::Chain);
        assert!(p.cert.is_some() && p.key.is_some());
        assert!(split("postgres://h/db?sslmode=sometimes").is_err());
        assert!(split("postgres://h/db?sslcert=/c").is_err());
    }
}
