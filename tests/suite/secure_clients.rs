//! Real clients against the real binary with security on: skopeo and
//! podman log in with HTTP Basic (an htpasswd file written by Apache's
//! `htpasswd -B`) and push and pull; anonymous and wrong-password pushes
//! are refused; skopeo and podman verify Wharf's TLS certificate with a CA
//! file; skopeo goes through the Docker token flow with a test issuer.
//! `.ci/run` installs the clients; WHARF_SKIP_CLIENTS=1 skips this file.

use crate::common::pki::*;
use crate::common::*;
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub(crate) fn skip() -> bool {
    if std::env::var_os("WHARF_SKIP_CLIENTS").is_some() {
        eprintln!("WHARF_SKIP_CLIENTS set: skipped");
        return true;
    }
    false
}

/// An isolated containers configuration (vfs storage, empty credentials,
/// accept-anything policy) so the test touches nothing of the machine's.
pub(crate) struct Clients {
    dir: PathBuf,
}

impl Clients {
    pub(crate) fn new(dir: &Path) -> Clients {
        let cfg = dir.join("cfg");
        std::fs::create_dir_all(&cfg).unwrap();
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let st = dir.join("st");
        std::fs::write(
            cfg.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}/root\"\nrunroot = \"{}/run\"\n",
                st.display(),
                st.display()
            ),
        )
        .unwrap();
        std::fs::write(
            cfg.join("registries.conf"),
            "unqualified-search-registries = []\nshort-name-mode = \"disabled\"\n",
        )
        .unwrap();
        std::fs::write(
            cfg.join("containers.conf"),
            format!(
                "[containers]\nnetns = \"host\"\n[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nevents_logfile_path = \"{0}/events.log\"\ntmp_dir = \"{0}/libpod-tmp\"\nstatic_dir = \"{0}/root/libpod\"\nvolume_path = \"{0}/volumes\"\nlock_type = \"file\"\n[network]\nnetwork_config_dir = \"{0}/networks\"\ncni_config_dir = \"{0}/cni\"\n",
                st.display()
            ),
        )
        .unwrap();
        std::fs::write(
            cfg.join("policy.json"),
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .unwrap();
        std::fs::write(cfg.join("auth.json"), r#"{"auths":{}}"#).unwrap();
        Clients {
            dir: dir.to_owned(),
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        let cfg = self.dir.join("cfg");
        let mut c = Command::new("timeout");
        c.arg("180").arg(program);
        if program == "skopeo" {
            c.arg("--policy").arg(cfg.join("policy.json"));
        }
        c.args(args)
            .env("CONTAINERS_STORAGE_CONF", cfg.join("storage.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", cfg.join("registries.conf"))
            .env("CONTAINERS_CONF", cfg.join("containers.conf"))
            .env("REGISTRY_AUTH_FILE", cfg.join("auth.json"))
            .env("TMPDIR", self.dir.join("tmp"));
        c.output().unwrap_or_else(|e| panic!("{program} runs: {e}"))
    }

    /// Runs and requires success.
    pub(crate) fn ok(&self, program: &str, args: &[&str]) -> String {
        let out = self.run(program, args);
        assert!(
            out.status.success(),
            "{program} {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs, requires failure, returns stderr in lower case.
    pub(crate) fn fails(&self, program: &str, args: &[&str]) -> String {
        let out = self.run(program, args);
        assert!(!out.status.success(), "{program} {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).to_lowercase()
    }
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A one-layer OCI image layout with the tag `v1`: its directory and the
/// config's sha256 hex (clients may recompress layers, never the config).
pub(crate) fn oci_fixture(dir: &Path) -> (PathBuf, String) {
    let layout = dir.join("fx");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let content = dir.join("content");
    std::fs::create_dir_all(&content).unwrap();
    std::fs::write(content.join("hello.txt"), payload(5000, 42)).unwrap();
    let tar = dir.join("layer.tar");
    let ok = Command::new("tar")
        .args(["--sort=name", "--mtime=@0", "--owner=0", "--group=0", "-cf"])
        .arg(&tar)
        .arg("-C")
        .arg(&content)
        .arg(".")
        .status()
        .unwrap();
    assert!(ok.success());
    let layer = std::fs::read(&tar).unwrap();
    let put = |data: &[u8]| {
        let d = sha(data);
        std::fs::write(blobs.join(&d), data).unwrap();
        d
    };
    let layer_d = put(&layer);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_d}")]},
        "config": {}
    })
    .to_string();
    let config_d = put(config.as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config_d}"), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{layer_d}"), "size": layer.len()}]
    })
    .to_string();
    let manifest_d = put(manifest.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": format!("sha256:{manifest_d}"), "size": manifest.len(),
                        "annotations": {"org.opencontainers.image.ref.name": "v1"}}]
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    (layout, config_d)
}

fn host_of(w: &WharfProcess) -> String {
    w.base.trim_start_matches("http://").to_owned()
}

#[test]
fn skopeo_and_podman_log_in_with_htpasswd_bcrypt() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd");
    let made = Command::new("htpasswd")
        .args(["-B", "-b", "-c"])
        .arg(&file)
        .args(["alice", "alice-pw"])
        .output()
        .expect("htpasswd runs (apt install apache2-utils)");
    assert!(made.status.success());
    let w = WharfProcess::start_with_toml(dir.path(), &format!("[auth]\nhtpasswd = {:?}\n", file));
    let host = host_of(&w);
    let c = Clients::new(dir.path());
    let (fx, fx_config) = oci_fixture(dir.path());
    let src = format!("oci:{}:v1", fx.display());
    let dest = format!("docker://{host}/sec/img:v1");

    let err = c.fails("skopeo", &["copy", "--dest-tls-verify=false", &src, &dest]);
    assert!(
        err.contains("unauthorized") || err.contains("authentication required"),
        "anonymous push refused for lack of credentials: {err}"
    );
    let err = c.fails(
        "skopeo",
        &[
            "login",
            "--tls-verify=false",
            "-u",
            "alice",
            "-p",
            "wrong",
            &host,
        ],
    );
    assert!(
        err.contains("unauthorized") || err.contains("invalid"),
        "{err}"
    );
    c.ok(
        "skopeo",
        &[
            "login",
            "--tls-verify=false",
            "-u",
            "alice",
            "-p",
            "alice-pw",
            &host,
        ],
    );
    c.ok("skopeo", &["copy", "--dest-tls-verify=false", &src, &dest]);
    let raw = c.ok("skopeo", &["inspect", "--raw", "--tls-verify=false", &dest]);
    assert!(
        raw.contains(&format!("sha256:{fx_config}")),
        "the pushed image is served: {raw}"
    );

    c.ok(
        "podman",
        &[
            "login",
            "--tls-verify=false",
            "-u",
            "alice",
            "-p",
            "alice-pw",
            &host,
        ],
    );
    let img = format!("{host}/sec/img:v1");
    c.ok("podman", &["pull", "--tls-verify=false", &img]);
    let pushed = format!("{host}/sec/podman:p1");
    c.ok("podman", &["tag", &img, &pushed]);
    c.ok("podman", &["push", "--tls-verify=false", &pushed]);
    let r = c.ok(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            "--format",
            "{{.Digest}}",
            &format!("docker://{pushed}"),
        ],
    );
    assert!(r.trim().starts_with("sha256:"), "{r}");
    // One credentials file for both tools: podman's logout logs skopeo out.
    c.ok("podman", &["logout", &host]);
    let err = c.fails("skopeo", &["inspect", "--raw", "--tls-verify=false", &dest]);
    assert!(
        err.contains("unauthorized") || err.contains("authentication required"),
        "{err}"
    );
}

#[test]
fn skopeo_and_podman_verify_tls_with_a_ca_file() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Wharf client-test CA");
    let (cert, key) = ca.server_cert();
    let cert = write_file(dir.path(), "server.crt", &cert);
    let key = write_file(dir.path(), "server.key", &key);
    let certs = dir.path().join("certs.d");
    std::fs::create_dir_all(&certs).unwrap();
    write_file(&certs, "ca.crt", &ca.cert_pem);
    let w = WharfProcess::start_with_toml(
        dir.path(),
        &format!("[tls]\ncert = {cert:?}\nkey = {key:?}\n"),
    );
    let port = host_of(&w).rsplit(':').next().unwrap().to_owned();
    let host = format!("localhost:{port}");
    let c = Clients::new(dir.path());
    let (fx, _) = oci_fixture(dir.path());
    let certs = certs.to_str().unwrap();
    let dest = format!("docker://{host}/tls/img:v1");

    // Verification on (the default), trusting only the CA file.
    c.ok(
        "skopeo",
        &[
            "copy",
            "--dest-cert-dir",
            certs,
            &format!("oci:{}:v1", fx.display()),
            &dest,
        ],
    );
    c.ok("skopeo", &["inspect", "--raw", "--cert-dir", certs, &dest]);
    let err = c.fails("skopeo", &["inspect", "--raw", &dest]);
    assert!(err.contains("certificate") || err.contains("x509"), "{err}");
    c.ok(
        "podman",
        &["pull", "--cert-dir", certs, &format!("{host}/tls/img:v1")],
    );
}

#[test]
fn skopeo_goes_through_the_token_flow() {
    if skip() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::ec();
    let public = write_file(dir.path(), "token.pub", &key.public_pem);
    let issuer = rt.block_on(token_server(key, "alice", "alice-pw"));
    let w = WharfProcess::start_with_toml(
        dir.path(),
        &format!(
            "[auth.token]\nrealm = \"http://{issuer}/token\"\nservice = \"{SERVICE}\"\nissuer = \"{ISSUER}\"\npublic_key = {public:?}\n"
        ),
    );
    let host = host_of(&w);
    let c = Clients::new(dir.path());
    let (fx, _) = oci_fixture(dir.path());
    let src = format!("oci:{}:v1", fx.display());
    let dest = format!("docker://{host}/tok/img:v1");
    let err = c.fails(
        "skopeo",
        &[
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            "alice:wrong",
            &src,
            &dest,
        ],
    );
    assert!(!err.is_empty());
    c.ok(
        "skopeo",
        &[
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            "alice:alice-pw",
            &src,
            &dest,
        ],
    );
    c.ok(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            "alice:alice-pw",
            &dest,
        ],
    );
    drop(rt);
}
