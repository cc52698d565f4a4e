//! The object store as it really behaves (issue 23). Throttled and flaky:
//! a proxy answers 503 SlowDown to one request in five and drops one
//! connection in fifty; three nodes push and pull through it, retrying
//! with backoff inside each request's deadline, so no client sees an error
//! and every blob reads back whole. Left with uploads nobody owns: the
//! purge aborts them, and only them.

use crate::common::fault_proxy::FaultProxy;
use crate::common::services::{
    skip_without, use_object_store, Postgres, Seaweed, S3_KEY, S3_SECRET,
};
use crate::common::*;
use futures_util::StreamExt;
use std::sync::atomic::Ordering;

/// A fresh database and bucket, and the store; `None` (the test skips) in
/// the cluster pass or without the services.
async fn services() -> Option<(String, String, &'static Seaweed)> {
    if cluster_mode() {
        return None;
    }
    let (Some(pg), Some(weed)) = (Postgres::shared(), Seaweed::shared()) else {
        skip_without("postgresql and seaweedfs", false);
        return None;
    };
    Some((pg.fresh_database(), weed.fresh_bucket().await, weed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slowdowns_and_resets_are_retried_and_no_client_sees_them() {
    let Some((url, bucket, weed)) = services().await else {
        return;
    };
    let proxy = FaultProxy::start(weed.endpoint(), 5, 50).await;
    let endpoint = proxy.endpoint();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(
            TestRegistry::start_with(|c| {
                use_object_store(c, &url, &endpoint, &bucket);
                // Every pull goes to the store, through the faults.
                c.storage.s3.as_mut().unwrap().read_cache_mib = 0;
            })
            .await,
        );
    }
    let nodes = &nodes;
    // 180 small pushes (one PutObject or a part each) and 20 of 12 MiB in
    // 4 MiB PATCHes (multipart: create, parts, complete), each pulled back
    // from another node.
    let failures: Vec<String> = futures_util::stream::iter(0..200u64)
        .map(|i| async move {
            let (pusher, puller) = (&nodes[i as usize % 3], &nodes[(i as usize + 1) % 3]);
            let repo = format!("faults/r{}", i % 7);
            let data = match i % 10 {
                0 => payload(12 << 20, 1000 + i),
                _ => payload(64 * 1024 + (i as usize * 997) % (512 * 1024), 1000 + i),
            };
            let d = digest(&data);
            let status = match data.len() > 8 << 20 {
                false => pusher.push_mono_status(&repo, &data).await,
                true => {
                    let path = pusher.start_upload(&repo).await;
                    let mut at = 0;
                    for chunk in data.chunks(4 << 20) {
                        let r = pusher.patch_chunk(&path, at, chunk).await;
                        if r.status() != 202 {
                            return Some(format!("{i}: PATCH {}", r.status()));
                        }
                        at += chunk.len();
                    }
                    pusher.finish_upload(&path, &d).await.status().as_u16()
                }
            };
            if status != 201 {
                return Some(format!("{i}: push {status}"));
            }
            let r = puller.get_blob(&repo, &d).await;
            if r.status() != 200 {
                return Some(format!("{i}: pull {}", r.status()));
            }
            match r.bytes().await {
                Ok(b) if b.as_ref() == data.as_slice() => None,
                Ok(b) => Some(format!("{i}: {} bytes back of {}", b.len(), data.len())),
                Err(e) => Some(format!("{i}: pull body {e}")),
            }
        })
        .buffer_unordered(16)
        .filter_map(|f| async move { f })
        .collect()
        .await;
    let (requests, slowdowns, resets) = (
        proxy.counts.requests.load(Ordering::Relaxed),
        proxy.counts.slowdowns.load(Ordering::Relaxed),
        proxy.counts.resets.load(Ordering::Relaxed),
    );
    eprintln!(
        "fault proxy: {requests} requests, {slowdowns} answered 503 SlowDown, {resets} reset"
    );
    assert!(failures.is_empty(), "client-visible failures: {failures:?}");
    assert!(
        slowdowns > 50 && resets > 5,
        "the faults happened: {slowdowns} / {resets}"
    );
}

/// A multipart upload made behind Wharf's back (a lost abort looks the
/// same) is aborted by the purge once older than the idle timeout; the
/// one a live session owns stays, and that session completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_purge_aborts_orphaned_multipart_uploads_only() {
    let Some((url, bucket, weed)) = services().await else {
        return;
    };
    let endpoint = weed.endpoint();
    let node = TestRegistry::start_with(|c| {
        use_object_store(c, &url, &endpoint, &bucket);
        c.upload_idle_timeout_secs = 4;
        c.upload_purge_interval_secs = 1;
    })
    .await;
    let s3 = wharf::s3::S3Client::new(&weed.settings(&bucket)).unwrap();
    // A session whose first PATCH cuts a part: it owns a multipart upload.
    let data = payload(9 << 20, 77);
    let path = node.start_upload("orphans/app").await;
    let first = 8 << 20;
    assert_eq!(
        node.patch_chunk(&path, 0, &data[..first]).await.status(),
        202
    );
    let orphan = s3
        .create_multipart("blobs/made-behind-wharfs-back")
        .await
        .unwrap();
    let listed = s3.list_multipart_uploads("blobs/").await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let owned = listed
        .iter()
        .find(|(_, id, _)| *id != orphan)
        .unwrap()
        .1
        .clone();

    // Kept alive by small PATCHes while the orphan ages past the timeout.
    let mut at = first;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        let r = node.patch_chunk(&path, at, &data[at..at + 1024]).await;
        assert_eq!(r.status(), 202, "the live session was purged");
        at += 1024;
        let ids: Vec<String> = s3
            .list_multipart_uploads("blobs/")
            .await
            .unwrap()
            .into_iter()
            .map(|(_, id, _)| id)
            .collect();
        assert!(
            ids.contains(&owned),
            "the live session's upload was aborted"
        );
        if !ids.contains(&orphan) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the orphan was never aborted"
        );
    }
    assert_eq!(node.patch_chunk(&path, at, &data[at..]).await.status(), 202);
    let d = digest(&data);
    assert_eq!(node.finish_upload(&path, &d).await.status(), 201);
    let back = node
        .get_blob("orphans/app", &d)
        .await
        .bytes()
        .await
        .unwrap();
    assert!(back.as_ref() == data.as_slice());
}

/// A crowd of pushes to one object-store node stays inside the memory
/// budget: 500 concurrent 6 MiB pushes with `upload_memory_budget_mib =
/// 64` all succeed and the node's peak stays bounded (see the bound). Parts
/// wait for memory at the node, bytes below a part wait on its scratch
/// disk, and a waiting connection holds one read buffer (64 KiB). (Before
/// the budget covered parts, 500 such pushes peaked at 3.2 GiB; with a
/// 256 KiB read buffer, at 360-414 MiB; see docs/performance.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_of_pushes_stays_inside_the_memory_budget() {
    let Some((url, bucket, weed)) = services().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wharf.toml");
    let budget_mib = 64;
    std::fs::write(
        &config,
        format!(
            "upload_memory_budget_mib = {budget_mib}\n[log]\naccess = false\n\
             [metadata]\nbackend = \"postgres\"\nurl = \"{url}\"\n\
             [storage]\nbackend = \"s3\"\n[storage.s3]\nendpoint = \"{}\"\nbucket = \"{bucket}\"\n\
             access_key_id = \"{S3_KEY}\"\nsecret_access_key = \"{S3_SECRET}\"\nread_cache_mib = 0\n",
            weed.endpoint()
        ),
    )
    .unwrap();
    // The binary, so its peak RSS is the node's alone.
    let wharf = WharfProcess::start_args(
        &dir.path().join("node"),
        &["--config".as_ref(), config.as_os_str()],
    );
    let client = reqwest::Client::new();
    // One shared 6 MiB body with an 8-byte tail of its own per push: the
    // test holds 6 MiB, not 3 GiB, and hashes the shared part once.
    let shared = bytes::Bytes::from(payload((6 << 20) - 8, 9));
    let hashed = {
        use sha2::Digest as _;
        sha2::Sha256::new_with_prefix(&shared)
    };
    let pushes: Vec<_> = (0..500u64)
        .map(|i| {
            let (client, base, shared) = (client.clone(), wharf.base.clone(), shared.clone());
            let tail = bytes::Bytes::copy_from_slice(&i.to_le_bytes());
            let d = {
                use sha2::Digest as _;
                let mut h = hashed.clone();
                h.update(&tail);
                format!("sha256:{}", hex::encode(h.finalize()))
            };
            tokio::spawn(async move {
                let parts: Vec<Result<bytes::Bytes, std::io::Error>> = vec![Ok(shared), Ok(tail)];
                let r = client
                    .post(format!("{base}/v2/crowd/n{i}/blobs/uploads/?digest={d}"))
                    .header("content-length", (6u64 << 20).to_string())
                    .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                        parts,
                    )))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 201 => Ok(()),
                    Ok(r) => Err(format!(
                        "n{i}: {} {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    )),
                    Err(e) => Err(format!("n{i}: {e}")),
                }
            })
        })
        .collect();
    let mut failed = Vec::new();
    for p in pushes {
        if let Err(e) = p.await.unwrap() {
            failed.push(e);
        }
    }
    if !failed.is_empty() {
        // What the node said about it: the reason a push was cut short.
        let said: Vec<String> = wharf
            .log_lines()
            .into_iter()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .take(20)
            .collect();
        panic!(
            "{} of 500 pushes failed, first: {:?}\nnode warnings:\n{}",
            failed.len(),
            &failed[..failed.len().min(3)],
            said.join("\n")
        );
    }
    let peak_mib = wharf.status_kib("VmHWM") / 1024;
    eprintln!("peak RSS under 500 concurrent 6 MiB pushes to the object store (budget {budget_mib} MiB): {peak_mib} MiB");
    // The figure is budget + 200 MiB. This machine measures
    // 255-265 MiB with the crowd alone (loadtest/compare-s3.sh) but
    // 261-294 MiB inside the full suite, whose other tests slow the
    // node's draining; the bound leaves room for that. Without the
    // budget covering parts it was 3.2 GiB.
    assert!(
        peak_mib <= budget_mib + 300,
        "peak RSS {peak_mib} MiB, over budget + 300 MiB"
    );
}
