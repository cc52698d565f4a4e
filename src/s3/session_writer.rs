//! One request's hold on an object-store upload session
//! (`SessionWriter`): the row it loaded, the bytes it holds below a part,
//! the part in flight, and the commit (see `uploads` for the protocol).
//!
//! Owns: cutting parts from what a request feeds, saving the row with its
//! version check, completing the multipart upload and the commit
//! transaction.
//! Must not: hold a database transaction across an S3 call.

use super::client::PartBody;
use super::spill::Spill;
use super::sql::{db, now};
use super::uploads::{part_size, queue_deletion, RemoteUploadError, RemoteUploads, MAX_PARTS};
use crate::content::{Completed, Placement};
use crate::meta::{MetaError, MetaWrite};
use crate::oci::{Algorithm, Digest, RepoName};
use crate::upload::midstate::Sha256Midstate;
use crate::upload::Refusal;
use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;

/// A session's row as one request found it.
#[derive(Clone, Debug)]
pub(super) struct Row {
    pub(super) id: String,
    pub(super) object_key: String,
    pub(super) multipart_id: Option<String>,
    pub(super) size: u64,
    pub(super) midstate: Vec<u8>,
    pub(super) part_numbers: Vec<i32>,
    pub(super) part_etags: Vec<String>,
    pub(super) part_bytes: u64,
    pub(super) version: i64,
}

/// One request's hold on a session: what it loaded, plus what it fed.
pub struct SessionWriter {
    pub(super) uploads: RemoteUploads,
    pub repo: RepoName,
    pub(super) row: Row,
    pub(super) hasher: Sha256Midstate,
    /// Bytes after the last part, in order: the stored tail (once loaded)
    /// then what this request fed, in a scratch file (not memory).
    pub(super) held: Spill,
    /// Whether `held` starts with the stored tail (loaded to cut a part),
    /// in which case saving rewrites the tail instead of appending to it.
    pub(super) tail_loaded: bool,
    /// The part being uploaded while the body is read on: (number, ETag).
    /// Its task holds the part's memory budget until the store answers.
    pub(super) inflight: Option<tokio::task::JoinHandle<Result<(i32, String), RemoteUploadError>>>,
    /// Length of the stored tail (`size - part_bytes` when loaded).
    pub(super) stored_tail: u64,
    pub(super) size: u64,
}

impl SessionWriter {
    pub fn id(&self) -> &str {
        &self.row.id
    }

    pub fn uploads(&self) -> &RemoteUploads {
        &self.uploads
    }

    /// Bytes the session holds, including what this request fed.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Adds body bytes: hashes them, puts them in the scratch file, gives
    /// their memory budget (`permit`) back, then uploads every part that
    /// fills. The permit goes before a part waits for budget of its own,
    /// so no request waits for memory while holding some.
    pub async fn feed(
        &mut self,
        chunks: Vec<Bytes>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<(), RemoteUploadError> {
        let n: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        if n == 0 {
            return Ok(());
        }
        let mut hasher = std::mem::take(&mut self.hasher);
        let hashed = chunks.clone();
        self.hasher = tokio::task::spawn_blocking(move || {
            for c in &hashed {
                hasher.update(c);
            }
            hasher
        })
        .await
        .map_err(|e| RemoteUploadError::Unavailable(format!("hash task: {e}")))?;
        self.held.push(chunks).await?;
        drop(permit);
        self.size += n;
        while self.stored_tail + self.held.len() >= part_size(self.row.part_bytes) {
            self.cut_part(false).await?;
        }
        Ok(())
    }

    async fn load_tail(&mut self) -> Result<(), RemoteUploadError> {
        if self.tail_loaded {
            return Ok(());
        }
        let id = self.row.id.clone();
        let tail: Vec<Bytes> = if self.stored_tail == 0 {
            Vec::new()
        } else {
            self.uploads
                .sql(move |c| {
                    let rows = c
                        .query(
                            "SELECT data FROM upload_tail WHERE id = $1 ORDER BY at",
                            &[&id],
                        )
                        .map_err(db)?;
                    Ok(rows
                        .iter()
                        .map(|r| Bytes::from(r.get::<_, Vec<u8>>(0)))
                        .collect())
                })
                .await?
        };
        let len: u64 = tail.iter().map(|b| b.len() as u64).sum();
        if len != self.stored_tail {
            return Err(RemoteUploadError::Db(format!(
                "stored tail holds {len} bytes, expected {}",
                self.stored_tail
            )));
        }
        self.held.prepend(tail).await?;
        self.stored_tail = 0;
        self.tail_loaded = true;
        Ok(())
    }

    async fn multipart_id(&mut self) -> Result<String, RemoteUploadError> {
        if let Some(m) = &self.row.multipart_id {
            return Ok(m.clone());
        }
        let created = self
            .uploads
            .s3
            .create_multipart(&self.row.object_key)
            .await?;
        let (id, mine) = (self.row.id.clone(), created.clone());
        // Recorded at once (not at save): a racing request on this session
        // must reuse it, or its parts would land in an upload nobody lists.
        let winner: Option<String> = self
            .uploads
            .sql(move |c| {
                c.execute(
                    "UPDATE uploads SET multipart_id = $2 WHERE id = $1 AND multipart_id IS NULL",
                    &[&id, &mine],
                )
                .map_err(db)?;
                let row = c
                    .query_opt("SELECT multipart_id FROM uploads WHERE id = $1", &[&id])
                    .map_err(db)?;
                Ok(row.and_then(|r| r.get(0)))
            })
            .await?;
        let winner = winner.ok_or(RemoteUploadError::Refused(Refusal::Unknown))?;
        if winner != created {
            let _ = self
                .uploads
                .s3
                .abort_multipart(&self.row.object_key, &created)
                .await;
        }
        self.row.multipart_id = Some(winner.clone());
        Ok(winner)
    }

    /// Uploads the next part from the held bytes (the last part, of any
    /// size, when `last`).
    async fn cut_part(&mut self, last: bool) -> Result<(), RemoteUploadError> {
        // One part of this session in memory at a time, under the budget:
        // the previous part is sent first, then this one's memory is
        // waited for (a crowd of pushes queues here, not at the store).
        self.settle().await?;
        let want = match last {
            true => self.stored_tail + self.held.len(),
            false => part_size(self.row.part_bytes),
        };
        let budget = &self.uploads.budget;
        let permit = budget
            .take(budget.kib_for(want as usize))
            .await
            .map_err(|e| RemoteUploadError::Unavailable(e.to_string()))?;
        self.load_tail().await?;
        let upload_id = self.multipart_id().await?;
        let id = self.row.id.clone();
        let number: i32 = self
            .uploads
            .sql(move |c| {
                let r = c
                    .query_opt(
                        "UPDATE uploads SET next_part = next_part + 1 WHERE id = $1 RETURNING next_part",
                        &[&id],
                    )
                    .map_err(db)?
                    .ok_or(RemoteUploadError::Refused(Refusal::Unknown))?;
                Ok(r.get(0))
            })
            .await?;
        if number > MAX_PARTS {
            return Err(RemoteUploadError::TooManyParts);
        }
        let body = PartBody::new([self.held.take(want).await?]);
        let (s3, key) = (self.uploads.s3.clone(), self.row.object_key.clone());
        self.inflight = Some(tokio::spawn(async move {
            let etag = s3.upload_part(&key, &upload_id, number as u16, body).await;
            drop(permit);
            Ok((number, etag?))
        }));
        self.row.part_bytes += want;
        Ok(())
    }

    /// Waits for the part in flight, if any, and records it.
    async fn settle(&mut self) -> Result<(), RemoteUploadError> {
        if let Some(part) = self.inflight.take() {
            let (number, etag) = part
                .await
                .map_err(|e| RemoteUploadError::Unavailable(format!("part upload task: {e}")))??;
            self.row.part_numbers.push(number);
            self.row.part_etags.push(etag);
        }
        Ok(())
    }

    /// Saves the session at the end of a request; returns its size. Fails
    /// with `OutOfOrder` if another request changed the session first.
    /// Afterwards this writer stands where a fresh `open` would.
    pub async fn save(&mut self) -> Result<u64, RemoteUploadError> {
        self.settle().await?;
        let size = self.size;
        let row = self.row.clone();
        let mid = self.hasher.to_bytes();
        let budget = &self.uploads.budget;
        let _permit = budget
            .take(budget.kib_for(self.held.len() as usize))
            .await
            .map_err(|e| RemoteUploadError::Unavailable(e.to_string()))?;
        let start = self.size - self.held.len();
        // The read's own buffer, not a copy of it.
        let held = Vec::from(self.held.take(self.held.len()).await?);
        let tail_loaded = self.tail_loaded;
        self.uploads
            .sql(move |c| {
                let mut t = c.transaction().map_err(db)?;
                let updated = t
                    .execute(
                        "UPDATE uploads SET size = $3, midstate = $4, part_numbers = $5, part_etags = $6, \
                         part_bytes = $7, version = version + 1, updated_at = $8 \
                         WHERE id = $1 AND version = $2",
                        &[
                            &row.id,
                            &row.version,
                            &(size as i64),
                            &mid,
                            &row.part_numbers,
                            &row.part_etags,
                            &(row.part_bytes as i64),
                            &now(),
                        ],
                    )
                    .map_err(db)?;
                if updated == 0 {
                    drop(t);
                    let current = c
                        .query_opt("SELECT size FROM uploads WHERE id = $1", &[&row.id])
                        .map_err(db)?
                        .ok_or(RemoteUploadError::Refused(Refusal::Unknown))?;
                    return Err(RemoteUploadError::Refused(Refusal::OutOfOrder {
                        offset: current.get::<_, i64>(0) as u64,
                    }));
                }
                if tail_loaded {
                    t.execute("DELETE FROM upload_tail WHERE id = $1", &[&row.id])
                        .map_err(db)?;
                }
                if !held.is_empty() {
                    t.execute(
                        "INSERT INTO upload_tail (id, at, data) VALUES ($1, $2, $3)",
                        &[&row.id, &(start as i64), &held],
                    )
                    .map_err(db)?;
                }
                t.commit().map_err(db)?;
                Ok(size)
            })
            .await?;
        self.row.version += 1;
        self.row.size = size;
        self.held.clear();
        self.tail_loaded = false;
        self.stored_tail = size - self.row.part_bytes;
        Ok(size)
    }

    /// Completes the upload as `digest`: verifies the hash, writes the
    /// last part (or the whole blob as one PutObject when it never filled a
    /// part), completes the multipart upload, then in one transaction
    /// records the blob under its digest, links it to the repository and
    /// ends the session. The session is claimed (version bump) before any
    /// S3 call, so a racing request cannot complete it twice.
    ///
    /// The running hash is SHA-256 (the algorithm nearly every push uses).
    /// A digest in another algorithm is checked by streaming the completed
    /// object back; on a mismatch that object is queued for deletion and
    /// the session ends (its parts are spent).
    pub async fn complete(mut self, digest: &Digest) -> Result<Completed, RemoteUploadError> {
        let actual = Digest::sha256_from_bytes(&self.hasher.clone().finalize());
        if digest.algorithm() == Algorithm::Sha256 && &actual != digest {
            // What this request sent stays in the session.
            let _ = self.save().await;
            return Err(RemoteUploadError::Refused(Refusal::DigestMismatch {
                expected: digest.clone(),
                actual,
            }));
        }
        let (id, version) = (self.row.id.clone(), self.row.version);
        let claimed = self
            .uploads
            .sql(move |c| {
                Ok(c.execute(
                    "UPDATE uploads SET version = version + 1, updated_at = $3 \
                     WHERE id = $1 AND version = $2",
                    &[&id, &version, &now()],
                )
                .map_err(db)?
                    == 1)
            })
            .await?;
        if !claimed {
            return Err(RemoteUploadError::Refused(Refusal::OutOfOrder {
                offset: self.row.size,
            }));
        }
        // A part still in flight must be recorded before deciding between
        // one PutObject and completing the multipart upload.
        self.settle().await?;
        let key = self.row.object_key.clone();
        if self.row.part_numbers.is_empty() {
            let budget = &self.uploads.budget;
            let len = self.stored_tail + self.held.len();
            let _permit = budget
                .take(budget.kib_for(len as usize))
                .await
                .map_err(|e| RemoteUploadError::Unavailable(e.to_string()))?;
            self.load_tail().await?;
            let body = PartBody::new([self.held.take(len).await?]);
            self.uploads.s3.put_object(&key, body).await?;
        } else {
            if self.stored_tail + self.held.len() > 0 {
                self.cut_part(true).await?;
            }
            self.settle().await?;
            let upload_id = self.multipart_id().await?;
            let mut parts: Vec<(i32, String)> = self
                .row
                .part_numbers
                .iter()
                .copied()
                .zip(self.row.part_etags.iter().cloned())
                .collect();
            parts.sort_by_key(|p| p.0);
            let numbered: Vec<(u16, String)> =
                parts.into_iter().map(|(n, e)| (n as u16, e)).collect();
            self.uploads
                .s3
                .complete_multipart(&key, &upload_id, &numbered)
                .await?;
        }
        if digest.algorithm() != Algorithm::Sha256 {
            let hashed = self
                .uploads
                .s3
                .hash_object(&key, digest.algorithm())
                .await?
                // Just completed, yet not readable: the store's trouble.
                .ok_or_else(|| {
                    RemoteUploadError::Unavailable(format!(
                        "completed object {key} is not readable"
                    ))
                })?;
            if &hashed != digest {
                let repo = self.repo.clone();
                self.uploads.discard(&repo, &self.row.id).await?;
                return Err(RemoteUploadError::Refused(Refusal::DigestMismatch {
                    expected: digest.clone(),
                    actual: hashed,
                }));
            }
        }
        let (id, repo, d, size) = (
            self.row.id.clone(),
            self.repo.clone(),
            digest.clone(),
            self.size,
        );
        let quotas = self.uploads.quotas.clone();
        let duplicate = self
            .uploads
            .sql(move |c| {
                let mut t = c.transaction().map_err(db)?;
                let (digest_text, now) = (d.to_string(), now());
                // The upsert locks the digest's row, so GC (which locks it
                // before deleting) and this commit are ordered.
                let kept: String = t
                    .query_one(
                        "INSERT INTO blobs (digest, size, object_key, created) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (digest) DO UPDATE SET created = greatest(blobs.created, EXCLUDED.created) \
                         RETURNING object_key",
                        &[&digest_text, &(size as i64), &key, &now],
                    )
                    .map_err(db)?
                    .get(0);
                let duplicate = kept != key;
                if duplicate {
                    queue_deletion(&mut t, &key, None, 0)?;
                }
                // The link is the metadata rules' to write, in this transaction.
                let link = vec![MetaWrite::LinkBlob { repo, digest: d, size }];
                crate::meta::apply_in_postgres(&mut t, link, &quotas)
                    .and_then(|applied| applied)
                    .map_err(|e| match e {
                        MetaError::Unavailable(m) => RemoteUploadError::Unavailable(m),
                        // The session stays: the client may free room and
                        // complete it again.
                        MetaError::QuotaExceeded(m) => RemoteUploadError::QuotaExceeded(m),
                        e => RemoteUploadError::Db(e.to_string()),
                    })?;
                // Purged meanwhile (idle past the timeout): its object is
                // queued for deletion, so it must not become the blob.
                if t.execute("DELETE FROM uploads WHERE id = $1", &[&id]).map_err(db)? == 0 {
                    return Err(RemoteUploadError::Refused(Refusal::Unknown));
                }
                t.execute("DELETE FROM upload_tail WHERE id = $1", &[&id])
                    .map_err(db)?;
                t.commit().map_err(db)?;
                Ok(duplicate)
            })
            .await?;
        // Another upload of the same digest was recorded first: this
        // one's object is queued for deletion.
        Ok(Completed {
            size: self.size,
            placement: match duplicate {
                true => Placement::Deduplicated,
                false => Placement::Stored,
            },
        })
    }
}

impl Drop for SessionWriter {
    /// A request that ends early (client gone, error) stops its part
    /// upload; the part was never recorded, so nothing refers to it.
    fn drop(&mut self) {
        if let Some(part) = self.inflight.take() {
            part.abort();
        }
    }
}
