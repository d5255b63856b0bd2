//! Carrying out committed side effects: cache invalidations and event announcements.
//!
//! A retrain records them in `refit_outbox` inside its commit; they are delivered right after the
//! commit (the fast path) and, for anything left over (a crash, Redis or Kafka down), by the
//! periodic sweep, with exponential back-off. Delivery is at least once.
//!
//! Order, per user: invalidations in id order, announcements in id order, and an announcement
//! only after its own version's invalidation (an event means "serving will load the new model").
//! Each kind of a user's outbox is delivered by one task at a time (an advisory lock per user and
//! kind, across all replicas), so invalidations never wait for a slow or unreachable broker.
//!
//! When a system fails, it is marked unhealthy: the fast path then leaves its entries to the
//! sweep, so an outage never slows retrains down; the sweep's next success marks it healthy.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use sqlx::PgPool;
use tracing::{info, warn};
use uuid::Uuid;

use crate::cache::Cache;
use crate::db::{self, OutboxKind};
use crate::events::{Events, RetrainEvent};
use crate::metrics::Metrics;

/// Delivers outbox entries.
pub struct Outbox {
    pool: PgPool,
    cache: Arc<Cache>,
    events: Arc<Events>,
    metrics: Arc<Metrics>,
    retry_max: Duration,
    /// False after a failed invalidation until one succeeds again.
    redis_healthy: AtomicBool,
    /// False after a failed announcement until one succeeds again.
    kafka_healthy: AtomicBool,
}

/// Timings the fast path knows and the stored payload cannot (the commit happened after it was
/// written).
#[derive(Debug, Clone, Default)]
pub struct FastPath {
    pub commit_ms: f64,
}

/// What one delivery pass over a user's outbox did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub done: usize,
    pub failed: usize,
    /// Another task held the user's outbox.
    pub busy: bool,
    /// An invalidation failed (Redis is unreachable).
    pub redis_failed: bool,
    /// An announcement failed (Kafka is unreachable).
    pub kafka_failed: bool,
}

/// Systems a delivery pass leaves alone (known to be down).
#[derive(Debug, Default, Clone, Copy)]
struct Skip {
    redis: bool,
    kafka: bool,
}

impl Outbox {
    pub fn new(
        pool: PgPool,
        cache: Arc<Cache>,
        events: Arc<Events>,
        metrics: Arc<Metrics>,
        retry_max: Duration,
    ) -> Self {
        Outbox {
            pool,
            cache,
            events,
            metrics,
            retry_max,
            redis_healthy: AtomicBool::new(true),
            kafka_healthy: AtomicBool::new(true),
        }
    }

    pub fn redis_healthy(&self) -> bool {
        self.redis_healthy.load(Ordering::Relaxed)
    }

    pub fn kafka_healthy(&self) -> bool {
        self.kafka_healthy.load(Ordering::Relaxed)
    }

    /// Delivers what is due in the user's outbox. `fast` is set right after a retrain's commit:
    /// it skips systems known to be down and adds the commit timing to the event.
    pub async fn deliver_user(
        &self,
        user_id: &str,
        fast: Option<&FastPath>,
    ) -> anyhow::Result<Delivered> {
        let skip = Skip {
            redis: fast.is_some() && !self.redis_healthy(),
            kafka: fast.is_some() && !self.kafka_healthy(),
        };
        self.deliver(user_id, fast, skip).await
    }

    async fn deliver(
        &self,
        user_id: &str,
        fast: Option<&FastPath>,
        skip: Skip,
    ) -> anyhow::Result<Delivered> {
        let mut result = Delivered::default();
        // Invalidation time per event, added to the event's timings.
        let mut invalidate_ms = HashMap::new();
        if !skip.redis {
            self.deliver_kind(
                user_id,
                OutboxKind::Invalidate,
                fast,
                &mut invalidate_ms,
                &mut result,
            )
            .await?;
        }
        if !skip.kafka {
            self.deliver_kind(
                user_id,
                OutboxKind::Announce,
                fast,
                &mut invalidate_ms,
                &mut result,
            )
            .await?;
        }
        Ok(result)
    }

    /// Delivers one kind of the user's entries in order, stopping at the first that is not due,
    /// waits for its invalidation, or fails. Each kind has its own lock, so a slow broker never
    /// holds up invalidations.
    async fn deliver_kind(
        &self,
        user_id: &str,
        kind: OutboxKind,
        fast: Option<&FastPath>,
        invalidate_ms: &mut HashMap<Uuid, f64>,
        result: &mut Delivered,
    ) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        let Some(entries) = db::lock_outbox(&mut tx, user_id, kind).await? else {
            result.busy = true;
            return Ok(());
        };
        for entry in entries {
            if !entry.due || entry.waiting {
                break;
            }
            let started = Instant::now();
            let outcome = match kind {
                OutboxKind::Invalidate => self.cache.invalidate(user_id).await.map(|key| {
                    crate::faults::point("after_invalidate");
                    let ms = elapsed_ms(started);
                    invalidate_ms.insert(entry.event_id, ms);
                    self.metrics.observe_step("invalidate", ms);
                    let retrain_id = entry.payload.get("retrain_id").and_then(|v| v.as_str());
                    info!(step = "invalidate", retrain_id, user_id, key = %key, duration_ms = ms, "cache invalidated");
                }),
                                OutboxKind::Announce => {
                    let publish = self.announce(&entry.payload, fast, invalidate_ms.get(&entry.event_id));
                    // The outbox lock lives as long as this transaction's connection. If that dies
                    // while the broker is slow, another replica takes over the user's events: this
                    // copy must not go out after theirs, so what is still queued is purged.
                    let lock_lost = async {
                        loop {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            if sqlx::query("SELECT 1").execute(&mut *tx).await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        outcome = publish => outcome,
                        () = lock_lost => {
                            self.events.purge_queued();
                            return Err(anyhow::anyhow!(
                                "lost the outbox lock of {user_id:?} while publishing; queued events purged"
                            ));
                        }
                    }
                }
            };
            let healthy = match kind {
                OutboxKind::Invalidate => &self.redis_healthy,
                OutboxKind::Announce => &self.kafka_healthy,
            };
            healthy.store(outcome.is_ok(), Ordering::Relaxed);
            match outcome {
                Ok(()) => {
                    db::outbox_done(&mut tx, entry.id).await?;
                    result.done += 1;
                }
                Err(error) => {
                    let retry_in = self.backoff(entry.attempts);
                    warn!(
                        step = kind.as_str(),
                        user_id,
                        event_id = %entry.event_id,
                        attempts = entry.attempts + 1,
                        retry_in_ms = retry_in.as_millis() as u64,
                        error = format!("{error:#}"),
                        "side effect failed; will retry"
                    );
                    db::outbox_failed(&mut tx, entry.id, &format!("{error:#}"), retry_in).await?;
                    result.failed += 1;
                    match kind {
                        OutboxKind::Invalidate => result.redis_failed = true,
                        OutboxKind::Announce => result.kafka_failed = true,
                    }
                    break;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn announce(
        &self,
        payload: &serde_json::Value,
        fast: Option<&FastPath>,
        invalidate_ms: Option<&f64>,
    ) -> anyhow::Result<()> {
        let mut event: RetrainEvent = serde_json::from_value(payload.clone())
            .map_err(|e| anyhow::anyhow!("outbox payload is not a retrain event: {e}"))?;
        if let Some(fast) = fast {
            event
                .timings_ms
                .insert("commit".into(), fast.commit_ms.into());
        }
        if let Some(ms) = invalidate_ms {
            event.timings_ms.insert("invalidate".into(), (*ms).into());
        }
        let started = Instant::now();
        let delivery = self.events.publish(&event).await?;
        let ms = elapsed_ms(started);
        self.metrics.observe_step("announce", ms);
        if let Some(data_until) = event.data_until {
            let freshness = (Utc::now() - data_until).num_microseconds().unwrap_or(0) as f64 / 1e6;
            self.metrics.freshness.observe(freshness.max(0.0));
        }
        info!(
            step = "announce",
            retrain_id = %event.retrain_id,
            user_id = %event.user_id,
            status = %event.status,
            model_version = event.model_version,
            topic = self.events.topic(),
            bytes = delivery.bytes,
            partition = delivery.partition,
            offset = delivery.offset,
            duration_ms = ms,
            "event published"
        );
        Ok(())
    }

    fn backoff(&self, attempts: i32) -> Duration {
        let ms = 100u64.saturating_mul(1u64 << attempts.clamp(0, 20));
        Duration::from_millis(ms).min(self.retry_max)
    }

    /// One sweep: delivers every user's due entries. Once a system fails in this pass, the other
    /// users' entries for it wait for the next pass, while the other system's entries go on: a
    /// Kafka outage costs one delivery timeout per pass, and invalidations keep flowing.
    pub async fn sweep(&self) -> anyhow::Result<Delivered> {
        let mut total = Delivered::default();
        let mut skip = Skip::default();
        for user_id in db::outbox_due_users(&self.pool, 1000).await? {
            if skip.redis && skip.kafka {
                break;
            }
            let delivered = self.deliver(&user_id, None, skip).await?;
            total.done += delivered.done;
            total.failed += delivered.failed;
            skip.redis |= delivered.redis_failed;
            skip.kafka |= delivered.kafka_failed;
        }
        total.redis_failed = skip.redis;
        total.kafka_failed = skip.kafka;
        Ok(total)
    }

    /// Updates the backlog gauge.
    pub async fn refresh_backlog(&self) -> anyhow::Result<()> {
        let backlog = db::outbox_backlog(&self.pool).await?;
        for kind in [OutboxKind::Invalidate, OutboxKind::Announce] {
            let n = backlog
                .iter()
                .find(|(k, _)| k == kind.as_str())
                .map_or(0, |(_, n)| *n);
            self.metrics
                .outbox_backlog
                .with_label_values(&[kind.as_str()])
                .set(n);
        }
        Ok(())
    }
}

pub fn elapsed_ms(since: Instant) -> f64 {
    (since.elapsed().as_secs_f64() * 1e6).round() / 1e3
}
