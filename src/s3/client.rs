//! A small S3 client: the object and multipart calls Wharf makes, signed by
//! rusty-s3 (sans-IO, query-string SigV4) and sent with hyper's client.
//!
//! Owns: the connection pool to the endpoint (plain or TLS, and which
//! certificates an https endpoint may present), request signing,
//! per-request deadlines, and turning S3's answers into [`S3Error`].
//! Must not: know digests, repositories or upload sessions.
//!
//! Why rusty-s3 + hyper: Wharf already has hyper and tokio; rusty-s3 only
//! signs URLs, so the bytes of a part go from the request body's `Bytes`
//! to the socket with no SDK buffering them again, and the dependency
//! weight is a few small crates instead of an SDK.

use super::credentials::{CredentialProvider, CredentialSource, HttpClient};
use crate::config::{ConfigError, S3Config};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// How long a signature stays valid: long enough for the slowest part
/// upload we allow, short enough that a leaked URL is soon useless.
const SIGNATURE_TTL: Duration = Duration::from_secs(3600);

/// The slowest transfer rate a request is given time for, on top of the
/// base timeout (a 1 GiB part may take 1024 s + base, no longer).
const MIN_BYTES_PER_SEC: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// The endpoint cannot be reached, timed out, or answered 5xx / 503
    /// SlowDown: worth retrying later; the registry answers 503.
    #[error("object store unavailable: {0}")]
    Unavailable(String),
    /// The store refused this node's credentials or their permissions
    /// (401/403: a wrong or expired key, a missing grant): an operator's
    /// error the node reports, never a fault in the client's request.
    #[error("object store refused the credentials: {0}")]
    Refused(String),
    /// The endpoint answered with an error that retrying will not fix.
    #[error("object store answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("object store answer unreadable: {0}")]
    Protocol(String),
    #[error("object store configuration: {0}")]
    Config(String),
}

#[derive(Clone, Debug)]
pub struct S3Settings {
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    /// Where the credentials come from (`credentials::CredentialSource::find`).
    pub credentials: CredentialSource,
    pub path_style: bool,
    pub timeout: Duration,
    /// Extra roots for an https endpoint (see `S3Config::ca_file`).
    pub ca_file: Option<std::path::PathBuf>,
}

impl S3Settings {
    /// The client settings of `[storage.s3]`, credentials from the file
    /// or the environment.
    pub fn from_config(c: &S3Config) -> Result<S3Settings, ConfigError> {
        let from_env = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
        let configured = match (&c.access_key_id, &c.secret_access_key) {
            (Some(key), Some(secret)) => Some((key.clone(), secret.clone())),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid(
                    "storage.s3.access_key_id and secret_access_key go together".into(),
                ))
            }
        };
        let credentials = CredentialSource::find(configured, &c.region, from_env)
            .map_err(|e| ConfigError::Invalid(format!("storage.s3: {e}")))?;
        Ok(S3Settings {
            endpoint: c.endpoint.clone(),
            bucket: c.bucket.clone(),
            region: c.region.clone(),
            credentials,
            path_style: c.path_style,
            timeout: Duration::from_secs(c.timeout_secs.max(1)),
            ca_file: c.ca_file.clone(),
        })
    }
}

/// A request body made of the `Bytes` it was given, sent without copying
/// (a clone shares them: a retry sends the same bytes again).
#[derive(Clone)]
pub struct PartBody {
    chunks: VecDeque<Bytes>,
    len: u64,
}

impl PartBody {
    pub fn new(chunks: impl IntoIterator<Item = Bytes>) -> Self {
        let chunks: VecDeque<Bytes> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        let len = chunks.iter().map(|c| c.len() as u64).sum();
        PartBody { chunks, len }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl http_body::Body for PartBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        match this.chunks.pop_front() {
            Some(c) => {
                this.len -= c.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(c))))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}

/// An object's bytes as S3 sends them.
pub struct ObjectStream {
    pub body: Incoming,
    /// Length of what `body` carries (the range's, for a range request).
    pub len: u64,
}

#[derive(Clone)]
pub struct S3Client {
    bucket: Bucket,
    credentials: Arc<CredentialProvider>,
    http: HttpClient,
    timeout: Duration,
    /// Requests sent again after a transient failure, for metrics and
    /// tests (shared by clones).
    retried: Arc<AtomicU64>,
}

/// Attempts of one request at most: the first and this many retries.
const MAX_RETRIES: u32 = 6;

/// The first retry's pause at most; each next one doubles, up to the cap.
const BACKOFF_BASE: Duration = Duration::from_millis(50);
const BACKOFF_CAP: Duration = Duration::from_secs(2);

/// Full jitter: a random pause below the attempt's exponential bound, so
/// nodes throttled together do not retry together.
fn backoff(attempt: u32) -> Duration {
    use std::hash::BuildHasher;
    let bound = BACKOFF_BASE
        .saturating_mul(1 << attempt.min(16))
        .min(BACKOFF_CAP);
    let random = std::collections::hash_map::RandomState::new().hash_one(attempt);
    Duration::from_micros(random % (bound.as_micros() as u64).max(1))
}

/// Answers S3 asks clients to retry: throttling and server faults.
fn transient(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::INTERNAL_SERVER_ERROR
        || status == StatusCode::BAD_GATEWAY
        || status == StatusCode::SERVICE_UNAVAILABLE
        || status == StatusCode::GATEWAY_TIMEOUT
}

impl S3Client {
    pub fn new(s: &S3Settings) -> Result<Self, S3Error> {
        let endpoint: url::Url = s
            .endpoint
            .parse()
            .map_err(|e| S3Error::Config(format!("storage.s3.endpoint: {e}")))?;
        let https = match endpoint.scheme() {
            "http" => false,
            "https" => true,
            other => {
                return Err(S3Error::Config(format!(
                    "storage.s3.endpoint: scheme {other}:// is neither http nor https"
                )))
            }
        };
        let style = if s.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(endpoint, style, s.bucket.clone(), s.region.clone())
            .map_err(|e| S3Error::Config(format!("storage.s3: {e}")))?;
        let credentials = Arc::new(CredentialProvider::new(s.credentials.clone()));
        let tls = match https {
            true => crate::tls::client_trust(
                s.ca_file.as_deref(),
                "storage.s3.ca_file",
                Some("AWS_CA_BUNDLE"),
            ),
            // Never used for http://, so it trusts nothing and reads no file
            // (AWS_CA_BUNDLE is the machine's business, not this endpoint's).
            false => crate::tls::client_trusting_nothing(),
        }
        .map_err(|e| S3Error::Config(format!("storage.s3: {e}")))?;
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build(crate::tls::client_connector(tls, s.timeout));
        Ok(S3Client {
            bucket,
            credentials,
            http,
            timeout: s.timeout,
            retried: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The credentials to sign with now (fetched or refreshed first when
    /// they are temporary and due).
    async fn credentials(&self) -> Result<Arc<Credentials>, S3Error> {
        self.credentials.current(&self.http).await
    }

    /// Where the credentials come from, in words.
    pub fn credential_source(&self) -> String {
        self.credentials.source().describe()
    }

    fn deadline(&self, bytes: u64) -> Duration {
        self.timeout + Duration::from_secs(bytes / MIN_BYTES_PER_SEC)
    }

    /// Requests sent again after a transient failure since this client
    /// was made.
    pub fn retries(&self) -> u64 {
        self.retried.load(Ordering::Relaxed)
    }

    /// Sends a signed request and waits for the answer's head, within the
    /// deadline for its size. Throttling (503 SlowDown, 429), server
    /// faults and broken connections are retried with jittered
    /// exponential backoff inside that same deadline, as S3 asks of its
    /// clients; only then does the caller see `Unavailable`. Every S3 call
    /// Wharf makes may be sent twice: reads, deletes, PutObject and
    /// UploadPart are idempotent, a CreateMultipartUpload sent twice leaves
    /// an upload the orphan purge aborts, and CompleteMultipartUpload
    /// checks for its own earlier success (`complete_multipart`).
    async fn send(
        &self,
        method: Method,
        url: url::Url,
        body: PartBody,
        headers: &[(&str, String)],
    ) -> Result<hyper::Response<Incoming>, S3Error> {
        let started = tokio::time::Instant::now();
        let deadline = started + self.deadline(body.len());
        let mut attempt = 0;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let failure = match self
                .send_once(method.clone(), &url, body.clone(), headers, left)
                .await
            {
                Ok(resp) if transient(resp.status()) => {
                    let status = resp.status();
                    let body = self.read_body(resp).await.unwrap_or_default();
                    let said: String = String::from_utf8_lossy(&body).chars().take(512).collect();
                    S3Error::Unavailable(format!("{status}: {said}"))
                }
                Ok(resp) => return Ok(resp),
                Err((e @ S3Error::Unavailable(_), false)) => e,
                Err((e, _)) => return Err(e),
            };
            let pause = backoff(attempt);
            if attempt >= MAX_RETRIES || tokio::time::Instant::now() + pause >= deadline {
                return Err(failure);
            }
            attempt += 1;
            self.retried.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%method, attempt, error = %failure, "object store request retried");
            tokio::time::sleep(pause).await;
        }
    }

    async fn send_once(
        &self,
        method: Method,
        url: &url::Url,
        body: PartBody,
        headers: &[(&str, String)],
        deadline: Duration,
    ) -> Result<hyper::Response<Incoming>, (S3Error, bool)> {
        let mut req = Request::builder()
            .method(method)
            .uri(url.as_str())
            .header(http::header::CONTENT_LENGTH, body.len());
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req
            .body(body)
            .map_err(|e| (S3Error::Protocol(format!("request: {e}")), true))?;
        // The bool: final (a certificate TLS refused), not worth a retry.
        match tokio::time::timeout(deadline, self.http.request(req)).await {
            Err(_) => Err((
                S3Error::Unavailable(format!("no answer within {} s", deadline.as_secs())),
                false,
            )),
            Ok(Err(e)) => Err((
                S3Error::Unavailable(crate::tls::with_causes(&e)),
                crate::tls::refused_by_tls(&e),
            )),
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// Reads a whole (small) answer body, within the base timeout.
    async fn read_body(&self, resp: hyper::Response<Incoming>) -> Result<Bytes, S3Error> {
        match tokio::time::timeout(self.timeout, resp.into_body().collect()).await {
            Err(_) => Err(S3Error::Unavailable("answer body timed out".into())),
            Ok(Err(e)) => Err(S3Error::Unavailable(crate::tls::with_causes(&e))),
            Ok(Ok(b)) => Ok(b.to_bytes()),
        }
    }

    /// Turns a non-2xx answer into the error it means.
    async fn fail(&self, resp: hyper::Response<Incoming>) -> S3Error {
        let status = resp.status();
        let body = self.read_body(resp).await.unwrap_or_default();
        let body: String = String::from_utf8_lossy(&body).chars().take(512).collect();
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            S3Error::Unavailable(format!("{status}: {body}"))
        } else if status == StatusCode::FORBIDDEN || status == StatusCode::UNAUTHORIZED {
            S3Error::Refused(refusal(status, &body))
        } else {
            S3Error::Status {
                status: status.as_u16(),
                body,
            }
        }
    }

    /// Whether the bucket answers this node's credentials: a HEAD of a key
    /// that need not exist (a HEAD answer has no body, so a refusal shows
    /// as 403 alone). For start-up, `/readyz` and `config check`.
    pub async fn check_access(&self) -> Result<(), S3Error> {
        self.head_object("_wharf/ready").await.map(|_| ())
    }

    /// Whether the bucket exists and lists for these credentials: one
    /// ListObjectsV2 of at most one key, whose error body names the cause
    /// (`NoSuchBucket`, `SignatureDoesNotMatch`, `InvalidAccessKeyId`).
    pub async fn check_bucket(&self) -> Result<(), S3Error> {
        let creds = self.credentials().await?;
        let mut action = self.bucket.list_objects_v2(Some(&creds));
        action.with_prefix("_wharf/");
        action.with_max_keys(1);
        let url = action.sign(SIGNATURE_TTL);
        let resp = self.send(Method::GET, url, PartBody::new([]), &[]).await?;
        self.expect_ok(resp).await.map(|_| ())
    }

    async fn expect_ok(&self, resp: hyper::Response<Incoming>) -> Result<Bytes, S3Error> {
        if resp.status().is_success() {
            self.read_body(resp).await
        } else {
            Err(self.fail(resp).await)
        }
    }

    pub async fn create_bucket(&self) -> Result<(), S3Error> {
        let creds = self.credentials().await?;
        let url = self.bucket.create_bucket(&creds).sign(SIGNATURE_TTL);
        let resp = self.send(Method::PUT, url, PartBody::new([]), &[]).await?;
        match resp.status() {
            // 409: it exists already (BucketAlreadyOwnedByYou).
            s if s.is_success() || s == StatusCode::CONFLICT => Ok(()),
            _ => Err(self.fail(resp).await),
        }
    }

    pub async fn put_object(&self, key: &str, body: PartBody) -> Result<(), S3Error> {
        let creds = self.credentials().await?;
        let url = self
            .bucket
            .put_object(Some(&creds), key)
            .sign(SIGNATURE_TTL);
        let resp = self.send(Method::PUT, url, body, &[]).await?;
        self.expect_ok(resp).await.map(|_| ())
    }

    /// The object's size, or `None` if there is no such object.
    pub async fn head_object(&self, key: &str) -> Result<Option<u64>, S3Error> {
        let creds = self.credentials().await?;
        let url = self
            .bucket
            .head_object(Some(&creds), key)
            .sign(SIGNATURE_TTL);
        let resp = self.send(Method::HEAD, url, PartBody::new([]), &[]).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.fail(resp).await);
        }
        content_length(&resp).map(Some)
    }

    /// Streams an object, or the inclusive byte range `range` of it.
    /// `None` if there is no such object.
    pub async fn get_object(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Option<ObjectStream>, S3Error> {
        let creds = self.credentials().await?;
        let url = self
            .bucket
            .get_object(Some(&creds), key)
            .sign(SIGNATURE_TTL);
        let headers: Vec<(&str, String)> = range
            .map(|(a, b)| vec![("range", format!("bytes={a}-{b}"))])
            .unwrap_or_default();
        let resp = self
            .send(Method::GET, url, PartBody::new([]), &headers)
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.fail(resp).await);
        }
        let len = content_length(&resp)?;
        Ok(Some(ObjectStream {
            body: resp.into_body(),
            len,
        }))
    }

    /// The object's digest in `algorithm`, streamed back and hashed;
    /// `None` if there is no such object.
    pub async fn hash_object(
        &self,
        key: &str,
        algorithm: crate::oci::Algorithm,
    ) -> Result<Option<crate::oci::Digest>, S3Error> {
        let Some(mut o) = self.get_object(key, None).await? else {
            return Ok(None);
        };
        let mut hasher = crate::oci::DigestHasher::new(algorithm);
        while let Some(frame) = o.body.frame().await {
            let frame = frame.map_err(|e| S3Error::Unavailable(format!("object read: {e}")))?;
            if let Ok(data) = frame.into_data() {
                hasher.update(&data);
            }
        }
        Ok(Some(hasher.finish()))
    }

    /// Every object under `prefix` as (key, size), in key order, a page
    /// of up to 1,000 at a time. For checks and tests: nothing Wharf serves
    /// is found by listing (PostgreSQL is the index).
    pub async fn list_objects(&self, prefix: &str) -> Result<Vec<(String, u64)>, S3Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let creds = self.credentials().await?;
            let mut action = self.bucket.list_objects_v2(Some(&creds));
            action.with_prefix(prefix);
            if let Some(t) = &token {
                action.with_continuation_token(t.as_str());
            }
            let url = action.sign(SIGNATURE_TTL);
            let resp = self.send(Method::GET, url, PartBody::new([]), &[]).await?;
            let body = self.expect_ok(resp).await?;
            let page =
                rusty_s3::actions::ListObjectsV2::parse_response(&String::from_utf8_lossy(&body))
                    .map_err(|e| S3Error::Protocol(format!("ListObjectsV2: {e}")))?;
            out.extend(
                page.contents
                    .into_iter()
                    .map(|c| (c.key, c.size.unwrap_or(0))),
            );
            match page.next_continuation_token {
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
    }

    /// A URL anyone can GET the object with for `ttl` (redirected reads).
    pub async fn presign_get(&self, key: &str, ttl: Duration) -> Result<String, S3Error> {
        let creds = self.credentials().await?;
        Ok(self
            .bucket
            .get_object(Some(&creds), key)
            .sign(ttl)
            .to_string())
    }

    /// Deletes an object; deleting one that is not there succeeds.
    pub async fn delete_object(&self, key: &str) -> Result<(), S3Error> {
        let creds = self.credentials().await?;
        let url = self
            .bucket
            .delete_object(Some(&creds), key)
            .sign(SIGNATURE_TTL);
        self.delete(url).await
    }

    /// Sends a signed DELETE; a 404 counts as done (already gone).
    async fn delete(&self, url: url::Url) -> Result<(), S3Error> {
        let resp = self
            .send(Method::DELETE, url, PartBody::new([]), &[])
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(());
        }
        self.expect_ok(resp).await.map(|_| ())
    }

    /// Starts a multipart upload of `key`; returns its upload id.
    pub async fn create_multipart(&self, key: &str) -> Result<String, S3Error> {
        let creds = self.credentials().await?;
        let url = self
            .bucket
            .create_multipart_upload(Some(&creds), key)
            .sign(SIGNATURE_TTL);
        let resp = self.send(Method::POST, url, PartBody::new([]), &[]).await?;
        let body = self.expect_ok(resp).await?;
        let text = String::from_utf8_lossy(&body);
        let parsed = rusty_s3::actions::CreateMultipartUpload::parse_response(&text)
            .map_err(|e| S3Error::Protocol(format!("CreateMultipartUpload: {e}")))?;
        Ok(parsed.upload_id().to_owned())
    }

    /// Uploads part `number` (1..=10000); returns its ETag.
    pub async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u16,
        body: PartBody,
    ) -> Result<String, S3Error> {
        let creds = self.credentials().await?;
        let url = self
            .bucket
            .upload_part(Some(&creds), key, number, upload_id)
            .sign(SIGNATURE_TTL);
        let resp = self.send(Method::PUT, url, body, &[]).await?;
        if !resp.status().is_success() {
            return Err(self.fail(resp).await);
        }
        let etag = resp
            .headers()
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| S3Error::Protocol("UploadPart answered without an ETag".into()))?;
        self.read_body(resp).await?;
        Ok(etag)
    }

    /// Completes a multipart upload from its parts as (number, ETag), in
    /// ascending number order; numbers need not be contiguous (parts not
    /// listed are dropped by the store).
    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u16, String)],
    ) -> Result<(), S3Error> {
        let creds = self.credentials().await?;
        let url = self
            .bucket
            .complete_multipart_upload(Some(&creds), key, upload_id, std::iter::empty::<&str>())
            .sign(SIGNATURE_TTL);
        let body = Bytes::from(complete_body(parts));
        let resp = self
            .send(Method::POST, url, PartBody::new([body]), &[])
            .await?;
        let status = resp.status();
        let body = match self.expect_ok(resp).await {
            // A retry of a completion that went through the first time
            // (its answer lost): the upload is gone and the object is
            // there. Keys are one per session, so the object is ours.
            Err(S3Error::Status { status: 404, body }) if body.contains("NoSuchUpload") => {
                return match self.head_object(key).await? {
                    Some(_) => Ok(()),
                    None => Err(S3Error::Status { status: 404, body }),
                };
            }
            other => other?,
        };
        // S3 may answer 200 and put the failure in the body, after a
        // long completion.
        let text = String::from_utf8_lossy(&body);
        if text.contains("<Error>") {
            return Err(S3Error::Status {
                status: status.as_u16(),
                body: text.chars().take(512).collect(),
            });
        }
        Ok(())
    }

    /// The multipart uploads in progress under `prefix`, as (key, upload
    /// id, unix time it was started), a page of up to 1,000 at a time.
    /// rusty-s3 has no ListMultipartUploads, so it is signed here with its
    /// signing function.
    pub async fn list_multipart_uploads(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, String, u64)>, S3Error> {
        let mut out = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut query: Vec<(&str, &str)> = vec![("uploads", ""), ("prefix", prefix)];
            if let Some((key, id)) = &markers {
                query.push(("key-marker", key));
                query.push(("upload-id-marker", id));
            }
            // The signer merges these with its own parameters as sorted runs.
            query.sort();
            let creds = self.credentials().await?;
            let url = rusty_s3::signing::sign(
                &jiff::Timestamp::now(),
                rusty_s3::Method::Get,
                self.bucket.base_url().clone(),
                creds.key(),
                creds.secret(),
                creds.token(),
                self.bucket.region(),
                SIGNATURE_TTL.as_secs(),
                query.iter().copied(),
                std::iter::empty(),
            );
            let resp = self.send(Method::GET, url, PartBody::new([]), &[]).await?;
            let body = self.expect_ok(resp).await?;
            let page = ListedUploads::parse(&String::from_utf8_lossy(&body));
            out.extend(page.uploads);
            match page.next {
                Some(next) => markers = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// Abandons a multipart upload and frees its parts. An upload that is
    /// already gone counts as aborted.
    pub async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), S3Error> {
        let creds = self.credentials().await?;
        let url = self
            .bucket
            .abort_multipart_upload(Some(&creds), key, upload_id)
            .sign(SIGNATURE_TTL);
        self.delete(url).await
    }
}

/// A page of ListMultipartUploadsResult, read by element names (the
/// document is flat and Wharf's keys need no unescaping).
struct ListedUploads {
    uploads: Vec<(String, String, u64)>,
    next: Option<(String, String)>,
}

impl ListedUploads {
    fn parse(xml: &str) -> ListedUploads {
        fn field<'a>(block: &'a str, name: &str) -> Option<&'a str> {
            let open = format!("<{name}>");
            let start = block.find(&open)? + open.len();
            let end = block[start..].find(&format!("</{name}>"))? + start;
            Some(&block[start..end])
        }
        let uploads = xml
            .split("<Upload>")
            .skip(1)
            .filter_map(|block| {
                let started = field(block, "Initiated")?.parse::<jiff::Timestamp>().ok()?;
                Some((
                    field(block, "Key")?.to_owned(),
                    field(block, "UploadId")?.to_owned(),
                    started.as_second().max(0) as u64,
                ))
            })
            .collect();
        let truncated = field(xml, "IsTruncated") == Some("true");
        let next = match (
            field(xml, "NextKeyMarker"),
            field(xml, "NextUploadIdMarker"),
        ) {
            (Some(k), Some(u)) if truncated && !k.is_empty() => Some((k.to_owned(), u.to_owned())),
            _ => None,
        };
        ListedUploads { uploads, next }
    }
}

/// The CompleteMultipartUpload document. ETags are quoted hex; anything
/// XML would read as markup is escaped all the same.
fn complete_body(parts: &[(u16, String)]) -> String {
    let mut out = String::from("<CompleteMultipartUpload>");
    for (n, etag) in parts {
        let etag = etag
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        out.push_str(&format!(
            "<Part><ETag>{etag}</ETag><PartNumber>{n}</PartNumber></Part>"
        ));
    }
    out.push_str("</CompleteMultipartUpload>");
    out
}

fn content_length(resp: &hyper::Response<Incoming>) -> Result<u64, S3Error> {
    resp.headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| S3Error::Protocol("answer without Content-Length".into()))
}

/// A refusal's sentence: S3's error code and message where the answer has
/// a body (`<Code>SignatureDoesNotMatch</Code>`), the status alone for HEAD.
fn refusal(status: StatusCode, body: &str) -> String {
    let field = |name: &str| {
        let open = format!("<{name}>");
        let start = body.find(&open)? + open.len();
        let end = body[start..].find("</")? + start;
        Some(body[start..end].to_owned())
    };
    match (field("Code"), field("Message")) {
        (Some(code), Some(message)) => format!("{status}: {code}: {message}"),
        (Some(code), None) => format!("{status}: {code}"),
        _ => format!("{status} (check the access key, the secret and the bucket's grants)"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn listed_uploads_and_the_next_page() {
        let xml = "<ListMultipartUploadsResult><Bucket>b</Bucket><IsTruncated>true</IsTruncated>\
            <NextKeyMarker>blobs/b</NextKeyMarker><NextUploadIdMarker>u2</NextUploadIdMarker>\
            <Upload><Key>blobs/a</Key><UploadId>u1</UploadId><Initiated>2026-12-05T10:00:00.000Z</Initiated></Upload>\
            <Upload><Key>blobs/b</Key><UploadId>u2</UploadId><Initiated>2026-12-05T10:00:01Z</Initiated></Upload>\
            </ListMultipartUploadsResult>";
        let page = super::ListedUploads::parse(xml);
        assert_eq!(page.uploads.len(), 2);
        assert_eq!(
            page.uploads[0],
            ("blobs/a".into(), "u1".into(), 1_796_464_800)
        );
        assert_eq!(page.next, Some(("blobs/b".into(), "u2".into())));
        let last = super::ListedUploads::parse("<IsTruncated>false</IsTruncated>");
        assert!(last.uploads.is_empty() && last.next.is_none());
    }

    #[test]
    fn backoff_stays_under_its_bound_and_only_transient_answers_retry() {
        for attempt in 0..10 {
            assert!(super::backoff(attempt) <= super::BACKOFF_CAP);
        }
        assert!(super::backoff(0) <= super::BACKOFF_BASE);
        for (code, retried) in [
            (503, true),
            (500, true),
            (429, true),
            (404, false),
            (403, false),
        ] {
            let status = http::StatusCode::from_u16(code).unwrap();
            assert_eq!(super::transient(status), retried, "{code}");
        }
    }
}
