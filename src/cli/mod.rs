//! The operator's commands other than `serve`: `gc`, `fsck`, `retention`,
//! `robot`, `audit`, `migrate`, `config check`, `healthcheck`. Owns what each prints (a
//! sentence for people, JSON with `--json`) and its exit code: 0 done,
//! 1 a problem found or refused, 2 the command could not run.
//! Must not: hold registry logic (collection, checks, policies live in
//! their own modules; these call them), or create anything on disk a
//! command does not need.

pub mod admin;
pub mod audit;
pub mod check;
pub mod fsck;
pub mod gc;
pub mod healthcheck;
pub mod migrate;
pub mod retention;
pub mod robot;

use crate::config::Config;
use std::path::Path;
use std::process::ExitCode;

/// The process's environment, as the configuration reads it (variables
/// that are not Unicode cannot be settings and are skipped).
pub fn environment() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
}

/// The configuration `file` and the environment give; exit 2 when it
/// cannot be read (the message names the key, line or variable).
pub fn load_config(file: Option<&Path>) -> Result<Config, ExitCode> {
    Config::load(file, environment()).map_err(|e| {
        eprintln!("wharf: {e}");
        ExitCode::from(2)
    })
}

/// The async runtime. Disk work (appends, syncs, renames) runs on its
/// blocking pool; past a few dozen threads more only add stacks and
/// allocator heaps, so hundreds of uploads syncing at once queue instead.
pub fn runtime() -> Option<tokio::runtime::Runtime> {
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

/// `n thing` or `n things`.
pub(crate) fn count(n: usize, thing: &str) -> String {
    match n {
        1 => format!("1 {thing}"),
        n => format!("{n} {thing}s"),
    }
}
