//! Protocol grammar of the OCI Distribution Spec: repository names, digests,
//! references and byte ranges.
//!
//! Owns: pure parsing and validation, with unit tests beside each parser.
//! Must not: do I/O, know about HTTP status codes, or allocate per byte.

pub mod digest;
pub mod manifest;
pub mod name;
pub mod range;
pub mod reference;

pub use digest::{Algorithm, Digest, DigestHasher};
pub use name::RepoName;
pub use range::{ByteRange, ContentRange};
pub use reference::Reference;

/// Client input as an error message quotes it: at most 64 characters, so
/// a 10,000-character tag is not sent back whole.
pub fn echoed(input: &str) -> String {
    const SHOWN: usize = 64;
    let total = input.chars().count();
    match total > SHOWN {
        false => format!("{input:?}"),
        true => {
            let head: String = input.chars().take(SHOWN).collect();
            format!("{head:?}... ({total} characters)")
        }
    }
}

/// Why a piece of protocol text was rejected. The HTTP layer turns each kind
/// into its OCI error code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("invalid repository name: {0}")]
    Name(String),
    #[error("invalid digest: {0}")]
    Digest(String),
    #[error("unsupported digest algorithm: {0}")]
    DigestAlgorithm(String),
    #[error("invalid reference: {0}")]
    Reference(String),
    #[error("invalid range: {0}")]
    Range(String),
}

#[cfg(test)]
mod tests {
    #[test]
    fn echoed_input_is_cut_to_a_prefix() {
        assert_eq!(super::echoed("v1"), "\"v1\"");
        let long = super::echoed(&"a".repeat(10_000));
        assert!(
            long.len() < 100 && long.ends_with("(10000 characters)"),
            "{long}"
        );
    }
}
