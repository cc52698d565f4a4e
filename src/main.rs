//! The `wharf` command: flags and config file, logging, signals.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use wharf::cli::{self, load_config};
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
        /// IP:PORT to listen on; else the configuration's `addr`
        /// (127.0.0.1:5000 if it has none).
        #[arg(long, value_parser = listen_addr)]
        addr: Option<SocketAddr>,
        /// Data folder; else the configuration's `root` (./wharf-data if
        /// it has none). Its parent must exist: only the folder itself is
        /// created.
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// Collect garbage: on a running server (--url) or on a stopped one's
    /// data folder. Prints what was (or, with --dry-run, would be) freed.
    Gc {
        /// The server's configuration (its root, or its bucket and
        /// database in object-store mode): collect offline, on a stopped
        /// server's data folder, or beside running object-store nodes.
        #[arg(long, env = "WHARF_CONFIG")]
        config: Option<PathBuf>,
        /// A stopped server's data folder (instead of the configuration's
        /// `root`).
        #[arg(long)]
        root: Option<PathBuf>,
        /// A running Wharf, host:port: collect online, through it.
        #[arg(long)]
        url: Option<String>,
        /// With --url on a registry with authentication: an admin user
        /// (`auth.admins`); the password is read from WHARF_PASSWORD.
        #[arg(long)]
        user: Option<String>,
        /// Report what would be freed; delete nothing.
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
        /// The configuration naming the database (`metadata.url`).
        #[arg(long, env = "WHARF_CONFIG")]
        config: PathBuf,
    },
    /// Apply the retention policies now on a running server (`POST
    /// /_wharf/retention`), or with --dry-run only say what they would
    /// delete, and why. Prints each decision, then a summary.
    Retention {
        /// A running Wharf, host:port.
        #[arg(long)]
        url: String,
        /// On a registry with authentication: an admin user
        /// (`auth.admins`); the password is read from WHARF_PASSWORD.
        #[arg(long)]
        user: Option<String>,
        /// Report only, whatever the policies say.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 when the server is ready (`/readyz` answers 200): for a
    /// container's HEALTHCHECK, where there is no curl.
    Healthcheck {
        /// The server's configuration, for its addresses.
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
        /// The server's configuration: its data folder, or in object-store
        /// mode its bucket and database.
        #[arg(long, env = "WHARF_CONFIG")]
        config: Option<PathBuf>,
        /// A data folder to check (instead of the configuration's `root`).
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
    /// Robot accounts on a running server (`/_wharf/robots`): CI
    /// identities with a secret, limited to repositories and actions.
    Robot {
        #[command(subcommand)]
        action: RobotAction,
        /// A running Wharf, host:port.
        #[arg(long, global = true)]
        url: Option<String>,
        /// An admin user (`auth.admins`); the password is read from
        /// WHARF_PASSWORD or the file WHARF_PASSWORD_FILE names.
        #[arg(long, global = true)]
        user: Option<String>,
        /// Print the server's JSON answer, for scripts.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Read a running server's audit log (`GET /_wharf/audit`): changes
    /// and refusals, newest first.
    Audit {
        /// A running Wharf, host:port.
        #[arg(long)]
        url: String,
        /// An admin user (`auth.admins`); the password is read from
        /// WHARF_PASSWORD or the file WHARF_PASSWORD_FILE names.
        #[arg(long)]
        user: Option<String>,
        /// From this UTC date or time (2026-12-05, 2026-12-05T15:20:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Up to this UTC date (the whole day) or time.
        #[arg(long)]
        until: Option<String>,
        /// Only this repository's records.
        #[arg(long)]
        repository: Option<String>,
        /// Only this user's (robot$NAME, an OIDC user, wharf for its own runs).
        #[arg(long)]
        actor: Option<String>,
        /// At most this many records.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print the server's JSON answer, for scripts.
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
enum RobotAction {
    /// Create one; prints its secret, once.
    Create {
        /// Its name: the user name is robot$NAME.
        name: String,
        /// A repository glob it may act on (repeat for more):
        /// `team-a/**`, `ci/*/cache`.
        #[arg(long = "repository", required = true)]
        repositories: Vec<String>,
        /// What it may do there (repeat): pull, push, delete.
        #[arg(long = "action", required = true)]
        actions: Vec<String>,
        /// Days until it stops working; without it, it never expires.
        #[arg(long)]
        expires_in_days: Option<f64>,
    },
    /// List them (never a secret).
    List,
    /// Delete one: it stops working on every node within seconds.
    Delete {
        /// robot$NAME or NAME.
        name: String,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate the file, the WHARF_* environment and every file they
    /// name (htpasswd, token key, TLS pair, CA bundle, secrets); print the
    /// effective configuration with secrets redacted. Exits 1 on a
    /// problem, 2 when the configuration cannot be read at all.
    Check {
        /// The file to check, with the WHARF_* environment over it.
        #[arg(long, env = "WHARF_CONFIG")]
        config: Option<PathBuf>,
        /// Also log in to what it names: PostgreSQL (and where its schema
        /// stands) and the bucket. Reads only.
        #[arg(long)]
        connect: bool,
    },
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
            let mut cfg = match load_config(config.as_deref()) {
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
            let mut cfg = match load_config(config.as_deref()) {
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
                Some(u) => cli::gc::online(&u, user.as_deref(), dry_run, grace_secs, json),
                None => cli::gc::offline(cfg, dry_run, json),
            }
        }
        Command::Migrate { config } => {
            let cfg = match load_config(Some(&config)) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(&cfg.log);
            cli::migrate::run(&cfg)
        }
        Command::Retention {
            url,
            user,
            dry_run,
            json,
        } => cli::retention::run(&url, user.as_deref(), dry_run, json),
        Command::Robot {
            action,
            url,
            user,
            json,
        } => {
            let Some(url) = url else {
                eprintln!("wharf robot: --url HOST:PORT is required (the running server)");
                return ExitCode::from(2);
            };
            let command = match &action {
                RobotAction::Create {
                    name,
                    repositories,
                    actions,
                    expires_in_days,
                } => cli::robot::RobotCommand::Create {
                    name,
                    repositories,
                    actions,
                    expires_in_days: *expires_in_days,
                },
                RobotAction::List => cli::robot::RobotCommand::List,
                RobotAction::Delete { name } => cli::robot::RobotCommand::Delete { name },
            };
            cli::robot::run(&url, user.as_deref(), command, json)
        }
        Command::Audit {
            url,
            user,
            since,
            until,
            repository,
            actor,
            limit,
            json,
        } => {
            let filters = cli::audit::AuditFilters {
                since: since.as_deref(),
                until: until.as_deref(),
                repository: repository.as_deref(),
                actor: actor.as_deref(),
                limit,
            };
            cli::audit::run(&url, user.as_deref(), &filters, json)
        }
        Command::Config {
            action: ConfigAction::Check { config, connect },
        } => cli::check::run(config.as_deref(), connect),
        Command::Healthcheck { config, url } => match load_config(config.as_deref()) {
            Ok(cfg) => cli::healthcheck::run(&cfg, url.as_deref()),
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
                Some(path) => match load_config(Some(&path)) {
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
            cli::fsck::run(&cfg, CheckOptions { repair, deep }, json)
        }
    }
}

fn serve(cfg: Config) -> ExitCode {
    raise_fd_limit();
    let Some(rt) = cli::runtime() else {
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

/// `--addr`'s parser: an IP and a port, said plainly when it is not.
fn listen_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| wharf::config::listen_addr_error(s))
}
