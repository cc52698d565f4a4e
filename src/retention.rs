//! Tag retention and immutable tags.
//!
//! Owns: compiling `[[retention]]` and `[[immutable]]`; `plan`, pure code
//! that turns tags, push times and pull times into decisions with reasons;
//! `run`, which applies a plan through conditional metadata writes.
//! Must not: delete blobs (garbage collection frees what retention leaves
//! unreferenced), touch an immutable tag, or delete a tag that moved since
//! the plan was made (`RetireTag` re-checks it in the transaction).
//!
//! A policy keeps a tag when any of its `keep_*` conditions holds. A
//! policy with no `keep_*` condition deletes no tag at all (a policy that
//! sets none is far more likely a mistake than a wish to empty the
//! repositories it names); it may still delete untagged manifests.

use crate::auth::pattern::RepoPattern;
use crate::calendar::unix_now;
use crate::config::{ConfigError, ImmutableConfig, RetentionConfig};
use crate::meta::{ManifestRecord, Meta, MetaError, MetaWrite};
use crate::oci::{Digest, RepoName};
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Clone)]
struct Retention {
    pattern: RepoPattern,
    keep_last: Option<usize>,
    keep_pulled_within_secs: Option<u64>,
    keep_tags: Vec<Regex>,
    untagged_after_secs: Option<u64>,
    dry_run: bool,
}

impl Retention {
    fn keeps_something(&self) -> bool {
        self.keep_last.is_some()
            || self.keep_pulled_within_secs.is_some()
            || !self.keep_tags.is_empty()
    }
}

#[derive(Clone)]
struct Immutable {
    pattern: RepoPattern,
    repositories: String,
    tags: Vec<(Regex, String)>,
}

/// Both kinds of rule, compiled.
#[derive(Clone)]
pub struct Policies {
    retention: Vec<Retention>,
    immutable: Vec<Immutable>,
}

fn compile(what: &str, pattern: &str) -> Result<Regex, ConfigError> {
    Regex::new(pattern).map_err(|e| ConfigError::Invalid(format!("{what}: {pattern:?}: {e}")))
}

impl Policies {
    pub fn new(
        retention: &[RetentionConfig],
        immutable: &[ImmutableConfig],
    ) -> Result<Policies, ConfigError> {
        let retention = retention
            .iter()
            .enumerate()
            .map(|(i, r)| {
                Ok(Retention {
                    pattern: RepoPattern::new(&r.repositories),
                    keep_last: r.keep_last,
                    keep_pulled_within_secs: r.keep_pulled_within_days.map(|d| d * 86_400),
                    keep_tags: r
                        .keep_tags
                        .iter()
                        .map(|t| compile(&format!("retention[{i}].keep_tags"), t))
                        .collect::<Result<_, _>>()?,
                    untagged_after_secs: r.delete_untagged_after_hours.map(|h| h * 3600),
                    dry_run: r.dry_run,
                })
            })
            .collect::<Result<_, ConfigError>>()?;
        let immutable = immutable
            .iter()
            .enumerate()
            .map(|(i, r)| {
                Ok(Immutable {
                    pattern: RepoPattern::new(&r.repositories),
                    repositories: r.repositories.clone(),
                    tags: r
                        .tags
                        .iter()
                        .map(|t| Ok((compile(&format!("immutable[{i}].tags"), t)?, t.clone())))
                        .collect::<Result<_, ConfigError>>()?,
                })
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(Policies {
            retention,
            immutable,
        })
    }

    pub fn has_retention(&self) -> bool {
        !self.retention.is_empty()
    }

    /// The immutable rule that covers `repo:tag`, described for an error.
    pub fn immutable_rule(&self, repo: &str, tag: &str) -> Option<String> {
        self.immutable
            .iter()
            .filter(|r| r.pattern.matches(repo))
            .find_map(|r| {
                r.tags
                    .iter()
                    .find(|(re, _)| re.is_match(tag))
                    .map(|(_, t)| {
                        format!(
                            "[[immutable]] repositories = {:?}, tags = {t:?}",
                            r.repositories
                        )
                    })
            })
    }

    fn retention_for(&self, repo: &str) -> Option<&Retention> {
        self.retention.iter().find(|r| r.pattern.matches(repo))
    }
}

/// What the metadata says, read once per run.
#[derive(Default)]
pub struct Snapshot {
    /// (repository, tag, digest)
    pub tags: Vec<(String, String, String)>,
    pub manifests: Vec<(String, String, ManifestRecord)>,
    /// (repository, digest, last pulled)
    pub pulls: Vec<(String, String, u64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TagDecision {
    pub repository: String,
    pub tag: String,
    pub digest: String,
    pub reason: String,
    /// Only reported: the policy or the request is a dry run.
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestDecision {
    pub repository: String,
    pub digest: String,
    pub reason: String,
    pub dry_run: bool,
    /// Pushed before this (unix s): re-checked when the delete commits.
    #[serde(skip)]
    pub cutoff: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RetentionReport {
    /// True when this run deleted nothing because it was asked as a dry
    /// run or every policy that decided something is one.
    pub dry_run: bool,
    /// Deleted by this run.
    pub tags_deleted: Vec<TagDecision>,
    pub manifests_deleted: Vec<ManifestDecision>,
    /// What a dry run (the request's or a policy's) would delete.
    pub tags_would_delete: Vec<TagDecision>,
    pub manifests_would_delete: Vec<ManifestDecision>,
    /// Tags under a policy that it keeps.
    pub tags_kept: usize,
    /// Decisions the database refused at commit (a tag moved meanwhile).
    pub skipped: Vec<String>,
}

fn days_ago(now: u64, at: u64) -> String {
    match now.saturating_sub(at) / 86_400 {
        0 => "today".into(),
        1 => "1 day ago".into(),
        n => format!("{n} days ago"),
    }
}

/// The decisions for `snap` at time `now`: pure, so every rule is tested
/// without a database.
pub fn plan(p: &Policies, snap: &Snapshot, now: u64, force_dry: bool) -> RetentionReport {
    let mut report = RetentionReport {
        dry_run: force_dry,
        ..Default::default()
    };
    let records: HashMap<(&str, &str), &ManifestRecord> = snap
        .manifests
        .iter()
        .map(|(r, d, rec)| ((r.as_str(), d.as_str()), rec))
        .collect();
    let pulls: HashMap<(&str, &str), u64> = snap
        .pulls
        .iter()
        .map(|(r, d, t)| ((r.as_str(), d.as_str()), *t))
        .collect();
    let mut by_repo: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    for (r, t, d) in &snap.tags {
        by_repo.entry(r).or_default().push((t, d));
    }
    let mut manifests_by_repo: BTreeMap<&str, Vec<(&str, &ManifestRecord)>> = BTreeMap::new();
    for (r, d, rec) in &snap.manifests {
        manifests_by_repo.entry(r).or_default().push((d, rec));
    }
    let repos: HashSet<&str> = by_repo
        .keys()
        .chain(manifests_by_repo.keys())
        .copied()
        .collect();
    let mut repos: Vec<&str> = repos.into_iter().collect();
    repos.sort();
    for repo in repos {
        let Some(rule) = p.retention_for(repo) else {
            continue;
        };
        let dry = force_dry || rule.dry_run;
        let pushed = |d: &str| records.get(&(repo, d)).map(|r| r.created).unwrap_or(0);
        let mut tags = by_repo.remove(repo).unwrap_or_default();
        // Newest first; equal times by name, so the order is stable.
        tags.sort_by(|a, b| pushed(b.1).cmp(&pushed(a.1)).then(b.0.cmp(a.0)));
        let mut tagged: HashSet<&str> = HashSet::new();
        for (rank, (tag, digest)) in tags.iter().enumerate() {
            let pulled = pulls.get(&(repo, *digest)).copied();
            let keep = !rule.keeps_something()
                || p.immutable_rule(repo, tag).is_some()
                || rule.keep_tags.iter().any(|re| re.is_match(tag))
                || rule.keep_last.is_some_and(|n| rank < n)
                || rule
                    .keep_pulled_within_secs
                    .is_some_and(|w| pulled.is_some_and(|at| now.saturating_sub(at) <= w));
            if keep {
                report.tags_kept += 1;
                tagged.insert(digest);
                continue;
            }
            let mut why = vec![format!("pushed {}", days_ago(now, pushed(digest)))];
            if let Some(n) = rule.keep_last {
                why.push(format!("not among the newest {n}"));
            }
            if let Some(w) = rule.keep_pulled_within_secs {
                let last = pulled.map_or("never pulled".to_owned(), |at| {
                    format!("last pulled {}", days_ago(now, at))
                });
                why.push(format!("{last}, not within {} days", w / 86_400));
            }
            if !rule.keep_tags.is_empty() {
                why.push("matches no keep_tags".into());
            }
            let decision = TagDecision {
                repository: repo.to_owned(),
                tag: tag.to_string(),
                digest: digest.to_string(),
                reason: why.join("; "),
                dry_run: dry,
            };
            match dry {
                true => report.tags_would_delete.push(decision),
                false => report.tags_deleted.push(decision),
            }
        }
        let Some(after) = rule.untagged_after_secs else {
            continue;
        };
        let cutoff = now.saturating_sub(after);
        // Untagged, pushed before the cutoff, not a referrer (signatures
        // stay with their subject) and not a child of a manifest that
        // stays; deleting an index can free its children, so repeat.
        let mut gone: HashSet<&str> = HashSet::new();
        let ms = manifests_by_repo.remove(repo).unwrap_or_default();
        loop {
            let children: HashSet<&str> = ms
                .iter()
                .filter(|(d, _)| !gone.contains(d))
                .flat_map(|(_, rec)| rec.children.iter().map(String::as_str))
                .collect();
            let more: Vec<&(&str, &ManifestRecord)> = ms
                .iter()
                .filter(|(d, rec)| {
                    !gone.contains(d)
                        && !tagged.contains(d)
                        && !children.contains(d)
                        && rec.subject.is_none()
                        && rec.created < cutoff
                })
                .collect();
            if more.is_empty() {
                break;
            }
            for (d, rec) in more {
                gone.insert(d);
                let list = match dry {
                    true => &mut report.manifests_would_delete,
                    false => &mut report.manifests_deleted,
                };
                list.push(ManifestDecision {
                    repository: repo.to_owned(),
                    digest: d.to_string(),
                    reason: format!(
                        "untagged, pushed {}, older than {} h",
                        days_ago(now, rec.created),
                        after / 3600
                    ),
                    dry_run: dry,
                    cutoff,
                });
            }
        }
    }
    report.dry_run = force_dry
        || (report.tags_deleted.is_empty()
            && report.manifests_deleted.is_empty()
            && !(report.tags_would_delete.is_empty() && report.manifests_would_delete.is_empty()));
    report
}

impl std::fmt::Display for RetentionReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = |n: usize, what: &str| match n {
            1 => format!("1 {what}"),
            n => format!("{n} {what}s"),
        };
        write!(
            f,
            "deleted {} and {}",
            count(self.tags_deleted.len(), "tag"),
            count(self.manifests_deleted.len(), "untagged manifest")
        )?;
        if !(self.tags_would_delete.is_empty() && self.manifests_would_delete.is_empty()) {
            write!(
                f,
                "; a dry run would delete {} and {}",
                count(self.tags_would_delete.len(), "tag"),
                count(self.manifests_would_delete.len(), "untagged manifest")
            )?;
        }
        write!(f, "; kept {}", count(self.tags_kept, "tag"))?;
        if !self.skipped.is_empty() {
            write!(f, "; {} skipped (changed meanwhile)", self.skipped.len())?;
        }
        Ok(())
    }
}

/// Plans and applies retention; `force_dry` reports without deleting.
pub async fn run(meta: &Meta, p: &Policies, force_dry: bool) -> Result<RetentionReport, MetaError> {
    // Only the repositories a policy covers are read: planning over one
    // busy repository costs the same in a registry of 10^4 manifests as
    // in one of 10^6.
    let policies = p.clone();
    let snap = meta
        .query(move |m| {
            let mut snap = Snapshot::default();
            let mut after: Option<String> = None;
            loop {
                let page = m.repos(after.as_deref(), 1000)?;
                for repo in page
                    .items
                    .iter()
                    .filter(|r| policies.retention_for(r).is_some())
                {
                    let rows = m.repository_rows(repo)?;
                    let r = || repo.clone();
                    snap.tags
                        .extend(rows.tags.into_iter().map(|(t, d)| (r(), t, d)));
                    snap.manifests
                        .extend(rows.manifests.into_iter().map(|(d, rec)| (r(), d, rec)));
                    snap.pulls
                        .extend(rows.pulls.into_iter().map(|(d, at)| (r(), d, at)));
                }
                match (page.more, page.items.last()) {
                    (true, Some(last)) => after = Some(last.clone()),
                    _ => return Ok(snap),
                }
            }
        })
        .await?;
    let mut report = plan(p, &snap, unix_now(), force_dry);
    let tags = std::mem::take(&mut report.tags_deleted);
    report.tags_deleted = apply(meta, tags, &mut report.skipped, |d| {
        let (repo, digest) = (
            RepoName::parse(&d.repository).ok()?,
            Digest::parse(&d.digest).ok()?,
        );
        let op = MetaWrite::RetireTag {
            repo,
            tag: d.tag.clone(),
            digest,
        };
        Some((true, op, format!("{}:{}", d.repository, d.tag)))
    })
    .await?;
    let manifests = std::mem::take(&mut report.manifests_deleted);
    report.manifests_deleted = apply(meta, manifests, &mut report.skipped, |d| {
        let (repo, digest) = (
            RepoName::parse(&d.repository).ok()?,
            Digest::parse(&d.digest).ok()?,
        );
        let op = MetaWrite::GcDeleteManifest {
            repo,
            digest,
            cutoff: d.cutoff,
        };
        Some((true, op, format!("{}@{}", d.repository, d.digest)))
    })
    .await?;
    Ok(report)
}

/// Decisions whose writes are sent to the metadata writer at once: they
/// share its group commits instead of paying one each (10^4 retired tags
/// were 10^4 commits in a row), and are few enough not to crowd out
/// pushes.
const WRITE_WAVE: usize = 128;

/// What `apply` does for one decision: whether to commit, the write, and
/// the decision's name for `skipped`.
type Planned = (bool, MetaWrite, String);

/// Commits each decision's write (`write` says whether to, which write,
/// and how to name it), a wave at a time; returns the decisions that
/// stand, in order. One the database refuses (its condition no longer
/// holds) goes to `skipped` with the reason.
async fn apply<D>(
    meta: &Meta,
    decisions: Vec<D>,
    skipped: &mut Vec<String>,
    write: impl Fn(&D) -> Option<Planned>,
) -> Result<Vec<D>, MetaError> {
    let mut stand = Vec::new();
    let mut decisions = decisions.into_iter().peekable();
    while decisions.peek().is_some() {
        let wave: Vec<(D, Option<Planned>)> = decisions
            .by_ref()
            .take(WRITE_WAVE)
            .map(|d| {
                let w = write(&d);
                (d, w)
            })
            .collect();
        let results = futures_util::future::join_all(wave.iter().map(|(_, w)| async move {
            match w {
                Some((true, op, _)) => Some(meta.write(vec![op.clone()]).await),
                Some((false, _, _)) => Some(Ok(())),
                None => None,
            }
        }))
        .await;
        for ((d, w), r) in wave.into_iter().zip(results) {
            match (r, w) {
                (None, _) => {}
                (Some(Ok(())), _) => stand.push(d),
                (Some(Err(MetaError::Conflict(why))), Some((_, _, name))) => {
                    skipped.push(format!("{name}: {why}"));
                }
                (Some(Err(MetaError::Conflict(_))), None) => {}
                (Some(Err(e)), _) => return Err(e),
            }
        }
    }
    Ok(stand)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;
    const NOW: u64 = 1_000 * DAY;

    fn record(created: u64) -> ManifestRecord {
        ManifestRecord {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: 1,
            subject: None,
            artifact_type: None,
            annotations: None,
            blobs: vec![],
            children: vec![],
            created,
            proxied: false,
        }
    }

    fn policies(retention: &str) -> Policies {
        #[derive(serde::Deserialize)]
        struct F {
            #[serde(default)]
            retention: Vec<RetentionConfig>,
            #[serde(default)]
            immutable: Vec<ImmutableConfig>,
        }
        let f: F = toml::from_str(retention).unwrap();
        Policies::new(&f.retention, &f.immutable).unwrap()
    }

    /// `n` tags `t0..` in `repo`, tag i pushed i days ago, each its own manifest.
    fn snapshot(repo: &str, n: u64) -> Snapshot {
        let mut s = Snapshot::default();
        for i in 0..n {
            let d = format!("sha256:{i:064x}");
            s.tags.push((repo.into(), format!("t{i}"), d.clone()));
            s.manifests.push((repo.into(), d, record(NOW - i * DAY)));
        }
        s
    }

    fn deleted(r: &RetentionReport) -> Vec<&str> {
        r.tags_deleted.iter().map(|d| d.tag.as_str()).collect()
    }

    #[test]
    fn keeps_the_newest_the_pulled_and_the_matching() {
        let p = policies(
            r#"[[retention]]
               repositories = "ci/**"
               keep_last = 2
               keep_pulled_within_days = 14
               keep_tags = ["^t4$"]"#,
        );
        let mut s = snapshot("ci/app", 6);
        // t3 pulled 3 days ago, t5 pulled 30 days ago.
        s.pulls
            .push(("ci/app".into(), format!("sha256:{:064x}", 3), NOW - 3 * DAY));
        s.pulls.push((
            "ci/app".into(),
            format!("sha256:{:064x}", 5),
            NOW - 30 * DAY,
        ));
        let r = plan(&p, &s, NOW, false);
        assert_eq!(deleted(&r), vec!["t2", "t5"]);
        assert_eq!(r.tags_kept, 4);
        let t5 = &r.tags_deleted[1];
        assert!(
            t5.reason.contains("not among the newest 2"),
            "{}",
            t5.reason
        );
        assert!(
            t5.reason
                .contains("last pulled 30 days ago, not within 14 days"),
            "{}",
            t5.reason
        );
        assert!(r.tags_deleted[0].reason.contains("never pulled"));
        // Other repositories follow no policy.
        assert!(plan(&p, &snapshot("team/app", 6), NOW, false)
            .tags_deleted
            .is_empty());
    }

    #[test]
    fn a_policy_without_keep_conditions_deletes_no_tag() {
        let p = policies("[[retention]]\nrepositories = \"**\"\n");
        let r = plan(&p, &snapshot("a", 5), NOW, false);
        assert!(r.tags_deleted.is_empty());
        assert_eq!(r.tags_kept, 5);
    }

    #[test]
    fn immutable_tags_are_kept_and_named() {
        let p = policies(
            r#"[[retention]]
               repositories = "**"
               keep_last = 1
               [[immutable]]
               repositories = "release/**"
               tags = ["^t[0-9]$"]"#,
        );
        assert!(plan(&p, &snapshot("release/x", 4), NOW, false)
            .tags_deleted
            .is_empty());
        assert_eq!(
            deleted(&plan(&p, &snapshot("other", 3), NOW, false)),
            vec!["t1", "t2"]
        );
        let rule = p.immutable_rule("release/x", "t1").unwrap();
        assert!(
            rule.contains("release/**") && rule.contains("^t[0-9]$"),
            "{rule}"
        );
        assert!(p.immutable_rule("release/x", "latest").is_none());
        assert!(p.immutable_rule("other", "t1").is_none());
    }

    #[test]
    fn untagged_manifests_go_after_their_age_but_not_children_or_referrers() {
        let p = policies(
            r#"[[retention]]
               repositories = "**"
               keep_last = 1
               delete_untagged_after_hours = 24"#,
        );
        // t1 and t2 lose their tags; t1 (pushed exactly 24 h ago) is not
        // older than the limit yet, t2 is.
        let mut s = snapshot("r", 3);
        let old = NOW - 3 * DAY;
        let d = |n: u64| format!("sha256:{n:064x}");
        // An untagged index with a child; a signature; a fresh untagged one.
        let mut index = record(old);
        index.children = vec![d(11)];
        s.manifests.push(("r".into(), d(10), index));
        s.manifests.push(("r".into(), d(11), record(old)));
        let mut sig = record(old);
        sig.subject = Some(d(0));
        s.manifests.push(("r".into(), d(12), sig));
        s.manifests.push(("r".into(), d(13), record(NOW - 3600)));
        let r = plan(&p, &s, NOW, true);
        let gone: Vec<&str> = r
            .manifests_would_delete
            .iter()
            .map(|m| m.digest.as_str())
            .collect();
        assert_eq!(gone, vec![d(2), d(10), d(11)]);
        assert!(r.dry_run && r.manifests_deleted.is_empty() && r.tags_deleted.is_empty());
        assert!(r.manifests_would_delete[0]
            .reason
            .contains("older than 24 h"));
        assert_eq!(
            r.to_string(),
            "deleted 0 tags and 0 untagged manifests; \
             a dry run would delete 2 tags and 3 untagged manifests; kept 1 tag"
        );
    }

    #[test]
    fn bad_expressions_are_configuration_errors() {
        let bad = ImmutableConfig {
            repositories: "**".into(),
            tags: vec!["(".into()],
        };
        let e = Policies::new(&[], &[bad]).err().unwrap();
        assert!(e.to_string().contains("immutable[0].tags"), "{e}");
    }
}
