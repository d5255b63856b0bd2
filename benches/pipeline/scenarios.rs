//! Scenario 1 (per-step cost on 100- and 1,000-tree models), scenario 3 (a ramp of arrival rates
//! with 10,000 users) and the floor (the same XGBoost update through the C API alone), each for
//! refit and, where it applies, the Python reference on the same data.
//!
//! Models are seeded the same way for both implementations: one model trained in this process
//! with refit's default parameters on generated rows, installed as version 1 of every user (in
//! refit's registry with `refit models import`, for the ramp's 10,000 users once and then copied
//! column for column — and in the reference's `py_model_versions`),
//! so neither spends the scenario growing it.
//!
//! Each returns its typed results (results.rs); the report reads them.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::infra::{
    cpu_delta, cpu_snap, free_port, now_unix, refit_env, BenchDb, Collector, CpuSnap, Proc,
    Progress, Received, Settings, REFIT_BIN,
};
use crate::phases::{
    blocking, count_by, log, python_shard_application_name, refit_default_params, refit_steps,
    versions, Implementation, Procs, THRESHOLD,
};
use crate::results::{Floor, FloorModel, FloorParts, RampRun, RampStep, StepSummaries, StepsRun};
use crate::stats::Summary;
use refit::model::trainer::{train, Previous, TrainInput, TrainMode};
use refit::retrain::features::{prepare, ActualRow};

/// The first request index the scenarios write (the seeds are trained on indexes below it).
const FIRST_K: i32 = 1001;

/// User `u`'s `k`-th request and its actual, as the database's `bench_features` /
/// `bench_actual` generate them (infra.rs), for training outside the database.
pub(crate) fn bench_row(u: i32, k: i32) -> ActualRow {
    let hour = (k * 5) % 24;
    let temperature = ((8.0 + 0.9 * f64::from((k * 7 + u) % 23)) * 10.0).round() / 10.0;
    let humidity = 40 + (k * 13 + u) % 50;
    let x = (f64::from(u) * 12.9898 + f64::from(k) * 78.233).sin().abs() * 43758.5453;
    let noise = x - x.floor();
    let h = f64::from(hour);
    let actual = ((20.0
        + 30.0 * (-(h - 8.0).powi(2) / 6.0).exp()
        + 25.0 * (-(h - 17.0).powi(2) / 8.0).exp()
        + 0.8 * temperature
        - 0.1 * f64::from(humidity)
        + 10.0 * noise)
        * (0.6 + f64::from(u % 10) * 0.1))
        .round();
    ActualRow {
        actual_id: i64::from(k),
        actual_value: actual,
        features: format!(
            r#"{{"hour": {hour}, "weekday": {}, "temperature": {temperature}, "humidity": {humidity}}}"#,
            (k / 7) % 7
        ),
    }
}

pub(crate) fn default_params() -> std::collections::BTreeMap<String, String> {
    refit::config::Config::from_sources(
        None,
        &[(
            "DATABASE_URL".to_owned(),
            "postgres://postgres@127.0.0.1:5432/x".to_owned(),
        )]
        .into(),
    )
    .expect("refit's defaults are valid")
    .training
    .xgb_params
}

/// A model of `trees` rounds trained on user 1's first 1,000 requests with refit's defaults.
struct Seed {
    artifact: Vec<u8>,
    features: Vec<String>,
    trees: i32,
}

fn seed(trees: i32) -> anyhow::Result<Seed> {
    let rows: Vec<ActualRow> = (1..FIRST_K).map(|k| bench_row(1, k)).collect();
    let batch = prepare(&rows, None);
    let trained = train(TrainInput {
        previous: Previous::None,
        mode: TrainMode::Continue,
        params: &default_params(),
        rounds: trees,
        nthread: 1,
        batch: &batch,
        holdout: None,
        keep_model: false,
    })?;
    Ok(Seed {
        artifact: trained.artifact,
        features: batch.feature_names,
        trees,
    })
}

/// `refit models import` of the seed as `user`'s next version (the documented way in).
fn import_cli(s: &Settings, db: &BenchDb, user: &str, seed: &Seed) -> anyhow::Result<()> {
    let file = s.out_dir.join(format!("seed-{}-trees.ubj", seed.trees));
    std::fs::write(&file, &seed.artifact)?;
    let out = std::process::Command::new(REFIT_BIN)
        .args(["models", "import", "--user", user, "--file"])
        .arg(&file)
        .args(["--features", &seed.features.join(",")])
        .envs(refit_env(s, db, free_port(), &[]))
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "refit models import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Installs the seed as version 1 of users `1..=users`: in refit's registry, or in the Python
/// reference's table (created here as the reference creates it).
async fn install(
    s: &Settings,
    db: &BenchDb,
    users: usize,
    seed: &Seed,
    which: &Implementation<'_>,
) -> anyhow::Result<()> {
    let ids: Vec<String> = (1..=users as i32).map(|u| format!("user-{u:06}")).collect();
    let features = json!(seed.features);
    match which {
        // One user: through refit's own CLI (`refit models import`, which also announces it).
        Implementation::Refit if users == 1 => import_cli(s, db, "user-000001", seed)?,
        // Many users (the ramp): user 1 through `refit models import`, then its registry rows
        // copied column for column to the others (10,000 imports would take minutes).
        Implementation::Refit => {
            import_cli(s, db, &ids[0], seed)?;
            let mut tx = db.pool.begin().await?;
            for table in ["refit_models", "refit_model_versions"] {
                sqlx::query(&format!(
                    "INSERT INTO {table}
                     SELECT (jsonb_populate_record(NULL::{table},
                                                   to_jsonb(t) || jsonb_build_object('user_id', u))).*
                       FROM {table} AS t, unnest($1::text[]) AS u
                      WHERE t.user_id = $2"
                ))
                .bind(&ids[1..])
                .bind(&ids[0])
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        }
        Implementation::Python { .. } => {
            sqlx::query(
                "CREATE TABLE IF NOT EXISTS py_model_versions (
                     user_id text NOT NULL, version integer NOT NULL, artifact bytea NOT NULL,
                     trees integer NOT NULL, features jsonb NOT NULL,
                     created_at timestamptz NOT NULL DEFAULT now(),
                     PRIMARY KEY (user_id, version))",
            )
            .execute(&db.pool)
            .await?;
            sqlx::query(
                "INSERT INTO py_model_versions (user_id, version, artifact, trees, features)
                 SELECT u, 1, $2, $3, $4 FROM unnest($1::text[]) AS u",
            )
            .bind(&ids)
            .bind(&seed.artifact)
            .bind(seed.trees)
            .bind(&features)
            .execute(&db.pool)
            .await?;
        }
    }
    Ok(())
}

/// A database for `which` (without refit's pending-queue trigger for the Python reference: it is
/// no part of the Python sequence, and the data are the same) and the implementation running
/// against it; refit serves HTTP on `http_port`.
pub async fn start(
    s: &Settings,
    tag: &str,
    which: &Implementation<'_>,
    http_port: u16,
    refit_extra: &[(&str, String)],
    log_path: &std::path::Path,
) -> anyhow::Result<(BenchDb, Proc)> {
    let mut db = BenchDb::create(s, tag).await?;
    let proc = match which {
        Implementation::Refit => Proc::spawn(
            "refit",
            REFIT_BIN,
            &["run"],
            &refit_env(s, &db, http_port, refit_extra),
            log_path,
        )?,
        Implementation::Python { python, .. } => {
            db.has_pending_queue = false;
            python_proc(s, &db, python, log_path, None)?
        }
    };
    Ok((db, proc))
}

/// [`start`] for the phases that can run the Python peer: the implementation's processes —
/// refit's one, the reference's one, or the peer run's n shards (`python-…-shard<i>.log` each).
pub async fn start_procs(
    s: &Settings,
    tag: &str,
    which: &Implementation<'_>,
    http_port: u16,
    log_path: &std::path::Path,
) -> anyhow::Result<(BenchDb, Procs)> {
    let Implementation::Python {
        python,
        peer: Some(shards),
    } = which
    else {
        let (db, proc) = start(s, tag, which, http_port, &[], log_path).await?;
        return Ok((db, Procs::one(proc, which.application_name())));
    };
    let mut db = BenchDb::create(s, tag).await?;
    db.has_pending_queue = false;
    let shards = (*shards).max(1);
    let mut procs = Vec::with_capacity(shards);
    for shard in 0..shards {
        let app = python_shard_application_name(shard, shards);
        let log = log_path.with_extension(format!("shard{shard}.log"));
        let proc = python_proc(s, &db, python, &log, Some((shard, shards, &app)))?;
        procs.push((proc, app));
    }
    Ok((db, Procs(procs)))
}

/// The Python reference against `db`, with refit's defaults; with `shard` (i, n,
/// application_name), shard i of n of the peer run, passing the stored model bytes straight to
/// `xgb.train`.
pub fn python_proc(
    s: &Settings,
    db: &BenchDb,
    python: &str,
    log_path: &std::path::Path,
    shard: Option<(usize, usize, &str)>,
) -> anyhow::Result<Proc> {
    let script = s.python_script.to_string_lossy().into_owned();
    let params = refit_default_params().to_string();
    let poll_ms = s.python_poll_ms.to_string();
    let shard_args = shard.map(|(i, n, app)| {
        [
            "--shard".to_owned(),
            format!("{i}/{n}"),
            "--model-load".to_owned(),
            "bytes".to_owned(),
            "--application-name".to_owned(),
            app.to_owned(),
        ]
    });
    let mut args = vec![
        &script,
        "--database-url",
        &db.url,
        "--redis-url",
        &s.redis_url,
        "--brokers",
        &s.brokers,
        "--topic",
        &db.topic,
        "--key-prefix",
        &db.key_prefix,
        "--threshold",
        "50",
        "--rounds",
        "10",
        "--params",
        &params,
        "--nthread",
        "1",
        "--poll-interval-ms",
        &poll_ms,
    ];
    args.extend(shard_args.iter().flatten().map(String::as_str));
    Proc::spawn("python", python, &args, &[], log_path)
}

/// Per-step numbers of the Python reference, from its events (and its ack log lines), under the
/// same names as refit's.
pub fn python_steps(events: &[&Received], logs: &crate::infra::LogIndex) -> StepSummaries {
    let step = |key: &str| {
        let v: Vec<f64> = events.iter().filter_map(|e| e.timing(key)).collect();
        Summary::rounded(&v)
    };
    let announce: Vec<f64> = events
        .iter()
        .filter_map(|e| {
            let id = e.value["retrain_id"].as_str()?;
            logs.steps.get(id)?.get("announce")?.duration_ms
        })
        .collect();
    StepSummaries {
        read: step("read"),
        train: step("train"),
        train_load: step("load"),
        train_boost: step("boost"),
        train_save: step("save"),
        commit: step("commit"),
        invalidate: step("invalidate"),
        announce: Summary::rounded(&announce),
    }
}

// ------------------------------------------------------------------------------------------------
// The floor: the same update through the C API alone
// ------------------------------------------------------------------------------------------------

/// Load + 10 rounds on 50 rows + save, and the same from a model kept in memory, for models of
/// 100 and 1,000 trees: what XGBoost itself needs per retrain, no I/O.
pub fn floor(s: &Settings) -> anyhow::Result<Floor> {
    let iterations = if s.quick { 50 } else { 200 };
    let params = default_params();
    let batch = prepare(
        &(FIRST_K..FIRST_K + THRESHOLD)
            .map(|k| bench_row(1, k))
            .collect::<Vec<_>>(),
        None,
    );
    let mut models = Vec::new();
    for trees in [100, 1000] {
        let seed = seed(trees)?;
        let mut progress = Progress::new(&format!("floor, {trees} trees"), 2 * iterations);
        let mut runs: [Vec<[f64; 4]>; 2] = [Vec::new(), Vec::new()];
        for (mode, run) in runs.iter_mut().enumerate() {
            for i in 0..iterations {
                let previous = match mode {
                    0 => Previous::Artifact(&seed.artifact),
                    _ => Previous::load(&seed.artifact)?,
                };
                let started = Instant::now();
                let t = train(TrainInput {
                    previous,
                    mode: TrainMode::Continue,
                    params: &params,
                    rounds: 10,
                    nthread: 1,
                    batch: &batch,
                    holdout: None,
                    keep_model: false,
                })?;
                let total = started.elapsed();
                let ms = |d: Duration| d.as_secs_f64() * 1e3;
                run.push([ms(total), ms(t.load), ms(t.train), ms(t.save)]);
                progress.set(mode * iterations + i + 1);
            }
        }
        progress.finish();
        let summary = |run: &[[f64; 4]]| {
            let col = |c: usize| Summary::rounded(&run.iter().map(|r| r[c]).collect::<Vec<_>>());
            FloorParts {
                total: col(0),
                load: col(1),
                boost: col(2),
                save: col(3),
            }
        };
        models.push(FloorModel {
            trees: trees.into(),
            artifact_kb: seed.artifact.len() as f64 / 1024.0,
            from_artifact: summary(&runs[0]),
            in_memory: summary(&runs[1]),
        });
    }
    Ok(Floor {
        iterations,
        rows: THRESHOLD as usize,
        rounds: 10,
        models,
        repeats: Vec::new(),
    })
}

// ------------------------------------------------------------------------------------------------
// Scenario 1: per-step cost of a 50-row retrain on 100- and 1,000-tree models
// ------------------------------------------------------------------------------------------------

/// One user with a seeded model of `trees` trees; `batches` batches of 50 actuals written one at
/// a time (one transaction each), each awaited on the topic before the next.
pub async fn steps(
    s: &Settings,
    trees: i32,
    repeat: usize,
    which: Implementation<'_>,
) -> anyhow::Result<StepsRun> {
    let name = which.name();
    let batches = if s.quick { 10 } else { 30 };
    let tag = format!("st{trees}_{name}_{repeat}");
    let seed = seed(trees)?;
    // No compaction: the scenario is about a model of this size.
    let log_path = s.out_dir.join(format!("{tag}.log"));
    let (db, mut proc) = start(
        s,
        &tag,
        &which,
        free_port(),
        &[("REFIT_MAX_TREES", "0".into())],
        &log_path,
    )
    .await?;
    install(s, &db, 1, &seed, &which).await?;
    let collector = Collector::start(&s.brokers, &db.topic)?;
    blocking(|| proc.wait_ready(Duration::from_secs(60)))?;
    // refit's import announces version 1: wait for it so it is not taken for a batch's event.
    let skip = match which {
        Implementation::Refit => 1,
        Implementation::Python { .. } => 0,
    };
    if skip > 0 && blocking(|| collector.wait_for(skip, Duration::from_secs(60))).is_none() {
        anyhow::bail!("{name}: the imported model was not announced within 60 s");
    }
    let progress = Progress::new(&format!("steps, {trees} trees, {name}"), batches);
    let end_to_end = one_at_a_time(&db, &collector, name, batches, progress).await?;
    let logs_of_proc = proc.logs.clone();
    let memory = proc.stop(Duration::from_secs(30)).await;
    let events = collector.stop();
    let logs = std::mem::take(&mut *logs_of_proc.lock().unwrap());
    let events: Vec<Received> = events.into_iter().skip(skip).collect();
    let evs: Vec<&Received> = events.iter().collect();
    let steps = match which {
        Implementation::Refit => {
            refit_steps(&versions(&db, "WHERE version > 1").await?, &logs, &evs)
        }
        Implementation::Python { .. } => python_steps(&evs, &logs),
    };
    let statuses = count_by(events.iter().filter_map(|e| e.value["status"].as_str()));
    db.drop().await;
    Ok(StepsRun {
        steps,
        end_to_end: Summary::rounded(&end_to_end),
        statuses,
        vm_hwm_mb: memory.hwm_kib as f64 / 1024.0,
    })
}

/// `batches` batches of one user written one at a time, each awaited on the topic: batch commit →
/// event read (ms) of each.
async fn one_at_a_time(
    db: &BenchDb,
    collector: &Collector,
    name: &str,
    batches: usize,
    mut progress: Progress,
) -> anyhow::Result<Vec<f64>> {
    let mut end_to_end = Vec::new();
    for b in 0..batches {
        let before = collector.count();
        let committed = db
            .write(&[1], &[FIRST_K + THRESHOLD * b as i32], &[THRESHOLD])
            .await?;
        match blocking(|| collector.wait_for(before + 1, Duration::from_secs(60))) {
            Some(at) => end_to_end.push((at - committed) * 1e3),
            None => anyhow::bail!("{name}: no event for batch {b} within 60 s"),
        }
        progress.set(b + 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    progress.finish();
    Ok(end_to_end)
}

// ------------------------------------------------------------------------------------------------
// Scenario 3: sustained retrains per second with 10,000 users, at rising arrival rates
// ------------------------------------------------------------------------------------------------

/// Every user starts with a seeded 10-tree model, and its 50 prediction requests are logged
/// before the ramp (as serving logs requests long before their outcomes land). At each rate of the
/// ladder, for `ramp_warm_seconds` (not measured) and then `ramp_seconds`, whole batches of
/// actuals arrive: every 100 ms the next users in round-robin order get 50 actuals each — one per
/// logged request, new values each time — in one multi-row transaction, `rate` users per second.
/// A step kept up when it completed at least 90 % of what it offered and the backlog (batches
/// written − events read) did not grow by more than 5 % of what it offered. The ladder stops at
/// the first step that did not keep up.
pub async fn ramp(
    s: &Settings,
    which: Implementation<'_>,
    ladder: &[f64],
) -> anyhow::Result<RampRun> {
    let name = which.name();
    let users = s.users;
    let seed = seed(10)?;
    let tag = format!("ramp_{name}");
    let log_path = s.out_dir.join(format!("{tag}.log"));
    let (db, mut proc) = start(s, &tag, &which, free_port(), &[], &log_path).await?;
    let (collector, announced) = ramp_prepare(s, &db, &mut proc, &seed, &which).await?;
    let mut writer = Writer {
        users,
        // Per user, the offset that makes each batch's actual values new.
        next_k: vec![FIRST_K; users + 1],
        cursor: 0,
        offered_total: announced,
    };
    let mut results = Vec::new();
    for &rate in ladder {
        let step = ramp_step(s, &db, &proc, &collector, &which, rate, &mut writer).await?;
        let kept_up = step.kept_up;
        results.push(step);
        if !kept_up {
            break;
        }
    }
    // The nominal rate of the highest step that kept up, when the writer achieved it (the step's
    // wall time includes its last write, so the achieved rate reads a hair lower).
    let sustained = results
        .iter()
        .filter(|r| r.kept_up && r.rate.is_finite() && r.offered_per_s.is_finite())
        .map(|r| {
            if r.offered_per_s >= 0.98 * r.rate {
                r.rate
            } else {
                r.offered_per_s
            }
        })
        .fold(0.0, f64::max);
    let memory = proc.stop(Duration::from_secs(60)).await;
    collector.stop();
    db.drop().await;
    Ok(RampRun {
        users,
        step_seconds: s.ramp_seconds,
        warm_up_seconds: s.ramp_warm_seconds,
        steps: results,
        sustained_per_s: sustained,
        vm_hwm_mb: memory.hwm_kib as f64 / 1024.0,
    })
}

/// Every user's seeded model and its 50 logged requests; the topic's consumer once the
/// implementation is ready; how many events are already written (refit announces its import).
async fn ramp_prepare(
    s: &Settings,
    db: &BenchDb,
    proc: &mut Proc,
    seed: &Seed,
    which: &Implementation<'_>,
) -> anyhow::Result<(Collector, usize)> {
    let (name, users) = (which.name(), s.users);
    install(s, db, users, seed, which).await?;
    let ids: Vec<i32> = (1..=users as i32).collect();
    log(format!(
        "ramp {name}: logging {users} users' 50 prediction requests"
    ));
    sqlx::query(
        "INSERT INTO prediction_requests (request_id, user_id, features)
         SELECT bench_request_id(u, k), bench_user(u), bench_features(u, k)
           FROM unnest($1::int[]) AS u, generate_series(1, 50) AS k",
    )
    .bind(&ids)
    .execute(&db.pool)
    .await?;
    sqlx::query("ANALYZE prediction_requests")
        .execute(&db.pool)
        .await?;
    let collector = Collector::start(&s.brokers, &db.topic)?;
    blocking(|| proc.wait_ready(Duration::from_secs(60)))?;
    // refit's import of user 1 announced version 1: wait for it and count it as written.
    let announced = match which {
        Implementation::Refit => 1,
        Implementation::Python { .. } => 0,
    };
    if announced > 0
        && blocking(|| collector.wait_for(announced, Duration::from_secs(60))).is_none()
    {
        anyhow::bail!("{name}: the imported model was not announced within 60 s");
    }
    Ok((collector, announced))
}

/// The ramp's upstream writer: whole batches for the next users, round-robin.
struct Writer {
    users: usize,
    next_k: Vec<i32>,
    cursor: usize,
    /// Batches written so far (with what was announced before the ramp).
    offered_total: usize,
}

impl Writer {
    /// The next `n` users get a whole batch of 50 actuals each, in one multi-row transaction.
    async fn write(&mut self, db: &BenchDb, n: usize) -> anyhow::Result<()> {
        let mut u = Vec::with_capacity(n);
        let mut k = Vec::with_capacity(n);
        for _ in 0..n {
            self.cursor = self.cursor % self.users + 1;
            u.push(self.cursor as i32);
            k.push(self.next_k[self.cursor]);
            self.next_k[self.cursor] += THRESHOLD;
        }
        sqlx::query(
            "INSERT INTO actual_rentals (request_id, actual_value)
             SELECT bench_request_id(u, k), bench_actual(u, k + b)
               FROM unnest($1::int[], $2::int[]) AS t(u, b), generate_series(1, 50) AS k",
        )
        .bind(&u)
        .bind(&k)
        .execute(&db.pool)
        .await?;
        self.offered_total += n;
        Ok(())
    }
}

/// Where a measured step starts: wall clock, events read, backlog, CPU.
struct StepStart {
    started: f64,
    events: usize,
    backlog: usize,
    cpu: CpuSnap,
}

async fn step_start(
    db: &BenchDb,
    proc: &Proc,
    collector: &Collector,
    app: &str,
    offered_total: usize,
) -> StepStart {
    let started = now_unix();
    let events = collector.count();
    StepStart {
        started,
        events,
        backlog: offered_total.saturating_sub(events),
        cpu: cpu_snap(&db.pool, proc.pid, app).await,
    }
}

/// One step of the ladder: a warm-up at the step's rate (not measured) lets the previous step's
/// backlog and the new rate settle; then `ramp_seconds` are measured.
async fn ramp_step(
    s: &Settings,
    db: &BenchDb,
    proc: &Proc,
    collector: &Collector,
    which: &Implementation<'_>,
    rate: f64,
    writer: &mut Writer,
) -> anyhow::Result<RampStep> {
    let app = which.application_name();
    let tick = Duration::from_millis(100);
    let warm_ticks = (s.ramp_warm_seconds / tick.as_secs_f64()).round() as u32;
    let ticks = (s.ramp_seconds / tick.as_secs_f64()).round() as u32;
    let mut progress = Progress::new(
        &format!("ramp {} {rate}/s", which.name()),
        (rate * (s.ramp_warm_seconds + s.ramp_seconds)).round() as usize,
    );
    let mut at = step_start(db, proc, collector, app, writer.offered_total).await;
    let (mut carry, mut offered, mut written, mut backlog_max) = (0.0, 0usize, 0usize, 0usize);
    let t0 = tokio::time::Instant::now();
    for i in 0..warm_ticks + ticks {
        if i == warm_ticks && warm_ticks > 0 {
            at = step_start(db, proc, collector, app, writer.offered_total).await;
            offered = 0;
        }
        carry += rate * tick.as_secs_f64();
        let n = carry.floor() as usize;
        carry -= n as f64;
        if n > 0 {
            writer.write(db, n).await?;
            offered += n;
            written += n;
        }
        progress.set(written);
        if i >= warm_ticks {
            backlog_max = backlog_max.max(writer.offered_total.saturating_sub(collector.count()));
        }
        tokio::time::sleep_until(t0 + tick * (i + 1)).await;
    }
    progress.finish();
    let tally = Tally {
        at,
        offered,
        offered_total: writer.offered_total,
        backlog_max,
        warm_up_seconds: s.ramp_warm_seconds,
    };
    Ok(finish_step(db, proc, collector, which, rate, tally).await)
}

/// What a step wrote, from where it started.
struct Tally {
    at: StepStart,
    offered: usize,
    offered_total: usize,
    backlog_max: usize,
    warm_up_seconds: f64,
}

/// Whether the step kept up, and where the cores went.
async fn finish_step(
    db: &BenchDb,
    proc: &Proc,
    collector: &Collector,
    which: &Implementation<'_>,
    rate: f64,
    t: Tally,
) -> RampStep {
    let seconds = now_unix() - t.at.started;
    let events_end = collector.count();
    let backlog_end = t.offered_total.saturating_sub(events_end);
    let completed = (events_end - t.at.events) as f64 / seconds;
    let offered_per_s = t.offered as f64 / seconds;
    // The backlog may wobble by what is in flight; growing by more than 5 % of what the
    // step offered (a second's worth in a 20-s step) means arrivals outpace retrains.
    let backlog_slack = (0.05 * t.offered as f64).max(20.0);
    let kept_up = completed >= 0.9 * offered_per_s
        && backlog_end as f64 <= t.at.backlog as f64 + backlog_slack;
    let cpu = cpu_delta(
        &t.at.cpu,
        &cpu_snap(&db.pool, proc.pid, which.application_name()).await,
        events_end - t.at.events,
    );
    log(format!(
        "ramp {}: offered {offered_per_s:.0}/s, completed {completed:.0}/s, backlog {} → {backlog_end}{}",
        which.name(),
        t.at.backlog,
        if kept_up { "" } else { " (did not keep up)" }
    ));
    RampStep {
        rate,
        offered_per_s,
        completed_per_s: completed,
        backlog_start: t.at.backlog,
        backlog_end,
        backlog_max: t.backlog_max,
        backlog_slack,
        kept_up,
        seconds,
        warm_up_seconds: t.warm_up_seconds,
        cpu,
    }
}
