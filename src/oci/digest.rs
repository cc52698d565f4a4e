//! Content digests: `algorithm:hex`. sha256 is required by the spec and
//! sha512 is accepted; anything else is refused before it reaches storage.

use super::ParseError;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A validated digest. The encoded part is lowercase hex of the exact length
/// for its algorithm, so it is safe to use as a file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let (alg, hex) = s.split_once(':').ok_or_else(|| {
            ParseError::Digest(format!("{} is not algorithm:encoded", super::echoed(s)))
        })?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            other => {
                // The grammar allows other algorithms; we do not implement them.
                let well_formed = !other.is_empty()
                    && other.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b)
                    });
                return Err(if well_formed {
                    ParseError::DigestAlgorithm(other.to_owned())
                } else {
                    ParseError::Digest(format!("{} has a malformed algorithm", super::echoed(s)))
                });
            }
        };
        if hex.len() != algorithm.hex_len()
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(ParseError::Digest(format!(
                "{alg} digest must be {} lowercase hex characters",
                algorithm.hex_len()
            )));
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_owned(),
        })
    }

    /// Builds the sha256 digest of a finished hash.
    pub fn sha256_from_bytes(hash: &[u8]) -> Self {
        Digest {
            algorithm: Algorithm::Sha256,
            hex: hex::encode(hash),
        }
    }

    pub fn sha512_from_bytes(hash: &[u8]) -> Self {
        Digest {
            algorithm: Algorithm::Sha512,
            hex: hex::encode(hash),
        }
    }

    /// Digest of a whole in-memory value (manifests, small test data).
    pub fn of(algorithm: Algorithm, data: &[u8]) -> Self {
        use sha2::Digest as _;
        match algorithm {
            Algorithm::Sha256 => Self::sha256_from_bytes(&sha2::Sha256::digest(data)),
            Algorithm::Sha512 => Self::sha512_from_bytes(&sha2::Sha512::digest(data)),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl FromStr for Digest {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

/// An incremental hash in a digest's algorithm, for bytes that arrive in
/// pieces (a file read back, an object streamed back).
#[derive(Clone)]
pub enum DigestHasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl DigestHasher {
    pub fn new(algorithm: Algorithm) -> Self {
        use sha2::Digest as _;
        match algorithm {
            Algorithm::Sha256 => DigestHasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => DigestHasher::Sha512(sha2::Sha512::new()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        use sha2::Digest as _;
        match self {
            DigestHasher::Sha256(h) => h.update(data),
            DigestHasher::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Digest {
        use sha2::Digest as _;
        match self {
            DigestHasher::Sha256(h) => Digest::sha256_from_bytes(&h.finalize()),
            DigestHasher::Sha512(h) => Digest::sha512_from_bytes(&h.finalize()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_sha256_and_sha512() {
        let d = Digest::parse(EMPTY).unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.to_string(), EMPTY);
        let long = format!("sha512:{}", "ab".repeat(64));
        assert_eq!(Digest::parse(&long).unwrap().algorithm(), Algorithm::Sha512);
    }

    #[test]
    fn of_matches_known_value() {
        assert_eq!(Digest::of(Algorithm::Sha256, b"").to_string(), EMPTY);
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "sha256",
            "sha256:",
            "sha256:abc",
            &EMPTY.to_uppercase(),
            &format!("{EMPTY}0"),
            "sha256:../../../../etc/passwd",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85g",
            ":abc",
            "SHA256:abc",
        ] {
            assert!(Digest::parse(s).is_err(), "{s}");
        }
        assert!(matches!(
            Digest::parse("md5:d41d8cd98f00b204e9800998ecf8427e"),
            Err(ParseError::DigestAlgorithm(_))
        ));
    }

    #[test]
    fn a_hasher_fed_in_pieces_gives_the_digest_of_the_whole() {
        let data = b"a blob that arrives in three pieces";
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let mut h = DigestHasher::new(alg);
            for piece in data.chunks(11) {
                h.update(piece);
            }
            assert_eq!(h.finish(), Digest::of(alg, data));
        }
    }
}
