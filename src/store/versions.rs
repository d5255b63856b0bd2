//! The registry rows a retrain reads and writes: the user's head (`refit_models`, whose row lock
//! serialises a user's retrains across replicas) and its versions (`refit_model_versions`),
//! including the one statement that commits a retrain; the active version and model as the
//! registry and serving read them, and the row lock the registry's writes take.

use std::time::Duration;

use serde_json::Value;
use sqlx::{PgConnection, PgPool, Postgres, Row};

use super::query::{query, query_as, query_scalar};
use uuid::Uuid;

use super::actuals::Consumed;
use super::outbox::OutboxKind;
use crate::domain::NewVersion;

pub(crate) const ENSURE_MODEL_ROW: &str =
    "INSERT INTO refit_models (user_id) VALUES ($1) ON CONFLICT DO NOTHING";

/// Makes sure the user has a registry row to lock (outside the retrain transaction, so a second
/// replica never waits on the first one's uncommitted insert).
pub async fn ensure_model_row(pool: &PgPool, user_id: &str) -> sqlx::Result<()> {
    query(ENSURE_MODEL_ROW)
        .bind(user_id)
        .execute(pool)
        .await
        .map(|_| ())
}

pub const MODEL_ROW_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM refit_models WHERE user_id = $1)";

/// Whether the user has a registry row.
pub(crate) async fn model_row_exists(conn: &mut PgConnection, user_id: &str) -> sqlx::Result<bool> {
    query_scalar(MODEL_ROW_EXISTS)
        .bind(user_id)
        .fetch_one(conn)
        .await
}

/// The locked registry head of one user, with its active version.
#[derive(Debug, Clone)]
pub(crate) struct ModelHead {
    pub(crate) active_version: Option<i32>,
    /// Identifies the stored row of the active version: it changes whenever the row is written,
    /// so an in-memory copy of the model is only used while this still matches.
    pub(crate) active_row: Option<i64>,
    pub(crate) last_version: i32,
    pub(crate) failures: i32,
    pub(crate) backing_off: bool,
    pub(crate) params: Option<Value>,
    pub(crate) features: Option<Value>,
    /// Trees of the active version.
    pub(crate) trees: Option<i32>,
    /// Accepted continue steps since the active version's last rebuild.
    pub(crate) since_rebuild: u32,
    /// The newest version, when it was rejected and made from the active one: a candidate for
    /// reinstatement.
    pub(crate) rejected: Option<RejectedHead>,
    /// Live errors of the user's newest ready versions, newest first, in the gate's metric: the
    /// gate's typical error.
    pub(crate) live_history: Vec<f64>,
}

/// A rejected version that may be reinstated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RejectedHead {
    pub(crate) version: i32,
    pub(crate) trees: Option<i32>,
    pub(crate) since_rebuild: u32,
}

/// The user's active version: `None` without a registry row, `Some(None)` without an active
/// version.
pub(crate) async fn active_version(
    pool: &PgPool,
    user_id: &str,
) -> sqlx::Result<Option<Option<i32>>> {
    query_scalar("SELECT active_version FROM refit_models WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(pool)
        .await
}

/// Locks the user's registry row, waiting for a retrain in flight (or up to `lock_timeout`);
/// returns the active version as [`active_version`] does.
pub(crate) async fn lock_user(
    conn: &mut PgConnection,
    user_id: &str,
) -> sqlx::Result<Option<Option<i32>>> {
    query_scalar("SELECT active_version FROM refit_models WHERE user_id = $1 FOR UPDATE")
        .bind(user_id)
        .fetch_optional(conn)
        .await
}

/// A version's model as serving loads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct ServedModel {
    pub(crate) version: i32,
    pub(crate) artifact: Option<Vec<u8>>,
    pub(crate) features: Value,
}

/// One version's model (`None`: no such version).
pub(crate) async fn version_model(
    pool: &PgPool,
    user_id: &str,
    version: i32,
) -> sqlx::Result<Option<ServedModel>> {
    query_as(
        "SELECT version, artifact, features FROM refit_model_versions
          WHERE user_id = $1 AND version = $2",
    )
    .bind(user_id)
    .bind(version)
    .fetch_optional(pool)
    .await
}

/// The active version's model (`None`: no active version).
pub(crate) async fn active_model(
    pool: &PgPool,
    user_id: &str,
) -> sqlx::Result<Option<ServedModel>> {
    query_as(
        "SELECT v.version, v.artifact, v.features
           FROM refit_models m JOIN refit_model_versions v ON v.user_id = m.user_id AND v.version = m.active_version
          WHERE m.user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(pool)
    .await
}

pub const LOCK_MODEL: &str = "SELECT m.active_version,
                v.xmin::text::bigint AS active_row,
                coalesce(n.version, 0) AS last_version,
                m.failures,
                coalesce(m.retry_after > now(), false) AS backing_off,
                v.params, v.features, v.trees,
                coalesce((v.metrics->'policy'->>'since_rebuild')::int, 0) AS since_rebuild,
                n.status = 'rejected' AND n.parent_version = m.active_version AS rejected,
                n.trees AS rejected_trees,
                coalesce((n.metrics->'policy'->>'since_rebuild')::int, 0) AS rejected_since_rebuild,
                ARRAY(SELECT (h.metrics->'live'->>$2)::float8
                        FROM refit_model_versions h
                       WHERE h.user_id = m.user_id AND h.status = 'ready'
                         AND h.metrics->'live'->>$2 IS NOT NULL
                       ORDER BY h.version DESC
                       LIMIT $3) AS live_history
           FROM refit_models m
           LEFT JOIN refit_model_versions v
                  ON v.user_id = m.user_id AND v.version = m.active_version
           LEFT JOIN LATERAL (
                SELECT version, status, parent_version, trees, metrics
                  FROM refit_model_versions
                 WHERE user_id = m.user_id
                 ORDER BY version DESC LIMIT 1) n ON true
          WHERE m.user_id = $1
            FOR UPDATE OF m SKIP LOCKED";

/// Locks the user's registry row for this transaction; `None` when another retrain holds it.
/// Reads with it the live history in `metric` (mae or rmse), so that the retrain needs no round
/// trip of its own for it. Artifacts are not read here: see [`artifact`].
pub(crate) async fn lock_model(
    conn: &mut PgConnection,
    user_id: &str,
    metric: &str,
) -> sqlx::Result<Option<ModelHead>> {
    let row: Option<HeadRow> = query_as(LOCK_MODEL)
        .bind(user_id)
        .bind(metric)
        .bind(crate::retrain::policy::LIVE_HISTORY as i64)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(HeadRow::head))
}

/// The columns of [`LOCK_MODEL`].
#[derive(sqlx::FromRow)]
struct HeadRow {
    active_version: Option<i32>,
    active_row: Option<i64>,
    last_version: i32,
    failures: i32,
    backing_off: bool,
    params: Option<Value>,
    features: Option<Value>,
    trees: Option<i32>,
    since_rebuild: i32,
    rejected: Option<bool>,
    rejected_trees: Option<i32>,
    rejected_since_rebuild: i32,
    live_history: Vec<f64>,
}

impl HeadRow {
    fn head(self) -> ModelHead {
        ModelHead {
            active_version: self.active_version,
            active_row: self.active_row,
            last_version: self.last_version,
            failures: self.failures,
            backing_off: self.backing_off,
            params: self.params,
            features: self.features,
            trees: self.trees,
            since_rebuild: self.since_rebuild.max(0) as u32,
            rejected: self.rejected.unwrap_or(false).then(|| RejectedHead {
                version: self.last_version,
                trees: self.rejected_trees,
                since_rebuild: self.rejected_since_rebuild.max(0) as u32,
            }),
            live_history: self.live_history,
        }
    }
}

pub const ARTIFACT: &str =
    "SELECT artifact FROM refit_model_versions WHERE user_id = $1 AND version = $2";

/// The stored artifact of one version (`None` when it has none).
pub(crate) async fn artifact(
    conn: &mut PgConnection,
    user_id: &str,
    version: i32,
) -> sqlx::Result<Option<Vec<u8>>> {
    query_scalar(ARTIFACT)
        .bind(user_id)
        .bind(version)
        .fetch_optional(conn)
        .await
        .map(Option::flatten)
}

pub const REINSTATE: &str = "UPDATE refit_model_versions
            SET status = 'ready',
                metrics = metrics || jsonb_build_object('reinstated_by', $3::int)
          WHERE user_id = $1 AND version = $2 AND status = 'rejected'";

/// Makes a rejected version ready again (the gate reinstated it), noting which retrain did.
pub(crate) async fn reinstate(
    conn: &mut PgConnection,
    user_id: &str,
    version: i32,
    by_version: i32,
) -> sqlx::Result<()> {
    query(REINSTATE)
        .bind(user_id)
        .bind(version)
        .bind(by_version)
        .execute(conn)
        .await
        .map(|_| ())
}

impl NewVersion<'_> {
    /// Binds the version's columns as `$1`–`$16` of an `INSERT INTO refit_model_versions` with
    /// the column list of [`INSERT_VERSION`] (and of [`COMMIT_RETRAIN`]).
    fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(self.user_id)
            .bind(self.version)
            .bind(self.status.stored())
            .bind(self.parent_version)
            .bind(self.artifact)
            .bind(self.rows_used)
            .bind(self.rows_set_aside)
            .bind(self.trees.map(|t| t as i32))
            .bind(self.boosted_rounds)
            .bind(self.params)
            .bind(self.features)
            .bind(self.timings_ms)
            .bind(self.error)
            .bind(self.source)
            .bind(self.retrain_id)
            .bind(self.metrics)
    }
}

pub(crate) const INSERT_VERSION: &str = "INSERT INTO refit_model_versions
            (user_id, version, status, parent_version, artifact, rows_used, rows_set_aside,
             trees, boosted_rounds, params, features, timings_ms, error, source, retrain_id, metrics)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)";

pub(crate) async fn insert_version(
    conn: &mut PgConnection,
    v: &NewVersion<'_>,
) -> sqlx::Result<()> {
    v.bind(query(INSERT_VERSION))
        .execute(conn)
        .await
        .map(|_| ())
}

pub const ACTIVATE: &str = "UPDATE refit_models
            SET active_version = $2, failures = 0, retry_after = NULL, updated_at = now()
          WHERE user_id = $1";

/// Moves the user's active version and clears any failure back-off.
pub(crate) async fn activate(
    conn: &mut PgConnection,
    user_id: &str,
    version: i32,
) -> sqlx::Result<()> {
    query(ACTIVATE)
        .bind(user_id)
        .bind(version)
        .execute(conn)
        .await
        .map(|_| ())
}

pub const RECORD_FAILURE: &str = "UPDATE refit_models
            SET failures = failures + 1,
                retry_after = now() + make_interval(secs => $2),
                updated_at = now()
          WHERE user_id = $1";

/// Records a failed retrain: the user backs off for `backoff` before the next attempt.
pub(crate) async fn record_failure(
    conn: &mut PgConnection,
    user_id: &str,
    backoff: Duration,
) -> sqlx::Result<()> {
    query(RECORD_FAILURE)
        .bind(user_id)
        .bind(backoff.as_secs_f64())
        .execute(conn)
        .await
        .map(|_| ())
}

pub const BACK_OFF: &str = "UPDATE refit_models
            SET failures = failures + 1,
                retry_after = now() + make_interval(secs => least(power(2, least(failures, 16)), $2)),
                updated_at = now()
          WHERE user_id = $1";

/// Backs a user off after a retrain that ended in an error (not a training failure, which
/// [`record_failure`] records in the retrain's own transaction): `2^failures` seconds, at most
/// `max`. Waits for the user's row lock at most `lock_wait` (the aborted retrain's session may
/// still be rolling back).
pub(crate) async fn back_off(
    pool: &PgPool,
    user_id: &str,
    max: Duration,
    lock_wait: Duration,
) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    set_lock_timeout(&mut tx, &lock_wait.as_millis().to_string()).await?;
    query(BACK_OFF)
        .bind(user_id)
        .bind(max.as_secs_f64())
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Sets `lock_timeout` (PostgreSQL's syntax: `100`, `100ms`, `2s`) for the rest of the
/// transaction.
pub(crate) async fn set_lock_timeout(conn: &mut PgConnection, timeout: &str) -> sqlx::Result<()> {
    query("SELECT set_config('lock_timeout', $1, true)")
        .bind(timeout)
        .execute(conn)
        .await
        .map(|_| ())
}

/// What [`commit_retrain`] wrote.
#[derive(Debug, Clone)]
pub(crate) struct CommittedRetrain {
    /// The new version row's identity (see [`ModelHead::active_row`]).
    pub(crate) version_row: i64,
}

pub const COMMIT_RETRAIN: &str = "WITH version AS (
             INSERT INTO refit_model_versions
                 (user_id, version, status, parent_version, artifact, rows_used, rows_set_aside,
                  trees, boosted_rounds, params, features, timings_ms, error, source, retrain_id, metrics)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
             RETURNING xmin::text::bigint AS row
         ), consumed AS (
             INSERT INTO refit_consumed_actuals (actual_id, user_id, version, outcome, reason, detail, line)
             SELECT id, $1, CASE WHEN outcome = 'set_aside' THEN NULL ELSE $2 END, outcome, reason, detail, line
               FROM unnest($17::bigint[], $18::text[], $19::text[], $20::text[], $25::bytea[])
                    AS t(id, outcome, reason, detail, line)
         ), removed AS (
             DELETE FROM refit_pending p USING unnest($17::bigint[]) AS c(id)
              WHERE p.actual_id = c.id AND p.user_id = $1 RETURNING 1
         ), activated AS (
             UPDATE refit_models
                SET active_version = $2, failures = 0, retry_after = NULL, updated_at = now()
              WHERE user_id = $1 AND $21
         ), outbox AS (
             INSERT INTO refit_outbox (event_id, user_id, kind, payload)
             SELECT $22, $1, kind, payload
               FROM unnest($23::text[], $24::jsonb[]) WITH ORDINALITY AS t(kind, payload, n)
              ORDER BY n
         )
         SELECT (SELECT row FROM version) AS version_row, (SELECT count(*) FROM removed) AS removed";

/// The whole write of a successful (or rejected) retrain in one statement: the new version, the
/// consumed actuals out of the pending queue, the version activated when `activate`, and the
/// side effects in the outbox. The caller commits.
pub(crate) async fn commit_retrain(
    conn: &mut PgConnection,
    v: &NewVersion<'_>,
    consumed: &Consumed<'_>,
    activate: bool,
    event_id: Uuid,
    outbox: &[(OutboxKind, &Value)],
) -> sqlx::Result<CommittedRetrain> {
    let kinds: Vec<&str> = outbox.iter().map(|(k, _)| k.as_str()).collect();
    let payloads: Vec<&Value> = outbox.iter().map(|(_, p)| *p).collect();
    let row = v
        .bind(query(COMMIT_RETRAIN))
        .bind(&consumed.ids)
        .bind(&consumed.outcomes)
        .bind(&consumed.reasons)
        .bind(&consumed.details)
        .bind(activate)
        .bind(event_id)
        .bind(&kinds)
        .bind(&payloads)
        .bind(&consumed.lines)
        .fetch_one(&mut *conn)
        .await?;
    consumed.check(v.user_id, row.try_get("removed")?)?;
    Ok(CommittedRetrain {
        version_row: row.try_get("version_row")?,
    })
}
