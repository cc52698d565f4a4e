//! Repository-name patterns for access rules: `*` matches inside one path
//! component, `**` matches across components; and plain text globs (user
//! names in rules, OIDC `require` claims), where `*` matches any run.
//! Pure code.

/// A compiled repository pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoPattern {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// `*`: any run of characters other than `/`.
    Star,
    /// `**`: any run of characters, `/` included.
    DoubleStar,
}

impl RepoPattern {
    pub fn new(pattern: &str) -> RepoPattern {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '*' {
                lit.push(c);
                continue;
            }
            if !lit.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut lit)));
            }
            if chars.peek() == Some(&'*') {
                chars.next();
                parts.push(Part::DoubleStar);
            } else {
                parts.push(Part::Star);
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Literal(lit));
        }
        RepoPattern { parts }
    }

    pub fn matches(&self, name: &str) -> bool {
        match_parts(&self.parts, name)
    }
}

fn match_parts(parts: &[Part], s: &str) -> bool {
    let Some((first, rest)) = parts.split_first() else {
        return s.is_empty();
    };
    match first {
        Part::Literal(l) => s
            .strip_prefix(l.as_str())
            .is_some_and(|t| match_parts(rest, t)),
        Part::Star | Part::DoubleStar => {
            // Names are at most 255 bytes and patterns a handful of parts,
            // so trying every split point is cheap.
            for (i, c) in s.char_indices() {
                if match_parts(rest, &s[i..]) {
                    return true;
                }
                if c == '/' && *first == Part::Star {
                    return false;
                }
            }
            match_parts(rest, "")
        }
    }
}

/// `*` matches any run of characters (also `/`); everything else itself.
pub fn glob_matches(glob: &str, value: &str) -> bool {
    let parts: Vec<&str> = glob.split('*').collect();
    if parts.len() == 1 {
        return glob == value;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !value.starts_with(first) || value.len() < first.len() + last.len() || !value.ends_with(last)
    {
        return false;
    }
    let mut at = first.len();
    let end = value.len() - last.len();
    for middle in &parts[1..parts.len() - 1] {
        match value[at..end].find(middle) {
            Some(i) => at += i + middle.len(),
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::{glob_matches, RepoPattern};

    #[test]
    fn globs_match_runs_of_anything() {
        assert!(glob_matches("refs/heads/*", "refs/heads/main"));
        assert!(glob_matches("refs/heads/*", "refs/heads/feature/x"));
        assert!(!glob_matches("refs/heads/*", "refs/tags/v1"));
        assert!(glob_matches("my-org", "my-org"));
        assert!(!glob_matches("my-org", "my-org2"));
        assert!(glob_matches("*-bot-*", "ci-bot-7"));
        assert!(!glob_matches("a*b*c", "acb"));
        assert!(glob_matches("*", ""));
    }

    fn m(p: &str, n: &str) -> bool {
        RepoPattern::new(p).matches(n)
    }

    #[test]
    fn literals_match_exactly() {
        assert!(m("library/alpine", "library/alpine"));
        assert!(!m("library/alpine", "library/alpine2"));
        assert!(!m("library/alpine", "library"));
    }

    #[test]
    fn star_stays_in_one_component() {
        assert!(m("team/*", "team/app"));
        assert!(!m("team/*", "team/app/sub"));
        assert!(m("*/base", "x/base"));
        assert!(!m("*/base", "x/y/base"));
        assert!(m("app-*", "app-one"));
        assert!(m("team/*", "team/"));
    }

    #[test]
    fn double_star_crosses_components() {
        assert!(m("team/**", "team/app/sub"));
        assert!(m("**", "anything/at/all"));
        assert!(m("**/base", "a/b/base"));
        assert!(!m("team/**", "other/app"));
    }
}
