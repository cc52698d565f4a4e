//! Upload sessions: one actor per resumable upload, and the registry that
//! finds them by id.
//!
//! Owns: `<root>/uploads/<uuid>/` (the append-only `data` file and a small
//! `info` file naming the repository), the uuid -> actor table, the idle
//! purge, and recovery of sessions after a restart.
//! Must not: know about tags or manifests, or move a finished upload into the
//! content store (the caller commits the sealed file it is handed).

pub mod budget;
mod data_file;
pub mod midstate;
mod session;

pub use session::{Sealed, SessionMsg};

use crate::oci::{Digest, RepoName};
use crate::space::DiskSpace;
use bytes::Bytes;
use dashmap::DashMap;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef};
use serde::{Deserialize, Serialize};
use session::{Session, SessionArgs};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// What an upload session refuses, whichever storage holds it (this
/// module's actors, or the object store's rows): the refusals a client
/// can act on, shared by both modes' errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("upload session not found")]
    Unknown,
    #[error("chunk does not start at the session's offset {offset}")]
    OutOfOrder { offset: u64 },
    #[error("upload content hashes to {actual}, not {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("upload is being completed by another request")]
    Sealed,
    #[error("upload storage I/O: {0}")]
    Io(#[from] io::Error),
    #[error("upload session is not answering: {0}")]
    Unavailable(&'static str),
}

/// What a session keeps on disk beside its data, so a restart can find it.
#[derive(Debug, Serialize, Deserialize)]
struct SessionInfo {
    repo: String,
}

struct SessionEntry {
    handle: SessionHandle,
    join: tokio::task::JoinHandle<()>,
}

/// A live session, as handed to request handlers. Cheap to clone.
#[derive(Clone)]
pub struct SessionHandle {
    pub id: Uuid,
    pub repo: RepoName,
    actor: ActorRef<SessionMsg>,
    last_used_ms: Arc<AtomicU64>,
    epoch: Instant,
    call_timeout: Duration,
}

impl SessionHandle {
    fn touch(&self) {
        self.last_used_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    async fn call<T: Send + 'static>(
        &self,
        build: impl FnOnce(ractor::RpcReplyPort<T>) -> SessionMsg,
    ) -> Result<T, UploadError> {
        self.touch();
        match self.actor.call(build, Some(self.call_timeout)).await {
            Ok(CallResult::Success(v)) => Ok(v),
            Ok(CallResult::Timeout) => Err(UploadError::Unavailable("timed out")),
            // The actor stopped: the session was cancelled or completed.
            Ok(CallResult::SenderError) | Err(_) => Err(UploadError::Refused(Refusal::Unknown)),
        }
    }

    /// Appends `chunks` at offset `at` (any offset when `None`); returns the
    /// new length of the upload.
    pub async fn append(&self, at: Option<u64>, chunks: Vec<Bytes>) -> Result<u64, UploadError> {
        self.call(|reply| SessionMsg::Append {
            at,
            chunks,
            budget: None,
            reply,
        })
        .await?
    }

    /// Sends `chunks` to be appended at offset `at` and returns at once:
    /// the caller reads its next bytes while the actor writes these, and
    /// takes the new length from the returned `PendingAppend`. `budget` is
    /// released by the actor as soon as the chunks are written.
    pub fn append_later(
        &self,
        at: u64,
        chunks: Vec<Bytes>,
        budget: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<PendingAppend, UploadError> {
        self.touch();
        let (tx, rx) = ractor::concurrency::oneshot();
        self.actor
            .cast(SessionMsg::Append {
                at: Some(at),
                chunks,
                budget,
                reply: tx.into(),
            })
            .map_err(|_| UploadError::Refused(Refusal::Unknown))?;
        Ok(PendingAppend {
            reply: rx,
            timeout: self.call_timeout,
        })
    }

    /// Bytes received so far.
    pub async fn received(&self) -> Result<u64, UploadError> {
        self.call(|reply| SessionMsg::Status { reply }).await
    }

    /// Verifies the content against `digest`, syncs it, and freezes the
    /// session; the returned file may then be committed.
    pub async fn seal(&self, digest: &Digest) -> Result<Sealed, UploadError> {
        let digest = digest.clone();
        self.call(|reply| SessionMsg::Seal { digest, reply })
            .await?
    }

    /// Reopens a sealed session whose commit failed.
    pub async fn unseal(&self) -> Result<(), UploadError> {
        self.call(|reply| SessionMsg::Unseal { reply }).await
    }
}

/// An append the session actor is working on.
pub struct PendingAppend {
    reply: ractor::concurrency::OneshotReceiver<Result<u64, UploadError>>,
    timeout: Duration,
}

impl PendingAppend {
    /// The session's length once the append is written.
    pub async fn wait(self) -> Result<u64, UploadError> {
        match tokio::time::timeout(self.timeout, self.reply).await {
            Err(_) => Err(UploadError::Unavailable("timed out")),
            // The actor stopped: the session was cancelled or completed.
            Ok(Err(_)) => Err(UploadError::Refused(Refusal::Unknown)),
            Ok(Ok(r)) => r,
        }
    }
}

/// All live sessions of this node.
pub struct UploadRegistry {
    dir: PathBuf,
    pool: Arc<data_file::BufferPool>,
    sessions: DashMap<Uuid, SessionEntry>,
    fsync: bool,
    call_timeout: Duration,
    epoch: Instant,
    space: Arc<DiskSpace>,
}

impl UploadRegistry {
    /// Opens `<root>/uploads`, restarting an actor for every session found
    /// there (its offset is the length of its data file) and removing
    /// leftovers that are not sessions.
    pub async fn start(
        root: &Path,
        fsync: bool,
        call_timeout: Duration,
        space: Arc<DiskSpace>,
    ) -> io::Result<Self> {
        let dir = root.join("uploads");
        // The scan is file I/O: on the blocking pool, like every other.
        let found = crate::blocking::run({
            let dir = dir.clone();
            move || -> io::Result<Vec<(Uuid, RepoName, u64)>> {
                std::fs::create_dir_all(&dir)?;
                let mut found = Vec::new();
                for entry in std::fs::read_dir(&dir)? {
                    let path = entry?.path();
                    let id = path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .and_then(|n| Uuid::parse_str(n).ok());
                    match (id, read_info(&path), data_len(&path)) {
                        (Some(id), Some(repo), Some(len)) => found.push((id, repo, len)),
                        _ => {
                            tracing::warn!(path = %path.display(), "removing unrecognised upload leftover");
                            let _ = remove_path(&path);
                        }
                    }
                }
                Ok(found)
            }
        })
        .await?;
        let reg = UploadRegistry {
            dir,
            // Kept buffers: enough for the batches the memory budget lets
            // be written at once on 2 cores; more are allocated on demand.
            pool: Arc::new(data_file::BufferPool::new(16)),
            sessions: DashMap::new(),
            fsync,
            call_timeout,
            epoch: Instant::now(),
            space,
        };
        for (id, repo, len) in found {
            match reg.spawn(id, repo, len, false).await {
                Ok(_) => tracing::info!(%id, "recovered upload session"),
                // Its files stay: the next start tries again.
                Err(e) => tracing::error!(%id, error = %e, "upload session not recovered"),
            }
        }
        Ok(reg)
    }

    /// Starts the actor of a session whose files exist. The actor's start
    /// does no I/O, so this fails only if ractor itself cannot start it.
    async fn spawn(
        &self,
        id: Uuid,
        repo: RepoName,
        len: u64,
        fresh: bool,
    ) -> Result<SessionHandle, UploadError> {
        let args = SessionArgs {
            dir: self.dir.join(id.to_string()),
            pool: self.pool.clone(),
            len,
            fresh,
            fsync: self.fsync,
            space: self.space.clone(),
        };
        let (actor, join) = Actor::spawn(None, Session, args).await.map_err(|e| {
            tracing::error!(error = %e, "upload session actor did not start");
            UploadError::Unavailable("upload session actor did not start")
        })?;
        let handle = SessionHandle {
            id,
            repo,
            actor,
            last_used_ms: Arc::new(AtomicU64::new(0)),
            epoch: self.epoch,
            call_timeout: self.call_timeout,
        };
        handle.touch();
        self.sessions.insert(
            id,
            SessionEntry {
                handle: handle.clone(),
                join,
            },
        );
        Ok(handle)
    }

    /// Starts a new, empty session for `repo`: its folder, `info` and empty
    /// `data` file are written on the blocking pool first (a full disk is an
    /// `Io` error here, and nothing is left behind).
    pub async fn create(&self, repo: &RepoName) -> Result<SessionHandle, UploadError> {
        self.space.check_writable()?;
        let id = Uuid::new_v4();
        let dir = self.dir.join(id.to_string());
        let info = serde_json::to_vec(&SessionInfo {
            repo: repo.to_string(),
        })
        .map_err(io::Error::other)?;
        let space = self.space.clone();
        tokio::task::spawn_blocking(move || {
            let made = (|| {
                std::fs::create_dir(&dir)?;
                std::fs::write(dir.join("info"), info)?;
                std::fs::File::create(dir.join("data")).map(drop)
            })();
            if let Err(e) = &made {
                space.note(e);
                let _ = std::fs::remove_dir_all(&dir);
            }
            made
        })
        .await
        .map_err(|_| UploadError::Unavailable("session setup task failed"))??;
        let handle = self.spawn(id, repo.clone(), 0, true).await;
        if handle.is_err() {
            let _ = tokio::fs::remove_dir_all(self.dir.join(id.to_string())).await;
        }
        handle
    }

    /// Finds the session `id` of `repo`. An id that is not a uuid, or a
    /// session of another repository, is unknown.
    pub fn get(&self, repo: &RepoName, id: &str) -> Result<SessionHandle, UploadError> {
        let parsed = Uuid::parse_str(id).map_err(|_| UploadError::Refused(Refusal::Unknown))?;
        // Only the canonical form we hand out names a session, so braced or
        // upper-case spellings never alias one.
        if parsed.hyphenated().to_string() != id {
            return Err(UploadError::Refused(Refusal::Unknown));
        }
        match self.sessions.get(&parsed) {
            Some(e) if &e.handle.repo == repo => Ok(e.handle.clone()),
            _ => Err(UploadError::Refused(Refusal::Unknown)),
        }
    }

    /// Ends a session and deletes its files (cancel, or after its sealed file
    /// was committed).
    pub async fn discard(&self, id: Uuid) -> Result<(), UploadError> {
        let Some((_, entry)) = self.sessions.remove(&id) else {
            return Err(UploadError::Refused(Refusal::Unknown));
        };
        let _ = entry
            .handle
            .actor
            .call(
                |reply| SessionMsg::Discard { reply },
                Some(self.call_timeout),
            )
            .await;
        let _ = entry.join.await;
        Ok(())
    }

    /// Discards every session untouched for `idle`; returns how many.
    pub async fn purge_idle(&self, idle: Duration) -> usize {
        let now = self.epoch.elapsed().as_millis() as u64;
        let limit = idle.as_millis() as u64;
        let stale: Vec<Uuid> = self
            .sessions
            .iter()
            .filter(|e| now.saturating_sub(e.handle.last_used_ms.load(Ordering::Relaxed)) >= limit)
            .map(|e| *e.key())
            .collect();
        let mut n = 0;
        for id in stale {
            if self.discard(id).await.is_ok() {
                n += 1;
            }
        }
        n
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Stops every actor, keeping its files for the next start.
    pub async fn stop_all(&self) {
        let ids: Vec<Uuid> = self.sessions.iter().map(|e| *e.key()).collect();
        for id in ids {
            if let Some((_, e)) = self.sessions.remove(&id) {
                e.handle.actor.stop(None);
                let _ = e.join.await;
            }
        }
    }
}

/// Length of a recovered session's data file (created empty if missing).
fn data_len(dir: &Path) -> Option<u64> {
    let data = dir.join("data");
    match std::fs::metadata(&data) {
        Ok(m) => Some(m.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::File::create(&data).ok().map(|_| 0)
        }
        Err(_) => None,
    }
}

fn read_info(dir: &Path) -> Option<RepoName> {
    let text = std::fs::read(dir.join("info")).ok()?;
    let info: SessionInfo = serde_json::from_slice(&text).ok()?;
    RepoName::parse(&info.repo).ok()
}

fn remove_path(p: &Path) -> io::Result<()> {
    if p.is_dir() {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    }
}
