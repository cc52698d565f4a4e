//! Upload endpoints: start (or mount), PATCH a chunk, PUT to complete,
//! status, cancel. Request bodies stream into the session actor in batches
//! of hyper's own `Bytes` frames: reading the next batch from the socket
//! overlaps with the actor writing the previous one, and at most those two
//! batches per upload are in memory.

use super::error::ApiError;
use super::query::Query;
use super::{empty_response, App, HttpResult};
use crate::meta::{MetaError, MetaWrite};
use crate::oci::{ContentRange, Digest, RepoName};
use crate::storage::UploadWriter;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::OwnedSemaphorePermit;

pub(super) async fn start(
    st: &App,
    name: &RepoName,
    query: &Query,
    req: Request<Incoming>,
    may_mount: bool,
    origin: &crate::notify::Origin,
) -> HttpResult {
    // Full mode: the room left is for deletes and garbage collection.
    if let Err(e) = st.storage.check_writable() {
        drain(req.into_body()).await;
        return Err(e.into());
    }
    let mounting = query.get("mount").is_some() && may_mount;
    if !mounting {
        if let Some(why) = crate::app::quotas::full_before_upload(st, name.as_str()).await? {
            drain(req.into_body()).await;
            return Err(ApiError::QuotaExceeded(why));
        }
    }
    if let (Some(mount), true) = (query.get("mount"), may_mount) {
        let digest = Digest::parse(mount)?;
        if let Some(from) = query.get("from").and_then(|f| RepoName::parse(f).ok()) {
            let (source, d) = (from.clone(), digest.clone());
            let size = st.meta.query(move |m| m.blob_link(&source, &d)).await?;
            if let (Some(size), true) = (size, st.storage.has_blob(&digest).await?) {
                let audit = super::audit::change(origin, "mount_blob", name.as_str(), mount);
                let mount = MetaWrite::MountBlob {
                    from,
                    repo: name.clone(),
                    digest: digest.clone(),
                    size,
                };
                match st.meta.write(vec![mount, audit]).await {
                    Ok(()) => return Ok(created(name, &digest)),
                    // The source lost the blob meanwhile: upload instead.
                    Err(MetaError::Conflict(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        // Not mountable: the spec says to fall back to a normal session.
    } else if let Some(d) = query.get("digest") {
        let digest = Digest::parse(d)?;
        let id = new_session(st, name).await?;
        let mut w = st.storage.resume_upload(name, &id).await?;
        // A one-request push has no session the client could resume: on
        // any failure it ends here.
        let streamed = match stream_body(st, w.as_mut(), req.into_body()).await {
            Ok(None) => Ok(()),
            Ok(Some(why)) => Err(ApiError::BlobUploadInvalid(format!(
                "request body ended early ({why})"
            ))),
            Err(e) => Err(e),
        };
        if let Err(e) = streamed {
            w.abandon().await;
            return Err(e);
        }
        let done = complete(st, name, w, &digest).await;
        if done.is_err() {
            let _ = st.storage.cancel_upload(name, &id).await;
        }
        return done;
    }
    let id = new_session(st, name).await?;
    Ok(upload_progress(StatusCode::ACCEPTED, name, &id, 0))
}

/// A new session, unless `limits.max_upload_sessions` are open already.
async fn new_session(st: &App, name: &RepoName) -> Result<String, ApiError> {
    Ok(st.storage.begin_upload(name).await?)
}

pub(super) async fn patch(
    st: &App,
    name: &RepoName,
    id: &str,
    req: Request<Incoming>,
) -> HttpResult {
    let mut w = st.storage.resume_upload(name, id).await?;
    if let Err(e) = chunk_start(&req, w.size()) {
        drain(req.into_body()).await;
        return Err(e);
    }
    let broken = stream_body(st, w.as_mut(), req.into_body()).await?;
    let size = w.save().await?;
    if let Some(why) = broken {
        return Err(ApiError::BlobUploadInvalid(format!(
            "request body ended early ({why}); {size} bytes are stored, resume from there"
        )));
    }
    Ok(upload_progress(StatusCode::ACCEPTED, name, id, size))
}

pub(super) async fn put(
    st: &App,
    name: &RepoName,
    id: &str,
    query: &Query,
    req: Request<Incoming>,
) -> HttpResult {
    let mut w = st.storage.resume_upload(name, id).await?;
    let digest = Digest::parse(query.get("digest").ok_or_else(|| {
        ApiError::DigestInvalid("the digest query parameter is required".into())
    })?)?;
    if let Err(e) = chunk_start(&req, w.size()) {
        drain(req.into_body()).await;
        return Err(e);
    }
    if let Some(why) = stream_body(st, w.as_mut(), req.into_body()).await? {
        let size = w.save().await?;
        return Err(ApiError::BlobUploadInvalid(format!(
            "request body ended early ({why}); {size} bytes are stored, resume from there"
        )));
    }
    complete(st, name, w, &digest).await
}

pub(super) async fn status(st: &App, name: &RepoName, id: &str) -> HttpResult {
    let w = st.storage.resume_upload(name, id).await?;
    Ok(upload_progress(StatusCode::NO_CONTENT, name, id, w.size()))
}

pub(super) async fn cancel(st: &App, name: &RepoName, id: &str) -> HttpResult {
    st.storage.cancel_upload(name, id).await?;
    Ok(empty_response(StatusCode::NO_CONTENT, &[]))
}

/// Where a chunk must start: its `Content-Range` start, which has to equal
/// the session's current length (else 416), or that length when absent.
pub(super) fn chunk_start(req: &Request<Incoming>, offset: u64) -> Result<u64, ApiError> {
    let Some(v) = req.headers().get(http::header::CONTENT_RANGE) else {
        return Ok(offset);
    };
    let text = v
        .to_str()
        .map_err(|_| ApiError::UploadRange("Content-Range is not ASCII".into()))?;
    let range = ContentRange::parse(text)?;
    if range.start != offset {
        return Err(
            crate::storage::StorageError::from(crate::upload::Refusal::OutOfOrder { offset })
                .into(),
        );
    }
    if let Some(len) = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len != range.len() {
            return Err(ApiError::UploadRange(format!(
                "Content-Range covers {} bytes but Content-Length is {len}",
                range.len()
            )));
        }
    }
    Ok(range.start)
}

/// Verifies and commits a session's content under `digest`, links it to
/// the repository, and ends the session.
async fn complete(
    st: &App,
    name: &RepoName,
    w: Box<dyn UploadWriter>,
    digest: &Digest,
) -> HttpResult {
    let started = std::time::Instant::now();
    let completed = w.complete(digest).await;
    let completed = completed?;
    st.metrics
        .record_completed(completed.placement, completed.size, started.elapsed());
    Ok(created(name, digest))
}

pub(super) fn created(name: &RepoName, digest: &Digest) -> http::Response<super::body::Body> {
    empty_response(
        StatusCode::CREATED,
        &[
            ("location", format!("/v2/{name}/blobs/{digest}")),
            ("docker-content-digest", digest.to_string()),
        ],
    )
}

fn upload_progress(
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

pub(super) fn too_large(max: u64) -> ApiError {
    ApiError::TooLarge(format!(
        "blob larger than this registry accepts ({max} bytes)"
    ))
}

/// How a batch of body frames ended.
pub(super) enum BatchEnd {
    /// The batch is full, or has waited long enough; more body follows.
    Full,
    Eof,
    /// The client hung up or stalled; what was read before still counts.
    Broken(String),
}

pub(super) struct Batch {
    pub chunks: Vec<Bytes>,
    pub bytes: usize,
    /// The budget these bytes hold until they are written (`None`: empty).
    pub permit: Option<OwnedSemaphorePermit>,
    pub end: BatchEnd,
}

/// Streams a request body into the session in budgeted batches. Reading
/// the next batch overlaps with the store writing the previous one (as far
/// as the store can: see `UploadWriter::feed`). Returns why the body broke
/// off, if it did: what arrived before still counts, and the caller saves
/// it so the client resumes from there.
async fn stream_body(
    st: &App,
    w: &mut dyn UploadWriter,
    mut body: Incoming,
) -> Result<Option<String>, ApiError> {
    // What the next batch reserves (see `collect_batch`). The first asks
    // for a whole batch: a crowd of new uploads then starts a budget's
    // worth at a time, as large writes, instead of all at once with small
    // ones (each started connection also grows hyper's read buffer, which
    // no budget sees). A trickling body gives it back after one linger.
    let mut want = st.batch_bytes();
    let max = st.config.limits.max_blob_bytes;
    if max > 0 && w.size() + body.size_hint().lower() > max {
        drain(body).await;
        return Err(too_large(max));
    }
    loop {
        let batch = collect_batch(st, &mut body, &mut want).await?;
        if max > 0 && w.size() + batch.bytes as u64 > max {
            drain(body).await;
            return Err(too_large(max));
        }
        if batch.bytes > 0 {
            if let Err(e) = w.feed(batch.chunks, batch.permit).await {
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

/// Reads and drops what is left of a refused request's body (at most
/// `DRAIN_MAX`, for at most a few seconds), so the client reads our error
/// reply instead of a connection reset in the middle of its upload.
pub(super) async fn drain(mut body: Incoming) {
    const DRAIN_MAX: usize = 64 << 20;
    let mut seen = 0;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > DRAIN_MAX {
                break;
            }
        }
    })
    .await;
}

/// Longest a batch holds body bytes waiting for more before it is written:
/// a client trickling its upload must not sit on the shared memory budget
/// (or on a half-filled batch) for longer than this. It is also how long
/// an idle body keeps its reservation before it shrinks to the least.
const BATCH_LINGER: std::time::Duration = std::time::Duration::from_millis(100);

/// The least a body keeps reserved.
const LEAST_BATCH_BYTES: usize = 4 * 1024;

/// Reads frames until the batch holds what it reserved, the end of the
/// body, an error, or `BATCH_LINGER` after the batch's first bytes.
///
/// The memory budget for a batch is taken before hyper is asked for its
/// bytes, so a socket is read only when memory is there for what it sends:
/// that is the backpressure on fast clients (they wait here, not in
/// memory), and it keeps a crowd of uploads to the budget's worth of large
/// batches at a time, which is also what keeps the writes large. How much
/// a body reserves follows what it sends (`want`): it doubles, up to a
/// full batch, while batches fill, and falls to what arrived within the
/// linger when they do not. A body that sends nothing for `BATCH_LINGER`
/// keeps only the least, and what a batch did not use is given back when
/// it ends, so slow clients hold about what they sent and never starve the
/// fast ones.
pub(super) async fn collect_batch(
    st: &App,
    body: &mut Incoming,
    want: &mut usize,
) -> Result<Batch, ApiError> {
    let idle = std::time::Duration::from_secs(st.config.limits.body_idle_timeout_secs);
    let mut reserved = (*want).clamp(LEAST_BATCH_BYTES, st.batch_bytes());
    let kib = st.budget.kib_for(reserved);
    let mut ticket = match st.budget.try_take(kib) {
        Some(p) => p,
        None => st
            .budget
            .take(kib)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?,
    };
    let mut batch = Batch {
        chunks: Vec::new(),
        bytes: 0,
        permit: None,
        end: BatchEnd::Full,
    };
    let mut started: Option<tokio::time::Instant> = None;
    let mut lingered = false;
    batch.end = loop {
        if batch.bytes >= reserved {
            break BatchEnd::Full;
        }
        let frame = match started {
            // Bytes are held: write them soon, read on afterwards.
            Some(t) => {
                let left = BATCH_LINGER.saturating_sub(t.elapsed());
                match tokio::time::timeout(left, body.frame()).await {
                    Ok(f) => f,
                    Err(_) => {
                        lingered = true;
                        break BatchEnd::Full;
                    }
                }
            }
            None => match tokio::time::timeout(BATCH_LINGER, body.frame()).await {
                Ok(f) => f,
                Err(_) => {
                    reserved = LEAST_BATCH_BYTES.min(reserved);
                    shrink(&mut ticket, st.budget.kib_for(reserved));
                    let rest = idle.saturating_sub(BATCH_LINGER);
                    match tokio::time::timeout(rest, body.frame()).await {
                        Ok(f) => f,
                        Err(_) => break BatchEnd::Broken("no data for too long".into()),
                    }
                }
            },
        };
        let data = match frame {
            None => break BatchEnd::Eof,
            Some(Err(e)) => break BatchEnd::Broken(e.to_string()),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                _ => continue,
            },
        };
        st.metrics.received_bytes.inc_by(data.len() as u64);
        batch.bytes += data.len();
        batch.chunks.push(data);
        started.get_or_insert_with(tokio::time::Instant::now);
    };
    // Hold what the batch holds. A last frame past the reservation takes
    // the rest if it is free; if not, it is over the budget by less than
    // one read buffer, until it is written.
    let need = st.budget.kib_for(batch.bytes);
    let held = ticket.num_permits() as u32;
    if need > held {
        if let Some(more) = st.budget.try_take(need - held) {
            ticket.merge(more);
        }
    } else {
        shrink(&mut ticket, need);
    }
    if batch.bytes > 0 {
        batch.permit = Some(ticket);
    }
    *want = if lingered || batch.bytes < reserved {
        batch.bytes
    } else {
        reserved * 2
    };
    Ok(batch)
}

/// Gives back all of `ticket` beyond `keep` units.
fn shrink(ticket: &mut OwnedSemaphorePermit, keep: u32) {
    let held = ticket.num_permits() as u32;
    if held > keep {
        drop(ticket.split((held - keep) as usize));
    }
}
