//! Content-addressed blob storage on the local filesystem.
//!
//! Owns: `<root>/blobs/`, the commit of a finished upload into it (durable,
//! deduplicated), opening blobs for reads, and removing them.
//! Must not: know about HTTP, repositories or tags; which repository may
//! read which blob is the metadata store's business.
//!
//! ```text
//! <root>/blobs/sha256/ab/abcdef...   immutable; written once by rename
//! <root>/blobs/sha512/12/1234...
//! <root>/blobs/staging/<uuid>        small blobs (manifests) being written;
//!                                    emptied at start-up
//! ```
//! A blob file exists only once its bytes are synced, so a crash never
//! leaves a half-written blob under a digest. Work on one digest runs on one
//! shard actor (routed by digest), which makes concurrent commits of one
//! digest keep exactly one copy without any lock.

mod blob;
mod shard;

pub use blob::BlobBytes;
pub use shard::Pin;

use crate::oci::Digest;
use crate::space::DiskSpace;
use ractor::{Actor, ActorRef};
use shard::{Shard, ShardMsg};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage I/O: {0}")]
    Io(#[from] io::Error),
    #[error("content store is not answering: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// True when the disk is full, which the HTTP layer reports differently.
    pub fn is_no_space(&self) -> bool {
        matches!(self, StoreError::Io(e) if crate::space::is_no_space(e))
    }
}

/// Where a blob's bytes went when placed: new, or already stored (in the
/// data folder, or in a bucket by another upload of the same digest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The staged file (or uploaded object) became the blob.
    Stored,
    /// The blob was already there; the new copy was dropped.
    Deduplicated,
}

/// What a completed upload became, in either storage mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completed {
    pub size: u64,
    pub placement: Placement,
}

/// Handle to the store and its shard actors.
pub struct ContentStore {
    root: PathBuf,
    shards: Vec<ActorRef<ShardMsg>>,
    /// Taken by `stop` (the store is shared, so it stops through `&self`).
    joins: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    call_timeout: Duration,
    fsync: bool,
    space: Arc<DiskSpace>,
}

impl ContentStore {
    pub async fn start(
        root: &Path,
        shards: usize,
        fsync: bool,
        call_timeout: Duration,
        space: Arc<DiskSpace>,
    ) -> Result<Self, StoreError> {
        let blobs = root.join("blobs");
        crate::blocking::run({
            let blobs = blobs.clone();
            move || -> io::Result<()> {
                for alg in ["sha256", "sha512"] {
                    std::fs::create_dir_all(blobs.join(alg))?;
                }
                // Whatever is in staging was never acknowledged.
                let staging = blobs.join("staging");
                if staging.exists() {
                    std::fs::remove_dir_all(&staging)?;
                }
                std::fs::create_dir_all(&staging)
            }
        })
        .await?;
        let mut refs = Vec::with_capacity(shards);
        let mut joins = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (r, j) = Actor::spawn(None, Shard, shard::ShardArgs { fsync })
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            refs.push(r);
            joins.push(j);
        }
        Ok(ContentStore {
            root: blobs,
            shards: refs,
            joins: std::sync::Mutex::new(joins),
            call_timeout,
            fsync,
            space,
        })
    }

    /// Where the blob for `digest` lives. The digest is validated hex, so
    /// the path cannot escape the store.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        blob_path(&self.root, digest)
    }

    /// `<root>/blobs`, for blocking closures that resolve a digest first
    /// and then open its blob ([`blob_path`]).
    pub fn blobs_root(&self) -> PathBuf {
        self.root.clone()
    }

    /// Moves a staged file (bytes already synced and verified to hash to
    /// `digest`) into place, or drops it if the blob already exists. Hold
    /// the pin until the metadata naming the blob is written.
    pub async fn place(
        &self,
        digest: &Digest,
        staged: PathBuf,
    ) -> Result<(Placement, Pin), StoreError> {
        let target = self.blob_path(digest);
        let r = self
            .call_shard(digest, |reply| ShardMsg::Place {
                staged,
                target,
                reply,
            })
            .await;
        if let Err(StoreError::Io(e)) = &r {
            if crate::space::is_no_space(e) {
                // Releasing the reserve unlinks a file: not on this worker.
                let space = self.space.clone();
                let _ = crate::blocking::run(move || {
                    Ok::<_, crate::blocking::TaskFailed>(space.enter_full())
                })
                .await;
            }
        }
        r
    }

    /// Removes a blob last committed before `cutoff` and not pinned,
    /// serialised with commits of the same digest; returns the bytes freed.
    pub async fn delete_if_older(
        &self,
        digest: &Digest,
        cutoff: std::time::SystemTime,
    ) -> Result<Option<u64>, StoreError> {
        let target = self.blob_path(digest);
        self.call_shard(digest, |reply| ShardMsg::DeleteIfOlder {
            target,
            cutoff,
            reply,
        })
        .await
    }

    async fn call_shard<T: Send + 'static>(
        &self,
        digest: &Digest,
        build: impl FnOnce(ractor::RpcReplyPort<io::Result<T>>) -> ShardMsg,
    ) -> Result<T, StoreError> {
        let shard = &self.shards[shard_of(digest, self.shards.len())];
        match shard.call(build, Some(self.call_timeout)).await {
            Ok(ractor::rpc::CallResult::Success(r)) => r.map_err(StoreError::Io),
            Ok(ractor::rpc::CallResult::Timeout) => {
                Err(StoreError::Unavailable("content store timed out".into()))
            }
            Ok(ractor::rpc::CallResult::SenderError) | Err(_) => {
                Err(StoreError::Unavailable("shard actor stopped".into()))
            }
        }
    }

    /// Every blob file: (digest, size, last commit). A directory walk, for
    /// garbage collection only; runs on the blocking pool.
    pub async fn list(&self) -> io::Result<Vec<(Digest, u64, std::time::SystemTime)>> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || list_blobs(&root))
            .await
            .map_err(|e| io::Error::other(e.to_string()))?
    }

    /// Stores a small in-memory blob (a manifest) whose digest the caller
    /// has computed: written to staging, synced, then committed like an
    /// upload, and pinned the same way.
    pub async fn put_bytes(
        &self,
        digest: &Digest,
        bytes: bytes::Bytes,
    ) -> Result<(Placement, Pin), StoreError> {
        // Through the shard, not a plain existence check: a manifest pushed
        // again while garbage collection runs must pin the blob (or find it
        // gone and write it anew), as an upload's commit does.
        let target = self.blob_path(digest);
        if let Some(pin) = self
            .call_shard(digest, |reply| ShardMsg::Touch { target, reply })
            .await?
        {
            return Ok((Placement::Deduplicated, pin));
        }
        self.space.check_writable()?;
        let staged = self
            .root
            .join("staging")
            .join(uuid::Uuid::new_v4().to_string());
        let fsync = self.fsync;
        let path = staged.clone();
        let space = self.space.clone();
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            use std::io::Write;
            let written = std::fs::File::create(&path).and_then(|mut f| {
                f.write_all(&bytes)?;
                if fsync {
                    f.sync_data()?;
                }
                Ok(())
            });
            if let Err(e) = &written {
                space.note(e);
                let _ = std::fs::remove_file(&path);
            }
            written
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))??;
        let r = self.place(digest, staged.clone()).await;
        if r.is_err() {
            let _ = tokio::fs::remove_file(&staged).await;
        }
        r
    }

    /// Opens a blob for reading on the blocking pool (open, stat, mmap or
    /// read all touch the disk); `None` when it does not exist.
    pub async fn open(&self, digest: &Digest) -> Result<Option<BlobBytes>, StoreError> {
        let path = self.blob_path(digest);
        tokio::task::spawn_blocking(move || BlobBytes::open(&path))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }

    /// Stops the shard actors after they finish the message at hand.
    pub async fn stop(&self) {
        for s in &self.shards {
            s.stop(None);
        }
        let joins = std::mem::take(&mut *self.joins.lock().unwrap_or_else(|p| p.into_inner()));
        for j in joins {
            let _ = j.await;
        }
    }
}

/// Walks `<blobs>/<alg>/<xx>/<hex>`; files that are not valid blob names
/// are skipped (fsck reports them).
pub fn list_blobs(blobs_root: &Path) -> io::Result<Vec<(Digest, u64, std::time::SystemTime)>> {
    let mut out = Vec::new();
    for alg in ["sha256", "sha512"] {
        let dir = blobs_root.join(alg);
        let Ok(prefixes) = std::fs::read_dir(&dir) else {
            continue;
        };
        for prefix in prefixes {
            let prefix = prefix?.path();
            if !prefix.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(&prefix)? {
                let f = f?;
                let name = f.file_name();
                let Some(name) = name.to_str() else { continue };
                let Ok(d) = Digest::parse(&format!("{alg}:{name}")) else {
                    continue;
                };
                let m = f.metadata()?;
                out.push((d, m.len(), m.modified()?));
            }
        }
    }
    Ok(out)
}

pub fn blob_path(blobs_root: &Path, digest: &Digest) -> PathBuf {
    let hex = digest.hex();
    blobs_root
        .join(digest.algorithm().as_str())
        .join(&hex[..2])
        .join(hex)
}

/// The digest is already uniformly distributed: its first bytes pick a shard.
fn shard_of(digest: &Digest, shards: usize) -> usize {
    let h = digest.hex().as_bytes();
    let mut v: usize = 0;
    for &b in &h[..8] {
        v = (v << 4) | (b as char).to_digit(16).unwrap_or(0) as usize;
    }
    v % shards
}
