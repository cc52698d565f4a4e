//! The web UI in a real browser: Debian's chromium, headless, renders the
//! pages and the test reads the DOM it built and saves screenshots under
//! `target/ui-screenshots/`. Authorization and pagination over plain HTTP.

use crate::common::pki::htpasswd;
use crate::common::services::skip_without;
use crate::common::*;
use futures_util::StreamExt;
use serde_json::json;
use std::path::PathBuf;
use std::process::Command;

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// The page at `url` as the browser sees it: (DOM after render, and the
/// screenshot saved as `name`.png).
fn browse(url: &str, name: &str) -> String {
    browse_at(url, name, "1200,800")
}

/// As `browse`, in a window `size` wide and high ("420,900": a phone).
fn browse_at(url: &str, name: &str, size: &str) -> String {
    let bin = chromium().unwrap();
    let profile = tempfile::tempdir().unwrap();
    let flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ];
    let window = format!("--window-size={size}");
    let user_data = format!("--user-data-dir={}", profile.path().display());
    let dom = Command::new(&bin)
        .args(flags)
        .arg(&window)
        .arg(&user_data)
        .args(["--dump-dom", url])
        .output()
        .unwrap();
    assert!(dom.status.success(), "{dom:?}");
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join(format!("{name}.png"));
    let out = Command::new(&bin)
        .args(flags)
        .arg(&window)
        .arg(&user_data)
        .arg(format!("--screenshot={}", shot.display()))
        .arg(url)
        .output()
        .unwrap();
    assert!(out.status.success() && shot.exists(), "{out:?}");
    eprintln!("UI screenshot: {}", shot.display());
    String::from_utf8_lossy(&dom.stdout).into_owned()
}

/// An image, a two-platform index and a signature on the image, in `repo`.
async fn populate(reg: &TestRegistry, repo: &str) -> (String, String, String) {
    let image = serde_json::to_vec(&reg.image_manifest(repo, 1, 2).await).unwrap();
    let image_d = digest(&image);
    assert_eq!(
        reg.put_manifest(repo, "v1", OCI_MANIFEST, &image)
            .await
            .status(),
        201
    );
    let arm = serde_json::to_vec(&reg.image_manifest(repo, 2, 1).await).unwrap();
    assert_eq!(
        reg.put_manifest(repo, &digest(&arm), OCI_MANIFEST, &arm)
            .await
            .status(),
        201
    );
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": image_d, "size": image.len(),
             "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": OCI_MANIFEST, "digest": digest(&arm), "size": arm.len(),
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        ]
    }))
    .unwrap();
    assert_eq!(
        reg.put_manifest(repo, "multi", OCI_INDEX, &index)
            .await
            .status(),
        201
    );
    let empty = b"{}";
    reg.push_mono(repo, empty).await;
    let sbom = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/spdx+json",
        "config": descriptor("application/vnd.oci.empty.v1+json", empty),
        "layers": [descriptor("application/vnd.oci.empty.v1+json", empty)],
        "subject": {"mediaType": OCI_MANIFEST, "digest": image_d, "size": image.len()},
    }))
    .unwrap();
    assert_eq!(
        reg.put_manifest(repo, &digest(&sbom), OCI_MANIFEST, &sbom)
            .await
            .status(),
        201
    );
    (image_d, digest(&sbom), digest(&index))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_sees_repositories_tags_layers_and_referrers() {
    if skip_without("chromium", chromium().is_some()) {
        return;
    }
    let reg = TestRegistry::start().await;
    let (image_d, sbom_d, index_d) = populate(&reg, "team/app").await;
    // The newest push, a second later, under a name that sorts last: the
    // tag list puts it first. Its config is a real image configuration.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let config = serde_json::to_vec(&json!({
        "os": "linux", "architecture": "arm64", "created": "2026-12-01T00:00:00Z",
        "config": {"Entrypoint": ["/bin/app"], "Cmd": ["--serve"], "Env": ["PATH=/bin", "MODE=ci"],
                   "Labels": {"org.opencontainers.image.source": "https://git.example/app"},
                   "ExposedPorts": {"8080/tcp": {}}},
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [{"created_by": "ADD rootfs.tar /"}, {"created_by": "ENV MODE=ci", "empty_layer": true},
                    {"created_by": "COPY app /bin/app"}]
    }))
    .unwrap();
    let (layer_a, layer_b) = (payload(3000, 91), payload(5000, 92));
    for blob in [&config, &layer_a, &layer_b] {
        reg.push_mono("team/app", blob).await;
    }
    let newest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &layer_a),
                   descriptor("application/vnd.oci.image.layer.v1.tar", &layer_b)],
    }))
    .unwrap();
    assert_eq!(
        reg.put_manifest("team/app", "zz-newest", OCI_MANIFEST, &newest)
            .await
            .status(),
        201
    );
    let base = &reg.base;
    let host = base.trim_start_matches("http://");

    let dom = browse(&format!("{base}/ui/"), "repositories");
    assert!(dom.contains("<table id=\"repositories\">"), "{dom}");
    assert!(
        dom.contains(">team/app</a></td><td class=\"n\" data-v=\"3\">3</td>"),
        "three tags: {dom}"
    );
    assert!(dom.contains(" KiB</td>"), "a size: {dom}");
    assert!(
        dom.contains("<th class=\"n\" data-sort=\"\">Size</th>"),
        "numeric headers align: {dom}"
    );
    let dom = browse(&format!("{base}/ui/?q=TEAM"), "repositories-filtered");
    assert!(dom.contains(">team/app</a>"), "{dom}");
    let dom = browse(
        &format!("{base}/ui/?q=nothing-like-it"),
        "repositories-none",
    );
    assert!(dom.contains("No repository matches."), "{dom}");

    let dom = browse(&format!("{base}/ui/repo?name=team/app"), "repository");
    assert!(
        dom.contains("<td>v1</td>") && dom.contains("<td>multi</td>"),
        "{dom}"
    );
    let at = |tag: &str| dom.find(&format!("<td>{tag}</td>")).unwrap();
    assert!(
        at("zz-newest") < at("multi") && at("zz-newest") < at("v1"),
        "newest push first: {dom}"
    );
    assert!(
        dom.contains(&format!("data-copy=\"docker pull {host}/team/app:v1\"")),
        "a pull line per tag: {dom}"
    );
    let filtered = browse(
        &format!("{base}/ui/repo?name=team/app&q=mul"),
        "repository-filtered",
    );
    assert!(
        filtered.contains("<td>multi</td>") && !filtered.contains("<td>v1</td>"),
        "{filtered}"
    );
    assert!(
        filtered.contains("value=\"mul\""),
        "the filter box keeps its text: {filtered}"
    );

    assert!(
        dom.contains("linux/amd64, linux/arm64/v8"),
        "platforms of the index: {dom}"
    );
    assert!(dom.contains(" UTC</td>"), "push time: {dom}");
    assert!(
        dom.contains(&format!("docker pull {host}/team/app:")),
        "{dom}"
    );
    let dom = browse(
        &format!(
            "{base}/ui/manifest?name=team/app&digest={}",
            digest(&newest)
        ),
        "manifest-config",
    );
    assert!(dom.contains("id=\"image-config\""), "{dom}");
    for shown in [
        "linux/arm64",
        "/bin/app",
        "--serve",
        "MODE=ci",
        "8080/tcp",
        "https://git.example/app",
        "COPY app /bin/app",
    ] {
        assert!(dom.contains(shown), "{shown}: {dom}");
    }
    assert!(
        dom.contains("<code>zz-newest</code>"),
        "the tags pointing at it: {dom}"
    );
    // A phone's width: the same page, laid out for it (screenshot kept).
    let narrow = browse_at(
        &format!("{base}/ui/repo?name=team/app"),
        "repository-420px",
        "420,900",
    );
    assert!(narrow.contains("<td>zz-newest</td>"), "{narrow}");

    let dom = browse(
        &format!("{base}/ui/manifest?name=team/app&digest={image_d}"),
        "manifest",
    );
    assert!(dom.contains("Layers (2,"), "{dom}");
    assert!(dom.contains("<table id=\"config\">"), "{dom}");
    assert!(
        dom.contains("<h3 class=\"artifact-type\">application/spdx+json</h3>"),
        "{dom}"
    );
    assert!(dom.contains(&sbom_d[..19]), "the SBOM's digest: {dom}");
    assert!(
        dom.contains(&format!("docker pull {host}/team/app@{image_d}")),
        "{dom}"
    );
    // The index's own page lists each platform beside its manifest.
    let index_page = reg
        .get(&format!("/ui/manifest?name=team/app&digest={index_d}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        index_page.contains("<td>linux/arm64/v8</td>"),
        "{index_page}"
    );
    assert!(
        index_page.contains(&format!("digest={image_d}")),
        "{index_page}"
    );
    // Nothing is fetched from elsewhere: no external script or style.
    assert!(
        !dom.contains("src=\"http") && !dom.contains("href=\"http"),
        "{dom}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_asks_for_a_login_and_shows_only_what_the_user_may_pull() {
    let dir = tempfile::tempdir().unwrap();
    let users = htpasswd(dir.path(), &[("alice", "pw-a"), ("ops", "pw-o")]);
    let reg = TestRegistry::start_with(|c| {
        c.auth.htpasswd = Some(users);
        c.auth.rules = vec![
            wharf::config::RuleConfig {
                repository: "team-a/**".into(),
                users: vec!["alice".into()],
                actions: vec!["pull".into()],
            },
            wharf::config::RuleConfig {
                repository: "**".into(),
                users: vec!["ops".into()],
                actions: vec!["pull".into(), "push".into()],
            },
        ];
    })
    .await;
    let push = |repo: &'static str| {
        let c = reg.client.clone();
        let url = reg.url(&format!(
            "/v2/{repo}/blobs/uploads/?digest={}",
            digest(b"x")
        ));
        async move {
            let r = c
                .post(url)
                .basic_auth("ops", Some("pw-o"))
                .body("x")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }
    };
    push("team-a/app").await;
    push("team-b/secret").await;

    let r = reg.client.get(reg.url("/ui/")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        header(&r, "www-authenticate")
            .unwrap_or("")
            .starts_with("Basic"),
        "the browser's prompt"
    );
    let page = |path: &str, user: &str, pw: &str| {
        let req = reg.client.get(reg.url(path)).basic_auth(user, Some(pw));
        async move { req.send().await.unwrap() }
    };
    let text = page("/ui/", "alice", "pw-a").await.text().await.unwrap();
    assert!(
        text.contains("team-a/app") && !text.contains("team-b"),
        "{text}"
    );
    let text = page("/ui/", "ops", "pw-o").await.text().await.unwrap();
    assert!(
        text.contains("team-a/app") && text.contains("team-b/secret"),
        "{text}"
    );
    // A repository the user may not pull does not exist, for the UI.
    let r = page("/ui/repo?name=team-b/secret", "alice", "pw-a").await;
    assert_eq!(r.status(), 404);
    assert_eq!(
        page("/ui/repo?name=team-b/secret", "ops", "pw-o")
            .await
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_repositories_are_paged() {
    if skip_in_cluster("ten thousand pushes through three nodes add little here") {
        return;
    }
    let reg = TestRegistry::start().await;
    let data = b"shared layer".to_vec();
    let d = digest(&data);
    let names: Vec<String> = (0..10_000).map(|i| format!("farm/r{i:05}")).collect();
    let started = std::time::Instant::now();
    futures_util::stream::iter(names.iter().cloned())
        .for_each_concurrent(32, |name| {
            let (c, url, body) = (
                reg.client.clone(),
                reg.url(&format!("/v2/{name}/blobs/uploads/?digest={d}")),
                data.clone(),
            );
            async move {
                let r = c.post(url).body(body).send().await.unwrap();
                assert_eq!(r.status(), 201);
            }
        })
        .await;
    eprintln!("10,000 repositories pushed in {:?}", started.elapsed());
    let started = std::time::Instant::now();
    let first = reg.get("/ui/").await.text().await.unwrap();
    eprintln!("first page of 10,000 in {:?}", started.elapsed());
    assert_eq!(
        first.matches("<tr><td><a href=\"/ui/repo?name=").count(),
        50
    );
    assert!(first.contains(">farm/r00049<") && !first.contains(">farm/r00050<"));
    assert!(first.contains("href=\"/ui/?after=farm/r00049\""), "{first}");
    let last = reg
        .get("/ui/?after=farm/r09949")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        last.contains(">farm/r09999<") && !last.contains("Next page"),
        "{last}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_can_be_turned_off() {
    let reg = TestRegistry::start_with(|c| c.ui.enabled = false).await;
    assert_eq!(reg.get("/ui/").await.status(), 404);
    assert_eq!(reg.get("/").await.status(), 404);
    let on = TestRegistry::start().await;
    assert_eq!(on.get("/ui/").await.status(), 200);
    // A browser opening the registry's address is sent to the UI.
    let r = on.get("/").await;
    assert_eq!((r.status().as_u16(), r.url().path()), (200, "/ui/"));
    // Errors under /ui/ are pages for a browser, not the registry's JSON.
    for path in [
        "/ui/no-such-page",
        "/ui/repo?name=nobody/here",
        "/ui/repo?name=Bad%20Name",
    ] {
        let r = on.get(path).await;
        assert!(r.status().is_client_error(), "{path}");
        assert_eq!(
            header(&r, "content-type"),
            Some("text/html; charset=utf-8"),
            "{path}"
        );
        let body = r.text().await.unwrap();
        assert!(
            body.contains("<h1>") && body.contains("All repositories"),
            "{body}"
        );
    }
}
