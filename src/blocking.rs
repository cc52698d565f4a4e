//! The one way async code runs blocking work (file I/O, a blocking
//! database client, hashing) on tokio's blocking pool, so a slow disk or
//! database never stalls the connections of an async worker.
//!
//! Owns: [`run`] and the error it adds, [`TaskFailed`].
//! Must not: know any layer's errors (each layer converts `TaskFailed`).

/// The blocking task panicked or was cancelled at shutdown.
#[derive(Debug, thiserror::Error)]
#[error("blocking task failed: {0}")]
pub struct TaskFailed(pub String);

/// Runs `f` on the blocking pool and hands back its result.
pub async fn run<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, E>
where
    T: Send + 'static,
    E: From<TaskFailed> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| E::from(TaskFailed(e.to_string())))?
}

/// For blocking work whose error is plain I/O (the store's shard actors).
impl From<TaskFailed> for std::io::Error {
    fn from(e: TaskFailed) -> Self {
        std::io::Error::other(e)
    }
}
