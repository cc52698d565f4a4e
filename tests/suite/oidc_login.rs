//! CI jobs log in with their OIDC token as the password (`[[auth.oidc]]`):
//! a test issuer over https (a test CA) publishes its keys; a good token
//! pushes and pulls where its grant says and nowhere else; every way a
//! token can be wrong is a 401 that says why; a login outlives the
//! token's `exp` until `iat + session_secs`, never longer; skopeo and
//! podman log in with a token.

use crate::common::oidc_issuer::OidcIssuer;
use crate::common::pki::SigningKey;
use crate::common::*;
use crate::secure_clients::{oci_fixture, skip, Clients};
use serde_json::json;
use std::time::Duration;

pub(crate) const AUDIENCE: &str = "registry.example.com";

/// The `[[auth.oidc]]` entry for `issuer`, its sub-tables under `prefix`
/// (`""` for the entry alone, `"auth.oidc."` in a whole file).
fn oidc_toml(issuer: &OidcIssuer, prefix: &str) -> String {
    format!(
        r#"
issuer = "{}"
audience = "{AUDIENCE}"
ca_file = "{}"
user = "gh:{{repository}}"
session_secs = 3600
[{prefix}require]
repository_owner = "my-org"
ref = "refs/heads/*"
[[{prefix}grants]]
repository = "ci/{{repository}}/**"
actions = ["pull", "push"]
"#,
        issuer.url,
        issuer.ca_file.display()
    )
}

pub(crate) fn oidc_config(issuer: &OidcIssuer) -> wharf::config::OidcConfig {
    toml::from_str(&oidc_toml(issuer, "")).unwrap()
}

/// A monolithic push of `data` as a token bearer; the status.
async fn push_with(reg: &TestRegistry, token: &str, repo: &str, data: &[u8]) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(reg.url(&format!(
            "/v2/{repo}/blobs/uploads/?digest={}",
            digest(data)
        )))
        .basic_auth("oidc", Some(token))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ci_token_is_a_password_within_its_grants_and_every_bad_one_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = OidcIssuer::start(dir.path()).await;
    let cfg = oidc_config(&issuer);
    let reg = TestRegistry::start_with(move |c| c.auth.oidc = vec![cfg]).await;
    let good = issuer.token("k1", issuer.claims(AUDIENCE, json!({})));

    // Inside the grant: push and pull. Outside: 403.
    let (status, said) = push_with(&reg, &good, "ci/my-org/app/img", b"layer").await;
    assert_eq!(status, 201, "{said}");
    let r = reqwest::Client::new()
        .get(reg.url(&format!("/v2/ci/my-org/app/img/blobs/{}", digest(b"layer"))))
        .basic_auth("oidc", Some(&good))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for outside in ["other/img", "ci/my-org/other/img", "ci/my-org/app"] {
        let (status, said) = push_with(&reg, &good, outside, b"x").await;
        assert_eq!(status, 403, "{outside}: {said}");
    }

    // Every way a token can be wrong: 401, and the reason in the message.
    let other_key = SigningKey::ec();
    let now = crate::common::pki::now();
    let hs256_with_public_key = {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(
            &header,
            &issuer.claims(AUDIENCE, json!({})),
            &jsonwebtoken::EncodingKey::from_secret(issuer.key("k1").public_pem.as_bytes()),
        )
        .unwrap()
    };
    let unsigned = {
        use base64::Engine;
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!(
            "{}.{}.c2ln",
            b64(json!({"alg": "none", "kid": "k1"})),
            b64(issuer.claims(AUDIENCE, json!({})))
        )
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "wrong aud",
            issuer.token("k1", issuer.claims("someone-else", json!({}))),
            "InvalidAudience",
        ),
        (
            "wrong iss",
            issuer.token(
                "k1",
                issuer.claims(AUDIENCE, json!({"iss": "https://evil.example"})),
            ),
            "not configured",
        ),
        (
            "expired",
            issuer.token(
                "k1",
                issuer.claims(
                    AUDIENCE,
                    json!({"iat": now - 900, "nbf": now - 900, "exp": now - 300}),
                ),
            ),
            "ExpiredSignature",
        ),
        (
            "not yet valid",
            issuer.token("k1", issuer.claims(AUDIENCE, json!({"nbf": now + 600}))),
            "ImmatureSignature",
        ),
        (
            "bad signature",
            other_key.sign_as("k1", issuer.claims(AUDIENCE, json!({}))),
            "InvalidSignature",
        ),
        ("alg none", unsigned, "not a signed JWT"),
        ("HS256 with the public key", hs256_with_public_key, "HS256"),
        (
            "unknown kid",
            other_key.sign_as("k9", issuer.claims(AUDIENCE, json!({}))),
            "unknown signing key",
        ),
        (
            "require mismatch",
            issuer.token(
                "k1",
                issuer.claims(AUDIENCE, json!({"ref": "refs/tags/v1"})),
            ),
            "does not match",
        ),
        (
            "a glob in a claim",
            issuer.token(
                "k1",
                issuer.claims(AUDIENCE, json!({"repository": "my-org/*"})),
            ),
            "not a repository path",
        ),
        (
            "a climb in a claim",
            issuer.token(
                "k1",
                issuer.claims(AUDIENCE, json!({"repository": "my-org/../x"})),
            ),
            "not a repository path",
        ),
    ];
    for (case, token, reason) in cases {
        let (status, said) = push_with(&reg, &token, "ci/my-org/app/img", b"bad").await;
        assert_eq!(status, 401, "{case}: {said}");
        assert!(said.contains(reason), "{case}: {said}");
        assert!(!said.contains(&token), "{case}: the token is echoed");
    }

    // A key rotation: a token signed by a key published since the last
    // fetch verifies once a minute has passed since that fetch.
    issuer.add_key("k2", SigningKey::rsa(dir.path()));
    let rotated = issuer.token("k2", issuer.claims(AUDIENCE, json!({})));
    tokio::time::sleep(Duration::from_secs(61)).await;
    let (status, said) = push_with(&reg, &rotated, "ci/my-org/app/img", b"rotated").await;
    assert_eq!(status, 201, "the new key is fetched: {said}");
}

/// A token accepted once stays a password past its own `exp` until
/// `iat + session_secs`, and not a second longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_lasts_until_iat_plus_session_secs_even_past_exp() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = OidcIssuer::start(dir.path()).await;
    let cfg = oidc_config(&issuer);
    let reg = TestRegistry::start_with(move |c| c.auth.oidc = vec![cfg]).await;
    let now = crate::common::pki::now();
    // Issued 3590 s ago (the session ends 10 s from now); expired 58 s ago,
    // inside the 60 s of skew, so the first login takes it.
    let token = issuer.token(
        "k1",
        issuer.claims(
            AUDIENCE,
            json!({"iat": now - 3590, "nbf": now - 3590, "exp": now - 58}),
        ),
    );
    assert_eq!(
        push_with(&reg, &token, "ci/my-org/app/a", b"1").await.0,
        201
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Past exp + skew now: only the session keeps it.
    let (status, said) = push_with(&reg, &token, "ci/my-org/app/a", b"2").await;
    assert_eq!(status, 201, "inside the session: {said}");
    tokio::time::sleep(Duration::from_secs(7)).await;
    let (status, said) = push_with(&reg, &token, "ci/my-org/app/a", b"3").await;
    assert_eq!(status, 401, "past iat + session_secs: {said}");
}

/// A burst of CI jobs logging in at once to a registry that has not seen
/// the issuer's keys yet fetches them once, not once per job.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_logins_fetches_the_keys_once() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = OidcIssuer::start(dir.path()).await;
    let cfg = oidc_config(&issuer);
    let reg = std::sync::Arc::new(TestRegistry::start_with(move |c| c.auth.oidc = vec![cfg]).await);
    let mut jobs = Vec::new();
    for i in 0..20u64 {
        let token = issuer.token(
            "k1",
            issuer.claims(AUDIENCE, json!({ "run_id": i.to_string() })),
        );
        let reg = reg.clone();
        jobs.push(tokio::spawn(async move {
            push_with(&reg, &token, "ci/my-org/app/x", &payload(100, i))
                .await
                .0
        }));
    }
    for j in jobs {
        assert_eq!(j.await.unwrap(), 201);
    }
    // In the cluster pass each of the three nodes fetches once.
    let nodes = if cluster_mode() { 3 } else { 1 };
    assert!(
        issuer.jwks_fetches() <= nodes,
        "{} fetches",
        issuer.jwks_fetches()
    );
}

/// skopeo and podman log in with a CI token as the password and push and
/// pull inside the grant.
#[test]
fn skopeo_and_podman_log_in_with_a_ci_token() {
    if skip() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let issuer = rt.block_on(OidcIssuer::start(dir.path()));
    let toml = format!("[[auth.oidc]]{}", oidc_toml(&issuer, "auth.oidc."));
    let w = WharfProcess::start_with_toml(dir.path(), &toml);
    let host = w.base.trim_start_matches("http://").to_owned();
    let token = issuer.token("k1", issuer.claims(AUDIENCE, json!({})));
    let c = Clients::new(dir.path());
    let (fx, _) = oci_fixture(dir.path());
    let src = format!("oci:{}:v1", fx.display());
    let dest = format!("docker://{host}/ci/my-org/app/img:v1");
    let login = [
        "login",
        "--tls-verify=false",
        "-u",
        "oidc",
        "-p",
        &token,
        &host,
    ];
    c.ok("skopeo", &login);
    c.ok("skopeo", &["copy", "--dest-tls-verify=false", &src, &dest]);
    c.ok("podman", &login);
    let img = format!("{host}/ci/my-org/app/img:v1");
    c.ok("podman", &["pull", "--tls-verify=false", &img]);
    let elsewhere = format!("{host}/other/img:v1");
    c.ok("podman", &["tag", &img, &elsewhere]);
    let err = c.fails("podman", &["push", "--tls-verify=false", &elsewhere]);
    assert!(err.contains("denied") || err.contains("403"), "{err}");
    drop(rt);
}
