//! Garbage collection, online: runs while pushes and pulls go on.
//!
//! Owns: deciding what is garbage and removing it, in three steps, each
//! re-checked where it takes effect so a concurrent push never loses what
//! it is about to reference:
//! 1. (only with `delete_untagged`) untagged manifests that no tag reaches,
//!    through indexes and referrers, pushed before the grace cutoff: removed
//!    by a metadata write whose precondition re-checks "untagged and not
//!    referenced" inside the transaction;
//! 2. repository links to blobs that no manifest of that repository
//!    references, linked before the cutoff: unlinked the same way (a
//!    manifest PUT re-checks its blobs in its own transaction, so it either
//!    commits first and keeps the link, or fails with MANIFEST_BLOB_UNKNOWN);
//! 3. blob bytes that nothing links or names as a manifest: the storage's
//!    `sweep`. In the data folder each file last committed before this run
//!    started is unlinked by the digest's shard actor, which also
//!    serialises commits and pins what a push stored until its link or
//!    manifest row is written (so no grace is needed, and space deleted
//!    through the API comes back at once); in the object store each
//!    `blobs` row older than the cutoff is locked and re-checked in
//!    PostgreSQL, and its object is deleted later by the purge.
//!
//! Must not: block pushes for long (every write is a small transaction
//! batched with the others), or remove a link or manifest younger than
//! the grace.

use crate::meta::{Meta, MetaError, MetaWrite};
use crate::oci::{Digest, RepoName};
use crate::storage::{BlobStorage, StorageError, SweepPlan};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Task(#[from] crate::blocking::TaskFailed),
}

#[derive(Debug, Clone)]
pub struct GcOptions {
    /// No link made or manifest pushed more recently than this is removed
    /// (nor, in the object store, bytes committed). Must exceed the
    /// longest a push takes between uploading a layer and pushing the
    /// manifest that names it.
    pub grace: Duration,
    /// Also remove manifests that no tag reaches.
    pub delete_untagged: bool,
    pub dry_run: bool,
}

impl GcOptions {
    /// The configured grace and untagged-manifest choice.
    pub fn from_config(config: &crate::config::Config, dry_run: bool) -> GcOptions {
        GcOptions {
            grace: Duration::from_secs(config.gc_grace_secs),
            delete_untagged: config.gc_delete_untagged,
            dry_run,
        }
    }
}

/// Counts a finished run in the metrics.
pub fn record(metrics: &crate::metrics::Metrics, result: &Result<GcReport, GcError>) {
    match result {
        Ok(r) if !r.dry_run => metrics.record_gc(true, r.bytes_freed, r.blobs_removed as u64),
        Ok(_) => metrics.record_gc(true, 0, 0),
        Err(_) => metrics.record_gc(false, 0, 0),
    }
}

#[derive(Debug, Default, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct GcReport {
    pub dry_run: bool,
    pub manifests_removed: usize,
    pub links_removed: usize,
    pub blobs_removed: usize,
    pub bytes_freed: u64,
}

impl std::fmt::Display for GcReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}{} manifests, {} blob links and {} blobs removed, {} freed ({} bytes)",
            if self.dry_run {
                "dry run: would be "
            } else {
                ""
            },
            self.manifests_removed,
            self.links_removed,
            self.blobs_removed,
            crate::terminal::human_bytes(self.bytes_freed),
            self.bytes_freed
        )
    }
}

/// Writes sent to the metadata writer at once: enough to fill its group
/// commits, few enough not to crowd out pushes.
const WRITE_WAVE: usize = 128;

/// Applies GC's writes (or, in a dry run, counts them); how many took.
async fn apply_unless_dry(
    meta: &Meta,
    dry_run: bool,
    writes: Vec<MetaWrite>,
) -> Result<usize, GcError> {
    match dry_run {
        true => Ok(writes.len()),
        false => apply_each(meta, writes).await,
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, MetaError> + Send + 'static,
) -> Result<T, GcError> {
    Ok(crate::blocking::run(f).await?)
}

/// Applies each write as its own job (a refused precondition skips only
/// that one); returns how many were applied.
async fn apply_each(meta: &Meta, writes: Vec<MetaWrite>) -> Result<usize, GcError> {
    let mut applied = 0;
    let mut writes = writes.into_iter().peekable();
    while writes.peek().is_some() {
        let wave: Vec<_> = writes.by_ref().take(WRITE_WAVE).collect();
        let results =
            futures_util::future::join_all(wave.into_iter().map(|w| meta.write(vec![w]))).await;
        for r in results {
            match r {
                Ok(()) => applied += 1,
                Err(MetaError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(applied)
}

/// `objects`: in object-store mode, step 3 sweeps the `blobs` table (and
/// queues the objects) instead of the data folder's files.
pub async fn collect(
    meta: &Meta,
    storage: &dyn BlobStorage,
    opts: &GcOptions,
) -> Result<GcReport, GcError> {
    let now = SystemTime::now();
    let cutoff_time = now.checked_sub(opts.grace).unwrap_or(UNIX_EPOCH);
    let cutoff = cutoff_time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut report = GcReport {
        dry_run: opts.dry_run,
        ..GcReport::default()
    };

    // 1. Manifests no tag reaches.
    let mut gone_manifests: HashSet<(String, String)> = HashSet::new();
    if opts.delete_untagged {
        let m = meta.clone();
        let (manifests, tags) =
            blocking(move || Ok((m.read().all_manifests()?, m.read().all_tags()?))).await?;
        let records: HashMap<(String, String), _> = manifests
            .into_iter()
            .map(|(r, d, rec)| ((r, d), rec))
            .collect();
        let mut referrers: HashMap<(String, String), Vec<String>> = HashMap::new();
        for ((repo, d), rec) in &records {
            if let Some(s) = &rec.subject {
                referrers
                    .entry((repo.clone(), s.clone()))
                    .or_default()
                    .push(d.clone());
            }
        }
        let mut live: HashSet<(String, String)> = HashSet::new();
        let mut work: Vec<(String, String)> = tags.into_iter().map(|(r, _, d)| (r, d)).collect();
        while let Some(key) = work.pop() {
            if !live.insert(key.clone()) {
                continue;
            }
            if let Some(rec) = records.get(&key) {
                work.extend(rec.children.iter().map(|c| (key.0.clone(), c.clone())));
            }
            if let Some(rs) = referrers.get(&key) {
                work.extend(rs.iter().map(|r| (key.0.clone(), r.clone())));
            }
        }
        let mut writes = Vec::new();
        for ((repo, d), rec) in &records {
            if live.contains(&(repo.clone(), d.clone())) || rec.created >= cutoff {
                continue;
            }
            let (Ok(r), Ok(dg)) = (RepoName::parse(repo), Digest::parse(d)) else {
                continue;
            };
            gone_manifests.insert((repo.clone(), d.clone()));
            writes.push(MetaWrite::GcDeleteManifest {
                repo: r,
                digest: dg,
                cutoff,
            });
        }
        report.manifests_removed = apply_unless_dry(meta, opts.dry_run, writes).await?;
    }

    // 2. Links to blobs no manifest of the repository references.
    // From the reverse index, not the records: no manifest is decoded.
    let m = meta.clone();
    let (links, references) =
        blocking(move || Ok((m.read().all_blob_links()?, m.read().all_references()?))).await?;
    let mut referenced: HashSet<(String, String)> = HashSet::with_capacity(references.len());
    for (repo, used, manifest) in references {
        if opts.dry_run && gone_manifests.contains(&(repo.clone(), manifest)) {
            continue;
        }
        referenced.insert((repo, used));
    }
    let mut writes = Vec::new();
    let mut gone_links: HashSet<(String, String)> = HashSet::new();
    for l in &links {
        let key = (l.repo.clone(), l.digest.clone());
        if referenced.contains(&key) || l.linked_at >= cutoff {
            continue;
        }
        let (Ok(r), Ok(d)) = (RepoName::parse(&l.repo), Digest::parse(&l.digest)) else {
            continue;
        };
        gone_links.insert(key);
        writes.push(MetaWrite::GcUnlinkBlob {
            repo: r,
            digest: d,
            cutoff,
        });
    }
    report.links_removed = apply_unless_dry(meta, opts.dry_run, writes).await?;

    // 3. Bytes nothing links or names as a manifest.
    let plan = SweepPlan {
        cutoff: cutoff_time,
        started: now,
        dry_run: opts.dry_run,
        gone_links,
        gone_manifests,
    };
    (report.blobs_removed, report.bytes_freed) = storage.sweep(meta, plan).await?;
    Ok(report)
}
