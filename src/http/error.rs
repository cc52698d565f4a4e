//! The one table from every error of every layer to an OCI error code, an
//! HTTP status and a JSON body. No handler picks a status on its own.

use super::body::Body;
use crate::meta::MetaError;
use crate::oci::ParseError;
use crate::storage::StorageError;
use crate::upload::Refusal;
use http::{HeaderValue, Response, StatusCode};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("blob unknown to registry")]
    BlobUnknown,
    #[error("blob upload unknown to registry")]
    BlobUploadUnknown,
    #[error("blob upload invalid: {0}")]
    BlobUploadInvalid(String),
    #[error("{0}")]
    UploadRange(String),
    #[error("{0}")]
    DigestInvalid(String),
    #[error("{0}")]
    NameInvalid(String),
    #[error("repository name not known to registry")]
    NameUnknown,
    #[error("manifest unknown")]
    ManifestUnknown,
    #[error("{0}")]
    ManifestInvalid(String),
    #[error("{0}")]
    ManifestBlobUnknown(String),
    #[error("{0}")]
    ManifestChildUnknown(String),
    #[error("{0}")]
    PaginationInvalid(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("the operation is unsupported")]
    MethodNotAllowed,
    #[error("not a registry endpoint")]
    NotFound,
    #[error("range not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("{0}")]
    Unavailable(String),
    /// A pull-through cache's upstream answered wrongly or refused us.
    #[error("{0}")]
    UpstreamFailed(String),
    #[error("storage is full: {0}")]
    StorageFull(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("{message}")]
    Unauthorized { challenge: String, message: String },
    #[error("requested access to the resource is denied")]
    Denied { challenge: Option<String> },
    /// Refused by a registry policy (an immutable tag), whoever asks.
    #[error("{0}")]
    PolicyDenied(String),
    #[error("too many requests; retry in {retry_after_secs} s")]
    TooManyRequests { retry_after_secs: u64 },
    #[error("request headers are larger than {0} bytes")]
    HeadersTooLarge(usize),
    /// An operator endpoint's request that cannot be what it asks for.
    #[error("{0}")]
    BadRequest(String),
    /// An operator endpoint's object that does not exist.
    #[error("{0}")]
    Unknown(String),
    /// An operator endpoint's object that exists already.
    #[error("{0}")]
    Exists(String),
    /// A write that would take a `[[quota]]` over its limit.
    #[error("{0}")]
    QuotaExceeded(String),
}

impl ApiError {
    /// The OCI error code a client sees.
    pub fn code(&self) -> &'static str {
        self.code_and_status().0
    }

    /// OCI error code and HTTP status: the whole mapping, in one place.
    fn code_and_status(&self) -> (&'static str, StatusCode) {
        use ApiError::*;
        match self {
            BlobUnknown => ("BLOB_UNKNOWN", StatusCode::NOT_FOUND),
            BlobUploadUnknown => ("BLOB_UPLOAD_UNKNOWN", StatusCode::NOT_FOUND),
            BlobUploadInvalid(_) => ("BLOB_UPLOAD_INVALID", StatusCode::BAD_REQUEST),
            UploadRange(_) => ("BLOB_UPLOAD_INVALID", StatusCode::RANGE_NOT_SATISFIABLE),
            DigestInvalid(_) => ("DIGEST_INVALID", StatusCode::BAD_REQUEST),
            NameInvalid(_) => ("NAME_INVALID", StatusCode::BAD_REQUEST),
            NameUnknown => ("NAME_UNKNOWN", StatusCode::NOT_FOUND),
            ManifestUnknown => ("MANIFEST_UNKNOWN", StatusCode::NOT_FOUND),
            ManifestInvalid(_) => ("MANIFEST_INVALID", StatusCode::BAD_REQUEST),
            ManifestBlobUnknown(_) => ("MANIFEST_BLOB_UNKNOWN", StatusCode::BAD_REQUEST),
            ManifestChildUnknown(_) => ("MANIFEST_UNKNOWN", StatusCode::BAD_REQUEST),
            PaginationInvalid(_) => ("PAGINATION_NUMBER_INVALID", StatusCode::BAD_REQUEST),
            TooLarge(_) => ("SIZE_INVALID", StatusCode::PAYLOAD_TOO_LARGE),
            Unsupported(_) => ("UNSUPPORTED", StatusCode::METHOD_NOT_ALLOWED),
            MethodNotAllowed => ("UNSUPPORTED", StatusCode::METHOD_NOT_ALLOWED),
            // The spec has no code for "no such endpoint"; UNSUPPORTED is
            // its word for a request it does not implement.
            NotFound => ("UNSUPPORTED", StatusCode::NOT_FOUND),
            // No spec code names a read range; the range is a size the
            // blob does not have.
            RangeNotSatisfiable { .. } => ("SIZE_INVALID", StatusCode::RANGE_NOT_SATISFIABLE),
            Unavailable(_) => ("UNAVAILABLE", StatusCode::SERVICE_UNAVAILABLE),
            UpstreamFailed(_) => ("UNAVAILABLE", StatusCode::BAD_GATEWAY),
            StorageFull(_) => ("STORAGE_FULL", StatusCode::INSUFFICIENT_STORAGE),
            Internal(_) => ("UNKNOWN", StatusCode::INTERNAL_SERVER_ERROR),
            Unauthorized { .. } => ("UNAUTHORIZED", StatusCode::UNAUTHORIZED),
            Denied { .. } | PolicyDenied(_) => ("DENIED", StatusCode::FORBIDDEN),
            TooManyRequests { .. } => ("TOOMANYREQUESTS", StatusCode::TOO_MANY_REQUESTS),
            HeadersTooLarge(_) => ("SIZE_INVALID", StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
            // The operator endpoints borrow the spec's nearest codes.
            BadRequest(_) => ("UNSUPPORTED", StatusCode::BAD_REQUEST),
            Unknown(_) => ("NAME_UNKNOWN", StatusCode::NOT_FOUND),
            Exists(_) => ("DENIED", StatusCode::CONFLICT),
            QuotaExceeded(_) => ("DENIED", StatusCode::FORBIDDEN),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.code_and_status().1
    }

    pub fn into_response(self, head_only: bool) -> Response<Body> {
        let (code, status) = self.code_and_status();
        if status.is_server_error() {
            tracing::error!(code, error = %self, "request failed");
        }
        let json = serde_json::json!({
            "errors": [{ "code": code, "message": self.to_string(), "detail": null }]
        });
        let bytes = serde_json::to_vec(&json).unwrap_or_default();
        let len = bytes.len();
        let mut resp = Response::new(if head_only {
            Body::Empty
        } else {
            Body::full(bytes)
        });
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
        let extra = match self {
            ApiError::RangeNotSatisfiable { size } => {
                Some((http::header::CONTENT_RANGE, format!("bytes */{size}")))
            }
            ApiError::Unauthorized { challenge, .. }
            | ApiError::Denied {
                challenge: Some(challenge),
            } => Some((http::header::WWW_AUTHENTICATE, challenge)),
            ApiError::TooManyRequests { retry_after_secs } => {
                Some((http::header::RETRY_AFTER, retry_after_secs.to_string()))
            }
            // A backend that is away (database, object store, a stuck
            // disk) usually returns within seconds; clients that honour
            // Retry-After come back instead of failing the push.
            ApiError::Unavailable(_) => Some((http::header::RETRY_AFTER, "1".to_owned())),
            _ => None,
        };
        if let Some((name, value)) = extra {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        }
        resp
    }
}

impl From<ParseError> for ApiError {
    fn from(e: ParseError) -> Self {
        match e {
            ParseError::Name(m) => ApiError::NameInvalid(m),
            ParseError::Digest(m) => ApiError::DigestInvalid(m),
            ParseError::DigestAlgorithm(a) => {
                ApiError::DigestInvalid(format!("unsupported digest algorithm {a}"))
            }
            ParseError::Reference(m) => ApiError::ManifestInvalid(m),
            ParseError::Range(m) => ApiError::UploadRange(m),
        }
    }
}

impl From<MetaError> for ApiError {
    fn from(e: MetaError) -> Self {
        match e {
            e @ MetaError::NoSpace(_) => ApiError::StorageFull(e.to_string()),
            e @ MetaError::Unavailable(_) => ApiError::Unavailable(e.to_string()),
            MetaError::QuotaExceeded(m) => ApiError::QuotaExceeded(m),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        use StorageError as E;
        match e {
            E::BlobUnknown => ApiError::BlobUnknown,
            E::Refused(Refusal::Unknown) => ApiError::BlobUploadUnknown,
            E::Refused(r @ Refusal::OutOfOrder { .. }) => ApiError::UploadRange(r.to_string()),
            E::Refused(r @ Refusal::DigestMismatch { .. }) => {
                ApiError::DigestInvalid(r.to_string())
            }
            e @ E::UploadBusy => ApiError::BlobUploadInvalid(e.to_string()),
            E::UploadTooLarge(m) => ApiError::TooLarge(m),
            E::TooManySessions => ApiError::TooManyRequests {
                retry_after_secs: 10,
            },
            E::RangeNotSatisfiable { size } => ApiError::RangeNotSatisfiable { size },
            E::Full(m) => ApiError::StorageFull(m),
            E::Unavailable(m) => ApiError::Unavailable(m),
            E::Internal(m) => ApiError::Internal(m),
            E::QuotaExceeded(m) => ApiError::QuotaExceeded(m),
        }
    }
}

impl From<crate::app::robots::RobotError> for ApiError {
    fn from(e: crate::app::robots::RobotError) -> Self {
        use crate::app::robots::RobotError as E;
        match e {
            e @ (E::Invalid(_) | E::AuthOff) => ApiError::BadRequest(e.to_string()),
            e @ E::Exists(_) => ApiError::Exists(e.to_string()),
            e @ E::Unknown(_) => ApiError::Unknown(e.to_string()),
            e @ E::Random => ApiError::Internal(e.to_string()),
            E::Meta(m) => m.into(),
        }
    }
}

impl From<crate::blocking::TaskFailed> for ApiError {
    fn from(e: crate::blocking::TaskFailed) -> Self {
        ApiError::Unavailable(e.to_string())
    }
}

impl From<crate::proxy::ProxyError> for ApiError {
    fn from(e: crate::proxy::ProxyError) -> Self {
        use crate::proxy::ProxyError as E;
        match e {
            E::Storage(s) => s.into(),
            E::Meta(m) => m.into(),
            e @ E::Upstream(_) => ApiError::from_proxy(&e, ApiError::NotFound),
        }
    }
}

impl ApiError {
    /// A pull-through failure shared by several requests (one fetch);
    /// `unknown` answers "the upstream has no such thing".
    pub fn from_proxy(e: &crate::proxy::ProxyError, unknown: ApiError) -> ApiError {
        use crate::proxy::upstream::UpstreamError as U;
        use crate::proxy::ProxyError as E;
        match e {
            E::Upstream(U::NotFound(_)) => unknown,
            E::Upstream(u @ U::Unavailable(_)) => ApiError::Unavailable(u.to_string()),
            E::Upstream(u @ (U::Denied(_) | U::Invalid(_))) => {
                ApiError::UpstreamFailed(u.to_string())
            }
            e @ (E::Storage(_) | E::Meta(_)) => ApiError::Unavailable(format!(
                "the pull-through cache could not store the upstream's answer: {e}"
            )),
        }
    }
}

impl From<crate::gc::GcError> for ApiError {
    fn from(e: crate::gc::GcError) -> Self {
        match e {
            crate::gc::GcError::Meta(m) => m.into(),
            crate::gc::GcError::Storage(s) => s.into(),
            e @ crate::gc::GcError::Task(_) => ApiError::Internal(e.to_string()),
        }
    }
}
