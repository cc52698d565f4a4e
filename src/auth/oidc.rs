//! CI jobs logging in with their OIDC identity token as the password
//! (`[[auth.oidc]]`): GitHub Actions, GitLab CI `id_tokens`, Buildkite,
//! Kubernetes service-account tokens. No exchange step for the client: a
//! `docker login -u oidc -p "$TOKEN"` is all.
//!
//! Owns: the issuers' keys (fetched over https from the JWKS or the
//! discovery document, cached, fetched again for an unknown `kid` at most
//! once a minute), checking a token whole (RS256/ES256 signature, `iss`,
//! `aud`, `exp`, `nbf`, `iat` with 60 s of skew, the `require` globs), the
//! user name and grants templated from its claims, and the logins already
//! accepted (by the token's hash, until `iat + session_secs`).
//! Must not: log a token, or let a claim widen a grant: a `{claim}` value
//! must read as repository path components (no glob, no `..`, nothing
//! empty), else the token is refused.

use super::access::Action;
use super::pattern::{glob_matches, RepoPattern};
use crate::config::OidcConfig;
use base64::Engine as _;
use bytes::Bytes;
use dashmap::DashMap;
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Clock skew allowed on `exp`, `nbf` and `iat`.
const SKEW_SECS: u64 = 60;

/// An unknown `kid` fetches the keys again at most this often.
const REFETCH_EVERY: Duration = Duration::from_secs(60);

/// Bound on one fetch of a discovery document or a key set.
const FETCH_DEADLINE: Duration = Duration::from_secs(10);

/// Accepted logins kept at most (expired ones are dropped first).
const MAX_ACCEPTED: usize = 100_000;

/// Who a token made of its bearer, and what its grants allow.
#[derive(Debug, Clone)]
pub struct OidcUser {
    pub user: String,
    pub issuer: String,
    pub subject: String,
    grants: Vec<(RepoPattern, Vec<Action>)>,
}

impl OidcUser {
    pub fn grants(&self, name: &str, action: Action) -> bool {
        self.grants
            .iter()
            .any(|(p, actions)| actions.contains(&action) && p.matches(name))
    }
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("auth.oidc {issuer}: {why}")]
pub struct OidcConfigError {
    issuer: String,
    why: String,
}

type Https = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// One of an issuer's keys and the algorithm it signs with.
type SigningKey = (DecodingKey, Algorithm);

struct Issuer {
    cfg: OidcConfig,
    http: Https,
    keys: RwLock<Keys>,
    /// One fetch of the keys at a time: a burst of logins with a new `kid`
    /// waits for the first one's fetch instead of each sending its own.
    fetch_turn: tokio::sync::Mutex<()>,
    require: Vec<(String, String)>,
    grants: Vec<(String, Vec<Action>)>,
}

#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, (DecodingKey, Algorithm)>,
    fetched: Option<Instant>,
}

/// The configured issuers and the logins they accepted.
pub struct OidcLogins {
    issuers: Vec<Issuer>,
    accepted: DashMap<[u8; 32], (Arc<OidcUser>, u64)>,
}

impl OidcLogins {
    pub fn new(configs: &[OidcConfig]) -> Result<OidcLogins, OidcConfigError> {
        let issuers = configs
            .iter()
            .map(|cfg| {
                let bad = |why: String| OidcConfigError {
                    issuer: cfg.issuer.clone(),
                    why,
                };
                let tls =
                    crate::tls::client_trust(cfg.ca_file.as_deref(), "auth.oidc.ca_file", None)
                        .map_err(bad)?;
                let http = Client::builder(TokioExecutor::new())
                    .build(crate::tls::client_connector(tls, FETCH_DEADLINE));
                let mut grants = Vec::new();
                for g in &cfg.grants {
                    let actions = g
                        .actions
                        .iter()
                        .map(|a| {
                            Action::parse(a).ok_or_else(|| bad(format!("unknown action {a:?}")))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    grants.push((g.repository.clone(), actions));
                }
                Ok(Issuer {
                    require: cfg
                        .require
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    cfg: cfg.clone(),
                    http,
                    keys: RwLock::new(Keys::default()),
                    fetch_turn: tokio::sync::Mutex::new(()),
                    grants,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(OidcLogins {
            issuers,
            accepted: DashMap::new(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// The user `token` logs in as, or why it does not. The reason is for
    /// the client; it never contains the token.
    pub async fn login(&self, token: &str) -> Result<Arc<OidcUser>, String> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = crate::calendar::unix_now();
        if let Some(hit) = self.accepted.get(&hash) {
            if now < hit.1 {
                return Ok(hit.0.clone());
            }
        }
        let (user, until) = self.check(token, now).await?;
        let user = Arc::new(user);
        if self.accepted.len() >= MAX_ACCEPTED {
            self.accepted.retain(|_, v| now < v.1);
        }
        if self.accepted.len() < MAX_ACCEPTED {
            self.accepted.insert(hash, (user.clone(), until));
        }
        Ok(user)
    }

    /// A first login: every check. Returns the user and until when the
    /// login lasts.
    async fn check(&self, token: &str, now: u64) -> Result<(OidcUser, u64), String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| "not a signed JWT".to_owned())?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(format!(
                "token algorithm {:?} is not accepted (RS256, ES256)",
                header.alg
            ));
        }
        let kid = header.kid.ok_or("token header names no key (kid)")?;
        let claimed_iss = unverified_issuer(token)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.cfg.issuer == claimed_iss)
            .ok_or_else(|| format!("issuer {claimed_iss:?} is not configured"))?;
        let (key, alg) = issuer.key(&kid).await?;
        if alg != header.alg {
            return Err(format!(
                "key {kid:?} is for {alg:?}, the token says {:?}",
                header.alg
            ));
        }
        let mut v = Validation::new(alg);
        v.set_issuer(&[&issuer.cfg.issuer]);
        v.set_audience(&[&issuer.cfg.audience]);
        v.leeway = SKEW_SECS;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "iss", "aud", "iat", "sub"]);
        let claims = jsonwebtoken::decode::<Value>(token, &key, &v)
            .map_err(|e| format!("token refused: {e}"))?
            .claims;
        let iat = claims["iat"].as_u64().ok_or("token iat is not a number")?;
        if iat > now + SKEW_SECS {
            return Err("token issued in the future (iat)".into());
        }
        for (claim, glob) in &issuer.require {
            let value =
                claim_text(&claims, claim).ok_or_else(|| format!("token has no {claim} claim"))?;
            if !glob_matches(glob, &value) {
                return Err(format!("claim {claim} = {value:?} does not match {glob:?}"));
            }
        }
        let user = render(&issuer.cfg.user, &claims)?;
        let grants = issuer
            .grants
            .iter()
            .map(|(pattern, actions)| {
                Ok((
                    RepoPattern::new(&render(pattern, &claims)?),
                    actions.clone(),
                ))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let subject = claims["sub"].as_str().unwrap_or_default().to_owned();
        Ok((
            OidcUser {
                user,
                issuer: issuer.cfg.issuer.clone(),
                subject,
                grants,
            },
            iat.saturating_add(issuer.cfg.session_secs),
        ))
    }
}

impl Issuer {
    /// The key `kid` names: cached, or fetched (again) when unknown and
    /// the last fetch is over a minute old.
    async fn key(&self, kid: &str) -> Result<(DecodingKey, Algorithm), String> {
        match self.cached_or_due(kid)? {
            (Some(k), _) => return Ok(k),
            (None, false) => return Err(format!("unknown signing key {kid:?}")),
            (None, true) => {}
        }
        // Waits out a fetch under way (bounded by its own deadline), then
        // looks again: that fetch may have brought the key.
        let _turn = tokio::time::timeout(FETCH_DEADLINE * 2, self.fetch_turn.lock())
            .await
            .map_err(|_| "the issuer's keys are still being fetched".to_owned())?;
        match self.cached_or_due(kid)? {
            (Some(k), _) => return Ok(k),
            (None, false) => return Err(format!("unknown signing key {kid:?}")),
            (None, true) => {}
        }
        let fetched = self.fetch_keys().await;
        let mut keys = self.keys.write().map_err(|_| "key cache poisoned")?;
        keys.fetched = Some(Instant::now());
        match fetched {
            Ok(by_kid) => keys.by_kid = by_kid,
            Err(e) => {
                tracing::warn!(issuer = %self.cfg.issuer, error = %e, "OIDC keys not fetched");
                return Err(format!("the issuer's keys could not be fetched: {e}"));
            }
        }
        keys.by_kid
            .get(kid)
            .cloned()
            .ok_or_else(|| format!("unknown signing key {kid:?}"))
    }

    /// The cached key `kid` names, if any, and whether a fetch is due (the
    /// last one is over a minute old, or there was none).
    fn cached_or_due(&self, kid: &str) -> Result<(Option<SigningKey>, bool), String> {
        let keys = self.keys.read().map_err(|_| "key cache poisoned")?;
        if let Some(k) = keys.by_kid.get(kid) {
            return Ok((Some(k.clone()), false));
        }
        Ok((
            None,
            keys.fetched.is_none_or(|t| t.elapsed() >= REFETCH_EVERY),
        ))
    }

    async fn fetch_keys(&self) -> Result<HashMap<String, (DecodingKey, Algorithm)>, String> {
        let jwks_url = match &self.cfg.jwks_url {
            Some(u) => u.clone(),
            None => {
                let discovery = format!(
                    "{}/.well-known/openid-configuration",
                    self.cfg.issuer.trim_end_matches('/')
                );
                let doc: Value = serde_json::from_slice(&self.get(&discovery).await?)
                    .map_err(|e| format!("{discovery}: {e}"))?;
                doc["jwks_uri"]
                    .as_str()
                    .ok_or_else(|| format!("{discovery} names no jwks_uri"))?
                    .to_owned()
            }
        };
        let set: JwkSet = serde_json::from_slice(&self.get(&jwks_url).await?)
            .map_err(|e| format!("{jwks_url}: {e}"))?;
        let mut by_kid = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let alg = match &jwk.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                _ => continue,
            };
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                by_kid.insert(kid, (key, alg));
            }
        }
        Ok(by_kid)
    }

    async fn get(&self, url: &str) -> Result<Bytes, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!("{url}: keys are fetched over https only"));
        }
        let fetch = async {
            let resp = self
                .http
                .get(uri)
                .await
                .map_err(|e| format!("{url}: {}", crate::tls::with_causes(&e)))?;
            if !resp.status().is_success() {
                return Err(format!("{url} answered {}", resp.status()));
            }
            resp.into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| format!("{url}: {e}"))
        };
        tokio::time::timeout(FETCH_DEADLINE, fetch)
            .await
            .map_err(|_| format!("{url}: no answer within {} s", FETCH_DEADLINE.as_secs()))?
    }
}

/// The `iss` a token claims, before its signature is checked: only to
/// pick whose keys check it.
fn unverified_issuer(token: &str) -> Result<String, String> {
    let payload = token.split('.').nth(1).ok_or("not a signed JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| "token payload is not base64url")?;
    let claims: Value = serde_json::from_slice(&bytes).map_err(|_| "token payload is not JSON")?;
    claims["iss"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "token has no iss".to_owned())
}

/// Whether the password is shaped like a JWT (three base64url parts):
/// only then is it checked as a token.
pub fn looks_like_jwt(password: &str) -> bool {
    let parts: Vec<&str> = password.split('.').collect();
    parts.len() == 3
        && parts[0].starts_with("eyJ")
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
        })
}

/// A claim as text (strings as they are, numbers and booleans printed).
fn claim_text(claims: &Value, name: &str) -> Option<String> {
    match &claims[name] {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `template` with each `{claim}` replaced by the claim's value, which
/// must read as repository path components.
fn render(template: &str, claims: &Value) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .map(|c| open + c)
            .ok_or_else(|| format!("template {template:?} has an unclosed {{"))?;
        let name = &rest[open + 1..close];
        let value = claim_text(claims, name).ok_or_else(|| format!("token has no {name} claim"))?;
        if !safe_components(&value) {
            return Err(format!(
                "claim {name} = {value:?} is not a repository path (lowercase components, no glob, no ..)"
            ));
        }
        out.push_str(&value);
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Repository path components: each one the distribution grammar's
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, separated by single `/`. So no
/// `*`, no `..`, nothing empty, no leading or trailing `/`.
fn safe_components(value: &str) -> bool {
    crate::oci::RepoName::parse(value).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_fill_templates_only_as_plain_path_components() {
        let claims = serde_json::json!({
            "repository": "my-org/app", "ref": "refs/heads/main", "n": 7,
            "star": "my-org/*", "dots": "my-org/../x", "lead": "/x", "trail": "x/",
            "empty": "a//b", "upper": "My-Org/App"
        });
        assert_eq!(render("gh:{repository}", &claims).unwrap(), "gh:my-org/app");
        assert_eq!(
            render("ci/{repository}/**", &claims).unwrap(),
            "ci/my-org/app/**"
        );
        assert_eq!(render("n{n}", &claims).unwrap(), "n7");
        // A git ref reads as a path: fine inside a grant, never a glob.
        assert_eq!(render("{ref}", &claims).unwrap(), "refs/heads/main");
        for bad in ["star", "dots", "lead", "trail", "empty", "upper", "missing"] {
            assert!(render(&format!("ci/{{{bad}}}"), &claims).is_err(), "{bad}");
        }
        assert!(render("x{repository", &claims).is_err());
    }

    #[test]
    fn only_jwt_shaped_passwords_are_tokens() {
        assert!(looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"));
        assert!(!looks_like_jwt("hunter2"));
        assert!(!looks_like_jwt("a.b.c"));
        assert!(!looks_like_jwt("eyJ.x"));
    }
}
