//! The `steady` phase (issue 13): refit's cost per retrain at steady state, under the default
//! retraining policy (src/retrain/policy.rs). Not a default phase: `BENCH_PHASES=steady`.
//!
//! Seeded in SQL before refit starts, for BENCH_STEADY_USERS users (1,000) with
//! BENCH_STEADY_HISTORY (4,000, REFIT_REFIT_WINDOW's default) trained actuals each:
//! - the upstream rows of that history (requests and actuals; the actuals with no `refit_xid`, so
//!   refit's ingest leaves them alone, as it does actuals it queued long ago);
//! - `history / 50` versions per user, all ready, each with its live error in `metrics->'live'`
//!   and its policy step in `metrics->'policy'` (rebuild every REFIT_REBUILD_EVERY, continues in
//!   between); the newest is active and is a rebuild (REFIT_COMPACTION_ROUNDS trees,
//!   since_rebuild 0), so the measured rounds make continue, continue, continue, rebuild;
//! - every history actual in `refit_consumed_actuals` as `trained` by the version of its batch,
//!   with the matrix row it trained as (`line`), as refit stores it.
//!
//! The active models are trained here with refit's trainer, one per scale class of the generated
//! data (user % 10), on the class's first user's history (REFIT_COMPACTION_ROUNDS rounds at
//! REFIT_REBUILD_ETA, no recency weights), and copied to every user of the class; the seeded live
//! errors are that model's errors on 50-row batches of its user after the measured ones. Only the
//! active version keeps an artifact (retention drops older ones; no measured round prunes unless
//! its version is a multiple of 10, which the report shows).
//!
//! Then refit runs (release binary, defaults) and BENCH_STEADY_ROUNDS (4) rounds of 50 actuals per
//! user are bulk-loaded (one transaction, as upstream; refit's own ingest queues them). Per round:
//! retrains/s, versions by policy step and status, CPU of refit, its PostgreSQL backends and the
//! machine, WAL bytes (cluster-wide), and XGBoost's share (load + boost + save from the train log
//! line); `pg_stat_statements` over the measured rounds when the server preloads it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::Row;

use crate::infra::{
    cpu_delta, cpu_snap, env_num, free_port, http_get, loadavg, now_unix, refit_config, refit_env,
    BenchDb, Collector, CpuSnap, LogIndex, Proc, Settings, REFIT_BIN,
};
use crate::phases::{blocking, count_by, log, memory_of, THRESHOLD};
use crate::results::{
    finite, Counts, Cpu, Logs, StatementStat, StatementStats, Steady, SteadyRound, SteadySeed,
    SteadyTotals, Summary, TableStat,
};
use crate::scenarios::{bench_row, default_params};
use refit::model::trainer::{predict, train, Previous, TrainInput, TrainMode};
use refit::retrain::features::{prepare, ActualRow};

/// Live errors seeded per class (the gate reads the newest 20).
const LIVE_SEEDED: i32 = 20;

/// The policy settings the phase records and seeds by.
const POLICY_KEYS: [&str; 16] = [
    "REFIT_RETRAIN_THRESHOLD",
    "REFIT_ROUNDS_PER_RETRAIN",
    "REFIT_CONTINUE_ETA",
    "REFIT_REBUILD_EVERY",
    "REFIT_REFIT_WINDOW",
    "REFIT_COMPACTION_ROUNDS",
    "REFIT_REBUILD_ETA",
    "REFIT_RECENCY_HALF_LIFE",
    "REFIT_MAX_TREES",
    "REFIT_VALIDATION",
    "REFIT_VALIDATION_WINDOW",
    "REFIT_VALIDATION_METRIC",
    "REFIT_KEEP_ARTIFACTS",
    "REFIT_KEEP_VERSIONS",
    "REFIT_MAX_CONCURRENT_RETRAINS",
    "REFIT_MODEL_CACHE_MB",
];

/// BENCH_STEADY_USERS, BENCH_STEADY_HISTORY (rounded down to whole batches), BENCH_STEADY_ROUNDS.
struct Knobs {
    users: i32,
    history: i32,
    rounds: usize,
}

impl Knobs {
    fn from_env() -> Knobs {
        let history: i32 = env_num("BENCH_STEADY_HISTORY", 4000);
        Knobs {
            users: env_num("BENCH_STEADY_USERS", 1000).max(1),
            history: (history / THRESHOLD).max(4) * THRESHOLD,
            rounds: env_num("BENCH_STEADY_ROUNDS", 4usize).max(1),
        }
    }
}

/// The policy numbers the seed follows.
struct Policy {
    rebuild_every: i32,
    rebuild_rounds: i32,
    rebuild_eta: f64,
    rounds: i32,
    continue_eta: f64,
}

impl Policy {
    fn of(config: &BTreeMap<String, String>) -> Policy {
        let get = |k: &str, d: f64| {
            config
                .get(k)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(d)
        };
        Policy {
            rebuild_every: get("REFIT_REBUILD_EVERY", 4.0) as i32,
            rebuild_rounds: get("REFIT_COMPACTION_ROUNDS", 35.0) as i32,
            rebuild_eta: get("REFIT_REBUILD_ETA", 0.3),
            rounds: get("REFIT_ROUNDS_PER_RETRAIN", 1.0) as i32,
            continue_eta: get("REFIT_CONTINUE_ETA", 0.1),
        }
    }
}

/// One seed model: trained on the first user of a scale class, with its errors on later batches.
struct SeedModel {
    class: i32,
    rep: i32,
    artifact: Vec<u8>,
    features: Vec<String>,
    /// (mae, rmse) on `LIVE_SEEDED` 50-row batches after the measured rounds.
    live: Vec<(f64, f64)>,
}

fn rows_of(user: i32, from: i32, n: i32) -> Vec<ActualRow> {
    (from..from + n).map(|k| bench_row(user, k)).collect()
}

/// The seed models, one per scale class present among the users.
fn seed_models(k: &Knobs, p: &Policy) -> anyhow::Result<Vec<SeedModel>> {
    let mut params = default_params();
    if p.rebuild_eta > 0.0 {
        params.insert("eta".into(), p.rebuild_eta.to_string());
    }
    let mut models = Vec::new();
    for class in 0..10 {
        let rep = if class == 0 { 10 } else { class };
        if rep > k.users {
            continue;
        }
        let batch = prepare(&rows_of(rep, 1, k.history), None);
        let trained = train(TrainInput {
            previous: Previous::None,
            mode: TrainMode::Continue,
            params: &params,
            rounds: p.rebuild_rounds,
            nthread: 1,
            batch: &batch,
            holdout: None,
            keep_model: false,
        })?;
        let mut live = Vec::new();
        for j in 0..LIVE_SEEDED {
            let from = k.history + THRESHOLD * (k.rounds as i32 + j) + 1;
            let b = prepare(&rows_of(rep, from, THRESHOLD), Some(&batch.feature_names));
            let pred = predict(&trained.artifact, &b)?;
            let n = pred.len().max(1) as f64;
            let (mut abs, mut sq) = (0.0, 0.0);
            for (y_hat, y) in pred.iter().zip(&b.labels) {
                let e = f64::from(*y_hat) - f64::from(*y);
                abs += e.abs();
                sq += e * e;
            }
            live.push((abs / n, (sq / n).sqrt()));
        }
        models.push(SeedModel {
            class,
            rep,
            artifact: trained.artifact,
            features: batch.feature_names,
            live,
        });
    }
    Ok(models)
}

/// The fingerprint of a feature order as refit stores it in each line (src/retrain/lines.rs:
/// FNV-1a over the names, each ended by a 0 byte).
fn fingerprint(names: &[String]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in names.iter().flat_map(|n| n.bytes().chain([0])) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// A float4 as 4 little-endian bytes (`float4send` is big-endian).
const LE4: &str = "CREATE FUNCTION bench_le4(x float4) RETURNS bytea IMMUTABLE LANGUAGE sql
  AS $$ SELECT set_byte(set_byte(set_byte(set_byte(b, 0, get_byte(b, 3)), 1, get_byte(b, 2)),
                                 2, get_byte(b, 1)), 3, get_byte(b, 0))
          FROM (SELECT float4send(x) AS b) t $$";

/// Runs `sql` (with `users`, `history` bound as $1, $2), logging how long it took.
async fn timed(db: &BenchDb, what: &str, sql: &str, k: &Knobs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut tx = db.pool.begin().await?;
    // The rows are consistent by construction: skip the foreign-key triggers (superuser only,
    // this transaction only).
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await?;
    sqlx::query(sql)
        .bind(k.users)
        .bind(k.history)
        .execute(&mut *tx)
        .await
        .with_context(|| format!("seeding {what}"))?;
    tx.commit().await?;
    log(format!(
        "steady: seeded {what} in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Seeds the steady state (module docs) into `db`; what was seeded.
async fn seed(
    db: &BenchDb,
    k: &Knobs,
    p: &Policy,
    models: &[SeedModel],
) -> anyhow::Result<SteadySeed> {
    let started = Instant::now();
    let versions = k.history / THRESHOLD;
    // The seed models as refit's own import stores them (params, features), then set aside.
    for m in models {
        refit::registry::import(
            &db.pool,
            &format!("user-{:06}", m.rep),
            m.artifact.clone(),
            Some(m.features.clone()),
            &default_params(),
            refit::registry::audit::Interface::Cli,
        )
        .await
        .map_err(|e| anyhow::anyhow!("importing the seed model: {e}"))?;
    }
    sqlx::raw_sql(LE4).execute(&db.pool).await?;
    sqlx::raw_sql(
        "CREATE TABLE bench_steady_seed AS
             SELECT substring(user_id FROM 6)::int % 10 AS class, artifact, params, features
               FROM refit_model_versions;
         TRUNCATE refit_aliases, refit_model_versions, refit_models, refit_outbox, refit_audit;
         CREATE TABLE bench_steady_live (class int, j int, mae float8, rmse float8);",
    )
    .execute(&db.pool)
    .await?;
    let (mut class, mut j, mut mae, mut rmse) = (vec![], vec![], vec![], vec![]);
    for m in models {
        for (i, (a, r)) in m.live.iter().enumerate() {
            class.push(m.class);
            j.push(i as i32);
            mae.push(*a);
            rmse.push(*r);
        }
    }
    sqlx::query(
        "INSERT INTO bench_steady_live
         SELECT * FROM unnest($1::int[], $2::int[], $3::float8[], $4::float8[])",
    )
    .bind(&class)
    .bind(&j)
    .bind(&mae)
    .bind(&rmse)
    .execute(&db.pool)
    .await?;
    // The three tables are independent here (no foreign-key checks): filled concurrently.
    let rows = "generate_series(1, $2) AS k, generate_series(1, $1) AS u";
    let requests = format!(
        "INSERT INTO prediction_requests (request_id, user_id, features, created_at)
         SELECT bench_request_id(u, k), bench_user(u), bench_features(u, k),
                now() - interval '1 day'
           FROM {rows}"
    );
    // Ids in arrival order (request index, then user), as the bulk loads number them.
    let actuals = format!(
        "INSERT INTO actual_rentals (id, request_id, actual_value, \"timestamp\", refit_xid)
         SELECT (k - 1)::bigint * $1 + u, bench_request_id(u, k), bench_actual(u, k),
                now() - interval '1 day' + ((k - 1)::bigint * $1 + u) * interval '1 microsecond',
                NULL
           FROM {rows}"
    );
    // Each trained actual with the matrix row it trained as (`line`, as refit stores it: the
    // feature order's fingerprint, the label and the features in that order, f32 little-endian),
    // so the window is read from refit's own table as in production.
    let order = models
        .first()
        .map(|m| m.features.clone())
        .unwrap_or_default();
    let consumed = format!(
        "INSERT INTO refit_consumed_actuals
             (actual_id, user_id, version, outcome, consumed_at, line)
         SELECT (k - 1)::bigint * $1 + u, bench_user(u), (k - 1) / 50 + 1, 'trained',
                now() - interval '1 day',
                '\\x{}'::bytea || bench_le4(bench_actual(u, k)::float4)
                    || (SELECT string_agg(bench_le4(coalesce((f ->> n)::float8, 'NaN')::float4),
                                          ''::bytea ORDER BY i)
                          FROM bench_features(u, k) AS f,
                               unnest('{{{}}}'::text[]) WITH ORDINALITY AS t(n, i))
           FROM {rows}",
        fingerprint(&order)
            .to_le_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        order.join(","),
    );
    tokio::try_join!(
        timed(db, "prediction_requests", &requests, k),
        timed(db, "actual_rentals", &actuals, k),
        timed(db, "refit_consumed_actuals", &consumed, k),
    )?;
    sqlx::query("SELECT setval(pg_get_serial_sequence('actual_rentals', 'id'), $1::bigint * $2)")
        .bind(k.users)
        .bind(k.history)
        .execute(&db.pool)
        .await?;
    seed_registry(db, k, p, versions).await?;
    let analyzed = Instant::now();
    sqlx::query("ANALYZE").execute(&db.pool).await?;
    log(format!(
        "steady: ANALYZE in {:.1} s",
        analyzed.elapsed().as_secs_f64()
    ));
    let mut counts = BTreeMap::new();
    for table in [
        "prediction_requests",
        "actual_rentals",
        "refit_consumed_actuals",
        "refit_models",
        "refit_model_versions",
    ] {
        counts.insert(
            table.to_owned(),
            db.scalar(&format!("SELECT count(*) FROM {table}")).await?,
        );
    }
    let database_mb: i64 = db
        .scalar("SELECT pg_database_size(current_database())")
        .await?;
    let n = models.len().max(1) as f64;
    Ok(SteadySeed {
        versions_per_user: versions,
        active_version: versions,
        active_step: "rebuild".into(),
        active_trees: i64::from(p.rebuild_rounds),
        models: models.len(),
        artifact_kb_mean: models
            .iter()
            .map(|m| m.artifact.len() as f64 / 1024.0)
            .sum::<f64>()
            / n,
        live_rmse_mean: models
            .iter()
            .flat_map(|m| m.live.iter().map(|l| l.1))
            .sum::<f64>()
            / (n * f64::from(LIVE_SEEDED)),
        rows: counts,
        seconds: started.elapsed().as_secs_f64(),
        database_mb: database_mb as f64 / 1024.0 / 1024.0,
    })
}

/// `refit_models` and `versions` ready versions per user (module docs), in one transaction (the
/// active version's foreign key is deferred to its commit).
async fn seed_registry(db: &BenchDb, k: &Knobs, p: &Policy, versions: i32) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut tx = db.pool.begin().await?;
    sqlx::query(
        "INSERT INTO refit_models (user_id, active_version, created_at, updated_at)
         SELECT bench_user(u), $2, now() - interval '1 day', now() - interval '1 day'
           FROM generate_series(1, $1) AS u",
    )
    .bind(k.users)
    .bind(versions)
    .execute(&mut *tx)
    .await?;
    // d: batches before the active version, modulo the rebuild period; 0 is a rebuild.
    sqlx::query(
        "INSERT INTO refit_model_versions
             (user_id, version, status, parent_version, artifact, rows_used, trees,
              boosted_rounds, params, features, timings_ms, metrics, source, retrain_id, created_at)
         SELECT bench_user(u), v, 'ready', nullif(v - 1, 0),
                CASE WHEN v = $2 THEN s.artifact END, 50,
                $4 + l.since * $5, $4 + l.since * $5, s.params, s.features, '{}',
                jsonb_build_object(
                    'live', CASE WHEN v > 1 THEN jsonb_build_object(
                        'mae', e.mae, 'rmse', e.rmse, 'rows', 50, 'version', v - 1) END,
                    'policy', jsonb_build_object(
                        'step', l.step, 'rounds', CASE WHEN l.since = 0 THEN $4 ELSE $5 END,
                        'eta', CASE WHEN l.since = 0 THEN $6 ELSE $7 END,
                        'rows_trained', CASE WHEN l.since = 0 THEN least(v * 50, $8) ELSE 50 END,
                        'since_rebuild', l.since, 'reinstated', NULL),
                    'seeded', true),
                CASE l.step WHEN 'continue' THEN 'retrain' ELSE l.step END,
                gen_random_uuid(), now() - interval '1 day' + v * interval '1 second'
           FROM generate_series(1, $1) AS u
           JOIN bench_steady_seed s ON s.class = u % 10
          CROSS JOIN generate_series(1, $2) AS v
           LEFT JOIN bench_steady_live e ON e.class = u % 10 AND e.j = v % $9
          CROSS JOIN LATERAL (
                SELECT CASE WHEN v = 1 THEN 'fresh' WHEN d = 0 THEN 'rebuild' ELSE 'continue' END
                           AS step,
                       CASE WHEN v = 1 THEN 0 ELSE ($3 - d) % $3 END AS since
                  FROM (SELECT ($2 - v) % $3 AS d) AS x) AS l",
    )
    .bind(k.users)
    .bind(versions)
    .bind(p.rebuild_every.max(1))
    .bind(p.rebuild_rounds)
    .bind(p.rounds)
    .bind(p.rebuild_eta)
    .bind(p.continue_eta)
    .bind(k.history)
    .bind(LIVE_SEEDED)
    .execute(&mut *tx)
    .await
    .context("seeding refit_model_versions")?;
    tx.commit().await?;
    log(format!(
        "steady: seeded refit_models and refit_model_versions in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// `pg_current_wal_lsn()` as text.
async fn wal_lsn(db: &BenchDb) -> anyhow::Result<String> {
    Ok(sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&db.pool)
        .await?)
}

async fn wal_diff(db: &BenchDb, from: &str, to: &str) -> f64 {
    sqlx::query_scalar("SELECT pg_wal_lsn_diff($2::pg_lsn, $1::pg_lsn)::float8")
        .bind(from)
        .bind(to)
        .fetch_one(&db.pool)
        .await
        .unwrap_or(f64::NAN)
}

/// Whether the server preloads pg_stat_statements; if so, the extension in this database and its
/// counters of this database reset. `Err`: why there will be no statement statistics.
async fn statements_start(db: &BenchDb) -> Result<(), String> {
    let preload: String = sqlx::query_scalar("SHOW shared_preload_libraries")
        .fetch_one(&db.pool)
        .await
        .map_err(|e| e.to_string())?;
    if !preload.contains("pg_stat_statements") {
        return Err("not loaded (shared_preload_libraries)".into());
    }
    sqlx::raw_sql(
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
         SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database
                                              WHERE datname = current_database()), 0);",
    )
    .execute(&db.pool)
    .await
    .map_err(|e| format!("not available: {e}"))?;
    Ok(())
}

/// The top statements of this database by total execution time.
async fn statements_top(db: &BenchDb) -> StatementStats {
    let rows = sqlx::query(
        "SELECT query, calls, total_exec_time, mean_exec_time, rows, shared_blks_hit,
                shared_blks_read, shared_blks_dirtied, shared_blks_written
           FROM pg_stat_statements
          WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
          ORDER BY total_exec_time DESC
          LIMIT 15",
    )
    .fetch_all(&db.pool)
    .await;
    match rows {
        Ok(rows) => StatementStats::Top(
            rows.into_iter()
                .map(|r| StatementStat {
                    query: r
                        .get::<String, _>(0)
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" "),
                    calls: r.get(1),
                    total_ms: r.get(2),
                    mean_ms: r.get(3),
                    rows: r.get(4),
                    shared_blks_hit: r.get(5),
                    shared_blks_read: r.get(6),
                    shared_blks_dirtied: r.get(7),
                    shared_blks_written: r.get(8),
                })
                .collect(),
        ),
        Err(e) => StatementStats::Skipped(format!("not read: {e}")),
    }
}

/// `pg_stat_user_tables` of this database now.
async fn table_stats(db: &BenchDb) -> Vec<TableStat> {
    sqlx::query(
        "SELECT relname::text, coalesce(seq_scan, 0), coalesce(seq_tup_read, 0),
                coalesce(idx_scan, 0), coalesce(idx_tup_fetch, 0), n_tup_ins, n_tup_upd, n_tup_del
           FROM pg_stat_user_tables",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap_or_default()
    .into_iter()
    .map(|r| TableStat {
        table: r.get(0),
        seq_scan: r.get(1),
        seq_tup_read: r.get(2),
        idx_scan: r.get(3),
        idx_tup_fetch: r.get(4),
        n_tup_ins: r.get(5),
        n_tup_upd: r.get(6),
        n_tup_del: r.get(7),
    })
    .collect()
}

/// `after` − `before`, tables with any activity, most rows read first.
fn table_delta(before: &[TableStat], after: &[TableStat]) -> Vec<TableStat> {
    let mut delta: Vec<TableStat> = after
        .iter()
        .map(|a| {
            let b = before
                .iter()
                .find(|b| b.table == a.table)
                .cloned()
                .unwrap_or_default();
            TableStat {
                table: a.table.clone(),
                seq_scan: a.seq_scan - b.seq_scan,
                seq_tup_read: a.seq_tup_read - b.seq_tup_read,
                idx_scan: a.idx_scan - b.idx_scan,
                idx_tup_fetch: a.idx_tup_fetch - b.idx_tup_fetch,
                n_tup_ins: a.n_tup_ins - b.n_tup_ins,
                n_tup_upd: a.n_tup_upd - b.n_tup_upd,
                n_tup_del: a.n_tup_del - b.n_tup_del,
            }
        })
        .filter(|d| d.seq_scan + d.idx_scan + d.n_tup_ins + d.n_tup_upd + d.n_tup_del > 0)
        .collect();
    delta.sort_by_key(|d| std::cmp::Reverse(d.seq_tup_read + d.idx_tup_fetch));
    delta
}

/// What a round measured while refit ran; the rest comes from its versions and log.
struct Measured {
    version: i32,
    load_seconds: f64,
    committed: f64,
    retrains: usize,
    last_event: Option<f64>,
    cpu: Cpu,
    wal_bytes: f64,
    loadavg: [Option<f64>; 2],
}

/// The `steady` phase (module docs).
pub async fn steady(s: &Settings) -> anyhow::Result<Steady> {
    let k = Knobs::from_env();
    let db = BenchDb::create(s, "steady").await?;
    let port = free_port();
    let env = refit_env(s, &db, port, &[]);
    let policy: BTreeMap<String, String> = refit_config(&env)
        .into_iter()
        .filter(|(key, _)| POLICY_KEYS.contains(&key.as_str()))
        .collect();
    let p = Policy::of(&policy);
    log(format!(
        "steady: seeding {} users × {} trained actuals ({} versions each)",
        k.users,
        k.history,
        k.history / THRESHOLD
    ));
    let models = blocking(|| seed_models(&k, &p))?;
    let seed = seed(&db, &k, &p, &models).await?;
    log(format!(
        "steady: seeded in {:.0} s; database {:.0} MB",
        seed.seconds, seed.database_mb
    ));
    let mut refit = Proc::spawn(
        "refit",
        REFIT_BIN,
        &["run"],
        &env,
        &s.out_dir.join("refit-steady.log"),
    )?;
    let collector = Collector::start(&s.brokers, &db.topic)?;
    blocking(|| refit.wait_ready(Duration::from_secs(60)))?;
    // The WAL is the cluster's: its rate with refit idle, before the rounds, for comparison.
    let idle_lsn = wal_lsn(&db).await?;
    let idle_started = now_unix();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_wal_bytes_per_s =
        wal_diff(&db, &idle_lsn, &wal_lsn(&db).await?).await / (now_unix() - idle_started);
    let statements = statements_start(&db).await;
    let tables_before = table_stats(&db).await;
    let users: Vec<i32> = (1..=k.users).collect();
    let n = users.len();
    let before = collector.count();
    let timeout = Duration::from_secs(600.max(n as u64 / 10));
    let mut measured = Vec::new();
    for round in 0..k.rounds {
        let first = k.history + 1 + THRESHOLD * round as i32;
        let load_before = loadavg();
        let load_started = now_unix();
        log(format!(
            "steady: round {} loading {n} users × 50 actuals",
            round + 1
        ));
        let committed = db
            .write(&users, &vec![first; n], &vec![THRESHOLD; n])
            .await?;
        let cpu_start: CpuSnap = cpu_snap(&db.pool, refit.pid, "refit").await;
        let lsn_start = wal_lsn(&db).await?;
        let label = format!("steady, round {}", round + 1);
        let from = before + n * round;
        let last = blocking(|| collector.wait_with_progress(&label, from, from + n, timeout));
        let cpu_end = cpu_snap(&db.pool, refit.pid, "refit").await;
        let lsn_end = wal_lsn(&db).await?;
        let retrains = collector.count().min(from + n) - from;
        measured.push(Measured {
            version: k.history / THRESHOLD + 1 + round as i32,
            load_seconds: committed - load_started,
            committed,
            retrains,
            last_event: last,
            cpu: cpu_delta(&cpu_start, &cpu_end, retrains),
            wal_bytes: wal_diff(&db, &lsn_start, &lsn_end).await,
            loadavg: [finite(load_before), finite(loadavg())],
        });
        if last.is_none() {
            log(format!(
                "steady: round {} incomplete after {timeout:?}",
                round + 1
            ));
            break;
        }
    }
    // Backends report their counters within a second of going idle.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let table_stats = table_delta(&tables_before, &table_stats(&db).await);
    let pg_stat_statements = match statements {
        Ok(()) => statements_top(&db).await,
        Err(why) => StatementStats::Skipped(why),
    };
    let metrics = http_get(port, "/metrics").unwrap_or_default();
    let logs_of_refit = refit.logs.clone();
    let memory = refit.stop(Duration::from_secs(60)).await;
    collector.stop();
    let logs = std::mem::take(&mut *logs_of_refit.lock().unwrap());
    let versions = measured_versions(&db, k.history / THRESHOLD).await?;
    let rounds: Vec<SteadyRound> = measured
        .iter()
        .enumerate()
        .map(|(i, m)| round_of(i, m, &versions, &logs))
        .collect();
    let mut overall = totals(&rounds);
    overall.idle_wal_bytes_per_s = idle_wal_bytes_per_s;
    log(format!(
        "steady: {} retrains, {:.1}/s; CPU ms per retrain refit {:.2} + PostgreSQL {:.2} \
         (machine {:.2}) vs XGBoost {:.2}; WAL {:.0} B per retrain",
        overall.retrains,
        overall.retrains_per_s,
        overall.refit_cpu_ms_per_retrain,
        overall.postgres_cpu_ms_per_retrain,
        overall.machine_cpu_ms_per_retrain,
        overall.xgboost_ms_per_retrain,
        overall.wal_bytes_per_retrain
    ));
    let result = Steady {
        users: n,
        history_rows_per_user: i64::from(k.history),
        seed,
        policy,
        rounds,
        overall,
        pg_stat_statements,
        table_stats,
        memory: Some(memory_of(&memory)),
        logs: Some(Logs {
            warnings: logs.warnings,
            errors: logs.errors,
            first_notable: logs.notable.clone(),
        }),
        metrics_retrains_total: metrics
            .lines()
            .filter(|l| l.starts_with("refit_retrains_total"))
            .map(str::to_owned)
            .collect(),
    };
    db.drop().await;
    Ok(result)
}

/// A version made during the measured rounds.
struct Made {
    version: i32,
    status: String,
    step: String,
    trees: Option<i32>,
    retrain_id: String,
}

async fn measured_versions(db: &BenchDb, seeded: i32) -> anyhow::Result<Vec<Made>> {
    let rows = sqlx::query(
        "SELECT version, status, coalesce(metrics->'policy'->>'step', source), trees,
                coalesce(retrain_id::text, '')
           FROM refit_model_versions WHERE version > $1",
    )
    .bind(seeded)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Made {
            version: r.get(0),
            status: r.get(1),
            step: r.get(2),
            trees: r.get(3),
            retrain_id: r.get(4),
        })
        .collect())
}

fn per(x: f64, n: usize) -> f64 {
    if n > 0 {
        x / n as f64
    } else {
        f64::NAN
    }
}

fn round_of(i: usize, m: &Measured, versions: &[Made], logs: &LogIndex) -> SteadyRound {
    let mine: Vec<&Made> = versions.iter().filter(|v| v.version == m.version).collect();
    let (mut load, mut boost, mut save, mut total, mut acks) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut step = vec![];
    let mut cached = 0;
    for v in &mine {
        let Some(steps) = logs.steps.get(&v.retrain_id) else {
            continue;
        };
        if let Some(t) = steps.get("train") {
            let (l, b, s) = (
                t.load_ms.unwrap_or(0.0),
                t.boost_ms.unwrap_or(0.0),
                t.save_ms.unwrap_or(0.0),
            );
            cached += usize::from(l == 0.0);
            load.push(l);
            boost.push(b);
            save.push(s);
            total.push(l + b + s);
            step.extend(t.duration_ms);
        }
        if let Some(a) = steps.get("announce") {
            acks.push(a.at);
        }
    }
    let last_ack = acks.iter().copied().fold(f64::NAN, f64::max);
    let end = m.last_event.unwrap_or(f64::NAN);
    SteadyRound {
        round: i + 1,
        version: m.version,
        load_seconds: m.load_seconds,
        retrains: m.retrains,
        complete: m.last_event.is_some(),
        seconds_commit_to_last_event: end - m.committed,
        retrains_per_s_read: m.retrains as f64 / (end - m.committed),
        retrains_per_s: acks.len() as f64 / (last_ack - m.committed),
        versions_by_step: count_by(mine.iter().map(|v| v.step.as_str())),
        versions_by_status: count_by(mine.iter().map(|v| v.status.as_str())),
        machine_cpu_ms_per_retrain: per(m.cpu.machine_busy_cpu_s * 1e3, m.retrains),
        cpu: m.cpu.clone(),
        wal_bytes: m.wal_bytes,
        wal_bytes_per_retrain: per(m.wal_bytes, m.retrains),
        xgboost_ms: Summary::rounded(&total),
        load_ms: Summary::rounded(&load),
        boost_ms: Summary::rounded(&boost),
        save_ms: Summary::rounded(&save),
        train_step_ms: Summary::rounded(&step),
        models_cached: cached,
        trees: Summary::rounded(
            &mine
                .iter()
                .filter_map(|v| v.trees.map(f64::from))
                .collect::<Vec<_>>(),
        ),
        loadavg_before_after: m.loadavg,
    }
}

/// The rounds together: sums over rounds divided by all their retrains.
fn totals(rounds: &[SteadyRound]) -> SteadyTotals {
    let retrains: usize = rounds.iter().map(|r| r.retrains).sum();
    let sum = |f: &dyn Fn(&SteadyRound) -> f64| rounds.iter().map(f).sum::<f64>();
    let seconds = sum(&|r| {
        if r.retrains_per_s.is_finite() && r.retrains_per_s > 0.0 {
            r.retrains as f64 / r.retrains_per_s
        } else {
            r.seconds_commit_to_last_event
        }
    });
    let xgb_n: usize = rounds.iter().map(|r| r.xgboost_ms.n).sum();
    let xgboost = per(sum(&|r| r.xgboost_ms.mean * r.xgboost_ms.n as f64), xgb_n);
    let step_n: usize = rounds.iter().map(|r| r.train_step_ms.n).sum();
    let train_step = per(
        sum(&|r| r.train_step_ms.mean * r.train_step_ms.n as f64),
        step_n,
    );
    let refit = per(sum(&|r| r.cpu.process_cpu_s) * 1e3, retrains);
    let postgres = per(sum(&|r| r.cpu.its_postgres_backends_cpu_s) * 1e3, retrains);
    let mut by_step = Counts::new();
    let mut by_status = Counts::new();
    for r in rounds {
        for (k, v) in &r.versions_by_step {
            *by_step.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &r.versions_by_status {
            *by_status.entry(k.clone()).or_default() += v;
        }
    }
    SteadyTotals {
        retrains,
        seconds,
        retrains_per_s: retrains as f64 / seconds,
        refit_cpu_ms_per_retrain: refit,
        postgres_cpu_ms_per_retrain: postgres,
        machine_cpu_ms_per_retrain: per(sum(&|r| r.cpu.machine_busy_cpu_s) * 1e3, retrains),
        wal_bytes_per_retrain: per(sum(&|r| r.wal_bytes), retrains),
        idle_wal_bytes_per_s: f64::NAN,
        xgboost_ms_per_retrain: xgboost,
        train_step_ms_per_retrain: train_step,
        cpu_to_xgboost: (refit + postgres) / xgboost,
        versions_by_step: by_step,
        versions_by_status: by_status,
    }
}
