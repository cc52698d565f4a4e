//! The shared backend: PostgreSQL, for any number of Wharf nodes on one
//! database.
//!
//! Owns: the connection pool, the embedded schema migrations and the SQL
//! behind [`MetaRead`] and [`MetaBackend`].
//! Must not: be called from an async worker (the `postgres` client blocks;
//! callers are on the blocking pool or the writer thread), or hold a
//! transaction open across anything but SQL.
//!
//! Races between nodes are closed with row locks inside each write's
//! transaction, at READ COMMITTED: a manifest PUT takes `FOR SHARE` on the
//! blob links and child manifests it references, and garbage collection
//! takes `FOR UPDATE` on the row it is about to delete and only then looks
//! for references. Whichever locks first wins; the other sees its result
//! (the PUT finds the link gone and is refused, or GC finds the new
//! reference and spares the row). A batch that loses a deadlock or
//! serialization check is retried whole.
//!
//! Why the blocking `postgres` client with r2d2: the metadata traits are
//! synchronous by design (redb is), and every caller is already on a
//! blocking thread; both crates are the maintained tokio-postgres family.

use super::{BlobLink, ManifestRecord, MetaBackend, MetaError, MetaRead, MetaWrite, Page};
use crate::oci::{Digest, RepoName};
use postgres::error::SqlState;
use postgres::{NoTls, Transaction};
use r2d2_postgres::PostgresConnectionManager;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

type R2d2Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;
pub type PooledConnection = r2d2::PooledConnection<PostgresConnectionManager<NoTls>>;

/// The connection pool, shared by the metadata backend and the
/// object-store modules. The last handle to go drops the pool on a thread
/// of its own: closing a blocking client runs a small runtime, which must
/// not happen on an async worker (where a server's state is dropped).
#[derive(Clone)]
pub struct Pool(Arc<PoolOwner>);

struct PoolOwner(Option<R2d2Pool>);

impl Drop for PoolOwner {
    fn drop(&mut self) {
        if let Some(pool) = self.0.take() {
            let _ = std::thread::Builder::new()
                .name("wharf-pg-close".into())
                .spawn(move || drop(pool));
        }
    }
}

impl Pool {
    /// A connection, waiting at most the configured timeout for one.
    pub fn get(&self) -> Result<PooledConnection, String> {
        match &self.0 .0 {
            Some(p) => p.get().map_err(|e| e.to_string()),
            None => Err("connection pool is closed".into()),
        }
    }
}

/// The schema, one step per entry, applied in order and recorded in
/// `wharf_schema`. Never edit a step that has shipped: add one.
const MIGRATIONS: &[&str] = &[
    // 1: the same tables as the redb backend. "C" collation: listings
    // sort bytewise, as the spec's pagination expects.
    r#"
    CREATE TABLE repos (
        name    text COLLATE "C" PRIMARY KEY,
        created bigint NOT NULL
    );
    CREATE TABLE blob_links (
        repo      text COLLATE "C" NOT NULL,
        digest    text COLLATE "C" NOT NULL,
        size      bigint NOT NULL,
        linked_at bigint NOT NULL,
        PRIMARY KEY (repo, digest)
    );
    CREATE TABLE manifests (
        repo    text COLLATE "C" NOT NULL,
        digest  text COLLATE "C" NOT NULL,
        record  text NOT NULL,
        PRIMARY KEY (repo, digest)
    );
    CREATE TABLE tags (
        repo   text COLLATE "C" NOT NULL,
        tag    text COLLATE "C" NOT NULL,
        digest text COLLATE "C" NOT NULL,
        PRIMARY KEY (repo, tag)
    );
    CREATE INDEX tags_by_digest ON tags (repo, digest);
    CREATE TABLE referrers (
        repo     text COLLATE "C" NOT NULL,
        subject  text COLLATE "C" NOT NULL,
        referrer text COLLATE "C" NOT NULL,
        PRIMARY KEY (repo, subject, referrer)
    );
    CREATE TABLE refs (
        digest   text COLLATE "C" NOT NULL,
        repo     text COLLATE "C" NOT NULL,
        manifest text COLLATE "C" NOT NULL,
        PRIMARY KEY (digest, repo, manifest)
    );
    "#,
    // 2: blobs in an object store. `blobs` maps a digest to the one
    // object kept for it (keys are chosen at upload start, never derived
    // from the digest, so completing an upload is the commit). `uploads`
    // and `upload_tail` are sessions any node continues; objects to remove
    // wait in `object_deletions` until their time.
    r#"
    CREATE TABLE blobs (
        digest     text COLLATE "C" PRIMARY KEY,
        size       bigint NOT NULL,
        object_key text NOT NULL,
        created    bigint NOT NULL
    );
    CREATE TABLE uploads (
        id           text PRIMARY KEY,
        repo         text COLLATE "C" NOT NULL,
        object_key   text NOT NULL,
        multipart_id text,
        size         bigint NOT NULL DEFAULT 0,
        midstate     bytea NOT NULL,
        part_numbers integer[] NOT NULL DEFAULT '{}',
        part_etags   text[] NOT NULL DEFAULT '{}',
        part_bytes   bigint NOT NULL DEFAULT 0,
        next_part    integer NOT NULL DEFAULT 0,
        version      bigint NOT NULL DEFAULT 0,
        updated_at   bigint NOT NULL
    );
    CREATE INDEX uploads_by_age ON uploads (updated_at);
    CREATE TABLE upload_tail (
        id   text NOT NULL,
        at   bigint NOT NULL,
        data bytea NOT NULL,
        PRIMARY KEY (id, at)
    );
    CREATE TABLE object_deletions (
        object_key   text PRIMARY KEY,
        multipart_id text,
        not_before   bigint NOT NULL
    );
    CREATE INDEX object_deletions_due ON object_deletions (not_before);
    CREATE INDEX blob_links_by_digest ON blob_links (digest);
    CREATE INDEX manifests_by_digest ON manifests (digest);
    "#,
    // 3: when each manifest was last pulled, for retention policies
    // (written in batches by each node's pull log, never per pull).
    r#"
    CREATE TABLE pulls (
        repo      text COLLATE "C" NOT NULL,
        digest    text COLLATE "C" NOT NULL,
        pulled_at bigint NOT NULL,
        PRIMARY KEY (repo, digest)
    );
    "#,
    // 4: notification queues, written in the transaction of the change
    // each event describes; one node at a time delivers an endpoint's.
    r#"
    CREATE TABLE events (
        id       bigserial PRIMARY KEY,
        endpoint text COLLATE "C" NOT NULL,
        payload  bytea NOT NULL
    );
    CREATE INDEX events_by_endpoint ON events (endpoint, id);
    CREATE TABLE event_drops (
        endpoint text COLLATE "C" PRIMARY KEY,
        dropped  bigint NOT NULL
    );
    CREATE TABLE event_leases (
        endpoint text COLLATE "C" PRIMARY KEY,
        node     text NOT NULL,
        until    bigint NOT NULL
    );
    "#,
];

/// Key of the session advisory lock held while migrating ("wharf" in ASCII).
const MIGRATION_LOCK: i64 = 0x0077_6861_7266;

/// Times a batch is retried after losing a deadlock or serialization check.
const RETRIES: usize = 5;

pub struct PostgresBackend {
    pool: Pool,
}

impl PostgresBackend {
    /// Connects (bounded by `timeout`), applies pending migrations under the
    /// advisory lock, and keeps up to `pool_size` connections.
    pub fn connect(url: &str, pool_size: u32, timeout: Duration) -> Result<Self, MetaError> {
        let pool = pool(url, pool_size, timeout)?;
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

    /// The pool, for the object-store modules that keep their own tables
    /// in this database (upload sessions, blob objects).
    pub fn pool(&self) -> Pool {
        self.pool.clone()
    }

    fn conn(&self) -> Result<PooledConnection, MetaError> {
        self.pool
            .get()
            .map_err(|e| MetaError::Unavailable(format!("PostgreSQL: {e}")))
    }
}

fn pool(url: &str, pool_size: u32, timeout: Duration) -> Result<Pool, MetaError> {
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e| MetaError::Record(format!("metadata.url: {e}")))?;
    let ms = timeout.as_millis();
    let options = format!(
        "-c statement_timeout={ms} -c lock_timeout={ms} -c idle_in_transaction_session_timeout={}",
        ms * 6
    );
    config
        .connect_timeout(timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        // Statements and lock waits are bounded too: a stuck database or a
        // lock held by a vanished node answers 503, never a hung request.
        .options(&options);
    if config.get_application_name().is_none() {
        config.application_name("wharf");
    }
    let manager = PostgresConnectionManager::new(config, NoTls);
    // Built without connecting: a node whose database is down starts and
    // answers 503 until it returns (migrations, run next, still need it).
    let pool = r2d2::Pool::builder()
        .max_size(pool_size)
        .min_idle(Some(0))
        .connection_timeout(timeout)
        // A broken connection shows on its next use and is dropped then;
        // a health query per checkout would double every read's round trips.
        .test_on_check_out(false)
        .build_unchecked(manager);
    Ok(Pool(Arc::new(PoolOwner(Some(pool)))))
}

fn apply_migrations(conn: &mut postgres::Client) -> Result<usize, MetaError> {
    conn.batch_execute(
        "CREATE TABLE IF NOT EXISTS wharf_schema (
            version    integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .map_err(db)?;
    let row = conn
        .query_one("SELECT coalesce(max(version), 0) FROM wharf_schema", &[])
        .map_err(db)?;
    let current: i32 = row.get(0);
    let mut applied = 0;
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let version = i as i32 + 1;
        if version <= current {
            continue;
        }
        let mut txn = conn.transaction().map_err(db)?;
        txn.batch_execute(sql).map_err(db)?;
        txn.execute(
            "INSERT INTO wharf_schema (version) VALUES ($1)",
            &[&version],
        )
        .map_err(db)?;
        txn.commit().map_err(db)?;
        tracing::info!(version, "metadata schema migrated");
        applied += 1;
    }
    Ok(applied)
}

/// Whether an error is about reaching the database (down, cut off,
/// restarting, saturated, timed out): an answer of 503, retry later, as
/// opposed to a fault in what was asked. The object-store modules use it
/// too, so both kinds of PostgreSQL work fail the same way.
pub fn unreachable(e: &postgres::Error) -> bool {
    if e.is_closed() || e.as_db_error().is_none() {
        return true;
    }
    e.code().is_some_and(|c| {
        *c == SqlState::QUERY_CANCELED
            || *c == SqlState::LOCK_NOT_AVAILABLE
            || *c == SqlState::ADMIN_SHUTDOWN
            || *c == SqlState::CANNOT_CONNECT_NOW
            || *c == SqlState::TOO_MANY_CONNECTIONS
    })
}

/// Maps a client error: anything about reaching the database is
/// `Unavailable` (503, retry), the rest is a database fault.
fn db(e: postgres::Error) -> MetaError {
    if unreachable(&e) {
        return MetaError::Unavailable(describe(&e));
    }
    match e.code() {
        Some(c) if *c == SqlState::DISK_FULL => MetaError::NoSpace(describe(&e)),
        _ => MetaError::CommitFailed(describe(&e)),
    }
}

/// Races between nodes that a rerun of the whole transaction settles: its
/// preconditions are checked again against what the other node committed.
fn retryable(e: &postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_DEADLOCK_DETECTED
            || *c == SqlState::T_R_SERIALIZATION_FAILURE
            || *c == SqlState::UNIQUE_VIOLATION
    })
}

/// What PostgreSQL said, not just "db error": its message and SQLSTATE.
pub fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("PostgreSQL: {} (SQLSTATE {})", d.message(), d.code().code()),
        None => format!("PostgreSQL: {e}"),
    }
}

fn decode_record(text: &str) -> Result<ManifestRecord, MetaError> {
    serde_json::from_str(text).map_err(|e| MetaError::Record(e.to_string()))
}

fn page(mut items: Vec<String>, n: usize) -> Page {
    let more = items.len() > n;
    items.truncate(n);
    Page { items, more }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
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
        row.map(|r| decode_record(r.get(0))).transpose()
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
        Ok(page(rows.iter().map(|r| r.get(0)).collect(), n))
    }

    fn repos(&self, after: Option<&str>, n: usize) -> Result<Page, MetaError> {
        let rows = self
            .conn()?
            .query(
                "SELECT name FROM repos WHERE name > $1 ORDER BY name LIMIT $2",
                &[&after.unwrap_or(""), &(n as i64 + 1)],
            )
            .map_err(db)?;
        Ok(page(rows.iter().map(|r| r.get(0)).collect(), n))
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

    fn all_manifests(&self) -> Result<Vec<(String, String, ManifestRecord)>, MetaError> {
        let rows = self
            .conn()?
            .query(
                "SELECT repo, digest, record FROM manifests ORDER BY repo, digest",
                &[],
            )
            .map_err(db)?;
        rows.iter()
            .map(|r| Ok((r.get(0), r.get(1), decode_record(r.get(2))?)))
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
    ) -> Result<Vec<Result<(), MetaError>>, MetaError> {
        let mut conn = self.conn()?;
        let mut attempt = 0;
        loop {
            match commit_jobs(&mut conn, jobs, durable) {
                Ok(results) => return Ok(results),
                Err(e) if retryable(&e) && attempt < RETRIES => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(5 << attempt));
                }
                Err(e) => return Err(db(e)),
            }
        }
    }
}

fn commit_jobs(
    conn: &mut postgres::Client,
    jobs: &[Vec<MetaWrite>],
    durable: bool,
) -> Result<Vec<Result<(), MetaError>>, postgres::Error> {
    let mut txn = conn.transaction()?;
    if !durable {
        txn.batch_execute("SET LOCAL synchronous_commit = off")?;
    }
    let now = unix_now();
    let mut results = Vec::with_capacity(jobs.len());
    for job in jobs {
        let mut refused = None;
        for op in job {
            if let Some(why) = precondition(&mut txn, op)? {
                refused = Some(why);
                break;
            }
        }
        if let Some(why) = refused {
            results.push(Err(MetaError::Conflict(why)));
            continue;
        }
        for op in job {
            apply(&mut txn, op, now)?;
        }
        results.push(Ok(()));
    }
    txn.commit()?;
    Ok(results)
}

/// Why `op` may not be applied now, if it may not. Locks the rows the
/// decision rests on until the transaction ends.
fn precondition(
    txn: &mut Transaction<'_>,
    op: &MetaWrite,
) -> Result<Option<String>, postgres::Error> {
    Ok(match op {
        MetaWrite::MountBlob { from, digest, .. } => {
            let d = digest.to_string();
            txn.query_opt(
                "SELECT 1 FROM blob_links WHERE repo = $1 AND digest = $2 FOR SHARE",
                &[&from.as_str(), &d],
            )?
            .is_none()
            .then(|| format!("blob {d} is no longer in repository {from}"))
        }
        MetaWrite::PutManifest {
            repo,
            digest,
            tag: Some(t),
            tag_immutable: true,
            ..
        } if {
            // FOR UPDATE cannot lock a row that does not exist yet: two
            // nodes creating one immutable tag would both see no row and the
            // later upsert would move it. A lock on the name serialises them.
            txn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1 || ':' || $2, 0))",
                &[&repo.as_str(), t],
            )?;
            txn.query_opt(
                "SELECT 1 FROM tags WHERE repo = $1 AND tag = $2 AND digest <> $3",
                &[&repo.as_str(), t, &digest.to_string()],
            )?
            .is_some()
        } =>
        {
            Some(format!("tag {t} is immutable"))
        }
        MetaWrite::ClaimDelivery { endpoint, node, .. } => txn
            .query_opt(
                "SELECT node FROM event_leases WHERE endpoint = $1 AND node <> $2 \
                 AND until > $3 FOR UPDATE",
                &[endpoint, node, &unix_now()],
            )?
            .map(|row| format!("node {} delivers {endpoint}", row.get::<_, String>(0))),
        MetaWrite::RetireTag { repo, tag, digest } => txn
            .query_opt(
                "SELECT 1 FROM tags WHERE repo = $1 AND tag = $2 AND digest = $3 FOR UPDATE",
                &[&repo.as_str(), tag, &digest.to_string()],
            )?
            .is_none()
            .then(|| format!("tag {tag} moved or went since retention looked")),
        MetaWrite::PutManifest { record, .. } if record.mirrored => None,
        MetaWrite::PutManifest { repo, record, .. } => {
            let r = repo.as_str();
            let found: Vec<String> = txn
                .query(
                    "SELECT digest FROM blob_links WHERE repo = $1 AND digest = ANY($2) \
                     ORDER BY digest FOR SHARE",
                    &[&r, &record.blobs],
                )?
                .iter()
                .map(|row| row.get(0))
                .collect();
            if let Some(b) = record.blobs.iter().find(|b| !found.contains(b)) {
                return Ok(Some(format!("blob {b} is not in repository {r}")));
            }
            let found: Vec<String> = txn
                .query(
                    "SELECT digest FROM manifests WHERE repo = $1 AND digest = ANY($2) \
                     ORDER BY digest FOR SHARE",
                    &[&r, &record.children],
                )?
                .iter()
                .map(|row| row.get(0))
                .collect();
            record
                .children
                .iter()
                .find(|c| !found.contains(c))
                .map(|c| format!("manifest {c} is not in repository {r}"))
        }
        MetaWrite::GcUnlinkBlob {
            repo,
            digest,
            cutoff,
        } => {
            let (r, d) = (repo.as_str(), digest.to_string());
            let linked = txn.query_opt(
                "SELECT linked_at FROM blob_links WHERE repo = $1 AND digest = $2 FOR UPDATE",
                &[&r, &d],
            )?;
            match linked.map(|row| row.get::<_, i64>(0)) {
                None => Some("already unlinked".into()),
                Some(at) if at as u64 >= *cutoff => Some("linked recently".into()),
                Some(_) if referenced(txn, r, &d)? => Some("referenced".into()),
                Some(_) => None,
            }
        }
        MetaWrite::GcDeleteManifest {
            repo,
            digest,
            cutoff,
        } => {
            let (r, d) = (repo.as_str(), digest.to_string());
            let row = txn.query_opt(
                "SELECT record FROM manifests WHERE repo = $1 AND digest = $2 FOR UPDATE",
                &[&r, &d],
            )?;
            let record = match row.map(|row| decode_record(row.get(0))) {
                None => return Ok(Some("already deleted".into())),
                // An unreadable record is not GC's to judge: spare it.
                Some(Err(e)) => return Ok(Some(e.to_string())),
                Some(Ok(record)) => record,
            };
            if record.created >= *cutoff {
                Some("pushed recently".into())
            } else if referenced(txn, r, &d)? {
                Some("referenced by an index".into())
            } else if txn
                .query_opt(
                    "SELECT 1 FROM tags WHERE repo = $1 AND digest = $2 LIMIT 1",
                    &[&r, &d],
                )?
                .is_some()
            {
                Some("tagged".into())
            } else {
                None
            }
        }
        _ => None,
    })
}

/// Is `digest` referenced by any manifest of `repo`?
fn referenced(
    txn: &mut Transaction<'_>,
    repo: &str,
    digest: &str,
) -> Result<bool, postgres::Error> {
    Ok(txn
        .query_opt(
            "SELECT 1 FROM refs WHERE digest = $1 AND repo = $2 LIMIT 1",
            &[&digest, &repo],
        )?
        .is_some())
}

fn ensure_repo(txn: &mut Transaction<'_>, repo: &str, now: i64) -> Result<(), postgres::Error> {
    txn.execute(
        "INSERT INTO repos (name, created) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[&repo, &now],
    )?;
    Ok(())
}

/// Removes a manifest's record and the index entries made from it (not its
/// tags: the caller decides).
fn drop_record(txn: &mut Transaction<'_>, repo: &str, digest: &str) -> Result<(), postgres::Error> {
    let removed = txn.execute(
        "DELETE FROM manifests WHERE repo = $1 AND digest = $2",
        &[&repo, &digest],
    )?;
    if removed == 0 {
        return Ok(());
    }
    // Index entries are keyed by this manifest's digest, so they go
    // without reading the old record.
    txn.execute(
        "DELETE FROM referrers WHERE repo = $1 AND referrer = $2",
        &[&repo, &digest],
    )?;
    txn.execute(
        "DELETE FROM refs WHERE repo = $1 AND manifest = $2",
        &[&repo, &digest],
    )?;
    Ok(())
}

fn apply(txn: &mut Transaction<'_>, op: &MetaWrite, now: i64) -> Result<(), postgres::Error> {
    match op {
        MetaWrite::LinkBlob { repo, digest, size }
        | MetaWrite::MountBlob {
            repo, digest, size, ..
        } => {
            txn.execute(
                "INSERT INTO blob_links (repo, digest, size, linked_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (repo, digest) DO UPDATE SET size = EXCLUDED.size, linked_at = EXCLUDED.linked_at",
                &[&repo.as_str(), &digest.to_string(), &(*size as i64), &now],
            )?;
            ensure_repo(txn, repo.as_str(), now)?;
        }
        MetaWrite::UnlinkBlob { repo, digest } | MetaWrite::GcUnlinkBlob { repo, digest, .. } => {
            txn.execute(
                "DELETE FROM blob_links WHERE repo = $1 AND digest = $2",
                &[&repo.as_str(), &digest.to_string()],
            )?;
        }
        MetaWrite::PutManifest {
            repo,
            digest,
            record,
            tag,
            ..
        } => {
            let (r, d) = (repo.as_str(), digest.to_string());
            // A re-push replaces the record and its index entries; its tags stay.
            drop_record(txn, r, &d)?;
            // Cannot fail: every field is a string, a number or a
            // string-keyed map.
            let text = serde_json::to_string(record).unwrap_or_default();
            // An upsert: another node re-pushing the same digest may have
            // inserted the row after this transaction's delete looked.
            txn.execute(
                "INSERT INTO manifests (repo, digest, record) VALUES ($1, $2, $3) \
                 ON CONFLICT (repo, digest) DO UPDATE SET record = EXCLUDED.record",
                &[&r, &d, &text],
            )?;
            if let Some(s) = &record.subject {
                txn.execute(
                    "INSERT INTO referrers (repo, subject, referrer) VALUES ($1, $2, $3) \
                     ON CONFLICT DO NOTHING",
                    &[&r, s, &d],
                )?;
            }
            let used: Vec<&String> = record.blobs.iter().chain(record.children.iter()).collect();
            txn.execute(
                "INSERT INTO refs (digest, repo, manifest) SELECT u, $2, $3 FROM unnest($1::text[]) AS u \
                 ON CONFLICT DO NOTHING",
                &[&used, &r, &d],
            )?;
            if let Some(t) = tag {
                txn.execute(
                    "INSERT INTO tags (repo, tag, digest) VALUES ($1, $2, $3) \
                     ON CONFLICT (repo, tag) DO UPDATE SET digest = EXCLUDED.digest",
                    &[&r, t, &d],
                )?;
            }
            ensure_repo(txn, r, now)?;
        }
        MetaWrite::DeleteManifest { repo, digest }
        | MetaWrite::GcDeleteManifest { repo, digest, .. } => {
            let (r, d) = (repo.as_str(), digest.to_string());
            drop_record(txn, r, &d)?;
            txn.execute(
                "DELETE FROM tags WHERE repo = $1 AND digest = $2",
                &[&r, &d],
            )?;
            txn.execute(
                "DELETE FROM pulls WHERE repo = $1 AND digest = $2",
                &[&r, &d],
            )?;
        }
        MetaWrite::DeleteTag { repo, tag } | MetaWrite::RetireTag { repo, tag, .. } => {
            txn.execute(
                "DELETE FROM tags WHERE repo = $1 AND tag = $2",
                &[&repo.as_str(), tag],
            )?;
        }
        MetaWrite::QueueEvent {
            endpoint,
            payload,
            max_pending,
        } => {
            let queued = txn.execute(
                "INSERT INTO events (endpoint, payload) SELECT $1, $2 \
                 WHERE (SELECT count(*) FROM events WHERE endpoint = $1) < $3",
                &[endpoint, payload, &(*max_pending as i64)],
            )?;
            if queued == 0 {
                txn.execute(
                    "INSERT INTO event_drops (endpoint, dropped) VALUES ($1, 1) \
                     ON CONFLICT (endpoint) DO UPDATE SET dropped = event_drops.dropped + 1",
                    &[endpoint],
                )?;
            }
        }
        MetaWrite::AckEvents { endpoint, through } => {
            txn.execute(
                "DELETE FROM events WHERE endpoint = $1 AND id <= $2",
                &[endpoint, &(*through as i64)],
            )?;
        }
        MetaWrite::ClaimDelivery {
            endpoint,
            node,
            until,
        } => {
            txn.execute(
                "INSERT INTO event_leases (endpoint, node, until) VALUES ($1, $2, $3) \
                 ON CONFLICT (endpoint) DO UPDATE SET node = $2, until = $3",
                &[endpoint, node, &(*until as i64)],
            )?;
        }
        MetaWrite::ForgetEndpoints { keep } => {
            for table in ["events", "event_drops", "event_leases"] {
                txn.execute(
                    &format!("DELETE FROM {table} WHERE NOT (endpoint = ANY($1))"),
                    &[keep],
                )?;
            }
        }
        MetaWrite::RecordPulls { pulls } => {
            let repos: Vec<&str> = pulls.iter().map(|p| p.0.as_str()).collect();
            let digests: Vec<String> = pulls.iter().map(|p| p.1.to_string()).collect();
            let times: Vec<i64> = pulls.iter().map(|p| p.2 as i64).collect();
            // Only manifests that still exist; a later time wins. Sorted,
            // so two nodes' batches lock rows in one order.
            txn.execute(
                "INSERT INTO pulls (repo, digest, pulled_at)                  SELECT p.r, p.d, max(p.t) FROM unnest($1::text[], $2::text[], $3::bigint[]) AS p(r, d, t)                  JOIN manifests m ON m.repo = p.r AND m.digest = p.d                  GROUP BY p.r, p.d ORDER BY p.r, p.d                  ON CONFLICT (repo, digest) DO UPDATE                  SET pulled_at = GREATEST(pulls.pulled_at, EXCLUDED.pulled_at)",
                &[&repos, &digests, &times],
            )?;
        }
    }
    Ok(())
}
