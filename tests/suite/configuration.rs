//! Configuration as a container platform gives it: `WHARF_*` variables over
//! the file, flags over both, secrets from mounted files, and
//! `wharf config check` run on the built binary.

use crate::common::pki::{htpasswd, write_file, TestCa};
use crate::common::services::{skip_without, Postgres};
use crate::common::*;
use std::process::Command;

/// `wharf config check` with `vars`: (exit code, stdout, stderr).
fn config_check(config: Option<&std::path::Path>, vars: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wharf"));
    cmd.args(["config", "check"])
        .env_remove("WHARF_CONFIG")
        .envs(vars.iter().copied());
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_wins_over_the_file_and_flags_win_over_both() {
    let dir = tempfile::tempdir().unwrap();
    let users = htpasswd(dir.path(), &[("ci", "pw")]);
    let config = write_file(
        dir.path(),
        "wharf.toml",
        "delete_enabled = true\n[limits]\nmax_blob_bytes = 0\n",
    );
    let users = users.to_str().unwrap();
    let wharf = WharfProcess::start_env(
        &dir.path().join("data"),
        &["--config".as_ref(), config.as_os_str()],
        &[
            // The file says yes; the environment says no.
            ("WHARF_DELETE_ENABLED", "false"),
            ("WHARF_LIMITS__MAX_BLOB_BYTES", "1000"),
            ("WHARF_AUTH__HTPASSWD", users),
            // The harness's --addr 127.0.0.1:0 flag must beat this port,
            // which nothing listens on.
            ("WHARF_ADDR", "127.0.0.1:1"),
        ],
    );
    let c = reqwest::Client::new();
    let r = c.get(format!("{}/v2/", wharf.base)).send().await.unwrap();
    assert_eq!(r.status(), 401, "WHARF_AUTH__HTPASSWD turned auth on");
    let push = |len: usize| {
        let data = payload(len, len as u64);
        c.post(format!(
            "{}/v2/env/blobs/uploads/?digest={}",
            wharf.base,
            digest(&data)
        ))
        .basic_auth("ci", Some("pw"))
        .body(data)
        .send()
    };
    let r = push(2000).await.unwrap();
    assert_eq!(r.status(), 413, "WHARF_LIMITS__MAX_BLOB_BYTES");
    let r = push(500).await.unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .delete(format!(
            "{}/v2/env/blobs/{}",
            wharf.base,
            digest(&payload(500, 500))
        ))
        .basic_auth("ci", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_oci_error(r, 405, "UNSUPPORTED").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_url_comes_from_a_mounted_secret_file() {
    let Some(pg) = Postgres::shared() else {
        skip_without("postgresql", false);
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = pg.fresh_database();
    let db = url.rsplit('/').next().unwrap();
    // As a platform mounts it: the secret with a trailing newline.
    let secret = write_file(dir.path(), "db-url", &format!("{url}\n"));
    let wharf = WharfProcess::start_env(
        &dir.path().join("data"),
        &[],
        &[
            ("WHARF_METADATA__BACKEND", "postgres"),
            ("WHARF_METADATA__URL_FILE", secret.to_str().unwrap()),
        ],
    );
    let c = reqwest::Client::new();
    let data = payload(4096, 7);
    let r = c
        .post(format!(
            "{}/v2/secret/blobs/uploads/?digest={}",
            wharf.base,
            digest(&data)
        ))
        .body(data)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // The push landed in that database, not in a redb file.
    let rows = pg.psql(db, "SELECT count(*) FROM blob_links").unwrap();
    assert_eq!(rows.trim(), "1", "{rows}");
    assert!(!dir.path().join("data/meta.redb").exists());
}

#[test]
fn config_check_names_the_bad_key_and_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let f = write_file(
        dir.path(),
        "w.toml",
        "fsync = true\n\n[limits]\nmax_blob_byte = 5\n",
    );
    let (code, _, err) = config_check(Some(&f), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("line 4") && err.contains("max_blob_byte"),
        "{err}"
    );

    // The same mistake in the environment names the variable.
    let (code, _, err) = config_check(None, &[("WHARF_LIMITS__MAX_BLOB_BYTE", "5")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("WHARF_LIMITS__MAX_BLOB_BYTE"), "{err}");
    let (code, _, err) = config_check(None, &[("WHARF_FSYNC", "perhaps")]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("WHARF_FSYNC") && err.contains("true or false"),
        "{err}"
    );
}

#[test]
fn config_check_opens_every_file_the_configuration_names() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("config check CA");
    let (cert, _) = ca.server_cert();
    let (_, other_key) = ca.server_cert();
    let cert = write_file(dir.path(), "tls.crt", &cert);
    let key = write_file(dir.path(), "tls.key", &other_key);
    let f = write_file(
        dir.path(),
        "w.toml",
        &format!(
            "[auth]\nhtpasswd = \"{}\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            dir.path().join("missing-htpasswd").display(),
            cert.display(),
            key.display()
        ),
    );
    let (code, out, err) = config_check(Some(&f), &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("missing-htpasswd"), "{err}");
    assert!(err.contains("does not match the certificate"), "{err}");
    // The effective configuration is still printed, for the operator.
    assert!(out.contains("[tls]"), "{out}");
}

#[test]
fn config_check_prints_the_effective_configuration_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write_file(dir.path(), "s3-secret", "hunter2-from-a-file\n");
    let f = write_file(
        dir.path(),
        "w.toml",
        "store_shards = 8\n[metadata]\nbackend = \"postgres\"\nurl = \"postgres://wharf:hunter2@db/wharf\"\n\
         [storage]\nbackend = \"s3\"\n[storage.s3]\nendpoint = \"http://127.0.0.1:1\"\nbucket = \"b\"\naccess_key_id = \"id\"\n",
    );
    let (code, out, err) = config_check(
        Some(&f),
        &[
            ("WHARF_STORE_SHARDS", "3"),
            (
                "WHARF_STORAGE__S3__SECRET_ACCESS_KEY_FILE",
                secret.to_str().unwrap(),
            ),
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("store_shards = 3"),
        "the environment wins: {out}"
    );
    assert!(!out.contains("hunter2"), "a secret was printed: {out}");
    assert!(out.contains("wharf:<redacted>@db"), "{out}");
    assert!(err.contains("ok"), "{err}");
    // Both a secret and its file is ambiguous.
    let (code, _, err) = config_check(
        Some(&f),
        &[
            ("WHARF_STORAGE__S3__SECRET_ACCESS_KEY", "x"),
            (
                "WHARF_STORAGE__S3__SECRET_ACCESS_KEY_FILE",
                secret.to_str().unwrap(),
            ),
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not both"), "{err}");
}
