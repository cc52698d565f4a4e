//! `/ui/activity?name=REPO`: a repository's audit records, newest first
//! (admins only, or everyone when authentication is off), with a link to
//! older ones.

use super::{enc, esc, named_repo, Viewer};
use crate::http::error::ApiError;
use crate::http::query::Query;
use crate::http::{App, HttpResult};
use std::fmt::Write as _;

/// Records per page.
const ROWS: usize = 100;

pub(super) async fn page(st: &App, query: &Query, viewer: &Viewer<'_>) -> HttpResult {
    if !viewer.is_admin() {
        return Err(ApiError::Denied { challenge: None });
    }
    let name = named_repo(query, viewer)?;
    let before_id = match query.get("before") {
        Some(b) => Some(
            b.parse()
                .map_err(|_| ApiError::BadRequest(format!("before={b} is not a number")))?,
        ),
        None => None,
    };
    let records = crate::app::audit::read(
        st,
        crate::meta::AuditQuery {
            repository: Some(name.to_string()),
            before_id,
            limit: ROWS,
            ..Default::default()
        },
    )
    .await?;
    let mut body = format!(
        "<h1>Activity: <a href=\"/ui/repo?name={}\">{}</a></h1>",
        enc(name.as_str()),
        esc(name.as_str())
    );
    body.push_str(
        "<div class=scroll><table id=activity><thead><tr><th>Time (UTC)</th><th>Who</th>\
         <th>Action</th><th>Reference</th><th>Result</th><th>Client</th></tr></thead><tbody>",
    );
    for r in &records {
        let who = match r.identity.as_str() {
            "" => esc(&r.actor),
            id => format!("{} <span class=muted>{}</span>", esc(&r.actor), esc(id)),
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{who}</td><td>{}</td><td class=wide>{}</td><td>{}</td><td>{}</td></tr>",
            crate::calendar::utc_minute(r.at_ms / 1000),
            esc(&r.action),
            esc(&r.reference),
            esc(&r.result),
            esc(&r.addr)
        );
    }
    body.push_str("</tbody></table></div>");
    if records.is_empty() {
        body.push_str("<p class=muted>Nothing recorded.</p>");
    }
    if let (true, Some(last)) = (records.len() >= ROWS, records.last()) {
        let _ = write!(
            body,
            "<nav class=pages><a rel=next href=\"/ui/activity?name={}&before={}\">Older</a></nav>",
            enc(name.as_str()),
            last.id
        );
    }
    Ok(super::page("Activity", &body))
}
