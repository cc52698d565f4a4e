//! Temporary S3 credentials, found as AWS SDKs find them: a node whose
//! configuration names no keys gets them from web identity (SeaweedFS's
//! STS `AssumeRoleWithWebIdentity`, trusting the harness's OIDC issuer),
//! the ECS container endpoint or IMDSv2 (served by the harness, handing
//! out that STS's credentials). Sessions live 12 s, so each node
//! refreshes several times while it pushes and pulls, and no request may
//! fail at a switch.

use crate::cluster::Cluster;
use crate::common::credential_server::{
    seaweed_iam, CredentialServer, Issued, ECS_AUTHORIZATION, ROLE_ARN,
};
use crate::common::services::{skip_without, Seaweed};
use crate::common::*;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The cluster's configuration without its keys.
fn keyless(toml: &str) -> String {
    toml.lines()
        .filter(|l| !l.starts_with("access_key_id") && !l.starts_with("secret_access_key"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Starts a node with `vars` as its environment and pushes and pulls for
/// `secs`: every answer must be right. Returns how many pushes it made.
async fn pushes_through_refreshes(
    toml: &str,
    vars: &[(&str, String)],
    repo: &str,
    secs: u64,
) -> usize {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("wharf.toml"), toml).unwrap();
    let config = dir.path().join("wharf.toml");
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let node = WharfProcess::start_env(
        &dir.path().join("data"),
        &["--config".as_ref(), config.as_os_str()],
        &vars,
    );
    let reg = TestRegistry::at(&node.base);
    let until = Instant::now() + Duration::from_secs(secs);
    let mut n = 0;
    while Instant::now() < until {
        let data = payload(300_000 + n, n as u64 ^ 0x5eed);
        let d = reg.push_mono(repo, &data).await;
        let got = reg.get_blob(repo, &d).await;
        assert_eq!(got.status(), 200, "{repo}: push {n} reads back");
        assert_eq!(got.bytes().await.unwrap().as_ref(), data.as_slice());
        n += 1;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    n
}

/// A SeaweedFS of the test's own whose STS trusts `server`'s issuer, and
/// a bucket and PostgreSQL database for nodes on it.
async fn store_trusting(
    server: &CredentialServer,
    dir: &std::path::Path,
) -> Option<(Seaweed, Cluster)> {
    let weed = Seaweed::start_with_iam(dir.join("weed"), Some(&seaweed_iam(&server.url(""), 12)));
    if skip_without("SeaweedFS", weed.is_some()) {
        return None;
    }
    let weed = weed?;
    server.relay_to(weed.endpoint());
    let cluster = Cluster::start_on(&weed, 0, |_| {}).await?;
    Some((weed, cluster))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_push_and_pull_through_refreshed_temporary_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let server = CredentialServer::start().await;
    let Some((_weed, c)) = store_trusting(&server, dir.path()).await else {
        return;
    };
    // Sessions live 12 s: refreshed 9 s in, while the old ones still
    // sign; 24 s of pushes cross at least two switches.
    let toml = keyless(&c.toml);
    let token_file = dir.path().join("token");
    std::fs::write(
        &token_file,
        server.issuer.token("system:serviceaccount:ci:wharf"),
    )
    .unwrap();
    let none = ("AWS_EC2_METADATA_DISABLED", "false".to_owned());
    let web = [
        (
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            token_file.display().to_string(),
        ),
        ("AWS_ROLE_ARN", ROLE_ARN.into()),
        ("AWS_ROLE_SESSION_NAME", "wharf-test".into()),
        ("AWS_ENDPOINT_URL_STS", server.url("/sts")),
        none.clone(),
    ];
    let ecs = [
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            server.url("/ecs/credentials"),
        ),
        (
            "AWS_CONTAINER_AUTHORIZATION_TOKEN",
            ECS_AUTHORIZATION.into(),
        ),
        none.clone(),
    ];
    let imds = [("AWS_EC2_METADATA_SERVICE_ENDPOINT", server.url("")), none];
    let (a, b, i) = tokio::join!(
        pushes_through_refreshes(&toml, &web, "creds/web", 24),
        pushes_through_refreshes(&toml, &ecs, "creds/ecs", 24),
        pushes_through_refreshes(&toml, &imds, "creds/imds", 24),
    );
    let issued: &Issued = &server.issued;
    let (sts, from_ecs, from_imds) = (
        issued.sts.load(Ordering::Relaxed),
        issued.ecs.load(Ordering::Relaxed),
        issued.imds.load(Ordering::Relaxed),
    );
    eprintln!(
        "temporary credentials: web identity {sts} issued over {a} pushes, ECS {from_ecs} over {b}, IMDSv2 {from_imds} over {i}"
    );
    for (name, fetched) in [("STS", sts), ("ECS", from_ecs), ("IMDSv2", from_imds)] {
        assert!(
            fetched >= 3,
            "{name}: fetched {fetched} times: not refreshed"
        );
    }
    assert_eq!(
        issued.refused.load(Ordering::Relaxed),
        0,
        "every call followed the protocol"
    );
}

/// A node with no keys anywhere and IMDS turned off does not start, and
/// says where it looked; a web identity whose token STS refuses stops the
/// start with STS's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_refused_credentials_stop_the_start_and_say_why() {
    let Some(c) = Cluster::start(0, |_| {}).await else {
        return;
    };
    let server = CredentialServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wharf.toml");
    std::fs::write(&config, keyless(&c.toml)).unwrap();
    let token_file = dir.path().join("token");
    // Signed by a key the store does not trust (its STS trusts no issuer).
    std::fs::write(&token_file, server.issuer.token("someone")).unwrap();
    server.relay_to(c.s3.endpoint.clone());
    let check = |vars: &[(&str, String)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(["config", "check", "--connect", "--config"])
            .arg(&config)
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, said) = check(&[("AWS_EC2_METADATA_DISABLED", "true".into())]);
    assert_ne!(code, Some(0));
    assert!(
        said.contains("no credentials") && said.contains("AWS_WEB_IDENTITY_TOKEN_FILE"),
        "{said}"
    );
    let (code, said) = check(&[
        (
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            token_file.display().to_string(),
        ),
        ("AWS_ROLE_ARN", ROLE_ARN.into()),
        ("AWS_ENDPOINT_URL_STS", server.url("/sts")),
    ]);
    assert_ne!(code, Some(0));
    assert!(
        said.contains("web identity") && said.contains("/sts answered 403"),
        "{said}"
    );
}
