//! The metadata store: which repositories exist and which blobs each may
//! read (manifests, tags and referrers join them in the next layer of work).
//!
//! Owns: the embedded transactional database (redb) under `<root>/meta.redb`
//! and the group-commit writer thread that serialises every write.
//! Must not: hold blob bytes, or do blocking work on the async workers: reads
//! are short in-memory B-tree lookups, writes go to the writer thread.
//!
//! Why redb: pure Rust (no C toolchain in CI), ACID with copy-on-write pages,
//! MVCC reads that never wait for the writer, and one fsync pair per commit,
//! which the writer shares between every write that arrives while the
//! previous commit is syncing (group commit).

mod writer;

use crate::oci::{Digest, RepoName};
use redb::{Database, TableDefinition};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

pub use writer::MetaWrite;

/// (repository, digest) -> blob size
pub(crate) const BLOB_LINKS: TableDefinition<(&str, &str), u64> =
    TableDefinition::new("blob_links");
/// repository -> unix seconds of its first write
pub(crate) const REPOS: TableDefinition<&str, u64> = TableDefinition::new("repos");

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata database: {0}")]
    Db(#[from] redb::Error),
    #[error("metadata writer has stopped")]
    WriterGone,
    #[error("metadata commit failed: {0}")]
    CommitFailed(String),
    #[error("cannot start the metadata writer: {0}")]
    Thread(std::io::Error),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for MetaError {
            fn from(e: $t) -> Self { MetaError::Db(e.into()) }
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

/// Handle to the metadata store; cheap to clone.
#[derive(Clone)]
pub struct Meta {
    db: Arc<Database>,
    writes: mpsc::Sender<writer::WriteJob>,
}

/// Owns the writer thread; `shutdown` drains queued writes and joins it.
pub struct MetaWriter {
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Meta {
    /// Opens (or creates) `<root>/meta.redb` and starts the writer thread.
    pub fn open(root: &Path, durable: bool) -> Result<(Meta, MetaWriter), MetaError> {
        let db = Arc::new(Database::create(root.join("meta.redb"))?);
        {
            // Create the tables up front so read transactions never meet a
            // missing table.
            let txn = db.begin_write()?;
            txn.open_table(BLOB_LINKS)?;
            txn.open_table(REPOS)?;
            txn.commit()?;
        }
        let (tx, rx) = mpsc::channel(1024);
        let thread = writer::spawn(db.clone(), rx, durable)?;
        Ok((
            Meta { db, writes: tx },
            MetaWriter {
                thread: Some(thread),
            },
        ))
    }

    /// Size of `digest` if `repo` may read it.
    pub fn blob_link(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>, MetaError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BLOB_LINKS)?;
        let key = digest.to_string();
        Ok(table.get((repo.as_str(), key.as_str()))?.map(|v| v.value()))
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
