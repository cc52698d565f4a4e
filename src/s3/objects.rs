//! Blob bytes in the bucket, found through PostgreSQL: which object holds a
//! digest, small blobs (manifests) written whole, and the sweep that frees
//! objects no repository or manifest uses any more.
//!
//! Owns: the `blobs` table (digest -> object key) and the delayed deletion
//! of objects (`object_deletions`, shared with `uploads`).
//! Must not: list the bucket to learn anything (PostgreSQL is the index),
//! or call S3 inside a database transaction.

use super::client::{ObjectStream, PartBody, S3Client};
use super::sql::{db, now};
use super::uploads::{queue_deletion, Pool, RemoteUploadError};
use crate::oci::{Digest, RepoName};
use bytes::Bytes;

#[derive(Clone)]
pub struct ObjectBlobs {
    s3: S3Client,
    pool: Pool,
    /// Objects freed by garbage collection stay this long before they are
    /// deleted, so a read that looked the key up just before still works.
    delete_delay_secs: i64,
    redirect_reads: bool,
}

/// Where a repository's blob is: its size and object key.
pub struct Located {
    pub size: u64,
    pub key: String,
}

/// Blobs swept per transaction.
const SWEEP_BATCH: usize = 256;

impl ObjectBlobs {
    pub fn new(s3: S3Client, pool: Pool, delete_delay_secs: u64, redirect_reads: bool) -> Self {
        ObjectBlobs {
            s3,
            pool,
            delete_delay_secs: delete_delay_secs as i64,
            redirect_reads,
        }
    }

    pub fn redirect_reads(&self) -> bool {
        self.redirect_reads
    }

    async fn sql<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut crate::meta::PgConnection) -> Result<T, RemoteUploadError> + Send + 'static,
    ) -> Result<T, RemoteUploadError> {
        super::sql::blocking(&self.pool, f).await
    }

    /// The blob as `repo` may read it (linked there, and stored).
    pub async fn locate(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<Located>, RemoteUploadError> {
        let (r, d) = (repo.to_string(), digest.to_string());
        self.sql(move |c| {
            let row = c
                .query_opt(
                    "SELECT b.size, b.object_key FROM blob_links l JOIN blobs b ON b.digest = l.digest \
                     WHERE l.repo = $1 AND l.digest = $2",
                    &[&r, &d],
                )
                .map_err(db)?;
            Ok(row.map(|row| Located {
                size: row.get::<_, i64>(0) as u64,
                key: row.get(1),
            }))
        })
        .await
    }

    /// The object holding `digest`, whoever links it (manifest bytes).
    pub async fn key_of(&self, digest: &Digest) -> Result<Option<Located>, RemoteUploadError> {
        let d = digest.to_string();
        self.sql(move |c| {
            let row = c
                .query_opt(
                    "SELECT size, object_key FROM blobs WHERE digest = $1",
                    &[&d],
                )
                .map_err(db)?;
            Ok(row.map(|row| Located {
                size: row.get::<_, i64>(0) as u64,
                key: row.get(1),
            }))
        })
        .await
    }

    pub async fn open(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Option<ObjectStream>, RemoteUploadError> {
        Ok(self.s3.get_object(key, range).await?)
    }

    pub async fn presign(&self, key: &str) -> Result<String, RemoteUploadError> {
        Ok(self
            .s3
            .presign_get(key, std::time::Duration::from_secs(600))
            .await?)
    }

    /// Reads a small object whole (a manifest).
    pub async fn read_small(&self, key: &str) -> Result<Option<Bytes>, RemoteUploadError> {
        use http_body_util::BodyExt;
        let Some(o) = self.s3.get_object(key, None).await? else {
            return Ok(None);
        };
        let body = o
            .body
            .collect()
            .await
            .map_err(|e| RemoteUploadError::Unavailable(format!("object read: {e}")))?;
        Ok(Some(body.to_bytes()))
    }

    /// Stores a small blob (a manifest) under its digest. If the digest is
    /// stored already its row's time is refreshed instead (under the row
    /// lock GC takes too, so GC either sees the refresh and spares it, or
    /// deleted it first and this writes it anew).
    /// Returns whether this call stored the bytes (`false`: they were
    /// there already).
    pub async fn put_small(
        &self,
        digest: &Digest,
        bytes: Bytes,
    ) -> Result<bool, RemoteUploadError> {
        let d = digest.to_string();
        let touched = self
            .sql(move |c| {
                Ok(c.execute(
                    "UPDATE blobs SET created = $2 WHERE digest = $1",
                    &[&d, &now()],
                )
                .map_err(db)?
                    > 0)
            })
            .await?;
        if touched {
            return Ok(false);
        }
        let key = format!("blobs/{}", uuid::Uuid::new_v4());
        let size = bytes.len() as i64;
        self.s3.put_object(&key, PartBody::new([bytes])).await?;
        let (d, k) = (digest.to_string(), key.clone());
        self.sql(move |c| {
            let mut t = c.transaction().map_err(db)?;
            let kept: String = t
                .query_one(
                    "INSERT INTO blobs (digest, size, object_key, created) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (digest) DO UPDATE SET created = EXCLUDED.created RETURNING object_key",
                    &[&d, &size, &k, &now()],
                )
                .map_err(db)?
                .get(0);
            if kept != k {
                queue_deletion(&mut t, &k, None, 0)?;
            }
            t.commit().map_err(db)?;
            Ok(kept == k)
        })
        .await
    }

    /// Blobs and bytes indexed, across every node.
    pub async fn totals(&self) -> Result<(usize, u64), RemoteUploadError> {
        self.sql(|c| {
            let row = c
                .query_one(
                    "SELECT count(*), COALESCE(sum(size), 0)::BIGINT FROM blobs",
                    &[],
                )
                .map_err(db)?;
            Ok((row.get::<_, i64>(0) as usize, row.get::<_, i64>(1) as u64))
        })
        .await
    }

    /// Whether any object holds `digest` (mount checks).
    pub async fn stored(&self, digest: &Digest) -> Result<bool, RemoteUploadError> {
        Ok(self.key_of(digest).await?.is_some())
    }

    /// Garbage collection's last step in this mode: every blob row no link
    /// and no manifest uses, older than `cutoff`, is deleted and its object
    /// queued for deletion after the delay. Each row is locked and checked
    /// again in its batch's transaction, so a commit or manifest PUT that
    /// refreshes or links it meanwhile wins. Returns (blobs, bytes).
    /// `gone_links` and `gone_manifests` ((repository, digest) pairs) are
    /// what a dry run's earlier steps would have removed: counted as gone.
    pub async fn sweep(
        &self,
        cutoff: u64,
        dry_run: bool,
        gone_links: Vec<(String, String)>,
        gone_manifests: Vec<(String, String)>,
    ) -> Result<(usize, u64), RemoteUploadError> {
        let cutoff = cutoff as i64;
        let split = |pairs: Vec<(String, String)>| -> (Vec<String>, Vec<String>) {
            pairs.into_iter().unzip()
        };
        let ((lr, ld), (mr, md)) = (split(gone_links), split(gone_manifests));
        let candidates: Vec<(String, i64)> = self
            .sql(move |c| {
                let rows = c
                    .query(
                        "SELECT b.digest, b.size FROM blobs b WHERE b.created < $1 \
                         AND NOT EXISTS (SELECT 1 FROM blob_links l WHERE l.digest = b.digest \
                           AND (l.repo, l.digest) NOT IN (SELECT * FROM unnest($2::text[], $3::text[]))) \
                         AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.digest = b.digest \
                           AND (m.repo, m.digest) NOT IN (SELECT * FROM unnest($4::text[], $5::text[])))",
                        &[&cutoff, &lr, &ld, &mr, &md],
                    )
                    .map_err(db)?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            })
            .await?;
        if dry_run {
            let bytes = candidates.iter().map(|c| c.1 as u64).sum();
            return Ok((candidates.len(), bytes));
        }
        let delay = self.delete_delay_secs;
        self.sql(move |c| {
            let (mut n, mut bytes) = (0, 0u64);
            // A transaction per batch, not per blob: each commit is a WAL
            // flush, and one per blob made the sweep of 3,000 blobs take
            // most of a 21 s GC.
            for batch in candidates.chunks(SWEEP_BATCH) {
                let digests: Vec<&str> = batch.iter().map(|(d, _)| d.as_str()).collect();
                let mut t = c.transaction().map_err(db)?;
                // Locked in digest order, then checked again: a commit or a
                // manifest PUT that refreshed or linked one meanwhile wins.
                let rows = t
                    .query(
                        "SELECT digest, object_key, size, created FROM blobs \
                         WHERE digest = ANY($1) ORDER BY digest FOR UPDATE",
                        &[&digests],
                    )
                    .map_err(db)?;
                let used: std::collections::HashSet<String> = t
                    .query(
                        "SELECT digest FROM blob_links WHERE digest = ANY($1) \
                         UNION SELECT digest FROM manifests WHERE digest = ANY($1)",
                        &[&digests],
                    )
                    .map_err(db)?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                let mut gone: Vec<String> = Vec::new();
                for row in rows {
                    let (digest, key, size, created): (String, String, i64, i64) =
                        (row.get(0), row.get(1), row.get(2), row.get(3));
                    if created >= cutoff || used.contains(&digest) {
                        continue;
                    }
                    queue_deletion(&mut t, &key, None, delay)?;
                    bytes += size as u64;
                    gone.push(digest);
                }
                t.execute("DELETE FROM blobs WHERE digest = ANY($1)", &[&gone])
                    .map_err(db)?;
                t.commit().map_err(db)?;
                n += gone.len();
            }
            Ok((n, bytes))
        })
        .await
    }

    /// `wharf fsck` in this mode, beside live nodes: every stored blob's
    /// object exists with its size (and, `deep`, hashes to its digest), and
    /// no link, manifest or tag names content that is not there. Returns
    /// (blobs checked, their bytes, problems). Read-only.
    pub async fn check(
        &self,
        deep: bool,
        progress: &dyn crate::terminal::WorkProgress,
    ) -> Result<(usize, u64, Vec<String>), RemoteUploadError> {
        let rows: Vec<(String, String, i64)> = self
            .sql(|c| {
                let rows = c
                    .query(
                        "SELECT digest, object_key, size FROM blobs ORDER BY digest",
                        &[],
                    )
                    .map_err(db)?;
                Ok(rows
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2)))
                    .collect())
            })
            .await?;
        let mut problems = Vec::new();
        let bytes: u64 = rows.iter().map(|r| r.2.max(0) as u64).sum();
        progress.start(rows.len() as u64, bytes);
        for (digest, key, size) in &rows {
            let found = self.s3.head_object(key).await?;
            let problem = match found {
                None => Some(format!("blob {digest}: its object {key} is missing")),
                Some(n) if n != *size as u64 => Some(format!(
                    "blob {digest}: its object {key} is {n} bytes, {size} indexed"
                )),
                Some(_) if deep => self.rehash(digest, key).await?,
                Some(_) => None,
            };
            // GC may have freed it since the list was read: not damage.
            if let Some(p) = problem {
                if self.row_is(digest, key).await? {
                    problems.push(p);
                }
            }
            progress.advance(*size as u64);
        }
        progress.finish();
        let dangling = self
            .sql(|c| {
                let mut out = Vec::new();
                for (what, q) in [
                    (
                        "link",
                        "SELECT l.repo, l.digest FROM blob_links l \
                         WHERE NOT EXISTS (SELECT 1 FROM blobs b WHERE b.digest = l.digest)",
                    ),
                    (
                        "manifest",
                        "SELECT m.repo, m.digest FROM manifests m \
                         WHERE NOT EXISTS (SELECT 1 FROM blobs b WHERE b.digest = m.digest)",
                    ),
                    (
                        "tag",
                        "SELECT t.repo, t.tag || ' -> ' || t.digest FROM tags t WHERE NOT EXISTS \
                         (SELECT 1 FROM manifests m WHERE m.repo = t.repo AND m.digest = t.digest)",
                    ),
                ] {
                    for r in c.query(q, &[]).map_err(db)? {
                        let (repo, d): (String, String) = (r.get(0), r.get(1));
                        out.push(format!(
                            "{what} {repo} {d}: names content that is not stored"
                        ));
                    }
                }
                Ok(out)
            })
            .await?;
        problems.extend(dangling);
        Ok((rows.len(), bytes, problems))
    }

    async fn rehash(&self, digest: &str, key: &str) -> Result<Option<String>, RemoteUploadError> {
        let Ok(want) = Digest::parse(digest) else {
            return Ok(Some(format!("blob {digest}: not a digest")));
        };
        let Some(got) = self.s3.hash_object(key, want.algorithm()).await? else {
            return Ok(Some(format!("blob {digest}: its object {key} is missing")));
        };
        Ok((got != want).then(|| format!("blob {digest}: its object {key} hashes to {got}")))
    }

    /// Whether `digest` is still stored under `key`.
    async fn row_is(&self, digest: &str, key: &str) -> Result<bool, RemoteUploadError> {
        let (d, k) = (digest.to_owned(), key.to_owned());
        self.sql(move |c| {
            Ok(c.query_opt(
                "SELECT 1 FROM blobs WHERE digest = $1 AND object_key = $2",
                &[&d, &k],
            )
            .map_err(db)?
            .is_some())
        })
        .await
    }
}
