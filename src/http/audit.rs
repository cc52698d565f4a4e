//! The audit log as requests write it: the record of a change, which a
//! handler adds to the transaction of the change itself, and the record
//! of a refused request, written after the refusal (nothing changed, so
//! there is no transaction to join).
//!
//! Refusals recorded: credentials that did not check out (`login`),
//! every 403, and any client error of an audited write (a manifest PUT or
//! DELETE, a blob DELETE, a mount). Must not: record a request that sent
//! no credentials and got the 401 that asks for them (every client's first
//! probe), or fail a request because its record could not be written.

use super::error::ApiError;
use super::route::Endpoint;
use crate::meta::{AuditRecord, MetaWrite};
use crate::notify::Origin;
use crate::oci::Reference;
use http::Method;

/// An audited write, as a request names it.
#[derive(Debug, Clone)]
pub(super) struct Audited {
    pub action: &'static str,
    pub repository: String,
    pub reference: String,
}

/// What `method` on `endpoint` is for the audit log, if it is an audited
/// write. A blob upload (`push_blob`) is recorded only when refused: the
/// manifest that names the blob records the push.
pub(super) fn audited(
    method: &Method,
    endpoint: &Endpoint,
    mount: Option<&str>,
) -> Option<Audited> {
    let robot = |action, name: &str| Audited {
        action,
        repository: String::new(),
        reference: name.to_owned(),
    };
    let (action, name, reference) = match (method, endpoint) {
        (&Method::POST, Endpoint::AdminRobots) => return Some(robot("create_robot", "")),
        (&Method::DELETE, Endpoint::AdminRobot { name }) => {
            return Some(robot("delete_robot", name))
        }
        (&Method::PUT, Endpoint::Manifest { name, reference }) => {
            ("push_manifest", name, reference.to_string())
        }
        (&Method::DELETE, Endpoint::Manifest { name, reference }) => match reference {
            Reference::Tag(t) => ("delete_tag", name, t.clone()),
            Reference::Digest(d) => ("delete_manifest", name, d.to_string()),
        },
        (&Method::DELETE, Endpoint::Blob { name, digest }) => {
            ("delete_blob", name, digest.to_string())
        }
        (&Method::POST, Endpoint::UploadStart { name }) => match mount {
            Some(m) => ("mount_blob", name, m.to_owned()),
            None => ("push_blob", name, String::new()),
        },
        // Only its refusal is recorded: a pushed blob is recorded by the
        // manifest that names it.
        (&Method::PUT, Endpoint::Upload { name, .. }) => ("push_blob", name, String::new()),
        _ => return None,
    };
    Some(Audited {
        action,
        repository: name.to_string(),
        reference,
    })
}

/// The record of a change `origin` made, for the change's transaction.
pub(super) fn change(
    origin: &Origin,
    action: &str,
    repository: &str,
    reference: &str,
) -> MetaWrite {
    MetaWrite::Audit {
        record: AuditRecord {
            at_ms: crate::calendar::unix_millis(),
            actor: actor(&origin.actor),
            identity: origin.identity.clone(),
            addr: origin.addr.clone(),
            action: action.to_owned(),
            repository: repository.to_owned(),
            reference: reference.to_owned(),
            result: "ok".into(),
            id: 0,
        },
    }
}

/// The record of a refused request, if this refusal is one to record.
pub(super) fn refusal(
    error: &ApiError,
    audited: Option<&Audited>,
    credentials: bool,
    who: (&str, &str),
    addr: &str,
) -> Option<AuditRecord> {
    let status = error.status();
    let (action, repository, reference) = match (error, audited) {
        (ApiError::Unauthorized { .. }, _) if !credentials => return None,
        (ApiError::Unauthorized { .. }, None) => ("login", "", ""),
        (_, Some(a)) if status.is_client_error() => {
            (a.action, a.repository.as_str(), a.reference.as_str())
        }
        (_, None) if status == http::StatusCode::FORBIDDEN => ("access", "", ""),
        _ => return None,
    };
    Some(AuditRecord {
        at_ms: crate::calendar::unix_millis(),
        actor: actor(who.0),
        identity: who.1.to_owned(),
        addr: addr.to_owned(),
        action: action.to_owned(),
        repository: repository.to_owned(),
        reference: reference.to_owned(),
        result: format!("refused: {} {error}", status.as_u16()),
        id: 0,
    })
}

/// The actor as recorded: `-` for a request without a user.
fn actor(user: &str) -> String {
    match user {
        "" => "-".into(),
        u => u.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_worth_recording() {
        let ask = ApiError::Unauthorized {
            challenge: "Basic".into(),
            message: "authentication required".into(),
        };
        // A client's first probe, without credentials: not a refusal.
        assert!(refusal(&ask, None, false, ("-", ""), "1.2.3.4").is_none());
        let r = refusal(&ask, None, true, ("bob", ""), "1.2.3.4").unwrap();
        assert_eq!((r.action.as_str(), r.actor.as_str()), ("login", "bob"));
        assert!(r.result.starts_with("refused: 401"), "{}", r.result);
        let denied = ApiError::Denied { challenge: None };
        let r = refusal(&denied, None, true, ("bob", ""), "").unwrap();
        assert_eq!(r.action, "access");
        let put = Audited {
            action: "push_manifest",
            repository: "a".into(),
            reference: "v1".into(),
        };
        let bad = ApiError::ManifestInvalid("no".into());
        let r = refusal(&bad, Some(&put), true, ("bob", ""), "").unwrap();
        assert_eq!(
            (r.action.as_str(), r.reference.as_str()),
            ("push_manifest", "v1")
        );
        // A server's trouble is not a refusal.
        assert!(refusal(
            &ApiError::Unavailable("db".into()),
            Some(&put),
            true,
            ("b", ""),
            ""
        )
        .is_none());
        // A read that is not found is no refusal either.
        assert!(refusal(&ApiError::BlobUnknown, None, true, ("b", ""), "").is_none());
    }
}
