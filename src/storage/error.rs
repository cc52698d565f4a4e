//! The storage seam's one error: a variant per outcome a client can tell
//! apart, whichever backend met it. Each backend's own errors are sorted
//! into these here, so nothing above `storage` matches a backend's enum.

use crate::blocking::TaskFailed;
use crate::config::ConfigError;
use crate::content::StoreError;
use crate::meta::MetaError;
use crate::s3::uploads::RemoteUploadError;
use crate::s3::S3Error;
use crate::upload::{Refusal, UploadError};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("blob unknown to this repository")]
    BlobUnknown,
    /// An unknown session, a chunk at the wrong offset, a digest mismatch.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Another request is completing the session.
    #[error("upload is being completed by another request")]
    UploadBusy,
    /// The session cannot take more bytes (the object store's part count).
    #[error("{0}")]
    UploadTooLarge(String),
    /// `limits.max_upload_sessions` are open.
    #[error("too many upload sessions open")]
    TooManySessions,
    #[error("the requested range is outside the blob's {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    /// No space for new data; reads, deletes and GC still work.
    #[error("{0}")]
    Full(String),
    /// The store, the database or an actor did not answer: retry later.
    #[error("{0}")]
    Unavailable(String),
    /// A fault: the index and the bytes disagree, an I/O error, a bug.
    #[error("{0}")]
    Internal(String),
    /// Linking the blob would take a `[[quota]]` over its limit.
    #[error("{0}")]
    QuotaExceeded(String),
}

impl From<std::io::Error> for StorageError {
    fn from(e: std::io::Error) -> Self {
        if crate::space::is_no_space(&e) {
            StorageError::Full(
                "no space left in the registry's data folder; deletes and garbage collection \
                 still work"
                    .into(),
            )
        } else {
            StorageError::Internal(format!("storage I/O: {e}"))
        }
    }
}

impl From<StoreError> for StorageError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Io(io) => io.into(),
            e @ StoreError::Unavailable(_) => StorageError::Unavailable(e.to_string()),
        }
    }
}

impl From<UploadError> for StorageError {
    fn from(e: UploadError) -> Self {
        match e {
            UploadError::Refused(r) => StorageError::Refused(r),
            UploadError::Sealed => StorageError::UploadBusy,
            UploadError::Io(io) => io.into(),
            e @ UploadError::Unavailable(_) => StorageError::Unavailable(e.to_string()),
        }
    }
}

impl From<RemoteUploadError> for StorageError {
    fn from(e: RemoteUploadError) -> Self {
        use RemoteUploadError as E;
        match e {
            E::Refused(r) => StorageError::Refused(r),
            e @ E::TooManyParts => StorageError::UploadTooLarge(e.to_string()),
            E::TooManySessions => StorageError::TooManySessions,
            E::QuotaExceeded(m) => StorageError::QuotaExceeded(m),
            // The scratch disk: full is full (507), the rest a fault.
            E::Scratch(io) => io.into(),
            e @ (E::Unavailable(_)
            | E::S3(S3Error::Unavailable(_))
            | E::S3(S3Error::Refused(_))) => StorageError::Unavailable(e.to_string()),
            e => StorageError::Internal(e.to_string()),
        }
    }
}

impl From<S3Error> for StorageError {
    fn from(e: S3Error) -> Self {
        RemoteUploadError::S3(e).into()
    }
}

impl From<MetaError> for StorageError {
    fn from(e: MetaError) -> Self {
        match e {
            e @ MetaError::NoSpace(_) => StorageError::Full(e.to_string()),
            e @ MetaError::Unavailable(_) => StorageError::Unavailable(e.to_string()),
            MetaError::QuotaExceeded(m) => StorageError::QuotaExceeded(m),
            e => StorageError::Internal(e.to_string()),
        }
    }
}

impl From<TaskFailed> for StorageError {
    fn from(e: TaskFailed) -> Self {
        StorageError::Unavailable(e.to_string())
    }
}

impl From<ConfigError> for StorageError {
    fn from(e: ConfigError) -> Self {
        StorageError::Internal(e.to_string())
    }
}
