//! Carrying out committed side effects: cache invalidations and event announcements.
//!
//! A retrain records them in `refit_outbox` inside its commit; they are delivered right after the
//! commit (the fast path) and, for anything left over (a crash, Redis or Kafka down), by the
//! periodic sweep, with exponential back-off. Delivery is at least once.
//!
//! Order, per user: invalidations in id order, announcements in id order, and an announcement
//! only after its own version's invalidation (an event means "serving will load the new model").
//! Invalidations never wait for Kafka, so a broker outage does not leave a stale model cached.
//! A user's outbox is delivered by one task at a time (advisory lock), across all replicas.
//!
//! When a system fails, it is marked unhealthy: the fast path then leaves its entries to the
//! sweep, so an outage never slows retrains down; the sweep's next success marks it healthy.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use sqlx::PgPool;
use tracing::{info, warn};

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
        let mut tx = self.pool.begin().await?;
        let Some(entries) = db::lock_outbox(&mut tx, user_id).await? else {
            return Ok(Delivered {
                busy: true,
                ..Delivered::default()
            });
        };
        let mut result = Delivered::default();
        let skip_redis = fast.is_some() && !self.redis_healthy();
        let skip_kafka = fast.is_some() && !self.kafka_healthy();
        let (mut invalidate_blocked, mut announce_blocked) = (skip_redis, skip_kafka);
        // Events whose invalidation is not done: their announcement must wait.
        let mut not_invalidated = HashSet::new();
        // Invalidation time per event, added to the event's timings.
        let mut invalidate_ms = std::collections::HashMap::new();

        for entry in entries {
            let started = Instant::now();
            let outcome = match entry.kind {
                OutboxKind::Invalidate => {
                    if invalidate_blocked || !entry.due {
                        invalidate_blocked = true;
                        not_invalidated.insert(entry.event_id);
                        continue;
                    }
                    match self.cache.invalidate(user_id).await {
                        Ok(key) => {
                            let ms = elapsed_ms(started);
                            crate::faults::point("after_invalidate");
                            invalidate_ms.insert(entry.event_id, ms);
                            self.metrics.observe_step("invalidate", ms);
                            self.redis_healthy.store(true, Ordering::Relaxed);
                            let retrain_id =
                                entry.payload.get("retrain_id").and_then(|v| v.as_str());
                            info!(step = "invalidate", retrain_id, user_id, key = %key, duration_ms = ms, "cache invalidated");
                            Ok(())
                        }
                        Err(e) => {
                            invalidate_blocked = true;
                            not_invalidated.insert(entry.event_id);
                            self.redis_healthy.store(false, Ordering::Relaxed);
                            Err(e)
                        }
                    }
                }
                OutboxKind::Announce => {
                    if announce_blocked || !entry.due || not_invalidated.contains(&entry.event_id) {
                        announce_blocked = true;
                        continue;
                    }
                    match self
                        .announce(&entry.payload, fast, invalidate_ms.get(&entry.event_id))
                        .await
                    {
                        Ok(()) => {
                            self.kafka_healthy.store(true, Ordering::Relaxed);
                            Ok(())
                        }
                        Err(e) => {
                            announce_blocked = true;
                            self.kafka_healthy.store(false, Ordering::Relaxed);
                            Err(e)
                        }
                    }
                }
            };
            match outcome {
                Ok(()) => {
                    db::outbox_done(&mut tx, entry.id).await?;
                    result.done += 1;
                }
                Err(error) => {
                    let retry_in = self.backoff(entry.attempts);
                    warn!(
                        step = entry.kind.as_str(),
                        user_id,
                        event_id = %entry.event_id,
                        attempts = entry.attempts + 1,
                        retry_in_ms = retry_in.as_millis() as u64,
                        error = format!("{error:#}"),
                        "side effect failed; will retry"
                    );
                    db::outbox_failed(&mut tx, entry.id, &format!("{error:#}"), retry_in).await?;
                    result.failed += 1;
                }
            }
        }
        tx.commit().await?;
        Ok(result)
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
    /// users' entries for it wait for the next pass.
    pub async fn sweep(&self) -> anyhow::Result<Delivered> {
        let mut total = Delivered::default();
        for user_id in db::outbox_due_users(&self.pool, 1000).await? {
            let delivered = self.deliver_user(&user_id, None).await?;
            total.done += delivered.done;
            total.failed += delivered.failed;
            if delivered.failed > 0 {
                break;
            }
        }
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
