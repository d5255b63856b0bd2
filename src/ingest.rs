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
//! — `<count>:<first actual id>:<user id>`, see `service::Arrival::parse` — from refit's own
//! transaction, which wakes every replica's scheduler.
//!
//! Owns `refit_ingest_cursor` and the inserts into `refit_pending`; reads nothing a retrain owns.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// After a failed ingest the loop waits at least this long, doubling up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

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
    // FOR UPDATE also returns the cursor as the previous ingest committed it).
    let mut tx = pool
        .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
        .await?;
    let cursor: Option<String> =
        sqlx::query_scalar("SELECT snapshot::text FROM refit_ingest_cursor FOR UPDATE SKIP LOCKED")
            .fetch_optional(&mut *tx)
            .await?;
    let Some(cursor) = cursor else {
        tx.rollback().await?;
        return Ok(None);
    };
    let done = queue_arrivals(&mut tx, cursor).await?;
    tx.commit().await?;
    Ok(Some(done))
}

/// The ingest statement: queues (or, for a user id over 1000 bytes, sets aside) every actual
/// committed since `cursor`, advances the cursor to the statement's snapshot if it found any,
/// and notifies `refit_actuals` once per user with queued actuals.
async fn queue_arrivals(conn: &mut PgConnection, cursor: String) -> sqlx::Result<Ingested> {
    let (queued, set_aside, users, advanced): (i64, i64, i64, Option<String>) = sqlx::query_as(
        "WITH arrived AS MATERIALIZED (
             SELECT a.id, r.user_id
               FROM actual_rentals a
               JOIN prediction_requests r ON r.request_id = a.request_id
              WHERE a.refit_xid >= pg_snapshot_xmin($1::pg_snapshot)
                AND NOT pg_visible_in_snapshot(a.refit_xid, $1::pg_snapshot)
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
              WHERE EXISTS (SELECT 1 FROM arrived)
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
    .bind(&cursor)
    .fetch_one(conn)
    .await?;
    Ok(Ingested {
        queued,
        set_aside,
        users,
        cursor: advanced.unwrap_or(cursor),
    })
}

/// Whether actuals committed since `cursor` are there: one read by the `refit_xid` index.
async fn arrived(pool: &PgPool, cursor: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (
             SELECT 1 FROM actual_rentals
              WHERE refit_xid >= pg_snapshot_xmin($1::pg_snapshot)
                AND NOT pg_visible_in_snapshot(refit_xid, $1::pg_snapshot))",
    )
    .bind(cursor)
    .fetch_one(pool)
    .await
}

/// Ingests every `interval` until `stop`. Between ingests a cheap check against the last cursor
/// this replica saw tells whether there is anything to take (another replica's ingest only makes
/// that cursor older: a needless ingest, never a missed actual). Failures are logged and retried
/// after a growing pause.
pub(crate) async fn run(pool: PgPool, interval: Duration, stop: CancellationToken) {
    // `None`: ingest without checking (at start, and after an ingest that found anything).
    let mut cursor: Option<String> = None;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let pause = match tick(&pool, cursor.as_deref()).await {
            Ok(next) => {
                cursor = next;
                backoff = FIRST_BACKOFF;
                interval
            }
            Err(e) => {
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "ingest failed");
                cursor = None;
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

/// One turn of [`run`]: the cursor to check against next time (`None`: ingest right away).
async fn tick(pool: &PgPool, cursor: Option<&str>) -> sqlx::Result<Option<String>> {
    if let Some(cursor) = cursor {
        if !arrived(pool, cursor).await? {
            return Ok(Some(cursor.to_owned()));
        }
    }
    let Some(done) = ingest(pool).await? else {
        return Ok(None); // another replica is ingesting: more may be coming
    };
    if done.queued + done.set_aside == 0 {
        return Ok(Some(done.cursor));
    }
    debug!(
        queued = done.queued,
        set_aside = done.set_aside,
        users = done.users,
        "actuals ingested"
    );
    if done.set_aside > 0 {
        warn!(
            actuals = done.set_aside,
            "actuals set aside: user id over 1000 bytes (refit_unconsumable_actuals)"
        );
    }
    Ok(None)
}
