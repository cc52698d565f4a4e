//! When manifests were last pulled, for retention's
//! `keep_pulled_within_days`, without a metadata write per pull.
//!
//! Owns: the pulls seen since the last flush (the latest time per
//! repository and digest) and writing them as one batch.
//! Must not: delay a pull (noting one is a map insert), or lose more than
//! one flush interval's pulls to a crash (acceptable: pull times are a
//! retention hint, not data anyone acknowledged).

use crate::meta::{Meta, MetaError, MetaWrite};
use crate::oci::{Digest, RepoName};
use dashmap::DashMap;

#[derive(Default)]
pub struct PullLog {
    seen: DashMap<(RepoName, Digest), u64>,
}

/// Pulls written per metadata transaction.
const BATCH: usize = 1000;

impl PullLog {
    pub fn note(&self, repo: &RepoName, digest: &Digest, at: u64) {
        self.seen.insert((repo.clone(), digest.clone()), at);
    }

    /// Writes what was noted since the last flush; returns how many.
    pub async fn flush(&self, meta: &Meta) -> Result<usize, MetaError> {
        let keys: Vec<(RepoName, Digest)> = self.seen.iter().map(|e| e.key().clone()).collect();
        let pulls: Vec<(RepoName, Digest, u64)> = keys
            .into_iter()
            .filter_map(|k| self.seen.remove(&k).map(|((r, d), at)| (r, d, at)))
            .collect();
        let n = pulls.len();
        for chunk in pulls.chunks(BATCH) {
            if let Err(e) = meta
                .write(vec![MetaWrite::RecordPulls {
                    pulls: chunk.to_vec(),
                }])
                .await
            {
                // Keep them for the next flush (a newer pull wins).
                for (r, d, at) in chunk {
                    self.seen.entry((r.clone(), d.clone())).or_insert(*at);
                }
                return Err(e);
            }
        }
        Ok(n)
    }
}
