//! Test credentials made fresh per run: a CA and server certificates
//! (rcgen), token-signing keys, signed tokens (jsonwebtoken), an htpasswd
//! file, and a small Docker token server that signs what it is asked for.

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

pub struct TestCa {
    pub cert_pem: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let cert = p.self_signed(&key).unwrap();
        TestCa {
            cert_pem: cert.pem(),
            cert,
            key,
        }
    }

    /// A server certificate for localhost and 127.0.0.1: (chain PEM, key PEM).
    pub fn server_cert(&self) -> (String, String) {
        self.server_cert_for(&["localhost", "127.0.0.1"])
    }

    /// A server certificate for these names and addresses.
    pub fn server_cert_for(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::CommonName, "wharf test");
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A token-signing key pair: PKCS#8 private key and SPKI public key, PEM.
pub struct SigningKey {
    pub private_pem: String,
    pub public_pem: String,
    pub alg: Algorithm,
}

impl SigningKey {
    pub fn ec() -> SigningKey {
        let k = KeyPair::generate().unwrap();
        SigningKey {
            private_pem: k.serialize_pem(),
            public_pem: k.public_key_pem(),
            alg: Algorithm::ES256,
        }
    }

    /// RSA 2048 through the openssl command (ring cannot generate RSA keys).
    pub fn rsa(dir: &Path) -> SigningKey {
        let key = dir.join("rsa.key");
        let ok = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&key)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs (apt install openssl)");
        assert!(ok.success());
        let public = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .output()
            .unwrap();
        assert!(public.status.success());
        SigningKey {
            private_pem: std::fs::read_to_string(&key).unwrap(),
            public_pem: String::from_utf8(public.stdout).unwrap(),
            alg: Algorithm::RS256,
        }
    }

    /// A self-signed certificate for this key (how distribution-style
    /// configs hand over the issuer's key).
    pub fn certificate_pem(&self) -> String {
        let key = KeyPair::from_pem(&self.private_pem).unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "token issuer");
        p.self_signed(&key).unwrap().pem()
    }

    /// A token with the given claims overrides on top of valid defaults.
    pub fn sign(&self, claims: serde_json::Value) -> String {
        self.sign_header(Header::new(self.alg), claims)
    }

    /// A token whose header names its key (`kid`), as JWKS users expect.
    pub fn sign_as(&self, kid: &str, claims: serde_json::Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(kid.to_owned());
        self.sign_header(header, claims)
    }

    fn sign_header(&self, header: Header, claims: serde_json::Value) -> String {
        let key = match self.alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(self.private_pem.as_bytes()),
            _ => EncodingKey::from_ec_pem(self.private_pem.as_bytes()),
        }
        .unwrap();
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }

    /// An RSA key's modulus (big-endian bytes), for a JWKS entry.
    pub fn rsa_modulus(&self) -> Vec<u8> {
        let mut openssl = std::process::Command::new("openssl")
            .args(["rsa", "-noout", "-modulus"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("openssl runs");
        use std::io::Write;
        openssl
            .stdin
            .take()
            .unwrap()
            .write_all(self.private_pem.as_bytes())
            .unwrap();
        let out = openssl.wait_with_output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let hex = text.trim().trim_start_matches("Modulus=");
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }
}

pub const ISSUER: &str = "wharf-test-issuer";
pub const SERVICE: &str = "wharf-test";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Valid claims granting `access` (a JSON array in the token format).
pub fn claims(access: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "iss": ISSUER, "sub": "tester", "aud": SERVICE,
        "exp": now() + 300, "nbf": now() - 5, "iat": now(),
        "access": access,
    })
}

pub fn repo_access(name: &str, actions: &[&str]) -> serde_json::Value {
    serde_json::json!([{ "type": "repository", "name": name, "actions": actions }])
}

pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// An htpasswd file with bcrypt entries (cost 4: fast tests, same format).
pub fn htpasswd(dir: &Path, users: &[(&str, &str)]) -> PathBuf {
    let text: String = users
        .iter()
        .map(|(u, p)| format!("{u}:{}\n", bcrypt::hash(p, 4).unwrap()))
        .collect();
    write_file(dir, "htpasswd", &text)
}

/// A Docker token server on loopback: for `GET /token?scope=...` with the
/// right Basic credentials (or none, for anonymous) it signs a token
/// granting exactly the requested scopes. Runs until the runtime ends.
pub async fn token_server(
    key: SigningKey,
    user: &'static str,
    password: &'static str,
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let key = std::sync::Arc::new(key);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let key = key.clone();
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let key = key.clone();
                async move { Ok::<_, Infallible>(issue(&key, &req, user, password)) }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn issue(
    key: &SigningKey,
    req: &http::Request<hyper::body::Incoming>,
    user: &str,
    password: &str,
) -> http::Response<Full<Bytes>> {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    );
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    if given.is_some_and(|g| g != expected) {
        let mut r = http::Response::new(Full::new(Bytes::from_static(b"{}")));
        *r.status_mut() = http::StatusCode::UNAUTHORIZED;
        return r;
    }
    let mut access = Vec::new();
    for pair in req.uri().query().unwrap_or("").split('&') {
        let Some(scope) = pair.strip_prefix("scope=") else {
            continue;
        };
        let scope = scope
            .replace("%3A", ":")
            .replace("%2F", "/")
            .replace("%2C", ",");
        for one in scope.split(' ').flat_map(|s| s.split("+")) {
            let parts: Vec<&str> = one.splitn(3, ':').collect();
            if parts.len() == 3 && given.is_some() {
                let actions: Vec<&str> = parts[2].split(',').collect();
                access.push(
                    serde_json::json!({"type": parts[0], "name": parts[1], "actions": actions}),
                );
            }
        }
    }
    let token = key.sign(claims(serde_json::Value::Array(access)));
    let body = serde_json::json!({"token": token, "access_token": token, "expires_in": 300});
    http::Response::new(Full::new(Bytes::from(body.to_string())))
}
