//! `wharf fsck` for the configured storage, whichever it is: the data
//! folder's check (`fsck`, offline or read-only beside a server) or the
//! bucket's check against its PostgreSQL index (`ObjectBlobs::check`,
//! read-only beside live nodes). The CLI calls this one entry and prints
//! one report.

use crate::config::{Config, StorageBackend};
use crate::fsck::{FsckError, FsckReport};
use crate::terminal::WorkProgress;
use std::time::Duration;

/// What the check may do.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckOptions {
    /// Move corrupt blobs aside and drop leftovers (data folder only, with
    /// no server running).
    pub repair: bool,
    /// Read every object back and hash it (the bucket; the data folder
    /// always hashes).
    pub deep: bool,
}

/// Checks what `config` stores its blobs in.
pub async fn check(
    config: &Config,
    opts: CheckOptions,
    progress: &(dyn WorkProgress + Sync),
) -> Result<FsckReport, FsckError> {
    match (config.storage.backend, &config.storage.s3) {
        (StorageBackend::Filesystem, _) => crate::fsck::run(&config.root, opts.repair, progress),
        (StorageBackend::S3, _) if opts.repair => Err(FsckError::RepairNeedsFolder),
        (StorageBackend::S3, None) => Err(FsckError::Storage(
            "storage.backend = \"s3\" needs a [storage.s3] section".into(),
        )),
        (StorageBackend::S3, Some(s3)) => {
            let url = config.metadata.url.clone().unwrap_or_default();
            let timeout = Duration::from_secs(config.metadata.timeout_secs);
            let failed = |e: &dyn std::fmt::Display| FsckError::Storage(e.to_string());
            let settings = crate::s3::S3Settings::from_config(s3).map_err(|e| failed(&e))?;
            let client = crate::s3::S3Client::new(&settings).map_err(|e| failed(&e))?;
            let pool = crate::blocking::run(move || {
                crate::meta::PostgresBackend::connect(&url, 2, timeout).map(|b| b.pool())
            })
            .await?;
            let blobs = crate::s3::objects::ObjectBlobs::new(client, pool, 0, false);
            let (checked, bytes, problems) = blobs
                .check(opts.deep, progress)
                .await
                .map_err(|e| failed(&e))?;
            Ok(FsckReport {
                blobs_checked: checked,
                bytes_checked: bytes,
                metadata_checked: true,
                problems,
                ..Default::default()
            })
        }
    }
}
