//! A fault-injecting proxy in front of the object store, as a throttled or
//! flaky S3 looks to a node: every `slowdown_every`-th request is answered
//! `503 SlowDown` (S3's throttling answer) without reaching the store, and
//! every `reset_every`-th has its connection dropped with no answer. The
//! rest pass through unchanged (the Host header too, so signatures hold).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Default)]
pub struct FaultCounts {
    pub requests: AtomicUsize,
    pub slowdowns: AtomicUsize,
    pub resets: AtomicUsize,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    pub counts: Arc<FaultCounts>,
    task: tokio::task::JoinHandle<()>,
}

type Answer = Response<http_body_util::combinators::BoxBody<Bytes, hyper::Error>>;

impl FaultProxy {
    /// Listens on a free loopback port in front of `upstream` (a base URL).
    pub async fn start(upstream: String, slowdown_every: usize, reset_every: usize) -> FaultProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client: Client<HttpConnector, Incoming> =
            Client::builder(TokioExecutor::new()).build_http();
        let counts = Arc::new(FaultCounts::default());
        let seen = counts.clone();
        let upstream = Arc::new(upstream);
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (client, seen, upstream) = (client.clone(), seen.clone(), upstream.clone());
                let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                    let (client, seen, upstream) = (client.clone(), seen.clone(), upstream.clone());
                    async move {
                        let n = seen.requests.fetch_add(1, Ordering::Relaxed) + 1;
                        if n % reset_every == 0 {
                            seen.resets.fetch_add(1, Ordering::Relaxed);
                            // An error from the service drops the connection
                            // with no answer: the client sees a reset.
                            return Err::<Answer, std::io::Error>(std::io::Error::other("reset"));
                        }
                        if n % slowdown_every == 0 {
                            seen.slowdowns.fetch_add(1, Ordering::Relaxed);
                            let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>\
                                       <Message>Please reduce your request rate.</Message></Error>";
                            return Ok(Response::builder()
                                .status(503)
                                .header("content-type", "application/xml")
                                .body(Full::new(Bytes::from(xml)).map_err(|e| match e {}).boxed())
                                .unwrap());
                        }
                        let pq = req
                            .uri()
                            .path_and_query()
                            .map_or("/", |p| p.as_str())
                            .to_owned();
                        *req.uri_mut() = format!("{upstream}{pq}").parse().unwrap();
                        match client.request(req).await {
                            Ok(r) => Ok(r.map(|b| b.boxed())),
                            Err(e) => Err(std::io::Error::other(e.to_string())),
                        }
                    }
                });
                conns.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FaultProxy { addr, counts, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
