//! The registry-wide memory budget for upload bytes
//! (`upload_memory_budget_mib`): what request bodies hold between the
//! socket and the disk, and in object-store mode the part a session is
//! sending to the store. Counted in KiB units of one semaphore.
//!
//! Owns: the units, and waiting for them within a bound.
//! Must not: decide how much a body reserves (`http::uploads` does) or
//! hold units itself: whoever holds bytes holds their permit.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Clone)]
pub struct MemoryBudget {
    units: Arc<Semaphore>,
    total_kib: u32,
    /// The longest a holder of bytes waits for units before giving up.
    wait: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("upload memory budget exhausted for {0:?}")]
    Exhausted(Duration),
}

impl MemoryBudget {
    pub fn new(mib: u64, wait: Duration) -> MemoryBudget {
        let total_kib = u32::try_from(mib.saturating_mul(1024).max(1)).unwrap_or(u32::MAX);
        MemoryBudget {
            units: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
            wait,
        }
    }

    /// Units for `len` bytes; never more than the whole budget, so the
    /// largest holder still gets through (alone).
    pub fn kib_for(&self, len: usize) -> u32 {
        (len.div_ceil(1024) as u64).min(u64::from(self.total_kib)) as u32
    }

    /// Units now, if they are free.
    pub fn try_take(&self, kib: u32) -> Option<OwnedSemaphorePermit> {
        self.units.clone().try_acquire_many_owned(kib).ok()
    }

    /// Units, waiting at most the budget's bound for them.
    pub async fn take(&self, kib: u32) -> Result<OwnedSemaphorePermit, BudgetError> {
        match tokio::time::timeout(self.wait, self.units.clone().acquire_many_owned(kib)).await {
            Ok(Ok(p)) => Ok(p),
            // Never closed; treated as exhausted all the same.
            _ => Err(BudgetError::Exhausted(self.wait)),
        }
    }

    /// Units free now (metrics, tests).
    pub fn available_kib(&self) -> usize {
        self.units.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn units_are_capped_at_the_whole_and_waits_are_bounded() {
        let b = MemoryBudget::new(1, Duration::from_millis(50));
        assert_eq!(b.kib_for(1), 1);
        assert_eq!(
            b.kib_for(10 << 20),
            1024,
            "a holder larger than the budget takes it all"
        );
        let all = b.take(1024).await.unwrap();
        assert!(b.try_take(1).is_none());
        assert!(b.take(1).await.is_err(), "the wait is bounded");
        drop(all);
        assert!(b.try_take(1024).is_some());
    }
}
