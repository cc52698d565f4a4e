//! The htpasswd user table: parsing Apache's format (bcrypt entries only,
//! as `htpasswd -B` writes them) and checking a password against it.
//!
//! bcrypt is deliberately slow (milliseconds at `htpasswd -B`'s cost 5,
//! a quarter second at cost 12) and clients send Basic credentials on
//! every request, so successful checks are remembered by a SHA-256 of
//! user, password and stored hash: a changed password or reloaded file
//! misses the memory by construction. Failures are never remembered.

use dashmap::DashSet;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;

/// Remembered successes before the memory is emptied (bounds its size
/// against a client cycling through valid passwords, which it cannot do
/// without knowing them).
const REMEMBER_MAX: usize = 10_000;

#[derive(Debug)]
pub struct HtpasswdTable {
    users: HashMap<String, String>,
    remembered: DashSet<[u8; 32]>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    pub table_users: usize,
    /// Lines skipped: not `user:hash`, or a hash other than bcrypt.
    pub skipped: Vec<String>,
}

impl HtpasswdTable {
    /// Parses a file's text. Entries that are not bcrypt (MD5 `$apr1$`,
    /// SHA1 `{SHA}`, crypt) are skipped and named in `Parsed::skipped`.
    pub fn parse(text: &str) -> (HtpasswdTable, Parsed) {
        let mut users = HashMap::new();
        let mut skipped = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_once(':') {
                Some((user, hash))
                    if !user.is_empty()
                        && ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) =>
                {
                    users.insert(user.to_owned(), hash.to_owned());
                }
                Some((user, _)) => skipped.push(user.to_owned()),
                None => skipped.push("(line without ':')".to_owned()),
            }
        }
        let parsed = Parsed {
            table_users: users.len(),
            skipped,
        };
        (
            HtpasswdTable {
                users,
                remembered: DashSet::new(),
            },
            parsed,
        )
    }

    /// Whether `password` is `user`'s. Runs bcrypt: call it off the async
    /// workers unless `remembered` said yes.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let Some(hash) = self.users.get(user) else {
            // Same work for unknown users, so timing does not tell which
            // names exist.
            let _ = bcrypt::verify(password, DUMMY_HASH);
            return false;
        };
        let key = memory_key(user, password, hash);
        if self.remembered.contains(&key) {
            return true;
        }
        let ok = bcrypt::verify(password, hash).unwrap_or(false);
        if ok {
            if self.remembered.len() >= REMEMBER_MAX {
                self.remembered.clear();
            }
            self.remembered.insert(key);
        }
        ok
    }

    /// The cheap path: a success seen before for exactly these credentials.
    pub fn remembered(&self, user: &str, password: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|hash| self.remembered.contains(&memory_key(user, password, hash)))
    }
}

/// bcrypt of a random string at cost 5: what an unknown user is checked against.
const DUMMY_HASH: &str = "$2y$05$SvGCIFO0MbRrd5Hh7O6B6ugmGoRacz./QK4jojYaN9e46GJvMXb9e";

fn memory_key(user: &str, password: &str, hash: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [user, password, hash] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bcrypt_and_skips_the_rest() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let text =
            format!("# comment\nalice:{hash}\nbob:$apr1$abc$def\n\ncarol:{{SHA}}xyz\nnocolon\n");
        let (t, p) = HtpasswdTable::parse(&text);
        assert_eq!(p.table_users, 1);
        assert_eq!(p.skipped, vec!["bob", "carol", "(line without ':')"]);
        assert!(t.verify("alice", "s3cret"));
        assert!(t.remembered("alice", "s3cret"));
        assert!(!t.verify("alice", "wrong"));
        assert!(!t.verify("bob", "s3cret"));
        assert!(!t.verify("nobody", "s3cret"));
    }

    #[test]
    fn accepts_htpasswd_dash_b_format() {
        // Written by `htpasswd -nbB user pass` (apache2-utils, cost 5).
        let (t, _) = HtpasswdTable::parse(
            "user:$2y$05$foAR88h3QagOZgX1pzsYrO1hGQ/rMZS8tHqDmN9OTscMKOvpowYH6\n",
        );
        assert!(t.verify("user", "pass"));
        assert!(!t.verify("user", "Pass"));
    }

    #[test]
    fn dummy_hash_is_a_valid_bcrypt() {
        assert!(bcrypt::verify("x", DUMMY_HASH).is_ok());
    }
}
