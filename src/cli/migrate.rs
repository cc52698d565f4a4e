//! `wharf migrate`: applies the metadata schema migrations a PostgreSQL
//! database lacks (nodes also do this at start, under the same lock).

use crate::config::{Config, MetadataBackend};
use std::process::ExitCode;

pub fn run(cfg: &Config) -> ExitCode {
    if let Err(e) = crate::app::check::compile(cfg) {
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
    // Logging in first says why a database refuses (a missing role, a
    // wrong password) in PostgreSQL's words, at once.
    if let Err(e) = crate::meta::PostgresBackend::inspect(url, timeout) {
        eprintln!("wharf migrate: {e}");
        return ExitCode::FAILURE;
    }
    // `connect` migrates; the version tells the operator where it stands.
    match crate::meta::PostgresBackend::connect(url, 1, timeout).and_then(|b| b.schema_version()) {
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
