//! `wharf retention`: asks a running server to apply its retention
//! policies (`POST /_wharf/retention`), or with `--dry-run` only to say
//! what they would delete. Online only: the decisions need the server's
//! pull times.

use super::admin;
use crate::retention::RetentionReport;
use std::process::ExitCode;

pub fn run(url: &str, user: Option<&str>, dry_run: bool, json: bool) -> ExitCode {
    let host = admin::host_of(url);
    let path = format!("/_wharf/retention?dry_run={dry_run}");
    let answer = match admin::call(host, "POST", &path, user) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("wharf retention: cannot reach {host}: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match serde_json::from_str::<RetentionReport>(&answer.body) {
        Ok(r) if answer.ok => r,
        _ => {
            eprintln!(
                "wharf retention: {host}: {}: {}",
                answer.status, answer.body
            );
            return ExitCode::FAILURE;
        }
    };
    match json {
        true => println!("{}", serde_json::to_string(&report).unwrap_or_default()),
        false => print!("{}", human(&report)),
    }
    ExitCode::SUCCESS
}

/// One line per decision, then the summary the server logged.
fn human(r: &RetentionReport) -> String {
    let mut out = String::new();
    for (word, list) in [
        ("DELETED", &r.tags_deleted),
        ("WOULD DELETE", &r.tags_would_delete),
    ] {
        for d in list {
            out.push_str(&format!(
                "{word} {}:{} ({})\n",
                d.repository, d.tag, d.reason
            ));
        }
    }
    let manifests = [
        ("DELETED", &r.manifests_deleted),
        ("WOULD DELETE", &r.manifests_would_delete),
    ];
    for (word, list) in manifests {
        for d in list {
            out.push_str(&format!(
                "{word} {}@{} ({})\n",
                d.repository, d.digest, d.reason
            ));
        }
    }
    for s in &r.skipped {
        out.push_str(&format!("SKIPPED {s}\n"));
    }
    out.push_str(&format!("wharf retention: {r}\n"));
    out
}
