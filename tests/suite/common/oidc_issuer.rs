//! An OIDC issuer as a CI system runs one, on loopback over https (a TLS
//! terminator with a test CA in front): a discovery document, a JWKS whose
//! keys the test can rotate, and tokens signed with them (ES256 and
//! RS256), with whatever claims a case needs.

use super::pki::SigningKey;
use super::tls_front::TlsFront;
use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// (kid, key) as the JWKS publishes them; the test rotates them.
type Published = Arc<Mutex<Vec<(String, Arc<SigningKey>)>>>;

pub struct OidcIssuer {
    /// `https://127.0.0.1:PORT`: the tokens' `iss`.
    pub url: String,
    /// The test CA's certificate, for `auth.oidc.ca_file`.
    pub ca_file: PathBuf,
    published: Published,
    /// How many times the key set was fetched.
    jwks_fetches: Arc<std::sync::atomic::AtomicUsize>,
    _front: TlsFront,
    task: tokio::task::JoinHandle<()>,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWKS entry for `key`.
fn jwk(kid: &str, key: &SigningKey) -> serde_json::Value {
    match key.alg {
        jsonwebtoken::Algorithm::RS256 => serde_json::json!({
            "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
            "n": b64(&key.rsa_modulus()), "e": "AQAB",
        }),
        _ => {
            // A P-256 SPKI ends with the point, 0x04 || X || Y.
            let der: Vec<u8> = base64::engine::general_purpose::STANDARD
                .decode(
                    key.public_pem
                        .lines()
                        .filter(|l| !l.starts_with("-----"))
                        .collect::<String>(),
                )
                .unwrap();
            let point = &der[der.len() - 64..];
            serde_json::json!({
                "kty": "EC", "kid": kid, "use": "sig", "alg": "ES256", "crv": "P-256",
                "x": b64(&point[..32]), "y": b64(&point[32..]),
            })
        }
    }
}

impl OidcIssuer {
    pub async fn start(dir: &std::path::Path) -> OidcIssuer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let plain = listener.local_addr().unwrap();
        let front = TlsFront::start(plain, dir).await;
        let url = front.endpoint();
        let published: Published =
            Arc::new(Mutex::new(vec![("k1".into(), Arc::new(SigningKey::ec()))]));
        let (keys, issuer) = (published.clone(), url.clone());
        let jwks_fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = jwks_fetches.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (keys, issuer, counter) = (keys.clone(), issuer.clone(), counter.clone());
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (keys, issuer, counter) = (keys.clone(), issuer.clone(), counter.clone());
                    async move {
                        let body = match req.uri().path() {
                            "/.well-known/openid-configuration" => serde_json::json!({
                                "issuer": issuer, "jwks_uri": format!("{issuer}/jwks"),
                                "id_token_signing_alg_values_supported": ["ES256", "RS256"],
                            }),
                            "/jwks" => {
                                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                let keys = keys.lock().unwrap();
                                let list: Vec<_> =
                                    keys.iter().map(|(kid, k)| jwk(kid, k)).collect();
                                serde_json::json!({ "keys": list })
                            }
                            _ => serde_json::json!({}),
                        };
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            body.to_string(),
                        ))))
                    }
                });
                conns.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        OidcIssuer {
            url,
            ca_file: front.ca_file.clone(),
            published,
            jwks_fetches,
            _front: front,
            task,
        }
    }

    /// How many times the key set was fetched so far.
    pub fn jwks_fetches(&self) -> usize {
        self.jwks_fetches.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Publishes another key (a rotation), RS256 when `rsa`.
    pub fn add_key(&self, kid: &str, key: SigningKey) {
        self.published
            .lock()
            .unwrap()
            .push((kid.to_owned(), Arc::new(key)));
    }

    pub fn key(&self, kid: &str) -> Arc<SigningKey> {
        let keys = self.published.lock().unwrap();
        keys.iter().find(|(k, _)| k == kid).unwrap().1.clone()
    }

    /// A valid token's claims for `audience`, with `extra` merged over
    /// them (`null` removes a claim).
    pub fn claims(&self, audience: &str, extra: serde_json::Value) -> serde_json::Value {
        let now = super::pki::now();
        let mut c = serde_json::json!({
            "iss": self.url, "aud": audience, "sub": "repo:my-org/app:ref:refs/heads/main",
            "iat": now, "nbf": now, "exp": now + 300,
            "repository": "my-org/app", "repository_owner": "my-org", "ref": "refs/heads/main",
        });
        if let (Some(base), Some(over)) = (c.as_object_mut(), extra.as_object()) {
            for (k, v) in over {
                if v.is_null() {
                    base.remove(k);
                } else {
                    base.insert(k.clone(), v.clone());
                }
            }
        }
        c
    }

    /// Signed with key `kid`.
    pub fn token(&self, kid: &str, claims: serde_json::Value) -> String {
        self.key(kid).sign_as(kid, claims)
    }
}

impl Drop for OidcIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
