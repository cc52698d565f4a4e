//! Docker Engine as a client: the real `docker` CLI and daemon log in, push
//! and pull (by tag and by digest), build multi-platform lists with
//! `docker manifest`, move a 1 GiB layer, push eight images sharing layers
//! at once, trust Wharf's TLS through `/etc/docker/certs.d`, and run
//! Wharf's own image, which then holds a copy of itself.
//!
//! The daemon treats 127.0.0.0/8 as an insecure registry (plain HTTP, no
//! certificate check), so the TLS test serves on the docker0 bridge's
//! address, where the certificate is verified. The tests take turns: each
//! loads the daemon and the disk, and the machine has two cores.

use crate::common::docker::{daemon_available, daemon_version, docker, DockerCli};
use crate::common::pki::{htpasswd, write_file, TestCa};
use crate::common::services::skip_without;
use crate::common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

fn no_docker() -> bool {
    let skip = skip_without("a Docker Engine", daemon_available());
    if !skip {
        eprintln!("Docker Engine {}", daemon_version());
    }
    skip
}

/// `host:port` of a test registry, as docker names it.
fn host_of(reg: &TestRegistry) -> String {
    reg.server.as_ref().unwrap().local_addr().to_string()
}

/// A base image's files: an os-release and `len` bytes of noise.
fn base_files(len: usize, seed: u64) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    std::fs::write(root.path().join("etc/os-release"), "ID=wharf-test\n").unwrap();
    std::fs::write(root.path().join("base.bin"), payload(len, seed)).unwrap();
    root
}

/// A one-layer image pushed as `app`, removed locally with every layer,
/// pulled back and compared by image ID.
fn push_and_pull_back(cli: &DockerCli, app: &str, seed: u64) {
    let files = base_files(1 << 20, seed);
    let base = cli.import(files.path());
    cli.run(&["tag", &base, app]).unwrap();
    cli.owns(app);
    let id = cli.inspect(app, "{{.Id}}");
    cli.push(app).unwrap();
    cli.remove(&[app, &base]);
    cli.pull(app).unwrap();
    assert_eq!(cli.inspect(app, "{{.Id}}"), id);
}

/// A manifest as the registry serves it: (digest header, JSON).
async fn manifest(
    reg: &TestRegistry,
    repo: &str,
    reference: &str,
    user: Option<(&str, &str)>,
) -> (String, serde_json::Value) {
    let mut req = reg
        .client
        .get(reg.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("accept", ACCEPT);
    if let Some((u, p)) = user {
        req = req.basic_auth(u, Some(p));
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200, "{repo}:{reference}");
    let d = header(&r, "docker-content-digest").unwrap().to_owned();
    (d, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_logs_in_pushes_and_pulls_by_tag_and_by_digest() {
    let _turn = ONE_AT_A_TIME.lock().await;
    if no_docker() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let users = htpasswd(dir.path(), &[("ci", "s3cret")]);
    let reg = TestRegistry::start_with(|c| c.auth.htpasswd = Some(users)).await;
    let host = host_of(&reg);
    let cli = DockerCli::new();

    let refused = cli.login(&host, "ci", "wrong").unwrap_err();
    assert!(
        refused.contains("401") || refused.to_lowercase().contains("unauthorized"),
        "{refused}"
    );
    let ok = cli.login(&host, "ci", "s3cret").unwrap();
    assert!(ok.contains("Login Succeeded"), "{ok}");

    let files = base_files(2 << 20, 1);
    let base = cli.import(files.path());
    let app = format!("{host}/team/app:1");
    cli.build(
        &app,
        &format!("FROM {base}\nCOPY one /one\nCOPY two /two\nCMD [\"/one\"]\n"),
        &[("one", &payload(300_000, 2)), ("two", &payload(100_000, 3))],
    );
    let id = cli.inspect(&app, "{{.Id}}");
    assert_eq!(cli.inspect(&app, "{{len .RootFS.Layers}}"), "3");
    let d = cli.push(&app).unwrap();

    // What the CLI reported is what the registry serves.
    let user = Some(("ci", "s3cret"));
    let (served, m) = manifest(&reg, "team/app", "1", user).await;
    assert_eq!(served, d);
    assert_eq!(m["layers"].as_array().unwrap().len(), 3);
    assert_eq!(m["config"]["digest"].as_str(), Some(id.as_str()));

    // Nothing of the image is left locally, so every layer comes back.
    cli.remove(&[&app, &base]);
    let pulled = cli.pull(&app).unwrap();
    assert!(!pulled.contains("Already exists"), "{pulled}");
    assert_eq!(cli.inspect(&app, "{{.Id}}"), id);
    cli.remove(&[&app]);
    let by_digest = format!("{host}/team/app@{d}");
    cli.pull(&by_digest).unwrap();
    assert_eq!(cli.inspect(&by_digest, "{{.Id}}"), id);

    // Logged out, the registry asks again.
    cli.run(&["logout", &host]).unwrap();
    cli.remove(&[&by_digest]);
    let refused = cli.pull(&app).unwrap_err();
    assert!(
        refused.contains("no basic auth credentials") || refused.contains("unauthorized"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_manifest_pushes_a_multi_platform_list() {
    let _turn = ONE_AT_A_TIME.lock().await;
    if no_docker() {
        return;
    }
    let reg = TestRegistry::start().await;
    let host = host_of(&reg);
    let cli = DockerCli::new();
    let files = base_files(1 << 20, 10);
    let base = cli.import(files.path());
    let (amd, arm) = (
        format!("{host}/team/app:amd64"),
        format!("{host}/team/app:arm64"),
    );
    cli.build(
        &amd,
        &format!("FROM {base}\nCOPY a /a\n"),
        &[("a", &payload(50_000, 11))],
    );
    cli.build(
        &arm,
        &format!("FROM {base}\nCOPY b /b\n"),
        &[("b", &payload(50_000, 12))],
    );
    let amd_digest = cli.push(&amd).unwrap();
    let arm_digest = cli.push(&arm).unwrap();

    let list = format!("{host}/team/multi:1");
    cli.run(&["manifest", "create", "--insecure", &list, &amd, &arm])
        .unwrap();
    cli.run(&[
        "manifest",
        "annotate",
        &list,
        &arm,
        "--os",
        "linux",
        "--arch",
        "arm64",
        "--variant",
        "v8",
    ])
    .unwrap();
    let out = cli
        .run(&["manifest", "push", "--insecure", "--purge", &list])
        .unwrap();
    let list_digest = out.lines().last().unwrap().trim().to_owned();
    assert!(list_digest.starts_with("sha256:"), "{out}");

    let (served, m) = manifest(&reg, "team/multi", "1", None).await;
    assert_eq!(served, list_digest);
    assert_eq!(
        m["mediaType"],
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
    let entries = m["manifests"].as_array().unwrap();
    let platform = |d: &str| {
        entries.iter().find(|e| e["digest"] == d).map(|e| {
            e["platform"]["architecture"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
    };
    assert_eq!(platform(&amd_digest).as_deref(), Some("amd64"));
    assert_eq!(platform(&arm_digest).as_deref(), Some("arm64"));
    // The children were copied into the list's repository.
    manifest(&reg, "team/multi", &arm_digest, None).await;

    let inspected = cli
        .run(&["manifest", "inspect", "--insecure", &list])
        .unwrap();
    assert!(inspected.contains("\"arm64\""), "{inspected}");
    // The daemon picks its own platform out of the list.
    if std::env::consts::ARCH == "x86_64" {
        let amd_id = cli.inspect(&amd, "{{.Id}}");
        cli.remove(&[&amd, &arm, &base]);
        cli.pull(&list).unwrap();
        assert_eq!(cli.inspect(&list, "{{.Id}}"), amd_id);
    }
}

/// `size` bytes of noise in 1 MiB blocks, each stamped with its index, so
/// nothing compresses and no two blocks are equal.
fn write_noise(path: &Path, size: usize) {
    use std::io::Write;
    let block = payload(1 << 20, 77);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..size >> 20 {
        let mut b = block.clone();
        b[..8].copy_from_slice(&(i as u64).to_le_bytes());
        f.write_all(&b).unwrap();
    }
    f.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pushes_and_pulls_a_one_gib_layer() {
    let _turn = ONE_AT_A_TIME.lock().await;
    if no_docker() {
        return;
    }
    let reg = TestRegistry::start().await;
    let host = host_of(&reg);
    let cli = DockerCli::new();
    let root = tempfile::tempdir().unwrap();
    write_noise(&root.path().join("big.bin"), 1 << 30);
    let base = cli.import(root.path());
    drop(root);
    let tag = format!("{host}/big/layer:1");
    cli.run(&["tag", &base, &tag]).unwrap();
    cli.owns(&tag);
    let diff_id = cli.inspect(&tag, "{{index .RootFS.Layers 0}}");
    let d = tokio::task::block_in_place(|| cli.push(&tag)).unwrap();

    let (_, m) = manifest(&reg, "big/layer", &d, None).await;
    let layer = &m["layers"][0];
    let size = layer["size"].as_u64().unwrap();
    assert!(size > 1 << 30, "compressed layer of {size} bytes");
    let r = reg
        .client
        .head(reg.url(&format!(
            "/v2/big/layer/blobs/{}",
            layer["digest"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "content-length"),
        Some(size.to_string().as_str())
    );

    // The daemon checks the uncompressed layer against its diff ID.
    cli.remove(&[&tag, &base]);
    tokio::task::block_in_place(|| cli.pull(&tag)).unwrap();
    assert_eq!(cli.inspect(&tag, "{{index .RootFS.Layers 0}}"), diff_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_docker_pushes_at_once_share_their_layers() {
    let _turn = ONE_AT_A_TIME.lock().await;
    if no_docker() {
        return;
    }
    let reg = TestRegistry::start().await;
    let host = host_of(&reg);
    let cli = DockerCli::new();
    let files = base_files(8 << 20, 20);
    let base = cli.import(files.path());
    // A second shared layer: every app is built FROM this one.
    let mid = format!("wharf-test-mid:{}", std::process::id());
    cli.build(
        &mid,
        &format!("FROM {base}\nCOPY shared /shared\n"),
        &[("shared", &payload(2 << 20, 21))],
    );
    let apps: Vec<String> = (0..8).map(|i| format!("{host}/farm/app{i}:1")).collect();
    for (i, app) in apps.iter().enumerate() {
        let own = payload(64 * 1024, 100 + i as u64);
        cli.build(
            app,
            &format!("FROM {mid}\nCOPY own /own\n"),
            &[("own", &own)],
        );
    }
    let ids: Vec<String> = apps.iter().map(|a| cli.inspect(a, "{{.Id}}")).collect();

    let digests: Vec<String> = tokio::task::block_in_place(|| {
        std::thread::scope(|s| {
            let pushes: Vec<_> = apps.iter().map(|a| s.spawn(|| cli.push(a))).collect();
            pushes
                .into_iter()
                .map(|p| p.join().unwrap().unwrap())
                .collect()
        })
    });
    let mut layers = std::collections::BTreeSet::new();
    for (i, d) in digests.iter().enumerate() {
        let (served, m) = manifest(&reg, &format!("farm/app{i}"), "1", None).await;
        assert_eq!(&served, d);
        for l in m["layers"].as_array().unwrap() {
            layers.insert(l["digest"].as_str().unwrap().to_owned());
        }
    }
    // Two shared layers and eight of their own: each stored once.
    assert_eq!(layers.len(), 10, "{layers:?}");

    let mut all: Vec<&str> = apps.iter().map(String::as_str).collect();
    all.extend([mid.as_str(), base.as_str()]);
    cli.remove(&all);
    tokio::task::block_in_place(|| {
        std::thread::scope(|s| {
            let pulls: Vec<_> = apps.iter().map(|a| s.spawn(|| cli.pull(a))).collect();
            for p in pulls {
                p.join().unwrap().unwrap();
            }
        })
    });
    for (app, id) in apps.iter().zip(&ids) {
        assert_eq!(&cli.inspect(app, "{{.Id}}"), id);
    }
}

/// `/etc/docker/certs.d/HOST/ca.crt`, removed when dropped.
struct TrustedCa(std::path::PathBuf);

impl Drop for TrustedCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A Docker network removed when dropped.
struct Network(String);

impl Drop for Network {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_trusts_wharf_tls_through_certs_d_and_refuses_it_without() {
    let _turn = ONE_AT_A_TIME.lock().await;
    if no_docker() {
        return;
    }
    let certs_d = Path::new("/etc/docker/certs.d");
    if std::fs::create_dir_all(certs_d).is_err() {
        eprintln!(
            "skipped: {} is not writable (run as root)",
            certs_d.display()
        );
        return;
    }
    // Off loopback, so the daemon checks the certificate: the host's
    // address on a bridge network of the test's own.
    let net = Network(format!("wharf-tls-{}", std::process::id()));
    docker(&["network", "create", &net.0]).unwrap();
    let gw = docker(&[
        "network",
        "inspect",
        "-f",
        "{{(index .IPAM.Config 0).Gateway}}",
        &net.0,
    ])
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("wharf docker test CA");
    let (cert, key) = ca.server_cert_for(&[&gw]);
    let (cert, key) = (
        write_file(dir.path(), "tls.crt", &cert),
        write_file(dir.path(), "tls.key", &key),
    );
    let users = htpasswd(dir.path(), &[("ci", "s3cret")]);
    let addr = format!("{gw}:0");
    let reg = TestRegistry::start_with(|c| {
        c.addr = addr.parse().unwrap();
        c.auth.htpasswd = Some(users);
        c.tls = Some(wharf::config::TlsConfig {
            cert,
            key,
            reload_check_secs: 3600,
        });
    })
    .await;
    let host = host_of(&reg);
    let cli = DockerCli::new();

    let refused = cli.login(&host, "ci", "s3cret").unwrap_err();
    assert!(
        refused.contains("x509") || refused.contains("certificate"),
        "{refused}"
    );

    let trusted = TrustedCa(certs_d.join(&host));
    std::fs::create_dir_all(&trusted.0).unwrap();
    std::fs::write(trusted.0.join("ca.crt"), &ca.cert_pem).unwrap();
    cli.login(&host, "ci", "s3cret").unwrap();
    push_and_pull_back(&cli, &format!("{host}/secure/app:1"), 30);
}

/// A container removed however the test ends.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", "-v", &self.0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wharfs_image_runs_serves_docker_and_holds_a_copy_of_itself() {
    let _turn = ONE_AT_A_TIME.lock().await;
    if no_docker() {
        return;
    }
    let cli = DockerCli::new();
    let image = format!("wharf-test-image:{}", std::process::id());
    cli.owns(&image);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/image/build-from-host.sh"
    );
    let built = Command::new(script)
        .args([env!("CARGO_BIN_EXE_wharf"), &image])
        .output()
        .unwrap();
    assert!(built.status.success(), "{built:?}");
    assert_eq!(cli.inspect(&image, "{{.Config.User}}"), "10001:10001");
    assert!(cli
        .inspect(&image, "{{json .Config.Volumes}}")
        .contains("/var/lib/wharf"));

    // As a user runs it: the image's own command, health check and
    // settings, one port published on loopback.
    let id = cli
        .run(&[
            "run",
            "-d",
            "--health-interval",
            "1s",
            "--health-start-period",
            "1s",
            "-p",
            "127.0.0.1::5000",
            &image,
        ])
        .unwrap();
    let container = Container(id);
    let mut health = String::new();
    for _ in 0..60 {
        health = docker(&["inspect", "-f", "{{.State.Health.Status}}", &container.0]).unwrap();
        if health == "healthy" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(health, "healthy", "{:?}", docker(&["logs", &container.0]));
    let published = docker(&["port", &container.0, "5000/tcp"]).unwrap();
    let host = published.lines().next().unwrap().trim().to_owned();

    push_and_pull_back(&cli, &format!("{host}/team/app:1"), 40);

    // Wharf's own image, into the Wharf it is running, and back by digest.
    let own = format!("{host}/wharf/wharf:test");
    cli.run(&["tag", &image, &own]).unwrap();
    cli.owns(&own);
    let d = cli.push(&own).unwrap();
    let by_digest = format!("{host}/wharf/wharf@{d}");
    cli.pull(&by_digest).unwrap();
    assert_eq!(
        cli.inspect(&by_digest, "{{.Id}}"),
        cli.inspect(&image, "{{.Id}}")
    );
    let version = cli.run(&["run", "--rm", &by_digest, "--version"]).unwrap();
    assert!(version.starts_with("wharf "), "{version}");
}

/// docker logs in with a CI job's OIDC token as the password, and as a
/// robot account, and pushes and pulls inside each one's grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_logs_in_with_a_ci_token_and_as_a_robot() {
    let _turn = ONE_AT_A_TIME.lock().await;
    if no_docker() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let issuer = crate::common::oidc_issuer::OidcIssuer::start(dir.path()).await;
    let oidc = crate::oidc_login::oidc_config(&issuer);
    let users = htpasswd(dir.path(), &[("ops", "ops-pw")]);
    let reg = TestRegistry::start_with(move |c| {
        c.auth.htpasswd = Some(users);
        c.auth.admins = vec!["ops".into()];
        c.auth.oidc = vec![oidc];
    })
    .await;
    let host = host_of(&reg);
    let cli = DockerCli::new();

    let token = issuer.token(
        "k1",
        issuer.claims(crate::oidc_login::AUDIENCE, serde_json::json!({})),
    );
    let ok = cli.login(&host, "oidc", &token).unwrap();
    assert!(ok.contains("Login Succeeded"), "{ok}");
    push_and_pull_back(&cli, &format!("{host}/ci/my-org/app/img:1"), 21);

    let r = reg
        .client
        .post(reg.url("/_wharf/robots"))
        .basic_auth("ops", Some("ops-pw"))
        .json(
            &serde_json::json!({"name": "builder", "repositories": ["robots/**"],
                                   "actions": ["pull", "push"]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let secret = r.json::<serde_json::Value>().await.unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let ok = cli.login(&host, "robot$builder", &secret).unwrap();
    assert!(ok.contains("Login Succeeded"), "{ok}");
    push_and_pull_back(&cli, &format!("{host}/robots/app:1"), 22);
    // Outside its grant the robot is refused.
    let files = base_files(1 << 16, 23);
    let base = cli.import(files.path());
    let elsewhere = format!("{host}/ci/other:1");
    cli.run(&["tag", &base, &elsewhere]).unwrap();
    cli.owns(&elsewhere);
    let refused = cli.push(&elsewhere).unwrap_err();
    assert!(
        refused.contains("denied") || refused.contains("403"),
        "{refused}"
    );
    cli.run(&["logout", &host]).unwrap();
}
