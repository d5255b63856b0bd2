//! The audit trail of the model registry: every write (update, alias, promote, rollback, prune,
//! import, delete) is recorded in `refit_audit`, in the write's own transaction, with the interface
//! it came through, when, what it wrote and the old and new values. Rows older than
//! REFIT_AUDIT_RETENTION_DAYS are purged by the service; erasing a user leaves only a record,
//! keyed by the SHA-256 of the user id, that an erasure happened.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};

use crate::store;

/// Where a registry write came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interface {
    Cli,
    Http,
}

impl Interface {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Interface::Cli => "cli",
            Interface::Http => "http",
        }
    }
}

/// One registry write, as recorded.
#[derive(Debug, Clone, Serialize, PartialEq, sqlx::FromRow)]
pub(crate) struct AuditEntry {
    pub(crate) id: i64,
    /// `None` on the record an erasure leaves.
    pub(crate) user_id: Option<String>,
    pub(crate) interface: String,
    pub(crate) action: String,
    /// Which version or alias was written (`{}` for the model as a whole).
    pub(crate) target: Value,
    #[sqlx(rename = "old_value")]
    pub(crate) old: Option<Value>,
    #[sqlx(rename = "new_value")]
    pub(crate) new: Option<Value>,
    pub(crate) at: DateTime<Utc>,
}

/// A write to record: `action` on `target` of `user`, from `old` to `new`.
pub(crate) struct Write<'a> {
    pub(crate) user: &'a str,
    pub(crate) action: &'a str,
    pub(crate) target: Value,
    pub(crate) old: Option<Value>,
    pub(crate) new: Option<Value>,
}

/// Records one write (in the caller's transaction).
pub(crate) async fn record(
    conn: &mut PgConnection,
    interface: Interface,
    write: Write<'_>,
) -> sqlx::Result<()> {
    store::audit::record(conn, interface.as_str(), write).await
}

/// Replaces the user's audit rows with the one record an erasure leaves: no user id, its SHA-256,
/// and how much was deleted (`deleted`).
pub(crate) async fn record_erasure(
    conn: &mut PgConnection,
    interface: Interface,
    user: &str,
    deleted: &Value,
) -> sqlx::Result<()> {
    store::audit::record_erasure(conn, user, interface.as_str(), deleted).await
}

/// The user's registry writes, newest first (an erasure's record included).
pub(crate) async fn history(
    pool: &PgPool,
    user: &str,
    limit: i64,
) -> sqlx::Result<Vec<AuditEntry>> {
    store::audit::history(pool, user, limit).await
}

/// Most audit rows one [`purge`] deletes: a backlog goes in short statements.
const PURGE_BATCH: i64 = 5000;

/// Forgets audit rows older than `age`, at most [`PURGE_BATCH`] of them, picked by index and
/// deleted by primary key; returns how many.
pub async fn purge(pool: &PgPool, age: Duration) -> sqlx::Result<u64> {
    store::audit::purge(pool, age, PURGE_BATCH).await
}
