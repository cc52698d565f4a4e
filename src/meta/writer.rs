//! The single writer: takes every queued write job, applies them in one
//! backend transaction, commits once, then answers each job. Under parallel
//! pushes many writes share one fsync instead of queueing for one each.

use super::quota::Quotas;
use super::{MetaBackend, MetaError, MetaWrite};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Most jobs folded into one transaction; bounds the latency a single
/// commit adds to the first job in it.
const MAX_JOBS_PER_COMMIT: usize = 256;

pub(super) struct WriteJob {
    pub ops: Vec<MetaWrite>,
    pub done: oneshot::Sender<Result<(), MetaError>>,
}

pub(super) fn spawn<B: MetaBackend>(
    backend: Arc<B>,
    mut rx: mpsc::Receiver<WriteJob>,
    durable: bool,
    quotas: Arc<Quotas>,
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
                let (ops, replies): (Vec<Vec<MetaWrite>>, Vec<_>) =
                    jobs.into_iter().map(|j| (j.ops, j.done)).unzip();
                match backend.commit(&ops, durable, &quotas) {
                    Ok(results) => {
                        for (r, done) in results.into_iter().zip(replies) {
                            let _ = done.send(r);
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, jobs = replies.len(), "metadata commit failed");
                        for done in replies {
                            let _ = done.send(Err(e.for_each_job()));
                        }
                    }
                }
            }
        })
        .map_err(MetaError::Thread)
}
