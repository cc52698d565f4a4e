//! `wharf robot create|list|delete`: robot accounts on a running server
//! (`/_wharf/robots`), as an admin whose password comes from
//! `WHARF_PASSWORD` or `WHARF_PASSWORD_FILE`, never from a flag.

use super::admin;
use std::process::ExitCode;

/// What to do.
pub enum RobotCommand<'a> {
    Create {
        name: &'a str,
        repositories: &'a [String],
        actions: &'a [String],
        expires_in_days: Option<f64>,
    },
    List,
    Delete {
        name: &'a str,
    },
}

pub fn run(url: &str, user: Option<&str>, command: RobotCommand, json: bool) -> ExitCode {
    let host = admin::host_of(url);
    let answer = match &command {
        RobotCommand::Create {
            name,
            repositories,
            actions,
            expires_in_days,
        } => {
            let body = serde_json::json!({
                "name": name.strip_prefix(crate::auth::robot::PREFIX).unwrap_or(name),
                "repositories": repositories,
                "actions": actions,
                "expires_in_days": expires_in_days,
            })
            .to_string();
            admin::send(host, "POST", "/_wharf/robots", user, Some(&body))
        }
        RobotCommand::List => admin::call(host, "GET", "/_wharf/robots", user),
        RobotCommand::Delete { name } => {
            admin::call(host, "DELETE", &format!("/_wharf/robots/{name}"), user)
        }
    };
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            eprintln!("wharf robot: cannot reach {host}: {e}");
            return ExitCode::from(2);
        }
    };
    if !answer.ok {
        eprintln!("wharf robot: {host}: {}: {}", answer.status, answer.body);
        return ExitCode::FAILURE;
    }
    if json {
        println!("{}", answer.body.trim_end());
        return ExitCode::SUCCESS;
    }
    let v: serde_json::Value = serde_json::from_str(&answer.body).unwrap_or_default();
    match command {
        RobotCommand::Create { .. } => {
            println!("{}", describe(&v));
            println!(
                "secret (shown once; log in with the name above and this as the password):\n{}",
                v["secret"].as_str().unwrap_or("")
            );
        }
        RobotCommand::List => {
            let list = v["robots"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no robot accounts");
            }
            for r in &list {
                println!("{}", describe(r));
            }
        }
        RobotCommand::Delete { name } => println!("deleted {name}"),
    }
    ExitCode::SUCCESS
}

/// `robot$ci: pull,push on team-a/**, expires 2027-01-01 00:00 UTC`.
fn describe(r: &serde_json::Value) -> String {
    let join = |k: &str| {
        r[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    let expires = match r["expires_at"].as_u64() {
        Some(t) => format!("expires {}", crate::calendar::utc_minute(t)),
        None => "never expires".into(),
    };
    format!(
        "{}: {} on {}, {expires}",
        r["name"].as_str().unwrap_or("?"),
        join("actions"),
        join("repositories")
    )
}
