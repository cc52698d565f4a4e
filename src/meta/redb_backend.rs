//! The embedded default backend: one redb file.
//!
//! ```text
//! repos       repo                       -> created (unix s)
//! blob_links  (repo, digest)             -> (size, linked_at)
//! manifests   (repo, digest)             -> ManifestRecord (JSON)
//! tags        (repo, tag)                -> digest
//! referrers   (repo, subject, referrer)  -> ()
//! refs        (digest, repo, manifest)   -> ()   blob or child manifest
//!                                               `digest` is used by `manifest`
//! pulls       (repo, digest)             -> last pulled (unix s)
//! ```
//! Keys sort bytewise, so tag and repository listings are range scans in
//! order, with no directory walk and no sort per request.

use super::redb_file::SpaceAwareFile;
use super::redb_rows::RedbRows;
use super::rules;
use super::{BlobLink, ManifestRecord, MetaBackend, MetaError, MetaRead, MetaWrite, Page};
use crate::oci::{Digest, RepoName};
use crate::space::DiskSpace;
use redb::{
    Database, Durability, ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

pub(super) const REPOS: TableDefinition<&str, u64> = TableDefinition::new("repos");
pub(super) const BLOB_LINKS: TableDefinition<(&str, &str), (u64, u64)> =
    TableDefinition::new("blob_links");
pub(super) const MANIFESTS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("manifests");
pub(super) const TAGS: TableDefinition<(&str, &str), &str> = TableDefinition::new("tags");
/// (repo, digest, tag): `TAGS` the other way round, so a manifest's tags
/// are a range read, not a scan of its repository's tags.
pub(super) const TAGS_BY_DIGEST: TableDefinition<(&str, &str, &str), ()> =
    TableDefinition::new("tags_by_digest");
pub(super) const REFERRERS: TableDefinition<(&str, &str, &str), ()> =
    TableDefinition::new("referrers");
pub(super) const REFS: TableDefinition<(&str, &str, &str), ()> = TableDefinition::new("refs");
pub(super) const PULLS: TableDefinition<(&str, &str), u64> = TableDefinition::new("pulls");
/// Notification queues: (endpoint, sequence) -> event JSON.
pub(super) const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
/// endpoint -> (events queued, events dropped on a full queue).
pub(super) const EVENT_COUNTS: TableDefinition<&str, (u64, u64)> =
    TableDefinition::new("event_counts");
/// endpoint -> (node delivering it, until unix s).
pub(super) const EVENT_LEASES: TableDefinition<&str, (&str, u64)> =
    TableDefinition::new("event_leases");

/// quota (its pattern) -> bytes used.
pub(super) const QUOTA_USAGE: TableDefinition<&str, u64> = TableDefinition::new("quota_usage");
/// (quota, digest) -> (rows naming the digest in the quota's
/// repositories, the digest's size).
pub(super) const QUOTA_REFS: TableDefinition<(&str, &str), (u64, u64)> =
    TableDefinition::new("quota_refs");
/// id (unix microseconds, made unique) -> [`super::AuditRecord`] as JSON.
pub(super) const AUDIT: TableDefinition<u64, &str> = TableDefinition::new("audit");
/// name -> [`super::RobotRecord`] as JSON.
pub(super) const ROBOTS: TableDefinition<&str, &str> = TableDefinition::new("robots");

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for MetaError {
            fn from(e: $t) -> Self { MetaError::from_redb(e.into()) }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl MetaError {
    fn from_redb(e: redb::Error) -> Self {
        match e {
            redb::Error::Io(io) if crate::space::is_no_space(&io) => {
                MetaError::NoSpace(io.to_string())
            }
            redb::Error::PreviousIo => MetaError::Unavailable(
                "metadata database is being reopened after an I/O error".into(),
            ),
            e => MetaError::Db(Box::new(e)),
        }
    }
}

/// redb's own page cache. Its default (1 GiB) filled during a GC walk and
/// stayed in RSS; the kernel's page cache holds the file's pages anyway,
/// so a hit here saves a copy, not a disk read.
const CACHE_BYTES: usize = 64 << 20;

/// Shortest time between two attempts to reopen a failed database, so a
/// crowd of readers does not queue behind one attempt after another.
const REOPEN_EVERY: Duration = Duration::from_millis(500);

pub struct RedbBackend {
    path: PathBuf,
    space: Arc<DiskSpace>,
    /// `None` after an I/O error closed the database and reopening it has
    /// not worked yet. Readers hold the read side for the whole of a read
    /// transaction, so reopening (the write side) knows every transaction
    /// of the old database, and with it the file lock, is gone.
    db: RwLock<Option<Database>>,
    last_reopen: Mutex<Option<Instant>>,
}

impl RedbBackend {
    pub fn open(path: &Path, space: Arc<DiskSpace>) -> Result<Self, MetaError> {
        let db = open_database(path, &space)?;
        // Create every table up front so reads never meet a missing one.
        let txn = db.begin_write()?;
        txn.open_table(REPOS)?;
        txn.open_table(BLOB_LINKS)?;
        txn.open_table(MANIFESTS)?;
        {
            // Built once from `TAGS` for a database older than the index;
            // kept in step by every tag write since.
            let tags = txn.open_table(TAGS)?;
            let mut by_digest = txn.open_table(TAGS_BY_DIGEST)?;
            if by_digest.is_empty()? && !tags.is_empty()? {
                for entry in tags.iter()? {
                    let (k, v) = entry?;
                    let (repo, tag) = k.value();
                    by_digest.insert((repo, v.value(), tag), ())?;
                }
            }
        }
        txn.open_table(REFERRERS)?;
        txn.open_table(REFS)?;
        txn.open_table(PULLS)?;
        txn.open_table(EVENTS)?;
        txn.open_table(EVENT_COUNTS)?;
        txn.open_table(EVENT_LEASES)?;
        txn.open_table(ROBOTS)?;
        txn.open_table(QUOTA_USAGE)?;
        txn.open_table(QUOTA_REFS)?;
        txn.open_table(AUDIT)?;
        txn.commit()?;
        Ok(RedbBackend {
            path: path.to_path_buf(),
            space,
            db: RwLock::new(Some(db)),
            last_reopen: Mutex::new(None),
        })
    }

    /// Runs `f` with the open database, reopening it first if an I/O error
    /// closed it.
    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, MetaError>,
    ) -> Result<T, MetaError> {
        for _ in 0..2 {
            {
                let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
                if let Some(db) = guard.as_ref() {
                    return f(db);
                }
            }
            self.reopen()?;
        }
        Err(MetaError::Unavailable("metadata database is closed".into()))
    }

    /// Runs `f` in a read transaction.
    fn read<T>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, MetaError>,
    ) -> Result<T, MetaError> {
        self.with_db(|db| f(&db.begin_read()?))
    }

    /// Closes the database and opens it again: what redb asks for after a
    /// failed write. Opening runs redb's crash recovery, which keeps every
    /// committed transaction and drops the one that failed.
    fn reopen(&self) -> Result<(), MetaError> {
        {
            let mut last = self.last_reopen.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < REOPEN_EVERY) {
                return Err(MetaError::Unavailable(
                    "metadata database is being reopened after an I/O error".into(),
                ));
            }
            *last = Some(Instant::now());
        }
        let mut guard = self.db.write().unwrap_or_else(|p| p.into_inner());
        // Dropped first: the new handle needs the file lock the old one holds.
        *guard = None;
        match open_database(&self.path, &self.space) {
            Ok(db) => {
                tracing::warn!("metadata database reopened after an I/O error");
                *guard = Some(db);
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "metadata database could not be reopened yet");
                Err(e)
            }
        }
    }
}

fn open_database(path: &Path, space: &Arc<DiskSpace>) -> Result<Database, MetaError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| MetaError::from_redb(e.into()))?;
    let backend = SpaceAwareFile::new(file, space.clone())?;
    Ok(Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create_with_backend(backend)?)
}

/// The largest string that sorts after every tag, digest or name (all ASCII).
pub(super) const AFTER_ALL: &str = "\u{7f}";

impl MetaRead for RedbBackend {
    fn blob_link(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>, MetaError> {
        self.read(|txn| {
            let t = txn.open_table(BLOB_LINKS)?;
            let d = digest.to_string();
            Ok(t.get((repo.as_str(), d.as_str()))?.map(|v| v.value().0))
        })
    }

    fn manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<ManifestRecord>, MetaError> {
        self.read(|txn| {
            let t = txn.open_table(MANIFESTS)?;
            let d = digest.to_string();
            match t.get((repo.as_str(), d.as_str()))? {
                Some(v) => Ok(Some(ManifestRecord::decode(v.value())?)),
                None => Ok(None),
            }
        })
    }

    fn tag(&self, repo: &RepoName, tag: &str) -> Result<Option<Digest>, MetaError> {
        self.read(|txn| {
            let t = txn.open_table(TAGS)?;
            match t.get((repo.as_str(), tag))? {
                Some(v) => Digest::parse(v.value())
                    .map(Some)
                    .map_err(|e| MetaError::Record(e.to_string())),
                None => Ok(None),
            }
        })
    }

    fn repo_exists(&self, repo: &RepoName) -> Result<bool, MetaError> {
        self.read(|txn| {
            let t = txn.open_table(REPOS)?;
            Ok(t.get(repo.as_str())?.is_some())
        })
    }

    fn tags(&self, repo: &RepoName, after: Option<&str>, n: usize) -> Result<Page, MetaError> {
        self.read(|txn| {
            let t = txn.open_table(TAGS)?;
            let r = repo.as_str();
            let mut items = Vec::new();
            let start = after.unwrap_or("");
            for entry in t.range((r, start)..(r, AFTER_ALL))? {
                let (k, _) = entry?;
                let tag = k.value().1;
                if after == Some(tag) {
                    continue;
                }
                items.push(tag.to_owned());
                if items.len() > n {
                    break;
                }
            }
            Ok(Page::of(items, n))
        })
    }

    fn repos(&self, after: Option<&str>, n: usize) -> Result<Page, MetaError> {
        self.read(|txn| {
            let t = txn.open_table(REPOS)?;
            let mut items = Vec::new();
            let iter = match after {
                Some(a) => t.range(a..)?,
                None => t.range::<&str>(..)?,
            };
            for entry in iter {
                let (k, _) = entry?;
                let name = k.value();
                if after == Some(name) {
                    continue;
                }
                items.push(name.to_owned());
                if items.len() > n {
                    break;
                }
            }
            Ok(Page::of(items, n))
        })
    }

    fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Digest>, MetaError> {
        self.read(|txn| {
            let t = txn.open_table(REFERRERS)?;
            let (r, s) = (repo.as_str(), subject.to_string());
            let mut out = Vec::new();
            for entry in t.range((r, s.as_str(), "")..(r, s.as_str(), AFTER_ALL))? {
                let (k, _) = entry?;
                if let Ok(d) = Digest::parse(k.value().2) {
                    out.push(d);
                }
            }
            Ok(out)
        })
    }

    fn all_blob_links(&self) -> Result<Vec<BlobLink>, MetaError> {
        self.read(|txn| {
            let t = txn.open_table(BLOB_LINKS)?;
            let mut out = Vec::new();
            for entry in t.iter()? {
                let (k, v) = entry?;
                let ((repo, digest), (size, linked_at)) = (k.value(), v.value());
                out.push(BlobLink {
                    repo: repo.to_owned(),
                    digest: digest.to_owned(),
                    size,
                    linked_at,
                });
            }
            Ok(out)
        })
    }

    fn all_manifests(&self) -> Result<Vec<(String, String, ManifestRecord)>, MetaError> {
        self.read(|txn| {
            let t = txn.open_table(MANIFESTS)?;
            let mut out = Vec::new();
            for entry in t.iter()? {
                let (k, v) = entry?;
                let (repo, digest) = k.value();
                out.push((
                    repo.to_owned(),
                    digest.to_owned(),
                    ManifestRecord::decode(v.value())?,
                ));
            }
            Ok(out)
        })
    }

    fn all_manifest_keys(&self) -> Result<Vec<(String, String)>, MetaError> {
        self.read(|txn| {
            let t = txn.open_table(MANIFESTS)?;
            let mut out = Vec::new();
            for entry in t.iter()? {
                let (k, _) = entry?;
                let (repo, digest) = k.value();
                out.push((repo.to_owned(), digest.to_owned()));
            }
            Ok(out)
        })
    }

    fn all_references(&self) -> Result<Vec<(String, String, String)>, MetaError> {
        self.read(|txn| {
            let t = txn.open_table(REFS)?;
            let mut out = Vec::new();
            for entry in t.iter()? {
                let (k, _) = entry?;
                let (digest, repo, manifest) = k.value();
                out.push((repo.to_owned(), digest.to_owned(), manifest.to_owned()));
            }
            Ok(out)
        })
    }

    fn repository_rows(&self, repo: &str) -> Result<super::RepositoryRows, MetaError> {
        self.read(|txn| {
            let mut rows = super::RepositoryRows::default();
            let range = (repo, "")..(repo, AFTER_ALL);
            for entry in txn.open_table(TAGS)?.range(range.clone())? {
                let (k, v) = entry?;
                rows.tags
                    .push((k.value().1.to_owned(), v.value().to_owned()));
            }
            for entry in txn.open_table(MANIFESTS)?.range(range.clone())? {
                let (k, v) = entry?;
                let record = ManifestRecord::decode(v.value())?;
                rows.manifests.push((k.value().1.to_owned(), record));
            }
            for entry in txn.open_table(PULLS)?.range(range)? {
                let (k, v) = entry?;
                rows.pulls.push((k.value().1.to_owned(), v.value()));
            }
            Ok(rows)
        })
    }

    fn all_tags(&self) -> Result<Vec<(String, String, String)>, MetaError> {
        self.read(|txn| {
            let t = txn.open_table(TAGS)?;
            let mut out = Vec::new();
            for entry in t.iter()? {
                let (k, v) = entry?;
                let (repo, tag) = k.value();
                out.push((repo.to_owned(), tag.to_owned(), v.value().to_owned()));
            }
            Ok(out)
        })
    }

    fn repo_stats(&self, repo: &str) -> Result<(u64, u64), MetaError> {
        self.read(|txn| {
            let tags = txn.open_table(TAGS)?;
            let mut n = 0;
            for entry in tags.range((repo, "")..(repo, AFTER_ALL))? {
                entry?;
                n += 1;
            }
            let links = txn.open_table(BLOB_LINKS)?;
            let mut bytes = 0;
            for entry in links.range((repo, "")..(repo, AFTER_ALL))? {
                bytes += entry?.1.value().0;
            }
            Ok((n, bytes))
        })
    }

    fn pending_events(&self, endpoint: &str, n: usize) -> Result<Vec<(u64, Vec<u8>)>, MetaError> {
        self.read(|txn| {
            let t = txn.open_table(EVENTS)?;
            let mut out = Vec::new();
            for entry in t.range((endpoint, 0)..=(endpoint, u64::MAX))?.take(n) {
                let (k, v) = entry?;
                out.push((k.value().1, v.value().to_vec()));
            }
            Ok(out)
        })
    }

    fn event_counts(&self, endpoint: &str) -> Result<(u64, u64), MetaError> {
        self.read(|txn| {
            let t = txn.open_table(EVENT_COUNTS)?;
            Ok(t.get(endpoint)?.map_or((0, 0), |v| v.value()))
        })
    }

    fn robots(&self) -> Result<Vec<super::RobotRecord>, MetaError> {
        self.read(|txn| {
            let t = txn.open_table(ROBOTS)?;
            let mut out = Vec::new();
            for entry in t.iter()? {
                out.push(super::RobotRecord::decode(entry?.1.value().as_bytes())?);
            }
            Ok(out)
        })
    }

    fn audit(&self, q: &super::AuditQuery) -> Result<Vec<super::AuditRecord>, MetaError> {
        self.read(|txn| {
            let t = txn.open_table(AUDIT)?;
            // Ids are microseconds: the time bounds are id bounds.
            let low = q.since_ms.saturating_mul(1000);
            let mut high = q.until().saturating_mul(1000).saturating_add(999);
            if let Some(b) = q.before_id {
                high = high.min(b.saturating_sub(1));
            }
            let mut out = Vec::new();
            if low > high {
                return Ok(out);
            }
            for entry in t.range(low..=high)?.rev() {
                let (k, v) = entry?;
                let r = super::AuditRecord::decode(v.value().as_bytes(), k.value())?;
                if q.keeps(&r) {
                    out.push(r);
                    if out.len() >= q.limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
    }

    fn tags_of(&self, repo: &RepoName, digest: &Digest) -> Result<Vec<String>, MetaError> {
        self.read(|txn| {
            let t = txn.open_table(TAGS_BY_DIGEST)?;
            let (r, d) = (repo.as_str(), digest.to_string());
            let mut out = Vec::new();
            for entry in t.range((r, d.as_str(), "")..(r, d.as_str(), AFTER_ALL))? {
                out.push(entry?.0.value().2.to_owned());
            }
            Ok(out)
        })
    }

    fn quota_usages(&self) -> Result<Vec<(String, u64)>, MetaError> {
        self.read(|txn| {
            let t = txn.open_table(QUOTA_USAGE)?;
            let mut out = Vec::new();
            for entry in t.iter()? {
                let (k, v) = entry?;
                out.push((k.value().to_owned(), v.value()));
            }
            Ok(out)
        })
    }

    fn all_pulls(&self) -> Result<Vec<(String, String, u64)>, MetaError> {
        self.read(|txn| {
            let t = txn.open_table(PULLS)?;
            let mut out = Vec::new();
            for entry in t.iter()? {
                let (k, v) = entry?;
                let (repo, digest) = k.value();
                out.push((repo.to_owned(), digest.to_owned(), v.value()));
            }
            Ok(out)
        })
    }
}

impl MetaBackend for RedbBackend {
    fn commit(
        &self,
        jobs: &[Vec<MetaWrite>],
        durable: bool,
        quotas: &super::quota::Quotas,
    ) -> Result<Vec<Result<(), MetaError>>, MetaError> {
        let result = self.with_db(|db| commit_jobs(db, jobs, durable, quotas));
        if let Err(e) = &result {
            if e.closes_database() {
                // redb refuses every later transaction after a failed
                // write; reopen now so the next batch (a delete that frees
                // space, say) finds it working.
                let _ = self.reopen();
            }
        }
        result
    }
}

fn commit_jobs(
    db: &Database,
    jobs: &[Vec<MetaWrite>],
    durable: bool,
    quotas: &super::quota::Quotas,
) -> Result<Vec<Result<(), MetaError>>, MetaError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(if durable {
        Durability::Immediate
    } else {
        Durability::None
    });
    let results = {
        let mut rows = RedbRows::open(&txn, crate::calendar::unix_now())?;
        rules::apply_jobs(&mut rows, jobs, quotas)?
    };
    txn.commit()?;
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::rules::TxnRows;

    /// A database written before the tag index opens with the index built
    /// from its tags, and tag writes keep it in step.
    #[test]
    fn the_tag_index_is_built_for_an_older_database_and_kept_in_step() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut tags = txn.open_table(TAGS).unwrap();
                for (tag, digest) in [("a", "d1"), ("b", "d2"), ("c", "d1")] {
                    tags.insert(("r", tag), digest).unwrap();
                }
            }
            txn.commit().unwrap();
        }
        let space = Arc::new(DiskSpace::open(dir.path(), 0));
        let backend = RedbBackend::open(&path, space).unwrap();
        backend
            .with_db(|db| {
                let txn = db.begin_write()?;
                {
                    let mut rows = RedbRows::open(&txn, 0)?;
                    assert_eq!(rows.tags_on("r", "d1")?, ["a", "c"]);
                    rows.put_tag("r", "a", "d2")?;
                    rows.remove_tag("r", "c")?;
                    assert!(rows.tags_on("r", "d1")?.is_empty());
                    assert_eq!(rows.tags_on("r", "d2")?, ["a", "b"]);
                }
                txn.commit()?;
                Ok(())
            })
            .unwrap();
    }
}

#[cfg(test)]
mod audit_tests {
    use super::*;
    use crate::meta::{AuditQuery, AuditRecord, MetaRead};

    fn record(at_ms: u64, repo: &str) -> MetaWrite {
        MetaWrite::Audit {
            record: AuditRecord {
                at_ms,
                actor: "a".into(),
                action: "push_manifest".into(),
                repository: repo.into(),
                result: "ok".into(),
                ..Default::default()
            },
        }
    }

    /// Ids rise even for records of one millisecond; queries bound by time
    /// and id, newest first; pruning drops only what is older.
    #[test]
    fn audit_records_are_ordered_bounded_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let space = Arc::new(DiskSpace::open(dir.path(), 0));
        let b = RedbBackend::open(&dir.path().join("meta.redb"), space).unwrap();
        let quotas = crate::meta::quota::Quotas::default();
        let jobs = vec![
            vec![record(1_000, "old")],
            vec![record(5_000, "x"), record(5_000, "y")],
            vec![record(9_000, "x")],
        ];
        b.commit(&jobs, false, &quotas).unwrap();
        let q = |since_ms, until_ms, repo: Option<&str>, before_id| AuditQuery {
            since_ms,
            until_ms,
            repository: repo.map(str::to_owned),
            before_id,
            limit: 10,
            ..Default::default()
        };
        let all = b.audit(&q(0, 0, None, None)).unwrap();
        let repos: Vec<_> = all.iter().map(|r| r.repository.as_str()).collect();
        assert_eq!(repos, ["x", "y", "x", "old"]);
        assert!(all.windows(2).all(|w| w[0].id > w[1].id));
        let mid = b.audit(&q(2_000, 5_000, None, None)).unwrap();
        assert_eq!(mid.len(), 2);
        let x = b.audit(&q(0, 0, Some("x"), None)).unwrap();
        assert_eq!(x.len(), 2);
        let older = b.audit(&q(0, 0, None, Some(all[1].id))).unwrap();
        assert_eq!(older.len(), 2);
        b.commit(
            &[vec![MetaWrite::PruneAudit { before_ms: 5_000 }]],
            false,
            &quotas,
        )
        .unwrap();
        let left = b.audit(&q(0, 0, None, None)).unwrap();
        assert_eq!(left.len(), 3, "only the record of 1 s went");
    }
}
