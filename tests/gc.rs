//! Garbage collection over real sockets: what it frees, what it keeps, the
//! grace period, dry runs, untagged manifests, and GC racing pushes.

mod common;

use common::*;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

async fn gc(reg: &TestRegistry, query: &str) -> Value {
    let r = reg
        .client
        .post(reg.url(&format!("/_wharf/gc?{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frees_deleted_images_and_unreferenced_uploads_and_keeps_the_rest() {
    let reg = TestRegistry::start().await;
    // Images a and b share their config's repo-mates but not layers; a
    // layer shared by both must survive b's deletion.
    let shared = payload(5000, 1);
    reg.push_mono("app", &shared).await;
    let a = reg.image_manifest("app", 10, 2).await;
    let b = reg.image_manifest("app", 11, 2).await;
    let with_shared = |mut m: Value| {
        m["layers"].as_array_mut().unwrap().push(descriptor(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            &shared,
        ));
        serde_json::to_vec(&m).unwrap()
    };
    let (a, b) = (with_shared(a), with_shared(b));
    assert_eq!(
        reg.put_manifest("app", "a", OCI_MANIFEST, &a)
            .await
            .status(),
        201
    );
    assert_eq!(
        reg.put_manifest("app", "b", OCI_MANIFEST, &b)
            .await
            .status(),
        201
    );
    let lonely = payload(7777, 2);
    let lonely_d = reg.push_mono("app", &lonely).await;
    let files_before = blob_files(&reg.root).len();

    // Within the grace period nothing goes.
    let r = gc(&reg, "grace_secs=3600").await;
    assert_eq!(r["blobs_removed"], 0);

    let r = reg
        .delete(&format!("/v2/app/manifests/{}", digest(&b)))
        .await;
    assert_eq!(r.status(), 202);
    // Make everything older than a zero grace.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let dry = gc(&reg, "grace_secs=0&dry_run=true").await;
    assert_eq!(blob_files(&reg.root).len(), files_before, "dry run deleted");
    let done = gc(&reg, "grace_secs=0").await;
    assert_eq!(dry["blobs_removed"], done["blobs_removed"]);
    assert_eq!(dry["bytes_freed"], done["bytes_freed"]);
    // b's manifest bytes, config and 2 layers, and the lonely upload.
    assert_eq!(done["blobs_removed"], 5, "{done}");
    assert_eq!(blob_files(&reg.root).len(), files_before - 5);
    assert_oci_error(reg.get_blob("app", &lonely_d).await, 404, "BLOB_UNKNOWN").await;

    // a pulls whole.
    let m: Value = reg.get_json("/v2/app/manifests/a").await;
    for l in m["layers"].as_array().unwrap().iter().chain([&m["config"]]) {
        let d = l["digest"].as_str().unwrap();
        let got = reg.get_blob("app", d).await.bytes().await.unwrap();
        assert_eq!(digest(&got), d);
    }
    // A second run finds nothing more.
    let again = gc(&reg, "grace_secs=0").await;
    assert_eq!(again["blobs_removed"], 0);
    assert_eq!(again["links_removed"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untagged_manifests_are_kept_or_removed_by_setting() {
    for delete_untagged in [false, true] {
        let reg = TestRegistry::start_with(|c| c.gc_delete_untagged = delete_untagged).await;
        let m = serde_json::to_vec(&reg.image_manifest("u", 20, 1).await).unwrap();
        let d = digest(&m);
        assert_eq!(
            reg.put_manifest("u", &d, OCI_MANIFEST, &m).await.status(),
            201
        );
        // An index keeps its untagged children alive.
        let child = serde_json::to_vec(&reg.image_manifest("u", 21, 1).await).unwrap();
        reg.put_manifest("u", &digest(&child), OCI_MANIFEST, &child)
            .await;
        let idx = json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest(&child), "size": child.len()}]});
        let idx = serde_json::to_vec(&idx).unwrap();
        assert_eq!(
            reg.put_manifest("u", "multi", OCI_INDEX, &idx)
                .await
                .status(),
            201
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let r = gc(&reg, "grace_secs=0").await;
        let status = reg.get(&format!("/v2/u/manifests/{d}")).await.status();
        if delete_untagged {
            assert_eq!(r["manifests_removed"], 1, "{r}");
            assert_eq!(status, 404);
        } else {
            assert_eq!(r["manifests_removed"], 0);
            assert_eq!(status, 200);
        }
        let c = reg
            .get(&format!("/v2/u/manifests/{}", digest(&child)))
            .await;
        assert_eq!(c.status(), 200, "index child was collected");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_running_in_a_loop_never_breaks_pushes_in_flight() {
    // Layers are pushed, then a moment later the manifest naming them, as
    // docker does; GC runs back to back the whole time with a short grace.
    let reg = Arc::new(TestRegistry::start().await);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let collector = {
        let (reg, stop) = (reg.clone(), stop.clone());
        tokio::spawn(async move {
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                gc(&reg, "grace_secs=2").await;
                runs += 1;
            }
            runs
        })
    };
    let mut pushers = Vec::new();
    for w in 0..8u64 {
        let reg = reg.clone();
        pushers.push(tokio::spawn(async move {
            for i in 0..6u64 {
                let repo = format!("race/w{w}");
                let m = reg.image_manifest(&repo, w * 100 + i, 2).await;
                tokio::time::sleep(Duration::from_millis(150)).await;
                let body = serde_json::to_vec(&m).unwrap();
                let r = reg
                    .put_manifest(&repo, &format!("t{i}"), OCI_MANIFEST, &body)
                    .await;
                assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
                // Delete every other image so GC has real work.
                if i % 2 == 1 {
                    reg.delete(&format!("/v2/{repo}/manifests/{}", digest(&body)))
                        .await;
                }
            }
        }));
    }
    for p in pushers {
        p.await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(collector.await.unwrap() > 0);
    // Every tagged image pulls whole.
    for w in 0..8 {
        for i in (0..6).step_by(2) {
            let m: Value = reg.get_json(&format!("/v2/race/w{w}/manifests/t{i}")).await;
            for l in m["layers"].as_array().unwrap().iter().chain([&m["config"]]) {
                let d = l["digest"].as_str().unwrap();
                let r = reg.get_blob(&format!("race/w{w}"), d).await;
                assert_eq!(r.status(), 200, "{d} lost");
                assert_eq!(digest(&r.bytes().await.unwrap()), d);
            }
        }
    }
}
