//! Listings answered from the metadata index: tags of a repository, the
//! catalog of repositories, and referrers of a manifest.

use super::body::Body;
use super::error::ApiError;
use super::query::Query;
use super::{App, HttpResult};
use crate::meta::Page;
use crate::oci::manifest::OCI_INDEX;
use crate::oci::{Digest, RepoName};
use http::{HeaderValue, Response};
use serde_json::json;

/// Largest page served when a client asks for more (or for everything).
const MAX_PAGE: usize = 100_000;

fn page_size(query: &Query) -> Result<usize, ApiError> {
    match query.get("n") {
        None | Some("") => Ok(MAX_PAGE),
        Some(n) => n
            .parse::<usize>()
            .map(|n| n.min(MAX_PAGE))
            .map_err(|_| ApiError::PaginationInvalid(format!("n={n} is not a number"))),
    }
}

fn json_reply(value: serde_json::Value, content_type: &'static str) -> Response<Body> {
    let bytes = serde_json::to_vec(&value).unwrap_or_default();
    let len = bytes.len();
    let mut r = Response::new(Body::full(bytes));
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}

fn add_next_link(r: &mut Response<Body>, path: &str, n: usize, page: &Page) {
    if !page.more {
        return;
    }
    if let Some(last) = page.items.last() {
        let link = format!("<{path}?n={n}&last={last}>; rel=\"next\"");
        if let Ok(v) = HeaderValue::from_str(&link) {
            r.headers_mut().insert(http::header::LINK, v);
        }
    }
}

pub(super) async fn tags(st: &App, name: RepoName, query: &Query) -> HttpResult {
    let n = page_size(query)?;
    let last = query.get("last").map(str::to_owned);
    let repo = name.clone();
    let page = st
        .meta
        .query(move |meta| {
            if !meta.repo_exists(&repo)? {
                return Ok(None);
            }
            meta.tags(&repo, last.as_deref(), n).map(Some)
        })
        .await?
        .ok_or(ApiError::NameUnknown)?;
    let mut r = json_reply(
        json!({ "name": name.as_str(), "tags": page.items }),
        "application/json",
    );
    add_next_link(&mut r, &format!("/v2/{name}/tags/list"), n, &page);
    Ok(r)
}

pub(super) async fn catalog(st: &App, query: &Query) -> HttpResult {
    let n = page_size(query)?;
    let last = query.get("last").map(str::to_owned);
    let page = st
        .meta
        .query(move |meta| meta.repos(last.as_deref(), n))
        .await?;
    let mut r = json_reply(json!({ "repositories": page.items }), "application/json");
    add_next_link(&mut r, "/v2/_catalog", n, &page);
    Ok(r)
}

pub(super) async fn referrers(
    st: &App,
    name: RepoName,
    subject: Digest,
    query: &Query,
) -> HttpResult {
    let filter = query
        .get("artifactType")
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    let wanted = filter.clone();
    let manifests = st
        .meta
        .query(move |meta| {
            let mut manifests = Vec::new();
            for d in meta.referrers(&name, &subject)? {
                let Some(rec) = meta.manifest(&name, &d)? else {
                    continue;
                };
                if wanted.is_some() && rec.artifact_type != wanted {
                    continue;
                }
                let mut desc = json!({
                    "mediaType": rec.media_type,
                    "digest": d.to_string(),
                    "size": rec.size,
                });
                if let Some(t) = &rec.artifact_type {
                    desc["artifactType"] = json!(t);
                }
                if let Some(a) = &rec.annotations {
                    desc["annotations"] = json!(a);
                }
                manifests.push(desc);
            }
            Ok(manifests)
        })
        .await?;
    let mut r = json_reply(
        json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests }),
        OCI_INDEX,
    );
    if filter.is_some() {
        r.headers_mut().insert(
            "oci-filters-applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(r)
}
