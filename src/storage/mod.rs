//! The storage seam: where blob bytes and upload sessions live, behind one
//! trait with two implementations: the data folder (`local`: session
//! actors, the content store's shards, redb or PostgreSQL links) and an
//! S3 bucket indexed in PostgreSQL (`object`: any node continues any
//! upload).
//!
//! Owns: the `BlobStorage` and `UploadWriter` traits and what crosses them
//! (a blob read, a commit's outcome, a sweep's plan, the error).
//! Must not: speak HTTP (status codes and OCI error codes are the HTTP
//! layer's), or decide policy (size limits, session limits, the memory
//! budget): handlers do, then call in here.

pub mod check;
mod error;
pub mod local;
pub mod object;
pub mod read_cache;

pub use crate::content::{Completed, Placement};
use crate::meta::Meta;
use crate::oci::range::{ByteRange, RangeRequest};
use crate::oci::{Digest, RepoName};
use crate::s3::uploads::RemoteUploadError;
use crate::s3::ObjectStream;
use async_trait::async_trait;
use bytes::Bytes;
pub use error::StorageError;
use std::collections::HashSet;
use std::time::{Duration, SystemTime};
use tokio::sync::OwnedSemaphorePermit;

/// A blob read: its size, the slice served, and the bytes (or where to
/// find them).
/// A blob GET or HEAD: which blob, as which repository sees it, how much.
#[derive(Clone)]
pub struct BlobRequest {
    pub repo: RepoName,
    pub digest: Digest,
    /// The request's Range header, as sent.
    pub range: Option<String>,
    /// HEAD: the size, no bytes.
    pub head_only: bool,
}

pub struct BlobRead {
    pub size: u64,
    /// The slice of the blob this answer carries.
    pub slice: ByteRange,
    /// Whether the request asked for a range (206) or the whole (200).
    pub partial: bool,
    pub content: BlobContent,
}

pub enum BlobContent {
    /// HEAD, or an empty slice.
    Empty,
    /// The slice, mapped from the data folder (no copy).
    Mapped(Bytes),
    /// The slice as the object store sends it, and the node's copy to
    /// feed while it passes (a whole-blob read the read cache lacks).
    Stream(ObjectStream, Option<read_cache::CacheFill>),
    /// Fetch it from here instead (a presigned URL).
    Redirect(String),
}

/// Keeps bytes just stored out of garbage collection's reach until the
/// metadata naming them is written: the caller drops it after that write.
/// The data folder pins the blob in its shard; the object store needs
/// nothing (its sweep re-checks rows in the database's transaction).
pub struct Hold {
    _pin: Option<crate::content::Pin>,
}

impl Hold {
    pub fn none() -> Hold {
        Hold { _pin: None }
    }
}

impl From<crate::content::Pin> for Hold {
    fn from(pin: crate::content::Pin) -> Hold {
        Hold { _pin: Some(pin) }
    }
}

/// What garbage collection's last step may free: blobs nothing in `meta`
/// links or names as a manifest, last written before `cutoff` (the object
/// store) or before `started` (the data folder). A dry run
/// counts instead, leaving out what the earlier (not applied) steps would
/// have removed.
pub struct SweepPlan {
    /// The grace's cutoff.
    pub cutoff: SystemTime,
    /// When the collection started. The data folder frees bytes that
    /// nothing links or names if they were last committed before it:
    /// commits racing the sweep are pinned, so no grace is needed there,
    /// and space freed through the API comes back at the next collection.
    pub started: SystemTime,
    pub dry_run: bool,
    pub gone_links: HashSet<(String, String)>,
    pub gone_manifests: HashSet<(String, String)>,
}

/// Reads the bytes of a manifest (digest, size) this node holds as a
/// file, on a blocking thread (see `BlobStorage::manifest_reader`).
pub type ManifestReader = std::sync::Arc<
    dyn Fn(&Digest, u64) -> Result<Option<Bytes>, StorageError> + Send + Sync + 'static,
>;

/// Where a registry's blob bytes and upload sessions live.
#[async_trait]
pub trait BlobStorage: Send + Sync + 'static {
    /// Refuses a new write while the store cannot take one (the data
    /// folder's full-disk mode); deletes and GC still run.
    fn check_writable(&self) -> Result<(), StorageError>;

    /// Upload sessions open, for the gauge: this node's, or where sessions
    /// belong to no node, the cluster's (one query).
    async fn sessions_open(&self) -> Result<usize, StorageError>;

    /// Starts an upload session for `repo`; returns its id, or
    /// `TooManySessions` while `limits.max_upload_sessions` are open.
    async fn begin_upload(&self, repo: &RepoName) -> Result<String, StorageError>;

    /// Opens session `id` of `repo` to add bytes, report progress or
    /// complete it. An id that is not one of `repo`'s sessions is `Unknown`.
    async fn resume_upload(
        &self,
        repo: &RepoName,
        id: &str,
    ) -> Result<Box<dyn UploadWriter>, StorageError>;

    /// Ends session `id` of `repo` and frees what it stored.
    async fn cancel_upload(&self, repo: &RepoName, id: &str) -> Result<(), StorageError>;

    /// Whether the bytes of `digest` are stored (a mount's second check,
    /// after the source repository's link).
    async fn has_blob(&self, digest: &Digest) -> Result<bool, StorageError>;

    /// Reads a blob as the asking repository may see it (linked there).
    async fn read_blob(&self, request: BlobRequest) -> Result<BlobRead, StorageError>;

    /// Stores a manifest's bytes under their digest (kept once). Hold the
    /// answer's [`Hold`] until the manifest's row is written.
    async fn put_manifest(
        &self,
        digest: &Digest,
        bytes: Bytes,
    ) -> Result<(Placement, Hold), StorageError>;

    /// A stored manifest's bytes.
    async fn manifest_bytes(&self, digest: &Digest) -> Result<Option<Bytes>, StorageError>;

    /// A blocking reader of the manifests this node holds as files (the
    /// data folder; the object store's read cache), so a manifest GET
    /// resolves its reference and reads its bytes in one trip to the
    /// blocking pool (manifest GETs are the hottest small request a
    /// registry serves). Its `None` means "not held here": ask
    /// `manifest_bytes`.
    fn manifest_reader(&self) -> ManifestReader;

    /// Garbage collection's last step: frees what `plan` allows; returns
    /// (blobs, bytes).
    async fn sweep(&self, meta: &Meta, plan: SweepPlan) -> Result<(usize, u64), StorageError>;

    /// Ends sessions idle for `idle` and finishes delayed deletions;
    /// returns how many sessions ended.
    async fn purge(&self, idle: Duration) -> usize;

    /// Blobs and bytes stored, for the gauges at start-up.
    async fn totals(&self) -> Result<(usize, u64), StorageError>;

    /// Whether the store answers (`/readyz`).
    async fn ready(&self) -> Result<(), String>;

    /// Stops what runs in the background, keeping what clients may resume.
    async fn stop(&self);
}

/// One request's hold on an upload session.
#[async_trait]
pub trait UploadWriter: Send {
    fn id(&self) -> &str;

    /// The session's length, counting bytes fed and not yet settled.
    fn size(&self) -> u64;

    /// Adds the next bytes of the session. They may be written while the
    /// caller reads on (`permit` is held until they are); an error from
    /// writing them surfaces from this call, the next one, or `save`.
    async fn feed(
        &mut self,
        chunks: Vec<Bytes>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<(), StorageError>;

    /// Settles what was fed and makes it resumable from any node that can
    /// reach the session; returns the session's length.
    async fn save(&mut self) -> Result<u64, StorageError>;

    /// Verifies the content against `digest`, stores it under the digest,
    /// links it to the session's repository and ends the session.
    async fn complete(self: Box<Self>, digest: &Digest) -> Result<Completed, StorageError>;

    /// Ends the session without a blob (a one-request push that failed:
    /// there is no session the client could resume).
    async fn abandon(self: Box<Self>);
}

/// The storage the configuration names: the S3 bucket (indexed in the
/// PostgreSQL behind `pg`, which the configuration's validation requires
/// in that mode) or the data folder under `config.root`.
pub async fn open_configured(
    config: &crate::config::Config,
    meta: &Meta,
    pg: Option<crate::s3::uploads::Pool>,
    space: std::sync::Arc<crate::space::DiskSpace>,
    cache_metrics: crate::metrics::ReadCacheMetrics,
    budget: crate::upload::budget::MemoryBudget,
) -> Result<std::sync::Arc<dyn BlobStorage>, StorageError> {
    if let (Some(s3), Some(pool), crate::config::StorageBackend::S3) =
        (&config.storage.s3, pg, config.storage.backend)
    {
        let settings = crate::s3::S3Settings::from_config(s3)?;
        let client = crate::s3::S3Client::new(&settings).map_err(RemoteUploadError::S3)?;
        // A refused credential is the operator's to fix: said now, at
        // start-up, rather than as every push's 503. An unreachable store
        // is not: the node starts and is ready when the store is back.
        if let Err(e @ crate::s3::S3Error::Refused(_)) = client.check_bucket().await {
            return Err(StorageError::Unavailable(format!(
                "bucket {:?} at {}: {e}",
                settings.bucket, settings.endpoint
            )));
        }
        let blobs = crate::s3::objects::ObjectBlobs::new(
            client.clone(),
            pool.clone(),
            s3.delete_delay_secs,
            s3.redirect_reads,
        );
        // Bytes below a part wait in files here, not in memory.
        let scratch = config.root.join("scratch");
        let dir = scratch.clone();
        crate::blocking::run(move || crate::s3::spill::prepare(&dir)).await?;
        let uploads = crate::s3::uploads::RemoteUploads::new(
            client,
            pool,
            config.limits.max_upload_sessions,
            budget,
            scratch,
            meta.quotas(),
        );
        let cache = match s3.read_cache_mib {
            0 => None,
            mib => {
                let root = config.root.clone();
                let cache = crate::blocking::run(move || -> Result<_, StorageError> {
                    Ok(read_cache::ReadCache::open(
                        &root,
                        mib << 20,
                        space,
                        cache_metrics,
                    )?)
                })
                .await?;
                Some(std::sync::Arc::new(cache))
            }
        };
        return Ok(std::sync::Arc::new(object::BucketStorage {
            blobs,
            uploads,
            cache,
        }));
    }
    let store = crate::content::ContentStore::start(
        &config.root,
        config.store_shards,
        config.fsync,
        config.actor_call_timeout(),
        space.clone(),
    )
    .await?;
    let uploads = crate::upload::UploadRegistry::start(
        &config.root,
        config.fsync,
        config.actor_call_timeout(),
        space.clone(),
    )
    .await?;
    Ok(std::sync::Arc::new(local::LocalStorage::new(
        uploads,
        store,
        meta.clone(),
        space,
        config.limits.max_upload_sessions,
    )))
}

/// Resolves a Range header against a blob's size: the slice, and whether
/// it is partial. Both implementations serve ranges this one way.
pub fn slice_of(range: Option<&str>, size: u64) -> Result<(ByteRange, bool), StorageError> {
    match range.map_or(RangeRequest::Whole, |r| ByteRange::resolve(r, size)) {
        RangeRequest::Whole => Ok((
            ByteRange {
                start: 0,
                end: size,
            },
            false,
        )),
        RangeRequest::Partial(r) => Ok((r, true)),
        RangeRequest::Unsatisfiable => Err(StorageError::RangeNotSatisfiable { size }),
    }
}
