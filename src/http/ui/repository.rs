//! `/ui/repo?name=`: a repository's tags, newest push first (equal times
//! by name), filtered by `?q=`, `PAGE` at a time (`?page=`), each with
//! its digest, size (an index's: its images' total), platforms and a pull
//! line to copy.

use super::manifest::{image_size, index_size, platforms};
use super::{
    enc, esc, filter_form, human, matches, named_repo, pull_line, short, when, Viewer, PAGE,
};
use crate::http::error::ApiError;
use crate::http::query::Query;
use crate::http::{App, HttpResult};
use crate::meta::{ManifestRecord, MetaError, MetaRead};
use crate::oci::{Digest, RepoName};
use std::collections::HashMap;
use std::fmt::Write as _;

/// Every tag of `repo` with its digest and record, newest push first.
/// Push time is the manifest's, so the order needs every tag: the cost
/// grows with the repository's tags (about a millisecond per thousand).
pub(super) fn tags_by_push(
    m: &dyn MetaRead,
    repo: &RepoName,
) -> Result<Vec<(String, Digest, ManifestRecord)>, MetaError> {
    let mut rows = Vec::new();
    let mut records: HashMap<Digest, Option<ManifestRecord>> = HashMap::new();
    let mut after: Option<String> = None;
    loop {
        let page = m.tags(repo, after.as_deref(), 1000)?;
        for t in &page.items {
            let Some(d) = m.tag(repo, t)? else {
                continue;
            };
            if !records.contains_key(&d) {
                records.insert(d.clone(), m.manifest(repo, &d)?);
            }
            if let Some(Some(rec)) = records.get(&d) {
                rows.push((t.clone(), d, rec.clone()));
            }
        }
        after = page.items.last().cloned();
        if !page.more {
            break;
        }
    }
    rows.sort_by(|a, b| b.2.created.cmp(&a.2.created).then(a.0.cmp(&b.0)));
    Ok(rows)
}

pub(super) async fn page(st: &App, query: &Query, viewer: &Viewer<'_>) -> HttpResult {
    let name = named_repo(query, viewer)?;
    let q = query.get("q").unwrap_or("").to_owned();
    let at: usize = query.get("page").and_then(|p| p.parse().ok()).unwrap_or(0);
    let repo = name.clone();
    let all = st
        .meta
        .query(move |m| match m.repo_exists(&repo)? {
            false => Ok(None),
            true => tags_by_push(m, &repo).map(Some),
        })
        .await?
        .ok_or(ApiError::NameUnknown)?;
    let kept: Vec<_> = all.into_iter().filter(|(t, _, _)| matches(t, &q)).collect();
    let has_next = kept.len() > (at + 1) * PAGE;
    let rows: Vec<_> = kept.iter().skip(at * PAGE).take(PAGE).collect();
    let mut body = format!("<h1>{}</h1>", esc(name.as_str()));
    if viewer.is_admin() {
        body.push_str(&format!(
            "<p><a href=\"/ui/activity?name={}\">Activity</a></p>",
            super::enc(name.as_str())
        ));
    }
    if let Some((newest, _, _)) = kept.first() {
        body.push_str(&pull_line(&format!(
            "docker pull {}/{}:{}",
            viewer.host, name, newest
        )));
    }
    body.push_str(&filter_form(
        "/ui/repo",
        &[("name", name.as_str())],
        &q,
        "tags",
    ));
    body.push_str(
        "<div class=scroll><table id=tags><thead><tr><th data-sort>Tag</th><th class=wide>Digest</th>\
         <th class=n data-sort>Size</th><th data-sort>Pushed</th><th class=wide>Platforms</th>\
         <th>Pull</th></tr></thead><tbody>",
    );
    for (tag, digest, rec) in rows {
        let bytes = st.storage.manifest_bytes(digest).await?.unwrap_or_default();
        let (size, plats) = match crate::oci::manifest::is_index_type(&rec.media_type) {
            false => (image_size(&bytes), String::new()),
            true => (index_size(st, &bytes).await, platforms(&bytes).join(", ")),
        };
        let pull = format!("docker pull {}/{}:{}", viewer.host, name, tag);
        let _ = write!(
            body,
            "<tr><td>{}</td><td class=wide><a href=\"/ui/manifest?name={}&amp;digest={}\"><code>{}</code></a></td>\
             <td class=n data-v={size}>{}</td><td data-v={}>{}</td><td class=wide>{}</td>\
             <td><button data-copy=\"{}\" title=\"{}\">copy pull</button></td></tr>",
            esc(tag),
            enc(name.as_str()),
            enc(&digest.to_string()),
            esc(&short(&digest.to_string())),
            human(size),
            rec.created,
            when(rec.created),
            esc(&plats),
            esc(&pull),
            esc(&pull)
        );
    }
    body.push_str("</tbody></table></div>");
    if kept.is_empty() {
        body.push_str(match q.is_empty() {
            true => "<p class=muted>No tags.</p>",
            false => "<p class=muted>No tag matches.</p>",
        });
    }
    if has_next {
        let _ = write!(
            body,
            "<nav class=pages><a rel=next href=\"/ui/repo?name={}{}&amp;page={}\">Next page</a></nav>",
            enc(name.as_str()),
            super::filter_param(&q),
            at + 1
        );
    }
    Ok(super::page(name.as_str(), &body))
}
