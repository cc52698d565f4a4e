//! Maps a request path to the one `Endpoint` it names.
//!
//! Repository names contain slashes and may themselves contain `blobs`,
//! `manifests` or `uploads` as components, so the path is matched from the
//! right: the fixed suffix is cut off first, and what is left must be a
//! valid name.

use crate::oci::{Digest, ParseError, Reference, RepoName};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `/`: where a browser lands (sent on to the UI when it is on).
    Root,
    /// `/healthz`: the process answers.
    Health,
    /// `/readyz`: ready to serve (metadata readable, not draining).
    Ready,
    /// `/ui` and below: the web UI (when enabled).
    Ui,
    /// `/_wharf/gc`: run garbage collection (admins).
    AdminGc,
    /// `/_wharf/retention`: run the retention policies (admins).
    AdminRetention,
    /// `/_wharf/robots`: list or create robot accounts (admins).
    AdminRobots,
    /// `/_wharf/robots/NAME`: delete one (admins).
    AdminRobot {
        name: String,
    },
    /// `/_wharf/quotas`: the quotas and their usage (admins).
    AdminQuotas,
    /// `/_wharf/audit`: the audit log (admins).
    AdminAudit,
    Base,
    Catalog,
    Tags {
        name: RepoName,
    },
    Manifest {
        name: RepoName,
        reference: Reference,
    },
    Blob {
        name: RepoName,
        digest: Digest,
    },
    UploadStart {
        name: RepoName,
    },
    Upload {
        name: RepoName,
        id: String,
    },
    Referrers {
        name: RepoName,
        digest: Digest,
    },
}

impl Endpoint {
    /// The repository the endpoint names (none for `/v2/` and the catalog).
    pub fn repo(&self) -> Option<&RepoName> {
        match self {
            Endpoint::Root
            | Endpoint::Health
            | Endpoint::Ready
            | Endpoint::Ui
            | Endpoint::AdminGc
            | Endpoint::AdminRetention
            | Endpoint::AdminRobots
            | Endpoint::AdminRobot { .. }
            | Endpoint::AdminQuotas
            | Endpoint::AdminAudit
            | Endpoint::Base
            | Endpoint::Catalog => None,
            Endpoint::Tags { name }
            | Endpoint::Manifest { name, .. }
            | Endpoint::Blob { name, .. }
            | Endpoint::UploadStart { name }
            | Endpoint::Upload { name, .. }
            | Endpoint::Referrers { name, .. } => Some(name),
        }
    }

    /// A short fixed name for logs and metric labels.
    pub fn label(&self) -> &'static str {
        match self {
            Endpoint::Root => "root",
            Endpoint::Health => "healthz",
            Endpoint::Ready => "readyz",
            Endpoint::Ui => "ui",
            Endpoint::AdminGc => "admin_gc",
            Endpoint::AdminRetention => "admin_retention",
            Endpoint::AdminRobots | Endpoint::AdminRobot { .. } => "admin_robots",
            Endpoint::AdminQuotas => "admin_quotas",
            Endpoint::AdminAudit => "admin_audit",
            Endpoint::Base => "base",
            Endpoint::Catalog => "catalog",
            Endpoint::Tags { .. } => "tags",
            Endpoint::Manifest { .. } => "manifest",
            Endpoint::Blob { .. } => "blob",
            Endpoint::UploadStart { .. } => "upload_start",
            Endpoint::Upload { .. } => "upload",
            Endpoint::Referrers { .. } => "referrers",
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum RouteError {
    /// Not a registry path at all.
    NotFound,
    /// A registry path with a bad name or digest.
    Invalid(ParseError),
    /// A manifest path, valid up to its reference, which is neither a tag
    /// nor a digest: nothing can exist under it.
    BadReference(ParseError),
}

impl From<ParseError> for RouteError {
    fn from(e: ParseError) -> Self {
        RouteError::Invalid(e)
    }
}

pub fn parse(path: &str) -> Result<Endpoint, RouteError> {
    match path {
        "/" => return Ok(Endpoint::Root),
        "/healthz" => return Ok(Endpoint::Health),
        "/readyz" => return Ok(Endpoint::Ready),
        "/_wharf/gc" => return Ok(Endpoint::AdminGc),
        "/_wharf/retention" => return Ok(Endpoint::AdminRetention),
        "/_wharf/robots" => return Ok(Endpoint::AdminRobots),
        "/_wharf/quotas" => return Ok(Endpoint::AdminQuotas),
        "/_wharf/audit" => return Ok(Endpoint::AdminAudit),
        p if p.starts_with("/_wharf/robots/") => {
            return Ok(Endpoint::AdminRobot {
                name: p["/_wharf/robots/".len()..].to_owned(),
            })
        }
        p if p == "/ui" || p.starts_with("/ui/") => return Ok(Endpoint::Ui),
        _ => {}
    }
    let rest = match path.strip_prefix("/v2") {
        Some("") | Some("/") => return Ok(Endpoint::Base),
        Some(r) => r.strip_prefix('/').ok_or(RouteError::NotFound)?,
        None => return Err(RouteError::NotFound),
    };
    if rest == "_catalog" {
        return Ok(Endpoint::Catalog);
    }
    let name = |n: &str| RepoName::parse(n).map_err(RouteError::Invalid);
    if let Some(n) = rest.strip_suffix("/tags/list") {
        return Ok(Endpoint::Tags { name: name(n)? });
    }
    if let Some(n) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return Ok(Endpoint::UploadStart { name: name(n)? });
    }
    // `<name>/<kind>/<last>`: split off the last component, then the kind.
    let (head, last) = rest.rsplit_once('/').ok_or(RouteError::NotFound)?;
    if last.is_empty() {
        return Err(RouteError::NotFound);
    }
    if let Some(n) = head.strip_suffix("/blobs/uploads") {
        return Ok(Endpoint::Upload {
            name: name(n)?,
            id: last.to_owned(),
        });
    }
    let (n, kind) = head.rsplit_once('/').ok_or(RouteError::NotFound)?;
    match kind {
        "blobs" => Ok(Endpoint::Blob {
            name: name(n)?,
            digest: Digest::parse(last)?,
        }),
        "manifests" => {
            let name = name(n)?;
            Ok(Endpoint::Manifest {
                name,
                reference: Reference::parse(last).map_err(RouteError::BadReference)?,
            })
        }
        "referrers" => Ok(Endpoint::Referrers {
            name: name(n)?,
            digest: Digest::parse(last)?,
        }),
        _ => Err(RouteError::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn n(s: &str) -> RepoName {
        RepoName::parse(s).unwrap()
    }

    #[test]
    fn repo_and_label() {
        let ep = parse("/v2/a/b/manifests/v1").unwrap();
        assert_eq!(ep.repo(), Some(&n("a/b")));
        assert_eq!(ep.label(), "manifest");
        assert_eq!(parse("/v2/_catalog").unwrap().repo(), None);
        assert_eq!(parse("/v2/").unwrap().label(), "base");
    }

    #[test]
    fn base_and_catalog() {
        assert_eq!(parse("/v2/"), Ok(Endpoint::Base));
        assert_eq!(parse("/v2"), Ok(Endpoint::Base));
        assert_eq!(parse("/v2/_catalog"), Ok(Endpoint::Catalog));
        assert_eq!(parse("/v1/"), Err(RouteError::NotFound));
        assert_eq!(parse("/v2x"), Err(RouteError::NotFound));
    }

    #[test]
    fn operator_and_browser_paths_are_routes_too() {
        assert_eq!(parse("/"), Ok(Endpoint::Root));
        assert_eq!(parse("/healthz"), Ok(Endpoint::Health));
        assert_eq!(parse("/readyz"), Ok(Endpoint::Ready));
        assert_eq!(parse("/ui"), Ok(Endpoint::Ui));
        assert_eq!(parse("/ui/repo/a"), Ok(Endpoint::Ui));
        assert_eq!(parse("/uix"), Err(RouteError::NotFound));
        assert_eq!(parse("/_wharf/gc"), Ok(Endpoint::AdminGc));
        assert_eq!(parse("/_wharf/retention"), Ok(Endpoint::AdminRetention));
        assert_eq!(parse("/_wharf/robots"), Ok(Endpoint::AdminRobots));
        assert_eq!(
            parse("/_wharf/robots/ci"),
            Ok(Endpoint::AdminRobot { name: "ci".into() })
        );
        assert_eq!(parse("/_wharf/quotas"), Ok(Endpoint::AdminQuotas));
        assert_eq!(parse("/_wharf/audit"), Ok(Endpoint::AdminAudit));
        assert_eq!(parse("/_wharf/other"), Err(RouteError::NotFound));
    }

    #[test]
    fn names_with_slashes_and_keywords() {
        assert_eq!(
            parse(&format!("/v2/a/blobs/manifests/uploads/blobs/{D}")),
            Ok(Endpoint::Blob {
                name: n("a/blobs/manifests/uploads"),
                digest: Digest::parse(D).unwrap()
            })
        );
        assert_eq!(
            parse("/v2/a/b/c/d/e/f/g/h/manifests/latest"),
            Ok(Endpoint::Manifest {
                name: n("a/b/c/d/e/f/g/h"),
                reference: Reference::Tag("latest".into())
            })
        );
        assert_eq!(
            parse("/v2/x/blobs/uploads/tags/list"),
            Ok(Endpoint::Tags {
                name: n("x/blobs/uploads")
            })
        );
    }

    #[test]
    fn uploads() {
        assert_eq!(
            parse("/v2/a/b/blobs/uploads/"),
            Ok(Endpoint::UploadStart { name: n("a/b") })
        );
        assert_eq!(
            parse("/v2/a/blobs/uploads"),
            Ok(Endpoint::UploadStart { name: n("a") })
        );
        assert_eq!(
            parse("/v2/a/blobs/uploads/abc"),
            Ok(Endpoint::Upload {
                name: n("a"),
                id: "abc".into()
            })
        );
    }

    #[test]
    fn referrers() {
        assert!(matches!(
            parse(&format!("/v2/r/referrers/{D}")),
            Ok(Endpoint::Referrers { .. })
        ));
    }

    #[test]
    fn rejects_bad_parts() {
        assert!(matches!(
            parse(&format!("/v2/../blobs/{D}")),
            Err(RouteError::Invalid(ParseError::Name(_)))
        ));
        assert!(matches!(
            parse("/v2/a/blobs/sha256:zz"),
            Err(RouteError::Invalid(ParseError::Digest(_)))
        ));
        assert!(matches!(
            parse("/v2/A/manifests/x"),
            Err(RouteError::Invalid(ParseError::Name(_)))
        ));
        assert_eq!(parse("/v2/a/other/x"), Err(RouteError::NotFound));
        assert_eq!(parse("/v2/a/blobs/"), Err(RouteError::NotFound));
        assert_eq!(parse("/v2/blobs/x"), Err(RouteError::NotFound));
    }
}
