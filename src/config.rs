//! The one typed configuration: defaults, then the TOML file, then the
//! environment (`environment`), then flags.
//!
//! Owns: every setting, its sources and its validation at start-up.
//! Must not: be read from global state after start-up; components get the
//! parts they need passed in.

mod environment;
mod sections;

pub use sections::*;

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid setting: {0}")]
    Invalid(String),
    /// The file was fine; a variable laid over it made it invalid.
    #[error("invalid setting from the environment ({vars}): {source}")]
    Environment {
        vars: String,
        source: Box<toml::de::Error>,
    },
    #[error("cannot read {key} {path}: {source}")]
    SecretFile {
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// All settings. Every field has a default, so an empty file is valid.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on (HTTP/1.1 and cleartext HTTP/2).
    #[serde(deserialize_with = "sections::listen_addr")]
    pub addr: SocketAddr,
    /// Data folder: blobs, upload sessions and the metadata database.
    pub root: PathBuf,
    /// An upload session untouched for this long is purged with its data.
    pub upload_idle_timeout_secs: u64,
    /// How often the idle-session sweeper runs.
    pub upload_purge_interval_secs: u64,
    /// Upper bound on request-body bytes held in memory across all sessions
    /// (received, not yet written). Backpressure beyond it.
    pub upload_memory_budget_mib: u64,
    /// Body bytes gathered into one message to a session actor.
    pub upload_batch_kib: u64,
    /// Number of content-store shard actors (work on one digest is
    /// serialised on its shard).
    pub store_shards: usize,
    /// Allow DELETE of blobs and manifests (405 UNSUPPORTED when off).
    pub delete_enabled: bool,
    /// Sync data and directory entries before acknowledging a commit. Turn off
    /// only for throwaway registries (CI caches, benchmarks of the rest).
    pub fsync: bool,
    /// How long in-flight requests may run after SIGTERM/SIGINT.
    pub shutdown_grace_secs: u64,
    /// Bound on any single call to an actor (a disk that stops answering
    /// turns into a 5xx instead of a hung request).
    pub actor_call_timeout_secs: u64,
    /// Largest manifest accepted on PUT.
    pub max_manifest_bytes: usize,
    /// Space held back in the data folder (`<root>/reserve`) and handed
    /// back when the disk fills, so deletes and garbage collection can run
    /// on a full disk (0: no reserve).
    pub disk_reserve_mib: u64,
    /// Run garbage collection this often while serving (0: never; it can
    /// still be run with `wharf gc`).
    pub gc_interval_secs: u64,
    /// Garbage collection spares links and manifests younger than this
    /// (bytes nothing names go at the next run). Keep it well above the
    /// longest build push.
    pub gc_grace_secs: u64,
    /// Garbage collection also removes manifests no tag reaches.
    pub gc_delete_untagged: bool,
    /// Who may do what. Absent: no authentication, everyone may do anything.
    pub auth: AuthConfig,
    /// Serve HTTPS (HTTP/1.1 and HTTP/2 by ALPN) instead of cleartext.
    pub tls: Option<TlsConfig>,
    /// Prometheus metrics and health checks on their own address.
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub limits: LimitsConfig,
    /// Where metadata lives: the embedded redb file (default) or PostgreSQL.
    pub metadata: MetadataConfig,
    /// Where blob bytes live: the data folder (default) or an S3 bucket.
    pub storage: StorageConfig,
    /// Tag retention policies, run with garbage collection's schedule and
    /// on `POST /_wharf/retention`; a repository follows the first that
    /// matches it.
    pub retention: Vec<RetentionConfig>,
    /// Tags that can be neither moved nor deleted.
    pub immutable: Vec<ImmutableConfig>,
    /// The read-only web UI at `/ui/`.
    pub ui: UiConfig,
    /// The audit log: every change and refusal, kept `audit_days`.
    pub audit: AuditConfig,
    /// Pull-through caches: `<prefix>/<name>` is the upstream's `<name>`.
    pub proxy: Vec<ProxyConfig>,
    /// Webhooks: events POSTed in distribution's envelope.
    pub notifications: Vec<NotificationConfig>,
    /// Storage quotas: bytes the repositories of a pattern may hold.
    pub quota: Vec<QuotaConfig>,
}

/// One `[[notifications]]` endpoint.
impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 5000)),
            root: PathBuf::from("./wharf-data"),
            upload_idle_timeout_secs: 24 * 3600,
            upload_purge_interval_secs: 60,
            upload_memory_budget_mib: 32,
            upload_batch_kib: 1024,
            store_shards: 16,
            delete_enabled: true,
            fsync: true,
            shutdown_grace_secs: 30,
            actor_call_timeout_secs: 120,
            max_manifest_bytes: 4 * 1024 * 1024,
            disk_reserve_mib: 64,
            gc_interval_secs: 0,
            gc_grace_secs: 3600,
            gc_delete_untagged: false,
            auth: AuthConfig::default(),
            tls: None,
            metrics: MetricsConfig::default(),
            log: LogConfig::default(),
            limits: LimitsConfig::default(),
            metadata: MetadataConfig::default(),
            storage: StorageConfig::default(),
            retention: Vec::new(),
            immutable: Vec::new(),
            ui: UiConfig::default(),
            audit: AuditConfig::default(),
            proxy: Vec::new(),
            notifications: Vec::new(),
            quota: Vec::new(),
        }
    }
}

impl Config {
    /// Defaults, then the file (if any), then the `WHARF_*` settings among
    /// `vars` (the process's environment, in `main`), then secrets named by
    /// `*_file` keys. Flags are the caller's to apply last.
    pub fn load(
        path: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = toml::Table::new();
        if let Some(path) = path {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let parse_err = |source| ConfigError::Parse {
                path: path.to_owned(),
                source: Box::new(source),
            };
            // Parsed as a Config first so unknown keys and wrong types are
            // reported with the file's line and column.
            toml::from_str::<Config>(&text).map_err(parse_err)?;
            table = toml::from_str(&text).map_err(parse_err)?;
        }
        let applied = environment::overlay(&mut table, vars)?;
        let mut cfg = Config::deserialize(toml::Value::Table(table)).map_err(|source| {
            ConfigError::Environment {
                vars: applied.join(", "),
                source: Box::new(source),
            }
        })?;
        cfg.read_secret_files()?;
        Ok(cfg)
    }

    /// Fills each secret from its `*_file` key; setting both is an error.
    fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        fn fill(
            key: &str,
            value: &mut Option<String>,
            file: &Option<PathBuf>,
        ) -> Result<(), ConfigError> {
            let Some(path) = file else { return Ok(()) };
            if value.is_some() {
                return Err(ConfigError::Invalid(format!(
                    "set {key} or {key}_file, not both"
                )));
            }
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
                key: format!("{key}_file"),
                path: path.clone(),
                source,
            })?;
            // Mounted secrets usually end with a newline that is not theirs.
            *value = Some(text.trim_end_matches(['\n', '\r']).to_owned());
            Ok(())
        }
        fill(
            "metadata.url",
            &mut self.metadata.url,
            &self.metadata.url_file,
        )?;
        for (i, p) in self.proxy.iter_mut().enumerate() {
            fill(
                &format!("proxy[{i}].password"),
                &mut p.password,
                &p.password_file,
            )?;
        }
        if let Some(s3) = &mut self.storage.s3 {
            fill(
                "storage.s3.access_key_id",
                &mut s3.access_key_id,
                &s3.access_key_id_file,
            )?;
            fill(
                "storage.s3.secret_access_key",
                &mut s3.secret_access_key,
                &s3.secret_access_key_file,
            )?;
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("upload_idle_timeout_secs", self.upload_idle_timeout_secs),
            (
                "upload_purge_interval_secs",
                self.upload_purge_interval_secs,
            ),
            ("upload_memory_budget_mib", self.upload_memory_budget_mib),
            ("upload_batch_kib", self.upload_batch_kib),
            ("store_shards", self.store_shards as u64),
            ("actor_call_timeout_secs", self.actor_call_timeout_secs),
            (
                "limits.header_timeout_secs",
                self.limits.header_timeout_secs,
            ),
            (
                "limits.body_idle_timeout_secs",
                self.limits.body_idle_timeout_secs,
            ),
            (
                "limits.idle_connection_secs",
                self.limits.idle_connection_secs,
            ),
            (
                "limits.max_upload_sessions",
                self.limits.max_upload_sessions as u64,
            ),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be > 0")));
            }
        }
        if self.upload_batch_kib * 1024 > self.upload_memory_budget_mib * 1024 * 1024 {
            return Err(ConfigError::Invalid(
                "upload_batch_kib must fit in upload_memory_budget_mib".into(),
            ));
        }
        if self.max_manifest_bytes < 4 * 1024 * 1024 {
            return Err(ConfigError::Invalid(
                "max_manifest_bytes must be at least 4 MiB (the spec's minimum)".into(),
            ));
        }
        if self.limits.max_header_bytes < 8192 {
            return Err(ConfigError::Invalid(
                "limits.max_header_bytes must be at least 8192".into(),
            ));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(ConfigError::Invalid(
                "log.format must be \"text\" or \"json\"".into(),
            ));
        }
        if self.limits.rate_limit_per_sec > 0 && self.limits.rate_limit_burst == 0 {
            return Err(ConfigError::Invalid(
                "limits.rate_limit_burst must be > 0 with a rate limit".into(),
            ));
        }
        for r in &self.auth.rules {
            for a in &r.actions {
                if !matches!(a.as_str(), "pull" | "push" | "delete") {
                    return Err(ConfigError::Invalid(format!(
                        "auth.rules: unknown action {a:?} (pull, push, delete)"
                    )));
                }
            }
        }
        if self.metadata.backend == MetadataBackend::Postgres {
            if self.metadata.url.is_none() {
                return Err(ConfigError::Invalid(
                    "metadata.url is required with metadata.backend = \"postgres\"".into(),
                ));
            }
            if self.metadata.pool_size == 0 || self.metadata.timeout_secs == 0 {
                return Err(ConfigError::Invalid(
                    "metadata.pool_size and metadata.timeout_secs must be > 0".into(),
                ));
            }
        }
        if self.storage.backend == StorageBackend::S3 {
            if self.storage.s3.is_none() {
                return Err(ConfigError::Invalid(
                    "storage.backend = \"s3\" needs a [storage.s3] section".into(),
                ));
            }
            if self.metadata.backend != MetadataBackend::Postgres {
                return Err(ConfigError::Invalid(
                    "storage.backend = \"s3\" needs metadata.backend = \"postgres\" \
                     (upload sessions and the digest index live there)"
                        .into(),
                ));
            }
        }
        if !self.auth.rules.is_empty() && !self.auth_enabled() {
            return Err(ConfigError::Invalid(
                "auth.rules need auth.htpasswd or auth.token".into(),
            ));
        }
        Ok(())
    }

    /// Whether requests must identify themselves at all.
    pub fn auth_enabled(&self) -> bool {
        self.auth.htpasswd.is_some() || self.auth.token.is_some()
    }

    pub fn upload_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.upload_idle_timeout_secs)
    }

    pub fn actor_call_timeout(&self) -> Duration {
        Duration::from_secs(self.actor_call_timeout_secs)
    }
}

/// The example file with its commented-out sections (`#~ `) switched on:
/// every key with a value, so the source of each key's type.
pub(crate) fn documented_example() -> String {
    include_str!("../wharf.example.toml")
        .lines()
        .map(|l| l.strip_prefix("#~ ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_defaults() {
        let c: Config = toml::from_str("").unwrap();
        assert_eq!(c.addr.port(), 5000);
        c.validate().unwrap();
    }

    #[test]
    fn example_file_runs_as_it_is() {
        let c: Config = toml::from_str(include_str!("../wharf.example.toml")).unwrap();
        c.validate().unwrap();
        assert!(c.auth.htpasswd.is_none() && c.tls.is_none() && c.proxy.is_empty());
    }

    #[test]
    fn example_file_parses_and_documents_every_key() {
        let text = &documented_example();
        let c: Config = toml::from_str(text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.auth.rules.len(), 3);
        assert!(c.tls.is_some() && c.auth.token.is_some() && c.metrics.addr.is_some());
        // Every default-valued top-level key is in the file.
        let defaults = toml::to_string(&DefaultsView::from(&Config::default())).unwrap();
        for line in defaults.lines() {
            let key = line.split(" = ").next().unwrap();
            assert!(
                text.contains(&format!("\n{key} = ")),
                "{key} missing from the example"
            );
        }
    }

    /// The flat settings, for the example-file check.
    #[derive(serde::Serialize)]
    struct DefaultsView {
        upload_idle_timeout_secs: u64,
        upload_purge_interval_secs: u64,
        upload_memory_budget_mib: u64,
        upload_batch_kib: u64,
        store_shards: usize,
        delete_enabled: bool,
        fsync: bool,
        shutdown_grace_secs: u64,
        actor_call_timeout_secs: u64,
        max_manifest_bytes: usize,
        disk_reserve_mib: u64,
        gc_interval_secs: u64,
        gc_grace_secs: u64,
        gc_delete_untagged: bool,
    }

    impl From<&Config> for DefaultsView {
        fn from(c: &Config) -> Self {
            DefaultsView {
                upload_idle_timeout_secs: c.upload_idle_timeout_secs,
                upload_purge_interval_secs: c.upload_purge_interval_secs,
                upload_memory_budget_mib: c.upload_memory_budget_mib,
                upload_batch_kib: c.upload_batch_kib,
                store_shards: c.store_shards,
                delete_enabled: c.delete_enabled,
                fsync: c.fsync,
                shutdown_grace_secs: c.shutdown_grace_secs,
                actor_call_timeout_secs: c.actor_call_timeout_secs,
                max_manifest_bytes: c.max_manifest_bytes,
                disk_reserve_mib: c.disk_reserve_mib,
                gc_interval_secs: c.gc_interval_secs,
                gc_grace_secs: c.gc_grace_secs,
                gc_delete_untagged: c.gc_delete_untagged,
            }
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Config>("adr = \"1.2.3.4:5\"").is_err());
    }

    #[test]
    fn zero_values_are_refused() {
        let c: Config = toml::from_str("store_shards = 0").unwrap();
        assert!(c.validate().is_err());
    }
}
