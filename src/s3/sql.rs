//! The one way the object-store modules reach PostgreSQL: a pooled
//! connection on the blocking pool, and the error mapping they share.

use super::uploads::RemoteUploadError;
use crate::meta::{PgConnection, PgError, PgPool};

/// Runs blocking database work on the blocking pool (the client blocks).
pub(super) async fn blocking<T: Send + 'static>(
    pool: &PgPool,
    f: impl FnOnce(&mut PgConnection) -> Result<T, RemoteUploadError> + Send + 'static,
) -> Result<T, RemoteUploadError> {
    let pool = pool.clone();
    crate::blocking::run(move || {
        let mut conn = pool
            .get()
            .map_err(|e| RemoteUploadError::Unavailable(e.to_string()))?;
        f(&mut conn)
    })
    .await
}

/// Not reaching the database is `Unavailable` (503); the rest is a fault.
pub(super) fn db(e: PgError) -> RemoteUploadError {
    if e.unreachable() {
        RemoteUploadError::Unavailable(e.to_string())
    } else {
        RemoteUploadError::Db(e.to_string())
    }
}

pub(super) fn now() -> i64 {
    crate::calendar::unix_now() as i64
}
