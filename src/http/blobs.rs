//! Blob reads (GET/HEAD, with a single `Range`) and blob deletes.

use super::body::Body;
use super::error::ApiError;
use super::{empty_response, off_worker, AppState, HttpResult};
use crate::meta::MetaWrite;
use crate::oci::range::{ByteRange, RangeRequest};
use crate::oci::{Digest, RepoName};
use crate::store::BlobBytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};

pub(super) async fn get(
    st: &AppState,
    name: &RepoName,
    digest: &Digest,
    req_headers: &HeaderMap,
    head_only: bool,
) -> HttpResult {
    let (meta, path) = (st.meta.reader(), st.store.blob_path(digest));
    let (repo, d) = (name.clone(), digest.clone());
    let (size, blob) = off_worker(move || {
        let size = meta.blob_link(&repo, &d)?.ok_or(ApiError::BlobUnknown)?;
        let blob = match head_only {
            true => None,
            false => Some(BlobBytes::open(&path)?.ok_or(ApiError::BlobUnknown)?),
        };
        Ok((size, blob))
    })
    .await?;
    let range = match req_headers.get(http::header::RANGE).map(|v| v.to_str()) {
        Some(Ok(r)) => ByteRange::resolve(r, size),
        _ => RangeRequest::Whole,
    };
    let (status, slice) = match range {
        RangeRequest::Whole => (
            StatusCode::OK,
            ByteRange {
                start: 0,
                end: size,
            },
        ),
        RangeRequest::Partial(r) => (StatusCode::PARTIAL_CONTENT, r),
        RangeRequest::Unsatisfiable => return Err(ApiError::RangeNotSatisfiable { size }),
    };
    let body = if let Some(blob) = blob {
        if blob.len() != size {
            return Err(ApiError::Internal(format!(
                "blob {digest} is {} bytes on disk, {size} in metadata",
                blob.len()
            )));
        }
        Body::Bytes(blob.bytes.slice(slice.start as usize..slice.end as usize))
    } else {
        Body::Empty
    };
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
    Ok(resp)
}

/// Unlinks the blob from this repository. The bytes stay until garbage
/// collection finds no repository or manifest using them.
pub(super) async fn delete(st: &AppState, name: &RepoName, digest: &Digest) -> HttpResult {
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
    st.meta
        .write(vec![MetaWrite::UnlinkBlob {
            repo: name.clone(),
            digest: digest.clone(),
        }])
        .await?;
    Ok(empty_response(
        StatusCode::ACCEPTED,
        &[("docker-content-digest", digest.to_string())],
    ))
}
