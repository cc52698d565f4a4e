//! Manifest bodies under each declared media type: never a panic, and
//! every reference a parsed manifest yields is a valid digest.
#![no_main]

use libfuzzer_sys::fuzz_target;

const TYPES: [Option<&str>; 5] = [
    None,
    Some("application/vnd.oci.image.manifest.v1+json"),
    Some("application/vnd.oci.image.index.v1+json"),
    Some("application/vnd.docker.distribution.manifest.v2+json"),
    Some("application/vnd.docker.distribution.manifest.list.v2+json"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let content_type = TYPES[pick as usize % TYPES.len()];
    if let Ok(m) = wharf::oci::manifest::parse(body, content_type) {
        for d in m.blobs.iter().chain(&m.children).chain(m.subject.as_ref()) {
            assert!(wharf::oci::Digest::parse(&d.to_string()).is_ok());
        }
    }
});
