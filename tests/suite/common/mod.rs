//! Test harness: a real Wharf on 127.0.0.1:0 with a fresh data folder, and
//! small helpers that speak the protocol with reqwest.
#![allow(dead_code)]

pub mod balancer;
pub mod credential_server;
pub mod docker;
pub mod fault_proxy;
pub mod oidc_issuer;
pub mod pki;
pub mod receiver;
pub mod services;
pub mod silent_proxy;
pub mod tap;
pub mod tls_front;

use sha2::{Digest as _, Sha256};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use wharf::{Config, Server};

pub struct TestRegistry {
    pub server: Option<Server>,
    pub base: String,
    pub root: PathBuf,
    pub client: reqwest::Client,
    _dir: Option<tempfile::TempDir>,
    /// With WHARF_TEST_CLUSTER=1: the rest of the cluster.
    cluster: Option<ClusterParts>,
}

/// The nodes besides `server` (node 0), the balancer `base` points at, the
/// database's name, and node 0's configuration (for `restart`).
struct ClusterParts {
    _others: Vec<Server>,
    _balancer: balancer::RoundRobin,
    db: String,
    config: Config,
}

/// WHARF_TEST_CLUSTER=1 runs the protocol tests against three object-store
/// nodes (SeaweedFS + PostgreSQL) behind a round-robin balancer instead of
/// one data-folder registry (see `.ci/run`).
pub fn cluster_mode() -> bool {
    std::env::var_os("WHARF_TEST_CLUSTER").is_some_and(|v| v == "1")
}

/// `true` (skip the test) in cluster mode, saying why: a test of one
/// node's own state (its connections, its rate limiter, its metrics) that
/// a balancer in front of three nodes cannot show.
pub fn skip_in_cluster(why: &str) -> bool {
    if cluster_mode() {
        eprintln!("skipped in cluster mode: {why}");
    }
    cluster_mode()
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
        if cluster_mode() {
            return Self::start_cluster(tweak).await;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config_for(dir.path().to_path_buf());
        tweak(&mut cfg);
        let mut r = Self::start_config(cfg).await;
        r._dir = Some(dir);
        r
    }

    /// A handle on a registry the test does not run in-process (a `wharf`
    /// process), for the protocol helpers.
    pub fn at(base: &str) -> Self {
        TestRegistry {
            server: None,
            base: base.to_owned(),
            root: PathBuf::new(),
            client: reqwest::Client::new(),
            _dir: None,
            cluster: None,
        }
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
            cluster: None,
        }
    }

    /// Three nodes on a fresh database and bucket, each with `tweak`
    /// applied, behind a balancer that sends each request to the next.
    async fn start_cluster(tweak: impl FnOnce(&mut Config)) -> Self {
        let weed = services::Seaweed::shared().expect("WHARF_TEST_CLUSTER=1 needs SeaweedFS");
        let pg = services::Postgres::shared().expect("WHARF_TEST_CLUSTER=1 needs PostgreSQL");
        let (url, bucket) = (pg.fresh_database(), weed.fresh_bucket().await);
        let db = url.rsplit('/').next().unwrap().to_owned();
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config_for(dir.path().join("node0"));
        services::use_object_store(&mut cfg, &url, &weed.endpoint(), &bucket);
        tweak(&mut cfg);
        let mut servers = Vec::new();
        for i in 0..3 {
            let mut c = cfg.clone();
            c.root = dir.path().join(format!("node{i}"));
            servers.push(Server::start(c).await.expect("node starts"));
        }
        let nodes = servers
            .iter()
            .map(|s| format!("http://{}", s.local_addr()))
            .collect();
        let lb = balancer::RoundRobin::start(nodes).await;
        let first = servers.remove(0);
        cfg.addr = first.local_addr();
        TestRegistry {
            server: Some(first),
            base: format!("http://{}", lb.addr),
            root: cfg.root.clone(),
            client: reqwest::Client::new(),
            _dir: Some(dir),
            cluster: Some(ClusterParts {
                _others: servers,
                _balancer: lb,
                db,
                config: cfg,
            }),
        }
    }

    /// Stops the server and starts a new one on the same data folder.
    pub async fn restart(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
        if let Some(c) = &self.cluster {
            // Node 0 again on its port, behind the same balancer.
            let server = Server::start(c.config.clone())
                .await
                .expect("node restarts");
            self.server = Some(server);
            return;
        }
        let server = Server::start(config_for(self.root.clone()))
            .await
            .expect("server restarts");
        self.base = format!("http://{}", server.local_addr());
        self.server = Some(server);
    }

    /// Blobs (and manifests) whose bytes are stored: files in the data
    /// folder, or rows of `blobs` in cluster mode.
    pub fn stored_blobs(&self) -> usize {
        match &self.cluster {
            None => blob_files(&self.root).len(),
            Some(c) => self.count_rows(&c.db, "blobs"),
        }
    }

    /// Upload sessions open: folders under `uploads/`, or rows of
    /// `uploads` in cluster mode.
    pub fn open_sessions(&self) -> usize {
        match &self.cluster {
            None => std::fs::read_dir(self.root.join("uploads"))
                .map(|d| d.count())
                .unwrap_or(0),
            Some(c) => self.count_rows(&c.db, "uploads"),
        }
    }

    fn count_rows(&self, db: &str, table: &str) -> usize {
        services::Postgres::shared()
            .unwrap()
            .psql(db, &format!("SELECT count(*) FROM {table}"))
            .unwrap()
            .parse()
            .unwrap()
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

    /// One-request push; asserts 201. A registry that ignores `?digest=`
    /// on the POST (distribution does; the spec allows it) gets the bytes
    /// in a PUT to its session instead.
    pub async fn push_mono(&self, repo: &str, data: &[u8]) -> String {
        let d = digest(data);
        let mut r = self
            .client
            .post(self.url(&format!("/v2/{repo}/blobs/uploads/?digest={d}")))
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        if r.status() == 202 {
            let at = location(&r);
            let at = match at.starts_with("http") {
                true => at,
                false => self.url(&at),
            };
            let sep = if at.contains('?') { '&' } else { '?' };
            r = self
                .client
                .put(format!("{at}{sep}digest={d}"))
                .header("content-type", "application/octet-stream")
                .body(data.to_vec())
                .send()
                .await
                .unwrap();
        }
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
        d
    }

    /// One-request push; returns the status.
    pub async fn push_mono_status(&self, repo: &str, data: &[u8]) -> u16 {
        self.push_mono_as(repo, data, None).await.status().as_u16()
    }

    /// One-request push, with Basic credentials `(user, password)` when
    /// given; the whole answer.
    pub async fn push_mono_as(
        &self,
        repo: &str,
        data: &[u8],
        user: Option<(&str, &str)>,
    ) -> reqwest::Response {
        let mut b = self
            .client
            .post(self.url(&format!(
                "/v2/{repo}/blobs/uploads/?digest={}",
                digest(data)
            )))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec());
        if let Some((u, p)) = user {
            b = b.basic_auth(u, Some(p));
        }
        b.send().await.unwrap()
    }

    /// PATCHes `bytes` into the upload at `path` as the chunk that starts
    /// at offset `from` (with its Content-Range).
    pub async fn patch_chunk(&self, path: &str, from: usize, bytes: &[u8]) -> reqwest::Response {
        self.client
            .patch(self.url(path))
            .header(
                "content-range",
                format!("{from}-{}", (from + bytes.len()).saturating_sub(1)),
            )
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap()
    }

    /// Completes the upload at `path` as `digest`, with no further bytes.
    pub async fn finish_upload(&self, path: &str, digest: &str) -> reqwest::Response {
        self.client
            .put(self.url(&format!("{path}?digest={digest}")))
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.get(path).await.json().await.unwrap()
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.client.delete(self.url(path)).send().await.unwrap()
    }

    /// A blob GET with a `Range` header such as `bytes=10-19`.
    pub async fn get_blob_range(&self, repo: &str, d: &str, range: &str) -> reqwest::Response {
        self.client
            .get(self.url(&format!("/v2/{repo}/blobs/{d}")))
            .header("range", range)
            .send()
            .await
            .unwrap()
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

/// How many of [`ERROR_CODES`] are the OCI distribution spec's own.
pub const SPEC_CODES: usize = 14;

/// Error codes a Wharf error body may carry: the OCI distribution spec's
/// set, then the extensions the README documents.
pub const ERROR_CODES: &[&str] = &[
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
    "PAGINATION_NUMBER_INVALID",
    "STORAGE_FULL",
    "UNAVAILABLE",
    "UNKNOWN",
];

/// The error codes in a raw HTTP response's JSON body (empty if it has none).
pub fn error_codes(raw: &str) -> Vec<String> {
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        return Vec::new();
    };
    v["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["code"].as_str().map(str::to_string))
        .collect()
}

pub async fn raw_get(base: &str, path: &str) -> (u16, String) {
    raw_request(
        base,
        &format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"),
    )
    .await
}

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

pub fn descriptor(media_type: &str, data: &[u8]) -> serde_json::Value {
    serde_json::json!({ "mediaType": media_type, "digest": digest(data), "size": data.len() })
}

impl TestRegistry {
    /// Pushes a config and layers, returns the manifest JSON naming them.
    pub async fn image_manifest(&self, repo: &str, seed: u64, layers: usize) -> serde_json::Value {
        let config = format!("{{\"seed\":{seed}}}").into_bytes();
        self.push_mono(repo, &config).await;
        let mut ls = Vec::new();
        for i in 0..layers {
            let l = payload(1000 + i, seed * 100 + i as u64);
            self.push_mono(repo, &l).await;
            ls.push(descriptor(
                "application/vnd.oci.image.layer.v1.tar+gzip",
                &l,
            ));
        }
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
            "layers": ls,
        })
    }

    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> reqwest::Response {
        self.client
            .put(self.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }
}

/// The `wharf` binary started as an operator would, on a port it picks.
pub struct WharfProcess {
    pub child: Child,
    pub base: String,
    log: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
}

impl WharfProcess {
    pub fn start(root: &std::path::Path) -> Self {
        Self::start_args(root, &[])
    }

    /// Started with `toml` as its config file (`dir/wharf.toml`) and
    /// `dir/data` as its data folder.
    pub fn start_with_toml(dir: &std::path::Path, toml: &str) -> Self {
        let config = dir.join("wharf.toml");
        std::fs::write(&config, toml).unwrap();
        Self::start_args(
            &dir.join("data"),
            &["--config".as_ref(), config.as_os_str()],
        )
    }

    /// Started with more flags (`--config FILE`, say).
    pub fn start_args(root: &std::path::Path, extra: &[&std::ffi::OsStr]) -> Self {
        Self::start_env(root, extra, &[])
    }

    /// Started with more flags and `WHARF_*` settings in its environment.
    pub fn start_env(
        root: &std::path::Path,
        extra: &[&std::ffi::OsStr],
        vars: &[(&str, &str)],
    ) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(extra)
            .arg("--root")
            .arg(root)
            .envs(vars.iter().copied())
            .env("WHARF_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("wharf binary starts");
        let out = child.stdout.take().unwrap();
        let mut lines = BufReader::new(out).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        let base = loop {
            assert!(
                Instant::now() < deadline,
                "wharf did not report its address"
            );
            let line = lines.next().expect("wharf exited early").unwrap();
            // Text logs say addr=HOST:PORT, JSON logs "addr":"HOST:PORT".
            if let Some(rest) = line.split("addr=").nth(1) {
                let addr = rest.split_whitespace().next().unwrap();
                break format!("http://{addr}");
            }
            if let Some(rest) = line.split("\"addr\":\"").nth(1) {
                let addr = rest.split('"').next().unwrap();
                break format!("http://{addr}");
            }
        };
        // Keep draining the log so the server never blocks on a full pipe,
        // and keep its recent lines for tests that read them.
        let log = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let keep = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut l = keep.lock().unwrap();
                if l.len() >= 10_000 {
                    l.pop_front();
                }
                l.push_back(line);
            }
        });
        WharfProcess { child, base, log }
    }

    /// The most recent log lines (up to 10,000).
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().iter().cloned().collect()
    }

    pub fn status_kib(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }
}

impl Drop for WharfProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
