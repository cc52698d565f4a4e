//! The `wharf` binary as an operator runs it: a 1 GiB blob pushed and pulled
//! with the server's memory measured from /proc, and graceful shutdown on
//! SIGTERM keeping upload sessions for the next start.

use crate::common::*;
use futures_util::stream;
use sha2::{Digest as _, Sha256};
use std::time::{Duration, Instant};

const GIB: usize = 1 << 30;
const BLOCK: usize = 1 << 20;

/// Block `i` of the 1 GiB test blob: a shared random block stamped with its
/// index, so no two blocks are equal.
fn block(base: &[u8], i: usize) -> Vec<u8> {
    let mut b = base.to_vec();
    b[..8].copy_from_slice(&(i as u64).to_le_bytes());
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_blob_round_trip_with_bounded_server_memory() {
    let dir = tempfile::tempdir().unwrap();
    let wharf = WharfProcess::start(dir.path());
    let client = reqwest::Client::new();
    let base = payload(BLOCK, 99);
    let mut h = Sha256::new();
    for i in 0..GIB / BLOCK {
        h.update(block(&base, i));
    }
    let d = format!("sha256:{}", hex::encode(h.finalize()));

    // docker's way: one streamed PATCH, then PUT.
    let r = client
        .post(format!("{}/v2/big/blobs/uploads/", wharf.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = location(&r);
    let b2 = base.clone();
    let body = stream::iter((0..GIB / BLOCK).map(move |i| Ok::<_, std::io::Error>(block(&b2, i))));
    let r = client
        .patch(format!("{}{loc}", wharf.base))
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = location(&r);
    let r = client
        .put(format!("{}{loc}?digest={d}", wharf.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    let peak_kib = wharf.status_kib("VmHWM:");
    assert!(
        peak_kib < 256 * 1024,
        "server peak RSS {peak_kib} KiB while receiving 1 GiB"
    );

    // Pull it back, hashing as it streams.
    let mut r = client
        .get(format!("{}/v2/big/blobs/{d}", wharf.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut h = Sha256::new();
    let mut n = 0usize;
    while let Some(chunk) = r.chunk().await.unwrap() {
        n += chunk.len();
        h.update(&chunk);
    }
    assert_eq!(n, GIB);
    assert_eq!(format!("sha256:{}", hex::encode(h.finalize())), d);
    // The mapping's pages are page cache (RssFile); what the server itself
    // allocated stays small.
    let anon_kib = wharf.status_kib("RssAnon:");
    assert!(
        anon_kib < 256 * 1024,
        "server anonymous RSS {anon_kib} KiB after serving 1 GiB"
    );

    // And chunked: 64 MiB in 4 MiB PATCHes with Content-Range.
    let data = payload(64 << 20, 5);
    let d64 = digest(&data);
    let r = client
        .post(format!("{}/v2/big/blobs/uploads/", wharf.base))
        .send()
        .await
        .unwrap();
    let mut loc = location(&r);
    for (i, c) in data.chunks(4 << 20).enumerate() {
        let start = i * (4 << 20);
        let r = client
            .patch(format!("{}{loc}", wharf.base))
            .header(
                "content-range",
                format!("{}-{}", start, start + c.len() - 1),
            )
            .body(c.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        loc = location(&r);
    }
    let r = client
        .put(format!("{}{loc}?digest={d64}", wharf.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let got = client
        .get(format!("{}/v2/big/blobs/{d64}", wharf.base))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(digest(&got), d64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_gracefully_and_sessions_survive() {
    let dir = tempfile::tempdir().unwrap();
    let mut wharf = WharfProcess::start(dir.path());
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/v2/g/blobs/uploads/", wharf.base))
        .send()
        .await
        .unwrap();
    let loc = location(&r);
    let r = client
        .patch(format!("{}{loc}", wharf.base))
        .body(vec![1u8; 12345])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    wharf.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = wharf.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "wharf did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}");

    let wharf = WharfProcess::start(dir.path());
    let r = client
        .get(format!("{}{loc}", wharf.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "range"), Some("0-12344"));
}

#[test]
fn healthcheck_says_whether_the_server_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let check = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
            .arg("healthcheck")
            .args(args)
            .output()
            .unwrap()
    };
    let mut wharf = WharfProcess::start(dir.path().join("a").as_path());
    let host = wharf.base.trim_start_matches("http://").to_owned();
    let out = check(&["--url", &host]);
    assert!(out.status.success(), "{out:?}");
    // Through the ops listener named in a config file.
    let ops = crate::common::services::free_port();
    let toml = format!("[metrics]\naddr = \"127.0.0.1:{ops}\"\n");
    std::fs::create_dir_all(dir.path().join("b")).unwrap();
    let with_ops = WharfProcess::start_with_toml(&dir.path().join("b"), &toml);
    let out = check(&[
        "--config",
        dir.path().join("b/wharf.toml").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    drop(with_ops);
    // Nobody answering: exit 1, saying why.
    wharf.child.kill().unwrap();
    wharf.child.wait().unwrap();
    let out = check(&["--url", &host]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&host));
}

#[test]
fn gc_command_collects_through_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let wharf = WharfProcess::start(dir.path());
    let host = wharf.base.trim_start_matches("http://").to_owned();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["gc", "--url", &host, "--dry-run"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("dry run: would be") && text.contains("freed (0 bytes)"),
        "{text}"
    );
    // Scripts get the exact figures as JSON.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["gc", "--url", &host, "--dry-run", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["bytes_freed"], 0);
    drop(wharf);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["gc", "--url", &host])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
