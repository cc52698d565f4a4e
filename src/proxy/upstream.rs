//! One upstream registry as a client sees it: requests with its
//! credentials (anonymous, Basic, or the Docker token flow: answer a
//! `Bearer` challenge by fetching a token from its realm, kept until it
//! expires), redirects followed (a blob is often served from a CDN), and
//! answers sorted into what the cache does next.
//!
//! Owns: the connection pool to the upstream, its credentials and tokens.
//! Must not: store anything, or know what is cached.

use super::challenge::{self, Challenge};
use crate::config::ProxyConfig;
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Redirects followed for one request (registry -> CDN is one).
const MAX_REDIRECTS: usize = 5;
/// A token answer is small; anything larger is not one.
const MAX_TOKEN_ANSWER: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Down, timed out, 5xx or 429: the cached copy may stand in.
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    #[error("upstream has no such {0}")]
    NotFound(String),
    #[error("upstream refused access: {0}")]
    Denied(String),
    /// An answer that breaks the protocol, a cut body, a wrong digest.
    #[error("upstream answer invalid: {0}")]
    Invalid(String),
}

impl UpstreamError {
    /// The metric label (`proxy_upstream_errors_total{kind}`).
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Unavailable(_) => "unavailable",
            UpstreamError::NotFound(_) => "not_found",
            UpstreamError::Denied(_) => "denied",
            UpstreamError::Invalid(_) => "invalid",
        }
    }
}

/// How an upstream wants to be asked.
#[derive(Clone)]
enum Scheme {
    Anonymous,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

pub struct Upstream {
    base: url::Url,
    http: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// `Basic ...` from the configured credentials.
    basic: Option<HeaderValue>,
    /// What the upstream's `GET /v2/` asked for, learned once, so each
    /// request goes out with the right credentials the first time.
    scheme: Mutex<Option<Scheme>>,
    /// Bearer tokens by scope, and when each stops being used.
    tokens: Mutex<HashMap<String, (HeaderValue, Instant)>>,
    pub timeout: Duration,
}

impl Upstream {
    pub fn new(cfg: &ProxyConfig) -> Result<Upstream, String> {
        let base: url::Url = cfg
            .upstream
            .parse()
            .map_err(|e| format!("proxy {}: upstream: {e}", cfg.prefix))?;
        let tls = match base.scheme() {
            "https" => crate::tls::client_trust(cfg.ca_file.as_deref(), "proxy.ca_file", None)?,
            "http" => crate::tls::client_trusting_nothing()?,
            other => {
                return Err(format!(
                    "proxy {}: upstream scheme {other}:// is neither http nor https",
                    cfg.prefix
                ))
            }
        };
        let timeout = Duration::from_secs(cfg.timeout_secs.max(1));
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(crate::tls::client_connector(tls, timeout));
        let basic = match (&cfg.username, &cfg.password) {
            (Some(u), p) => {
                let raw = format!("{u}:{}", p.as_deref().unwrap_or(""));
                let v = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                );
                Some(HeaderValue::from_str(&v).map_err(|e| format!("proxy credentials: {e}"))?)
            }
            (None, _) => None,
        };
        Ok(Upstream {
            base,
            http,
            basic,
            scheme: Mutex::new(None),
            tokens: Mutex::new(HashMap::new()),
            timeout,
        })
    }

    /// Sends `method` to `path` (`/v2/...`) for a pull of `repo`, answering
    /// one auth challenge and following redirects; a 2xx answer's head, or
    /// what the failure means.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        accept: Option<&str>,
        repo: &str,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let scope = format!("repository:{repo}:pull");
        let mut url = self
            .base
            .join(path)
            .map_err(|e| UpstreamError::Invalid(format!("{path}: {e}")))?;
        let mut auth = self.auth_for(&scope).await?;
        let mut answered_challenge = false;
        let mut redirects = 0;
        loop {
            let resp = self.once(&method, &url, accept, auth.as_ref()).await?;
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            if status.is_redirection() && redirects < MAX_REDIRECTS {
                let Some(next) = resp
                    .headers()
                    .get(http::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| url.join(l).ok())
                else {
                    return Err(UpstreamError::Invalid(format!(
                        "{status} without a Location"
                    )));
                };
                // Credentials are the registry's: never sent to a CDN.
                if next.host_str() != url.host_str() || next.port() != url.port() {
                    auth = None;
                }
                url = next;
                redirects += 1;
                continue;
            }
            match status {
                StatusCode::UNAUTHORIZED if !answered_challenge && redirects == 0 => {
                    answered_challenge = true;
                    let header = resp
                        .headers()
                        .get(http::header::WWW_AUTHENTICATE)
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or("");
                    auth = Some(self.answer(challenge::parse(header), &scope).await?);
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    return Err(UpstreamError::Denied(format!("{status} for {path}")))
                }
                StatusCode::NOT_FOUND => return Err(UpstreamError::NotFound(path.to_owned())),
                s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                    return Err(UpstreamError::Unavailable(format!("{status} for {path}")))
                }
                s => return Err(UpstreamError::Invalid(format!("{s} for {path}"))),
            }
        }
    }

    /// Reads a whole answer of at most `max` bytes, each pause in it
    /// within the timeout.
    pub async fn read_small(
        &self,
        resp: http::Response<Incoming>,
        max: usize,
    ) -> Result<Bytes, UpstreamError> {
        let mut body = resp.into_body();
        let mut out = bytes::BytesMut::new();
        loop {
            match tokio::time::timeout(self.timeout, body.frame()).await {
                Err(_) => return Err(UpstreamError::Unavailable("answer body stalled".into())),
                Ok(None) => return Ok(out.freeze()),
                Ok(Some(Err(e))) => return Err(UpstreamError::Invalid(format!("body: {e}"))),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        if out.len() + data.len() > max {
                            return Err(UpstreamError::Invalid(format!(
                                "answer larger than {max} bytes"
                            )));
                        }
                        out.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    async fn once(
        &self,
        method: &Method,
        url: &url::Url,
        accept: Option<&str>,
        auth: Option<&HeaderValue>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(url.as_str())
            .header(
                http::header::USER_AGENT,
                concat!("wharf/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(a) = accept {
            req = req.header(http::header::ACCEPT, a);
        }
        if let Some(a) = auth {
            req = req.header(http::header::AUTHORIZATION, a.clone());
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| UpstreamError::Invalid(format!("request: {e}")))?;
        match tokio::time::timeout(self.timeout, self.http.request(req)).await {
            Err(_) => Err(UpstreamError::Unavailable(format!(
                "no answer within {} s",
                self.timeout.as_secs()
            ))),
            Ok(Err(e)) => Err(UpstreamError::Unavailable(crate::tls::with_causes(&e))),
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// What to send before any challenge: a live token for the scope, or
    /// what the upstream's `GET /v2/` asked for (learned on first use).
    async fn auth_for(&self, scope: &str) -> Result<Option<HeaderValue>, UpstreamError> {
        let now = Instant::now();
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.retain(|_, (_, until)| *until > now);
            if let Some((t, _)) = tokens.get(scope) {
                return Ok(Some(t.clone()));
            }
        }
        let known = self.scheme.lock().ok().and_then(|s| s.clone());
        let scheme = match known {
            Some(s) => s,
            None => {
                let s = self.ping().await?;
                if let Ok(mut slot) = self.scheme.lock() {
                    *slot = Some(s.clone());
                }
                s
            }
        };
        match scheme {
            Scheme::Anonymous => Ok(None),
            Scheme::Basic => Ok(self.basic.clone()),
            Scheme::Bearer { realm, service } => self
                .answer(
                    Some(Challenge::Bearer {
                        realm,
                        service,
                        scope: None,
                    }),
                    scope,
                )
                .await
                .map(Some),
        }
    }

    /// `GET /v2/`: what the upstream asks of clients.
    async fn ping(&self) -> Result<Scheme, UpstreamError> {
        let url = self
            .base
            .join("/v2/")
            .map_err(|e| UpstreamError::Invalid(e.to_string()))?;
        let resp = self.once(&Method::GET, &url, None, None).await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(Scheme::Anonymous);
        }
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(UpstreamError::Unavailable(format!("{status} for /v2/")));
        }
        let challenge = resp
            .headers()
            .get(http::header::WWW_AUTHENTICATE)
            .and_then(|h| h.to_str().ok())
            .and_then(challenge::parse);
        Ok(match (status, challenge) {
            (StatusCode::UNAUTHORIZED, Some(Challenge::Basic)) => Scheme::Basic,
            (StatusCode::UNAUTHORIZED, Some(Challenge::Bearer { realm, service, .. })) => {
                Scheme::Bearer { realm, service }
            }
            // Anything else: ask without credentials and answer what the
            // request itself is challenged with.
            _ => Scheme::Anonymous,
        })
    }

    async fn answer(
        &self,
        challenge: Option<Challenge>,
        scope: &str,
    ) -> Result<HeaderValue, UpstreamError> {
        match challenge {
            Some(Challenge::Basic) => {
                let basic = self.basic.clone().ok_or_else(|| {
                    UpstreamError::Denied(
                        "the upstream asks for credentials: set username and password".into(),
                    )
                })?;
                Ok(basic)
            }
            Some(Challenge::Bearer {
                realm,
                service,
                scope: asked,
            }) => {
                let (token, ttl) = self
                    .fetch_token(
                        &realm,
                        service.as_deref(),
                        asked.as_deref().unwrap_or(scope),
                    )
                    .await?;
                let value = HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| UpstreamError::Invalid("token is not header text".into()))?;
                // Kept a little less than it lives, so it is not used as it
                // expires in flight.
                let keep = ttl
                    .saturating_sub(Duration::from_secs(10))
                    .max(Duration::from_secs(5));
                if let Ok(mut tokens) = self.tokens.lock() {
                    tokens.insert(scope.to_owned(), (value.clone(), Instant::now() + keep));
                }
                Ok(value)
            }
            None => Err(UpstreamError::Denied(
                "401 with no challenge Wharf can answer (Basic or Bearer)".into(),
            )),
        }
    }

    /// The token flow: GET realm?service=&scope=, with the configured
    /// credentials if any; the token and how long it lives.
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<(String, Duration), UpstreamError> {
        let mut url: url::Url = realm
            .parse()
            .map_err(|e| UpstreamError::Invalid(format!("token realm {realm}: {e}")))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let resp = self
            .once(&Method::GET, &url, None, self.basic.as_ref())
            .await?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(UpstreamError::Denied(format!(
                "token service answered {status}"
            )));
        }
        if !status.is_success() {
            return Err(UpstreamError::Unavailable(format!(
                "token service answered {status}"
            )));
        }
        let body = self.read_small(resp, MAX_TOKEN_ANSWER).await?;
        #[derive(serde::Deserialize)]
        struct Answer {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let a: Answer = serde_json::from_slice(&body)
            .map_err(|e| UpstreamError::Invalid(format!("token answer: {e}")))?;
        let token = a
            .token
            .or(a.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| UpstreamError::Invalid("token answer has no token".into()))?;
        // The token spec's default lifetime.
        Ok((token, Duration::from_secs(a.expires_in.unwrap_or(60))))
    }
}
