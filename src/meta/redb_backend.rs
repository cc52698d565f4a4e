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
use super::{BlobLink, ManifestRecord, MetaBackend, MetaError, MetaRead, MetaWrite, Page};
use crate::oci::{Digest, RepoName};
use crate::space::DiskSpace;
use redb::{Database, Durability, ReadTransaction, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const REPOS: TableDefinition<&str, u64> = TableDefinition::new("repos");
const BLOB_LINKS: TableDefinition<(&str, &str), (u64, u64)> = TableDefinition::new("blob_links");
const MANIFESTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("manifests");
const TAGS: TableDefinition<(&str, &str), &str> = TableDefinition::new("tags");
const REFERRERS: TableDefinition<(&str, &str, &str), ()> = TableDefinition::new("referrers");
const REFS: TableDefinition<(&str, &str, &str), ()> = TableDefinition::new("refs");
const PULLS: TableDefinition<(&str, &str), u64> = TableDefinition::new("pulls");
/// Notification queues: (endpoint, sequence) -> event JSON.
const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
/// endpoint -> (events queued, events dropped on a full queue).
const EVENT_COUNTS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("event_counts");
/// endpoint -> (node delivering it, until unix s).
const EVENT_LEASES: TableDefinition<&str, (&str, u64)> = TableDefinition::new("event_leases");

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
        txn.open_table(TAGS)?;
        txn.open_table(REFERRERS)?;
        txn.open_table(REFS)?;
        txn.open_table(PULLS)?;
        txn.open_table(EVENTS)?;
        txn.open_table(EVENT_COUNTS)?;
        txn.open_table(EVENT_LEASES)?;
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
    Ok(Database::builder().create_with_backend(backend)?)
}

/// The largest string that sorts after every tag, digest or name (all ASCII).
const AFTER_ALL: &str = "\u{7f}";

fn decode_record(bytes: &[u8]) -> Result<ManifestRecord, MetaError> {
    serde_json::from_slice(bytes).map_err(|e| MetaError::Record(e.to_string()))
}

fn page(mut items: Vec<String>, n: usize) -> Page {
    let more = items.len() > n;
    items.truncate(n);
    Page { items, more }
}

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
                Some(v) => Ok(Some(decode_record(v.value())?)),
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
            Ok(page(items, n))
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
            Ok(page(items, n))
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
                    decode_record(v.value())?,
                ));
            }
            Ok(out)
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
    ) -> Result<Vec<Result<(), MetaError>>, MetaError> {
        let result = self.with_db(|db| commit_jobs(db, jobs, durable));
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
) -> Result<Vec<Result<(), MetaError>>, MetaError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(if durable {
        Durability::Immediate
    } else {
        Durability::None
    });
    let mut results = Vec::with_capacity(jobs.len());
    {
        let mut t = Tables {
            repos: txn.open_table(REPOS)?,
            links: txn.open_table(BLOB_LINKS)?,
            manifests: txn.open_table(MANIFESTS)?,
            tags: txn.open_table(TAGS)?,
            referrers: txn.open_table(REFERRERS)?,
            refs: txn.open_table(REFS)?,
            pulls: txn.open_table(PULLS)?,
            events: txn.open_table(EVENTS)?,
            event_counts: txn.open_table(EVENT_COUNTS)?,
            event_leases: txn.open_table(EVENT_LEASES)?,
            now: unix_now(),
        };
        for job in jobs {
            let mut refused = None;
            for op in job {
                if let Some(why) = t.precondition(op)? {
                    refused = Some(why);
                    break;
                }
            }
            if let Some(why) = refused {
                results.push(Err(MetaError::Conflict(why)));
                continue;
            }
            for op in job {
                t.apply(op)?;
            }
            results.push(Ok(()));
        }
    }
    txn.commit()?;
    Ok(results)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The tables of one write transaction.
struct Tables<'t> {
    repos: redb::Table<'t, &'static str, u64>,
    links: redb::Table<'t, (&'static str, &'static str), (u64, u64)>,
    manifests: redb::Table<'t, (&'static str, &'static str), &'static [u8]>,
    tags: redb::Table<'t, (&'static str, &'static str), &'static str>,
    referrers: redb::Table<'t, (&'static str, &'static str, &'static str), ()>,
    refs: redb::Table<'t, (&'static str, &'static str, &'static str), ()>,
    pulls: redb::Table<'t, (&'static str, &'static str), u64>,
    events: redb::Table<'t, (&'static str, u64), &'static [u8]>,
    event_counts: redb::Table<'t, &'static str, (u64, u64)>,
    event_leases: redb::Table<'t, &'static str, (&'static str, u64)>,
    now: u64,
}

impl Tables<'_> {
    fn linked(&self, repo: &str, digest: &str) -> Result<Option<(u64, u64)>, MetaError> {
        Ok(self.links.get((repo, digest))?.map(|v| v.value()))
    }

    /// Is `digest` referenced by any manifest of `repo`?
    fn referenced(&self, repo: &str, digest: &str) -> Result<bool, MetaError> {
        Ok(self
            .refs
            .range((digest, repo, "")..(digest, repo, AFTER_ALL))?
            .next()
            .is_some())
    }

    /// Why `op` may not be applied now, if it may not.
    fn precondition(&self, op: &MetaWrite) -> Result<Option<String>, MetaError> {
        Ok(match op {
            MetaWrite::MountBlob { from, digest, .. } => {
                let d = digest.to_string();
                self.linked(from.as_str(), &d)?
                    .is_none()
                    .then(|| format!("blob {d} is no longer in repository {from}"))
            }
            MetaWrite::PutManifest {
                repo,
                digest,
                tag: Some(t),
                tag_immutable: true,
                ..
            } if self
                .tags
                .get((repo.as_str(), t.as_str()))?
                .is_some_and(|v| v.value() != digest.to_string()) =>
            {
                Some(format!("tag {t} is immutable"))
            }
            MetaWrite::RetireTag { repo, tag, digest } => {
                let d = digest.to_string();
                match self.tags.get((repo.as_str(), tag.as_str()))? {
                    Some(v) if v.value() == d => None,
                    _ => Some(format!("tag {tag} moved or went since retention looked")),
                }
            }
            MetaWrite::PutManifest { record, .. } if record.mirrored => None,
            MetaWrite::PutManifest { repo, record, .. } => {
                let r = repo.as_str();
                for b in &record.blobs {
                    if self.linked(r, b)?.is_none() {
                        return Ok(Some(format!("blob {b} is not in repository {r}")));
                    }
                }
                for c in &record.children {
                    if self.manifests.get((r, c.as_str()))?.is_none() {
                        return Ok(Some(format!("manifest {c} is not in repository {r}")));
                    }
                }
                None
            }
            // One process holds the redb file: its claim always stands (a
            // killed predecessor's lease must not delay the restart).
            MetaWrite::ClaimDelivery { .. } => None,
            MetaWrite::GcUnlinkBlob {
                repo,
                digest,
                cutoff,
            } => {
                let (r, d) = (repo.as_str(), digest.to_string());
                match self.linked(r, &d)? {
                    None => Some("already unlinked".into()),
                    Some((_, at)) if at >= *cutoff => Some("linked recently".into()),
                    Some(_) if self.referenced(r, &d)? => Some("referenced".into()),
                    Some(_) => None,
                }
            }
            MetaWrite::GcDeleteManifest {
                repo,
                digest,
                cutoff,
            } => {
                let (r, d) = (repo.as_str(), digest.to_string());
                let record = match self.manifests.get((r, d.as_str()))? {
                    Some(v) => decode_record(v.value())?,
                    None => return Ok(Some("already deleted".into())),
                };
                if record.created >= *cutoff {
                    Some("pushed recently".into())
                } else if self.referenced(r, &d)? {
                    Some("referenced by an index".into())
                } else if !self.tags_on(r, &d)?.is_empty() {
                    Some("tagged".into())
                } else {
                    None
                }
            }
            _ => None,
        })
    }

    fn ensure_repo(&mut self, repo: &str) -> Result<(), MetaError> {
        if self.repos.get(repo)?.is_none() {
            self.repos.insert(repo, self.now)?;
        }
        Ok(())
    }

    fn delete_manifest(&mut self, repo: &str, digest: &str) -> Result<(), MetaError> {
        let old = self
            .manifests
            .remove((repo, digest))?
            .map(|v| v.value().to_vec());
        if let Some(old) = old {
            let record = decode_record(&old)?;
            if let Some(s) = &record.subject {
                self.referrers.remove((repo, s.as_str(), digest))?;
            }
            for b in record.blobs.iter().chain(record.children.iter()) {
                self.refs.remove((b.as_str(), repo, digest))?;
            }
        }
        for t in self.tags_on(repo, digest)? {
            self.tags.remove((repo, t.as_str()))?;
        }
        Ok(())
    }

    fn apply(&mut self, op: &MetaWrite) -> Result<(), MetaError> {
        match op {
            MetaWrite::LinkBlob { repo, digest, size }
            | MetaWrite::MountBlob {
                repo, digest, size, ..
            } => {
                let d = digest.to_string();
                self.links
                    .insert((repo.as_str(), d.as_str()), (*size, self.now))?;
                self.ensure_repo(repo.as_str())?;
            }
            MetaWrite::UnlinkBlob { repo, digest }
            | MetaWrite::GcUnlinkBlob { repo, digest, .. } => {
                let d = digest.to_string();
                self.links.remove((repo.as_str(), d.as_str()))?;
            }
            MetaWrite::PutManifest {
                repo,
                digest,
                record,
                tag,
                ..
            } => {
                let (r, d) = (repo.as_str(), digest.to_string());
                // A re-push replaces the record: drop the old index entries.
                if self.manifests.get((r, d.as_str()))?.is_some() {
                    let tags_kept = self.tags_on(r, &d)?;
                    self.delete_manifest(r, &d)?;
                    for t in tags_kept {
                        self.tags.insert((r, t.as_str()), d.as_str())?;
                    }
                }
                let bytes =
                    serde_json::to_vec(record).map_err(|e| MetaError::Record(e.to_string()))?;
                self.manifests.insert((r, d.as_str()), bytes.as_slice())?;
                if let Some(s) = &record.subject {
                    self.referrers.insert((r, s.as_str(), d.as_str()), ())?;
                }
                for b in record.blobs.iter().chain(record.children.iter()) {
                    self.refs.insert((b.as_str(), r, d.as_str()), ())?;
                }
                if let Some(t) = tag {
                    self.tags.insert((r, t.as_str()), d.as_str())?;
                }
                self.ensure_repo(r)?;
            }
            MetaWrite::DeleteManifest { repo, digest }
            | MetaWrite::GcDeleteManifest { repo, digest, .. } => {
                let d = digest.to_string();
                self.delete_manifest(repo.as_str(), &d)?;
                self.pulls.remove((repo.as_str(), d.as_str()))?;
            }
            MetaWrite::DeleteTag { repo, tag } | MetaWrite::RetireTag { repo, tag, .. } => {
                self.tags.remove((repo.as_str(), tag.as_str()))?;
            }
            MetaWrite::QueueEvent {
                endpoint,
                payload,
                max_pending,
            } => {
                let e = endpoint.as_str();
                let (queued, dropped) = self.event_counts.get(e)?.map_or((0, 0), |v| v.value());
                if queued >= *max_pending {
                    self.event_counts.insert(e, (queued, dropped + 1))?;
                } else {
                    let last = self
                        .events
                        .range((e, 0)..=(e, u64::MAX))?
                        .next_back()
                        .transpose()?
                        .map_or(0, |(k, _)| k.value().1);
                    self.events.insert((e, last + 1), payload.as_slice())?;
                    self.event_counts.insert(e, (queued + 1, dropped))?;
                }
            }
            MetaWrite::AckEvents { endpoint, through } => {
                let e = endpoint.as_str();
                let gone = self.remove_events(e, *through)?;
                let (queued, dropped) = self.event_counts.get(e)?.map_or((0, 0), |v| v.value());
                self.event_counts
                    .insert(e, (queued.saturating_sub(gone), dropped))?;
            }
            MetaWrite::ClaimDelivery {
                endpoint,
                node,
                until,
            } => {
                self.event_leases
                    .insert(endpoint.as_str(), (node.as_str(), *until))?;
            }
            MetaWrite::ForgetEndpoints { keep } => {
                let known: Vec<String> = self
                    .event_counts
                    .iter()?
                    .map(|r| r.map(|(k, _)| k.value().to_owned()))
                    .collect::<Result<_, _>>()?;
                for e in known.iter().filter(|e| !keep.contains(e)) {
                    self.remove_events(e, u64::MAX)?;
                    self.event_counts.remove(e.as_str())?;
                    self.event_leases.remove(e.as_str())?;
                }
            }
            MetaWrite::RecordPulls { pulls } => {
                for (repo, digest, at) in pulls {
                    let (r, d) = (repo.as_str(), digest.to_string());
                    // Only for manifests that still exist, and never back in time.
                    if self.manifests.get((r, d.as_str()))?.is_none() {
                        continue;
                    }
                    let before = self.pulls.get((r, d.as_str()))?.map(|v| v.value());
                    if before.is_none_or(|b| b < *at) {
                        self.pulls.insert((r, d.as_str()), *at)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes `endpoint`'s events up to sequence `through`; how many.
    fn remove_events(&mut self, endpoint: &str, through: u64) -> Result<u64, MetaError> {
        let seqs: Vec<u64> = self
            .events
            .range((endpoint, 0)..=(endpoint, through))?
            .map(|r| r.map(|(k, _)| k.value().1))
            .collect::<Result<_, _>>()?;
        for seq in &seqs {
            self.events.remove((endpoint, *seq))?;
        }
        Ok(seqs.len() as u64)
    }

    fn tags_on(&self, repo: &str, digest: &str) -> Result<Vec<String>, MetaError> {
        let mut out = Vec::new();
        for entry in self.tags.range((repo, "")..(repo, AFTER_ALL))? {
            let (k, v) = entry?;
            if v.value() == digest {
                out.push(k.value().1.to_owned());
            }
        }
        Ok(out)
    }
}
