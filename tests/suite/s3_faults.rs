//! A throttled, flaky object store (issue 23): a proxy answers 503
//! SlowDown to one request in five and drops one connection in fifty.
//! Three nodes push and pull through it; the nodes retry with backoff
//! inside each request's deadline, so no client sees an error and every
//! blob reads back whole.

use crate::common::fault_proxy::FaultProxy;
use crate::common::services::{skip_without, use_object_store, Postgres, Seaweed};
use crate::common::*;
use futures_util::StreamExt;
use std::sync::atomic::Ordering;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slowdowns_and_resets_are_retried_and_no_client_sees_them() {
    if cluster_mode() {
        return;
    }
    let (Some(pg), Some(weed)) = (Postgres::shared(), Seaweed::shared()) else {
        skip_without("postgresql and seaweedfs", false);
        return;
    };
    let url = pg.fresh_database();
    let bucket = weed.fresh_bucket().await;
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
