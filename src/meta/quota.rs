//! `[[quota]]` compiled for the rules: which quotas cover a repository,
//! and their limits. A quota is named by its repository pattern.
//!
//! Usage itself lives in the database (`quota_usage`, `quota_refs`), kept
//! by `rules` in the transaction of every change that adds or removes a
//! blob link or a manifest, so it is exact under any concurrency.
//! Must not: count anything itself or read the database.

use crate::auth::pattern::RepoPattern;
use crate::config::QuotaConfig;

#[derive(Debug, Clone)]
pub struct Quota {
    /// The `repositories` pattern, as configured.
    pub name: String,
    pattern: RepoPattern,
    pub limit: u64,
}

/// Every configured quota; empty when none is.
#[derive(Debug, Clone, Default)]
pub struct Quotas {
    list: Vec<Quota>,
}

impl Quotas {
    pub fn new(cfg: &[QuotaConfig]) -> Quotas {
        Quotas {
            list: cfg
                .iter()
                .map(|q| Quota {
                    name: q.repositories.clone(),
                    pattern: RepoPattern::new(&q.repositories),
                    limit: q.max_bytes.0,
                })
                .collect(),
        }
    }

    /// What start-up refuses: two quotas with one pattern (which limit
    /// would hold?).
    pub fn check(cfg: &[QuotaConfig]) -> Result<(), String> {
        for (i, q) in cfg.iter().enumerate() {
            if q.repositories.trim().is_empty() {
                return Err("quota: repositories must name a pattern (\"team-a/**\")".into());
            }
            if cfg[..i].iter().any(|o| o.repositories == q.repositories) {
                return Err(format!(
                    "quota: repositories {:?} is given twice; one limit per pattern",
                    q.repositories
                ));
            }
        }
        Ok(())
    }

    pub fn all(&self) -> &[Quota] {
        &self.list
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The quotas whose pattern matches `repo`.
    pub fn covering<'a>(&'a self, repo: &'a str) -> impl Iterator<Item = &'a Quota> + 'a {
        self.list.iter().filter(move |q| q.pattern.matches(repo))
    }

    pub fn get(&self, name: &str) -> Option<&Quota> {
        self.list.iter().find(|q| q.name == name)
    }
}

/// The words of a refusal: the quota, its limit, its usage and what the
/// write would add.
pub fn refusal(quota: &Quota, used: u64, adds: u64) -> String {
    use crate::terminal::human_bytes;
    format!(
        "quota {} is full: {} of its {} are used and this write adds {}",
        quota.name,
        human_bytes(used),
        human_bytes(quota.limit),
        human_bytes(adds)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ByteCount;

    fn q(p: &str, n: u64) -> QuotaConfig {
        QuotaConfig {
            repositories: p.into(),
            max_bytes: ByteCount(n),
        }
    }

    #[test]
    fn quotas_cover_the_repositories_of_their_pattern() {
        let qs = Quotas::new(&[q("team-a/**", 10), q("**", 100)]);
        let names = |r| qs.covering(r).map(|q| q.name.clone()).collect::<Vec<_>>();
        assert_eq!(names("team-a/app"), ["team-a/**", "**"]);
        assert_eq!(names("team-b/app"), ["**"]);
        assert!(Quotas::check(&[q("a/**", 1), q("a/**", 2)]).is_err());
        assert!(Quotas::check(&[q(" ", 1)]).is_err());
        assert!(Quotas::check(&[q("a/**", 1), q("b/**", 2)]).is_ok());
        let why = refusal(qs.get("team-a/**").unwrap(), 9, 4);
        assert!(why.starts_with("quota team-a/** is full"), "{why}");
    }
}
