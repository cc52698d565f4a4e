//! A webhook receiver on loopback for the notification tests: it records
//! every POST, answers 500 to the first `fail_first`, and can hang (take
//! the request and never answer).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug)]
pub struct Received {
    pub content_type: String,
    pub authorization: Option<String>,
    pub body: Value,
    /// Answered 2xx (the registry may drop these events from its queue).
    pub accepted: bool,
}

pub struct Receiver {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    hang: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start(fail_first: usize) -> Receiver {
        Self::start_on("127.0.0.1:0".parse().unwrap(), fail_first).await
    }

    pub async fn start_on(addr: SocketAddr, fail_first: usize) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received: Arc<Mutex<Vec<Received>>> = Default::default();
        let hang = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicUsize::new(0));
        let (log, hanging) = (received.clone(), hang.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (log, hanging, seen) = (log.clone(), hanging.clone(), seen.clone());
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (log, hanging, seen) = (log.clone(), hanging.clone(), seen.clone());
                    async move {
                        if hanging.load(Ordering::Relaxed) {
                            std::future::pending::<()>().await;
                        }
                        let header = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned)
                        };
                        let content_type = header("content-type").unwrap_or_default();
                        let authorization = header("authorization");
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let accepted = seen.fetch_add(1, Ordering::Relaxed) >= fail_first;
                        log.lock().unwrap().push(Received {
                            content_type,
                            authorization,
                            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                            accepted,
                        });
                        let status = if accepted { 200 } else { 500 };
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        )
                    }
                });
                conns.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            received,
            hang,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/events", self.addr)
    }

    pub fn hang(&self, on: bool) {
        self.hang.store(on, Ordering::Relaxed);
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Events of accepted requests, each once (by id), in arrival order.
    pub fn events(&self) -> Vec<Value> {
        let mut out: Vec<Value> = Vec::new();
        for r in self.requests().iter().filter(|r| r.accepted) {
            for e in r.body["events"].as_array().into_iter().flatten() {
                if !out.iter().any(|o| o["id"] == e["id"]) {
                    out.push(e.clone());
                }
            }
        }
        out
    }

    /// Waits (up to `secs`) until `n` distinct events were accepted.
    pub async fn wait_for(&self, n: usize, secs: u64) -> Vec<Value> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let events = self.events();
            if events.len() >= n || std::time::Instant::now() > deadline {
                return events;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
