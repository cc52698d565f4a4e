//! The `wharf` command: flags and config file, logging, signals.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use wharf::config::MetadataBackend;
use wharf::storage::check::CheckOptions;
use wharf::{Config, Server};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "wharf",
    version,
    about = "A container image registry for build farms"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry.
    Serve {
        /// TOML file with any of the settings; WHARF_* variables win over
        /// it, flags over both.
        #[arg(long, env = "WHARF_CONFIG")]
        config: Option<PathBuf>,
        /// Address to listen on [default: 127.0.0.1:5000].
        #[arg(long)]
        addr: Option<SocketAddr>,
        /// Data folder [default: ./wharf-data].
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// Collect garbage: on a running server (--url) or on a stopped one's
    /// data folder. Prints what was (or, with --dry-run, would be) freed.
    Gc {
        #[arg(long, env = "WHARF_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long)]
        root: Option<PathBuf>,
        /// A running Wharf, host:port: collect online, through it.
        #[arg(long)]
        url: Option<String>,
        /// With --url on a registry with authentication: an admin user
        /// (`auth.admins`); the password is read from WHARF_PASSWORD.
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        dry_run: bool,
        /// Override gc_grace_secs.
        #[arg(long)]
        grace_secs: Option<u64>,
        /// Also remove manifests no tag reaches (gc_delete_untagged).
        #[arg(long)]
        delete_untagged: bool,
        /// Print the report as JSON (exact counts and bytes), for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Apply the metadata schema migrations the PostgreSQL database lacks
    /// (nodes also do this at start, under the same lock).
    Migrate {
        #[arg(long, env = "WHARF_CONFIG")]
        config: PathBuf,
    },
    /// Exit 0 when the server is ready (`/readyz` answers 200): for a
    /// container's HEALTHCHECK, where there is no curl.
    Healthcheck {
        #[arg(long, env = "WHARF_CONFIG")]
        config: Option<PathBuf>,
        /// host:port to ask instead of the configuration's addresses.
        #[arg(long)]
        url: Option<String>,
    },
    /// Check a data folder (blob digests, metadata references,
    /// leftovers; beside a running server, blob digests only, read-only),
    /// or, with a --config in object-store mode, the bucket against
    /// PostgreSQL beside running nodes (read-only). Shows progress on a
    /// terminal. Exits 1 when it finds damage.
    Fsck {
        #[arg(long, env = "WHARF_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long)]
        root: Option<PathBuf>,
        /// Remove what is safe to remove: leftovers, metadata pointing at
        /// missing content; corrupt blobs go to <root>/quarantine. Data
        /// folder only.
        #[arg(long)]
        repair: bool,
        /// Object-store mode: read every object back and check its digest
        /// (the data folder's check always does).
        #[arg(long)]
        deep: bool,
        /// Print the report as JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Work with the configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate the file, the WHARF_* environment and every file they
    /// name (htpasswd, token key, TLS pair, CA bundle, secrets); print the
    /// effective configuration with secrets redacted. Exits 1 on a
    /// problem, 2 when the configuration cannot be read at all.
    Check {
        #[arg(long, env = "WHARF_CONFIG")]
        config: Option<PathBuf>,
    },
}

/// The process's environment, as the configuration reads it (variables
/// that are not Unicode cannot be settings and are skipped).
fn environment() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
}

fn load_config(config: Option<PathBuf>) -> Result<Config, ExitCode> {
    Config::load(config.as_deref(), environment()).map_err(|e| {
        eprintln!("wharf: {e}");
        ExitCode::from(2)
    })
}

/// `wharf config check`: exit 0 only when start-up would accept it all.
fn config_check(config: Option<PathBuf>) -> ExitCode {
    let cfg = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let problems = wharf::app::check::problems(&cfg);
    print!("{}", wharf::app::check::redacted(&cfg));
    for p in &problems {
        eprintln!("wharf config check: {p}");
    }
    match problems.is_empty() {
        true => {
            eprintln!("wharf config check: ok");
            ExitCode::SUCCESS
        }
        false => ExitCode::from(1),
    }
}

/// Logs go to stdout, as text or one JSON object per line; WHARF_LOG (in
/// tracing's filter syntax) overrides the configured level.
fn init_logging(log: &wharf::config::LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WHARF_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: containers and journald
    // keep the escape codes otherwise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    if log.format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, addr, root } => {
            let mut cfg = match load_config(config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if let Some(a) = addr {
                cfg.addr = a;
            }
            if let Some(r) = root {
                cfg.root = r;
            }
            init_logging(&cfg.log);
            serve(cfg)
        }
        Command::Gc {
            config,
            root,
            url,
            user,
            dry_run,
            grace_secs,
            delete_untagged,
            json,
        } => {
            let mut cfg = match load_config(config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if let Some(r) = root {
                cfg.root = r;
            }
            if let Some(g) = grace_secs {
                cfg.gc_grace_secs = g;
            }
            cfg.gc_delete_untagged |= delete_untagged;
            init_logging(&cfg.log);
            match url {
                Some(u) => gc_online(&u, user.as_deref(), dry_run, grace_secs, json),
                None => gc_offline(cfg, dry_run, json),
            }
        }
        Command::Migrate { config } => {
            let cfg = match load_config(Some(config)) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(&cfg.log);
            migrate(&cfg)
        }
        Command::Config {
            action: ConfigAction::Check { config },
        } => config_check(config),
        Command::Healthcheck { config, url } => match load_config(config) {
            Ok(cfg) => healthcheck(&cfg, url.as_deref()),
            Err(code) => code,
        },
        Command::Fsck {
            config,
            root,
            repair,
            deep,
            json,
        } => {
            init_logging(&Default::default());
            let cfg = match config {
                Some(path) => match load_config(Some(path)) {
                    Ok(c) => Some(c),
                    Err(code) => return code,
                },
                None => None,
            };
            let cfg = match (cfg, root) {
                (Some(cfg), None) => cfg,
                (cfg, Some(root)) => Config {
                    root,
                    ..cfg.unwrap_or_default()
                },
                (None, None) => {
                    eprintln!("wharf fsck: give --root DIR or --config FILE");
                    return ExitCode::from(2);
                }
            };
            fsck(&cfg, CheckOptions { repair, deep }, json)
        }
    }
}

fn migrate(cfg: &Config) -> ExitCode {
    if let Err(e) = wharf::app::check::compile(cfg) {
        eprintln!("wharf migrate: {e}");
        return ExitCode::from(2);
    }
    let Some(url) = cfg
        .metadata
        .url
        .as_deref()
        .filter(|_| cfg.metadata.backend == MetadataBackend::Postgres)
    else {
        eprintln!("wharf migrate: metadata.backend is not \"postgres\" (redb needs no migration)");
        return ExitCode::from(2);
    };
    let timeout = std::time::Duration::from_secs(cfg.metadata.timeout_secs);
    // `connect` migrates; the version tells the operator where it stands.
    match wharf::meta::PostgresBackend::connect(url, 1, timeout).and_then(|b| b.schema_version()) {
        Ok(v) => {
            println!("metadata schema at version {v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wharf migrate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `wharf fsck`: the configured storage's check, one report either way.
fn fsck(cfg: &Config, opts: CheckOptions, json: bool) -> ExitCode {
    if let Err(e) = wharf::app::check::compile(cfg) {
        eprintln!("wharf fsck: {e}");
        return ExitCode::from(2);
    }
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    let bar = wharf::terminal::Bar::new("blobs");
    match rt.block_on(wharf::storage::check::check(cfg, opts, &bar)) {
        Ok(r) => report_fsck(&r, opts.repair, json),
        Err(e) => {
            eprintln!("wharf fsck: {e}");
            ExitCode::from(2)
        }
    }
}

fn report_fsck(r: &wharf::fsck::FsckReport, repair: bool, json: bool) -> ExitCode {
    let code = match r.is_damaged() {
        true => ExitCode::from(1),
        false => ExitCode::SUCCESS,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
        return code;
    }
    for p in &r.problems {
        println!("DAMAGE {p}");
    }
    for l in &r.leftovers {
        println!("LEFTOVER {}", l.display());
    }
    for o in &r.orphans {
        println!("ORPHAN {o} (garbage collection frees it)");
    }
    for f in &r.repaired {
        println!("REPAIRED {f}");
    }
    println!(
        "fsck: {} blobs checked ({}), {} problems, {} leftovers, {} orphans{}",
        r.blobs_checked,
        wharf::terminal::human_bytes(r.bytes_checked),
        r.problems.len(),
        r.leftovers.len(),
        r.orphans.len(),
        if repair { ", repair done" } else { "" }
    );
    if !r.metadata_checked {
        println!(
            "fsck: a running server holds this folder, so only blob contents were checked \
             (read-only); stop it for the metadata check, leftovers and --repair"
        );
    }
    code
}

/// Runs garbage collection on a stopped server's folder.
fn gc_offline(cfg: Config, dry_run: bool, json: bool) -> ExitCode {
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    rt.block_on(async move {
        // Offline: nothing else writes, so no reserve is taken or given.
        let space = std::sync::Arc::new(wharf::space::DiskSpace::unreserved(&cfg.root));
        let (meta, writer, pg) = match wharf::meta::Meta::open_configured(&cfg, space.clone()).await
        {
            Ok(opened) => opened,
            Err(e) => {
                eprintln!(
                    "wharf gc: {e}\n(if a server is running on this folder, use --url HOST:PORT)"
                );
                return ExitCode::from(2);
            }
        };
        // Nobody scrapes an offline run: its cache metrics go nowhere.
        let cache_metrics = match wharf::metrics::ReadCacheMetrics::new() {
            Ok(m) => m,
            Err(e) => {
                eprintln!("wharf gc: {e}");
                return ExitCode::FAILURE;
            }
        };
        let storage =
            match wharf::storage::open_configured(&cfg, &meta, pg, space, cache_metrics).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("wharf gc: {e}");
                    return ExitCode::from(2);
                }
            };
        let result = wharf::gc::collect(
            &meta,
            storage.as_ref(),
            &wharf::gc::GcOptions::from_config(&cfg, dry_run),
        )
        .await;
        storage.stop().await;
        drop(storage);
        drop(meta);
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        match result {
            Ok(report) => {
                print_gc(&report, json);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("wharf gc: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Asks a running server to collect garbage (`POST /_wharf/gc`).
/// One HTTP/1.1 request over plain TCP (the CLI's own calls to a local
/// server), read to the end; bounded by a 5 s timeout each way.
fn plain_http(host: &str, method: &str, path: &str, headers: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let timeout = std::time::Duration::from_secs(5);
    let addr = host
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes())?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    Ok(response)
}

/// `wharf healthcheck`: exit 0 when the server answers `/readyz` with 200
/// (a container's HEALTHCHECK; minimal images have no curl). It asks the
/// ops listener when `[metrics] addr` is set, else the registry port,
/// which must then be plain HTTP.
fn healthcheck(cfg: &Config, url: Option<&str>) -> ExitCode {
    let local = |a: std::net::SocketAddr| {
        let ip = match a.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => std::net::Ipv4Addr::LOCALHOST.into(),
            ip if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
            ip => ip,
        };
        std::net::SocketAddr::new(ip, a.port()).to_string()
    };
    let host = match (url, cfg.metrics.addr, &cfg.tls) {
        (Some(u), _, _) => u
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned(),
        (None, Some(ops), _) => local(ops),
        (None, None, None) => local(cfg.addr),
        (None, None, Some(_)) => {
            eprintln!("wharf healthcheck: the registry port speaks TLS; set [metrics] addr (plain HTTP) or --url");
            return ExitCode::from(2);
        }
    };
    match plain_http(&host, "GET", "/readyz", "") {
        Ok(r) if r.starts_with("HTTP/1.1 200") => ExitCode::SUCCESS,
        Ok(r) => {
            eprintln!(
                "wharf healthcheck: {host}: {}",
                r.lines().next().unwrap_or("no answer")
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("wharf healthcheck: {host}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A collection's report: a sentence for people, or JSON with `--json`.
fn print_gc(report: &wharf::gc::GcReport, json: bool) {
    match json {
        true => println!("{}", serde_json::to_string(report).unwrap_or_default()),
        false => println!("wharf gc: {report}"),
    }
}

fn gc_online(
    host: &str,
    user: Option<&str>,
    dry_run: bool,
    grace_secs: Option<u64>,
    json: bool,
) -> ExitCode {
    use base64::Engine as _;
    let host = host.trim_start_matches("http://").trim_end_matches('/');
    let mut path = format!("/_wharf/gc?dry_run={dry_run}");
    if let Some(g) = grace_secs {
        path.push_str(&format!("&grace_secs={g}"));
    }
    let credentials = match user {
        Some(u) => {
            let password = std::env::var("WHARF_PASSWORD").unwrap_or_default();
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{password}"));
            format!("Authorization: Basic {token}\r\n")
        }
        None => String::new(),
    };
    let response = match plain_http(host, "POST", &path, &credentials) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wharf gc: cannot reach {host}: {e}");
            return ExitCode::from(2);
        }
    };
    let ok = response.starts_with("HTTP/1.1 200");
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
    match serde_json::from_str::<wharf::gc::GcReport>(body) {
        Ok(report) if ok => {
            print_gc(&report, json);
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "wharf gc: {host}: {}: {body}",
                response.lines().next().unwrap_or("")
            );
            ExitCode::FAILURE
        }
    }
}

fn serve(cfg: Config) -> ExitCode {
    raise_fd_limit();
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    rt.block_on(async move {
        let mut server = match Server::start(cfg).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("wharf: {e}");
                return ExitCode::FAILURE;
            }
        };
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = server.stopped() => return ExitCode::FAILURE,
        }
        server.shutdown().await;
        ExitCode::SUCCESS
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("signal received");
}

/// Each connection holds a socket, so the soft descriptor limit (often 1024)
/// would cap concurrent clients: raise it to the hard limit.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The async runtime. Disk work (appends, syncs, renames) runs on its
/// blocking pool; past a few dozen threads more only add stacks and
/// allocator heaps, so hundreds of uploads syncing at once queue instead.
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(32)
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("wharf: cannot start the runtime: {e}");
            None
        }
    }
}
