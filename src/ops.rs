//! The operator listener, on its own address so it can stay on a private
//! network: `/metrics` (Prometheus text format), `/healthz` (the process
//! answers), `/readyz` (it can serve: metadata readable, not draining).
//!
//! Owns: that listener and its connections, and the one answer to a
//! health probe ([`probe`]), which the registry port serves too.
//! Must not: serve registry endpoints or require credentials.

use crate::app::App;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Serves until the task running it is aborted (which also ends its
/// connections: they live in this function's `JoinSet`).
pub async fn serve(listener: TcpListener, state: Arc<App>) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let st = state.clone();
        let svc = service_fn(move |req| {
            let st = st.clone();
            async move { Ok::<_, Infallible>(answer(&st, &req).await) }
        });
        connections.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            // Scrapers are short-lived; a stuck one must not pin a socket.
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
        });
    }
}

/// What a health probe asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// `/healthz`: the process answers.
    Live,
    /// `/readyz`: it can serve (metadata readable, storage answering, not
    /// draining).
    Ready,
}

/// The answer to a probe, the same on both listeners: 200 or 503, with a
/// small JSON body saying why.
pub async fn probe(st: &App, probe: Probe) -> Response<Bytes> {
    let outcome = match probe {
        Probe::Live => Ok(()),
        Probe::Ready => st.ready().await,
    };
    let (status, body) = match outcome {
        Ok(()) => (StatusCode::OK, serde_json::json!({"status": "ok"})),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "not ready", "reason": why}),
        ),
    };
    let mut r = Response::new(Bytes::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

async fn answer(st: &App, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body): (StatusCode, &str, Bytes) = match req.uri().path() {
        "/metrics" => {
            st.note_sessions().await;
            st.note_database();
            if let Err(e) = crate::app::quotas::usage(st).await {
                tracing::debug!(error = %e, "quota usage not read for the scrape");
            }
            st.metrics.disk_full.set(st.space.is_full() as i64);
            (
                StatusCode::OK,
                "text/plain; version=0.0.4",
                Bytes::from(st.metrics.render()),
            )
        }
        "/healthz" => return probe(st, Probe::Live).await.map(Full::new),
        "/readyz" => return probe(st, Probe::Ready).await.map(Full::new),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"not found: /metrics, /healthz, /readyz\n"),
        ),
    };
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}
