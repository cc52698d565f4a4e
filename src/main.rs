//! The `wharf` command: flags and config file, logging, signals.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
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
        /// TOML file with any of the settings; flags win over it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on [default: 127.0.0.1:5000].
        #[arg(long)]
        addr: Option<SocketAddr>,
        /// Data folder [default: ./wharf-data].
        #[arg(long)]
        root: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WHARF_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, addr, root } => {
            let mut cfg = match config {
                Some(path) => match Config::from_file(&path) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("wharf: {e}");
                        return ExitCode::from(2);
                    }
                },
                None => Config::default(),
            };
            if let Some(a) = addr {
                cfg.addr = a;
            }
            if let Some(r) = root {
                cfg.root = r;
            }
            serve(cfg)
        }
    }
}

fn serve(cfg: Config) -> ExitCode {
    raise_fd_limit();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wharf: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
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
