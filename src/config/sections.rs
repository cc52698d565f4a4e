//! The configuration's sections: one plain struct per `[section]` (or
//! `[[array]]`) of the file, with its defaults. Data only: each module that
//! a section configures checks and compiles it.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationConfig {
    pub url: String,
    /// Which of push, pull, delete.
    #[serde(default = "default_notification_events")]
    pub events: Vec<String>,
    /// Repository patterns, as in auth rules; empty: every repository.
    #[serde(default)]
    pub repositories: Vec<String>,
    /// Sent with every request (an `Authorization` the receiver expects).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Deadline for the endpoint's answer.
    #[serde(default = "default_notification_timeout_secs")]
    pub timeout_secs: u64,
    /// Events kept queued for the endpoint at most; later ones are
    /// dropped and counted while it is down.
    #[serde(default = "default_notification_max_pending")]
    pub max_pending: u64,
}

fn default_notification_events() -> Vec<String> {
    vec!["push".into(), "delete".into()]
}

fn default_notification_timeout_secs() -> u64 {
    5
}

fn default_notification_max_pending() -> u64 {
    10_000
}

/// One `[[proxy]]`: a pull-through cache of an upstream registry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Repositories under `<prefix>/` are served from the upstream.
    pub prefix: String,
    /// The upstream registry's base URL (`https://registry-1.docker.io`).
    pub upstream: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// The password read from a file (a mounted secret).
    pub password_file: Option<PathBuf>,
    /// A tag's answer is trusted this long, then re-checked with a HEAD.
    #[serde(default = "default_tag_ttl_secs")]
    pub tag_ttl_secs: u64,
    /// Extra roots for an https upstream.
    pub ca_file: Option<PathBuf>,
    /// Cached tags not pulled for this many days are retired (then GC
    /// frees their content); unset: kept until deleted.
    pub max_age_days: Option<u64>,
    /// Deadline for an upstream answer's head, and for each pause in a
    /// body.
    #[serde(default = "default_upstream_timeout_secs")]
    pub timeout_secs: u64,
}

fn default_tag_ttl_secs() -> u64 {
    300
}

fn default_upstream_timeout_secs() -> u64 {
    30
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UiConfig {
    pub enabled: bool,
}

impl Default for UiConfig {
    fn default() -> Self {
        UiConfig { enabled: true }
    }
}

/// `[audit]`: the audit log in the metadata store.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Records older than this many days are pruned (0: kept forever).
    pub audit_days: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig { audit_days: 90 }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Repository pattern, as in auth rules (`ci/**`).
    pub repositories: String,
    /// Keep the newest N tags by push time.
    pub keep_last: Option<usize>,
    /// Keep tags whose manifest was pulled within this many days.
    pub keep_pulled_within_days: Option<u64>,
    /// Keep tags matching any of these regular expressions.
    #[serde(default)]
    pub keep_tags: Vec<String>,
    /// Delete manifests no tag or index reaches once this old.
    pub delete_untagged_after_hours: Option<u64>,
    /// Only report what would be deleted.
    #[serde(default)]
    pub dry_run: bool,
}

/// One `[[quota]]`: the bytes the repositories matching `repositories`
/// may hold together.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Repository pattern (`team-a/**`); it also names the quota.
    pub repositories: String,
    /// `"500GiB"`, `"10MiB"`, `"2TB"`, or a plain number of bytes.
    pub max_bytes: ByteCount,
}

/// A size in bytes, written as a number or as `"<n><unit>"` with a binary
/// (`KiB`, `MiB`, `GiB`, `TiB`) or decimal (`KB`, `MB`, `GB`, `TB`) unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "u64")]
pub struct ByteCount(pub u64);

impl From<ByteCount> for u64 {
    fn from(b: ByteCount) -> u64 {
        b.0
    }
}

impl ByteCount {
    pub fn parse(text: &str) -> Result<ByteCount, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(t.len());
        let (number, unit) = (&t[..split], t[split..].trim());
        let scale: u64 = match unit {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            _ => {
                return Err(format!(
                    "{text:?}: the unit must be one of B, KiB, MiB, GiB, TiB, KB, MB, GB, TB"
                ))
            }
        };
        let n: f64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a size (\"500GiB\", \"10MiB\", or bytes)"))?;
        let bytes = n * scale as f64;
        if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
            return Err(format!("{text:?} is not a size of at least one byte"));
        }
        Ok(ByteCount(bytes.round() as u64))
    }
}

impl<'de> Deserialize<'de> for ByteCount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Number(u64),
            Text(String),
        }
        match Written::deserialize(d)? {
            Written::Number(0) => Err(serde::de::Error::custom("a size must be at least 1 byte")),
            Written::Number(n) => Ok(ByteCount(n)),
            Written::Text(t) => ByteCount::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImmutableConfig {
    /// Repository pattern (`release/**`).
    pub repositories: String,
    /// Regular expressions; a matching tag can be neither moved nor deleted.
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    pub s3: Option<S3Config>,
}

/// Where blob bytes live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// `<root>/blobs`, one node.
    #[default]
    Filesystem,
    /// A bucket; needs metadata.backend = "postgres" (upload sessions and
    /// the digest index live there).
    S3,
}

/// Where the metadata lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MetadataBackend {
    /// `<root>/meta.redb`, one node.
    #[default]
    Redb,
    /// Any number of nodes sharing one database.
    Postgres,
}

impl std::fmt::Display for StorageBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StorageBackend::Filesystem => "filesystem",
            StorageBackend::S3 => "s3",
        })
    }
}

impl std::fmt::Display for MetadataBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MetadataBackend::Redb => "redb",
            MetadataBackend::Postgres => "postgres",
        })
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: StorageBackend::Filesystem,
            s3: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub endpoint: String,
    pub bucket: String,
    #[serde(default = "default_region")]
    pub region: String,
    /// Falls back to AWS_ACCESS_KEY_ID.
    pub access_key_id: Option<String>,
    /// Falls back to AWS_SECRET_ACCESS_KEY.
    pub secret_access_key: Option<String>,
    /// Files holding the two keys instead (mounted secrets).
    pub access_key_id_file: Option<PathBuf>,
    pub secret_access_key_file: Option<PathBuf>,
    #[serde(default = "default_true")]
    pub path_style: bool,
    /// Answer blob GETs with a 307 to a presigned URL instead of streaming
    /// the bytes through the registry.
    #[serde(default)]
    pub redirect_reads: bool,
    /// Bound on one S3 request's answer (plus 1 s per MiB it carries).
    #[serde(default = "default_s3_timeout")]
    pub timeout_secs: u64,
    /// Objects garbage collection frees are deleted this much later, so
    /// reads that found them just before still finish.
    #[serde(default = "default_delete_delay")]
    pub delete_delay_secs: u64,
    /// This node's copies of blobs it served, in `root/cache`, so repeated
    /// pulls do not cross to the object store again; 0 turns it off.
    #[serde(default = "default_read_cache")]
    pub read_cache_mib: u64,
    /// PEM certificates to trust for an https endpoint, besides the
    /// system's (a private CA in front of MinIO or SeaweedFS). Unset,
    /// AWS_CA_BUNDLE is used as the AWS tools do, for https only.
    pub ca_file: Option<PathBuf>,
}

fn default_read_cache() -> u64 {
    4096
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_true() -> bool {
    true
}

fn default_s3_timeout() -> u64 {
    30
}

fn default_delete_delay() -> u64 {
    600
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetadataConfig {
    pub backend: MetadataBackend,
    /// libpq-style URL or key=value string, for "postgres"
    /// (`postgres://user:pass@host:5432/db`).
    pub url: Option<String>,
    /// A file holding the URL instead (it carries the password).
    pub url_file: Option<PathBuf>,
    /// Connections each node keeps to PostgreSQL.
    pub pool_size: u32,
    /// Bound on connecting, waiting for a pooled connection, and on any one
    /// statement: an unreachable database answers 503, never a hang.
    pub timeout_secs: u64,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        MetadataConfig {
            backend: MetadataBackend::Redb,
            url: None,
            url_file: None,
            pool_size: 16,
            timeout_secs: 10,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Apache htpasswd file with bcrypt entries (`htpasswd -B`): HTTP Basic.
    pub htpasswd: Option<PathBuf>,
    /// Docker token protocol: JWT bearer tokens from an external issuer.
    pub token: Option<TokenConfig>,
    /// Per-repository grants. With none, every authenticated user may do
    /// everything (as in distribution); with any, only what they grant.
    pub rules: Vec<RuleConfig>,
    /// Basic-auth users allowed to run garbage collection over HTTP.
    pub admins: Vec<String>,
    /// CI jobs logging in with their OIDC token as the password.
    pub oidc: Vec<OidcConfig>,
}

/// One OIDC issuer whose tokens are passwords (`[[auth.oidc]]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The tokens' `iss`, exactly.
    pub issuer: String,
    /// Must be in the tokens' `aud`.
    pub audience: String,
    /// Where the signing keys are; default: the issuer's discovery
    /// document's `jwks_uri`.
    pub jwks_url: Option<String>,
    /// Extra roots for the issuer's https.
    pub ca_file: Option<PathBuf>,
    /// The user name a token becomes; `{claim}` is the token's claim.
    pub user: String,
    /// How long a login lasts after the token's `iat`, even past its `exp`.
    #[serde(default = "default_oidc_session_secs")]
    pub session_secs: u64,
    /// Claims that must match these globs (`*` matches any run).
    #[serde(default)]
    pub require: std::collections::BTreeMap<String, String>,
    /// What such a user may do; `{claim}` substituted.
    #[serde(default)]
    pub grants: Vec<OidcGrant>,
}

fn default_oidc_session_secs() -> u64 {
    3600
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OidcGrant {
    /// Repository pattern, as in `[[auth.rules]]`, with `{claim}`s.
    pub repository: String,
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Where clients fetch tokens (the challenge's realm).
    pub realm: String,
    /// Name of this registry at the issuer: the challenge's service and
    /// the token's required audience.
    pub service: String,
    /// Required `iss` claim.
    pub issuer: String,
    /// PEM public key ("BEGIN PUBLIC KEY", RSA or EC P-256) that signs
    /// tokens, or the issuer's certificate.
    pub public_key: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Repository pattern: `*` matches within one path component, `**`
    /// across components (`team/**`, `*/base`, `**`).
    pub repository: String,
    /// User names; `"*"` is any authenticated user, `"anonymous"` is a
    /// request without credentials.
    pub users: Vec<String>,
    /// Any of "pull", "push", "delete".
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// How often the files are checked for changes (SIGHUP reloads at once).
    #[serde(default = "default_reload_secs")]
    pub reload_check_secs: u64,
}

fn default_reload_secs() -> u64 {
    10
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `/metrics`, `/healthz` and `/readyz` are served here, never on the
    /// registry address. Absent: no metrics listener.
    #[serde(deserialize_with = "listen_addr_opt")]
    pub addr: Option<SocketAddr>,
}

/// The one sentence for a listen address that is not IP:PORT (a host name
/// such as `localhost:5000` is the usual slip).
pub fn listen_addr_error(text: &str) -> String {
    format!(
        "{text:?} is not IP:PORT: give an address such as 127.0.0.1:5000 or 0.0.0.0:5000 \
         (host names are not resolved)"
    )
}

pub(crate) fn listen_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse()
        .map_err(|_| serde::de::Error::custom(listen_addr_error(&text)))
}

fn listen_addr_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    listen_addr(d).map(Some)
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// "text" or "json".
    pub format: String,
    /// Filter in tracing's syntax ("info", "wharf=debug"); WHARF_LOG wins.
    pub level: String,
    /// One line per request (target `wharf::access`).
    pub access: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "text".into(),
            level: "info".into(),
            access: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Request line plus headers, per request (431 beyond it).
    pub max_header_bytes: usize,
    /// A client must finish sending a request's headers within this.
    pub header_timeout_secs: u64,
    /// A request body that sends nothing for this long is cut off.
    pub body_idle_timeout_secs: u64,
    /// A connection with no request in flight is closed after this.
    pub idle_connection_secs: u64,
    /// Upload sessions open at once, across all clients (429 beyond it).
    pub max_upload_sessions: usize,
    /// Largest blob accepted (0: no limit).
    pub max_blob_bytes: u64,
    /// Requests per second each client address may make, sustained
    /// (0: no rate limit). Build farms behind one NAT share one address.
    pub rate_limit_per_sec: u32,
    /// Requests a client may make in a burst above the sustained rate.
    pub rate_limit_burst: u32,
    /// Concurrent connections per client address (0: no limit).
    pub max_connections_per_client: usize,
}

impl LimitsConfig {
    /// The most an HTTP/1 connection reads from its socket at once: a body
    /// frame is never larger than this. A connection waiting for the
    /// upload memory budget holds one frame outside it, so this is what
    /// each connection of a crowd costs beyond the budget.
    pub fn read_buffer_bytes(&self) -> usize {
        (64 * 1024).max(self.max_header_bytes)
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_header_bytes: 64 * 1024,
            header_timeout_secs: 30,
            body_idle_timeout_secs: 60,
            idle_connection_secs: 300,
            max_upload_sessions: 10_000,
            max_blob_bytes: 0,
            rate_limit_per_sec: 0,
            rate_limit_burst: 200,
            max_connections_per_client: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ByteCount;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(ByteCount::parse("500GiB"), Ok(ByteCount(500 << 30)));
        assert_eq!(ByteCount::parse("10MiB"), Ok(ByteCount(10 << 20)));
        assert_eq!(ByteCount::parse("1.5 KiB"), Ok(ByteCount(1536)));
        assert_eq!(ByteCount::parse("2TB"), Ok(ByteCount(2_000_000_000_000)));
        assert_eq!(ByteCount::parse("4096"), Ok(ByteCount(4096)));
        for bad in ["", "10 MB/s", "ten", "0", "-5MiB", "1e999GiB", "5mb"] {
            assert!(ByteCount::parse(bad).is_err(), "{bad}");
        }
        #[derive(serde::Deserialize)]
        struct Q {
            max_bytes: ByteCount,
        }
        let q: Q = toml::from_str("max_bytes = 1048576").unwrap();
        assert_eq!(q.max_bytes, ByteCount(1 << 20));
        let q: Q = toml::from_str("max_bytes = \"3GiB\"").unwrap();
        assert_eq!(q.max_bytes, ByteCount(3 << 30));
        let e = toml::from_str::<Q>("max_bytes = \"3 parsecs\"")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("unit"), "{e}");
    }
}
