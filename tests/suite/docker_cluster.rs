//! Three Wharf nodes as containers on a private Docker network (the image
//! is built from this build's binary by contrib/image/build-from-host.sh,
//! since no base image can be pulled), reaching the harness's SeaweedFS
//! and PostgreSQL through forwarders on the network's gateway. One node is
//! cut off with `docker network disconnect` in the middle of a push.

use crate::common::docker::{daemon_available, docker};
use crate::common::services::{skip_without, Postgres, Seaweed, S3_KEY, S3_SECRET};
use crate::common::*;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

/// A container's address on its (one) network.
fn container_ip(name: &str) -> String {
    docker(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        name,
    ])
    .unwrap()
}

/// A whole blob's bytes from `base`, which must answer 200.
async fn fetch_blob(c: &reqwest::Client, base: &str, repo: &str, d: &str) -> Vec<u8> {
    let r = c
        .get(format!("{base}/v2/{repo}/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{base} {repo} {d}");
    r.bytes().await.unwrap().to_vec()
}

/// What the test made in Docker, removed however the test ends.
struct Made {
    image: String,
    network: Option<String>,
    containers: Vec<String>,
}

impl Drop for Made {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = docker(&["rm", "-f", "-v", c]);
        }
        if let Some(n) = &self.network {
            let _ = docker(&["network", "rm", n]);
        }
        let _ = docker(&["rmi", "-f", &self.image]);
    }
}

/// Passes TCP from `listen` (an address on the Docker network's gateway)
/// to `to` on loopback, so containers reach services bound to 127.0.0.1.
async fn forward(listen: &str, to: SocketAddr) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind(format!("{listen}:0"))
        .await
        .unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((mut a, _)) = l.accept().await {
            conns.spawn(async move {
                if let Ok(mut b) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                }
            });
        }
    });
    (addr, task)
}

async fn wait_ready(c: &reqwest::Client, base: &str) {
    for _ in 0..100 {
        if let Ok(r) = c.get(format!("{base}/readyz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{base} not ready");
}

async fn push(c: &reqwest::Client, base: &str, repo: &str, data: &[u8]) -> String {
    let d = digest(data);
    let r = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    d
}

async fn patch(c: &reqwest::Client, base: &str, loc: &str, from: usize, bytes: &[u8]) -> u16 {
    c.patch(format!("{base}{loc}"))
        .header("content-type", "application/octet-stream")
        .header(
            "content-range",
            format!("{from}-{}", from + bytes.len() - 1),
        )
        .body(bytes.to_vec())
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_container_cut_off_mid_push_loses_nothing_and_the_others_serve() {
    if skip_without("a Docker Engine", daemon_available()) {
        return;
    }
    let (weed, pg) = (Seaweed::shared(), Postgres::shared());
    if skip_without("SeaweedFS and PostgreSQL", weed.is_some() && pg.is_some()) {
        return;
    }
    let (weed, pg) = (weed.unwrap(), pg.unwrap());
    let id = std::process::id();
    let mut made = Made {
        image: format!("wharf-test:{id}"),
        network: None,
        containers: Vec::new(),
    };
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/image/build-from-host.sh"
    );
    let built = Command::new(script)
        .args([env!("CARGO_BIN_EXE_wharf"), &made.image])
        .output()
        .unwrap();
    assert!(built.status.success(), "{built:?}");
    let net = format!("wharf-test-{id}");
    docker(&["network", "create", &net]).unwrap();
    made.network = Some(net.clone());
    let gw = docker(&[
        "network",
        "inspect",
        "-f",
        "{{(index .IPAM.Config 0).Gateway}}",
        &net,
    ])
    .unwrap();
    let (pg_at, _pg_fwd) = forward(&gw, SocketAddr::from(([127, 0, 0, 1], pg.port))).await;
    let (s3_at, _s3_fwd) = forward(&gw, weed.s3_addr()).await;

    let db_url = pg.fresh_database();
    let db = db_url.rsplit('/').next().unwrap().to_owned();
    let bucket = weed.fresh_bucket().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("wharf.toml"),
        format!(
            "[metadata]\nbackend = \"postgres\"\nurl = \"postgres://wharf@{pg_at}/{db}\"\n\
             [storage]\nbackend = \"s3\"\n[storage.s3]\nendpoint = \"http://{s3_at}\"\n\
             bucket = \"{bucket}\"\naccess_key_id = \"{S3_KEY}\"\n\
             secret_access_key = \"{S3_SECRET}\"\ndelete_delay_secs = 0\n"
        ),
    )
    .unwrap();
    // The container's user (10001) reads the mounted config.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mount = format!("{}:/etc/wharf:ro", dir.path().display());
    let mut nodes = Vec::new();
    for i in 0..3 {
        let name = format!("wharf-test-{id}-n{i}");
        docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            &net,
            "-v",
            &mount,
            &made.image,
            "serve",
            "--config",
            "/etc/wharf/wharf.toml",
            "--addr",
            "0.0.0.0:5000",
        ])
        .unwrap();
        nodes.push(format!("http://{}:5000", container_ip(&name)));
        made.containers.push(name);
    }
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    for n in &nodes {
        wait_ready(&c, n).await;
    }

    // Acknowledged before the cut: blobs and an image across the nodes.
    let mut acked = Vec::new();
    for i in 0..6 {
        let data = payload(300_000 + i, 600 + i as u64);
        let d = push(&c, &nodes[i % 3], "farm/base", &data).await;
        acked.push((d, data));
    }

    // An upload begun on node 0, its first 6 MiB acknowledged there.
    let data = payload(24 << 20, 700);
    let d = digest(&data);
    let r = c
        .post(format!("{}/v2/farm/big/blobs/uploads/", nodes[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = location(&r);
    let loc = loc.trim_start_matches(&nodes[0]).to_owned();
    assert_eq!(patch(&c, &nodes[0], &loc, 0, &data[..6 << 20]).await, 202);

    // The next PATCH to node 0 is in flight when node 0 leaves the network.
    let in_flight = {
        let (c, base, loc, chunk) = (
            c.clone(),
            nodes[0].clone(),
            loc.clone(),
            data[6 << 20..12 << 20].to_vec(),
        );
        tokio::spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
            let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
            let send = c
                .patch(format!("{base}{loc}"))
                .header("content-type", "application/octet-stream")
                .header("content-range", format!("{}-{}", 6 << 20, (12 << 20) - 1))
                .header("content-length", (6 << 20).to_string())
                .timeout(Duration::from_secs(5))
                .body(body)
                .send();
            // Half the chunk; the rest never comes (the cut happens while
            // the request waits for it).
            let feed = tokio::spawn(async move {
                let _ = tx.send(Ok(chunk[..3 << 20].to_vec())).await;
                tokio::time::sleep(Duration::from_secs(60)).await;
                drop(tx);
            });
            let r = send.await;
            feed.abort();
            r.map(|r| r.status().as_u16()).unwrap_or(0)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    docker(&["network", "disconnect", "-f", &net, &made.containers[0]]).unwrap();
    let status = in_flight.await.unwrap();
    assert_ne!(
        status, 202,
        "a PATCH cut off mid-body must not be acknowledged"
    );

    // Another node reports what was acknowledged, and the push goes on there.
    let r = c.get(format!("{}{loc}", nodes[1])).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        header(&r, "range"),
        Some(format!("0-{}", (6 << 20) - 1).as_str())
    );
    let mut at = 6 << 20;
    for (i, piece) in data[at..].chunks(6 << 20).enumerate() {
        let node = &nodes[1 + i % 2];
        assert_eq!(patch(&c, node, &loc, at, piece).await, 202);
        at += piece.len();
    }
    let r = c
        .put(format!("{}{loc}?digest={d}", nodes[2]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());

    // The two nodes left serve everything acknowledged, byte for byte.
    for n in &nodes[1..] {
        assert_eq!(digest(&fetch_blob(&c, n, "farm/big", &d).await), d);
        for (bd, bytes) in &acked {
            assert_eq!(&fetch_blob(&c, n, "farm/base", bd).await, bytes);
        }
    }

    // Back on the network, node 0 serves the blob finished without it.
    docker(&["network", "connect", &net, &made.containers[0]]).unwrap();
    let back = format!("http://{}:5000", container_ip(&made.containers[0]));
    wait_ready(&c, &back).await;
    assert_eq!(digest(&fetch_blob(&c, &back, "farm/big", &d).await), d);
}

/// A receiver as the stream reqwest's body wants.
fn tokio_stream_from(
    rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}
