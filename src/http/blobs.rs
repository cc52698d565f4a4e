//! Blob reads (GET/HEAD, with a single `Range`) and blob deletes.

use super::body::Body;
use super::error::ApiError;
use super::{empty_response, App, HttpResult};
use crate::meta::MetaWrite;
use crate::oci::range::ByteRange;
use crate::oci::{Digest, RepoName};
use crate::proxy::fetch::FetchJob;
use crate::storage::{BlobContent, BlobRequest, StorageError};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

pub(super) async fn get(
    st: &App,
    name: &RepoName,
    digest: &Digest,
    req_headers: &HeaderMap,
    head_only: bool,
) -> HttpResult {
    // A Range header that is not text is no usable range: the whole blob.
    let range = req_headers
        .get(http::header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let request = BlobRequest {
        repo: name.clone(),
        digest: digest.clone(),
        range,
        head_only,
    };
    let read = match st.proxies.route(name) {
        None => st.storage.read_blob(request).await?,
        Some(route) => {
            let read = st.storage.read_blob(request.clone()).await;
            let result = match &read {
                Err(StorageError::BlobUnknown) => "miss",
                _ => "hit",
            };
            st.metrics
                .proxy
                .requests
                .with_label_values(&[&route.proxy.prefix, "blob", result])
                .inc();
            match read {
                Err(StorageError::BlobUnknown) => return from_upstream(st, route, request).await,
                read => read?,
            }
        }
    };
    let body = match read.content {
        BlobContent::Empty => Body::Empty,
        BlobContent::Mapped(b) => Body::Bytes(b),
        BlobContent::Stream(s, fill) => Body::Stream {
            body: s.body,
            left: s.len,
            fill,
        },
        BlobContent::Redirect(url) => {
            return Ok(empty_response(
                StatusCode::TEMPORARY_REDIRECT,
                &[
                    ("location", url),
                    ("docker-content-digest", digest.to_string()),
                ],
            ))
        }
    };
    let status = match read.partial {
        true => StatusCode::PARTIAL_CONTENT,
        false => StatusCode::OK,
    };
    Ok(blob_response(body, status, digest, read.slice, read.size))
}

/// A blob a pull-through repository lacks: joins (or starts) its fetch
/// and streams it as it arrives.
async fn from_upstream(st: &App, route: crate::proxy::Route, request: BlobRequest) -> HttpResult {
    let BlobRequest {
        repo,
        digest,
        range,
        head_only,
    } = request;
    // Full mode: answered here (507), not by a fetch that cannot commit.
    st.storage.check_writable()?;
    let wait = route.proxy.upstream.timeout * 2;
    let (fetch, _) = st.proxies.fetches.join_or_start(FetchJob {
        route,
        repo,
        digest: digest.clone(),
        storage: st.storage.clone(),
        metrics: st.metrics.clone(),
    });
    let size = fetch
        .size(wait)
        .await
        .map_err(|e| ApiError::from_proxy(&e, ApiError::BlobUnknown))?;
    let (slice, partial) = crate::storage::slice_of(range.as_deref(), size)?;
    let body = match head_only || slice.is_empty() {
        true => Body::Empty,
        false => {
            let idle = std::time::Duration::from_secs(st.config.limits.body_idle_timeout_secs);
            Body::Feed {
                rx: fetch.stream(slice, idle),
                left: slice.len(),
            }
        }
    };
    let status = match partial {
        true => StatusCode::PARTIAL_CONTENT,
        false => StatusCode::OK,
    };
    Ok(blob_response(body, status, &digest, slice, size))
}

fn blob_response(
    body: Body,
    status: StatusCode,
    digest: &Digest,
    slice: ByteRange,
    size: u64,
) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(slice.len()));
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(
        http::header::ACCEPT_RANGES,
        HeaderValue::from_static("bytes"),
    );
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        h.insert("docker-content-digest", v.clone());
        if let Ok(etag) = HeaderValue::from_str(&format!("\"{digest}\"")) {
            h.insert(http::header::ETAG, etag);
        }
    }
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=31536000"),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) =
            HeaderValue::from_str(&format!("bytes {}-{}/{size}", slice.start, slice.end - 1))
        {
            h.insert(http::header::CONTENT_RANGE, v);
        }
    }
    resp
}

/// Unlinks the blob from this repository. The bytes stay until garbage
/// collection finds no repository or manifest using them.
pub(super) async fn delete(
    st: &App,
    name: &RepoName,
    digest: &Digest,
    origin: &crate::notify::Origin,
) -> HttpResult {
    if !st.config.delete_enabled {
        return Err(ApiError::Unsupported(
            "deletes are disabled on this registry".into(),
        ));
    }
    let (repo, d) = (name.clone(), digest.clone());
    if st
        .meta
        .query(move |m| m.blob_link(&repo, &d))
        .await?
        .is_none()
    {
        return Err(ApiError::BlobUnknown);
    }
    let target = crate::notify::Target {
        repository: name.as_str(),
        digest: Some(digest),
        media_type: None,
        size: None,
        tag: None,
    };
    let mut ops = st
        .notifier
        .events(crate::notify::EventKind::Delete, &target, origin);
    let events = !ops.is_empty();
    ops.push(super::audit::change(
        origin,
        "delete_blob",
        name.as_str(),
        &digest.to_string(),
    ));
    ops.insert(
        0,
        MetaWrite::UnlinkBlob {
            repo: name.clone(),
            digest: digest.clone(),
        },
    );
    st.meta.write(ops).await?;
    if events {
        st.notifier.wake();
    }
    Ok(empty_response(
        StatusCode::ACCEPTED,
        &[("docker-content-digest", digest.to_string())],
    ))
}
