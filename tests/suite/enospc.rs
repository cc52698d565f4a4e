//! A full disk: every write answers 507 with an OCI error (no 500, no hang,
//! no crash), reads keep working, deletes and garbage collection work while
//! the disk is full, and pushes work again once space exists, without a
//! restart; everything acknowledged reads back byte for byte. The data
//! folder is a small tmpfs, so this needs root (CI runs as root);
//! WHARF_SKIP_ENOSPC=1 skips it elsewhere.

use crate::common::*;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// A fresh tmpfs of `mib` MiB, or None when the test is to be skipped.
fn tmpfs(mib: u32) -> Option<Tmpfs> {
    if std::env::var_os("WHARF_SKIP_ENOSPC").is_some() {
        eprintln!("WHARF_SKIP_ENOSPC set: full-disk test skipped");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small");
    std::fs::create_dir(&path).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
        .arg(&path)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "cannot mount a tmpfs (needs root; set WHARF_SKIP_ENOSPC=1 to skip)"
    );
    Some(Tmpfs { path, _dir: dir })
}

const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A manifest naming the config blob and one layer.
fn manifest(config: &[u8], layer: &[u8], seed: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": [descriptor(LAYER, layer)],
        "annotations": { "seed": seed.to_string() },
    }))
    .unwrap()
}

/// What a pusher got acknowledged with 201.
struct Pushed {
    layer: Vec<u8>,
    tag: String,
    manifest: Vec<u8>,
}

/// Asserts a 507 STORAGE_FULL answer, whatever the write was.
async fn assert_full(what: &str, r: reqwest::Response) {
    let status = r.status().as_u16();
    let body = r.text().await.unwrap_or_default();
    assert_eq!(status, 507, "{what} on a full disk: {status} {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("OCI error JSON");
    assert_eq!(v["errors"][0]["code"], "STORAGE_FULL", "{what}: {body}");
}

async fn disk_full_gauge(reg: &TestRegistry) -> String {
    let ops = reg.server.as_ref().unwrap().metrics_addr().unwrap();
    let text = reqwest::get(format!("http://{ops}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with("wharf_disk_full "))
        .unwrap_or("wharf_disk_full missing")
        .to_string()
}

/// Pushes until the disk refuses: a 512 KiB layer and a manifest naming
/// it, again and again; the first refusal must be a clean 507.
async fn push_until_full(reg: &TestRegistry, config: &[u8], worker: u64) -> Vec<Pushed> {
    let mut done = Vec::new();
    for i in 0.. {
        let seed = worker * 10_000 + i;
        let layer = payload(512 << 10, seed);
        let d = digest(&layer);
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            reg.client
                .post(reg.url(&format!("/v2/full/blobs/uploads/?digest={d}")))
                .body(layer.clone())
                .send(),
        )
        .await
        .expect("a push on a full disk must not hang")
        .unwrap();
        if r.status() != 201 {
            assert_full("monolithic blob push", r).await;
            break;
        }
        let tag = format!("w{worker}-{i}");
        let m = manifest(config, &layer, seed);
        let r = reg.put_manifest("full", &tag, OCI_MANIFEST, &m).await;
        if r.status() != 201 {
            assert_full("manifest PUT", r).await;
            break;
        }
        done.push(Pushed {
            layer,
            tag,
            manifest: m,
        });
    }
    done
}

async fn assert_reads_back(reg: &TestRegistry, pushed: &[Pushed]) {
    for p in pushed {
        let got = reg.get_blob("full", &digest(&p.layer)).await;
        assert_eq!(got.status(), 200, "layer of {}", p.tag);
        assert!(got.bytes().await.unwrap() == p.layer, "layer of {}", p.tag);
        let got = reg.get(&format!("/v2/full/manifests/{}", p.tag)).await;
        assert_eq!(got.status(), 200, "manifest {}", p.tag);
        assert_eq!(got.bytes().await.unwrap(), p.manifest, "manifest {}", p.tag);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_answers_507_frees_space_through_the_api_and_recovers() {
    let Some(mnt) = tmpfs(64) else { return };
    let mut cfg = config_for(mnt.path.join("root"));
    // The default reserve (64 MiB) on this 64 MiB volume: it must shrink to
    // fit, or the registry would start full and never leave full mode.
    assert_eq!(cfg.disk_reserve_mib, 64);
    assert_eq!(cfg.gc_grace_secs, 3600);
    cfg.metrics.addr = Some("127.0.0.1:0".parse().unwrap());
    let reg = std::sync::Arc::new(TestRegistry::start_config(cfg).await);
    assert_eq!(disk_full_gauge(&reg).await, "wharf_disk_full 0");

    let config = b"{\"os\":\"linux\"}".to_vec();
    reg.push_mono("full", &config).await;
    // Sessions opened before the disk fills, to PATCH and PUT into later.
    let patch_loc = reg.start_upload("full").await;
    let put_loc = reg.start_upload("full").await;

    // 16 pushers fill the disk; each stops at its first refusal.
    let mut workers = Vec::new();
    for w in 0..16u64 {
        let (reg, config) = (reg.clone(), config.clone());
        workers.push(tokio::spawn(async move {
            push_until_full(&reg, &config, w).await
        }));
    }
    let mut pushed = Vec::new();
    for w in workers {
        pushed.extend(w.await.unwrap());
    }
    eprintln!(
        "{} images acknowledged before the disk filled",
        pushed.len()
    );
    assert!(pushed.len() >= 20, "the disk filled too early");
    assert_eq!(disk_full_gauge(&reg).await, "wharf_disk_full 1");

    // Every kind of write is refused with 507.
    let fresh = payload(64 << 10, 424_242);
    let fresh_d = digest(&fresh);
    let r = reg
        .client
        .post(reg.url("/v2/full/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_full("upload POST", r).await;
    let r = reg
        .client
        .post(reg.url(&format!("/v2/full/blobs/uploads/?digest={fresh_d}")))
        .body(fresh.clone())
        .send()
        .await
        .unwrap();
    assert_full("monolithic POST", r).await;
    let r = reg
        .client
        .patch(reg.url(&patch_loc))
        .header("content-range", format!("0-{}", fresh.len() - 1))
        .body(fresh.clone())
        .send()
        .await
        .unwrap();
    assert_full("PATCH", r).await;
    let sep = if put_loc.contains('?') { '&' } else { '?' };
    let r = reg
        .client
        .put(reg.url(&format!("{put_loc}{sep}digest={fresh_d}")))
        .body(fresh.clone())
        .send()
        .await
        .unwrap();
    assert_full("upload PUT with body", r).await;
    let m = manifest(&config, &pushed[0].layer, 1);
    let r = reg.put_manifest("full", "new", OCI_MANIFEST, &m).await;
    assert_full("manifest PUT", r).await;
    let r = reg
        .client
        .post(reg.url(&format!(
            "/v2/other/blobs/uploads/?mount={}&from=full",
            digest(&pushed[0].layer)
        )))
        .send()
        .await
        .unwrap();
    assert_full("cross-repository mount", r).await;
    // The sessions survive at a consistent offset.
    for loc in [&patch_loc, &put_loc] {
        let r = reg.get(loc).await;
        assert_eq!(r.status(), 204);
        assert_eq!(header(&r, "range"), Some("0-0"));
    }

    // Reads keep working: everything acknowledged is intact.
    assert_reads_back(&reg, &pushed).await;

    // Free space through the API while the disk is still full: delete half
    // the images (manifest, then its layer), cancel the sessions, run GC.
    let (gone, kept) = pushed.split_at(pushed.len() / 2);
    for p in gone {
        let d = digest(&p.manifest);
        let r = reg.delete(&format!("/v2/full/manifests/{d}")).await;
        assert_eq!(r.status(), 202, "DELETE manifest on a full disk");
        let r = reg
            .delete(&format!("/v2/full/blobs/{}", digest(&p.layer)))
            .await;
        assert_eq!(r.status(), 202, "DELETE blob on a full disk");
    }
    for loc in [&patch_loc, &put_loc] {
        assert_eq!(reg.delete(loc).await.status(), 204);
    }
    // With the default grace (an hour): what the API deleted is freed at
    // once, though it was pushed seconds ago.
    let r = reg.client.post(reg.url("/_wharf/gc")).send().await.unwrap();
    let status = r.status();
    let report = r.text().await.unwrap();
    assert_eq!(status, 200, "GC on a full disk: {report}");
    eprintln!("GC on the full disk: {report}");

    // Pushes work again once the probe sees the room: no restart.
    let again = payload(1 << 20, 999_999);
    let mut statuses = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = reg.push_mono_status("full", &again).await;
        statuses.push(s);
        if s == 201 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        statuses.last(),
        Some(&201),
        "pushes after freeing space: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 507),
        "{statuses:?}"
    );
    let m = manifest(&config, &again, 2);
    assert_eq!(
        reg.put_manifest("full", "again", OCI_MANIFEST, &m)
            .await
            .status(),
        201
    );
    assert_eq!(disk_full_gauge(&reg).await, "wharf_disk_full 0");
    let got = reg
        .get_blob("full", &digest(&again))
        .await
        .bytes()
        .await
        .unwrap();
    assert!(got == again);

    assert_reads_back(&reg, kept).await;
    for p in gone {
        let r = reg
            .get(&format!("/v2/full/manifests/{}", digest(&p.manifest)))
            .await;
        assert_eq!(r.status(), 404);
    }
}

/// Fills the filesystem holding `dir` with a file of zeros, to the last
/// block.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    for size in [1 << 20, 4096] {
        let block = vec![0u8; size];
        while f.write_all(&block).is_ok() {}
    }
    path
}

/// Space taken by something else on the disk, and no reserve at all: the
/// first ENOSPC lands inside a metadata commit. The store must answer 507,
/// not poison itself, and take writes again once the space comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_store_recovers_from_enospc_without_restart() {
    let Some(mnt) = tmpfs(32) else { return };
    let mut cfg = config_for(mnt.path.join("root"));
    cfg.disk_reserve_mib = 0;
    let mut reg = TestRegistry::start_config(cfg).await;

    let config = b"{\"os\":\"linux\"}".to_vec();
    let layer = payload(100 << 10, 7);
    reg.push_mono("full", &config).await;
    reg.push_mono("full", &layer).await;
    let m = manifest(&config, &layer, 0);
    assert_eq!(
        reg.put_manifest("full", "first", OCI_MANIFEST, &m)
            .await
            .status(),
        201
    );

    let filler = fill(&mnt.path);
    // Tags of a stored manifest write only metadata, until the database has
    // to grow: the first ENOSPC lands there.
    let mut tags = Vec::new();
    let long = "t".repeat(100);
    let mut refused = false;
    for i in 0..20_000 {
        let tag = format!("{long}{i}");
        let r = reg.put_manifest("full", &tag, OCI_MANIFEST, &m).await;
        if r.status() == 201 {
            tags.push(tag);
            continue;
        }
        assert_full("tag PUT", r).await;
        refused = true;
        break;
    }
    assert!(refused, "the metadata store never ran out of room");
    eprintln!(
        "{} tags acknowledged before the metadata store ran out of room",
        tags.len()
    );
    assert!(!tags.is_empty());
    assert_full("monolithic POST", {
        let data = payload(64 << 10, 8);
        reg.client
            .post(reg.url(&format!("/v2/full/blobs/uploads/?digest={}", digest(&data))))
            .body(data)
            .send()
            .await
            .unwrap()
    })
    .await;
    // Reads still answer.
    let r = reg.get("/v2/full/manifests/first").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), m);

    std::fs::remove_file(&filler).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut statuses = Vec::new();
    loop {
        let s = reg
            .put_manifest("full", "after", OCI_MANIFEST, &m)
            .await
            .status()
            .as_u16();
        statuses.push(s);
        if s == 201 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        statuses.last(),
        Some(&201),
        "tag PUTs after space returned: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 507),
        "{statuses:?}"
    );
    assert_eq!(
        reg.push_mono_status("full", &payload(64 << 10, 9)).await,
        201
    );

    // Nothing acknowledged was lost, in this process or the next.
    for round in 0..2 {
        let list = reg.get_json("/v2/full/tags/list").await;
        let listed: std::collections::HashSet<&str> = list["tags"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t.as_str())
            .collect();
        for t in tags
            .iter()
            .chain([&"first".to_string(), &"after".to_string()])
        {
            assert!(listed.contains(t.as_str()), "tag {t} lost (round {round})");
        }
        let r = reg
            .get(&format!("/v2/full/manifests/{}", tags[tags.len() - 1]))
            .await;
        assert_eq!(r.bytes().await.unwrap(), m);
        reg.restart().await;
    }
}
