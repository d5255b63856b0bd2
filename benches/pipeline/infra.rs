//! What every phase uses: settings, a database of its own with generated data, a Kafka consumer
//! that timestamps every event it reads, and child processes (refit, the Python reference) with
//! their logs and memory watched.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use refit_testkit::{proc_cpu_seconds, proc_memory, var_or, MemoryRecord, Output, Process};
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// The refit binary cargo built for this bench (same profile).
pub const REFIT_BIN: &str = env!("CARGO_BIN_EXE_refit");

/// Seconds since the Unix epoch, as the wall clock says now.
pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// An RFC 3339 timestamp as seconds since the Unix epoch.
pub fn parse_ts(s: &str) -> Option<f64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_micros() as f64 / 1e6)
}

/// The variable `name` parsed, if it is set and parses.
fn env_opt<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

pub(crate) fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    env_opt(name).unwrap_or(default)
}

/// Everything a run can be told through the environment (see BENCHMARKS.md).
#[derive(Debug, Clone)]
pub struct Settings {
    pub quick: bool,
    pub admin_url: String,
    pub redis_url: String,
    pub brokers: String,
    /// The bench venv's python (scripts/bench-tools.sh); `None` skips the Python reference.
    pub python: Option<String>,
    pub python_script: PathBuf,
    pub phases: Vec<String>,
    /// Users of the throughput phase.
    pub users: usize,
    /// Batches completed per second during the freshness phase (one sub-run per rate).
    pub fresh_rates: Vec<f64>,
    /// Seconds of paced inserts per rate (BENCH_FRESH_SECONDS); `None`: one rebuild cycle per
    /// user ([`Settings::fresh_window`]).
    pub fresh_seconds: Option<f64>,
    /// Users whose actuals stream in during the freshness phase.
    pub fresh_users: usize,
    /// Retrains of each freshness user before the measurement (so the measured ones continue a model).
    pub fresh_warm: usize,
    /// Growth runs: (REFIT_MAX_TREES value or "default" for refit's own, retrains of the one user).
    pub growth_runs: Vec<(String, usize)>,
    /// Extra environment for every refit child (BENCH_REFIT_ENV="K=V;K=V"), e.g. to compare
    /// REFIT_MAX_CONCURRENT_RETRAINS values.
    pub refit_extra_env: Vec<(String, String)>,
    /// How long the Python reference sleeps after a poll that found nothing
    /// (BENCH_PYTHON_POLL_MS, its own default 100), the counterpart of refit's ingest pace.
    pub python_poll_ms: u64,
    pub growth_timeout: Duration,
    /// Seconds per rate of the ramp (scenario 3).
    pub ramp_seconds: f64,
    pub ramp_warm_seconds: f64,
    /// Arrival rates (batches/s) the ramp climbs, per implementation.
    pub ramp_refit: Vec<f64>,
    pub ramp_python: Vec<f64>,
    /// How often the short phases (floor, steps, freshness) are repeated.
    pub repeat: usize,
    pub keep_databases: bool,
    pub out_dir: PathBuf,
    pub run_id: String,
}

/// A comma-separated list from the environment.
fn env_list(name: &str, default: &str) -> Vec<String> {
    var_or(name, default)
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// A comma-separated list of rates from the environment (what does not parse is left out).
fn env_rates(name: &str, default: &str) -> Vec<f64> {
    env_list(name, default)
        .iter()
        .filter_map(|r| r.parse().ok())
        .collect()
}

/// BENCH_GROWTH: `cap:retrains` runs.
fn growth_runs(quick: bool) -> Vec<(String, usize)> {
    let default = if quick {
        "default:100,0:100"
    } else {
        "default:1000,0:500"
    };
    env_list("BENCH_GROWTH", default)
        .iter()
        .map(|spec| match spec.split_once(':') {
            Some((cap, n)) => (cap.to_owned(), n.parse().unwrap_or(1000)),
            None => (spec.clone(), if quick { 100 } else { 1000 }),
        })
        .collect()
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        let quick = var_or("BENCH_QUICK", "0") != "0";
        let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        let out_dir = std::env::var("BENCH_OUT")
            .map(PathBuf::from)
            .unwrap_or_else(|_| root.join("target/bench").join(format!("{stamp}-{run_id}")));
        let python = match var_or("BENCH_PYTHON", "").as_str() {
            "" | "0" | "off" => None,
            p => Some(p.to_owned()),
        };
        Ok(Settings {
            quick,
            admin_url: var_or("BENCH_DATABASE_URL", &refit_testkit::admin_url()),
            redis_url: refit_testkit::redis_url(),
            brokers: refit_testkit::brokers(),
            python,
            python_script: root.join("scripts/bench-python.py"),
            // `python` (the Python reference's drain, ~10 min at 10,000 users) only on request:
            // the ramp (scenario 3) is where the two are compared.
            phases: env_list(
                "BENCH_PHASES",
                "floor,steps,freshness,ramp,throughput,growth",
            ),
            users: env_num("BENCH_USERS", if quick { 1000 } else { 10_000 }),
            fresh_rates: env_rates("BENCH_FRESH_RATES", if quick { "10" } else { "4,10" }),
            fresh_seconds: env_opt("BENCH_FRESH_SECONDS").or(quick.then_some(10.0)),
            fresh_users: env_num("BENCH_FRESH_USERS", 50),
            fresh_warm: env_num("BENCH_FRESH_WARM", 3),
            growth_runs: growth_runs(quick),
            refit_extra_env: var_or("BENCH_REFIT_ENV", "")
                .split(';')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect(),
            python_poll_ms: env_num("BENCH_PYTHON_POLL_MS", 100),
            growth_timeout: Duration::from_secs(env_num(
                "BENCH_GROWTH_TIMEOUT_SECS",
                if quick { 120 } else { 420 },
            )),
            ramp_seconds: env_num("BENCH_RAMP_SECONDS", if quick { 8.0 } else { 20.0 }),
            ramp_warm_seconds: env_num("BENCH_RAMP_WARM", if quick { 2.0 } else { 4.0 }),
            ramp_refit: env_rates("BENCH_RAMP_REFIT", "50,100,150,200,250,300,350,400,500"),
            ramp_python: env_rates("BENCH_RAMP_PYTHON", "10,20,30,40,50,60,80,100,150,200"),
            repeat: env_num("BENCH_REPEAT", if quick { 1 } else { 3 }),
            keep_databases: var_or("BENCH_KEEP_DBS", "0") != "0",
            out_dir,
            run_id,
        })
    }

    pub fn wants(&self, phase: &str) -> bool {
        self.phases.iter().any(|p| p == phase)
    }

    /// Seconds of paced inserts at `rate` batches/s: BENCH_FRESH_SECONDS, or as long as it takes
    /// every user to complete one rebuild cycle (REFIT_REBUILD_EVERY batches, 4 by default), so
    /// the measured versions are continues and rebuilds in the policy's own proportion (at 4
    /// batches/s a fixed 25 s made two batches a user, half of them rebuilds).
    pub fn fresh_window(&self, rate: f64) -> f64 {
        self.fresh_seconds.unwrap_or_else(|| {
            let cycle = self
                .refit_extra_env
                .iter()
                .find(|(k, _)| k == "REFIT_REBUILD_EVERY")
                .and_then(|(_, v)| v.parse::<f64>().ok())
                .filter(|n| *n > 0.0)
                .unwrap_or(4.0);
            cycle * self.fresh_users as f64 / rate
        })
    }
}

/// A progress bar on stderr: redrawn in place on a terminal, a line every 5 s otherwise (CI).
pub struct Progress {
    label: String,
    total: usize,
    started: Instant,
    last: Option<Instant>,
    tty: bool,
    /// The latest value set, and the latest drawn (finish draws the latest if it was skipped).
    done: usize,
    drawn: Option<usize>,
}

impl Progress {
    pub fn new(label: &str, total: usize) -> Progress {
        use std::io::IsTerminal;
        Progress {
            label: label.to_owned(),
            total: total.max(1),
            started: Instant::now(),
            last: None,
            tty: std::io::stderr().is_terminal(),
            done: 0,
            drawn: None,
        }
    }

    pub fn set(&mut self, done: usize) {
        self.done = done;
        let every = Duration::from_millis(if self.tty { 200 } else { 5000 });
        if self.last.is_some_and(|t| t.elapsed() < every)
            && (done < self.total || self.drawn == Some(done))
        {
            return;
        }
        self.draw();
    }

    fn draw(&mut self) {
        let done = self.done;
        self.drawn = Some(done);
        self.last = Some(Instant::now());
        let width = 30;
        let filled = (done.min(self.total) * width) / self.total;
        let secs = self.started.elapsed().as_secs_f64();
        let line = format!(
            "[bench] {:<28} [{}{}] {done}/{} {:.0}/s {:.0} s",
            self.label,
            "#".repeat(filled),
            ".".repeat(width - filled),
            self.total,
            done as f64 / secs.max(1e-3),
            secs
        );
        if self.tty {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
    }

    pub fn finish(&mut self) {
        if self.drawn != Some(self.done) {
            self.draw();
        }
        if self.tty {
            eprintln!();
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Databases and generated data
// ------------------------------------------------------------------------------------------------

/// What the names of the bench's databases start with.
pub const DB_PREFIX: &str = "refit_bench_";

/// A database (and topic, and cache key prefix) of one phase.
pub struct BenchDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
    pub topic: String,
    pub key_prefix: String,
    admin_url: String,
    keep: bool,
    /// refit's trigger-fed queue is there (dropped for the Python reference).
    pub has_pending_queue: bool,
}

/// Functions that generate the same data in every database: rental-like features of user `u`'s
/// `k`-th request and the actual that goes with it (a daily pattern, weather, a per-user scale and
/// deterministic noise). Request ids are derived from (u, k), so both implementations see the
/// very same rows.
const DATA_FUNCTIONS: &str = r#"
CREATE FUNCTION bench_user(u int) RETURNS text IMMUTABLE LANGUAGE sql
  AS $$ SELECT 'user-' || lpad(u::text, 6, '0') $$;
CREATE FUNCTION bench_request_id(u int, k int) RETURNS uuid IMMUTABLE LANGUAGE sql
  AS $$ SELECT md5('refit-bench/' || u || '/' || k)::uuid $$;
CREATE FUNCTION bench_noise(u int, k int) RETURNS float8 IMMUTABLE LANGUAGE sql
  AS $$ SELECT x - floor(x) FROM (SELECT abs(sin(u * 12.9898 + k * 78.233)) * 43758.5453 AS x) t $$;
CREATE FUNCTION bench_features(u int, k int) RETURNS jsonb IMMUTABLE LANGUAGE sql
  AS $$ SELECT jsonb_build_object(
           'hour', (k * 5) % 24,
           'weekday', (k / 7) % 7,
           'temperature', round((8 + 0.9 * ((k * 7 + u) % 23))::numeric, 1),
           'humidity', 40 + (k * 13 + u) % 50) $$;
CREATE FUNCTION bench_actual(u int, k int) RETURNS float8 IMMUTABLE LANGUAGE sql
  AS $$ SELECT round(((20 + 30 * exp(-power(((k * 5) % 24) - 8, 2) / 6.0)
                          + 25 * exp(-power(((k * 5) % 24) - 17, 2) / 8.0)
                          + 0.8 * (8 + 0.9 * ((k * 7 + u) % 23))
                          - 0.1 * (40 + (k * 13 + u) % 50)
                          + 10 * bench_noise(u, k)) * (0.6 + (u % 10) * 0.1))::numeric) $$;
"#;

impl BenchDb {
    /// Creates `refit_bench_<run>_<tag>`, migrates it with refit's migrations, adds the data
    /// functions, and creates the phase's topic (3 partitions, as refit would).
    pub async fn create(s: &Settings, tag: &str) -> anyhow::Result<BenchDb> {
        let name = format!("{DB_PREFIX}{}_{}", s.run_id, tag);
        let options = PgPoolOptions::new().max_connections(8);
        let (url, pool) =
            refit_testkit::create_migrated_database(&s.admin_url, &name, options).await?;
        sqlx::raw_sql(DATA_FUNCTIONS).execute(&pool).await?;
        let topic = format!("refit-bench-{}-{}", s.run_id, tag.replace('_', "-"));
        create_topic(&s.brokers, &topic, 3).await?;
        Ok(BenchDb {
            name,
            url,
            pool,
            topic,
            key_prefix: format!("bench:{}:{tag}:model:", s.run_id),
            admin_url: s.admin_url.clone(),
            keep: s.keep_databases,
            has_pending_queue: true,
        })
    }

    pub async fn drop(self) {
        self.pool.close().await;
        if self.keep {
            return;
        }
        let _ = refit_testkit::drop_database(&self.admin_url, &self.name).await;
    }

    /// Bulk-loads, in one transaction, user `users[i]`'s requests `first[i] .. first[i]+count[i]-1`
    /// with their actuals, interleaved across users in actual-id order (request index, then
    /// user) as real traffic would be. Actual timestamps are distinct and increasing in id order.
    /// Returns the wall-clock time (Unix seconds) when the commit returned.
    pub async fn load(&self, users: &[i32], first: &[i32], count: &[i32]) -> anyhow::Result<f64> {
        self.insert(users, first, count, true).await
    }

    /// Like [`BenchDb::load`], as upstream writes in steady state: no ANALYZE.
    pub async fn write(&self, users: &[i32], first: &[i32], count: &[i32]) -> anyhow::Result<f64> {
        self.insert(users, first, count, false).await
    }

    async fn insert(
        &self,
        users: &[i32],
        first: &[i32],
        count: &[i32],
        analyze: bool,
    ) -> anyhow::Result<f64> {
        let mut tx = self.pool.begin().await?;
        let rows = "unnest($1::int[], $2::int[], $3::int[]) AS t(u, k0, n),
                    LATERAL generate_series(k0, k0 + n - 1) AS k";
        sqlx::query(&format!(
            "INSERT INTO prediction_requests (request_id, user_id, features)
             SELECT bench_request_id(u, k), bench_user(u), bench_features(u, k) FROM {rows}"
        ))
        .bind(users)
        .bind(first)
        .bind(count)
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "INSERT INTO actual_rentals (request_id, actual_value, \"timestamp\")
             SELECT bench_request_id(u, k), bench_actual(u, k),
                    now() + (row_number() OVER (ORDER BY k, u)) * interval '1 microsecond'
               FROM {rows}
              ORDER BY k, u"
        ))
        .bind(users)
        .bind(first)
        .bind(count)
        .execute(&mut *tx)
        .await?;
        if !analyze {
            tx.commit().await?;
            return Ok(now_unix());
        }
        // Planner statistics as autovacuum keeps them in a running system (ANALYZE counts this
        // transaction's own rows), so refit's queries are not measured on a never-analyzed table.
        sqlx::query("ANALYZE prediction_requests, actual_rentals")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let committed = now_unix();
        if self.has_pending_queue {
            // Queued as a running refit's ingest queues them, and analyzed like the rest.
            refit_testkit::ingest_all(&self.pool).await;
            sqlx::query("ANALYZE refit_pending")
                .execute(&self.pool)
                .await?;
        }
        Ok(committed)
    }

    /// `n` requests per user for users 1..=users, starting at request index `first`.
    pub async fn load_uniform(&self, users: usize, first: i32, n: i32) -> anyhow::Result<f64> {
        let u: Vec<i32> = (1..=users as i32).collect();
        self.load(&u, &vec![first; users], &vec![n; users]).await
    }

    pub async fn scalar(&self, sql: &str) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(sql).fetch_one(&self.pool).await?)
    }
}

pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("log_level", "3")
        .create()?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin.create_topics([&new], &options).await? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("cannot create topic {name}: {code}"),
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Kafka: every event of a topic, with the wall-clock time it was read
// ------------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Received {
    /// Unix seconds when `poll` returned the message.
    pub at: f64,
    pub value: Value,
}

impl Received {
    pub fn user(&self) -> &str {
        self.value["user_id"].as_str().unwrap_or("")
    }
    pub fn version(&self) -> i64 {
        self.value["model_version"].as_i64().unwrap_or(-1)
    }
    pub fn timing(&self, step: &str) -> Option<f64> {
        self.value["timings_ms"][step].as_f64()
    }
}

/// A consumer thread reading one topic from the beginning (partition assignment, no group).
pub struct Collector {
    events: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Collector {
    pub fn start(brokers: &str, topic: &str) -> anyhow::Result<Collector> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "refit-bench")
            .set("enable.auto.commit", "false")
            // Read an event as soon as it is there: the broker answers a fetch at once when data
            // is available; this bounds how long an empty fetch waits.
            .set("fetch.wait.max.ms", "5")
            .set("fetch.error.backoff.ms", "5")
            .set("log_level", "3")
            .create()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let partitions = loop {
            let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))?;
            let n = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .map_or(0, |t| t.partitions().len());
            if n > 0 {
                break n;
            }
            if Instant::now() > deadline {
                bail!("topic {topic} has no partitions");
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let mut list = TopicPartitionList::new();
        for p in 0..partitions as i32 {
            list.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        consumer.assign(&list)?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handle = std::thread::spawn({
            let events = events.clone();
            let stop = stop.clone();
            move || {
                while !stop.load(Ordering::Relaxed) {
                    let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) else {
                        continue;
                    };
                    let at = now_unix();
                    let value = serde_json::from_slice(m.payload().unwrap_or_default())
                        .unwrap_or(Value::Null);
                    events.lock().unwrap().push(Received { at, value });
                }
            }
        });
        Ok(Collector {
            events,
            stop,
            handle: Some(handle),
        })
    }

    pub fn count(&self) -> usize {
        self.events.lock().unwrap().len()
    }

    pub fn snapshot(&self) -> Vec<Received> {
        self.events.lock().unwrap().clone()
    }

    /// Waits until `n` events were read (or `timeout` passes); returns the time of the `n`-th.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Option<f64> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let events = self.events.lock().unwrap();
                if events.len() >= n {
                    return Some(events[n - 1].at);
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`Collector::wait_for`] with a progress bar from `from` to `n` events.
    pub fn wait_with_progress(
        &self,
        label: &str,
        from: usize,
        n: usize,
        timeout: Duration,
    ) -> Option<f64> {
        let mut progress = Progress::new(label, n.saturating_sub(from));
        let deadline = Instant::now() + timeout;
        let result = loop {
            let count = self.count();
            progress.set(count.min(n).saturating_sub(from));
            if count >= n {
                break Some(self.events.lock().unwrap()[n - 1].at);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        progress.finish();
        result
    }

    pub fn stop(mut self) -> Vec<Received> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        std::mem::take(&mut *self.events.lock().unwrap())
    }
}

// ------------------------------------------------------------------------------------------------
// Child processes
// ------------------------------------------------------------------------------------------------

/// One `step` log line of refit (JSON format), the fields the bench uses.
#[derive(Debug, Clone, Default)]
pub struct StepLine {
    pub at: f64,
    pub duration_ms: Option<f64>,
    pub load_ms: Option<f64>,
    pub boost_ms: Option<f64>,
    pub save_ms: Option<f64>,
}

/// What the log of a child said, indexed for the phases.
#[derive(Debug, Default)]
pub struct LogIndex {
    /// retrain_id → step → line (the last line of that step wins).
    pub steps: HashMap<String, HashMap<String, StepLine>>,
    pub warnings: usize,
    pub errors: usize,
    /// The first few warnings and errors, verbatim.
    pub notable: Vec<String>,
    /// Lines a child printed that are JSON objects without `step` (Python's summary, refit's
    /// start-up lines): kept in order.
    pub other: Vec<Value>,
    pub ready: bool,
}

/// A child (refit, the Python reference) with its stdout indexed ([`LogIndex`]) and copied to its
/// log file, and its memory watched.
pub struct Proc {
    pub name: String,
    process: Process,
    pub pid: u32,
    pub logs: Arc<Mutex<LogIndex>>,
}

impl Proc {
    /// Starts `program args` with exactly `env` (plus PATH and HOME), stdout parsed as JSON log
    /// lines and copied to `log_path`, stderr copied to `log_path` + ".stderr"; its RSS and
    /// VmHWM sampled every 200 ms.
    pub fn spawn(
        name: &str,
        program: &str,
        args: &[&str],
        env: &[(String, String)],
        log_path: &Path,
    ) -> anyhow::Result<Proc> {
        let mut cmd = Command::new(program);
        cmd.args(args).env_clear().stdin(Stdio::null());
        // MALLOC_ARENA_MAX: as the container image sets it (Dockerfile), for both implementations.
        for keep in ["PATH", "HOME", "LANG", "MALLOC_ARENA_MAX"] {
            if let Ok(v) = std::env::var(keep) {
                cmd.env(keep, v);
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let logs = Arc::new(Mutex::new(LogIndex::default()));
        let output = Output::to_file(log_path).on_stdout_line({
            let logs = logs.clone();
            move |line| index_line(&logs, line)
        });
        let mut process = Process::spawn_with(&mut cmd, output)
            .with_context(|| format!("cannot start {program}"))?;
        process.watch_memory(Duration::from_millis(200));
        Ok(Proc {
            name: name.to_owned(),
            pid: process.id(),
            process,
            logs,
        })
    }

    /// Waits until the child's log says it is ready.
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.logs.lock().unwrap().ready {
            if let Some(status) = self.process.try_exited() {
                bail!("{} exited during start-up: {status}", self.name);
            }
            if Instant::now() > deadline {
                bail!("{} not ready after {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// VmHWM now (kB), read before the process ends.
    pub fn hwm_now(&self) -> u64 {
        proc_memory(self.pid).map_or(0, |m| m.hwm_kib)
    }

    /// SIGTERM, then waits (SIGKILL after `grace`). Returns the memory record.
    pub async fn stop(mut self, grace: Duration) -> MemoryRecord {
        if self.process.terminate(grace).await.is_none() {
            eprintln!(
                "[bench] {} did not stop within {grace:?}; killed it",
                self.name
            );
        }
        self.process.memory()
    }
}

fn index_line(logs: &Mutex<LogIndex>, line: &str) {
    let Ok(v) = serde_json::from_str::<Value>(line) else {
        return;
    };
    let mut logs = logs.lock().unwrap();
    let level = v["level"].as_str().unwrap_or("");
    if level == "WARN" || level == "ERROR" {
        if level == "WARN" {
            logs.warnings += 1;
        } else {
            logs.errors += 1;
        }
        if logs.notable.len() < 20 {
            logs.notable.push(line.chars().take(600).collect());
        }
    }
    let message = v["message"].as_str().unwrap_or("");
    if message == "Kafka topic ready" || v["ready"].as_bool() == Some(true) {
        logs.ready = true;
    }
    let (Some(step), Some(retrain_id)) = (v["step"].as_str(), v["retrain_id"].as_str()) else {
        if v.get("step").is_none() && v.get("level").is_none() {
            logs.other.push(v);
        }
        return;
    };
    let num = |k: &str| v[k].as_f64();
    let entry = StepLine {
        at: v["timestamp"].as_str().and_then(parse_ts).unwrap_or(0.0),
        duration_ms: num("duration_ms").or(num("processing_time_ms")),
        load_ms: num("load_ms"),
        boost_ms: num("boost_ms"),
        save_ms: num("save_ms"),
    };
    logs.steps
        .entry(retrain_id.to_owned())
        .or_default()
        .insert(step.to_owned(), entry);
}

/// The environment of a refit child pointed at `db`, with refit's defaults for everything the
/// bench does not need to set, plus `extra`.
pub fn refit_env(
    s: &Settings,
    db: &BenchDb,
    http_port: u16,
    extra: &[(&str, String)],
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("DATABASE_URL".into(), db.url.clone()),
        ("REDIS_URL".into(), s.redis_url.clone()),
        ("KAFKA_BROKERS".into(), s.brokers.clone()),
        ("REFIT_TOPIC".into(), db.topic.clone()),
        ("REFIT_CACHE_KEY_PREFIX".into(), db.key_prefix.clone()),
        ("REFIT_HTTP_ADDR".into(), format!("127.0.0.1:{http_port}")),
        ("REFIT_LOG_FORMAT".into(), "json".into()),
        ("RUST_LOG".into(), "info,sqlx=warn".into()),
    ];
    let extra = s
        .refit_extra_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .chain(extra.iter().cloned());
    for (k, v) in extra {
        env.retain(|(name, _)| name != k);
        env.push((k.to_owned(), v));
    }
    env
}

/// A free loopback port (for refit's HTTP server, so runs never collide on 8080).
pub use refit_testkit::free_port;

/// `GET http://127.0.0.1:<port><path>`, body as text (tiny HTTP/1.0 client).
pub fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

/// The environment variables the refit binary reads (`refit config --env-names`).
pub fn refit_env_names() -> Vec<String> {
    Command::new(REFIT_BIN)
        .args(["config", "--env-names"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// `refit config` with the given environment: the effective settings, NAME=value lines.
pub fn refit_config(env: &[(String, String)]) -> Vec<(String, String)> {
    let mut cmd = Command::new(REFIT_BIN);
    cmd.arg("config").env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// The machine, as BENCHMARKS.md reports it.
pub fn machine() -> crate::results::Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("PRETTY_NAME="))
        .map(|l| {
            l.trim_start_matches("PRETTY_NAME=")
                .trim_matches('"')
                .to_owned()
        })
        .unwrap_or_default();
    crate::results::Machine {
        nproc,
        cpu_model: model,
        memory_gib: (mem_kb as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        kernel: kernel.trim().to_owned(),
        os,
    }
}

/// The 1-minute load average (other work on the machine disturbs the numbers: it is recorded).
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

// ------------------------------------------------------------------------------------------------
// CPU accounting: where the two cores went during a measured interval
// ------------------------------------------------------------------------------------------------

/// Busy CPU seconds of the whole machine so far (all cores).
pub fn machine_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return f64::NAN;
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum::<f64>();
    busy / refit_testkit::CLOCK_TICKS
}

/// A snapshot of the CPU used by one child, its PostgreSQL backends (by application_name) and the
/// whole machine.
#[derive(Debug, Clone)]
pub struct CpuSnap {
    at: f64,
    child: f64,
    backends: HashMap<i32, f64>,
    machine: f64,
}

pub async fn cpu_snap(pool: &PgPool, child_pid: u32, application_name: &str) -> CpuSnap {
    let pids: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1",
    )
    .bind(application_name)
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    CpuSnap {
        at: now_unix(),
        child: proc_cpu_seconds(child_pid).unwrap_or(f64::NAN),
        backends: pids
            .into_iter()
            .filter_map(|p| proc_cpu_seconds(p as u32).map(|c| (p, c)))
            .collect(),
        machine: machine_busy_secs(),
    }
}

/// CPU used between two snapshots, per retrain where `retrains` > 0.
pub fn cpu_delta(a: &CpuSnap, b: &CpuSnap, retrains: usize) -> crate::results::Cpu {
    let wall = b.at - a.at;
    let child = b.child - a.child;
    let pg: f64 = b
        .backends
        .iter()
        .map(|(pid, cpu)| cpu - a.backends.get(pid).copied().unwrap_or(0.0))
        .sum();
    let machine = b.machine - a.machine;
    let per = |x: f64| {
        if retrains > 0 {
            x * 1e3 / retrains as f64
        } else {
            f64::NAN
        }
    };
    crate::results::Cpu {
        wall_s: wall,
        process_cpu_s: child,
        its_postgres_backends_cpu_s: pg,
        machine_busy_cpu_s: machine,
        process_cores: child / wall,
        its_postgres_cores: pg / wall,
        rest_of_machine_cores: (machine - child - pg) / wall,
        process_cpu_ms_per_retrain: per(child),
        postgres_cpu_ms_per_retrain: per(pg),
    }
}
