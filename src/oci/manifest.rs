//! Manifest parsing and validation: OCI image manifests and indexes, Docker
//! schema2 manifests and manifest lists. Docker schema1 is refused.
//!
//! The parser never rewrites the bytes: a manifest is stored and served
//! exactly as pushed, and its digest is over those bytes. What it extracts
//! is what the registry must check (referenced blobs and child manifests)
//! and index (subject, artifact type, annotations).

use super::Digest;
use serde::Deserialize;
use std::collections::BTreeMap;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const DOCKER_V1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// Layers a registry is not expected to hold (their `urls` point elsewhere).
const FOREIGN_LAYERS: [&str; 2] = [
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ManifestError(pub String);

fn invalid<T>(msg: impl Into<String>) -> Result<T, ManifestError> {
    Err(ManifestError(msg.into()))
}

/// What the registry needs to know about a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedManifest {
    pub media_type: String,
    pub is_index: bool,
    /// Config and layers that must be in the repository.
    pub blobs: Vec<Digest>,
    /// Manifests an index names, which must be in the repository.
    pub children: Vec<Digest>,
    pub subject: Option<Digest>,
    /// `artifactType`, or for an image manifest its config media type (what
    /// the referrers API reports).
    pub artifact_type: Option<String>,
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    manifests: Option<Vec<RawDescriptor>>,
    subject: Option<RawDescriptor>,
    annotations: Option<BTreeMap<String, String>>,
    fs_layers: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: Option<String>,
    digest: String,
    size: i64,
}

impl RawDescriptor {
    fn check(&self, what: &str) -> Result<Digest, ManifestError> {
        if self.size < 0 {
            return invalid(format!("{what} has a negative size"));
        }
        if self.media_type.as_deref().is_none_or(str::is_empty) {
            return invalid(format!("{what} has no mediaType"));
        }
        Digest::parse(&self.digest).map_err(|e| ManifestError(format!("{what}: {e}")))
    }

    fn is_foreign(&self) -> bool {
        let mt = self.media_type.as_deref().unwrap_or("");
        FOREIGN_LAYERS.iter().any(|f| mt.starts_with(f))
    }
}

pub fn is_index_type(mt: &str) -> bool {
    mt == OCI_INDEX || mt == DOCKER_LIST
}

fn is_known_type(mt: &str) -> bool {
    [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].contains(&mt)
}

/// Whether an index entry of this media type is a manifest (the registry
/// must hold it as one) rather than a blob. BuildKit's registry cache
/// lists layers and its `application/vnd.buildkit.cacheconfig.v0` config
/// directly in an index, as distribution accepts.
pub fn names_a_manifest(media_type: &str) -> bool {
    is_known_type(bare_type(media_type))
}

/// Strips parameters (`; charset=...`) from a Content-Type.
fn bare_type(ct: &str) -> &str {
    ct.split(';').next().unwrap_or("").trim()
}

/// Parses and validates a pushed manifest. `content_type` is the PUT's
/// `Content-Type`, if any.
pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<ParsedManifest, ManifestError> {
    let ct = content_type.map(bare_type).filter(|c| !c.is_empty());
    if ct == Some(DOCKER_V1) || ct == Some(DOCKER_V1_SIGNED) {
        return invalid(schema1_message());
    }
    let raw: Raw = serde_json::from_slice(body)
        .map_err(|e| ManifestError(format!("manifest is not valid JSON of a manifest: {e}")))?;
    if raw.schema_version == Some(1)
        || raw.fs_layers.is_some()
        || matches!(
            raw.media_type.as_deref(),
            Some(DOCKER_V1) | Some(DOCKER_V1_SIGNED)
        )
    {
        return invalid(schema1_message());
    }
    if raw.schema_version != Some(2) {
        return invalid("schemaVersion must be 2");
    }
    let media_type = match (raw.media_type.as_deref(), ct) {
        (Some(body_mt), Some(ct)) if is_known_type(ct) && ct != body_mt => {
            return invalid(format!(
                "Content-Type {ct} does not match the manifest's mediaType {body_mt}"
            ))
        }
        (Some(body_mt), _) => body_mt.to_owned(),
        // Docker's schema 2 types must be in the body (distribution checks
        // the same): bytes without one are OCI, whatever a request claims,
        // so one digest can never be served as two types.
        (None, Some(ct)) if ct == DOCKER_MANIFEST || ct == DOCKER_LIST => {
            return invalid(format!(
                "a manifest pushed as {ct} must carry \"mediaType\": \"{ct}\" in its body"
            ))
        }
        (None, Some(ct)) if is_known_type(ct) => ct.to_owned(),
        (None, _) if raw.manifests.is_some() => OCI_INDEX.to_owned(),
        (None, _) => OCI_MANIFEST.to_owned(),
    };
    if !is_known_type(&media_type) {
        return invalid(format!("unsupported manifest media type {media_type}"));
    }
    let is_index = is_index_type(&media_type);
    let subject = match &raw.subject {
        Some(s) => Some(s.check("subject")?),
        None => None,
    };
    let mut blobs = Vec::new();
    let mut children = Vec::new();
    let artifact_type = if is_index {
        if raw.config.is_some() || raw.layers.is_some() {
            return invalid("an index has no config or layers");
        }
        let Some(manifests) = &raw.manifests else {
            return invalid("an index must list its manifests");
        };
        for (i, m) in manifests.iter().enumerate() {
            let d = m.check(&format!("manifests[{i}]"))?;
            if names_a_manifest(m.media_type.as_deref().unwrap_or("")) {
                children.push(d);
            } else {
                blobs.push(d);
            }
        }
        raw.artifact_type.clone()
    } else {
        if raw.manifests.is_some() {
            return invalid("an image manifest has no manifests list");
        }
        let Some(config) = &raw.config else {
            return invalid("an image manifest must have a config");
        };
        blobs.push(config.check("config")?);
        let Some(layers) = &raw.layers else {
            return invalid("an image manifest must have layers");
        };
        for (i, l) in layers.iter().enumerate() {
            let d = l.check(&format!("layers[{i}]"))?;
            if !l.is_foreign() {
                blobs.push(d);
            }
        }
        raw.artifact_type
            .clone()
            .or_else(|| config.media_type.clone())
    };
    Ok(ParsedManifest {
        media_type,
        is_index,
        blobs,
        children,
        subject,
        artifact_type,
        annotations: raw.annotations,
    })
}

fn schema1_message() -> &'static str {
    "Docker schema1 manifests are deprecated and not accepted: push schema2 or OCI (docker and podman do by default)"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":10}}]{extra}}}"#,
            d('a'),
            d('b')
        )
    }

    #[test]
    fn image_manifest() {
        let m = parse(image("").as_bytes(), Some(OCI_MANIFEST)).unwrap();
        assert!(!m.is_index);
        assert_eq!(m.blobs.len(), 2);
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        assert!(m.subject.is_none());
    }

    #[test]
    fn subject_and_artifact_type() {
        let extra = format!(
            r#","artifactType":"application/x-sig","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":5}},"annotations":{{"k":"v"}}"#,
            d('c')
        );
        let m = parse(image(&extra).as_bytes(), None).unwrap();
        assert_eq!(m.subject, Some(Digest::parse(&d('c')).unwrap()));
        assert_eq!(m.artifact_type.as_deref(), Some("application/x-sig"));
        assert_eq!(m.annotations.unwrap()["k"], "v");
    }

    #[test]
    fn index() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":7,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            d('e')
        );
        let m = parse(body.as_bytes(), Some(OCI_INDEX)).unwrap();
        assert!(m.is_index);
        assert_eq!(m.children.len(), 1);
        assert!(m.blobs.is_empty());
    }

    #[test]
    fn buildkit_cache_index_lists_blobs() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
              {{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":7,"annotations":{{"buildkit/createdat":"2026-01-01T00:00:00Z"}}}},
              {{"mediaType":"application/vnd.buildkit.cacheconfig.v0","digest":"{}","size":9}},
              {{"mediaType":"{DOCKER_MANIFEST}","digest":"{}","size":3}}]}}"#,
            d('a'),
            d('b'),
            d('c')
        );
        let m = parse(body.as_bytes(), Some(OCI_INDEX)).unwrap();
        assert!(m.is_index);
        assert_eq!(
            m.blobs,
            vec![
                Digest::parse(&d('a')).unwrap(),
                Digest::parse(&d('b')).unwrap()
            ]
        );
        assert_eq!(m.children, vec![Digest::parse(&d('c')).unwrap()]);
    }

    #[test]
    fn media_type_inferred_and_checked() {
        let body = image("").replace(&format!(r#""mediaType":"{OCI_MANIFEST}","#), "");
        assert_eq!(
            parse(body.as_bytes(), None).unwrap().media_type,
            OCI_MANIFEST
        );
        // A Docker type must be in the body (bytes without one are OCI,
        // whatever the request claims: one digest, one type).
        let e = parse(body.as_bytes(), Some(DOCKER_MANIFEST)).unwrap_err();
        assert!(e.0.contains("must carry"), "{}", e.0);
        let docker = body.replacen('{', &format!(r#"{{"mediaType":"{DOCKER_MANIFEST}","#), 1);
        assert_eq!(
            parse(docker.as_bytes(), Some(DOCKER_MANIFEST))
                .unwrap()
                .media_type,
            DOCKER_MANIFEST
        );
        assert!(parse(image("").as_bytes(), Some(DOCKER_MANIFEST)).is_err());
        assert!(parse(
            image("").as_bytes(),
            Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8")
        )
        .is_ok());
    }

    #[test]
    fn refusals() {
        for (body, ct) in [
            ("not json", None),
            ("{}", None),
            (r#"{"schemaVersion":1,"fsLayers":[]}"#, None),
            (r#"{"schemaVersion":2}"#, Some(DOCKER_V1_SIGNED)),
            (r#"{"schemaVersion":3,"config":{}}"#, None),
            (r#"{"schemaVersion":2,"mediaType":"text/plain"}"#, None),
            (
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#,
                None,
            ),
            (
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}"#,
                None,
            ),
        ] {
            assert!(parse(body.as_bytes(), ct).is_err(), "{body}");
        }
        let bad_digest = image("").replace(&d('b'), "sha256:nothex");
        assert!(parse(bad_digest.as_bytes(), None).is_err());
        let neg = image("").replace(r#""size":10"#, r#""size":-1"#);
        assert!(parse(neg.as_bytes(), None).is_err());
        let schema1 = parse(br#"{"schemaVersion":1}"#, None).unwrap_err();
        assert!(schema1.0.contains("schema1"));
    }

    #[test]
    fn foreign_layers_are_not_required() {
        let body = image("").replace(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        );
        assert_eq!(parse(body.as_bytes(), None).unwrap().blobs.len(), 1);
    }
}
