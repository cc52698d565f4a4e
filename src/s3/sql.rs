//! The one way the object-store modules reach PostgreSQL: a pooled
//! connection on the blocking pool, and the error mapping they share.

use super::uploads::RemoteUploadError;
use crate::meta::PgPool;

/// Runs blocking database work on the blocking pool (the client blocks).
pub(super) async fn blocking<T: Send + 'static>(
    pool: &PgPool,
    f: impl FnOnce(&mut postgres::Client) -> Result<T, RemoteUploadError> + Send + 'static,
) -> Result<T, RemoteUploadError> {
    let pool = pool.clone();
    crate::blocking::run(move || {
        let mut conn = pool
            .get()
            .map_err(|e| RemoteUploadError::Unavailable(format!("PostgreSQL: {e}")))?;
        f(&mut conn)
    })
    .await
}

/// Not reaching the database is `Unavailable` (503); the rest is a fault.
pub(super) fn db(e: postgres::Error) -> RemoteUploadError {
    if crate::meta::pg_unreachable(&e) {
        RemoteUploadError::Unavailable(crate::meta::pg_describe(&e))
    } else {
        RemoteUploadError::Db(crate::meta::pg_describe(&e))
    }
}

pub(super) fn now() -> i64 {
    crate::calendar::unix_now() as i64
}
