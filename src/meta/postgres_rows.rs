//! The shared backend's rows inside one write transaction: SQL as
//! [`TxnRows`]. Translation only; the rules are in `rules`.
//!
//! The rules' locks are row locks here (`FOR SHARE`, `FOR UPDATE`, and a
//! transaction advisory lock on a tag's name), held until the transaction
//! ends: that is what orders two nodes deciding about the same rows.

use super::postgres_backend::{map_error, retryable};
use super::postgres_pool::{Params, PgError, PgTransaction as Transaction};
use super::quota::Quotas;
use super::rules::{self, Lock, ReferrerRow, TxnRows};
use super::{AuditRecord, ManifestRecord, MetaError, MetaResult, MetaWrite};
use crate::oci::{Digest, RepoName};

/// Rows of one transaction. The first client error is kept whole, so the
/// commit loop can tell a lost race (retry the batch) from a fault.
pub(super) struct PgRows<'a, 't> {
    txn: &'a mut Transaction<'t>,
    now: u64,
    pub(super) error: Option<PgError>,
}

/// Why a batch failed: the error, and whether rerunning it may succeed (a
/// deadlock or serialization loss against another node).
pub(super) struct Failed {
    pub error: MetaError,
    pub retry: bool,
}

/// Runs the rules for `jobs` in `txn`; the caller commits.
pub(super) fn apply_jobs(
    txn: &mut Transaction<'_>,
    jobs: &[Vec<MetaWrite>],
    quotas: &Quotas,
) -> Result<Vec<MetaResult<()>>, Failed> {
    let mut rows = PgRows {
        txn,
        now: crate::calendar::unix_now(),
        error: None,
    };
    rules::apply_jobs(&mut rows, jobs, quotas).map_err(|error| Failed {
        retry: rows.error.as_ref().is_some_and(retryable),
        error,
    })
}

/// The SQL suffix for a lock.
fn lock_clause(lock: Lock) -> &'static str {
    match lock {
        Lock::None => "",
        Lock::Share => " FOR SHARE",
        Lock::Update => " FOR UPDATE",
    }
}

impl PgRows<'_, '_> {
    /// Keeps the first client error whole and maps it for the rules.
    fn sql<T>(&mut self, r: Result<T, PgError>) -> MetaResult<T> {
        r.map_err(|e| {
            let mapped = map_error(&e);
            self.error.get_or_insert(e);
            mapped
        })
    }

    fn exec(&mut self, sql: &str, params: Params<'_>) -> MetaResult<u64> {
        let r = self.txn.execute(sql, params);
        self.sql(r)
    }

    fn query(&mut self, sql: &str, params: Params<'_>) -> MetaResult<Vec<tokio_postgres::Row>> {
        let r = self.txn.query(sql, params);
        self.sql(r)
    }

    fn query_opt(
        &mut self,
        sql: &str,
        params: Params<'_>,
    ) -> MetaResult<Option<tokio_postgres::Row>> {
        let r = self.txn.query_opt(sql, params);
        self.sql(r)
    }

    /// Which of `digests` have a row in `table` for `repo`, locked.
    fn present(
        &mut self,
        table: &str,
        repo: &str,
        digests: &[String],
        lock: Lock,
    ) -> MetaResult<Vec<String>> {
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT digest FROM {table} WHERE repo = $1 AND digest = ANY($2) ORDER BY digest{}",
            lock_clause(lock)
        );
        Ok(self
            .query(&sql, &[&repo, &digests])?
            .iter()
            .map(|row| row.get(0))
            .collect())
    }
}

impl TxnRows for PgRows<'_, '_> {
    fn now(&self) -> u64 {
        self.now
    }

    fn ensure_repo(&mut self, repo: &str) -> MetaResult<()> {
        self.exec(
            "INSERT INTO repos (name, created) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&repo, &(self.now as i64)],
        )?;
        Ok(())
    }

    fn link(&mut self, repo: &str, digest: &str, lock: Lock) -> MetaResult<Option<(u64, u64)>> {
        let sql = format!(
            "SELECT size, linked_at FROM blob_links WHERE repo = $1 AND digest = $2{}",
            lock_clause(lock)
        );
        Ok(self
            .query_opt(&sql, &[&repo, &digest])?
            .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64)))
    }

    fn links_present(
        &mut self,
        repo: &str,
        digests: &[String],
        lock: Lock,
    ) -> MetaResult<Vec<String>> {
        self.present("blob_links", repo, digests, lock)
    }

    fn put_link(&mut self, repo: &str, digest: &str, size: u64, at: u64) -> MetaResult<()> {
        self.exec(
            "INSERT INTO blob_links (repo, digest, size, linked_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (repo, digest) DO UPDATE SET size = EXCLUDED.size, linked_at = EXCLUDED.linked_at",
            &[&repo, &digest, &(size as i64), &(at as i64)],
        )?;
        Ok(())
    }

    fn remove_link(&mut self, repo: &str, digest: &str) -> MetaResult<()> {
        self.exec(
            "DELETE FROM blob_links WHERE repo = $1 AND digest = $2",
            &[&repo, &digest],
        )?;
        Ok(())
    }

    fn manifest(
        &mut self,
        repo: &str,
        digest: &str,
        lock: Lock,
    ) -> MetaResult<Option<ManifestRecord>> {
        let sql = format!(
            "SELECT record FROM manifests WHERE repo = $1 AND digest = $2{}",
            lock_clause(lock)
        );
        self.query_opt(&sql, &[&repo, &digest])?
            .map(|r| ManifestRecord::decode(r.get::<_, &str>(0).as_bytes()))
            .transpose()
    }

    fn manifests_present(
        &mut self,
        repo: &str,
        digests: &[String],
        lock: Lock,
    ) -> MetaResult<Vec<String>> {
        self.present("manifests", repo, digests, lock)
    }

    fn put_manifest(&mut self, repo: &str, digest: &str, record: &str) -> MetaResult<()> {
        self.exec(
            "INSERT INTO manifests (repo, digest, record) VALUES ($1, $2, $3) \
             ON CONFLICT (repo, digest) DO UPDATE SET record = EXCLUDED.record",
            &[&repo, &digest, &record],
        )?;
        Ok(())
    }

    fn remove_manifest(&mut self, repo: &str, digest: &str) -> MetaResult<Option<ManifestRecord>> {
        self.query_opt(
            "DELETE FROM manifests WHERE repo = $1 AND digest = $2 RETURNING record",
            &[&repo, &digest],
        )?
        .map(|r| ManifestRecord::decode(r.get::<_, &str>(0).as_bytes()))
        .transpose()
    }

    fn put_referrer(&mut self, row: ReferrerRow) -> MetaResult<()> {
        self.exec(
            "INSERT INTO referrers (repo, subject, referrer) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&row.repo, &row.subject, &row.referrer],
        )?;
        Ok(())
    }

    fn remove_referrer(&mut self, row: ReferrerRow) -> MetaResult<()> {
        self.exec(
            "DELETE FROM referrers WHERE repo = $1 AND subject = $2 AND referrer = $3",
            &[&row.repo, &row.subject, &row.referrer],
        )?;
        Ok(())
    }

    fn put_refs(&mut self, repo: &str, manifest: &str, used: &[&str]) -> MetaResult<()> {
        self.exec(
            "INSERT INTO refs (digest, repo, manifest) SELECT u, $2, $3 FROM unnest($1::text[]) AS u \
             ON CONFLICT DO NOTHING",
            &[&used, &repo, &manifest],
        )?;
        Ok(())
    }

    fn remove_refs(&mut self, repo: &str, manifest: &str, used: &[&str]) -> MetaResult<()> {
        self.exec(
            "DELETE FROM refs WHERE repo = $1 AND manifest = $2 AND digest = ANY($3)",
            &[&repo, &manifest, &used],
        )?;
        Ok(())
    }

    fn referenced(&mut self, repo: &str, digest: &str) -> MetaResult<bool> {
        Ok(self
            .query_opt(
                "SELECT 1 FROM refs WHERE digest = $1 AND repo = $2 LIMIT 1",
                &[&digest, &repo],
            )?
            .is_some())
    }

    fn tag(&mut self, repo: &str, tag: &str, lock: Lock) -> MetaResult<Option<String>> {
        let sql = format!(
            "SELECT digest FROM tags WHERE repo = $1 AND tag = $2{}",
            lock_clause(lock)
        );
        Ok(self.query_opt(&sql, &[&repo, &tag])?.map(|r| r.get(0)))
    }

    fn lock_tag_name(&mut self, repo: &str, tag: &str) -> MetaResult<()> {
        self.exec(
            "SELECT pg_advisory_xact_lock(hashtextextended($1 || ':' || $2, 0))",
            &[&repo, &tag],
        )?;
        Ok(())
    }

    fn tags_on(&mut self, repo: &str, digest: &str) -> MetaResult<Vec<String>> {
        Ok(self
            .query(
                "SELECT tag FROM tags WHERE repo = $1 AND digest = $2 ORDER BY tag",
                &[&repo, &digest],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn put_tag(&mut self, repo: &str, tag: &str, digest: &str) -> MetaResult<()> {
        self.exec(
            "INSERT INTO tags (repo, tag, digest) VALUES ($1, $2, $3) \
             ON CONFLICT (repo, tag) DO UPDATE SET digest = EXCLUDED.digest",
            &[&repo, &tag, &digest],
        )?;
        Ok(())
    }

    fn remove_tag(&mut self, repo: &str, tag: &str) -> MetaResult<()> {
        self.exec(
            "DELETE FROM tags WHERE repo = $1 AND tag = $2",
            &[&repo, &tag],
        )?;
        Ok(())
    }

    fn raise_pulls(&mut self, pulls: &[(RepoName, Digest, u64)]) -> MetaResult<()> {
        let repos: Vec<&str> = pulls.iter().map(|p| p.0.as_str()).collect();
        let digests: Vec<String> = pulls.iter().map(|p| p.1.to_string()).collect();
        let times: Vec<i64> = pulls.iter().map(|p| p.2 as i64).collect();
        // One statement for the batch, sorted so two nodes' batches lock
        // rows in one order.
        self.exec(
            "INSERT INTO pulls (repo, digest, pulled_at) \
             SELECT p.r, p.d, max(p.t) FROM unnest($1::text[], $2::text[], $3::bigint[]) AS p(r, d, t) \
             JOIN manifests m ON m.repo = p.r AND m.digest = p.d \
             GROUP BY p.r, p.d ORDER BY p.r, p.d \
             ON CONFLICT (repo, digest) DO UPDATE \
             SET pulled_at = GREATEST(pulls.pulled_at, EXCLUDED.pulled_at)",
            &[&repos, &digests, &times],
        )?;
        Ok(())
    }

    fn remove_pull(&mut self, repo: &str, digest: &str) -> MetaResult<()> {
        self.exec(
            "DELETE FROM pulls WHERE repo = $1 AND digest = $2",
            &[&repo, &digest],
        )?;
        Ok(())
    }

    fn queued_events(&mut self, endpoint: &str) -> MetaResult<u64> {
        let row = self.query(
            "SELECT count(*) FROM events WHERE endpoint = $1",
            &[&endpoint],
        )?;
        Ok(row.first().map_or(0, |r| r.get::<_, i64>(0).max(0) as u64))
    }

    fn push_event(&mut self, endpoint: &str, payload: &[u8]) -> MetaResult<()> {
        self.exec(
            "INSERT INTO events (endpoint, payload) VALUES ($1, $2)",
            &[&endpoint, &payload],
        )?;
        Ok(())
    }

    fn count_dropped_event(&mut self, endpoint: &str) -> MetaResult<()> {
        self.exec(
            "INSERT INTO event_drops (endpoint, dropped) VALUES ($1, 1) \
             ON CONFLICT (endpoint) DO UPDATE SET dropped = event_drops.dropped + 1",
            &[&endpoint],
        )?;
        Ok(())
    }

    fn remove_events(&mut self, endpoint: &str, through: u64) -> MetaResult<()> {
        self.exec(
            "DELETE FROM events WHERE endpoint = $1 AND id <= $2",
            &[&endpoint, &(through.min(i64::MAX as u64) as i64)],
        )?;
        Ok(())
    }

    fn delivery_lease(&mut self, endpoint: &str, lock: Lock) -> MetaResult<Option<(String, u64)>> {
        let sql = format!(
            "SELECT node, until FROM event_leases WHERE endpoint = $1{}",
            lock_clause(lock)
        );
        Ok(self
            .query_opt(&sql, &[&endpoint])?
            .map(|r| (r.get(0), r.get::<_, i64>(1).max(0) as u64)))
    }

    fn put_delivery_lease(&mut self, endpoint: &str, node: &str, until: u64) -> MetaResult<()> {
        self.exec(
            "INSERT INTO event_leases (endpoint, node, until) VALUES ($1, $2, $3) \
             ON CONFLICT (endpoint) DO UPDATE SET node = $2, until = $3",
            &[&endpoint, &node, &(until as i64)],
        )?;
        Ok(())
    }

    fn endpoints(&mut self) -> MetaResult<Vec<String>> {
        Ok(self
            .query(
                "SELECT endpoint FROM events UNION SELECT endpoint FROM event_drops \
                 UNION SELECT endpoint FROM event_leases",
                &[],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn lock_quota(&mut self, quota: &str) -> MetaResult<()> {
        self.exec(
            "SELECT pg_advisory_xact_lock(hashtextextended('quota:' || $1, 0))",
            &[&quota],
        )?;
        Ok(())
    }

    fn quota_usage(&mut self, quota: &str) -> MetaResult<Option<u64>> {
        Ok(self
            .query_opt("SELECT bytes FROM quota_usage WHERE name = $1", &[&quota])?
            .map(|r| r.get::<_, i64>(0).max(0) as u64))
    }

    fn add_quota_usage(&mut self, quota: &str, delta: i64) -> MetaResult<()> {
        self.exec(
            "INSERT INTO quota_usage (name, bytes) VALUES ($1, greatest($2::bigint, 0)) \
             ON CONFLICT (name) DO UPDATE SET bytes = greatest(quota_usage.bytes + $2::bigint, 0)",
            &[&quota, &delta],
        )?;
        Ok(())
    }

    fn quota_ref(&mut self, quota: &str, digest: &str) -> MetaResult<Option<(u64, u64)>> {
        Ok(self
            .query_opt(
                "SELECT count, size FROM quota_refs WHERE name = $1 AND digest = $2",
                &[&quota, &digest],
            )?
            .map(|r| {
                (
                    r.get::<_, i64>(0).max(0) as u64,
                    r.get::<_, i64>(1).max(0) as u64,
                )
            }))
    }

    fn put_quota_ref(
        &mut self,
        quota: &str,
        digest: &str,
        count: u64,
        size: u64,
    ) -> MetaResult<()> {
        self.exec(
            "INSERT INTO quota_refs (name, digest, count, size) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name, digest) DO UPDATE SET count = $3, size = $4",
            &[&quota, &digest, &(count as i64), &(size as i64)],
        )?;
        Ok(())
    }

    fn remove_quota_ref(&mut self, quota: &str, digest: &str) -> MetaResult<()> {
        self.exec(
            "DELETE FROM quota_refs WHERE name = $1 AND digest = $2",
            &[&quota, &digest],
        )?;
        Ok(())
    }

    fn quota_names(&mut self) -> MetaResult<Vec<String>> {
        Ok(self
            .query("SELECT name FROM quota_usage", &[])?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn forget_quota(&mut self, quota: &str) -> MetaResult<()> {
        for table in ["quota_usage", "quota_refs"] {
            self.exec(&format!("DELETE FROM {table} WHERE name = $1"), &[&quota])?;
        }
        Ok(())
    }

    fn repo_names(&mut self) -> MetaResult<Vec<String>> {
        Ok(self
            .query("SELECT name FROM repos", &[])?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn repo_contents(&mut self, repo: &str) -> MetaResult<Vec<(String, u64)>> {
        let mut out: Vec<(String, u64)> = self
            .query(
                "SELECT digest, size FROM blob_links WHERE repo = $1",
                &[&repo],
            )?
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1).max(0) as u64))
            .collect();
        for r in self.query(
            "SELECT digest, record FROM manifests WHERE repo = $1",
            &[&repo],
        )? {
            // An unreadable record counts nothing (fsck reports it).
            if let Ok(record) = ManifestRecord::decode(r.get::<_, &str>(1).as_bytes()) {
                out.push((r.get(0), record.size));
            }
        }
        Ok(out)
    }

    fn push_audit(&mut self, record: &AuditRecord) -> MetaResult<()> {
        self.exec(
            "INSERT INTO audit (at_ms, actor, repository, record) VALUES ($1, $2, $3, $4)",
            &[
                &(record.at_ms.min(i64::MAX as u64) as i64),
                &record.actor,
                &record.repository,
                &record.encode()?,
            ],
        )?;
        Ok(())
    }

    fn prune_audit(&mut self, before_ms: u64) -> MetaResult<()> {
        self.exec(
            "DELETE FROM audit WHERE at_ms < $1",
            &[&(before_ms.min(i64::MAX as u64) as i64)],
        )?;
        Ok(())
    }

    fn robot(&mut self, name: &str, lock: Lock) -> MetaResult<Option<String>> {
        let sql = format!(
            "SELECT record FROM robots WHERE name = $1{}",
            lock_clause(lock)
        );
        Ok(self.query_opt(&sql, &[&name])?.map(|r| r.get(0)))
    }

    fn put_robot(&mut self, name: &str, record: &str) -> MetaResult<()> {
        self.exec(
            "INSERT INTO robots (name, record) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET record = $2",
            &[&name, &record],
        )?;
        Ok(())
    }

    fn remove_robot(&mut self, name: &str) -> MetaResult<()> {
        self.exec("DELETE FROM robots WHERE name = $1", &[&name])?;
        Ok(())
    }

    fn forget_endpoint(&mut self, endpoint: &str) -> MetaResult<()> {
        for table in ["events", "event_drops", "event_leases"] {
            self.exec(
                &format!("DELETE FROM {table} WHERE endpoint = $1"),
                &[&endpoint],
            )?;
        }
        Ok(())
    }
}

/// Applies `ops` as one job inside a transaction the caller owns (the
/// object-store commit links its blob in the transaction that records it):
/// the same rules the writer applies. `Ok(Err(Conflict))` (or
/// `QuotaExceeded`) when a precondition failed; nothing of `ops` was
/// applied then.
pub fn apply_in_transaction(
    txn: &mut Transaction<'_>,
    ops: Vec<MetaWrite>,
    quotas: &Quotas,
) -> MetaResult<MetaResult<()>> {
    let mut results = apply_jobs(txn, &[ops], quotas).map_err(|f| f.error)?;
    Ok(results.pop().unwrap_or(Ok(())))
}
