//! The actuals refit holds: the pending queue (`refit_pending`, fed by the ingest), what each
//! retrain consumed (`refit_consumed_actuals`: trained, held out or set aside, once each) and what
//! can never be consumed (`refit_unconsumable_actuals`). Rows are read into typed structs.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use super::query::{query, query_as, query_scalar};

use crate::retrain::features::{ActualRow, SetAside};

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

pub const DUE_USERS: &str = "WITH per_user AS (
             SELECT user_id, count(*) AS pending, min(actual_id) AS first,
                    min(enqueued_at) AS oldest
               FROM refit_pending
              GROUP BY user_id
         ), due AS (
             SELECT u.user_id, u.pending, u.pending < $1 AS stale, u.first
               FROM per_user u
               LEFT JOIN refit_models m ON m.user_id = u.user_id
              WHERE (m.retry_after IS NULL OR m.retry_after <= now())
                AND (u.pending >= $1
                     OR ($2::float8 IS NOT NULL AND u.pending >= $3
                         AND u.oldest <= now() - make_interval(secs => $2)))
         )
         SELECT (SELECT coalesce(sum(pending), 0) FROM per_user)::bigint AS total,
                coalesce(array_agg(user_id ORDER BY first), '{}') AS users,
                coalesce(array_agg(pending ORDER BY first), '{}') AS pending,
                coalesce(array_agg(stale ORDER BY first), '{}') AS stale
           FROM due";

/// What the scheduler's full scan found: the due users and every pending actual's count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scan {
    pub(crate) due: Vec<DueUser>,
    /// Pending actuals of all users (the `refit_pending_actuals` gauge).
    pub(crate) total: i64,
}

/// [`DUE_USERS`]'s one row: the due users as column arrays.
#[derive(sqlx::FromRow)]
struct ScanRow {
    total: i64,
    users: Vec<String>,
    pending: Vec<i64>,
    stale: Vec<bool>,
}

/// Users with `>= threshold` pending actuals, or stale ones, that are not backing off after a
/// failure, in the order their oldest pending actual arrived; and the count of all pending
/// actuals, from the same pass over `refit_pending`.
pub(crate) async fn due_users(
    pool: &PgPool,
    threshold: i64,
    staleness: Option<Staleness>,
) -> sqlx::Result<Scan> {
    let row: ScanRow = query_as(DUE_USERS)
        .bind(threshold)
        .bind(staleness.map(|s| s.after.as_secs_f64()))
        .bind(staleness.map_or(1, |s| s.min_rows))
        .fetch_one(pool)
        .await?;
    let due = row
        .users
        .into_iter()
        .zip(row.pending)
        .zip(row.stale)
        .map(|((user_id, pending), stale)| DueUser {
            user_id,
            pending,
            stale,
        })
        .collect();
    Ok(Scan {
        due,
        total: row.total,
    })
}

/// What the scheduler knows of one user it asked about.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct PendingCount {
    pub(crate) user_id: String,
    pub(crate) pending: i64,
    /// The user is backing off after a failed retrain.
    pub(crate) backing_off: bool,
}

pub const PENDING_COUNTS: &str = "SELECT p.user_id, count(*) AS pending,
                coalesce(bool_or(m.retry_after > now()), false) AS backing_off
           FROM refit_pending p
           LEFT JOIN refit_models m ON m.user_id = p.user_id
          WHERE p.user_id = ANY($1)
          GROUP BY p.user_id";

/// Pending actuals of each of `users` (users with none are left out): an index range scan per
/// user, for the users notifications name.
pub(crate) async fn pending_counts(
    pool: &PgPool,
    users: &[String],
) -> sqlx::Result<Vec<PendingCount>> {
    query_as(PENDING_COUNTS).bind(users).fetch_all(pool).await
}

pub const PENDING_TOTAL: &str = "SELECT count(*) FROM refit_pending";

/// All pending actuals (for the gauge).
pub(crate) async fn pending_total(pool: &PgPool) -> sqlx::Result<i64> {
    query_scalar(PENDING_TOTAL).fetch_one(pool).await
}

/// Longest user id refit takes, in bytes: the trigger sets longer ones' actuals aside
/// (`user_id_too_long`, migrations/20261201000008_defects.up.sql), and imports refuse them.
pub(crate) const MAX_USER_ID_BYTES: usize = 1000;

/// Why a pending actual can never be consumed (`refit_unconsumable_actuals.reason`, the label of
/// `refit_unconsumable_actuals_total`).
pub(crate) const UNCONSUMABLE_REASONS: [&str; 1] = ["already_consumed"];

pub const SET_ASIDE_CONSUMED_AGAIN: &str = "WITH again AS (
             DELETE FROM refit_pending p USING refit_consumed_actuals c
              WHERE p.user_id = $1 AND c.actual_id = p.actual_id
             RETURNING p.actual_id, c.user_id AS consumed_for, c.version, c.outcome
         )
         INSERT INTO refit_unconsumable_actuals (actual_id, user_id, reason, detail)
         SELECT actual_id, $1, 'already_consumed',
                format('actual id %s was consumed before (%s, user %s, version %s); deleted and inserted again upstream?',
                       actual_id, outcome, consumed_for, coalesce(version::text, 'none'))
           FROM again
         RETURNING actual_id";

/// Moves the user's pending actuals whose id was consumed before — deleted upstream and inserted
/// again with the same id — out of the queue into `refit_unconsumable_actuals`, with the reason:
/// consuming them again would violate `refit_consumed_actuals`' primary key and fail every
/// retrain of the user. Returns their ids.
async fn set_aside_consumed_again(
    conn: &mut PgConnection,
    user_id: &str,
) -> sqlx::Result<Vec<i64>> {
    query_scalar(SET_ASIDE_CONSUMED_AGAIN)
        .bind(user_id)
        .fetch_all(conn)
        .await
}

/// A pending actual with its request's features, and when it became pending.
pub(crate) struct PendingActual {
    pub(crate) row: ActualRow,
    pub(crate) enqueued_at: DateTime<Utc>,
}

/// A row of [`READ_PENDING`]. `gone`: the actual is gone upstream or its request is now another
/// user's. A NULL value or features (which the data contract rules out) reads as NaN or JSON
/// `null`, which the batch sets aside with its reason.
#[derive(sqlx::FromRow)]
struct PendingRow {
    actual_id: i64,
    actual_value: Option<f64>,
    features: Option<String>,
    enqueued_at: DateTime<Utc>,
    gone: bool,
    consumed_before: bool,
}

/// The batch first (the user's oldest pending rows, by the primary key's order), then each row's
/// lookups as index probes: the actual with its request, and whether it was consumed before,
/// each a `LATERAL … LIMIT 1`, which the planner cannot turn into a join (nor an `EXISTS` into a
/// hashed scan). Written as plain joins, it hash-joined the batch against whole scans of `actual_rentals`
/// and `refit_consumed_actuals` while they held a few thousand rows (tests/integration/explain.rs).
pub const READ_PENDING: &str =
    "SELECT p.actual_id, x.actual_value, x.features, p.enqueued_at, x.found IS NULL AS gone,
                c.found IS NOT NULL AS consumed_before
           FROM (SELECT actual_id, enqueued_at FROM refit_pending
                  WHERE user_id = $1
                  ORDER BY actual_id
                  LIMIT $2) p
           LEFT JOIN LATERAL (
                SELECT true AS found, a.actual_value, r.features::text AS features
                  FROM actual_rentals a
                  JOIN prediction_requests r ON r.request_id = a.request_id
                 WHERE a.id = p.actual_id AND r.user_id = $1
                 LIMIT 1) x ON true
           LEFT JOIN LATERAL (
                SELECT true AS found FROM refit_consumed_actuals
                 WHERE actual_id = p.actual_id
                 LIMIT 1) c ON true
          ORDER BY p.actual_id";

pub const FORGET_PENDING: &str =
    "DELETE FROM refit_pending WHERE user_id = $1 AND actual_id = ANY($2)";

/// What [`read_pending`] found.
#[derive(Default)]
pub(crate) struct PendingBatch {
    /// The oldest pending actuals that can be trained on.
    pub(crate) rows: Vec<PendingActual>,
    /// Pending rows deleted: their actual is gone upstream, or its id is now another user's.
    pub(crate) forgotten: u64,
    /// Pending actuals moved to `refit_unconsumable_actuals`: their id was consumed before.
    pub(crate) consumed_again: Vec<i64>,
}

impl PendingBatch {
    /// Whether the read changed the queue (the caller commits it even when not training).
    pub(crate) fn changed(&self) -> bool {
        self.forgotten > 0 || !self.consumed_again.is_empty()
    }
}

/// The user's oldest `limit` pending actuals joined with their requests' features, in one
/// statement. What can never be trained on is dealt with on the way, and the read repeated (rare:
/// it takes an upstream deleting actuals):
/// - pending rows whose actual is gone upstream, or whose id now belongs to another user's
///   request, are deleted (`refit_pending` has no foreign key to `actual_rentals`: migration
///   20261203000012); the new owner's pending row is a row of its own and stays;
/// - an actual whose id was consumed before is set aside ([`set_aside_consumed_again`]).
///
/// The caller commits.
pub(crate) async fn read_pending(
    conn: &mut PgConnection,
    user_id: &str,
    limit: i64,
) -> sqlx::Result<PendingBatch> {
    let mut batch = PendingBatch::default();
    loop {
        let rows: Vec<PendingRow> = query_as(READ_PENDING)
            .bind(user_id)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?;
        if rows.iter().any(|r| r.consumed_before) {
            let ids = set_aside_consumed_again(conn, user_id).await?;
            batch.consumed_again.extend(ids);
            continue;
        }
        let gone: Vec<i64> = rows
            .iter()
            .filter(|r| r.gone)
            .map(|r| r.actual_id)
            .collect();
        if gone.is_empty() {
            batch.rows = rows.into_iter().map(PendingRow::live).collect();
            return Ok(batch);
        }
        batch.forgotten += query(FORGET_PENDING)
            .bind(user_id)
            .bind(&gone)
            .execute(&mut *conn)
            .await?
            .rows_affected();
    }
}

impl PendingRow {
    /// The row to train on (not `gone`).
    fn live(self) -> PendingActual {
        PendingActual {
            row: ActualRow {
                actual_id: self.actual_id,
                actual_value: self.actual_value.unwrap_or(f64::NAN),
                features: self.features.unwrap_or_else(|| "null".to_owned()),
            },
            enqueued_at: self.enqueued_at,
        }
    }
}

/// The actuals one retrain consumes, as the column arrays the consuming statements bind.
pub(crate) struct Consumed<'a> {
    pub(super) ids: Vec<i64>,
    pub(super) outcomes: Vec<&'static str>,
    pub(super) reasons: Vec<Option<&'a str>>,
    pub(super) details: Vec<Option<&'a str>>,
    /// Each trained actual's matrix row (`refit_consumed_actuals.line`), none for the others.
    pub(super) lines: Vec<Option<Vec<u8>>>,
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
            lines: vec![None; n],
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

    /// Stores the trained actuals' rows (`lines`, one per trained actual, in order) with them.
    pub(crate) fn with_lines(mut self, lines: Vec<Vec<u8>>) -> Self {
        debug_assert!(lines.len() <= self.ids.len());
        for (slot, line) in self.lines.iter_mut().zip(lines) {
            *slot = Some(line);
        }
        self
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
    pub(super) fn check(&self, user_id: &str, removed: i64) -> sqlx::Result<()> {
        if removed == self.ids.len() as i64 {
            return Ok(());
        }
        Err(sqlx::Error::Protocol(format!(
            "expected to consume {} pending actuals of user {user_id:?}, found {removed}",
            self.ids.len()
        )))
    }
}

pub const CONSUME: &str = "WITH consumed AS (
             INSERT INTO refit_consumed_actuals (actual_id, user_id, version, outcome, reason, detail, line)
             SELECT id, $1, CASE WHEN outcome = 'set_aside' THEN NULL ELSE $2 END, outcome, reason, detail, line
               FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[], $7::bytea[])
                    AS t(id, outcome, reason, detail, line)
         ), removed AS (
             DELETE FROM refit_pending p USING unnest($3::bigint[]) AS c(id)
              WHERE p.actual_id = c.id AND p.user_id = $1 RETURNING 1
         )
         SELECT count(*) FROM removed";

/// Marks actuals consumed — trained or held out by `version`, or set aside with their reasons —
/// and removes them from the pending queue, in one statement. The primary key of
/// `refit_consumed_actuals` refuses any actual consumed before.
pub(crate) async fn consume(
    conn: &mut PgConnection,
    user_id: &str,
    version: Option<i32>,
    consumed: &Consumed<'_>,
) -> sqlx::Result<()> {
    let removed: i64 = query_scalar(CONSUME)
        .bind(user_id)
        .bind(version)
        .bind(&consumed.ids)
        .bind(&consumed.outcomes)
        .bind(&consumed.reasons)
        .bind(&consumed.details)
        .bind(&consumed.lines)
        .fetch_one(&mut *conn)
        .await?;
    consumed.check(user_id, removed)
}

pub const RECENT_ACTUALS: &str = "SELECT c.actual_id, a.actual_value, r.features::text AS features
           FROM refit_consumed_actuals c
           JOIN actual_rentals a ON a.id = c.actual_id
           JOIN prediction_requests r ON r.request_id = a.request_id
          WHERE c.user_id = $1 AND c.outcome IN ('trained', 'held_out')
            AND c.version <> ALL (ARRAY(SELECT version FROM refit_model_versions
                                         WHERE user_id = $1 AND status <> 'ready'))
          ORDER BY c.actual_id DESC
          LIMIT $2";

/// The user's most recently consumed actuals that a ready version trained on, newest first: the
/// window the gate scores on and a rebuild trains on. Rows of rejected versions are left out
/// unless the version is reinstated.
pub(crate) async fn recent_actuals(
    conn: &mut PgConnection,
    user_id: &str,
    limit: i64,
) -> sqlx::Result<Vec<ActualRow>> {
    query_as(RECENT_ACTUALS)
        .bind(user_id)
        .bind(limit)
        .fetch_all(conn)
        .await
}

pub const RECENT_LINES: &str = "SELECT c.actual_id, c.line
           FROM refit_consumed_actuals c
          WHERE c.user_id = $1 AND c.outcome IN ('trained', 'held_out')
            AND c.version <> ALL (ARRAY(SELECT version FROM refit_model_versions
                                         WHERE user_id = $1 AND status <> 'ready'))
          ORDER BY c.actual_id DESC
          LIMIT $2";

/// The user's window as [`recent_actuals`] selects it, newest first, as the rows refit stored
/// when it trained on them (`line`, none for actuals consumed before lines were stored).
pub(crate) async fn recent_lines(
    conn: &mut PgConnection,
    user_id: &str,
    limit: i64,
) -> sqlx::Result<Vec<(i64, Option<Vec<u8>>)>> {
    query_as(RECENT_LINES)
        .bind(user_id)
        .bind(limit)
        .fetch_all(conn)
        .await
}

pub const ACTUALS_OF_VERSION: &str =
    "SELECT c.actual_id, a.actual_value, r.features::text AS features
           FROM refit_consumed_actuals c
           JOIN actual_rentals a ON a.id = c.actual_id
           JOIN prediction_requests r ON r.request_id = a.request_id
          WHERE c.user_id = $1 AND c.version = $2 AND c.outcome IN ('trained', 'held_out')
          ORDER BY c.actual_id";

/// The actuals `version` trained on, oldest first (a rejected version's batch, for its
/// reinstatement).
pub(crate) async fn actuals_of_version(
    conn: &mut PgConnection,
    user_id: &str,
    version: i32,
) -> sqlx::Result<Vec<ActualRow>> {
    query_as(ACTUALS_OF_VERSION)
        .bind(user_id)
        .bind(version)
        .fetch_all(conn)
        .await
}
