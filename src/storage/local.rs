//! Blobs in the data folder: upload sessions are this node's actors
//! (`upload`), committed blobs the content store's files (`store`), and a
//! repository sees a blob through its link in the metadata store.
//!
//! Owns: the order of a local commit (seal, move into the store, link,
//! end the session) and the file sweep of garbage collection.
//! Must not: block an async worker on file or metadata I/O (reads go to
//! the blocking pool in one trip), or hold a session's bytes itself.

use super::{
    slice_of, BlobContent, BlobRead, BlobRequest, BlobStorage, Completed, Hold, ManifestReader,
    StorageError, SweepPlan, UploadWriter,
};
use crate::content::{BlobBytes, ContentStore, Placement, StoreError};
use crate::meta::Meta;
use crate::oci::{Digest, RepoName};
use crate::space::DiskSpace;
use crate::upload::{PendingAppend, SessionHandle, UploadRegistry};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;

pub struct LocalStorage {
    uploads: Arc<UploadRegistry>,
    store: Arc<ContentStore>,
    meta: Meta,
    space: Arc<DiskSpace>,
    read_manifest: ManifestReader,
    /// `limits.max_upload_sessions`.
    max_sessions: usize,
}

impl LocalStorage {
    pub fn new(
        uploads: UploadRegistry,
        store: ContentStore,
        meta: Meta,
        space: Arc<DiskSpace>,
        max_sessions: usize,
    ) -> Self {
        let root = store.blobs_root();
        let read_manifest: ManifestReader = Arc::new(move |d: &Digest, _size| {
            Ok(BlobBytes::open(&crate::content::blob_path(&root, d))?.map(|b| b.bytes))
        });
        LocalStorage {
            read_manifest,
            uploads: Arc::new(uploads),
            store: Arc::new(store),
            meta,
            space,
            max_sessions,
        }
    }
}

/// Runs blocking file and metadata work on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    crate::blocking::run(f).await
}

#[async_trait]
impl BlobStorage for LocalStorage {
    fn check_writable(&self) -> Result<(), StorageError> {
        self.space.check_writable().map_err(StorageError::from)
    }

    async fn sessions_open(&self) -> Result<usize, StorageError> {
        Ok(self.uploads.len())
    }

    async fn begin_upload(&self, repo: &RepoName) -> Result<String, StorageError> {
        if self.uploads.len() >= self.max_sessions {
            return Err(StorageError::TooManySessions);
        }
        Ok(self.uploads.create(repo).await?.id.to_string())
    }

    async fn resume_upload(
        &self,
        repo: &RepoName,
        id: &str,
    ) -> Result<Box<dyn UploadWriter>, StorageError> {
        let session = self.uploads.get(repo, id)?;
        let size = session.received().await?;
        Ok(Box::new(LocalWriter {
            id: session.id.to_string(),
            session,
            size,
            pending: None,
            uploads: self.uploads.clone(),
            store: self.store.clone(),
            meta: self.meta.clone(),
        }))
    }

    async fn cancel_upload(&self, repo: &RepoName, id: &str) -> Result<(), StorageError> {
        let session = self.uploads.get(repo, id)?;
        Ok(self.uploads.discard(session.id).await?)
    }

    async fn has_blob(&self, digest: &Digest) -> Result<bool, StorageError> {
        let path = self.store.blob_path(digest);
        blocking(move || Ok(path.is_file())).await
    }

    async fn read_blob(&self, request: BlobRequest) -> Result<BlobRead, StorageError> {
        let (meta, path) = (self.meta.reader(), self.store.blob_path(&request.digest));
        // The link and the open in one trip to the pool.
        blocking(move || {
            let BlobRequest {
                repo,
                digest: d,
                range,
                head_only,
            } = request;
            let size = meta
                .blob_link(&repo, &d)?
                .ok_or(StorageError::BlobUnknown)?;
            let (slice, partial) = slice_of(range.as_deref(), size)?;
            let content = if head_only {
                BlobContent::Empty
            } else {
                let blob = BlobBytes::open(&path)?.ok_or(StorageError::BlobUnknown)?;
                if blob.len() != size {
                    return Err(StorageError::Internal(format!(
                        "blob {d} is {} bytes on disk, {size} in metadata",
                        blob.len()
                    )));
                }
                BlobContent::Mapped(blob.bytes.slice(slice.start as usize..slice.end as usize))
            };
            Ok(BlobRead {
                size,
                slice,
                partial,
                content,
            })
        })
        .await
    }

    async fn put_manifest(
        &self,
        digest: &Digest,
        bytes: Bytes,
    ) -> Result<(Placement, Hold), StorageError> {
        let (commit, pin) = self.store.put_bytes(digest, bytes).await?;
        Ok((commit, pin.into()))
    }

    async fn manifest_bytes(&self, digest: &Digest) -> Result<Option<Bytes>, StorageError> {
        let (read, d) = (self.read_manifest.clone(), digest.clone());
        blocking(move || read(&d, 0)).await
    }

    fn manifest_reader(&self) -> ManifestReader {
        self.read_manifest.clone()
    }

    async fn sweep(&self, meta: &Meta, plan: SweepPlan) -> Result<(usize, u64), StorageError> {
        let m = meta.clone();
        let (links, manifests) =
            blocking(move || Ok((m.read().all_blob_links()?, m.read().all_manifest_keys()?)))
                .await?;
        let mut alive: HashSet<String> = HashSet::new();
        for l in links {
            if !(plan.dry_run
                && plan
                    .gone_links
                    .contains(&(l.repo.clone(), l.digest.clone())))
            {
                alive.insert(l.digest);
            }
        }
        for (repo, d) in manifests {
            if !(plan.dry_run && plan.gone_manifests.contains(&(repo, d.clone()))) {
                alive.insert(d);
            }
        }
        let (mut blobs, mut bytes) = (0, 0);
        let files = self.store.list().await.map_err(StoreError::Io)?;
        for (digest, size, mtime) in files {
            if alive.contains(&digest.to_string()) || mtime >= plan.started {
                continue;
            }
            if plan.dry_run {
                blobs += 1;
                bytes += size;
            } else if let Some(freed) = self.store.delete_if_older(&digest, plan.started).await? {
                blobs += 1;
                bytes += freed;
            }
        }
        Ok((blobs, bytes))
    }

    async fn purge(&self, idle: Duration) -> usize {
        self.uploads.purge_idle(idle).await
    }

    async fn totals(&self) -> Result<(usize, u64), StorageError> {
        let blobs = self.store.list().await.map_err(StoreError::Io)?;
        Ok((blobs.len(), blobs.iter().map(|(_, size, _)| size).sum()))
    }

    async fn ready(&self) -> Result<(), String> {
        Ok(())
    }

    async fn stop(&self) {
        // Sessions keep their files: clients resume after the restart.
        self.uploads.stop_all().await;
        self.store.stop().await;
    }
}

/// A request's hold on a local session. At most one append is in flight:
/// the actor writes one batch while the handler reads the next.
struct LocalWriter {
    id: String,
    session: SessionHandle,
    /// Length including the append in flight.
    size: u64,
    pending: Option<PendingAppend>,
    uploads: Arc<UploadRegistry>,
    store: Arc<ContentStore>,
    meta: Meta,
}

impl LocalWriter {
    /// Waits for the append in flight.
    async fn settle(&mut self) -> Result<u64, StorageError> {
        if let Some(append) = self.pending.take() {
            self.size = append.wait().await?;
        }
        Ok(self.size)
    }
}

#[async_trait]
impl UploadWriter for LocalWriter {
    fn id(&self) -> &str {
        &self.id
    }

    fn size(&self) -> u64 {
        self.size
    }

    async fn feed(
        &mut self,
        chunks: Vec<Bytes>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<(), StorageError> {
        let at = self.settle().await?;
        let n: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        if n == 0 {
            return Ok(());
        }
        // The actor gives the budget back when the bytes are written, not
        // when this request next looks: a crowd of uploads all waiting for
        // budget must not sit on budget their finished writes still hold.
        self.pending = Some(self.session.append_later(at, chunks, permit)?);
        self.size = at + n;
        Ok(())
    }

    async fn save(&mut self) -> Result<u64, StorageError> {
        // The actor's file is the session's state: written is saved.
        self.settle().await
    }

    async fn complete(mut self: Box<Self>, digest: &Digest) -> Result<Completed, StorageError> {
        self.settle().await?;
        let sealed = self.session.seal(digest).await?;
        // The pin lives until the link is written.
        let (placement, _pin) = match self.store.place(digest, sealed.staged).await {
            Ok(c) => c,
            Err(e) => {
                let _ = self.session.unseal().await;
                return Err(e.into());
            }
        };
        let linked = self
            .meta
            .link_blob(&self.session.repo, digest, sealed.size)
            .await;
        // Either way the session is spent: its file now lives in the store.
        // A client retrying after a failed link starts over and deduplicates.
        let _ = self.uploads.discard(self.session.id).await;
        linked?;
        Ok(Completed {
            size: sealed.size,
            placement,
        })
    }

    async fn abandon(mut self: Box<Self>) {
        let _ = self.settle().await;
        let _ = self.uploads.discard(self.session.id).await;
    }
}
