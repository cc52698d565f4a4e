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

use super::client::{S3Client, S3Error};
use super::spill::Spill;
use super::sql::{db, now};
use crate::oci::RepoName;
use crate::upload::budget::MemoryBudget;
use crate::upload::midstate::Sha256Midstate;
use crate::upload::Refusal;
use std::path::PathBuf;
use uuid::Uuid;

use super::session_writer::Row;
pub use super::session_writer::SessionWriter;
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
    #[error(transparent)]
    Refused(#[from] Refusal),
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
    /// The node's scratch file for bytes below a part.
    #[error("upload scratch file: {0}")]
    Scratch(#[from] std::io::Error),
    /// Linking the blob would take a `[[quota]]` over its limit.
    #[error("{0}")]
    QuotaExceeded(String),
}

impl From<crate::blocking::TaskFailed> for RemoteUploadError {
    fn from(e: crate::blocking::TaskFailed) -> Self {
        RemoteUploadError::Unavailable(e.to_string())
    }
}

/// The uploads of every node, through the shared database and bucket.
#[derive(Clone)]
pub struct RemoteUploads {
    pub(super) s3: S3Client,
    pool: Pool,
    /// Sessions open at once across every node (`limits.max_upload_sessions`).
    max_sessions: i64,
    /// What parts in memory count against (`upload_memory_budget_mib`).
    pub(super) budget: MemoryBudget,
    /// `<root>/scratch`: requests' bytes below a part.
    scratch: PathBuf,
    /// The quotas a completion's link counts toward.
    pub(super) quotas: std::sync::Arc<crate::meta::quota::Quotas>,
}

impl RemoteUploads {
    pub fn new(
        s3: S3Client,
        pool: Pool,
        max_sessions: usize,
        budget: MemoryBudget,
        scratch: PathBuf,
        quotas: std::sync::Arc<crate::meta::quota::Quotas>,
    ) -> Self {
        RemoteUploads {
            s3,
            pool,
            max_sessions: i64::try_from(max_sessions).unwrap_or(i64::MAX),
            budget,
            scratch,
            quotas,
        }
    }

    pub fn s3(&self) -> &S3Client {
        &self.s3
    }

    pub(super) async fn sql<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut crate::meta::PgConnection) -> Result<T, RemoteUploadError> + Send + 'static,
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
            _ => return Err(RemoteUploadError::Refused(Refusal::Unknown)),
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
                    .ok_or(RemoteUploadError::Refused(Refusal::Unknown))?;
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
            held: Spill::new(self.scratch.clone()),
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
        let orphans = match self.abort_orphans(cutoff).await {
            Ok(n) => n,
            // A store without ListMultipartUploads, or a passing fault:
            // the next purge tries again; sessions' own aborts still run.
            Err(e) => {
                tracing::debug!(error = %e, "orphaned multipart uploads not listed");
                0
            }
        };
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
        Ok((dropped, n + orphans))
    }

    /// Aborts the multipart uploads under Wharf's prefix that no session
    /// and no queued deletion owns (a lost abort; a CreateMultipartUpload
    /// sent twice), once started before `cutoff`: a session records its
    /// upload id moments after creating it, so a young upload is left be.
    async fn abort_orphans(&self, cutoff: i64) -> Result<usize, RemoteUploadError> {
        let old: Vec<(String, String)> = self
            .s3
            .list_multipart_uploads("blobs/")
            .await?
            .into_iter()
            .filter(|(_, _, started)| (*started as i64) < cutoff)
            .map(|(key, id, _)| (key, id))
            .collect();
        if old.is_empty() {
            return Ok(0);
        }
        let ids: Vec<String> = old.iter().map(|(_, id)| id.clone()).collect();
        let owned: std::collections::HashSet<String> = self
            .sql(move |c| {
                let rows = c
                    .query(
                        "SELECT multipart_id FROM uploads WHERE multipart_id = ANY($1) \
                         UNION SELECT multipart_id FROM object_deletions WHERE multipart_id = ANY($1)",
                        &[&ids],
                    )
                    .map_err(db)?;
                Ok(rows.iter().map(|r| r.get(0)).collect())
            })
            .await?;
        let mut aborted = 0;
        for (key, id) in old.into_iter().filter(|(_, id)| !owned.contains(id)) {
            if self.s3.abort_multipart(&key, &id).await.is_ok() {
                tracing::info!(%key, upload_id = %id, "orphaned multipart upload aborted");
                aborted += 1;
            }
        }
        Ok(aborted)
    }
}

/// Queues an object (and its multipart upload, if any) for deletion after
/// `delay_secs`.
pub(crate) fn queue_deletion(
    t: &mut crate::meta::PgTransaction<'_>,
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
