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
