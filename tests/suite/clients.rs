//! Real clients against the real binary: ../shared/clients/smoke.sh drives
//! skopeo, podman, buildah, umoci, the docker CLI, oras-py, python-dxf and
//! curl, and must report no failure. `.ci/run` installs the clients
//! (../shared/clients/install.sh). Set WHARF_SKIP_CLIENTS=1 to skip this on
//! a machine without them; unset, a missing client is a failure.

use crate::common::*;
use std::path::PathBuf;
use std::process::Command;

fn smoke_script() -> PathBuf {
    match std::env::var_os("WHARF_SMOKE_SCRIPT") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/clients/smoke.sh"),
    }
}

#[test]
fn smoke_script_passes_with_real_clients() {
    if !clients_wanted() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let wharf = WharfProcess::start(dir.path());
    smoke_passes(wharf.base.trim_start_matches("http://"));
}

/// Whether a real client should run here (`WHARF_SKIP_CLIENTS` unset).
pub fn clients_wanted() -> bool {
    if std::env::var_os("WHARF_SKIP_CLIENTS").is_some() {
        eprintln!("WHARF_SKIP_CLIENTS set: real-client smoke test skipped");
        return false;
    }
    true
}

/// Runs smoke.sh against `host` (host:port) and asserts every check passed.
pub fn smoke_passes(host: &str) {
    let script = smoke_script();
    assert!(
        script.is_file(),
        "{} not found (set WHARF_SMOKE_SCRIPT, or WHARF_SKIP_CLIENTS=1)",
        script.display()
    );
    let out = Command::new("bash")
        .arg(&script)
        .arg(host)
        .env("SMOKE_VERBOSE", "1")
        .output()
        .expect("bash runs the smoke script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("clients: "))
        .unwrap_or_else(|| panic!("no summary line from smoke.sh\n{stdout}\n{stderr}"));
    assert!(
        out.status.success() && summary.ends_with(" 0 failed"),
        "{summary}\n{stdout}\n{stderr}"
    );
    assert!(
        !stdout.lines().any(|l| l.starts_with("SKIP")),
        "a check was skipped: a client is missing\n{stdout}"
    );
}
