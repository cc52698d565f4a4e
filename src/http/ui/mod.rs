//! The read-only web UI at `/ui/`: repositories (size, tag count), a
//! repository's tags (newest push first, digest, size, an index's
//! platforms, a pull line each), a manifest's image configuration, layers,
//! tags and referrers grouped by artifact type, and for admins a
//! repository's activity (its audit records). Lists filter (`?q=`) and
//! sort by any column.
//!
//! Owns: the four pages, rendered on the server as plain HTML (one inline
//! stylesheet, a few lines of inline script for copy buttons and column
//! sorting; every page works without script), and their error pages.
//! Must not: write anything, load anything from outside the binary (no
//! CDN, no framework), or show a repository the viewer may not pull.

mod activity;
mod manifest;
mod repositories;
mod repository;

use super::body::Body;
use super::error::ApiError;
use super::query::Query;
use super::{App, HttpResult};
use crate::auth::{Access, Action, Identity};
use crate::oci::RepoName;
use http::{HeaderValue, Response, StatusCode};

/// Rows per page: the list stays fast with tens of thousands of names.
const PAGE: usize = 50;

/// Escapes text for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query value (names, tags and digests are ASCII).
use crate::calendar::utc_minute as when;
use crate::http::query::encode as enc;

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:0;color:#222}\
header{background:#123;color:#fff;padding:10px 20px}header a{color:#fff;text-decoration:none;font-weight:600}\
main{padding:16px 20px}table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #dde}\
th{background:#f3f5f8}th[data-sort]{cursor:pointer}th.n,td.n{text-align:right;font-variant-numeric:tabular-nums}\
code{font:12px ui-monospace,monospace;word-break:break-all}.scroll{overflow-x:auto}\
.pull{background:#f3f5f8;padding:8px;border-radius:4px;margin:8px 0}.pull button,td button{margin-left:8px}\
form.filter{margin:8px 0}form.filter input{padding:6px;width:min(320px,100%);box-sizing:border-box}\
dl.config{display:grid;grid-template-columns:max-content 1fr;gap:4px 12px}dl.config dt{font-weight:600}dl.config dd{margin:0}\
nav.pages{margin-top:12px}h2{font-size:16px;margin:20px 0 6px}.muted{color:#667}\
@media(max-width:600px){main{padding:10px}th,td{padding:4px}td.wide{display:none}th.wide{display:none}}";

/// Copy buttons, and sorting a table by a header that has `data-sort`
/// (numeric cells carry their number in `data-v`).
const SCRIPT: &str = "<script>document.addEventListener('click',e=>{\
const b=e.target.closest('button[data-copy]');\
if(b){navigator.clipboard&&navigator.clipboard.writeText(b.dataset.copy);b.textContent='copied';return;}\
const h=e.target.closest('th[data-sort]');if(!h)return;\
const t=h.closest('table'),i=[...h.parentNode.children].indexOf(h),up=h.dataset.dir!=='asc';\
const v=r=>{const c=r.children[i];return c.dataset.v!==undefined?Number(c.dataset.v):c.textContent.trim();};\
const rows=[...t.tBodies[0].rows].sort((a,c)=>{const x=v(a),y=v(c);return (x<y?-1:x>y?1:0)*(up?1:-1);});\
h.dataset.dir=up?'asc':'desc';rows.forEach(r=>t.tBodies[0].appendChild(r));});</script>";

fn page(title: &str, body: &str) -> Response<Body> {
    let html = format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>{} · Wharf</title>\
         <meta name=viewport content='width=device-width,initial-scale=1'><style>{STYLE}</style></head>\
         <body><header><a href='/ui/'>Wharf</a></header><main>{body}</main>{SCRIPT}</body></html>",
        esc(title)
    );
    html_response(StatusCode::OK, html)
}

fn html_response(status: StatusCode, html: String) -> Response<Body> {
    let len = html.len();
    let mut r = Response::new(Body::full(html.into_bytes()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    // Nothing from elsewhere, ever.
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'",
        ),
    );
    r
}

fn pull_line(line: &str) -> String {
    format!(
        "<div class=pull><code>{}</code><button data-copy=\"{}\">copy</button></div>",
        esc(line),
        esc(line)
    )
}

fn human(n: u64) -> String {
    crate::terminal::human_bytes(n)
}

fn short(digest: &str) -> String {
    match digest.split_once(':') {
        Some((alg, hex)) if hex.len() > 12 => format!("{alg}:{}", &hex[..12]),
        _ => digest.to_owned(),
    }
}

/// A list's filter box; the page filters on the server (`?q=`), so it
/// works without script.
fn filter_form(action: &str, hidden: &[(&str, &str)], q: &str, what: &str) -> String {
    let hidden: String = hidden
        .iter()
        .map(|(k, v)| format!("<input type=hidden name={k} value=\"{}\">", esc(v)))
        .collect();
    format!(
        "<form class=filter action=\"{action}\">{hidden}<input type=search name=q value=\"{}\" \
         placeholder=\"Filter {what}\" aria-label=\"Filter {what}\"></form>",
        esc(q)
    )
}

/// `&q=...` for a next-page link, when a filter is on.
fn filter_param(q: &str) -> String {
    match q.is_empty() {
        true => String::new(),
        false => format!("&amp;q={}", enc(q)),
    }
}

/// Whether `name` matches a filter: a case-insensitive substring.
fn matches(name: &str, q: &str) -> bool {
    q.is_empty() || name.to_lowercase().contains(&q.to_lowercase())
}

/// Who is looking: `None` when authentication is off (everyone sees all).
pub(super) struct Viewer<'a> {
    pub who: Option<(&'a crate::auth::Authenticator, Identity)>,
    /// `host[:port]` as the browser reached us, for the pull lines.
    pub host: String,
}

impl Viewer<'_> {
    fn may_pull(&self, repo: &str) -> bool {
        match &self.who {
            None => true,
            Some((auth, who)) => auth.allows(who, &Access::repo(repo, Action::Pull)),
        }
    }

    /// Whether the viewer may read the audit log.
    fn is_admin(&self) -> bool {
        match &self.who {
            None => true,
            Some((auth, who)) => auth.is_admin(who),
        }
    }
}

pub(super) async fn serve(st: &App, path: &str, query: &Query, viewer: Viewer<'_>) -> HttpResult {
    match path {
        "/ui" => {
            let mut r = html_response(StatusCode::MOVED_PERMANENTLY, String::new());
            r.headers_mut()
                .insert(http::header::LOCATION, HeaderValue::from_static("/ui/"));
            Ok(r)
        }
        "/ui/" => repositories::page(st, query, &viewer).await,
        "/ui/repo" => repository::page(st, query, &viewer).await,
        "/ui/manifest" => manifest::page(st, query, &viewer).await,
        "/ui/activity" => activity::page(st, query, &viewer).await,
        _ => Err(ApiError::NotFound),
    }
    .or_else(error_page)
}

/// A browser gets an error as a page, with the registry's status and
/// message; a 401 stays the registry's, whose challenge makes the browser
/// ask for a password.
fn error_page(e: ApiError) -> HttpResult {
    let status = e.status();
    if status == StatusCode::UNAUTHORIZED {
        return Err(e);
    }
    let title = status.canonical_reason().unwrap_or("Error");
    let body = format!(
        "<h1>{}</h1><p>{}</p><p><a href='/ui/'>All repositories</a></p>",
        esc(title),
        esc(&e.to_string())
    );
    let mut r = page(title, &body);
    *r.status_mut() = status;
    Ok(r)
}

/// The repository named by `?name=`, if the viewer may pull it.
fn named_repo(query: &Query, viewer: &Viewer<'_>) -> Result<RepoName, ApiError> {
    let name = RepoName::parse(query.get("name").unwrap_or(""))?;
    // Unknown and forbidden look alike: names are not disclosed.
    match viewer.may_pull(name.as_str()) {
        true => Ok(name),
        false => Err(ApiError::NameUnknown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_links_encoded() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(enc("ci/app"), "ci/app");
        assert_eq!(enc("a b&c"), "a%20b%26c");
    }

    #[test]
    fn times_read_as_dates() {
        assert_eq!(when(0), "1970-01-01 00:00 UTC");
        assert_eq!(when(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(
            when(1_796_083_200 + 3 * 3600 + 25 * 60),
            "2026-12-01 03:25 UTC"
        );
    }

    #[test]
    fn filters_are_case_insensitive_substrings() {
        assert!(matches("team-a/App", "app") && matches("x", ""));
        assert!(!matches("team-a/app", "web"));
    }
}
