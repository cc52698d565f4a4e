//! The read-only web UI at `/ui/`: repositories (size, tag count), a
//! repository's tags (digest, size, push time, an index's platforms), a
//! manifest's layers, config and referrers grouped by artifact type, and a
//! `docker pull` line to copy.
//!
//! Owns: the three pages, rendered on the server as plain HTML (one inline
//! stylesheet, one line of inline script for the copy buttons).
//! Must not: write anything, load anything from outside the binary (no
//! CDN, no framework), or show a repository the viewer may not pull.

use super::body::Body;
use super::error::ApiError;
use super::query::Query;
use super::{App, HttpResult};
use crate::auth::{Access, Action, Identity};
use crate::meta::ManifestRecord;
use crate::oci::{Digest, RepoName};
use http::{HeaderValue, Response, StatusCode};
use std::collections::BTreeMap;
use std::fmt::Write as _;

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
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'/' | b':' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// Unix seconds as `YYYY-MM-DD HH:MM UTC`.
fn when(secs: u64) -> String {
    let (y, m, d, h, mi, _) = crate::calendar::civil(secs);
    format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02} UTC")
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1b1f24}\
header{background:#123;color:#fff;padding:10px 20px}header a{color:#fff;text-decoration:none;font-weight:600}\
main{padding:16px 20px}table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #dde}\
th{background:#f3f5f8}td.n{text-align:right;font-variant-numeric:tabular-nums}code{font:12px ui-monospace,monospace}\
.pull{background:#f3f5f8;padding:8px;border-radius:4px;margin:8px 0}.pull button{margin-left:8px}\
nav.pages{margin-top:12px}h2{font-size:16px;margin:20px 0 6px}.muted{color:#667}";

/// One line of script: copy the pull line beside the button.
const COPY: &str = "<script>document.addEventListener('click',e=>{const b=e.target.closest('button[data-copy]');\
if(b){navigator.clipboard&&navigator.clipboard.writeText(b.dataset.copy);b.textContent='copied';}});</script>";

fn page(title: &str, body: &str) -> Response<Body> {
    let html = format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>{} · Wharf</title>\
         <meta name=viewport content='width=device-width,initial-scale=1'><style>{STYLE}</style></head>\
         <body><header><a href='/ui/'>Wharf</a></header><main>{body}</main>{COPY}</body></html>",
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
}

pub(super) async fn serve(st: &App, path: &str, query: &Query, viewer: Viewer<'_>) -> HttpResult {
    match path {
        "/ui" => {
            let mut r = html_response(StatusCode::MOVED_PERMANENTLY, String::new());
            r.headers_mut()
                .insert(http::header::LOCATION, HeaderValue::from_static("/ui/"));
            Ok(r)
        }
        "/ui/" => repositories(st, query, &viewer).await,
        "/ui/repo" => repository(st, query, &viewer).await,
        "/ui/manifest" => manifest(st, query, &viewer).await,
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

async fn repositories(st: &App, query: &Query, viewer: &Viewer<'_>) -> HttpResult {
    let after = query.get("after").map(str::to_owned);
    // Walk the catalog until a page of names the viewer may pull, and one
    // more, which says whether a next page exists.
    let mut allowed = Vec::new();
    let mut cursor = after.clone();
    let mut more = true;
    while allowed.len() <= PAGE && more {
        let from = cursor.clone();
        let p = st
            .meta
            .query(move |m| m.repos(from.as_deref(), 500))
            .await?;
        more = p.more;
        cursor = p.items.last().cloned();
        allowed.extend(p.items.into_iter().filter(|n| viewer.may_pull(n)));
    }
    let has_next = allowed.len() > PAGE;
    allowed.truncate(PAGE);
    let names = allowed.clone();
    let stats = st
        .meta
        .query(move |m| {
            names
                .iter()
                .map(|n| m.repo_stats(n))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    let mut body = String::from("<h1>Repositories</h1><table id=repositories><tr><th>Repository</th><th>Tags</th><th>Size</th></tr>");
    for (name, (tags, bytes)) in allowed.iter().zip(stats) {
        let _ = write!(
            body,
            "<tr><td><a href=\"/ui/repo?name={}\">{}</a></td><td class=n>{tags}</td><td class=n>{}</td></tr>",
            enc(name),
            esc(name),
            human(bytes)
        );
    }
    body.push_str("</table>");
    if allowed.is_empty() {
        body.push_str("<p class=muted>No repositories yet.</p>");
    }
    if has_next {
        if let Some(last) = allowed.last() {
            let _ = write!(
                body,
                "<nav class=pages><a rel=next href=\"/ui/?after={}\">Next page</a></nav>",
                enc(last)
            );
        }
    }
    Ok(page("Repositories", &body))
}

/// An index entry's platform (`linux/arm64/v8`), if it names one.
fn platform(entry: &serde_json::Value) -> Option<String> {
    let p = &entry["platform"];
    let (os, arch) = (p["os"].as_str()?, p["architecture"].as_str()?);
    Some(match p["variant"].as_str() {
        Some(v) => format!("{os}/{arch}/{v}"),
        None => format!("{os}/{arch}"),
    })
}

/// Platforms an index lists, from its bytes.
fn platforms(bytes: &[u8]) -> Vec<String> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Vec::new();
    };
    v["manifests"]
        .as_array()
        .map(|ms| ms.iter().filter_map(platform).collect())
        .unwrap_or_default()
}

async fn repository(st: &App, query: &Query, viewer: &Viewer<'_>) -> HttpResult {
    let name = named_repo(query, viewer)?;
    let after = query.get("after").map(str::to_owned);
    let repo = name.clone();
    let (rows, has_next): (Vec<(String, Digest, ManifestRecord)>, bool) = st
        .meta
        .query(move |m| {
            if !m.repo_exists(&repo)? {
                return Ok(None);
            }
            let page = m.tags(&repo, after.as_deref(), PAGE)?;
            let mut rows = Vec::new();
            let more = page.more;
            for t in page.items {
                if let Some(d) = m.tag(&repo, &t)? {
                    if let Some(rec) = m.manifest(&repo, &d)? {
                        rows.push((t, d, rec));
                    }
                }
            }
            Ok(Some((rows, more)))
        })
        .await?
        .ok_or(ApiError::NameUnknown)?;
    let mut body = format!("<h1>{}</h1>", esc(name.as_str()));
    body.push_str("<table id=tags><tr><th>Tag</th><th>Digest</th><th>Size</th><th>Pushed</th><th>Platforms</th></tr>");
    for (tag, digest, rec) in &rows {
        // An image's size is its config and layers; an index lists
        // platforms instead.
        let bytes = st.storage.manifest_bytes(digest).await?.unwrap_or_default();
        let (size, plats) = match crate::oci::manifest::is_index_type(&rec.media_type) {
            false => (human(image_size(&bytes)), String::new()),
            true => (String::new(), platforms(&bytes).join(", ")),
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td><a href=\"/ui/manifest?name={}&amp;digest={}\"><code>{}</code></a></td>\
             <td class=n>{}</td><td>{}</td><td>{}</td></tr>",
            esc(tag),
            enc(name.as_str()),
            enc(&digest.to_string()),
            esc(&short(&digest.to_string())),
            size,
            when(rec.created),
            esc(&plats)
        );
    }
    body.push_str("</table>");
    if rows.is_empty() {
        body.push_str("<p class=muted>No tags.</p>");
    }
    if let Some((first, _, _)) = rows.first() {
        body.push_str(&pull_line(&format!(
            "docker pull {}/{}:{}",
            viewer.host, name, first
        )));
    }
    if has_next {
        if let Some((last, _, _)) = rows.last() {
            let _ = write!(
                body,
                "<nav class=pages><a rel=next href=\"/ui/repo?name={}&amp;after={}\">Next page</a></nav>",
                enc(name.as_str()),
                enc(last)
            );
        }
    }
    Ok(page(name.as_str(), &body))
}

/// An image manifest's config plus layers, in bytes.
fn image_size(bytes: &[u8]) -> u64 {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return 0;
    };
    let layers: u64 = v["layers"]
        .as_array()
        .map(|ls| ls.iter().filter_map(|l| l["size"].as_u64()).sum())
        .unwrap_or(0);
    layers + v["config"]["size"].as_u64().unwrap_or(0)
}

fn short(digest: &str) -> String {
    match digest.split_once(':') {
        Some((alg, hex)) if hex.len() > 12 => format!("{alg}:{}", &hex[..12]),
        _ => digest.to_owned(),
    }
}

async fn manifest(st: &App, query: &Query, viewer: &Viewer<'_>) -> HttpResult {
    let name = named_repo(query, viewer)?;
    let digest = Digest::parse(query.get("digest").unwrap_or(""))?;
    let (repo, d) = (name.clone(), digest.clone());
    let (record, referrers) = st
        .meta
        .query(move |m| {
            let Some(rec) = m.manifest(&repo, &d)? else {
                return Ok(None);
            };
            let mut refs = Vec::new();
            for r in m.referrers(&repo, &d)? {
                if let Some(rr) = m.manifest(&repo, &r)? {
                    refs.push((r, rr));
                }
            }
            Ok(Some((rec, refs)))
        })
        .await?
        .ok_or(ApiError::ManifestUnknown)?;
    let bytes = st
        .storage
        .manifest_bytes(&digest)
        .await?
        .ok_or(ApiError::ManifestUnknown)?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let mut body = format!(
        "<h1><a href=\"/ui/repo?name={}\">{}</a> @ <code>{}</code></h1><p class=muted>{} · {} · pushed {}</p>",
        enc(name.as_str()),
        esc(name.as_str()),
        esc(&short(&digest.to_string())),
        esc(&record.media_type),
        human(record.size),
        when(record.created)
    );
    body.push_str(&pull_line(&format!(
        "docker pull {}/{}@{}",
        viewer.host, name, digest
    )));
    if let Some(children) = v["manifests"].as_array() {
        body.push_str("<h2>Platforms</h2><table id=platforms><tr><th>Platform</th><th>Digest</th><th>Size</th></tr>");
        for c in children {
            let d = c["digest"].as_str().unwrap_or("");
            let media_type = c["mediaType"].as_str().unwrap_or("");
            // BuildKit's cache index lists blobs, which have no page.
            let (p, digest_cell) = if crate::oci::manifest::names_a_manifest(media_type) {
                (
                    platform(c).unwrap_or_default(),
                    format!(
                        "<a href=\"/ui/manifest?name={}&amp;digest={}\"><code>{}</code></a>",
                        enc(name.as_str()),
                        enc(d),
                        esc(&short(d))
                    ),
                )
            } else {
                (
                    media_type.to_owned(),
                    format!("<code>{}</code>", esc(&short(d))),
                )
            };
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td class=n>{}</td></tr>",
                esc(&p),
                digest_cell,
                human(c["size"].as_u64().unwrap_or(0))
            );
        }
        body.push_str("</table>");
    }
    if let Some(cfg) = v.get("config").filter(|c| c.is_object()) {
        let _ = write!(
            body,
            "<h2>Config</h2><table id=config><tr><th>Media type</th><th>Digest</th><th>Size</th></tr>\
             <tr><td>{}</td><td><code>{}</code></td><td class=n>{}</td></tr></table>",
            esc(cfg["mediaType"].as_str().unwrap_or("")),
            esc(cfg["digest"].as_str().unwrap_or("")),
            human(cfg["size"].as_u64().unwrap_or(0))
        );
    }
    if let Some(layers) = v["layers"].as_array() {
        let total: u64 = layers.iter().filter_map(|l| l["size"].as_u64()).sum();
        let _ = write!(
            body,
            "<h2>Layers ({}, {})</h2><table id=layers><tr><th>#</th><th>Media type</th><th>Digest</th><th>Size</th></tr>",
            layers.len(),
            human(total)
        );
        for (i, l) in layers.iter().enumerate() {
            let _ = write!(
                body,
                "<tr><td class=n>{}</td><td>{}</td><td><code>{}</code></td><td class=n>{}</td></tr>",
                i + 1,
                esc(l["mediaType"].as_str().unwrap_or("")),
                esc(l["digest"].as_str().unwrap_or("")),
                human(l["size"].as_u64().unwrap_or(0))
            );
        }
        body.push_str("</table>");
    }
    let mut groups: BTreeMap<String, Vec<(Digest, ManifestRecord)>> = BTreeMap::new();
    for (d, rec) in referrers {
        let kind = rec
            .artifact_type
            .clone()
            .unwrap_or_else(|| rec.media_type.clone());
        groups.entry(kind).or_default().push((d, rec));
    }
    body.push_str("<h2>Referrers</h2>");
    if groups.is_empty() {
        body.push_str("<p class=muted>No signatures, SBOMs or other referrers.</p>");
    }
    for (kind, items) in &groups {
        let _ = write!(
            body,
            "<h3 class=artifact-type>{}</h3><table class=referrers><tr><th>Digest</th><th>Size</th><th>Pushed</th></tr>",
            esc(kind)
        );
        for (d, rec) in items {
            let _ = write!(
                body,
                "<tr><td><a href=\"/ui/manifest?name={}&amp;digest={}\"><code>{}</code></a></td><td class=n>{}</td><td>{}</td></tr>",
                enc(name.as_str()),
                enc(&d.to_string()),
                esc(&short(&d.to_string())),
                human(rec.size),
                when(rec.created)
            );
        }
        body.push_str("</table>");
    }
    Ok(page(
        &format!("{name}@{}", short(&digest.to_string())),
        &body,
    ))
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
    fn platforms_of_an_index() {
        let index = br#"{"manifests":[{"platform":{"os":"linux","architecture":"amd64"}},
            {"platform":{"os":"linux","architecture":"arm64","variant":"v8"}},{"digest":"x"}]}"#;
        assert_eq!(platforms(index), vec!["linux/amd64", "linux/arm64/v8"]);
        assert!(platforms(b"not json").is_empty());
    }
}
