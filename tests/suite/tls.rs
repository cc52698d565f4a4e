//! HTTPS with rustls: a certificate from a test CA, verified by curl with
//! that CA file (never with verification off), HTTP/2 by ALPN, and the
//! certificate replaced while serving: on a file change and on SIGHUP.

use crate::common::pki::*;
use crate::common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// curl with `ca`; returns (HTTP version, status) or None when the TLS
/// handshake or verification fails.
fn curl(url: &str, ca: &Path, http2: bool) -> Option<(String, u16)> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .arg(if http2 { "--http2" } else { "--http1.1" })
        .arg("--cacert")
        .arg(ca)
        .arg(url)
        .output()
        .expect("curl runs");
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (v, code) = text.split_once(' ')?;
    Some((v.to_owned(), code.parse().ok()?))
}

fn install_cert(dir: &Path, ca: &TestCa) {
    let (cert, key) = ca.server_cert();
    // Write the key first, then the certificate, each by rename: a reload
    // in between would see a mismatched pair, refuse it, and keep the old.
    for (name, text) in [("server.key", key), ("server.crt", cert)] {
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

/// Two CAs with their files; the server certificate installed in `dir`
/// comes from the first. Returns the second CA and both CA files.
fn two_cas(dir: &Path) -> (TestCa, std::path::PathBuf, std::path::PathBuf) {
    let ca1 = TestCa::new("Wharf test CA one");
    let ca2 = TestCa::new("Wharf test CA two");
    let ca1_file = write_file(dir, "ca1.pem", &ca1.cert_pem);
    let ca2_file = write_file(dir, "ca2.pem", &ca2.cert_pem);
    install_cert(dir, &ca1);
    (ca2, ca1_file, ca2_file)
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_ca_file_http2_and_reload_on_change() {
    let dir = tempfile::tempdir().unwrap();
    let (ca2, ca1_file, ca2_file) = two_cas(dir.path());
    let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    let reg = TestRegistry::start_with(move |c| {
        c.tls = Some(wharf::config::TlsConfig {
            cert,
            key,
            reload_check_secs: 1,
        })
    })
    .await;
    let port = reg.server.as_ref().unwrap().local_addr().port();
    let url = format!("https://localhost:{port}/v2/");
    let ip_url = format!("https://127.0.0.1:{port}/v2/");

    let r = tokio::task::block_in_place(|| {
        (
            curl(&url, &ca1_file, true),
            curl(&ip_url, &ca1_file, false),
            curl(&url, &ca2_file, true),
        )
    });
    assert_eq!(r.0, Some(("2".to_owned(), 200)), "HTTP/2 over TLS");
    assert_eq!(
        r.1,
        Some(("1.1".to_owned(), 200)),
        "HTTP/1.1 over TLS, IP SAN"
    );
    assert_eq!(r.2, None, "a certificate from another CA must not verify");
    // Plain HTTP on the TLS port is not served.
    let plain = reqwest::get(format!("http://127.0.0.1:{port}/v2/")).await;
    assert!(plain.map(|r| r.status() != 200).unwrap_or(true));

    // A renewed certificate (another CA, for the test) is picked up.
    tokio::task::block_in_place(|| {
        std::thread::sleep(Duration::from_millis(1100)); // a new mtime
        install_cert(dir.path(), &ca2);
        wait_for("the new certificate", || {
            curl(&url, &ca2_file, true) == Some(("2".to_owned(), 200))
        });
        assert_eq!(curl(&url, &ca1_file, true), None);
    });

    // A broken replacement is refused and the served certificate stays.
    std::fs::write(dir.path().join("server.crt"), "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let still = tokio::task::block_in_place(|| curl(&url, &ca2_file, true));
    assert_eq!(still, Some(("2".to_owned(), 200)));
}

#[test]
fn sighup_reloads_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca2, ca1_file, ca2_file) = two_cas(dir.path());
    // Only SIGHUP can trigger the reload within this test's time.
    let wharf = WharfProcess::start_with_toml(
        dir.path(),
        &format!(
            "[tls]\ncert = {:?}\nkey = {:?}\nreload_check_secs = 3600\n",
            dir.path().join("server.crt"),
            dir.path().join("server.key")
        ),
    );
    let port = wharf.base.rsplit(':').next().unwrap().to_owned();
    let url = format!("https://localhost:{port}/v2/");
    assert_eq!(curl(&url, &ca1_file, false), Some(("1.1".to_owned(), 200)));
    install_cert(dir.path(), &ca2);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        curl(&url, &ca1_file, false),
        Some(("1.1".to_owned(), 200)),
        "no reload yet"
    );
    wharf.signal(libc::SIGHUP);
    wait_for("SIGHUP reload", || {
        curl(&url, &ca2_file, false) == Some(("1.1".to_owned(), 200))
    });
    assert!(wharf.child.id() > 0);
}
