//! Upload endpoints in object-store mode: the same protocol as `uploads`,
//! with the session's state in PostgreSQL and its bytes in an S3 multipart
//! upload, so any node answers any request of any session. Bodies are read
//! with the same budgeted batches as the data-folder path.

use super::error::ApiError;
use super::query::Query;
use super::uploads::{chunk_start, collect_batch, created, drain, too_large, BatchEnd};
use super::{empty_response, AppState, HttpResult};
use crate::meta::{MetaError, MetaWrite};
use crate::oci::{Digest, RepoName};
use crate::s3::uploads::SessionWriter;
use crate::s3::ObjectStorage;
use http::{Request, StatusCode};
use hyper::body::Incoming;

pub(super) async fn start(
    st: &AppState,
    o: &ObjectStorage,
    name: &RepoName,
    query: &Query,
    req: Request<Incoming>,
    may_mount: bool,
) -> HttpResult {
    if let (Some(mount), true) = (query.get("mount"), may_mount) {
        let digest = Digest::parse(mount)?;
        if let Some(from) = query.get("from").and_then(|f| RepoName::parse(f).ok()) {
            let (source, d) = (from.clone(), digest.clone());
            let size = st.meta.query(move |m| m.blob_link(&source, &d)).await?;
            if let (Some(size), true) = (size, o.blobs.stored(&digest).await?) {
                let mount = MetaWrite::MountBlob {
                    from,
                    repo: name.clone(),
                    digest: digest.clone(),
                    size,
                };
                match st.meta.write(vec![mount]).await {
                    Ok(()) => return Ok(created(name, &digest)),
                    Err(MetaError::Conflict(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    } else if let Some(d) = query.get("digest") {
        let digest = Digest::parse(d)?;
        let id = o.uploads.create(name).await?;
        let mut w = o.uploads.open(name, &id.to_string()).await?;
        let result = async {
            let broken = stream_body(st, &mut w, req.into_body()).await?;
            if let Some(why) = broken {
                return Err(ApiError::BlobUploadInvalid(format!(
                    "request body ended early ({why})"
                )));
            }
            w.commit(&digest).await.map_err(ApiError::from)
        }
        .await;
        return match result {
            Ok(_) => Ok(created(name, &digest)),
            Err(e) => {
                // A one-request push has no session the client could resume.
                let _ = o.uploads.discard(name, &id.to_string()).await;
                Err(e)
            }
        };
    }
    let id = o.uploads.create(name).await?;
    Ok(progress(StatusCode::ACCEPTED, name, &id.to_string(), 0))
}

pub(super) async fn patch(
    st: &AppState,
    o: &ObjectStorage,
    name: &RepoName,
    id: &str,
    req: Request<Incoming>,
) -> HttpResult {
    let mut w = o.uploads.open(name, id).await?;
    if let Err(e) = chunk_start(&req, w.size()) {
        drain(req.into_body()).await;
        return Err(e);
    }
    let broken = stream_body(st, &mut w, req.into_body()).await?;
    let size = w.save().await?;
    if let Some(why) = broken {
        return Err(ApiError::BlobUploadInvalid(format!(
            "request body ended early ({why}); {size} bytes are stored, resume from there"
        )));
    }
    Ok(progress(StatusCode::ACCEPTED, name, id, size))
}

pub(super) async fn put(
    st: &AppState,
    o: &ObjectStorage,
    name: &RepoName,
    id: &str,
    query: &Query,
    req: Request<Incoming>,
) -> HttpResult {
    let mut w = o.uploads.open(name, id).await?;
    let digest = Digest::parse(query.get("digest").ok_or_else(|| {
        ApiError::DigestInvalid("the digest query parameter is required".into())
    })?)?;
    if let Err(e) = chunk_start(&req, w.size()) {
        drain(req.into_body()).await;
        return Err(e);
    }
    if let Some(why) = stream_body(st, &mut w, req.into_body()).await? {
        let size = w.save().await?;
        return Err(ApiError::BlobUploadInvalid(format!(
            "request body ended early ({why}); {size} bytes are stored, resume from there"
        )));
    }
    let started = std::time::Instant::now();
    let committed = w.commit(&digest).await?;
    st.metrics.record_commit(
        if committed.duplicate {
            crate::store::Commit::Deduplicated
        } else {
            crate::store::Commit::Stored
        },
        committed.size,
        started.elapsed(),
    );
    Ok(created(name, &digest))
}

pub(super) async fn status(o: &ObjectStorage, name: &RepoName, id: &str) -> HttpResult {
    let w = o.uploads.open(name, id).await?;
    Ok(progress(StatusCode::NO_CONTENT, name, id, w.size()))
}

fn progress(
    status: StatusCode,
    name: &RepoName,
    id: &str,
    len: u64,
) -> http::Response<super::body::Body> {
    empty_response(
        status,
        &[
            ("location", format!("/v2/{name}/blobs/uploads/{id}")),
            ("range", format!("0-{}", len.saturating_sub(1))),
            ("docker-upload-uuid", id.to_owned()),
        ],
    )
}

/// Feeds a request body into the session in budgeted batches. Returns why
/// the body broke off, if it did (what arrived before still counts).
async fn stream_body(
    st: &AppState,
    w: &mut SessionWriter,
    mut body: Incoming,
) -> Result<Option<String>, ApiError> {
    let mut want = st.batch_bytes();
    let max = st.config.limits.max_blob_bytes;
    loop {
        let batch = collect_batch(st, &mut body, &mut want).await?;
        if max > 0 && w.size() + batch.bytes as u64 > max {
            drain(body).await;
            return Err(too_large(max));
        }
        if batch.bytes > 0 {
            let permit = batch.permit;
            let fed = w.feed(batch.chunks).await;
            drop(permit);
            if let Err(e) = fed {
                // Read the rest so the client gets this answer, not a
                // reset connection in the middle of its upload.
                drain(body).await;
                return Err(e.into());
            }
        }
        match batch.end {
            BatchEnd::Full => continue,
            BatchEnd::Eof => return Ok(None),
            BatchEnd::Broken(why) => return Ok(Some(why)),
        }
    }
}
