//! Abuse limits over real sockets: oversized heads and bodies, clients that
//! stall in the head, the body or between requests, per-client rate and
//! connection caps, the upload-session cap, and path traversal attempts.

use crate::common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn addr(reg: &TestRegistry) -> String {
    reg.base.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection; returns what it sent and
/// how long that took. Panics if it is still open after `limit`.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(
            tokio::time::Instant::from_std(started + limit),
            s.read(&mut buf),
        )
        .await
        {
            Err(_) => panic!(
                "connection still open after {limit:?}; got {:?}",
                String::from_utf8_lossy(&out)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

/// The first read of a reply on a connection that stays open (5 s at most).
async fn read_reply(s: &mut TcpStream) -> String {
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("a reply within 5 s")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_refused_with_431() {
    let reg = TestRegistry::start_with(|c| c.limits.max_header_bytes = 16 * 1024).await;
    // Above the configured limit, below hyper's buffer: our 431 with a body.
    let big = "a".repeat(20 * 1024);
    let (status, text) = raw_request(
        &reg.base,
        &format!("GET /v2/ HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 431, "{text}");
    assert!(text.contains("SIZE_INVALID"));
    // Far above any buffer: refused by the parser, connection closed.
    let huge = "b".repeat(400 * 1024);
    let (status, _) = raw_request(
        &reg.base,
        &format!("GET /v2/ HTTP/1.1\r\nHost: t\r\nX-Big: {huge}\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 431);
    // The server is fine afterwards.
    assert_eq!(reg.get("/v2/").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_blobs_and_manifests_get_413() {
    let reg = TestRegistry::start_with(|c| c.limits.max_blob_bytes = 1 << 20).await;
    // Monolithic, declared length too large: refused before storing.
    let data = payload(2 << 20, 1);
    let r = reg
        .client
        .post(reg.url(&format!(
            "/v2/big/x/blobs/uploads/?digest={}",
            digest(&data)
        )))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_oci_error(r, 413, "SIZE_INVALID").await;
    // Chunked: the chunk that crosses the limit is refused.
    let loc = reg.start_upload("big/x").await;
    let chunk = payload(700 << 10, 2);
    let r = reg
        .client
        .patch(reg.url(&loc))
        .header("content-range", format!("0-{}", chunk.len() - 1))
        .body(chunk.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = location(&r);
    let r = reg
        .client
        .patch(reg.url(&loc))
        .body(chunk.clone())
        .send()
        .await
        .unwrap();
    assert_oci_error(r, 413, "SIZE_INVALID").await;
    // Within the limit still works.
    let small = payload(100_000, 3);
    reg.push_mono("big/x", &small).await;
    // Manifests above max_manifest_bytes (4 MiB default).
    let body = vec![b' '; 5 << 20];
    let r = reg.put_manifest("big/x", "v1", OCI_MANIFEST, &body).await;
    assert_eq!(r.status(), 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_cut_off() {
    if skip_in_cluster(
        "connection timeouts are each node's, behind a balancer that keeps its own connections",
    ) {
        return;
    }
    let reg = TestRegistry::start_with(|c| {
        c.limits.header_timeout_secs = 1;
        c.limits.body_idle_timeout_secs = 1;
        c.limits.idle_connection_secs = 2;
    })
    .await;
    let a = addr(&reg);

    // Slowloris: half a request head, then nothing.
    let mut s = TcpStream::connect(&a).await.unwrap();
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        .await
        .unwrap();
    let (_, took) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(
        took >= Duration::from_millis(900),
        "cut too early: {took:?}"
    );

    // Connected, never a byte.
    let mut s = TcpStream::connect(&a).await.unwrap();
    read_until_closed(&mut s, Duration::from_secs(10)).await;

    // A chunk upload whose body stops arriving.
    let loc = reg.start_upload("stall/x").await;
    let mut s = TcpStream::connect(&a).await.unwrap();
    s.write_all(
        format!("PATCH {loc} HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    s.write_all(&[7u8; 1000]).await.unwrap();
    let (reply, _) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    // What arrived before the stall is kept: the client can resume from it.
    let r = reg.get(&loc).await;
    assert_eq!(header(&r, "range"), Some("0-999"));

    // A keep-alive connection left idle after a request.
    let mut s = TcpStream::connect(&a).await.unwrap();
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let (reply, took) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        took >= Duration::from_millis(900),
        "cut too early: {took:?}"
    );

    // A body that trickles slower than the header limit is still a body:
    // a slow but live client keeps its upload. (A fresh connection: the
    // pooled one has been idle long enough for the server to cut it, and
    // reusing it would race that cut.)
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let r = fresh
        .post(reg.url("/v2/stall/y/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = location(&r);
    let mut s = TcpStream::connect(&a).await.unwrap();
    s.write_all(format!("PATCH {loc} HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\n").as_bytes())
        .await
        .unwrap();
    for b in b"abcd" {
        tokio::time::sleep(Duration::from_millis(600)).await;
        s.write_all(&[*b]).await.unwrap();
    }
    let reply = read_reply(&mut s).await;
    assert!(reply.starts_with("HTTP/1.1 202"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_rate_limit_answers_429() {
    if skip_in_cluster("the rate limit is per node and the balancer is one client") {
        return;
    }
    let reg = TestRegistry::start_with(|c| {
        c.limits.rate_limit_per_sec = 2;
        c.limits.rate_limit_burst = 5;
    })
    .await;
    let mut statuses = Vec::new();
    let mut refused = None;
    for _ in 0..12 {
        let r = reg.get("/v2/").await;
        statuses.push(r.status().as_u16());
        if r.status() == 429 && refused.is_none() {
            refused = Some(r);
        }
    }
    assert_eq!(&statuses[..5], &[200; 5], "the burst passes: {statuses:?}");
    let r = refused.unwrap_or_else(|| panic!("no 429 in {statuses:?}"));
    let retry: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry));
    assert_oci_error(r, 429, "TOOMANYREQUESTS").await;
    // Health probes are never throttled.
    for _ in 0..20 {
        assert_eq!(reg.get("/readyz").await.status(), 200);
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(reg.get("/v2/").await.status(), 200, "tokens refill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_session_and_connection_caps() {
    let reg = TestRegistry::start_with(|c| {
        c.limits.max_upload_sessions = 2;
        c.limits.max_connections_per_client = 3;
    })
    .await;
    let first = reg.start_upload("cap/x").await;
    reg.start_upload("cap/x").await;
    let r = reg
        .client
        .post(reg.url("/v2/cap/x/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert!(header(&r, "retry-after").is_some());
    assert_oci_error(r, 429, "TOOMANYREQUESTS").await;
    // Finishing one frees a slot.
    assert_eq!(reg.delete(&first).await.status(), 204);
    reg.start_upload("cap/x").await;
    // Behind the balancer the session cap is the cluster's (counted in
    // PostgreSQL); connection caps are each node's own.
    if skip_in_cluster("connection caps are per node, behind a balancer of its own connections") {
        return;
    }

    // reqwest's pool may hold a connection; take the rest by hand.
    let a = addr(&reg);
    let mut held = Vec::new();
    let mut closed_at = None;
    for i in 0..4 {
        let mut s = TcpStream::connect(&a).await.unwrap();
        s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed_at = Some(i);
                break;
            }
            Ok(Ok(_)) => held.push(s),
            Err(_) => panic!("no answer on connection {i}"),
        }
    }
    assert!(closed_at.is_some(), "a fourth connection must be refused");
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut s = TcpStream::connect(&a).await.unwrap();
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (reply, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "slots are released: {reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_traversal_is_refused_and_touches_nothing() {
    let parent = tempfile::tempdir().unwrap();
    let root = parent.path().join("data");
    let reg = TestRegistry::start_config(config_for(root.clone())).await;
    reg.push_mono("safe/x", b"hello").await;
    let before: Vec<_> = std::fs::read_dir(parent.path()).unwrap().collect();
    let z = "0".repeat(64);
    let attempts = [
        "/v2/../../etc/passwd/manifests/latest".to_string(),
        "/v2/%2e%2e/%2e%2e/etc/manifests/latest".to_string(),
        "/v2/a/../../b/manifests/latest".to_string(),
        "/v2/safe/x/blobs/sha256:../../../../etc/passwd".to_string(),
        format!("/v2/safe/x/blobs/sha256:..%2f..%2f{z}"),
        "/v2/safe/x/blobs/uploads/../../../../etc/passwd".to_string(),
        "/v2/safe/x/blobs/uploads/..%2f..%2fmeta".to_string(),
        "/v2/safe/x/manifests/..%2f..%2fmeta.redb".to_string(),
        "/v2/safe/x/manifests/../../../../x".to_string(),
        "/v2/./safe/x/tags/list".to_string(),
        "/v2/safe//x/tags/list".to_string(),
        "/v2/safe/x/tags/list/../../../_catalog".to_string(),
    ];
    for path in &attempts {
        for method in ["GET", "PUT", "PATCH", "DELETE"] {
            let (status, text) = raw_request(
                &reg.base,
                &format!("{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"),
            )
            .await;
            assert!(
                matches!(status, 400 | 404 | 405),
                "{method} {path} -> {status}\n{text}"
            );
            assert!(
                !text.contains("root:x:0:0"),
                "{method} {path} leaked: {text}"
            );
            let codes = error_codes(&text);
            assert!(!codes.is_empty(), "{method} {path}: no error body\n{text}");
            for code in codes {
                assert!(
                    ERROR_CODES.contains(&code.as_str()),
                    "{method} {path}: code {code} is neither the spec's nor documented"
                );
            }
        }
    }
    // An upload id that cannot exist is an unknown upload, whatever it holds.
    for id in ["../../../../etc/passwd", "..%2f..%2fmeta", "not-a-uuid"] {
        let (status, text) = raw_get(&reg.base, &format!("/v2/safe/x/blobs/uploads/{id}")).await;
        assert_eq!(status, 404, "{id}: {text}");
        assert_eq!(error_codes(&text), ["BLOB_UPLOAD_UNKNOWN"], "{id}: {text}");
    }
    let after: Vec<_> = std::fs::read_dir(parent.path()).unwrap().collect();
    assert_eq!(
        before.len(),
        after.len(),
        "nothing created beside the data folder"
    );
    let r = reg.get_blob("safe/x", &digest(b"hello")).await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"hello");
}

/// The idle-connection limit is for connections with nothing to do: a
/// request being worked on (here, a body pausing for less than the body
/// limit) is never cut by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_limit_spares_requests_in_progress() {
    if skip_in_cluster(
        "connection timeouts are each node's, behind a balancer that keeps its own connections",
    ) {
        return;
    }
    let reg = TestRegistry::start_with(|c| {
        c.limits.idle_connection_secs = 1;
        c.limits.body_idle_timeout_secs = 10;
    })
    .await;
    let loc = reg.start_upload("busy/x").await;
    let mut s = TcpStream::connect(addr(&reg)).await.unwrap();
    s.write_all(
        format!("PATCH {loc} HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\nabc").as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    s.write_all(b"def").await.unwrap();
    let reply = read_reply(&mut s).await;
    assert!(reply.starts_with("HTTP/1.1 202"), "{reply}");
    // Once answered, the idle connection is closed within the limit.
    let (_, took) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(3), "{took:?}");
}
