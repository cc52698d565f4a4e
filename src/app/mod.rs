//! The application core: the state every request handler and background
//! task shares, built once at start-up, and the whole-configuration check
//! that start-up and `wharf config check` share.
//!
//! Owns: [`App`] (configuration, storage, metadata, auth, limits, metrics,
//! the memory budget, compiled policies, proxies, notifier) and the
//! garbage-collection run flag; `check` (every section compiled by the
//! module it configures, every file the configuration names).
//! `tasks`: the background loops over `App` (spawned and stopped by
//! `server`).
//! Must not: speak HTTP or accept connections (`http` and `server` do).

pub mod audit;
pub mod check;
pub mod quotas;
pub mod robots;
pub mod tasks;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::limits::RateLimiter;
use crate::meta::Meta;
use crate::metrics::Metrics;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Everything a handler may use. Built once at start-up.
pub struct App {
    pub config: Config,
    /// Blob bytes and upload sessions: the data folder, or an object store.
    pub storage: Arc<dyn crate::storage::BlobStorage>,
    pub meta: Meta,
    /// Request-body bytes (in KiB) held in memory across all uploads: a
    /// handler takes the size of each body frame as it arrives and gives it
    /// back once the batch is written, so a crowd of fast clients waits on
    /// this instead of filling memory, and a slow client holds only what
    /// it has sent (and, with batches flushed after a short linger, only
    /// briefly).
    /// `upload_memory_budget_mib`: bodies' bytes in memory, and in
    /// object-store mode the parts being sent (the storage holds a clone).
    pub budget: crate::upload::budget::MemoryBudget,
    /// Set while garbage collection or retention runs, so runs never
    /// overlap (a flag, not a lock: nothing waits on it).
    pub gc_running: AtomicBool,
    /// `None`: authentication is off.
    pub auth: Option<Authenticator>,
    pub rate_limiter: Option<RateLimiter>,
    pub metrics: Arc<Metrics>,
    /// Set when shutdown begins: `/readyz` turns 503 so balancers drain us.
    pub draining: AtomicBool,
    /// Free space and the full-disk mode: write endpoints ask it first.
    pub space: Arc<crate::space::DiskSpace>,
    /// Retention policies and immutable tags, compiled.
    pub policies: Arc<crate::retention::Policies>,
    /// Manifest pulls not yet written (retention's "pulled within").
    pub pulls: crate::pull_log::PullLog,
    /// Pull-through caches (`[[proxy]]`).
    pub proxies: Arc<crate::proxy::Proxies>,
    /// Webhooks (`[[notifications]]`): events to queue with changes.
    pub notifier: Arc<crate::notify::Notifier>,
    /// The PostgreSQL pool (cluster mode), for its figures.
    pub database: Option<crate::meta::PgPool>,
    /// Unix milliseconds of the last refresh of robot accounts a login
    /// triggered (`robots::refresh_after_miss`).
    pub robots_read_at: std::sync::atomic::AtomicU64,
}

impl App {
    /// Sets the open-sessions gauge (a scrape, each purge).
    pub async fn note_sessions(&self) {
        match self.storage.sessions_open().await {
            Ok(n) => self.metrics.upload_sessions_open.set(n as i64),
            Err(e) => tracing::debug!(error = %e, "upload sessions not counted"),
        }
    }

    /// Copies the PostgreSQL pool's figures into the metrics (a scrape).
    pub fn note_database(&self) {
        let Some(pool) = &self.database else {
            return;
        };
        let f = pool.figures();
        let m = &self.metrics.database;
        m.connections
            .with_label_values(&["in_use"])
            .set(f.in_use as i64);
        m.connections
            .with_label_values(&["idle"])
            .set(f.open.saturating_sub(f.in_use) as i64);
        m.connections_max.set(f.max as i64);
        m.waiting.set(f.waiting as i64);
        m.checkouts
            .inc_by(f.checkouts.saturating_sub(m.checkouts.get()));
        m.wait_seconds
            .inc_by((f.wait_seconds - m.wait_seconds.get()).max(0.0));
    }

    pub fn batch_bytes(&self) -> usize {
        (self.config.upload_batch_kib * 1024) as usize
    }

    /// Marks a garbage collection or retention run as started; `None` if
    /// one is running. The run ends when the guard drops.
    pub fn start_gc_run(&self) -> Option<GcRun<'_>> {
        self.gc_running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| GcRun(&self.gc_running))
    }

    /// Whether the registry can serve: not draining, metadata readable.
    pub async fn ready(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("shutting down".into());
        }
        self.meta
            .query(|m| m.repos(None, 1))
            .await
            .map_err(|e| format!("metadata store: {e}"))?;
        self.storage.ready().await?;
        Ok(())
    }
}

/// A garbage collection or retention run in progress; clears the flag
/// when dropped.
pub struct GcRun<'a>(&'a AtomicBool);

impl Drop for GcRun<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}
