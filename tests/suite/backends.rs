//! One metadata contract, every backend: the same scenarios run against the
//! embedded redb backend and against a real PostgreSQL (started by the
//! harness), over HTTP through a real server. A backend passes only if it
//! behaves like the other in everything a client can see.
//!
//! PostgreSQL-only tests follow: nodes sharing one database see each
//! other's writes, the schema migrates once when nodes start together,
//! `wharf migrate` works, garbage collection on one node never breaks a
//! manifest PUT on another, and a database that goes away answers 503.

use crate::common::services::{skip_without, Postgres};
use crate::common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

/// Which backend a registry of these tests runs on.
#[derive(Clone)]
enum Backend {
    Redb,
    Postgres(String),
}

async fn start(backend: &Backend, tweak: impl FnOnce(&mut wharf::Config)) -> TestRegistry {
    let backend = backend.clone();
    TestRegistry::start_with(move |c| {
        if let Backend::Postgres(url) = backend {
            c.metadata.backend = wharf::config::MetadataBackend::Postgres;
            c.metadata.url = Some(url);
        }
        tweak(c);
    })
    .await
}

fn postgres() -> Option<Backend> {
    let pg = Postgres::shared();
    if skip_without("PostgreSQL", pg.is_some()) {
        return None;
    }
    Some(Backend::Postgres(pg?.fresh_database()))
}

async fn tags(reg: &TestRegistry, repo: &str, query: &str) -> (Vec<String>, Option<String>) {
    let r = reg.get(&format!("/v2/{repo}/tags/list{query}")).await;
    assert_eq!(r.status(), 200);
    let link = header(&r, "link").map(str::to_owned);
    let v: Value = r.json().await.unwrap();
    let tags = v["tags"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    (tags, link)
}

/// Everything a client sees of the metadata, in one pass.
async fn contract(backend: Backend) {
    let reg = start(&backend, |c| c.gc_grace_secs = 0).await;

    // Manifests by tag and digest; a PUT naming an absent blob is refused.
    let m = reg.image_manifest("team/app", 1, 2).await;
    let body = serde_json::to_vec(&m).unwrap();
    let md = digest(&body);
    assert_eq!(
        reg.put_manifest("team/app", "v1", OCI_MANIFEST, &body)
            .await
            .status(),
        201
    );
    for reference in ["v1", md.as_str()] {
        let r = reg
            .get(&format!("/v2/team/app/manifests/{reference}"))
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "docker-content-digest"), Some(md.as_str()));
        assert_eq!(r.bytes().await.unwrap(), body);
    }
    let mut missing = m.clone();
    missing["layers"][0]["digest"] = json!(digest(b"never pushed"));
    let r = reg
        .put_manifest(
            "team/app",
            "bad",
            OCI_MANIFEST,
            &serde_json::to_vec(&missing).unwrap(),
        )
        .await;
    assert_oci_error(r, 400, "MANIFEST_BLOB_UNKNOWN").await;

    // Tags sort bytewise and page with n/last and a Link header.
    let names = ["B", "a", "v1", "v10", "v2", "Z-9", "_x", "latest"];
    for t in names {
        assert_eq!(
            reg.put_manifest("team/app", t, OCI_MANIFEST, &body)
                .await
                .status(),
            201
        );
    }
    let mut sorted: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    sorted.sort();
    sorted.dedup();
    assert_eq!(tags(&reg, "team/app", "").await.0, sorted);
    let (first, link) = tags(&reg, "team/app", "?n=3").await;
    assert_eq!(first, sorted[..3]);
    assert!(link.is_some(), "a Link header points at the next page");
    let (rest, _) = tags(&reg, "team/app", &format!("?n=100&last={}", sorted[2])).await;
    assert_eq!(rest, sorted[3..]);

    // Catalog: every repository once, in order, paged.
    for repo in ["zz/last", "aa/first", "team/app2"] {
        reg.push_mono(repo, repo.as_bytes()).await;
    }
    let v = reg.get_json("/v2/_catalog").await;
    let repos: Vec<&str> = v["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(repos, ["aa/first", "team/app", "team/app2", "zz/last"]);
    let v = reg.get_json("/v2/_catalog?n=2&last=team/app").await;
    assert_eq!(v["repositories"], json!(["team/app2", "zz/last"]));

    // Cross-repository mount: only of a blob the source has.
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_owned();
    let r = reg
        .client
        .post(reg.url(&format!(
            "/v2/other/blobs/uploads/?mount={layer}&from=team/app"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(reg.get_blob("other", &layer).await.status(), 200);

    // Referrers: an artifact whose subject is the image.
    let sig = b"signature bytes".to_vec();
    reg.push_mono("team/app", &sig).await;
    let empty = b"{}".to_vec();
    reg.push_mono("team/app", &empty).await;
    let artifact = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/x-signature",
        "config": descriptor("application/vnd.oci.empty.v1+json", &empty),
        "layers": [descriptor("application/octet-stream", &sig)],
        "subject": descriptor(OCI_MANIFEST, &body),
    });
    let ab = serde_json::to_vec(&artifact).unwrap();
    let r = reg
        .put_manifest("team/app", &digest(&ab), OCI_MANIFEST, &ab)
        .await;
    assert_eq!(r.status(), 201);
    let v = reg.get_json(&format!("/v2/team/app/referrers/{md}")).await;
    assert_eq!(v["manifests"][0]["digest"], json!(digest(&ab)));
    assert_eq!(
        v["manifests"][0]["artifactType"],
        json!("application/x-signature")
    );

    // An index needs its children in the repository.
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [descriptor(OCI_MANIFEST, &body)],
    });
    let ib = serde_json::to_vec(&index).unwrap();
    assert_eq!(
        reg.put_manifest("team/app", "multi", OCI_INDEX, &ib)
            .await
            .status(),
        201
    );
    assert_oci_error(
        reg.put_manifest("other", "multi", OCI_INDEX, &ib).await,
        400,
        "MANIFEST_UNKNOWN",
    )
    .await;

    // Re-pushing under a new tag keeps the old tags; deleting a tag or a
    // manifest removes exactly that.
    assert_eq!(
        reg.put_manifest("team/app", "again", OCI_MANIFEST, &body)
            .await
            .status(),
        201
    );
    let r = reg.delete("/v2/team/app/manifests/a").await;
    assert_eq!(r.status(), 202);
    let now: BTreeSet<String> = tags(&reg, "team/app", "").await.0.into_iter().collect();
    assert!(now.contains("v1") && now.contains("again") && !now.contains("a"));
    let (m2, b2) = {
        let m2 = reg.image_manifest("team/app", 2, 1).await;
        let b2 = serde_json::to_vec(&m2).unwrap();
        (m2, b2)
    };
    assert_eq!(
        reg.put_manifest("team/app", "doomed", OCI_MANIFEST, &b2)
            .await
            .status(),
        201
    );
    assert_eq!(
        reg.delete(&format!("/v2/team/app/manifests/{}", digest(&b2)))
            .await
            .status(),
        202
    );
    assert_eq!(reg.get("/v2/team/app/manifests/doomed").await.status(), 404);

    // Garbage collection: the deleted image's layer goes, everything still
    // referenced stays and reads back.
    let gone = m2["layers"][0]["digest"].as_str().unwrap().to_owned();
    // Links younger than the cutoff (whole seconds) are spared.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = reg
        .client
        .post(reg.url("/_wharf/gc?grace_secs=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let report: Value = r.json().await.unwrap();
    assert!(report["links_removed"].as_u64().unwrap() >= 1, "{report}");
    assert_eq!(reg.get_blob("team/app", &gone).await.status(), 404);
    assert_eq!(reg.get_blob("team/app", &layer).await.status(), 200);
    assert_eq!(reg.get("/v2/team/app/manifests/v1").await.status(), 200);
    assert_eq!(reg.get("/v2/team/app/manifests/multi").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contract_redb() {
    contract(Backend::Redb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contract_postgres() {
    let Some(pg) = postgres() else { return };
    contract(pg).await;
}

/// Two nodes on one database: what one writes the other reads at once, and
/// a node's data folder holds none of the metadata (deleting it loses
/// nothing but local scratch).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_nodes_share_metadata() {
    let Some(pg) = postgres() else { return };
    let a = start(&pg, |_| {}).await;
    let m = a.image_manifest("shared", 7, 1).await;
    let body = serde_json::to_vec(&m).unwrap();
    assert_eq!(
        a.put_manifest("shared", "t", OCI_MANIFEST, &body)
            .await
            .status(),
        201
    );
    let b = start(&pg, |_| {}).await;
    let r = b.get("/v2/shared/tags/list").await;
    assert_eq!(r.json::<Value>().await.unwrap()["tags"], json!(["t"]));
    assert!(
        !a.root.join("meta.redb").exists(),
        "no local metadata in postgres mode"
    );
    assert_eq!(b.delete("/v2/shared/manifests/t").await.status(), 202);
    assert_eq!(a.get("/v2/shared/manifests/t").await.status(), 404);
}

/// Three nodes starting at once on an empty database: one migrates, the
/// others wait on the advisory lock; every node serves; each step is
/// recorded once. `wharf migrate` then finds nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_migrates_once_under_concurrent_starts() {
    let Some(Backend::Postgres(url)) = postgres() else {
        return;
    };
    let nodes = futures_util::future::join_all((0..3).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { start(&Backend::Postgres(url), |_| {}).await })
    }))
    .await;
    for n in &nodes {
        let reg = n.as_ref().expect("node starts");
        assert_eq!(reg.get("/v2/").await.status(), 200);
    }
    let db = url.rsplit('/').next().unwrap();
    let pg = Postgres::shared().unwrap();
    let rows = pg
        .psql(
            db,
            "SELECT count(*), count(DISTINCT version) FROM wharf_schema",
        )
        .unwrap();
    let (count, distinct) = rows.split_once('|').unwrap();
    assert_eq!(count, distinct, "every migration step applied once");

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("wharf.toml");
    std::fs::write(
        &cfg,
        format!("[metadata]\nbackend = \"postgres\"\nurl = \"{url}\"\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .arg("migrate")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(&format!("version {count}")), "{said}");
}

/// The race GitLab's registry documents and leaves open: a manifest PUT
/// whose blob garbage collection is deleting at that moment, on another
/// node. The interleaving is forced: a psql session holds the `refs` table
/// so node B's PUT stops inside its transaction after checking the blob
/// link, and node A's GC runs meanwhile. GC must wait for the PUT and then
/// spare the blob; without the row locks it deletes the link and both
/// answer success, which this test catches (the layer reads 404).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_gc_and_manifest_put_on_two_nodes_never_both_win() {
    let Some(Backend::Postgres(url)) = postgres() else {
        return;
    };
    let pg = Postgres::shared().unwrap();
    let db = url.rsplit('/').next().unwrap().to_owned();
    let a = start(&Backend::Postgres(url.clone()), |c| c.gc_grace_secs = 0).await;
    let b = start(&Backend::Postgres(url.clone()), |c| c.gc_grace_secs = 0).await;
    let m = b.image_manifest("race", 100, 1).await;
    let body = serde_json::to_vec(&m).unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_owned();
    // Links must be older than GC's cutoff (whole seconds).
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let mut holder = pg.hold_lock(&db, "LOCK TABLE refs IN EXCLUSIVE MODE");
    let put = tokio::spawn({
        let (client, u) = (b.client.clone(), b.url("/v2/race/manifests/t"));
        async move {
            client
                .put(u)
                .header("content-type", OCI_MANIFEST)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let gc = tokio::spawn({
        let (client, u) = (a.client.clone(), a.url("/_wharf/gc?grace_secs=0"));
        async move { client.post(u).send().await.unwrap().status() }
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    holder.release();
    let (put, gc) = (put.await.unwrap(), gc.await.unwrap());
    assert_eq!(gc, 200);
    match put.as_u16() {
        201 => {
            // Blob bytes are node-local until the object store lands: read
            // them where they were pushed; the link is in the shared database.
            assert_eq!(
                b.get_blob("race", &layer).await.status(),
                200,
                "PUT won: its layer stays"
            );
            assert_eq!(b.get("/v2/race/manifests/t").await.status(), 200);
        }
        400 => assert_eq!(b.get_blob("race", &layer).await.status(), 404),
        s => panic!("manifest PUT answered {s}"),
    }
}

/// A database that stops answering: requests answer 503 with an OCI body
/// and Retry-After (no hang, no 500), `/readyz` says not ready, and both
/// recover once it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_unreachable_answers_503_and_recovers() {
    let Some(Backend::Postgres(url)) = postgres() else {
        return;
    };
    let metrics = free_addr();
    let reg = start(&Backend::Postgres(url.clone()), |c| {
        c.metadata.timeout_secs = 2;
        c.metrics.addr = Some(metrics);
    })
    .await;
    reg.push_mono("up", b"before").await;
    let db = url.rsplit('/').next().unwrap().to_owned();
    let pg = Postgres::shared().unwrap();
    // Refuse new connections to this database and cut the open ones.
    pg.psql(
        "postgres",
        &format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"),
    )
    .unwrap();
    pg.psql(
        "postgres",
        &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let r = reg.get("/v2/up/tags/list").await;
    assert_eq!(r.status(), 503);
    assert!(header(&r, "retry-after").is_some(), "Retry-After on 503");
    assert_oci_error(r, 503, "UNAVAILABLE").await;
    assert_eq!(reg.push_mono_status("up", b"during").await, 503);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "answers within the timeout"
    );
    let ready = reqwest::get(format!("http://{metrics}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);

    pg.psql(
        "postgres",
        &format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ready = reqwest::get(format!("http://{metrics}/readyz"))
            .await
            .unwrap();
        if ready.status() == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ready again after the database returns"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let d = reg.push_mono("up", b"after").await;
    assert_eq!(reg.get_blob("up", &d).await.status(), 200);
    assert_eq!(reg.get_blob("up", &digest(b"before")).await.status(), 200);

    // The pool's figures: connections by state, checkouts and their wait.
    let text = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let figure = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
    };
    assert!(figure("wharf_postgres_pool_checkouts_total") > 0.0);
    assert!(figure("wharf_postgres_connections{state=\"idle\"}") >= 1.0);
    assert_eq!(figure("wharf_postgres_connections_max"), 16.0);
    assert!(figure("wharf_postgres_pool_wait_seconds_total") > 0.0);
}

fn free_addr() -> std::net::SocketAddr {
    format!("127.0.0.1:{}", crate::common::services::free_port())
        .parse()
        .unwrap()
}
