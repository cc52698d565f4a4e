//! `wharf gc`: on a running server (`--url`, through `POST /_wharf/gc`) or
//! on a stopped one's storage.

use super::admin;
use crate::config::Config;
use crate::gc::GcReport;
use std::process::ExitCode;

/// A collection's report: a sentence for people, or JSON with `--json`.
fn print(report: &GcReport, json: bool) {
    match json {
        true => println!("{}", serde_json::to_string(report).unwrap_or_default()),
        false => println!("wharf gc: {report}"),
    }
}

/// Asks a running server to collect.
pub fn online(
    url: &str,
    user: Option<&str>,
    dry_run: bool,
    grace_secs: Option<u64>,
    json: bool,
) -> ExitCode {
    let host = admin::host_of(url);
    let mut path = format!("/_wharf/gc?dry_run={dry_run}");
    if let Some(g) = grace_secs {
        path.push_str(&format!("&grace_secs={g}"));
    }
    let answer = match admin::call(host, "POST", &path, user) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("wharf gc: cannot reach {host}: {e}");
            return ExitCode::from(2);
        }
    };
    match serde_json::from_str::<GcReport>(&answer.body) {
        Ok(report) if answer.ok => {
            print(&report, json);
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("wharf gc: {host}: {}: {}", answer.status, answer.body);
            ExitCode::FAILURE
        }
    }
}

/// Collects on a stopped server's storage (the data folder, or the bucket
/// beside running nodes: every step is re-checked in the database).
pub fn offline(mut cfg: Config, dry_run: bool, json: bool) -> ExitCode {
    // A command keeps no read cache: it would create the node's cache
    // folder for nothing.
    if let Some(s3) = cfg.storage.s3.as_mut() {
        s3.read_cache_mib = 0;
    }
    let Some(rt) = super::runtime() else {
        return ExitCode::FAILURE;
    };
    rt.block_on(async move {
        // Offline: nothing else writes, so no reserve is taken or given.
        let space = std::sync::Arc::new(crate::space::DiskSpace::unreserved(&cfg.root));
        let (meta, writer, pg) = match crate::meta::Meta::open_configured(&cfg, space.clone()).await
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
        let cache_metrics = match crate::metrics::ReadCacheMetrics::new() {
            Ok(m) => m,
            Err(e) => {
                eprintln!("wharf gc: {e}");
                return ExitCode::FAILURE;
            }
        };
        // Nothing is uploaded offline; the budget is only the type's.
        let budget = crate::upload::budget::MemoryBudget::new(1, std::time::Duration::ZERO);
        let opened =
            crate::storage::open_configured(&cfg, &meta, pg, space, cache_metrics, budget).await;
        let storage = match opened {
            Ok(s) => s,
            Err(e) => {
                eprintln!("wharf gc: {e}");
                return ExitCode::from(2);
            }
        };
        let result = crate::gc::collect(
            &meta,
            storage.as_ref(),
            &crate::gc::GcOptions::from_config(&cfg, dry_run),
        )
        .await;
        storage.stop().await;
        drop(storage);
        drop(meta);
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        match result {
            Ok(report) => {
                print(&report, json);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("wharf gc: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
