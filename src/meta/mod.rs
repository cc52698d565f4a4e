//! The metadata store: repositories, which blobs each repository may read,
//! manifests, tags and the referrers index.
//!
//! Owns: the write jobs (`MetaWrite`) and their rules (`rules`, written
//! once over the rows of a transaction), the `MetaRead`/`MetaBackend`
//! traits with their two implementations (redb, the embedded default;
//! PostgreSQL, shared by the nodes of a cluster), and the group-commit
//! writer thread that serialises every write.
//! Must not: hold blob or manifest bytes (the content store does), block
//! the async workers on a commit, or let a backend decide a rule.
//!
//! Why redb: pure Rust (no C toolchain in CI), ACID with copy-on-write pages,
//! MVCC reads that never wait for the writer, and one fsync pair per commit,
//! which the writer shares between every write that arrives while the
//! previous commit is syncing (group commit).

mod postgres_backend;
mod postgres_pool;
mod postgres_rows;
mod postgres_schema;
mod postgres_tls;
pub mod quota;
mod redb_backend;
mod redb_file;
mod redb_rows;
pub mod rules;
mod writer;

use crate::config::MetadataBackend;
use crate::oci::{Digest, RepoName};
use crate::space::DiskSpace;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

pub use postgres_backend::{PostgresBackend, SchemaState};
pub use postgres_pool::{
    Params as PgParams, PgConnection, PgError, PgTransaction, Pool as PgPool, PoolFigures,
};
pub use postgres_rows::apply_in_transaction as apply_in_postgres;
pub use redb_backend::RedbBackend;

/// What every metadata read and write answers.
pub type MetaResult<T> = Result<T, MetaError>;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// Boxed: redb's error is large and would bloat every `Result`.
    #[error("metadata database: {0}")]
    Db(Box<redb::Error>),
    #[error("metadata record is unreadable: {0}")]
    Record(String),
    /// A setting the backend cannot use (`metadata.url` and the files it
    /// names).
    #[error("{0}")]
    Config(String),
    #[error("metadata writer has stopped")]
    WriterGone,
    #[error("metadata commit failed: {0}")]
    CommitFailed(String),
    #[error("cannot start the metadata writer: {0}")]
    Thread(std::io::Error),
    /// A write's precondition no longer held when its transaction ran (a
    /// blob was unlinked by garbage collection meanwhile, say). Nothing of
    /// that write was applied.
    #[error("{0}")]
    Conflict(String),
    /// The write would take a `[[quota]]` over its limit (the message
    /// names it, its limit, its usage and the write's size). Nothing of
    /// that write was applied.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The disk (or quota) is full; nothing of the write was applied.
    #[error("no space left for metadata: {0}")]
    NoSpace(String),
    /// The database is closed after an I/O error and not reopened yet.
    #[error("{0}")]
    Unavailable(String),
}

impl From<crate::blocking::TaskFailed> for MetaError {
    fn from(e: crate::blocking::TaskFailed) -> Self {
        MetaError::Unavailable(e.to_string())
    }
}

impl MetaError {
    /// Whether another process (a running server) holds the redb file.
    pub fn is_held_elsewhere(&self) -> bool {
        matches!(self, MetaError::Db(e) if matches!(**e, redb::Error::DatabaseAlreadyOpen))
    }

    /// Whether this error leaves the database refusing further work until
    /// it is reopened (redb's rule after any failed write).
    pub fn closes_database(&self) -> bool {
        match self {
            MetaError::NoSpace(_) | MetaError::Unavailable(_) => true,
            MetaError::Db(e) => matches!(**e, redb::Error::Io(_) | redb::Error::PreviousIo),
            _ => false,
        }
    }

    /// The same failure, for another waiter of a batch that failed whole.
    fn for_each_job(&self) -> MetaError {
        match self {
            MetaError::NoSpace(m) => MetaError::NoSpace(m.clone()),
            MetaError::Unavailable(m) => MetaError::Unavailable(m.clone()),
            e => MetaError::CommitFailed(e.to_string()),
        }
    }
}

/// What is kept about a stored manifest (its bytes are a blob).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRecord {
    pub media_type: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Blobs (config, layers) this manifest references.
    #[serde(default)]
    pub blobs: Vec<String>,
    /// Manifests this index references.
    #[serde(default)]
    pub children: Vec<String>,
    /// Unix seconds of the push: garbage collection spares younger ones.
    #[serde(default)]
    pub created: u64,
    /// A pull-through cache's copy of an upstream manifest: what it
    /// references is fetched when a client asks for it, so it need not be
    /// in the repository (the commit does not require it, fsck does not
    /// report it missing).
    /// Stored as `mirrored`, the word of earlier versions.
    #[serde(
        default,
        rename = "mirrored",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub proxied: bool,
}

impl ManifestRecord {
    /// The stored form of a record: JSON, the same text in either database.
    pub(crate) fn encode(&self) -> Result<String, MetaError> {
        serde_json::to_string(self).map_err(|e| MetaError::Record(e.to_string()))
    }

    pub(crate) fn decode(stored: &[u8]) -> Result<ManifestRecord, MetaError> {
        serde_json::from_slice(stored).map_err(|e| MetaError::Record(e.to_string()))
    }

    /// The record of a manifest parsed from `size` bytes, pushed (or, if
    /// `proxied`, cached from an upstream) at `created`.
    pub fn new(
        parsed: crate::oci::manifest::ParsedManifest,
        size: u64,
        created: u64,
        proxied: bool,
    ) -> ManifestRecord {
        ManifestRecord {
            media_type: parsed.media_type,
            size,
            subject: parsed.subject.as_ref().map(|s| s.to_string()),
            artifact_type: parsed.artifact_type,
            annotations: parsed.annotations,
            blobs: parsed.blobs.iter().map(|d| d.to_string()).collect(),
            children: parsed.children.iter().map(|d| d.to_string()).collect(),
            created,
            proxied,
        }
    }
}

/// A robot account as stored: never its secret, only the secret's SHA-256
/// (a random 256-bit secret needs no slow hash to resist guessing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RobotRecord {
    /// Without the `robot$` of its user name.
    pub name: String,
    /// Hex SHA-256 of the secret.
    pub secret_sha256: String,
    /// Repository globs (`team-a/**`) it may act on.
    pub repositories: Vec<String>,
    /// Of `pull`, `push`, `delete`.
    pub actions: Vec<String>,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds; `None` never expires.
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// The admin who created it.
    #[serde(default)]
    pub created_by: String,
}

impl RobotRecord {
    pub(crate) fn encode(&self) -> Result<String, MetaError> {
        serde_json::to_string(self).map_err(|e| MetaError::Record(e.to_string()))
    }

    pub(crate) fn decode(stored: &[u8]) -> Result<RobotRecord, MetaError> {
        serde_json::from_slice(stored).map_err(|e| MetaError::Record(e.to_string()))
    }
}

/// One entry of the audit log: a change or a refusal, who asked, from
/// where. Written in the transaction of the change it records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Assigned when stored; increases with time (paging cursor).
    #[serde(default)]
    pub id: u64,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// The user (`robot$…`, an OIDC user's name, `-` for anonymous,
    /// `wharf` for the registry's own runs).
    pub actor: String,
    /// An OIDC user's issuer and subject.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub identity: String,
    /// The client's address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub addr: String,
    /// `push_manifest`, `delete_tag`, `mount_blob`, `login`, `gc`, ...
    pub action: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub repository: String,
    /// A tag or digest (and for a mount, where from).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reference: String,
    /// `ok`, or `refused: <why>`; for runs, what they did.
    pub result: String,
}

impl AuditRecord {
    pub(crate) fn encode(&self) -> Result<String, MetaError> {
        serde_json::to_string(self).map_err(|e| MetaError::Record(e.to_string()))
    }

    pub(crate) fn decode(stored: &[u8], id: u64) -> Result<AuditRecord, MetaError> {
        let mut r: AuditRecord =
            serde_json::from_slice(stored).map_err(|e| MetaError::Record(e.to_string()))?;
        r.id = id;
        Ok(r)
    }
}

/// Which audit records to read: newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Unix milliseconds, inclusive.
    pub since_ms: u64,
    /// Unix milliseconds, inclusive; 0: now.
    pub until_ms: u64,
    pub repository: Option<String>,
    pub actor: Option<String>,
    /// Only records older than this id (the previous page's last).
    pub before_id: Option<u64>,
    pub limit: usize,
}

impl AuditQuery {
    /// Whether `r` passes the filters other than time and id.
    pub(crate) fn keeps(&self, r: &AuditRecord) -> bool {
        self.repository.as_ref().is_none_or(|x| *x == r.repository)
            && self.actor.as_ref().is_none_or(|x| *x == r.actor)
    }

    pub(crate) fn until(&self) -> u64 {
        match self.until_ms {
            0 => u64::MAX,
            t => t,
        }
    }
}

/// A repository's link to a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobLink {
    pub repo: String,
    pub digest: String,
    pub size: u64,
    /// Unix seconds of the upload or mount that made the link.
    pub linked_at: u64,
}

/// One change to the metadata. Validation happens before a write is queued,
/// so a batch fails only as a whole, on a database error.
#[derive(Debug, Clone)]
pub enum MetaWrite {
    LinkBlob {
        repo: RepoName,
        digest: Digest,
        size: u64,
    },
    /// Links a blob that `from` may read; fails if `from` lost it meanwhile.
    MountBlob {
        from: RepoName,
        repo: RepoName,
        digest: Digest,
        size: u64,
    },
    UnlinkBlob {
        repo: RepoName,
        digest: Digest,
    },
    /// Stores a manifest record, indexes its subject and the blobs and
    /// child manifests it references, and optionally points a tag at it.
    /// Fails if a referenced blob or child is no longer in the repository.
    PutManifest {
        repo: RepoName,
        digest: Digest,
        record: ManifestRecord,
        tag: Option<String>,
        /// The tag is immutable: fail if it points at another manifest
        /// (checked in the transaction, so two pushes cannot both win).
        tag_immutable: bool,
    },
    /// Removes a manifest, every tag on it, and its referrer entry.
    DeleteManifest {
        repo: RepoName,
        digest: Digest,
    },
    DeleteTag {
        repo: RepoName,
        tag: String,
    },
    /// Retention: remove a tag only if it still points at `digest` (a tag
    /// moved since the policy looked is a new push, not a candidate).
    RetireTag {
        repo: RepoName,
        tag: String,
        digest: Digest,
    },
    /// When manifests were last pulled (unix seconds), batched by the
    /// pull log; a later time wins over an earlier one.
    RecordPulls {
        pulls: Vec<(RepoName, Digest, u64)>,
    },
    /// A notification for `endpoint`, queued in the transaction of the
    /// change it describes. Beyond `max_pending` queued for the endpoint
    /// it is dropped and counted instead.
    QueueEvent {
        endpoint: String,
        payload: Vec<u8>,
        max_pending: u64,
    },
    /// The endpoint took every queued event up to `through` (a sequence
    /// number `pending_events` gave).
    AckEvents {
        endpoint: String,
        through: u64,
    },
    /// `node` delivers `endpoint`'s events until `until` (unix s): refused
    /// while another node's claim is live, so one node at a time sends an
    /// endpoint's events, in order.
    ClaimDelivery {
        endpoint: String,
        node: String,
        until: u64,
    },
    /// Creates a robot account; fails if one of that name exists.
    PutRobot {
        record: RobotRecord,
    },
    /// Removes a robot account; fails if there is none of that name.
    DeleteRobot {
        name: String,
    },
    /// An audit record, in the transaction of the change it records.
    Audit {
        record: AuditRecord,
    },
    /// Forgets audit records older than `before_ms` (unix ms).
    PruneAudit {
        before_ms: u64,
    },
    /// Counts each configured quota never counted before (from what its
    /// repositories hold) and forgets quotas no longer configured; written
    /// once at start-up.
    SyncQuotas,
    /// Forgets the queues of endpoints no longer configured.
    ForgetEndpoints {
        keep: Vec<String>,
    },
    /// Garbage collection: unlink a blob no manifest of `repo` references,
    /// if the link is older than `cutoff` (unix seconds).
    GcUnlinkBlob {
        repo: RepoName,
        digest: Digest,
        cutoff: u64,
    },
    /// Garbage collection: remove an untagged manifest no index references,
    /// if it was pushed before `cutoff`.
    GcDeleteManifest {
        repo: RepoName,
        digest: Digest,
        cutoff: u64,
    },
}

/// One repository's rows, as [`MetaRead::repository_rows`] reads them.
#[derive(Debug, Default)]
pub struct RepositoryRows {
    pub tags: Vec<(String, String)>,
    pub manifests: Vec<(String, ManifestRecord)>,
    pub pulls: Vec<(String, u64)>,
}

/// A page of names (tags or repositories) and whether more follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<String>,
    pub more: bool,
}

impl Page {
    /// A page of `n` from `items`, read with one extra to tell whether more
    /// follow.
    pub(crate) fn of(mut items: Vec<String>, n: usize) -> Page {
        let more = items.len() > n;
        items.truncate(n);
        Page { items, more }
    }
}

/// The read side of a database that can hold Wharf's metadata. Reads are
/// short but do disk I/O: call them from the blocking pool
/// ([`Meta::query`]), not from an async worker.
pub trait MetaRead: Send + Sync + 'static {
    fn blob_link(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>, MetaError>;
    fn manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<ManifestRecord>, MetaError>;
    fn tag(&self, repo: &RepoName, tag: &str) -> Result<Option<Digest>, MetaError>;
    fn repo_exists(&self, repo: &RepoName) -> Result<bool, MetaError>;
    /// Tags of `repo` sorted, strictly after `after`, at most `n`.
    fn tags(&self, repo: &RepoName, after: Option<&str>, n: usize) -> Result<Page, MetaError>;
    /// The tags of `repo` that point at `digest`, sorted (an index read:
    /// the cost does not grow with the repository's other tags).
    fn tags_of(&self, repo: &RepoName, digest: &Digest) -> Result<Vec<String>, MetaError>;
    /// Repositories sorted, strictly after `after`, at most `n`.
    fn repos(&self, after: Option<&str>, n: usize) -> Result<Page, MetaError>;
    /// Digests of the manifests in `repo` whose subject is `subject`.
    fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Digest>, MetaError>;
    /// Every blob link (garbage collection, fsck).
    fn all_blob_links(&self) -> Result<Vec<BlobLink>, MetaError>;
    /// Every manifest as (repository, digest, record).
    fn all_manifests(&self) -> Result<Vec<(String, String, ManifestRecord)>, MetaError>;
    /// Every manifest as (repository, digest), its record not read.
    fn all_manifest_keys(&self) -> Result<Vec<(String, String)>, MetaError>;
    /// What manifests use, from the reverse index: (repository, used
    /// digest, manifest), the records not read.
    fn all_references(&self) -> Result<Vec<(String, String, String)>, MetaError>;
    /// One repository's tags (tag, digest), manifests (digest, record) and
    /// pull times (digest, unix s): what retention plans over, read per
    /// repository so its cost follows the repositories a policy covers.
    fn repository_rows(&self, repo: &str) -> Result<RepositoryRows, MetaError>;
    /// Every tag as (repository, tag, digest).
    fn all_tags(&self) -> Result<Vec<(String, String, String)>, MetaError>;
    /// When each manifest was last pulled: (repository, digest, unix s).
    fn all_pulls(&self) -> Result<Vec<(String, String, u64)>, MetaError>;
    /// A repository's tag count and the bytes of the blobs it links (the
    /// web UI's repository list).
    fn repo_stats(&self, repo: &str) -> Result<(u64, u64), MetaError>;
    /// Every robot account, by name.
    fn robots(&self) -> Result<Vec<RobotRecord>, MetaError>;
    /// Audit records, newest first.
    fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, MetaError>;
    /// Each counted quota's usage: (quota, bytes).
    fn quota_usages(&self) -> Result<Vec<(String, u64)>, MetaError>;
    /// The oldest `n` events queued for `endpoint`: (sequence, payload).
    fn pending_events(&self, endpoint: &str, n: usize) -> Result<Vec<(u64, Vec<u8>)>, MetaError>;
    /// Events queued for `endpoint`, and how many were dropped (full queue).
    fn event_counts(&self, endpoint: &str) -> Result<(u64, u64), MetaError>;
}

/// A whole database: the reads, and `commit`, which only the writer thread
/// calls (handlers get a [`MetaRead`] and the write queue, never this).
pub trait MetaBackend: MetaRead {
    /// Applies each job in order in one transaction. A job whose
    /// precondition fails is skipped whole and answered `Conflict`; the
    /// outer error fails every job (database trouble).
    fn commit(
        &self,
        jobs: &[Vec<MetaWrite>],
        durable: bool,
        quotas: &quota::Quotas,
    ) -> Result<Vec<Result<(), MetaError>>, MetaError>;
}

/// Handle to the metadata store; cheap to clone.
#[derive(Clone)]
pub struct Meta {
    reader: Arc<dyn MetaRead>,
    writes: mpsc::Sender<writer::WriteJob>,
    /// The `[[quota]]`s every write keeps the usage of.
    quotas: Arc<quota::Quotas>,
}

/// Owns the writer thread; `join` waits for queued writes to finish.
pub struct MetaWriter {
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Meta {
    /// Opens the embedded default, `<root>/meta.redb`.
    pub fn open(
        root: &Path,
        durable: bool,
        space: Arc<DiskSpace>,
        quotas: Arc<quota::Quotas>,
    ) -> Result<(Meta, MetaWriter), MetaError> {
        let backend = Arc::new(RedbBackend::open(&root.join("meta.redb"), space)?);
        Self::with_backend(backend, durable, quotas)
    }

    /// Opens the backend the configuration names; with PostgreSQL, also
    /// hands back its pool (the object-store modules keep their tables in
    /// the same database). Connecting and migrating block, so this runs on
    /// the blocking pool. The `[[quota]]`s are brought up to date before it
    /// returns (a quota new to the database is counted now).
    pub async fn open_configured(
        config: &crate::config::Config,
        space: Arc<DiskSpace>,
    ) -> Result<(Meta, MetaWriter, Option<PgPool>), MetaError> {
        let (root, durable, meta) = (config.root.clone(), config.fsync, config.metadata.clone());
        let quotas = Arc::new(quota::Quotas::new(&config.quota));
        let opened = tokio::task::spawn_blocking(move || match meta.backend {
            MetadataBackend::Postgres => {
                let url = meta.url.as_deref().unwrap_or_default();
                let timeout = std::time::Duration::from_secs(meta.timeout_secs);
                let backend = PostgresBackend::connect(url, meta.pool_size, timeout)?;
                let pool = backend.pool();
                let (m, w) = Self::with_backend(Arc::new(backend), durable, quotas)?;
                Ok((m, w, Some(pool)))
            }
            MetadataBackend::Redb => {
                Self::open(&root, durable, space, quotas).map(|(m, w)| (m, w, None))
            }
        })
        .await
        .map_err(|e| MetaError::Unavailable(format!("metadata open task failed: {e}")))??;
        opened.0.write(vec![MetaWrite::SyncQuotas]).await?;
        Ok(opened)
    }

    pub fn with_backend<B: MetaBackend>(
        backend: Arc<B>,
        durable: bool,
        quotas: Arc<quota::Quotas>,
    ) -> Result<(Meta, MetaWriter), MetaError> {
        let (tx, rx) = mpsc::channel(1024);
        let reader: Arc<dyn MetaRead> = backend.clone();
        let thread = writer::spawn(backend, rx, durable, quotas.clone())?;
        Ok((
            Meta {
                reader,
                writes: tx,
                quotas,
            },
            MetaWriter {
                thread: Some(thread),
            },
        ))
    }

    /// The `[[quota]]`s every write keeps (the object-store completion
    /// applies the rules in its own transaction with them).
    pub fn quotas(&self) -> Arc<quota::Quotas> {
        self.quotas.clone()
    }

    /// The read side, for code already on a blocking thread (offline tools,
    /// garbage collection's walks).
    pub fn read(&self) -> &dyn MetaRead {
        self.reader.as_ref()
    }

    /// A shared handle on the read side, to move into blocking closures
    /// that read metadata and files in one trip.
    pub fn reader(&self) -> Arc<dyn MetaRead> {
        self.reader.clone()
    }

    /// Runs a read on the blocking pool: redb reads are disk I/O, and a
    /// stalling disk must not stall every connection of an async worker.
    pub async fn query<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn MetaRead) -> Result<T, MetaError> + Send + 'static,
    ) -> Result<T, MetaError> {
        let reader = self.reader.clone();
        crate::blocking::run(move || f(reader.as_ref())).await
    }

    /// Applies `ops` in one transaction; returns once it is durable.
    pub async fn write(&self, ops: Vec<MetaWrite>) -> Result<(), MetaError> {
        let (done, wait) = oneshot::channel();
        self.writes
            .send(writer::WriteJob { ops, done })
            .await
            .map_err(|_| MetaError::WriterGone)?;
        wait.await.map_err(|_| MetaError::WriterGone)?
    }

    pub async fn link_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
    ) -> Result<(), MetaError> {
        self.write(vec![MetaWrite::LinkBlob {
            repo: repo.clone(),
            digest: digest.clone(),
            size,
        }])
        .await
    }
}

impl MetaWriter {
    /// Waits for the writer to finish what is queued. Every `Meta` clone must
    /// be dropped first, or this waits for them.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
