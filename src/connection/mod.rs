//! One client connection, from accepted socket to close: the TLS handshake
//! (bounded in time), activity tracking, and the idle cut-off that frees a
//! socket a client holds without using it (slowloris, stalled bodies,
//! forgotten keep-alives).
//!
//! Owns: the per-connection stream wrappers (activity; `parse_refusal`,
//! the body of hyper's own 414/431) and watchdog.
//! Must not: route or answer requests; it hands them to `http::handle`.

mod parse_refusal;

use crate::app::App;
use crate::http;
use crate::limits::ConnectionSlot;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

/// What every connection shares.
pub struct Connections {
    pub state: Arc<App>,
    pub builder: auto::Builder<TokioExecutor>,
    pub tls: Option<TlsAcceptor>,
    pub idle: Duration,
    pub handshake: Duration,
}

/// Serves one accepted connection until it ends, idles out, or the graceful
/// shutdown `watcher` ends it.
pub async fn serve(
    ctx: Arc<Connections>,
    stream: TcpStream,
    peer: SocketAddr,
    watcher: Watcher,
    slot: Option<ConnectionSlot>,
) {
    let _slot = slot;
    let metrics = ctx.state.metrics.clone();
    metrics.connections_open.inc();
    let activity = Arc::new(Activity::new());
    let stream = ActivityStream {
        inner: stream,
        activity: activity.clone(),
    };
    match &ctx.tls {
        None => run(&ctx, stream, peer, watcher, activity).await,
        Some(acceptor) => {
            match tokio::time::timeout(ctx.handshake, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => run(&ctx, tls, peer, watcher, activity).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => {
                    metrics
                        .connections_cut
                        .with_label_values(&["tls_handshake"])
                        .inc();
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
            }
        }
    }
    metrics.connections_open.dec();
}

async fn run<S>(
    ctx: &Connections,
    io: S,
    peer: SocketAddr,
    watcher: Watcher,
    activity: Arc<Activity>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let st = ctx.state.clone();
    let ip = peer.ip();
    let busy = activity.clone();
    let svc = service_fn(move |req| {
        let st = st.clone();
        let working = Working::start(busy.clone());
        async move {
            let resp = http::handle(st, req, ip).await;
            drop(working);
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = ctx
        .builder
        .serve_connection(TokioIo::new(parse_refusal::ParseRefusalBody::new(io)), svc)
        .into_owned();
    let conn = watcher.watch(conn);
    tokio::select! {
        r = conn => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        _ = activity.idle_for(ctx.idle) => {
            ctx.state.metrics.connections_cut.with_label_values(&["idle"]).inc();
            tracing::debug!(%peer, "idle connection closed");
        }
    }
}

/// When bytes last moved on a connection, in milliseconds since `epoch`,
/// and how many requests are being worked on (no bytes move while a
/// handler computes, say a long garbage collection; that is not idleness).
struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
    working: AtomicUsize,
}

/// One request between its head arriving and its response head leaving.
struct Working(Arc<Activity>);

impl Working {
    fn start(a: Arc<Activity>) -> Working {
        a.working.fetch_add(1, Ordering::Relaxed);
        Working(a)
    }
}

impl Drop for Working {
    fn drop(&mut self) {
        self.0.working.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

impl Activity {
    fn new() -> Activity {
        Activity {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            working: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once no byte moved for `limit`. Waits are at most `limit`
    /// long, so this costs one timer per connection, not one per byte.
    async fn idle_for(&self, limit: Duration) {
        loop {
            if self.working.load(Ordering::Relaxed) > 0 {
                tokio::time::sleep(limit).await;
                continue;
            }
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let idle = self.epoch.elapsed().saturating_sub(last);
            if idle >= limit {
                return;
            }
            tokio::time::sleep(limit - idle).await;
        }
    }
}

/// A stream that records when bytes last moved in either direction.
struct ActivityStream<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for ActivityStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ActivityStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
