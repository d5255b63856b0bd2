//! The listener: `LISTEN refit_actuals` and forward each notification to the scheduler; after a
//! lost connection, ask for a full scan (notifications sent meanwhile are gone).

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::pending::Arrival;
use crate::store;

/// Forwards notified arrivals; a lost connection asks for a full scan.
pub(super) async fn listen(
    pool: PgPool,
    to_scheduler: mpsc::UnboundedSender<Arrival>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    'connect: loop {
        let listener = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(store::ACTUALS_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            _ = stop.cancelled() => return,
            l = listener => match l {
                Ok(l) => l,
                Err(e) => {
                    warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot LISTEN; polling meanwhile");
                    tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(backoff) => {} }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue 'connect;
                }
            },
        };
        backoff = Duration::from_millis(100);
        // Anything committed before LISTEN took effect is found by this scan.
        let _ = to_scheduler.send(Arrival::Rescan);
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                n = listener.try_recv() => n,
            };
            match next {
                Ok(Some(notification)) => {
                    for arrival in Arrival::parse(notification.payload()) {
                        let _ = to_scheduler.send(arrival);
                    }
                }
                // The connection was lost and re-made: notifications in between are gone.
                Ok(None) => {
                    let _ = to_scheduler.send(Arrival::Rescan);
                }
                Err(e) => {
                    warn!(error = %e, "LISTEN connection failed; reconnecting");
                    let _ = to_scheduler.send(Arrival::Rescan);
                    continue 'connect;
                }
            }
        }
    }
}
