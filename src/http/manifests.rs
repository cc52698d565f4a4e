//! Manifest endpoints: PUT (validated, stored as a blob, indexed in one
//! metadata transaction), GET/HEAD by tag or digest, DELETE.

use super::body::Body;
use super::error::ApiError;
use super::{empty_response, off_worker, App, HttpResult};
use crate::calendar::unix_now;
use crate::meta::{ManifestRecord, MetaError, MetaRead, MetaWrite};
use crate::notify::{EventKind, Target};
use crate::oci::manifest;
use crate::oci::{Algorithm, Digest, Reference, RepoName};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

/// An oversized body is still read (and dropped) up to this much, so the
/// client gets its 413 instead of a reset connection mid-upload.
const DRAIN_MAX: u64 = 64 << 20;

/// Reads a manifest body of at most `max` bytes; `None` when it is larger
/// (the rest is drained, up to `DRAIN_MAX`).
async fn read_manifest_body(
    st: &App,
    mut body: Incoming,
    max: usize,
) -> Result<Option<Bytes>, ApiError> {
    let mut buf = bytes::BytesMut::new();
    let mut seen: u64 = 0;
    let idle = std::time::Duration::from_secs(st.config.limits.body_idle_timeout_secs);
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(_) => {
                return Err(ApiError::ManifestInvalid(format!(
                    "no manifest bytes for {} s",
                    idle.as_secs()
                )))
            }
        };
        let frame = frame
            .map_err(|e| ApiError::ManifestInvalid(format!("could not read the manifest: {e}")))?;
        if let Ok(data) = frame.into_data() {
            st.metrics.received_bytes.inc_by(data.len() as u64);
            seen += data.len() as u64;
            if seen > DRAIN_MAX {
                return Ok(None);
            }
            if seen <= max as u64 {
                buf.extend_from_slice(&data);
            }
        }
    }
    Ok((seen <= max as u64).then(|| buf.freeze()))
}

/// The digest a reference names in `repo`, or MANIFEST_UNKNOWN.
fn resolve(
    meta: &dyn MetaRead,
    name: &RepoName,
    reference: &Reference,
) -> Result<Digest, ApiError> {
    match reference {
        Reference::Digest(d) => Ok(d.clone()),
        Reference::Tag(t) => meta.tag(name, t)?.ok_or(ApiError::ManifestUnknown),
    }
}

pub(super) async fn get(
    st: &App,
    name: &RepoName,
    reference: &Reference,
    head_only: bool,
    pull_event: Option<&crate::notify::Origin>,
) -> HttpResult {
    let stale = match st.proxies.route(name) {
        Some(route) => proxy_refresh(st, &route, name, reference).await?,
        None => None,
    };
    let pulled_tag = match reference {
        Reference::Tag(t) => Some(t.clone()),
        Reference::Digest(_) => None,
    };
    let meta = st.meta.reader();
    let repo = name.clone();
    let (name, reference) = (name.clone(), reference.clone());
    // Where the bytes are a file, they are read in the same trip.
    let reader = (!head_only).then(|| st.storage.manifest_reader());
    let (digest, record, bytes) = off_worker(move || {
        let digest = resolve(meta.as_ref(), &name, &reference)?;
        let Some(record) = meta.manifest(&name, &digest)? else {
            return Err(if meta.repo_exists(&name)? {
                ApiError::ManifestUnknown
            } else {
                ApiError::NameUnknown
            });
        };
        let bytes = match reader {
            Some(read) => read(&digest, record.size)?,
            None => None,
        };
        Ok((digest, record, bytes))
    })
    .await?;
    let bytes = if head_only {
        None
    } else {
        let read = match bytes {
            Some(read) => Some(read),
            None => st.storage.manifest_bytes(&digest).await?,
        };
        Some(read.ok_or_else(|| {
            ApiError::Internal(format!(
                "manifest {digest} is indexed but its bytes are missing"
            ))
        })?)
    };
    if !head_only {
        // Retention's "pulled within": clients HEAD to check, GET to pull.
        st.pulls.note(&repo, &digest, unix_now());
    }
    if let Some(origin) = pull_event {
        let target = Target {
            repository: repo.as_str(),
            digest: Some(&digest),
            media_type: Some(&record.media_type),
            size: Some(record.size),
            tag: pulled_tag.as_deref(),
        };
        let events = st.notifier.events(EventKind::Pull, &target, origin);
        if !events.is_empty() {
            // A pull must not fail for its event: reads go on while the
            // disk is full or the metadata store refuses writes.
            match st.meta.write(events).await {
                Ok(_) => st.notifier.wake(),
                Err(e) => tracing::warn!(error = %e, %digest, "pull event not queued"),
            }
        }
    }
    let body = bytes.map_or(Body::Empty, Body::Bytes);
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(record.size));
    if let Ok(v) = HeaderValue::from_str(&record.media_type) {
        h.insert(http::header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        h.insert("docker-content-digest", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{digest}\"")) {
        h.insert(http::header::ETAG, v);
    }
    if stale.is_some() {
        h.insert(
            http::header::WARNING,
            HeaderValue::from_static("110 wharf \"Response is Stale\""),
        );
    }
    Ok(resp)
}

/// Brings a pull-through repository's answer for `reference` up to date
/// with its upstream; `Some(why)` when the cached answer is served because
/// the upstream could not confirm it.
async fn proxy_refresh(
    st: &App,
    route: &crate::proxy::Route,
    name: &RepoName,
    reference: &Reference,
) -> Result<Option<String>, ApiError> {
    use crate::proxy::manifest::{refresh, Context, Freshness};
    let cx = Context {
        proxies: &st.proxies,
        storage: &st.storage,
        meta: &st.meta,
        metrics: &st.metrics,
        max_manifest_bytes: st.config.max_manifest_bytes,
    };
    let freshness = refresh(&cx, route, name, reference)
        .await
        .map_err(|e| match e {
            e @ crate::proxy::ProxyError::Upstream(_) => {
                ApiError::from_proxy(&e, ApiError::ManifestUnknown)
            }
            e => e.into(),
        })?;
    let (result, stale) = match freshness {
        Freshness::Current { fetched: false } => ("hit", None),
        Freshness::Current { fetched: true } => ("miss", None),
        Freshness::Stale(why) => {
            tracing::warn!(repository = %name, %reference, upstream = %route.proxy.upstream_url, error = %why, "serving a cached manifest the upstream could not confirm");
            ("stale", Some(why))
        }
    };
    st.metrics
        .proxy
        .requests
        .with_label_values(&[&route.proxy.prefix, "manifest", result])
        .inc();
    Ok(stale)
}

pub(super) async fn put(
    st: &App,
    name: &RepoName,
    reference: &Reference,
    req: Request<Incoming>,
    origin: &crate::notify::Origin,
) -> HttpResult {
    let max = st.config.max_manifest_bytes;
    let content_type = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || ApiError::TooLarge(format!("manifest is larger than {max} bytes"));
    if declared.is_some_and(|n| n > DRAIN_MAX) {
        return Err(too_large());
    }
    let body = read_manifest_body(st, req.into_body(), max)
        .await?
        .ok_or_else(too_large)?;

    let digest = match reference {
        Reference::Digest(d) => {
            let actual = Digest::of(d.algorithm(), &body);
            if &actual != d {
                return Err(ApiError::DigestInvalid(format!(
                    "manifest hashes to {actual}, not {d}"
                )));
            }
            actual
        }
        Reference::Tag(_) => Digest::of(Algorithm::Sha256, &body),
    };
    let parsed = manifest::parse(&body, content_type.as_deref())
        .map_err(|e| ApiError::ManifestInvalid(e.0))?;

    // Full mode: the room left is for deletes and garbage collection.
    st.storage.check_writable()?;
    let (meta, repo) = (st.meta.reader(), name.clone());
    let (blobs, children) = (parsed.blobs.clone(), parsed.children.clone());
    off_worker(move || {
        for b in &blobs {
            if meta.blob_link(&repo, b)?.is_none() {
                return Err(ApiError::ManifestBlobUnknown(format!(
                    "blob {b} is not in repository {repo}"
                )));
            }
        }
        for c in &children {
            if meta.manifest(&repo, c)?.is_none() {
                return Err(ApiError::ManifestChildUnknown(format!(
                    "manifest {c} is not in repository {repo}"
                )));
            }
        }
        Ok(())
    })
    .await?;

    // Held until the manifest's row is written (garbage collection).
    let (commit, _hold) = st.storage.put_manifest(&digest, body.clone()).await?;
    if commit == crate::content::Placement::Stored {
        st.metrics.store_bytes.add(body.len() as i64);
        st.metrics.store_blobs.inc();
    }
    let subject = parsed.subject.clone();
    let record = ManifestRecord::new(parsed, body.len() as u64, unix_now(), false);
    let tag = match reference {
        Reference::Tag(t) => Some(t.clone()),
        Reference::Digest(_) => None,
    };
    let immutable = tag
        .as_deref()
        .and_then(|t| st.policies.immutable_rule(name.as_str(), t));
    let mut ops = st.notifier.events(
        EventKind::Push,
        &Target {
            repository: name.as_str(),
            digest: Some(&digest),
            media_type: Some(&record.media_type),
            size: Some(record.size),
            tag: tag.as_deref(),
        },
        origin,
    );
    let events = !ops.is_empty();
    ops.push(super::audit::change(
        origin,
        "push_manifest",
        name.as_str(),
        &reference.to_string(),
    ));
    ops.insert(
        0,
        MetaWrite::PutManifest {
            repo: name.clone(),
            digest: digest.clone(),
            record,
            tag: tag.clone(),
            tag_immutable: immutable.is_some(),
        },
    );
    st.meta
        .write(ops)
        .await
        .map_err(|e| match (e, &immutable, &tag) {
            // The tag points at another manifest (checked in the commit,
            // so two pushes racing for a new immutable tag cannot both win).
            (MetaError::Conflict(why), Some(rule), Some(t)) if why.ends_with("is immutable") => {
                ApiError::PolicyDenied(format!(
                    "tag {t} of {name} is immutable ({rule}): it cannot be moved"
                ))
            }
            (MetaError::Conflict(why), _, _) if why.contains(crate::meta::rules::TYPE_FIXED) => {
                ApiError::ManifestInvalid(why)
            }
            // A referenced blob was unlinked (garbage collection) between
            // the check above and the commit.
            (MetaError::Conflict(why), _, _) => ApiError::ManifestBlobUnknown(why),
            (e, _, _) => e.into(),
        })?;
    if events {
        st.notifier.wake();
    }

    let mut headers = vec![
        ("location", format!("/v2/{name}/manifests/{digest}")),
        ("docker-content-digest", digest.to_string()),
    ];
    if let Some(s) = subject {
        headers.push(("oci-subject", s.to_string()));
    }
    Ok(empty_response(StatusCode::CREATED, &headers))
}

pub(super) async fn delete(
    st: &App,
    name: &RepoName,
    reference: &Reference,
    origin: &crate::notify::Origin,
) -> HttpResult {
    if !st.config.delete_enabled {
        return Err(ApiError::Unsupported(
            "deletes are disabled on this registry".into(),
        ));
    }
    let deleted_digest = match reference {
        Reference::Digest(d) => Some(d.clone()),
        Reference::Tag(_) => None,
    };
    let (repo, reference) = (name.clone(), reference.clone());
    let policies = st.policies.clone();
    let op = st
        .meta
        .query(move |meta| {
            Ok(Some(match reference {
                Reference::Tag(tag) => match meta.tag(&repo, &tag)? {
                    Some(_) => match policies.immutable_rule(repo.as_str(), &tag) {
                        Some(rule) => Err(format!("tag {tag} of {repo} is immutable ({rule})")),
                        None => Ok(MetaWrite::DeleteTag { repo, tag }),
                    },
                    None => return Ok(None),
                },
                Reference::Digest(digest) => {
                    if meta.manifest(&repo, &digest)?.is_none() {
                        return Ok(None);
                    }
                    // Deleting a manifest deletes its tags.
                    match immutable_tag_on(meta, &policies, &repo, &digest)? {
                        Some(why) => Err(why),
                        None => Ok(MetaWrite::DeleteManifest { repo, digest }),
                    }
                }
            }))
        })
        .await?
        .ok_or(ApiError::ManifestUnknown)?
        .map_err(ApiError::PolicyDenied)?;
    let target = match &op {
        MetaWrite::DeleteTag { tag, .. } => Target {
            repository: name.as_str(),
            digest: None,
            media_type: None,
            size: None,
            tag: Some(tag),
        },
        _ => Target {
            repository: name.as_str(),
            digest: deleted_digest.as_ref(),
            media_type: None,
            size: None,
            tag: None,
        },
    };
    let mut ops = st.notifier.events(EventKind::Delete, &target, origin);
    let events = !ops.is_empty();
    let (action, what) = match &op {
        MetaWrite::DeleteTag { tag, .. } => ("delete_tag", tag.clone()),
        _ => (
            "delete_manifest",
            deleted_digest
                .as_ref()
                .map(|d| d.to_string())
                .unwrap_or_default(),
        ),
    };
    ops.push(super::audit::change(origin, action, name.as_str(), &what));
    ops.insert(0, op);
    st.meta.write(ops).await?;
    if events {
        st.notifier.wake();
    }
    Ok(empty_response(StatusCode::ACCEPTED, &[]))
}

/// An immutable tag on `digest` in `repo`, described, if there is one.
fn immutable_tag_on(
    meta: &dyn crate::meta::MetaRead,
    policies: &crate::retention::Policies,
    repo: &RepoName,
    digest: &Digest,
) -> Result<Option<String>, MetaError> {
    // The manifest's own tags, from the index: a delete in a repository
    // of 10^5 tags costs what it costs in one of ten.
    for t in meta.tags_of(repo, digest)? {
        if let Some(rule) = policies.immutable_rule(repo.as_str(), &t) {
            return Ok(Some(format!(
                "manifest {digest} carries tag {t}, which is immutable ({rule})"
            )));
        }
    }
    Ok(None)
}
