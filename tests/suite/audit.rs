//! The audit log over real sockets: each change (manifest push, tag and
//! manifest delete, blob delete, mount, robot create and delete, a GC
//! run) leaves exactly one record naming who did it and from where; a
//! refused write leaves a refusal record and no change; a refused login
//! is recorded; `GET /_wharf/audit` filters and pages, admins only;
//! `wharf audit` prints it. In the cluster pass every request goes to the
//! next of three nodes and the log is the database's.

use crate::common::pki::*;
use crate::common::*;
use serde_json::{json, Value};
use wharf::config::RuleConfig;

fn rule(repo: &str, users: &[&str], actions: &[&str]) -> RuleConfig {
    RuleConfig {
        repository: repo.into(),
        users: users.iter().map(|s| s.to_string()).collect(),
        actions: actions.iter().map(|s| s.to_string()).collect(),
    }
}

const ROOT: (&str, &str) = ("root", "root-pw");
const ALICE: (&str, &str) = ("alice", "alice-pw");
const BOB: (&str, &str) = ("bob", "bob-pw");

async fn registry(dir: &std::path::Path) -> TestRegistry {
    let file = htpasswd(dir, &[ROOT, ALICE, BOB]);
    TestRegistry::start_with(move |c| {
        c.auth.htpasswd = Some(file);
        c.auth.admins = vec!["root".into()];
        c.auth.rules = vec![
            rule("team/**", &["alice"], &["pull", "push", "delete"]),
            rule("team/**", &["bob"], &["pull"]),
            rule("**", &["root"], &["pull", "push", "delete"]),
        ];
    })
    .await
}

async fn send(
    reg: &TestRegistry,
    method: reqwest::Method,
    path: &str,
    who: (&str, &str),
    body: Option<(&str, Vec<u8>)>,
) -> reqwest::Response {
    let mut b = reg
        .client
        .request(method, reg.url(path))
        .basic_auth(who.0, Some(who.1));
    if let Some((content_type, bytes)) = body {
        b = b.header("content-type", content_type).body(bytes);
    }
    b.send().await.unwrap()
}

async fn push_blob(reg: &TestRegistry, repo: &str, who: (&str, &str), data: &[u8]) -> u16 {
    reg.push_mono_as(repo, data, Some(who))
        .await
        .status()
        .as_u16()
}

/// Every record matching `query`, following `next` links.
async fn records(reg: &TestRegistry, query: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut path = format!("/_wharf/audit?{query}");
    loop {
        let r = send(reg, reqwest::Method::GET, &path, ROOT, None).await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        out.extend(v["records"].as_array().unwrap().iter().cloned());
        match v["next"].as_str() {
            Some(n) => path = n.to_owned(),
            None => return out,
        }
    }
}

/// The records of `action`, asserting there is exactly one, and it.
fn one<'a>(all: &'a [Value], action: &str, reference: &str) -> &'a Value {
    let found: Vec<&Value> = all
        .iter()
        .filter(|r| r["action"] == action && r["reference"] == reference)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{action} {reference}: {found:?}\nall: {all:#?}"
    );
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_and_refusal_leaves_one_record() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(dir.path()).await;
    use reqwest::Method as M;

    // alice: an image pushed with a tag, a mount, then deletes.
    let config = payload(200, 1);
    let layer = payload(3000, 2);
    for b in [&config, &layer] {
        assert_eq!(push_blob(&reg, "team/a", ALICE, b).await, 201);
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &layer)],
    }))
    .unwrap();
    let md = digest(&manifest);
    let r = send(
        &reg,
        M::PUT,
        "/v2/team/a/manifests/v1",
        ALICE,
        Some((OCI_MANIFEST, manifest.clone())),
    )
    .await;
    assert_eq!(r.status(), 201);
    let mount = format!(
        "/v2/team/b/blobs/uploads/?mount={}&from=team/a",
        digest(&layer)
    );
    assert_eq!(send(&reg, M::POST, &mount, ALICE, None).await.status(), 201);
    assert_eq!(
        send(&reg, M::DELETE, "/v2/team/a/manifests/v1", ALICE, None)
            .await
            .status(),
        202
    );
    let by_digest = format!("/v2/team/a/manifests/{md}");
    assert_eq!(
        send(&reg, M::DELETE, &by_digest, ALICE, None)
            .await
            .status(),
        202
    );
    let blob = format!("/v2/team/b/blobs/{}", digest(&layer));
    assert_eq!(
        send(&reg, M::DELETE, &blob, ALICE, None).await.status(),
        202
    );

    // bob may only pull: his push is refused and changes nothing.
    let r = send(
        &reg,
        M::PUT,
        "/v2/team/a/manifests/bobs",
        BOB,
        Some((OCI_MANIFEST, manifest.clone())),
    )
    .await;
    assert_eq!(r.status(), 403);
    assert_eq!(
        send(&reg, M::GET, "/v2/team/a/manifests/bobs", BOB, None)
            .await
            .status(),
        404
    );
    // A wrong password is a refused login, in the name it claimed.
    assert_eq!(
        send(&reg, M::GET, "/v2/", ("alice", "guess"), None)
            .await
            .status(),
        401
    );
    // A client's first probe without credentials is no refusal.
    assert_eq!(reg.get("/v2/").await.status(), 401);
    // A manifest naming a blob the repository lacks: refused, recorded.
    let r = send(
        &reg,
        M::PUT,
        "/v2/team/c/manifests/x",
        ALICE,
        Some((OCI_MANIFEST, manifest.clone())),
    )
    .await;
    assert_eq!(r.status(), 400);

    // root: a robot made and removed, a GC run.
    let r = reg
        .client
        .post(reg.url("/_wharf/robots"))
        .basic_auth(ROOT.0, Some(ROOT.1))
        .json(&json!({"name": "ci", "repositories": ["team/**"], "actions": ["pull"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        send(&reg, M::DELETE, "/_wharf/robots/ci", ROOT, None)
            .await
            .status(),
        204
    );
    assert_eq!(
        send(&reg, M::POST, "/_wharf/gc?dry_run=true", ROOT, None)
            .await
            .status(),
        200
    );
    // Only admins read the log.
    assert_eq!(
        send(&reg, M::GET, "/_wharf/audit", ALICE, None)
            .await
            .status(),
        403
    );

    let all = records(&reg, "limit=3").await;
    let ok = |r: &Value, actor: &str| {
        assert_eq!(r["actor"], actor, "{r}");
        assert_eq!(r["result"], "ok", "{r}");
        assert_eq!(r["client"], "127.0.0.1", "{r}");
    };
    ok(one(&all, "push_manifest", "v1"), "alice");
    assert_eq!(one(&all, "push_manifest", "v1")["repository"], "team/a");
    ok(one(&all, "mount_blob", &digest(&layer)), "alice");
    ok(one(&all, "delete_tag", "v1"), "alice");
    ok(one(&all, "delete_manifest", &md), "alice");
    ok(one(&all, "delete_blob", &digest(&layer)), "alice");
    ok(one(&all, "delete_robot", "robot$ci"), "root");
    let made = one(&all, "create_robot", "robot$ci");
    assert_eq!(made["actor"], "root");
    assert!(
        made["result"]
            .as_str()
            .unwrap()
            .starts_with("ok: pull on team/**"),
        "{made}"
    );
    let gc = one(&all, "gc", "dry run");
    assert_eq!(gc["actor"], "root");

    let refused = one(&all, "push_manifest", "bobs");
    assert_eq!(refused["actor"], "bob");
    assert!(
        refused["result"]
            .as_str()
            .unwrap()
            .starts_with("refused: 403"),
        "{refused}"
    );
    let login = all
        .iter()
        .filter(|r| r["action"] == "login")
        .collect::<Vec<_>>();
    assert_eq!(login.len(), 1, "{login:?}");
    assert_eq!(login[0]["actor"], "alice");
    assert!(login[0]["result"]
        .as_str()
        .unwrap()
        .starts_with("refused: 401"));
    let invalid = one(&all, "push_manifest", "x");
    assert!(
        invalid["result"]
            .as_str()
            .unwrap()
            .starts_with("refused: 400"),
        "{invalid}"
    );
    let denied_read = all
        .iter()
        .filter(|r| r["action"] == "access" && r["actor"] == "alice")
        .count();
    assert_eq!(denied_read, 1, "alice's refused GET /_wharf/audit");
    // Newest first, ids strictly falling.
    let ids: Vec<u64> = all.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
    // Nothing else: the blob pushes themselves are recorded by their
    // manifest, reads not at all.
    assert_eq!(all.len(), 12, "{all:#?}");

    // Filters.
    let team_a = records(&reg, "repository=team/a").await;
    assert!(team_a.iter().all(|r| r["repository"] == "team/a"));
    assert_eq!(team_a.len(), 4, "{team_a:#?}");
    let bobs = records(&reg, "actor=bob").await;
    assert_eq!(bobs.len(), 1);
    let future = records(&reg, "since=2100-01-01").await;
    assert!(future.is_empty());
    let r = send(&reg, M::GET, "/_wharf/audit?since=yesterday", ROOT, None).await;
    assert_oci_error(r, 400, "UNSUPPORTED").await;

    // The command, as an operator types it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args([
            "audit",
            "--url",
            &reg.base,
            "--user",
            "root",
            "--repository",
            "team/a",
        ])
        .env("WHARF_PASSWORD", "root-pw")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(" alice push_manifest team/a v1 ok (127.0.0.1)"),
        "{text}"
    );
    assert!(
        text.contains(" bob push_manifest team/a bobs refused: 403"),
        "{text}"
    );
}

/// A quota refusal is a refusal record with the quota's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_refusal_is_recorded_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = htpasswd(dir.path(), &[ROOT]);
    let reg = TestRegistry::start_with(move |c| {
        c.auth.htpasswd = Some(file);
        c.auth.admins = vec!["root".into()];
        c.quota = vec![wharf::config::QuotaConfig {
            repositories: "small/**".into(),
            max_bytes: wharf::config::ByteCount(1000),
        }];
    })
    .await;
    assert_eq!(
        push_blob(&reg, "small/a", ROOT, &payload(2000, 1)).await,
        403
    );
    let all = records(&reg, "repository=small/a").await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["action"], "push_blob");
    let why = all[0]["result"].as_str().unwrap();
    assert!(
        why.starts_with("refused: 403 quota small/** is full"),
        "{why}"
    );
}
