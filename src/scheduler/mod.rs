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
//!   scan on the poll tick is the safety net, and also refreshes the pending gauge ([`SafetyNet`]:
//!   at most every [`BUSY_SCAN_INTERVAL`] while due users are queued, and never more than 1 % of
//!   the time, since it reads the whole queue).
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
mod listen;
mod pending;
mod sweep;

use futures::FutureExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use listen::listen;
use pending::{Arrival, Finished, Pending};
use sweep::sweep;

use crate::config::Config;
use crate::outbox::events::Events;
use crate::outbox::{elapsed_ms, Outbox};
use crate::retrain::{Outcome, Retrainer};
use crate::store;
use crate::telemetry::metrics::Metrics;

/// While due users wait in the queue, the safety-net full scan runs at most this often.
const BUSY_SCAN_INTERVAL: Duration = Duration::from_secs(30);

/// The safety-net scan reads all of `refit_pending`: 56–64 ms at 500,000 pending actuals on the
/// bench machine, about 120 ns a row. After a scan of `n` rows the next waits at least
/// `SCAN_SHARE × n × SCAN_COST_PER_ROW`, so it keeps at most about 1 % of a PostgreSQL core busy
/// however long the queue grows. (Estimated from the rows, not timed: under CPU contention a
/// scan of a small table can take tens of milliseconds of waiting, which is not its cost; timing
/// it delayed the retry of a user backing off, which the scan brings back.)
const SCAN_SHARE: u32 = 100;
const SCAN_COST_PER_ROW: Duration = Duration::from_nanos(120);

/// When the poll tick runs the safety-net scan: while no due user waits, every tick (but no
/// sooner than [`SCAN_SHARE`] times the last scan's estimated cost after it); while due users
/// wait, at most every [`BUSY_SCAN_INTERVAL`]. A scan the listener asks for (notifications were
/// lost) runs whatever this says.
#[derive(Debug, Default)]
struct SafetyNet {
    /// When the last scan ended, and its estimated cost.
    last: Option<(Instant, Duration)>,
}

impl SafetyNet {
    fn due(&self, queue_empty: bool) -> bool {
        let Some((ended, cost)) = self.last else {
            return true;
        };
        let wait = match queue_empty {
            true => cost * SCAN_SHARE,
            false => BUSY_SCAN_INTERVAL.max(cost * SCAN_SHARE),
        };
        ended.elapsed() >= wait
    }

    fn scanned(&mut self, cost: Duration) {
        self.last = Some((Instant::now(), cost));
    }
}

/// Everything a running refit holds.
pub struct Service {
    pub(crate) config: Arc<Config>,
    pub pool: PgPool,
    /// The HTTP API's own small pool (REFIT_HTTP_DB_POOL_SIZE): registry reads cannot take the
    /// connections retrains need.
    pub(crate) http_pool: PgPool,
    /// The ingest's one session, planning once per statement ([`store::ingest::SESSION`]).
    ingest_pool: PgPool,
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
        let ingest_pool = store::ingest::connect(&config.database.url, &config.session).await?;
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
        crate::model::xgboost::use_threads(config.training.xgb_nthread);
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
            ingest_pool,
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
        self.log_start();
        let background = CancellationToken::new();
        let (notify_tx, notify_rx) = mpsc::unbounded_channel();
        let mut tasks = self.spawn_background(notify_tx, &background);
        self.spawn_http(&mut tasks, &background);

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

    fn log_start(&self) {
        let c = &self.config;
        info!(
            threshold = c.scheduling.retrain_threshold,
            rounds = c.policy.rounds,
            rebuild_every = c.policy.rebuild_every,
            gate = c.policy.gate.enabled,
            max_staleness_secs = c.scheduling.max_staleness.map(|d| d.as_secs()),
            max_concurrent = c.scheduling.max_concurrent_retrains,
            topic = %c.kafka.topic,
            database = %c.database.url,
            redis = %c.redis.url,
            kafka = %c.kafka.brokers,
            "refit starting"
        );
    }

    /// The ingest, the listener, the sweeper and the topic task, stopped by `stop`.
    fn spawn_background(
        &self,
        to_scheduler: mpsc::UnboundedSender<Arrival>,
        stop: &CancellationToken,
    ) -> JoinSet<()> {
        let scheduling = &self.config.scheduling;
        let mut tasks = JoinSet::new();
        tasks.spawn(listen(self.pool.clone(), to_scheduler, stop.clone()));
        tasks.spawn(ingest::run(
            self.ingest_pool.clone(),
            ingest::Pace::new(scheduling.ingest_interval, scheduling.ingest_idle_interval),
            stop.clone(),
        ));
        tasks.spawn(sweep(
            self.outbox.clone(),
            self.pool.clone(),
            self.config.retention,
            self.config.audit_retention,
            scheduling.poll_interval,
            stop.clone(),
        ));
        tasks.spawn(ensure_topic(self.events.clone(), stop.clone()));
        tasks
    }

    /// The HTTP server, if enabled (its listener was bound by `build`).
    fn spawn_http(&self, tasks: &mut JoinSet<()>, stop: &CancellationToken) {
        let Some(listener) = self.http_listener.lock().expect("not poisoned").take() else {
            return;
        };
        let state = crate::http::AppState {
            pool: self.http_pool.clone(),
            metrics: self.metrics.clone(),
            outbox: self.outbox.clone(),
            heartbeat: self.heartbeat.clone(),
            stale_after: (self.config.scheduling.poll_interval * 10).max(Duration::from_secs(30)),
            config: self.config.clone(),
        };
        info!(addr = ?self.http_addr, "serving /healthz, /readyz, /metrics, /models");
        let stop = stop.clone();
        tasks.spawn(async move {
            if let Err(e) = crate::http::serve(listener, state, stop).await {
                error!(error = format!("{e:#}"), "HTTP server failed");
            }
        });
    }

    /// The scheduler loop (see the module docs).
    async fn schedule(
        &self,
        mut notifications: mpsc::UnboundedReceiver<Arrival>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut ticker = tokio::time::interval(self.config.scheduling.poll_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pending = Pending::new(self.config.scheduling.retrain_threshold);
        let mut safety_net = SafetyNet::default();
        let mut workers: JoinSet<(String, Finished)> = JoinSet::new();
        loop {
            self.heartbeat.beat();
            self.metrics.beat();
            let mut scan = false;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => scan = safety_net.due(pending.queue.is_empty()),
                Some(first) = notifications.recv() => {
                    scan = take_arrivals(first, &mut notifications, &mut pending);
                }
                Some(done) = workers.join_next(), if !workers.is_empty() => match done {
                    Ok((user_id, finished)) => pending.finished(user_id, finished),
                    Err(e) => error!(error = %e, "retrain worker failed to run"),
                },
            }
            self.count_unknown(&mut pending).await;
            if scan {
                let cost = self.scan(&mut pending).await;
                safety_net.scanned(cost);
            }
            self.start_workers(&mut pending, &mut workers, &shutdown);
        }
        info!(
            in_flight = workers.len(),
            "shutting down: letting retrains in flight finish"
        );
        while workers.join_next().await.is_some() {}
        Ok(())
    }

    /// Counts in PostgreSQL the pending actuals of users the scheduler does not know yet.
    async fn count_unknown(&self, pending: &mut Pending) {
        if pending.unknown.is_empty() {
            return;
        }
        let users: Vec<String> = pending.unknown.drain().collect();
        let started = Instant::now();
        match store::actuals::pending_counts(&self.pool, &users).await {
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

    /// The safety-net full scan: every due (or stale) user, and the pending gauge, in one pass.
    /// Returns its estimated cost (see [`SCAN_COST_PER_ROW`]).
    async fn scan(&self, pending: &mut Pending) -> Duration {
        let scheduling = &self.config.scheduling;
        let started = Instant::now();
        let staleness = scheduling
            .max_staleness
            .map(|after| store::actuals::Staleness {
                after,
                min_rows: scheduling.stale_min_rows,
            });
        match store::actuals::due_users(&self.pool, scheduling.retrain_threshold, staleness).await {
            Ok(scan) => {
                self.metrics.observe_step("detect", elapsed_ms(started));
                self.metrics.pending.set(scan.total);
                pending.scanned(scan.due);
                SCAN_COST_PER_ROW * u32::try_from(scan.total).unwrap_or(u32::MAX)
            }
            Err(e) => {
                error!(error = %e, "cannot count pending actuals; retrying at the next poll");
                Duration::ZERO
            }
        }
    }

    /// Starts a worker for each due user, up to `max_concurrent_retrains` at once.
    fn start_workers(
        &self,
        pending: &mut Pending,
        workers: &mut JoinSet<(String, Finished)>,
        shutdown: &CancellationToken,
    ) {
        while workers.len() < self.config.scheduling.max_concurrent_retrains {
            let Some(user) = pending.start_next() else {
                return;
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
}

/// Applies `first` and every notification already waiting; whether one asked for a full scan.
fn take_arrivals(
    first: Arrival,
    notifications: &mut mpsc::UnboundedReceiver<Arrival>,
    pending: &mut Pending,
) -> bool {
    let mut scan = false;
    let mut next = Some(first);
    while let Some(arrival) = next {
        match arrival {
            Arrival::Rescan => scan = true,
            Arrival::Actuals { user_id, count } => pending.arrived(user_id, count),
        }
        next = notifications.try_recv().ok();
    }
    scan
}

/// Retrains one user batch after batch while it knows of a full batch and no shutdown is asked.
async fn work(
    retrainer: &Retrainer,
    user: &store::actuals::DueUser,
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
    use std::time::{Duration, Instant};

    use super::{SafetyNet, BUSY_SCAN_INTERVAL};

    /// A safety net whose last scan ended `ago` and had the estimated `cost`.
    fn scanned(ago: Duration, cost: Duration) -> SafetyNet {
        SafetyNet {
            last: Some((Instant::now() - ago, cost)),
        }
    }

    #[test]
    fn the_safety_net_scans_every_tick_while_it_is_cheap_and_nothing_waits() {
        assert!(SafetyNet::default().due(true));
        assert!(SafetyNet::default().due(false));
        let cheap = scanned(Duration::from_millis(200), Duration::from_millis(1));
        assert!(cheap.due(true));
        assert!(!cheap.due(false), "due users wait: the busy interval");
        let busy = scanned(BUSY_SCAN_INTERVAL, Duration::from_millis(1));
        assert!(busy.due(false));
    }

    #[test]
    fn a_costly_scan_waits_a_hundred_times_its_cost() {
        let slow = Duration::from_millis(60);
        assert!(!scanned(Duration::from_secs(5), slow).due(true));
        assert!(scanned(Duration::from_secs(6), slow).due(true));
        let slower = Duration::from_millis(400);
        assert!(!scanned(BUSY_SCAN_INTERVAL, slower).due(false));
        assert!(scanned(Duration::from_secs(40), slower).due(false));
    }
}
