//! The three AWS credential endpoints as a node meets them, on loopback,
//! handing out real temporary credentials of the test's SeaweedFS:
//!
//! - an OIDC issuer (an RSA key made with openssl, its JWKS at `/jwks`)
//!   that SeaweedFS's STS trusts, signing web identity tokens;
//! - `/sts`: STS `AssumeRoleWithWebIdentity`, passed through to
//!   SeaweedFS's STS (counted here);
//! - EC2's IMDSv2 (a session token first, then the role and its
//!   credentials) and the ECS container endpoint (an authorization header):
//!   each asks SeaweedFS's STS with a token of its own and hands out what
//!   it answers, in those endpoints' JSON.
//!
//! Requests that do not follow a protocol get 400/401, as the real
//! endpoints answer, and are counted as refused.

use super::pki::SigningKey;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub const ECS_AUTHORIZATION: &str = "ecs-test-authorization";
pub const AUDIENCE: &str = "sts.amazonaws.com";
pub const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/WharfNode";
const IMDS_SESSION: &str = "imds-test-session";

#[derive(Default)]
pub struct Issued {
    pub imds: AtomicUsize,
    pub ecs: AtomicUsize,
    pub sts: AtomicUsize,
    pub refused: AtomicUsize,
}

/// The issuer: an RSA key (RS256, the one algorithm SeaweedFS's OIDC
/// provider takes) and its JWKS.
pub struct Issuer {
    url: String,
    key: SigningKey,
    modulus: Vec<u8>,
}

impl Issuer {
    fn new(url: String) -> Issuer {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::rsa(dir.path());
        let modulus = key.rsa_modulus();
        Issuer { url, key, modulus }
    }

    fn jwks(&self) -> String {
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&self.modulus);
        format!(
            r#"{{"keys":[{{"kty":"RSA","kid":"k1","use":"sig","alg":"RS256","n":"{n}","e":"AQAB"}}]}}"#
        )
    }

    /// A token as a Kubernetes service account's projected token looks
    /// (`idp` names the provider SeaweedFS's trust policy matches).
    pub fn token(&self, subject: &str) -> String {
        let now = jiff::Timestamp::now().as_second();
        self.key.sign_as(
            "k1",
            serde_json::json!({
                "iss": self.url, "sub": subject, "aud": AUDIENCE, "idp": "wharf-ci",
                "iat": now, "nbf": now, "exp": now + 3600,
            }),
        )
    }
}

/// SeaweedFS's advanced IAM configuration trusting `issuer`: one role
/// with every S3 action, sessions of `life_secs`.
pub fn seaweed_iam(issuer: &str, life_secs: u64) -> String {
    format!(
        r#"{{
  "sts": {{"tokenDuration": {}, "maxSessionLength": 43200000000000, "issuer": "seaweedfs-sts",
           "signingKey": "d2hhcmYtdGVzdC1zdHMtc2lnbmluZy1rZXktMzItYnl0ZXM=",
           "providers": [{{"name": "wharf-ci", "type": "oidc", "enabled": true,
               "config": {{"issuer": "{issuer}", "clientId": "{AUDIENCE}", "jwksUri": "{issuer}/jwks"}}}}]}},
  "policy": {{"defaultEffect": "Deny", "storeType": "memory"}},
  "roles": [{{"roleName": "WharfNode", "roleArn": "{ROLE_ARN}",
      "trustPolicy": {{"Version": "2012-10-17", "Statement": [{{"Effect": "Allow",
          "Principal": {{"Federated": "wharf-ci"}}, "Action": ["sts:AssumeRoleWithWebIdentity"]}}]}},
      "attachedPolicies": ["WharfObjects"]}}],
  "policies": [{{"name": "WharfObjects", "document": {{"Version": "2012-10-17", "Statement": [
      {{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}},
      {{"Effect": "Allow", "Action": "sts:ValidateSession", "Resource": "*"}}]}}}}]
}}"#,
        life_secs * 1_000_000_000
    )
}

pub struct CredentialServer {
    pub addr: SocketAddr,
    pub issued: Arc<Issued>,
    pub issuer: Arc<Issuer>,
    sts: Arc<std::sync::OnceLock<String>>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    issuer: Arc<Issuer>,
    issued: Arc<Issued>,
    sts: Arc<std::sync::OnceLock<String>>,
    http: reqwest::Client,
}

impl CredentialServer {
    /// Listens first (the issuer's URL is in SeaweedFS's configuration);
    /// [`relay_to`](Self::relay_to) names the STS once it runs.
    pub async fn start() -> CredentialServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let issuer = Arc::new(Issuer::new(format!("http://{addr}")));
        let issued = Arc::new(Issued::default());
        let sts = Arc::new(std::sync::OnceLock::new());
        let shared = Arc::new(Shared {
            issuer: issuer.clone(),
            issued: issued.clone(),
            sts: sts.clone(),
            http: reqwest::Client::new(),
        });
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let shared = shared.clone();
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let shared = shared.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(req, &shared).await) }
                });
                conns.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        CredentialServer {
            addr,
            issued,
            issuer,
            sts,
            task,
        }
    }

    pub fn relay_to(&self, sts: String) {
        let _ = self.sts.set(sts);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for CredentialServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reply(status: u16, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Asks the store's STS with `form`; its status and answer.
async fn ask_sts(shared: &Shared, form: String) -> (u16, String) {
    let Some(sts) = shared.sts.get() else {
        return (503, "no STS yet".into());
    };
    match shared
        .http
        .post(sts)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
    {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (502, e.to_string()),
    }
}

/// Temporary credentials for this harness's own IMDS and ECS answers.
async fn credentials_json(shared: &Shared, code: &str) -> Response<Full<Bytes>> {
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("Action", "AssumeRoleWithWebIdentity")
        .append_pair("Version", "2011-06-15")
        .append_pair("RoleArn", ROLE_ARN)
        .append_pair("RoleSessionName", "harness")
        .append_pair(
            "WebIdentityToken",
            &shared.issuer.token("system:node:harness"),
        )
        .finish();
    let (status, xml) = ask_sts(shared, form).await;
    let field = |name: &str| {
        let open = format!("<{name}>");
        let start = xml.find(&open)? + open.len();
        let len = xml[start..].find(&format!("</{name}>"))?;
        Some(xml[start..start + len].to_owned())
    };
    match (
        status,
        field("AccessKeyId"),
        field("SecretAccessKey"),
        field("SessionToken"),
        field("Expiration"),
    ) {
        (200, Some(key), Some(secret), Some(token), Some(expires)) => reply(
            200,
            format!(
                r#"{{{code}"AccessKeyId":"{key}","SecretAccessKey":"{secret}","Token":"{token}","Expiration":"{expires}"}}"#
            ),
        ),
        _ => reply(502, format!("the store's STS answered {status}: {xml}")),
    }
}

async fn answer(req: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let counts = &shared.issued;
    let refused = |status, why: &str| {
        counts.refused.fetch_add(1, Ordering::Relaxed);
        reply(status, why.to_owned())
    };
    let path = req.uri().path().to_owned();
    let imds_session = header(&req, "x-aws-ec2-metadata-token") == Some(IMDS_SESSION);
    match (req.method().as_str(), path.as_str()) {
        ("GET", "/jwks") => reply(200, shared.issuer.jwks()),
        ("PUT", "/latest/api/token") => {
            match header(&req, "x-aws-ec2-metadata-token-ttl-seconds") {
                Some(_) => reply(200, IMDS_SESSION.into()),
                None => refused(400, "missing x-aws-ec2-metadata-token-ttl-seconds"),
            }
        }
        ("GET", "/latest/meta-data/iam/security-credentials/") if imds_session => {
            reply(200, "wharf-node-role\n".into())
        }
        ("GET", "/latest/meta-data/iam/security-credentials/wharf-node-role") if imds_session => {
            counts.imds.fetch_add(1, Ordering::Relaxed);
            credentials_json(shared, r#""Code":"Success","Type":"AWS-HMAC","#).await
        }
        ("GET", p) if p.starts_with("/latest/") => refused(401, "IMDSv2 session token required"),
        ("GET", "/ecs/credentials") => match header(&req, "authorization") {
            Some(ECS_AUTHORIZATION) => {
                counts.ecs.fetch_add(1, Ordering::Relaxed);
                credentials_json(shared, "").await
            }
            _ => refused(401, "authorization"),
        },
        ("POST", "/sts") => {
            let form = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let form = String::from_utf8_lossy(&form).into_owned();
            let action = url::form_urlencoded::parse(form.as_bytes())
                .any(|(k, v)| k == "Action" && v == "AssumeRoleWithWebIdentity");
            if !action {
                return refused(400, "<Error><Code>InvalidAction</Code></Error>");
            }
            counts.sts.fetch_add(1, Ordering::Relaxed);
            let (status, body) = ask_sts(shared, form).await;
            reply(status, body)
        }
        _ => refused(404, "not found"),
    }
}
