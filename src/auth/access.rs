//! What a request needs to be allowed: a repository and actions, the
//! catalog, or just a valid identity (`/v2/`). Pure code.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }
}

/// The permission one request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// `/v2/`: any valid identity (clients probe it to learn how to log in).
    Login,
    /// `/v2/_catalog`: the token scope `registry:catalog:*`.
    Catalog,
    /// An action on one repository.
    Repository { name: String, action: Action },
}

impl Access {
    pub fn repo(name: &str, action: Action) -> Access {
        Access::Repository {
            name: name.to_owned(),
            action,
        }
    }

    /// The scope a token must carry, in the Docker token protocol's syntax.
    /// A push asks for `pull,push`, as docker does: a pushing client also
    /// checks what exists.
    pub fn scope(&self) -> Option<Scope<'_>> {
        match self {
            Access::Login => None,
            Access::Catalog => Some(Scope::Catalog),
            Access::Repository { name, action } => Some(Scope::Repository(name, *action)),
        }
    }
}

pub enum Scope<'a> {
    Catalog,
    Repository(&'a str, Action),
}

impl fmt::Display for Scope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Catalog => f.write_str("registry:catalog:*"),
            Scope::Repository(name, Action::Push) => write!(f, "repository:{name}:pull,push"),
            Scope::Repository(name, a) => write!(f, "repository:{name}:{}", a.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_follow_the_token_protocol() {
        let s = |a: Access| a.scope().map(|s| s.to_string());
        assert_eq!(s(Access::Login), None);
        assert_eq!(s(Access::Catalog).as_deref(), Some("registry:catalog:*"));
        assert_eq!(
            s(Access::repo("a/b", Action::Push)).as_deref(),
            Some("repository:a/b:pull,push")
        );
        assert_eq!(
            s(Access::repo("a", Action::Delete)).as_deref(),
            Some("repository:a:delete")
        );
    }
}
