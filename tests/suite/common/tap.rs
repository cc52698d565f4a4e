//! A tap in front of an upstream registry for the pull-through tests: it
//! forwards every request, counts them by method and path, and on demand
//! flips one byte in the middle of each blob or manifest body it passes
//! (a corrupting network or a broken upstream).

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct Tap {
    pub addr: SocketAddr,
    seen: Arc<Mutex<HashMap<String, usize>>>,
    corrupt: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

type Answer = hyper::Response<BoxBody<Bytes, hyper::Error>>;

impl Tap {
    /// Listens on a free loopback port in front of `upstream` (a base URL).
    pub async fn start(upstream: String) -> Tap {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client: Client<HttpConnector, Incoming> =
            Client::builder(TokioExecutor::new()).build_http();
        let seen: Arc<Mutex<HashMap<String, usize>>> = Default::default();
        let corrupt = Arc::new(AtomicBool::new(false));
        let (counts, flip) = (seen.clone(), corrupt.clone());
        let upstream = Arc::new(upstream);
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (client, counts, flip, upstream) = (
                    client.clone(),
                    counts.clone(),
                    flip.clone(),
                    upstream.clone(),
                );
                let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                    let (client, counts, flip, upstream) = (
                        client.clone(),
                        counts.clone(),
                        flip.clone(),
                        upstream.clone(),
                    );
                    async move {
                        let path = req.uri().path().to_owned();
                        *counts
                            .lock()
                            .unwrap()
                            .entry(format!("{} {path}", req.method()))
                            .or_default() += 1;
                        let pq = req
                            .uri()
                            .path_and_query()
                            .map_or("/", |p| p.as_str())
                            .to_owned();
                        *req.uri_mut() = format!("{upstream}{pq}").parse().unwrap();
                        let is_get = req.method() == http::Method::GET;
                        let resp = client.request(req).await.map_err(|e| e.to_string())?;
                        let content = path.contains("/blobs/") || path.contains("/manifests/");
                        if !(flip.load(Ordering::Relaxed) && is_get && content) {
                            return Ok::<Answer, String>(resp.map(|b| b.boxed()));
                        }
                        let (parts, body) = resp.into_parts();
                        let mut bytes = body
                            .collect()
                            .await
                            .map_err(|e| e.to_string())?
                            .to_bytes()
                            .to_vec();
                        if !bytes.is_empty() {
                            let mid = bytes.len() / 2;
                            bytes[mid] ^= 0x01;
                        }
                        let body = Full::new(Bytes::from(bytes))
                            .map_err(|never| match never {})
                            .boxed();
                        Ok(hyper::Response::from_parts(parts, body))
                    }
                });
                conns.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Tap {
            addr,
            seen,
            corrupt,
            task,
        }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests seen with this method whose path contains `part`.
    pub fn count(&self, method: &str, part: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{method} ")) && k.contains(part))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn corrupt(&self, on: bool) {
        self.corrupt.store(on, Ordering::Relaxed);
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}
