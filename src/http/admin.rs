//! Operator endpoints outside the OCI namespace (`/_wharf/...`; no
//! repository name can start with `_`, so none can collide).
//!
//! `POST /_wharf/gc[?dry_run=true][&grace_secs=N]` runs garbage collection
//! now and answers its report as JSON; `POST /_wharf/retention[?dry_run=true]`
//! applies the retention policies (or only reports) and answers what was
//! deleted and why.

use super::body::Body;
use super::error::ApiError;
use super::query::Query;
use super::{App, HttpResult};
use crate::gc;
use http::{HeaderValue, Method, Response};
use std::time::Duration;

pub(super) async fn gc(st: &App, method: &Method, query: &Query) -> HttpResult {
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
    let report = result?;
    tracing::info!(%report, "garbage collection (requested)");
    Ok(json_response(
        serde_json::to_vec(&report).unwrap_or_default(),
    ))
}

pub(super) async fn retention(st: &App, method: &Method, query: &Query) -> HttpResult {
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
    let report = crate::retention::run(&st.meta, &st.policies, dry_run).await?;
    tracing::info!(dry_run = report.dry_run, "retention (requested): {report}");
    Ok(json_response(
        serde_json::to_vec(&report).unwrap_or_default(),
    ))
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
