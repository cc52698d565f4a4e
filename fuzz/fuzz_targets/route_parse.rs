//! Request paths and query strings: never a panic; a parsed repository
//! name is itself valid, and routing the same path twice agrees.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf::http::query::Query;
use wharf::http::route::{self, Endpoint};
use wharf::oci::RepoName;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (path, query) = s.split_once('?').unwrap_or((s, ""));
    let _ = Query::parse(Some(query)).get("n");
    let first = route::parse(path);
    let again = route::parse(path);
    assert_eq!(format!("{first:?}"), format!("{again:?}"));
    if let Ok(ep) = first {
        let name = match &ep {
            Endpoint::Blob { name, .. }
            | Endpoint::UploadStart { name }
            | Endpoint::Upload { name, .. }
            | Endpoint::Manifest { name, .. }
            | Endpoint::Tags { name }
            | Endpoint::Referrers { name, .. } => Some(name),
            Endpoint::Base | Endpoint::Catalog => None,
        };
        if let Some(n) = name {
            assert!(RepoName::parse(n.as_str()).is_ok());
            assert!(!n.as_str().split('/').any(|c| c == ".." || c == "."));
        }
    }
});
