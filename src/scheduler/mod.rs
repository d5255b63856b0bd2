//! `refit run`: the long-running service.
//!
//! Tasks and how they talk:
//! - the **ingest** ([`crate::scheduler::ingest`]) queues newly committed actuals and notifies `refit_actuals`;
//! - the **listener** `LISTEN`s on `refit_actuals` (the ingest's channel) and forwards
//!   each notification — "`n` actuals of user `u` became pending" — to the scheduler; after a lost
//!   connection it asks for a full scan, because notifications sent meanwhile are gone;
//! - the **scheduler** (the task that calls [`Service::run`]) keeps a count of pending actuals per
//!   user ([`Pending`]): read from PostgreSQL when it does not know a user yet, then advanced by
//!   the notified arrivals, so a trickle of actuals costs no query until a user is due. A full
//!   scan on the poll tick is the safety net (skipped while due users are already queued, at most
//!   every [`BUSY_SCAN_INTERVAL`] then, since under load it is the costliest query refit runs).
//!   Due users run in a `JoinSet` of at most `max_concurrent_retrains` workers; a user notified
//!   while in flight is counted again when its worker ends;
//! - a **worker** retrains one user batch after batch while it knows of a full batch. It checks
//!   for shutdown only between batches: a retrain in flight commits or rolls back, never half;
//! - the **sweeper** delivers leftover outbox entries every poll interval and refreshes gauges;
//! - the **topic** task creates the Kafka topic, retrying until the broker answers.
//!
//! Shutdown (the token passed to `run`) stops the listener, sweeper and scheduler, waits for the
//! workers and their fast-path deliveries, then flushes the Kafka producer.

pub mod ingest;

use std::collections::{HashMap, HashSet, VecDeque};

use futures::FutureExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::outbox::events::Events;
use crate::outbox::{elapsed_ms, Outbox};
use crate::registry::retention::{self, Retention};
use crate::retrain::{Outcome, Retrainer};
use crate::store;
use crate::telemetry::metrics::Metrics;

/// Delivered outbox entries are kept this long for inspection, then purged.
/// How often the sweeper deletes rows past their retention.
const PURGE_EVERY: Duration = Duration::from_secs(10);

/// Users whose pending count the scheduler remembers at most (beyond: counted again when they are
/// notified).
const MAX_KNOWN_USERS: usize = 100_000;

/// While due users wait in the queue, the safety-net full scan runs at most this often.
const BUSY_SCAN_INTERVAL: Duration = Duration::from_secs(30);

/// Everything a running refit holds.
pub struct Service {
    pub(crate) config: Arc<Config>,
    pub pool: PgPool,
    /// The HTTP API's own small pool (REFIT_HTTP_DB_POOL_SIZE): registry reads cannot take the
    /// connections retrains need.
    pub(crate) http_pool: PgPool,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) events: Arc<Events>,
    pub(crate) outbox: Arc<Outbox>,
    pub retrainer: Arc<Retrainer>,
    /// Beaten by the scheduler loop; read by /healthz.
    pub(crate) heartbeat: Arc<crate::http::Heartbeat>,
    /// The bound HTTP listener (taken by `run`), bound at build time so its port is known.
    http_listener: std::sync::Mutex<Option<tokio::net::TcpListener>>,
    /// Where the HTTP server listens, if enabled.
    pub http_addr: Option<std::net::SocketAddr>,
}

impl Service {
    /// Connects to PostgreSQL (which must be migrated) and prepares the Redis and Kafka clients;
    /// Redis and Kafka may be down: their work waits in the outbox.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let config = Arc::new(config);
        let pool_size = store::service_pool_size(config.scheduling.max_concurrent_retrains);
        let pool = store::connect(&config.database.url, &config.session, pool_size).await?;
        store::check_migrated(&pool).await?;
        let http_pool = store::connect_as(
            "refit-http",
            &config.database.url,
            &config.session,
            config.http.db_pool_size,
        )
        .await?;
        let metrics = Arc::new(Metrics::new());
        let cache = Arc::new(config.redis.cache()?);
        let events = Arc::new(Events::new(&config)?);
        let outbox = Arc::new(Outbox::new(
            pool.clone(),
            cache,
            events.clone(),
            metrics.clone(),
            config.scheduling.outbox_retry_max,
            !config.retention.outbox_after.is_zero(),
        ));
        let retrainer = Arc::new(Retrainer::new(
            pool.clone(),
            config.clone(),
            metrics.clone(),
            outbox.clone(),
        ));
        crate::model::xgboost::set_global_config(r#"{"verbosity": 1}"#)?;
        let http_listener = match config.http.addr {
            None => None,
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on REFIT_HTTP_ADDR {addr}"))?,
            ),
        };
        let http_addr = http_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        Ok(Service {
            heartbeat: Arc::new(crate::http::Heartbeat::default()),
            http_listener: std::sync::Mutex::new(http_listener),
            http_addr,
            config,
            pool,
            http_pool,
            metrics,
            events,
            outbox,
            retrainer,
        })
    }

    /// The Prometheus text exposition of the service's metrics, as `/metrics` serves it.
    pub fn metrics_text(&self) -> String {
        self.metrics.render()
    }

    /// Whether the outbox's last announcements reached Kafka (what `/readyz` reports).
    pub fn kafka_healthy(&self) -> bool {
        self.outbox.kafka_healthy()
    }

    /// Creates the events topic if it does not exist (as `run` does in the background).
    pub async fn ensure_topic(&self) -> anyhow::Result<()> {
        self.events.ensure_topic().await
    }

    /// Runs until `shutdown` is cancelled, then winds down cleanly.
    pub async fn run(&self, shutdown: CancellationToken) -> anyhow::Result<()> {
        info!(
            threshold = self.config.scheduling.retrain_threshold,
            rounds = self.config.policy.rounds,
            rebuild_every = self.config.policy.rebuild_every,
            gate = self.config.policy.gate.enabled,
            max_staleness_secs = self.config.scheduling.max_staleness.map(|d| d.as_secs()),
            max_concurrent = self.config.scheduling.max_concurrent_retrains,
            topic = %self.config.kafka.topic,
            database = %self.config.database.url,
            redis = %self.config.redis.url,
            kafka = %self.config.kafka.brokers,
            "refit starting"
        );
        let background = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let (notify_tx, notify_rx) = mpsc::unbounded_channel();
        tasks.spawn(listen(self.pool.clone(), notify_tx, background.clone()));
        tasks.spawn(crate::scheduler::ingest::run(
            self.pool.clone(),
            self.config.scheduling.ingest_interval,
            background.clone(),
        ));
        tasks.spawn(sweep(
            self.outbox.clone(),
            self.pool.clone(),
            self.config.retention,
            self.config.audit_retention,
            self.config.scheduling.poll_interval,
            background.clone(),
        ));
        tasks.spawn(ensure_topic(self.events.clone(), background.clone()));
        let listener = self.http_listener.lock().expect("not poisoned").take();
        if let Some(listener) = listener {
            let state = crate::http::AppState {
                pool: self.http_pool.clone(),
                metrics: self.metrics.clone(),
                outbox: self.outbox.clone(),
                heartbeat: self.heartbeat.clone(),
                stale_after: (self.config.scheduling.poll_interval * 10)
                    .max(Duration::from_secs(30)),
                config: self.config.clone(),
            };
            info!(addr = ?self.http_addr, "serving /healthz, /readyz, /metrics, /models");
            let stop = background.clone();
            tasks.spawn(async move {
                if let Err(e) = crate::http::serve(listener, state, stop).await {
                    error!(error = format!("{e:#}"), "HTTP server failed");
                }
            });
        }

        let result = self.schedule(notify_rx, shutdown).await;

        background.cancel();
        while tasks.join_next().await.is_some() {}
        self.retrainer.drain_deliveries().await;
        if let Err(e) = self.events.flush(Duration::from_secs(10)) {
            warn!(error = %e, "Kafka producer not fully flushed; the outbox redelivers on restart");
        }
        info!("refit stopped");
        result
    }

    /// The scheduler loop (see the module docs).
    async fn schedule(
        &self,
        mut notifications: mpsc::UnboundedReceiver<Arrival>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let max = self.config.scheduling.max_concurrent_retrains;
        let mut ticker = tokio::time::interval(self.config.scheduling.poll_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pending = Pending::new(self.config.scheduling.retrain_threshold);
        let mut last_scan: Option<Instant> = None;
        let mut workers: JoinSet<(String, Finished)> = JoinSet::new();

        loop {
            self.heartbeat.beat();
            self.metrics.beat();
            let mut scan = false;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {
                    scan = pending.queue.is_empty()
                        || last_scan.is_none_or(|t| t.elapsed() >= BUSY_SCAN_INTERVAL);
                }
                Some(first) = notifications.recv() => {
                    let mut next = Some(first);
                    while let Some(arrival) = next {
                        match arrival {
                            Arrival::Rescan => scan = true,
                            Arrival::Actuals { user_id, count } => pending.arrived(user_id, count),
                        }
                        next = notifications.try_recv().ok();
                    }
                }
                Some(done) = workers.join_next(), if !workers.is_empty() => match done {
                    Ok((user_id, finished)) => pending.finished(user_id, finished),
                    Err(e) => error!(error = %e, "retrain worker failed to run"),
                },
            }
            if !pending.unknown.is_empty() {
                let users: Vec<String> = pending.unknown.drain().collect();
                let started = Instant::now();
                match store::pending_counts(&self.pool, &users).await {
                    Ok(counts) => {
                        self.metrics.observe_step("detect", elapsed_ms(started));
                        pending.counted(&users, counts);
                    }
                    Err(e) => {
                        error!(error = %e, "cannot count pending actuals; retrying at the next poll");
                        pending.unknown.extend(users);
                    }
                }
            }
            if scan {
                last_scan = Some(Instant::now());
                let started = Instant::now();
                let staleness =
                    self.config
                        .scheduling
                        .max_staleness
                        .map(|after| store::Staleness {
                            after,
                            min_rows: self.config.scheduling.stale_min_rows,
                        });
                let due = store::due_users(
                    &self.pool,
                    self.config.scheduling.retrain_threshold,
                    staleness,
                );
                match due.await {
                    Ok(due) => {
                        self.metrics.observe_step("detect", elapsed_ms(started));
                        pending.scanned(due);
                    }
                    Err(e) => {
                        error!(error = %e, "cannot count pending actuals; retrying at the next poll")
                    }
                }
                match store::pending_total(&self.pool).await {
                    Ok(n) => self.metrics.pending.set(n),
                    Err(e) => debug!(error = %e, "pending gauge not refreshed"),
                }
            }
            while workers.len() < max {
                let Some(user) = pending.start_next() else {
                    break;
                };
                let retrainer = self.retrainer.clone();
                let stop = shutdown.clone();
                workers.spawn(async move {
                    let finished = std::panic::AssertUnwindSafe(work(&retrainer, &user, &stop))
                        .catch_unwind()
                        .await
                        .unwrap_or_else(|_| {
                            error!(user_id = %user.user_id, "retrain worker panicked");
                            Finished::Unknown
                        });
                    (user.user_id, finished)
                });
            }
        }
        info!(
            in_flight = workers.len(),
            "shutting down: letting retrains in flight finish"
        );
        while workers.join_next().await.is_some() {}
        Ok(())
    }
}

/// What the listener tells the scheduler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// `count` actuals of the user became pending (`None`: how many is not known).
    Actuals { user_id: String, count: Option<i64> },
    /// Notifications may have been missed: scan everything.
    Rescan,
}

impl Arrival {
    /// Reads a notification of the insert trigger: `<count>:<first actual id>:<user id>`, or an
    /// empty payload (what the trigger sent for a user id too long to notify before migration
    /// 20261201000008, which sets such actuals aside instead).
    pub(crate) fn parse(payload: &str) -> Self {
        if payload.is_empty() {
            return Arrival::Rescan;
        }
        let mut parts = payload.splitn(3, ':');
        let count = parts.next().and_then(|n| n.parse::<i64>().ok());
        let first = parts.next().and_then(|f| f.parse::<i64>().ok());
        match (count, first, parts.next()) {
            (Some(count), Some(_), Some(user_id)) => Arrival::Actuals {
                user_id: user_id.to_owned(),
                count: Some(count),
            },
            // Not this schema's payload (e.g. a bare user id): ask the database.
            _ => Arrival::Actuals {
                user_id: payload.to_owned(),
                count: None,
            },
        }
    }
}

/// How a worker left its user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finished {
    /// This many actuals are still pending, as far as the worker knows.
    Remaining(i64),
    /// The user backs off after a failure: the full scan brings it back when it may retry.
    BackingOff,
    /// Unknown (another replica holds the user, or an error): the next arrival or scan tells.
    Unknown,
}

/// The scheduler's knowledge of pending actuals (see the module docs). Counts may run high
/// (another replica consumed rows) — that costs one retrain attempt that finds too few — but
/// never low while notifications arrive, so no due user waits for the safety-net scan.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    threshold: i64,
    /// Pending actuals per user not in flight: the last count read plus the arrivals since.
    known: HashMap<String, i64>,
    /// Users to count in the database before they can be scheduled.
    pub(crate) unknown: HashSet<String>,
    /// Users backing off after a failed retrain, since when: left to the full scan.
    backing_off: HashMap<String, Instant>,
    /// Users being retrained → notified again meanwhile.
    in_flight: HashMap<String, bool>,
    /// Due users in the order they became due (their counts stay in `known`).
    pub(crate) queue: VecDeque<String>,
    queued: HashSet<String>,
}

impl Pending {
    pub(crate) fn new(threshold: i64) -> Self {
        Pending {
            threshold,
            ..Default::default()
        }
    }

    /// A notification: `count` actuals of the user became pending.
    pub(crate) fn arrived(&mut self, user_id: String, count: Option<i64>) {
        if let Some(notified) = self.in_flight.get_mut(&user_id) {
            *notified = true;
            return;
        }
        if self.backing_off.contains_key(&user_id) {
            return;
        }
        match (self.known.get_mut(&user_id), count) {
            (Some(known), Some(count)) => {
                *known += count;
                let pending = *known;
                self.due_if(user_id, pending);
            }
            _ => {
                self.known.remove(&user_id);
                self.unknown.insert(user_id);
            }
        }
    }

    /// Counts read from the database for `asked` (users with no pending actual are absent).
    pub(crate) fn counted(&mut self, asked: &[String], counts: Vec<store::PendingCount>) {
        let mut counts: HashMap<String, store::PendingCount> =
            counts.into_iter().map(|c| (c.user_id.clone(), c)).collect();
        for user_id in asked {
            let (pending, backing_off) = counts
                .remove(user_id)
                .map_or((0, false), |c| (c.pending, c.backing_off));
            if let Some(notified) = self.in_flight.get_mut(user_id) {
                *notified = true;
            } else if backing_off {
                self.known.remove(user_id);
                self.backing_off.insert(user_id.clone(), Instant::now());
            } else {
                self.known.insert(user_id.clone(), pending);
                self.due_if(user_id.clone(), pending);
            }
        }
    }

    /// The full scan's due users (backing-off users excluded by the query); stale users are
    /// due whatever their count.
    pub(crate) fn scanned(&mut self, due: Vec<store::DueUser>) {
        self.forget_idle();
        for user in due {
            self.backing_off.remove(&user.user_id);
            if let Some(notified) = self.in_flight.get_mut(&user.user_id) {
                *notified = true;
            } else {
                self.known.insert(user.user_id.clone(), user.pending);
                match user.stale {
                    true => self.queue_once(user.user_id),
                    false => self.due_if(user.user_id, user.pending),
                }
            }
        }
    }

    /// Keeps the per-user maps from growing with every user ever seen: a back-off is forgotten
    /// once the longest back-off has passed (the scan brings the user back when it may retry);
    /// past [`MAX_KNOWN_USERS`] remembered counts, users with nothing pending are forgotten, then
    /// every count not queued (a forgotten user's next arrival is counted in the database).
    fn forget_idle(&mut self) {
        self.backing_off
            .retain(|_, since| since.elapsed() < crate::retrain::MAX_FAILURE_BACKOFF);
        if self.known.len() > MAX_KNOWN_USERS {
            self.known.retain(|_, pending| *pending > 0);
        }
        if self.known.len() > MAX_KNOWN_USERS {
            let queued = &self.queued;
            self.known.retain(|user, _| queued.contains(user));
        }
    }

    /// Users the scheduler holds state for.
    #[cfg(test)]
    fn users_held(&self) -> usize {
        self.known.len() + self.backing_off.len() + self.in_flight.len() + self.unknown.len()
    }

    /// A worker ended.
    pub(crate) fn finished(&mut self, user_id: String, finished: Finished) {
        let notified = self.in_flight.remove(&user_id).unwrap_or(false);
        match finished {
            Finished::BackingOff => {
                self.known.remove(&user_id);
                self.backing_off.insert(user_id, Instant::now());
            }
            Finished::Remaining(_) if notified => {
                self.unknown.insert(user_id);
            }
            Finished::Remaining(pending) => {
                self.known.insert(user_id.clone(), pending);
                self.due_if(user_id, pending);
            }
            Finished::Unknown => {
                self.known.remove(&user_id);
                if notified {
                    self.unknown.insert(user_id);
                }
            }
        }
    }

    /// The next due user to run; it is in flight from now on.
    pub(crate) fn start_next(&mut self) -> Option<store::DueUser> {
        let user_id = self.queue.pop_front()?;
        self.queued.remove(&user_id);
        let pending = self.known.remove(&user_id).unwrap_or(self.threshold);
        self.in_flight.insert(user_id.clone(), false);
        Some(store::DueUser {
            stale: pending < self.threshold,
            user_id,
            pending,
        })
    }

    fn due_if(&mut self, user_id: String, pending: i64) {
        if pending >= self.threshold {
            self.queue_once(user_id);
        }
    }

    fn queue_once(&mut self, user_id: String) {
        if self.queued.insert(user_id.clone()) {
            self.queue.push_back(user_id);
        }
    }
}

/// Retrains one user batch after batch while it knows of a full batch and no shutdown is asked.
async fn work(
    retrainer: &Retrainer,
    user: &store::DueUser,
    shutdown: &CancellationToken,
) -> Finished {
    let threshold = retrainer.threshold();
    let mut pending = user.pending;
    loop {
        match retrainer.retrain_bounded(&user.user_id, pending).await {
            Ok(outcome) if outcome.consumed_rows() => {
                debug!(user_id = %user.user_id, ?outcome, "retrain done");
                pending = (pending - threshold).max(0);
                if pending < threshold || shutdown.is_cancelled() {
                    return Finished::Remaining(pending);
                }
            }
            Ok(Outcome::NotDue { pending }) => return Finished::Remaining(pending),
            Ok(outcome @ (Outcome::Failed { .. } | Outcome::BackingOff)) => {
                debug!(user_id = %user.user_id, ?outcome, "worker done");
                return Finished::BackingOff;
            }
            Ok(outcome) => {
                debug!(user_id = %user.user_id, ?outcome, "worker done");
                return Finished::Unknown;
            }
            // Logged and backed off by `retrain_bounded`: left to the full scan, like a failure.
            Err(_) => return Finished::BackingOff,
        }
    }
}

/// Forwards notified arrivals; a lost connection asks for a full scan.
async fn listen(
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
                    let _ = to_scheduler.send(Arrival::parse(notification.payload()));
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

/// Periodically delivers leftover outbox entries and refreshes the backlog gauge; every
/// `PURGE_EVERY`, deletes what is past its retention.
async fn sweep(
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

/// Creates the topic, retrying with back-off until it exists or the service stops.
async fn ensure_topic(events: Arc<Events>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let attempt = tokio::select! {
            _ = stop.cancelled() => return,
            r = events.ensure_topic() => r,
        };
        match attempt {
            Ok(()) => {
                info!(topic = events.topic(), "Kafka topic ready");
                return;
            }
            Err(e) => {
                warn!(
                    topic = events.topic(),
                    error = format!("{e:#}"),
                    retry_in_ms = backoff.as_millis() as u64,
                    "Kafka topic not ready"
                );
                tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(backoff) => {} }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Waits for SIGTERM or SIGINT.
pub async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        r = tokio::signal::ctrl_c() => { r?; info!("SIGINT received") }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(user: &str, pending: i64, backing_off: bool) -> store::PendingCount {
        store::PendingCount {
            user_id: user.into(),
            pending,
            backing_off,
        }
    }

    #[test]
    fn notifications_are_parsed_with_their_counts() {
        assert_eq!(
            Arrival::parse("3:17:user:with:colons"),
            Arrival::Actuals {
                user_id: "user:with:colons".into(),
                count: Some(3)
            }
        );
        assert_eq!(Arrival::parse(""), Arrival::Rescan);
        assert_eq!(
            Arrival::parse("alice"),
            Arrival::Actuals {
                user_id: "alice".into(),
                count: None
            }
        );
    }

    #[test]
    fn a_user_is_counted_once_then_due_exactly_when_arrivals_reach_the_threshold() {
        let mut p = Pending::new(50);
        p.arrived("a".into(), Some(1));
        assert!(
            p.unknown.contains("a"),
            "an unknown user is counted in the database"
        );
        let asked: Vec<String> = p.unknown.drain().collect();
        p.counted(&asked, vec![count("a", 47, false)]);
        assert!(p.queue.is_empty());
        p.arrived("a".into(), Some(2));
        assert!(
            p.queue.is_empty() && p.unknown.is_empty(),
            "49: no query, not due"
        );
        p.arrived("a".into(), Some(3));
        let due = p.start_next().expect("52 pending: due");
        assert_eq!((due.user_id.as_str(), due.pending), ("a", 52));
        assert!(p.start_next().is_none());
    }

    #[test]
    fn arrivals_during_a_retrain_are_counted_again_afterwards() {
        let mut p = Pending::new(50);
        p.scanned(vec![store::DueUser {
            user_id: "a".into(),
            pending: 60,
            stale: false,
        }]);
        p.start_next().unwrap();
        p.arrived("a".into(), Some(45));
        assert!(p.unknown.is_empty(), "in flight: remembered, not queried");
        p.finished("a".into(), Finished::Remaining(10));
        assert!(
            p.unknown.contains("a"),
            "notified while in flight: counted again"
        );

        let mut p = Pending::new(50);
        p.scanned(vec![store::DueUser {
            user_id: "b".into(),
            pending: 50,
            stale: false,
        }]);
        p.start_next().unwrap();
        p.finished("b".into(), Finished::Remaining(0));
        p.arrived("b".into(), Some(50));
        assert_eq!(
            p.start_next().map(|u| u.pending),
            Some(50),
            "the worker's count is the base"
        );
    }

    #[test]
    fn a_stale_user_found_by_the_scan_is_due_below_the_threshold() {
        let mut p = Pending::new(50);
        p.scanned(vec![store::DueUser {
            user_id: "quiet".into(),
            pending: 3,
            stale: true,
        }]);
        let due = p.start_next().expect("stale: due");
        assert_eq!(
            (due.user_id.as_str(), due.pending, due.stale),
            ("quiet", 3, true)
        );
        p.scanned(vec![store::DueUser {
            user_id: "few".into(),
            pending: 3,
            stale: false,
        }]);
        assert!(
            p.start_next().is_none(),
            "not stale and below the threshold"
        );
    }

    #[test]
    fn the_per_user_maps_stay_bounded_when_users_go_quiet() {
        let mut p = Pending::new(50);
        let quiet: Vec<String> = (0..MAX_KNOWN_USERS + 10).map(|i| format!("u{i}")).collect();
        p.counted(&quiet, Vec::new());
        p.counted(&["trickle".into()], vec![count("trickle", 7, false)]);
        assert_eq!(p.users_held(), MAX_KNOWN_USERS + 11);
        p.scanned(Vec::new());
        assert_eq!(
            p.users_held(),
            1,
            "past the cap, users with nothing pending are forgotten"
        );
        // A forgotten user's next arrival is counted in the database, not lost; a remembered
        // count goes on from where it was.
        p.arrived("u1".into(), Some(3));
        assert!(p.unknown.contains("u1"));
        p.arrived("trickle".into(), Some(43));
        assert_eq!(p.start_next().map(|u| u.pending), Some(50));
    }

    #[test]
    fn a_backing_off_user_waits_for_the_full_scan() {
        let mut p = Pending::new(50);
        p.counted(&["a".into(), "b".into()], vec![count("a", 80, true)]);
        assert!(p.queue.is_empty(), "backing off: not scheduled");
        p.arrived("a".into(), Some(10));
        assert!(p.queue.is_empty() && p.unknown.is_empty());
        p.scanned(vec![store::DueUser {
            user_id: "a".into(),
            pending: 90,
            stale: false,
        }]);
        assert_eq!(p.start_next().map(|u| u.user_id), Some("a".into()));
        p.finished("a".into(), Finished::BackingOff);
        p.arrived("a".into(), Some(50));
        assert!(p.queue.is_empty());
        // "b" had nothing pending: its next arrival is counted from zero.
        p.arrived("b".into(), Some(50));
        assert_eq!(p.start_next().map(|u| u.user_id), Some("b".into()));
    }
}
