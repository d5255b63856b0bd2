//! The phases of a run (scenario 2, the throughput drain, growth, the Redis floor) and the
//! per-step numbers they share. Each returns its typed results (results.rs, kept in
//! results.json) and never asserts anything about time: the report compares them with the
//! targets.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{json, Value};

use crate::results::{
    finite, Cpu, Freshness, Growth, GrowthRun, GrowthSummary, GrowthVersion, Logs, Memory,
    PythonSteps, RedisFloor, Round, RoundTrips, StepSummaries, Throughput, ThroughputSteps,
    VersionBrief,
};
use refit_testkit::MemoryRecord;
use sqlx::Row;

use crate::infra::{
    cpu_delta, cpu_snap, free_port, http_get, loadavg, now_unix, refit_env, BenchDb, Collector,
    CpuSnap, LogIndex, Proc, Progress, Received, Settings, REFIT_BIN,
};
use crate::stats::{median, Summary};

/// Actuals per batch (refit's default threshold).
pub const THRESHOLD: i32 = 50;

pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

pub fn log(msg: impl AsRef<str>) {
    eprintln!(
        "[bench {}] {}",
        chrono::Utc::now().format("%H:%M:%S"),
        msg.as_ref()
    );
}

/// Per-step numbers of refit's retrains (ms): read and train from `refit_model_versions`, the
/// train breakdown from the JSON log, invalidate and commit from the events.
pub fn refit_steps(
    versions: &[VersionRow],
    logs: &LogIndex,
    events: &[&Received],
) -> StepSummaries {
    let read: Vec<f64> = versions.iter().filter_map(|v| v.read_ms).collect();
    let train: Vec<f64> = versions.iter().filter_map(|v| v.train_ms).collect();
    let mut load = Vec::new();
    let mut boost = Vec::new();
    let mut save = Vec::new();
    let mut commit_log = Vec::new();
    for v in versions {
        if let Some(steps) = logs.steps.get(&v.retrain_id) {
            if let Some(t) = steps.get("train") {
                load.extend(t.load_ms);
                boost.extend(t.boost_ms);
                save.extend(t.save_ms);
            }
            if let Some(c) = steps.get("commit") {
                commit_log.extend(c.duration_ms);
            }
        }
    }
    let invalidate: Vec<f64> = events
        .iter()
        .filter_map(|e| e.timing("invalidate"))
        .collect();
    let commit: Vec<f64> = events.iter().filter_map(|e| e.timing("commit")).collect();
    let mut announce = Vec::new();
    for e in events {
        if let Some(steps) = e.value["retrain_id"]
            .as_str()
            .and_then(|id| logs.steps.get(id))
        {
            if let Some(a) = steps.get("announce") {
                announce.extend(a.duration_ms);
            }
        }
    }
    StepSummaries {
        read: Summary::rounded(&read),
        train: Summary::rounded(&train),
        train_load: Summary::rounded(&load),
        train_boost: Summary::rounded(&boost),
        train_save: Summary::rounded(&save),
        commit: Summary::rounded(if commit.is_empty() {
            &commit_log
        } else {
            &commit
        }),
        invalidate: Summary::rounded(&invalidate),
        announce: Summary::rounded(&announce),
    }
}

#[derive(Debug, Clone)]
pub struct VersionRow {
    user_id: String,
    version: i32,
    status: String,
    trees: Option<i32>,
    bytes: Option<i32>,
    read_ms: Option<f64>,
    train_ms: Option<f64>,
    source: String,
    retrain_id: String,
}

pub async fn versions(db: &BenchDb, filter: &str) -> anyhow::Result<Vec<VersionRow>> {
    let rows = sqlx::query(&format!(
        "SELECT user_id, version, status, trees, octet_length(artifact),
                (timings_ms->>'read')::float8, (timings_ms->>'train')::float8,
                source, coalesce(retrain_id::text, '')
           FROM refit_model_versions {filter} ORDER BY user_id, version"
    ))
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| VersionRow {
            user_id: r.get(0),
            version: r.get(1),
            status: r.get(2),
            trees: r.get(3),
            bytes: r.get(4),
            read_ms: r.get(5),
            train_ms: r.get(6),
            source: r.get(7),
            retrain_id: r.get(8),
        })
        .collect())
}

pub fn count_by<'a>(items: impl Iterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for i in items {
        *m.entry(i.to_owned()).or_default() += 1;
    }
    m
}

pub fn memory_of(m: &MemoryRecord) -> Memory {
    Memory {
        vm_hwm_mb: (m.hwm_kib as f64 / 1024.0 * 10.0).round() / 10.0,
        max_sampled_rss_mb: (m.max_rss_kib as f64 / 1024.0 * 10.0).round() / 10.0,
        timeline_mb: m
            .timeline
            .iter()
            .step_by((m.timeline.len() / 40).max(1))
            .map(|(t, kb)| [t.round(), (*kb as f64 / 1024.0).round()])
            .collect(),
    }
}

fn logs_of(logs: &LogIndex) -> Logs {
    Logs {
        warnings: logs.warnings,
        errors: logs.errors,
        first_notable: logs.notable.clone(),
    }
}

/// The lines of refit's /metrics about retrains.
fn retrain_metrics(metrics: &str) -> Vec<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with("refit_retrains_total"))
        .map(str::to_owned)
        .collect()
}

// ------------------------------------------------------------------------------------------------
// Redis DEL, measured from the bench process (the floor under refit's invalidate step)
// ------------------------------------------------------------------------------------------------

pub async fn redis_floor(s: &Settings) -> anyhow::Result<RedisFloor> {
    let client = redis::Client::open(s.redis_url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut times = Vec::with_capacity(2000);
    for i in 0..2000 {
        let key = format!("bench:{}:floor:{i}", s.run_id);
        let started = Instant::now();
        let _: i64 = redis::cmd("DEL").arg(&key).query_async(&mut conn).await?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(RedisFloor {
        del: Summary::rounded(&times[100..]),
    })
}

/// How many paced calls each round-trip floor makes, and how many of the first it leaves out.
const FLOOR_CALLS: usize = 300;
const FLOOR_WARMUP: usize = 50;

/// The pause between two paced calls: the service makes its calls a few at a time, with its
/// threads idle in between, not back to back.
const FLOOR_PAUSE: Duration = Duration::from_millis(10);

/// The round trips under refit's freshness, measured from the bench process one call at a time:
/// a produce to the broker until its acknowledgement (with refit's producer settings), and a
/// `SELECT 1` through sqlx.
pub async fn round_trip_floors(s: &Settings) -> anyhow::Result<RoundTrips> {
    Ok(RoundTrips {
        kafka_ack: kafka_ack_floor(s).await?,
        postgres_select: postgres_floor(s).await?,
    })
}

async fn kafka_ack_floor(s: &Settings) -> anyhow::Result<Summary> {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let topic = format!("bench-floor-{}", s.run_id);
    crate::infra::create_topic(&s.brokers, &topic, 1).await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &s.brokers)
        .set("linger.ms", "0")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("log_level", "3")
        .create()?;
    let mut times = Vec::with_capacity(FLOOR_CALLS);
    for i in 0..FLOOR_CALLS {
        let value = format!("{{\"floor\":{i}}}");
        let started = Instant::now();
        producer
            .send(
                FutureRecord::to(&topic).key("floor").payload(&value),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("produce to {topic}: {e}"))?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
        tokio::time::sleep(FLOOR_PAUSE).await;
    }
    Ok(Summary::rounded(&times[FLOOR_WARMUP..]))
}

async fn postgres_floor(s: &Settings) -> anyhow::Result<Summary> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&s.admin_url)
        .await?;
    let mut times = Vec::with_capacity(FLOOR_CALLS);
    for _ in 0..FLOOR_CALLS {
        let started = Instant::now();
        let _: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&pool).await?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
        tokio::time::sleep(FLOOR_PAUSE).await;
    }
    pool.close().await;
    Ok(Summary::rounded(&times[FLOOR_WARMUP..]))
}

// ------------------------------------------------------------------------------------------------
// Freshness and per-step cost at a steady, paced arrival of actuals
// ------------------------------------------------------------------------------------------------

/// A batch completed by the bench: the commit of its 50th actual.
#[derive(Debug, Clone)]
struct Completion {
    user: String,
    version: i64,
    sent: f64,
    committed: f64,
}

/// Actuals stream in for `fresh_users` users, each in its own autocommitted INSERT as upstream
/// writes them, at `rate * 50` actuals/s, so that `rate` batches complete per second, spread
/// evenly (the users start staggered). Every actual that completes a batch is timestamped when its
/// commit returns; its event is found on the topic by user and version.
pub async fn freshness(
    s: &Settings,
    rate: f64,
    which: &Implementation<'_>,
) -> anyhow::Result<Freshness> {
    let name = which.name();
    let port = free_port();
    let (db, refit, collector) = fresh_start(s, rate, which, port).await?;
    let w = s.fresh_users as i32;
    let warm = s.fresh_warm as i32;
    fresh_warm_up(
        &db,
        &collector,
        &format!("freshness {rate}/s, {name}"),
        w,
        warm,
    )
    .await?;
    // Stagger: user j starts with j*50/w pending actuals, so completions are spread evenly.
    let users: Vec<i32> = (1..=w).collect();
    let prefill: Vec<i32> = (0..w).map(|j| j * THRESHOLD / w).collect();
    db.load(&users, &vec![THRESHOLD * warm + 1; w as usize], &prefill)
        .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let starts: Vec<(i32, i32)> = users
        .iter()
        .zip(&prefill)
        .map(|(u, p)| (*u, THRESHOLD * warm + p))
        .collect();
    let win = paced_window(s, &db, &refit, &collector, which, rate, &starts).await?;
    let stopped = stop(refit, collector, port, which, Duration::from_secs(30)).await;
    let m = match_completions(&win.completions, &stopped.events, &stopped.logs);
    let (steps_ms, trees) = fresh_steps(which, &db, warm, &m, &stopped.logs).await?;
    let result = Freshness {
        implementation: name.to_owned(),
        rate_batches_per_s: rate,
        actuals_per_s_target: rate * THRESHOLD as f64,
        actuals_inserted: win.inserted,
        actuals_per_s_achieved: win.inserted as f64 / win.elapsed,
        max_insert_lag_ms: (win.max_lag * 1e3).round(),
        users: w,
        warm_retrains_per_user: warm,
        batches_completed: win.completions.len(),
        events_matched: m.fresh.len(),
        statuses: count_by(m.statuses.iter().map(String::as_str)),
        freshness_ms: Summary::rounded(&m.fresh),
        freshness_from_insert_sent_ms: Summary::rounded(&m.fresh_from_send),
        freshness_from_data_until_ms: Summary::rounded(&m.fresh_data_until),
        freshness_by_step_ms: m
            .fresh_by_step
            .iter()
            .map(|(k, v)| (k.clone(), Summary::rounded(v)))
            .collect(),
        breakdown_ms: m
            .segments
            .iter()
            .map(|(k, v)| (k.to_string(), Summary::rounded(v)))
            .collect(),
        steps_ms,
        trees_of_measured_models: Summary::rounded(&trees),
        refit_memory: memory_of(&stopped.memory),
        refit_vm_hwm_mb_before_stop: stopped.hwm as f64 / 1024.0,
        refit_logs: logs_of(&stopped.logs),
        loadavg_before_after: win.loadavg,
        cpu: win.cpu,
        metrics_retrains_total: retrain_metrics(&stopped.metrics),
        repeat: 0,
        processes: which.processes(),
        python_model_load: which.python_model_load().to_owned(),
    };
    db.drop().await;
    Ok(result)
}

/// What the paced inserts did, and the machine around them.
struct Window {
    completions: Vec<Completion>,
    inserted: u64,
    /// The worst lag of an insert behind its schedule (s).
    max_lag: f64,
    elapsed: f64,
    loadavg: [Option<f64>; 2],
    cpu: Cpu,
}

/// `rate * 50` actuals/s for [`Settings::fresh_window`], then up to 60 s for their events.
async fn paced_window(
    s: &Settings,
    db: &BenchDb,
    procs: &Procs,
    collector: &Collector,
    which: &Implementation<'_>,
    rate: f64,
    starts: &[(i32, i32)],
) -> anyhow::Result<Window> {
    let name = which.name();
    let before = collector.count();
    let inserts_per_sec = rate * THRESHOLD as f64;
    let seconds = s.fresh_window(rate);
    let t0 = tokio::time::Instant::now() + Duration::from_millis(200);
    let pacing = Pacing {
        t0,
        until: t0 + Duration::from_secs_f64(seconds),
        tasks: 2,
        inserts_per_sec,
    };
    let load_before = loadavg();
    log(format!(
        "freshness {rate}/s, {name}: {inserts_per_sec} actuals/s for {} s",
        seconds
    ));
    let cpu_start = procs.cpu_snap(&db.pool).await;
    let wall_start = now_unix();
    let progress = Progress::new(
        &format!("freshness {rate}/s, {name}"),
        (rate * seconds).round() as usize,
    );
    let (completions, inserted, max_lag) =
        paced_inserts(db, starts, &pacing, progress, collector, before).await?;
    let elapsed = now_unix() - wall_start;
    let load_after = loadavg();
    let expected = before + completions.len();
    let arrived = blocking(|| collector.wait_for(expected, Duration::from_secs(60)));
    let cpu_end = procs.cpu_snap(&db.pool).await;
    let cpu = cpu_delta_of(&cpu_start, &cpu_end, completions.len());
    if arrived.is_none() {
        log(format!(
            "freshness {rate}/s, {name}: only {} of {expected} events arrived",
            collector.count()
        ));
    }
    Ok(Window {
        completions,
        inserted,
        max_lag,
        elapsed,
        loadavg: [finite(load_before), finite(load_after)],
        cpu,
    })
}

/// What is left of an implementation once stopped.
struct Stopped {
    /// VmHWM (kB) just before the stop.
    hwm: u64,
    /// refit's /metrics (empty for the Python reference).
    metrics: String,
    memory: MemoryRecord,
    events: Vec<Received>,
    logs: LogIndex,
}

/// Stops the implementation (within `grace`) and the topic's consumer.
async fn stop(
    procs: Procs,
    collector: Collector,
    port: u16,
    which: &Implementation<'_>,
    grace: Duration,
) -> Stopped {
    let hwm = procs.hwm_now();
    let metrics = match which {
        Implementation::Refit => http_get(port, "/metrics").unwrap_or_default(),
        Implementation::Python { .. } => String::new(),
    };
    let (memory, logs) = procs.stop(grace).await;
    let events = collector.stop();
    Stopped {
        hwm,
        metrics,
        memory,
        events,
        logs,
    }
}

/// The implementation started on a database of its own, and a consumer of its topic.
async fn fresh_start(
    s: &Settings,
    rate: f64,
    which: &Implementation<'_>,
    port: u16,
) -> anyhow::Result<(BenchDb, Procs, Collector)> {
    let name = which.name();
    let tag = format!(
        "fresh{}{}",
        (rate * 10.0).round() as i64,
        match which {
            Implementation::Refit => "",
            Implementation::Python { peer: None, .. } => "_python",
            Implementation::Python { peer: Some(_), .. } => "_pypeer",
        }
    );
    let log_path = s.out_dir.join(format!("{name}-{tag}.log"));
    let (db, mut procs) = crate::scenarios::start_procs(s, &tag, which, port, &log_path).await?;
    let collector = Collector::start(&s.brokers, &db.topic)?;
    blocking(|| procs.wait_ready(Duration::from_secs(60)))?;
    Ok((db, procs, collector))
}

/// `warm` retrains of each of `w` users before anything is measured.
async fn fresh_warm_up(
    db: &BenchDb,
    collector: &Collector,
    label: &str,
    w: i32,
    warm: i32,
) -> anyhow::Result<()> {
    log(format!(
        "{label}: warming up {w} users with {warm} retrains each"
    ));
    if warm > 0 {
        db.load_uniform(w as usize, 1, THRESHOLD * warm).await?;
        let label = format!("{label}, warm-up");
        if blocking(|| {
            collector.wait_with_progress(&label, 0, (w * warm) as usize, Duration::from_secs(300))
        })
        .is_none()
        {
            bail!("warm-up retrains did not all arrive");
        }
    }
    Ok(())
}

/// The schedule of the paced inserts: insert n of task k at t0 + (n·tasks + k) / rate.
#[derive(Clone, Copy)]
struct Pacing {
    t0: tokio::time::Instant,
    until: tokio::time::Instant,
    tasks: usize,
    inserts_per_sec: f64,
}

/// The paced inserts, `pacing.tasks` connections in parallel, each taking every tasks-th user
/// (`starts`: user and its count of actuals so far); what they completed, how many actuals they
/// inserted, the worst lag behind the schedule (s).
async fn paced_inserts(
    db: &BenchDb,
    starts: &[(i32, i32)],
    pacing: &Pacing,
    mut progress: Progress,
    collector: &Collector,
    before: usize,
) -> anyhow::Result<(Vec<Completion>, u64, f64)> {
    let mut handles = Vec::new();
    for k in 0..pacing.tasks {
        let mine: Vec<(i32, i32)> = starts
            .iter()
            .filter(|(u, _)| (*u as usize) % pacing.tasks == k)
            .copied()
            .collect();
        handles.push(tokio::spawn(insert_paced(
            db.pool.clone(),
            mine,
            *pacing,
            k,
        )));
    }
    // Progress: batches completed by the inserts' schedule (events read are checked below).
    while !handles.iter().all(|h| h.is_finished()) {
        progress.set(collector.count().saturating_sub(before));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    progress.finish();
    let mut completions = Vec::new();
    let mut inserted = 0;
    let mut max_lag: f64 = 0.0;
    for h in handles {
        let (done, n, lag) = h.await??;
        completions.extend(done);
        inserted += n;
        max_lag = max_lag.max(lag);
    }
    Ok((completions, inserted, max_lag))
}

/// One connection's share of the paced inserts: a request, then its actual, round-robin over
/// `counts` (user, actuals so far).
async fn insert_paced(
    pool: sqlx::PgPool,
    mut counts: Vec<(i32, i32)>,
    pacing: Pacing,
    k: usize,
) -> anyhow::Result<(Vec<Completion>, u64, f64)> {
    let mut conn = pool.acquire().await?;
    let mut done = Vec::new();
    let mut inserted = 0u64;
    let mut max_lag = 0.0f64;
    let mut n = 0u64;
    loop {
        let at = pacing.t0
            + Duration::from_secs_f64(
                (n * pacing.tasks as u64 + k as u64) as f64 / pacing.inserts_per_sec,
            );
        if at >= pacing.until {
            break;
        }
        tokio::time::sleep_until(at).await;
        max_lag = max_lag.max(tokio::time::Instant::now().duration_since(at).as_secs_f64());
        let slot = (n as usize) % counts.len();
        let (u, c) = counts[slot];
        let k_next = c + 1;
        sqlx::query(
            "INSERT INTO prediction_requests (request_id, user_id, features)
             VALUES (bench_request_id($1, $2), bench_user($1), bench_features($1, $2))",
        )
        .bind(u)
        .bind(k_next)
        .execute(&mut *conn)
        .await?;
        let sent = now_unix();
        sqlx::query(
            "INSERT INTO actual_rentals (request_id, actual_value)
             VALUES (bench_request_id($1, $2), bench_actual($1, $2))",
        )
        .bind(u)
        .bind(k_next)
        .execute(&mut *conn)
        .await?;
        let committed = now_unix();
        counts[slot].1 = k_next;
        inserted += 1;
        if k_next % THRESHOLD == 0 {
            done.push(Completion {
                user: format!("user-{u:06}"),
                version: (k_next / THRESHOLD) as i64,
                sent,
                committed,
            });
        }
        n += 1;
    }
    Ok((done, inserted, max_lag))
}

/// Completions matched with their events, and the intervals measured on them.
struct Matched<'a> {
    by_key: HashMap<(String, i64), &'a Received>,
    fresh: Vec<f64>,
    fresh_from_send: Vec<f64>,
    fresh_data_until: Vec<f64>,
    /// Commit → event read by the policy step that made the version (`policy.step`).
    fresh_by_step: BTreeMap<String, Vec<f64>>,
    segments: BTreeMap<&'static str, Vec<f64>>,
    events: Vec<&'a Received>,
    statuses: Vec<String>,
}

/// Match each completion with its event by user and version.
fn match_completions<'a>(
    completions: &[Completion],
    events: &'a [Received],
    logs: &LogIndex,
) -> Matched<'a> {
    let by_key: HashMap<(String, i64), &Received> = events
        .iter()
        .map(|e| ((e.user().to_owned(), e.version()), e))
        .collect();
    let mut m = Matched {
        by_key: HashMap::new(),
        fresh: Vec::new(),
        fresh_from_send: Vec::new(),
        fresh_data_until: Vec::new(),
        fresh_by_step: BTreeMap::new(),
        segments: BTreeMap::new(),
        events: Vec::new(),
        statuses: Vec::new(),
    };
    for c in completions {
        let Some(e) = by_key.get(&(c.user.clone(), c.version)) else {
            continue;
        };
        m.events.push(*e);
        m.statuses
            .push(e.value["status"].as_str().unwrap_or("?").to_owned());
        let fresh = (e.at - c.committed) * 1e3;
        m.fresh.push(fresh);
        let step = e.value["policy"]["step"].as_str().unwrap_or("none");
        m.fresh_by_step
            .entry(step.to_owned())
            .or_default()
            .push(fresh);
        m.fresh_from_send.push((e.at - c.sent) * 1e3);
        if let Some(du) = e.value["data_until"]
            .as_str()
            .and_then(crate::infra::parse_ts)
        {
            m.fresh_data_until.push((e.at - du) * 1e3);
        }
        if let Some(steps) = e.value["retrain_id"]
            .as_str()
            .and_then(|id| logs.steps.get(id))
        {
            breakdown(&mut m.segments, steps, c, e);
        }
    }
    m.by_key = by_key;
    m
}

/// Where the time of one retrain went, from refit's log timestamps (same clock).
fn breakdown(
    segments: &mut BTreeMap<&'static str, Vec<f64>>,
    steps: &HashMap<String, crate::infra::StepLine>,
    c: &Completion,
    e: &Received,
) {
    let at = |s: &str| steps.get(s).map(|l| l.at);
    let (Some(read), Some(train), Some(commit), Some(inval), Some(ann)) = (
        at("read"),
        at("train"),
        at("commit"),
        at("invalidate"),
        at("announce"),
    ) else {
        return;
    };
    let read_ms = steps["read"].duration_ms.unwrap_or(0.0);
    let read_start = read - read_ms / 1e3;
    for (segment, ms) in [
        (
            "1 commit → retrain starts reading (notify, detect, schedule, lock)",
            (read_start - c.committed) * 1e3,
        ),
        ("2 read", read_ms),
        ("3 read → trained (train, validation)", (train - read) * 1e3),
        (
            "4 trained → committed (version, consume, outbox)",
            (commit - train) * 1e3,
        ),
        (
            "5 committed → cache invalidated (outbox lock, DEL)",
            (inval - commit) * 1e3,
        ),
        ("6 invalidated → event acked by broker", (ann - inval) * 1e3),
        ("7 acked → read by the consumer", (e.at - ann) * 1e3),
    ] {
        segments.entry(segment).or_default().push(ms);
    }
}

/// Per-step numbers of the matched retrains, and the trees of their models.
async fn fresh_steps(
    which: &Implementation<'_>,
    db: &BenchDb,
    warm: i32,
    m: &Matched<'_>,
    logs: &LogIndex,
) -> anyhow::Result<(StepSummaries, Vec<f64>)> {
    Ok(match which {
        Implementation::Refit => {
            let measured: Vec<VersionRow> = versions(db, &format!("WHERE version > {warm}"))
                .await?
                .into_iter()
                .filter(|v| {
                    m.by_key
                        .contains_key(&(v.user_id.clone(), v.version as i64))
                })
                .collect();
            let trees: Vec<f64> = measured
                .iter()
                .filter_map(|v| v.trees.map(f64::from))
                .collect();
            (refit_steps(&measured, logs, &m.events), trees)
        }
        Implementation::Python { .. } => {
            let trees: Vec<f64> = m
                .events
                .iter()
                .filter_map(|e| e.value["trees"].as_f64())
                .collect();
            (crate::scenarios::python_steps(&m.events, logs), trees)
        }
    })
}

// ------------------------------------------------------------------------------------------------
// Throughput: 10,000 users, one batch each, twice (fresh models, then continued ones)
// ------------------------------------------------------------------------------------------------

/// Which implementation a phase drives.
pub enum Implementation<'a> {
    Refit,
    /// `peer: None`: the straightforward reference (scripts/bench-python.py as it is by default:
    /// one process, the model loaded into a Booster that is passed to `xgb.train`).
    /// `peer: Some(n)`: the peer run, n processes sharded by user (`--shard i/n`), each passing
    /// the stored model bytes straight to `xgb.train` (`--model-load bytes`). Only the freshness
    /// and drain phases run the peer; scenario 1 and the ramp run the reference.
    Python {
        python: &'a str,
        peer: Option<usize>,
    },
}

impl Implementation<'_> {
    /// The straightforward Python reference.
    pub fn python(python: &str) -> Implementation<'_> {
        Implementation::Python { python, peer: None }
    }

    /// How many processes it runs as.
    pub fn processes(&self) -> usize {
        match self {
            Implementation::Python { peer: Some(n), .. } => (*n).max(1),
            _ => 1,
        }
    }

    /// How the Python side loads a model ("booster" or "bytes"); empty for refit.
    pub fn python_model_load(&self) -> &'static str {
        match self {
            Implementation::Refit => "",
            Implementation::Python { peer: None, .. } => "booster",
            Implementation::Python { peer: Some(_), .. } => "bytes",
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Implementation::Refit => "refit",
            Implementation::Python { .. } => "python",
        }
    }

    /// The `application_name` of its PostgreSQL connections (for CPU accounting); of shard
    /// `shard` of the peer run, [`python_shard_application_name`].
    pub fn application_name(&self) -> &'static str {
        match self {
            Implementation::Refit => "refit",
            Implementation::Python { .. } => "refit-bench-python",
        }
    }
}

/// The `application_name` of shard `shard` of `shards` of the Python peer run (passed to it, and
/// how the bench finds its PostgreSQL backends).
pub fn python_shard_application_name(shard: usize, shards: usize) -> String {
    format!("refit-bench-python-{shard}of{shards}")
}

/// The processes of an implementation, each with the `application_name` of its PostgreSQL
/// connections: refit's one, the Python reference's one, or the peer run's shards.
pub struct Procs(pub Vec<(Proc, String)>);

impl Procs {
    pub fn one(proc: Proc, application_name: &str) -> Procs {
        Procs(vec![(proc, application_name.to_owned())])
    }

    /// Waits until every process says it is ready.
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        for (proc, _) in &mut self.0 {
            proc.wait_ready(timeout)?;
        }
        Ok(())
    }

    /// VmHWM now (kB), summed over the processes.
    fn hwm_now(&self) -> u64 {
        self.0.iter().map(|(p, _)| p.hwm_now()).sum()
    }

    /// The CPU of each process and its PostgreSQL backends.
    async fn cpu_snap(&self, pool: &sqlx::PgPool) -> Vec<CpuSnap> {
        let mut snaps = Vec::with_capacity(self.0.len());
        for (proc, app) in &self.0 {
            snaps.push(cpu_snap(pool, proc.pid, app).await);
        }
        snaps
    }

    /// Stops them all (within `grace` each, in parallel): their memory (summed: peaks and
    /// samples added up, so a bound on the processes' combined footprint) and their logs merged.
    async fn stop(self, grace: Duration) -> (MemoryRecord, LogIndex) {
        let stopping: Vec<_> = self
            .0
            .into_iter()
            .map(|(proc, _)| {
                tokio::spawn(async move {
                    let logs = proc.logs.clone();
                    let memory = proc.stop(grace).await;
                    // Taken once stopped: with what it printed on the way out (Python's summary).
                    let logs = std::mem::take(&mut *logs.lock().unwrap());
                    (memory, logs)
                })
            })
            .collect();
        let mut memory: Option<MemoryRecord> = None;
        let mut logs = LogIndex::default();
        for s in stopping {
            let (m, l) = s.await.expect("stopping a child");
            logs.steps.extend(l.steps);
            logs.warnings += l.warnings;
            logs.errors += l.errors;
            logs.notable.extend(l.notable);
            logs.other.extend(l.other);
            memory = Some(match memory {
                None => m,
                Some(mut sum) => {
                    sum.hwm_kib += m.hwm_kib;
                    sum.max_rss_kib += m.max_rss_kib;
                    for (a, b) in sum.timeline.iter_mut().zip(&m.timeline) {
                        a.1 += b.1;
                    }
                    sum
                }
            });
        }
        (memory.unwrap_or_default(), logs)
    }
}

/// CPU between two snapshots of the same processes, summed: each process's and its PostgreSQL
/// backends' CPU added up (per retrain: of all of them), the rest of the machine what is left.
fn cpu_delta_of(a: &[CpuSnap], b: &[CpuSnap], retrains: usize) -> Cpu {
    let parts: Vec<Cpu> = a
        .iter()
        .zip(b)
        .map(|(a, b)| cpu_delta(a, b, retrains))
        .collect();
    let mut sum = parts[0].clone();
    for p in &parts[1..] {
        sum.process_cpu_s += p.process_cpu_s;
        sum.its_postgres_backends_cpu_s += p.its_postgres_backends_cpu_s;
        sum.process_cores += p.process_cores;
        sum.its_postgres_cores += p.its_postgres_cores;
        sum.process_cpu_ms_per_retrain += p.process_cpu_ms_per_retrain;
        sum.postgres_cpu_ms_per_retrain += p.postgres_cpu_ms_per_retrain;
    }
    sum.rest_of_machine_cores =
        (sum.machine_busy_cpu_s - sum.process_cpu_s - sum.its_postgres_backends_cpu_s) / sum.wall_s;
    sum
}

/// Two rounds over `users` users: 50 actuals each, bulk-loaded in one transaction while the
/// implementation runs; the round's rate is users / (last event read − load committed).
pub async fn throughput(s: &Settings, which: Implementation<'_>) -> anyhow::Result<Throughput> {
    // BENCH_PYTHON_SHARDS may ask for the same Python run twice: each gets a database, topic and
    // log of its own (the first keeps the names it always had).
    static DRAINS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let nth = match which {
        Implementation::Refit => String::new(),
        Implementation::Python { .. } => {
            match DRAINS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) {
                0 => String::new(),
                k => format!("_{k}"),
            }
        }
    };
    let (tag, name) = match which {
        Implementation::Refit => ("tp_refit".to_owned(), "refit"),
        Implementation::Python { peer: None, .. } => (format!("tp_python{nth}"), "python"),
        Implementation::Python { peer: Some(n), .. } => (format!("tp_pypeer{n}{nth}"), "python"),
    };
    let port = free_port();
    let log_path = s.out_dir.join(match which {
        Implementation::Python { peer: Some(n), .. } => {
            format!("python-throughput-peer{n}{nth}.log")
        }
        _ => format!("{name}-throughput{nth}.log"),
    });
    let (db, mut procs) = crate::scenarios::start_procs(s, &tag, &which, port, &log_path).await?;
    let collector = Collector::start(&s.brokers, &db.topic)?;
    blocking(|| procs.wait_ready(Duration::from_secs(60)))?;
    let users = s.users;
    let mut rounds = Vec::new();
    for round in 0..2 {
        rounds.push(drain_round(&db, &procs, &collector, &which, users, round).await?);
    }
    let Stopped {
        hwm,
        metrics,
        memory,
        events,
        logs,
    } = stop(procs, collector, port, &which, Duration::from_secs(60)).await;
    add_acks(&mut rounds, &events, &logs);
    let statuses = count_by(
        events
            .iter()
            .map(|e| e.value["status"].as_str().unwrap_or("?")),
    );
    let result = Throughput {
        implementation: name.to_owned(),
        users,
        rounds,
        statuses,
        steps_ms: drain_steps(&which, &db, &events, &logs).await?,
        memory: memory_of(&memory),
        vm_hwm_mb_before_stop: hwm as f64 / 1024.0,
        logs: logs_of(&logs),
        metrics_retrains_total: retrain_metrics(&metrics),
        processes: which.processes(),
        python_model_load: which.python_model_load().to_owned(),
    };
    db.drop().await;
    Ok(result)
}

/// Per 5-second window from `from`, full windows up to `to` only: how many of `times` fell in it,
/// per second.
fn windows_5s(times: &[f64], from: f64, to: f64) -> Vec<f64> {
    let mut windows = Vec::new();
    let mut t = from;
    while t + 5.0 <= to {
        windows.push(times.iter().filter(|a| **a >= t && **a < t + 5.0).count() as f64 / 5.0);
        t += 5.0;
    }
    windows
}

/// Round `round` (0: fresh models, 1: continued training) of the drain: every user's next batch
/// bulk-loaded at once, then drained; up to the events read.
async fn drain_round(
    db: &BenchDb,
    procs: &Procs,
    collector: &Collector,
    which: &Implementation<'_>,
    users: usize,
    round: usize,
) -> anyhow::Result<Round> {
    let name = which.name();
    let round_timeout = Duration::from_secs(match which {
        Implementation::Refit => 600.max(users as u64 / 10),
        Implementation::Python { .. } => 1200.max(users as u64 / 5),
    });
    let load_started = now_unix();
    let load_before = loadavg();
    log(format!(
        "{name} throughput: round {} loading {users} users x 50 actuals",
        round + 1
    ));
    let committed = db
        .load_uniform(users, 1 + THRESHOLD * round as i32, THRESHOLD)
        .await?;
    log(format!(
        "{name} throughput: round {} loaded in {:.1} s; draining",
        round + 1,
        committed - load_started
    ));
    let cpu_start = procs.cpu_snap(&db.pool).await;
    let target = users * (round + 1);
    let label = format!("{name} drain, round {}", round + 1);
    let last =
        blocking(|| collector.wait_with_progress(&label, users * round, target, round_timeout));
    let cpu = cpu_delta_of(&cpu_start, &procs.cpu_snap(&db.pool).await, users);
    let events = collector.snapshot();
    let round_events = &events[(users * round).min(events.len())..target.min(events.len())];
    let load = Load {
        started: load_started,
        committed,
        loadavg: load_before,
    };
    Ok(round_of(name, round, round_events, &load, last, cpu))
}

/// When a round's load started and committed, and the load average before it.
struct Load {
    started: f64,
    committed: f64,
    loadavg: f64,
}

/// A round of the drain, up to the events read (`last`: when the last one was, if all arrived).
fn round_of(
    name: &str,
    round: usize,
    round_events: &[Received],
    load: &Load,
    last: Option<f64>,
    cpu: Cpu,
) -> Round {
    let committed = load.committed;
    let first = round_events.first().map(|e| e.at);
    let done = round_events.len();
    let end = last.unwrap_or_else(now_unix);
    // Completed retrains per 5-second window, full windows only.
    let times: Vec<f64> = round_events.iter().map(|e| e.at).collect();
    let windows = windows_5s(&times, committed, end);
    let rate = done as f64 / (end - committed);
    log(format!(
        "{name} throughput: round {} → {done} retrains, {rate:.1}/s",
        round + 1
    ));
    Round {
        round: round + 1,
        kind: ["fresh models", "continued training"][round.min(1)].to_owned(),
        load_seconds: committed - load.started,
        retrains: done,
        complete: last.is_some(),
        seconds_commit_to_last_event: end - committed,
        seconds_commit_to_first_event: first.map(|f| f - committed),
        committed_at: committed,
        retrains_per_s_read: rate,
        retrains_per_s_first_to_last_event: first
            .map(|f| (done.saturating_sub(1)) as f64 / (end - f)),
        windows_5s_per_s_read: Summary::rounded(&windows),
        loadavg_before_after: [finite(load.loadavg), finite(loadavg())],
        cpu,
        // Filled in from the acks once the implementation has stopped (add_acks).
        acked: 0,
        seconds_commit_to_last_ack: f64::NAN,
        retrains_per_s: f64::NAN,
        windows_5s_per_s: Summary::default(),
        consumer_lag_behind_ack_ms: Summary::default(),
    }
}

/// Throughput up to the broker's acknowledgement of each event (the implementation's own log
/// line, same clock), and how far the consumer lagged behind it.
fn add_acks(rounds: &mut [Round], events: &[Received], logs: &LogIndex) {
    for (i, round) in rounds.iter_mut().enumerate() {
        let committed = round.committed_at;
        let mut acks = Vec::new();
        let mut lag = Vec::new();
        for e in events.iter().filter(|e| e.version() == i as i64 + 1) {
            let ack = e.value["retrain_id"]
                .as_str()
                .and_then(|id| logs.steps.get(id))
                .and_then(|steps| steps.get("announce"))
                .map(|a| a.at);
            if let Some(ack) = ack {
                acks.push(ack);
                lag.push((e.at - ack) * 1e3);
            }
        }
        let last_ack = acks.iter().copied().fold(f64::NAN, f64::max);
        round.acked = acks.len();
        round.seconds_commit_to_last_ack = last_ack - committed;
        round.retrains_per_s = acks.len() as f64 / (last_ack - committed);
        round.windows_5s_per_s = Summary::rounded(&windows_5s(&acks, committed, last_ack));
        round.consumer_lag_behind_ack_ms = Summary::rounded(&lag);
    }
}

/// Per-step cost in the drain, per round: refit's from its versions, logs and events; the
/// reference's from its events.
async fn drain_steps(
    which: &Implementation<'_>,
    db: &BenchDb,
    events: &[Received],
    logs: &LogIndex,
) -> anyhow::Result<ThroughputSteps> {
    let of_version =
        |v: i64| -> Vec<&Received> { events.iter().filter(|e| e.version() == v).collect() };
    if let Implementation::Python { .. } = which {
        let per_round = |v: i64| python_drain_steps(&of_version(v), logs);
        let mut summaries: Vec<Value> = logs
            .other
            .iter()
            .filter(|v| v["summary"].as_bool() == Some(true))
            .cloned()
            .collect();
        // The peer run: one summary line per shard.
        let summary = match summaries.len() {
            0 => None,
            1 => summaries.pop(),
            _ => Some(json!({ "shards": summaries })),
        };
        return Ok(ThroughputSteps::Python {
            round1: per_round(1),
            round2: per_round(2),
            summary,
        });
    }
    let all = versions(db, "").await?;
    let per_round = |v: i32| -> StepSummaries {
        let rows: Vec<VersionRow> = all.iter().filter(|r| r.version == v).cloned().collect();
        refit_steps(&rows, logs, &of_version(v as i64))
    };
    Ok(ThroughputSteps::Refit {
        round1: per_round(1),
        round2: per_round(2),
        version_statuses: count_by(all.iter().map(|r| r.status.as_str())),
    })
}

/// The reference's per-step timings, under its own names, from its events.
fn python_drain_steps(evs: &[&Received], logs: &LogIndex) -> PythonSteps {
    let step = |name: &str| {
        let vals: Vec<f64> = evs.iter().filter_map(|e| e.timing(name)).collect();
        Summary::rounded(&vals)
    };
    let announce: Vec<f64> = evs
        .iter()
        .filter_map(|e| {
            let id = e.value["retrain_id"].as_str()?;
            logs.steps.get(id)?.get("announce")?.duration_ms
        })
        .collect();
    PythonSteps {
        read: step("read"),
        train: step("train"),
        load: step("load"),
        boost: step("boost"),
        save: step("save"),
        commit: step("commit"),
        invalidate: step("invalidate"),
        announce: Some(Summary::rounded(&announce)),
    }
}

/// refit's default XGBoost parameters, as `refit config` prints them (strings → numbers where
/// they are numbers, so Python's xgboost gets the same values).
pub fn refit_default_params() -> Value {
    let config = crate::infra::refit_config(&[(
        "DATABASE_URL".into(),
        "postgres://postgres@127.0.0.1:5432/x".into(),
    )]);
    let raw = config
        .iter()
        .find(|(k, _)| k == "REFIT_XGB_PARAMS")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| "{}".into());
    let parsed: serde_json::Map<String, Value> = serde_json::from_str(&raw).unwrap_or_default();
    Value::Object(
        parsed
            .into_iter()
            .map(|(k, v)| {
                let v = match v.as_str().map(|s| (s, s.parse::<f64>())) {
                    Some((s, Ok(n))) if s.contains('.') => json!(n),
                    Some((s, Ok(_))) => json!(s.parse::<i64>().unwrap()),
                    _ => v,
                };
                (k, v)
            })
            .collect(),
    )
}

// ------------------------------------------------------------------------------------------------
// Growth: many retrains of one user
// ------------------------------------------------------------------------------------------------

/// `retrains` batches of one user, bulk-loaded at once; refit retrains it batch after batch.
/// `cap` is REFIT_MAX_TREES ("default" leaves refit's own default).
pub async fn growth(
    s: &Settings,
    cap: &str,
    retrains: usize,
    env_names: &[String],
) -> anyhow::Result<Growth> {
    if cap != "default" && !env_names.iter().any(|n| n == "REFIT_MAX_TREES") {
        return Ok(Growth::Skipped {
            cap: cap.to_owned(),
            skipped: "this refit has no REFIT_MAX_TREES".into(),
        });
    }
    let tag = format!("growth_{}", if cap == "default" { "default" } else { cap });
    let db = BenchDb::create(s, &tag).await?;
    let (refit, effective) = growth_start(s, &db, cap, &tag)?;
    let n = retrains as i32;
    log(format!(
        "growth (REFIT_MAX_TREES={cap}): {n} batches of one user"
    ));
    let committed = db.load(&[1], &[1], &[THRESHOLD * n]).await?;
    let progress = Progress::new(&format!("growth, cap {cap}"), n as usize);
    let made = wait_for_versions(&db, n, s.growth_timeout, progress).await?;
    let elapsed = now_unix() - committed;
    if made < n {
        log(format!(
            "growth (REFIT_MAX_TREES={cap}): only {made} of {n} retrains within {:?}",
            s.growth_timeout
        ));
    }
    let hwm = refit.hwm_now();
    let logs_of_refit = refit.logs.clone();
    let memory = refit.stop(Duration::from_secs(120)).await;
    let logs = std::mem::take(&mut *logs_of_refit.lock().unwrap());
    let rows = versions(&db, "").await?;
    let table = growth_table(&rows, &logs);
    let summary = growth_summary(&rows, made, elapsed);
    let result = Growth::Ran(Box::new(GrowthRun {
        cap: cap.to_owned(),
        effective_config: effective,
        summary,
        memory: memory_of(&memory),
        vm_hwm_mb_before_stop: hwm as f64 / 1024.0,
        logs: logs_of(&logs),
        versions: table,
    }));
    db.drop().await;
    Ok(result)
}

/// refit with REFIT_MAX_TREES=`cap` (unless "default"), ready; the settings of its that growth
/// depends on, as `refit config` resolves them.
fn growth_start(
    s: &Settings,
    db: &BenchDb,
    cap: &str,
    tag: &str,
) -> anyhow::Result<(Proc, BTreeMap<String, String>)> {
    let port = free_port();
    let extra: Vec<(&str, String)> = if cap == "default" {
        vec![]
    } else {
        vec![("REFIT_MAX_TREES", cap.to_owned())]
    };
    let env = refit_env(s, db, port, &extra);
    let kept = [
        "REFIT_MAX_TREES",
        "REFIT_COMPACTION",
        "REFIT_REFIT_WINDOW",
        "REFIT_COMPACTION_ROUNDS",
        "REFIT_VALIDATION_HOLDOUT",
    ];
    let effective = crate::infra::refit_config(&env)
        .into_iter()
        .filter(|(k, _)| kept.contains(&k.as_str()))
        .collect();
    let mut refit = Proc::spawn(
        "refit",
        REFIT_BIN,
        &["run"],
        &env,
        &s.out_dir.join(format!("refit-{tag}.log")),
    )?;
    blocking(|| refit.wait_ready(Duration::from_secs(60)))?;
    Ok((refit, effective))
}

/// Polls until `n` versions exist or `timeout` passes; how many there are.
async fn wait_for_versions(
    db: &BenchDb,
    n: i32,
    timeout: Duration,
    mut progress: Progress,
) -> anyhow::Result<i32> {
    let deadline = Instant::now() + timeout;
    let mut made = 0;
    while Instant::now() < deadline {
        made = db
            .scalar("SELECT count(*) FROM refit_model_versions")
            .await? as i32;
        progress.set(made.max(0) as usize);
        if made >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    progress.finish();
    Ok(made)
}

/// Every version of the growth run, with its train breakdown from the log.
fn growth_table(rows: &[VersionRow], logs: &LogIndex) -> Vec<GrowthVersion> {
    rows.iter()
        .map(|v| {
            let t = logs.steps.get(&v.retrain_id).and_then(|s| s.get("train"));
            GrowthVersion {
                version: v.version,
                status: v.status.clone(),
                source: v.source.clone(),
                trees: v.trees,
                bytes: v.bytes,
                read_ms: v.read_ms,
                train_ms: v.train_ms,
                load_ms: t.and_then(|t| t.load_ms),
                boost_ms: t.and_then(|t| t.boost_ms),
                save_ms: t.and_then(|t| t.save_ms),
            }
        })
        .collect()
}

/// Train time, size and trees early (versions 8–12) and late (the last 5 and 100).
fn growth_summary(rows: &[VersionRow], made: i32, elapsed: f64) -> GrowthSummary {
    let window = |lo: i32, hi: i32, f: &dyn Fn(&VersionRow) -> Option<f64>| -> Vec<f64> {
        rows.iter()
            .filter(|v| v.version >= lo && v.version <= hi)
            .filter_map(f)
            .collect()
    };
    let train = |v: &VersionRow| v.train_ms;
    let bytes = |v: &VersionRow| v.bytes.map(f64::from);
    let trees = |v: &VersionRow| v.trees.map(f64::from);
    let last = rows.iter().map(|v| v.version).max().unwrap_or(0);
    let early = (8, 12);
    let late = ((last - 4).max(1), last);
    let tail = ((last - 99).max(1), last);
    let at = |version: i32| rows.iter().find(|v| v.version == version).cloned();
    let v10 = at(10);
    let vlast = at(last);
    let brief = |v: &VersionRow| VersionBrief {
        train_ms: v.train_ms,
        bytes: v.bytes,
        trees: v.trees,
    };
    GrowthSummary {
        retrains: made,
        seconds: elapsed,
        versions_by_source: count_by(rows.iter().map(|v| v.source.as_str())),
        versions_by_status: count_by(rows.iter().map(|v| v.status.as_str())),
        v10: v10.as_ref().map(brief),
        last_version: last,
        vlast: vlast.as_ref().map(brief),
        median_train_ms_v8_12: median(&window(early.0, early.1, &train)),
        median_train_ms_last5: median(&window(late.0, late.1, &train)),
        median_bytes_v8_12: median(&window(early.0, early.1, &bytes)),
        median_bytes_last5: median(&window(late.0, late.1, &bytes)),
        max_train_ms_last100: Summary::of(&window(tail.0, tail.1, &train)).max,
        median_bytes_last100: median(&window(tail.0, tail.1, &bytes)),
        p90_train_ms_last100: Summary::of(&window(tail.0, tail.1, &train)).p90,
        p50_train_ms_last100: Summary::of(&window(tail.0, tail.1, &train)).p50,
        max_bytes_last100: Summary::of(&window(tail.0, tail.1, &bytes)).max,
        max_trees_last100: Summary::of(&window(tail.0, tail.1, &trees)).max,
        median_trees_v8_12: median(&window(early.0, early.1, &trees)),
    }
}
