//! Slow uploads must not starve fast ones, and memory stays bounded.
//!
//! The upload memory budget is shared by every upload. Trickling clients
//! (agents on slow links, or a misbehaving one) used to hold a whole batch's
//! share each while their bytes dribbled in, so a few dozen of them stopped
//! every other push.

use crate::common::*;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Starts a PATCH of `len` declared bytes and sends only its first byte;
/// the caller keeps the stream to trickle more. Returns the session's
/// Location too.
async fn trickling_patch(reg: &TestRegistry, repo: &str, len: usize) -> (String, TcpStream) {
    let loc = reg.start_upload(repo).await;
    let addr = reg.base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PATCH {loc} HTTP/1.1\r\nHost: test\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {len}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(b"x").await.unwrap();
    (loc, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_uploads_do_not_stall_a_normal_push() {
    // A small budget makes the old failure easy to reach: 8 MiB is eight
    // 1 MiB batches, so eight trickling clients holding a batch each used
    // to block everyone; here 80 trickle.
    let reg = TestRegistry::start_with(|c| {
        c.upload_memory_budget_mib = 8;
        c.limits.body_idle_timeout_secs = 120;
    })
    .await;
    let mut tricklers = Vec::new();
    for i in 0..80 {
        tricklers.push(trickling_patch(&reg, &format!("slow/t{i}"), 1 << 20).await);
    }
    // Let every trickler's first byte be read (and, before the fix, every
    // budget share be taken).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let data = payload(4 << 20, 77);
    let started = Instant::now();
    let pushed = tokio::time::timeout(Duration::from_secs(20), reg.push_mono_status("fast", &data))
        .await
        .expect("a normal push stalled behind trickling uploads");
    let took = started.elapsed();
    assert_eq!(pushed, 201);
    eprintln!("4 MiB push beside 80 trickling uploads: {took:?}");
    let got = reg
        .get_blob("fast", &digest(&data))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(&got[..], &data[..]);

    // In object-store mode a session's length is saved when its request
    // ends (any node may be asked next), so progress mid-request is a
    // data-folder matter.
    if cluster_mode() {
        return;
    }
    // The tricklers are still sending, and what they sent is written while
    // their requests go on (a batch is flushed after a short linger, not
    // held for a megabyte that may take minutes): one more byte each, then
    // every session reports two bytes stored.
    for (_, s) in &mut tricklers {
        s.write_all(b"y").await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for (loc, _) in &tricklers {
        let r = reg.get(loc).await;
        assert_eq!(r.status(), 204);
        assert_eq!(header(&r, "range"), Some("0-1"), "{loc}");
    }
    drop(tricklers);
}

#[test]
fn memory_stays_bounded_under_256_concurrent_uploads() {
    // The binary, so its peak RSS is the server's alone.
    let dir = tempfile::tempdir().unwrap();
    let wharf = WharfProcess::start(&dir.path().join("data"));
    let base = wharf.base.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let client = reqwest::Client::new();
        let data = std::sync::Arc::new(payload(4 << 20, 5));
        let mut pushes = Vec::new();
        for i in 0..256u64 {
            let (client, base, data) = (client.clone(), base.clone(), data.clone());
            pushes.push(tokio::spawn(async move {
                // Distinct content per push: no dedup shortcut.
                let mut body = data.to_vec();
                body[..8].copy_from_slice(&i.to_le_bytes());
                let d = digest(&body);
                let r = client
                    .post(format!("{base}/v2/mem/n{i}/blobs/uploads/?digest={d}"))
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
            }));
        }
        for p in pushes {
            p.await.unwrap();
        }
    });
    let peak_mib = wharf.status_kib("VmHWM") / 1024;
    eprintln!("peak RSS under 256 concurrent 4 MiB pushes: {peak_mib} MiB");
    // 256 x 4 MiB = 1 GiB sent at once; the budget (32 MiB), hyper's
    // per-connection buffers and the blocking pool's stacks bound it.
    assert!(peak_mib < 320, "peak RSS {peak_mib} MiB");
}
