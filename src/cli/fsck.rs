//! `wharf fsck`: the configured storage's check, one report either way.

use super::count;
use crate::config::Config;
use crate::fsck::FsckReport;
use crate::storage::check::CheckOptions;
use std::process::ExitCode;

pub fn run(cfg: &Config, opts: CheckOptions, json: bool) -> ExitCode {
    if let Err(e) = crate::app::check::compile(cfg) {
        eprintln!("wharf fsck: {e}");
        return ExitCode::from(2);
    }
    let Some(rt) = super::runtime() else {
        return ExitCode::FAILURE;
    };
    let bar = crate::terminal::Bar::new("blobs");
    match rt.block_on(crate::storage::check::check(cfg, opts, &bar)) {
        Ok(r) => report(&r, opts.repair, json),
        Err(e) => {
            eprintln!("wharf fsck: {e}");
            ExitCode::from(2)
        }
    }
}

fn report(r: &FsckReport, repair: bool, json: bool) -> ExitCode {
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
    let found = [
        (r.problems.len(), "problem"),
        (r.leftovers.len(), "leftover"),
        (r.orphans.len(), "orphan"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| count(*n, what))
    .collect::<Vec<_>>();
    println!(
        "fsck: {} checked ({}), {}{}",
        count(r.blobs_checked, "blob"),
        crate::terminal::human_bytes(r.bytes_checked),
        match found.is_empty() {
            true => "no problems".to_owned(),
            false => found.join(", "),
        },
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
