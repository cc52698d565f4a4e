//! Start-up and shutdown of a whole registry: builds the components from a
//! `Config`, accepts connections (HTTP/1.1 and cleartext HTTP/2), and on
//! shutdown stops accepting, lets requests finish for a bounded time, and
//! stops every actor and task it started.
//!
//! Owns: the listener, the connection tasks, the idle-upload purger.
//! Must not: hold registry logic; that lives in `http` and below.

use crate::app::App;
use crate::auth::{AuthError, Authenticator};
use crate::config::{Config, ConfigError};
use crate::connection::{self, Connections};
use crate::limits::{ConnectionLimiter, RateLimiter};
use crate::meta::{Meta, MetaError, MetaWriter};
use crate::metrics::{Metrics, MetricsError};
use crate::space::DiskSpace;
use crate::tls::{CertResolver, TlsError};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio::signal::unix::Signal;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinSet;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot prepare data folder {path}: {source}")]
    Root {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// A running registry.
pub struct Server {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Opens the data folder, recovers upload sessions, binds, and starts
    /// serving in the background.
    pub async fn start(config: Config) -> Result<Server, ServerError> {
        crate::app::check::compile(&config)?;
        let root = config.root.clone();
        std::fs::create_dir_all(&root).map_err(|source| ServerError::Root {
            path: root.clone(),
            source,
        })?;
        let space = Arc::new(DiskSpace::open(&root, config.disk_reserve_mib << 20));
        let (meta, writer, pg_pool) = Meta::open_configured(&config, space.clone()).await?;
        let metrics = Arc::new(Metrics::new()?);
        let storage = crate::storage::open_configured(
            &config,
            &meta,
            pg_pool,
            space.clone(),
            metrics.read_cache.clone(),
        )
        .await?;
        let auth = Authenticator::new(&config.auth)?;
        let tls = match &config.tls {
            Some(t) => Some(Arc::new(CertResolver::load(&t.cert, &t.key)?)),
            None => None,
        };
        let (listener, addr) = bind(config.addr).await?;
        let ops_listener = match config.metrics.addr {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        let budget_kib = (config.upload_memory_budget_mib * 1024) as usize;
        let mut retention = crate::proxy::retention_rules(&config.proxy);
        retention.extend(config.retention.iter().cloned());
        let policies = Arc::new(crate::retention::Policies::new(
            &retention,
            &config.immutable,
        )?);
        let mirrors = Arc::new(
            crate::proxy::Mirrors::new(&config.proxy, &root).map_err(ConfigError::Invalid)?,
        );
        if !mirrors.is_empty() {
            // Spools of fetches a killed process left: nothing reads them.
            mirrors
                .fetches
                .clear_spool()
                .map_err(|source| ServerError::Root {
                    path: root.join("proxy"),
                    source,
                })?;
        }
        let notifier = Arc::new(
            crate::notify::Notifier::new(
                &config.notifications,
                addr.to_string(),
                config.tls.is_some(),
            )
            .map_err(ConfigError::Invalid)?,
        );
        // Queues of endpoints taken out of the configuration go with them.
        meta.write(vec![notifier.forget_others()]).await?;
        let rate_limiter = RateLimiter::new(
            config.limits.rate_limit_per_sec,
            config.limits.rate_limit_burst,
        );
        let state = Arc::new(App {
            config,
            storage,
            meta,
            body_budget: Arc::new(Semaphore::new(budget_kib)),
            gc_running: AtomicBool::new(false),
            auth,
            rate_limiter,
            metrics,
            draining: AtomicBool::new(false),
            space,
            policies,
            pulls: Default::default(),
            mirrors,
            notifier,
        });
        let (stop, stopped) = oneshot::channel();
        let metrics_addr = ops_listener.as_ref().map(|(_, a)| *a);
        // Taken before the "serving" line: from then on SIGHUP means
        // "reload", never the default "terminate".
        let hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler; reloading on file change only");
                None
            }
        };
        let task = tokio::spawn(run(
            listener,
            ops_listener.map(|(l, _)| l),
            tls,
            hangup,
            state,
            writer,
            stopped,
        ));
        tracing::info!(%addr, metrics = ?metrics_addr, "wharf is serving");
        Ok(Server {
            addr,
            metrics_addr,
            stop: Some(stop),
            task,
        })
    }

    /// The metrics listener's address, when one is configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops gracefully and waits until everything has stopped.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Waits until the server stops (it stops only through `shutdown`, so
    /// this is for a caller that selects it against a signal).
    pub async fn stopped(&mut self) {
        let _ = (&mut self.task).await;
    }
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServerError> {
    let err = |source| ServerError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    Ok((listener, local))
}

fn connection_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let limits = &config.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Body frames are slices of this per-connection buffer and stay alive
    // while a batch holds them: a smaller cap keeps hundreds of concurrent
    // uploads inside the memory budget. It also caps a request head (431
    // beyond it); the configured header limit is checked per request.
    builder
        .http1()
        .max_buf_size(limits.read_buffer_bytes())
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(limits.header_timeout_secs));
    // No HTTP/2 keep-alive pings: their answers would count as activity and
    // keep an idle connection open past `idle_connection_secs` for ever.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes.min(u32::MAX as usize) as u32);
    builder
}

async fn run(
    listener: TcpListener,
    ops_listener: Option<TcpListener>,
    tls: Option<Arc<CertResolver>>,
    hangup: Option<Signal>,
    state: Arc<App>,
    writer: MetaWriter,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let acceptor = match tls.clone().map(crate::tls::server_config) {
        Some(Ok(c)) => Some(tokio_rustls::TlsAcceptor::from(c)),
        Some(Err(e)) => {
            tracing::error!(error = %e, "TLS configuration failed; not serving");
            return;
        }
        None => None,
    };
    let limits = &state.config.limits;
    let ctx = Arc::new(Connections {
        state: state.clone(),
        builder: connection_builder(&state.config),
        tls: acceptor,
        idle: Duration::from_secs(limits.idle_connection_secs),
        handshake: Duration::from_secs(limits.header_timeout_secs),
    });
    let per_client = ConnectionLimiter::new(limits.max_connections_per_client);
    let mut background = JoinSet::new();
    background.spawn(purge_idle_uploads(state.clone()));
    background.spawn(scheduled_gc(state.clone()));
    background.spawn(count_store(state.clone()));
    background.spawn(watch_disk_space(state.clone()));
    background.spawn(flush_pulls(state.clone()));
    for i in 0..state.notifier.endpoint_count() {
        background.spawn(crate::notify::deliver(
            state.meta.clone(),
            state.notifier.clone(),
            i,
            state.metrics.clone(),
        ));
    }
    background.spawn(watch_reloadable(state.clone(), tls, hangup));
    if let Some(l) = ops_listener {
        background.spawn(crate::ops::serve(l, state.clone()));
    }
    loop {
        while connections.try_join_next().is_some() {}
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let slot = match &per_client {
                    Some(l) => match l.acquire(peer.ip()) {
                        Some(slot) => Some(slot),
                        None => {
                            state.metrics.connections_cut.with_label_values(&["per_client_limit"]).inc();
                            continue;
                        }
                    },
                    None => None,
                };
                let _ = stream.set_nodelay(true);
                connections.spawn(connection::serve(ctx.clone(), stream, peer, graceful.watcher(), slot));
            }
        }
    }
    drop(listener);
    state.draining.store(true, Ordering::Relaxed);
    let grace = Duration::from_secs(state.config.shutdown_grace_secs);
    tracing::info!("shutting down: waiting up to {grace:?} for requests in flight");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing remaining connections");
    }
    connections.shutdown().await;
    background.shutdown().await;
    // Fetches hold the storage: they end before it stops.
    state.mirrors.stop().await;
    if let Err(e) = state.pulls.flush(&state.meta).await {
        tracing::warn!(error = %e, "pull times not recorded at shutdown");
    }
    drop(ctx);
    match Arc::try_unwrap(state) {
        Ok(state) => {
            state.storage.stop().await;
            // All of it: the storage holds a handle on the metadata writer
            // too, and the writer ends only when every handle is gone.
            drop(state);
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
        Err(_) => tracing::warn!("state still shared at shutdown; skipping orderly stop"),
    }
    tracing::info!("wharf stopped");
}

/// Reloads the certificate, the htpasswd file and the token key on SIGHUP,
/// and when their modification times change (checked every
/// `tls.reload_check_secs`, or 10 s).
async fn watch_reloadable(
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

/// Sets the store gauges from a scan of the blobs folder at start-up; from
/// then on commits and garbage collection keep them current.
async fn count_store(state: Arc<App>) {
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
async fn watch_disk_space(state: Arc<App>) {
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

async fn purge_idle_uploads(state: Arc<App>) {
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

async fn flush_pulls(state: Arc<App>) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + PULL_FLUSH, PULL_FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = state.pulls.flush(&state.meta).await {
            tracing::warn!(error = %e, "pull times not recorded; retrying at the next flush");
        }
    }
}

async fn scheduled_gc(state: Arc<App>) {
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
            match crate::retention::run(&state.meta, &state.policies, false).await {
                Ok(r) => tracing::info!(
                    tags = r.tags_deleted.iter().filter(|d| !d.dry_run).count(),
                    manifests = r.manifests_deleted.iter().filter(|d| !d.dry_run).count(),
                    would = r.tags_deleted.iter().filter(|d| d.dry_run).count(),
                    "retention (scheduled)"
                ),
                Err(e) => tracing::error!(error = %e, "retention failed"),
            }
        }
        let result = crate::gc::collect(
            &state.meta,
            state.storage.as_ref(),
            &crate::gc::GcOptions::from_config(&state.config, false),
        )
        .await;
        crate::gc::record(&state.metrics, &result);
        match result {
            Ok(report) => tracing::info!(%report, "garbage collection (scheduled)"),
            Err(e) => tracing::error!(error = %e, "garbage collection failed"),
        }
    }
}
