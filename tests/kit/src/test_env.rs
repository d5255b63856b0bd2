//! The in-process test environment: each test gets its own database, topic and Redis key prefix
//! on the real services (PostgreSQL, Redis, the Kafka-compatible broker started by
//! `make services`), refit's `Service` built and run in the test's runtime, and the checks of
//! the events it announces.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use refit::config::Config;
use refit::outbox::events::{EventReader, ReadEvent};
use refit::scheduler::Service;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    admin_url, brokers, create_migrated_database, drop_database, ingest_all,
    insert_request_and_actual, redis_url,
};
use crate::{rental_actual, rental_features};

/// The default retraining policy, as a user who sets nothing gets it: undoes the small,
/// rebuild-free models [`TestEnv::vars`] sets up for the other tests.
pub const DEFAULT_POLICY: [(&str, &str); 9] = [
    ("REFIT_VALIDATION", "on"),
    ("REFIT_ROUNDS_PER_RETRAIN", "1"),
    ("REFIT_CONTINUE_ETA", "0.1"),
    ("REFIT_REBUILD_EVERY", "4"),
    ("REFIT_REFIT_WINDOW", "4000"),
    ("REFIT_COMPACTION_ROUNDS", "35"),
    ("REFIT_REBUILD_ETA", "0.3"),
    ("REFIT_RECENCY_HALF_LIFE", "2000"),
    ("REFIT_MAX_TREES", "150"),
];

/// Logs of the code under test are silent unless `TEST_LOG` is set (then text on stdout, as
/// `REFIT_LOG_FORMAT=text` logs; `RUST_LOG` filters).
pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_target(false)
            .try_init();
    }
}

/// An isolated environment: database, topic and cache key prefix of its own.
pub struct TestEnv {
    /// The URL of the environment's own database.
    pub database_url: String,
    /// A pool on that database.
    pub pool: PgPool,
    /// The environment's own events topic.
    pub topic: String,
    /// The environment's own prefix of serving-cache keys.
    pub key_prefix: String,
    /// A client of the shared Redis.
    pub redis: redis::Client,
}

impl TestEnv {
    /// A new environment: a migrated database, a topic name and a key prefix of its own.
    pub async fn new() -> Self {
        init_logs();
        let id = Uuid::new_v4().simple().to_string()[..12].to_owned();
        let name = format!("refit_test_{id}");
        let (database_url, pool) =
            create_migrated_database(&admin_url(), &name, PgPoolOptions::new())
                .await
                .expect("a migrated database of the test's own");
        TestEnv {
            database_url,
            pool,
            topic: format!("refit-test-{id}"),
            key_prefix: format!("test:{id}:model:"),
            redis: redis::Client::open(redis_url()).unwrap(),
        }
    }

    /// Environment variables for a refit process (or `Config`) pointed at this environment.
    pub fn vars(&self, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut vars: BTreeMap<String, String> = [
            ("DATABASE_URL", self.database_url.clone()),
            ("REDIS_URL", redis_url()),
            ("KAFKA_BROKERS", brokers()),
            ("REFIT_TOPIC", self.topic.clone()),
            ("REFIT_TOPIC_PARTITIONS", "2".into()),
            ("REFIT_CACHE_KEY_PREFIX", self.key_prefix.clone()),
            ("REFIT_POLL_INTERVAL_MS", "100".into()),
            ("REFIT_ROUNDS_PER_RETRAIN", "5".into()),
            // Small, predictable models: a first model of 5 rounds, no scheduled rebuilds, the
            // model's own learning rate. The policy has its own tests (lifecycle.rs, policy.rs).
            ("REFIT_COMPACTION_ROUNDS", "5".into()),
            ("REFIT_REBUILD_EVERY", "0".into()),
            ("REFIT_CONTINUE_ETA", "0".into()),
            ("REFIT_REBUILD_ETA", "0".into()),
            ("REFIT_RECENCY_HALF_LIFE", "0".into()),
            ("REFIT_HTTP_ADDR", "127.0.0.1:0".into()),
            ("REFIT_ENVIRONMENT", "test".into()),
            // The validation gate has its own tests (lifecycle.rs); elsewhere every row trains.
            ("REFIT_VALIDATION", "off".into()),
            // Delivered outbox entries are kept, so tests can check what was delivered and in
            // which order (done_at). By default they are deleted when delivered: retention.rs
            // and crash.rs test that.
            ("REFIT_OUTBOX_RETENTION_SECS", "3600".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (k, v) in extra {
            vars.insert((*k).to_owned(), (*v).to_owned());
        }
        vars
    }

    /// refit's `Config` from [`TestEnv::vars`].
    pub fn config(&self, extra: &[(&str, &str)]) -> Config {
        Config::from_sources(None, &self.vars(extra)).unwrap()
    }

    /// A built service whose topic exists, not yet running.
    pub async fn service(&self, extra: &[(&str, &str)]) -> Service {
        let service = Service::build(self.config(extra)).await.unwrap();
        service.ensure_topic().await.unwrap();
        service
    }

    /// Starts the service in the background.
    pub async fn start(&self, extra: &[(&str, &str)]) -> Running {
        let service = Arc::new(self.service(extra).await);
        let token = CancellationToken::new();
        let handle = tokio::spawn({
            let service = service.clone();
            let token = token.clone();
            async move { service.run(token).await }
        });
        Running {
            service,
            token,
            handle,
        }
    }

    /// A reader of the environment's topic from its beginning.
    pub fn reader(&self) -> EventReader {
        EventReader::new(&brokers(), &self.topic, true).unwrap()
    }

    /// A connection to the shared Redis.
    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        self.redis.get_multiplexed_async_connection().await.unwrap()
    }

    /// Puts a stale model in the serving cache, as serving would have.
    pub async fn cache_model(&self, user: &str) {
        let mut r = self.redis().await;
        let _: () = redis::cmd("SET")
            .arg(format!("{}{user}", self.key_prefix))
            .arg("stale")
            .query_async(&mut r)
            .await
            .unwrap();
    }

    /// Whether the serving cache has an entry for `user`.
    pub async fn cached(&self, user: &str) -> bool {
        let mut r = self.redis().await;
        redis::cmd("EXISTS")
            .arg(format!("{}{user}", self.key_prefix))
            .query_async::<i64>(&mut r)
            .await
            .unwrap()
            == 1
    }

    /// Inserts `n` requests with their actuals for `user`, each in its own transaction, and
    /// queues them (as a running refit's ingest would).
    pub async fn insert_actuals(&self, user: &str, n: usize) -> Vec<i64> {
        let ids = self.insert_upstream_n(user, n).await;
        ingest_all(&self.pool).await;
        ids
    }

    /// Inserts `n` requests with their actuals as the upstream does, not ingested yet.
    pub async fn insert_upstream_n(&self, user: &str, n: usize) -> Vec<i64> {
        let mut conn = self.pool.acquire().await.unwrap();
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let features = rental_features(i).to_string();
            let id = insert_request_and_actual(&mut conn, user, &features, rental_actual(i));
            ids.push(id.await.unwrap());
        }
        ids
    }

    /// A connection of the pool, e.g. for [`insert_request_and_actual`](crate::insert_request_and_actual).
    pub async fn conn(&self) -> sqlx::pool::PoolConnection<sqlx::Postgres> {
        self.pool.acquire().await.unwrap()
    }

    /// The `count(*)` (or any one integer) that `sql` selects.
    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }

    /// How many actuals of `user` are queued for a retrain.
    pub async fn pending(&self, user: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM refit_pending WHERE user_id = $1")
            .bind(user)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// The ids of the actuals of `user` a retrain consumed (trained, held out or set aside).
    pub async fn consumed_ids(&self, user: &str) -> Vec<i64> {
        sqlx::query_scalar(
            "SELECT actual_id FROM refit_consumed_actuals WHERE user_id = $1 ORDER BY actual_id",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    /// Version numbers of a user with the given status.
    pub async fn versions(&self, user: &str, status: &str) -> Vec<i32> {
        sqlx::query_scalar("SELECT version FROM refit_model_versions WHERE user_id = $1 AND status = $2 ORDER BY version")
            .bind(user)
            .bind(status)
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    /// `user`'s active version (the one served), if any.
    pub async fn active_version(&self, user: &str) -> Option<i32> {
        sqlx::query_scalar("SELECT active_version FROM refit_models WHERE user_id = $1")
            .bind(user)
            .fetch_optional(&self.pool)
            .await
            .unwrap()
            .flatten()
    }

    /// Drops this environment's database (a test that filled it at scale cleans up after itself).
    pub async fn drop_database(self) {
        self.pool.close().await;
        let name = self.database_url.rsplit('/').next().unwrap();
        drop_database(&admin_url(), name).await.unwrap();
    }

    /// Waits until the outbox holds nothing undone.
    pub async fn outbox_drained(&self, timeout: Duration) {
        eventually(timeout, "outbox drained", || async {
            self.count("SELECT count(*) FROM refit_outbox WHERE done_at IS NULL")
                .await
                == 0
        })
        .await;
    }
}

/// A service running in the background of a test.
pub struct Running {
    /// The service.
    pub service: Arc<Service>,
    /// Cancelling it shuts the service down.
    pub token: CancellationToken,
    /// The task running it.
    pub handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Shuts the service down and waits until it has (panics if it failed).
    pub async fn stop(self) {
        self.token.cancel();
        self.handle.await.unwrap().unwrap();
    }
}

/// One sample of the service's metrics exposition, e.g. `refit_retrains_total{status="failed"}`
/// (0 when the series has not been written yet).
pub fn metric(service: &Service, series: &str) -> f64 {
    service
        .metrics_text()
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.parse().expect("a sample value"))
}

/// Polls `condition` until it holds or `timeout` passes (then panics naming `what`).
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The published contract of the event value: docs/model-retrained.schema.json (formats checked).
static EVENT_SCHEMA: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    let schema: Value = serde_json::from_str(include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/model-retrained.schema.json"
    )))
    .expect("the event schema is JSON");
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("the event schema is a valid JSON Schema")
});

/// Panics, naming every violation, unless the event's value as sent matches the event schema.
pub fn assert_valid_event(event: &ReadEvent) {
    let violations: Vec<String> = EVENT_SCHEMA
        .iter_errors(&event.value)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(
        violations.is_empty(),
        "a model-retrained event violates docs/model-retrained.schema.json: {violations:?}\n{}",
        event.value
    );
}

/// Reads events until `n` arrived (or panics after `timeout`); each is checked against the schema.
pub fn read_events(reader: &EventReader, n: usize, timeout: Duration) -> Vec<ReadEvent> {
    let deadline = Instant::now() + timeout;
    let mut events = Vec::new();
    while events.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "timed out waiting for {n} events, got {}: {events:?}",
            events.len()
        );
        if let Some(e) = reader.next(left.min(Duration::from_millis(500))).unwrap() {
            assert_valid_event(&e);
            events.push(e);
        }
    }
    events
}

/// Events that arrive within `window` (for asserting that no more come); each is checked against
/// the schema.
pub fn drain_events(reader: &EventReader, window: Duration) -> Vec<ReadEvent> {
    let mut events = Vec::new();
    while let Some(e) = reader.next(window).unwrap() {
        assert_valid_event(&e);
        events.push(e);
    }
    events
}
