//! The audit log as the application writes and reads it outside a
//! change's own transaction: refusals (nothing changed, so there is no
//! transaction to join), garbage collection and retention runs, robot
//! account changes, and the daily pruning past `audit.audit_days`.
//!
//! Changes a handler makes carry their record in their own transaction
//! (`meta::MetaWrite::Audit`); this module must not write those a second
//! time, and must never fail the request it records.

use super::App;
use crate::meta::{AuditQuery, AuditRecord, MetaError, MetaWrite};
use std::time::Duration;

/// How often records past `audit_days` are pruned.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// The most records one read returns.
pub const MAX_PAGE: usize = 1000;

/// A record of `action` by `actor`, stamped now.
pub fn record(
    actor: &str,
    action: &str,
    repository: &str,
    reference: &str,
    result: &str,
) -> AuditRecord {
    AuditRecord {
        at_ms: crate::calendar::unix_millis(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        repository: repository.to_owned(),
        reference: reference.to_owned(),
        result: result.to_owned(),
        ..Default::default()
    }
}

/// Writes `r` on its own. A failure is logged, never returned: the audit
/// log must not turn a refusal into a 500.
pub async fn write(app: &App, r: AuditRecord) {
    if let Err(e) = app.meta.write(vec![MetaWrite::Audit { record: r }]).await {
        tracing::warn!(error = %e, "audit record not written");
    }
}

/// Records newest first; at most [`MAX_PAGE`].
pub async fn read(app: &App, mut q: AuditQuery) -> Result<Vec<AuditRecord>, MetaError> {
    q.limit = q.limit.clamp(1, MAX_PAGE);
    app.meta.query(move |m| m.audit(&q)).await
}

/// Removes records older than `audit_days` (none when it is 0).
pub async fn prune(app: &App) -> Result<(), MetaError> {
    let days = app.config.audit.audit_days;
    if days == 0 {
        return Ok(());
    }
    let before_ms = crate::calendar::unix_millis().saturating_sub(days * 86_400_000);
    app.meta
        .write(vec![MetaWrite::PruneAudit { before_ms }])
        .await
}
