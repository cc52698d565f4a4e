//! Where the node's S3 credentials come from, found the way AWS SDKs find
//! them, and kept fresh.
//!
//! Owns: the provider chain (the keys in the configuration or their
//! files; the environment's `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/
//! `AWS_SESSION_TOKEN`; web identity through STS
//! `AssumeRoleWithWebIdentity`; ECS container credentials; EC2 instance
//! profiles through IMDSv2), the three credential endpoints' protocols,
//! and refreshing temporary credentials before they expire.
//! Must not: sign or send S3 requests (the client does), or hold a lock
//! across an await: one caller refreshes while the others go on with the
//! credentials they have, which stay valid until their expiry.
//!
//! Why refresh ahead and on demand rather than on a timer: a request
//! signed just before the switch must still be valid when it arrives, so
//! new credentials are fetched while the old ones have a quarter of their
//! life (at most 5 minutes) left, by the first request that notices; a
//! node with no traffic fetches nothing and owns no background task.

use super::client::{PartBody, S3Error};
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use jiff::Timestamp;
use rusty_s3::Credentials;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub(super) type HttpClient = Client<HttpsConnector<HttpConnector>, PartBody>;

/// Where credentials come from, as read from the configuration and the
/// environment (nothing fetched yet).
#[derive(Clone, Debug)]
pub enum CredentialSource {
    /// Keys that do not change: the configuration's, or the environment's
    /// (with `AWS_SESSION_TOKEN` when it is set).
    Fixed {
        key: String,
        secret: String,
        token: Option<String>,
    },
    /// `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`: the token file
    /// (re-read at each refresh: Kubernetes rotates it) exchanged at STS.
    WebIdentity {
        token_file: PathBuf,
        role_arn: String,
        session_name: String,
        sts: String,
    },
    /// `AWS_CONTAINER_CREDENTIALS_FULL_URI` or `_RELATIVE_URI` (ECS, EKS
    /// Pod Identity), with its authorization token when one is given.
    Container {
        uri: String,
        token: Option<String>,
        token_file: Option<PathBuf>,
    },
    /// The EC2 instance profile, through IMDSv2.
    InstanceProfile { endpoint: String },
}

impl CredentialSource {
    /// The chain: `configured` (the configuration's keys, files already
    /// read) first, then the environment, in the SDKs' order. IMDS is the
    /// last resort unless `AWS_EC2_METADATA_DISABLED=true`.
    pub fn find(
        configured: Option<(String, String)>,
        region: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<CredentialSource, String> {
        if let Some((key, secret)) = configured {
            return Ok(CredentialSource::Fixed {
                key,
                secret,
                token: None,
            });
        }
        match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            (Some(key), Some(secret)) => {
                return Ok(CredentialSource::Fixed {
                    key,
                    secret,
                    token: env("AWS_SESSION_TOKEN"),
                })
            }
            (Some(_), None) => {
                return Err("AWS_ACCESS_KEY_ID is set without AWS_SECRET_ACCESS_KEY".into())
            }
            (None, Some(_)) => {
                return Err("AWS_SECRET_ACCESS_KEY is set without AWS_ACCESS_KEY_ID".into())
            }
            (None, None) => {}
        }
        if let Some(token_file) = env("AWS_WEB_IDENTITY_TOKEN_FILE") {
            let role_arn = env("AWS_ROLE_ARN")
                .ok_or("AWS_WEB_IDENTITY_TOKEN_FILE is set without AWS_ROLE_ARN")?;
            let sts = env("AWS_ENDPOINT_URL_STS")
                .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com"));
            return Ok(CredentialSource::WebIdentity {
                token_file: token_file.into(),
                role_arn,
                session_name: env("AWS_ROLE_SESSION_NAME")
                    .unwrap_or_else(|| format!("wharf-{}", Timestamp::now().as_second())),
                sts,
            });
        }
        let container = env("AWS_CONTAINER_CREDENTIALS_FULL_URI").or_else(|| {
            env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
                .map(|path| format!("http://169.254.170.2{path}"))
        });
        if let Some(uri) = container {
            return Ok(CredentialSource::Container {
                uri,
                token: env("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
                token_file: env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE").map(PathBuf::from),
            });
        }
        if env("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Err(
                "no credentials: storage.s3.access_key_id/secret_access_key (or their _file), \
                 AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_WEB_IDENTITY_TOKEN_FILE or \
                 AWS_CONTAINER_CREDENTIALS_*_URI, and AWS_EC2_METADATA_DISABLED=true"
                    .into(),
            );
        }
        Ok(CredentialSource::InstanceProfile {
            endpoint: env("AWS_EC2_METADATA_SERVICE_ENDPOINT")
                .unwrap_or_else(|| "http://169.254.169.254".into())
                .trim_end_matches('/')
                .to_owned(),
        })
    }

    /// Which provider, in words, for logs and `wharf config check`.
    pub fn describe(&self) -> String {
        match self {
            CredentialSource::Fixed { token: None, .. } => "static keys".into(),
            CredentialSource::Fixed { token: Some(_), .. } => {
                "keys with a session token (AWS_SESSION_TOKEN; not refreshed)".into()
            }
            CredentialSource::WebIdentity { role_arn, sts, .. } => {
                format!("web identity: role {role_arn} through {sts}")
            }
            CredentialSource::Container { uri, .. } => format!("container credentials from {uri}"),
            CredentialSource::InstanceProfile { endpoint } => {
                format!("instance profile through IMDSv2 at {endpoint}")
            }
        }
    }
}

/// Credentials in hand, and when to fetch the next ones.
#[derive(Clone)]
struct Held {
    credentials: Arc<Credentials>,
    /// `None`: fixed keys, never refreshed.
    expires: Option<Timestamp>,
    refresh_at: Option<Timestamp>,
}

/// The current credentials, shared by the client's clones.
pub struct CredentialProvider {
    source: CredentialSource,
    held: RwLock<Option<Held>>,
    /// Set while one caller fetches; the others use what is held, or
    /// wait for `fetched` when nothing valid is held.
    fetching: AtomicBool,
    fetched: tokio::sync::Notify,
}

/// How long one fetch from a credential endpoint may take.
const FETCH_DEADLINE: Duration = Duration::from_secs(5);

/// Refreshed with this much of their life left, at most.
const REFRESH_AHEAD: Duration = Duration::from_secs(300);

/// After a failed refresh, the held credentials (still valid) are used
/// this long before the next attempt.
const RETRY_AFTER: Duration = Duration::from_secs(10);

impl CredentialProvider {
    pub fn new(source: CredentialSource) -> CredentialProvider {
        let held = match &source {
            CredentialSource::Fixed { key, secret, token } => Some(Held {
                credentials: Arc::new(match token {
                    Some(t) => Credentials::new_with_token(key.clone(), secret.clone(), t.clone()),
                    None => Credentials::new(key.clone(), secret.clone()),
                }),
                expires: None,
                refresh_at: None,
            }),
            _ => None,
        };
        CredentialProvider {
            source,
            held: RwLock::new(held),
            fetching: AtomicBool::new(false),
            fetched: tokio::sync::Notify::new(),
        }
    }

    pub fn source(&self) -> &CredentialSource {
        &self.source
    }

    fn held(&self) -> Option<Held> {
        self.held.read().ok().and_then(|h| h.clone())
    }

    /// Credentials to sign with now: the held ones while they are fresh;
    /// otherwise one caller fetches new ones while the others keep using
    /// the held ones as long as those are valid.
    pub async fn current(&self, http: &HttpClient) -> Result<Arc<Credentials>, S3Error> {
        loop {
            let now = Timestamp::now();
            let held = self.held();
            if let Some(h) = &held {
                if h.refresh_at.is_none_or(|t| now < t) {
                    return Ok(h.credentials.clone());
                }
            }
            let valid = held
                .as_ref()
                .filter(|h| h.expires.is_none_or(|t| now < t))
                .map(|h| h.credentials.clone());
            if self
                .fetching
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                // Someone else is fetching.
                if let Some(c) = valid {
                    return Ok(c);
                }
                let wait = self.fetched.notified();
                if !self.fetching.load(Ordering::Acquire) {
                    continue;
                }
                let _ = tokio::time::timeout(FETCH_DEADLINE * 2, wait).await;
                if self
                    .held()
                    .is_none_or(|h| h.expires.is_some_and(|t| Timestamp::now() >= t))
                {
                    return Err(S3Error::Unavailable(format!(
                        "credentials ({}) not fetched in time",
                        self.source.describe()
                    )));
                }
                continue;
            }
            // Cleared however this ends, also when the request that
            // fetches is dropped mid-way (its client went away).
            let _fetching = FetchTurn(self);
            let fetched = tokio::time::timeout(FETCH_DEADLINE, self.fetch(http)).await;
            let result = match fetched {
                Ok(Ok(h)) => {
                    let c = h.credentials.clone();
                    if let Ok(mut slot) = self.held.write() {
                        *slot = Some(h);
                    }
                    Ok(c)
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(S3Error::Unavailable(format!(
                    "credentials ({}): no answer within {} s",
                    self.source.describe(),
                    FETCH_DEADLINE.as_secs()
                ))),
            };
            let result = match (result, valid) {
                (Ok(c), _) => Ok(c),
                (Err(e), Some(c)) => {
                    tracing::warn!(error = %e, "S3 credentials not refreshed; the held ones are still valid");
                    if let Ok(mut slot) = self.held.write() {
                        if let Some(h) = slot.as_mut() {
                            h.refresh_at = Some(later(Timestamp::now(), RETRY_AFTER));
                        }
                    }
                    Ok(c)
                }
                (Err(e), None) => Err(e),
            };
            return result;
        }
    }

    async fn fetch(&self, http: &HttpClient) -> Result<Held, S3Error> {
        let said = |why: String| {
            S3Error::Unavailable(format!("credentials ({}): {why}", self.source.describe()))
        };
        let issued = match &self.source {
            CredentialSource::Fixed { .. } => {
                return self.held().ok_or_else(|| said("no keys".into()))
            }
            CredentialSource::WebIdentity {
                token_file,
                role_arn,
                session_name,
                sts,
            } => {
                let token = std::fs::read_to_string(token_file)
                    .map_err(|e| said(format!("{}: {e}", token_file.display())))?;
                // A form POST, as the SDKs send it (unsigned: the token is
                // the proof).
                let form = web_identity_form(role_arn, session_name, token.trim());
                let form_type = ("content-type", "application/x-www-form-urlencoded".into());
                let body = send(http, Method::POST, sts, &[form_type], Bytes::from(form))
                    .await
                    .map_err(said)?;
                TemporaryCredentials::from_sts_xml(&body).map_err(said)?
            }
            CredentialSource::Container {
                uri,
                token,
                token_file,
            } => {
                let token = match token_file {
                    Some(f) => Some(
                        std::fs::read_to_string(f)
                            .map_err(|e| said(format!("{}: {e}", f.display())))?
                            .trim()
                            .to_owned(),
                    ),
                    None => token.clone(),
                };
                let headers: Vec<(&str, String)> =
                    token.map(|t| ("authorization", t)).into_iter().collect();
                let body = call(http, Method::GET, uri, &headers).await.map_err(said)?;
                TemporaryCredentials::from_json(&body).map_err(said)?
            }
            CredentialSource::InstanceProfile { endpoint } => {
                let session = call(
                    http,
                    Method::PUT,
                    &format!("{endpoint}/latest/api/token"),
                    &[("x-aws-ec2-metadata-token-ttl-seconds", "21600".into())],
                )
                .await
                .map_err(said)?;
                let session = String::from_utf8_lossy(&session).trim().to_owned();
                let headers = [("x-aws-ec2-metadata-token", session)];
                let base = format!("{endpoint}/latest/meta-data/iam/security-credentials/");
                let roles = call(http, Method::GET, &base, &headers)
                    .await
                    .map_err(said)?;
                let role = String::from_utf8_lossy(&roles)
                    .lines()
                    .next()
                    .map(str::trim)
                    .filter(|r| !r.is_empty())
                    .ok_or_else(|| said("the instance has no IAM role".into()))?
                    .to_owned();
                let body = call(http, Method::GET, &format!("{base}{role}"), &headers)
                    .await
                    .map_err(said)?;
                TemporaryCredentials::from_json(&body).map_err(said)?
            }
        };
        let now = Timestamp::now();
        let life = issued.expires.duration_since(now).unsigned_abs();
        let ahead = REFRESH_AHEAD.min(life / 4);
        tracing::info!(
            provider = %self.source.describe(),
            expires = %issued.expires,
            "S3 credentials fetched"
        );
        Ok(Held {
            credentials: Arc::new(Credentials::new_with_token(
                issued.key,
                issued.secret,
                issued.token,
            )),
            expires: Some(issued.expires),
            refresh_at: Some(later(now, life.saturating_sub(ahead))),
        })
    }
}

/// The turn of the one caller fetching: ends (and wakes the waiters)
/// when dropped.
struct FetchTurn<'a>(&'a CredentialProvider);

impl Drop for FetchTurn<'_> {
    fn drop(&mut self) {
        self.0.fetching.store(false, Ordering::Release);
        self.0.fetched.notify_waiters();
    }
}

fn later(t: Timestamp, by: Duration) -> Timestamp {
    t.checked_add(jiff::SignedDuration::try_from(by).unwrap_or(jiff::SignedDuration::ZERO))
        .unwrap_or(t)
}

/// One small request with no body to a credential endpoint.
async fn call(
    http: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, String)],
) -> Result<Bytes, String> {
    send(http, method, url, headers, Bytes::new()).await
}

/// One small request to a credential endpoint; the whole answer, or why
/// not.
async fn send(
    http: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, String)],
    body: Bytes,
) -> Result<Bytes, String> {
    let mut req = Request::builder()
        .method(method)
        .uri(url)
        .header(http::header::CONTENT_LENGTH, body.len());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let req = req
        .body(PartBody::new([body]))
        .map_err(|e| format!("{url}: {e}"))?;
    let resp = http
        .request(req)
        .await
        .map_err(|e| format!("{url}: {}", crate::tls::with_causes(&e)))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .to_bytes();
    if !status.is_success() {
        let said: String = String::from_utf8_lossy(&body).chars().take(300).collect();
        return Err(format!("{url} answered {status}: {said}"));
    }
    Ok(body)
}

/// STS's form for `AssumeRoleWithWebIdentity`.
fn web_identity_form(role_arn: &str, session: &str, token: &str) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("Action", "AssumeRoleWithWebIdentity")
        .append_pair("Version", "2011-06-15")
        .append_pair("RoleArn", role_arn)
        .append_pair("RoleSessionName", session)
        .append_pair("WebIdentityToken", token)
        .finish()
}

/// Temporary credentials as an endpoint hands them out.
#[derive(Debug, PartialEq)]
struct TemporaryCredentials {
    key: String,
    secret: String,
    token: String,
    expires: Timestamp,
}

impl TemporaryCredentials {
    /// The ECS and IMDS answer: `AccessKeyId`, `SecretAccessKey`,
    /// `Token`, `Expiration` (RFC 3339), and for IMDS `Code: Success`.
    fn from_json(body: &[u8]) -> Result<TemporaryCredentials, String> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Answer {
            code: Option<String>,
            access_key_id: String,
            secret_access_key: String,
            token: String,
            expiration: String,
        }
        let a: Answer =
            serde_json::from_slice(body).map_err(|e| format!("credentials answer: {e}"))?;
        if let Some(code) = a.code.filter(|c| c != "Success") {
            return Err(format!("credentials answer: Code {code}"));
        }
        Ok(TemporaryCredentials {
            key: a.access_key_id,
            secret: a.secret_access_key,
            token: a.token,
            expires: expiration(&a.expiration)?,
        })
    }

    /// STS's XML answer: the `Credentials` element of the result.
    fn from_sts_xml(body: &[u8]) -> Result<TemporaryCredentials, String> {
        let text = String::from_utf8_lossy(body);
        let field = |name: &str| -> Result<String, String> {
            let open = format!("<{name}>");
            let close = format!("</{name}>");
            let start = text
                .find(&open)
                .map(|i| i + open.len())
                .ok_or_else(|| format!("STS answer without {name}"))?;
            let len = text[start..]
                .find(&close)
                .ok_or_else(|| format!("STS answer: {name} not closed"))?;
            Ok(text[start..start + len].trim().to_owned())
        };
        Ok(TemporaryCredentials {
            key: field("AccessKeyId")?,
            secret: field("SecretAccessKey")?,
            token: field("SessionToken")?,
            expires: expiration(&field("Expiration")?)?,
        })
    }
}

fn expiration(s: &str) -> Result<Timestamp, String> {
    s.parse::<Timestamp>()
        .map_err(|e| format!("credentials' Expiration {s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn the_chain_takes_the_first_source_in_the_sdks_order() {
        let all = [
            ("AWS_ACCESS_KEY_ID", "AK"),
            ("AWS_SECRET_ACCESS_KEY", "SK"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/creds"),
        ];
        let configured = Some(("CK".to_owned(), "CS".to_owned()));
        assert!(matches!(
            CredentialSource::find(configured, "us-east-1", env(&all)),
            Ok(CredentialSource::Fixed { key, .. }) if key == "CK"
        ));
        assert!(matches!(
            CredentialSource::find(None, "us-east-1", env(&all)),
            Ok(CredentialSource::Fixed { key, token: None, .. }) if key == "AK"
        ));
        match CredentialSource::find(None, "eu-west-1", env(&all[2..])) {
            Ok(CredentialSource::WebIdentity { sts, role_arn, .. }) => {
                assert_eq!(sts, "https://sts.eu-west-1.amazonaws.com");
                assert_eq!(role_arn, "arn:aws:iam::1:role/r");
            }
            other => panic!("{other:?}"),
        }
        match CredentialSource::find(None, "r", env(&all[4..])) {
            Ok(CredentialSource::Container { uri, .. }) => {
                assert_eq!(uri, "http://169.254.170.2/v2/creds")
            }
            other => panic!("{other:?}"),
        }
        match CredentialSource::find(None, "r", env(&[])) {
            Ok(CredentialSource::InstanceProfile { endpoint }) => {
                assert_eq!(endpoint, "http://169.254.169.254")
            }
            other => panic!("{other:?}"),
        }
        assert!(
            CredentialSource::find(None, "r", env(&[("AWS_EC2_METADATA_DISABLED", "true")]))
                .is_err()
        );
        assert!(CredentialSource::find(None, "r", env(&[("AWS_ACCESS_KEY_ID", "AK")])).is_err());
        assert!(
            CredentialSource::find(None, "r", env(&[("AWS_WEB_IDENTITY_TOKEN_FILE", "/t")]))
                .is_err()
        );
    }

    /// A fetch whose request is dropped mid-way (its client went away)
    /// gives the turn back: the next caller fetches instead of waiting.
    #[tokio::test]
    async fn a_fetch_dropped_mid_way_gives_its_turn_back() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let provider = CredentialProvider::new(CredentialSource::Container {
            uri: format!("http://{addr}/creds"),
            token: None,
            token_file: None,
        });
        let tls = crate::tls::client_trusting_nothing().unwrap();
        let http: HttpClient = Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(crate::tls::client_connector(tls, Duration::from_secs(1)));
        let dropped =
            tokio::time::timeout(Duration::from_millis(200), provider.current(&http)).await;
        assert!(dropped.is_err(), "the silent endpoint answered");
        assert!(
            !provider.fetching.load(Ordering::Acquire),
            "the turn was kept"
        );
        drop(silent);
    }

    #[test]
    fn answers_of_the_three_endpoints_parse() {
        let json = br#"{"Code":"Success","Type":"AWS-HMAC","AccessKeyId":"AK","SecretAccessKey":"SK","Token":"T","Expiration":"2026-12-05T13:00:00Z"}"#;
        let c = TemporaryCredentials::from_json(json).unwrap();
        assert_eq!((c.key.as_str(), c.token.as_str()), ("AK", "T"));
        assert_eq!(c.expires.to_string(), "2026-12-05T13:00:00Z");
        assert!(TemporaryCredentials::from_json(
            br#"{"Code":"Failed","AccessKeyId":"","SecretAccessKey":"","Token":"","Expiration":"2026-12-05T13:00:00Z"}"#
        )
        .is_err());
        let xml = br#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult><Credentials>
    <AccessKeyId>ASIA</AccessKeyId><SecretAccessKey>S</SecretAccessKey>
    <SessionToken>TOK</SessionToken><Expiration>2026-12-05T13:00:00Z</Expiration>
  </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"#;
        let c = TemporaryCredentials::from_sts_xml(xml).unwrap();
        assert_eq!(
            (c.key.as_str(), c.secret.as_str(), c.token.as_str()),
            ("ASIA", "S", "TOK")
        );
        assert!(
            TemporaryCredentials::from_sts_xml(b"<Error><Code>AccessDenied</Code></Error>")
                .is_err()
        );
        let form = web_identity_form("arn:r", "s", "a.b+c");
        assert!(form.contains("Action=AssumeRoleWithWebIdentity"), "{form}");
        assert!(form.contains("WebIdentityToken=a.b%2Bc"), "{form}");
    }
}
