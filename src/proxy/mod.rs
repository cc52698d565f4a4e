//! Pull-through caches (`[[proxy]]`): repositories under a prefix are
//! copies of an upstream registry's, filled when clients ask.
//!
//! Owns: the compiled `[[proxy]]` list and which repository belongs to
//! which upstream (`Proxies::route`), when each cached tag was last
//! confirmed upstream, manifest refreshes (`manifest`), and blob fetches
//! that many clients share (`fetch`).
//! Must not: serve HTTP (the handlers ask it, then answer), or write what
//! it has not verified: a manifest is stored only when its bytes hash to
//! the digest asked for (or the upstream named), a blob only through an
//! upload session's commit, which checks the digest.

pub mod challenge;
pub mod fetch;
pub mod manifest;
pub mod upstream;

use crate::config::{ProxyConfig, RetentionConfig};
use crate::meta::MetaError;
use crate::oci::RepoName;
use crate::storage::StorageError;
use dashmap::DashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use upstream::{Upstream, UpstreamError};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// One `[[proxy]]`.
pub struct Proxy {
    pub prefix: String,
    pub upstream_url: String,
    pub upstream: Upstream,
    tag_ttl: Duration,
    /// Docker Hub keeps official images under `library/`, which clients
    /// add for `docker.io/alpine`: `hub/alpine` means `library/alpine`.
    docker_hub: bool,
}

/// A repository served from an upstream: which `[[proxy]]`, and the
/// repository's name there.
#[derive(Clone)]
pub struct Route {
    pub proxy: Arc<Proxy>,
    pub upstream_name: String,
}

/// Every `[[proxy]]` of the configuration, and what they share.
pub struct Proxies {
    list: Vec<Arc<Proxy>>,
    /// (repository, tag) -> when the upstream last confirmed the cached
    /// answer. In memory: after a restart, each tag is re-checked once.
    confirmed: DashMap<(String, String), Instant>,
    gates: manifest::Gates,
    pub fetches: fetch::Fetches,
}

impl Proxies {
    /// The configuration's rules for `[[proxy]]`, checked without I/O.
    pub fn check(cfgs: &[ProxyConfig]) -> Result<(), String> {
        for (i, p) in cfgs.iter().enumerate() {
            let at = format!("proxy[{i}] (prefix {:?})", p.prefix);
            // "" proxies every repository no other prefix claims: the form
            // dockerd's `registry-mirrors` needs (it allows no path).
            if !p.prefix.is_empty() {
                RepoName::parse(&p.prefix).map_err(|e| format!("{at}: prefix: {e}"))?;
            }
            let url: url::Url = p
                .upstream
                .parse()
                .map_err(|e| format!("{at}: upstream {:?}: {e}", p.upstream))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(format!(
                    "{at}: upstream must be an http:// or https:// URL with a host"
                ));
            }
            if p.password.is_some() && p.username.is_none() {
                return Err(format!("{at}: a password needs a username"));
            }
            if p.timeout_secs == 0 {
                return Err(format!("{at}: timeout_secs must be > 0"));
            }
            if p.max_age_days == Some(0) {
                return Err(format!("{at}: max_age_days must be > 0 (or unset)"));
            }
            for other in &cfgs[..i] {
                let both_empty = p.prefix.is_empty() && other.prefix.is_empty();
                if both_empty
                    || nested(&p.prefix, &other.prefix)
                    || nested(&other.prefix, &p.prefix)
                {
                    return Err(format!(
                        "{at}: overlaps the prefix {:?} of another [[proxy]]",
                        other.prefix
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn new(cfgs: &[ProxyConfig], root: &std::path::Path) -> Result<Proxies, String> {
        Self::check(cfgs)?;
        let mut list = Vec::new();
        for p in cfgs {
            let host = p
                .upstream
                .parse::<url::Url>()
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_default();
            list.push(Arc::new(Proxy {
                prefix: p.prefix.clone(),
                upstream_url: p.upstream.trim_end_matches('/').to_owned(),
                upstream: Upstream::new(p)?,
                tag_ttl: Duration::from_secs(p.tag_ttl_secs),
                docker_hub: matches!(host.as_str(), "registry-1.docker.io" | "docker.io"),
            }));
        }
        Ok(Proxies {
            list,
            confirmed: DashMap::new(),
            gates: manifest::Gates::default(),
            fetches: fetch::Fetches::new(root.join("proxy")),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The upstream serving `name`, if it is under a prefix.
    pub fn route(&self, name: &RepoName) -> Option<Route> {
        let name = name.as_str();
        let prefixed = self.list.iter().filter(|m| !m.prefix.is_empty());
        let everything = self.list.iter().filter(|m| m.prefix.is_empty());
        prefixed.chain(everything).find_map(|m| {
            let rest = match m.prefix.as_str() {
                "" => name,
                p => name.strip_prefix(p)?.strip_prefix('/')?,
            };
            let upstream_name = match (m.docker_hub, rest.contains('/')) {
                (true, false) => format!("library/{rest}"),
                _ => rest.to_owned(),
            };
            Some(Route {
                proxy: m.clone(),
                upstream_name,
            })
        })
    }

    /// Whether the upstream confirmed `repo:tag` within the tag TTL.
    fn recently_confirmed(&self, route: &Route, repo: &RepoName, tag: &str) -> bool {
        self.confirmed
            .get(&(repo.to_string(), tag.to_owned()))
            .is_some_and(|at| at.elapsed() < route.proxy.tag_ttl)
    }

    fn confirm(&self, repo: &RepoName, tag: &str) {
        self.confirmed
            .insert((repo.to_string(), tag.to_owned()), Instant::now());
    }

    /// Stops blob fetches in flight (their sessions are abandoned).
    pub async fn stop(&self) {
        self.fetches.stop().await;
    }
}

/// The retention rules `max_age_days` stands for: a cached tag not pulled
/// within that many days goes, and the manifests it leaves untagged a day
/// later; garbage collection then frees their blobs. They come before the
/// configured `[[retention]]` (a repository follows the first match).
pub fn retention_rules(cfgs: &[ProxyConfig]) -> Vec<RetentionConfig> {
    cfgs.iter()
        .filter_map(|p| {
            let days = p.max_age_days?;
            Some(RetentionConfig {
                repositories: match p.prefix.as_str() {
                    "" => "**".to_owned(),
                    prefix => format!("{prefix}/**"),
                },
                keep_last: None,
                keep_pulled_within_days: Some(days),
                keep_tags: Vec::new(),
                delete_untagged_after_hours: Some(24),
                dry_run: false,
            })
        })
        .collect()
}

/// Whether `inner` is `outer` or below it.
fn nested(inner: &str, outer: &str) -> bool {
    !inner.is_empty() && !outer.is_empty() && inner == outer
        || inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(prefix: &str, upstream: &str) -> ProxyConfig {
        ProxyConfig {
            prefix: prefix.into(),
            upstream: upstream.into(),
            username: None,
            password: None,
            password_file: None,
            tag_ttl_secs: 300,
            ca_file: None,
            max_age_days: None,
            timeout_secs: 30,
        }
    }

    #[test]
    fn routes_by_prefix() {
        let dir = std::path::Path::new("/nonexistent");
        let m = Proxies::new(
            &[
                cfg("hub", "https://registry-1.docker.io"),
                cfg("proxies/quay", "https://quay.io"),
            ],
            dir,
        )
        .unwrap();
        let route = |n: &str| {
            m.route(&RepoName::parse(n).unwrap())
                .map(|r| (r.proxy.prefix.clone(), r.upstream_name))
        };
        assert_eq!(
            route("hub/alpine"),
            Some(("hub".into(), "library/alpine".into()))
        );
        assert_eq!(
            route("hub/grafana/loki"),
            Some(("hub".into(), "grafana/loki".into()))
        );
        assert_eq!(
            route("proxies/quay/prometheus/node-exporter"),
            Some(("proxies/quay".into(), "prometheus/node-exporter".into()))
        );
        assert_eq!(route("proxies/quayx/a"), None);
        assert_eq!(route("hubble/a"), None);
        assert_eq!(route("hub"), None);
        assert_eq!(route("team/app"), None);
        let everything = Proxies::new(
            &[
                cfg("", "https://registry-1.docker.io"),
                cfg("q", "https://quay.io"),
            ],
            dir,
        )
        .unwrap();
        let route = |n: &str| {
            everything
                .route(&RepoName::parse(n).unwrap())
                .map(|r| (r.proxy.prefix.clone(), r.upstream_name))
        };
        assert_eq!(route("alpine"), Some(("".into(), "library/alpine".into())));
        assert_eq!(route("q/x/y"), Some(("q".into(), "x/y".into())));
        assert_eq!(
            route("grafana/loki"),
            Some(("".into(), "grafana/loki".into()))
        );
    }

    #[test]
    fn refuses_what_cannot_work() {
        let bad = [
            vec![cfg("Hub", "https://x")],
            vec![cfg("hub", "ftp://x")],
            vec![cfg("hub", "not a url")],
            vec![cfg("hub", "https://a"), cfg("hub/b", "https://b")],
            vec![cfg("a/b", "https://a"), cfg("a", "https://b")],
            vec![cfg("", "https://a"), cfg("", "https://b")],
            vec![ProxyConfig {
                password: Some("p".into()),
                ..cfg("hub", "https://x")
            }],
        ];
        for b in bad {
            assert!(Proxies::check(&b).is_err(), "{:?}", b[b.len() - 1]);
        }
        assert!(Proxies::check(&[cfg("a", "http://a:5000"), cfg("ab", "https://b")]).is_ok());
    }

    #[test]
    fn max_age_becomes_a_retention_rule_for_the_prefix() {
        let mut c = cfg("hub", "https://x");
        assert!(retention_rules(std::slice::from_ref(&c)).is_empty());
        c.max_age_days = Some(30);
        let rules = retention_rules(&[c]);
        assert_eq!(rules[0].repositories, "hub/**");
        assert_eq!(rules[0].keep_pulled_within_days, Some(30));
    }
}
