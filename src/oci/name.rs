//! Repository names: `component(/component)*`, each component matching
//! `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.

use super::ParseError;
use std::fmt;

/// Longest name accepted, as in distribution (a name becomes part of a path
/// and a `Location` header, so it must stay bounded).
pub const MAX_NAME_LEN: usize = 255;

/// A validated repository name. Validation rules out `.`/`..` components,
/// empty components, upper case and every byte outside `[a-z0-9._/-]`, so a
/// name is always safe to use as a key or in a header.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        if s.is_empty() || s.len() > MAX_NAME_LEN {
            return Err(ParseError::Name(format!(
                "name must be 1 to {MAX_NAME_LEN} characters"
            )));
        }
        for component in s.split('/') {
            if !valid_component(component.as_bytes()) {
                return Err(ParseError::Name(format!(
                    "component {} must match [a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*",
                    super::echoed(component)
                )));
            }
        }
        Ok(RepoName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// Hand-rolled matcher for the component grammar: runs of `[a-z0-9]`
/// separated by `.`, `_`, `__` or one or more `-`.
fn valid_component(c: &[u8]) -> bool {
    let mut i = 0;
    let n = c.len();
    loop {
        // one alphanumeric run
        let start = i;
        while i < n && is_alnum(c[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == n {
            return true;
        }
        // one separator
        match c[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < n && c[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < n && c[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        for n in [
            "a",
            "library/ubuntu",
            "a/b/c/d/e/f/g/h/i",
            "foo.bar_baz__qux--x---y",
            "blobs/manifests/uploads",
            "0",
        ] {
            assert!(RepoName::parse(n).is_ok(), "{n}");
        }
    }

    #[test]
    fn rejects_invalid_names() {
        for n in [
            "", "A", "a//b", "/a", "a/", "..", "a/../b", ".a", "a.", "a___b", "a_-b", "a..b",
            "a b", "a%2fb", "-a",
        ] {
            assert!(RepoName::parse(n).is_err(), "{n}");
        }
        assert!(RepoName::parse(&"a".repeat(256)).is_err());
        assert!(RepoName::parse(&"a".repeat(255)).is_ok());
    }
}
