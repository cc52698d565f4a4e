//! The HTTP face of the registry: routes each request to its handler, and
//! applies the header and error rules every response shares.
//!
//! Owns: routing (`route`), OCI error mapping (`error`), response bodies
//! (`body`), and the handlers, one file per resource.
//! Must not: touch files directly; it goes through the upload registry, the
//! content store and the metadata store.

mod admin;
mod blobs;
pub mod body;
pub mod error;
mod listing;
mod manifests;
pub mod query;
pub mod route;
mod uploads;

use crate::config::Config;
use crate::meta::Meta;
use crate::store::ContentStore;
use crate::upload::UploadRegistry;
use body::Body;
use error::ApiError;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use query::Query;
use route::{Endpoint, RouteError};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Everything a handler may use. Built once at start-up.
pub struct AppState {
    pub config: Config,
    pub uploads: UploadRegistry,
    pub store: ContentStore,
    pub meta: Meta,
    /// Request-body bytes (in KiB) held in memory across all uploads: a
    /// handler takes a batch's worth before it reads the batch, so a crowd of
    /// fast clients waits on this instead of filling memory.
    pub body_budget: Arc<Semaphore>,
    /// Held by the garbage collection that is running, so runs never overlap.
    pub gc_running: tokio::sync::Mutex<()>,
}

impl AppState {
    fn batch_bytes(&self) -> usize {
        (self.config.upload_batch_kib * 1024) as usize
    }
}

pub type HttpResult = Result<Response<Body>, ApiError>;

/// Serves one request. Never fails: every error becomes an OCI error reply.
pub async fn handle(state: Arc<AppState>, req: Request<Incoming>) -> Response<Body> {
    let head_only = req.method() == Method::HEAD;
    let mut resp = match dispatch(&state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(head_only),
    };
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    resp
}

async fn dispatch(st: &AppState, req: Request<Incoming>) -> HttpResult {
    if req.uri().path() == "/_wharf/gc" {
        return admin::gc(st, req.method(), &Query::parse(req.uri().query())).await;
    }
    let endpoint = match route::parse(req.uri().path()) {
        Ok(e) => e,
        Err(RouteError::NotFound) => return Err(ApiError::NotFound),
        Err(RouteError::Invalid(e)) => return Err(e.into()),
    };
    let query = Query::parse(req.uri().query());
    let method = req.method().clone();
    match (method, endpoint) {
        (Method::GET | Method::HEAD, Endpoint::Base) => Ok(json_response(StatusCode::OK, b"{}")),
        (Method::GET, Endpoint::Blob { name, digest }) => {
            blobs::get(st, &name, &digest, req.headers(), false)
        }
        (Method::HEAD, Endpoint::Blob { name, digest }) => {
            blobs::get(st, &name, &digest, req.headers(), true)
        }
        (Method::DELETE, Endpoint::Blob { name, digest }) => {
            blobs::delete(st, &name, &digest).await
        }
        (Method::POST, Endpoint::UploadStart { name }) => {
            uploads::start(st, &name, &query, req).await
        }
        (Method::PATCH, Endpoint::Upload { name, id }) => uploads::patch(st, &name, &id, req).await,
        (Method::PUT, Endpoint::Upload { name, id }) => {
            uploads::put(st, &name, &id, &query, req).await
        }
        (Method::GET, Endpoint::Upload { name, id }) => uploads::status(st, &name, &id).await,
        (Method::DELETE, Endpoint::Upload { name, id }) => uploads::cancel(st, &name, &id).await,
        (Method::GET, Endpoint::Manifest { name, reference }) => {
            manifests::get(st, &name, &reference, false)
        }
        (Method::HEAD, Endpoint::Manifest { name, reference }) => {
            manifests::get(st, &name, &reference, true)
        }
        (Method::PUT, Endpoint::Manifest { name, reference }) => {
            manifests::put(st, &name, &reference, req).await
        }
        (Method::DELETE, Endpoint::Manifest { name, reference }) => {
            manifests::delete(st, &name, &reference).await
        }
        (Method::GET, Endpoint::Tags { name }) => listing::tags(st, &name, &query),
        (Method::GET, Endpoint::Catalog) => listing::catalog(st, &query),
        (Method::GET, Endpoint::Referrers { name, digest }) => {
            listing::referrers(st, &name, &digest, &query)
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

fn json_response(status: StatusCode, body: &'static [u8]) -> Response<Body> {
    let mut r = Response::new(Body::full(bytes::Bytes::from_static(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    r
}

/// An empty response with the given status and headers. Header values built
/// here come from validated names, digests and numbers, so they are always
/// legal; one that is not is dropped rather than panicking.
fn empty_response(status: StatusCode, headers: &[(&'static str, String)]) -> Response<Body> {
    let mut r = Response::new(Body::Empty);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(0));
    for (k, v) in headers {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(*k, v);
        }
    }
    r
}
