//! Who is asking, and may they: HTTP Basic against an htpasswd file or
//! with a CI job's OIDC token as the password (`oidc`), Docker bearer
//! tokens, per-repository rules and OIDC grants, and the challenge a
//! refused client gets back.
//!
//! Owns: the user table (reloaded on SIGHUP or change), the token key, the
//! rules, and every allow/deny decision.
//! Must not: know routes or write responses; the http layer says which
//! `Access` a request needs and turns a `Decision` into a reply.

pub mod access;
mod htpasswd;
pub mod oidc;
pub mod pattern;
pub mod robot;
mod token;

pub use access::{Access, Action};
pub use token::TokenGrant;

use crate::config::{AuthConfig, TokenConfig};
use base64::Engine as _;
use htpasswd::HtpasswdTable;
use pattern::RepoPattern;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use token::TokenVerifier;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Token(#[from] token::TokenError),
    #[error(transparent)]
    Oidc(#[from] oidc::OidcConfigError),
}

/// Who sent a request, once its credentials checked out.
#[derive(Debug, Clone)]
pub enum Identity {
    Anonymous,
    User(String),
    Token(TokenGrant),
    /// A CI job, by its OIDC token: the templated user and its grants.
    Oidc(Arc<oidc::OidcUser>),
    /// A robot account (`robot$NAME`), by its secret.
    Robot(Arc<robot::RobotAccount>),
}

impl Identity {
    /// For logs: never a secret.
    pub fn name(&self) -> &str {
        match self {
            Identity::Anonymous => "-",
            Identity::User(u) => u,
            Identity::Token(t) => &t.subject,
            Identity::Oidc(o) => &o.user,
            Identity::Robot(r) => &r.user,
        }
    }
}

/// Credentials that were presented but did not check out.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("invalid username or password")]
    BadPassword,
    #[error("{0}")]
    BadToken(String),
    #[error("unsupported authorization scheme")]
    Scheme,
    #[error(transparent)]
    Robot(#[from] robot::RobotRefusal),
}

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// 401: no (or no valid) credentials; the client should log in.
    Challenge,
    /// 403: a known identity lacking the permission.
    Deny,
}

struct Rule {
    pattern: RepoPattern,
    users: Vec<String>,
    actions: Vec<Action>,
}

pub struct Authenticator {
    htpasswd_path: Option<PathBuf>,
    table: RwLock<Arc<HtpasswdTable>>,
    token: Option<TokenConfig>,
    /// Swapped whole on reload, like the user table.
    verifier: RwLock<Option<Arc<TokenVerifier>>>,
    rules: Vec<Rule>,
    admins: Vec<String>,
    oidc: oidc::OidcLogins,
    /// Refreshed from the metadata store by the `app` layer.
    pub robots: robot::RobotTable,
}

impl Authenticator {
    /// `None` when the config turns authentication off.
    pub fn new(cfg: &AuthConfig) -> Result<Option<Authenticator>, AuthError> {
        if cfg.htpasswd.is_none() && cfg.token.is_none() && cfg.oidc.is_empty() {
            return Ok(None);
        }
        let table = match &cfg.htpasswd {
            Some(p) => load_table(p)?,
            None => HtpasswdTable::parse("").0,
        };
        let verifier = match &cfg.token {
            Some(t) => Some(Arc::new(load_verifier(t)?)),
            None => None,
        };
        let rules = cfg
            .rules
            .iter()
            .map(|r| Rule {
                pattern: RepoPattern::new(&r.repository),
                users: r.users.clone(),
                actions: r.actions.iter().filter_map(|a| Action::parse(a)).collect(),
            })
            .collect();
        Ok(Some(Authenticator {
            htpasswd_path: cfg.htpasswd.clone(),
            table: RwLock::new(Arc::new(table)),
            token: cfg.token.clone(),
            verifier: RwLock::new(verifier),
            rules,
            admins: cfg.admins.clone(),
            oidc: oidc::OidcLogins::new(&cfg.oidc)?,
            robots: robot::RobotTable::default(),
        }))
    }

    /// Re-reads the htpasswd file and the token key (an issuer rotating its
    /// key). Whatever fails to load keeps its previous value.
    pub fn reload(&self) -> Result<(), AuthError> {
        let mut failed = None;
        if let Some(p) = &self.htpasswd_path {
            match load_table(p) {
                Ok(t) => {
                    if let Ok(mut guard) = self.table.write() {
                        *guard = Arc::new(t);
                    }
                }
                Err(e) => failed = Some(e),
            }
        }
        if let Some(t) = &self.token {
            match load_verifier(t) {
                Ok(v) => {
                    if let Ok(mut guard) = self.verifier.write() {
                        *guard = Some(Arc::new(v));
                    }
                    tracing::info!(file = %t.public_key.display(), "token key loaded");
                }
                Err(e) => failed = Some(e),
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// The files `reload` reads: watched for changes.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.htpasswd_path.iter().cloned().collect();
        files.extend(self.token.iter().map(|t| t.public_key.clone()));
        files
    }

    fn verifier(&self) -> Option<Arc<TokenVerifier>> {
        match self.verifier.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn table(&self) -> Arc<HtpasswdTable> {
        match self.table.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Checks the `Authorization` header. No header is `Anonymous`.
    pub async fn identify(&self, header: Option<&[u8]>) -> Result<Identity, CredentialError> {
        let Some(header) = header else {
            return Ok(Identity::Anonymous);
        };
        match parse_authorization(header)? {
            Credentials::Basic { user, password } => {
                if let Some(name) = user.strip_prefix(robot::PREFIX) {
                    return self
                        .robots
                        .login(name, &password, crate::calendar::unix_now())
                        .map(Identity::Robot)
                        .map_err(CredentialError::from);
                }
                // A CI job's token as the password (any user name).
                if !self.oidc.is_empty() && oidc::looks_like_jwt(&password) {
                    return self
                        .oidc
                        .login(&password)
                        .await
                        .map(Identity::Oidc)
                        .map_err(CredentialError::BadToken);
                }
                if self.htpasswd_path.is_none() {
                    return Err(CredentialError::BadPassword);
                }
                let table = self.table();
                if table.remembered(&user, &password) {
                    return Ok(Identity::User(user));
                }
                // bcrypt takes milliseconds of CPU: keep it off the workers.
                let (ok, user) = tokio::task::spawn_blocking(move || {
                    let ok = table.verify(&user, &password);
                    (ok, user)
                })
                .await
                .map_err(|_| CredentialError::BadPassword)?;
                if ok {
                    Ok(Identity::User(user))
                } else {
                    Err(CredentialError::BadPassword)
                }
            }
            Credentials::Bearer(t) => match self.verifier() {
                Some(v) => v
                    .verify(&t)
                    .map(Identity::Token)
                    .map_err(|e| CredentialError::BadToken(e.to_string())),
                None => Err(CredentialError::BadToken(
                    "bearer tokens are not configured".into(),
                )),
            },
        }
    }

    /// Whether `who` may have `access`.
    pub fn allows(&self, who: &Identity, access: &Access) -> bool {
        if self.anonymous_allows(access) {
            return true;
        }
        match who {
            Identity::Anonymous => false,
            Identity::Token(g) => g.allows(access),
            Identity::Oidc(o) => match access {
                Access::Login | Access::Catalog => true,
                Access::Repository { name, action } => {
                    o.grants(name, *action) || self.rule_allows(Some(&o.user), name, *action)
                }
            },
            // A robot has its grants and nothing else (rules for `*`
            // are for people).
            Identity::Robot(r) => match access {
                Access::Login | Access::Catalog => true,
                Access::Repository { name, action } => r.grants(name, *action),
            },
            Identity::User(u) => match access {
                Access::Login | Access::Catalog => true,
                Access::Repository { name, action } => {
                    self.rules.is_empty() || self.rule_allows(Some(u), name, *action)
                }
            },
        }
    }

    pub fn decide(&self, who: &Identity, access: &Access) -> Decision {
        if self.allows(who, access) {
            Decision::Allow
        } else if matches!(who, Identity::Anonymous) {
            Decision::Challenge
        } else {
            Decision::Deny
        }
    }

    fn anonymous_allows(&self, access: &Access) -> bool {
        match access {
            Access::Repository { name, action } => self.rule_allows(None, name, *action),
            _ => false,
        }
    }

    fn rule_allows(&self, user: Option<&str>, name: &str, action: Action) -> bool {
        self.rules.iter().any(|r| {
            r.actions.contains(&action)
                && r.users.iter().any(|u| match user {
                    None => u == "anonymous",
                    // "gh:*": every CI job of that issuer's template.
                    Some(user) => {
                        u == "anonymous"
                            || u == "*"
                            || u == user
                            || (u.contains('*') && pattern::glob_matches(u, user))
                    }
                })
                && r.pattern.matches(name)
        })
    }

    pub fn is_admin(&self, who: &Identity) -> bool {
        matches!(who, Identity::User(u) if self.admins.contains(u))
    }

    /// The `WWW-Authenticate` value for a refusal of `access`.
    pub fn challenge(&self, access: &Access, insufficient: bool) -> String {
        match &self.token {
            Some(t) => {
                let mut v = format!(
                    "Bearer realm=\"{}\",service=\"{}\"",
                    quote_safe(&t.realm),
                    quote_safe(&t.service)
                );
                if let Some(scope) = access.scope() {
                    v.push_str(&format!(",scope=\"{scope}\""));
                }
                if insufficient {
                    v.push_str(",error=\"insufficient_scope\"");
                }
                v
            }
            None => "Basic realm=\"wharf\"".to_owned(),
        }
    }
}

/// The user name Basic credentials claim, checked or not (for the record
/// of a refused login; never the password). `None` for other schemes.
pub fn claimed_user(header: Option<&[u8]>) -> Option<String> {
    match parse_authorization(header?) {
        Ok(Credentials::Basic { user, .. }) => Some(user),
        _ => None,
    }
}

fn load_table(path: &PathBuf) -> Result<HtpasswdTable, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: path.clone(),
        source,
    })?;
    let (table, parsed) = HtpasswdTable::parse(&text);
    if !parsed.skipped.is_empty() {
        tracing::warn!(
            file = %path.display(),
            skipped = ?parsed.skipped,
            "htpasswd entries skipped: only bcrypt (htpasswd -B) is accepted"
        );
    }
    tracing::info!(file = %path.display(), users = parsed.table_users, "htpasswd loaded");
    Ok(table)
}

fn load_verifier(t: &TokenConfig) -> Result<TokenVerifier, AuthError> {
    let pem = std::fs::read(&t.public_key).map_err(|source| AuthError::Read {
        path: t.public_key.clone(),
        source,
    })?;
    Ok(TokenVerifier::new(&pem, &t.issuer, &t.service)?)
}

/// Config strings go inside a quoted header parameter.
fn quote_safe(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .collect()
}

#[derive(Debug, PartialEq, Eq)]
enum Credentials {
    Basic { user: String, password: String },
    Bearer(String),
}

fn parse_authorization(header: &[u8]) -> Result<Credentials, CredentialError> {
    let text = std::str::from_utf8(header).map_err(|_| CredentialError::Scheme)?;
    let (scheme, rest) = text.trim().split_once(' ').ok_or(CredentialError::Scheme)?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|_| CredentialError::BadPassword)?;
        let s = String::from_utf8(raw).map_err(|_| CredentialError::BadPassword)?;
        let (user, password) = s.split_once(':').ok_or(CredentialError::BadPassword)?;
        Ok(Credentials::Basic {
            user: user.to_owned(),
            password: password.to_owned(),
        })
    } else if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        Ok(Credentials::Bearer(rest.to_owned()))
    } else {
        Err(CredentialError::Scheme)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RuleConfig;

    #[test]
    fn parses_basic_and_bearer() {
        assert_eq!(
            parse_authorization(b"Basic dXNlcjpwYTpzcw==").unwrap(),
            Credentials::Basic {
                user: "user".into(),
                password: "pa:ss".into()
            }
        );
        assert_eq!(
            parse_authorization(b"bearer abc.def.ghi").unwrap(),
            Credentials::Bearer("abc.def.ghi".into())
        );
        assert!(parse_authorization(b"Basic !!!").is_err());
        assert!(parse_authorization(b"Digest x").is_err());
        assert!(parse_authorization(b"Bearer").is_err());
        assert!(parse_authorization(b"\xff\xfe").is_err());
    }

    fn rule(repo: &str, users: &[&str], actions: &[&str]) -> RuleConfig {
        RuleConfig {
            repository: repo.into(),
            users: users.iter().map(|s| s.to_string()).collect(),
            actions: actions.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn auth_with(rules: Vec<RuleConfig>) -> Authenticator {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("htpasswd");
        std::fs::write(&p, "").unwrap();
        let cfg = AuthConfig {
            htpasswd: Some(p),
            rules,
            ..Default::default()
        };
        Authenticator::new(&cfg).unwrap().unwrap()
    }

    #[test]
    fn rules_grant_per_pattern_user_and_action() {
        let a = auth_with(vec![
            rule("public/**", &["anonymous"], &["pull"]),
            rule("team/*", &["alice"], &["pull", "push"]),
            rule("**", &["*"], &["pull"]),
            rule("**", &["root"], &["pull", "push", "delete"]),
        ]);
        let alice = Identity::User("alice".into());
        let bob = Identity::User("bob".into());
        let anon = Identity::Anonymous;
        use Action::*;
        assert_eq!(
            a.decide(&anon, &Access::repo("public/x/y", Pull)),
            Decision::Allow
        );
        assert_eq!(
            a.decide(&anon, &Access::repo("public/x", Push)),
            Decision::Challenge
        );
        assert_eq!(
            a.decide(&anon, &Access::repo("team/a", Pull)),
            Decision::Challenge
        );
        assert_eq!(a.decide(&anon, &Access::Login), Decision::Challenge);
        assert_eq!(
            a.decide(&alice, &Access::repo("team/a", Push)),
            Decision::Allow
        );
        assert_eq!(
            a.decide(&alice, &Access::repo("team/a/b", Push)),
            Decision::Deny
        );
        assert_eq!(
            a.decide(&alice, &Access::repo("team/a", Delete)),
            Decision::Deny
        );
        assert_eq!(
            a.decide(&bob, &Access::repo("team/a", Pull)),
            Decision::Allow
        );
        assert_eq!(
            a.decide(&bob, &Access::repo("team/a", Push)),
            Decision::Deny
        );
        assert_eq!(a.decide(&bob, &Access::Login), Decision::Allow);
        let root = Identity::User("root".into());
        assert_eq!(a.decide(&root, &Access::repo("x", Delete)), Decision::Allow);
    }

    #[test]
    fn a_rule_may_name_users_by_glob() {
        let a = auth_with(vec![rule("shared/**", &["gh:*"], &["pull"])]);
        use Action::*;
        let ci = Identity::User("gh:my-org/app".into());
        let other = Identity::User("gl:group/app".into());
        assert_eq!(
            a.decide(&ci, &Access::repo("shared/base", Pull)),
            Decision::Allow
        );
        assert_eq!(
            a.decide(&ci, &Access::repo("shared/base", Push)),
            Decision::Deny
        );
        assert_eq!(
            a.decide(&other, &Access::repo("shared/base", Pull)),
            Decision::Deny
        );
    }

    #[test]
    fn without_rules_users_may_do_everything_and_anonymous_nothing() {
        let a = auth_with(vec![]);
        let u = Identity::User("u".into());
        assert!(a.allows(&u, &Access::repo("x", Action::Delete)));
        assert!(a.allows(&u, &Access::Catalog));
        assert!(!a.allows(&Identity::Anonymous, &Access::repo("x", Action::Pull)));
        assert!(!a.allows(&Identity::Anonymous, &Access::Catalog));
    }

    #[test]
    fn basic_challenge_without_token_config() {
        let a = auth_with(vec![]);
        assert_eq!(
            a.challenge(&Access::repo("x", Action::Pull), false),
            "Basic realm=\"wharf\""
        );
    }
}
