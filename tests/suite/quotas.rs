//! Storage quotas (`[[quota]]`) over real sockets: writes over a quota
//! refused with 403 and nothing linked, shared blobs counted once, usage
//! exact when pushes race for the last bytes, lowered by deletes and GC,
//! and counted from existing data when a quota first appears. In the
//! cluster pass the same tests run through three object-store nodes.

use crate::common::services::{skip_without, Postgres};
use crate::common::*;
use serde_json::json;
use wharf::config::{ByteCount, QuotaConfig};

fn quota(pattern: &str, bytes: u64) -> QuotaConfig {
    QuotaConfig {
        repositories: pattern.into(),
        max_bytes: ByteCount(bytes),
    }
}

/// The quota's usage as `/_wharf/quotas` reports it.
async fn used(reg: &TestRegistry, pattern: &str) -> u64 {
    let v = reg.get_json("/_wharf/quotas").await;
    v["quotas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["repositories"] == pattern)
        .unwrap_or_else(|| panic!("no quota {pattern} in {v}"))["used_bytes"]
        .as_u64()
        .unwrap()
}

async fn refused(r: reqwest::Response, words: &[&str]) {
    assert_eq!(r.status(), 403);
    let body = r.text().await.unwrap();
    assert!(body.contains("DENIED"), "{body}");
    for w in words {
        assert!(body.contains(w), "{w:?} not in {body}");
    }
}

async fn push(reg: &TestRegistry, repo: &str, data: &[u8]) -> reqwest::Response {
    reg.push_mono_as(repo, data, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_over_a_quota_are_refused_and_shared_blobs_count_once() {
    let reg = TestRegistry::start_with(|c| c.quota = vec![quota("team-a/**", 10_240)]).await;
    let first = payload(6_144, 1);
    assert_eq!(push(&reg, "team-a/x", &first).await.status(), 201);
    assert_eq!(used(&reg, "team-a/**").await, 6_144);

    // 6 KiB more would make 12 KiB of 10: refused, named, nothing linked.
    let second = payload(6_144, 2);
    refused(
        push(&reg, "team-a/y", &second).await,
        &["quota team-a/**", "10.0 KiB", "6.0 KiB"],
    )
    .await;
    assert_eq!(
        reg.get_blob("team-a/y", &digest(&second)).await.status(),
        404
    );
    assert_eq!(used(&reg, "team-a/**").await, 6_144);

    // The same bytes in another repository of the quota add nothing.
    assert_eq!(push(&reg, "team-a/y", &first).await.status(), 201);
    let r = reg
        .client
        .post(reg.url(&format!(
            "/v2/team-a/z/blobs/uploads/?mount={}&from=team-a/x",
            digest(&first)
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "mount");
    assert_eq!(used(&reg, "team-a/**").await, 6_144);
    // Outside the quota nothing is counted or refused.
    assert_eq!(push(&reg, "team-b/x", &second).await.status(), 201);

    // A manifest is counted too, and refused when it does not fit.
    let config = payload(3_000, 3);
    assert_eq!(push(&reg, "team-a/x", &config).await.status(), 201);
    let manifest = |pad: usize| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
            "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &first)],
            "annotations": { "pad": "x".repeat(pad) },
        }))
        .unwrap()
    };
    let big = manifest(2_000);
    refused(
        reg.put_manifest("team-a/x", "big", OCI_MANIFEST, &big)
            .await,
        &["quota team-a/**"],
    )
    .await;
    assert_eq!(reg.get("/v2/team-a/x/manifests/big").await.status(), 404);
    let small = manifest(1);
    let r = reg
        .put_manifest("team-a/x", "v1", OCI_MANIFEST, &small)
        .await;
    assert_eq!(r.status(), 201);
    let total = 6_144 + 3_000 + small.len() as u64;
    assert_eq!(used(&reg, "team-a/**").await, total);

    // Full to the byte: an upload is refused before its body is read.
    let rest = payload((10_240 - total) as usize, 4);
    assert_eq!(push(&reg, "team-a/w", &rest).await.status(), 201);
    assert_eq!(used(&reg, "team-a/**").await, 10_240);
    refused(
        reg.client
            .post(reg.url("/v2/team-a/w/blobs/uploads/"))
            .send()
            .await
            .unwrap(),
        &["quota team-a/**"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_and_garbage_collection_lower_usage() {
    let reg = TestRegistry::start_with(|c| {
        c.quota = vec![quota("q/**", 1 << 20)];
        c.gc_grace_secs = 0;
        c.metrics.addr = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let image = reg.image_manifest("q/app", 5, 2).await;
    let body = serde_json::to_vec(&image).unwrap();
    assert_eq!(
        reg.put_manifest("q/app", "v1", OCI_MANIFEST, &body)
            .await
            .status(),
        201
    );
    // The config ({"seed":5}) and two layers.
    let blobs = "{\"seed\":5}".len() as u64 + 1000 + 1001;
    assert_eq!(used(&reg, "q/**").await, blobs + body.len() as u64);

    let r = reg
        .delete(&format!("/v2/q/app/manifests/{}", digest(&body)))
        .await;
    assert_eq!(r.status(), 202);
    assert_eq!(used(&reg, "q/**").await, blobs);
    // GC spares what was linked in the second it runs.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r = reg
        .client
        .post(reg.url("/_wharf/gc?grace_secs=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(used(&reg, "q/**").await, 0);

    // A blob deleted through the API lowers it at once.
    let data = payload(700, 9);
    assert_eq!(push(&reg, "q/other", &data).await.status(), 201);
    assert_eq!(used(&reg, "q/**").await, 700);
    let r = reg
        .delete(&format!("/v2/q/other/blobs/{}", digest(&data)))
        .await;
    assert_eq!(r.status(), 202);
    assert_eq!(used(&reg, "q/**").await, 0);

    // Node 0's metrics (each node has its own listener).
    let ops = reg.server.as_ref().unwrap().metrics_addr().unwrap();
    let text = reqwest::get(format!("http://{ops}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("wharf_quota_used_bytes{quota=\"q/**\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("wharf_quota_limit_bytes{quota=\"q/**\"} 1048576"),
        "{text}"
    );
}

/// Twenty pushes of 4 KiB race for room for ten: exactly ten win, every
/// other one is refused, and usage is what the winners hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_pushes_racing_to_the_limit_never_overshoot() {
    const BLOB: usize = 4_096;
    let limit = 10 * BLOB as u64 + 100;
    let reg = std::sync::Arc::new(
        TestRegistry::start_with(move |c| c.quota = vec![quota("race/**", limit)]).await,
    );
    let mut tasks = Vec::new();
    for i in 0..20u64 {
        let reg = reg.clone();
        tasks.push(tokio::spawn(async move {
            let data = payload(BLOB, 100 + i);
            push(&reg, &format!("race/r{}", i % 4), &data)
                .await
                .status()
                .as_u16()
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    let won = codes.iter().filter(|c| **c == 201).count();
    let lost = codes.iter().filter(|c| **c == 403).count();
    assert_eq!((won, lost), (10, 10), "{codes:?}");
    let u = used(&reg, "race/**").await;
    assert_eq!(u, 10 * BLOB as u64);
    assert!(u <= limit);
}

/// Data pushed before a quota existed counts from the first start with it.
async fn existing_data_counts(metadata_url: Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let configure = |quotas: Vec<QuotaConfig>| {
        let mut c = config_for(dir.path().to_path_buf());
        if let Some(url) = &metadata_url {
            c.metadata.backend = wharf::config::MetadataBackend::Postgres;
            c.metadata.url = Some(url.clone());
        }
        c.quota = quotas;
        c
    };
    let mut reg = TestRegistry::start_config(configure(Vec::new())).await;
    let (a, b) = (payload(1_000, 1), payload(2_000, 2));
    for repo in ["old/x", "old/y"] {
        assert_eq!(push(&reg, repo, &a).await.status(), 201);
    }
    assert_eq!(push(&reg, "old/y", &b).await.status(), 201);
    assert_eq!(push(&reg, "new/z", &b).await.status(), 201);
    reg.server.take().unwrap().shutdown().await;

    let reg = TestRegistry::start_config(configure(vec![quota("old/**", 10_000)])).await;
    assert_eq!(used(&reg, "old/**").await, 3_000, "a counted once, b once");
    reg.server.unwrap().shutdown().await;
    // Removed, then configured again: counted afresh, not from stale rows.
    let reg = TestRegistry::start_config(configure(Vec::new())).await;
    assert_eq!(push(&reg, "old/x", &b).await.status(), 201);
    assert_eq!(
        reg.delete(&format!("/v2/old/y/blobs/{}", digest(&a)))
            .await
            .status(),
        202
    );
    reg.server.unwrap().shutdown().await;
    let reg = TestRegistry::start_config(configure(vec![quota("old/**", 10_000)])).await;
    assert_eq!(used(&reg, "old/**").await, 3_000);
    let listed = reg.get("/_wharf/quotas").await.text().await.unwrap();
    assert!(listed.contains("\"max_bytes\":10000"), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_data_counts_from_the_first_start_with_a_quota() {
    if skip_in_cluster("restarts one data-folder node with another configuration") {
        return;
    }
    existing_data_counts(None).await;
    if skip_without("PostgreSQL", Postgres::shared().is_some()) {
        return;
    }
    existing_data_counts(Some(Postgres::shared().unwrap().fresh_database())).await;
}
