//! The embedded backend's rows inside one write transaction: the redb
//! tables as [`TxnRows`]. Translation only; the rules are in `rules`.
//!
//! One writer thread holds the file, so the rules' locks are no-ops here,
//! and no other process can hold a live delivery lease.

use super::redb_backend::{
    AFTER_ALL, AUDIT, BLOB_LINKS, EVENTS, EVENT_COUNTS, EVENT_LEASES, MANIFESTS, PULLS, QUOTA_REFS,
    QUOTA_USAGE, REFERRERS, REFS, REPOS, ROBOTS, TAGS, TAGS_BY_DIGEST,
};
use super::rules::{Lock, ReferrerRow, TxnRows};
use super::{AuditRecord, ManifestRecord, MetaResult};
use crate::oci::{Digest, RepoName};
use redb::{ReadableTable, WriteTransaction};

/// The tables of one write transaction.
pub(super) struct RedbRows<'t> {
    repos: redb::Table<'t, &'static str, u64>,
    links: redb::Table<'t, (&'static str, &'static str), (u64, u64)>,
    manifests: redb::Table<'t, (&'static str, &'static str), &'static [u8]>,
    tags: redb::Table<'t, (&'static str, &'static str), &'static str>,
    tags_by_digest: redb::Table<'t, (&'static str, &'static str, &'static str), ()>,
    referrers: redb::Table<'t, (&'static str, &'static str, &'static str), ()>,
    refs: redb::Table<'t, (&'static str, &'static str, &'static str), ()>,
    pulls: redb::Table<'t, (&'static str, &'static str), u64>,
    events: redb::Table<'t, (&'static str, u64), &'static [u8]>,
    /// endpoint -> (queued, dropped): the queue length without a scan.
    event_counts: redb::Table<'t, &'static str, (u64, u64)>,
    event_leases: redb::Table<'t, &'static str, (&'static str, u64)>,
    robots: redb::Table<'t, &'static str, &'static str>,
    quota_usage: redb::Table<'t, &'static str, u64>,
    quota_refs: redb::Table<'t, (&'static str, &'static str), (u64, u64)>,
    audit: redb::Table<'t, u64, &'static str>,
    now: u64,
}

impl<'t> RedbRows<'t> {
    pub(super) fn open(txn: &'t WriteTransaction, now: u64) -> MetaResult<Self> {
        Ok(RedbRows {
            repos: txn.open_table(REPOS)?,
            links: txn.open_table(BLOB_LINKS)?,
            manifests: txn.open_table(MANIFESTS)?,
            tags: txn.open_table(TAGS)?,
            tags_by_digest: txn.open_table(TAGS_BY_DIGEST)?,
            referrers: txn.open_table(REFERRERS)?,
            refs: txn.open_table(REFS)?,
            pulls: txn.open_table(PULLS)?,
            events: txn.open_table(EVENTS)?,
            event_counts: txn.open_table(EVENT_COUNTS)?,
            event_leases: txn.open_table(EVENT_LEASES)?,
            robots: txn.open_table(ROBOTS)?,
            quota_usage: txn.open_table(QUOTA_USAGE)?,
            quota_refs: txn.open_table(QUOTA_REFS)?,
            audit: txn.open_table(AUDIT)?,
            now,
        })
    }

    fn counts(&self, endpoint: &str) -> MetaResult<(u64, u64)> {
        Ok(self
            .event_counts
            .get(endpoint)?
            .map_or((0, 0), |v| v.value()))
    }
}

/// Which of `digests` have a row keyed (repo, digest) in `table`.
fn present<V: redb::Value + 'static>(
    table: &redb::Table<'_, (&'static str, &'static str), V>,
    repo: &str,
    digests: &[String],
) -> MetaResult<Vec<String>> {
    let mut found = Vec::new();
    for d in digests {
        if table.get((repo, d.as_str()))?.is_some() {
            found.push(d.clone());
        }
    }
    Ok(found)
}

impl TxnRows for RedbRows<'_> {
    fn now(&self) -> u64 {
        self.now
    }

    fn ensure_repo(&mut self, repo: &str) -> MetaResult<()> {
        if self.repos.get(repo)?.is_none() {
            self.repos.insert(repo, self.now)?;
        }
        Ok(())
    }

    fn link(&mut self, repo: &str, digest: &str, _: Lock) -> MetaResult<Option<(u64, u64)>> {
        Ok(self.links.get((repo, digest))?.map(|v| v.value()))
    }

    fn links_present(
        &mut self,
        repo: &str,
        digests: &[String],
        _: Lock,
    ) -> MetaResult<Vec<String>> {
        present(&self.links, repo, digests)
    }

    fn put_link(&mut self, repo: &str, digest: &str, size: u64, at: u64) -> MetaResult<()> {
        self.links.insert((repo, digest), (size, at))?;
        Ok(())
    }

    fn remove_link(&mut self, repo: &str, digest: &str) -> MetaResult<()> {
        self.links.remove((repo, digest))?;
        Ok(())
    }

    fn manifest(
        &mut self,
        repo: &str,
        digest: &str,
        _: Lock,
    ) -> MetaResult<Option<ManifestRecord>> {
        match self.manifests.get((repo, digest))? {
            Some(v) => Ok(Some(ManifestRecord::decode(v.value())?)),
            None => Ok(None),
        }
    }

    fn manifests_present(
        &mut self,
        repo: &str,
        digests: &[String],
        _: Lock,
    ) -> MetaResult<Vec<String>> {
        present(&self.manifests, repo, digests)
    }

    fn put_manifest(&mut self, repo: &str, digest: &str, record: &str) -> MetaResult<()> {
        self.manifests.insert((repo, digest), record.as_bytes())?;
        Ok(())
    }

    fn remove_manifest(&mut self, repo: &str, digest: &str) -> MetaResult<Option<ManifestRecord>> {
        let old = self
            .manifests
            .remove((repo, digest))?
            .map(|v| v.value().to_vec());
        old.map(|bytes| ManifestRecord::decode(&bytes)).transpose()
    }

    fn put_referrer(&mut self, row: ReferrerRow) -> MetaResult<()> {
        self.referrers
            .insert((row.repo, row.subject, row.referrer), ())?;
        Ok(())
    }

    fn remove_referrer(&mut self, row: ReferrerRow) -> MetaResult<()> {
        self.referrers
            .remove((row.repo, row.subject, row.referrer))?;
        Ok(())
    }

    fn put_refs(&mut self, repo: &str, manifest: &str, used: &[&str]) -> MetaResult<()> {
        for u in used {
            self.refs.insert((*u, repo, manifest), ())?;
        }
        Ok(())
    }

    fn remove_refs(&mut self, repo: &str, manifest: &str, used: &[&str]) -> MetaResult<()> {
        for u in used {
            self.refs.remove((*u, repo, manifest))?;
        }
        Ok(())
    }

    fn referenced(&mut self, repo: &str, digest: &str) -> MetaResult<bool> {
        Ok(self
            .refs
            .range((digest, repo, "")..(digest, repo, AFTER_ALL))?
            .next()
            .is_some())
    }

    fn tag(&mut self, repo: &str, tag: &str, _: Lock) -> MetaResult<Option<String>> {
        Ok(self.tags.get((repo, tag))?.map(|v| v.value().to_owned()))
    }

    fn lock_tag_name(&mut self, _: &str, _: &str) -> MetaResult<()> {
        Ok(())
    }

    fn tags_on(&mut self, repo: &str, digest: &str) -> MetaResult<Vec<String>> {
        let mut out = Vec::new();
        for entry in self
            .tags_by_digest
            .range((repo, digest, "")..(repo, digest, AFTER_ALL))?
        {
            out.push(entry?.0.value().2.to_owned());
        }
        Ok(out)
    }

    fn put_tag(&mut self, repo: &str, tag: &str, digest: &str) -> MetaResult<()> {
        let before = self
            .tags
            .insert((repo, tag), digest)?
            .map(|old| old.value().to_owned());
        if let Some(old) = before.filter(|old| old != digest) {
            self.tags_by_digest.remove((repo, old.as_str(), tag))?;
        }
        self.tags_by_digest.insert((repo, digest, tag), ())?;
        Ok(())
    }

    fn remove_tag(&mut self, repo: &str, tag: &str) -> MetaResult<()> {
        let before = self
            .tags
            .remove((repo, tag))?
            .map(|old| old.value().to_owned());
        if let Some(old) = before {
            self.tags_by_digest.remove((repo, old.as_str(), tag))?;
        }
        Ok(())
    }

    fn raise_pulls(&mut self, pulls: &[(RepoName, Digest, u64)]) -> MetaResult<()> {
        for (repo, digest, at) in pulls {
            let (r, d) = (repo.as_str(), digest.to_string());
            if self.manifests.get((r, d.as_str()))?.is_none() {
                continue;
            }
            let before = self.pulls.get((r, d.as_str()))?.map(|v| v.value());
            if before.is_none_or(|b| b < *at) {
                self.pulls.insert((r, d.as_str()), *at)?;
            }
        }
        Ok(())
    }

    fn remove_pull(&mut self, repo: &str, digest: &str) -> MetaResult<()> {
        self.pulls.remove((repo, digest))?;
        Ok(())
    }

    fn queued_events(&mut self, endpoint: &str) -> MetaResult<u64> {
        Ok(self.counts(endpoint)?.0)
    }

    fn push_event(&mut self, endpoint: &str, payload: &[u8]) -> MetaResult<()> {
        let last = self
            .events
            .range((endpoint, 0)..=(endpoint, u64::MAX))?
            .next_back()
            .transpose()?
            .map_or(0, |(k, _)| k.value().1);
        self.events.insert((endpoint, last + 1), payload)?;
        let (queued, dropped) = self.counts(endpoint)?;
        self.event_counts.insert(endpoint, (queued + 1, dropped))?;
        Ok(())
    }

    fn count_dropped_event(&mut self, endpoint: &str) -> MetaResult<()> {
        let (queued, dropped) = self.counts(endpoint)?;
        self.event_counts.insert(endpoint, (queued, dropped + 1))?;
        Ok(())
    }

    fn remove_events(&mut self, endpoint: &str, through: u64) -> MetaResult<()> {
        let seqs: Vec<u64> = self
            .events
            .range((endpoint, 0)..=(endpoint, through))?
            .map(|r| r.map(|(k, _)| k.value().1))
            .collect::<Result<_, _>>()?;
        for seq in &seqs {
            self.events.remove((endpoint, *seq))?;
        }
        let (queued, dropped) = self.counts(endpoint)?;
        self.event_counts.insert(
            endpoint,
            (queued.saturating_sub(seqs.len() as u64), dropped),
        )?;
        Ok(())
    }

    /// A lease in this file was taken by this process or a predecessor
    /// that is gone: never another live node's (a killed predecessor's
    /// lease must not delay the restart).
    fn delivery_lease(&mut self, _: &str, _: Lock) -> MetaResult<Option<(String, u64)>> {
        Ok(None)
    }

    fn put_delivery_lease(&mut self, endpoint: &str, node: &str, until: u64) -> MetaResult<()> {
        self.event_leases.insert(endpoint, (node, until))?;
        Ok(())
    }

    fn endpoints(&mut self) -> MetaResult<Vec<String>> {
        Ok(self
            .event_counts
            .iter()?
            .map(|r| r.map(|(k, _)| k.value().to_owned()))
            .collect::<Result<_, _>>()?)
    }

    fn lock_quota(&mut self, _: &str) -> MetaResult<()> {
        Ok(())
    }

    fn quota_usage(&mut self, quota: &str) -> MetaResult<Option<u64>> {
        Ok(self.quota_usage.get(quota)?.map(|v| v.value()))
    }

    fn add_quota_usage(&mut self, quota: &str, delta: i64) -> MetaResult<()> {
        let used = self.quota_usage(quota)?.unwrap_or(0);
        self.quota_usage
            .insert(quota, used.saturating_add_signed(delta))?;
        Ok(())
    }

    fn quota_ref(&mut self, quota: &str, digest: &str) -> MetaResult<Option<(u64, u64)>> {
        Ok(self.quota_refs.get((quota, digest))?.map(|v| v.value()))
    }

    fn put_quota_ref(
        &mut self,
        quota: &str,
        digest: &str,
        count: u64,
        size: u64,
    ) -> MetaResult<()> {
        self.quota_refs.insert((quota, digest), (count, size))?;
        Ok(())
    }

    fn remove_quota_ref(&mut self, quota: &str, digest: &str) -> MetaResult<()> {
        self.quota_refs.remove((quota, digest))?;
        Ok(())
    }

    fn quota_names(&mut self) -> MetaResult<Vec<String>> {
        Ok(self
            .quota_usage
            .iter()?
            .map(|r| r.map(|(k, _)| k.value().to_owned()))
            .collect::<Result<_, _>>()?)
    }

    fn forget_quota(&mut self, quota: &str) -> MetaResult<()> {
        self.quota_usage.remove(quota)?;
        self.quota_refs
            .retain_in((quota, "")..(quota, AFTER_ALL), |_, _| false)?;
        Ok(())
    }

    fn repo_names(&mut self) -> MetaResult<Vec<String>> {
        Ok(self
            .repos
            .iter()?
            .map(|r| r.map(|(k, _)| k.value().to_owned()))
            .collect::<Result<_, _>>()?)
    }

    fn repo_contents(&mut self, repo: &str) -> MetaResult<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for entry in self.links.range((repo, "")..(repo, AFTER_ALL))? {
            let (k, v) = entry?;
            out.push((k.value().1.to_owned(), v.value().0));
        }
        for entry in self.manifests.range((repo, "")..(repo, AFTER_ALL))? {
            let (k, v) = entry?;
            // An unreadable record counts nothing (fsck reports it).
            if let Ok(record) = ManifestRecord::decode(v.value()) {
                out.push((k.value().1.to_owned(), record.size));
            }
        }
        Ok(out)
    }

    fn push_audit(&mut self, record: &AuditRecord) -> MetaResult<()> {
        // The record's time in microseconds, after the last id: unique,
        // increasing, and a time bound is an id bound.
        let last = self.audit.last()?.map_or(0, |(k, _)| k.value());
        let id = (record.at_ms.saturating_mul(1000)).max(last + 1);
        self.audit.insert(id, record.encode()?.as_str())?;
        Ok(())
    }

    fn prune_audit(&mut self, before_ms: u64) -> MetaResult<()> {
        self.audit
            .retain_in(..before_ms.saturating_mul(1000), |_, _| false)?;
        Ok(())
    }

    fn robot(&mut self, name: &str, _lock: Lock) -> MetaResult<Option<String>> {
        Ok(self.robots.get(name)?.map(|v| v.value().to_owned()))
    }

    fn put_robot(&mut self, name: &str, record: &str) -> MetaResult<()> {
        self.robots.insert(name, record)?;
        Ok(())
    }

    fn remove_robot(&mut self, name: &str) -> MetaResult<()> {
        self.robots.remove(name)?;
        Ok(())
    }

    fn forget_endpoint(&mut self, endpoint: &str) -> MetaResult<()> {
        self.remove_events(endpoint, u64::MAX)?;
        self.event_counts.remove(endpoint)?;
        self.event_leases.remove(endpoint)?;
        Ok(())
    }
}
