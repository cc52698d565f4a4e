//! Upload sessions any node can continue: the session's state lives in
//! PostgreSQL, its bytes in one S3 multipart upload whose parts are cut from
//! the request bodies as they stream through, hashed on the way.
//!
//! Owns: the `uploads` and `upload_tail` tables, the part-size schedule, the
//! session's object key (chosen at POST, never renamed or copied) and the
//! commit transaction that records the blob under its digest.
//! Must not: hold a database transaction open across an S3 call, or keep
//! anything between requests that another node would need.
//!
//! A request on a session (PATCH, PUT) loads the row, feeds the body
//! through the resumable hasher, uploads every part that fills, and at the
//! end of the request saves the new state with a compare-and-swap on the
//! row's version: two requests racing on one session cannot both win (the
//! loser answers 416 and its parts, never listed, vanish when the upload
//! completes). Bytes after the last whole part ("the tail") are written to
//! `upload_tail` at the end of each request, so a small PATCH costs work
//! proportional to the chunk; they become the next part's first bytes.
//! Part numbers are claimed one at a time from the row (`next_part`), so a
//! losing request can never overwrite a winner's part.

use super::client::{PartBody, S3Client, S3Error};
use super::sql::{db, now};
use crate::meta::{MetaError, MetaWrite};
use crate::oci::{Algorithm, Digest, RepoName};
use crate::upload::midstate::Sha256Midstate;
use bytes::Bytes;
use uuid::Uuid;

pub use crate::meta::PgPool as Pool;

/// Smallest part: above S3's 5 MiB floor, big enough that a layer of a few
/// hundred MiB is a few dozen requests.
const MIN_PART: u64 = 8 << 20;
/// S3's ceiling on a part and on the number of parts.
const MAX_PART: u64 = 5 << 30;
pub const MAX_PARTS: i32 = 10_000;

/// How many bytes the part that starts at `offset` holds: 8 MiB until
/// 12 GiB, then 1/1500 of what came before (rounded up to MiB), so parts
/// grow with the upload and a 1 TiB layer needs about 8,200 parts.
pub fn part_size(offset: u64) -> u64 {
    let grown = (offset / 1500).div_ceil(1 << 20) << 20;
    grown.clamp(MIN_PART, MAX_PART)
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteUploadError {
    #[error("upload session not found")]
    Unknown,
    #[error("chunk does not start at the session's offset {offset}")]
    OutOfOrder { offset: u64 },
    #[error("upload content hashes to {actual}, not {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("upload has used all {MAX_PARTS} parts")]
    TooManyParts,
    /// `limits.max_upload_sessions` are open across the cluster.
    #[error("too many upload sessions open")]
    TooManySessions,
    #[error(transparent)]
    S3(#[from] S3Error),
    /// The database cannot be reached or did not answer in time.
    #[error("upload state unavailable: {0}")]
    Unavailable(String),
    #[error("upload state: {0}")]
    Db(String),
}

impl From<crate::blocking::TaskFailed> for RemoteUploadError {
    fn from(e: crate::blocking::TaskFailed) -> Self {
        RemoteUploadError::Unavailable(e.to_string())
    }
}

/// The uploads of every node, through the shared database and bucket.
#[derive(Clone)]
pub struct RemoteUploads {
    s3: S3Client,
    pool: Pool,
    /// Sessions open at once across every node (`limits.max_upload_sessions`).
    max_sessions: i64,
}

/// A session's row as one request found it.
#[derive(Clone, Debug)]
struct Row {
    id: String,
    object_key: String,
    multipart_id: Option<String>,
    size: u64,
    midstate: Vec<u8>,
    part_numbers: Vec<i32>,
    part_etags: Vec<String>,
    part_bytes: u64,
    version: i64,
}

/// One request's hold on a session: what it loaded, plus what it fed.
pub struct SessionWriter {
    uploads: RemoteUploads,
    pub repo: RepoName,
    row: Row,
    hasher: Sha256Midstate,
    /// Bytes after the last part, in order: the stored tail (once loaded)
    /// then what this request fed.
    held: Vec<Bytes>,
    held_len: u64,
    /// Whether `held` starts with the stored tail (loaded to cut a part),
    /// in which case saving rewrites the tail instead of appending to it.
    tail_loaded: bool,
    /// The part being uploaded while the body is read on: (number, ETag).
    inflight: Option<tokio::task::JoinHandle<Result<(i32, String), RemoteUploadError>>>,
    /// Length of the stored tail (`size - part_bytes` when loaded).
    stored_tail: u64,
    size: u64,
}

/// What a completed upload became.
pub struct Committed {
    pub size: u64,
    /// Another upload of the same digest was recorded first; this one's
    /// object is queued for deletion.
    pub duplicate: bool,
}

impl RemoteUploads {
    pub fn new(s3: S3Client, pool: Pool, max_sessions: usize) -> Self {
        RemoteUploads {
            s3,
            pool,
            max_sessions: i64::try_from(max_sessions).unwrap_or(i64::MAX),
        }
    }

    pub fn s3(&self) -> &S3Client {
        &self.s3
    }

    async fn sql<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> Result<T, RemoteUploadError> + Send + 'static,
    ) -> Result<T, RemoteUploadError> {
        super::sql::blocking(&self.pool, f).await
    }

    /// Starts a session; its object key is fixed now.
    pub async fn create(&self, repo: &RepoName) -> Result<Uuid, RemoteUploadError> {
        let id = Uuid::new_v4();
        let (sid, r) = (id.to_string(), repo.to_string());
        let key = format!("blobs/{id}");
        let (mid, cap) = (Sha256Midstate::new().to_bytes(), self.max_sessions);
        // The cap is the cluster's, counted in the same statement as the
        // insert; nodes inserting at the same instant may pass it by a few.
        let inserted = self
            .sql(move |c| {
                c.execute(
                    "INSERT INTO uploads (id, repo, object_key, midstate, updated_at) \
                     SELECT $1, $2, $3, $4, $5 WHERE (SELECT count(*) FROM uploads) < $6",
                    &[&sid, &r, &key, &mid, &now(), &cap],
                )
                .map_err(db)
            })
            .await?;
        if inserted == 0 {
            return Err(RemoteUploadError::TooManySessions);
        }
        Ok(id)
    }

    /// Loads a session of `repo` for one request.
    pub async fn open(
        &self,
        repo: &RepoName,
        id: &str,
    ) -> Result<SessionWriter, RemoteUploadError> {
        // Only the canonical form handed out names a session, so braced
        // or upper-case spellings never alias one.
        let id = match Uuid::parse_str(id) {
            Ok(u) if u.hyphenated().to_string() == id => u,
            _ => return Err(RemoteUploadError::Unknown),
        };
        let (sid, r) = (id.to_string(), repo.to_string());
        let row = self
            .sql(move |c| {
                let row = c
                    .query_opt(
                        "SELECT object_key, multipart_id, size, midstate, part_numbers, part_etags, \
                         part_bytes, version FROM uploads WHERE id = $1 AND repo = $2",
                        &[&sid, &r],
                    )
                    .map_err(db)?
                    .ok_or(RemoteUploadError::Unknown)?;
                Ok(Row {
                    id: sid,
                    object_key: row.get(0),
                    multipart_id: row.get(1),
                    size: row.get::<_, i64>(2) as u64,
                    midstate: row.get(3),
                    part_numbers: row.get(4),
                    part_etags: row.get(5),
                    part_bytes: row.get::<_, i64>(6) as u64,
                    version: row.get(7),
                })
            })
            .await?;
        let hasher = Sha256Midstate::from_bytes(&row.midstate)
            .map_err(|e| RemoteUploadError::Db(e.to_string()))?;
        Ok(SessionWriter {
            uploads: self.clone(),
            repo: repo.clone(),
            size: row.size,
            stored_tail: row.size - row.part_bytes,
            row,
            hasher,
            held: Vec::new(),
            held_len: 0,
            tail_loaded: false,
            inflight: None,
        })
    }

    /// Ends a session: its row and tail go now, its multipart upload is
    /// aborted by the purge (no S3 call here, the caller may be answering).
    pub async fn discard(&self, repo: &RepoName, id: &str) -> Result<(), RemoteUploadError> {
        let w = self.open(repo, id).await?;
        let row = w.row.clone();
        self.sql(move |c| {
            let mut t = c.transaction().map_err(db)?;
            t.execute("DELETE FROM uploads WHERE id = $1", &[&row.id])
                .map_err(db)?;
            t.execute("DELETE FROM upload_tail WHERE id = $1", &[&row.id])
                .map_err(db)?;
            queue_deletion(&mut t, &row.object_key, row.multipart_id.as_deref(), 0)?;
            t.commit().map_err(db)
        })
        .await
    }

    /// Open sessions, across every node.
    pub async fn count(&self) -> Result<usize, RemoteUploadError> {
        self.sql(|c| {
            let row = c
                .query_one("SELECT count(*) FROM uploads", &[])
                .map_err(db)?;
            Ok(row.get::<_, i64>(0) as usize)
        })
        .await
    }

    /// Purge: sessions untouched for `idle_secs` are dropped (their objects
    /// queued), then queued objects whose time has come are deleted from S3
    /// (multipart uploads aborted) and forgotten. No S3 call happens inside
    /// a transaction. Returns (sessions dropped, objects deleted).
    pub async fn purge(&self, idle_secs: u64) -> Result<(usize, usize), RemoteUploadError> {
        let cutoff = now() - idle_secs as i64;
        let dropped = self
            .sql(move |c| {
                let mut t = c.transaction().map_err(db)?;
                let rows = t
                    .query(
                        "DELETE FROM uploads WHERE updated_at < $1 RETURNING id, object_key, multipart_id",
                        &[&cutoff],
                    )
                    .map_err(db)?;
                for r in &rows {
                    let id: String = r.get(0);
                    t.execute("DELETE FROM upload_tail WHERE id = $1", &[&id])
                        .map_err(db)?;
                    queue_deletion(&mut t, r.get(1), r.get(2), 0)?;
                }
                t.commit().map_err(db)?;
                Ok(rows.len())
            })
            .await?;
        let due: Vec<(String, Option<String>)> = self
            .sql(move |c| {
                // Claimed for five minutes by moving `not_before` on, so
                // the nodes' purges share the work without a transaction
                // held across the S3 calls; a node that dies mid-way leaves
                // its claims to come due again.
                let rows = c
                    .query(
                        "UPDATE object_deletions SET not_before = $1 + 300 WHERE object_key IN \
                         (SELECT object_key FROM object_deletions WHERE not_before <= $1 \
                          ORDER BY not_before LIMIT 1000 FOR UPDATE SKIP LOCKED) \
                         RETURNING object_key, multipart_id",
                        &[&now()],
                    )
                    .map_err(db)?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            })
            .await?;
        let mut deleted = Vec::new();
        for (key, mp) in due {
            let gone = match &mp {
                Some(m) => self.s3.abort_multipart(&key, m).await,
                None => Ok(()),
            };
            // A completed object under the key (or none) goes either way.
            if gone.is_ok() && self.s3.delete_object(&key).await.is_ok() {
                deleted.push(key);
            }
        }
        let n = deleted.len();
        if n > 0 {
            self.sql(move |c| {
                c.execute(
                    "DELETE FROM object_deletions WHERE object_key = ANY($1)",
                    &[&deleted],
                )
                .map_err(db)?;
                Ok(())
            })
            .await?;
        }
        Ok((dropped, n))
    }
}

/// Queues an object (and its multipart upload, if any) for deletion after
/// `delay_secs`.
pub(crate) fn queue_deletion(
    t: &mut postgres::Transaction<'_>,
    key: &str,
    multipart_id: Option<&str>,
    delay_secs: i64,
) -> Result<(), RemoteUploadError> {
    t.execute(
        "INSERT INTO object_deletions (object_key, multipart_id, not_before) VALUES ($1, $2, $3) \
         ON CONFLICT (object_key) DO NOTHING",
        &[&key, &multipart_id, &(now() + delay_secs)],
    )
    .map_err(db)?;
    Ok(())
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

    /// Adds body bytes: hashes them and uploads every part that fills.
    pub async fn feed(&mut self, chunks: Vec<Bytes>) -> Result<(), RemoteUploadError> {
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
        self.size += n;
        self.held_len += n;
        self.held.extend(chunks);
        while self.stored_tail + self.held_len >= part_size(self.row.part_bytes) {
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
        let mine = std::mem::take(&mut self.held);
        self.held = tail;
        self.held.extend(mine);
        self.held_len += self.stored_tail;
        self.stored_tail = 0;
        self.tail_loaded = true;
        Ok(())
    }

    /// Takes the first `n` held bytes, splitting a `Bytes` without copying.
    fn take_held(&mut self, n: u64) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut left = n as usize;
        while left > 0 && !self.held.is_empty() {
            let first = &mut self.held[0];
            if first.len() <= left {
                left -= first.len();
                out.push(self.held.remove(0));
            } else {
                out.push(first.split_to(left));
                left = 0;
            }
        }
        self.held_len -= n - left as u64;
        out
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
        let winner = winner.ok_or(RemoteUploadError::Unknown)?;
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
        self.load_tail().await?;
        let want = if last {
            self.held_len
        } else {
            part_size(self.row.part_bytes)
        };
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
                    .ok_or(RemoteUploadError::Unknown)?;
                Ok(r.get(0))
            })
            .await?;
        if number > MAX_PARTS {
            return Err(RemoteUploadError::TooManyParts);
        }
        let body = PartBody::new(self.take_held(want));
        // One part in flight while the body goes on being read: wait for
        // the previous one first, so memory stays at two parts a session.
        self.settle().await?;
        let (s3, key) = (self.uploads.s3.clone(), self.row.object_key.clone());
        self.inflight = Some(tokio::spawn(async move {
            let etag = s3
                .upload_part(&key, &upload_id, number as u16, body)
                .await?;
            Ok((number, etag))
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
        let (held, tail_loaded, start) = (
            concat(&self.held),
            self.tail_loaded,
            self.size - self.held_len,
        );
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
                        .ok_or(RemoteUploadError::Unknown)?;
                    return Err(RemoteUploadError::OutOfOrder {
                        offset: current.get::<_, i64>(0) as u64,
                    });
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
        self.held_len = 0;
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
    pub async fn commit(mut self, digest: &Digest) -> Result<Committed, RemoteUploadError> {
        let actual = Digest::sha256_from_bytes(&self.hasher.clone().finalize());
        if digest.algorithm() == Algorithm::Sha256 && &actual != digest {
            // What this request sent stays in the session.
            let _ = self.save().await;
            return Err(RemoteUploadError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
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
            return Err(RemoteUploadError::OutOfOrder {
                offset: self.row.size,
            });
        }
        // A part still in flight must be recorded before deciding between
        // one PutObject and completing the multipart upload.
        self.settle().await?;
        let key = self.row.object_key.clone();
        if self.row.part_numbers.is_empty() {
            self.load_tail().await?;
            let body = PartBody::new(std::mem::take(&mut self.held));
            self.uploads.s3.put_object(&key, body).await?;
        } else {
            if self.stored_tail + self.held_len > 0 {
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
                .await?;
            if hashed.as_ref() != Some(digest) {
                let repo = self.repo.clone();
                self.uploads.discard(&repo, &self.row.id).await?;
                return Err(RemoteUploadError::DigestMismatch {
                    expected: digest.clone(),
                    actual: hashed.unwrap_or(actual),
                });
            }
        }
        let (id, repo, d, size) = (
            self.row.id.clone(),
            self.repo.clone(),
            digest.clone(),
            self.size,
        );
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
                crate::meta::apply_in_postgres(&mut t, link)
                    .and_then(|applied| applied)
                    .map_err(|e| match e {
                        MetaError::Unavailable(m) => RemoteUploadError::Unavailable(m),
                        e => RemoteUploadError::Db(e.to_string()),
                    })?;
                // Purged meanwhile (idle past the timeout): its object is
                // queued for deletion, so it must not become the blob.
                if t.execute("DELETE FROM uploads WHERE id = $1", &[&id]).map_err(db)? == 0 {
                    return Err(RemoteUploadError::Unknown);
                }
                t.execute("DELETE FROM upload_tail WHERE id = $1", &[&id])
                    .map_err(db)?;
                t.commit().map_err(db)?;
                Ok(duplicate)
            })
            .await?;
        Ok(Committed {
            size: self.size,
            duplicate,
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

fn concat(chunks: &[Bytes]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunks.iter().map(|c| c.len()).sum());
    for c in chunks {
        out.extend_from_slice(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_grow_so_a_tebibyte_fits_in_ten_thousand() {
        let mut offset = 0u64;
        let mut parts = 0;
        let mut largest = 0;
        while offset < 1 << 40 {
            let p = part_size(offset);
            largest = largest.max(p);
            offset += p;
            parts += 1;
        }
        assert!(parts <= MAX_PARTS, "{parts} parts for 1 TiB");
        assert!(largest <= MAX_PART);
        assert_eq!(part_size(0), MIN_PART);
        assert_eq!(part_size(10 << 30), MIN_PART);
        assert!(part_size(100 << 30) > MIN_PART);
    }
}
