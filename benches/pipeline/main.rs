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
//!   train time, artifact size and trees per version.
//!
//! BENCH_REPEAT (3; 1 with BENCH_QUICK) repeats floor, steps and freshness; the report gives
//! medians with the [min–max] spread. Every phase shows a progress bar on stderr.
//!
//! Nothing here asserts a time: results go to target/bench/<run>/ (results.json, summary.md,
//! benchmarks.png, every child's log) and summary.md is printed at the end. A full run (not
//! BENCH_QUICK) also rewrites BENCHMARKS.md between its `bench:results` markers and
//! benchmarks.png. BENCH_QUICK=1 runs smaller sizes.

mod infra;
mod phases;
mod report;
mod results;
mod scenarios;
mod stats;

use anyhow::Context;
use serde_json::{json, Value};

use infra::Settings;

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes --bench; nothing else is accepted.
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
    infra::drop_stale_databases(&s).await?;
    let env_names = infra::refit_env_names();
    let mut results = json!({
        "run_id": s.run_id,
        "started": started.to_rfc3339(),
        "quick": s.quick,
        "machine": infra::machine(),
        "git": git_describe(),
        "refit_binary": infra::REFIT_BIN,
        "refit_env_names": env_names,
        "refit_defaults": infra::refit_config(&[("DATABASE_URL".into(), "postgres://postgres@127.0.0.1:5432/x".into())])
            .into_iter().map(|(k, v)| (k, json!(v))).collect::<serde_json::Map<_, _>>(),
        "python_params": phases::refit_default_params(),
        "settings": format!("{s:?}"),
        "refit_extra_env": s.refit_extra_env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "loadavg_start": infra::loadavg(),
        "phase_minutes": {},
        // The knobs this run was started with (BENCH_*, and the allocator setting make bench adds).
        "bench_env": std::env::vars()
            .filter(|(k, _)| k.starts_with("BENCH_") || k == "MALLOC_ARENA_MAX")
            .collect::<std::collections::BTreeMap<_, _>>(),
    });
    let save = |results: &Value| {
        let _ = std::fs::write(
            s.out_dir.join("results.json"),
            serde_json::to_string_pretty(results).unwrap(),
        );
    };

    results["redis_floor"] = phases::redis_floor(&s).await.context("Redis DEL floor")?;
    save(&results);
    if s.wants("floor") {
        let phase_started = std::time::Instant::now();
        let mut runs = Vec::new();
        for _ in 0..s.repeat {
            runs.push(tokio::task::block_in_place(|| scenarios::floor(&s)).context("floor")?);
        }
        let mut floor = runs.last().cloned().unwrap_or(Value::Null);
        floor["repeats"] = json!(runs);
        results["floor"] = floor;
        save(&results);
        results["phase_minutes"]["floor"] = json!(minutes_since(phase_started));
        save(&results);
    }
    if s.wants("steps") {
        let phase_started = std::time::Instant::now();
        let mut runs = Vec::new();
        for repeat in 1..=s.repeat {
            for trees in [100, 1000] {
                let refit = scenarios::steps(&s, trees, repeat, phases::Implementation::Refit)
                    .await
                    .with_context(|| format!("steps, {trees} trees, refit"))?;
                let python = match &s.python {
                    Some(python) => Some(
                        scenarios::steps(
                            &s,
                            trees,
                            repeat,
                            phases::Implementation::Python { python },
                        )
                        .await
                        .with_context(|| format!("steps, {trees} trees, Python"))?,
                    ),
                    None => None,
                };
                runs.push(
                    json!({"trees": trees, "repeat": repeat, "refit": refit, "python": python}),
                );
                results["steps"] = json!(runs);
                save(&results);
            }
        }
        results["phase_minutes"]["steps"] = json!(minutes_since(phase_started));
        save(&results);
    }
    if s.wants("freshness") {
        let phase_started = std::time::Instant::now();
        // refit's runs under "freshness", the Python reference's (same data, rates and
        // repeats) under "freshness_python".
        let (mut runs, mut python_runs) = (Vec::new(), Vec::new());
        for repeat in 1..=s.repeat {
            for &rate in &s.fresh_rates {
                let mut run = phases::freshness(&s, rate, &phases::Implementation::Refit)
                    .await
                    .with_context(|| format!("freshness at {rate}/s"))?;
                run["repeat"] = json!(repeat);
                runs.push(run);
                results["freshness"] = json!(runs);
                save(&results);
                if let Some(python) = &s.python {
                    let which = phases::Implementation::Python { python };
                    let mut run = phases::freshness(&s, rate, &which)
                        .await
                        .with_context(|| format!("freshness at {rate}/s, Python"))?;
                    run["repeat"] = json!(repeat);
                    python_runs.push(run);
                    results["freshness_python"] = json!(python_runs);
                    save(&results);
                }
            }
        }
        results["phase_minutes"]["freshness"] = json!(minutes_since(phase_started));
        save(&results);
    }
    if s.wants("ramp") {
        let phase_started = std::time::Instant::now();
        let refit = scenarios::ramp(&s, phases::Implementation::Refit, &s.ramp_refit)
            .await
            .context("ramp, refit")?;
        results["ramp"] = json!({ "refit": refit });
        save(&results);
        if let Some(python) = &s.python {
            results["ramp"]["python"] = scenarios::ramp(
                &s,
                phases::Implementation::Python { python },
                &s.ramp_python,
            )
            .await
            .context("ramp, Python")?;
            save(&results);
        }
        results["phase_minutes"]["ramp"] = json!(minutes_since(phase_started));
        save(&results);
    }
    if s.wants("throughput") {
        let phase_started = std::time::Instant::now();
        results["throughput_refit"] = phases::throughput(&s, phases::Implementation::Refit)
            .await
            .context("refit throughput")?;
        save(&results);
        results["phase_minutes"]["throughput"] = json!(minutes_since(phase_started));
        save(&results);
    }
    if s.wants("python") {
        let phase_started = std::time::Instant::now();
        match &s.python {
            Some(python) => {
                results["throughput_python"] =
                    phases::throughput(&s, phases::Implementation::Python { python })
                        .await
                        .context("Python throughput")?;
            }
            None => {
                results["throughput_python"] =
                    json!({"skipped": "BENCH_PYTHON not set (scripts/bench-tools.sh prints it)"})
            }
        }
        save(&results);
        results["phase_minutes"]["python"] = json!(minutes_since(phase_started));
        save(&results);
    }
    if s.wants("growth") {
        let phase_started = std::time::Instant::now();
        let mut runs = Vec::new();
        for (cap, retrains) in &s.growth_runs {
            runs.push(
                phases::growth(&s, cap, *retrains, &env_names)
                    .await
                    .with_context(|| format!("growth, cap {cap}"))?,
            );
            results["growth"] = json!(runs);
            save(&results);
        }
        results["phase_minutes"]["growth"] = json!(minutes_since(phase_started));
        save(&results);
    }
    results["finished"] = json!(chrono::Utc::now().to_rfc3339());
    results["minutes"] =
        json!(((chrono::Utc::now() - started).num_seconds() as f64 / 60.0 * 10.0).round() / 10.0);
    results["loadavg_end"] = json!(infra::loadavg());
    save(&results);
    let typed: results::Results =
        serde_json::from_value(results).context("the results as typed")?;
    report::write(&s.out_dir, &typed, s.python.as_deref())?;
    eprintln!(
        "[bench] results: {}",
        s.out_dir.join("results.json").display()
    );
    Ok(())
}

fn minutes_since(t: std::time::Instant) -> f64 {
    (t.elapsed().as_secs_f64() / 60.0 * 100.0).round() / 100.0
}

fn git_describe() -> Value {
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
    json!({
        "commit": run(&["rev-parse", "--short", "HEAD"]),
        "src_uncommitted_changes": !dirty_src.is_empty(),
    })
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
