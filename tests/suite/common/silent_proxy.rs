//! A TCP proxy that can go silent: until `silence()`, bytes pass both ways
//! unchanged; after it, every connection (open or new) stays open and
//! acknowledged but nothing is forwarded in either direction, as a hung
//! host or a cut link behind a live load balancer looks to a client.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct SilentProxy {
    pub addr: SocketAddr,
    silent: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl SilentProxy {
    pub async fn start(upstream: SocketAddr) -> SilentProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silent = Arc::new(AtomicBool::new(false));
        let quiet = silent.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let quiet = quiet.clone();
                conns.spawn(async move {
                    if quiet.load(Ordering::Relaxed) {
                        return swallow(client).await;
                    }
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pump(cr, sw, quiet.clone()), pump(sr, cw, quiet));
                });
            }
        });
        SilentProxy { addr, silent, task }
    }

    pub fn silence(&self) {
        self.silent.store(true, Ordering::Relaxed);
    }
}

impl Drop for SilentProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` until silenced; then reads and drops, so the
/// sender's kernel keeps seeing its bytes acknowledged.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if silent.load(Ordering::Relaxed) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    if !silent.load(Ordering::Relaxed) {
        let _ = to.shutdown().await;
    } else {
        // Never close: a silent host does not say goodbye either.
        std::future::pending::<()>().await;
    }
}

async fn swallow(mut client: TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = client.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
    std::future::pending::<()>().await;
}
