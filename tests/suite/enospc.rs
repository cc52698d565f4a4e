//! A full disk: pushes get a clear 5xx OCI error (no hang, no crash), reads
//! keep working, nothing acknowledged is damaged, and pushes work again once
//! space is freed. The data folder is a small tmpfs, so this needs root
//! (CI runs as root); WHARF_SKIP_ENOSPC=1 skips it elsewhere.

use crate::common::*;
use std::process::Command;
use std::time::Duration;

struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_fails_cleanly_and_recovers() {
    if std::env::var_os("WHARF_SKIP_ENOSPC").is_some() {
        eprintln!("WHARF_SKIP_ENOSPC set: full-disk test skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=40m", "tmpfs"])
        .arg(&mnt)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "cannot mount a tmpfs (needs root; set WHARF_SKIP_ENOSPC=1 to skip)"
    );
    let _guard = Tmpfs(mnt.clone());
    let reg = TestRegistry::start_config(config_for(mnt.join("root"))).await;

    let first = payload(8 << 20, 1);
    let first_d = reg.push_mono("full", &first).await;
    let m = serde_json::to_vec(&reg.image_manifest("full", 2, 1).await).unwrap();
    assert_eq!(
        reg.put_manifest("full", "keep", OCI_MANIFEST, &m)
            .await
            .status(),
        201
    );

    // Fill the disk: monolithic and chunked pushes must fail with 507.
    let mut failed_mono = false;
    let mut pushed = Vec::new();
    for i in 0..10u64 {
        let data = payload(6 << 20, 100 + i);
        let d = digest(&data);
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            reg.client
                .post(reg.url(&format!("/v2/full/blobs/uploads/?digest={d}")))
                .body(data)
                .send(),
        )
        .await
        .expect("a push on a full disk must not hang")
        .unwrap();
        if r.status() == 201 {
            pushed.push(d);
            continue;
        }
        assert_oci_error(r, 507, "STORAGE_FULL").await;
        failed_mono = true;
        break;
    }
    assert!(failed_mono, "the disk never filled");

    let loc = reg.start_upload("full").await;
    let r = reg
        .client
        .patch(reg.url(&loc))
        .header("content-range", format!("0-{}", (12 << 20) - 1))
        .body(payload(12 << 20, 5))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 507);
    // The session survives at a consistent offset.
    let r = reg.get(&loc).await;
    assert_eq!(r.status(), 204);

    // Reads keep working, and what was acknowledged is intact.
    let got = reg.get_blob("full", &first_d).await.bytes().await.unwrap();
    assert_eq!(&got[..], &first[..]);
    let g = reg.get("/v2/full/manifests/keep").await;
    assert_eq!(g.bytes().await.unwrap(), m);

    // Free space: cancel the session, delete blobs, collect garbage.
    reg.delete(&loc).await;
    for d in &pushed {
        let r = reg.delete(&format!("/v2/full/blobs/{d}")).await;
        assert_eq!(r.status(), 202);
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = reg
        .client
        .post(reg.url("/_wharf/gc?grace_secs=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let again = payload(6 << 20, 999);
    reg.push_mono("full", &again).await;
    let got = reg
        .get_blob("full", &digest(&again))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(&got[..], &again[..]);
}
