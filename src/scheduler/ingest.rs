//! Ingestion: moves committed actuals from the upstream's `actual_rentals` into refit's pending
//! queue, exactly once, in whatever order the upstream's transactions commit.
//!
//! Nothing of refit runs in the upstream's transaction: each actual only records the transaction
//! that inserted it (`actual_rentals.refit_xid`, a column default). Every
//! `REFIT_INGEST_INTERVAL_MS` (less often while nothing arrives, or while a heavy stream does:
//! [`Pace`]), one replica at a time (the cursor's row lock) queues, in one statement and round
//! trip, every actual whose transaction the cursor snapshot (`refit_ingest_cursor`, that of the
//! last ingest) had not seen committed and the statement's own snapshot sees committed, and
//! stores that snapshot as the cursor. A transaction still running when one ingest
//! looks is taken by the first ingest after it commits, and by no later one (migration
//! 20261202000009 explains the bookkeeping). The statement NOTIFYs `refit_actuals` once, with an
//! entry per user — `<count>:<first actual id>:<user id's bytes>:<user id>`, see
//! `scheduler::pending::Arrival::parse` — from refit's own transaction, which wakes every
//! replica's scheduler.
//!
//! Owns `refit_ingest_cursor` and the inserts into `refit_pending` (their SQL is in
//! [`crate::store::ingest`]); reads nothing a retrain owns.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::store::ingest as ingest_store;

/// After a failed ingest the loop waits at least this long, doubling up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub use crate::store::ingest::Ingested;

/// Queues every actual committed since the last ingest (see the module docs), in one statement
/// and round trip. `None`: another replica is ingesting right now, or has just ingested.
pub async fn ingest(pool: &PgPool) -> sqlx::Result<Option<Ingested>> {
    ingest_store::queue_arrivals(pool).await
}

/// Ingests until `stop`, pausing as [`Pace`] says between looks; a look is a cheap probe
/// unless the last ingest found something (see [`Watch`]). Failures are logged and retried after
/// a growing pause.
pub(crate) async fn run(pool: PgPool, mut pace: Pace, stop: CancellationToken) {
    let mut watch = Watch::default();
    let mut backoff = FIRST_BACKOFF;
    loop {
        let pause = match watch.tick(&pool).await {
            Ok(found) => {
                backoff = FIRST_BACKOFF;
                pace.after(found)
            }
            Err(e) => {
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "ingest failed");
                watch = Watch::default();
                let pause = backoff.max(pace.busy);
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

/// The pause between the ingest's looks: `busy` (REFIT_INGEST_INTERVAL_MS) while actuals keep
/// arriving a few at a time; `idle` (REFIT_INGEST_IDLE_INTERVAL_MS), the longest, on either side
/// of that:
/// - after [`QUIET_LOOKS`] looks in a row that found none it doubles with each further one, up
///   to `idle`. Each look costs a wake-up of refit and of its PostgreSQL session (about 0.35 ms
///   of CPU each on the bench machine): looking every 2 ms while nothing arrives kept 0.17 cores
///   busy;
/// - after a look that found [`HEAVY_LOOK`] actuals or more (an upstream writing thousands a
///   second) it is `idle` at once, so each look takes more actuals: what a look costs beyond its
///   actuals came to half of the ingest's cost, and an upstream committing 8,000 single-row
///   inserts a second lost 15 % of them at the busy pace, 8 % at 20 ms (`make upstream-cost`).
///   Such a stream keeps each look at that size; it drops back to `busy` once a look at that
///   pause finds fewer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    busy: Duration,
    idle: Duration,
    /// Looks in a row that found nothing.
    quiet: u32,
}

/// Empty looks in a row before the pause grows: a stream of actuals with gaps of a few
/// intervals (200 a second, one every 5 ms) keeps the busy pace, and its freshness.
const QUIET_LOOKS: u32 = 8;

/// Actuals one look finds from which the next waits the longest pause. At the default 2 ms, a
/// stream of about 6,000 actuals a second; the freshness bench's 200 and 500 a second find one
/// or two a look.
const HEAVY_LOOK: u64 = 16;

impl Pace {
    pub(crate) fn new(busy: Duration, idle: Duration) -> Self {
        Pace {
            busy,
            idle: idle.max(busy),
            quiet: 0,
        }
    }

    /// The pause after a look that found `found` actuals.
    fn after(&mut self, found: u64) -> Duration {
        if found >= HEAVY_LOOK {
            self.quiet = 0;
            return self.idle;
        }
        self.quiet = if found > 0 {
            0
        } else {
            self.quiet.saturating_add(1)
        };
        let doublings = self.quiet.saturating_sub(QUIET_LOOKS).min(31);
        self.busy
            .checked_mul(1 << doublings)
            .map_or(self.idle, |pause| pause.min(self.idle))
    }
}

/// When the loop ingests. After a heavy ingest ([`HEAVY_LOOK`] actuals or more) it ingests again
/// at the next look (more is all but certain). Otherwise it ingests when a read-only probe
/// ([`ingest_store::arrived`]) sees an actual the cursor did not: from a transaction newer than
/// every one it knew of, or from one it saw in progress that has committed since. A stream of a
/// few actuals a look (the freshness bench's 200 a second) mostly finds nothing at the look after
/// one that found some, and an empty ingest still updates the cursor and commits: a probe there
/// costs 0.13 ms a round trip against the ingest's 0.35 (pgbench, one client, TLS on loopback),
/// and the bench's ingests fell by a quarter. Another replica's ingest only makes the cursor kept
/// here older: a needless ingest, never a missed actual.
#[derive(Debug, Default)]
struct Watch {
    /// The cursor after this replica's last ingest; `None`: ingest without checking.
    cursor: Option<String>,
}

impl Watch {
    /// One look: probes, and ingests if the probe (or the last ingest) says there is something.
    /// How many actuals arrived (1 when another replica is ingesting them).
    async fn tick(&mut self, pool: &PgPool) -> sqlx::Result<u64> {
        if let Some(cursor) = &self.cursor {
            if !ingest_store::arrived(pool, cursor).await? {
                return Ok(0);
            }
        }
        let Some(done) = ingest(pool).await? else {
            self.cursor = None; // another replica is ingesting: more may be coming
            return Ok(1);
        };
        let found = (done.queued + done.set_aside).max(0) as u64;
        if found > 0 {
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
        self.after(found, done.cursor);
        Ok(found)
    }

    /// Keeps the cursor of an ingest that found `found` actuals to probe with, unless the stream
    /// is heavy.
    fn after(&mut self, found: u64, cursor: String) {
        self.cursor = (found < HEAVY_LOOK).then_some(cursor);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Pace, Watch, HEAVY_LOOK, QUIET_LOOKS};

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_pause_doubles_once_nothing_has_arrived_for_a_while_and_drops_back_when_something_does() {
        let mut pace = Pace::new(2 * MS, 20 * MS);
        let quiet: Vec<Duration> = (0..QUIET_LOOKS).map(|_| pace.after(0)).collect();
        assert_eq!(quiet, vec![2 * MS; QUIET_LOOKS as usize], "a short gap");
        let idle: Vec<Duration> = (0..5).map(|_| pace.after(0)).collect();
        assert_eq!(idle, [4 * MS, 8 * MS, 16 * MS, 20 * MS, 20 * MS]);
        assert_eq!(pace.after(1), 2 * MS);
        assert_eq!(
            pace.after(0),
            2 * MS,
            "the count of empty looks starts again"
        );
    }

    #[test]
    fn a_heavy_stream_is_looked_at_every_idle_interval_until_it_thins() {
        let mut pace = Pace::new(2 * MS, 20 * MS);
        assert_eq!(pace.after(HEAVY_LOOK - 1), 2 * MS);
        assert_eq!(pace.after(HEAVY_LOOK), 20 * MS);
        assert_eq!(pace.after(400), 20 * MS);
        assert_eq!(pace.after(HEAVY_LOOK - 1), 2 * MS, "thinner");
        for _ in 0..QUIET_LOOKS {
            pace.after(0);
        }
        assert_eq!(pace.after(HEAVY_LOOK), 20 * MS);
        assert_eq!(pace.after(0), 2 * MS, "an empty look after a heavy one");
    }

    #[test]
    fn only_a_heavy_ingest_is_followed_by_an_ingest_without_a_probe() {
        let mut watch = Watch::default();
        for found in [0, 1, HEAVY_LOOK - 1] {
            watch.after(found, format!("{found}:{found}:"));
            assert_eq!(
                watch.cursor.as_deref(),
                Some(format!("{found}:{found}:").as_str()),
                "after {found} actuals the next look probes"
            );
        }
        watch.after(HEAVY_LOOK, "9:9:".into());
        assert_eq!(watch.cursor, None, "a heavy stream is ingested at once");
    }

    #[test]
    fn an_idle_interval_below_the_busy_one_keeps_the_busy_one() {
        let mut pace = Pace::new(50 * MS, 20 * MS);
        for _ in 0..=QUIET_LOOKS {
            assert_eq!(pace.after(0), 50 * MS);
        }
        assert_eq!(pace.after(1), 50 * MS);
        assert_eq!(pace.after(HEAVY_LOOK), 50 * MS);
    }
}
