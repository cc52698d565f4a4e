//! Start-up and shutdown of a whole registry: builds the components from a
//! `Config`, accepts connections (HTTP/1.1 and cleartext HTTP/2), and on
//! shutdown stops accepting, lets requests finish for a bounded time, and
//! stops every actor and task it started.
//!
//! Owns: the listener, the connection tasks, the idle-upload purger.
//! Must not: hold registry logic; that lives in `http` and below.

use crate::config::Config;
use crate::http::{self, AppState};
use crate::meta::{Meta, MetaError, MetaWriter};
use crate::store::{ContentStore, StoreError};
use crate::upload::UploadRegistry;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
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
    Store(#[from] StoreError),
    #[error("upload sessions: {0}")]
    Uploads(std::io::Error),
}

/// A running registry.
pub struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Opens the data folder, recovers upload sessions, binds, and starts
    /// serving in the background.
    pub async fn start(config: Config) -> Result<Server, ServerError> {
        config.validate()?;
        let root = config.root.clone();
        std::fs::create_dir_all(&root).map_err(|source| ServerError::Root {
            path: root.clone(),
            source,
        })?;
        let (meta, writer) = Meta::open(&root, config.fsync)?;
        let store = ContentStore::start(
            &root,
            config.store_shards,
            config.fsync,
            config.actor_call_timeout(),
        )
        .await?;
        let uploads = UploadRegistry::start(&root, config.fsync, config.actor_call_timeout())
            .await
            .map_err(ServerError::Uploads)?;
        let listener =
            TcpListener::bind(config.addr)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.addr,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.addr,
            source,
        })?;
        let budget_kib = (config.upload_memory_budget_mib * 1024) as usize;
        let state = Arc::new(AppState {
            config,
            uploads,
            store,
            meta,
            body_budget: Arc::new(Semaphore::new(budget_kib)),
            gc_running: tokio::sync::Mutex::new(()),
        });
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(listener, state, writer, stopped));
        tracing::info!(%addr, "wharf is serving");
        Ok(Server {
            addr,
            stop: Some(stop),
            task,
        })
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

async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    writer: MetaWriter,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Body frames are slices of this per-connection buffer and stay alive
    // while a batch holds them: a smaller cap keeps hundreds of concurrent
    // uploads inside the memory budget.
    builder.http1().max_buf_size(256 * 1024);
    let purger = tokio::spawn(purge_idle_uploads(state.clone()));
    let collector = tokio::spawn(scheduled_gc(state.clone()));
    loop {
        while connections.try_join_next().is_some() {}
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let st = state.clone();
                let svc = service_fn(move |req| {
                    let st = st.clone();
                    async move { Ok::<_, Infallible>(http::handle(st, req).await) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                let conn = graceful.watch(conn);
                connections.spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    let grace = Duration::from_secs(state.config.shutdown_grace_secs);
    tracing::info!("shutting down: waiting up to {grace:?} for requests in flight");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing remaining connections");
    }
    connections.shutdown().await;
    purger.abort();
    collector.abort();
    let _ = purger.await;
    let _ = collector.await;
    match Arc::try_unwrap(state) {
        Ok(state) => {
            // Sessions keep their files: clients resume after the restart.
            state.uploads.stop_all().await;
            state.store.stop().await;
            drop(state.meta);
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
        Err(_) => tracing::warn!("state still shared at shutdown; skipping orderly stop"),
    }
    tracing::info!("wharf stopped");
}

async fn purge_idle_uploads(state: Arc<AppState>) {
    let every = Duration::from_secs(state.config.upload_purge_interval_secs);
    let idle = state.config.upload_idle_timeout();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let n = state.uploads.purge_idle(idle).await;
        if n > 0 {
            tracing::info!(purged = n, "purged idle upload sessions");
        }
    }
}

async fn scheduled_gc(state: Arc<AppState>) {
    if state.config.gc_interval_secs == 0 {
        return;
    }
    let every = Duration::from_secs(state.config.gc_interval_secs);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let _running = state.gc_running.lock().await;
        match crate::gc::collect(&state.meta, &state.store, &state.config.gc_options(false)).await {
            Ok(report) => tracing::info!(%report, "garbage collection (scheduled)"),
            Err(e) => tracing::error!(error = %e, "garbage collection failed"),
        }
    }
}
