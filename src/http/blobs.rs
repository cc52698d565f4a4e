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
    if let Some(o) = &st.objects {
        return get_object(o, name, digest, req_headers, head_only).await;
    }
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
    let (status, slice) = wanted(req_headers, size)?;
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
    Ok(blob_response(body, status, digest, slice, size))
}

/// The range a request asks for, resolved against the blob's size.
fn wanted(req_headers: &HeaderMap, size: u64) -> Result<(StatusCode, ByteRange), ApiError> {
    let range = match req_headers.get(http::header::RANGE).map(|v| v.to_str()) {
        Some(Ok(r)) => ByteRange::resolve(r, size),
        _ => RangeRequest::Whole,
    };
    Ok(match range {
        RangeRequest::Whole => (
            StatusCode::OK,
            ByteRange {
                start: 0,
                end: size,
            },
        ),
        RangeRequest::Partial(r) => (StatusCode::PARTIAL_CONTENT, r),
        RangeRequest::Unsatisfiable => return Err(ApiError::RangeNotSatisfiable { size }),
    })
}

/// A blob read in object-store mode: the bytes stream from S3 as they
/// arrive (the range passed on as S3's own), or, with `redirect_reads`, a
/// 307 to a presigned URL of the object.
async fn get_object(
    o: &crate::s3::ObjectStorage,
    name: &RepoName,
    digest: &Digest,
    req_headers: &HeaderMap,
    head_only: bool,
) -> HttpResult {
    let found = o
        .blobs
        .locate(name, digest)
        .await?
        .ok_or(ApiError::BlobUnknown)?;
    let size = found.size;
    let (status, slice) = wanted(req_headers, size)?;
    if !head_only && o.blobs.redirect_reads() {
        return Ok(empty_response(
            StatusCode::TEMPORARY_REDIRECT,
            &[
                ("location", o.blobs.presign(&found.key)),
                ("docker-content-digest", digest.to_string()),
            ],
        ));
    }
    let body = if head_only || slice.is_empty() {
        Body::Empty
    } else {
        let range = (status == StatusCode::PARTIAL_CONTENT).then(|| (slice.start, slice.end - 1));
        let stream = o.blobs.open(&found.key, range).await?.ok_or_else(|| {
            ApiError::Internal(format!(
                "blob {digest} is indexed but its object is missing"
            ))
        })?;
        if stream.len != slice.len() {
            return Err(ApiError::Internal(format!(
                "object for {digest} sent {} bytes, {} expected",
                stream.len,
                slice.len()
            )));
        }
        Body::Stream {
            body: stream.body,
            left: stream.len,
        }
    };
    Ok(blob_response(body, status, digest, slice, size))
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
