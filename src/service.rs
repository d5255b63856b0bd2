//! `refit run`: the long-running service.
//!
//! Tasks and how they talk:
//! - the **listener** `LISTEN`s on `refit_actuals` (the insert trigger's channel) and forwards each
//!   notified user id to the scheduler; after a lost connection it asks for a full scan, because
//!   notifications sent meanwhile are gone;
//! - the **scheduler** (the task that calls [`Service::run`]) owns the set of users in flight. It
//!   counts pending actuals for notified users, and for everyone on every poll tick (the safety
//!   net), and runs due users' retrains in a `JoinSet` of at most `max_concurrent_retrains`
//!   workers. A user notified while in flight is checked again when its worker ends;
//! - a **worker** retrains one user batch after batch until fewer than `threshold` actuals are
//!   pending. It checks for shutdown only between batches: a retrain in flight commits or rolls
//!   back, never half;
//! - the **sweeper** delivers leftover outbox entries every poll interval and refreshes gauges;
//! - the **topic** task creates the Kafka topic, retrying until the broker answers.
//!
//! Shutdown (the token passed to `run`) stops the listener, sweeper and scheduler, waits for the
//! workers and their fast-path deliveries, then flushes the Kafka producer.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::cache::Cache;
use crate::config::Config;
use crate::db;
use crate::events::Events;
use crate::metrics::Metrics;
use crate::outbox::{elapsed_ms, Outbox};
use crate::retrain::Retrainer;

/// Delivered outbox entries are kept this long for inspection, then purged.
const OUTBOX_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Everything a running refit holds.
pub struct Service {
    pub config: Arc<Config>,
    pub pool: PgPool,
    pub metrics: Arc<Metrics>,
    pub cache: Arc<Cache>,
    pub events: Arc<Events>,
    pub outbox: Arc<Outbox>,
    pub retrainer: Arc<Retrainer>,
    /// Beaten by the scheduler loop; read by /healthz.
    pub heartbeat: Arc<crate::http::Heartbeat>,
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
        let pool = db::connect(&config.database_url, config.max_concurrent_retrains).await?;
        db::check_migrated(&pool).await?;
        let metrics = Arc::new(Metrics::new());
        let cache = Arc::new(Cache::new(&config.redis_url, &config.cache_key_prefix)?);
        let events = Arc::new(Events::new(&config)?);
        let outbox = Arc::new(Outbox::new(
            pool.clone(),
            cache.clone(),
            events.clone(),
            metrics.clone(),
            config.outbox_retry_max,
        ));
        let retrainer = Arc::new(Retrainer::new(
            pool.clone(),
            config.clone(),
            metrics.clone(),
            outbox.clone(),
        ));
        crate::xgboost::set_global_config(r#"{"verbosity": 1}"#)?;
        let http_listener = match config.http_addr {
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
            metrics,
            cache,
            events,
            outbox,
            retrainer,
        })
    }

    /// Runs until `shutdown` is cancelled, then winds down cleanly.
    pub async fn run(&self, shutdown: CancellationToken) -> anyhow::Result<()> {
        info!(
            threshold = self.config.retrain_threshold,
            rounds = self.config.rounds_per_retrain,
            max_concurrent = self.config.max_concurrent_retrains,
            topic = %self.config.topic,
            database = %self.config.database_url,
            redis = %self.config.redis_url,
            kafka = %self.config.kafka_brokers,
            "refit starting"
        );
        let background = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let (notify_tx, notify_rx) = mpsc::unbounded_channel();
        tasks.spawn(listen(self.pool.clone(), notify_tx, background.clone()));
        tasks.spawn(sweep(
            self.outbox.clone(),
            self.pool.clone(),
            self.config.poll_interval,
            background.clone(),
        ));
        tasks.spawn(ensure_topic(self.events.clone(), background.clone()));
        let listener = self.http_listener.lock().expect("not poisoned").take();
        if let Some(listener) = listener {
            let state = crate::http::AppState {
                pool: self.pool.clone(),
                metrics: self.metrics.clone(),
                outbox: self.outbox.clone(),
                heartbeat: self.heartbeat.clone(),
                stale_after: (self.config.poll_interval * 10).max(Duration::from_secs(30)),
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
        mut notifications: mpsc::UnboundedReceiver<Option<String>>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let max = self.config.max_concurrent_retrains;
        let mut ticker = tokio::time::interval(self.config.poll_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // User → notified again while in flight.
        let mut in_flight: HashMap<String, bool> = HashMap::new();
        let mut queue: VecDeque<db::DueUser> = VecDeque::new();
        let mut queued: HashSet<String> = HashSet::new();
        let mut workers: JoinSet<String> = JoinSet::new();

        loop {
            self.heartbeat.beat();
            let scope: Option<Vec<String>> = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => None,
                Some(first) = notifications.recv() => {
                    let mut users = HashSet::new();
                    let mut full = first.is_none();
                    users.extend(first);
                    while let Ok(next) = notifications.try_recv() {
                        match next {
                            Some(user) => { users.insert(user); }
                            None => full = true,
                        }
                    }
                    if full { None } else { Some(users.into_iter().collect()) }
                }
                Some(done) = workers.join_next(), if !workers.is_empty() => {
                    match done {
                        Ok(user) if in_flight.remove(&user) == Some(true) => Some(vec![user]),
                        Ok(_) => Some(Vec::new()),
                        Err(e) => { error!(error = %e, "retrain worker panicked"); Some(Vec::new()) }
                    }
                }
            };
            if scope.as_ref().is_none_or(|users| !users.is_empty()) {
                let started = Instant::now();
                match db::due_users(&self.pool, self.config.retrain_threshold, scope.as_deref())
                    .await
                {
                    Ok(due) => {
                        self.metrics.observe_step("detect", elapsed_ms(started));
                        for user in due {
                            if let Some(dirty) = in_flight.get_mut(&user.user_id) {
                                *dirty = true;
                            } else if queued.insert(user.user_id.clone()) {
                                queue.push_back(user);
                            }
                        }
                    }
                    Err(e) => {
                        error!(error = %e, "cannot count pending actuals; retrying at the next poll")
                    }
                }
            }
            if scope.is_none() {
                match db::pending_total(&self.pool).await {
                    Ok(n) => self.metrics.pending.set(n),
                    Err(e) => debug!(error = %e, "pending gauge not refreshed"),
                }
            }
            while workers.len() < max {
                let Some(user) = queue.pop_front() else { break };
                queued.remove(&user.user_id);
                in_flight.insert(user.user_id.clone(), false);
                let retrainer = self.retrainer.clone();
                let stop = shutdown.clone();
                workers.spawn(async move {
                    work(&retrainer, &user, &stop).await;
                    user.user_id
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

/// Retrains one user batch after batch while batches are due and no shutdown is asked.
async fn work(retrainer: &Retrainer, user: &db::DueUser, shutdown: &CancellationToken) {
    let mut pending = user.pending;
    loop {
        match retrainer.retrain_user(&user.user_id, pending).await {
            Ok(outcome) if outcome.consumed_rows() && !shutdown.is_cancelled() => {
                debug!(user_id = %user.user_id, ?outcome, "retrain done; checking for another batch");
                pending = (pending - retrainer.threshold()).max(0);
            }
            Ok(outcome) => {
                debug!(user_id = %user.user_id, ?outcome, "worker done");
                return;
            }
            Err(e) => {
                error!(user_id = %user.user_id, error = format!("{e:#}"), "retrain aborted; its actuals stay pending");
                return;
            }
        }
    }
}

/// Forwards notified user ids; `None` asks for a full scan.
async fn listen(
    pool: PgPool,
    to_scheduler: mpsc::UnboundedSender<Option<String>>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    'connect: loop {
        let listener = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(db::ACTUALS_CHANNEL).await?;
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
        let _ = to_scheduler.send(None);
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                n = listener.try_recv() => n,
            };
            match next {
                Ok(Some(notification)) => {
                    let user = notification.payload();
                    let _ = to_scheduler.send((!user.is_empty()).then(|| user.to_owned()));
                }
                // The connection was lost and re-made: notifications in between are gone.
                Ok(None) => {
                    let _ = to_scheduler.send(None);
                }
                Err(e) => {
                    warn!(error = %e, "LISTEN connection failed; reconnecting");
                    let _ = to_scheduler.send(None);
                    continue 'connect;
                }
            }
        }
    }
}

/// Periodically delivers leftover outbox entries and refreshes the backlog gauge.
async fn sweep(outbox: Arc<Outbox>, pool: PgPool, interval: Duration, stop: CancellationToken) {
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
        if last_purge.elapsed() > Duration::from_secs(3600) {
            last_purge = Instant::now();
            if let Err(e) = db::purge_outbox(&pool, OUTBOX_RETENTION).await {
                warn!(error = %e, "outbox purge failed");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
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
