//! The registry's statements on versions by hand (src/registry/): listings and details of
//! versions, their artifacts, activation checks, rollback targets, the next version number of an
//! import, and pruning with its audit record. Rows are read by column name.

use std::collections::BTreeMap;

use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgConnection, PgPool, Row};
use uuid::Uuid;

use super::query::{query, query_as, query_scalar};
use crate::registry::{Filter, VersionSummary};

/// The tags refit derives from a version (`v`): its source, policy step and, unless it is ready,
/// why it failed or was rejected.
macro_rules! system_tags {
    () => {
        "jsonb_strip_nulls(jsonb_build_object(
            'refit.source', v.source, 'refit.step', v.metrics->'policy'->>'step',
            'refit.reason', CASE WHEN v.status <> 'ready' THEN v.error END))"
    };
}

/// The columns of a [`VersionSummary`] (`v`: the version, `m`: its user's registry row).
macro_rules! summary_columns {
    () => {
        concat!(
            "v.user_id, v.version, v.status, (m.active_version = v.version) IS TRUE AS active,
            v.parent_version, v.rows_used, v.rows_set_aside, v.trees, v.source, v.created_at,
            v.error, (v.metrics->'live'->>'mae')::float8 AS live_mae,
            v.metrics->'policy'->>'step' AS step, v.description, v.tags, ",
            system_tags!(),
            " AS system_tags, ARRAY(SELECT a.alias FROM refit_aliases a
                     WHERE a.user_id = v.user_id AND a.version = v.version ORDER BY a.alias) AS aliases"
        )
    };
}

/// A version's summary from a row with [`summary_columns`].
fn summary(row: &PgRow) -> sqlx::Result<VersionSummary> {
    Ok(VersionSummary {
        user_id: row.try_get("user_id")?,
        version: row.try_get("version")?,
        status: row.try_get("status")?,
        active: row.try_get("active")?,
        parent_version: row.try_get("parent_version")?,
        rows_used: row.try_get("rows_used")?,
        rows_set_aside: row.try_get("rows_set_aside")?,
        trees: row.try_get("trees")?,
        source: row.try_get("source")?,
        created_at: row.try_get("created_at")?,
        error: row.try_get("error")?,
        live_mae: row.try_get("live_mae")?,
        step: row.try_get("step")?,
        description: row.try_get("description")?,
        tags: string_map(row.try_get("tags")?),
        system_tags: string_map(row.try_get("system_tags")?),
        aliases: row.try_get("aliases")?,
    })
}

/// A JSON object of strings (tags) as a map; anything else is empty.
fn string_map(value: Value) -> BTreeMap<String, String> {
    serde_json::from_value(value).unwrap_or_default()
}

const LIST: &str = concat!(
    "SELECT ",
    summary_columns!(),
    " FROM refit_model_versions v JOIN refit_models m USING (user_id)
      WHERE ($1::text IS NULL OR v.user_id = $1)
        AND ($2::text IS NULL OR v.status = $2)
        AND ($3::timestamptz IS NULL OR v.created_at >= $3)
        AND (m.tags || v.tags || ",
    system_tags!(),
    ") @> $5
      ORDER BY v.created_at DESC, v.user_id, v.version DESC
      LIMIT $4 OFFSET $6"
);

/// Versions matching `filter`'s user, status, time and tags, newest first: `limit` of them
/// after skipping `offset`.
pub(crate) async fn list(
    pool: &PgPool,
    filter: &Filter,
    limit: i64,
    offset: i64,
) -> sqlx::Result<Vec<VersionSummary>> {
    query(LIST)
        .bind(&filter.user)
        .bind(&filter.status)
        .bind(filter.since)
        .bind(limit)
        .bind(sqlx::types::Json(&filter.tags))
        .bind(offset)
        .fetch_all(pool)
        .await?
        .iter()
        .map(summary)
        .collect()
}

/// What a version's details add to its summary.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub(crate) struct VersionDetails {
    pub(crate) boosted_rounds: Option<i32>,
    pub(crate) artifact_bytes: Option<i32>,
    pub(crate) params: Value,
    pub(crate) features: Value,
    pub(crate) timings_ms: Value,
    pub(crate) metrics: Value,
    pub(crate) retrain_id: Option<Uuid>,
}

const SHOW: &str = concat!(
    "SELECT ",
    summary_columns!(),
    ", v.boosted_rounds, octet_length(v.artifact) AS artifact_bytes, v.params, v.features,
            v.timings_ms, v.metrics, v.retrain_id
       FROM refit_model_versions v JOIN refit_models m USING (user_id)
      WHERE v.user_id = $1 AND v.version = $2"
);

/// One version's summary and details (`None`: no such version).
pub(crate) async fn show(
    pool: &PgPool,
    user: &str,
    version: i32,
) -> sqlx::Result<Option<(VersionSummary, VersionDetails)>> {
    let Some(row) = query(SHOW)
        .bind(user)
        .bind(version)
        .fetch_optional(pool)
        .await?
    else {
        return Ok(None);
    };
    Ok(Some((summary(&row)?, VersionDetails::from_row(&row)?)))
}

/// A version's status and artifact.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct StatusArtifact {
    pub(crate) status: String,
    pub(crate) artifact: Option<Vec<u8>>,
}

/// A version's status and artifact (`None`: no such version).
pub(crate) async fn status_and_artifact(
    pool: &PgPool,
    user: &str,
    version: i32,
) -> sqlx::Result<Option<StatusArtifact>> {
    query_as(
        "SELECT status, artifact FROM refit_model_versions WHERE user_id = $1 AND version = $2",
    )
    .bind(user)
    .bind(version)
    .fetch_optional(pool)
    .await
}

/// What an activation checks of the version to activate.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Activatable {
    pub(crate) status: String,
    pub(crate) has_artifact: bool,
    pub(crate) trees: Option<i32>,
}

/// The version's status, whether it has an artifact, and its trees (`None`: no such version).
pub(crate) async fn activatable(
    conn: &mut PgConnection,
    user: &str,
    version: i32,
) -> sqlx::Result<Option<Activatable>> {
    query_as(
        "SELECT status, artifact IS NOT NULL AS has_artifact, trees
           FROM refit_model_versions WHERE user_id = $1 AND version = $2",
    )
    .bind(user)
    .bind(version)
    .fetch_optional(conn)
    .await
}

/// Marks a version ready (one activated by hand, whatever the gate said of it).
pub(crate) async fn mark_ready(
    conn: &mut PgConnection,
    user: &str,
    version: i32,
) -> sqlx::Result<()> {
    query("UPDATE refit_model_versions SET status = 'ready' WHERE user_id = $1 AND version = $2")
        .bind(user)
        .bind(version)
        .execute(conn)
        .await
        .map(|_| ())
}

/// The newest ready version with an artifact older than `active` (a rollback's target).
pub(crate) async fn ready_before(
    conn: &mut PgConnection,
    user: &str,
    active: i32,
) -> sqlx::Result<Option<i32>> {
    query_scalar(
        "SELECT max(version) FROM refit_model_versions
          WHERE user_id = $1 AND version < $2 AND status = 'ready' AND artifact IS NOT NULL",
    )
    .bind(user)
    .bind(active)
    .fetch_one(conn)
    .await
}

/// The user's next version number (the user locked).
pub(crate) async fn next_version(conn: &mut PgConnection, user: &str) -> sqlx::Result<i32> {
    query_scalar(
        "SELECT coalesce(max(version), 0) + 1 FROM refit_model_versions WHERE user_id = $1",
    )
    .bind(user)
    .fetch_one(conn)
    .await
}

/// Deletes all but the newest `keep` versions (of `user`, or of every user), never the active
/// one nor one an alias points at, and records an audit row (`interface`) per user whose
/// versions went. Returns how many were deleted.
pub(crate) async fn prune(
    pool: &PgPool,
    user: Option<&str>,
    keep: i64,
    interface: &str,
) -> sqlx::Result<i64> {
    query_scalar(
        "WITH deleted AS (
             DELETE FROM refit_model_versions v
              USING (SELECT user_id, version,
                            row_number() OVER (PARTITION BY user_id ORDER BY version DESC) AS rank
                       FROM refit_model_versions
                      WHERE $1::text IS NULL OR user_id = $1) ranked, refit_models m
              WHERE v.user_id = ranked.user_id AND v.version = ranked.version
                AND m.user_id = v.user_id
                AND ranked.rank > $2
                AND m.active_version IS DISTINCT FROM v.version
                AND NOT EXISTS (SELECT 1 FROM refit_aliases a
                                 WHERE a.user_id = v.user_id AND a.version = v.version)
             RETURNING v.user_id, v.version
         ), audited AS (
             INSERT INTO refit_audit (user_id, interface, action, target, old_value, new_value)
             SELECT user_id, $3, 'prune', jsonb_build_object('keep', $2),
                    jsonb_build_object('versions', jsonb_agg(version ORDER BY version)),
                    jsonb_build_object('versions', '[]'::jsonb)
               FROM deleted GROUP BY user_id
         )
         SELECT count(*) FROM deleted",
    )
    .bind(user)
    .bind(keep)
    .bind(interface)
    .fetch_one(pool)
    .await
}
