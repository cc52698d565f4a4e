//! The real services some tests need, started once per test run and shared:
//! a throwaway PostgreSQL cluster (Debian's package, `initdb` into a temp
//! folder, a free loopback port). Each test takes a fresh database of its
//! own, so tests never see each other's rows.
//!
//! The servers are children of the test binary and are stopped when it
//! exits (an `atexit` hook: the harness ends with `process::exit`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Children to kill at exit.
static CHILDREN: Mutex<Vec<Child>> = Mutex::new(Vec::new());

extern "C" fn stop_children() {
    if let Ok(mut children) = CHILDREN.lock() {
        for c in children.iter_mut() {
            // SIGINT is PostgreSQL's "fast shutdown": no recovery next time
            // is needed, but nothing waits for clients either.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
        }
        for c in children.iter_mut() {
            let _ = c.wait();
        }
    }
}

fn adopt(child: Child) {
    static HOOK: OnceLock<()> = OnceLock::new();
    HOOK.get_or_init(|| unsafe {
        libc::atexit(stop_children);
    });
    CHILDREN.lock().unwrap().push(child);
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
        let initdb = pg_bin("initdb")?;
        let postgres = pg_bin("postgres")?;
        let user = pg_user();
        let dir = std::env::temp_dir().join(format!("wharf-pg-{}", std::process::id()));
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
        let port = free_port();
        let log = std::fs::File::create(dir.join("postgres.log")).unwrap();
        let child = as_pg_user(
            Command::new(&postgres)
                .arg("-D")
                .arg(&data)
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
        adopt(child);
        let pg = Postgres {
            port,
            dir,
            next_db: AtomicUsize::new(0),
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
        Some(pg)
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
