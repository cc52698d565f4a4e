//! Robot accounts as the application manages them: created with a secret
//! shown once, listed without it, deleted; and the authenticator's table
//! of them kept in step with the metadata store (every node reads the
//! accounts every [`REFRESH_EVERY`], so a revocation or an expiry reaches
//! the whole cluster within that).
//!
//! Must not: parse HTTP (the `http` layer hands a [`NewRobot`]) or keep a
//! secret beyond the answer that shows it.

use super::App;
use crate::auth::robot::{self, RobotAccount};
use crate::meta::{MetaError, MetaWrite, RobotRecord};
use std::time::Duration;

/// How often each node re-reads the accounts: revocation within 5 s.
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);

/// The longest life a robot may be given.
const MAX_DAYS: f64 = 3650.0;

/// What an admin asks for.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRobot {
    pub name: String,
    pub repositories: Vec<String>,
    pub actions: Vec<String>,
    /// Days until it stops working (fractions allowed); absent or null:
    /// it never expires.
    #[serde(default)]
    pub expires_in_days: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum RobotError {
    #[error("{0}")]
    Invalid(String),
    #[error("robot account robot${0} exists")]
    Exists(String),
    #[error("no robot account robot${0}")]
    Unknown(String),
    #[error("robot accounts need authentication on ([auth] htpasswd, token or oidc)")]
    AuthOff,
    #[error("cannot make a secret: the system's randomness failed")]
    Random,
    #[error(transparent)]
    Meta(#[from] MetaError),
}

impl NewRobot {
    /// The stored record for this request made at `now` by `by`, with the
    /// hash of `secret`.
    fn record(&self, secret: &str, now: u64, by: &str) -> Result<RobotRecord, RobotError> {
        if !robot::valid_name(&self.name) {
            return Err(RobotError::Invalid(format!(
                "robot name {:?}: lower-case letters and digits, joined by single '.', '_' or '-', at most 64",
                self.name
            )));
        }
        if self.repositories.is_empty() {
            return Err(RobotError::Invalid(
                "repositories: name at least one repository glob (\"team-a/**\")".into(),
            ));
        }
        for r in &self.repositories {
            if r.is_empty() || r.len() > 255 || r.chars().any(|c| c.is_whitespace()) {
                return Err(RobotError::Invalid(format!(
                    "repositories: {r:?} is not a repository glob"
                )));
            }
        }
        if self.actions.is_empty() {
            return Err(RobotError::Invalid(
                "actions: name at least one of pull, push, delete".into(),
            ));
        }
        if let Some(a) = self
            .actions
            .iter()
            .find(|a| crate::auth::Action::parse(a).is_none())
        {
            return Err(RobotError::Invalid(format!(
                "actions: {a:?} is not one of pull, push, delete"
            )));
        }
        let expires_at = match self.expires_in_days {
            None => None,
            Some(d) if d > 0.0 && d <= MAX_DAYS => Some(now + (d * 86_400.0).ceil() as u64),
            Some(d) => {
                return Err(RobotError::Invalid(format!(
                    "expires_in_days: {d} is not between 0 and {MAX_DAYS}"
                )))
            }
        };
        Ok(RobotRecord {
            name: self.name.clone(),
            secret_sha256: robot::secret_hash(secret),
            repositories: self.repositories.clone(),
            actions: self.actions.clone(),
            created: now,
            expires_at,
            created_by: by.to_owned(),
        })
    }
}

/// Creates the account; answers its record and its secret (the only time
/// the secret exists outside the client).
pub async fn create(
    app: &App,
    new: &NewRobot,
    by: &str,
    addr: &str,
) -> Result<(RobotRecord, String), RobotError> {
    if app.auth.is_none() {
        return Err(RobotError::AuthOff);
    }
    let secret = robot::new_secret().map_err(|_| RobotError::Random)?;
    let record = new.record(&secret, crate::calendar::unix_now(), by)?;
    let what = format!("{}{}", robot::PREFIX, record.name);
    let expires = match record.expires_at {
        Some(t) => format!("expires {}", crate::calendar::utc_minute(t)),
        None => "never expires".into(),
    };
    let result = format!(
        "ok: {} on {}, {expires}",
        record.actions.join(","),
        record.repositories.join(",")
    );
    let mut audit = super::audit::record(by, "create_robot", "", &what, &result);
    audit.addr = addr.to_owned();
    let ops = vec![
        MetaWrite::PutRobot {
            record: record.clone(),
        },
        MetaWrite::Audit { record: audit },
    ];
    match app.meta.write(ops).await {
        Err(MetaError::Conflict(_)) => return Err(RobotError::Exists(new.name.clone())),
        r => r?,
    }
    refresh(app).await?;
    Ok((record, secret))
}

pub async fn delete(app: &App, name: &str, by: &str, addr: &str) -> Result<(), RobotError> {
    let name = name.strip_prefix(robot::PREFIX).unwrap_or(name).to_owned();
    let what = format!("{}{name}", robot::PREFIX);
    let mut audit = super::audit::record(by, "delete_robot", "", &what, "ok");
    audit.addr = addr.to_owned();
    let ops = vec![
        MetaWrite::DeleteRobot { name: name.clone() },
        MetaWrite::Audit { record: audit },
    ];
    match app.meta.write(ops).await {
        Err(MetaError::Conflict(_)) => return Err(RobotError::Unknown(name)),
        r => r?,
    }
    refresh(app).await?;
    Ok(())
}

pub async fn list(app: &App) -> Result<Vec<RobotRecord>, RobotError> {
    Ok(app.meta.query(|m| m.robots()).await?)
}

/// Shortest time between two refreshes that a login of an unknown robot
/// triggers, so a client guessing names costs one read per interval.
const MISS_REFRESH_EVERY_MS: u64 = 500;

/// After a login named a robot this node does not know: refreshes the
/// accounts unless that was done within [`MISS_REFRESH_EVERY_MS`];
/// whether it did.
pub async fn refresh_after_miss(app: &App) -> bool {
    use std::sync::atomic::Ordering;
    let now = crate::calendar::unix_millis();
    let last = app.robots_read_at.load(Ordering::Acquire);
    if now.saturating_sub(last) < MISS_REFRESH_EVERY_MS
        || app
            .robots_read_at
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
    {
        return false;
    }
    refresh(app).await.is_ok()
}

/// Reads the accounts and hands them to the authenticator.
pub async fn refresh(app: &App) -> Result<(), MetaError> {
    let Some(auth) = &app.auth else {
        return Ok(());
    };
    let records = app.meta.query(|m| m.robots()).await?;
    let accounts = records
        .iter()
        .filter_map(|r| {
            let a = RobotAccount::new(
                &r.name,
                &r.secret_sha256,
                &r.repositories,
                &r.actions,
                r.expires_at,
            );
            if a.is_none() {
                tracing::warn!(robot = %r.name, "robot account record unusable; it cannot log in");
            }
            a
        })
        .collect();
    auth.robots.replace(accounts);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(name: &str, actions: &[&str], days: Option<f64>) -> NewRobot {
        NewRobot {
            name: name.into(),
            repositories: vec!["team-a/**".into()],
            actions: actions.iter().map(|s| s.to_string()).collect(),
            expires_in_days: days,
        }
    }

    #[test]
    fn a_request_becomes_a_record_or_says_what_is_wrong() {
        let r = new("ci", &["pull", "push"], Some(1.0))
            .record("wharf_x", 1000, "admin")
            .unwrap();
        assert_eq!(r.expires_at, Some(1000 + 86_400));
        assert_eq!(r.secret_sha256, robot::secret_hash("wharf_x"));
        assert_eq!(r.created_by, "admin");
        let never = new("ci", &["pull"], None).record("s", 0, "a").unwrap();
        assert_eq!(never.expires_at, None);
        for (bad, why) in [
            (new("CI", &["pull"], None), "robot name"),
            (new("ci", &["pull", "admin"], None), "actions"),
            (new("ci", &[], None), "actions"),
            (new("ci", &["pull"], Some(0.0)), "expires_in_days"),
            (new("ci", &["pull"], Some(-1.0)), "expires_in_days"),
            (new("ci", &["pull"], Some(1e9)), "expires_in_days"),
        ] {
            let e = bad.record("s", 0, "a").unwrap_err().to_string();
            assert!(e.starts_with(why), "{e}");
        }
        let mut no_repos = new("ci", &["pull"], None);
        no_repos.repositories.clear();
        assert!(no_repos.record("s", 0, "a").is_err());
    }
}
