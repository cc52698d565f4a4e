//! Manifests of a pull-through cache: before a manifest read is served
//! from the repository, `refresh` makes the repository's answer current.
//!
//! - By digest: a manifest already cached is served as is (its bytes
//!   cannot change); otherwise it is fetched by that digest.
//! - By tag: a tag the upstream confirmed within `tag_ttl_secs` is served
//!   as is; otherwise the upstream is asked with a HEAD. The same digest
//!   only renews the confirmation; another one is fetched by digest (so a
//!   tag moving again between the HEAD and the GET cannot mix answers)
//!   and the tag moves to it. If the upstream is down or refuses (5xx,
//!   429, 401, a bad answer), a cached tag is served stale.
//!
//! The bytes are stored exactly as the upstream sent them, and only when
//! they hash to the digest asked for or announced. Concurrent refreshes
//! of one reference wait for the first (`Gates`), then find its result.

use super::upstream::UpstreamError;
use super::{Proxies, ProxyError, Route};
use crate::meta::{ManifestRecord, Meta, MetaWrite};
use crate::metrics::Metrics;
use crate::oci::manifest;
use crate::oci::{Digest, Reference, RepoName};
use crate::storage::BlobStorage;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use http::Method;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Every manifest type Wharf stores, in the order it prefers them.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// What a refresh found.
pub enum Freshness {
    /// The repository's answer is current (`fetched`: it was just
    /// fetched, a miss; else a hit).
    Current { fetched: bool },
    /// The upstream could not confirm it; the cached answer stands in.
    Stale(String),
}

/// What a refresh works with.
pub struct Context<'a> {
    pub proxies: &'a Proxies,
    pub storage: &'a Arc<dyn BlobStorage>,
    pub meta: &'a Meta,
    pub metrics: &'a Metrics,
    pub max_manifest_bytes: usize,
}

/// References being refreshed, so concurrent misses make one upstream
/// call: the first caller holds the gate, the others wait for it to open
/// and then look again (finding what the first stored).
#[derive(Default)]
pub struct Gates {
    open: DashMap<String, watch::Receiver<()>>,
}

/// Held while refreshing; opens the gate when dropped, even if the
/// refresh is abandoned (its client went away).
struct Held<'a> {
    gates: &'a Gates,
    key: String,
    _open_on_drop: watch::Sender<()>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.gates.open.remove(&self.key);
    }
}

impl Gates {
    /// Holds the gate for `key`, after waiting (at most `wait`) for a
    /// refresh of it already running.
    async fn hold(&self, key: String, wait: Duration) -> Held<'_> {
        loop {
            let mut running = match self.open.entry(key.clone()) {
                Entry::Vacant(v) => {
                    let (tx, rx) = watch::channel(());
                    v.insert(rx);
                    return Held {
                        gates: self,
                        key,
                        _open_on_drop: tx,
                    };
                }
                Entry::Occupied(o) => o.get().clone(),
            };
            // Closed (the holder dropped its sender) or timed out: try
            // again; a stuck holder cannot keep others waiting past `wait`.
            if tokio::time::timeout(wait, running.changed()).await.is_err() {
                self.open.remove(&key);
            }
        }
    }
}

/// Makes `repo`'s answer for `reference` current (see the module doc).
pub async fn refresh(
    cx: &Context<'_>,
    route: &Route,
    repo: &RepoName,
    reference: &Reference,
) -> Result<Freshness, ProxyError> {
    let wait = route.proxy.upstream.timeout * 2;
    match reference {
        Reference::Digest(d) => {
            if cached(cx, repo, d).await?.is_some() {
                return Ok(Freshness::Current { fetched: false });
            }
            let _held = cx.proxies.gates.hold(format!("{repo}@{d}"), wait).await;
            if cached(cx, repo, d).await?.is_some() {
                return Ok(Freshness::Current { fetched: false });
            }
            counted(
                cx,
                route,
                fetch(cx, route, repo, &d.to_string(), Some(d), None).await,
            )?;
            Ok(Freshness::Current { fetched: true })
        }
        Reference::Tag(tag) => {
            if cx.proxies.recently_confirmed(route, repo, tag) {
                return Ok(Freshness::Current { fetched: false });
            }
            let _held = cx.proxies.gates.hold(format!("{repo}:{tag}"), wait).await;
            if cx.proxies.recently_confirmed(route, repo, tag) {
                return Ok(Freshness::Current { fetched: false });
            }
            let (r, t) = (repo.clone(), tag.clone());
            let local = cx.meta.query(move |m| m.tag(&r, &t)).await?;
            match counted(
                cx,
                route,
                check_tag(cx, route, repo, tag, local.as_ref()).await,
            ) {
                Ok(fetched) => {
                    cx.proxies.confirm(repo, tag);
                    Ok(Freshness::Current { fetched })
                }
                Err(ProxyError::Upstream(e)) if local.is_some() && stands_in_for(&e) => {
                    Ok(Freshness::Stale(e.to_string()))
                }
                Err(e) => Err(e),
            }
        }
    }
}

/// Failures after which a cached tag is served: the upstream is away or
/// refuses, not "it does not exist".
fn stands_in_for(e: &UpstreamError) -> bool {
    !matches!(e, UpstreamError::NotFound(_))
}

/// Asks the upstream where `tag` points and brings the repository there;
/// whether a manifest was fetched.
async fn check_tag(
    cx: &Context<'_>,
    route: &Route,
    repo: &RepoName,
    tag: &str,
    local: Option<&Digest>,
) -> Result<bool, ProxyError> {
    let upstream = &route.proxy.upstream;
    let path = format!("/v2/{}/manifests/{tag}", route.upstream_name);
    let head = upstream
        .send(Method::HEAD, &path, Some(ACCEPT), &route.upstream_name)
        .await?;
    let announced = head
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Digest::parse(v).ok());
    let Some(digest) = announced else {
        // No digest in the HEAD: the GET's bytes say which it is.
        fetch(cx, route, repo, tag, None, Some(tag)).await?;
        return Ok(true);
    };
    if local == Some(&digest) {
        return Ok(false);
    }
    match cached(cx, repo, &digest).await? {
        // Cached already (pulled by digest, or the tag moved back): move
        // the tag only.
        Some(record) => {
            write(cx, repo, &digest, record, Some(tag)).await?;
            Ok(false)
        }
        None => {
            fetch(
                cx,
                route,
                repo,
                &digest.to_string(),
                Some(&digest),
                Some(tag),
            )
            .await?;
            Ok(true)
        }
    }
}

async fn cached(
    cx: &Context<'_>,
    repo: &RepoName,
    digest: &Digest,
) -> Result<Option<ManifestRecord>, ProxyError> {
    let (r, d) = (repo.clone(), digest.clone());
    Ok(cx.meta.query(move |m| m.manifest(&r, &d)).await?)
}

/// Fetches `reference` (a digest, or a tag the upstream's HEAD gave no
/// digest for), verifies it against `expected`, and stores it (tagged
/// `tag`).
async fn fetch(
    cx: &Context<'_>,
    route: &Route,
    repo: &RepoName,
    reference: &str,
    expected: Option<&Digest>,
    tag: Option<&str>,
) -> Result<(), ProxyError> {
    let upstream = &route.proxy.upstream;
    let path = format!("/v2/{}/manifests/{reference}", route.upstream_name);
    let resp = upstream
        .send(Method::GET, &path, Some(ACCEPT), &route.upstream_name)
        .await?;
    let content_type = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = upstream.read_small(resp, cx.max_manifest_bytes).await?;
    cx.metrics
        .proxy
        .upstream_bytes
        .with_label_values(&[&route.proxy.prefix])
        .inc_by(bytes.len() as u64);
    let algorithm = expected.map_or(crate::oci::Algorithm::Sha256, |d| d.algorithm());
    let actual = Digest::of(algorithm, &bytes);
    if expected.is_some_and(|d| d != &actual) {
        return Err(UpstreamError::Invalid(format!(
            "manifest {reference} from the upstream hashes to {actual}"
        ))
        .into());
    }
    let parsed = manifest::parse(&bytes, content_type.as_deref())
        .map_err(|e| UpstreamError::Invalid(format!("the upstream's manifest {reference}: {e}")))?;
    cx.storage.check_writable()?;
    let (commit, _hold) = cx.storage.put_manifest(&actual, bytes.clone()).await?;
    if commit == crate::content::Placement::Stored {
        cx.metrics.store_bytes.add(bytes.len() as i64);
        cx.metrics.store_blobs.inc();
    }
    let record = ManifestRecord::new(
        parsed,
        bytes.len() as u64,
        crate::calendar::unix_now(),
        true,
    );
    write(cx, repo, &actual, record, tag).await
}

async fn write(
    cx: &Context<'_>,
    repo: &RepoName,
    digest: &Digest,
    record: ManifestRecord,
    tag: Option<&str>,
) -> Result<(), ProxyError> {
    cx.meta
        .write(vec![MetaWrite::PutManifest {
            repo: repo.clone(),
            digest: digest.clone(),
            record,
            tag: tag.map(str::to_owned),
            tag_immutable: false,
        }])
        .await?;
    Ok(())
}

/// Counts an upstream failure once, where the refresh sees it (a cached
/// tag served stale still counts the failure behind it).
fn counted<T>(cx: &Context<'_>, route: &Route, r: Result<T, ProxyError>) -> Result<T, ProxyError> {
    if let Err(ProxyError::Upstream(e)) = &r {
        cx.metrics
            .proxy
            .upstream_errors
            .with_label_values(&[&route.proxy.prefix, e.kind()])
            .inc();
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::manifest::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};

    #[test]
    fn accept_names_every_stored_type() {
        for t in [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST] {
            assert!(ACCEPT.contains(t), "{t}");
        }
    }

    #[tokio::test]
    async fn one_holder_per_key_and_a_dropped_holder_opens() {
        let gates = Arc::new(Gates::default());
        let first = gates.hold("a".into(), Duration::from_secs(5)).await;
        let g = gates.clone();
        let waiter = tokio::spawn(async move {
            let _second = g.hold("a".into(), Duration::from_secs(5)).await;
        });
        // Another key is not held up.
        drop(gates.hold("b".into(), Duration::from_secs(5)).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        drop(first);
        tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
