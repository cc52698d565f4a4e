//! What an operator meets first, said early and plainly (issue 24): a
//! refused S3 key stops a node at start-up and turns a running node's
//! requests into 503 UNAVAILABLE (never 500) with `/readyz` saying why;
//! `wharf config check --connect` logs in to PostgreSQL and the bucket and
//! names what refuses; `wharf migrate` shows PostgreSQL's own sentence for
//! a missing role; a port in use or a mistyped `--root` creates nothing.

use crate::common::pki::write_file;
use crate::common::services::{
    skip_without, use_object_store, Postgres, Seaweed, S3_KEY, S3_SECRET,
};
use crate::common::*;
use std::process::{Command, Output};
use std::time::Duration;

fn wharf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(args)
        .env_remove("WHARF_CONFIG")
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn cluster_toml(pg_url: &str, endpoint: &str, bucket: &str, key: &str, secret: &str) -> String {
    format!(
        "addr = \"127.0.0.1:0\"\n[metadata]\nbackend = \"postgres\"\nurl = \"{pg_url}\"\n\
         [storage]\nbackend = \"s3\"\n[storage.s3]\nendpoint = \"{endpoint}\"\n\
         bucket = \"{bucket}\"\naccess_key_id = \"{key}\"\nsecret_access_key = \"{secret}\"\n\
         read_cache_mib = 0\n"
    )
}

/// Writes a cluster configuration and runs `wharf config check --connect`
/// on it: (its path, the exit code, all it printed).
fn check_connect(
    dir: &std::path::Path,
    name: &str,
    toml: &str,
) -> (std::path::PathBuf, Option<i32>, String) {
    let file = write_file(dir, name, toml);
    let out = wharf(&[
        "config",
        "check",
        "--connect",
        "--config",
        file.to_str().unwrap(),
    ]);
    (file, out.status.code(), said(&out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_connect_logs_in_and_names_what_refuses() {
    let (Some(pg), Some(weed)) = (Postgres::shared(), Seaweed::shared()) else {
        skip_without("postgresql and seaweedfs", false);
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = pg.fresh_database();
    let bucket = weed.fresh_bucket().await;
    let endpoint = weed.endpoint();
    let toml = |url: &str, bucket: &str, secret: &str| {
        cluster_toml(url, &endpoint, bucket, S3_KEY, secret)
    };
    let (good, code, text) =
        check_connect(dir.path(), "good.toml", &toml(&url, &bucket, S3_SECRET));
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("PostgreSQL (metadata.url): logged in; schema at version 0 of"),
        "{text}"
    );
    assert!(text.contains("credentials accepted"), "{text}");
    assert!(!text.contains("NOTICE"), "{text}");

    // A wrong secret, a missing bucket, a role that does not exist: each
    // named, exit 1.
    let nobody = url.replacen("postgres://wharf@", "postgres://nobody@", 1);
    let refusals = [
        (
            "secret.toml",
            toml(&url, &bucket, "not-the-secret"),
            "SignatureDoesNotMatch",
        ),
        (
            "bucket.toml",
            toml(&url, "no-such-bucket-here", S3_SECRET),
            "NoSuchBucket",
        ),
        (
            "role.toml",
            toml(&nobody, &bucket, S3_SECRET),
            r#"role "nobody" does not exist"#,
        ),
    ];
    for (name, config, named) in &refusals {
        let (_, code, text) = check_connect(dir.path(), name, config);
        assert_eq!(code, Some(1), "{text}");
        assert!(text.contains(named), "{named}: {text}");
    }
    let no_role = dir.path().join("role.toml");

    // `wharf migrate` says the same at once, not "db error" after a timeout.
    let started = std::time::Instant::now();
    let out = wharf(&["migrate", "--config", no_role.to_str().unwrap()]);
    let text = said(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(r#"role "nobody" does not exist"#), "{text}");
    assert!(!text.contains("db error"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );

    // Migrated, the check says the schema is current; NOTICEs stay quiet.
    let out = wharf(&["migrate", "--config", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert!(!said(&out).contains("NOTICE"), "{}", said(&out));
    let out = wharf(&[
        "config",
        "check",
        "--connect",
        "--config",
        good.to_str().unwrap(),
    ]);
    assert!(said(&out).contains("(current)"), "{}", said(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_s3_key_stops_the_start_and_answers_503_not_500_later() {
    let Some(pg) = Postgres::shared() else {
        skip_without("postgresql", false);
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // A store of this test's own: its keys change under a running node.
    let Some(mut weed) = Seaweed::start_in(dir.path().join("weed")) else {
        skip_without("seaweedfs", false);
        return;
    };
    let url = pg.fresh_database();
    let bucket = weed.fresh_bucket().await;

    // At start-up: the node refuses to start and says why.
    let bad = write_file(
        dir.path(),
        "bad.toml",
        &cluster_toml(&url, &weed.endpoint(), &bucket, S3_KEY, "not-the-secret"),
    );
    let root = dir.path().join("node");
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["serve", "--config", bad.to_str().unwrap(), "--root"])
        .arg(&root)
        .env_remove("WHARF_CONFIG")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = said(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("refused the credentials") && text.contains("SignatureDoesNotMatch"),
        "{text}"
    );

    // Running: a second identity that the store then forgets.
    let identities = |extra: &str| {
        format!(
            r#"{{"identities":[{{"name":"wharf","credentials":[{{"accessKey":"{S3_KEY}","secretKey":"{S3_SECRET}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}{extra}]}}"#
        )
    };
    std::fs::write(
        weed.dir.join("s3.json"),
        identities(r#",{"name":"rotated","credentials":[{"accessKey":"rotated-key","secretKey":"rotated-secret"}],"actions":["Admin","Read","Write","List","Tagging"]}"#),
    )
    .unwrap();
    weed.kill();
    weed.restart();
    let endpoint = weed.endpoint();
    let node = TestRegistry::start_with(|c| {
        use_object_store(c, &url, &endpoint, &bucket);
        let s3 = c.storage.s3.as_mut().unwrap();
        s3.access_key_id = Some("rotated-key".into());
        s3.secret_access_key = Some("rotated-secret".into());
    })
    .await;
    assert_eq!(node.push_mono_status("keys", &payload(3000, 1)).await, 201);

    std::fs::write(weed.dir.join("s3.json"), identities("")).unwrap();
    weed.kill();
    weed.restart();
    let r = node
        .client
        .post(node.url(&format!(
            "/v2/keys/blobs/uploads/?digest={}",
            digest(&payload(3000, 2))
        )))
        .body(payload(3000, 2))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        503,
        "a refused key is the operator's: never 500"
    );
    let body = r.text().await.unwrap();
    assert!(
        body.contains("UNAVAILABLE") && body.contains("refused the credentials"),
        "{body}"
    );
    let ready = node.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    let why = ready.text().await.unwrap();
    assert!(why.contains("refused the credentials"), "{why}");
}

#[test]
fn a_port_in_use_or_a_mistyped_root_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let root = dir.path().join("data");
    let out = wharf(&["serve", "--addr", &addr, "--root", root.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(said(&out).contains("cannot listen on"), "{}", said(&out));
    assert!(
        !root.exists(),
        "the data folder was created before the bind failed"
    );

    let deep = dir.path().join("no/such/parent/wharf");
    let out = wharf(&[
        "serve",
        "--addr",
        "127.0.0.1:0",
        "--root",
        deep.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        said(&out).contains("its parent folder does not exist"),
        "{}",
        said(&out)
    );
    assert!(!dir.path().join("no").exists());

    let out = wharf(&["serve", "--addr", "localhost:5000"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(said(&out).contains("is not IP:PORT"), "{}", said(&out));
    let file = write_file(dir.path(), "w.toml", "addr = \"localhost:5000\"\n");
    let out = wharf(&["config", "check", "--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(said(&out).contains("is not IP:PORT"), "{}", said(&out));
}

#[test]
fn a_wharf_variable_that_is_no_setting_is_refused_with_the_closest() {
    // The binary's path; the unit tests in config::environment cover the
    // kinds of typo.
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["config", "check"])
        .env_remove("WHARF_CONFIG")
        .env("WHARF_GC_INTERVALL_SECS", "7")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = said(&out);
    assert!(
        text.contains("did you mean WHARF_GC_INTERVAL_SECS?"),
        "{text}"
    );
}

#[test]
fn the_example_configuration_runs_as_it_says() {
    let dir = tempfile::tempdir().unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/wharf.example.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["config", "check", "--config", example])
        .env_remove("WHARF_CONFIG")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_oci_json_and_echoes_only_a_prefix() {
    let reg = TestRegistry::start().await;
    // Past hyper's own limit on a request line: its 414, with our body.
    // (Sent raw: an HTTP client library refuses to build such a URI.)
    let huge = "a".repeat(100_000);
    let (status, answer) = raw_request(
        &reg.base,
        &format!("GET /v2/x/manifests/{huge} HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 414, "{answer}");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["errors"][0]["code"], "SIZE_INVALID", "{v}");
    // A long tag in a PUT is named by a prefix, not sent back whole.
    let long = "t".repeat(10_000);
    let r = reg.put_manifest("x", &long, OCI_MANIFEST, b"{}").await;
    assert_eq!(r.status(), 400);
    let body = r.text().await.unwrap();
    assert!(
        body.len() < 1_000 && body.contains("(10000 characters)"),
        "{body}"
    );
    // The connection's next request is served as before (a new one).
    assert_eq!(reg.get("/v2/").await.status(), 200);
}
