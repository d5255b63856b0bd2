//! The audit trail's statements (`refit_audit`; src/registry/audit.rs says what is recorded).

use std::time::Duration;

use serde_json::Value;
use sqlx::{PgConnection, PgPool};

use super::query::{query, query_as};
use crate::registry::audit::{AuditEntry, Write};

/// Records one write (in the caller's transaction) that came through `interface`.
pub(crate) async fn record(
    conn: &mut PgConnection,
    interface: &str,
    write: Write<'_>,
) -> sqlx::Result<()> {
    query(
        "INSERT INTO refit_audit (user_id, interface, action, target, old_value, new_value)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(write.user)
    .bind(interface)
    .bind(write.action)
    .bind(write.target)
    .bind(write.old)
    .bind(write.new)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Replaces the user's audit rows with the one record an erasure leaves: no user id, its SHA-256,
/// and how much was deleted.
pub(crate) async fn record_erasure(
    conn: &mut PgConnection,
    user: &str,
    interface: &str,
    deleted: &Value,
) -> sqlx::Result<()> {
    query(
        "WITH forgotten AS (DELETE FROM refit_audit WHERE user_id = $1)
         INSERT INTO refit_audit (user_hash, interface, action, old_value)
         VALUES (encode(sha256(convert_to($1, 'UTF8')), 'hex'), $2, 'delete', $3)",
    )
    .bind(user)
    .bind(interface)
    .bind(deleted)
    .execute(conn)
    .await
    .map(|_| ())
}

/// The user's registry writes, newest first (an erasure's record included).
pub(crate) async fn history(
    pool: &PgPool,
    user: &str,
    limit: i64,
) -> sqlx::Result<Vec<AuditEntry>> {
    query_as(
        "SELECT id, user_id, interface, action, target, old_value, new_value, at
           FROM refit_audit
          WHERE user_id = $1
             OR user_hash = encode(sha256(convert_to($1, 'UTF8')), 'hex')
          ORDER BY id DESC
          LIMIT $2",
    )
    .bind(user)
    .bind(limit)
    .fetch_all(pool)
    .await
}

pub const PURGE_AUDIT: &str = "DELETE FROM refit_audit WHERE id = ANY (ARRAY(
             SELECT id FROM refit_audit WHERE at < now() - make_interval(secs => $1) LIMIT $2))";

/// Forgets audit rows older than `age`, at most `batch` of them, picked by index and deleted by
/// primary key; returns how many.
pub(crate) async fn purge(pool: &PgPool, age: Duration, batch: i64) -> sqlx::Result<u64> {
    query(PURGE_AUDIT)
        .bind(age.as_secs_f64())
        .bind(batch)
        .execute(pool)
        .await
        .map(|r| r.rows_affected())
}
