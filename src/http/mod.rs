//! The HTTP face of the registry: routes each request to its handler, and
//! applies the header and error rules every response shares.
//!
//! Owns: routing (`route`), OCI error mapping (`error`), response bodies
//! (`body`), and the handlers, one file per resource.
//! Must not: touch files directly; it goes through the upload registry, the
//! content store and the metadata store.

mod admin;
mod audit;
mod blobs;
pub mod body;
pub mod error;
mod listing;
mod manifests;
pub mod query;
pub mod route;
mod ui;
mod uploads;

pub use crate::app::App;
use crate::auth::robot::RobotRefusal;
use crate::auth::{Access, Action, Authenticator, CredentialError, Decision, Identity};
use body::Body;
use error::ApiError;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as _;
use hyper::body::Incoming;
use query::Query;
use route::{Endpoint, RouteError};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// Blocking work of a request (metadata reads, opening a blob) runs on the
/// blocking pool, one closure per request, so a read costs one trip.
use crate::blocking::run as off_worker;

pub type HttpResult = Result<Response<Body>, ApiError>;

/// What the access log and metrics say about a request, filled in as the
/// request is understood.
struct RequestFacts {
    route: &'static str,
    repo: Option<String>,
    user: String,
    /// An OIDC user's issuer and subject.
    identity: String,
    /// Whether the request carried credentials.
    credentials: bool,
    /// What the request is for the audit log, if it is an audited write.
    audited: Option<audit::Audited>,
}

/// Serves one request. Never fails: every error becomes an OCI error reply.
pub async fn handle(state: Arc<App>, req: Request<Incoming>, peer: IpAddr) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let head_only = method == Method::HEAD;
    let bytes_in = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut facts = RequestFacts {
        route: "none",
        repo: None,
        user: "-".into(),
        identity: String::new(),
        credentials: false,
        audited: None,
    };
    let mut resp = match dispatch(&state, req, peer, &mut facts).await {
        Ok(r) => r,
        Err(e) => {
            match e {
                ApiError::Unauthorized { .. } => state
                    .metrics
                    .auth_failures
                    .with_label_values(&["unauthenticated"])
                    .inc(),
                ApiError::Denied { .. } => state
                    .metrics
                    .auth_failures
                    .with_label_values(&["denied"])
                    .inc(),
                ApiError::TooManyRequests { .. } => state.metrics.rate_limited.inc(),
                _ => {}
            }
            let who = (facts.user.as_str(), facts.identity.as_str());
            let addr = peer.to_string();
            if let Some(r) =
                audit::refusal(&e, facts.audited.as_ref(), facts.credentials, who, &addr)
            {
                crate::app::audit::write(&state, r).await;
            }
            e.into_response(head_only)
        }
    };
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    let elapsed = started.elapsed();
    let status = resp.status().as_u16();
    let bytes_out = resp.body().size_hint().exact().unwrap_or(0);
    let m = &state.metrics;
    m.requests
        .with_label_values(&[facts.route, method_label(&method), status_label(status)])
        .inc();
    m.request_seconds
        .with_label_values(&[facts.route])
        .observe(elapsed.as_secs_f64());
    m.sent_bytes.inc_by(bytes_out);
    if state.config.log.access {
        tracing::info!(
            target: "wharf::access",
            method = %method,
            route = facts.route,
            repository = facts.repo.as_deref().unwrap_or("-"),
            user = %facts.user,
            client = %peer,
            status,
            bytes_in = bytes_in.unwrap_or(0),
            bytes_out,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
        );
    }
    resp
}

/// Methods as label values. Clients may send any token as a method; each
/// would otherwise become a new time series.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Status codes as static label values (no allocation per request).
fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        201 => "201",
        202 => "202",
        204 => "204",
        206 => "206",
        304 => "304",
        307 => "307",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        413 => "413",
        416 => "416",
        429 => "429",
        431 => "431",
        500 => "500",
        502 => "502",
        503 => "503",
        507 => "507",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

/// The permission a request for `ep` with `method` needs. Unknown method
/// and endpoint pairs ask for pull: they end in 405 once allowed to ask.
pub fn required_access(method: &Method, ep: &Endpoint) -> Access {
    let Some(name) = ep.repo() else {
        return match ep {
            Endpoint::Catalog => Access::Catalog,
            _ => Access::Login,
        };
    };
    let action = match (ep, method) {
        (Endpoint::UploadStart { .. } | Endpoint::Upload { .. }, _) => Action::Push,
        (Endpoint::Blob { .. } | Endpoint::Manifest { .. }, &Method::DELETE) => Action::Delete,
        (Endpoint::Blob { .. } | Endpoint::Manifest { .. }, &Method::PUT) => Action::Push,
        _ => Action::Pull,
    };
    Access::repo(name.as_str(), action)
}

/// Checks credentials and permission for `access`.
async fn authorize(
    st: &App,
    auth: &Authenticator,
    req: &Request<Incoming>,
    access: &Access,
    facts: &mut RequestFacts,
) -> Result<Identity, ApiError> {
    let header = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    facts.credentials = header.is_some();
    let mut identified = auth.identify(header).await;
    // A robot created on another node a moment ago: read the accounts now
    // rather than refuse until the next refresh.
    if let Err(CredentialError::Robot(RobotRefusal::Unknown(_))) = &identified {
        if crate::app::robots::refresh_after_miss(st).await {
            identified = auth.identify(header).await;
        }
    }
    let who = match identified {
        Ok(who) => who,
        Err(e) => {
            if let Some(u) = crate::auth::claimed_user(header) {
                facts.user = u;
            }
            return Err(ApiError::Unauthorized {
                challenge: auth.challenge(access, false),
                message: e.to_string(),
            });
        }
    };
    facts.user = who.name().to_owned();
    if let Identity::Oidc(o) = &who {
        facts.identity = format!("{} {}", o.issuer, o.subject);
    }
    match auth.decide(&who, access) {
        Decision::Allow => Ok(who),
        Decision::Challenge => Err(ApiError::Unauthorized {
            challenge: auth.challenge(access, false),
            message: "authentication required".into(),
        }),
        Decision::Deny => Err(ApiError::Denied {
            challenge: matches!(who, Identity::Token(_)).then(|| auth.challenge(access, true)),
        }),
    }
}

async fn dispatch(
    st: &App,
    req: Request<Incoming>,
    peer: IpAddr,
    facts: &mut RequestFacts,
) -> HttpResult {
    let max_head = st.config.limits.max_header_bytes;
    let head_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len())
        + req
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if head_len > max_head {
        return Err(ApiError::HeadersTooLarge(max_head));
    }
    let endpoint = match route::parse(req.uri().path()) {
        Ok(Endpoint::Ui | Endpoint::Root) if !st.config.ui.enabled => {
            return Err(ApiError::NotFound)
        }
        Ok(e) => e,
        Err(RouteError::NotFound) => return Err(not_found(req.uri().path())),
        // A reference that is neither a tag nor a digest names nothing that
        // can exist: reading or deleting it is "unknown"; storing under it
        // stays invalid.
        Err(RouteError::BadReference(e)) if req.method() == Method::PUT => return Err(e.into()),
        Err(RouteError::BadReference(_)) => return Err(ApiError::ManifestUnknown),
        Err(RouteError::Invalid(e)) => return Err(e.into()),
    };
    facts.route = endpoint.label();
    let query = Query::parse(req.uri().query());
    facts.audited = audit::audited(req.method(), &endpoint, query.get("mount"));
    // Health probes are exempt from the rate limit: a balancer polling from
    // one address must not be throttled into marking the registry down.
    if let Endpoint::Health | Endpoint::Ready = endpoint {
        let probe = match endpoint {
            Endpoint::Health => crate::ops::Probe::Live,
            _ => crate::ops::Probe::Ready,
        };
        return Ok(crate::ops::probe(st, probe).await.map(Body::Bytes));
    }
    if let Some(r) = &st.rate_limiter {
        if let Err(wait) = r.check(peer) {
            return Err(ApiError::TooManyRequests {
                retry_after_secs: wait.as_secs().max(1),
            });
        }
    }
    if let Endpoint::Root = endpoint {
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            return Err(ApiError::MethodNotAllowed);
        }
        // A person who opens the registry's address in a browser.
        return Ok(empty_response(
            StatusCode::FOUND,
            &[("location", "/ui/".to_owned())],
        ));
    }
    if let Endpoint::Ui = endpoint {
        let path = req.uri().path();
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            return Err(ApiError::MethodNotAllowed);
        }
        let who = match &st.auth {
            // Basic credentials through the browser's own prompt.
            Some(auth) => Some((
                auth,
                authorize(st, auth, &req, &Access::Login, facts).await?,
            )),
            None => None,
        };
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| req.uri().authority().map(|a| a.to_string()))
            .unwrap_or_else(|| st.config.addr.to_string());
        return ui::serve(st, path, &query, ui::Viewer { who, host }).await;
    }
    if let Endpoint::AdminGc
    | Endpoint::AdminRetention
    | Endpoint::AdminRobots
    | Endpoint::AdminRobot { .. }
    | Endpoint::AdminQuotas
    | Endpoint::AdminAudit = endpoint
    {
        let mut admin = String::from("-");
        if let Some(auth) = &st.auth {
            let who = authorize(st, auth, &req, &Access::Login, facts).await?;
            if !auth.is_admin(&who) {
                return Err(ApiError::Denied { challenge: None });
            }
            admin = who.name().to_owned();
        }
        return match endpoint {
            Endpoint::AdminGc => admin::gc(st, req.method(), &query, &admin).await,
            Endpoint::AdminRobots => admin::robots(st, req, &admin, &peer.to_string()).await,
            Endpoint::AdminRobot { name } => {
                admin::robot(st, req.method(), &name, &admin, &peer.to_string()).await
            }
            Endpoint::AdminQuotas => admin::quotas(st, req.method()).await,
            Endpoint::AdminAudit => admin::audit(st, req.method(), &query).await,
            _ => admin::retention(st, req.method(), &query, &admin).await,
        };
    }
    if st.config.log.access {
        facts.repo = endpoint.repo().map(|n| n.to_string());
    }
    let method = req.method().clone();
    // Mounting reads the source repository: without pull there, the mount
    // is ignored and a plain upload starts, as the spec allows.
    let mut may_mount = true;
    if let Some(auth) = &st.auth {
        let who = authorize(st, auth, &req, &required_access(&method, &endpoint), facts).await?;
        if let (Endpoint::UploadStart { .. }, Some(from)) = (&endpoint, query.get("from")) {
            may_mount = auth.allows(&who, &Access::repo(from, Action::Pull));
        }
    }
    if let Some(name) = endpoint.repo() {
        if writes(&method, &endpoint) {
            if let Some(route) = st.proxies.route(name) {
                return Err(ApiError::Unsupported(format!(
                    "{name} is a pull-through cache of {}: it takes no pushes or deletes",
                    route.proxy.upstream_url
                )));
            }
        }
    }
    match (method, endpoint) {
        (Method::GET | Method::HEAD, Endpoint::Base) => Ok(json_response(StatusCode::OK, b"{}")),
        (Method::GET, Endpoint::Blob { name, digest }) => {
            blobs::get(st, &name, &digest, req.headers(), false).await
        }
        (Method::HEAD, Endpoint::Blob { name, digest }) => {
            blobs::get(st, &name, &digest, req.headers(), true).await
        }
        (Method::DELETE, Endpoint::Blob { name, digest }) => {
            let origin = origin_of(&req, peer, facts);
            blobs::delete(st, &name, &digest, &origin).await
        }
        (Method::POST, Endpoint::UploadStart { name }) => {
            let origin = origin_of(&req, peer, facts);
            uploads::start(st, &name, &query, req, may_mount, &origin).await
        }
        (Method::PATCH, Endpoint::Upload { name, id }) => uploads::patch(st, &name, &id, req).await,
        (Method::PUT, Endpoint::Upload { name, id }) => {
            uploads::put(st, &name, &id, &query, req).await
        }
        (Method::GET, Endpoint::Upload { name, id }) => uploads::status(st, &name, &id).await,
        (Method::DELETE, Endpoint::Upload { name, id }) => uploads::cancel(st, &name, &id).await,
        (Method::GET, Endpoint::Manifest { name, reference }) => {
            let origin = st
                .notifier
                .wants(crate::notify::EventKind::Pull)
                .then(|| origin_of(&req, peer, facts));
            manifests::get(st, &name, &reference, false, origin.as_ref()).await
        }
        (Method::HEAD, Endpoint::Manifest { name, reference }) => {
            manifests::get(st, &name, &reference, true, None).await
        }
        (Method::PUT, Endpoint::Manifest { name, reference }) => {
            let origin = origin_of(&req, peer, facts);
            manifests::put(st, &name, &reference, req, &origin).await
        }
        (Method::DELETE, Endpoint::Manifest { name, reference }) => {
            let origin = origin_of(&req, peer, facts);
            manifests::delete(st, &name, &reference, &origin).await
        }
        (Method::GET, Endpoint::Tags { name }) => listing::tags(st, name, &query).await,
        (Method::GET, Endpoint::Catalog) => listing::catalog(st, &query).await,
        (Method::GET, Endpoint::Referrers { name, digest }) => {
            listing::referrers(st, name, digest, &query).await
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// Who made a change, for its notification event.
fn origin_of(req: &Request<Incoming>, peer: IpAddr, facts: &RequestFacts) -> crate::notify::Origin {
    let text = |h: http::header::HeaderName| {
        req.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    crate::notify::Origin {
        id: uuid::Uuid::new_v4().to_string(),
        addr: peer.to_string(),
        host: match text(http::header::HOST) {
            h if h.is_empty() => req.uri().authority().map(|a| a.to_string()).unwrap_or(h),
            h => h,
        },
        method: req.method().to_string(),
        user_agent: text(http::header::USER_AGENT),
        actor: match facts.user.as_str() {
            "-" => String::new(),
            user => user.to_owned(),
        },
        identity: facts.identity.clone(),
    }
}

/// Whether a request would change a repository (refused under a proxy
/// prefix).
fn writes(method: &Method, ep: &Endpoint) -> bool {
    match ep {
        Endpoint::UploadStart { .. } | Endpoint::Upload { .. } => true,
        Endpoint::Blob { .. } | Endpoint::Manifest { .. } => {
            matches!(
                *method,
                Method::PUT | Method::DELETE | Method::POST | Method::PATCH
            )
        }
        _ => false,
    }
}

/// The 404 for a path that is no endpoint, in the terms of the resource it
/// looks like (an upload URL with a mangled id is an unknown upload).
fn not_found(path: &str) -> ApiError {
    if path.contains("/blobs/uploads/") {
        ApiError::BlobUploadUnknown
    } else if path.contains("/manifests/") {
        ApiError::ManifestUnknown
    } else if path.contains("/blobs/") {
        ApiError::BlobUnknown
    } else {
        ApiError::NotFound
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
