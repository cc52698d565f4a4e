//! `wharf audit`: reads a running server's audit log (`GET
//! /_wharf/audit`), newest first, as an admin whose password comes from
//! `WHARF_PASSWORD` or `WHARF_PASSWORD_FILE`.

use super::admin;
use std::process::ExitCode;

/// The filters, as typed.
pub struct AuditFilters<'a> {
    pub since: Option<&'a str>,
    pub until: Option<&'a str>,
    pub repository: Option<&'a str>,
    pub actor: Option<&'a str>,
    pub limit: usize,
}

pub fn run(url: &str, user: Option<&str>, f: &AuditFilters, json: bool) -> ExitCode {
    let host = admin::host_of(url);
    let mut path = format!("/_wharf/audit?limit={}", f.limit);
    for (k, v) in [
        ("since", f.since),
        ("until", f.until),
        ("repository", f.repository),
        ("actor", f.actor),
    ] {
        if let Some(v) = v {
            path.push_str(&format!("&{k}={}", crate::http::query::encode(v)));
        }
    }
    let answer = match admin::call(host, "GET", &path, user) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("wharf audit: cannot reach {host}: {e}");
            return ExitCode::from(2);
        }
    };
    if !answer.ok {
        eprintln!("wharf audit: {host}: {}: {}", answer.status, answer.body);
        return ExitCode::FAILURE;
    }
    if json {
        println!("{}", answer.body.trim_end());
        return ExitCode::SUCCESS;
    }
    let v: serde_json::Value = serde_json::from_str(&answer.body).unwrap_or_default();
    let records = v["records"].as_array().cloned().unwrap_or_default();
    if records.is_empty() {
        println!("no audit records");
    }
    for r in &records {
        println!("{}", line(r));
    }
    if v["next"].is_string() {
        println!("(more: narrow with --since/--until or raise --limit)");
    }
    ExitCode::SUCCESS
}

/// `2026-12-05T15:20:01Z robot$ci push_manifest ci/app:v1 ok (10.0.0.7)`.
fn line(r: &serde_json::Value) -> String {
    let s = |k: &str| r[k].as_str().unwrap_or("");
    let time = s("time");
    let time = match (time.get(..19), time.ends_with('Z')) {
        (Some(t), true) => format!("{t}Z"),
        _ => time.to_owned(),
    };
    let target = match (s("repository"), s("reference")) {
        ("", x) | (x, "") => x.to_owned(),
        (repo, reference) => format!("{repo} {reference}"),
    };
    let mut out = format!(
        "{time} {} {} {target} {}",
        s("actor"),
        s("action"),
        s("result")
    );
    if !s("identity").is_empty() {
        out.push_str(&format!(" [{}]", s("identity")));
    }
    if !s("client").is_empty() {
        out.push_str(&format!(" ({})", s("client")));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_record_reads_as_one_line() {
        let r = serde_json::json!({"time": "2026-12-05T15:20:01.123000000Z", "actor": "robot$ci",
            "action": "push_manifest", "repository": "ci/app", "reference": "v1", "result": "ok",
            "client": "10.0.0.7", "identity": ""});
        assert_eq!(
            super::line(&r),
            "2026-12-05T15:20:01Z robot$ci push_manifest ci/app v1 ok (10.0.0.7)"
        );
    }
}
