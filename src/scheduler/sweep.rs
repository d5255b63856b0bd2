//! The sweeper: every poll interval, delivers leftover outbox entries and refreshes the backlog
//! gauges; every [`PURGE_EVERY`], deletes rows past their retention.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::outbox::Outbox;
use crate::registry::retention::{self, Retention};

/// How often the sweeper deletes rows past their retention.
const PURGE_EVERY: Duration = Duration::from_secs(10);

/// Periodically delivers leftover outbox entries and refreshes the backlog gauge; every
/// `PURGE_EVERY`, deletes what is past its retention.
pub(super) async fn sweep(
    outbox: Arc<Outbox>,
    pool: PgPool,
    retention: Retention,
    audit_retention: Duration,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut last_purge = Instant::now();
    loop {
        match outbox.sweep().await {
            Ok(d) if d.done + d.failed > 0 => {
                info!(delivered = d.done, failed = d.failed, "outbox sweep")
            }
            Ok(_) => {}
            Err(e) => warn!(error = format!("{e:#}"), "outbox sweep failed"),
        }
        if let Err(e) = outbox.refresh_backlog().await {
            debug!(error = %e, "outbox backlog gauge not refreshed");
        }
        if last_purge.elapsed() > PURGE_EVERY {
            last_purge = Instant::now();
            purge_expired(&pool, &retention, audit_retention).await;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Deletes rows past their retention — kept outbox entries, dead letters and set-aside records,
/// then the audit trail's old rows — each in batches until none is left (or 20 batches).
async fn purge_expired(pool: &PgPool, retention: &Retention, audit_retention: Duration) {
    let rows = purge_in_batches(|| retention::purge_expired(pool, retention)).await;
    if rows > 0 {
        debug!(rows, "expired outbox entries and set-aside records deleted");
    }
    let rows = purge_in_batches(|| crate::registry::audit::purge(pool, audit_retention)).await;
    if rows > 0 {
        info!(rows, "audit rows past REFIT_AUDIT_RETENTION_DAYS purged");
    }
}

/// Runs one batched purge until it deletes nothing (at most 20 times); returns the rows deleted.
async fn purge_in_batches<F, Fut>(mut batch: F) -> u64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = sqlx::Result<u64>>,
{
    let mut total = 0;
    for _ in 0..20 {
        match batch().await {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) => {
                warn!(error = %e, "retention purge failed");
                break;
            }
        }
    }
    total
}
