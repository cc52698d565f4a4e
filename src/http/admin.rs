//! Operator endpoints outside the OCI namespace (`/_wharf/...`; no
//! repository name can start with `_`, so none can collide).
//!
//! `POST /_wharf/gc[?dry_run=true][&grace_secs=N]` runs garbage collection
//! now and answers its report as JSON; `POST /_wharf/retention[?dry_run=true]`
//! applies the retention policies (or only reports) and answers what was
//! deleted and why. `/_wharf/robots` lists (`GET`) and creates (`POST`)
//! robot accounts, `DELETE /_wharf/robots/NAME` removes one.

use super::body::Body;
use super::error::ApiError;
use super::query::Query;
use super::{App, HttpResult};
use crate::gc;
use http::{HeaderValue, Method, Response};
use std::time::Duration;

pub(super) async fn gc(st: &App, method: &Method, query: &Query, admin: &str) -> HttpResult {
    if method != Method::POST {
        return Err(ApiError::MethodNotAllowed);
    }
    let Some(_running) = st.start_gc_run() else {
        return Err(ApiError::Unavailable(
            "garbage collection is already running".into(),
        ));
    };
    let mut opts = gc::GcOptions::from_config(&st.config, query.get("dry_run") == Some("true"));
    if let Some(g) = query.get("grace_secs") {
        let secs = g
            .parse()
            .map_err(|_| ApiError::Unsupported(format!("grace_secs={g} is not a number")))?;
        opts.grace = Duration::from_secs(secs);
    }
    let result = gc::collect(&st.meta, st.storage.as_ref(), &opts).await;
    gc::record(&st.metrics, &result);
    let outcome = match &result {
        Ok(report) => report.to_string(),
        Err(e) => format!("failed: {e}"),
    };
    let how = if opts.dry_run { "dry run" } else { "requested" };
    let r = crate::app::audit::record(admin, "gc", "", how, &outcome);
    crate::app::audit::write(st, r).await;
    let report = result?;
    tracing::info!(%report, "garbage collection (requested)");
    Ok(json_response(
        serde_json::to_vec(&report).unwrap_or_default(),
    ))
}

pub(super) async fn retention(st: &App, method: &Method, query: &Query, admin: &str) -> HttpResult {
    if method != Method::POST {
        return Err(ApiError::MethodNotAllowed);
    }
    // Retention and collection share the lock: one decides what is
    // unreferenced, the other frees it.
    let Some(_running) = st.start_gc_run() else {
        return Err(ApiError::Unavailable(
            "garbage collection or retention is already running".into(),
        ));
    };
    let dry_run = query.get("dry_run") == Some("true");
    // Pulls noted so far count as pulls.
    st.pulls.flush(&st.meta).await?;
    let result = crate::retention::run(&st.meta, &st.policies, dry_run).await;
    let outcome = match &result {
        Ok(report) => report.to_string(),
        Err(e) => format!("failed: {e}"),
    };
    let how = if dry_run { "dry run" } else { "requested" };
    let r = crate::app::audit::record(admin, "retention", "", how, &outcome);
    crate::app::audit::write(st, r).await;
    let report = result?;
    tracing::info!(dry_run = report.dry_run, "retention (requested): {report}");
    Ok(json_response(
        serde_json::to_vec(&report).unwrap_or_default(),
    ))
}

/// The largest request body an operator endpoint reads.
const MAX_ADMIN_BODY: usize = 64 * 1024;

/// A JSON request body of at most [`MAX_ADMIN_BODY`], read within the
/// body-idle limit.
async fn read_json<T: serde::de::DeserializeOwned>(
    st: &App,
    body: hyper::body::Incoming,
) -> Result<T, ApiError> {
    use http_body_util::BodyExt as _;
    let limited = http_body_util::Limited::new(body, MAX_ADMIN_BODY);
    let idle = Duration::from_secs(st.config.limits.body_idle_timeout_secs.max(1));
    let bytes = match tokio::time::timeout(idle, limited.collect()).await {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(e)) => return Err(ApiError::BadRequest(format!("request body: {e}"))),
        Err(_) => {
            return Err(ApiError::BadRequest(format!(
                "request body: nothing for {} s",
                idle.as_secs()
            )))
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest(format!("request body: {e}")))
}

/// A robot account as listed: never its secret or its hash.
fn robot_json(r: &crate::meta::RobotRecord) -> serde_json::Value {
    serde_json::json!({
        "name": format!("{}{}", crate::auth::robot::PREFIX, r.name),
        "repositories": r.repositories,
        "actions": r.actions,
        "created_at": r.created,
        "expires_at": r.expires_at,
        "created_by": r.created_by,
    })
}

pub(super) async fn robots(
    st: &App,
    req: http::Request<hyper::body::Incoming>,
    admin: &str,
    addr: &str,
) -> HttpResult {
    use crate::app::robots;
    match *req.method() {
        Method::GET => {
            let list: Vec<_> = robots::list(st).await?.iter().map(robot_json).collect();
            Ok(json_response(
                serde_json::to_vec(&serde_json::json!({ "robots": list })).unwrap_or_default(),
            ))
        }
        Method::POST => {
            let new: robots::NewRobot = read_json(st, req.into_body()).await?;
            let (record, secret) = robots::create(st, &new, admin, addr).await?;
            tracing::info!(robot = %record.name, by = admin, "robot account created");
            let mut json = robot_json(&record);
            json["secret"] = serde_json::Value::String(secret);
            let mut r = json_response(serde_json::to_vec(&json).unwrap_or_default());
            *r.status_mut() = http::StatusCode::CREATED;
            Ok(r)
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

pub(super) async fn quotas(st: &App, method: &Method) -> HttpResult {
    if method != Method::GET {
        return Err(ApiError::MethodNotAllowed);
    }
    let list = crate::app::quotas::usage(st).await?;
    Ok(json_response(
        serde_json::to_vec(&serde_json::json!({ "quotas": list })).unwrap_or_default(),
    ))
}

/// `GET /_wharf/audit?since=&until=&repository=&actor=&limit=&before=`:
/// records newest first; `since`/`until` are UTC dates (`2026-12-05`,
/// `2026-12-05T15:20:00Z`) or unix seconds; `before` is the last id of the
/// previous page (the answer's `next` link carries it).
pub(super) async fn audit(st: &App, method: &Method, query: &Query) -> HttpResult {
    if method != Method::GET {
        return Err(ApiError::MethodNotAllowed);
    }
    let time = |key: &str| -> Result<u64, ApiError> {
        match query.get(key) {
            None => Ok(0),
            Some(v) => crate::calendar::parse_utc(v)
                .map(|s| s.saturating_mul(1000))
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "{key}={v}: give a UTC date (2026-12-05, 2026-12-05T15:20:00Z) or unix seconds"
                    ))
                }),
        }
    };
    let number = |key: &str| -> Result<Option<u64>, ApiError> {
        query
            .get(key)
            .map(|v| {
                v.parse()
                    .map_err(|_| ApiError::BadRequest(format!("{key}={v} is not a number")))
            })
            .transpose()
    };
    let mut until_ms = time("until")?;
    // A date alone (no time of day) means the whole of that day.
    if query
        .get("until")
        .is_some_and(|u| u.contains('-') && !u.contains(':'))
    {
        until_ms += 86_400_000 - 1;
    }
    let q = crate::meta::AuditQuery {
        since_ms: time("since")?,
        until_ms,
        repository: query.get("repository").map(str::to_owned),
        actor: query.get("actor").map(str::to_owned),
        before_id: number("before")?,
        limit: number("limit")?.unwrap_or(100) as usize,
    };
    let limit = q.limit.clamp(1, crate::app::audit::MAX_PAGE);
    let records = crate::app::audit::read(st, q).await?;
    let next = (records.len() >= limit)
        .then(|| records.last().map(|r| r.id))
        .flatten()
        .map(|id| {
            let mut kept: Vec<String> = ["since", "until", "repository", "actor", "limit"]
                .iter()
                .filter_map(|k| {
                    query
                        .get(k)
                        .map(|v| format!("{k}={}", crate::http::query::encode(v)))
                })
                .collect();
            kept.push(format!("before={id}"));
            format!("/_wharf/audit?{}", kept.join("&"))
        });
    let list: Vec<serde_json::Value> = records.iter().map(audit_json).collect();
    let mut r = json_response(
        serde_json::to_vec(&serde_json::json!({ "records": list, "next": next }))
            .unwrap_or_default(),
    );
    if let Some(n) = next {
        if let Ok(v) = HeaderValue::from_str(&format!("<{n}>; rel=\"next\"")) {
            r.headers_mut().insert(http::header::LINK, v);
        }
    }
    Ok(r)
}

fn audit_json(r: &crate::meta::AuditRecord) -> serde_json::Value {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(r.at_ms);
    serde_json::json!({
        "id": r.id,
        "time": crate::calendar::rfc3339(t),
        "actor": r.actor,
        "identity": r.identity,
        "client": r.addr,
        "action": r.action,
        "repository": r.repository,
        "reference": r.reference,
        "result": r.result,
    })
}

pub(super) async fn robot(
    st: &App,
    method: &Method,
    name: &str,
    admin: &str,
    addr: &str,
) -> HttpResult {
    if method != Method::DELETE {
        return Err(ApiError::MethodNotAllowed);
    }
    crate::app::robots::delete(st, name, admin, addr).await?;
    tracing::info!(robot = name, by = admin, "robot account deleted");
    let mut r = Response::new(Body::Empty);
    *r.status_mut() = http::StatusCode::NO_CONTENT;
    Ok(r)
}

fn json_response(body: Vec<u8>) -> Response<Body> {
    let len = body.len();
    let mut r = Response::new(Body::full(body));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}
