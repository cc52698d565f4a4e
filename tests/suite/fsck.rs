//! `wharf fsck` on real data folders: healthy, a flipped byte, a metadata
//! row pointing at a missing blob, leftovers, and --repair.

use crate::common::*;
use std::process::Command;

fn fsck(root: &std::path::Path, repair: bool) -> (i32, String) {
    fsck_with(root, if repair { &["--repair"] } else { &[] })
}

fn fsck_with(root: &std::path::Path, flags: &[&str]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wharf"));
    cmd.args(["fsck", "--root"]).arg(root).args(flags);
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finds_damage_and_repairs_it() {
    let mut reg = TestRegistry::start_with(|_| {}).await;
    let m = serde_json::to_vec(&reg.image_manifest("f", 1, 3).await).unwrap();
    assert_eq!(
        reg.put_manifest("f", "v1", OCI_MANIFEST, &m).await.status(),
        201
    );
    let victim = payload(3000, 2);
    let victim_d = reg.push_mono("g", &victim).await;
    let missing = payload(4000, 3);
    let missing_d = reg.push_mono("g", &missing).await;
    reg.server.take().unwrap().shutdown().await;
    let root = reg.root.clone();

    let (code, out) = fsck(&root, false);
    assert_eq!(code, 0, "healthy store: {out}");
    assert!(out.contains("no problems"), "{out}");

    let (code, out) = fsck_with(&root, &["--json"]);
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let stored = blob_files(&root);
    assert_eq!(report["blobs_checked"], stored.len(), "{out}");
    assert_eq!(report["metadata_checked"], true);
    let bytes_stored: u64 = stored.iter().map(|f| f.metadata().unwrap().len()).sum();
    assert_eq!(report["bytes_checked"], bytes_stored);

    // One flipped byte.
    let path_of = |d: &str| {
        let hex = d.trim_start_matches("sha256:");
        root.join("blobs/sha256").join(&hex[..2]).join(hex)
    };
    let p = path_of(&victim_d);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[1234] ^= 0x01;
    std::fs::write(&p, bytes).unwrap();

    // Beside a running server (which holds the metadata database) fsck
    // still re-hashes every blob, read-only, and says what it skipped;
    // repairing waits for the server to stop.
    reg.restart().await;
    let (code, out) = fsck(&root, false);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("blob {victim_d} is corrupt")),
        "{out}"
    );
    assert!(out.contains("only blob contents were checked"), "{out}");
    let (code, out) = fsck(&root, true);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--repair needs it stopped"), "{out}");
    assert!(
        reg.get_blob("g", &victim_d).await.status() == 200,
        "nothing was moved"
    );
    reg.server.take().unwrap().shutdown().await;

    // One blob file gone, one staging leftover.
    std::fs::remove_file(path_of(&missing_d)).unwrap();
    std::fs::write(root.join("blobs/staging/half-written"), b"x").unwrap();

    let (code, out) = fsck(&root, false);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("blob {victim_d} is corrupt")),
        "{out}"
    );
    assert!(
        out.contains(&format!("links blob {missing_d} which is missing")),
        "{out}"
    );
    // The corrupt blob's link says what is wrong with it, not "missing".
    assert!(
        out.contains(&format!("links blob {victim_d} which is corrupt")),
        "{out}"
    );
    assert!(
        !out.contains(&format!("{victim_d} which is missing")),
        "{out}"
    );
    assert!(out.contains("LEFTOVER"), "{out}");

    let (code, out) = fsck(&root, true);
    assert_eq!(code, 1, "damage is reported even when repaired: {out}");
    assert!(out.contains("REPAIRED"), "{out}");
    assert!(root.join("quarantine").read_dir().unwrap().count() == 1);

    let (code, out) = fsck(&root, false);
    assert_eq!(code, 0, "after repair: {out}");

    // The healthy image is untouched and still pulls.
    reg.restart().await;
    let g = reg.get("/v2/f/manifests/v1").await;
    assert_eq!(g.bytes().await.unwrap(), m);
    assert_oci_error(reg.get_blob("g", &victim_d).await, 404, "BLOB_UNKNOWN").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_shows_on_a_terminal_and_never_in_logs() {
    let mut reg = TestRegistry::start_with(|_| {}).await;
    for i in 0..4 {
        reg.push_mono("p", &payload(1 << 20, 50 + i)).await;
    }
    reg.server.take().unwrap().shutdown().await;
    let root = reg.root.clone();
    // Piped (a log, cron, CI): the report alone.
    let (code, out) = fsck(&root, false);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("blobs ["), "{out}");
    assert!(
        out.contains("4 blobs checked (4.0 MiB), no problems"),
        "{out}"
    );
    // On a terminal (util-linux's script gives it one): the bar.
    let command = format!(
        "{} fsck --root {}",
        env!("CARGO_BIN_EXE_wharf"),
        root.display()
    );
    let Ok(tty) = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
    else {
        eprintln!("skipped the terminal half: no script(1)");
        return;
    };
    let text = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{text}");
    assert!(
        text.contains("4/4 blobs [") && text.contains("MiB/s"),
        "{text}"
    );
}
