//! Request paths and query strings: never a panic; a parsed repository
//! name is itself valid, and routing the same path twice agrees.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf::http::query::Query;
use wharf::http::route;
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
    if let Some(n) = first.as_ref().ok().and_then(|ep| ep.repo()) {
        assert!(RepoName::parse(n.as_str()).is_ok());
        assert!(!n.as_str().split('/').any(|c| c == ".." || c == "."));
    }
});
