//! PostgreSQL as managed services run it: TLS only (`ssl = on`, `hostssl`
//! lines alone), a server certificate from a CA the node is given. libpq's
//! URL keys mean what they mean to libpq: `verify-full` checks the chain
//! and the host name, a wrong CA stops the start with the certificate
//! check named, and `sslmode=disable` gets PostgreSQL's own refusal.

use crate::common::pki::{write_file, TestCa};
use crate::common::services::{skip_without, Postgres};
use crate::common::silent_proxy::SilentProxy;
use crate::common::*;
use std::time::{Duration, Instant};

struct TlsPostgres {
    pg: Postgres,
    ca: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// A TLS-only server whose certificate names `names`.
fn tls_postgres(names: &[&str]) -> Option<TlsPostgres> {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("wharf test database CA");
    let (cert, key) = ca.server_cert_for(names);
    let pg = Postgres::start_tls(dir.path().join("pg"), (&cert, &key))?;
    let ca = write_file(dir.path(), "db-ca.pem", &ca.cert_pem);
    Some(TlsPostgres { pg, ca, _dir: dir })
}

async fn start(url: String) -> Result<TestRegistry, String> {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_for(dir.path().to_path_buf());
    cfg.metadata.backend = wharf::config::MetadataBackend::Postgres;
    cfg.metadata.url = Some(url);
    cfg.metadata.timeout_secs = 10;
    match wharf::Server::start(cfg.clone()).await {
        Ok(server) => {
            server.shutdown().await;
            Ok(TestRegistry::start_with(move |c| {
                c.metadata = cfg.metadata.clone();
            })
            .await)
        }
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_over_tls_only_and_refusals_that_say_why() {
    if cluster_mode() {
        return;
    }
    let Some(db) = tls_postgres(&["localhost", "127.0.0.1"]) else {
        skip_without("postgresql", false);
        return;
    };
    let url = db.pg.fresh_database();
    let ca = db.ca.display().to_string();

    let node = start(format!("{url}?sslmode=verify-full&sslrootcert={ca}"))
        .await
        .expect("verify-full with the right CA starts");
    let d = node.push_mono("tls/app", &payload(5000, 1)).await;
    assert_eq!(node.get_blob("tls/app", &d).await.status(), 200);
    let db_name = url.rsplit('/').next().unwrap();
    let encrypted = db
        .pg
        .psql(
            db_name,
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE ssl AND application_name = 'wharf'",
        )
        .unwrap();
    assert_ne!(encrypted.trim(), "0", "the node's connections are TLS");

    // Another CA: the start stops, naming the certificate check.
    let dir = tempfile::tempdir().unwrap();
    let other = write_file(
        dir.path(),
        "other.pem",
        &TestCa::new("someone else").cert_pem,
    );
    let e = start(format!(
        "{url}?sslmode=verify-full&sslrootcert={}",
        other.display()
    ))
    .await
    .err()
    .expect("a wrong CA must not start");
    assert!(
        e.contains("certificate") && e.contains("UnknownIssuer"),
        "{e}"
    );

    // A certificate from the right CA for another name: verify-ca (the
    // chain only) accepts it, verify-full refuses it, naming why.
    let Some(elsewhere) = tls_postgres(&["db.example.com"]) else {
        return;
    };
    let other_url = elsewhere.pg.fresh_database();
    let other_ca = elsewhere.ca.display().to_string();
    start(format!(
        "{other_url}?sslmode=verify-ca&sslrootcert={other_ca}"
    ))
    .await
    .expect("verify-ca checks the chain, not the name");
    let e = start(format!(
        "{other_url}?sslmode=verify-full&sslrootcert={other_ca}"
    ))
    .await
    .err()
    .expect("verify-full checks the name");
    assert!(e.contains("not valid for name"), "{e}");

    // No TLS at all: PostgreSQL's own refusal, at once.
    let started = std::time::Instant::now();
    let e = start(format!("{url}?sslmode=disable"))
        .await
        .err()
        .expect("plain text must not start");
    assert!(
        e.contains("no pg_hba.conf entry") && e.contains("no encryption"),
        "{e}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}

/// A primary and a synchronous streaming standby; the node's URL names
/// both with `target_session_attrs=read-write`. The primary is killed:
/// requests answer 503 (never 500, never a hang past the deadline) until
/// the standby is promoted, then pushes go on without a restart, and
/// everything acknowledged before reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_primary_and_a_promoted_standby_lose_nothing_acknowledged() {
    if cluster_mode() {
        return;
    }
    let Some(pair) = Replicated::start() else {
        return;
    };
    let (primary, standby) = (&pair.primary, &pair.standby);
    let node = node_on_both(&format!("127.0.0.1:{}", primary.port), &pair).await;
    let acknowledged = tagged_manifests(&node, "failover/app").await;

    primary.kill();
    let started = std::time::Instant::now();
    let mut unavailable = 0;
    // The postmaster dies at once; its backends notice within moments and
    // may finish a commit first (synchronously replicated, so it counts
    // as acknowledged and must read back).
    let mut blobs = Vec::new();
    let mut i = 0u64;
    while unavailable < 2 {
        let data = payload(2000, 500 + i);
        i += 1;
        let asked = std::time::Instant::now();
        match node.push_mono_status("failover/app", &data).await {
            503 => unavailable += 1,
            201 if started.elapsed() < Duration::from_secs(2) => blobs.push(data),
            other => panic!("{other} with no primary: 503, never 500"),
        }
        assert!(
            asked.elapsed() < std::time::Duration::from_secs(15),
            "{:?}",
            asked.elapsed()
        );
    }
    standby.psql("postgres", "SELECT pg_promote()").unwrap();
    loop {
        match node
            .push_mono_status("failover/app", &payload(2000, 600))
            .await
        {
            201 => break,
            503 => unavailable += 1,
            other => panic!("{other} during the switch"),
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "pushes did not resume after the promotion"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    eprintln!(
        "failover: {unavailable} answers of 503 over {:.1} s, then pushes went on",
        started.elapsed().as_secs_f64()
    );
    for data in blobs {
        let r = node.get_blob("failover/app", &digest(&data)).await;
        assert_eq!(r.status(), 200, "an acknowledged blob reads back");
    }
    for (tag, m) in acknowledged {
        let r = node.get(&format!("/v2/failover/app/manifests/{tag}")).await;
        assert_eq!(r.status(), 200, "{tag}");
        assert_eq!(r.bytes().await.unwrap().as_ref(), m.as_slice(), "{tag}");
    }
}

/// A node whose URL names `primary` (an address) and then the standby,
/// with `target_session_attrs=read-write` and 3 s deadlines.
async fn node_on_both(primary: &str, pair: &Replicated) -> TestRegistry {
    let both = format!(
        "postgres://wharf@{primary},127.0.0.1:{}/{}?target_session_attrs=read-write",
        pair.standby.port, pair.db
    );
    TestRegistry::start_with(|c| {
        c.metadata.backend = wharf::config::MetadataBackend::Postgres;
        c.metadata.url = Some(both);
        c.metadata.timeout_secs = 3;
    })
    .await
}

/// Four manifests pushed and tagged `v0`..`v3`, each acknowledged: (tag,
/// bytes) to read back later.
async fn tagged_manifests(node: &TestRegistry, repo: &str) -> Vec<(String, Vec<u8>)> {
    let mut acknowledged = Vec::new();
    for i in 0..4u64 {
        let m = serde_json::to_vec(&node.image_manifest(repo, 90 + i, 1).await).unwrap();
        let tag = format!("v{i}");
        let r = node.put_manifest(repo, &tag, OCI_MANIFEST, &m).await;
        assert_eq!(r.status(), 201);
        acknowledged.push((tag, m));
    }
    acknowledged
}

/// A primary and a synchronous streaming standby (`pg_basebackup -R`):
/// a commit the primary acknowledged is on the standby.
struct Replicated {
    primary: Postgres,
    standby: Postgres,
    db: String,
    _dir: tempfile::TempDir,
}

impl Replicated {
    fn start() -> Option<Replicated> {
        let dir = tempfile::tempdir().unwrap();
        let Some(primary) = Postgres::start_own(dir.path().join("primary")) else {
            skip_without("postgresql", false);
            return None;
        };
        let url = primary.fresh_database();
        let db = url.rsplit('/').next().unwrap().to_owned();
        let standby = primary.start_standby(dir.path().join("standby"));
        primary
            .psql(
                "postgres",
                "ALTER SYSTEM SET synchronous_standby_names = '*'",
            )
            .unwrap();
        primary.psql("postgres", "SELECT pg_reload_conf()").unwrap();
        Some(Replicated {
            primary,
            standby,
            db,
            _dir: dir,
        })
    }
}

/// The failover that usually happens: the primary does not die, it goes
/// silent (a proxy in front of it keeps every connection open and
/// acknowledged but forwards nothing). Requests in the switch answer 503
/// within the deadline (never 500, never a hang), pushes go on after the
/// standby's promotion without a node restart, an upload open across the
/// switch completes, and every acknowledged blob and manifest reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_primary_and_a_promoted_standby_lose_nothing_acknowledged() {
    if cluster_mode() {
        return;
    }
    let Some(pair) = Replicated::start() else {
        return;
    };
    let front = SilentProxy::start(([127, 0, 0, 1], pair.primary.port).into()).await;
    let node = node_on_both(&front.addr.to_string(), &pair).await;
    let manifests = tagged_manifests(&node, "silent/app").await;
    // An upload open across the switch.
    let open = node.start_upload("silent/app").await;
    let open_bytes = payload(3000, 1);
    assert_eq!(node.patch_chunk(&open, 0, &open_bytes).await.status(), 202);

    // Pushes keep coming while the primary goes silent and the standby
    // takes over.
    let node = std::sync::Arc::new(node);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pusher = {
        let (node, stop) = (node.clone(), stop.clone());
        tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let data = payload(1500, 1000 + i);
                let asked = Instant::now();
                let status = node.push_mono_status("silent/app", &data).await;
                answers.push((Instant::now(), asked.elapsed(), status, data));
                i += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            answers
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    front.silence();
    let silenced = Instant::now();
    // What a failover manager does: notice, then promote (here after 4 s).
    tokio::time::sleep(Duration::from_secs(4)).await;
    pair.standby
        .psql("postgres", "SELECT pg_promote()")
        .unwrap();
    let promoted = Instant::now();
    // Pushes must resume within seconds of the promotion.
    let resumed = loop {
        let data = payload(1500, 5000);
        if node.push_mono_status("silent/app", &data).await == 201 {
            break Instant::now();
        }
        assert!(
            promoted.elapsed() < Duration::from_secs(30),
            "pushes did not resume after the promotion"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = pusher.await.unwrap();

    let mut unavailable = 0;
    let mut last_503 = silenced;
    for (at, took, status, data) in &answers {
        assert!(
            *took < Duration::from_secs(15),
            "a request took {took:?}: past the deadline"
        );
        match status {
            201 => {
                let r = node.get_blob("silent/app", &digest(data)).await;
                assert_eq!(r.status(), 200, "an acknowledged blob reads back");
                assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
            }
            503 => {
                unavailable += 1;
                last_503 = last_503.max(*at);
            }
            other => panic!("{other} during the switch: only 201 or 503"),
        }
    }
    assert!(unavailable > 0, "the silence was noticed");
    let r = node.finish_upload(&open, &digest(&open_bytes)).await;
    assert_eq!(
        r.status(),
        201,
        "the upload open across the switch completes"
    );
    assert_eq!(
        node.get_blob("silent/app", &digest(&open_bytes))
            .await
            .status(),
        200
    );
    for (tag, m) in manifests {
        let r = node.get(&format!("/v2/silent/app/manifests/{tag}")).await;
        assert_eq!(r.status(), 200, "{tag}");
        assert_eq!(r.bytes().await.unwrap().as_ref(), m.as_slice(), "{tag}");
    }
    eprintln!(
        "silent primary: {unavailable} answers of 503 among {} pushes; promoted {:.1} s after the silence; \
         pushes resumed {:.1} s after the promotion; last 503 {:.1} s after the silence",
        answers.len(),
        (promoted - silenced).as_secs_f64(),
        (resumed - promoted).as_secs_f64(),
        (last_503 - silenced).as_secs_f64()
    );
}
