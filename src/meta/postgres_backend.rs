//! The shared backend: PostgreSQL, for any number of Wharf nodes on one
//! database.
//!
//! Owns: the connection settings read from `metadata.url`, running the
//! migrations (`postgres_schema`), the SQL behind [`MetaRead`], and the
//! commit loop around the rules (`postgres_rows` translates their rows).
//! Must not: be called from an async worker (its calls block until the
//! pool's runtime answers; callers are on the blocking pool or the writer
//! thread), or hold a transaction open across anything but SQL.
//!
//! Races between nodes are closed with row locks inside each write's
//! transaction, at READ COMMITTED, where the rules ask for a `Lock`: a
//! manifest PUT takes `FOR SHARE` on the blob links and child manifests it
//! references, and garbage collection takes `FOR UPDATE` on the row it is
//! about to delete and only then looks for references. Whichever locks first wins; the other sees its result
//! (the PUT finds the link gone and is refused, or GC finds the new
//! reference and spares the row). A batch that loses a deadlock or
//! serialization check is retried whole.
//!
//! Why a blocking face over an async client (`postgres_pool`): the
//! metadata traits are synchronous by design (redb is) and their callers
//! are already on blocking threads; the client's I/O and deadlines run on
//! the server's runtime.

use super::postgres_pool::{per_host, PgConnection, PgError, Pool};
use super::postgres_rows::{self, Failed};
use super::postgres_schema::apply_migrations;
use super::postgres_tls::{self, PgTls};
use super::{BlobLink, ManifestRecord, MetaBackend, MetaError, MetaRead, MetaWrite, Page};
use crate::oci::{Digest, RepoName};
use std::time::{Duration, Instant};
use tokio_postgres::error::SqlState;

/// Key of the session advisory lock held while migrating ("wharf" in ASCII).
const MIGRATION_LOCK: i64 = 0x0077_6861_7266;

/// Times a batch is retried after losing a deadlock or serialization check.
const RETRIES: usize = 5;

pub struct PostgresBackend {
    pool: Pool,
}

/// Where a database's schema stands against this binary's migrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaState {
    pub version: i32,
    pub latest: i32,
}

impl PostgresBackend {
    /// Connects (bounded by `timeout`), applies pending migrations under the
    /// advisory lock, and keeps up to `pool_size` connections.
    pub fn connect(url: &str, pool_size: u32, timeout: Duration) -> Result<Self, MetaError> {
        let (hosts, tls, _) = client_config(url, timeout)?;
        let pool = Pool::new(hosts, tls, pool_size, timeout).map_err(db)?;
        // The first login: a refusal (a role, a password, pg_hba.conf, the
        // server's certificate) is final and said at once; a server that
        // cannot be reached yet (starting, restarting) gets the timeout.
        let started = Instant::now();
        loop {
            match pool.get() {
                Ok(_) => break,
                Err(e) if e.refusal() || started.elapsed() >= timeout => return Err(db(e)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot connect to PostgreSQL yet");
                    std::thread::sleep(Duration::from_millis(250));
                }
            }
        }
        let backend = PostgresBackend { pool };
        backend.migrate()?;
        Ok(backend)
    }

    /// Applies every migration the database lacks; returns how many. Safe
    /// to run from several nodes at once: the first takes the lock and
    /// migrates, the others wait for it and find nothing left to do.
    pub fn migrate(&self) -> Result<usize, MetaError> {
        let mut conn = self.conn()?;
        conn.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .map_err(db)?;
        let applied = apply_migrations(&mut conn);
        // Released even when a step failed; a dropped connection releases
        // it too.
        let _ = conn.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
        applied
    }

    /// The schema version the database is at.
    pub fn schema_version(&self) -> Result<i32, MetaError> {
        let mut conn = self.conn()?;
        let row = conn
            .query_one("SELECT coalesce(max(version), 0) FROM wharf_schema", &[])
            .map_err(db)?;
        Ok(row.get(0))
    }

    /// Reads `url` as a connection would (libpq's keys, the certificate
    /// files they name), without connecting, and says what connecting
    /// will do: `wharf config check`. The password is never in it.
    pub fn check_url(url: &str, timeout: Duration) -> Result<String, MetaError> {
        let (hosts, _, tls) = client_config(url, timeout)?;
        let names: Vec<String> = hosts
            .iter()
            .map(|h| {
                let name = match h.get_hosts().first() {
                    Some(tokio_postgres::config::Host::Tcp(name)) => name.clone(),
                    #[cfg(unix)]
                    Some(tokio_postgres::config::Host::Unix(dir)) => dir.display().to_string(),
                    None => "localhost".into(),
                };
                format!("{name}:{}", h.get_ports().first().copied().unwrap_or(5432))
            })
            .collect();
        let writer = match hosts.first().map(|h| h.get_target_session_attrs()) {
            Some(tokio_postgres::config::TargetSessionAttrs::ReadWrite) => {
                " (target_session_attrs=read-write: the one that accepts writes)"
            }
            _ => "",
        };
        Ok(format!(
            "{}{writer}; {}; login and statements bounded by {} s",
            names.join(", "),
            tls.summary(),
            timeout.as_secs()
        ))
    }

    /// Logs in once, without the pool or migrating, and reads where the
    /// schema stands: `wharf config check --connect`. The error is the
    /// server's own sentence (a missing role, a wrong password, TLS).
    pub fn inspect(url: &str, timeout: Duration) -> Result<SchemaState, MetaError> {
        let (hosts, tls, _) = client_config(url, timeout)?;
        let mut client = Pool::new(hosts, tls, 1, timeout)
            .and_then(|pool| pool.get())
            .map_err(|e| MetaError::Unavailable(e.to_string()))?;
        let created: bool = client
            .query_one("SELECT to_regclass('wharf_schema') IS NOT NULL", &[])
            .map_err(db)?
            .get(0);
        let version: i32 = match created {
            false => 0,
            true => client
                .query_one("SELECT coalesce(max(version), 0) FROM wharf_schema", &[])
                .map_err(db)?
                .get(0),
        };
        Ok(SchemaState {
            version,
            latest: super::postgres_schema::MIGRATIONS.len() as i32,
        })
    }

    /// The pool, for the object-store modules that keep their own tables
    /// in this database (upload sessions, blob objects).
    pub fn pool(&self) -> Pool {
        self.pool.clone()
    }

    fn conn(&self) -> Result<PgConnection, MetaError> {
        self.pool.get().map_err(db)
    }
}

/// The client settings of `url`, one per host in its order (libpq's TLS
/// keys read by `postgres_tls`), every wait bounded by `timeout`, and the
/// TLS connector they ask for, with the TLS keys as read.
fn client_config(
    url: &str,
    timeout: Duration,
) -> Result<(Vec<tokio_postgres::Config>, PgTls, postgres_tls::TlsParams), MetaError> {
    let (rest, tls) = postgres_tls::split(url)?;
    let config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e| MetaError::Config(format!("metadata.url: {e}")))?;
    let connector = PgTls::new(&tls)?;
    let ms = timeout.as_millis();
    // client_min_messages: the server's NOTICEs (`relation already
    // exists, skipping` on every start) are not the operator's news.
    let options = format!(
        "-c statement_timeout={ms} -c lock_timeout={ms} -c idle_in_transaction_session_timeout={} \
         -c client_min_messages=warning",
        ms * 6
    );
    let mut hosts = per_host(&config);
    for host in &mut hosts {
        host.ssl_mode(tls.mode)
            .connect_timeout(timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            // A host cut off (a severed link, a machine gone) answers
            // nothing, so no server-side timeout fires: unacknowledged
            // bytes older than the timeout end the connection. A hung
            // process whose kernel still acknowledges is caught by the
            // pool's statement deadline instead.
            .tcp_user_timeout(timeout)
            // Statements and lock waits are bounded by the server too: a
            // stuck database or a lock held by a vanished node answers 503
            // and leaves the connection usable.
            .options(&options);
        if host.get_application_name().is_none() {
            host.application_name("wharf");
        }
    }
    Ok((hosts, connector, tls))
}

/// Maps a client error: anything about reaching the database is
/// `Unavailable` (503, retry), the rest is a database fault.
pub(super) fn db(e: PgError) -> MetaError {
    map_error(&e)
}

pub(super) fn map_error(e: &PgError) -> MetaError {
    if e.unreachable() {
        return MetaError::Unavailable(e.to_string());
    }
    match e.code() {
        Some(c) if *c == SqlState::DISK_FULL => MetaError::NoSpace(e.to_string()),
        _ => MetaError::CommitFailed(e.to_string()),
    }
}

/// Races between nodes that a rerun of the whole transaction settles: its
/// preconditions are checked again against what the other node committed.
pub(super) fn retryable(e: &PgError) -> bool {
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_DEADLOCK_DETECTED
            || *c == SqlState::T_R_SERIALIZATION_FAILURE
            || *c == SqlState::UNIQUE_VIOLATION
    })
}

impl MetaRead for PostgresBackend {
    fn blob_link(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>, MetaError> {
        let row = self
            .conn()?
            .query_opt(
                "SELECT size FROM blob_links WHERE repo = $1 AND digest = $2",
                &[&repo.as_str(), &digest.to_string()],
            )
            .map_err(db)?;
        Ok(row.map(|r| r.get::<_, i64>(0) as u64))
    }

    fn manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<ManifestRecord>, MetaError> {
        let row = self
            .conn()?
            .query_opt(
                "SELECT record FROM manifests WHERE repo = $1 AND digest = $2",
                &[&repo.as_str(), &digest.to_string()],
            )
            .map_err(db)?;
        row.map(|r| ManifestRecord::decode(r.get::<_, &str>(0).as_bytes()))
            .transpose()
    }

    fn tag(&self, repo: &RepoName, tag: &str) -> Result<Option<Digest>, MetaError> {
        let row = self
            .conn()?
            .query_opt(
                "SELECT digest FROM tags WHERE repo = $1 AND tag = $2",
                &[&repo.as_str(), &tag],
            )
            .map_err(db)?;
        row.map(|r| Digest::parse(r.get(0)).map_err(|e| MetaError::Record(e.to_string())))
            .transpose()
    }

    fn repo_exists(&self, repo: &RepoName) -> Result<bool, MetaError> {
        let row = self
            .conn()?
            .query_opt("SELECT 1 FROM repos WHERE name = $1", &[&repo.as_str()])
            .map_err(db)?;
        Ok(row.is_some())
    }

    fn tags(&self, repo: &RepoName, after: Option<&str>, n: usize) -> Result<Page, MetaError> {
        let rows = self
            .conn()?
            .query(
                "SELECT tag FROM tags WHERE repo = $1 AND tag > $2 ORDER BY tag LIMIT $3",
                &[&repo.as_str(), &after.unwrap_or(""), &(n as i64 + 1)],
            )
            .map_err(db)?;
        Ok(Page::of(rows.iter().map(|r| r.get(0)).collect(), n))
    }

    fn repos(&self, after: Option<&str>, n: usize) -> Result<Page, MetaError> {
        let rows = self
            .conn()?
            .query(
                "SELECT name FROM repos WHERE name > $1 ORDER BY name LIMIT $2",
                &[&after.unwrap_or(""), &(n as i64 + 1)],
            )
            .map_err(db)?;
        Ok(Page::of(rows.iter().map(|r| r.get(0)).collect(), n))
    }

    fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Digest>, MetaError> {
        let rows = self
            .conn()?
            .query(
                "SELECT referrer FROM referrers WHERE repo = $1 AND subject = $2 ORDER BY referrer",
                &[&repo.as_str(), &subject.to_string()],
            )
            .map_err(db)?;
        Ok(rows
            .iter()
            .filter_map(|r| Digest::parse(r.get(0)).ok())
            .collect())
    }

    fn all_blob_links(&self) -> Result<Vec<BlobLink>, MetaError> {
        let rows = self
            .conn()?
            .query(
                "SELECT repo, digest, size, linked_at FROM blob_links ORDER BY repo, digest",
                &[],
            )
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| BlobLink {
                repo: r.get(0),
                digest: r.get(1),
                size: r.get::<_, i64>(2) as u64,
                linked_at: r.get::<_, i64>(3) as u64,
            })
            .collect())
    }

    fn repository_rows(&self, repo: &str) -> Result<super::RepositoryRows, MetaError> {
        let mut conn = self.conn()?;
        let tags = conn
            .query("SELECT tag, digest FROM tags WHERE repo = $1", &[&repo])
            .map_err(db)?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let manifests = conn
            .query(
                "SELECT digest, record FROM manifests WHERE repo = $1",
                &[&repo],
            )
            .map_err(db)?
            .iter()
            .map(|r| {
                Ok((
                    r.get(0),
                    ManifestRecord::decode(r.get::<_, &str>(1).as_bytes())?,
                ))
            })
            .collect::<Result<_, MetaError>>()?;
        let pulls = conn
            .query(
                "SELECT digest, pulled_at FROM pulls WHERE repo = $1",
                &[&repo],
            )
            .map_err(db)?
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1).max(0) as u64))
            .collect();
        Ok(super::RepositoryRows {
            tags,
            manifests,
            pulls,
        })
    }

    fn all_manifest_keys(&self) -> Result<Vec<(String, String)>, MetaError> {
        let rows = self
            .conn()?
            .query("SELECT repo, digest FROM manifests", &[])
            .map_err(db)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn all_references(&self) -> Result<Vec<(String, String, String)>, MetaError> {
        let rows = self
            .conn()?
            .query("SELECT repo, digest, manifest FROM refs", &[])
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    fn all_manifests(&self) -> Result<Vec<(String, String, ManifestRecord)>, MetaError> {
        let rows = self
            .conn()?
            .query(
                "SELECT repo, digest, record FROM manifests ORDER BY repo, digest",
                &[],
            )
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.get(0),
                    r.get(1),
                    ManifestRecord::decode(r.get::<_, &str>(2).as_bytes())?,
                ))
            })
            .collect()
    }

    fn all_tags(&self) -> Result<Vec<(String, String, String)>, MetaError> {
        let rows = self
            .conn()?
            .query("SELECT repo, tag, digest FROM tags ORDER BY repo, tag", &[])
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    fn repo_stats(&self, repo: &str) -> Result<(u64, u64), MetaError> {
        let row = self
            .conn()?
            .query_one(
                "SELECT (SELECT count(*) FROM tags WHERE repo = $1), \
                        (SELECT coalesce(sum(size), 0)::bigint FROM blob_links WHERE repo = $1)",
                &[&repo],
            )
            .map_err(db)?;
        Ok((
            row.get::<_, i64>(0).max(0) as u64,
            row.get::<_, i64>(1).max(0) as u64,
        ))
    }

    fn pending_events(&self, endpoint: &str, n: usize) -> Result<Vec<(u64, Vec<u8>)>, MetaError> {
        let rows = self
            .conn()?
            .query(
                "SELECT id, payload FROM events WHERE endpoint = $1 ORDER BY id LIMIT $2",
                &[&endpoint, &(n as i64)],
            )
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get(1)))
            .collect())
    }

    fn event_counts(&self, endpoint: &str) -> Result<(u64, u64), MetaError> {
        let row = self
            .conn()?
            .query_one(
                "SELECT (SELECT count(*) FROM events WHERE endpoint = $1), \
                 COALESCE((SELECT dropped FROM event_drops WHERE endpoint = $1), 0)",
                &[&endpoint],
            )
            .map_err(db)?;
        Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
    }

    fn robots(&self) -> Result<Vec<super::RobotRecord>, MetaError> {
        let rows = self
            .conn()?
            .query("SELECT record FROM robots ORDER BY name", &[])
            .map_err(db)?;
        rows.iter()
            .map(|r| super::RobotRecord::decode(r.get::<_, &str>(0).as_bytes()))
            .collect()
    }

    fn audit(&self, q: &super::AuditQuery) -> Result<Vec<super::AuditRecord>, MetaError> {
        let big = |v: u64| v.min(i64::MAX as u64) as i64;
        let rows = self
            .conn()?
            .query(
                "SELECT id, record FROM audit WHERE at_ms >= $1 AND at_ms <= $2 \
                 AND ($3::text IS NULL OR repository = $3) AND ($4::text IS NULL OR actor = $4) \
                 AND id < $5 ORDER BY id DESC LIMIT $6",
                &[
                    &big(q.since_ms),
                    &big(q.until()),
                    &q.repository,
                    &q.actor,
                    &big(q.before_id.unwrap_or(u64::MAX)),
                    &(q.limit as i64),
                ],
            )
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                super::AuditRecord::decode(
                    r.get::<_, &str>(1).as_bytes(),
                    r.get::<_, i64>(0).max(0) as u64,
                )
            })
            .collect()
    }

    fn tags_of(&self, repo: &RepoName, digest: &Digest) -> Result<Vec<String>, MetaError> {
        let rows = self
            .conn()?
            .query(
                "SELECT tag FROM tags WHERE repo = $1 AND digest = $2 ORDER BY tag",
                &[&repo.as_str(), &digest.to_string()],
            )
            .map_err(db)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn quota_usages(&self) -> Result<Vec<(String, u64)>, MetaError> {
        let rows = self
            .conn()?
            .query("SELECT name, bytes FROM quota_usage ORDER BY name", &[])
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1).max(0) as u64))
            .collect())
    }

    fn all_pulls(&self) -> Result<Vec<(String, String, u64)>, MetaError> {
        let rows = self
            .conn()?
            .query("SELECT repo, digest, pulled_at FROM pulls", &[])
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get::<_, i64>(2).max(0) as u64))
            .collect())
    }
}

impl MetaBackend for PostgresBackend {
    fn commit(
        &self,
        jobs: &[Vec<MetaWrite>],
        durable: bool,
        quotas: &super::quota::Quotas,
    ) -> Result<Vec<Result<(), MetaError>>, MetaError> {
        let mut conn = self.conn()?;
        let mut attempt = 0;
        loop {
            match commit_once(&mut conn, jobs, durable, quotas) {
                Ok(results) => return Ok(results),
                Err(f) if f.retry && attempt < RETRIES => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(5 << attempt));
                }
                Err(f) => return Err(f.error),
            }
        }
    }
}

/// One attempt at a batch, in one transaction.
fn commit_once(
    conn: &mut PgConnection,
    jobs: &[Vec<MetaWrite>],
    durable: bool,
    quotas: &super::quota::Quotas,
) -> Result<Vec<Result<(), MetaError>>, Failed> {
    let failed = |e: PgError| Failed {
        retry: retryable(&e),
        error: db(e),
    };
    let mut txn = conn.transaction().map_err(failed)?;
    if !durable {
        txn.batch_execute("SET LOCAL synchronous_commit = off")
            .map_err(failed)?;
    }
    let results = postgres_rows::apply_jobs(&mut txn, jobs, quotas)?;
    txn.commit().map_err(failed)?;
    Ok(results)
}
