//! Carrying out committed side effects: cache invalidations and event announcements.
//!
//! A retrain records them in `refit_outbox` inside its commit; they are delivered right after the
//! commit (the fast path) and, for anything left over (a crash, Redis or Kafka down), by the
//! periodic sweep, with exponential back-off. Delivery is at least once.
//!
//! The fast path is two tasks per process, fed by channels, both handed each commit at once. The
//! first takes every retrain that committed since its last pass, deletes their cache keys in one
//! Redis pipeline and marks those invalidations done in one statement (no lock: every
//! invalidation of a user deletes the same key, and a second `DEL` is harmless), then tells the
//! second how it went. The second meanwhile locks and reads the same users' announcements, waits
//! for that word, produces all their events at once and awaits the acknowledgements together,
//! then marks them done. Marking deletes: nothing reads a delivered entry, so the outbox holds
//! only what is still to do (unless `REFIT_OUTBOX_RETENTION_SECS` keeps delivered entries for a
//! while). Under load a pass costs a few round trips for many retrains; when idle a pass holds
//! one user and starts as soon as the commit returns, and the announcements' lock and read
//! overlap the `DEL`. A slow broker holds up only the second task: invalidations go on.
//!
//! Order, per user: announcements in id order, and an announcement only after its own version's
//! invalidation is done and marked (an event means "serving will load the new model"). Each kind
//! of a user's outbox is delivered by one task at a time (an advisory lock per user and kind,
//! across all replicas; the fast path's invalidations need none, as above), so invalidations
//! never wait for a slow or unreachable broker, and a user's events go to the broker in order
//! (key = user id: one partition, and the idempotent producer keeps the order it was given).
//!
//! When a system fails, it is marked unhealthy: the fast path then leaves its entries to the
//! sweep, so an outage never slows retrains down; the sweep's next success marks it healthy.

pub mod cache;
pub mod events;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};
use uuid::Uuid;

use crate::domain::RetrainEvent;
use crate::outbox::cache::Cache;
use crate::outbox::events::{Events, Undeliverable};
use crate::store;
use crate::store::outbox::OutboxEntry;
use crate::store::outbox::OutboxKind;
use crate::telemetry::metrics::Metrics;

/// The most users one delivery pass takes.
const MAX_PASS_USERS: usize = 256;

/// How long the sweep leaves entries that were never tried to the fast path of the process that
/// wrote them.
const FAST_PATH_GRACE: Duration = Duration::from_secs(1);

/// Delivers outbox entries.
pub(crate) struct Outbox {
    pool: PgPool,
    cache: Arc<Cache>,
    events: Arc<Events>,
    metrics: Arc<Metrics>,
    retry_max: Duration,
    /// Delivered entries are kept (stamped `done_at`) instead of deleted.
    keep_delivered: bool,
    /// False after a failed invalidation until one succeeds again.
    redis_healthy: AtomicBool,
    /// False after a failed announcement until one succeeds again.
    kafka_healthy: AtomicBool,
    /// The fast path's queues; `None` until first used and after [`Outbox::drain`].
    fast_path: std::sync::Mutex<Option<FastPath>>,
    /// The fast-path task, waited for at shutdown.
    tasks: tokio_util::task::TaskTracker,
}

/// A retrain that just committed: what the fast path needs to know that the stored payload
/// cannot (the commit happened after it was written).
#[derive(Debug, Clone)]
pub(crate) struct Committed {
    pub(crate) user_id: String,
    pub(crate) retrain_id: Uuid,
    pub(crate) event_id: Uuid,
    pub(crate) commit_ms: f64,
    /// The commit recorded an invalidation (serving's model changed), not only an announcement.
    pub(crate) invalidates: bool,
}

/// How the first stage tells the second that an event's invalidation is carried out (`DEL` done
/// and marked): the time the `DEL` took, or `None` when it was not (left to the sweep).
type InvalidationOutcome = Option<f64>;

/// A retrain's invalidation, for the fast path's first stage.
struct ToInvalidate {
    committed: Committed,
    outcome: oneshot::Sender<InvalidationOutcome>,
}

/// A retrain's announcement, for the fast path's second stage; with the first stage's word on
/// its invalidation, when it has one.
struct ToAnnounce {
    committed: Committed,
    invalidation: Option<oneshot::Receiver<InvalidationOutcome>>,
}

/// What an announcement knows of its own event's invalidation besides the outbox's rows.
enum Invalidation {
    /// Carried out; the time its `DEL` took.
    Done(f64),
    /// Being carried out by the fast path's first stage: its word, awaited once the outbox is
    /// locked and read, so that the read overlaps the `DEL`.
    Awaited(oneshot::Receiver<InvalidationOutcome>),
}

/// The fast path's two queues.
struct FastPath {
    invalidations: mpsc::UnboundedSender<ToInvalidate>,
    announcements: mpsc::UnboundedSender<ToAnnounce>,
}

impl FastPath {
    /// Queues both stages' parts of a retrain; gives it back if the stages are gone.
    fn send(&self, committed: Committed) -> Result<(), Committed> {
        let (to_invalidate, invalidation) = match committed.invalidates {
            true => {
                let (outcome, invalidation) = oneshot::channel();
                let part = ToInvalidate {
                    committed: committed.clone(),
                    outcome,
                };
                (Some(part), Some(invalidation))
            }
            false => (None, None),
        };
        if let Some(part) = to_invalidate {
            self.invalidations.send(part).map_err(|e| e.0.committed)?;
        }
        let part = ToAnnounce {
            committed,
            invalidation,
        };
        self.announcements.send(part).map_err(|e| e.0.committed)
    }
}

/// What one delivery pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delivered {
    pub(crate) done: usize,
    pub(crate) failed: usize,
    /// Entries that can never be delivered, dead-lettered.
    pub(crate) dead_lettered: usize,
    /// Another task held some user's outbox.
    pub(crate) busy: bool,
    /// An invalidation failed (Redis is unreachable).
    pub(crate) redis_failed: bool,
    /// An announcement failed (Kafka is unreachable).
    pub(crate) kafka_failed: bool,
}

impl Delivered {
    fn add(&mut self, other: Delivered) {
        self.done += other.done;
        self.failed += other.failed;
        self.dead_lettered += other.dead_lettered;
        self.busy |= other.busy;
        self.redis_failed |= other.redis_failed;
        self.kafka_failed |= other.kafka_failed;
    }
}

/// Systems a delivery pass leaves alone (known to be down).
#[derive(Debug, Default, Clone, Copy)]
struct Skip {
    redis: bool,
    kafka: bool,
}

impl Outbox {
    /// `keep_delivered`: keep delivered entries (`REFIT_OUTBOX_RETENTION_SECS` > 0) for the
    /// sweeper to purge later, instead of deleting them when they are delivered.
    pub(crate) fn new(
        pool: PgPool,
        cache: Arc<Cache>,
        events: Arc<Events>,
        metrics: Arc<Metrics>,
        retry_max: Duration,
        keep_delivered: bool,
    ) -> Self {
        Outbox {
            pool,
            cache,
            events,
            metrics,
            retry_max,
            keep_delivered,
            redis_healthy: AtomicBool::new(true),
            kafka_healthy: AtomicBool::new(true),
            fast_path: std::sync::Mutex::new(None),
            tasks: tokio_util::task::TaskTracker::new(),
        }
    }

    pub(crate) fn redis_healthy(&self) -> bool {
        self.redis_healthy.load(Ordering::Relaxed)
    }

    pub(crate) fn kafka_healthy(&self) -> bool {
        self.kafka_healthy.load(Ordering::Relaxed)
    }

    /// Hands a committed retrain's side effects to the fast path (started on first use).
    ///
    /// The two stages start together: while the first deletes the cache key, the second locks
    /// and reads the user's announcements, then waits for the first's word before it publishes.
    pub(crate) fn deliver_soon(self: &Arc<Self>, committed: Committed) {
        let mut slot = self.fast_path.lock().expect("not poisoned");
        let committed = match slot.as_ref() {
            Some(queues) => match queues.send(committed) {
                Ok(()) => return,
                // The tasks ended (their runtime stopped): start others.
                Err(committed) => committed,
            },
            None => committed,
        };
        let (to_invalidate, invalidations) = mpsc::unbounded_channel();
        let (to_announce, announcements) = mpsc::unbounded_channel();
        let queues = FastPath {
            invalidations: to_invalidate,
            announcements: to_announce,
        };
        queues
            .send(committed)
            .map_err(|_| ())
            .expect("the receivers are right here");
        *slot = Some(queues);
        let outbox = self.clone();
        self.tasks
            .spawn(async move { outbox.invalidation_stage(invalidations).await });
        let outbox = self.clone();
        self.tasks
            .spawn(async move { outbox.announcement_stage(announcements).await });
    }

    /// Waits until everything handed to the fast path so far is delivered (or left to the sweep).
    pub(crate) async fn drain(&self) {
        self.fast_path.lock().expect("not poisoned").take();
        self.tasks.close();
        self.tasks.wait().await;
        self.tasks.reopen();
    }

    /// The fast path's first task: invalidations, each outcome told to the second.
    async fn invalidation_stage(&self, mut queue: mpsc::UnboundedReceiver<ToInvalidate>) {
        while let Some(pass) = next_pass(&mut queue).await {
            // While Redis is known to be down, the sweep carries invalidations out (a dropped
            // outcome tells the second stage so).
            if !self.redis_healthy() {
                continue;
            }
            let committed: Vec<&Committed> = pass.iter().map(|p| &p.committed).collect();
            let outcome = self.invalidate_committed(&committed).await;
            for part in pass {
                let _ = part.outcome.send(outcome);
            }
        }
    }

    /// Deletes the cache keys of the pass's retrains in one pipeline, then marks those
    /// invalidations done in one statement; returns the time the `DEL`s took. Neither needs the
    /// outbox lock or a read (two statements and a transaction fewer than the sweep's way): a
    /// retrain's invalidation is its user's key, and a second `DEL` of it (by the sweep) is
    /// harmless. On failure the entries stay undone, so their announcements wait, and the sweep
    /// takes them after the fast path's grace.
    async fn invalidate_committed(&self, pass: &[&Committed]) -> InvalidationOutcome {
        let user_ids: Vec<&str> = pass.iter().map(|c| c.user_id.as_str()).collect();
        let (outcome, ms) = self.delete_keys(&user_ids).await;
        let keys = match outcome {
            Ok(keys) => keys,
            Err(e) => {
                warn!(
                    users = pass.len(),
                    error = format!("{e:#}"),
                    "cache invalidation failed; the sweep retries"
                );
                return None;
            }
        };
        for (committed, key) in pass.iter().zip(&keys) {
            let retrain_id = committed.retrain_id.to_string();
            self.invalidated(Some(&retrain_id), &committed.user_id, key, ms, pass.len());
        }
        let events: Vec<Uuid> = pass.iter().map(|c| c.event_id).collect();
        let marked =
            store::outbox::invalidations_done(&self.pool, &user_ids, &events, self.keep_delivered)
                .await;
        match marked {
            Ok(()) => Some(ms),
            Err(e) => {
                // Announcements wait for a marked invalidation: the sweep redoes both.
                warn!(
                    invalidations = events.len(),
                    error = format!("{e:#}"),
                    "could not mark cache invalidations done; the sweep deletes the keys again"
                );
                None
            }
        }
    }

    /// Deletes the users' cache keys in one Redis pipeline and notes whether Redis answered;
    /// returns the keys and the time the `DEL`s took (ms).
    async fn delete_keys(&self, user_ids: &[&str]) -> (anyhow::Result<Vec<String>>, f64) {
        let started = Instant::now();
        let outcome = self.cache.invalidate_many(user_ids).await;
        crate::faults::point("after_invalidate");
        let ms = elapsed_ms(started);
        self.redis_healthy.store(outcome.is_ok(), Ordering::Relaxed);
        (outcome, ms)
    }

    /// The invalidate step's metric and log line for one deleted key.
    fn invalidated(
        &self,
        retrain_id: Option<&str>,
        user_id: &str,
        key: &str,
        ms: f64,
        batch: usize,
    ) {
        self.metrics.observe_step("invalidate", ms);
        info!(
            step = "invalidate",
            retrain_id,
            user_id,
            key,
            duration_ms = ms,
            batch,
            "cache invalidated"
        );
    }

    /// The fast path's second task: announcements.
    async fn announcement_stage(&self, mut queue: mpsc::UnboundedReceiver<ToAnnounce>) {
        while let Some(pass) = next_pass(&mut queue).await {
            // While Kafka is known to be down, the sweep carries announcements out.
            if !self.kafka_healthy() {
                continue;
            }
            let committed: Vec<&Committed> = pass.iter().map(|p| &p.committed).collect();
            let users = users_of(&committed);
            let commit_ms = committed
                .iter()
                .map(|c| (c.event_id, c.commit_ms))
                .collect();
            let invalidations = pass
                .into_iter()
                .filter_map(|p| {
                    let invalidation = Invalidation::Awaited(p.invalidation?);
                    Some((p.committed.event_id, invalidation))
                })
                .collect();
            let mut result = Delivered::default();
            if let Err(e) = self
                .announce(&users, &commit_ms, invalidations, &mut result)
                .await
            {
                warn!(
                    users = users.len(),
                    error = format!("{e:#}"),
                    "announcement failed; the sweep retries"
                );
            }
        }
    }

    /// Delivers what is due in one user's outbox now (the registry's activations).
    pub(crate) async fn deliver_user(&self, user_id: &str) -> anyhow::Result<Delivered> {
        self.deliver(&[user_id.to_owned()], &HashMap::new(), Skip::default())
            .await
    }

    async fn deliver(
        &self,
        users: &[String],
        commit_ms: &HashMap<Uuid, f64>,
        skip: Skip,
    ) -> anyhow::Result<Delivered> {
        let mut result = Delivered::default();
        // Invalidation time per event, added to the event's timings.
        let mut invalidate_ms = HashMap::new();
        if !skip.redis {
            self.invalidate(users, &mut invalidate_ms, &mut result)
                .await?;
        }
        if !skip.kafka {
            let invalidations = invalidate_ms
                .into_iter()
                .map(|(event, ms)| (event, Invalidation::Done(ms)))
                .collect();
            self.announce(users, commit_ms, invalidations, &mut result)
                .await?;
        }
        Ok(result)
    }

    /// Locks one kind of the users' outboxes and returns their undone entries in order.
    async fn lock(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        users: &[String],
        kind: OutboxKind,
        result: &mut Delivered,
    ) -> anyhow::Result<Vec<OutboxEntry>> {
        let (locked, entries) = store::outbox::lock_outboxes(tx, users, kind).await?;
        result.busy |= locked.len() < users.len();
        Ok(entries)
    }

    /// The invalidations: one pipeline of `DEL`s for all of them.
    async fn invalidate(
        &self,
        users: &[String],
        invalidate_ms: &mut HashMap<Uuid, f64>,
        result: &mut Delivered,
    ) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        let locked = self
            .lock(&mut tx, users, OutboxKind::Invalidate, result)
            .await?;
        let due = due_now(locked, &HashMap::new());
        if due.is_empty() {
            tx.commit().await?;
            return Ok(());
        }
        let user_ids: Vec<&str> = due.iter().map(|e| e.user_id.as_str()).collect();
        let (outcome, ms) = self.delete_keys(&user_ids).await;
        match outcome {
            Ok(keys) => {
                for (entry, key) in due.iter().zip(&keys) {
                    invalidate_ms.insert(entry.event_id, ms);
                    let retrain_id = entry.payload.get("retrain_id").and_then(|v| v.as_str());
                    self.invalidated(retrain_id, &entry.user_id, key, ms, due.len());
                }
                let ids: Vec<i64> = due.iter().map(|e| e.id).collect();
                store::outbox::outbox_done(&mut tx, &ids, self.keep_delivered).await?;
                result.done += due.len();
            }
            Err(error) => {
                for entry in &due {
                    self.failed(&mut tx, entry, &error).await?;
                }
                result.failed += due.len();
                result.redis_failed = true;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// The announcements: every user's events produced at once, the acknowledgements awaited
    /// together. A user's own events go one after the other, each after the previous one's
    /// acknowledgement, and stop at the first that fails (so none overtakes it); one the broker
    /// can never accept is dead-lettered instead, and the user's next ones follow.
    ///
    /// `invalidations` are what the caller knows of some events' invalidations beyond the rows
    /// read: an announcement waits for its own invalidation, unless it is known to be carried out.
    async fn announce(
        &self,
        users: &[String],
        commit_ms: &HashMap<Uuid, f64>,
        invalidations: HashMap<Uuid, Invalidation>,
        result: &mut Delivered,
    ) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        let locked = self
            .lock(&mut tx, users, OutboxKind::Announce, result)
            .await?;
        let invalidate_ms = carried_out(invalidations).await;
        let due = due_now(locked, &invalidate_ms);
        if due.is_empty() {
            tx.commit().await?;
            return Ok(());
        }
        // The outbox locks live as long as this transaction's connection. If that dies while the
        // broker is slow, another replica takes over these users' events: these copies must not
        // go out after theirs, so what is still queued is purged.
        let outcomes = tokio::select! {
            outcomes = self.publish_per_user(&due, commit_ms, &invalidate_ms) => outcomes,
            () = connection_lost(&mut tx) => {
                self.events.purge_queued();
                anyhow::bail!("lost the outbox lock while publishing {} events; queued events purged", due.len());
            }
        };
        let mut done = Vec::with_capacity(due.len());
        let mut failed = false;
        for (entry, outcome) in outcomes {
            match outcome {
                Ok(published) => {
                    self.published(entry, published, due.len());
                    done.push(entry.id);
                }
                Err(error) if is_undeliverable(&error) => {
                    self.dead_letter(&mut tx, entry, &error).await?;
                    result.dead_lettered += 1;
                }
                Err(error) => {
                    failed = true;
                    self.failed(&mut tx, entry, &error).await?;
                    result.failed += 1;
                }
            }
        }
        self.kafka_healthy.store(!failed, Ordering::Relaxed);
        result.kafka_failed |= failed;
        store::outbox::outbox_done(&mut tx, &done, self.keep_delivered).await?;
        result.done += done.len();
        tx.commit().await?;
        Ok(())
    }

    /// Publishes every user's events at once; a user's own go one after the other and stop at
    /// the first that fails other than as undeliverable. Returns each attempt's outcome.
    async fn publish_per_user<'e>(
        &self,
        due: &'e [OutboxEntry],
        commit_ms: &HashMap<Uuid, f64>,
        invalidate_ms: &HashMap<Uuid, f64>,
    ) -> Vec<(&'e OutboxEntry, anyhow::Result<Published>)> {
        let publishes = per_user(due).into_iter().map(|entries| async move {
            let mut outcomes = Vec::with_capacity(entries.len());
            for entry in entries {
                let outcome = self.publish(entry, commit_ms, invalidate_ms).await;
                let retry_later = matches!(&outcome, Err(e) if !is_undeliverable(e));
                outcomes.push((entry, outcome));
                if retry_later {
                    break;
                }
            }
            outcomes
        });
        futures::future::join_all(publishes)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Records a published announcement (or tombstone): metrics and a log line.
    fn published(&self, entry: &OutboxEntry, published: Published, batch: usize) {
        match published {
            (None, delivery, _) => {
                info!(
                    step = "announce", user_id = %entry.user_id, topic = self.events.topic(),
                    partition = delivery.partition, offset = delivery.offset,
                    "tombstone published"
                );
            }
            (Some(event), delivery, ms) => {
                self.metrics.observe_step("announce", ms);
                if let Some(data_until) = event.data_until {
                    let freshness =
                        (Utc::now() - data_until).num_microseconds().unwrap_or(0) as f64 / 1e6;
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
                    batch,
                    "event published"
                );
            }
        }
    }

    /// One announcement (or tombstone) published: the event, where it went, how long it took.
    async fn publish(
        &self,
        entry: &OutboxEntry,
        commit_ms: &HashMap<Uuid, f64>,
        invalidate_ms: &HashMap<Uuid, f64>,
    ) -> anyhow::Result<Published> {
        if entry.payload.get("tombstone").is_some() {
            let started = Instant::now();
            let delivery = self.events.publish_tombstone(&entry.user_id).await?;
            return Ok((None, delivery, elapsed_ms(started)));
        }
        let mut event: RetrainEvent = serde_json::from_value(entry.payload.clone())
            .map_err(|e| Undeliverable(format!("outbox payload is not a retrain event: {e}")))?;
        if let Some(ms) = commit_ms.get(&entry.event_id) {
            event.timings_ms.insert("commit".into(), (*ms).into());
        }
        if let Some(ms) = invalidate_ms.get(&entry.event_id) {
            event.timings_ms.insert("invalidate".into(), (*ms).into());
        }
        let started = Instant::now();
        let delivery = self.events.publish(&event).await?;
        Ok((Some(event), delivery, elapsed_ms(started)))
    }

    /// Resolves an entry that can never be delivered: done, with the reason kept in
    /// `refit_outbox.dead_letter`, logged and counted; the user's next entries follow it.
    async fn dead_letter(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        entry: &OutboxEntry,
        error: &anyhow::Error,
    ) -> anyhow::Result<()> {
        error!(
            step = entry.kind.as_str(),
            user_id = %entry.user_id,
            event_id = %entry.event_id,
            outbox_id = entry.id,
            error = format!("{error:#}"),
            "side effect can never be delivered; dead-lettered (refit_outbox.dead_letter)"
        );
        store::outbox::outbox_dead_letter(tx, entry.id, &format!("{error:#}")).await?;
        self.metrics
            .outbox_dead_letters
            .with_label_values(&[entry.kind.as_str()])
            .inc();
        Ok(())
    }

    /// Records a failed attempt; the entry is retried after a back-off.
    async fn failed(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        entry: &OutboxEntry,
        error: &anyhow::Error,
    ) -> anyhow::Result<()> {
        let retry_in = self.backoff(entry.attempts);
        warn!(
            step = entry.kind.as_str(),
            user_id = %entry.user_id,
            event_id = %entry.event_id,
            attempts = entry.attempts + 1,
            retry_in_ms = retry_in.as_millis() as u64,
            error = format!("{error:#}"),
            "side effect failed; will retry"
        );
        store::outbox::outbox_failed(tx, entry.id, &format!("{error:#}"), retry_in).await?;
        Ok(())
    }

    fn backoff(&self, attempts: i32) -> Duration {
        let ms = 100u64.saturating_mul(1u64 << attempts.clamp(0, 20));
        Duration::from_millis(ms).min(self.retry_max)
    }

    /// One sweep: delivers every user's due entries, in passes of many users. Once a system fails
    /// in this sweep, the other users' entries for it wait for the next sweep, while the other
    /// system's entries go on: a Kafka outage costs one delivery timeout per sweep, and
    /// invalidations keep flowing.
    pub(crate) async fn sweep(&self) -> anyhow::Result<Delivered> {
        let mut total = Delivered::default();
        let users = store::outbox::outbox_due_users(&self.pool, 1000, FAST_PATH_GRACE).await?;
        for pass in users.chunks(MAX_PASS_USERS) {
            let skip = Skip {
                redis: total.redis_failed,
                kafka: total.kafka_failed,
            };
            if skip.redis && skip.kafka {
                break;
            }
            total.add(self.deliver(pass, &HashMap::new(), skip).await?);
        }
        Ok(total)
    }

    /// Updates the backlog gauges: entries not yet done, and the age of the oldest, per kind.
    pub(crate) async fn refresh_backlog(&self) -> anyhow::Result<()> {
        let backlog = store::outbox::outbox_backlog(&self.pool).await?;
        for kind in [OutboxKind::Invalidate, OutboxKind::Announce] {
            let (n, age) = backlog
                .iter()
                .find(|b| b.kind == kind.as_str())
                .map_or((0, 0.0), |b| (b.entries, b.oldest_age.max(0.0)));
            let label = [kind.as_str()];
            self.metrics.outbox_backlog.with_label_values(&label).set(n);
            self.metrics
                .outbox_oldest_age
                .with_label_values(&label)
                .set(age);
        }
        Ok(())
    }
}

/// The entries to deliver now: each user's entries in order up to the first that is not due, or
/// waits for an invalidation not in `invalidated` (events whose invalidation is carried out).
fn due_now(entries: Vec<OutboxEntry>, invalidated: &HashMap<Uuid, f64>) -> Vec<OutboxEntry> {
    let mut stopped = HashSet::new();
    entries
        .into_iter()
        .filter(|e| {
            let waiting = e.waiting && !invalidated.contains_key(&e.event_id);
            if stopped.contains(&e.user_id) || !e.due || waiting {
                stopped.insert(e.user_id.clone());
                return false;
            }
            true
        })
        .collect()
}

/// The events whose invalidation is carried out, with the time each `DEL` took; waits for the
/// first stage's word where it is still to come.
async fn carried_out(invalidations: HashMap<Uuid, Invalidation>) -> HashMap<Uuid, f64> {
    let mut done = HashMap::with_capacity(invalidations.len());
    for (event, invalidation) in invalidations {
        let ms = match invalidation {
            Invalidation::Done(ms) => Some(ms),
            // A dropped sender (Redis known down) means not carried out.
            Invalidation::Awaited(word) => word.await.ok().flatten(),
        };
        if let Some(ms) = ms {
            done.insert(event, ms);
        }
    }
    done
}

/// Waits for the next part of a committed retrain, then takes whatever else is queued (up to a
/// pass).
async fn next_pass<T>(queue: &mut mpsc::UnboundedReceiver<T>) -> Option<Vec<T>> {
    let mut pass = vec![queue.recv().await?];
    while pass.len() < MAX_PASS_USERS {
        match queue.try_recv() {
            Ok(next) => pass.push(next),
            Err(_) => break,
        }
    }
    Some(pass)
}

/// Whether a failure can never be overcome by retrying.
fn is_undeliverable(error: &anyhow::Error) -> bool {
    error.downcast_ref::<Undeliverable>().is_some()
}

/// An announcement published: the event (`None` for a tombstone), where it went, how long it
/// took (ms).
type Published = (Option<RetrainEvent>, crate::outbox::events::Delivery, f64);

/// Returns once the transaction's connection stops answering (checked every 500 ms).
async fn connection_lost(tx: &mut Transaction<'static, Postgres>) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if !store::outbox::ping(tx).await {
            return;
        }
    }
}

/// The entries grouped by user, each group in the given (id) order.
fn per_user(entries: &[OutboxEntry]) -> Vec<Vec<&OutboxEntry>> {
    let mut groups: Vec<Vec<&OutboxEntry>> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for entry in entries {
        let i = *index.entry(&entry.user_id).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[i].push(entry);
    }
    groups
}

/// The distinct users of a pass, in order.
fn users_of(pass: &[&Committed]) -> Vec<String> {
    let mut seen = HashSet::new();
    pass.iter()
        .filter(|c| seen.insert(c.user_id.as_str()))
        .map(|c| c.user_id.clone())
        .collect()
}

pub(crate) fn elapsed_ms(since: Instant) -> f64 {
    (since.elapsed().as_secs_f64() * 1e6).round() / 1e3
}
