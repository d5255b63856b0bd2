//! Storage that grows with users, not with retrains.
//!
//! Every retrain adds a version (with its artifact) and one consumed-actual row per actual. Left
//! alone, both grow forever. After every [`EVERY`]th version of a user the retrainer prunes that
//! user in one short transaction that skips the user if anyone holds its registry row:
//!
//! - **artifacts**: versions older than both the active version and the newest
//!   `REFIT_KEEP_ARTIFACTS` ready versions become metadata-only (the artifact is dropped; the
//!   row, its metrics and its lineage stay);
//! - **versions**: all but the newest `REFIT_KEEP_VERSIONS` are deleted, never the active one nor
//!   anything newer than it, together with the consumed-actual rows attributed to them;
//! - a version an alias points at keeps its row and its artifact (people named it);
//! - **consumed actuals**: trained rows older than the window the policy still reads (the larger of
//!   the rebuild window and the gate's window) are deleted.
//!
//! Each call deletes at most [`BATCH`] versions and [`BATCH`] × 50 consumed rows, so a backlog
//! (e.g. after an upgrade) drains over a few retrains without a long lock. Time-based rules for
//! rows that no user's retrain touches — delivered outbox entries when they are kept, dead
//! letters and set-aside actuals — run in the sweeper ([`purge_expired`]), also in batches, by
//! index. (Delivered outbox entries are deleted as they are delivered by default: see
//! `store::outbox::outbox_done`.)

use std::time::Duration;

use sqlx::{PgConnection, PgPool};

use crate::config::{Dur, Int, Switch};
use crate::store::retention;

/// Prune a user after every this many versions.
pub(crate) const EVERY: i32 = 10;
/// Most versions one call deletes.
const BATCH: i64 = 100;

crate::config::section! {
    /// How much of each user's history is kept.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Retention {
        /// Off: nothing is pruned (`REFIT_RETENTION=off`).
        pub(crate) enabled: bool = "REFIT_RETENTION", Switch(true),
            "on or off: prune each user's old versions, artifacts and consumed actuals";
        /// Newest ready versions that keep their artifacts (besides the active one).
        pub(crate) keep_artifacts: i64 = "REFIT_KEEP_ARTIFACTS", Int::new(5, 1, 1_000_000),
            "newest ready versions per user that keep their artifacts (the active one always does)";
        /// Newest versions kept at all (metadata); older ones are deleted. At least
        /// `keep_artifacts` (checked by `Config`).
        pub(crate) keep_versions: i64 = "REFIT_KEEP_VERSIONS", Int::new(100, 1, 100_000_000),
            "newest versions per user kept at all; older ones are deleted (never the active one)";
        /// Delivered outbox entries are kept this long (zero: deleted when delivered, by the
        /// outbox).
        pub(crate) outbox_after: Duration = "REFIT_OUTBOX_RETENTION_SECS",
            Dur::secs(0, 0, 365 * 86_400),
            "seconds delivered outbox entries are kept, for inspection (0 = deleted when delivered)";
        /// Set-aside actuals and dead-lettered outbox entries are deleted after this long.
        pub(crate) set_aside_after: Duration = "REFIT_SET_ASIDE_RETENTION_DAYS",
            Dur::days(7, 1, 3650),
            "records of set-aside actuals and dead-lettered outbox entries are deleted after this many days";
    }
    derived {
        /// Newest trained actuals per user kept (what the rebuild and the gate read); set by
        /// `Config` from the policy's windows.
        pub(crate) keep_rows: i64;
    }
}

/// What one prune of one user removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub artifacts: u64,
    pub versions: u64,
    pub(crate) consumed_rows: u64,
}

/// Prunes one user's history; `None` when the user's row is locked (it is pruned next time).
pub async fn prune_user(
    pool: &PgPool,
    user_id: &str,
    r: &Retention,
) -> sqlx::Result<Option<Pruned>> {
    let mut tx = pool.begin().await?;
    let Some(active) = retention::lock_to_prune(&mut tx, user_id).await? else {
        return Ok(None);
    };
    let pruned = Pruned {
        versions: delete_versions(&mut tx, user_id, active, r.keep_versions).await?,
        artifacts: retention::drop_artifacts(&mut tx, user_id, active, r.keep_artifacts).await?,
        consumed_rows: retention::trim_consumed(&mut tx, user_id, r.keep_rows, BATCH * 50).await?,
    };
    tx.commit().await?;
    Ok(Some(pruned))
}

/// Deletes versions older than the newest `keep` and older than the active version, with the
/// consumed rows attributed to them.
async fn delete_versions(
    conn: &mut PgConnection,
    user_id: &str,
    active: Option<i32>,
    keep: i64,
) -> sqlx::Result<u64> {
    let doomed = retention::doomed_versions(conn, user_id, active, keep, BATCH).await?;
    if doomed.is_empty() {
        return Ok(0);
    }
    retention::delete_versions(conn, user_id, &doomed).await
}

/// Deletes delivered outbox entries, dead letters and set-aside actuals past their retention, at
/// most `BATCH` × 50 of each per call; returns how many rows went.
pub async fn purge_expired(pool: &PgPool, r: &Retention) -> sqlx::Result<u64> {
    // Delivered entries are only here when kept (`outbox_after` > 0); dead letters always are.
    let outbox =
        retention::purge_outbox(pool, r.outbox_after, r.set_aside_after, BATCH * 50).await?;
    let set_aside = retention::purge_set_aside(pool, r.set_aside_after, BATCH * 50).await?;
    Ok(outbox + set_aside)
}
