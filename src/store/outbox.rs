//! The outbox rows (`refit_outbox`): side effects recorded with a retrain's commit, locked per
//! user and kind for delivery, marked done, failed or dead-lettered.

use std::time::Duration;

use serde_json::Value;
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};

use super::query::{query, query_as, query_scalar};
use uuid::Uuid;

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

pub(crate) const ENQUEUE_OUTBOX: &str =
    "INSERT INTO refit_outbox (event_id, user_id, kind, payload)
         SELECT $1, $2, kind, payload
           FROM unnest($3::text[], $4::jsonb[]) WITH ORDINALITY AS t(kind, payload, n)
          ORDER BY n";

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
    query(ENQUEUE_OUTBOX)
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

pub(crate) const LOCK_OUTBOXES: &str =
    "WITH settings AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true))
         SELECT u FROM settings, unnest($1::text[]) AS u
          WHERE pg_try_advisory_xact_lock(hashtextextended('refit_outbox:' || $2 || ':' || u, 0))";

pub const READ_OUTBOXES: &str = "SELECT o.id, o.event_id, o.user_id, o.kind, o.payload, o.attempts,
                o.next_attempt_at <= now() AS due,
                EXISTS (SELECT 1 FROM refit_outbox i
                         WHERE i.user_id = o.user_id AND i.event_id = o.event_id
                           AND i.kind = 'invalidate' AND i.done_at IS NULL
                           AND o.kind = 'announce') AS waiting
           FROM refit_outbox o
          WHERE o.user_id = ANY($1) AND o.kind = $2 AND o.done_at IS NULL
          ORDER BY o.id";

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
    let locked: Vec<String> = query_scalar(LOCK_OUTBOXES)
        .bind(users)
        .bind(kind.as_str())
        .fetch_all(&mut **tx)
        .await?;
    if locked.is_empty() {
        return Ok((locked, Vec::new()));
    }
    let entries = query(READ_OUTBOXES)
        .bind(&locked)
        .bind(kind.as_str())
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .filter_map(|row| {
            Some(OutboxEntry {
                id: row.get("id"),
                event_id: row.get("event_id"),
                user_id: row.get("user_id"),
                kind: OutboxKind::parse(row.get::<&str, _>("kind"))?,
                payload: row.get("payload"),
                attempts: row.get("attempts"),
                due: row.get("due"),
                waiting: row.get("waiting"),
            })
        })
        .collect();
    Ok((locked, entries))
}

pub const INVALIDATIONS_DONE: &str =
    "WITH settings AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true)),
          deleted AS (
             DELETE FROM refit_outbox o USING settings
              WHERE NOT $3 AND o.user_id = ANY($1) AND o.event_id = ANY($2)
                AND o.kind = 'invalidate' AND o.done_at IS NULL
         )
         UPDATE refit_outbox o SET done_at = clock_timestamp(), attempts = o.attempts + 1
           FROM settings
          WHERE $3 AND o.user_id = ANY($1) AND o.event_id = ANY($2)
            AND o.kind = 'invalidate' AND o.done_at IS NULL";

/// Marks the invalidations of these events delivered, by the fast path, which deletes cache keys
/// without taking the outbox lock (a second `DEL` of a key by the sweep is harmless), in one
/// statement of its own with an asynchronous commit: a mark lost in a crash only means one more
/// `DEL`. Deleted, or kept and stamped `done_at` when `keep` (as [`outbox_done`]).
pub(crate) async fn invalidations_done(
    pool: &PgPool,
    users: &[&str],
    event_ids: &[Uuid],
    keep: bool,
) -> sqlx::Result<()> {
    query(INVALIDATIONS_DONE)
        .bind(users)
        .bind(event_ids)
        .bind(keep)
        .execute(pool)
        .await
        .map(|_| ())
}

pub const OUTBOX_DONE: &str = "WITH deleted AS (
             DELETE FROM refit_outbox o USING unnest($1::bigint[]) AS d(id)
              WHERE o.id = d.id AND (NOT $2 OR o.payload ? 'erase')
         )
         UPDATE refit_outbox o SET done_at = clock_timestamp(), attempts = o.attempts + 1
           FROM unnest($1::bigint[]) AS d(id)
          WHERE $2 AND o.id = d.id AND NOT o.payload ? 'erase'";

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
    query(OUTBOX_DONE)
        .bind(ids)
        .bind(keep)
        .execute(conn)
        .await
        .map(|_| ())
}

pub const OUTBOX_FAILED: &str = "UPDATE refit_outbox
            SET attempts = attempts + 1, last_error = $2,
                next_attempt_at = now() + make_interval(secs => $3)
          WHERE id = $1";

pub(crate) async fn outbox_failed(
    conn: &mut PgConnection,
    id: i64,
    error: &str,
    retry_in: Duration,
) -> sqlx::Result<()> {
    query(OUTBOX_FAILED)
        .bind(id)
        .bind(error)
        .bind(retry_in.as_secs_f64())
        .execute(conn)
        .await
        .map(|_| ())
}

pub const OUTBOX_DEAD_LETTER: &str = "UPDATE refit_outbox
            SET attempts = attempts + 1, last_error = $2, dead_letter = $2,
                done_at = clock_timestamp()
          WHERE id = $1";

/// Resolves an entry that can never be delivered: done, `dead_letter` saying why.
pub(crate) async fn outbox_dead_letter(
    conn: &mut PgConnection,
    id: i64,
    error: &str,
) -> sqlx::Result<()> {
    query(OUTBOX_DEAD_LETTER)
        .bind(id)
        .bind(error)
        .execute(conn)
        .await
        .map(|_| ())
}

pub const OUTBOX_DUE_USERS: &str = "SELECT user_id FROM refit_outbox
          WHERE done_at IS NULL AND next_attempt_at <= now()
            AND (attempts > 0 OR created_at <= now() - make_interval(secs => $2))
          GROUP BY user_id
          ORDER BY min(id)
          LIMIT $1";

/// Users with a due undone outbox entry, oldest first. Entries never tried are left alone for
/// `grace` after they were written: the process that committed them is delivering them.
pub(crate) async fn outbox_due_users(
    pool: &PgPool,
    limit: i64,
    grace: Duration,
) -> sqlx::Result<Vec<String>> {
    query_scalar(OUTBOX_DUE_USERS)
        .bind(limit)
        .bind(grace.as_secs_f64())
        .fetch_all(pool)
        .await
}

/// Undone entries of one kind: how many, and the age of the oldest (seconds).
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Backlog {
    pub(crate) kind: String,
    pub(crate) entries: i64,
    pub(crate) oldest_age: f64,
}

pub const OUTBOX_BACKLOG: &str =
    "SELECT kind, count(*) AS entries, extract(epoch FROM now() - min(created_at))::float8 AS oldest_age
       FROM refit_outbox WHERE done_at IS NULL GROUP BY kind";

/// The undone entries of each kind that has any (for the backlog gauges).
pub(crate) async fn outbox_backlog(pool: &PgPool) -> sqlx::Result<Vec<Backlog>> {
    query_as(OUTBOX_BACKLOG).fetch_all(pool).await
}

/// Whether the connection still answers.
pub(crate) async fn ping(conn: &mut PgConnection) -> bool {
    query("SELECT 1").execute(conn).await.is_ok()
}
