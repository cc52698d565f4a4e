//! The upload engine under stress and failure: parallel pushes, many
//! clients pushing one blob, clients hanging up mid-chunk, restarts and
//! idle purge.

use crate::common::*;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_parallel_pushes_of_different_blobs() {
    let reg = Arc::new(TestRegistry::start().await);
    let mut tasks = Vec::new();
    for i in 0..64u64 {
        let reg = reg.clone();
        tasks.push(tokio::spawn(async move {
            let data = payload(256 * 1024 + i as usize * 977, 1000 + i);
            let repo = format!("par/r{}", i % 8);
            let d = if i % 2 == 0 {
                reg.push_mono(&repo, &data).await
            } else {
                // chunked, in 3 pieces
                let d = digest(&data);
                let mut loc = reg.start_upload(&repo).await;
                let third = data.len() / 3;
                for (a, b) in [(0, third), (third, 2 * third)] {
                    let r = reg
                        .client
                        .patch(reg.url(&loc))
                        .header("content-range", format!("{}-{}", a, b - 1))
                        .body(data[a..b].to_vec())
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 202);
                    loc = location(&r);
                }
                let r = reg
                    .client
                    .put(reg.url(&format!("{loc}?digest={d}")))
                    .body(data[2 * third..].to_vec())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
                d
            };
            (repo, d, data)
        }));
    }
    let mut pushed = Vec::new();
    for t in tasks {
        pushed.push(t.await.unwrap());
    }
    for (repo, d, data) in pushed {
        let got = reg.get_blob(&repo, &d).await.bytes().await.unwrap();
        assert_eq!(&got[..], &data[..], "{d}");
    }
    assert_eq!(reg.stored_blobs(), 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_clients_pushing_one_blob_keep_one_copy() {
    let reg = Arc::new(TestRegistry::start().await);
    let data = Arc::new(payload(2 << 20, 77));
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (reg, data) = (reg.clone(), data.clone());
        tasks.push(tokio::spawn(async move {
            reg.push_mono(&format!("same/r{i}"), &data).await
        }));
    }
    let mut digests = Vec::new();
    for t in tasks {
        digests.push(t.await.unwrap());
    }
    assert_eq!(reg.stored_blobs(), 1);
    for (i, d) in digests.iter().enumerate() {
        let got = reg
            .get_blob(&format!("same/r{i}"), d)
            .await
            .bytes()
            .await
            .unwrap();
        assert_eq!(&got[..], &data[..]);
    }
    assert_eq!(reg.open_sessions(), 0);
}

/// Sends a PATCH announcing `announced` bytes, writes only `sent`, hangs up.
async fn patch_and_hang_up(reg: &TestRegistry, loc: &str, data: &[u8], announced: usize) {
    let addr = reg.base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PATCH {loc} HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\nContent-Length: {announced}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(data).await.unwrap();
    s.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(s);
}

async fn upload_len(reg: &TestRegistry, loc: &str) -> u64 {
    let r = reg.get(loc).await;
    assert_eq!(r.status(), 204);
    let range = header(&r, "range").unwrap().to_owned();
    let end: u64 = range.trim_start_matches("0-").parse().unwrap();
    if end == 0 {
        0
    } else {
        end + 1
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_hanging_up_mid_patch_leaves_a_resumable_session() {
    let reg = TestRegistry::start().await;
    let data = payload(3 << 20, 11);
    let d = digest(&data);
    let loc = reg.start_upload("hang").await;
    let sent = 1_300_000;
    patch_and_hang_up(&reg, &loc, &data[..sent], data.len()).await;
    // The server notices the hang-up asynchronously: wait until it settles.
    let mut len = 0;
    for _ in 0..100 {
        let now = upload_len(&reg, &loc).await;
        if now == len && now > 0 {
            break;
        }
        len = now;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(len as usize, sent, "every byte that arrived is kept");
    let off = len as usize;
    let r = reg
        .client
        .patch(reg.url(&loc))
        .header("content-range", format!("{}-{}", off, data.len() - 1))
        .body(data[off..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = reg
        .client
        .put(reg.url(&format!("{loc}?digest={d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        digest(&reg.get_blob("hang", &d).await.bytes().await.unwrap()),
        d
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monolithic_push_cut_short_commits_nothing() {
    let reg = TestRegistry::start().await;
    let data = payload(1 << 20, 12);
    let d = digest(&data);
    let addr = reg.base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v2/cut/blobs/uploads/?digest={d} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        data.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&data[..1000]).await.unwrap();
    drop(s);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(reg.get_blob("cut", &d).await.status(), 404);
    assert_eq!(reg.stored_blobs(), 0);
    assert_eq!(reg.open_sessions(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_restart() {
    let mut reg = TestRegistry::start_with(|_| {}).await;
    let data = payload(2 << 20, 21);
    let d = digest(&data);
    let loc = reg.start_upload("restart/me").await;
    let half = 1 << 20;
    let r = reg
        .client
        .patch(reg.url(&loc))
        .header("content-range", format!("0-{}", half - 1))
        .body(data[..half].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let done = reg.push_mono("restart/me", b"committed before").await;

    reg.restart().await;

    assert_eq!(upload_len(&reg, &loc).await, half as u64);
    assert_eq!(
        reg.get_blob("restart/me", &done)
            .await
            .bytes()
            .await
            .unwrap(),
        &b"committed before"[..]
    );
    let r = reg
        .client
        .patch(reg.url(&loc))
        .header("content-range", format!("{}-{}", half, data.len() - 1))
        .body(data[half..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = reg
        .client
        .put(reg.url(&format!("{loc}?digest={d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        reg.get_blob("restart/me", &d).await.bytes().await.unwrap(),
        data
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_session_completes_without_further_chunks() {
    // Recovery must rehash what is on disk when no chunk follows.
    let mut reg = TestRegistry::start_with(|_| {}).await;
    let data = payload(700_000, 22);
    let d = digest(&data);
    let loc = reg.start_upload("r").await;
    reg.client
        .patch(reg.url(&loc))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    reg.restart().await;
    let wrong = digest(b"x");
    let r = reg
        .client
        .put(reg.url(&format!("{loc}?digest={wrong}")))
        .send()
        .await
        .unwrap();
    assert_oci_error(r, 400, "DIGEST_INVALID").await;
    let r = reg
        .client
        .put(reg.url(&format!("{loc}?digest={d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_are_purged_with_their_files() {
    let reg = TestRegistry::start_with(|c| {
        c.upload_idle_timeout_secs = 1;
        c.upload_purge_interval_secs = 1;
    })
    .await;
    let loc = reg.start_upload("idle").await;
    reg.client
        .patch(reg.url(&loc))
        .body(vec![7u8; 5000])
        .send()
        .await
        .unwrap();
    // Watch the store, not the status endpoint: a status call is activity.
    assert_eq!(reg.open_sessions(), 1);
    let mut gone = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if reg.open_sessions() == 0 {
            gone = true;
            break;
        }
    }
    assert!(gone, "session files still there after the idle timeout");
    let r = reg.get(&loc).await;
    assert_oci_error(r, 404, "BLOB_UPLOAD_UNKNOWN").await;
}
