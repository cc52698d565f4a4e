//! The metadata rules, written once: what each [`MetaWrite`] requires
//! before it may be applied, and what applying it changes (the cascades of
//! a manifest delete, the referrer and reverse-reference indexes, GC's
//! re-checks, retention's conditional tag removal, the event queues, the
//! usage of each `[[quota]]` and the refusal of a write over one).
//!
//! Owns: [`TxnRows`], the narrow interface a backend implements inside one
//! write transaction (rows read, written, locked, scanned), and
//! [`apply_jobs`], which runs a batch of jobs over it.
//! Must not: know an engine. A backend translates rows; it never decides
//! whether a write may happen or what else it changes.
//!
//! Races between processes sharing one database are closed where this
//! file says [`Lock`]: a decision rests on rows read with `Share` or
//! `Update`, which a shared backend (PostgreSQL) locks until the
//! transaction ends. The embedded backend has one writer, so its locks are
//! no-ops.

use super::quota::{self, Quotas};
use super::{AuditRecord, ManifestRecord, MetaError, MetaResult, MetaWrite};
use crate::oci::{Digest, RepoName};

/// The words of the refusal of a manifest PUT that would change a stored
/// digest's media type (the HTTP layer answers MANIFEST_INVALID for it).
pub const TYPE_FIXED: &str = "its type cannot change to";

/// How a rule reads a row its decision rests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// A plain read: nothing rests on it staying as read.
    None,
    /// The row must not go before this transaction ends (a manifest PUT
    /// needs the blobs it names to stay linked).
    Share,
    /// The row is about to be changed or deleted on the strength of what
    /// was read (GC, retention, a delivery claim).
    Update,
}

/// The rows of one write transaction, as the rules see them. Strings are
/// the registry's own (repository names, digests, tags, endpoint names),
/// already validated. Every method may fail with the backend's trouble; a
/// failure fails the whole batch.
/// One row of the referrers index: `referrer` (a manifest of `repo`)
/// names `subject` as its subject.
#[derive(Clone, Copy)]
pub struct ReferrerRow<'a> {
    pub repo: &'a str,
    pub subject: &'a str,
    pub referrer: &'a str,
}

pub trait TxnRows {
    /// The transaction's clock (unix seconds), one reading per batch.
    fn now(&self) -> u64;

    /// Records `repo` in the catalog if it is not there yet.
    fn ensure_repo(&mut self, repo: &str) -> MetaResult<()>;

    /// A blob link's (size, linked_at).
    fn link(&mut self, repo: &str, digest: &str, lock: Lock) -> MetaResult<Option<(u64, u64)>>;
    /// Which of `digests` `repo` links, each found row locked with `lock`
    /// (in digest order, so two transactions lock in one order).
    fn links_present(
        &mut self,
        repo: &str,
        digests: &[String],
        lock: Lock,
    ) -> MetaResult<Vec<String>>;
    /// Inserts or replaces a link.
    fn put_link(&mut self, repo: &str, digest: &str, size: u64, at: u64) -> MetaResult<()>;
    fn remove_link(&mut self, repo: &str, digest: &str) -> MetaResult<()>;

    /// A manifest's record. An unreadable record is `MetaError::Record`.
    fn manifest(
        &mut self,
        repo: &str,
        digest: &str,
        lock: Lock,
    ) -> MetaResult<Option<ManifestRecord>>;
    /// Which of `digests` are manifests of `repo`, locked as `links_present`.
    fn manifests_present(
        &mut self,
        repo: &str,
        digests: &[String],
        lock: Lock,
    ) -> MetaResult<Vec<String>>;
    /// Inserts or replaces a manifest's record (another process may have
    /// inserted the same row since this transaction looked).
    /// `record` is [`ManifestRecord::encode`]'s text.
    fn put_manifest(&mut self, repo: &str, digest: &str, record: &str) -> MetaResult<()>;
    /// Removes a manifest's record; the record it had, if any.
    fn remove_manifest(&mut self, repo: &str, digest: &str) -> MetaResult<Option<ManifestRecord>>;

    fn put_referrer(&mut self, row: ReferrerRow) -> MetaResult<()>;
    fn remove_referrer(&mut self, row: ReferrerRow) -> MetaResult<()>;
    /// Notes that `manifest` of `repo` uses each of `used` (blobs, children).
    fn put_refs(&mut self, repo: &str, manifest: &str, used: &[&str]) -> MetaResult<()>;
    fn remove_refs(&mut self, repo: &str, manifest: &str, used: &[&str]) -> MetaResult<()>;
    /// Whether any manifest of `repo` uses `digest`.
    fn referenced(&mut self, repo: &str, digest: &str) -> MetaResult<bool>;

    /// The digest a tag points at.
    fn tag(&mut self, repo: &str, tag: &str, lock: Lock) -> MetaResult<Option<String>>;
    /// Serialises transactions about one tag name until the transaction
    /// ends, whether or not the tag exists yet (a row lock cannot lock a
    /// row that is not there).
    fn lock_tag_name(&mut self, repo: &str, tag: &str) -> MetaResult<()>;
    /// The tags of `repo` that point at `digest`.
    fn tags_on(&mut self, repo: &str, digest: &str) -> MetaResult<Vec<String>>;
    fn put_tag(&mut self, repo: &str, tag: &str, digest: &str) -> MetaResult<()>;
    fn remove_tag(&mut self, repo: &str, tag: &str) -> MetaResult<()>;

    /// Raises each manifest's last-pull time to `at` (never lowers it),
    /// for manifests that still exist; the others are skipped.
    fn raise_pulls(&mut self, pulls: &[(RepoName, Digest, u64)]) -> MetaResult<()>;
    fn remove_pull(&mut self, repo: &str, digest: &str) -> MetaResult<()>;

    /// Serialises transactions that count toward `quota` until the
    /// transaction ends (whether or not its row exists yet).
    fn lock_quota(&mut self, quota: &str) -> MetaResult<()>;
    /// A quota's usage in bytes; `None` when it has no row (never counted).
    fn quota_usage(&mut self, quota: &str) -> MetaResult<Option<u64>>;
    /// Adds `delta` to a quota's usage, creating its row at 0 first.
    fn add_quota_usage(&mut self, quota: &str, delta: i64) -> MetaResult<()>;
    /// How many rows (blob links, manifests) of the quota's repositories
    /// name `digest`, and the digest's size.
    fn quota_ref(&mut self, quota: &str, digest: &str) -> MetaResult<Option<(u64, u64)>>;
    fn put_quota_ref(&mut self, quota: &str, digest: &str, count: u64, size: u64)
        -> MetaResult<()>;
    fn remove_quota_ref(&mut self, quota: &str, digest: &str) -> MetaResult<()>;
    /// Every quota with a usage row.
    fn quota_names(&mut self) -> MetaResult<Vec<String>>;
    /// Removes a quota's usage row and its refs.
    fn forget_quota(&mut self, quota: &str) -> MetaResult<()>;
    /// Every repository of the catalog.
    fn repo_names(&mut self) -> MetaResult<Vec<String>>;
    /// What a repository holds: (digest, size) of each blob link and each
    /// manifest.
    fn repo_contents(&mut self, repo: &str) -> MetaResult<Vec<(String, u64)>>;

    /// Appends an audit record; the backend gives it its id.
    fn push_audit(&mut self, record: &AuditRecord) -> MetaResult<()>;
    /// Removes audit records written before `before_ms`.
    fn prune_audit(&mut self, before_ms: u64) -> MetaResult<()>;

    /// A robot account's record ([`super::RobotRecord::encode`]'s text).
    fn robot(&mut self, name: &str, lock: Lock) -> MetaResult<Option<String>>;
    fn put_robot(&mut self, name: &str, record: &str) -> MetaResult<()>;
    fn remove_robot(&mut self, name: &str) -> MetaResult<()>;

    /// How many events are queued for `endpoint`.
    fn queued_events(&mut self, endpoint: &str) -> MetaResult<u64>;
    /// Appends an event after every queued one of `endpoint`.
    fn push_event(&mut self, endpoint: &str, payload: &[u8]) -> MetaResult<()>;
    /// Counts one event dropped for a full queue.
    fn count_dropped_event(&mut self, endpoint: &str) -> MetaResult<()>;
    /// Removes `endpoint`'s events up to sequence `through`.
    fn remove_events(&mut self, endpoint: &str, through: u64) -> MetaResult<()>;
    /// The live delivery lease of `endpoint` held by another process: (node,
    /// until). A backend only one process can open has none.
    fn delivery_lease(&mut self, endpoint: &str, lock: Lock) -> MetaResult<Option<(String, u64)>>;
    fn put_delivery_lease(&mut self, endpoint: &str, node: &str, until: u64) -> MetaResult<()>;
    /// Every endpoint with a queue, a drop count or a lease.
    fn endpoints(&mut self) -> MetaResult<Vec<String>>;
    /// Removes an endpoint's queue, drop count and lease.
    fn forget_endpoint(&mut self, endpoint: &str) -> MetaResult<()>;
}

/// Applies each job in order: a job whose precondition fails is skipped
/// whole and answered `Conflict` (or `QuotaExceeded`); an `Err` fails the
/// batch (the caller rolls the transaction back). `quotas` are the
/// configured `[[quota]]`s, whose usage every change keeps.
pub fn apply_jobs(
    rows: &mut dyn TxnRows,
    jobs: &[Vec<MetaWrite>],
    quotas: &Quotas,
) -> MetaResult<Vec<MetaResult<()>>> {
    let mut results = Vec::with_capacity(jobs.len());
    for job in jobs {
        let mut refused = None;
        for op in job {
            if let Some(why) = conflict(rows, op)? {
                refused = Some(MetaError::Conflict(why));
                break;
            }
            if let Some(why) = over_quota(rows, op, quotas)? {
                refused = Some(MetaError::QuotaExceeded(why));
                break;
            }
        }
        if let Some(refusal) = refused {
            results.push(Err(refusal));
            continue;
        }
        for op in job {
            apply(rows, op, quotas)?;
        }
        results.push(Ok(()));
    }
    Ok(results)
}

/// What a write would add to the repository: (repository, digest, size),
/// when the row it makes is not there yet.
fn adds(rows: &mut dyn TxnRows, op: &MetaWrite) -> MetaResult<Option<(String, String, u64)>> {
    Ok(match op {
        MetaWrite::LinkBlob { repo, digest, size }
        | MetaWrite::MountBlob {
            repo, digest, size, ..
        } => {
            let (r, d) = (repo.as_str(), digest.to_string());
            match rows.link(r, &d, Lock::None)? {
                Some(_) => None,
                None => Some((r.to_owned(), d, *size)),
            }
        }
        MetaWrite::PutManifest {
            repo,
            digest,
            record,
            ..
        } => {
            let (r, d) = (repo.as_str(), digest.to_string());
            match rows.manifest(r, &d, Lock::None) {
                Ok(Some(_)) => None,
                Ok(None) | Err(MetaError::Record(_)) => Some((r.to_owned(), d, record.size)),
                Err(e) => return Err(e),
            }
        }
        _ => None,
    })
}

/// Why `op` would take a quota over its limit, if it would. The quotas it
/// looked at stay locked until the transaction ends, so two writes racing
/// for the last bytes are decided one after the other.
fn over_quota(
    rows: &mut dyn TxnRows,
    op: &MetaWrite,
    quotas: &Quotas,
) -> MetaResult<Option<String>> {
    if quotas.is_empty() {
        return Ok(None);
    }
    let Some((repo, digest, size)) = adds(rows, op)? else {
        return Ok(None);
    };
    for q in quotas.covering(&repo) {
        rows.lock_quota(&q.name)?;
        // A digest the quota holds already adds nothing to it.
        if rows.quota_ref(&q.name, &digest)?.is_some() {
            continue;
        }
        let used = rows.quota_usage(&q.name)?.unwrap_or(0);
        if used.saturating_add(size) > q.limit {
            return Ok(Some(quota::refusal(q, used, size)));
        }
    }
    Ok(None)
}

/// A row naming `digest` (`size` bytes) appeared in `repo`.
fn count_in(
    rows: &mut dyn TxnRows,
    quotas: &Quotas,
    repo: &str,
    digest: &str,
    size: u64,
) -> MetaResult<()> {
    for q in quotas.covering(repo) {
        count_in_quota(rows, &q.name, digest, size)?;
    }
    Ok(())
}

fn count_in_quota(rows: &mut dyn TxnRows, quota: &str, digest: &str, size: u64) -> MetaResult<()> {
    rows.lock_quota(quota)?;
    match rows.quota_ref(quota, digest)? {
        Some((n, held)) => rows.put_quota_ref(quota, digest, n + 1, held),
        None => {
            rows.put_quota_ref(quota, digest, 1, size)?;
            rows.add_quota_usage(quota, i64::try_from(size).unwrap_or(i64::MAX))
        }
    }
}

/// A row naming `digest` went from `repo`.
fn count_out(rows: &mut dyn TxnRows, quotas: &Quotas, repo: &str, digest: &str) -> MetaResult<()> {
    for q in quotas.covering(repo) {
        rows.lock_quota(&q.name)?;
        match rows.quota_ref(&q.name, digest)? {
            Some((n, held)) if n > 1 => rows.put_quota_ref(&q.name, digest, n - 1, held)?,
            Some((_, held)) => {
                rows.remove_quota_ref(&q.name, digest)?;
                rows.add_quota_usage(&q.name, -i64::try_from(held).unwrap_or(i64::MAX))?;
            }
            None => {}
        }
    }
    Ok(())
}

/// Forgets quotas no longer configured and counts, from what the
/// repositories hold, each configured quota that was never counted.
fn sync_quotas(rows: &mut dyn TxnRows, quotas: &Quotas) -> MetaResult<()> {
    let note = |rows: &mut dyn TxnRows, action: &str, name: &str, result: String| {
        rows.push_audit(&AuditRecord {
            at_ms: rows.now() * 1000,
            actor: "wharf".into(),
            action: action.into(),
            repository: name.into(),
            result,
            ..Default::default()
        })
    };
    for name in rows.quota_names()? {
        if quotas.get(&name).is_none() {
            rows.lock_quota(&name)?;
            rows.forget_quota(&name)?;
            note(rows, "quota_removed", &name, "ok".into())?;
        }
    }
    for q in quotas.all() {
        rows.lock_quota(&q.name)?;
        if rows.quota_usage(&q.name)?.is_some() {
            continue;
        }
        rows.add_quota_usage(&q.name, 0)?;
        for repo in rows.repo_names()? {
            if !quotas.covering(&repo).any(|c| c.name == q.name) {
                continue;
            }
            for (digest, size) in rows.repo_contents(&repo)? {
                count_in_quota(rows, &q.name, &digest, size)?;
            }
        }
        let used = rows.quota_usage(&q.name)?.unwrap_or(0);
        let counted = format!("limit {} bytes, {used} bytes used", q.limit);
        note(rows, "quota_added", &q.name, counted)?;
    }
    Ok(())
}

/// Why `op` may not be applied now, if it may not. The rows the decision
/// rests on stay locked until the transaction ends.
fn conflict(rows: &mut dyn TxnRows, op: &MetaWrite) -> MetaResult<Option<String>> {
    Ok(match op {
        MetaWrite::MountBlob { from, digest, .. } => {
            let d = digest.to_string();
            rows.link(from.as_str(), &d, Lock::Share)?
                .is_none()
                .then(|| format!("blob {d} is no longer in repository {from}"))
        }
        MetaWrite::PutManifest {
            repo,
            digest,
            record,
            tag,
            tag_immutable,
        } => {
            let (r, d) = (repo.as_str(), digest.to_string());
            if let (Some(t), true) = (tag, *tag_immutable) {
                rows.lock_tag_name(r, t)?;
                if rows.tag(r, t, Lock::None)?.is_some_and(|at| at != d) {
                    return Ok(Some(format!("tag {t} is immutable")));
                }
            }
            // A digest's type never changes once stored: every tag of it
            // must keep serving what it served (an unreadable old record
            // is replaced, as before).
            match rows.manifest(r, &d, Lock::None) {
                Ok(Some(old)) if old.media_type != record.media_type => {
                    return Ok(Some(format!(
                        "manifest {d} is stored as {}: {TYPE_FIXED} {}",
                        old.media_type, record.media_type
                    )));
                }
                Ok(_) | Err(MetaError::Record(_)) => {}
                // The database's trouble fails the batch, as everywhere.
                Err(e) => return Err(e),
            }
            if record.proxied {
                return Ok(None);
            }
            let found = rows.links_present(r, &record.blobs, Lock::Share)?;
            if let Some(b) = record.blobs.iter().find(|b| !found.contains(b)) {
                return Ok(Some(format!("blob {b} is not in repository {r}")));
            }
            let found = rows.manifests_present(r, &record.children, Lock::Share)?;
            record
                .children
                .iter()
                .find(|c| !found.contains(c))
                .map(|c| format!("manifest {c} is not in repository {r}"))
        }
        MetaWrite::RetireTag { repo, tag, digest } => {
            let d = digest.to_string();
            match rows.tag(repo.as_str(), tag, Lock::Update)? {
                Some(at) if at == d => None,
                _ => Some(format!("tag {tag} moved or went since retention looked")),
            }
        }
        MetaWrite::ClaimDelivery { endpoint, node, .. } => {
            let now = rows.now();
            match rows.delivery_lease(endpoint, Lock::Update)? {
                Some((other, until)) if other != *node && until > now => {
                    Some(format!("node {other} delivers {endpoint}"))
                }
                _ => None,
            }
        }
        MetaWrite::GcUnlinkBlob {
            repo,
            digest,
            cutoff,
        } => {
            let (r, d) = (repo.as_str(), digest.to_string());
            match rows.link(r, &d, Lock::Update)? {
                None => Some("already unlinked".into()),
                Some((_, at)) if at >= *cutoff => Some("linked recently".into()),
                Some(_) if rows.referenced(r, &d)? => Some("referenced".into()),
                Some(_) => None,
            }
        }
        MetaWrite::GcDeleteManifest {
            repo,
            digest,
            cutoff,
        } => {
            let (r, d) = (repo.as_str(), digest.to_string());
            let record = match rows.manifest(r, &d, Lock::Update) {
                Ok(Some(record)) => record,
                Ok(None) => return Ok(Some("already deleted".into())),
                // An unreadable record is not GC's to judge: spare it.
                Err(e @ MetaError::Record(_)) => return Ok(Some(e.to_string())),
                Err(e) => return Err(e),
            };
            if record.created >= *cutoff {
                Some("pushed recently".into())
            } else if rows.referenced(r, &d)? {
                Some("referenced by an index".into())
            } else if !rows.tags_on(r, &d)?.is_empty() {
                Some("tagged".into())
            } else {
                None
            }
        }
        MetaWrite::PutRobot { record } => rows
            .robot(&record.name, Lock::Update)?
            .is_some()
            .then(|| format!("robot {} exists", record.name)),
        MetaWrite::DeleteRobot { name } => rows
            .robot(name, Lock::Update)?
            .is_none()
            .then(|| format!("no robot {name}")),
        MetaWrite::LinkBlob { .. }
        | MetaWrite::SyncQuotas
        | MetaWrite::Audit { .. }
        | MetaWrite::PruneAudit { .. }
        | MetaWrite::UnlinkBlob { .. }
        | MetaWrite::DeleteManifest { .. }
        | MetaWrite::DeleteTag { .. }
        | MetaWrite::RecordPulls { .. }
        | MetaWrite::QueueEvent { .. }
        | MetaWrite::AckEvents { .. }
        | MetaWrite::ForgetEndpoints { .. } => None,
    })
}

/// The blobs and child manifests a record uses.
fn used(record: &ManifestRecord) -> Vec<&str> {
    record
        .blobs
        .iter()
        .chain(record.children.iter())
        .map(String::as_str)
        .collect()
}

/// Removes a manifest's record and the index entries made from it; its
/// tags stay (the caller decides).
fn drop_record(
    rows: &mut dyn TxnRows,
    quotas: &Quotas,
    repo: &str,
    digest: &str,
) -> MetaResult<()> {
    if let Some(old) = rows.remove_manifest(repo, digest)? {
        count_out(rows, quotas, repo, digest)?;
        if let Some(s) = &old.subject {
            rows.remove_referrer(ReferrerRow {
                repo,
                subject: s,
                referrer: digest,
            })?;
        }
        rows.remove_refs(repo, digest, &used(&old))?;
    }
    Ok(())
}

fn apply(rows: &mut dyn TxnRows, op: &MetaWrite, quotas: &Quotas) -> MetaResult<()> {
    match op {
        MetaWrite::LinkBlob { repo, digest, size }
        | MetaWrite::MountBlob {
            repo, digest, size, ..
        } => {
            let (r, d) = (repo.as_str(), digest.to_string());
            let new = rows.link(r, &d, Lock::None)?.is_none();
            let now = rows.now();
            rows.put_link(r, &d, *size, now)?;
            if new {
                count_in(rows, quotas, r, &d, *size)?;
            }
            rows.ensure_repo(r)?;
        }
        MetaWrite::UnlinkBlob { repo, digest } | MetaWrite::GcUnlinkBlob { repo, digest, .. } => {
            let (r, d) = (repo.as_str(), digest.to_string());
            if rows.link(r, &d, Lock::None)?.is_some() {
                rows.remove_link(r, &d)?;
                count_out(rows, quotas, r, &d)?;
            }
        }
        MetaWrite::SyncQuotas => sync_quotas(rows, quotas)?,
        MetaWrite::Audit { record } => rows.push_audit(record)?,
        MetaWrite::PruneAudit { before_ms } => rows.prune_audit(*before_ms)?,
        MetaWrite::PutManifest {
            repo,
            digest,
            record,
            tag,
            ..
        } => {
            let (r, d) = (repo.as_str(), digest.to_string());
            // A re-push replaces the record and its index entries; its tags stay.
            drop_record(rows, quotas, r, &d)?;
            rows.put_manifest(r, &d, &record.encode()?)?;
            count_in(rows, quotas, r, &d, record.size)?;
            if let Some(s) = &record.subject {
                rows.put_referrer(ReferrerRow {
                    repo: r,
                    subject: s,
                    referrer: &d,
                })?;
            }
            rows.put_refs(r, &d, &used(record))?;
            if let Some(t) = tag {
                rows.put_tag(r, t, &d)?;
            }
            rows.ensure_repo(r)?;
        }
        MetaWrite::DeleteManifest { repo, digest }
        | MetaWrite::GcDeleteManifest { repo, digest, .. } => {
            let (r, d) = (repo.as_str(), digest.to_string());
            drop_record(rows, quotas, r, &d)?;
            for t in rows.tags_on(r, &d)? {
                rows.remove_tag(r, &t)?;
            }
            rows.remove_pull(r, &d)?;
        }
        MetaWrite::DeleteTag { repo, tag } | MetaWrite::RetireTag { repo, tag, .. } => {
            rows.remove_tag(repo.as_str(), tag)?;
        }
        MetaWrite::RecordPulls { pulls } => rows.raise_pulls(pulls)?,
        MetaWrite::QueueEvent {
            endpoint,
            payload,
            max_pending,
        } => {
            if rows.queued_events(endpoint)? >= *max_pending {
                rows.count_dropped_event(endpoint)?;
            } else {
                rows.push_event(endpoint, payload)?;
            }
        }
        MetaWrite::AckEvents { endpoint, through } => rows.remove_events(endpoint, *through)?,
        MetaWrite::ClaimDelivery {
            endpoint,
            node,
            until,
        } => rows.put_delivery_lease(endpoint, node, *until)?,
        MetaWrite::PutRobot { record } => rows.put_robot(&record.name, &record.encode()?)?,
        MetaWrite::DeleteRobot { name } => rows.remove_robot(name)?,
        MetaWrite::ForgetEndpoints { keep } => {
            for e in rows.endpoints()? {
                if !keep.contains(&e) {
                    rows.forget_endpoint(&e)?;
                }
            }
        }
    }
    Ok(())
}
