//! The single writer: takes every queued write job, applies them in one
//! redb transaction, commits once, then answers each job. Under parallel
//! pushes many links share one fsync instead of queueing for one each.

use super::{MetaError, BLOB_LINKS, REPOS};
use crate::oci::{Digest, RepoName};
use redb::{Database, Durability, ReadableTable};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// Most jobs folded into one transaction; bounds the latency a single
/// commit adds to the first job in it.
const MAX_JOBS_PER_COMMIT: usize = 256;

/// One change to the metadata. Each is infallible by itself (validation
/// happens before a write is queued), so a batch fails only as a whole, on a
/// database error.
#[derive(Debug, Clone)]
pub enum MetaWrite {
    LinkBlob {
        repo: RepoName,
        digest: Digest,
        size: u64,
    },
    UnlinkBlob {
        repo: RepoName,
        digest: Digest,
    },
}

pub(super) struct WriteJob {
    pub ops: Vec<MetaWrite>,
    pub done: oneshot::Sender<Result<(), MetaError>>,
}

pub(super) fn spawn(
    db: Arc<Database>,
    mut rx: mpsc::Receiver<WriteJob>,
    durable: bool,
) -> Result<std::thread::JoinHandle<()>, MetaError> {
    std::thread::Builder::new()
        .name("wharf-meta-writer".into())
        .spawn(move || {
            while let Some(first) = rx.blocking_recv() {
                let mut jobs = vec![first];
                while jobs.len() < MAX_JOBS_PER_COMMIT {
                    match rx.try_recv() {
                        Ok(j) => jobs.push(j),
                        Err(_) => break,
                    }
                }
                let result = commit(&db, &jobs, durable);
                for job in jobs {
                    let r = match &result {
                        Ok(()) => Ok(()),
                        Err(e) => Err(MetaError::CommitFailed(e.to_string())),
                    };
                    let _ = job.done.send(r);
                }
            }
        })
        .map_err(MetaError::Thread)
}

fn commit(db: &Database, jobs: &[WriteJob], durable: bool) -> Result<(), MetaError> {
    let mut txn = db.begin_write()?;
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
        let mut links = txn.open_table(BLOB_LINKS)?;
        let mut repos = txn.open_table(REPOS)?;
        for op in jobs.iter().flat_map(|j| j.ops.iter()) {
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
            }
        }
    }
    txn.commit()?;
    Ok(())
}
