//! Blob fetches from an upstream, one per (repository, digest) however
//! many clients ask at once, each streamed to all of them as it arrives.
//!
//! A fetch is a task: it sends the upstream GET, appends what arrives to a
//! spool file under `<root>/proxy/` (which the clients' responses read
//! from, each at its own pace) and feeds the same bytes into an upload
//! session of the repository. When the body ends, the session's commit
//! checks the digest: only then is the blob stored and linked, and only
//! then are the last bytes released to the clients. A cut or corrupt
//! transfer commits nothing, and every response reading it ends short
//! (never a complete body with wrong bytes).
//!
//! Owns: the fetches in flight, their spool files, their tasks.
//! Must not: hold a whole blob in memory, or let a slow client slow the
//! fetch (each response reads the spool on its own).

use super::upstream::UpstreamError;
use super::{ProxyError, Route};
use crate::metrics::Metrics;
use crate::oci::range::ByteRange;
use crate::oci::{Digest, RepoName};
use crate::storage::{BlobStorage, StorageError, UploadWriter};
use bytes::Bytes;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use http::Method;
use http_body_util::BodyExt;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Bytes gathered from the upstream before they are written out (spool
/// and session), unless the upstream pauses first.
const BATCH: usize = 1 << 20;
/// A pause in the upstream's body after which what arrived is written
/// out anyway (so a slow upstream still streams).
const FLUSH_AFTER: Duration = Duration::from_millis(50);
/// Each response reads the spool in pieces of at most this much.
const READ_CHUNK: u64 = 1 << 20;
/// Pieces a response may have read ahead of its socket.
const READ_AHEAD: usize = 4;
/// A finished fetch stays joinable this long, so a client that found no
/// blob an instant before the commit joins it instead of fetching again.
const LINGER: Duration = Duration::from_secs(2);
/// How long shutdown waits for fetches to notice it.
const STOP_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub enum FetchState {
    Connecting,
    /// `readable` bytes are in the spool and may be served.
    Receiving {
        size: u64,
        readable: u64,
    },
    /// Verified, stored and linked.
    Done {
        size: u64,
    },
    Failed(Arc<ProxyError>),
}

/// One fetch, shared by the responses that read it.
pub struct Fetch {
    spool: PathBuf,
    state: watch::Receiver<FetchState>,
}

impl Drop for Fetch {
    fn drop(&mut self) {
        // The last response or the task let go: nobody reads it any more.
        let path = std::mem::take(&mut self.spool);
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(move || std::fs::remove_file(path));
            }
            Err(_) => {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

impl Fetch {
    /// Waits, at most `wait`, until the blob's size is known; the error
    /// if the fetch failed before that.
    pub async fn size(&self, wait: Duration) -> Result<u64, Arc<ProxyError>> {
        let mut state = self.state.clone();
        let deadline = Instant::now() + wait;
        loop {
            let now = state.borrow_and_update().clone();
            match now {
                FetchState::Receiving { size, .. } | FetchState::Done { size } => return Ok(size),
                FetchState::Failed(e) => return Err(e),
                FetchState::Connecting => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, state.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    return Err(Arc::new(ProxyError::Upstream(UpstreamError::Unavailable(
                        format!("no answer within {} s", wait.as_secs()),
                    ))))
                }
            }
        }
    }

    /// `range` of the blob, sent as it becomes readable. The channel
    /// closes early (the response is cut) if the fetch fails or stalls
    /// for `idle`.
    pub fn stream(self: Arc<Self>, range: ByteRange, idle: Duration) -> mpsc::Receiver<Bytes> {
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        // Owned by the response: it ends when the response's body is
        // dropped (a send fails), when the range is sent, or on failure.
        tokio::spawn(async move {
            let mut state = self.state.clone();
            let mut file: Option<Arc<std::fs::File>> = None;
            let mut pos = range.start;
            while pos < range.end {
                let readable = match &*state.borrow_and_update() {
                    FetchState::Receiving { readable, .. } => *readable,
                    FetchState::Done { size } => *size,
                    FetchState::Connecting => 0,
                    FetchState::Failed(_) => return,
                };
                let limit = readable.min(range.end);
                while pos < limit {
                    let n = (limit - pos).min(READ_CHUNK);
                    let f = match &file {
                        Some(f) => f.clone(),
                        None => match open(self.spool.clone()).await {
                            Some(f) => file.insert(f).clone(),
                            None => return,
                        },
                    };
                    let at = pos;
                    let piece = tokio::task::spawn_blocking(move || {
                        let mut buf = vec![0; n as usize];
                        f.read_exact_at(&mut buf, at).map(|()| Bytes::from(buf))
                    })
                    .await;
                    let Ok(Ok(piece)) = piece else { return };
                    if tx.send(piece).await.is_err() {
                        return;
                    }
                    pos += n;
                }
                if pos >= range.end {
                    return;
                }
                match tokio::time::timeout(idle, state.changed()).await {
                    Ok(Ok(())) => {}
                    _ => return,
                }
            }
        });
        rx
    }
}

async fn open(path: PathBuf) -> Option<Arc<std::fs::File>> {
    tokio::task::spawn_blocking(move || std::fs::File::open(path).ok().map(Arc::new))
        .await
        .ok()
        .flatten()
}

/// What a fetch needs: where the blob comes from and where it goes.
pub struct FetchJob {
    pub route: Route,
    pub repo: RepoName,
    pub digest: Digest,
    pub storage: Arc<dyn BlobStorage>,
    pub metrics: Arc<Metrics>,
}

type Key = (String, String);

pub struct Fetches {
    spool_dir: PathBuf,
    running: Arc<DashMap<Key, Arc<Fetch>>>,
    stop: watch::Sender<bool>,
}

impl Fetches {
    pub fn new(spool_dir: PathBuf) -> Fetches {
        Fetches {
            spool_dir,
            running: Arc::new(DashMap::new()),
            stop: watch::channel(false).0,
        }
    }

    /// The fetch of `job.digest` into `job.repo` in flight, or a new one
    /// (then `true`).
    pub fn join_or_start(&self, job: FetchJob) -> (Arc<Fetch>, bool) {
        let key = (job.repo.to_string(), job.digest.to_string());
        match self.running.entry(key.clone()) {
            Entry::Occupied(e) => (e.get().clone(), false),
            Entry::Vacant(v) => {
                let (tx, rx) = watch::channel(FetchState::Connecting);
                let fetch = Arc::new(Fetch {
                    spool: self
                        .spool_dir
                        .join(format!("{}.part", uuid::Uuid::new_v4())),
                    state: rx,
                });
                v.insert(fetch.clone());
                tokio::spawn(run(
                    job,
                    fetch.clone(),
                    tx,
                    self.stop.subscribe(),
                    self.running.clone(),
                    key,
                ));
                (fetch, true)
            }
        }
    }

    /// Ends every fetch (their sessions are abandoned) and waits, briefly,
    /// for their tasks to let go.
    pub async fn stop(&self) {
        self.stop.send_replace(true);
        let deadline = Instant::now() + STOP_WAIT;
        while !self.running.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Spool files left by a process that died mid-fetch.
    pub fn clear_spool(&self) -> std::io::Result<()> {
        let _ = std::fs::remove_dir_all(&self.spool_dir);
        std::fs::create_dir_all(&self.spool_dir)
    }
}

/// The fetch task: transfer, then publish the outcome; stays joinable for
/// `LINGER`, then leaves the table.
async fn run(
    job: FetchJob,
    fetch: Arc<Fetch>,
    tx: watch::Sender<FetchState>,
    mut stop: watch::Receiver<bool>,
    running: Arc<DashMap<Key, Arc<Fetch>>>,
    key: Key,
) {
    let prefix = job.route.proxy.prefix.clone();
    let outcome = tokio::select! {
        r = transfer(&job, &fetch.spool, &tx) => r,
        _ = stop.wait_for(|s| *s) => Err(ProxyError::Upstream(UpstreamError::Unavailable(
            "the registry is shutting down".into(),
        ))),
    };
    drop(fetch);
    match outcome {
        Ok(size) => {
            tx.send_replace(FetchState::Done { size });
            tokio::select! {
                _ = tokio::time::sleep(LINGER) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        }
        Err(e) => {
            if let ProxyError::Upstream(u) = &e {
                job.metrics
                    .proxy
                    .upstream_errors
                    .with_label_values(&[&prefix, u.kind()])
                    .inc();
            }
            tracing::warn!(repository = %job.repo, digest = %job.digest, error = %e, "pull-through fetch failed");
            tx.send_replace(FetchState::Failed(Arc::new(e)));
        }
    }
    running.remove(&key);
}

/// Fetches the blob into the spool and an upload session; returns its
/// size once committed.
async fn transfer(
    job: &FetchJob,
    spool: &Path,
    tx: &watch::Sender<FetchState>,
) -> Result<u64, ProxyError> {
    let upstream = &job.route.proxy.upstream;
    job.storage.check_writable()?;
    let path = format!("/v2/{}/blobs/{}", job.route.upstream_name, job.digest);
    let resp = upstream
        .send(Method::GET, &path, None, &job.route.upstream_name)
        .await?;
    let size = resp
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| UpstreamError::Invalid("blob answer without Content-Length".into()))?;
    let started = Instant::now();
    let id = job.storage.begin_upload(&job.repo).await?;
    let mut writer = job.storage.resume_upload(&job.repo, &id).await?;
    let received = receive(job, resp.into_body(), size, spool, writer.as_mut(), tx).await;
    if let Err(e) = received {
        writer.abandon().await;
        return Err(e);
    }
    match writer.complete(&job.digest).await {
        Ok(c) => {
            job.metrics
                .record_completed(c.placement, c.size, started.elapsed());
            Ok(size)
        }
        Err(e) => {
            let _ = job.storage.cancel_upload(&job.repo, &id).await;
            Err(match e {
                StorageError::Refused(crate::upload::Refusal::DigestMismatch { .. }) => {
                    UpstreamError::Invalid(format!(
                        "the upstream's bytes do not hash to {}: {e}",
                        job.digest
                    ))
                    .into()
                }
                e => e.into(),
            })
        }
    }
}

/// Reads the upstream's body into the spool and the session, publishing
/// what may be read; the last byte is held back until the commit.
async fn receive(
    job: &FetchJob,
    mut body: hyper::body::Incoming,
    size: u64,
    spool: &Path,
    writer: &mut dyn UploadWriter,
    tx: &watch::Sender<FetchState>,
) -> Result<(), ProxyError> {
    let timeout = job.route.proxy.upstream.timeout;
    let upstream_bytes = job
        .metrics
        .proxy
        .upstream_bytes
        .with_label_values(&[&job.route.proxy.prefix]);
    let path = spool.to_owned();
    let mut file = crate::blocking::run(move || -> Result<_, StorageError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        Ok(std::fs::File::create(path)?)
    })
    .await?;
    tx.send_replace(FetchState::Receiving { size, readable: 0 });
    let mut pending: Vec<Bytes> = Vec::new();
    let mut pending_len = 0usize;
    let mut received = 0u64;
    loop {
        let wait = if pending.is_empty() {
            timeout
        } else {
            FLUSH_AFTER
        };
        let (ended, paused) = match tokio::time::timeout(wait, body.frame()).await {
            Err(_) if pending.is_empty() => {
                return Err(UpstreamError::Unavailable(format!(
                    "the upstream's body stalled for {} s after {received} of {size} bytes",
                    timeout.as_secs()
                ))
                .into())
            }
            Err(_) => (false, true),
            Ok(None) => (true, false),
            Ok(Some(Err(e))) => {
                return Err(UpstreamError::Invalid(format!(
                    "the upstream's body broke after {received} of {size} bytes: {e}"
                ))
                .into())
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    upstream_bytes.inc_by(data.len() as u64);
                    pending_len += data.len();
                    pending.push(data);
                }
                (false, false)
            }
        };
        if !pending.is_empty() && (ended || paused || pending_len >= BATCH) {
            if received + pending_len as u64 > size {
                return Err(UpstreamError::Invalid(format!(
                    "the upstream sent more than the {size} bytes it announced"
                ))
                .into());
            }
            let chunks = std::mem::take(&mut pending);
            file = append(file, chunks.clone()).await?;
            writer.feed(chunks, None).await?;
            received += pending_len as u64;
            pending_len = 0;
            tx.send_replace(FetchState::Receiving {
                size,
                readable: received.min(size.saturating_sub(1)),
            });
        }
        if ended {
            break;
        }
    }
    if received != size {
        return Err(UpstreamError::Invalid(format!(
            "the upstream's body ended after {received} of {size} bytes"
        ))
        .into());
    }
    Ok(())
}

async fn append(
    mut file: std::fs::File,
    chunks: Vec<Bytes>,
) -> Result<std::fs::File, StorageError> {
    crate::blocking::run(move || -> Result<_, StorageError> {
        for c in &chunks {
            file.write_all(c)?;
        }
        Ok(file)
    })
    .await
}
