//! The whole configuration checked: `compile` (what start-up refuses:
//! `Config::validate`'s plain checks, then each section compiled by the
//! module it configures), and for `wharf config check` everything else
//! start-up would refuse, found without starting, and the effective
//! configuration with its secrets hidden.
//!
//! Owns: which module checks which section, the checks of what the
//! configuration names (files, addresses, the TLS pair) and the redacted
//! rendering.
//! Must not: bind or write anything; it runs beside a live registry, on an
//! operator's laptop, in a container's entrypoint. Only `connect` (asked
//! for with `--connect`) reaches the services, and only reads.

use crate::config::{Config, ConfigError, StorageBackend};
use crate::s3::S3Settings;

/// What start-up refuses: the plain checks, then each section compiled by
/// its own module (so `config` never reaches up to what it configures).
pub fn compile(cfg: &Config) -> Result<(), ConfigError> {
    cfg.validate()?;
    if let (StorageBackend::S3, Some(s3)) = (cfg.storage.backend, &cfg.storage.s3) {
        S3Settings::from_config(s3)?;
    }
    crate::retention::Policies::new(&cfg.retention, &cfg.immutable)?;
    crate::proxy::Proxies::check(&cfg.proxy).map_err(ConfigError::Invalid)?;
    crate::notify::Notifier::check(&cfg.notifications).map_err(ConfigError::Invalid)?;
    crate::meta::quota::Quotas::check(&cfg.quota).map_err(ConfigError::Invalid)?;
    Ok(())
}

/// What is wrong with `cfg`, one line each; empty means it would start.
pub fn problems(cfg: &Config) -> Vec<String> {
    let mut found = Vec::new();
    if let Err(e) = compile(cfg) {
        found.push(e.to_string());
    }
    if let Err(e) = crate::auth::Authenticator::new(&cfg.auth) {
        found.push(format!("auth: {e}"));
    }
    if let Some(tls) = &cfg.tls {
        if let Err(e) = crate::tls::CertResolver::load(&tls.cert, &tls.key) {
            found.push(format!("tls: {e}"));
        }
    }
    if cfg.metrics.addr == Some(cfg.addr) {
        found.push(format!(
            "metrics.addr {} is the registry's addr: give the metrics listener its own",
            cfg.addr
        ));
    }
    if cfg.root.exists() && !cfg.root.is_dir() {
        found.push(format!("root {}: not a directory", cfg.root.display()));
    }
    if let Some(url) = &cfg.metadata.url {
        // As the pool reads it: libpq's TLS keys too, and the certificate
        // files they name opened.
        let timeout = std::time::Duration::from_secs(cfg.metadata.timeout_secs);
        if let Err(e) = crate::meta::PostgresBackend::check_url(url, timeout) {
            found.push(e.to_string());
        }
    }
    if let (Some(s3), StorageBackend::S3) = (&cfg.storage.s3, cfg.storage.backend) {
        // Builds the client (endpoint, bucket, trusted roots) without
        // sending a request.
        match S3Settings::from_config(s3) {
            Ok(settings) => {
                if let Err(e) = crate::s3::S3Client::new(&settings) {
                    found.push(e.to_string());
                }
            }
            Err(e) => found.push(e.to_string()),
        }
    }
    for p in &cfg.proxy {
        // Reads ca_file and builds the client, sending nothing.
        if let Err(e) = crate::proxy::upstream::Upstream::new(p) {
            found.push(e);
        }
    }
    found
}

/// The configuration as TOML, secrets replaced by `<redacted>`.
pub fn redacted(cfg: &Config) -> String {
    let mut shown = cfg.clone();
    const HIDDEN: &str = "<redacted>";
    if let Some(s3) = &mut shown.storage.s3 {
        if s3.secret_access_key.is_some() {
            s3.secret_access_key = Some(HIDDEN.into());
        }
    }
    if let Some(url) = &mut shown.metadata.url {
        *url = without_password(url);
    }
    for p in &mut shown.proxy {
        if p.password.is_some() {
            p.password = Some(HIDDEN.into());
        }
    }
    toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}

/// A PostgreSQL URL or key=value string with its password hidden.
fn without_password(url: &str) -> String {
    if let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    {
        let scheme = &url[..url.len() - rest.len()];
        if let Some((userinfo, host)) = rest.split_once('@') {
            if let Some((user, _)) = userinfo.split_once(':') {
                return format!("{scheme}{user}:<redacted>@{host}");
            }
        }
        return url.to_owned();
    }
    url.split_whitespace()
        .map(|kv| match kv.split_once('=') {
            Some(("password", _)) => "password=<redacted>".to_owned(),
            _ => kv.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What the configuration will do where that is not plain from its text
/// (the PostgreSQL hosts, TLS checks and deadlines the URL amounts to).
pub fn settings(cfg: &Config) -> Vec<String> {
    let mut said = Vec::new();
    if let (crate::config::MetadataBackend::Postgres, Some(url)) =
        (cfg.metadata.backend, cfg.metadata.url.as_deref())
    {
        let timeout = std::time::Duration::from_secs(cfg.metadata.timeout_secs);
        if let Ok(s) = crate::meta::PostgresBackend::check_url(url, timeout) {
            said.push(format!("PostgreSQL (metadata.url): {s}"));
        }
    }
    if let (StorageBackend::S3, Some(s3)) = (cfg.storage.backend, &cfg.storage.s3) {
        if let Ok(settings) = S3Settings::from_config(s3) {
            said.push(format!(
                "S3 credentials: {}",
                settings.credentials.describe()
            ));
        }
    }
    said
}

/// One service a configuration names, tried: what it is, and what it
/// answered (Ok: a sentence of what was seen; Err: the refusal).
pub struct Reached {
    pub service: String,
    pub answer: Result<String, String>,
}

/// Logs in to what the configuration names (`wharf config check
/// --connect`): PostgreSQL (and where its schema stands against this
/// binary), the bucket. Changes nothing: no migration, no bucket created.
pub async fn connect(cfg: &Config) -> Vec<Reached> {
    let mut found = Vec::new();
    if let (crate::config::MetadataBackend::Postgres, Some(url)) =
        (cfg.metadata.backend, cfg.metadata.url.clone())
    {
        let timeout = std::time::Duration::from_secs(cfg.metadata.timeout_secs);
        let inspected =
            crate::blocking::run(move || crate::meta::PostgresBackend::inspect(&url, timeout))
                .await;
        let answer = match inspected {
            Ok(s) if s.version > s.latest => Err(format!(
                "schema at version {}, newer than this binary's {}: upgrade wharf",
                s.version, s.latest
            )),
            Ok(s) if s.version < s.latest => Ok(format!(
                "logged in; schema at version {} of {} (`wharf migrate` or the first node's start applies the rest)",
                s.version, s.latest
            )),
            Ok(s) => Ok(format!("logged in; schema at version {} (current)", s.version)),
            Err(e) => Err(e.to_string()),
        };
        found.push(Reached {
            service: "PostgreSQL (metadata.url)".into(),
            answer,
        });
    }
    if let (StorageBackend::S3, Some(s3)) = (cfg.storage.backend, &cfg.storage.s3) {
        let service = format!("bucket {:?} at {}", s3.bucket, s3.endpoint);
        let answer = match S3Settings::from_config(s3)
            .map_err(|e| e.to_string())
            .and_then(|s| crate::s3::S3Client::new(&s).map_err(|e| e.to_string()))
        {
            Ok(client) => match client.check_bucket().await {
                Ok(()) => Ok("reachable; credentials accepted; bucket lists".into()),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e),
        };
        found.push(Reached { service, answer });
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            without_password("postgres://wharf:s3cret@db:5432/w"),
            "postgres://wharf:<redacted>@db:5432/w"
        );
        assert_eq!(
            without_password("host=db user=wharf password=s3cret"),
            "host=db user=wharf password=<redacted>"
        );
        let mut cfg = Config::default();
        cfg.metadata.url = Some("postgresql://u:hunter2@h/d".into());
        cfg.storage.s3 = toml::from_str(
            "endpoint = \"http://s3\"\nbucket = \"b\"\nsecret_access_key = \"hunter2\"",
        )
        .ok();
        let text = redacted(&cfg);
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            text.contains("<redacted>") && text.contains("bucket = \"b\""),
            "{text}"
        );
        // What is printed is itself a valid configuration file.
        toml::from_str::<Config>(&text).unwrap();
    }

    #[test]
    fn the_postgres_settings_are_said_without_the_password() {
        let mut cfg = Config::default();
        cfg.metadata.backend = crate::config::MetadataBackend::Postgres;
        cfg.metadata.url = Some(
            "postgres://wharf:hunter2@db1:5432,db2:5433/w?target_session_attrs=read-write&sslmode=require"
                .into(),
        );
        let said = settings(&cfg).join("\n");
        assert!(
            said.contains("db1:5432, db2:5433 (target_session_attrs=read-write"),
            "{said}"
        );
        assert!(
            said.contains("TLS required, the certificate not checked"),
            "{said}"
        );
        assert!(said.contains("bounded by 10 s"), "{said}");
        assert!(!said.contains("hunter2"), "{said}");
    }

    #[test]
    fn missing_files_and_clashing_listeners_are_found() {
        let mut cfg = Config::default();
        cfg.auth.htpasswd = Some("/nonexistent/htpasswd".into());
        cfg.metrics.addr = Some(cfg.addr);
        let found = problems(&cfg).join("\n");
        assert!(found.contains("/nonexistent/htpasswd"), "{found}");
        assert!(found.contains("metrics.addr"), "{found}");
        assert!(problems(&Config::default()).is_empty());
    }
}
