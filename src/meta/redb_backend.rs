//! The embedded default backend: one redb file.
//!
//! ```text
//! repos       repo                       -> created (unix s)
//! blob_links  (repo, digest)             -> size
//! manifests   (repo, digest)             -> ManifestRecord (JSON)
//! tags        (repo, tag)                -> digest
//! referrers   (repo, subject, referrer)  -> ()
//! ```
//! Keys sort bytewise, so tag and repository listings are range scans in
//! order, with no directory walk and no sort per request.

use super::{ManifestRecord, MetaBackend, MetaError, MetaWrite, Page};
use crate::oci::{Digest, RepoName};
use redb::{Database, Durability, ReadableTable, TableDefinition};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

const REPOS: TableDefinition<&str, u64> = TableDefinition::new("repos");
const BLOB_LINKS: TableDefinition<(&str, &str), u64> = TableDefinition::new("blob_links");
const MANIFESTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("manifests");
const TAGS: TableDefinition<(&str, &str), &str> = TableDefinition::new("tags");
const REFERRERS: TableDefinition<(&str, &str, &str), ()> = TableDefinition::new("referrers");

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for MetaError {
            fn from(e: $t) -> Self { MetaError::Db(Box::new(e.into())) }
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

pub struct RedbBackend {
    db: Database,
}

impl RedbBackend {
    pub fn open(path: &Path) -> Result<Self, MetaError> {
        let db = Database::create(path)?;
        // Create every table up front so reads never meet a missing one.
        let txn = db.begin_write()?;
        txn.open_table(REPOS)?;
        txn.open_table(BLOB_LINKS)?;
        txn.open_table(MANIFESTS)?;
        txn.open_table(TAGS)?;
        txn.open_table(REFERRERS)?;
        txn.commit()?;
        Ok(RedbBackend { db })
    }
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

impl MetaBackend for RedbBackend {
    fn blob_link(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>, MetaError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(BLOB_LINKS)?;
        let d = digest.to_string();
        Ok(t.get((repo.as_str(), d.as_str()))?.map(|v| v.value()))
    }

    fn manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<ManifestRecord>, MetaError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(MANIFESTS)?;
        let d = digest.to_string();
        match t.get((repo.as_str(), d.as_str()))? {
            Some(v) => Ok(Some(decode_record(v.value())?)),
            None => Ok(None),
        }
    }

    fn tag(&self, repo: &RepoName, tag: &str) -> Result<Option<Digest>, MetaError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(TAGS)?;
        match t.get((repo.as_str(), tag))? {
            Some(v) => Digest::parse(v.value())
                .map(Some)
                .map_err(|e| MetaError::Record(e.to_string())),
            None => Ok(None),
        }
    }

    fn repo_exists(&self, repo: &RepoName) -> Result<bool, MetaError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(REPOS)?;
        Ok(t.get(repo.as_str())?.is_some())
    }

    fn tags(&self, repo: &RepoName, after: Option<&str>, n: usize) -> Result<Page, MetaError> {
        let txn = self.db.begin_read()?;
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
    }

    fn repos(&self, after: Option<&str>, n: usize) -> Result<Page, MetaError> {
        let txn = self.db.begin_read()?;
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
    }

    fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Digest>, MetaError> {
        let txn = self.db.begin_read()?;
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
    }

    fn commit(&self, ops: &[MetaWrite], durable: bool) -> Result<(), MetaError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        });
        {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let mut repos = txn.open_table(REPOS)?;
            let mut links = txn.open_table(BLOB_LINKS)?;
            let mut manifests = txn.open_table(MANIFESTS)?;
            let mut tags = txn.open_table(TAGS)?;
            let mut referrers = txn.open_table(REFERRERS)?;
            for op in ops {
                match op {
                    MetaWrite::LinkBlob { repo, digest, size } => {
                        let d = digest.to_string();
                        links.insert((repo.as_str(), d.as_str()), *size)?;
                        if repos.get(repo.as_str())?.is_none() {
                            repos.insert(repo.as_str(), now)?;
                        }
                    }
                    MetaWrite::UnlinkBlob { repo, digest } => {
                        let d = digest.to_string();
                        links.remove((repo.as_str(), d.as_str()))?;
                    }
                    MetaWrite::PutManifest {
                        repo,
                        digest,
                        record,
                        tag,
                    } => {
                        let (r, d) = (repo.as_str(), digest.to_string());
                        let bytes = serde_json::to_vec(record)
                            .map_err(|e| MetaError::Record(e.to_string()))?;
                        manifests.insert((r, d.as_str()), bytes.as_slice())?;
                        if let Some(s) = &record.subject {
                            referrers.insert((r, s.as_str(), d.as_str()), ())?;
                        }
                        if let Some(t) = tag {
                            tags.insert((r, t.as_str()), d.as_str())?;
                        }
                        if repos.get(r)?.is_none() {
                            repos.insert(r, now)?;
                        }
                    }
                    MetaWrite::DeleteManifest { repo, digest } => {
                        let (r, d) = (repo.as_str(), digest.to_string());
                        let old = manifests
                            .remove((r, d.as_str()))?
                            .map(|v| v.value().to_vec());
                        if let Some(old) = old {
                            if let Some(s) = decode_record(&old)?.subject {
                                referrers.remove((r, s.as_str(), d.as_str()))?;
                            }
                        }
                        let mut doomed = Vec::new();
                        for entry in tags.range((r, "")..(r, AFTER_ALL))? {
                            let (k, v) = entry?;
                            if v.value() == d {
                                doomed.push(k.value().1.to_owned());
                            }
                        }
                        for t in doomed {
                            tags.remove((r, t.as_str()))?;
                        }
                    }
                    MetaWrite::DeleteTag { repo, tag } => {
                        tags.remove((repo.as_str(), tag.as_str()))?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    }
}
