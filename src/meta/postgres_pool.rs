//! The shared backend's connections: a pool of tokio-postgres clients whose
//! I/O runs on the server's own runtime, and the blocking face the
//! metadata traits (synchronous, as redb is) call it through.
//!
//! Owns: connecting (libpq's several hosts tried in turn, each under a
//! deadline, the host that last took a connection tried first), the pool
//! and its figures, a deadline on every statement, and what a client error
//! means (reach the database later, or a fault).
//! Must not: know a table (the backend's and the object-store modules' SQL
//! live with them), or be called from an async worker: its calls park
//! their thread until the runtime answers (callers are on the blocking
//! pool or the writer thread).
//!
//! Why deadlines here and not only on the server: `statement_timeout`
//! needs a server that answers. A primary that goes silent (a cut link, a
//! hung host whose kernel still acknowledges) answers nothing, so the
//! client's own deadline is what turns it into a 503, drops the
//! connection, and lets the next one try the other hosts.

use super::postgres_tls::PgTls;
use deadpool::managed::{self, Manager, Metrics, PoolError, RecycleError, RecycleResult};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::{Handle, Runtime, RuntimeFlavor};
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, Row};

/// A statement's parameters, as tokio-postgres takes them.
pub type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// What a database call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The server's answer or the connection's failure.
    #[error("{}", describe(.0))]
    Client(#[from] tokio_postgres::Error),
    /// Logging in failed: whatever the reason, the request was not at
    /// fault, so it is always "reach the database later".
    #[error("{}", describe(.0))]
    Login(tokio_postgres::Error),
    /// Nothing came back in time: the connection is dropped, since its
    /// state is unknown.
    #[error("PostgreSQL: no answer within {} s (host cut off or hung); the connection is dropped", .0.as_secs_f32())]
    Deadline(Duration),
    /// No connection to hand out.
    #[error("PostgreSQL: {0}")]
    NoConnection(String),
}

impl PgError {
    /// The SQLSTATE, when the server answered with one.
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            PgError::Client(e) | PgError::Login(e) => e.code(),
            _ => None,
        }
    }

    /// Whether this is about reaching the database (down, cut off,
    /// restarting, saturated, timed out): an answer of 503, retry later,
    /// as opposed to a fault in what was asked.
    pub fn unreachable(&self) -> bool {
        match self {
            PgError::Client(e) => reach_later(e),
            // Deadlines, logins, no connection free.
            _ => true,
        }
    }

    /// Whether a failed login is the server's or the certificate check's
    /// refusal, which trying again will not change.
    pub fn refusal(&self) -> bool {
        let PgError::Login(e) = self else {
            return false;
        };
        if e.as_db_error().is_some() {
            // "Starting up", "too many connections": worth waiting for.
            return !reach_later(e);
        }
        crate::tls::refused_by_tls(e)
    }
}

/// Whether the database is out of reach for now (gone, restarting,
/// saturated, a statement or lock wait timed out) rather than refusing
/// what was asked.
fn reach_later(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() || e.as_db_error().is_none() {
        return true;
    }
    e.code().is_some_and(|c| {
        *c == SqlState::QUERY_CANCELED
            || *c == SqlState::LOCK_NOT_AVAILABLE
            || *c == SqlState::ADMIN_SHUTDOWN
            || *c == SqlState::CANNOT_CONNECT_NOW
            || *c == SqlState::TOO_MANY_CONNECTIONS
            // A standby reached before its promotion: the primary is
            // elsewhere, or about to be.
            || *c == SqlState::READ_ONLY_SQL_TRANSACTION
    })
}

/// What PostgreSQL said, not just "db error": its message and SQLSTATE.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("PostgreSQL: {} (SQLSTATE {})", d.message(), d.code().code()),
        // A connection's failure: its causes say which (a refused
        // certificate, a reset), not just "error performing TLS handshake".
        None => format!("PostgreSQL: {}", crate::tls::with_causes(e)),
    }
}

/// The pool's figures, for the metrics endpoint.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolFigures {
    pub max: usize,
    pub open: usize,
    pub in_use: usize,
    /// Callers waiting for a connection now.
    pub waiting: usize,
    /// Checkouts so far, and the time they spent waiting, in total.
    pub checkouts: u64,
    pub wait_seconds: f64,
}

/// The connection pool, shared by the metadata backend and the
/// object-store modules; cheap to clone.
#[derive(Clone)]
pub struct Pool(Arc<PoolOwner>);

struct PoolOwner {
    pool: managed::Pool<Connector>,
    runtime: Option<PoolRuntime>,
    deadline: Duration,
    checkouts: AtomicU64,
    wait_micros: AtomicU64,
}

/// Where the connections' I/O runs: the server's runtime when there is
/// one with workers of its own; otherwise (a command-line tool, a test on
/// a one-thread runtime, which nothing would drive while a caller blocks)
/// a one-worker runtime the pool owns.
enum PoolRuntime {
    Shared(Handle),
    Owned(Runtime),
}

impl PoolRuntime {
    fn pick() -> Result<PoolRuntime, PgError> {
        if let Ok(handle) = Handle::try_current() {
            if handle.runtime_flavor() == RuntimeFlavor::MultiThread {
                return Ok(PoolRuntime::Shared(handle));
            }
        }
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("wharf-postgres")
            .enable_all()
            .build()
            .map(PoolRuntime::Owned)
            .map_err(|e| PgError::NoConnection(format!("cannot start its runtime: {e}")))
    }

    fn handle(&self) -> &Handle {
        match self {
            PoolRuntime::Shared(h) => h,
            PoolRuntime::Owned(rt) => rt.handle(),
        }
    }
}

impl Drop for PoolOwner {
    fn drop(&mut self) {
        self.pool.close();
        // A runtime must not be dropped on an async worker (where a
        // server's state may be dropped); this form may.
        if let Some(PoolRuntime::Owned(rt)) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Pool {
    /// A pool of up to `size` connections to the hosts of `hosts` (one
    /// config per host, in the URL's order). Nothing connects yet.
    /// Waiting for a free connection, logging in to one host, and each
    /// statement are bounded by `timeout` (statements a little longer, so
    /// the server's own `statement_timeout` answers first when it can).
    pub fn new(
        hosts: Vec<Config>,
        tls: PgTls,
        size: u32,
        timeout: Duration,
    ) -> Result<Pool, PgError> {
        let runtime = PoolRuntime::pick()?;
        let connector = Connector {
            hosts,
            tls,
            first: AtomicUsize::new(0),
            login_deadline: timeout,
        };
        // The builder checks that a runtime is current when timeouts are set.
        let _entered = runtime.handle().enter();
        let pool = managed::Pool::builder(connector)
            .max_size(size.max(1) as usize)
            .runtime(deadpool::Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .build()
            .map_err(|e| PgError::NoConnection(e.to_string()))?;
        drop(_entered);
        Ok(Pool(Arc::new(PoolOwner {
            pool,
            runtime: Some(runtime),
            deadline: timeout + Duration::from_secs(2),
            checkouts: AtomicU64::new(0),
            wait_micros: AtomicU64::new(0),
        })))
    }

    fn handle(&self) -> Result<&Handle, PgError> {
        self.0
            .runtime
            .as_ref()
            .map(PoolRuntime::handle)
            .ok_or_else(|| PgError::NoConnection("connection pool is closed".into()))
    }

    /// A connection: a free one, or a new login; waits at most the
    /// timeout for a free slot.
    pub fn get(&self) -> Result<PgConnection, PgError> {
        let handle = self.handle()?;
        let started = Instant::now();
        let got = handle.block_on(self.0.pool.get());
        self.0.checkouts.fetch_add(1, Ordering::Relaxed);
        self.0
            .wait_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        let client = got.map_err(|e| match e {
            PoolError::Backend(e) => e,
            PoolError::Timeout(_) => {
                let s = self.0.pool.status();
                PgError::NoConnection(format!(
                    "no connection free within {} s ({} of {} in use)",
                    self.0
                        .deadline
                        .saturating_sub(Duration::from_secs(2))
                        .as_secs(),
                    s.size.saturating_sub(s.available),
                    s.max_size
                ))
            }
            other => PgError::NoConnection(other.to_string()),
        })?;
        Ok(PgConnection {
            client: Some(client),
            handle: handle.clone(),
            pool: self.clone(),
            deadline: self.0.deadline,
            health: Health::Sound,
        })
    }

    pub fn figures(&self) -> PoolFigures {
        let s = self.0.pool.status();
        PoolFigures {
            max: s.max_size,
            open: s.size,
            in_use: s.size.saturating_sub(s.available),
            waiting: s.waiting,
            checkouts: self.0.checkouts.load(Ordering::Relaxed),
            wait_seconds: self.0.wait_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// Logs in to libpq's hosts. Each host gets its own deadline: libpq's
/// `connect_timeout` bounds only the TCP connect, and a silent host
/// accepts that and then says nothing.
struct Connector {
    hosts: Vec<Config>,
    tls: PgTls,
    /// The host to try first: the last one that took a login, so after a
    /// failover new connections do not wait on the old primary first.
    first: AtomicUsize,
    login_deadline: Duration,
}

/// A logged-in client and the host (index into the URL's) it is on.
pub struct HostClient {
    client: Client,
    host: usize,
}

impl Connector {
    /// After host `i` failed a login or went silent, the next login starts
    /// with the host after it (unless another login already moved on).
    fn pass_over(&self, i: usize) {
        let n = self.hosts.len().max(1);
        let _ = self
            .first
            .compare_exchange(i, (i + 1) % n, Ordering::Relaxed, Ordering::Relaxed);
    }
}

impl Manager for Connector {
    type Type = HostClient;
    type Error = PgError;

    async fn create(&self) -> Result<HostClient, PgError> {
        let n = self.hosts.len().max(1);
        let first = self.first.load(Ordering::Relaxed) % n;
        let mut failed = PgError::NoConnection("no host in metadata.url".into());
        for i in (0..n).map(|k| (first + k) % n) {
            let Some(config) = self.hosts.get(i) else {
                continue;
            };
            let login = config.connect(self.tls.clone());
            match tokio::time::timeout(self.login_deadline, login).await {
                Ok(Ok((client, connection))) => {
                    // The connection's I/O is a task of its own; it ends
                    // when the client (owned by the pool) is dropped.
                    tokio::spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::debug!(error = %describe(&e), "PostgreSQL connection ended");
                        }
                    });
                    self.first.store(i, Ordering::Relaxed);
                    return Ok(HostClient { client, host: i });
                }
                Ok(Err(e)) => failed = PgError::Login(e),
                Err(_) => failed = PgError::Deadline(self.login_deadline),
            }
            self.pass_over(i);
        }
        Err(failed)
    }

    async fn recycle(&self, conn: &mut HostClient, _: &Metrics) -> RecycleResult<PgError> {
        // The I/O task notices a closed socket or a terminated backend as
        // it happens, so a dead connection is known here without a query.
        if conn.client.is_closed() {
            return Err(RecycleError::message("connection closed"));
        }
        Ok(())
    }
}

/// The configs for each host of `config`, in its order: the hosts of a
/// multi-host URL, each with everything else the URL said.
pub fn per_host(config: &Config) -> Vec<Config> {
    let hosts = config.get_hosts();
    if hosts.len() <= 1 {
        return vec![config.clone()];
    }
    let ports = config.get_ports();
    hosts
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let mut one = Config::new();
            match host {
                Host::Tcp(name) => one.host(name),
                #[cfg(unix)]
                Host::Unix(path) => one.host_path(path),
            };
            if let Some(addr) = config.get_hostaddrs().get(i) {
                one.hostaddr(*addr);
            }
            // libpq: one port for every host, or one per host.
            if let Some(port) = ports.get(i).or(ports.first()) {
                one.port(*port);
            }
            if let Some(v) = config.get_user() {
                one.user(v);
            }
            if let Some(v) = config.get_password() {
                one.password(v);
            }
            if let Some(v) = config.get_dbname() {
                one.dbname(v);
            }
            if let Some(v) = config.get_options() {
                one.options(v);
            }
            if let Some(v) = config.get_application_name() {
                one.application_name(v);
            }
            one.ssl_mode(config.get_ssl_mode())
                .ssl_negotiation(config.get_ssl_negotiation())
                .channel_binding(config.get_channel_binding())
                .target_session_attrs(config.get_target_session_attrs());
            one
        })
        .collect()
}

/// What a connection's last call showed about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Sound,
    /// The socket closed (a terminated backend, a restart): drop it.
    Closed,
    /// Nothing came back within the deadline: drop it, and the pool's
    /// idle connections with it, which likely sit on the same silent host.
    Silent,
}

/// A pooled connection, handed back to the pool when dropped (or closed,
/// if a deadline or a closed socket left it in an unknown state).
pub struct PgConnection {
    client: Option<managed::Object<Connector>>,
    handle: Handle,
    /// Keeps the runtime the connection's I/O runs on (a pool the caller
    /// dropped first, as a one-off login does).
    pool: Pool,
    deadline: Duration,
    health: Health,
}

impl Drop for PgConnection {
    fn drop(&mut self) {
        if self.health == Health::Sound {
            return;
        }
        let Some(object) = self.client.take() else {
            return;
        };
        let host = managed::Object::take(object).host;
        if self.health == Health::Silent {
            tracing::warn!(
                host,
                "a PostgreSQL host stopped answering; its connections are dropped and the next login tries the other hosts first"
            );
            let owner = &self.pool.0;
            owner.pool.manager().pass_over(host);
            owner.pool.retain(|_, _| false);
        }
    }
}

/// Runs one call on the pool's runtime under the statement deadline.
fn run<T>(
    handle: &Handle,
    deadline: Duration,
    health: &mut Health,
    call: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, PgError> {
    match handle.block_on(async { tokio::time::timeout(deadline, call).await }) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            if e.is_closed() && *health == Health::Sound {
                *health = Health::Closed;
            }
            Err(PgError::Client(e))
        }
        Err(_) => {
            *health = Health::Silent;
            Err(PgError::Deadline(deadline))
        }
    }
}

/// The statements both a connection and a transaction run, with their
/// blocking, deadline-bound signatures.
macro_rules! statements {
    ($client:ident, $self:ident => $target:expr) => {
        pub fn execute(&mut $self, sql: &str, params: Params<'_>) -> Result<u64, PgError> {
            let ($client, handle, deadline, health) = $target;
            run(handle, deadline, health, $client.execute(sql, params))
        }

        pub fn query(&mut $self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, PgError> {
            let ($client, handle, deadline, health) = $target;
            run(handle, deadline, health, $client.query(sql, params))
        }

        pub fn query_one(&mut $self, sql: &str, params: Params<'_>) -> Result<Row, PgError> {
            let ($client, handle, deadline, health) = $target;
            run(handle, deadline, health, $client.query_one(sql, params))
        }

        pub fn query_opt(
            &mut $self,
            sql: &str,
            params: Params<'_>,
        ) -> Result<Option<Row>, PgError> {
            let ($client, handle, deadline, health) = $target;
            run(handle, deadline, health, $client.query_opt(sql, params))
        }

        pub fn batch_execute(&mut $self, sql: &str) -> Result<(), PgError> {
            let ($client, handle, deadline, health) = $target;
            run(handle, deadline, health, $client.batch_execute(sql))
        }
    };
}

impl PgConnection {
    fn parts(&mut self) -> Result<(&mut Client, &Handle, Duration, &mut Health), PgError> {
        let conn = self
            .client
            .as_deref_mut()
            .ok_or_else(|| PgError::NoConnection("connection already closed".into()))?;
        Ok((
            &mut conn.client,
            &self.handle,
            self.deadline,
            &mut self.health,
        ))
    }

    statements!(client, self => self.parts()?);

    /// Opens a transaction; it rolls back when dropped uncommitted.
    pub fn transaction(&mut self) -> Result<PgTransaction<'_>, PgError> {
        let (client, handle, deadline, health) = self.parts()?;
        let txn = run(handle, deadline, health, client.transaction())?;
        Ok(PgTransaction {
            txn,
            handle,
            deadline,
            health,
        })
    }
}

/// A transaction on a pooled connection.
pub struct PgTransaction<'a> {
    txn: tokio_postgres::Transaction<'a>,
    handle: &'a Handle,
    deadline: Duration,
    health: &'a mut Health,
}

impl PgTransaction<'_> {
    fn parts(
        &mut self,
    ) -> (
        &tokio_postgres::Transaction<'_>,
        &Handle,
        Duration,
        &mut Health,
    ) {
        (&self.txn, self.handle, self.deadline, &mut *self.health)
    }

    statements!(txn, self => self.parts());

    pub fn commit(self) -> Result<(), PgError> {
        let PgTransaction {
            txn,
            handle,
            deadline,
            health,
        } = self;
        run(handle, deadline, health, txn.commit())
    }
}
