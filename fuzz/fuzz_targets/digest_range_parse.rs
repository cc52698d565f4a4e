//! Digests, names, references and ranges: never a panic; what parses
//! prints back to something that parses to the same value; resolved
//! ranges lie inside the blob.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf::oci::range::RangeRequest;
use wharf::oci::{ByteRange, ContentRange, Digest, Reference, RepoName};

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let size = u64::from_le_bytes(data[..8].try_into().unwrap_or([0; 8]));
    let Ok(s) = std::str::from_utf8(&data[8..]) else {
        return;
    };
    if let Ok(d) = Digest::parse(s) {
        let back = Digest::parse(&d.to_string()).expect("a digest's text parses");
        assert_eq!(back, d);
    }
    if let Ok(n) = RepoName::parse(s) {
        assert_eq!(n.as_str(), s);
    }
    let _ = Reference::parse(s);
    if let Ok(r) = ContentRange::parse(s) {
        assert!(r.start <= r.end_inclusive);
        assert!(r.len() >= 1);
    }
    match ByteRange::resolve(s, size) {
        RangeRequest::Partial(r) => {
            assert!(r.start < r.end, "{s:?} on {size}: {r:?}");
            assert!(r.end <= size, "{s:?} on {size}: {r:?}");
        }
        RangeRequest::Whole | RangeRequest::Unsatisfiable => {}
    }
});
