//! PostgreSQL: the pending-actuals queue, the model registry and the outbox. All SQL refit runs
//! lives here and takes its values as bound parameters, never by string formatting.
//!
//! Concurrency model:
//! - a user's retrain holds that user's `refit_models` row lock (`FOR UPDATE SKIP LOCKED`) for the
//!   whole read–train–commit transaction, so across all replicas one retrain per user runs at a
//!   time and a replica that finds the row locked simply moves on;
//! - pending actuals are queued by the ingest (src/scheduler/ingest.rs), exactly once, in whatever order the
//!   upstream's transactions commit;
//! - a user's outbox is delivered under a transaction-scoped advisory lock, in id order.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgConnection, PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use crate::config::{Secret, SessionLimits};
use crate::retrain::features::{ActualRow, SetAside};

/// The channel the ingest notifies, once per user and ingest, with the payload
/// `<count>:<first actual id>:<user id>` (`n:first:user`; see `scheduler::Arrival::parse`).
pub(crate) const ACTUALS_CHANNEL: &str = "refit_actuals";

/// The migrations in `migrations/`, embedded in the binary.
pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A pool of at most `connections` PostgreSQL sessions, each with the `limits` set.
pub async fn connect(
    url: &Secret,
    limits: &SessionLimits,
    connections: u32,
) -> anyhow::Result<PgPool> {
    connect_as("refit", url, limits, connections).await
}

/// [`connect`], the sessions named `application_name` (as `pg_stat_activity` shows them).
pub(crate) async fn connect_as(
    application_name: &str,
    url: &Secret,
    limits: &SessionLimits,
    connections: u32,
) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = url
        .expose()
        .parse::<PgConnectOptions>()
        .with_context(|| format!("DATABASE_URL {url} is not a valid PostgreSQL URL"))?
        .application_name(application_name)
        // Every statement is planned for its arguments. refit's tables start empty and grow and
        // shrink by the minute; a generic plan cached while one was small (prepared statements
        // live as long as the connection) went on scanning it whole once it was large — seen in
        // `make bench` for the outbox done-marks and the retrain's commit (BENCHMARKS.md).
        .options([("plan_cache_mode", "force_custom_plan")])
        .options(session_settings(limits))
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(2));
    PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {url}"))
}

/// The pool of the retrain service: `retrains` concurrent retrains plus its other tasks.
pub fn service_pool_size(retrains: usize) -> u32 {
    retrains as u32 + 4
}

/// The session settings that bound how long a statement, an idle transaction or a dead peer can
/// hold a lock: the server ends the session (rolling back its transaction) past them. Keepalives
/// are the server's side of the connection: a replica that vanished without closing its socket
/// (a half-open connection) is detected and its session ended.
fn session_settings(limits: &SessionLimits) -> Vec<(&'static str, String)> {
    let ms = |d: Duration| d.as_millis().to_string();
    let mut settings = Vec::new();
    if let Some(d) = limits.statement_timeout {
        settings.push(("statement_timeout", ms(d)));
    }
    if let Some(d) = limits.idle_in_transaction_timeout {
        settings.push(("idle_in_transaction_session_timeout", ms(d)));
    }
    if let Some(d) = limits.tcp_keepalive {
        let secs = d.as_secs().max(1);
        settings.push(("tcp_keepalives_idle", secs.to_string()));
        settings.push(("tcp_keepalives_interval", secs.to_string()));
        settings.push(("tcp_keepalives_count", "3".to_owned()));
        // Unacknowledged data (a peer gone while the server writes to it) counts too.
        settings.push(("tcp_user_timeout", (secs * 4 * 1000).to_string()));
    }
    settings
}

/// Applies the migrations (idempotent; safe to run from several replicas at once).
/// A migration may rewrite a large table: it runs without the session's statement timeout.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SET statement_timeout = 0")
        .execute(&mut *conn)
        .await?;
    let applied = MIGRATOR
        .run(&mut *conn)
        .await
        .context("applying migrations");
    // The connection goes back to the pool: give it its limit back.
    sqlx::query("RESET statement_timeout")
        .execute(&mut *conn)
        .await?;
    applied
}

/// Fails with a clear message when the database lacks refit's schema.
pub async fn check_migrated(pool: &PgPool) -> anyhow::Result<()> {
    let applied: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_catalog.pg_tables WHERE tablename = '_sqlx_migrations'",
    )
    .fetch_one(pool)
    .await?;
    let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let current: Option<i64> = if applied > 0 {
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await?
    } else {
        None
    };
    match current {
        Some(v) if v >= latest => Ok(()),
        _ => anyhow::bail!(
            "the database is not migrated to version {latest} (found {current:?}): run `refit migrate` first"
        ),
    }
}

/// A user with at least `threshold` pending actuals, or with stale ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DueUser {
    pub(crate) user_id: String,
    pub(crate) pending: i64,
    /// Due because its oldest pending actual passed the staleness limit, not by count.
    pub(crate) stale: bool,
}

/// When users below the threshold are due anyway: their oldest pending actual is older than
/// `after`, and they have at least `min_rows` pending actuals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Staleness {
    pub(crate) after: Duration,
    pub(crate) min_rows: i64,
}

/// Users with `>= threshold` pending actuals, or stale ones, that are not backing off after a
/// failure, in the order their oldest pending actual arrived.
pub(crate) async fn due_users(
    pool: &PgPool,
    threshold: i64,
    staleness: Option<Staleness>,
) -> sqlx::Result<Vec<DueUser>> {
    sqlx::query(
        "SELECT p.user_id, count(*) AS pending,
                count(*) < $1 AS stale
           FROM refit_pending p
           LEFT JOIN refit_models m ON m.user_id = p.user_id
          GROUP BY p.user_id
         HAVING bool_and(m.retry_after IS NULL OR m.retry_after <= now())
            AND (count(*) >= $1
                 OR ($2::float8 IS NOT NULL AND count(*) >= $3
                     AND min(p.enqueued_at) <= now() - make_interval(secs => $2)))
          ORDER BY min(p.actual_id)",
    )
    .bind(threshold)
    .bind(staleness.map(|s| s.after.as_secs_f64()))
    .bind(staleness.map_or(1, |s| s.min_rows))
    .map(|row: sqlx::postgres::PgRow| DueUser {
        user_id: row.get(0),
        pending: row.get(1),
        stale: row.get(2),
    })
    .fetch_all(pool)
    .await
}

/// What the scheduler knows of one user it asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PendingCount {
    pub(crate) user_id: String,
    pub(crate) pending: i64,
    /// The user is backing off after a failed retrain.
    pub(crate) backing_off: bool,
}

/// Pending actuals of each of `users` (users with none are left out): an index range scan per
/// user, for the users notifications name.
pub(crate) async fn pending_counts(
    pool: &PgPool,
    users: &[String],
) -> sqlx::Result<Vec<PendingCount>> {
    sqlx::query(
        "SELECT p.user_id, count(*),
                coalesce(bool_or(m.retry_after > now()), false)
           FROM refit_pending p
           LEFT JOIN refit_models m ON m.user_id = p.user_id
          WHERE p.user_id = ANY($1)
          GROUP BY p.user_id",
    )
    .bind(users)
    .map(|row: sqlx::postgres::PgRow| PendingCount {
        user_id: row.get(0),
        pending: row.get(1),
        backing_off: row.get(2),
    })
    .fetch_all(pool)
    .await
}

/// All pending actuals (for the gauge).
pub(crate) async fn pending_total(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM refit_pending")
        .fetch_one(pool)
        .await
}

/// Makes sure the user has a registry row to lock (outside the retrain transaction, so a second
/// replica never waits on the first one's uncommitted insert).
pub async fn ensure_model_row(pool: &PgPool, user_id: &str) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO refit_models (user_id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(user_id)
        .execute(pool)
        .await
        .map(|_| ())
}

/// Whether the user has a registry row.
pub(crate) async fn model_row_exists(conn: &mut PgConnection, user_id: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM refit_models WHERE user_id = $1)")
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
}

/// A rejected version that may be reinstated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RejectedHead {
    pub(crate) version: i32,
    pub(crate) trees: Option<i32>,
    pub(crate) since_rebuild: u32,
}

/// Locks the user's registry row for this transaction; `None` when another retrain holds it.
/// Artifacts are not read here: see [`artifact`].
pub(crate) async fn lock_model(
    conn: &mut PgConnection,
    user_id: &str,
) -> sqlx::Result<Option<ModelHead>> {
    sqlx::query(
        "SELECT m.active_version,
                v.xmin::text::bigint,
                coalesce(n.version, 0),
                m.failures,
                coalesce(m.retry_after > now(), false),
                v.params, v.features, v.trees,
                coalesce((v.metrics->'policy'->>'since_rebuild')::int, 0),
                n.status = 'rejected' AND n.parent_version = m.active_version,
                n.trees,
                coalesce((n.metrics->'policy'->>'since_rebuild')::int, 0)
           FROM refit_models m
           LEFT JOIN refit_model_versions v
                  ON v.user_id = m.user_id AND v.version = m.active_version
           LEFT JOIN LATERAL (
                SELECT version, status, parent_version, trees, metrics
                  FROM refit_model_versions
                 WHERE user_id = m.user_id
                 ORDER BY version DESC LIMIT 1) n ON true
          WHERE m.user_id = $1
            FOR UPDATE OF m SKIP LOCKED",
    )
    .bind(user_id)
    .map(|row: sqlx::postgres::PgRow| {
        let last_version: i32 = row.get(2);
        let rejected: Option<bool> = row.get(9);
        ModelHead {
            active_version: row.get(0),
            active_row: row.get(1),
            last_version,
            failures: row.get(3),
            backing_off: row.get(4),
            params: row.get(5),
            features: row.get(6),
            trees: row.get(7),
            since_rebuild: row.get::<i32, _>(8).max(0) as u32,
            rejected: rejected.unwrap_or(false).then(|| RejectedHead {
                version: last_version,
                trees: row.get(10),
                since_rebuild: row.get::<i32, _>(11).max(0) as u32,
            }),
        }
    })
    .fetch_optional(conn)
    .await
}

/// The stored artifact of one version (`None` when it has none).
pub(crate) async fn artifact(
    conn: &mut PgConnection,
    user_id: &str,
    version: i32,
) -> sqlx::Result<Option<Vec<u8>>> {
    sqlx::query_scalar(
        "SELECT artifact FROM refit_model_versions WHERE user_id = $1 AND version = $2",
    )
    .bind(user_id)
    .bind(version)
    .fetch_optional(conn)
    .await
    .map(Option::flatten)
}

/// Live errors (`metric`: mae or rmse) of the user's newest ready versions, newest first: the
/// gate's typical error.
pub(crate) async fn live_history(
    conn: &mut PgConnection,
    user_id: &str,
    metric: &str,
) -> sqlx::Result<Vec<f64>> {
    sqlx::query_scalar(
        "SELECT (metrics->'live'->>$3)::float8
           FROM refit_model_versions
          WHERE user_id = $1 AND status = 'ready' AND metrics->'live'->>$3 IS NOT NULL
          ORDER BY version DESC
          LIMIT $2",
    )
    .bind(user_id)
    .bind(crate::retrain::policy::LIVE_HISTORY as i64)
    .bind(metric)
    .fetch_all(conn)
    .await
}

/// Makes a rejected version ready again (the gate reinstated it), noting which retrain did.
pub(crate) async fn reinstate(
    conn: &mut PgConnection,
    user_id: &str,
    version: i32,
    by_version: i32,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE refit_model_versions
            SET status = 'ready',
                metrics = metrics || jsonb_build_object('reinstated_by', $3::int)
          WHERE user_id = $1 AND version = $2 AND status = 'rejected'",
    )
    .bind(user_id)
    .bind(version)
    .bind(by_version)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Longest user id refit takes, in bytes: the trigger sets longer ones' actuals aside
/// (`user_id_too_long`, migrations/20261201000008_defects.up.sql), and imports refuse them.
pub(crate) const MAX_USER_ID_BYTES: usize = 1000;

/// Why a pending actual can never be consumed (`refit_unconsumable_actuals.reason`, the label of
/// `refit_unconsumable_actuals_total`).
pub(crate) const UNCONSUMABLE_REASONS: [&str; 1] = ["already_consumed"];

/// Moves the user's pending actuals whose id was consumed before — deleted upstream and inserted
/// again with the same id — out of the queue into `refit_unconsumable_actuals`, with the reason:
/// consuming them again would violate `refit_consumed_actuals`' primary key and fail every
/// retrain of the user. Returns their ids.
pub(crate) async fn set_aside_consumed_again(
    conn: &mut PgConnection,
    user_id: &str,
) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(
        "WITH again AS (
             DELETE FROM refit_pending p USING refit_consumed_actuals c
              WHERE p.user_id = $1 AND c.actual_id = p.actual_id
             RETURNING p.actual_id, c.user_id AS consumed_for, c.version, c.outcome
         )
         INSERT INTO refit_unconsumable_actuals (actual_id, user_id, reason, detail)
         SELECT actual_id, $1, 'already_consumed',
                format('actual id %s was consumed before (%s, user %s, version %s); deleted and inserted again upstream?',
                       actual_id, outcome, consumed_for, coalesce(version::text, 'none'))
           FROM again
         RETURNING actual_id",
    )
    .bind(user_id)
    .fetch_all(conn)
    .await
}

/// A pending actual with its request's features, and when it became pending.
pub(crate) struct PendingActual {
    pub(crate) row: ActualRow,
    pub(crate) enqueued_at: DateTime<Utc>,
}

/// The user's oldest `limit` pending actuals joined with their requests' features.
pub(crate) async fn read_pending(
    conn: &mut PgConnection,
    user_id: &str,
    limit: i64,
) -> sqlx::Result<Vec<PendingActual>> {
    sqlx::query(
        "SELECT p.actual_id, a.actual_value, r.features::text, p.enqueued_at
           FROM refit_pending p
           JOIN actual_rentals a ON a.id = p.actual_id
           JOIN prediction_requests r ON r.request_id = a.request_id
          WHERE p.user_id = $1
          ORDER BY p.actual_id
          LIMIT $2",
    )
    .bind(user_id)
    .bind(limit)
    .map(|row: sqlx::postgres::PgRow| PendingActual {
        row: actual_row(&row),
        enqueued_at: row.get(3),
    })
    .fetch_all(conn)
    .await
}

/// An actual read as its first three columns: id, value, the request's features as text.
fn actual_row(row: &sqlx::postgres::PgRow) -> ActualRow {
    ActualRow {
        actual_id: row.get(0),
        actual_value: row.get(1),
        features: row.get(2),
    }
}

/// A version to store.
pub(crate) struct NewVersion<'a> {
    pub(crate) user_id: &'a str,
    pub(crate) version: i32,
    pub(crate) status: &'a str,
    pub(crate) parent_version: Option<i32>,
    pub(crate) artifact: Option<&'a [u8]>,
    pub(crate) rows_used: i32,
    pub(crate) rows_set_aside: i32,
    pub(crate) trees: Option<i64>,
    pub(crate) boosted_rounds: Option<i32>,
    pub(crate) params: &'a Value,
    pub(crate) features: &'a Value,
    pub(crate) timings_ms: &'a Value,
    pub(crate) metrics: &'a Value,
    pub(crate) error: Option<&'a str>,
    pub(crate) source: &'a str,
    pub(crate) retrain_id: Uuid,
}

impl NewVersion<'_> {
    /// Binds the version's columns as `$1`–`$16` of an `INSERT INTO refit_model_versions` with
    /// the column list of [`insert_version`] (SQL stays literal: see the reliability suite).
    fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(self.user_id)
            .bind(self.version)
            .bind(self.status)
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

pub(crate) async fn insert_version(
    conn: &mut PgConnection,
    v: &NewVersion<'_>,
) -> sqlx::Result<()> {
    v.bind(sqlx::query(
        "INSERT INTO refit_model_versions
            (user_id, version, status, parent_version, artifact, rows_used, rows_set_aside,
             trees, boosted_rounds, params, features, timings_ms, error, source, retrain_id, metrics)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
    ))
        .execute(conn)
        .await
        .map(|_| ())
}

/// Moves the user's active version and clears any failure back-off.
pub(crate) async fn activate(
    conn: &mut PgConnection,
    user_id: &str,
    version: i32,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE refit_models
            SET active_version = $2, failures = 0, retry_after = NULL, updated_at = now()
          WHERE user_id = $1",
    )
    .bind(user_id)
    .bind(version)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Records a failed retrain: the user backs off for `backoff` before the next attempt.
pub(crate) async fn record_failure(
    conn: &mut PgConnection,
    user_id: &str,
    backoff: Duration,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE refit_models
            SET failures = failures + 1,
                retry_after = now() + make_interval(secs => $2),
                updated_at = now()
          WHERE user_id = $1",
    )
    .bind(user_id)
    .bind(backoff.as_secs_f64())
    .execute(conn)
    .await
    .map(|_| ())
}

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
    sqlx::query("SELECT set_config('lock_timeout', $1, true)")
        .bind(lock_wait.as_millis().to_string())
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE refit_models
            SET failures = failures + 1,
                retry_after = now() + make_interval(secs => least(power(2, least(failures, 16)), $2)),
                updated_at = now()
          WHERE user_id = $1",
    )
    .bind(user_id)
    .bind(max.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// The actuals one retrain consumes, as the column arrays the consuming statements bind.
pub(crate) struct Consumed<'a> {
    ids: Vec<i64>,
    outcomes: Vec<&'static str>,
    reasons: Vec<Option<&'a str>>,
    details: Vec<Option<&'a str>>,
}

impl<'a> Consumed<'a> {
    /// Actuals trained on or held out by the version, and the ones set aside with their reasons.
    pub(crate) fn new(trained: &[i64], held_out: &[i64], set_aside: &'a [SetAside]) -> Self {
        let n = trained.len() + held_out.len() + set_aside.len();
        let mut c = Consumed {
            ids: Vec::with_capacity(n),
            outcomes: Vec::with_capacity(n),
            reasons: Vec::with_capacity(n),
            details: Vec::with_capacity(n),
        };
        for (outcome, list) in [("trained", trained), ("held_out", held_out)] {
            for id in list {
                c.push(*id, outcome, None, None);
            }
        }
        for aside in set_aside {
            c.push(
                aside.actual_id,
                "set_aside",
                Some(aside.reason.as_str()),
                Some(aside.detail.as_str()),
            );
        }
        c
    }

    fn push(
        &mut self,
        id: i64,
        outcome: &'static str,
        reason: Option<&'a str>,
        detail: Option<&'a str>,
    ) {
        self.ids.push(id);
        self.outcomes.push(outcome);
        self.reasons.push(reason);
        self.details.push(detail);
    }

    /// Fails when fewer pending rows were removed than consumed: someone consumed these rows
    /// without holding the user's lock, and the transaction must not double-train them.
    fn check(&self, user_id: &str, removed: i64) -> sqlx::Result<()> {
        if removed == self.ids.len() as i64 {
            return Ok(());
        }
        Err(sqlx::Error::Protocol(format!(
            "expected to consume {} pending actuals of user {user_id:?}, found {removed}",
            self.ids.len()
        )))
    }
}

/// Marks actuals consumed — trained or held out by `version`, or set aside with their reasons —
/// and removes them from the pending queue, in one statement. The primary key of
/// `refit_consumed_actuals` refuses any actual consumed before.
pub(crate) async fn consume(
    conn: &mut PgConnection,
    user_id: &str,
    version: Option<i32>,
    consumed: &Consumed<'_>,
) -> sqlx::Result<()> {
    let removed: i64 = sqlx::query_scalar(
        "WITH consumed AS (
             INSERT INTO refit_consumed_actuals (actual_id, user_id, version, outcome, reason, detail)
             SELECT id, $1, CASE WHEN outcome = 'set_aside' THEN NULL ELSE $2 END, outcome, reason, detail
               FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[]) AS t(id, outcome, reason, detail)
         ), removed AS (
             DELETE FROM refit_pending p USING unnest($3::bigint[]) AS c(id)
              WHERE p.actual_id = c.id RETURNING 1
         )
         SELECT count(*) FROM removed",
    )
    .bind(user_id)
    .bind(version)
    .bind(&consumed.ids)
    .bind(&consumed.outcomes)
    .bind(&consumed.reasons)
    .bind(&consumed.details)
    .fetch_one(&mut *conn)
    .await?;
    consumed.check(user_id, removed)
}

/// What [`commit_retrain`] wrote.
#[derive(Debug, Clone)]
pub(crate) struct CommittedRetrain {
    /// The new version row's identity (see [`ModelHead::active_row`]).
    pub(crate) version_row: i64,
}

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
    let query = sqlx::query(
        "WITH version AS (
             INSERT INTO refit_model_versions
                 (user_id, version, status, parent_version, artifact, rows_used, rows_set_aside,
                  trees, boosted_rounds, params, features, timings_ms, error, source, retrain_id, metrics)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
             RETURNING xmin::text::bigint AS row
         ), consumed AS (
             INSERT INTO refit_consumed_actuals (actual_id, user_id, version, outcome, reason, detail)
             SELECT id, $1, CASE WHEN outcome = 'set_aside' THEN NULL ELSE $2 END, outcome, reason, detail
               FROM unnest($17::bigint[], $18::text[], $19::text[], $20::text[]) AS t(id, outcome, reason, detail)
         ), removed AS (
             DELETE FROM refit_pending p USING unnest($17::bigint[]) AS c(id)
              WHERE p.actual_id = c.id RETURNING 1
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
         SELECT (SELECT row FROM version), (SELECT count(*) FROM removed)",
    );
    let row = v
        .bind(query)
        .bind(&consumed.ids)
        .bind(&consumed.outcomes)
        .bind(&consumed.reasons)
        .bind(&consumed.details)
        .bind(activate)
        .bind(event_id)
        .bind(&kinds)
        .bind(&payloads)
        .fetch_one(&mut *conn)
        .await?;
    consumed.check(v.user_id, row.get(1))?;
    Ok(CommittedRetrain {
        version_row: row.get(0),
    })
}

/// The user's most recently consumed actuals that a ready version trained on, newest first: the
/// window the gate scores on and a rebuild trains on. Rows of rejected versions are left out
/// unless the version is reinstated.
pub(crate) async fn recent_actuals(
    conn: &mut PgConnection,
    user_id: &str,
    limit: i64,
) -> sqlx::Result<Vec<ActualRow>> {
    sqlx::query(
        "SELECT c.actual_id, a.actual_value, r.features::text
           FROM refit_consumed_actuals c
           JOIN actual_rentals a ON a.id = c.actual_id
           JOIN prediction_requests r ON r.request_id = a.request_id
          WHERE c.user_id = $1 AND c.outcome IN ('trained', 'held_out')
            AND c.version <> ALL (ARRAY(SELECT version FROM refit_model_versions
                                         WHERE user_id = $1 AND status <> 'ready'))
          ORDER BY c.actual_id DESC
          LIMIT $2",
    )
    .bind(user_id)
    .bind(limit)
    .map(|row: sqlx::postgres::PgRow| actual_row(&row))
    .fetch_all(conn)
    .await
}

/// The actuals `version` trained on, oldest first (a rejected version's batch, for its
/// reinstatement).
pub(crate) async fn actuals_of_version(
    conn: &mut PgConnection,
    user_id: &str,
    version: i32,
) -> sqlx::Result<Vec<ActualRow>> {
    sqlx::query(
        "SELECT c.actual_id, a.actual_value, r.features::text
           FROM refit_consumed_actuals c
           JOIN actual_rentals a ON a.id = c.actual_id
           JOIN prediction_requests r ON r.request_id = a.request_id
          WHERE c.user_id = $1 AND c.version = $2 AND c.outcome IN ('trained', 'held_out')
          ORDER BY c.actual_id",
    )
    .bind(user_id)
    .bind(version)
    .map(|row: sqlx::postgres::PgRow| actual_row(&row))
    .fetch_all(conn)
    .await
}

/// Kinds of outbox entries, in the order they are carried out for one retrain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutboxKind {
    Invalidate,
    Announce,
}

impl OutboxKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            OutboxKind::Invalidate => "invalidate",
            OutboxKind::Announce => "announce",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        match s {
            "invalidate" => Some(OutboxKind::Invalidate),
            "announce" => Some(OutboxKind::Announce),
            _ => None,
        }
    }
}

/// Records side effects of one event (in order: an invalidation, then the announcement) in one
/// statement.
pub(crate) async fn enqueue_outbox(
    conn: &mut PgConnection,
    event_id: Uuid,
    user_id: &str,
    entries: &[(OutboxKind, &Value)],
) -> sqlx::Result<()> {
    let kinds: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
    let payloads: Vec<&Value> = entries.iter().map(|(_, p)| *p).collect();
    sqlx::query(
        "INSERT INTO refit_outbox (event_id, user_id, kind, payload)
         SELECT $1, $2, kind, payload
           FROM unnest($3::text[], $4::jsonb[]) WITH ORDINALITY AS t(kind, payload, n)
          ORDER BY n",
    )
    .bind(event_id)
    .bind(user_id)
    .bind(&kinds)
    .bind(&payloads)
    .execute(conn)
    .await
    .map(|_| ())
}

/// One undone outbox entry.
#[derive(Debug, Clone)]
pub(crate) struct OutboxEntry {
    pub(crate) id: i64,
    pub(crate) event_id: Uuid,
    pub(crate) user_id: String,
    pub(crate) kind: OutboxKind,
    pub(crate) payload: Value,
    pub(crate) attempts: i32,
    pub(crate) due: bool,
    /// An announcement whose version's invalidation is not done yet.
    pub(crate) waiting: bool,
}

/// Takes the outbox lock of one kind of each of `users` that no other task holds (for this
/// transaction), and returns those users' undone entries of that kind in id order. An
/// announcement is `waiting` while its own event's invalidation is undone.
///
/// The transaction's commit is asynchronous: a done-mark lost in a crash only means one more
/// delivery, and at least once is the contract.
pub(crate) async fn lock_outboxes(
    tx: &mut Transaction<'_, Postgres>,
    users: &[String],
    kind: OutboxKind,
) -> sqlx::Result<(Vec<String>, Vec<OutboxEntry>)> {
    let locked: Vec<String> = sqlx::query_scalar(
        "WITH settings AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true))
         SELECT u FROM settings, unnest($1::text[]) AS u
          WHERE pg_try_advisory_xact_lock(hashtextextended('refit_outbox:' || $2 || ':' || u, 0))",
    )
    .bind(users)
    .bind(kind.as_str())
    .fetch_all(&mut **tx)
    .await?;
    if locked.is_empty() {
        return Ok((locked, Vec::new()));
    }
    let entries = sqlx::query(
        "SELECT o.id, o.event_id, o.user_id, o.kind, o.payload, o.attempts, o.next_attempt_at <= now(),
                EXISTS (SELECT 1 FROM refit_outbox i
                         WHERE i.user_id = o.user_id AND i.event_id = o.event_id
                           AND i.kind = 'invalidate' AND i.done_at IS NULL
                           AND o.kind = 'announce')
           FROM refit_outbox o
          WHERE o.user_id = ANY($1) AND o.kind = $2 AND o.done_at IS NULL
          ORDER BY o.id",
    )
    .bind(&locked)
    .bind(kind.as_str())
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .filter_map(|row| {
        Some(OutboxEntry {
            id: row.get(0),
            event_id: row.get(1),
            user_id: row.get(2),
            kind: OutboxKind::parse(row.get::<&str, _>(3))?,
            payload: row.get(4),
            attempts: row.get(5),
            due: row.get(6),
            waiting: row.get(7),
        })
    })
    .collect();
    Ok((locked, entries))
}

/// Marks entries delivered. Nothing reads a delivered entry again (an announcement waits only for
/// an undone invalidation), so they are deleted, unless `keep` (`REFIT_OUTBOX_RETENTION_SECS` > 0:
/// kept for inspection, stamped `done_at`). An erasure's entries (payload key `erase`) are always
/// deleted, so that nothing naming an erased user stays behind.
pub(crate) async fn outbox_done(
    conn: &mut PgConnection,
    ids: &[i64],
    keep: bool,
) -> sqlx::Result<()> {
    // done_at is when the entry was marked, after its side effect (not the transaction's start,
    // which can precede another task's marking of the invalidation this entry waited for).
    sqlx::query(
        "WITH deleted AS (
             DELETE FROM refit_outbox o USING unnest($1::bigint[]) AS d(id)
              WHERE o.id = d.id AND (NOT $2 OR o.payload ? 'erase')
         )
         UPDATE refit_outbox o SET done_at = clock_timestamp(), attempts = o.attempts + 1
           FROM unnest($1::bigint[]) AS d(id)
          WHERE $2 AND o.id = d.id AND NOT o.payload ? 'erase'",
    )
    .bind(ids)
    .bind(keep)
    .execute(conn)
    .await
    .map(|_| ())
}

pub(crate) async fn outbox_failed(
    conn: &mut PgConnection,
    id: i64,
    error: &str,
    retry_in: Duration,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE refit_outbox
            SET attempts = attempts + 1, last_error = $2,
                next_attempt_at = now() + make_interval(secs => $3)
          WHERE id = $1",
    )
    .bind(id)
    .bind(error)
    .bind(retry_in.as_secs_f64())
    .execute(conn)
    .await
    .map(|_| ())
}

/// Resolves an entry that can never be delivered: done, `dead_letter` saying why.
pub(crate) async fn outbox_dead_letter(
    conn: &mut PgConnection,
    id: i64,
    error: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE refit_outbox
            SET attempts = attempts + 1, last_error = $2, dead_letter = $2,
                done_at = clock_timestamp()
          WHERE id = $1",
    )
    .bind(id)
    .bind(error)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Users with a due undone outbox entry, oldest first. Entries never tried are left alone for
/// `grace` after they were written: the process that committed them is delivering them.
pub(crate) async fn outbox_due_users(
    pool: &PgPool,
    limit: i64,
    grace: Duration,
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT user_id FROM refit_outbox
          WHERE done_at IS NULL AND next_attempt_at <= now()
            AND (attempts > 0 OR created_at <= now() - make_interval(secs => $2))
          GROUP BY user_id
          ORDER BY min(id)
          LIMIT $1",
    )
    .bind(limit)
    .bind(grace.as_secs_f64())
    .fetch_all(pool)
    .await
}
