//! The registry's background tasks: each a loop over the shared [`App`],
//! spawned and stopped by `server` (which owns their `JoinSet`): the idle
//! upload purge, scheduled retention and GC, the store gauges, the disk
//! watch while full, pull-time flushes, reloads of certificates and
//! credentials, the refresh of robot accounts and the audit log's pruning.
//!
//! Must not: spawn tasks of its own that nobody stops, or hold a lock
//! across `.await`.

use super::App;
use crate::tls::CertResolver;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::signal::unix::Signal;

/// Reloads the certificate, the htpasswd file and the token key on SIGHUP,
/// and when their modification times change (checked every
/// `tls.reload_check_secs`, or 10 s).
pub(crate) async fn watch_reloadable(
    state: Arc<App>,
    tls: Option<Arc<CertResolver>>,
    mut hangup: Option<Signal>,
) {
    let mut files: Vec<PathBuf> = Vec::new();
    if let Some(t) = &tls {
        files.extend(t.paths().iter().map(|p| p.to_path_buf()));
    }
    if let Some(a) = &state.auth {
        files.extend(a.watched_files());
    }
    if files.is_empty() {
        return;
    }
    let every = Duration::from_secs(
        state
            .config
            .tls
            .as_ref()
            .map_or(10, |t| t.reload_check_secs.max(1)),
    );
    // File reads (stat, certificate and credential files) go to the
    // blocking pool: a stalled disk must not stall an async worker.
    let stamps = |files: Arc<Vec<PathBuf>>| async move {
        tokio::task::spawn_blocking(move || -> Vec<Option<SystemTime>> {
            files
                .iter()
                .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
                .collect()
        })
        .await
        .unwrap_or_default()
    };
    let files = Arc::new(files);
    let mut seen = stamps(files.clone()).await;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let signalled = tokio::select! {
            _ = tick.tick() => false,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        let now = stamps(files.clone()).await;
        if !signalled && now == seen {
            continue;
        }
        seen = now;
        let (st, tls) = (state.clone(), tls.clone());
        let reloaded = tokio::task::spawn_blocking(move || {
            if let Some(t) = &tls {
                match t.reload() {
                    Ok(()) => {
                        st.metrics.tls_reloads.with_label_values(&["ok"]).inc();
                        tracing::info!("TLS certificate reloaded");
                    }
                    Err(e) => {
                        st.metrics.tls_reloads.with_label_values(&["error"]).inc();
                        tracing::error!(error = %e, "TLS reload failed; keeping the previous certificate");
                    }
                }
            }
            if let Some(a) = &st.auth {
                if let Err(e) = a.reload() {
                    tracing::error!(error = %e, "credentials reload failed; keeping the previous ones");
                }
            }
        })
        .await;
        if let Err(e) = reloaded {
            tracing::error!(error = %e, "reload task failed");
        }
    }
}

/// Keeps the authenticator's robot accounts in step with the metadata
/// store: what another node created, revoked or what expired.
pub(crate) async fn refresh_robots(state: Arc<App>) {
    if state.auth.is_none() {
        return;
    }
    let mut tick = tokio::time::interval(super::robots::REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = super::robots::refresh(&state).await {
            tracing::warn!(error = %e, "robot accounts not refreshed; keeping the ones read before");
        }
    }
}

/// Prunes the audit log past `audit.audit_days`, hourly.
pub(crate) async fn prune_audit(state: Arc<App>) {
    let mut tick = tokio::time::interval(super::audit::PRUNE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = super::audit::prune(&state).await {
            tracing::warn!(error = %e, "audit log not pruned");
        }
    }
}

/// Sets the store gauges from a scan of the blobs folder at start-up; from
/// then on commits and garbage collection keep them current.
pub(crate) async fn count_store(state: Arc<App>) {
    match state.storage.totals().await {
        Ok((blobs, bytes)) => {
            state.metrics.store_bytes.add(bytes as i64);
            state.metrics.store_blobs.add(blobs as i64);
        }
        Err(e) => tracing::warn!(error = %e, "could not count stored blobs"),
    }
}

/// While the data folder is full, checks every second whether space came
/// back (deleted through the API, or freed outside the registry) and, if
/// so, takes the reserve back and accepts writes again. (`/metrics` reads
/// the flag itself, so the gauge never lags a scrape.)
pub(crate) async fn watch_disk_space(state: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let full = if state.space.is_full() {
            let space = state.space.clone();
            tokio::task::spawn_blocking(move || space.probe())
                .await
                .unwrap_or(true)
        } else {
            false
        };
        state.metrics.disk_full.set(full as i64);
    }
}

pub(crate) async fn purge_idle_uploads(state: Arc<App>) {
    let every = Duration::from_secs(state.config.upload_purge_interval_secs);
    let idle = state.config.upload_idle_timeout();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let n = state.storage.purge(idle).await;
        state.note_sessions().await;
        if let Some(r) = &state.rate_limiter {
            r.sweep();
        }
        if n > 0 {
            tracing::info!(purged = n, "purged idle upload sessions");
        }
    }
}

/// How often noted manifest pulls are written (one batch each time).
const PULL_FLUSH: Duration = Duration::from_secs(30);

pub(crate) async fn flush_pulls(state: Arc<App>) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + PULL_FLUSH, PULL_FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = state.pulls.flush(&state.meta).await {
            tracing::warn!(error = %e, "pull times not recorded; retrying at the next flush");
        }
    }
}

pub(crate) async fn scheduled_gc(state: Arc<App>) {
    if state.config.gc_interval_secs == 0 {
        return;
    }
    let every = Duration::from_secs(state.config.gc_interval_secs);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(_running) = state.start_gc_run() else {
            tracing::info!("scheduled garbage collection skipped: a run is under way");
            continue;
        };
        // Retention first, so the collection frees what it unreferenced.
        if state.policies.has_retention() {
            if let Err(e) = state.pulls.flush(&state.meta).await {
                tracing::warn!(error = %e, "pull times not recorded before retention");
            }
            let outcome = match crate::retention::run(&state.meta, &state.policies, false).await {
                Ok(r) => {
                    tracing::info!(dry_run = r.dry_run, "retention (scheduled): {r}");
                    r.to_string()
                }
                Err(e) => {
                    tracing::error!(error = %e, "retention failed");
                    format!("failed: {e}")
                }
            };
            let r = super::audit::record("wharf", "retention", "", "scheduled", &outcome);
            super::audit::write(&state, r).await;
        }
        let result = crate::gc::collect(
            &state.meta,
            state.storage.as_ref(),
            &crate::gc::GcOptions::from_config(&state.config, false),
        )
        .await;
        crate::gc::record(&state.metrics, &result);
        let outcome = match result {
            Ok(report) => {
                tracing::info!(%report, "garbage collection (scheduled)");
                report.to_string()
            }
            Err(e) => {
                tracing::error!(error = %e, "garbage collection failed");
                format!("failed: {e}")
            }
        };
        let r = super::audit::record("wharf", "gc", "", "scheduled", &outcome);
        super::audit::write(&state, r).await;
    }
}
