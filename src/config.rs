//! The one typed configuration: defaults, then the TOML file, then flags.
//!
//! Owns: every setting and its validation at start-up.
//! Must not: be read from global state after start-up; components get the
//! parts they need passed in.

use serde::Deserialize;
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
        source: toml::de::Error,
    },
    #[error("invalid setting: {0}")]
    Invalid(String),
}

/// All settings. Every field has a default, so an empty file is valid.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on (HTTP/1.1 and cleartext HTTP/2).
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
    /// Run garbage collection this often while serving (0: never; it can
    /// still be run with `wharf gc`).
    pub gc_interval_secs: u64,
    /// Garbage collection spares anything pushed, linked or committed more
    /// recently than this. Keep it well above the longest build push.
    pub gc_grace_secs: u64,
    /// Garbage collection also removes manifests no tag reaches.
    pub gc_delete_untagged: bool,
}

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
            gc_interval_secs: 0,
            gc_grace_secs: 3600,
            gc_delete_untagged: false,
        }
    }
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
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
        Ok(())
    }

    pub fn upload_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.upload_idle_timeout_secs)
    }

    pub fn gc_options(&self, dry_run: bool) -> crate::gc::GcOptions {
        crate::gc::GcOptions {
            grace: Duration::from_secs(self.gc_grace_secs),
            delete_untagged: self.gc_delete_untagged,
            dry_run,
        }
    }

    pub fn actor_call_timeout(&self) -> Duration {
        Duration::from_secs(self.actor_call_timeout_secs)
    }
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
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Config>("adr = \"1.2.3.4:5\"").is_err());
    }

    #[test]
    fn zero_values_are_refused() {
        let c: Config = toml::from_str("store_shards = 0").unwrap();
        assert!(c.validate().is_err());
    }
}
