//! Authentication and authorization over real sockets: every 401 and 403
//! path for htpasswd users and for bearer tokens, repository rules,
//! anonymous pull, mounts across repositories, the operator endpoint.

use crate::common::pki::*;
use crate::common::*;
use serde_json::json;
use wharf::config::{RuleConfig, TokenConfig};

fn rule(repo: &str, users: &[&str], actions: &[&str]) -> RuleConfig {
    RuleConfig {
        repository: repo.into(),
        users: users.iter().map(|s| s.to_string()).collect(),
        actions: actions.iter().map(|s| s.to_string()).collect(),
    }
}

async fn basic_registry(dir: &std::path::Path, rules: Vec<RuleConfig>) -> TestRegistry {
    let users = [
        ("alice", "alice-pw"),
        ("bob", "bob-pw"),
        ("root", "root-pw"),
    ];
    let file = htpasswd(dir, &users);
    TestRegistry::start_with(move |c| {
        c.auth.htpasswd = Some(file);
        c.auth.rules = rules;
        c.auth.admins = vec!["root".into()];
    })
    .await
}

async fn assert_challenge(r: reqwest::Response, expected: &str) {
    assert_eq!(
        header(&r, "www-authenticate"),
        Some(expected),
        "challenge of {}",
        r.url()
    );
    assert_oci_error(r, 401, "UNAUTHORIZED").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_every_refusal_path() {
    let dir = tempfile::tempdir().unwrap();
    let reg = basic_registry(
        dir.path(),
        vec![
            rule("public/**", &["anonymous"], &["pull"]),
            rule("team/*", &["alice"], &["pull", "push"]),
            rule("**", &["*"], &["pull"]),
            rule("**", &["root"], &["pull", "push", "delete"]),
        ],
    )
    .await;
    let c = &reg.client;
    let basic = r#"Basic realm="wharf""#;

    // No credentials: 401 with the challenge, on every kind of endpoint.
    assert_challenge(reg.get("/v2/").await, basic).await;
    assert_challenge(reg.get("/v2/team/app/manifests/latest").await, basic).await;
    assert_challenge(reg.get("/v2/_catalog").await, basic).await;
    let r = c
        .post(reg.url("/v2/team/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_challenge(r, basic).await;
    let r = c
        .head(reg.url("/v2/team/app/manifests/latest"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(header(&r, "www-authenticate"), Some(basic));

    // Wrong password, unknown user, malformed header: 401 too.
    for (u, p) in [("alice", "wrong"), ("mallory", "alice-pw"), ("", "")] {
        let r = c
            .get(reg.url("/v2/"))
            .basic_auth(u, Some(p))
            .send()
            .await
            .unwrap();
        assert_challenge(r, basic).await;
    }
    for bad in ["Basic !!!notbase64", "Digest username=alice", "Bearer abc"] {
        let r = c
            .get(reg.url("/v2/"))
            .header("authorization", bad)
            .send()
            .await
            .unwrap();
        assert_challenge(r, basic).await;
    }

    // Valid users.
    let as_user = |u: &'static str, p: &'static str, m: reqwest::Method, path: &str| {
        c.request(m, reg.url(path)).basic_auth(u, Some(p))
    };
    let r = as_user("alice", "alice-pw", reqwest::Method::GET, "/v2/")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The remembered success (no bcrypt) must still refuse a wrong password.
    let r = as_user("alice", "alice-pw2", reqwest::Method::GET, "/v2/")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // alice pushes to team/*, not elsewhere, and may not delete.
    let r = as_user(
        "alice",
        "alice-pw",
        reqwest::Method::POST,
        "/v2/team/app/blobs/uploads/",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 202);
    let r = as_user(
        "alice",
        "alice-pw",
        reqwest::Method::POST,
        "/v2/other/app/blobs/uploads/",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(header(&r, "www-authenticate"), None);
    assert_oci_error(r, 403, "DENIED").await;
    let r = as_user(
        "alice",
        "alice-pw",
        reqwest::Method::PUT,
        "/v2/team/app/manifests/v1",
    )
    .send()
    .await
    .unwrap();
    assert_ne!(r.status(), 403, "alice may push manifests to team/app");
    let r = as_user(
        "alice",
        "alice-pw",
        reqwest::Method::DELETE,
        "/v2/team/app/manifests/v1",
    )
    .send()
    .await
    .unwrap();
    assert_oci_error(r, 403, "DENIED").await;

    // bob only pulls (the "*" rule): reads pass auth, writes are denied.
    let r = as_user(
        "bob",
        "bob-pw",
        reqwest::Method::GET,
        "/v2/team/app/manifests/v1",
    )
    .send()
    .await
    .unwrap();
    assert_oci_error(r, 404, "MANIFEST_UNKNOWN").await;
    let r = as_user(
        "bob",
        "bob-pw",
        reqwest::Method::POST,
        "/v2/team/app/blobs/uploads/",
    )
    .send()
    .await
    .unwrap();
    assert_oci_error(r, 403, "DENIED").await;
    let r = as_user("bob", "bob-pw", reqwest::Method::GET, "/v2/_catalog")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // root deletes.
    let r = as_user(
        "root",
        "root-pw",
        reqwest::Method::DELETE,
        "/v2/team/app/manifests/sha256:0000000000000000000000000000000000000000000000000000000000000000",
    )
    .send()
    .await
    .unwrap();
    assert_oci_error(r, 404, "MANIFEST_UNKNOWN").await;

    // Anonymous pull where a rule allows it, but never anonymous push.
    let r = reg.get("/v2/public/base/manifests/latest").await;
    assert_oci_error(r, 404, "MANIFEST_UNKNOWN").await;
    let r = c
        .post(reg.url("/v2/public/base/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_challenge(r, basic).await;

    // Operator endpoint: admins only.
    let gc = |u: Option<(&'static str, &'static str)>| {
        let b = c.post(reg.url("/_wharf/gc?dry_run=true"));
        match u {
            Some((u, p)) => b.basic_auth(u, Some(p)),
            None => b,
        }
    };
    assert_challenge(gc(None).send().await.unwrap(), basic).await;
    assert_oci_error(
        gc(Some(("bob", "bob-pw"))).send().await.unwrap(),
        403,
        "DENIED",
    )
    .await;
    assert_eq!(
        gc(Some(("root", "root-pw"))).send().await.unwrap().status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_needs_pull_on_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let reg = basic_registry(
        dir.path(),
        vec![
            rule("secret/*", &["root"], &["pull", "push"]),
            rule("team/*", &["alice", "root"], &["pull", "push"]),
        ],
    )
    .await;
    let data = payload(10_000, 7);
    let d = digest(&data);
    let r = reg
        .client
        .post(reg.url(&format!("/v2/secret/x/blobs/uploads/?digest={d}")))
        .basic_auth("root", Some("root-pw"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let mount = |u: &'static str, p: &'static str| {
        reg.client
            .post(reg.url(&format!(
                "/v2/team/app/blobs/uploads/?mount={d}&from=secret/x"
            )))
            .basic_auth(u, Some(p))
            .send()
    };
    // alice cannot read secret/x: the mount is ignored and an upload starts.
    let r = mount("alice", "alice-pw").await.unwrap();
    assert_eq!(r.status(), 202);
    let r = reg
        .client
        .head(reg.url(&format!("/v2/team/app/blobs/{d}")))
        .basic_auth("alice", Some("alice-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the blob must not leak through a mount");
    // root can: 201.
    assert_eq!(mount("root", "root-pw").await.unwrap().status(), 201);
}

fn token_config(dir: &std::path::Path, key: &SigningKey) -> TokenConfig {
    TokenConfig {
        realm: "http://auth.test/token".into(),
        service: SERVICE.into(),
        issuer: ISSUER.into(),
        public_key: write_file(dir, "token.pub", &key.public_pem),
    }
}

async fn token_registry(dir: &std::path::Path, key: &SigningKey) -> TestRegistry {
    let t = token_config(dir, key);
    TestRegistry::start_with(move |c| c.auth.token = Some(t)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_every_refusal_path() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::ec();
    let reg = token_registry(dir.path(), &key).await;
    let c = &reg.client;
    let realm = r#"Bearer realm="http://auth.test/token",service="wharf-test""#;

    // Anonymous: 401 with the scope the request needs.
    assert_challenge(reg.get("/v2/").await, realm).await;
    assert_challenge(
        reg.get("/v2/a/b/manifests/latest").await,
        &format!(r#"{realm},scope="repository:a/b:pull""#),
    )
    .await;
    let r = c
        .post(reg.url("/v2/a/b/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_challenge(r, &format!(r#"{realm},scope="repository:a/b:pull,push""#)).await;
    let r = c
        .delete(reg.url("/v2/a/b/manifests/latest"))
        .send()
        .await
        .unwrap();
    assert_challenge(r, &format!(r#"{realm},scope="repository:a/b:delete""#)).await;
    assert_challenge(
        reg.get("/v2/_catalog").await,
        &format!(r#"{realm},scope="registry:catalog:*""#),
    )
    .await;

    let with = |t: &str, m: reqwest::Method, path: &str| {
        c.request(m, reg.url(path)).bearer_auth(t.to_owned())
    };
    // A pull token reads, and is refused (403) for a push.
    let pull = key.sign(claims(repo_access("a/b", &["pull"])));
    let r = with(&pull, reqwest::Method::GET, "/v2/a/b/manifests/latest")
        .send()
        .await
        .unwrap();
    assert_oci_error(r, 404, "MANIFEST_UNKNOWN").await;
    let r = with(&pull, reqwest::Method::POST, "/v2/a/b/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&r, "www-authenticate"),
        Some(
            format!(r#"{realm},scope="repository:a/b:pull,push",error="insufficient_scope""#)
                .as_str()
        )
    );
    assert_oci_error(r, 403, "DENIED").await;
    // ... and for another repository, and for the catalog.
    let r = with(&pull, reqwest::Method::GET, "/v2/a/c/tags/list")
        .send()
        .await
        .unwrap();
    assert_oci_error(r, 403, "DENIED").await;
    let r = with(&pull, reqwest::Method::GET, "/v2/_catalog")
        .send()
        .await
        .unwrap();
    assert_oci_error(r, 403, "DENIED").await;

    // A push token completes an upload.
    let push = key.sign(claims(repo_access("a/b", &["pull", "push"])));
    let data = payload(5000, 3);
    let r = with(
        &push,
        reqwest::Method::POST,
        &format!("/v2/a/b/blobs/uploads/?digest={}", digest(&data)),
    )
    .body(data)
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let catalog = key.sign(claims(
        json!([{"type": "registry", "name": "catalog", "actions": ["*"]}]),
    ));
    let r = with(&catalog, reqwest::Method::GET, "/v2/_catalog")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Tokens that must not verify: 401, never 200 or 403.
    let access = repo_access("a/b", &["pull"]);
    let mut bad = Vec::new();
    let mut expired = claims(access.clone());
    expired["exp"] = json!(now() - 120);
    bad.push(("expired", key.sign(expired)));
    let mut early = claims(access.clone());
    early["nbf"] = json!(now() + 600);
    bad.push(("not yet valid", key.sign(early)));
    let mut iss = claims(access.clone());
    iss["iss"] = json!("someone-else");
    bad.push(("wrong issuer", key.sign(iss)));
    let mut aud = claims(access.clone());
    aud["aud"] = json!("another-registry");
    bad.push(("wrong audience", key.sign(aud)));
    let mut no_exp = claims(access.clone());
    no_exp.as_object_mut().unwrap().remove("exp");
    bad.push(("no expiry", key.sign(no_exp)));
    bad.push(("other key", SigningKey::ec().sign(claims(access.clone()))));
    // The classic confusion: HS256 keyed with the public key's PEM.
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims(access.clone()),
        &jsonwebtoken::EncodingKey::from_secret(key.public_pem.as_bytes()),
    )
    .unwrap();
    bad.push(("HS256 with the public key", hs));
    let good = key.sign(claims(repo_access("a/b", &["pull"])));
    let mut parts: Vec<String> = good.split('.').map(String::from).collect();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut payload_json: serde_json::Value =
        serde_json::from_slice(&b64.decode(&parts[1]).unwrap()).unwrap();
    payload_json["access"] = repo_access("a/b", &["pull", "push", "delete"]);
    parts[1] = b64.encode(payload_json.to_string());
    bad.push(("tampered payload", parts.join(".")));
    bad.push((
        "alg none",
        format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            parts[1]
        ),
    ));
    bad.push(("garbage", "not-a-jwt".into()));
    for (why, t) in bad {
        let r = with(&t, reqwest::Method::GET, "/v2/a/b/tags/list")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{why} token must be refused with 401");
        assert!(
            header(&r, "www-authenticate").is_some_and(|h| h.starts_with("Bearer realm=")),
            "{why}: challenge"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_tokens_verify() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::rsa(dir.path());
    let reg = token_registry(dir.path(), &key).await;
    let t = key.sign(claims(repo_access("r", &["pull"])));
    let r = reg
        .client
        .get(reg.url("/v2/r/tags/list"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_oci_error(r, 404, "NAME_UNKNOWN").await;
    let forged = SigningKey::rsa(dir.path()).sign(claims(repo_access("r", &["pull"])));
    let r = reg
        .client
        .get(reg.url("/v2/r/tags/list"))
        .bearer_auth(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// The whole token dance with a real client: oci-client gets a 401, asks
/// the token server (Basic credentials) for the scope, retries with the
/// bearer token, pushes and pulls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_flow_end_to_end_with_oci_client() {
    use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
    use oci_client::manifest::IMAGE_LAYER_GZIP_MEDIA_TYPE;
    use oci_client::secrets::RegistryAuth;

    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::ec();
    let public = key.public_pem.clone();
    let issuer = token_server(key, "alice", "alice-pw").await;
    let t = TokenConfig {
        realm: format!("http://{issuer}/token"),
        service: SERVICE.into(),
        issuer: ISSUER.into(),
        public_key: write_file(dir.path(), "token.pub", &public),
    };
    let reg = TestRegistry::start_with(move |c| c.auth.token = Some(t)).await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    // A client remembers a failed login for its registry: one per attempt.
    let client = || {
        oci_client::Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..Default::default()
        })
    };
    let host = reg.base.trim_start_matches("http://");
    let image: oci_client::Reference = format!("{host}/tok/img:v1").parse().unwrap();
    let layer = ImageLayer::new(payload(40_000, 9), IMAGE_LAYER_GZIP_MEDIA_TYPE.into(), None);
    let cfg = Config::oci_v1(br#"{"architecture":"amd64","os":"linux"}"#.to_vec(), None);
    let alice = RegistryAuth::Basic("alice".into(), "alice-pw".into());

    let refused = client()
        .push(
            &image,
            std::slice::from_ref(&layer),
            cfg.clone(),
            &RegistryAuth::Basic("alice".into(), "nope".into()),
            None,
        )
        .await;
    assert!(
        refused.is_err(),
        "a wrong password at the issuer must not push"
    );
    client()
        .push(&image, std::slice::from_ref(&layer), cfg, &alice, None)
        .await
        .expect("push with a token");
    let pulled = client()
        .pull(&image, &alice, vec![IMAGE_LAYER_GZIP_MEDIA_TYPE])
        .await
        .expect("pull with a token");
    assert_eq!(pulled.layers[0].data, layer.data);
}

/// Both modes at once: the challenge is Bearer (clients go to the issuer),
/// yet htpasswd users may still send Basic directly, under the rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_and_htpasswd_together() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::ec();
    let t = token_config(dir.path(), &key);
    let file = htpasswd(dir.path(), &[("ci", "ci-pw")]);
    let reg = TestRegistry::start_with(move |c| {
        c.auth.token = Some(t);
        c.auth.htpasswd = Some(file);
        c.auth.rules = vec![rule("ci/**", &["ci"], &["pull", "push"])];
    })
    .await;
    let r = reg.get("/v2/ci/x/tags/list").await;
    assert!(header(&r, "www-authenticate")
        .unwrap()
        .starts_with("Bearer realm="));
    let basic = |path: &str| {
        reg.client
            .get(reg.url(path))
            .basic_auth("ci", Some("ci-pw"))
            .send()
    };
    assert_oci_error(
        basic("/v2/ci/x/tags/list").await.unwrap(),
        404,
        "NAME_UNKNOWN",
    )
    .await;
    assert_oci_error(basic("/v2/other/tags/list").await.unwrap(), 403, "DENIED").await;
    let token = key.sign(claims(repo_access("other", &["pull"])));
    let r = reg
        .client
        .get(reg.url("/v2/other/tags/list"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_oci_error(r, 404, "NAME_UNKNOWN").await;
}

/// The key may be given as the issuer's certificate (as distribution's
/// `rootcertbundle`), for EC and RSA keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_key_from_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    for key in [SigningKey::ec(), SigningKey::rsa(dir.path())] {
        let mut t = token_config(dir.path(), &key);
        t.public_key = write_file(dir.path(), "issuer.crt", &key.certificate_pem());
        let reg = TestRegistry::start_with(move |c| c.auth.token = Some(t)).await;
        let good = key.sign(claims(repo_access("r", &["pull"])));
        let r = reg
            .client
            .get(reg.url("/v2/r/tags/list"))
            .bearer_auth(&good)
            .send()
            .await
            .unwrap();
        assert_oci_error(r, 404, "NAME_UNKNOWN").await;
        let other = SigningKey::ec().sign(claims(repo_access("r", &["pull"])));
        let r = reg
            .client
            .get(reg.url("/v2/r/tags/list"))
            .bearer_auth(&other)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
}

/// SIGHUP re-reads the htpasswd file (a new user) and the token key (the
/// issuer rotated it: old-key tokens stop working, new-key tokens work).
#[test]
fn sighup_reloads_users_and_the_token_key() {
    let dir = tempfile::tempdir().unwrap();
    let old_key = SigningKey::ec();
    let new_key = SigningKey::ec();
    let t = token_config(dir.path(), &old_key);
    let users = htpasswd(dir.path(), &[("alice", "alice-pw")]);
    let w = WharfProcess::start_with_toml(
        dir.path(),
        &format!(
            "[auth]\nhtpasswd = {users:?}\n[auth.token]\nrealm = {:?}\nservice = {:?}\nissuer = {:?}\npublic_key = {:?}\n",
            t.realm, t.service, t.issuer, t.public_key
        ),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = |auth: (&str, &str, &str)| {
        rt.block_on(async {
            let b = reqwest::Client::new().get(format!("{}/v2/", w.base));
            let b = match auth {
                ("basic", u, p) => b.basic_auth(u, Some(p)),
                (_, token, _) => b.bearer_auth(token),
            };
            b.send().await.unwrap().status().as_u16()
        })
    };
    let old_token = old_key.sign(claims(repo_access("r", &["pull"])));
    let new_token = new_key.sign(claims(repo_access("r", &["pull"])));
    assert_eq!(status(("basic", "alice", "alice-pw")), 200);
    assert_eq!(status(("basic", "bob", "bob-pw")), 401);
    assert_eq!(status(("bearer", &old_token, "")), 200);
    assert_eq!(status(("bearer", &new_token, "")), 401);

    // The key first: the change watcher may reload between the two writes,
    // and a reload that sees bob must also see the new key.
    write_file(dir.path(), "token.pub", &new_key.public_pem);
    htpasswd(dir.path(), &[("alice", "alice-pw"), ("bob", "bob-pw")]);
    w.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while status(("basic", "bob", "bob-pw")) != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload after SIGHUP"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(status(("bearer", &new_token, "")), 200);
    assert_eq!(status(("bearer", &old_token, "")), 401);
    assert_eq!(status(("basic", "alice", "alice-pw")), 200);
}
