//! Pull-through caches (`[[proxy]]`) against a real upstream registry on
//! loopback (a second Wharf, with Basic auth and, separately, the Docker
//! token flow), through a tap that counts what reaches the upstream and
//! can corrupt it: one upstream GET for 32 concurrent misses, manifests
//! byte for byte, only the platform asked for, the tag TTL, an outage,
//! corrupt bodies refused, pushes refused, GC keeping cached content; and
//! skopeo and podman pulling through the cache.

use crate::common::pki::*;
use crate::common::tap::Tap;
use crate::common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};
use wharf::config::ProxyConfig;

/// One registry on a data folder of its own (never a cluster: these
/// tests count one node's fetches).
async fn registry(dir: &Path, tweak: impl FnOnce(&mut wharf::Config)) -> TestRegistry {
    let mut cfg = config_for(dir.to_path_buf());
    tweak(&mut cfg);
    TestRegistry::start_config(cfg).await
}

fn proxy(prefix: &str, upstream: &str) -> ProxyConfig {
    ProxyConfig {
        prefix: prefix.into(),
        upstream: upstream.into(),
        username: None,
        password: None,
        password_file: None,
        tag_ttl_secs: 300,
        ca_file: None,
        max_age_days: None,
        timeout_secs: 5,
    }
}

/// `proxy` that logs in to its upstream as `user`.
fn proxy_login(prefix: &str, upstream: &str, user: &str, password: &str) -> ProxyConfig {
    ProxyConfig {
        username: Some(user.into()),
        password: Some(password.into()),
        ..proxy(prefix, upstream)
    }
}

/// A client of the registry at `base` sending Basic credentials.
fn logged_in(base: &str, user: &str, password: &str) -> TestRegistry {
    use base64::Engine as _;
    let mut r = TestRegistry::at(base);
    let mut h = reqwest::header::HeaderMap::new();
    let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    h.insert("authorization", format!("Basic {pair}").parse().unwrap());
    r.client = reqwest::Client::builder()
        .default_headers(h)
        .build()
        .unwrap();
    r
}

/// Pushes a config and `layers` (sizes) to `repo`; returns the manifest.
async fn push_image(
    reg: &TestRegistry,
    repo: &str,
    tag: &str,
    seed: u64,
    layers: &[usize],
) -> Vec<u8> {
    let config =
        format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"seed\":{seed}}}").into_bytes();
    reg.push_mono(repo, &config).await;
    let mut ls = Vec::new();
    for (i, n) in layers.iter().enumerate() {
        let l = payload(*n, seed * 1000 + i as u64);
        reg.push_mono(repo, &l).await;
        ls.push(descriptor(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            &l,
        ));
    }
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": ls,
    }))
    .unwrap();
    let r = reg.put_manifest(repo, tag, OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), 201);
    m
}

/// Pulls `repo:reference` as a client does (manifest, then every blob it
/// names), checking every digest; returns the manifest's bytes.
async fn pull(reg: &TestRegistry, repo: &str, reference: &str) -> Vec<u8> {
    let r = reg
        .client
        .get(reg.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{repo}:{reference}");
    let bytes = r.bytes().await.unwrap().to_vec();
    let m: Value = serde_json::from_slice(&bytes).unwrap();
    if let Some(layers) = m["layers"].as_array() {
        for d in layers.iter().chain([&m["config"]]) {
            let d = d["digest"].as_str().unwrap();
            let got = reg.get_blob(repo, d).await;
            assert_eq!(got.status(), 200, "{d}");
            assert_eq!(digest(&got.bytes().await.unwrap()), d);
        }
    }
    bytes
}

/// A metric of `reg`'s ops listener.
async fn metric(reg: &TestRegistry, line_start: &str) -> f64 {
    let ops = format!(
        "http://{}",
        reg.server.as_ref().unwrap().metrics_addr().unwrap()
    );
    crate::metrics::scraped(&ops, line_start).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_make_one_upstream_fetch_with_basic_auth() {
    let dir = tempfile::tempdir().unwrap();
    // The upstream is seeded, then restarted with Basic auth.
    let mut upstream = registry(&dir.path().join("up"), |_| {}).await;
    let big = payload(64 << 20, 7);
    let big_d = upstream.push_mono("library/base", &big).await;
    let manifest = push_image(&upstream, "library/base", "1.0", 1, &[3000, 5000]).await;
    upstream.server.take().unwrap().shutdown().await;
    let users = htpasswd(dir.path(), &[("puller", "pw")]);
    let upstream = registry(&dir.path().join("up"), |c| {
        c.auth.htpasswd = Some(users.clone());
    })
    .await;
    assert_eq!(upstream.get("/v2/").await.status(), 401);
    let tap = Tap::start(upstream.base.clone()).await;
    let mirror = registry(&dir.path().join("mirror"), |c| {
        c.metrics.addr = Some("127.0.0.1:0".parse().unwrap());
        c.proxy = vec![proxy_login("hub", &tap.base(), "puller", "pw")];
    })
    .await;

    // 32 clients ask for the uncached 64 MiB layer at once.
    let started = Instant::now();
    let mut pulls = Vec::new();
    for _ in 0..32 {
        let (client, url) = (
            mirror.client.clone(),
            mirror.url(&format!("/v2/hub/library/base/blobs/{big_d}")),
        );
        pulls.push(tokio::spawn(async move {
            let r = client.get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            digest(&r.bytes().await.unwrap())
        }));
    }
    for p in pulls {
        assert_eq!(p.await.unwrap(), big_d);
    }
    eprintln!(
        "32 concurrent pulls of an uncached 64 MiB layer: {:?}",
        started.elapsed()
    );
    assert_eq!(
        tap.count("GET", &format!("/blobs/{big_d}")),
        1,
        "one upstream fetch"
    );
    // Cached now: a range read, and no second fetch.
    let r = mirror
        .get_blob_range("hub/library/base", &big_d, "bytes=10-19")
        .await;
    assert_eq!(r.status(), 206);
    assert_eq!(&r.bytes().await.unwrap()[..], &big[10..20]);
    assert_eq!(tap.count("GET", &format!("/blobs/{big_d}")), 1);

    // The manifest is served byte for byte with the upstream's digest.
    let got = pull(&mirror, "hub/library/base", "1.0").await;
    assert_eq!(got, manifest);
    let r = mirror.get("/v2/hub/library/base/manifests/1.0").await;
    assert_eq!(
        header(&r, "docker-content-digest"),
        Some(digest(&manifest).as_str())
    );

    // Pushes and deletes under the prefix are refused; reads elsewhere
    // are a hosted registry's.
    let r = mirror
        .client
        .post(mirror.url("/v2/hub/library/base/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_oci_error(r, 405, "UNSUPPORTED").await;
    let r = mirror
        .put_manifest("hub/library/base", "mine", OCI_MANIFEST, &manifest)
        .await;
    assert_oci_error(r, 405, "UNSUPPORTED").await;
    let r = mirror
        .delete(&format!(
            "/v2/hub/library/base/manifests/{}",
            digest(&manifest)
        ))
        .await;
    assert_oci_error(r, 405, "UNSUPPORTED").await;
    push_image(&mirror, "team/app", "1", 3, &[100]).await;

    // An unknown upstream name is the client's 404, not an outage.
    let r = mirror.get("/v2/hub/library/nothing/manifests/1.0").await;
    assert_oci_error(r, 404, "MANIFEST_UNKNOWN").await;

    // Without the upstream's credentials the mirror gets nothing.
    let anonymous = registry(&dir.path().join("anon"), |c| {
        c.proxy = vec![proxy("hub", &tap.base())]
    })
    .await;
    let r = anonymous.get("/v2/hub/library/base/manifests/1.0").await;
    assert_oci_error(r, 502, "UNAVAILABLE").await;

    let blob = |result: &str| {
        format!("wharf_proxy_requests_total{{kind=\"blob\",prefix=\"hub\",result=\"{result}\"}}")
    };
    assert_eq!(
        metric(&mirror, &blob("miss")).await,
        35.0,
        "32 + config + 2 layers"
    );
    assert!(metric(&mirror, &blob("hit")).await >= 1.0);
    assert!(
        metric(&mirror, "wharf_proxy_upstream_bytes_total{prefix=\"hub\"}").await
            >= (64 << 20) as f64
    );
    assert!(
        metric(
            &mirror,
            "wharf_proxy_upstream_errors_total{kind=\"not_found\",prefix=\"hub\"}"
        )
        .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_flow_is_followed_and_its_token_reused() {
    let dir = tempfile::tempdir().unwrap();
    let mut upstream = registry(&dir.path().join("up"), |_| {}).await;
    let manifest = push_image(&upstream, "org/tool", "v2", 5, &[4000]).await;
    upstream.server.take().unwrap().shutdown().await;
    let key = SigningKey::ec();
    let public = write_file(dir.path(), "token.pub", &key.public_pem);
    let issuer = token_server(key, "alice", "alice-pw").await;
    let issuer_tap = Tap::start(format!("http://{issuer}")).await;
    let upstream = registry(&dir.path().join("up"), |c| {
        c.auth.token = Some(wharf::config::TokenConfig {
            realm: format!("{}/token", issuer_tap.base()),
            service: SERVICE.into(),
            issuer: ISSUER.into(),
            public_key: public.clone(),
        });
    })
    .await;
    let tap = Tap::start(upstream.base.clone()).await;
    let mirror = registry(&dir.path().join("mirror"), |c| {
        c.proxy = vec![proxy_login("quay", &tap.base(), "alice", "alice-pw")];
    })
    .await;
    assert_eq!(pull(&mirror, "quay/org/tool", "v2").await, manifest);
    // One token, asked for once, served the whole pull: the tag's HEAD,
    // the manifest and every blob.
    let upstream_requests = tap.count("GET", "/v2/") + tap.count("HEAD", "/v2/");
    assert!(upstream_requests >= 4, "{upstream_requests}");
    assert_eq!(issuer_tap.count("GET", "/token"), 1);

    // A wrong password: the token service refuses, the mirror says so.
    let wrong = registry(&dir.path().join("wrong"), |c| {
        c.proxy = vec![proxy_login("quay", &tap.base(), "alice", "nope")];
    })
    .await;
    let r = wrong.get("/v2/quay/org/tool/manifests/v2").await;
    assert_oci_error(r, 502, "UNAVAILABLE").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_platform_asked_for_is_fetched_and_gc_keeps_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = registry(&dir.path().join("up"), |_| {}).await;
    let amd = push_image(&upstream, "library/multi", "amd", 10, &[2000, 2100]).await;
    let arm = push_image(&upstream, "library/multi", "arm", 11, &[2200]).await;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            { "mediaType": OCI_MANIFEST, "digest": digest(&amd), "size": amd.len(),
              "platform": { "os": "linux", "architecture": "amd64" } },
            { "mediaType": OCI_MANIFEST, "digest": digest(&arm), "size": arm.len(),
              "platform": { "os": "linux", "architecture": "arm64" } },
        ],
    }))
    .unwrap();
    assert_eq!(
        upstream
            .put_manifest("library/multi", "latest", OCI_INDEX, &index)
            .await
            .status(),
        201
    );
    let tap = Tap::start(upstream.base.clone()).await;
    let mirror = registry(&dir.path().join("mirror"), |c| {
        c.gc_delete_untagged = true;
        c.proxy = vec![proxy("hub", &tap.base())];
    })
    .await;

    // As a client on amd64: the index, then its amd64 manifest and blobs.
    assert_eq!(pull(&mirror, "hub/library/multi", "latest").await, index);
    assert_eq!(pull(&mirror, "hub/library/multi", &digest(&amd)).await, amd);
    assert_eq!(
        tap.count("GET", &digest(&arm)),
        0,
        "arm64 manifest never fetched"
    );
    let arm_m: Value = serde_json::from_slice(&arm).unwrap();
    for d in arm_m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .chain([&arm_m["config"]])
    {
        assert_eq!(tap.count("GET", d["digest"].as_str().unwrap()), 0);
    }
    let gets = tap.count("GET", "/v2/");

    // GC keeps what is cached (the index is tagged; it reaches the amd64
    // manifest, which reaches its blobs); then it all serves with no
    // upstream call.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let report = crate::gc::gc(&mirror, "grace_secs=0").await;
    assert_eq!(report["blobs_removed"], 0, "{report}");
    assert_eq!(pull(&mirror, "hub/library/multi", &digest(&amd)).await, amd);
    assert_eq!(tap.count("GET", "/v2/"), gets);

    // fsck: a cached index without its other platform is not damage.
    let mut mirror = mirror;
    mirror.server.take().unwrap().shutdown().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["fsck", "--root"])
        .arg(&mirror.root)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_retires_cached_tags_nobody_pulled() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = registry(&dir.path().join("up"), |_| {}).await;
    push_image(&upstream, "library/a", "pulled", 40, &[1000]).await;
    push_image(&upstream, "library/a", "looked-at", 41, &[1000]).await;
    let mirror = registry(&dir.path().join("mirror"), |c| {
        c.proxy = vec![ProxyConfig {
            max_age_days: Some(7),
            ..proxy("hub", &upstream.base)
        }];
    })
    .await;
    pull(&mirror, "hub/library/a", "pulled").await;
    // A HEAD caches the tag but is no pull.
    let r = mirror
        .client
        .head(mirror.url("/v2/hub/library/a/manifests/looked-at"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = mirror
        .client
        .post(mirror.url("/_wharf/retention"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let report: Value = r.json().await.unwrap();
    let retired: Vec<&str> = report["tags_deleted"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["tag"].as_str())
        .collect();
    assert_eq!(retired, vec!["looked-at"], "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribution_as_the_upstream_with_basic_auth() {
    if std::process::Command::new("docker-registry")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("WHARF_REQUIRE_SERVICES").is_none(),
            "docker-registry (Debian's distribution) is not installed"
        );
        eprintln!("docker-registry not installed: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let users = htpasswd(dir.path(), &[("ci", "ci-pw")]);
    let port = services::free_port();
    let config = dir.path().join("dist.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog: {{level: error, accesslog: {{disabled: true}}}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\nauth:\n  htpasswd: {{realm: wharf-test, path: {}}}\nhttp: {{addr: 127.0.0.1:{port}}}\n",
            dir.path().join("dist").display(),
            users.display()
        ),
    )
    .unwrap();
    let mut dist = std::process::Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let upstream = logged_in(&base, "ci", "ci-pw");
    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream
        .client
        .get(format!("{base}/v2/"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "docker-registry did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let manifest = push_image(&upstream, "library/ref", "2.8", 50, &[5 << 20, 700]).await;
    let tap = Tap::start(base.clone()).await;
    let mirror = registry(&dir.path().join("mirror"), |c| {
        c.proxy = vec![proxy_login("hub", &tap.base(), "ci", "ci-pw")];
    })
    .await;
    assert_eq!(pull(&mirror, "hub/library/ref", "2.8").await, manifest);
    assert_eq!(pull(&mirror, "hub/library/ref", "2.8").await, manifest);
    let m: Value = serde_json::from_slice(&manifest).unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap();
    assert_eq!(tap.count("GET", &format!("/blobs/{layer}")), 1);
    let _ = dist.kill();
    let _ = dist.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_tag_is_seen_after_the_ttl_and_an_outage_serves_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let mut upstream = registry(&dir.path().join("up"), |_| {}).await;
    let first = push_image(&upstream, "library/app", "stable", 20, &[1500]).await;
    let mirror = registry(&dir.path().join("mirror"), |c| {
        c.proxy = vec![ProxyConfig {
            tag_ttl_secs: 1,
            ..proxy("hub", &upstream.base)
        }];
    })
    .await;
    assert_eq!(pull(&mirror, "hub/library/app", "stable").await, first);

    // The tag moves upstream: within the TTL the cached answer stands,
    // after it the new digest is served.
    let second = push_image(&upstream, "library/app", "stable", 21, &[1600]).await;
    assert_eq!(pull(&mirror, "hub/library/app", "stable").await, first);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(pull(&mirror, "hub/library/app", "stable").await, second);

    // The upstream goes away: the cached tag and its content still pull
    // (marked stale once the TTL has passed); what was never cached
    // answers 503 at once.
    upstream.server.take().unwrap().shutdown().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = mirror.get("/v2/hub/library/app/manifests/stable").await;
    assert_eq!(r.status(), 200);
    assert!(
        header(&r, "warning").is_some_and(|w| w.starts_with("110 ")),
        "{:?}",
        r.headers()
    );
    assert_eq!(pull(&mirror, "hub/library/app", "stable").await, second);
    assert_eq!(
        pull(&mirror, "hub/library/app", &digest(&first)).await,
        first
    );
    let started = Instant::now();
    let r = mirror
        .get("/v2/hub/library/app/manifests/never-pulled")
        .await;
    assert_oci_error(r, 503, "UNAVAILABLE").await;
    let r = mirror
        .get_blob("hub/library/app", &digest(b"never pulled"))
        .await;
    assert_oci_error(r, 503, "UNAVAILABLE").await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_upstream_body_is_refused_and_nothing_is_cached() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = registry(&dir.path().join("up"), |_| {}).await;
    let manifest = push_image(&upstream, "library/data", "1", 30, &[3 << 20]).await;
    let layer = serde_json::from_slice::<Value>(&manifest).unwrap()["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let tap = Tap::start(upstream.base.clone()).await;
    let mirror_root = dir.path().join("mirror");
    let mirror = registry(&mirror_root, |c| c.proxy = vec![proxy("hub", &tap.base())]).await;
    tap.corrupt(true);

    // A manifest whose bytes do not hash to the digest: 502, not stored.
    let r = mirror
        .get(&format!(
            "/v2/hub/library/data/manifests/{}",
            digest(&manifest)
        ))
        .await;
    assert_oci_error(r, 502, "UNAVAILABLE").await;
    // A layer: the response never completes with the wrong bytes.
    let before = blob_files(&mirror_root).len();
    let r = mirror.get_blob("hub/library/data", &layer).await;
    if r.status() == 200 {
        let body = r.bytes().await;
        assert!(
            body.is_err() || digest(&body.unwrap()) != layer,
            "a corrupt body passed whole"
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(blob_files(&mirror_root).len(), before, "nothing stored");

    // Once the upstream is sound again, both pull (nothing bad was kept).
    tap.corrupt(false);
    assert_eq!(
        pull(&mirror, "hub/library/data", &digest(&manifest)).await,
        manifest
    );
    assert_eq!(blob_files(&mirror_root).len(), before + 3);
}

#[test]
fn skopeo_and_podman_pull_through_the_cache() {
    use crate::secure_clients::{oci_fixture, skip, Clients};
    if skip() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let upstream = rt.block_on(registry(&dir.path().join("up"), |_| {}));
    let tap = rt.block_on(Tap::start(upstream.base.clone()));
    let mirror = rt.block_on(registry(&dir.path().join("mirror"), |c| {
        c.proxy = vec![proxy("hub", &tap.base())];
    }));
    let c = Clients::new(dir.path());
    let (fx, config_d) = oci_fixture(dir.path());
    let up_host = upstream.base.trim_start_matches("http://");
    let host = mirror.base.trim_start_matches("http://");
    c.ok(
        "skopeo",
        &[
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:v1", fx.display()),
            &format!("docker://{up_host}/library/hello:v1"),
        ],
    );
    let out = dir.path().join("out");
    c.ok(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{host}/hub/library/hello:v1"),
            &format!("oci:{}:v1", out.display()),
        ],
    );
    assert!(out.join("blobs/sha256").join(&config_d).is_file());
    assert_eq!(tap.count("GET", &format!("/blobs/sha256:{config_d}")), 1);
    c.ok(
        "podman",
        &[
            "pull",
            "--tls-verify=false",
            &format!("{host}/hub/library/hello:v1"),
        ],
    );
    // podman found everything cached: still one upstream fetch.
    assert_eq!(tap.count("GET", &format!("/blobs/sha256:{config_d}")), 1);
    let id = c.ok(
        "podman",
        &[
            "image",
            "inspect",
            "--format",
            "{{.Id}}",
            &format!("{host}/hub/library/hello:v1"),
        ],
    );
    assert_eq!(id.trim(), config_d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_upstreams_beside_hosted_repositories_under_local_auth_rules() {
    let dir = tempfile::tempdir().unwrap();
    let hub = registry(&dir.path().join("hub"), |_| {}).await;
    let quay = registry(&dir.path().join("quay"), |_| {}).await;
    let from_hub = push_image(&hub, "library/x", "1", 60, &[900]).await;
    let from_quay = push_image(&quay, "org/y", "1", 61, &[901]).await;
    let users = htpasswd(dir.path(), &[("alice", "a-pw"), ("bob", "b-pw")]);
    let mirror = registry(&dir.path().join("mirror"), |c| {
        c.auth.htpasswd = Some(users.clone());
        c.auth.rules = vec![
            wharf::config::RuleConfig {
                repository: "hub/**".into(),
                users: vec!["alice".into()],
                actions: vec!["pull".into()],
            },
            wharf::config::RuleConfig {
                repository: "quay/**".into(),
                users: vec!["alice".into(), "bob".into()],
                actions: vec!["pull".into()],
            },
            wharf::config::RuleConfig {
                repository: "library/**".into(),
                users: vec!["alice".into()],
                actions: vec!["pull".into()],
            },
        ];
        c.proxy = vec![proxy("hub", &hub.base), proxy("quay", &quay.base)];
    })
    .await;
    let as_user = |user: &str, pw: &str| logged_in(&mirror.base, user, pw);
    let (alice, bob) = (as_user("alice", "a-pw"), as_user("bob", "b-pw"));
    // Each prefix reaches its own upstream.
    assert_eq!(pull(&alice, "hub/library/x", "1").await, from_hub);
    assert_eq!(pull(&alice, "quay/org/y", "1").await, from_quay);
    assert_eq!(pull(&bob, "quay/org/y", "1").await, from_quay);
    // The rules hold for cached repositories: bob may not pull hub/**,
    // even what is cached; nobody anonymous may pull at all.
    let r = bob.get("/v2/hub/library/x/manifests/1").await;
    assert_oci_error(r, 403, "DENIED").await;
    let r = mirror.get("/v2/quay/org/y/manifests/1").await;
    assert_oci_error(r, 401, "UNAUTHORIZED").await;
    // Outside the prefixes is a hosted repository: the upstreams never
    // hear of it.
    let r = alice.get("/v2/library/x/manifests/1").await;
    assert_oci_error(r, 404, "MANIFEST_UNKNOWN").await;
}
