//! The shared backend's schema: the embedded migrations, applied in order
//! and recorded in `wharf_schema`.

use super::postgres_backend::db;
use super::postgres_pool::PgConnection;
use super::MetaError;

/// The schema, one step per entry, applied in order and recorded in
/// `wharf_schema`. Never edit a step that has shipped: add one.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the same tables as the redb backend. "C" collation: listings
    // sort bytewise, as the spec's pagination expects.
    r#"
    CREATE TABLE repos (
        name    text COLLATE "C" PRIMARY KEY,
        created bigint NOT NULL
    );
    CREATE TABLE blob_links (
        repo      text COLLATE "C" NOT NULL,
        digest    text COLLATE "C" NOT NULL,
        size      bigint NOT NULL,
        linked_at bigint NOT NULL,
        PRIMARY KEY (repo, digest)
    );
    CREATE TABLE manifests (
        repo    text COLLATE "C" NOT NULL,
        digest  text COLLATE "C" NOT NULL,
        record  text NOT NULL,
        PRIMARY KEY (repo, digest)
    );
    CREATE TABLE tags (
        repo   text COLLATE "C" NOT NULL,
        tag    text COLLATE "C" NOT NULL,
        digest text COLLATE "C" NOT NULL,
        PRIMARY KEY (repo, tag)
    );
    CREATE INDEX tags_by_digest ON tags (repo, digest);
    CREATE TABLE referrers (
        repo     text COLLATE "C" NOT NULL,
        subject  text COLLATE "C" NOT NULL,
        referrer text COLLATE "C" NOT NULL,
        PRIMARY KEY (repo, subject, referrer)
    );
    CREATE TABLE refs (
        digest   text COLLATE "C" NOT NULL,
        repo     text COLLATE "C" NOT NULL,
        manifest text COLLATE "C" NOT NULL,
        PRIMARY KEY (digest, repo, manifest)
    );
    "#,
    // 2: blobs in an object store. `blobs` maps a digest to the one
    // object kept for it (keys are chosen at upload start, never derived
    // from the digest, so completing an upload is the commit). `uploads`
    // and `upload_tail` are sessions any node continues; objects to remove
    // wait in `object_deletions` until their time.
    r#"
    CREATE TABLE blobs (
        digest     text COLLATE "C" PRIMARY KEY,
        size       bigint NOT NULL,
        object_key text NOT NULL,
        created    bigint NOT NULL
    );
    CREATE TABLE uploads (
        id           text PRIMARY KEY,
        repo         text COLLATE "C" NOT NULL,
        object_key   text NOT NULL,
        multipart_id text,
        size         bigint NOT NULL DEFAULT 0,
        midstate     bytea NOT NULL,
        part_numbers integer[] NOT NULL DEFAULT '{}',
        part_etags   text[] NOT NULL DEFAULT '{}',
        part_bytes   bigint NOT NULL DEFAULT 0,
        next_part    integer NOT NULL DEFAULT 0,
        version      bigint NOT NULL DEFAULT 0,
        updated_at   bigint NOT NULL
    );
    CREATE INDEX uploads_by_age ON uploads (updated_at);
    CREATE TABLE upload_tail (
        id   text NOT NULL,
        at   bigint NOT NULL,
        data bytea NOT NULL,
        PRIMARY KEY (id, at)
    );
    CREATE TABLE object_deletions (
        object_key   text PRIMARY KEY,
        multipart_id text,
        not_before   bigint NOT NULL
    );
    CREATE INDEX object_deletions_due ON object_deletions (not_before);
    CREATE INDEX blob_links_by_digest ON blob_links (digest);
    CREATE INDEX manifests_by_digest ON manifests (digest);
    "#,
    // 3: when each manifest was last pulled, for retention policies
    // (written in batches by each node's pull log, never per pull).
    r#"
    CREATE TABLE pulls (
        repo      text COLLATE "C" NOT NULL,
        digest    text COLLATE "C" NOT NULL,
        pulled_at bigint NOT NULL,
        PRIMARY KEY (repo, digest)
    );
    "#,
    // 4: notification queues, written in the transaction of the change
    // each event describes; one node at a time delivers an endpoint's.
    r#"
    CREATE TABLE events (
        id       bigserial PRIMARY KEY,
        endpoint text COLLATE "C" NOT NULL,
        payload  bytea NOT NULL
    );
    CREATE INDEX events_by_endpoint ON events (endpoint, id);
    CREATE TABLE event_drops (
        endpoint text COLLATE "C" PRIMARY KEY,
        dropped  bigint NOT NULL
    );
    CREATE TABLE event_leases (
        endpoint text COLLATE "C" PRIMARY KEY,
        node     text NOT NULL,
        until    bigint NOT NULL
    );
    "#,
    // 5: robot accounts (the secret's hash only), read by every node
    // every few seconds, so a revocation reaches them all.
    r#"
    CREATE TABLE robots (
        name   text COLLATE "C" PRIMARY KEY,
        record text NOT NULL
    );
    "#,
    // 6: storage quotas. Usage is kept by the rules in the transaction of
    // each change (one advisory lock per quota orders the writers);
    // `quota_refs` counts the rows naming each digest, so a blob shared
    // by two repositories of a quota counts once.
    r#"
    CREATE TABLE quota_usage (
        name  text COLLATE "C" PRIMARY KEY,
        bytes bigint NOT NULL
    );
    CREATE TABLE quota_refs (
        name   text COLLATE "C" NOT NULL,
        digest text COLLATE "C" NOT NULL,
        count  bigint NOT NULL,
        size   bigint NOT NULL,
        PRIMARY KEY (name, digest)
    );
    "#,
    // 7: the audit log, written in the transaction of each change.
    r#"
    CREATE TABLE audit (
        id         bigserial PRIMARY KEY,
        at_ms      bigint NOT NULL,
        actor      text COLLATE "C" NOT NULL,
        repository text COLLATE "C" NOT NULL,
        record     text NOT NULL
    );
    CREATE INDEX audit_by_time ON audit (at_ms);
    CREATE INDEX audit_by_repository ON audit (repository, id);
    CREATE INDEX audit_by_actor ON audit (actor, id);
    "#,
];

pub(super) fn apply_migrations(conn: &mut PgConnection) -> Result<usize, MetaError> {
    conn.batch_execute(
        "CREATE TABLE IF NOT EXISTS wharf_schema (
            version    integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .map_err(db)?;
    let row = conn
        .query_one("SELECT coalesce(max(version), 0) FROM wharf_schema", &[])
        .map_err(db)?;
    let current: i32 = row.get(0);
    let mut applied = 0;
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let version = i as i32 + 1;
        if version <= current {
            continue;
        }
        let mut txn = conn.transaction().map_err(db)?;
        txn.batch_execute(sql).map_err(db)?;
        txn.execute(
            "INSERT INTO wharf_schema (version) VALUES ($1)",
            &[&version],
        )
        .map_err(db)?;
        txn.commit().map_err(db)?;
        tracing::info!(version, "metadata schema migrated");
        applied += 1;
    }
    Ok(applied)
}
