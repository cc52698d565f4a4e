//! Garbage collection over real sockets: what it frees, what it keeps, the
//! grace period, dry runs, untagged manifests, and GC racing pushes.

use crate::common::*;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

pub(crate) async fn gc(reg: &TestRegistry, query: &str) -> Value {
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
    let files_before = reg.stored_blobs();

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
    assert_eq!(reg.stored_blobs(), files_before, "dry run deleted");
    let done = gc(&reg, "grace_secs=0").await;
    assert_eq!(dry["blobs_removed"], done["blobs_removed"]);
    assert_eq!(dry["bytes_freed"], done["bytes_freed"]);
    // b's manifest bytes, config and 2 layers, and the lonely upload.
    assert_eq!(done["blobs_removed"], 5, "{done}");
    assert_eq!(reg.stored_blobs(), files_before - 5);
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

/// Sleeps until `frac` seconds after the start of the next wall-clock
/// second.
async fn sleep_until_second(frac: f64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let target = now.floor() + 1.0 + frac;
    tokio::time::sleep(Duration::from_secs_f64(target - now)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_running_in_a_loop_never_breaks_pushes_in_flight() {
    // Layers are pushed, then the manifest naming them, as docker does;
    // GC runs back to back the whole time with a 1 s grace. Links carry
    // whole seconds, so the links of second S become collectable at S+2:
    // each manifest PUT is timed to land right then, racing GC's unlink of
    // its layers. Every PUT must either win (201, and its layers stay) or
    // lose cleanly (400 MANIFEST_BLOB_UNKNOWN); a 201 with a layer gone
    // would be a dangling reference. Without the re-checks inside the
    // metadata transactions (the PUT's "blobs still linked", GC's "still
    // unreferenced") such PUTs do happen.
    let reg = Arc::new(TestRegistry::start().await);
    pushes_racing_gc(reg.clone(), vec![reg]).await;
}

/// The race above, with GC running on `collector` and each pusher sending
/// its layers to one of `pushers` and its manifest to the next (the same
/// registry, or nodes of one cluster).
pub async fn pushes_racing_gc(collector: Arc<TestRegistry>, pushers: Vec<Arc<TestRegistry>>) {
    let reg = pushers[0].clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let collector = {
        let (reg, stop) = (collector, stop.clone());
        tokio::spawn(async move {
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                gc(&reg, "grace_secs=1").await;
                runs += 1;
            }
            runs
        })
    };
    let nodes = pushers;
    let mut pushers = Vec::new();
    for w in 0..16u64 {
        let (reg, next) = (
            nodes[w as usize % nodes.len()].clone(),
            nodes[(w as usize + 1) % nodes.len()].clone(),
        );
        pushers.push(tokio::spawn(async move {
            let mut won = Vec::new();
            let mut lost = 0;
            for i in 0..4u64 {
                let repo = format!("race/w{w}");
                // Upload early in a second S, PUT around S+2: the workers
                // spread from 20 ms before to 20 ms after it. The first
                // worker's last PUT comes at S+3.5, when GC (looping) has
                // surely unlinked its layers: the refusal path is taken in
                // every run, not only when the timing happens to hit it.
                sleep_until_second(0.05).await;
                let m = reg.image_manifest(&repo, w * 100 + i, 2).await;
                sleep_until_second(0.98 + w as f64 * 0.0025).await;
                if w == 0 && i == 3 {
                    sleep_until_second(0.5).await;
                    sleep_until_second(0.5).await;
                }
                let body = serde_json::to_vec(&m).unwrap();
                let r = next
                    .put_manifest(&repo, &format!("t{i}"), OCI_MANIFEST, &body)
                    .await;
                match r.status().as_u16() {
                    201 => won.push((repo, i)),
                    400 => {
                        let e: Value = r.json().await.unwrap();
                        assert_eq!(e["errors"][0]["code"], "MANIFEST_BLOB_UNKNOWN", "{e}");
                        lost += 1;
                    }
                    s => panic!("manifest PUT answered {s}: {}", r.text().await.unwrap()),
                }
            }
            (won, lost)
        }));
    }
    let mut won = Vec::new();
    let mut lost = 0;
    for p in pushers {
        let (w, l) = p.await.unwrap();
        won.extend(w);
        lost += l;
    }
    // More collections after the pushes: a dangling reference shows now.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(collector.await.unwrap() > 0);
    eprintln!(
        "manifest PUTs racing GC: {} won, {lost} lost cleanly",
        won.len()
    );
    // Both sides of the race were taken: PUTs that beat GC's unlink and
    // kept their layers, and PUTs that GC beat, refused cleanly.
    assert!(!won.is_empty(), "no manifest PUT won against GC");
    assert!(
        lost > 0,
        "no manifest PUT lost to GC: the race was not exercised"
    );
    // Every image that was acknowledged pulls whole.
    for (repo, i) in &won {
        let m: Value = reg.get_json(&format!("/v2/{repo}/manifests/t{i}")).await;
        for l in m["layers"].as_array().unwrap().iter().chain([&m["config"]]) {
            let d = l["digest"].as_str().unwrap();
            let r = reg.get_blob(repo, d).await;
            assert_eq!(
                r.status(),
                200,
                "{repo} t{i}: {d} is gone (dangling reference)"
            );
            assert_eq!(digest(&r.bytes().await.unwrap()), d);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_racing_repushes_of_deleted_manifests_keeps_their_bytes() {
    // A manifest deleted earlier leaves its bytes for GC. Pushed again while
    // GC runs, it is indexed anew, and GC, working from a view taken before
    // that push, must not remove the bytes the new row points at.
    let reg = Arc::new(TestRegistry::start().await);
    let base = reg.image_manifest("re", 1, 1).await;
    // A tagged keeper holds the layers, so only manifest bytes are at stake.
    let keeper = serde_json::to_vec(&base).unwrap();
    assert_eq!(
        reg.put_manifest("re", "keeper", OCI_MANIFEST, &keeper)
            .await
            .status(),
        201
    );
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..400)
            .map(|i| {
                let mut m = base.clone();
                m["annotations"] = json!({ "n": i.to_string() });
                serde_json::to_vec(&m).unwrap()
            })
            .collect(),
    );
    let push_all = |reg: Arc<TestRegistry>, bodies: Arc<Vec<Vec<u8>>>| async move {
        let mut tasks = Vec::new();
        for w in 0..8 {
            let (reg, bodies) = (reg.clone(), bodies.clone());
            tasks.push(tokio::spawn(async move {
                for (i, b) in bodies.iter().enumerate().skip(w).step_by(8) {
                    let r = reg
                        .put_manifest("re", &format!("m{i}"), OCI_MANIFEST, b)
                        .await;
                    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    };
    let mut lost = 0;
    for round in 0..4 {
        push_all(reg.clone(), bodies.clone()).await;
        for b in bodies.iter() {
            let r = reg.delete(&format!("/v2/re/manifests/{}", digest(b))).await;
            assert_eq!(r.status(), 202);
        }
        // Older than the grace: GC may take the bytes of every deleted one.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let collector = {
            let reg = reg.clone();
            tokio::spawn(async move { gc(&reg, "grace_secs=1").await })
        };
        push_all(reg.clone(), bodies.clone()).await;
        collector.await.unwrap();
        for (i, b) in bodies.iter().enumerate() {
            let r = reg.get(&format!("/v2/re/manifests/m{i}")).await;
            if r.status() != 200 {
                lost += 1;
                eprintln!("round {round}: m{i} answers {} after GC", r.status());
                continue;
            }
            assert_eq!(&r.bytes().await.unwrap()[..], &b[..]);
        }
    }
    assert_eq!(lost, 0, "re-pushed manifests lost their bytes to GC");
}
