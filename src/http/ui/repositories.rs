//! `/ui/`: the repositories the viewer may pull, a page at a time in name
//! order, filtered by `?q=`, and the usage of the `[[quota]]`s covering
//! them.

use super::{enc, esc, filter_form, human, matches, Viewer, PAGE};
use crate::http::query::Query;
use crate::http::{App, HttpResult};
use std::fmt::Write as _;

pub(super) async fn page(st: &App, query: &Query, viewer: &Viewer<'_>) -> HttpResult {
    let after = query.get("after").map(str::to_owned);
    let q = query.get("q").unwrap_or("").to_owned();
    // Walk the catalog until a page of names the viewer may pull (and the
    // filter keeps), and one more, which says whether a next page exists.
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
        allowed.extend(
            p.items
                .into_iter()
                .filter(|n| matches(n, &q) && viewer.may_pull(n)),
        );
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
    let mut body = String::from("<h1>Repositories</h1>");
    body.push_str(&filter_form("/ui/", &[], &q, "repositories"));
    body.push_str(
        "<div class=scroll><table id=repositories><thead><tr><th data-sort>Repository</th>\
         <th class=n data-sort>Tags</th><th class=n data-sort>Size</th></tr></thead><tbody>",
    );
    for (name, (tags, bytes)) in allowed.iter().zip(stats) {
        let _ = write!(
            body,
            "<tr><td><a href=\"/ui/repo?name={}\">{}</a></td><td class=n data-v={tags}>{tags}</td>\
             <td class=n data-v={bytes}>{}</td></tr>",
            enc(name),
            esc(name),
            human(bytes)
        );
    }
    body.push_str("</tbody></table></div>");
    let quotas = st.meta.quotas();
    let shown: Vec<_> = crate::app::quotas::usage(st)
        .await?
        .into_iter()
        .filter(|u| {
            allowed
                .iter()
                .any(|n| quotas.covering(n).any(|q| q.name == u.repositories))
        })
        .collect();
    if !shown.is_empty() {
        body.push_str(
            "<h2>Quotas</h2><div class=scroll><table id=quotas><thead><tr><th>Repositories</th>\
             <th class=n>Used</th><th class=n>Limit</th><th class=n>Used %</th></tr></thead><tbody>",
        );
        for u in shown {
            let _ = write!(
                body,
                "<tr><td>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{:.1}</td></tr>",
                esc(&u.repositories),
                human(u.used_bytes),
                human(u.max_bytes),
                u.used_bytes as f64 * 100.0 / u.max_bytes.max(1) as f64
            );
        }
        body.push_str("</tbody></table></div>");
    }
    if allowed.is_empty() {
        body.push_str(match q.is_empty() {
            true => "<p class=muted>No repositories yet.</p>",
            false => "<p class=muted>No repository matches.</p>",
        });
    }
    if has_next {
        if let Some(last) = allowed.last() {
            let _ = write!(
                body,
                "<nav class=pages><a rel=next href=\"/ui/?after={}{}\">Next page</a></nav>",
                enc(last),
                super::filter_param(&q)
            );
        }
    }
    Ok(super::page("Repositories", &body))
}
