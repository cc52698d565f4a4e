//! Three stateless Wharf nodes on one PostgreSQL and one SeaweedFS, both
//! real and started by the harness; requests of one push land on different
//! nodes, as behind a load balancer that keeps no sessions.

use crate::common::services::{
    skip_without, use_object_store, Postgres, Seaweed, S3_KEY, S3_SECRET,
};
use crate::common::*;
use serde_json::Value;
use std::time::Duration;

pub struct Cluster {
    pub nodes: Vec<TestRegistry>,
    pub db: String,
    pub bucket: String,
    /// The nodes' configuration, for starting more as `wharf` processes.
    pub toml: String,
    /// The bucket's client settings, for looking at it from outside.
    pub s3: wharf::s3::S3Settings,
}

impl Cluster {
    /// `None` (test skipped) when PostgreSQL or SeaweedFS is missing.
    pub async fn start(n: usize, tweak: impl Fn(&mut wharf::Config)) -> Option<Cluster> {
        let weed = Seaweed::shared();
        if skip_without("SeaweedFS", weed.is_some()) {
            return None;
        }
        Self::start_on(weed?, n, tweak).await
    }

    /// Nodes on the given SeaweedFS (a test's own, to stop and restart).
    pub async fn start_on(
        weed: &Seaweed,
        n: usize,
        tweak: impl Fn(&mut wharf::Config),
    ) -> Option<Cluster> {
        let pg = Postgres::shared();
        if skip_without("PostgreSQL", pg.is_some()) {
            return None;
        }
        let pg = pg?;
        let url = pg.fresh_database();
        let bucket = weed.fresh_bucket().await;
        let toml = format!(
            "[metadata]\nbackend = \"postgres\"\nurl = \"{url}\"\n\
             [storage]\nbackend = \"s3\"\n[storage.s3]\nendpoint = \"{}\"\n\
             bucket = \"{bucket}\"\naccess_key_id = \"{S3_KEY}\"\n\
             secret_access_key = \"{S3_SECRET}\"\ndelete_delay_secs = 0\n",
            weed.endpoint()
        );
        let mut nodes = Vec::new();
        for _ in 0..n {
            let (url, bucket, endpoint) = (url.clone(), bucket.clone(), weed.endpoint());
            nodes.push(
                TestRegistry::start_with(|c| {
                    use_object_store(c, &url, &endpoint, &bucket);
                    tweak(c);
                })
                .await,
            );
        }
        let db = url.rsplit('/').next().unwrap().to_owned();
        Some(Cluster {
            nodes,
            db,
            s3: weed.settings(&bucket),
            bucket,
            toml,
        })
    }

    pub fn node(&self, i: usize) -> &TestRegistry {
        &self.nodes[i % self.nodes.len()]
    }

    /// Runs `wharf ARGS --config F` with the nodes' configuration written
    /// to `dir`; returns the exit code and what it printed.
    pub fn cli(&self, dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
        let config = dir.join("wharf.toml");
        std::fs::write(&config, &self.toml).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    }

    /// Every object in the bucket: (key, size).
    pub async fn objects(&self) -> Vec<(String, u64)> {
        let client = wharf::s3::S3Client::new(&self.s3).unwrap();
        client.list_objects("").await.unwrap()
    }

    pub fn sql(&self, q: &str) -> String {
        Postgres::shared().unwrap().psql(&self.db, q).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_serves_repeated_pulls_from_its_verified_copy() {
    let Some(c) = Cluster::start(2, |_| {}).await else {
        return;
    };
    let data = payload(3 << 20, 31);
    let d = c.node(0).push_mono("cached", &data).await;
    // The first pull streams from the bucket and leaves a copy on node 1.
    let r = c.node(1).get_blob("cached", &d).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), data);
    let copy = c.node(1).root.join("cache").join(d.replacen(':', "-", 1));
    for _ in 0..100 {
        if copy.is_file() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(std::fs::read(&copy).unwrap(), data, "verified copy kept");
    // A range read of something never read whole leaves no copy.
    let other = payload(1 << 20, 32);
    let od = c.node(0).push_mono("cached", &other).await;
    let r = c.node(1).get_blob_range("cached", &od, "bytes=10-19").await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), other[10..20]);

    // With the object gone from the bucket, only node 1 can still answer,
    // so its answers come from the copy: whole and ranged.
    let key = c.sql(&format!(
        "SELECT object_key FROM blobs WHERE digest = '{d}'"
    ));
    let weed = Seaweed::shared().unwrap();
    let s3 = wharf::s3::S3Client::new(&weed.settings(&c.bucket)).unwrap();
    s3.delete_object(key.trim()).await.unwrap();
    assert_ne!(c.node(0).get_blob("cached", &d).await.status(), 200);
    let r = c.node(1).get_blob("cached", &d).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), data);
    let r = c
        .node(1)
        .get_blob_range("cached", &d, "bytes=1000-1999")
        .await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), data[1000..2000]);
    // Another repository without the link never sees it through the copy.
    assert_eq!(c.node(1).get_blob("elsewhere", &d).await.status(), 404);
    // Deleted through the API: the index says no, so the copy is not served.
    assert_eq!(
        c.node(0)
            .delete(&format!("/v2/cached/blobs/{d}"))
            .await
            .status(),
        202
    );
    assert_eq!(c.node(1).get_blob("cached", &d).await.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_on_an_https_object_store_push_and_pull() {
    let Some(weed) = Seaweed::shared() else {
        skip_without("SeaweedFS", false);
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let front = crate::common::tls_front::TlsFront::start(weed.s3_addr(), dir.path()).await;
    let (endpoint, ca) = (front.endpoint(), front.ca_file.clone());
    let Some(c) = Cluster::start(2, |cfg| {
        let s3 = cfg.storage.s3.as_mut().unwrap();
        s3.endpoint = endpoint.clone();
        s3.ca_file = Some(ca.clone());
        s3.read_cache_mib = 0;
    })
    .await
    else {
        return;
    };
    // 12 MiB in 4 MiB PATCHes over both nodes: parts and tail over TLS.
    let data = payload(12 << 20, 41);
    let d = digest(&data);
    let location = c.node(0).start_upload("tls").await;
    let location = location.trim_start_matches(&c.node(0).base).to_owned();
    patch_round_robin(&c, &location, &data, 4 << 20).await;
    let r = c.node(0).finish_upload(&location, &d).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let r = c.node(1).get_blob("tls", &d).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), data);
    let image = serde_json::to_vec(&c.node(1).image_manifest("tls", 42, 2).await).unwrap();
    let r = c
        .node(1)
        .put_manifest(
            "tls",
            "v1",
            "application/vnd.oci.image.manifest.v1+json",
            &image,
        )
        .await;
    assert_eq!(r.status(), 201);
    let r = c.node(0).get("/v2/tls/manifests/v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), image);
    // The front gone: answers are 503, never a hang or a 500.
    drop(front);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = c.node(1).get_blob("tls", &d).await;
    assert_eq!(r.status(), 503);
}

/// The protocol modules of this suite again, as their own process with
/// WHARF_TEST_CLUSTER=1: every `TestRegistry` is then three object-store
/// nodes behind the round-robin balancer (tests of one node's own state
/// say why they skip). `cargo test --release` so runs both passes.
#[test]
fn the_protocol_suite_passes_through_three_object_store_nodes() {
    if cluster_mode() || skip_without("SeaweedFS", Seaweed::shared().is_some()) {
        return;
    }
    let modules = [
        "audit::",
        "blobs::",
        "build_cache::",
        "conformance::",
        "manifests::",
        "engine::",
        "gc::",
        "limits::",
        "metrics::",
        "notifications::",
        "oci_client::",
        "quotas::",
        "retention::",
        "robots::",
        "security::",
        "slow_clients::",
    ];
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(modules)
        .args(["--test-threads", "2"])
        .env("WHARF_TEST_CLUSTER", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text
        .lines()
        .rev()
        .find(|l| l.starts_with("test result:"))
        .unwrap_or("no summary");
    eprintln!("cluster pass: {summary}");
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Guard against a filter that silently matches nothing.
    let passed: usize = summary
        .split_whitespace()
        .nth(3)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(passed >= 50, "{summary}");
}

/// Sends `data` as PATCH chunks of `chunk` bytes, each to the next node.
async fn patch_round_robin(c: &Cluster, location: &str, data: &[u8], chunk: usize) {
    let mut offset = 0;
    for (i, piece) in data.chunks(chunk).enumerate() {
        let node = c.node(i + 1);
        let r = node
            .client
            .patch(node.url(location))
            .header("content-type", "application/octet-stream")
            .header(
                "content-range",
                format!("{}-{}", offset, offset + piece.len() - 1),
            )
            .body(piece.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "chunk {i}: {}", r.text().await.unwrap());
        offset += piece.len();
        assert_eq!(
            header(&r, "range"),
            Some(format!("0-{}", offset - 1).as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_push_spread_over_three_nodes_reads_back_from_each() {
    let Some(c) = Cluster::start(3, |_| {}).await else {
        return;
    };
    // 21 MiB in 3 MiB chunks: parts are cut across requests and nodes, and
    // the tail moves through the database between them.
    let data = payload(21 << 20, 11);
    let d = digest(&data);
    let location = c.node(0).start_upload("spread").await;
    let location = location.trim_start_matches(&c.node(0).base).to_owned();
    patch_round_robin(&c, &location, &data, 3 << 20).await;
    // Status from another node reports the same offset.
    let r = c.node(2).get(&location).await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        header(&r, "range"),
        Some(format!("0-{}", data.len() - 1).as_str())
    );
    let sep = if location.contains('?') { '&' } else { '?' };
    let r = c
        .node(0)
        .client
        .put(c.node(0).url(&format!("{location}{sep}digest={d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    for i in 0..3 {
        let r = c.node(i).get_blob("spread", &d).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap(), data, "node {i}");
    }
    let r = c
        .node(1)
        .client
        .get(c.node(1).url(&format!("/v2/spread/blobs/{d}")))
        .header("range", "bytes=9000000-9000999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), data[9_000_000..9_001_000]);
    // Nothing of the session is left; one object holds the blob.
    assert_eq!(c.sql("SELECT count(*) FROM uploads"), "0");
    assert_eq!(c.sql("SELECT count(*) FROM upload_tail"), "0");
    assert_eq!(
        c.sql(&format!("SELECT count(*) FROM blobs WHERE digest = '{d}'")),
        "1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn images_push_and_pull_across_nodes() {
    let Some(c) = Cluster::start(3, |_| {}).await else {
        return;
    };
    let m = c.node(0).image_manifest("app", 5, 3).await;
    let body = serde_json::to_vec(&m).unwrap();
    assert_eq!(
        c.node(1)
            .put_manifest("app", "v1", OCI_MANIFEST, &body)
            .await
            .status(),
        201
    );
    let r = c.node(2).get("/v2/app/manifests/v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "docker-content-digest"),
        Some(digest(&body).as_str())
    );
    assert_eq!(r.bytes().await.unwrap(), body);
    for layer in m["layers"].as_array().unwrap() {
        let d = layer["digest"].as_str().unwrap();
        assert_eq!(c.node(2).get_blob("app", d).await.status(), 200);
        let r = c
            .node(1)
            .client
            .head(c.node(1).url(&format!("/v2/app/blobs/{d}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            header(&r, "content-length"),
            layer["size"].to_string().as_str().into()
        );
    }
    let v: Value = c.node(0).get_json("/v2/app/tags/list").await;
    assert_eq!(v["tags"], serde_json::json!(["v1"]));
    // Mount into another repository through a third node.
    let layer = m["layers"][0]["digest"].as_str().unwrap();
    let r = c
        .node(2)
        .client
        .post(
            c.node(2)
                .url(&format!("/v2/copy/blobs/uploads/?mount={layer}&from=app")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(c.node(0).get_blob("copy", layer).await.status(), 200);
}

/// Two PATCHes of one session on two nodes at once: exactly one wins; the
/// other answers 416 and the session holds the winner's bytes only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_patches_on_two_nodes_never_both_win() {
    let Some(c) = Cluster::start(2, |_| {}).await else {
        return;
    };
    for round in 0..5u64 {
        let location = c.node(0).start_upload("race").await;
        let location = location.trim_start_matches(&c.node(0).base).to_owned();
        let (a, b) = (payload(9 << 20, round * 2), payload(9 << 20, round * 2 + 1));
        let send = |i: usize, data: Vec<u8>| {
            let node = c.node(i);
            node.client
                .patch(node.url(&location))
                .header("content-range", format!("0-{}", data.len() - 1))
                .body(data)
                .send()
        };
        let (ra, rb) = tokio::join!(send(0, a.clone()), send(1, b.clone()));
        let (sa, sb) = (ra.unwrap().status().as_u16(), rb.unwrap().status().as_u16());
        let winner = match (sa, sb) {
            (202, 416) => a,
            (416, 202) => b,
            other => panic!("round {round}: answers {other:?}"),
        };
        let d = digest(&winner);
        let r = c
            .node(1)
            .client
            .put(c.node(1).url(&format!("{location}?digest={d}")))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            201,
            "round {round}: {}",
            r.text().await.unwrap()
        );
        assert_eq!(
            c.node(0).get_blob("race", &d).await.bytes().await.unwrap(),
            winner
        );
    }
}

/// Three nodes completing uploads of one digest at the same moment: all
/// answer 201, one row and one object are kept, the others are queued for
/// deletion and purged: the bucket ends with exactly one object of the
/// blob's size, the one its row names.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_digest_committed_on_three_nodes_at_once_is_kept_once() {
    let Some(c) = Cluster::start(3, |c| c.upload_purge_interval_secs = 1).await else {
        return;
    };
    let data = payload(10 << 20, 77);
    let d = digest(&data);
    let pushes = (0..3).map(|i| {
        let node = c.node(i);
        let data = data.clone();
        let d = d.clone();
        async move {
            node.client
                .post(node.url(&format!("/v2/dedup{i}/blobs/uploads/?digest={d}")))
                .body(data)
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    let answers = futures_util::future::join_all(pushes).await;
    assert!(answers.iter().all(|s| s.as_u16() == 201), "{answers:?}");
    assert_eq!(
        c.sql(&format!("SELECT count(*) FROM blobs WHERE digest = '{d}'")),
        "1"
    );
    for i in 0..3 {
        let r = c.node(i).get_blob(&format!("dedup{i}"), &d).await;
        assert_eq!(r.bytes().await.unwrap(), data);
    }
    // Every duplicate object is deleted by the purge: the bucket is
    // listed, so an object nothing queued (a leak) would show.
    let kept = c.sql(&format!(
        "SELECT object_key FROM blobs WHERE digest = '{d}'"
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let objects = c.objects().await;
        let blob_sized: Vec<&String> = objects
            .iter()
            .filter(|(_, size)| *size == data.len() as u64)
            .map(|(k, _)| k)
            .collect();
        if blob_sized == [&kept] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "objects of the blob's size: {blob_sized:?}, kept {kept}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(c.sql("SELECT count(*) FROM object_deletions"), "0");
}

/// Garbage collection through one node frees what another pushed, and
/// the object is deleted from the bucket after the delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_frees_objects_across_nodes() {
    let Some(c) = Cluster::start(2, |c| c.upload_purge_interval_secs = 1).await else {
        return;
    };
    let m = c.node(0).image_manifest("gc", 9, 1).await;
    let body = serde_json::to_vec(&m).unwrap();
    assert_eq!(
        c.node(0)
            .put_manifest("gc", "t", OCI_MANIFEST, &body)
            .await
            .status(),
        201
    );
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_owned();
    assert_eq!(
        c.node(1)
            .delete(&format!("/v2/gc/manifests/{}", digest(&body)))
            .await
            .status(),
        202
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = c
        .node(1)
        .client
        .post(c.node(1).url("/_wharf/gc?grace_secs=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let report: Value = r.json().await.unwrap();
    assert!(report["blobs_removed"].as_u64().unwrap() >= 3, "{report}");
    assert_eq!(c.node(0).get_blob("gc", &layer).await.status(), 404);
    assert_eq!(
        c.sql(&format!(
            "SELECT count(*) FROM blobs WHERE digest = '{layer}'"
        )),
        "0"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while c.sql("SELECT count(*) FROM object_deletions") != "0" {
        assert!(
            std::time::Instant::now() < deadline,
            "freed objects deleted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A node killed with SIGKILL in the middle of a PATCH: what it had
/// acknowledged stays, another node reports the offset, the client resumes
/// there and the blob completes byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_mid_patch_loses_nothing_acknowledged() {
    let Some(c) = Cluster::start(1, |_| {}).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let victim = WharfProcess::start_with_toml(dir.path(), &c.toml);
    let client = reqwest::Client::new();
    let data = payload(40 << 20, 31);
    let d = digest(&data);
    let r = client
        .post(format!("{}/v2/kill/blobs/uploads/", victim.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = location(&r);
    let path = location.trim_start_matches(&victim.base).to_owned();
    // The first 10 MiB are acknowledged by the victim.
    let first = 10 << 20;
    let r = client
        .patch(format!("{}{path}", victim.base))
        .header("content-range", format!("0-{}", first - 1))
        .body(data[..first].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // The next PATCH streams 12 MiB of its 30 and stalls; then kill -9.
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    let patch = tokio::spawn(
        client
            .patch(format!("{}{path}", victim.base))
            .header("content-range", format!("{first}-{}", data.len() - 1))
            .body(reqwest::Body::wrap_stream(stream))
            .send(),
    );
    for piece in data[first..first + (12 << 20)].chunks(1 << 20) {
        tx.send(piece.to_vec()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    victim.signal(libc::SIGKILL);
    drop(tx);
    let _ = patch.await;
    drop(victim);

    // Another node: the offset is what was acknowledged; resume there.
    let other = c.node(0);
    let r = other.get(&path).await;
    assert_eq!(r.status(), 204);
    let range = header(&r, "range").unwrap().to_owned();
    let offset: usize = range.trim_start_matches("0-").parse::<usize>().unwrap() + 1;
    assert_eq!(offset, first, "the acknowledged bytes, no more, no less");
    let r = other.patch_chunk(&path, offset, &data[offset..]).await;
    assert_eq!(r.status(), 202);
    let r = other.finish_upload(&path, &d).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    assert_eq!(
        other.get_blob("kill", &d).await.bytes().await.unwrap(),
        data
    );
}

/// The object store dies in the middle of a push and comes back: requests
/// answer 503 with an OCI body and Retry-After within the S3 timeout (no
/// hang, no 500), /readyz says not ready, and afterwards the same session
/// continues from its acknowledged offset and every acknowledged blob
/// reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_object_store_going_away_answers_503_and_loses_nothing() {
    let dir = std::env::temp_dir().join(format!("wharf-weed-own-{}", std::process::id()));
    let weed = Seaweed::start_in(dir.clone());
    if skip_without("SeaweedFS", weed.is_some()) {
        return;
    }
    let mut weed = weed.unwrap();
    let metrics: std::net::SocketAddr =
        format!("127.0.0.1:{}", crate::common::services::free_port())
            .parse()
            .unwrap();
    let Some(c) = Cluster::start_on(&weed, 1, |c| {
        if let Some(s3) = c.storage.s3.as_mut() {
            s3.timeout_secs = 3;
        }
        c.metrics.addr = Some(metrics);
    })
    .await
    else {
        return;
    };
    let node = c.node(0);
    let kept = payload(12 << 20, 41);
    let kept_digest = node.push_mono("outage", &kept).await;
    let data = payload(20 << 20, 42);
    let d = digest(&data);
    let location = node.start_upload("outage").await;
    let path = location.trim_start_matches(&node.base).to_owned();
    let half = 10 << 20;
    let r = node.patch_chunk(&path, 0, &data[..half]).await;
    assert_eq!(r.status(), 202);

    weed.kill();
    let started = std::time::Instant::now();
    let r = node.patch_chunk(&path, half, &data[half..]).await;
    assert_eq!(r.status(), 503, "{:?}", r.text().await);
    let r = node.get_blob("outage", &kept_digest).await;
    assert!(header(&r, "retry-after").is_some());
    assert_oci_error(r, 503, "UNAVAILABLE").await;
    assert_eq!(
        node.push_mono_status("outage", &payload(1000, 43)).await,
        503
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "no hang: {:?}",
        started.elapsed()
    );
    let ready = reqwest::get(format!("http://{metrics}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);

    weed.restart();
    // A client that honours Retry-After gets through once the store is
    // back; a 503 on a loaded machine right after the restart leaves the
    // session where it was, which the status check shows each time.
    let mut tries = 0;
    let r = loop {
        let r = node.get(&path).await;
        assert_eq!(r.status(), 204);
        assert_eq!(
            header(&r, "range"),
            Some(format!("0-{}", half - 1).as_str())
        );
        let r = node.patch_chunk(&path, half, &data[half..]).await;
        tries += 1;
        if r.status() != 503 || tries == 3 {
            break r;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    let r = node.finish_upload(&path, &d).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    assert_eq!(
        node.get_blob("outage", &d).await.bytes().await.unwrap(),
        data
    );
    assert_eq!(
        node.get_blob("outage", &kept_digest)
            .await
            .bytes()
            .await
            .unwrap(),
        kept
    );
    let ready = reqwest::get(format!("http://{metrics}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    weed.kill();
    let _ = std::fs::remove_dir_all(dir);
}

/// The real clients (skopeo, podman, buildah, umoci, the docker CLI,
/// oras-py, python-dxf, curl: ../shared/clients/smoke.sh) through three
/// nodes behind a balancer that sends each request to the next node, so
/// every multi-request flow (chunked uploads, mounts, tag listing,
/// deletes) crosses nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_clients_pass_through_three_nodes_behind_a_round_robin_balancer() {
    if !crate::clients::clients_wanted() {
        return;
    }
    let Some(c) = Cluster::start(3, |_| {}).await else {
        return;
    };
    let lb = crate::common::balancer::RoundRobin::start(
        c.nodes.iter().map(|n| n.base.clone()).collect(),
    )
    .await;
    let host = lb.addr.to_string();
    tokio::task::spawn_blocking(move || crate::clients::smoke_passes(&host))
        .await
        .unwrap();
    let hits = lb.hits();
    assert!(hits.iter().all(|&h| h > 50), "requests per node: {hits:?}");
}

/// GC on one node in a loop while pushes go through the two others (layers
/// to one, the manifest to the next): every acknowledged image pulls whole,
/// every other manifest PUT fails cleanly (MANIFEST_BLOB_UNKNOWN).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_on_one_node_never_breaks_pushes_through_the_others() {
    let Some(c) = Cluster::start(3, |_| {}).await else {
        return;
    };
    let nodes: Vec<std::sync::Arc<TestRegistry>> =
        c.nodes.into_iter().map(std::sync::Arc::new).collect();
    crate::gc::pushes_racing_gc(nodes[0].clone(), nodes[1..].to_vec()).await;
}

/// PostgreSQL cut off in the middle of a push (the database refuses
/// connections and every open one is terminated, as a crashed server looks
/// to its clients): requests answer 503 with Retry-After within the
/// metadata timeout, and once it is back the session goes on, on another
/// node, from its acknowledged offset; nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_going_away_mid_push_answers_503_and_loses_nothing() {
    let Some(c) = Cluster::start(2, |c| c.metadata.timeout_secs = 2).await else {
        return;
    };
    let pg = Postgres::shared().unwrap();
    let (a, b) = (c.node(0), c.node(1));
    let kept = payload(3 << 20, 51);
    let kept_digest = a.push_mono("pgdown", &kept).await;
    let data = payload(12 << 20, 52);
    let d = digest(&data);
    let location = a.start_upload("pgdown").await;
    let path = location.trim_start_matches(&a.base).to_owned();
    let half = 9 << 20;
    let r = a.patch_chunk(&path, 0, &data[..half]).await;
    assert_eq!(r.status(), 202);

    pg.psql(
        "postgres",
        &format!("ALTER DATABASE {} ALLOW_CONNECTIONS false", c.db),
    )
    .unwrap();
    pg.psql(
        "postgres",
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
            c.db
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let r = b.patch_chunk(&path, half, &data[half..]).await;
    assert!(header(&r, "retry-after").is_some(), "Retry-After on 503");
    assert_oci_error(r, 503, "UNAVAILABLE").await;
    assert_oci_error(a.get_blob("pgdown", &kept_digest).await, 503, "UNAVAILABLE").await;
    assert_eq!(a.push_mono_status("pgdown", b"during").await, 503);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "no hang: {:?}",
        started.elapsed()
    );

    pg.psql(
        "postgres",
        &format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", c.db),
    )
    .unwrap();
    // The pool notices dead connections on use; a client honouring
    // Retry-After gets through within a few tries.
    let mut status = None;
    for _ in 0..10 {
        let r = b.get(&path).await;
        if r.status() == 204 {
            status = Some(header(&r, "range").map(str::to_owned));
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(status, Some(Some(format!("0-{}", half - 1))));
    let r = b.patch_chunk(&path, half, &data[half..]).await;
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    let r = a.finish_upload(&path, &d).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    assert!(b.get_blob("pgdown", &d).await.bytes().await.unwrap() == data);
    assert!(
        b.get_blob("pgdown", &kept_digest)
            .await
            .bytes()
            .await
            .unwrap()
            == kept
    );
}

/// A 2 GiB layer pushed as 2048 PATCHes of 1 MiB, each to the next of three
/// nodes: every PATCH is smaller than a part, so each one's bytes join the
/// session's tail in PostgreSQL until eight of them make a part. Each PATCH
/// reports the whole offset; the blob then streams back whole from a node
/// that took neither the POST nor the PUT.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_two_gib_upload_in_small_patches_across_nodes() {
    use sha2::Digest as _;
    let Some(c) = Cluster::start(3, |_| {}).await else {
        return;
    };
    const CHUNK: usize = 1 << 20;
    const CHUNKS: usize = 2048;
    let location = c.node(0).start_upload("big").await;
    let path = location.trim_start_matches(&c.node(0).base).to_owned();
    let mut hasher = sha2::Sha256::new();
    for i in 0..CHUNKS {
        let piece = payload(CHUNK, 1000 + i as u64);
        hasher.update(&piece);
        let node = c.node(i);
        let from = i * CHUNK;
        let r = node.patch_chunk(&path, from, &piece).await;
        assert_eq!(r.status(), 202, "PATCH {i}: {:?}", r.text().await);
        assert_eq!(
            header(&r, "range"),
            Some(format!("0-{}", from + CHUNK - 1).as_str())
        );
    }
    let d = format!("sha256:{}", hex::encode(hasher.finalize()));
    let r = c.node(1).finish_upload(&path, &d).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let mut r = c.node(2).get_blob("big", &d).await;
    assert_eq!(r.status(), 200);
    let mut read = sha2::Sha256::new();
    let mut len = 0;
    while let Some(chunk) = r.chunk().await.unwrap() {
        len += chunk.len();
        read.update(&chunk);
    }
    assert_eq!(len, CHUNK * CHUNKS);
    assert_eq!(format!("sha256:{}", hex::encode(read.finalize())), d);
    let r = c
        .node(0)
        .client
        .head(c.node(0).url(&format!("/v2/big/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "content-length"), Some("2147483648"));
}

/// `wharf gc --config F` (the binary, offline in the sense of "not through
/// a node") collects an object-store registry while a node keeps serving:
/// the dry run only counts, the real run frees the bytes of a deleted
/// image and keeps the tagged one, and the node still serves and takes
/// pushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gc_command_collects_beside_a_running_node() {
    let Some(c) = Cluster::start(1, |_| {}).await else {
        return;
    };
    let node = c.node(0);
    let m = node.image_manifest("cmd", 21, 1).await;
    let body = serde_json::to_vec(&m).unwrap();
    let md = digest(&body);
    assert_eq!(
        node.put_manifest("cmd", "t", OCI_MANIFEST, &body)
            .await
            .status(),
        201
    );
    let other = node.image_manifest("kept", 22, 1).await;
    let other_body = serde_json::to_vec(&other).unwrap();
    assert_eq!(
        node.put_manifest("kept", "t", OCI_MANIFEST, &other_body)
            .await
            .status(),
        201
    );
    let kept = other["layers"][0]["digest"].as_str().unwrap().to_owned();
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_owned();
    assert_eq!(
        node.delete(&format!("/v2/cmd/manifests/{md}"))
            .await
            .status(),
        202
    );
    let dir = tempfile::tempdir().unwrap();
    let scratch = dir.path().join("scratch");
    let gc = |dry_run: bool| {
        let mut args = vec![
            "gc",
            "--root",
            scratch.to_str().unwrap(),
            "--grace-secs",
            "0",
        ];
        if dry_run {
            args.push("--dry-run");
        }
        let (code, text) = c.cli(dir.path(), &args);
        assert_eq!(code, Some(0), "{text}");
        text
    };
    let count = |d: &str| c.sql(&format!("SELECT count(*) FROM blobs WHERE digest = '{d}'"));
    // Times are whole seconds: with no grace, what was written this second
    // is still too young.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let dry = gc(true);
    assert!(dry.contains("dry run: "), "{dry}");
    assert_eq!(count(&layer), "1", "a dry run frees nothing");
    let real = gc(false);
    // The deleted manifest, its config and its layer; the tagged image stays.
    assert!(real.contains(" 3 blobs removed"), "{real}");
    // A command keeps no read cache: nothing made in its root but what it
    // needs.
    assert!(
        !scratch.join("cache").exists(),
        "gc --config created a read cache"
    );
    assert_eq!(count(&layer), "0");
    assert_eq!(count(&md), "0");
    assert_eq!(count(&kept), "1");
    assert_eq!(node.get_blob("cmd", &layer).await.status(), 404);
    assert_eq!(node.get_blob("kept", &kept).await.status(), 200);
    assert_eq!(
        node.get("/v2/kept/manifests/t")
            .await
            .bytes()
            .await
            .unwrap(),
        other_body
    );
    node.push_mono("kept", b"after the collection").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fsck_command_checks_the_bucket_beside_a_running_node() {
    let Some(c) = Cluster::start(1, |_| {}).await else {
        return;
    };
    let node = c.node(0);
    let m = node.image_manifest("check", 51, 2).await;
    let body = serde_json::to_vec(&m).unwrap();
    assert_eq!(
        node.put_manifest("check", "t", OCI_MANIFEST, &body)
            .await
            .status(),
        201
    );
    let dir = tempfile::tempdir().unwrap();
    let fsck = |deep: bool| match deep {
        true => c.cli(dir.path(), &["fsck", "--deep"]),
        false => c.cli(dir.path(), &["fsck"]),
    };
    // Config, two layers and the manifest: four blobs, all sound.
    let (code, text) = fsck(true);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("4 blobs checked ("), "{text}");
    assert!(text.contains("), no problems"), "{text}");

    let weed = Seaweed::shared().unwrap();
    let s3 = wharf::s3::S3Client::new(&weed.settings(&c.bucket)).unwrap();
    let key_of = |d: &str| {
        c.sql(&format!(
            "SELECT object_key FROM blobs WHERE digest = '{d}'"
        ))
        .trim()
        .to_owned()
    };
    // One layer's object rewritten with other bytes of the same length:
    // only the deep check reads it back and sees it.
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_owned();
    let size = m["layers"][0]["size"].as_u64().unwrap() as usize;
    s3.put_object(
        &key_of(&layer),
        wharf::s3::PartBody::new([bytes::Bytes::from(vec![0u8; size])]),
    )
    .await
    .unwrap();
    let (code, text) = fsck(false);
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = fsck(true);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains(&format!("DAMAGE blob {layer}")), "{text}");
    // The config's object deleted: found without reading anything back.
    let config_d = m["config"]["digest"].as_str().unwrap().to_owned();
    s3.delete_object(&key_of(&config_d)).await.unwrap();
    let (code, text) = fsck(false);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!("blob {config_d}: its object")),
        "{text}"
    );
    assert!(text.contains("is missing"), "{text}");
    // The node kept serving throughout.
    assert_eq!(node.get("/v2/check/manifests/t").await.status(), 200);
}
