//! Start-up and shutdown of a whole registry: builds the components from a
//! `Config`, accepts connections (HTTP/1.1 and cleartext HTTP/2), and on
//! shutdown stops accepting, lets requests finish for a bounded time, and
//! stops every actor and task it started.
//!
//! Owns: the listener, the connection tasks, the idle-upload purger.
//! Must not: hold registry logic; that lives in `http` and below.

use crate::app::{tasks, App};
use crate::auth::{AuthError, Authenticator};
use crate::config::{Config, ConfigError};
use crate::connection::{self, Connections};
use crate::limits::{ConnectionLimiter, RateLimiter};
use crate::meta::{Meta, MetaError, MetaWriter};
use crate::metrics::{Metrics, MetricsError};
use crate::space::DiskSpace;
use crate::tls::{CertResolver, TlsError};
use crate::upload::budget::MemoryBudget;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::signal::unix::Signal;
use tokio::sync::oneshot;
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
    #[error(transparent)]
    Task(#[from] crate::blocking::TaskFailed),
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
        // Bound first: a port in use (another node, a second start) fails
        // before anything is created on disk.
        let (listener, addr) = bind(config.addr).await?;
        let ops_listener = match config.metrics.addr {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        // Start-up's file work (the folder, the reserve's fallocate) runs
        // on the blocking pool like every other file operation.
        let space = crate::blocking::run({
            let (root, reserve) = (root.clone(), config.disk_reserve_mib << 20);
            move || -> Result<_, ServerError> {
                create_root(&root)?;
                Ok(Arc::new(DiskSpace::open(&root, reserve)))
            }
        })
        .await?;
        let (meta, writer, pg_pool) = Meta::open_configured(&config, space.clone()).await?;
        let metrics = Arc::new(Metrics::new()?);
        let budget =
            MemoryBudget::new(config.upload_memory_budget_mib, config.actor_call_timeout());
        let storage = crate::storage::open_configured(
            &config,
            &meta,
            pg_pool.clone(),
            space.clone(),
            metrics.read_cache.clone(),
            budget.clone(),
        )
        .await?;
        let auth = Authenticator::new(&config.auth)?;
        let tls = match &config.tls {
            Some(t) => Some(Arc::new(CertResolver::load(&t.cert, &t.key)?)),
            None => None,
        };
        let mut retention = crate::proxy::retention_rules(&config.proxy);
        retention.extend(config.retention.iter().cloned());
        let policies = Arc::new(crate::retention::Policies::new(
            &retention,
            &config.immutable,
        )?);
        let proxies = Arc::new(
            crate::proxy::Proxies::new(&config.proxy, &root).map_err(ConfigError::Invalid)?,
        );
        if !proxies.is_empty() {
            // Spools of fetches a killed process left: nothing reads them.
            let (m, spool) = (proxies.clone(), root.join("proxy"));
            crate::blocking::run(move || {
                m.fetches.clear_spool().map_err(|source| ServerError::Root {
                    path: spool,
                    source,
                })
            })
            .await?;
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
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let started = Started {
            storage: config.storage.backend,
            metadata: config.metadata.backend,
            auth: config.auth_enabled(),
            tls: config.tls.is_some(),
            ui: config.ui.enabled.then(|| format!("{scheme}://{addr}/ui/")),
        };
        let state = Arc::new(App {
            config,
            storage,
            meta,
            budget,
            gc_running: AtomicBool::new(false),
            auth,
            rate_limiter,
            metrics,
            draining: AtomicBool::new(false),
            space,
            policies,
            pulls: Default::default(),
            proxies,
            notifier,
            database: pg_pool,
            robots_read_at: std::sync::atomic::AtomicU64::new(0),
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
        tracing::info!(
            %addr,
            root = %root.display(),
            storage = %started.storage,
            metadata = %started.metadata,
            auth = started.auth,
            tls = started.tls,
            metrics = ?metrics_addr,
            ui = started.ui.as_deref().unwrap_or("off"),
            "wharf is serving"
        );
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

/// What the start-up line tells an operator about the node.
struct Started {
    storage: crate::config::StorageBackend,
    metadata: crate::config::MetadataBackend,
    auth: bool,
    tls: bool,
    ui: Option<String>,
}

/// Creates the data folder itself, never its parents: a mistyped
/// `--root /srv/wharf-dat/x` is refused, not built as a new tree.
fn create_root(root: &std::path::Path) -> Result<(), ServerError> {
    let failed = |source| ServerError::Root {
        path: root.to_path_buf(),
        source,
    };
    match std::fs::create_dir(root) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && root.is_dir() => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(failed(std::io::Error::new(
            e.kind(),
            "its parent folder does not exist (only the data folder itself is created)",
        ))),
        Err(e) => Err(failed(e)),
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
    // Robots log in from the first request on, not from the first refresh.
    if let Err(e) = crate::app::robots::refresh(&state).await {
        tracing::warn!(error = %e, "robot accounts not read yet");
    }
    let mut background = JoinSet::new();
    background.spawn(tasks::refresh_robots(state.clone()));
    background.spawn(tasks::prune_audit(state.clone()));
    background.spawn(tasks::purge_idle_uploads(state.clone()));
    background.spawn(tasks::scheduled_gc(state.clone()));
    background.spawn(tasks::count_store(state.clone()));
    background.spawn(tasks::watch_disk_space(state.clone()));
    background.spawn(tasks::flush_pulls(state.clone()));
    for i in 0..state.notifier.endpoint_count() {
        background.spawn(crate::notify::deliver(
            state.meta.clone(),
            state.notifier.clone(),
            i,
            state.metrics.clone(),
        ));
    }
    background.spawn(tasks::watch_reloadable(state.clone(), tls, hangup));
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
    state.proxies.stop().await;
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
