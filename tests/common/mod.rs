//! Test harness: a real Wharf on 127.0.0.1:0 with a fresh data folder, and
//! small helpers that speak the protocol with reqwest.
#![allow(dead_code)]

use sha2::{Digest as _, Sha256};
use std::path::PathBuf;
use wharf::{Config, Server};

pub struct TestRegistry {
    pub server: Option<Server>,
    pub base: String,
    pub root: PathBuf,
    pub client: reqwest::Client,
    _dir: Option<tempfile::TempDir>,
}

pub fn config_for(root: PathBuf) -> Config {
    Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        root,
        ..Config::default()
    }
}

impl TestRegistry {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config_for(dir.path().to_path_buf());
        tweak(&mut cfg);
        let mut r = Self::start_config(cfg).await;
        r._dir = Some(dir);
        r
    }

    pub async fn start_config(cfg: Config) -> Self {
        let root = cfg.root.clone();
        let server = Server::start(cfg).await.expect("server starts");
        let base = format!("http://{}", server.local_addr());
        TestRegistry {
            server: Some(server),
            base,
            root,
            client: reqwest::Client::new(),
            _dir: None,
        }
    }

    /// Stops the server and starts a new one on the same data folder.
    pub async fn restart(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
        let server = Server::start(config_for(self.root.clone()))
            .await
            .expect("server restarts");
        self.base = format!("http://{}", server.local_addr());
        self.server = Some(server);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// POST to start an upload; returns the Location path.
    pub async fn start_upload(&self, repo: &str) -> String {
        let r = self
            .client
            .post(self.url(&format!("/v2/{repo}/blobs/uploads/")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        location(&r)
    }

    /// One-request push; asserts 201.
    pub async fn push_mono(&self, repo: &str, data: &[u8]) -> String {
        let d = digest(data);
        let r = self
            .client
            .post(self.url(&format!("/v2/{repo}/blobs/uploads/?digest={d}")))
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
        d
    }

    pub async fn get_blob(&self, repo: &str, d: &str) -> reqwest::Response {
        self.client
            .get(self.url(&format!("/v2/{repo}/blobs/{d}")))
            .send()
            .await
            .unwrap()
    }
}

pub fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get("location")
        .expect("Location header")
        .to_str()
        .unwrap()
        .to_owned()
}

pub fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

pub fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Asserts an OCI error reply with this status and code.
pub async fn assert_oci_error(r: reqwest::Response, status: u16, code: &str) {
    assert_eq!(r.status().as_u16(), status);
    let body: serde_json::Value = r.json().await.expect("error body is JSON");
    assert_eq!(body["errors"][0]["code"], code, "{body}");
}

/// Files under `<root>/blobs`, i.e. stored blob copies.
pub fn blob_files(root: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.join("blobs")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Sends a request exactly as written (no client-side path normalisation)
/// and returns the status code and the raw response text.
pub async fn raw_request(base: &str, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

pub async fn raw_get(base: &str, path: &str) -> (u16, String) {
    raw_request(
        base,
        &format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"),
    )
    .await
}
