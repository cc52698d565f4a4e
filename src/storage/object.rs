//! Blobs in an S3 bucket, indexed in PostgreSQL (`s3`): the session state
//! is a database row any node loads, its bytes a multipart upload, and a
//! repository sees a blob through its link joined to the `blobs` row.
//!
//! Owns: adapting `s3::ObjectBlobs` and `s3::RemoteUploads` to the
//! storage traits, and choosing between the node's read cache and the
//! bucket for a read. Must not: keep anything in the data folder but the
//! read cache's copies (it is only scratch in this mode; deleting it on a
//! node loses nothing acknowledged).

use super::read_cache::ReadCache;
use super::{
    slice_of, BlobContent, BlobRead, BlobRequest, BlobStorage, Completed, Hold, ManifestReader,
    StorageError, SweepPlan, UploadWriter,
};
use crate::content::Placement;
use crate::meta::Meta;
use crate::oci::{Digest, RepoName};
use crate::s3::objects::ObjectBlobs;
use crate::s3::uploads::RemoteUploads;
use crate::s3::uploads::SessionWriter;
use crate::s3::S3Error;
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::OwnedSemaphorePermit;

/// The bucket (through PostgreSQL), and this node's read cache of it.
pub struct BucketStorage {
    /// Where each digest's object is, reads, GC's sweep.
    pub blobs: ObjectBlobs,
    /// Upload sessions any node continues.
    pub uploads: RemoteUploads,
    pub cache: Option<Arc<ReadCache>>,
}

impl BucketStorage {
    /// The node's verified copy of `digest`, if it has one. The caller
    /// has checked that the blob exists and is `size` bytes.
    async fn cached(&self, digest: &Digest, size: u64) -> Option<Bytes> {
        let cache = self.cache.clone()?;
        let d = digest.clone();
        tokio::task::spawn_blocking(move || cache.read(&d, size))
            .await
            .ok()
            .flatten()
    }
}

#[async_trait]
impl BlobStorage for BucketStorage {
    fn check_writable(&self) -> Result<(), StorageError> {
        Ok(())
    }

    async fn sessions_open(&self) -> Result<usize, StorageError> {
        Ok(self.uploads.count().await?)
    }

    async fn begin_upload(&self, repo: &RepoName) -> Result<String, StorageError> {
        Ok(self.uploads.create(repo).await?.to_string())
    }

    async fn resume_upload(
        &self,
        repo: &RepoName,
        id: &str,
    ) -> Result<Box<dyn UploadWriter>, StorageError> {
        let w = self.uploads.open(repo, id).await?;
        Ok(Box::new(ObjectWriter {
            id: w.id().to_owned(),
            session: w,
        }))
    }

    async fn cancel_upload(&self, repo: &RepoName, id: &str) -> Result<(), StorageError> {
        Ok(self.uploads.discard(repo, id).await?)
    }

    async fn has_blob(&self, digest: &Digest) -> Result<bool, StorageError> {
        Ok(self.blobs.stored(digest).await?)
    }

    async fn read_blob(&self, request: BlobRequest) -> Result<BlobRead, StorageError> {
        let BlobRequest {
            repo,
            digest,
            range,
            head_only,
        } = &request;
        let (digest, head_only) = (digest, *head_only);
        let found = self
            .blobs
            .locate(repo, digest)
            .await?
            .ok_or(StorageError::BlobUnknown)?;
        let size = found.size;
        let (slice, partial) = slice_of(range.as_deref(), size)?;
        let content = if head_only || slice.is_empty() {
            BlobContent::Empty
        } else if self.blobs.redirect_reads() {
            BlobContent::Redirect(self.blobs.presign(&found.key).await?)
        } else if let Some(bytes) = self.cached(digest, size).await {
            BlobContent::Mapped(bytes.slice(slice.start as usize..slice.end as usize))
        } else {
            // A range is passed on as S3's own, so only the slice travels;
            // only a whole read can leave a copy behind.
            let range = partial.then(|| (slice.start, slice.end - 1));
            let stream = self.blobs.open(&found.key, range).await?.ok_or_else(|| {
                StorageError::Internal(format!(
                    "blob {digest} is indexed but its object is missing"
                ))
            })?;
            if stream.len != slice.len() {
                return Err(StorageError::Internal(format!(
                    "object for {digest} sent {} bytes, {} expected",
                    stream.len,
                    slice.len()
                )));
            }
            let fill = match (&self.cache, partial) {
                (Some(cache), false) => cache.begin_fill(digest, size),
                _ => None,
            };
            BlobContent::Stream(stream, fill)
        };
        Ok(BlobRead {
            size,
            slice,
            partial,
            content,
        })
    }

    async fn put_manifest(
        &self,
        digest: &Digest,
        bytes: Bytes,
    ) -> Result<(Placement, Hold), StorageError> {
        let commit = match self.blobs.put_small(digest, bytes).await? {
            true => Placement::Stored,
            false => Placement::Deduplicated,
        };
        Ok((commit, Hold::none()))
    }

    fn manifest_reader(&self) -> ManifestReader {
        let cache = self.cache.clone();
        Arc::new(move |d: &Digest, size| Ok(cache.as_ref().and_then(|c| c.read_if_held(d, size))))
    }

    async fn manifest_bytes(&self, digest: &Digest) -> Result<Option<Bytes>, StorageError> {
        let Some(found) = self.blobs.key_of(digest).await? else {
            return Ok(None);
        };
        if let Some(bytes) = self.cached(digest, found.size).await {
            return Ok(Some(bytes));
        }
        let bytes = self.blobs.read_small(&found.key).await?;
        if let (Some(cache), Some(b)) = (self.cache.clone(), bytes.clone()) {
            let d = digest.clone();
            // Verified and written on the blocking pool, off this answer's path.
            drop(tokio::task::spawn_blocking(move || cache.keep(&d, &b)));
        }
        Ok(bytes)
    }

    /// The database knows what is linked; a dry run also counts as gone
    /// the links and manifests the (not applied) earlier steps would drop.
    async fn sweep(&self, _meta: &Meta, plan: SweepPlan) -> Result<(usize, u64), StorageError> {
        let cutoff = plan
            .cutoff
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let (links, manifests) = match plan.dry_run {
            true => (
                plan.gone_links.into_iter().collect(),
                plan.gone_manifests.into_iter().collect(),
            ),
            false => (Vec::new(), Vec::new()),
        };
        Ok(self
            .blobs
            .sweep(cutoff, plan.dry_run, links, manifests)
            .await?)
    }

    async fn purge(&self, idle: Duration) -> usize {
        match self.uploads.purge(idle.as_secs()).await {
            Ok((sessions, objects)) => {
                if objects > 0 {
                    tracing::info!(objects, "deleted objects freed earlier");
                }
                sessions
            }
            Err(e) => {
                tracing::warn!(error = %e, "object-store purge failed; retrying later");
                0
            }
        }
    }

    async fn totals(&self) -> Result<(usize, u64), StorageError> {
        Ok(self.blobs.totals().await?)
    }

    async fn ready(&self) -> Result<(), String> {
        // Any answer but "unreachable" or "refused" will do.
        match self.uploads.s3().check_access().await {
            Err(e @ (S3Error::Unavailable(_) | S3Error::Refused(_))) => Err(e.to_string()),
            _ => Ok(()),
        }
    }

    async fn stop(&self) {}
}

/// A request's hold on a session in the database.
struct ObjectWriter {
    id: String,
    session: SessionWriter,
}

#[async_trait]
impl UploadWriter for ObjectWriter {
    fn id(&self) -> &str {
        &self.id
    }

    fn size(&self) -> u64 {
        self.session.size()
    }

    async fn feed(
        &mut self,
        chunks: Vec<Bytes>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<(), StorageError> {
        // The session gives the batch's budget back once its bytes are in
        // the scratch file, before any part waits for budget of its own.
        Ok(self.session.feed(chunks, permit).await?)
    }

    async fn save(&mut self) -> Result<u64, StorageError> {
        Ok(self.session.save().await?)
    }

    async fn complete(self: Box<Self>, digest: &Digest) -> Result<Completed, StorageError> {
        Ok(self.session.complete(digest).await?)
    }

    async fn abandon(self: Box<Self>) {
        let (uploads, repo) = (self.session.uploads().clone(), self.session.repo.clone());
        drop(self.session);
        let _ = uploads.discard(&repo, &self.id).await;
    }
}
