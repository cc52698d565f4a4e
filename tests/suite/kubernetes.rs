//! `contrib/kubernetes/wharf.yaml` names what the binary really has: its
//! ConfigMap is a configuration `wharf config check` accepts, the
//! container's args are flags `wharf serve` knows, its ports are the ones
//! that configuration listens on, and the probe paths answer 200 on the
//! ops listener of a running `wharf`.

use crate::common::services::free_port;
use crate::common::*;
use std::process::Command;

const MANIFESTS: &str = include_str!("../../contrib/kubernetes/wharf.yaml");

/// The ConfigMap's `wharf.toml`, as a pod sees it.
fn config_map_toml() -> String {
    let start = MANIFESTS
        .find("wharf.toml: |\n")
        .expect("the ConfigMap's wharf.toml")
        + 14;
    MANIFESTS[start..]
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The manifests' lines that contain `needle`.
fn containing<'a>(needle: &str) -> Vec<&'a str> {
    MANIFESTS.lines().filter(|l| l.contains(needle)).collect()
}

#[test]
fn the_config_map_is_a_configuration_the_binary_accepts() {
    let dir = tempfile::tempdir().unwrap();
    // The Secret's files, where the test can make them.
    let secret = dir.path().join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    for (f, v) in [
        (
            "database-url",
            "postgres://wharf@db.example.com:5432/wharf?sslmode=verify-full&sslrootcert=system",
        ),
        ("s3-access-key-id", "k"),
        ("s3-secret-access-key", "s"),
    ] {
        std::fs::write(secret.join(f), v).unwrap();
    }
    let toml = config_map_toml().replace("/etc/wharf/secret", secret.to_str().unwrap());
    let file = dir.path().join("wharf.toml");
    std::fs::write(&file, &toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["config", "check", "--config"])
        .arg(&file)
        .env_remove("WHARF_CONFIG")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{said}");
    let config: wharf::Config = toml::from_str(&toml).unwrap();
    // The container's ports are the ones this configuration listens on.
    let ports = containing("containerPort:");
    assert!(
        ports.iter().any(|l| l.contains("name: registry")
            && l.contains(&format!("containerPort: {}", config.addr.port()))),
        "{ports:?}"
    );
    let ops = config
        .metrics
        .addr
        .expect("the ops listener the probes use");
    assert!(
        ports
            .iter()
            .any(|l| l.contains("name: ops")
                && l.contains(&format!("containerPort: {}", ops.port()))),
        "{ports:?}"
    );
}

#[test]
fn the_container_args_are_flags_wharf_serve_knows() {
    let args = containing("args:");
    let line = args.first().expect("the container's args");
    let help = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(line.contains("\"serve\""), "{line}");
    for flag in line.split('"').filter(|w| w.starts_with("--")) {
        assert!(
            help.contains(flag),
            "{flag} is no flag of wharf serve:\n{help}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_paths_answer_on_the_ops_listener() {
    let dir = tempfile::tempdir().unwrap();
    let ops = free_port();
    let file = dir.path().join("ops.toml");
    std::fs::write(&file, format!("[metrics]\naddr = \"127.0.0.1:{ops}\"\n")).unwrap();
    let _wharf = WharfProcess::start_args(
        &dir.path().join("data"),
        &["--config".as_ref(), file.as_os_str()],
    );
    let paths: Vec<&str> = containing("path: /")
        .iter()
        .filter_map(|l| l.split("path: ").nth(1))
        .map(|p| p.split([',', '}']).next().unwrap().trim())
        .collect();
    assert_eq!(paths, ["/readyz", "/healthz"]);
    for path in paths {
        let r = reqwest::get(format!("http://127.0.0.1:{ops}{path}"))
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
}
