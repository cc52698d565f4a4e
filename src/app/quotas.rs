//! `[[quota]]` as the application shows and enforces it before bytes
//! arrive: each quota's usage beside its limit (`/_wharf/quotas`, the
//! metrics, the UI), and the early refusal of an upload into a quota that
//! is already full, so a client is told before it sends a layer.
//!
//! Must not: decide the exact refusal (the metadata rules do, in the
//! transaction that would take a quota over its limit).

use super::App;
use crate::meta::MetaError;

/// One quota as an admin reads it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QuotaUsage {
    pub repositories: String,
    pub max_bytes: u64,
    pub used_bytes: u64,
}

/// Every configured quota with its usage; also sets the metrics.
pub async fn usage(app: &App) -> Result<Vec<QuotaUsage>, MetaError> {
    let quotas = app.meta.quotas();
    if quotas.is_empty() {
        return Ok(Vec::new());
    }
    let used = app.meta.query(|m| m.quota_usages()).await?;
    let list: Vec<QuotaUsage> = quotas
        .all()
        .iter()
        .map(|q| QuotaUsage {
            repositories: q.name.clone(),
            max_bytes: q.limit,
            used_bytes: used_by(&used, &q.name),
        })
        .collect();
    for q in &list {
        let label = [q.repositories.as_str()];
        app.metrics
            .quota_used
            .with_label_values(&label)
            .set(q.used_bytes.min(i64::MAX as u64) as i64);
        app.metrics
            .quota_limit
            .with_label_values(&label)
            .set(q.max_bytes.min(i64::MAX as u64) as i64);
    }
    Ok(list)
}

/// Why an upload into `repo` is refused before its body is read: a quota
/// covering it has no byte left. (A blob the quota holds already would
/// add nothing, but an upload does not say its digest up front; a mount
/// is decided in its transaction.)
pub async fn full_before_upload(app: &App, repo: &str) -> Result<Option<String>, MetaError> {
    let quotas = app.meta.quotas();
    if quotas.covering(repo).next().is_none() {
        return Ok(None);
    }
    let used = app.meta.query(|m| m.quota_usages()).await?;
    for q in quotas.covering(repo) {
        let u = used_by(&used, &q.name);
        if u >= q.limit {
            return Ok(Some(crate::meta::quota::refusal(q, u, 1)));
        }
    }
    Ok(None)
}

/// A quota's usage among the counted ones (0 when not counted yet).
fn used_by(used: &[(String, u64)], quota: &str) -> u64 {
    used.iter().find(|(n, _)| n == quota).map_or(0, |(_, b)| *b)
}
