//! Robot accounts over real sockets: created by an admin (API and the
//! `wharf robot` command), used by a client as `robot$NAME` with its
//! secret, limited to their repositories and actions, listed without a
//! secret, revoked and expired. In the cluster pass every request goes to
//! the next of three nodes, so "refused within 5 s" holds on every node.

use crate::common::pki::*;
use crate::common::*;
use serde_json::json;
use std::time::{Duration, Instant};

async fn registry(dir: &std::path::Path) -> TestRegistry {
    let file = htpasswd(dir, &[("root", "root-pw"), ("alice", "alice-pw")]);
    TestRegistry::start_with(move |c| {
        c.auth.htpasswd = Some(file);
        c.auth.admins = vec!["root".into()];
    })
    .await
}

async fn create(
    reg: &TestRegistry,
    as_user: (&str, &str),
    body: serde_json::Value,
) -> reqwest::Response {
    reg.client
        .post(reg.url("/_wharf/robots"))
        .basic_auth(as_user.0, Some(as_user.1))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// A monolithic push of `data` to `repo` as `user`: the status.
async fn push_as(reg: &TestRegistry, user: &str, secret: &str, repo: &str, data: &[u8]) -> u16 {
    reg.push_mono_as(repo, data, Some((user, secret)))
        .await
        .status()
        .as_u16()
}

async fn pull_status(reg: &TestRegistry, user: &str, secret: &str, repo: &str, d: &str) -> u16 {
    reg.client
        .get(reg.url(&format!("/v2/{repo}/blobs/{d}")))
        .basic_auth(user, Some(secret))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Polls until six requests in a row (two rounds of a three-node
/// cluster) answer 401, within `limit`; panics with the last status.
async fn refused_everywhere_within(
    reg: &TestRegistry,
    user: &str,
    secret: &str,
    d: &str,
    limit: Duration,
) {
    let start = Instant::now();
    let mut in_a_row = 0;
    let mut last = 0;
    while in_a_row < 6 {
        assert!(
            start.elapsed() < limit,
            "still answered {last} after {:?}",
            start.elapsed()
        );
        last = pull_status(reg, user, secret, "ci/app", d).await;
        in_a_row = if last == 401 { in_a_row + 1 } else { 0 };
        if in_a_row == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn robot_accounts_are_created_used_listed_and_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(dir.path()).await;
    let root = ("root", "root-pw");
    let spec = json!({
        "name": "ci",
        "repositories": ["ci/**"],
        "actions": ["pull", "push"],
        "expires_in_days": 30,
    });

    // Only admins create them; bad requests say what is wrong.
    assert_oci_error(
        create(&reg, ("alice", "alice-pw"), spec.clone()).await,
        403,
        "DENIED",
    )
    .await;
    let r = reg
        .client
        .post(reg.url("/_wharf/robots"))
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    for (bad, words) in [
        (
            json!({"name": "CI", "repositories": ["ci/**"], "actions": ["pull"]}),
            "robot name",
        ),
        (
            json!({"name": "ci", "repositories": ["ci/**"], "actions": ["sudo"]}),
            "actions",
        ),
        (
            json!({"name": "ci", "repositories": [], "actions": ["pull"]}),
            "repositories",
        ),
        (
            json!({"name": "ci", "repositories": ["x"], "actions": ["pull"], "expires_in_days": -1}),
            "expires_in_days",
        ),
        (
            json!({"name": "ci", "repos": ["x"], "actions": ["pull"]}),
            "unknown field",
        ),
    ] {
        let r = create(&reg, root, bad).await;
        assert_eq!(r.status(), 400);
        let body = r.text().await.unwrap();
        assert!(body.contains(words), "{body}");
    }

    let r = create(&reg, root, spec.clone()).await;
    assert_eq!(r.status(), 201);
    let made: serde_json::Value = r.json().await.unwrap();
    assert_eq!(made["name"], "robot$ci");
    assert_eq!(made["created_by"], "root");
    let secret = made["secret"].as_str().unwrap().to_owned();
    assert!(secret.len() >= 32, "{secret}");
    let expires = made["expires_at"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(expires.abs_diff(now + 30 * 86_400) < 60, "{expires}");
    assert_oci_error(create(&reg, root, spec.clone()).await, 409, "DENIED").await;

    // It works as a password, inside its grant only.
    let user = "robot$ci";
    let data = payload(3000, 7);
    let d = digest(&data);
    assert_eq!(push_as(&reg, user, &secret, "ci/app", &data).await, 201);
    assert_eq!(pull_status(&reg, user, &secret, "ci/app", &d).await, 200);
    assert_eq!(push_as(&reg, user, &secret, "other/app", &data).await, 403);
    let r = reg
        .client
        .delete(reg.url(&format!("/v2/ci/app/blobs/{d}")))
        .basic_auth(user, Some(&secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "delete was not granted");
    assert_eq!(
        pull_status(&reg, user, "wharf_wrong", "ci/app", &d).await,
        401
    );
    assert_eq!(
        pull_status(&reg, "robot$nobody", &secret, "ci/app", &d).await,
        401
    );
    // A robot is no admin.
    assert_oci_error(
        create(&reg, (user, &secret), json!({})).await,
        403,
        "DENIED",
    )
    .await;

    // Listed without its secret or the secret's hash.
    let r = reg
        .client
        .get(reg.url("/_wharf/robots"))
        .basic_auth("root", Some("root-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        !text.contains(&secret) && !text.contains("secret"),
        "{text}"
    );
    let list: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(list["robots"][0]["name"], "robot$ci");
    assert_eq!(list["robots"][0]["repositories"], json!(["ci/**"]));

    // Revoked: refused on every node within 5 s; a second delete is 404.
    let r = reg
        .client
        .delete(reg.url("/_wharf/robots/robot$ci"))
        .basic_auth("root", Some("root-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    refused_everywhere_within(&reg, user, &secret, &d, Duration::from_secs(5)).await;
    let r = reg
        .client
        .delete(reg.url("/_wharf/robots/ci"))
        .basic_auth("root", Some("root-pw"))
        .send()
        .await
        .unwrap();
    assert_oci_error(r, 404, "NAME_UNKNOWN").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_robot_is_refused_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(dir.path()).await;
    let data = payload(100, 1);
    let d = digest(&data);
    // Three seconds of life.
    let r = create(
        &reg,
        ("root", "root-pw"),
        json!({"name": "short", "repositories": ["ci/*"], "actions": ["pull", "push"],
               "expires_in_days": 3.0 / 86_400.0}),
    )
    .await;
    assert_eq!(r.status(), 201);
    let secret = r.json::<serde_json::Value>().await.unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let made = Instant::now();
    assert_eq!(
        push_as(&reg, "robot$short", &secret, "ci/app", &data).await,
        201
    );
    refused_everywhere_within(&reg, "robot$short", &secret, &d, Duration::from_secs(8)).await;
    assert!(
        made.elapsed() >= Duration::from_secs(2),
        "refused before it expired"
    );
    let r = reg
        .client
        .get(reg.url("/v2/"))
        .basic_auth("robot$short", Some(&secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("expired"));
}

/// `wharf robot create|list|delete`, as an operator types them, with the
/// admin's password in a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_robot_command_creates_lists_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(dir.path()).await;
    let pw = write_file(dir.path(), "admin-pw", "root-pw\n");
    let wharf = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
            .arg("robot")
            .args(args)
            .args(["--url", &reg.base, "--user", "root"])
            .env("WHARF_PASSWORD_FILE", &pw)
            .env_remove("WHARF_PASSWORD")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = wharf(&[
        "create",
        "builder",
        "--repository",
        "ci/**",
        "--action",
        "pull",
        "--action",
        "push",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("robot$builder: pull,push on ci/**, never expires"),
        "{out}"
    );
    let secret = out.lines().last().unwrap().trim().to_owned();
    assert!(secret.starts_with("wharf_"), "{out}");
    let data = payload(500, 2);
    assert_eq!(
        push_as(&reg, "robot$builder", &secret, "ci/x", &data).await,
        201
    );

    let (code, out, _) = wharf(&["list"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("robot$builder") && !out.contains(&secret),
        "{out}"
    );
    let (code, _, err) = wharf(&["create", "builder", "--repository", "x", "--action", "pull"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("exists"), "{err}");
    let (code, out, _) = wharf(&["delete", "robot$builder"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out, _) = wharf(&["list", "--json"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["robots"],
        json!([])
    );
}
