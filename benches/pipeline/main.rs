//! `make bench`: the performance targets (BENCHMARKS.md), measured end to end on the real services
//! (PostgreSQL, Redis, the Kafka-compatible broker) with the release `refit` binary as a child
//! process, side by side with the straightforward Python sequence (scripts/bench-python.py).
//!
//! Phases (BENCH_PHASES, comma separated; default `floor,steps,freshness,ramp,throughput,growth`):
//! - `floor`: the same XGBoost update through the C API alone, in this process, no I/O (100 and
//!   1,000 trees; from the artifact and from a model kept in memory);
//! - `steps` (scenario 1): one user with a seeded 100- or 1,000-tree model, 50-row batches one at
//!   a time; per-step p50/p95 of refit and of the Python reference;
//! - `freshness` (scenario 2): actuals stream in, one autocommitted INSERT each, so that
//!   BENCH_FRESH_RATES batches/s complete; the commit of each batch's 50th actual is timestamped
//!   here and its `model-retrained` event is read from the topic by a consumer (matched by user
//!   and version); refit and the Python reference on the same rows;
//! - `ramp` (scenario 3): BENCH_USERS users, arrival rates raised until the backlog grows, both
//!   implementations; the highest rate kept up is the sustained throughput; peak memory;
//! - `throughput`: BENCH_USERS users × 50 actuals bulk-loaded while refit runs, twice (fresh
//!   models, then continued training): the drain's capacity; `python`: the same for the reference
//!   (~10 min at 10,000 users, not in the default list);
//! - `growth`: BENCH_GROWTH runs (REFIT_MAX_TREES:retrains) of one user's consecutive retrains;
//!   train time, artifact size and trees per version;
//! - `steady` (not a default phase): cost per retrain at steady state — BENCH_STEADY_USERS users
//!   seeded with steady-state models, a full window of trained actuals and a live-error history,
//!   then BENCH_STEADY_ROUNDS rounds of 50 actuals each: CPU, WAL and XGBoost's share per retrain.
//!
//! BENCH_REPEAT (3; 1 with BENCH_QUICK) repeats floor, steps and freshness; the report gives
//! medians with the [min–max] spread. Every phase shows a progress bar on stderr.
//!
//! Nothing here asserts a time: results go to target/bench/<run>/ (results.json, summary.md,
//! benchmarks.png, every child's log) and summary.md is printed at the end. A full run (not
//! BENCH_QUICK) also rewrites BENCHMARKS.md between its `bench:results` markers and
//! benchmarks.png. BENCH_QUICK=1 runs smaller sizes.
//!
//! `cargo bench --locked --bench pipeline -- --report target/bench/<run>/results.json` (or
//! BENCH_RESUMMARIZE=<that path>) re-renders the report of an earlier run without measuring.
//!
//! The files:
//! - main.rs: the run, phase by phase, saving results.json after every measurement;
//! - results.rs: the typed results (what results.json holds, what the report and
//!   scripts/bench-chart.py read);
//! - phases.rs: scenario 2 (freshness), the throughput drain, growth, the Redis floor;
//! - steady.rs: the steady-state phase (its seed in SQL, cost per retrain);
//! - scenarios.rs: scenario 1 (per-step cost), scenario 3 (the ramp), the C API floor, and the
//!   seeded models they start from;
//! - infra.rs: settings, databases, the topic's consumer, child processes, CPU accounting;
//! - stats.rs: percentiles and number formatting;
//! - report/: summary.md, the BENCHMARKS.md section and the chart, from the typed results only.
// Tests and benches set up and inspect the database directly, outside refit's typed store.
#![allow(clippy::disallowed_methods)]

mod infra;
mod phases;
mod report;
mod results;
mod scenarios;
mod stats;
mod steady;

use anyhow::Context;

use infra::Settings;
use phases::Implementation;
use results::{finite, PythonThroughput, Results};

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes --bench; besides it, only `--report <results.json>`.
    let settings = Settings::from_env()?;
    // Re-render the report (summary, chart, BENCHMARKS.md) of an earlier run without running it:
    // `cargo bench --bench pipeline -- --report <results.json>` (or BENCH_RESUMMARIZE=<path>).
    if let Some(path) = report_path() {
        return report_only(&path, settings.python.as_deref());
    }
    std::fs::create_dir_all(&settings.out_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(settings))
}

async fn run(s: Settings) -> anyhow::Result<()> {
    let started = chrono::Utc::now();
    eprintln!(
        "[bench] run {} → {} (quick: {}, phases: {})",
        s.run_id,
        s.out_dir.display(),
        s.quick,
        s.phases.join(",")
    );
    // Databases left by interrupted earlier runs.
    refit_testkit::drop_databases_with_prefix(&s.admin_url, infra::DB_PREFIX).await?;
    let env_names = infra::refit_env_names();
    let mut run = Run {
        results: run_header(&s, started, &env_names),
        s: &s,
    };
    run.results.redis_floor = Some(phases::redis_floor(&s).await.context("Redis DEL floor")?);
    run.results.round_trips = Some(
        phases::round_trip_floors(&s)
            .await
            .context("Kafka and PostgreSQL round trips")?,
    );
    run.save();
    for phase in PHASES {
        if !s.wants(phase) {
            continue;
        }
        let phase_started = std::time::Instant::now();
        match phase {
            "floor" => floor(&mut run)?,
            "steps" => steps(&mut run).await?,
            "freshness" => freshness(&mut run).await?,
            "ramp" => ramp(&mut run).await?,
            "throughput" => throughput(&mut run).await?,
            "python" => python_throughput(&mut run).await?,
            "steady" => steady(&mut run).await?,
            _ => growth(&mut run, &env_names).await?,
        }
        let minutes = minutes_since(phase_started);
        run.results.phase_minutes.insert(phase.into(), minutes);
        run.save();
    }
    let results = &mut run.results;
    results.finished = Some(chrono::Utc::now().to_rfc3339());
    results.minutes =
        Some(((chrono::Utc::now() - started).num_seconds() as f64 / 60.0 * 10.0).round() / 10.0);
    results.loadavg_end = Some(finite(infra::loadavg()));
    run.save();
    report::write(&s.out_dir, &run.results, s.python.as_deref())?;
    eprintln!(
        "[bench] results: {}",
        s.out_dir.join("results.json").display()
    );
    Ok(())
}

/// The phases, in the order they run (BENCH_PHASES picks among them).
const PHASES: [&str; 8] = [
    "floor",
    "steps",
    "freshness",
    "ramp",
    "throughput",
    "python",
    "growth",
    "steady",
];

/// A run in progress: its settings and what it has measured so far.
struct Run<'a> {
    s: &'a Settings,
    results: Results,
}

impl Run<'_> {
    /// results.json as it stands (rewritten after every measurement).
    fn save(&self) {
        let _ = std::fs::write(
            self.s.out_dir.join("results.json"),
            serde_json::to_string_pretty(&self.results).unwrap(),
        );
    }
}

/// What a run records about itself before it measures anything.
fn run_header(
    s: &Settings,
    started: chrono::DateTime<chrono::Utc>,
    env_names: &[String],
) -> Results {
    let defaults_env = [(
        "DATABASE_URL".to_owned(),
        "postgres://postgres@127.0.0.1:5432/x".to_owned(),
    )];
    Results {
        run_id: s.run_id.clone(),
        started: started.to_rfc3339(),
        quick: s.quick,
        machine: infra::machine(),
        git: git_describe(),
        refit_binary: infra::REFIT_BIN.to_owned(),
        refit_env_names: env_names.to_vec(),
        refit_defaults: infra::refit_config(&defaults_env).into_iter().collect(),
        python_params: phases::refit_default_params(),
        settings: format!("{s:?}"),
        refit_extra_env: s
            .refit_extra_env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
        loadavg_start: finite(infra::loadavg()),
        // The knobs this run was started with (BENCH_*, and the allocator setting make bench adds).
        bench_env: std::env::vars()
            .filter(|(k, _)| k.starts_with("BENCH_") || k == "MALLOC_ARENA_MAX")
            .collect(),
        ..Results::default()
    }
}

/// The floor, BENCH_REPEAT times: the last repeat, with every repeat.
fn floor(run: &mut Run<'_>) -> anyhow::Result<()> {
    let mut repeats = Vec::new();
    for _ in 0..run.s.repeat {
        repeats.push(tokio::task::block_in_place(|| scenarios::floor(run.s)).context("floor")?);
    }
    if let Some(last) = repeats.last().cloned() {
        run.results.floor = Some(results::Floor { repeats, ..last });
    }
    run.save();
    Ok(())
}

/// Scenario 1: both model sizes, both implementations, BENCH_REPEAT times.
async fn steps(run: &mut Run<'_>) -> anyhow::Result<()> {
    let s = run.s;
    for repeat in 1..=s.repeat {
        for trees in [100, 1000] {
            let refit = scenarios::steps(s, trees, repeat, Implementation::Refit)
                .await
                .with_context(|| format!("steps, {trees} trees, refit"))?;
            let python = match &s.python {
                Some(python) => Some(
                    scenarios::steps(s, trees, repeat, Implementation::python(python))
                        .await
                        .with_context(|| format!("steps, {trees} trees, Python"))?,
                ),
                None => None,
            };
            let entry = results::StepsEntry {
                trees: trees.into(),
                repeat,
                refit,
                python,
            };
            run.results.steps.get_or_insert_with(Vec::new).push(entry);
            run.save();
        }
    }
    Ok(())
}

/// Scenario 2: every rate, BENCH_REPEAT times; refit's runs under "freshness", the Python
/// reference's (same data, rates and repeats) under "freshness_python".
async fn freshness(run: &mut Run<'_>) -> anyhow::Result<()> {
    let s = run.s;
    for repeat in 1..=s.repeat {
        for &rate in &s.fresh_rates {
            let mut fresh = phases::freshness(s, rate, &Implementation::Refit)
                .await
                .with_context(|| format!("freshness at {rate}/s"))?;
            fresh.repeat = repeat;
            run.results
                .freshness
                .get_or_insert_with(Vec::new)
                .push(fresh);
            run.save();
            if let Some(python) = &s.python {
                let which = Implementation::Python {
                    python,
                    peer: fresh_python_peer()?,
                };
                let mut fresh = phases::freshness(s, rate, &which)
                    .await
                    .with_context(|| format!("freshness at {rate}/s, Python"))?;
                fresh.repeat = repeat;
                let runs = run.results.freshness_python.get_or_insert_with(Vec::new);
                runs.push(fresh);
                run.save();
            }
        }
    }
    Ok(())
}

/// Scenario 3: refit's ladder, then the Python reference's.
async fn ramp(run: &mut Run<'_>) -> anyhow::Result<()> {
    let s = run.s;
    let refit = scenarios::ramp(s, Implementation::Refit, &s.ramp_refit)
        .await
        .context("ramp, refit")?;
    run.results.ramp = Some(results::Ramp {
        refit,
        python: None,
    });
    run.save();
    if let Some(python) = &s.python {
        let python = scenarios::ramp(s, Implementation::python(python), &s.ramp_python)
            .await
            .context("ramp, Python")?;
        if let Some(ramp) = &mut run.results.ramp {
            ramp.python = Some(python);
        }
        run.save();
    }
    Ok(())
}

/// refit's drain.
async fn throughput(run: &mut Run<'_>) -> anyhow::Result<()> {
    let refit = phases::throughput(run.s, Implementation::Refit)
        .await
        .context("refit throughput")?;
    run.results.throughput_refit = Some(refit);
    run.save();
    Ok(())
}

/// The Python side's drains, one per entry of BENCH_PYTHON_SHARDS (or why not); the last is the
/// one the report compares with, the others are kept beside it.
async fn python_throughput(run: &mut Run<'_>) -> anyhow::Result<()> {
    let Some(python) = &run.s.python else {
        run.results.throughput_python = Some(PythonThroughput::Skipped {
            skipped: "BENCH_PYTHON not set (scripts/bench-tools.sh prints it)".into(),
        });
        run.save();
        return Ok(());
    };
    let peers = python_shards(
        "BENCH_PYTHON_SHARDS",
        &std::env::var("BENCH_PYTHON_SHARDS").unwrap_or_else(|_| "2".into()),
    )?;
    for (i, peer) in peers.iter().enumerate() {
        let which = Implementation::Python {
            python,
            peer: *peer,
        };
        let tp = phases::throughput(run.s, which)
            .await
            .with_context(|| format!("Python throughput ({peer:?} shards)"))?;
        if i + 1 < peers.len() {
            run.results.throughput_python_other_runs.push(tp);
        } else {
            run.results.throughput_python = Some(PythonThroughput::Ran(Box::new(tp)));
        }
        run.save();
    }
    Ok(())
}

/// BENCH_PYTHON_SHARDS (the `python` drain; default `2`): comma-separated runs, each a number
/// of processes: `0` the straightforward reference (one process, Booster load), n ≥ 1 the peer
/// run (n processes sharded by user, model bytes straight to `xgb.train`).
fn python_shards(knob: &str, value: &str) -> anyhow::Result<Vec<Option<usize>>> {
    let runs = value
        .split(',')
        .map(|v| match v.trim().parse::<usize>() {
            Ok(0) => Ok(None),
            Ok(n) => Ok(Some(n)),
            Err(_) => anyhow::bail!("{knob}: {v:?} is not a number of processes"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!runs.is_empty(), "{knob} is empty");
    Ok(runs)
}

/// BENCH_FRESH_PYTHON_SHARDS (freshness; default `0`, the straightforward reference): one value,
/// as in BENCH_PYTHON_SHARDS.
fn fresh_python_peer() -> anyhow::Result<Option<usize>> {
    let value = std::env::var("BENCH_FRESH_PYTHON_SHARDS").unwrap_or_else(|_| "0".into());
    match python_shards("BENCH_FRESH_PYTHON_SHARDS", &value)?.as_slice() {
        [one] => Ok(*one),
        _ => anyhow::bail!("BENCH_FRESH_PYTHON_SHARDS takes one value"),
    }
}

/// Growth: every BENCH_GROWTH run.
async fn growth(run: &mut Run<'_>, env_names: &[String]) -> anyhow::Result<()> {
    let s = run.s;
    for (cap, retrains) in &s.growth_runs {
        let growth = phases::growth(s, cap, *retrains, env_names)
            .await
            .with_context(|| format!("growth, cap {cap}"))?;
        run.results.growth.get_or_insert_with(Vec::new).push(growth);
        run.save();
    }
    Ok(())
}

/// The steady-state phase (not a default phase).
async fn steady(run: &mut Run<'_>) -> anyhow::Result<()> {
    let steady = steady::steady(run.s).await.context("steady")?;
    run.results.steady = Some(steady);
    run.save();
    Ok(())
}

fn minutes_since(t: std::time::Instant) -> f64 {
    (t.elapsed().as_secs_f64() / 60.0 * 100.0).round() / 100.0
}

fn git_describe() -> results::Git {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let dirty_src = run(&[
        "status",
        "--porcelain",
        "--",
        "src",
        "migrations",
        "Cargo.toml",
    ]);
    results::Git {
        commit: run(&["rev-parse", "--short", "HEAD"]),
        src_uncommitted_changes: !dirty_src.is_empty(),
    }
}

/// The results.json whose report to re-render, if asked (`--report <path>`, BENCH_RESUMMARIZE).
fn report_path() -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--report")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var("BENCH_RESUMMARIZE").ok())
}

/// The report of an earlier run, from its results.json, next to it.
fn report_only(path: &str, python: Option<&str>) -> anyhow::Result<()> {
    let results: results::Results = serde_json::from_str(&std::fs::read_to_string(path)?)
        .with_context(|| format!("{path} is not a results.json"))?;
    let out_dir = std::path::Path::new(path)
        .parent()
        .context("results.json has a folder")?;
    report::write(out_dir, &results, python)
}
