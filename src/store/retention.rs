//! Retention's statements (src/registry/retention.rs says what is kept): a user's old versions,
//! artifacts and consumed rows, and the purges of expired outbox entries and set-aside actuals.
//! Each deletes a bounded batch, picked by index and deleted by primary key
//! (`= ANY (ARRAY(...))`: `IN (...)` let the planner hash-join a scan of the whole table against a
//! large batch).

use std::time::Duration;

use sqlx::{PgConnection, PgPool};

use super::query::{query, query_scalar};

pub const LOCK_TO_PRUNE: &str =
    "SELECT active_version FROM refit_models WHERE user_id = $1 FOR UPDATE SKIP LOCKED";

/// Locks the user's registry row unless someone holds it: `None` when it is held (or missing),
/// else the active version.
pub(crate) async fn lock_to_prune(
    conn: &mut PgConnection,
    user_id: &str,
) -> sqlx::Result<Option<Option<i32>>> {
    query_scalar(LOCK_TO_PRUNE)
        .bind(user_id)
        .fetch_optional(conn)
        .await
}

pub const DOOMED_VERSIONS: &str = "SELECT version FROM refit_model_versions
          WHERE user_id = $1
            AND version < least($2, coalesce((SELECT version FROM refit_model_versions
                                               WHERE user_id = $1
                                               ORDER BY version DESC OFFSET $3 - 1 LIMIT 1), 0))
            AND NOT EXISTS (SELECT 1 FROM refit_aliases a
                             WHERE a.user_id = $1 AND a.version = refit_model_versions.version)
          ORDER BY version LIMIT $4";

/// At most `batch` versions older than the newest `keep` and older than `active`, none an alias
/// points at, oldest first.
pub(crate) async fn doomed_versions(
    conn: &mut PgConnection,
    user_id: &str,
    active: Option<i32>,
    keep: i64,
    batch: i64,
) -> sqlx::Result<Vec<i32>> {
    query_scalar(DOOMED_VERSIONS)
        .bind(user_id)
        .bind(active)
        .bind(keep)
        .bind(batch)
        .fetch_all(conn)
        .await
}

pub const DELETE_CONSUMED_OF_VERSIONS: &str =
    "DELETE FROM refit_consumed_actuals WHERE user_id = $1 AND version = ANY($2)";
pub const DELETE_VERSIONS: &str =
    "DELETE FROM refit_model_versions WHERE user_id = $1 AND version = ANY($2)";

/// Deletes `versions` with the consumed rows attributed to them; returns how many versions went.
pub(crate) async fn delete_versions(
    conn: &mut PgConnection,
    user_id: &str,
    versions: &[i32],
) -> sqlx::Result<u64> {
    query(DELETE_CONSUMED_OF_VERSIONS)
        .bind(user_id)
        .bind(versions)
        .execute(&mut *conn)
        .await?;
    let deleted = query(DELETE_VERSIONS)
        .bind(user_id)
        .bind(versions)
        .execute(conn)
        .await?;
    Ok(deleted.rows_affected())
}

pub const DROP_ARTIFACTS: &str = "UPDATE refit_model_versions SET artifact = NULL
          WHERE user_id = $1 AND artifact IS NOT NULL
            AND version < least($2, coalesce((SELECT version FROM refit_model_versions
                                               WHERE user_id = $1 AND status = 'ready'
                                               ORDER BY version DESC OFFSET $3 - 1 LIMIT 1), 0))
            AND NOT EXISTS (SELECT 1 FROM refit_aliases a
                             WHERE a.user_id = $1 AND a.version = refit_model_versions.version)";

/// Drops the artifacts of versions older than `active` and the newest `keep` ready ones, but
/// those an alias points at; returns how many.
pub(crate) async fn drop_artifacts(
    conn: &mut PgConnection,
    user_id: &str,
    active: Option<i32>,
    keep: i64,
) -> sqlx::Result<u64> {
    let dropped = query(DROP_ARTIFACTS)
        .bind(user_id)
        .bind(active)
        .bind(keep)
        .execute(conn)
        .await?;
    Ok(dropped.rows_affected())
}

pub const TRIM_CONSUMED: &str = "WITH cutoff AS (
             SELECT c.actual_id FROM refit_consumed_actuals c
              WHERE c.user_id = $1 AND c.outcome <> 'set_aside'
                AND c.version <> ALL (ARRAY(SELECT version FROM refit_model_versions
                                             WHERE user_id = $1 AND status <> 'ready'))
              ORDER BY c.actual_id DESC OFFSET $2 - 1 LIMIT 1
         )
         DELETE FROM refit_consumed_actuals WHERE actual_id = ANY (ARRAY(
             SELECT actual_id FROM refit_consumed_actuals
              WHERE user_id = $1 AND outcome <> 'set_aside'
                AND actual_id < (SELECT actual_id FROM cutoff)
              ORDER BY actual_id DESC LIMIT $3))";

/// Deletes at most `batch` trained rows older than the newest `keep` that a ready version
/// trained on; returns how many.
pub(crate) async fn trim_consumed(
    conn: &mut PgConnection,
    user_id: &str,
    keep: i64,
    batch: i64,
) -> sqlx::Result<u64> {
    // The batch is picked by the user's index and deleted by primary key (a join with the batch
    // let the planner scan the whole table: tests/integration/explain.rs).
    let trimmed = query(TRIM_CONSUMED)
        .bind(user_id)
        .bind(keep)
        .bind(batch)
        .execute(conn)
        .await?;
    Ok(trimmed.rows_affected())
}

pub const PURGE_OUTBOX: &str = "DELETE FROM refit_outbox WHERE id = ANY (ARRAY(
             SELECT id FROM refit_outbox
              WHERE done_at IS NOT NULL
                AND done_at < now() - make_interval(secs => CASE WHEN dead_letter IS NULL
                                                                 THEN $1 ELSE $2 END)
                AND done_at < now() - make_interval(secs => least($1, $2))
              LIMIT $3))";

/// Deletes at most `batch` done outbox entries: delivered ones done more than `delivered_after`
/// ago, dead letters more than `dead_after`; returns how many.
pub(crate) async fn purge_outbox(
    pool: &PgPool,
    delivered_after: Duration,
    dead_after: Duration,
    batch: i64,
) -> sqlx::Result<u64> {
    let purged = query(PURGE_OUTBOX)
        .bind(delivered_after.as_secs_f64())
        .bind(dead_after.as_secs_f64())
        .bind(batch)
        .execute(pool)
        .await?;
    Ok(purged.rows_affected())
}

pub const PURGE_SET_ASIDE: &str = "DELETE FROM refit_consumed_actuals WHERE actual_id = ANY (ARRAY(
             SELECT actual_id FROM refit_consumed_actuals
              WHERE outcome = 'set_aside' AND consumed_at < now() - make_interval(secs => $1)
              LIMIT $2))";

/// Deletes at most `batch` records of actuals set aside more than `after` ago; returns how many.
pub(crate) async fn purge_set_aside(
    pool: &PgPool,
    after: Duration,
    batch: i64,
) -> sqlx::Result<u64> {
    let purged = query(PURGE_SET_ASIDE)
        .bind(after.as_secs_f64())
        .bind(batch)
        .execute(pool)
        .await?;
    Ok(purged.rows_affected())
}
