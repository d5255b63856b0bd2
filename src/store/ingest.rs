//! The ingest's statements (src/scheduler/ingest.rs explains the bookkeeping): the cursor
//! (`refit_ingest_cursor`) and the inserts into `refit_pending` of what the upstream committed.

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use super::query::{query_as, query_scalar};
use crate::config::{Secret, SessionLimits};

/// What one ingest did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    /// Actuals queued for training.
    pub queued: i64,
    /// Actuals set aside in `refit_unconsumable_actuals` (user id over 1000 bytes).
    pub set_aside: i64,
    /// Users with queued actuals.
    pub users: i64,
    /// Notifications sent: one, or more when the users' ids exceed NOTIFY's 8,000 bytes.
    pub notifications: i64,
    /// The cursor after the ingest (`pg_snapshot` text).
    pub cursor: String,
}

/// How the ingest's session plans and commits. Its statements' plans must not depend on
/// statistics (autovacuum may be off, actual_rentals grows by the second): the new actuals are
/// read through the refit_xid index, always (and without JIT, which the disabled scans' costs
/// would trigger: 100 ms a statement). So, unlike refit's other sessions, it plans each statement
/// once per session (a generic plan): planning the queueing statement for its arguments took
/// 1.5 ms, more than running it, hundreds of times a second while the upstream writes. It commits
/// without waiting for the WAL flush: a retrain that consumes what it queued flushes it with its
/// own commit, and a crash that loses it loses its cursor too, so the next ingest redoes it.
pub const SESSION: &[(&str, &str)] = &[
    ("plan_cache_mode", "force_generic_plan"),
    ("enable_seqscan", "off"),
    ("jit", "off"),
    ("synchronous_commit", "off"),
];

/// The ingest's one session (named `refit`, like the service's others), set up as [`SESSION`]
/// says. Checking it out does not ping it first (sqlx's default, a round trip each time): it is
/// checked out hundreds of times a second while the upstream writes, and a lost session fails
/// the ingest's one statement instead, which the loop retries.
pub(crate) async fn connect(url: &Secret, limits: &SessionLimits) -> anyhow::Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false);
    super::open(
        pool,
        super::session_options("refit", url, limits, SESSION)?,
        url,
    )
    .await
}

/// What [`QUEUE_ARRIVALS`] returns: no cursor when it did not hold the cursor's lock.
#[derive(sqlx::FromRow)]
struct IngestRow {
    queued: i64,
    set_aside: i64,
    users: i64,
    notifications: i64,
    cursor: Option<String>,
}

pub const QUEUE_ARRIVALS: &str = "WITH seen AS MATERIALIZED (
             SELECT snapshot FROM refit_ingest_cursor
         ),
         locked AS MATERIALIZED (
             SELECT snapshot FROM refit_ingest_cursor FOR UPDATE SKIP LOCKED
         ),
         taken AS MATERIALIZED (
             SELECT s.snapshot FROM seen s JOIN locked l ON l.snapshot::text = s.snapshot::text
         ),
         arrived AS MATERIALIZED (
             SELECT a.id,
                    (SELECT r.user_id FROM prediction_requests r
                      WHERE r.request_id = a.request_id) AS user_id
               FROM (SELECT id, request_id FROM actual_rentals
                      WHERE refit_xid >= (SELECT pg_snapshot_xmax(snapshot) FROM taken)
                     UNION ALL
                     SELECT id, request_id FROM actual_rentals
                      WHERE refit_xid = ANY (ARRAY(SELECT pg_snapshot_xip(snapshot) FROM taken))) a
         ),
         set_aside AS (
             INSERT INTO refit_unconsumable_actuals (actual_id, user_id, reason, detail)
             SELECT id, user_id, 'user_id_too_long',
                    'the user id is ' || octet_length(user_id) || ' bytes; refit takes at most 1000'
               FROM arrived
              WHERE octet_length(user_id) > 1000
             RETURNING 1
         ),
         queued AS (
             INSERT INTO refit_pending (actual_id, user_id)
             SELECT id, user_id FROM arrived WHERE octet_length(user_id) <= 1000
             ON CONFLICT DO NOTHING
             RETURNING actual_id, user_id
         ),
         advanced AS (
             UPDATE refit_ingest_cursor SET snapshot = pg_current_snapshot(), advanced_at = now()
              WHERE EXISTS (SELECT FROM taken)
             RETURNING snapshot::text
         ),
         notified AS (
             SELECT pg_notify('refit_actuals', payload)
               FROM (SELECT string_agg(entry, '' ORDER BY first) AS payload
                       FROM (SELECT entry, first,
                                    (sum(octet_length(entry)) OVER (ORDER BY first)
                                     - octet_length(entry)) / 6900 AS part
                               FROM (SELECT n || ':' || first || ':' || octet_length(user_id)
                                            || ':' || user_id AS entry, first
                                       FROM (SELECT user_id, count(*) AS n, min(actual_id) AS first
                                               FROM queued
                                              GROUP BY user_id) per_user) entries) parts
                      GROUP BY part
                      ORDER BY part) payloads
         )
         SELECT (SELECT count(*) FROM queued) AS queued,
                (SELECT count(*) FROM set_aside) AS set_aside,
                (SELECT count(DISTINCT user_id) FROM queued) AS users,
                (SELECT count(*) FROM notified) AS notifications,
                (SELECT snapshot FROM advanced) AS cursor";

/// The ingest, one statement in a transaction of its own: queues (or, for a user id over 1000
/// bytes, sets aside) every actual the cursor snapshot did not see committed — its transaction
/// id at or past the snapshot's xmax, or one of those it saw in progress — that this statement's
/// snapshot sees committed, advances the cursor to this statement's snapshot, and notifies
/// `refit_actuals` of every user with queued actuals: one notification, entries
/// `<count>:<first actual id>:<user id's bytes>:<user id>` back to back in the order of their
/// first actual (in parts under NOTIFY's 8,000-byte limit when the ids are long). `None`: it did not take the cursor — another
/// replica holds its lock, or committed a newer cursor after this statement's snapshot was taken
/// (`locked` differs from `seen`), whose actuals this snapshot might not see; only a snapshot
/// that sees the cursor it locks covers every actual that cursor did. (Under a database default
/// stricter than READ COMMITTED, that race fails the statement with a serialization error
/// instead, which the loop retries.)
///
/// The two kinds of arrival are two index scans joined by `UNION ALL` (they cannot overlap: the
/// in-progress list holds ids below xmax); written as one `OR`, PostgreSQL walks the whole index
/// whenever the list is not empty (tests/integration/explain.rs). An actual already pending for
/// its user (deleted upstream and inserted again with the same id) is not queued twice; one
/// inserted again for another user's request is queued for that user (migration 20261203000012).
pub(crate) async fn queue_arrivals(pool: &PgPool) -> sqlx::Result<Option<Ingested>> {
    let row: IngestRow = query_as(QUEUE_ARRIVALS).fetch_one(pool).await?;
    Ok(row.cursor.map(|cursor| Ingested {
        queued: row.queued,
        set_aside: row.set_aside,
        users: row.users,
        notifications: row.notifications,
        cursor,
    }))
}

pub const ARRIVED: &str = "SELECT coalesce((SELECT max(refit_xid) FROM actual_rentals)
                                   >= pg_snapshot_xmax($1::pg_snapshot), false)
                          OR EXISTS (SELECT 1 FROM actual_rentals
                                      WHERE refit_xid = ANY ($2::text[]::xid8[]))";

/// Whether actuals `cursor` did not see have committed since: a transaction newer than every
/// one it knew of (the newest visible `refit_xid`, read from the end of its index whatever the
/// statistics say), or one it saw in progress (one index probe each; the list is bound as
/// values, so the planner counts them rather than guessing).
pub(crate) async fn arrived(pool: &PgPool, cursor: &str) -> sqlx::Result<bool> {
    query_scalar(ARRIVED)
        .bind(cursor)
        .bind(in_progress(cursor))
        .fetch_one(pool)
        .await
}

/// The transactions the `pg_snapshot` text `xmin:xmax:xip,...` saw in progress.
pub(crate) fn in_progress(snapshot: &str) -> Vec<&str> {
    snapshot.split(':').nth(2).map_or(Vec::new(), |xip| {
        xip.split(',').filter(|x| !x.is_empty()).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::in_progress;

    #[test]
    fn a_snapshots_in_progress_list_is_read_from_its_text() {
        assert!(in_progress("100:100:").is_empty());
        assert_eq!(in_progress("100:105:100,103"), ["100", "103"]);
        assert!(in_progress("not a snapshot").is_empty());
    }
}
