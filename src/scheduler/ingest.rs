//! Ingestion: moves committed actuals from the upstream's `actual_rentals` into refit's pending
//! queue, exactly once, in whatever order the upstream's transactions commit.
//!
//! Nothing of refit runs in the upstream's transaction: each actual only records the transaction
//! that inserted it (`actual_rentals.refit_xid`, a column default). Every
//! `REFIT_INGEST_INTERVAL_MS`, one replica at a time (the cursor's row lock) queues,
//! in one statement, every actual whose transaction the cursor snapshot (`refit_ingest_cursor`,
//! that of the last ingest) had not seen committed and the statement's own snapshot sees
//! committed, and stores that snapshot as the cursor. A transaction still running when one ingest
//! looks is taken by the first ingest after it commits, and by no later one (migration
//! 20261202000009 explains the bookkeeping). The statement NOTIFYs `refit_actuals` once per user
//! — `<count>:<first actual id>:<user id>`, see `scheduler::pending::Arrival::parse` — from
//! refit's own transaction, which wakes every replica's scheduler.
//!
//! Owns `refit_ingest_cursor` and the inserts into `refit_pending`; reads nothing a retrain owns.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// After a failed ingest the loop waits at least this long, doubling up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// While the cursor saw transactions in progress, the loop ingests at least every this many
/// turns (their actuals, once committed, are not seen by [`arrived`]).
const LATE_CHECK_EVERY: u32 = 10;

/// What one ingest did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    /// Actuals queued for training.
    pub queued: i64,
    /// Actuals set aside in `refit_unconsumable_actuals` (user id over 1000 bytes).
    pub set_aside: i64,
    /// Users notified (those with queued actuals).
    pub users: i64,
    /// The cursor after the ingest (`pg_snapshot` text).
    pub cursor: String,
}

/// Queues every actual committed since the last ingest (see the module docs). `None`: another
/// replica is ingesting right now.
pub async fn ingest(pool: &PgPool) -> sqlx::Result<Option<Ingested>> {
    // The ingest statement must take its snapshot after the cursor is locked, to see every
    // actual the previous ingest saw: a statement of its own, under READ COMMITTED (where
    // FOR UPDATE also returns the cursor as the previous ingest committed it). Its plan must
    // not depend on statistics (autovacuum may be off, actual_rentals grows by the second):
    // the new actuals are read through the refit_xid index, always (and without JIT, which the
    // disabled scans' costs would trigger: 100 ms a statement). It commits without
    // waiting for the WAL flush: a retrain that consumes what it queued flushes it with its
    // own commit, and a crash that loses it loses its cursor too, so the next ingest redoes it.
    let mut tx = pool
        .begin_with(
            "BEGIN ISOLATION LEVEL READ COMMITTED;
             SET LOCAL enable_seqscan = off;
             SET LOCAL jit = off;
             SET LOCAL synchronous_commit = off",
        )
        .await?;
    let cursor: Option<String> =
        sqlx::query_scalar("SELECT snapshot::text FROM refit_ingest_cursor FOR UPDATE SKIP LOCKED")
            .fetch_optional(&mut *tx)
            .await?;
    let Some(cursor) = cursor else {
        tx.rollback().await?;
        return Ok(None);
    };
    let done = queue_arrivals(&mut tx, &cursor).await?;
    tx.commit().await?;
    Ok(Some(done))
}

/// The ingest statement: queues (or, for a user id over 1000 bytes, sets aside) every actual
/// the `cursor` snapshot did not see committed — its transaction id at or past the snapshot's
/// xmax, or one of those it saw in progress — that this statement's snapshot sees committed,
/// advances the cursor to this statement's snapshot, and notifies `refit_actuals` once per user
/// with queued actuals. The two kinds of arrival are two index scans joined by `UNION ALL` (they
/// cannot overlap: the in-progress list holds ids below xmax); written as one `OR`, PostgreSQL
/// walks the whole index whenever the list is not empty (tests/integration/explain.rs).
async fn queue_arrivals(conn: &mut PgConnection, cursor: &str) -> sqlx::Result<Ingested> {
    let (queued, set_aside, users, advanced): (i64, i64, i64, String) = sqlx::query_as(
        "WITH arrived AS MATERIALIZED (
             SELECT a.id,
                    (SELECT r.user_id FROM prediction_requests r
                      WHERE r.request_id = a.request_id) AS user_id
               FROM (SELECT id, request_id FROM actual_rentals
                      WHERE refit_xid >= pg_snapshot_xmax($1::pg_snapshot)
                     UNION ALL
                     SELECT id, request_id FROM actual_rentals
                      WHERE refit_xid = ANY (ARRAY(SELECT pg_snapshot_xip($1::pg_snapshot)))) a
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
             RETURNING snapshot::text
         ),
         notified AS (
             SELECT pg_notify('refit_actuals', n || ':' || first || ':' || user_id)
               FROM (SELECT user_id, count(*) AS n, min(actual_id) AS first
                       FROM queued
                      GROUP BY user_id
                      ORDER BY min(actual_id)) per_user
         )
         SELECT (SELECT count(*) FROM queued),
                (SELECT count(*) FROM set_aside),
                (SELECT count(*) FROM notified),
                (SELECT snapshot FROM advanced)",
    )
    .bind(cursor)
    .fetch_one(conn)
    .await?;
    Ok(Ingested {
        queued,
        set_aside,
        users,
        cursor: advanced,
    })
}

/// Whether actuals newer than every transaction `cursor` knew of have committed: the newest
/// visible `refit_xid`, read from the end of its index whatever the statistics say. (Those
/// `cursor` saw in progress are not looked for here: see [`tick`].)
async fn arrived(pool: &PgPool, cursor: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT coalesce((SELECT max(refit_xid) FROM actual_rentals)
                         >= pg_snapshot_xmax($1::pg_snapshot), false)",
    )
    .bind(cursor)
    .fetch_one(pool)
    .await
}

/// Whether the `pg_snapshot` text `xmin:xmax:xip,...` saw transactions in progress.
fn saw_in_progress(snapshot: &str) -> bool {
    snapshot
        .split(':')
        .nth(2)
        .is_some_and(|xip| !xip.is_empty())
}

/// Ingests every `interval` until `stop`, or less often when a cheap check says there is
/// nothing to take (see [`Watch`]). Failures are logged and retried after a growing pause.
pub(crate) async fn run(pool: PgPool, interval: Duration, stop: CancellationToken) {
    let mut watch = Watch::default();
    let mut backoff = FIRST_BACKOFF;
    loop {
        let pause = match watch.tick(&pool).await {
            Ok(()) => {
                backoff = FIRST_BACKOFF;
                interval
            }
            Err(e) => {
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "ingest failed");
                watch = Watch::default();
                let pause = backoff.max(interval);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                pause
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// When the loop ingests. After an ingest that found something, it ingests again right away
/// (more is likely). Otherwise it ingests when [`arrived`] sees a newer transaction's actual, and
/// every [`LATE_CHECK_EVERY`] turns while the cursor saw transactions in progress (one of them
/// may have committed actuals since). Another replica's ingest only makes the cursor kept here
/// older: a needless ingest, never a missed actual.
#[derive(Debug, Default)]
struct Watch {
    /// The cursor after this replica's last ingest; `None`: ingest without checking.
    cursor: Option<String>,
    /// Turns since the last ingest.
    idle: u32,
}

impl Watch {
    async fn tick(&mut self, pool: &PgPool) -> sqlx::Result<()> {
        if let Some(cursor) = &self.cursor {
            self.idle += 1;
            let late_check = saw_in_progress(cursor) && self.idle >= LATE_CHECK_EVERY;
            if !late_check && !arrived(pool, cursor).await? {
                return Ok(());
            }
        }
        self.idle = 0;
        let Some(done) = ingest(pool).await? else {
            self.cursor = None; // another replica is ingesting: more may be coming
            return Ok(());
        };
        let found = done.queued + done.set_aside > 0;
        if found {
            debug!(
                queued = done.queued,
                set_aside = done.set_aside,
                users = done.users,
                "actuals ingested"
            );
        }
        if done.set_aside > 0 {
            warn!(
                actuals = done.set_aside,
                "actuals set aside: user id over 1000 bytes (refit_unconsumable_actuals)"
            );
        }
        self.cursor = (!found).then_some(done.cursor);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::saw_in_progress;

    #[test]
    fn a_snapshot_saw_transactions_in_progress_when_its_list_is_not_empty() {
        assert!(!saw_in_progress("100:100:"));
        assert!(saw_in_progress("100:105:100,103"));
        assert!(!saw_in_progress("not a snapshot"));
    }
}
