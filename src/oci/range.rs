//! Byte ranges: the `Content-Range` of an upload chunk (`a-b`, inclusive)
//! and the `Range` of a blob read (`bytes=a-b`, `bytes=a-`, `bytes=-n`).

use super::ParseError;

/// The inclusive range a PATCH chunk claims to cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub start: u64,
    pub end_inclusive: u64,
}

impl ContentRange {
    /// Accepts `a-b` as the spec writes it, and `bytes a-b` / `bytes=a-b`
    /// (optionally with `/total`) as some clients send it.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let bad = || ParseError::Range(format!("Content-Range {} is not a-b", super::echoed(s)));
        let s = s.trim();
        let s = s
            .strip_prefix("bytes=")
            .or_else(|| s.strip_prefix("bytes "))
            .unwrap_or(s);
        let s = s.split_once('/').map_or(s, |(r, _total)| r);
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let start = parse_u64(a).ok_or_else(bad)?;
        let end_inclusive = parse_u64(b).ok_or_else(bad)?;
        // The length (end - start + 1) must fit in a u64: `0-18446744073709551615`
        // is 2^64 bytes (found by fuzz/digest_range_parse).
        if end_inclusive < start || end_inclusive == u64::MAX {
            return Err(bad());
        }
        Ok(ContentRange {
            start,
            end_inclusive,
        })
    }

    pub fn len(&self) -> u64 {
        self.end_inclusive - self.start + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// A satisfiable byte range of a blob, resolved against its size: bytes
/// `start..end` (end exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

/// What a `Range` header asks of a blob of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable single range: serve the whole blob with 200 (RFC 9110 lets
    /// a server ignore a multi-range or unparseable Range header).
    Whole,
    Partial(ByteRange),
    /// A well-formed range that lies outside the blob: 416.
    Unsatisfiable,
}

impl ByteRange {
    /// Resolves `Range: bytes=...` against a blob of `size` bytes.
    pub fn resolve(header: &str, size: u64) -> RangeRequest {
        let Some(spec) = header.trim().strip_prefix("bytes=") else {
            return RangeRequest::Whole;
        };
        if spec.contains(',') {
            return RangeRequest::Whole;
        }
        let Some((a, b)) = spec.trim().split_once('-') else {
            return RangeRequest::Whole;
        };
        let (a, b) = (a.trim(), b.trim());
        match (a.is_empty(), b.is_empty()) {
            // bytes=-n: the last n bytes
            (true, false) => match parse_u64(b) {
                Some(0) => RangeRequest::Unsatisfiable,
                Some(n) if size > 0 => RangeRequest::Partial(ByteRange {
                    start: size.saturating_sub(n),
                    end: size,
                }),
                Some(_) => RangeRequest::Unsatisfiable,
                None => RangeRequest::Whole,
            },
            (false, _) => {
                let Some(start) = parse_u64(a) else {
                    return RangeRequest::Whole;
                };
                let end_inclusive = if b.is_empty() {
                    u64::MAX
                } else {
                    match parse_u64(b) {
                        Some(e) if e >= start => e,
                        _ => return RangeRequest::Whole,
                    }
                };
                if start >= size {
                    return RangeRequest::Unsatisfiable;
                }
                RangeRequest::Partial(ByteRange {
                    start,
                    end: end_inclusive.saturating_add(1).min(size),
                })
            }
            (true, true) => RangeRequest::Whole,
        }
    }

    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// Strict decimal: no sign, no spaces, no overflow.
fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_forms() {
        let r = ContentRange::parse("0-99").unwrap();
        assert_eq!((r.start, r.end_inclusive, r.len()), (0, 99, 100));
        assert_eq!(ContentRange::parse("bytes=5-9").unwrap().start, 5);
        assert_eq!(ContentRange::parse("bytes 5-9/100").unwrap().len(), 5);
        for bad in [
            "",
            "-",
            "5-",
            "-5",
            "9-5",
            "a-b",
            "+1-2",
            "1-99999999999999999999999",
        ] {
            assert!(ContentRange::parse(bad).is_err(), "{bad}");
        }
    }

    /// Regression (fuzz/digest_range_parse): a range of 2^64 bytes made
    /// `len()` overflow.
    #[test]
    fn content_range_longer_than_u64_is_refused() {
        assert!(ContentRange::parse("0-18446744073709551615").is_err());
        let r = ContentRange::parse("1-18446744073709551614").unwrap();
        assert_eq!(r.len(), u64::MAX - 1);
    }

    #[test]
    fn range_resolution() {
        use RangeRequest::*;
        let p = |s, e| Partial(ByteRange { start: s, end: e });
        assert_eq!(ByteRange::resolve("bytes=0-9", 100), p(0, 10));
        assert_eq!(ByteRange::resolve("bytes=90-200", 100), p(90, 100));
        assert_eq!(ByteRange::resolve("bytes=90-", 100), p(90, 100));
        assert_eq!(ByteRange::resolve("bytes=-10", 100), p(90, 100));
        assert_eq!(ByteRange::resolve("bytes=-1000", 100), p(0, 100));
        assert_eq!(ByteRange::resolve("bytes=100-", 100), Unsatisfiable);
        assert_eq!(ByteRange::resolve("bytes=-0", 100), Unsatisfiable);
        assert_eq!(ByteRange::resolve("bytes=0-0", 0), Unsatisfiable);
        assert_eq!(ByteRange::resolve("bytes=0-1,5-6", 100), Whole);
        assert_eq!(ByteRange::resolve("items=0-1", 100), Whole);
        assert_eq!(ByteRange::resolve("bytes=9-1", 100), Whole);
        assert_eq!(ByteRange::resolve("bytes=x-1", 100), Whole);
    }
}
