//! Robot accounts: the user names `robot$NAME`, their secrets and grants,
//! as the authenticator checks them on every request.
//!
//! Owns: the secret's format (`wharf_` + 256 random bits, hex) and its
//! check (SHA-256, compared in constant time: a random secret needs no
//! slow hash, so a CI burst costs no bcrypt per request), expiry, the
//! table of accounts the `app` layer refreshes from the metadata store
//! every few seconds, and the name grammar.
//! Must not: read the database (it is handed the accounts), keep or log
//! a secret.

use super::access::Action;
use super::pattern::RepoPattern;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// What makes a user name a robot's.
pub const PREFIX: &str = "robot$";

/// One account as the authenticator needs it.
#[derive(Debug, Clone)]
pub struct RobotAccount {
    pub name: String,
    /// `robot$NAME`.
    pub user: String,
    secret_sha256: [u8; 32],
    grants: Vec<(RepoPattern, Vec<Action>)>,
    /// Unix seconds.
    pub expires_at: Option<u64>,
}

impl RobotAccount {
    /// From its stored parts; `None` when the hash is not 32 hex bytes
    /// (such a record can never log in).
    pub fn new(
        name: &str,
        secret_sha256_hex: &str,
        repositories: &[String],
        actions: &[String],
        expires_at: Option<u64>,
    ) -> Option<RobotAccount> {
        let mut secret_sha256 = [0u8; 32];
        hex::decode_to_slice(secret_sha256_hex, &mut secret_sha256).ok()?;
        let actions: Vec<Action> = actions.iter().filter_map(|a| Action::parse(a)).collect();
        Some(RobotAccount {
            name: name.to_owned(),
            user: format!("{PREFIX}{name}"),
            secret_sha256,
            grants: repositories
                .iter()
                .map(|r| (RepoPattern::new(r), actions.clone()))
                .collect(),
            expires_at,
        })
    }

    pub fn grants(&self, name: &str, action: Action) -> bool {
        self.grants
            .iter()
            .any(|(p, actions)| actions.contains(&action) && p.matches(name))
    }

    fn expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
}

/// A new secret: `wharf_` and 64 hex digits of the system's randomness.
pub fn new_secret() -> Result<String, ring::error::Unspecified> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes)?;
    Ok(format!("wharf_{}", hex::encode(bytes)))
}

/// What is stored of a secret.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Whether `name` may name a robot: lower-case letters and digits, runs
/// joined by single `.`, `_` or `-`, at most 64 characters (it becomes
/// part of a user name, log lines and metric-free audit records).
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
        && !b
            .windows(2)
            .any(|w| b"._-".contains(&w[0]) && b"._-".contains(&w[1]))
}

/// Why a robot's login was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RobotRefusal {
    #[error("no robot account {0}")]
    Unknown(String),
    #[error("robot account {0} expired")]
    Expired(String),
    #[error("invalid username or password")]
    BadSecret,
}

/// The accounts, swapped whole on each refresh.
#[derive(Default)]
pub struct RobotTable {
    accounts: RwLock<Arc<HashMap<String, Arc<RobotAccount>>>>,
}

impl RobotTable {
    pub fn replace(&self, accounts: Vec<RobotAccount>) {
        let map = accounts
            .into_iter()
            .map(|a| (a.name.clone(), Arc::new(a)))
            .collect();
        match self.accounts.write() {
            Ok(mut g) => *g = Arc::new(map),
            Err(p) => *p.into_inner() = Arc::new(map),
        }
    }

    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn snapshot(&self) -> Arc<HashMap<String, Arc<RobotAccount>>> {
        match self.accounts.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Checks `robot$NAME`'s secret at `now` (unix seconds).
    pub fn login(
        &self,
        name: &str,
        secret: &str,
        now: u64,
    ) -> Result<Arc<RobotAccount>, RobotRefusal> {
        let accounts = self.snapshot();
        let Some(account) = accounts.get(name) else {
            return Err(RobotRefusal::Unknown(format!("{PREFIX}{name}")));
        };
        let presented: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        if !same_hash(&presented, &account.secret_sha256) {
            return Err(RobotRefusal::BadSecret);
        }
        if account.expired(now) {
            return Err(RobotRefusal::Expired(account.user.clone()));
        }
        Ok(account.clone())
    }
}

/// Equality in constant time: every byte is looked at whatever differs.
/// (What it compares are hashes, so even a leak would tell a guesser
/// nothing about the secret; this keeps it from leaking at all.)
fn same_hash(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(secret: &str, expires_at: Option<u64>) -> RobotAccount {
        RobotAccount::new(
            "ci",
            &secret_hash(secret),
            &["team-a/**".into()],
            &["pull".into(), "push".into()],
            expires_at,
        )
        .unwrap()
    }

    #[test]
    fn a_secret_logs_in_until_it_expires() {
        let secret = new_secret().unwrap();
        assert!(secret.starts_with("wharf_") && secret.len() == 6 + 64);
        let t = RobotTable::default();
        t.replace(vec![account(&secret, Some(100))]);
        let a = t.login("ci", &secret, 99).unwrap();
        assert_eq!(a.user, "robot$ci");
        assert!(a.grants("team-a/app", Action::Push));
        assert!(!a.grants("team-a/app", Action::Delete));
        assert!(!a.grants("team-b/app", Action::Pull));
        assert_eq!(
            t.login("ci", &secret, 100).unwrap_err(),
            RobotRefusal::Expired("robot$ci".into())
        );
        assert_eq!(
            t.login("ci", "wharf_00", 1).unwrap_err(),
            RobotRefusal::BadSecret
        );
        assert_eq!(
            t.login("other", &secret, 1).unwrap_err(),
            RobotRefusal::Unknown("robot$other".into())
        );
        t.replace(Vec::new());
        assert!(t.login("ci", &secret, 1).is_err());
    }

    #[test]
    fn two_secrets_differ_and_only_the_hash_is_kept() {
        let (a, b) = (new_secret().unwrap(), new_secret().unwrap());
        assert_ne!(a, b);
        assert_eq!(secret_hash(&a).len(), 64);
        assert!(!secret_hash(&a).contains(&a[6..]));
        assert!(RobotAccount::new("x", "not hex", &[], &[], None).is_none());
    }

    #[test]
    fn names_are_lower_case_words() {
        for ok in ["ci", "build-farm", "team.a_ci-2", "a"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "CI",
            "-ci",
            "ci-",
            "a--b",
            "a/b",
            "a$b",
            &"x".repeat(65),
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
