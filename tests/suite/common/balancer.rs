//! A load balancer for the cluster tests: each request goes to the next
//! node in turn, with no stickiness (a client's PATCHes of one upload land
//! on different nodes), as a build farm's balancer may well do.

use hyper::body::Incoming;
use hyper::Request;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct RoundRobin {
    pub addr: SocketAddr,
    /// Requests each node was sent.
    pub hits: Arc<Vec<AtomicUsize>>,
    task: tokio::task::JoinHandle<()>,
}

impl RoundRobin {
    /// Listens on a free loopback port in front of `nodes` (base URLs).
    pub async fn start(nodes: Vec<String>) -> RoundRobin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client: Client<HttpConnector, Incoming> =
            Client::builder(TokioExecutor::new()).build_http();
        let hits: Arc<Vec<AtomicUsize>> =
            Arc::new(nodes.iter().map(|_| AtomicUsize::new(0)).collect());
        let nodes = Arc::new(nodes);
        let next = Arc::new(AtomicUsize::new(0));
        let counts = hits.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (client, nodes, next, counts) =
                    (client.clone(), nodes.clone(), next.clone(), counts.clone());
                let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                    let i = next.fetch_add(1, Ordering::Relaxed) % nodes.len();
                    counts[i].fetch_add(1, Ordering::Relaxed);
                    let pq = req
                        .uri()
                        .path_and_query()
                        .map_or("/", |p| p.as_str())
                        .to_owned();
                    *req.uri_mut() = format!("{}{pq}", nodes[i]).parse().unwrap();
                    client.request(req)
                });
                conns.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        RoundRobin { addr, hits, task }
    }

    pub fn hits(&self) -> Vec<usize> {
        self.hits
            .iter()
            .map(|h| h.load(Ordering::Relaxed))
            .collect()
    }
}

impl Drop for RoundRobin {
    fn drop(&mut self) {
        self.task.abort();
    }
}
