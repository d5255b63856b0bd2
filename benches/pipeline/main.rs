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
mod scenarios;
mod stats;

use std::fmt::Write as _;

use anyhow::Context;
use serde_json::{json, Value};

use infra::Settings;
use stats::{f, verdict};

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes --bench; nothing else is accepted.
    let mut settings = Settings::from_env()?;
    // Re-render the report (summary, chart, BENCHMARKS.md) of an earlier run without running it.
    if let Ok(path) = std::env::var("BENCH_RESUMMARIZE") {
        let results: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("{path} is not a results.json"))?;
        settings.out_dir = std::path::Path::new(&path)
            .parent()
            .context("results.json has a folder")?
            .to_path_buf();
        settings.quick = results["quick"].as_bool().unwrap_or(true);
        let summary = summarize(&results);
        std::fs::write(settings.out_dir.join("summary.md"), &summary)?;
        println!("{summary}");
        chart_and_document(&settings, &summary);
        return Ok(());
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
    let summary = summarize(&results);
    std::fs::write(s.out_dir.join("summary.md"), &summary)?;
    println!("{summary}");
    chart_and_document(&s, &summary);
    eprintln!(
        "[bench] results: {}",
        s.out_dir.join("results.json").display()
    );
    Ok(())
}

/// The PNG chart (scripts/bench-chart.py, with the bench venv's matplotlib) next to the results
/// and, for a full run, the results section of BENCHMARKS.md and benchmarks.png at the top level.
fn chart_and_document(s: &Settings, summary: &str) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let document = !s.quick && std::env::var("BENCH_WRITE_DOC").map_or(true, |v| v != "0");
    let chart = s.out_dir.join("benchmarks.png");
    if let Some(python) = &s.python {
        let made = std::process::Command::new(python)
            .arg(root.join("scripts/bench-chart.py"))
            .arg(s.out_dir.join("results.json"))
            .arg(&chart)
            .status();
        match made {
            Ok(status) if status.success() => {
                eprintln!("[bench] chart: {}", chart.display());
                if document {
                    let _ = std::fs::copy(&chart, root.join("benchmarks.png"));
                }
            }
            other => eprintln!("[bench] no chart: {other:?}"),
        }
    }
    if !document {
        return;
    }
    let path = root.join("BENCHMARKS.md");
    let (begin, end) = ("<!-- bench:results:begin -->", "<!-- bench:results:end -->");
    let Ok(doc) = std::fs::read_to_string(&path) else {
        return;
    };
    match (doc.find(begin), doc.find(end)) {
        (Some(b), Some(e)) if b < e => {
            let new = format!(
                "{}{begin}\n<!-- written by `make bench`; edits here are overwritten -->\n\n{}\n{}",
                &doc[..b],
                summary.trim_end(),
                &doc[e..]
            );
            match std::fs::write(&path, new) {
                Ok(()) => eprintln!("[bench] results written to {}", path.display()),
                Err(e) => eprintln!("[bench] BENCHMARKS.md not written: {e}"),
            }
        }
        _ => eprintln!("[bench] BENCHMARKS.md has no {begin} … {end} section; not written"),
    }
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

// ------------------------------------------------------------------------------------------------
// summary.md
// ------------------------------------------------------------------------------------------------

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// "p50 / p99" of a summary object.
fn pp(v: &Value) -> String {
    format!("{} / {}", f(num(&v["p50"])), f(num(&v["p99"])))
}

/// A rate as configured: "4", "2.5".
fn rate_txt(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x}")
    }
}

/// "p50 / p99" of the same step over several runs: the medians, with the spread of the p50s.
fn pp_runs(runs: &[&Value], step: &str) -> String {
    if runs.len() == 1 {
        return pp(&runs[0][step]);
    }
    let (_, p50) = spread(&pcts(runs, step, "p50"));
    let (p99, _) = spread(&pcts(runs, step, "p99"));
    format!("{p50} / {}", f(p99))
}

/// `pct` of `step` in each run (runs without that step are left out).
fn pcts(runs: &[&Value], step: &str, pct: &str) -> Vec<f64> {
    runs.iter()
        .map(|run| num(&run[step][pct]))
        .filter(|x| x.is_finite())
        .collect()
}

/// Verdict on the medians (over runs) of p50 and p99.
fn pp_verdict_runs(runs: &[&Value], step: &str, target: f64) -> String {
    let (p50, p99) = (
        spread(&pcts(runs, step, "p50")).0,
        spread(&pcts(runs, step, "p99")).0,
    );
    if !p50.is_finite() {
        return "no samples".into();
    }
    match (p50 <= target, p99 <= target) {
        (true, true) => "met".into(),
        (true, false) => "p50 met, **p99 not met**".into(),
        _ => "**not met**".into(),
    }
}

fn steps_row(out: &mut String, label: &str, runs: &[&Value]) {
    let mut row = format!("| {label} |");
    for step in [
        "read",
        "train",
        "train_load",
        "train_boost",
        "train_save",
        "commit",
        "invalidate",
        "announce",
    ] {
        let _ = write!(row, " {} |", pp_runs(runs, step));
    }
    let _ = writeln!(out, "{row}");
}

/// Runs of a repeated phase grouped by their rate, in the order the rates first appear.
fn by_rate(runs: &[Value]) -> Vec<(f64, Vec<&Value>)> {
    let mut groups: Vec<(f64, Vec<&Value>)> = Vec::new();
    for run in runs {
        let rate = num(&run["rate_batches_per_s"]);
        match groups.iter_mut().find(|(r, _)| *r == rate) {
            Some((_, g)) => g.push(run),
            None => groups.push((rate, vec![run])),
        }
    }
    groups
}

/// `field.pct` of several runs: (median, "median [min–max]").
fn agg(runs: &[&Value], field: &str, pct: &str) -> (f64, String) {
    spread(&pcts(runs, field, pct))
}

fn repeats_note(n: usize) -> String {
    if n > 1 {
        format!(", median of {n} repeats [min–max]")
    } else {
        String::new()
    }
}

pub fn summarize(r: &Value) -> String {
    let mut o = String::new();
    let m = &r["machine"];
    let _ = writeln!(
        o,
        "## Results of run {} ({})\n",
        r["run_id"].as_str().unwrap_or(""),
        r["started"].as_str().unwrap_or("")
    );
    let _ = writeln!(
        o,
        "Machine: {} cores ({}), {} GiB, {}, kernel {}. refit at {}{}; quick mode: {}; run took {} min; load average at start/end {} / {}.\n",
        m["nproc"], m["cpu_model"].as_str().unwrap_or("?"), m["memory_gib"], m["os"].as_str().unwrap_or("?"),
        m["kernel"].as_str().unwrap_or("?"), r["git"]["commit"].as_str().unwrap_or("?"),
        if r["git"]["src_uncommitted_changes"].as_bool() == Some(true) { " (with uncommitted changes in src/)" } else { "" },
        r["quick"], r["minutes"], r["loadavg_start"], r["loadavg_end"],
    );

    if let Some(env) = r["bench_env"].as_object() {
        let knobs: Vec<String> = env
            .iter()
            .filter(|(k, _)| !["BENCH_PYTHON", "MALLOC_ARENA_MAX"].contains(&k.as_str()))
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect();
        let _ = writeln!(
            o,
            "Command: `{}make bench` (`cargo bench --locked --bench pipeline` with the release \
             `refit` binary; MALLOC_ARENA_MAX={}; Python reference: {}).\n",
            knobs.iter().map(|k| format!("{k} ")).collect::<String>(),
            env.get("MALLOC_ARENA_MAX")
                .and_then(Value::as_str)
                .unwrap_or("unset"),
            env.get("BENCH_PYTHON")
                .and_then(Value::as_str)
                .filter(|p| !p.is_empty())
                .unwrap_or("not run"),
        );
    }
    if let Some(phases) = r["phase_minutes"].as_object().filter(|p| !p.is_empty()) {
        let list: Vec<String> = phases
            .iter()
            .map(|(k, v)| format!("{k} {} min", f(num(v))))
            .collect();
        let _ = writeln!(o, "Phases: {}.\n", list.join(", "));
    }
    if let Some(extra) = r["refit_extra_env"].as_array().filter(|a| !a.is_empty()) {
        let _ = writeln!(
            o,
            "refit ran with BENCH_REFIT_ENV: {extra:?} on top of its defaults.\n"
        );
    }
    // ---- targets --------------------------------------------------------------------------------
    let _ = writeln!(o, "### Targets\n");
    let _ = writeln!(o, "| Target | Condition | Measured | Verdict |");
    let _ = writeln!(o, "| --- | --- | --- | --- |");
    let fresh = r["freshness"].as_array().cloned().unwrap_or_default();
    let fresh_py = r["freshness_python"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let tp = &r["throughput_refit"];
    let py = &r["throughput_python"];
    let steps_runs = |trees: i64, implementation: &str| -> Vec<&Value> {
        r["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|run| run["trees"].as_i64() == Some(trees))
            .map(|run| &run[implementation])
            .filter(|v| v.is_object())
            .collect()
    };
    // Per-step sources: scenario 1 (one batch at a time), paced freshness, the saturated drain.
    let mut step_sources: Vec<(String, Vec<&Value>)> = Vec::new();
    for trees in [100, 1000] {
        let runs = steps_runs(trees, "refit");
        if !runs.is_empty() {
            step_sources.push((
                format!(
                    "scenario 1: {} trees, one batch at a time{}",
                    if trees == 1000 { "1,000" } else { "100" },
                    repeats_note(runs.len())
                ),
                runs,
            ));
        }
    }
    for (rate, runs) in by_rate(&fresh) {
        step_sources.push((
            format!(
                "paced, {} batches/s, {} users{}",
                rate_txt(rate),
                runs[0]["users"],
                repeats_note(runs.len())
            ),
            runs.iter().map(|run| &run["steps_ms"]).collect(),
        ));
    }
    if tp.is_object() {
        step_sources.push((
            format!("saturated: {}-user drain, continued (round 2)", tp["users"]),
            vec![&tp["steps_ms"]["round2"]],
        ));
    }
    for (step, target, label) in [
        ("read", 5.0, "read ≤ 5 ms"),
        ("train", 20.0, "train ≤ 20 ms"),
        ("invalidate", 1.0, "Redis DEL ≤ 1 ms"),
    ] {
        for (cond, runs) in &step_sources {
            let _ = writeln!(
                o,
                "| {label} (p50 / p99) | {cond} | {} ms | {} |",
                pp_runs(runs, step),
                pp_verdict_runs(runs, step, target)
            );
        }
    }
    let fresh_py_by_rate = by_rate(&fresh_py);
    for (rate, runs) in by_rate(&fresh) {
        let cond = format!(
            "{} batches/s ({} actuals/s achieved){}",
            rate_txt(rate),
            f(spread(
                &runs
                    .iter()
                    .map(|run| num(&run["actuals_per_s_achieved"]))
                    .collect::<Vec<_>>()
            )
            .0),
            repeats_note(runs.len())
        );
        let (p50, p50_txt) = agg(&runs, "freshness_ms", "p50");
        let (p99, p99_txt) = agg(&runs, "freshness_ms", "p99");
        let _ = writeln!(
            o,
            "| freshness p50 ≤ 25 ms | {cond} | {p50_txt} ms | {} |",
            verdict(p50 <= 25.0)
        );
        let _ = writeln!(
            o,
            "| freshness p99 ≤ 100 ms | {cond} | {p99_txt} ms | {} |",
            verdict(p99 <= 100.0)
        );
        if let Some((_, py_runs)) = fresh_py_by_rate.iter().find(|(r, _)| *r == rate) {
            let (py50, _) = agg(py_runs, "freshness_ms", "p50");
            let (py99, _) = agg(py_runs, "freshness_ms", "p99");
            let _ = writeln!(
                o,
                "| (ratio, scenario 2) | freshness at {} batches/s, p50 / p99: refit {} / {} ms vs Python {} / {} ms | {}× / {}× faster | – |",
                rate_txt(rate), f(p50), f(p99), f(py50), f(py99), f(py50 / p50), f(py99 / p99)
            );
        }
    }
    scenario_targets(&mut o, r);
    let rate = |t: &Value, round: usize| num(&t["rounds"][round]["retrains_per_s"]);
    if tp.is_object() {
        let users = &tp["users"];
        let _ = writeln!(
            o,
            "| ≥ 200 retrains/s | {users} users, continued training (round 2) | {} /s | {} |",
            f(rate(tp, 1)),
            verdict(rate(tp, 1) >= 200.0)
        );
        let _ = writeln!(o, "| (same, first retrain of each user) | {users} users, fresh models (round 1) | {} /s | {} |", f(rate(tp, 0)), verdict(rate(tp, 0) >= 200.0));
        if py["rounds"].is_array() {
            for (round, label) in [
                (1, "continued training (round 2)"),
                (0, "fresh models (round 1)"),
            ] {
                let ratio = rate(tp, round) / rate(py, round);
                let _ = writeln!(o, "| ≥ 5× Python | {users} users, {label}: refit {} /s vs Python {} /s | {}× | {} |", f(rate(tp, round)), f(rate(py, round)), f(ratio), verdict(ratio >= 5.0));
            }
        } else if !r["ramp"]["python"].is_object() {
            let _ = writeln!(
                o,
                "| ≥ 5× Python | – | not measured: {} | – |",
                py["skipped"].as_str().unwrap_or("phase not run")
            );
        }
        let hwm = num(&tp["memory"]["vm_hwm_mb"]);
        let _ = writeln!(
            o,
            "| RSS ≤ 100 MB | {users} users, whole throughput run (VmHWM) | {} MB | {} |",
            f(hwm),
            verdict(hwm <= 100.0)
        );
    }
    for g in r["growth"].as_array().cloned().unwrap_or_default() {
        if g["skipped"].is_string() {
            let _ = writeln!(
                o,
                "| growth | REFIT_MAX_TREES={} | skipped: {} | – |",
                g["cap"].as_str().unwrap_or(""),
                g["skipped"].as_str().unwrap_or("")
            );
            continue;
        }
        let sm = &g["summary"];
        let cap = g["effective_config"]["REFIT_MAX_TREES"]
            .as_str()
            .unwrap_or("?")
            .to_owned();
        let cond = format!("REFIT_MAX_TREES={cap}, {} retrains", sm["last_version"]);
        // Verdict on the typical (median) retrain of the last 100 against the 10th retrain
        // (median of versions 8–12, one sample is too noisy); the worst of the last 100 is shown.
        let base_t = num(&sm["median_train_ms_v8_12"]);
        let base_b = num(&sm["median_bytes_v8_12"]);
        let t_ratio = num(&sm["p50_train_ms_last100"]) / base_t;
        let tmax_ratio = num(&sm["max_train_ms_last100"]) / base_t;
        let b_ratio = num(&sm["median_bytes_last100"]) / base_b;
        let bmax_ratio = num(&sm["max_bytes_last100"]) / base_b;
        let _ = writeln!(o, "| growth: train time ≤ 2× the 10th retrain's | {cond} | median of the last 100 {} ms vs {} ms (v8–12) = {}×; worst of the last 100 {}× | {} |",
            f(num(&sm["p50_train_ms_last100"])), f(base_t), f(t_ratio), f(tmax_ratio), verdict(t_ratio <= 2.0));
        let _ = writeln!(o, "| growth: model size ≤ 2× the 10th retrain's | {cond} | median of the last 100 {} KB vs {} KB (v8–12) = {}×; largest of the last 100 {}× | {} |",
            f(num(&sm["median_bytes_last100"]) / 1024.0), f(base_b / 1024.0), f(b_ratio), f(bmax_ratio), verdict(b_ratio <= 2.0));
    }

    let _ = writeln!(o);
    scenario_details(&mut o, r);
    // ---- freshness detail -----------------------------------------------------------------------
    for (rate, runs) in by_rate(&fresh) {
        let py_runs: Vec<&Value> = fresh_py_by_rate
            .iter()
            .find(|(r, _)| *r == rate)
            .map(|(_, g)| g.clone())
            .unwrap_or_default();
        let first = runs[0];
        let _ = writeln!(o, "\n### Freshness at {} batches/s\n", rate_txt(rate));
        let _ = writeln!(o, "{} users, {} warm-up retrains each; per run {} actuals inserted one per autocommitted INSERT (target {} /s, achieved {} /s, worst insert lag {} ms) and {} batches completed; {} run(s) of refit{}. Every cell is the median over the runs{}.\n",
            first["users"], first["warm_retrains_per_user"], first["actuals_inserted"], first["actuals_per_s_target"],
            f(spread(&runs.iter().map(|run| num(&run["actuals_per_s_achieved"])).collect::<Vec<_>>()).0),
            first["max_insert_lag_ms"], first["batches_completed"], runs.len(),
            if py_runs.is_empty() { String::new() } else { format!(" and {} of the Python reference on the same rows", py_runs.len()) },
            if runs.len() > 1 { " with [min–max]" } else { "" });
        let _ = writeln!(o, "| Interval (ms) | p50 | p95 | p99 | max |");
        let _ = writeln!(o, "| --- | --- | --- | --- | --- |");
        let line = |o: &mut String, name: &str, runs: &[&Value], field: &str| {
            if pcts(runs, field, "p50").is_empty() {
                return;
            }
            let _ = writeln!(
                o,
                "| {name} | {} | {} | {} | {} |",
                agg(runs, field, "p50").1,
                agg(runs, field, "p95").1,
                agg(runs, field, "p99").1,
                agg(runs, field, "max").1,
            );
        };
        line(
            &mut o,
            "**refit: commit of the 50th actual → event read**",
            &runs,
            "freshness_ms",
        );
        if !py_runs.is_empty() {
            line(
                &mut o,
                "**Python: commit of the 50th actual → event read**",
                &py_runs,
                "freshness_ms",
            );
        }
        line(
            &mut o,
            "refit: INSERT sent → event read",
            &runs,
            "freshness_from_insert_sent_ms",
        );
        line(
            &mut o,
            "refit: data_until (trigger time) → event read",
            &runs,
            "freshness_from_data_until_ms",
        );
        let breakdown: Vec<&Value> = runs.iter().map(|run| &run["breakdown_ms"]).collect();
        if let Some(b) = first["breakdown_ms"].as_object() {
            for k in b.keys() {
                line(&mut o, &format!("refit: {}", &k[2..]), &breakdown, k);
            }
        }
        let cpu = |runs: &[&Value], key: &str| {
            f(spread(
                &runs
                    .iter()
                    .map(|run| num(&run["cpu"][key]))
                    .collect::<Vec<_>>(),
            )
            .0)
        };
        let _ = writeln!(o, "\nDuring the paced inserts (medians over the runs): refit used {} cores ({} CPU ms per retrain), its PostgreSQL backends {} cores ({} ms per retrain), the rest of the machine {} cores (the inserting bench, PostgreSQL for the inserts, tansu, Redis, anything else running); refit VmHWM {} MB; statuses of the first run {}, log warnings {}, errors {}.",
            cpu(&runs, "process_cores"), cpu(&runs, "process_cpu_ms_per_retrain"), cpu(&runs, "its_postgres_cores"), cpu(&runs, "postgres_cpu_ms_per_retrain"), cpu(&runs, "rest_of_machine_cores"),
            f(spread(&runs.iter().map(|run| num(&run["refit_memory"]["vm_hwm_mb"])).collect::<Vec<_>>()).0),
            first["statuses"], first["refit_logs"]["warnings"], first["refit_logs"]["errors"]);
        if !py_runs.is_empty() {
            let _ = writeln!(o, "The Python reference: {} cores ({} CPU ms per retrain), its PostgreSQL backends {} cores ({} ms per retrain); statuses of its first run {}.",
                cpu(&py_runs, "process_cores"), cpu(&py_runs, "process_cpu_ms_per_retrain"), cpu(&py_runs, "its_postgres_cores"), cpu(&py_runs, "postgres_cpu_ms_per_retrain"), py_runs[0]["statuses"]);
        }
    }

    // ---- per-step detail ------------------------------------------------------------------------
    let _ = writeln!(
        o,
        "\n### Per-step cost, ms (p50 / p99; over repeats: median p50 [min–max] / median p99)\n"
    );
    let _ = writeln!(o, "| Condition | read | train | ↳ load | ↳ boost | ↳ save | commit | invalidate (DEL) | announce (ack) |");
    let _ = writeln!(o, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (cond, runs) in &step_sources {
        steps_row(&mut o, &format!("refit, {cond}"), runs);
    }
    for trees in [100, 1000] {
        let runs = steps_runs(trees, "python");
        if !runs.is_empty() {
            steps_row(
                &mut o,
                &format!(
                    "Python, scenario 1: {trees} trees, one batch at a time{}",
                    repeats_note(runs.len())
                ),
                &runs,
            );
        }
    }
    for (rate, runs) in &fresh_py_by_rate {
        steps_row(
            &mut o,
            &format!(
                "Python, paced, {} batches/s{}",
                rate_txt(*rate),
                repeats_note(runs.len())
            ),
            &runs.iter().map(|run| &run["steps_ms"]).collect::<Vec<_>>(),
        );
    }
    if tp.is_object() {
        steps_row(
            &mut o,
            "refit, saturated, fresh models (round 1)",
            &[&tp["steps_ms"]["round1"]],
        );
    }
    if py["rounds"].is_array() {
        for (round, label) in [
            ("round2", "continued (round 2)"),
            ("round1", "fresh (round 1)"),
        ] {
            let st = &py["steps_ms"][round];
            let _ = writeln!(
                o,
                "| Python, {label} | {} | {} | {} | {} | {} | {} | {} | {} |",
                pp(&st["read"]),
                pp(&st["train"]),
                pp(&st["load"]),
                pp(&st["boost"]),
                pp(&st["save"]),
                pp(&st["commit"]),
                pp(&st["invalidate"]),
                py["steps_ms"]["summary"]["announce_ms"]
                    .as_object()
                    .map(|a| format!(
                        "{} / {} (both rounds)",
                        f(num(&a["p50"])),
                        f(num(&a["p99"]))
                    ))
                    .unwrap_or("–".into())
            );
        }
    }
    let _ = writeln!(
        o,
        "\nRedis DEL from the bench process itself (the floor): {} ms (p50 / p99).",
        pp(&r["redis_floor"]["del"])
    );
    let _ = writeln!(o, "refit's `read` is the pending-rows query inside the retrain transaction; `train` spans load + boost + save + validation scoring; `commit` is insert version, consume rows, outbox, COMMIT; `invalidate` is the DEL inside the outbox delivery; `announce` is produce → broker ack. Python's `read` is loading the user's latest model row (its actuals were read by the poll).");

    // ---- throughput detail ----------------------------------------------------------------------
    let _ = writeln!(o, "\n### Throughput\n");
    let _ = writeln!(o, "Retrains/s are counted up to the broker's acknowledgement of the last event (each implementation logs it); the consumer reading the topic lagged behind the acks by the amount shown.\n");
    let _ = writeln!(o, "| Implementation | Round | Retrains | Load (s) | Commit → last ack (s) | **Retrains/s** (acked) | 5-s windows p50 / min (/s) | Retrains/s up to the last event read | Consumer lag behind ack p50 / max (ms) | CPU ms per retrain: process / its PostgreSQL backends | Cores used: process / PostgreSQL / rest of machine | Memory VmHWM (MB) |");
    let _ = writeln!(
        o,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for (name, t) in [("refit", tp), ("Python", py)] {
        for round in t["rounds"].as_array().cloned().unwrap_or_default() {
            let c = &round["cpu"];
            let _ = writeln!(o, "| {name} | {} ({}) | {}{} | {} | {} | **{}** | {} / {} | {} | {} / {} | {} / {} | {} / {} / {} | {} |",
                round["round"], round["kind"].as_str().unwrap_or(""), round["acked"], if round["complete"].as_bool() == Some(true) { "" } else { " (incomplete)" },
                f(num(&round["load_seconds"])), f(num(&round["seconds_commit_to_last_ack"])),
                f(num(&round["retrains_per_s"])), f(num(&round["windows_5s_per_s"]["p50"])), f(num(&round["windows_5s_per_s"]["min"])),
                f(num(&round["retrains_per_s_read"])),
                f(num(&round["consumer_lag_behind_ack_ms"]["p50"])), f(num(&round["consumer_lag_behind_ack_ms"]["max"])),
                f(num(&c["process_cpu_ms_per_retrain"])), f(num(&c["postgres_cpu_ms_per_retrain"])),
                f(num(&c["process_cores"])), f(num(&c["its_postgres_cores"])), f(num(&c["rest_of_machine_cores"])),
                f(num(&t["memory"]["vm_hwm_mb"])));
        }
    }
    if tp.is_object() {
        let _ = writeln!(
            o,
            "\nrefit statuses: {}; versions: {}; log warnings {}, errors {}.",
            tp["statuses"],
            tp["steps_ms"]["version_statuses"],
            tp["logs"]["warnings"],
            tp["logs"]["errors"]
        );
    }
    if py["steps_ms"]["summary"].is_object() {
        let _ = writeln!(o, "Python summary: {}.", py["steps_ms"]["summary"]);
    }

    // ---- growth detail --------------------------------------------------------------------------
    for g in r["growth"].as_array().cloned().unwrap_or_default() {
        if g["skipped"].is_string() {
            continue;
        }
        let _ = writeln!(
            o,
            "\n### Growth, REFIT_MAX_TREES={} ({})\n",
            g["effective_config"]["REFIT_MAX_TREES"]
                .as_str()
                .unwrap_or("?"),
            g["effective_config"]
        );
        let sm = &g["summary"];
        let _ = writeln!(
            o,
            "{} retrains in {} s; versions by source {}, by status {}; refit VmHWM {} MB.\n",
            sm["retrains"],
            f(num(&sm["seconds"])),
            sm["versions_by_source"],
            sm["versions_by_status"],
            g["memory"]["vm_hwm_mb"]
        );
        let _ = writeln!(o, "| Version | Status | Source | Trees | Model (KB) | read (ms) | train (ms) | ↳ load | ↳ boost | ↳ save |");
        let _ = writeln!(
            o,
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        let versions = g["versions"].as_array().cloned().unwrap_or_default();
        let last = versions.len();
        let mut compactions_shown = 0;
        for v in &versions {
            let ver = v["version"].as_u64().unwrap_or(0) as usize;
            let compaction = v["source"].as_str().unwrap_or("").starts_with("compaction");
            if compaction {
                compactions_shown += 1;
            }
            let show = [1, 2, 10, 20, 50].contains(&ver)
                || ver % 100 == 0
                || ver == last
                || (compaction && compactions_shown <= 3);
            if !show {
                continue;
            }
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                ver,
                v["status"].as_str().unwrap_or(""),
                v["source"].as_str().unwrap_or(""),
                v["trees"],
                f(num(&v["bytes"]) / 1024.0),
                f(num(&v["read_ms"])),
                f(num(&v["train_ms"])),
                f(num(&v["load_ms"])),
                f(num(&v["boost_ms"])),
                f(num(&v["save_ms"]))
            );
        }
    }
    o
}

// ------------------------------------------------------------------------------------------------
// Scenarios 1 and 3 and the floor (scenarios.rs)
// ------------------------------------------------------------------------------------------------

/// The median of some values, and their spread when there are several: "x" or "x [min–max]".
fn spread(values: &[f64]) -> (f64, String) {
    let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (f64::NAN, "–".into());
    }
    let m = stats::median(&v);
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if v.len() == 1 {
        (m, f(m))
    } else {
        (m, format!("{} [{}–{}]", f(m), f(lo), f(hi)))
    }
}

/// p50 of `step` of `implementation` over the repeats of scenario 1 at `trees` trees.
fn step_p50s(r: &Value, trees: i64, implementation: &str, step: &str) -> Vec<f64> {
    step_pcts(r, trees, implementation, step, "p50")
}

/// `pct` of `step` of `implementation` over the repeats of scenario 1 at `trees` trees.
fn step_pcts(r: &Value, trees: i64, implementation: &str, step: &str, pct: &str) -> Vec<f64> {
    r["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|run| run["trees"].as_i64() == Some(trees))
        .map(|run| num(&run[implementation][step][pct]))
        .filter(|x| x.is_finite())
        .collect()
}

/// The highest rate of the ramp that kept up: the step's nominal rate when the writer achieved
/// it (within 2 %: the step's wall time includes its last write), else what it achieved.
fn sustained_rate(ramp: &Value) -> f64 {
    ramp["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|step| step["kept_up"].as_bool() == Some(true))
        .map(|step| {
            let (rate, offered) = (num(&step["rate"]), num(&step["offered_per_s"]));
            if offered >= 0.98 * rate {
                rate
            } else {
                offered
            }
        })
        .fold(0.0, f64::max)
}

fn scenario_targets(o: &mut String, r: &Value) {
    let ramp = &r["ramp"];
    let sustained = |i: &str| sustained_rate(&ramp[i]);
    if ramp["refit"].is_object() {
        let users = &ramp["refit"]["users"];
        let _ = writeln!(
            o,
            "| ≥ 200 retrains/s sustained | {users} users, arrival rate raised until the backlog grows (scenario 3) | {} /s | {} |",
            f(sustained("refit")),
            verdict(sustained("refit") >= 200.0)
        );
        if ramp["python"].is_object() {
            let ratio = sustained("refit") / sustained("python");
            let _ = writeln!(
                o,
                "| ≥ 5× Python | sustained rate, scenario 3: refit {} /s vs Python {} /s | {}× | {} |",
                f(sustained("refit")),
                f(sustained("python")),
                f(ratio),
                verdict(ratio >= 5.0)
            );
        }
        let hwm = num(&ramp["refit"]["vm_hwm_mb"]);
        let python_hwm = num(&ramp["python"]["vm_hwm_mb"]);
        let _ = writeln!(
            o,
            "| RSS ≤ 100 MB | {users} users, whole ramp (VmHWM){} | {} MB | {} |",
            if python_hwm.is_finite() {
                format!("; the Python reference's: {} MB", f(python_hwm))
            } else {
                String::new()
            },
            f(hwm),
            verdict(hwm <= 100.0)
        );
    }
    for trees in [100, 1000] {
        let (refit, _) = spread(&step_p50s(r, trees, "refit", "end_to_end"));
        let (python, _) = spread(&step_p50s(r, trees, "python", "end_to_end"));
        if refit.is_finite() && python.is_finite() {
            let _ = writeln!(
                o,
                "| (ratio, scenario 1) | one retrain on {trees} trees, batch commit → event read, p50: refit {} ms vs Python {} ms | {}× faster | – |",
                f(refit),
                f(python),
                f(python / refit)
            );
        }
    }
}

fn scenario_details(o: &mut String, r: &Value) {
    let repeats = r["steps"]
        .as_array()
        .map_or(0, |a| a.iter().filter(|x| x["trees"] == 100).count());
    let batches = r["steps"][0]["refit"]["end_to_end"]["n"]
        .as_u64()
        .unwrap_or(0);
    for (pct, title) in [("p50", "p50"), ("p95", "p95")] {
        if repeats == 0 {
            break;
        }
        let _ = writeln!(
            o,
            "### Scenario 1: one 50-row retrain on a model of 100 or 1,000 trees ({title}, ms)\n"
        );
        if pct == "p50" {
            let _ = writeln!(
                o,
                "One user with a seeded model, {batches} batches written one at a time, each \
                 awaited on the topic, `REFIT_MAX_TREES=0`{}. Python's `read` fetches its model \
                 (its rows come from the poll); refit's reads the pending rows (refit can keep a \
                 user's model loaded between retrains: its `load` is as measured). `commit → event read` is the batch's commit → its event \
                 read from the topic (Python's includes its 100 ms poll interval). Python ÷ refit \
                 > 1 means refit is faster.\n",
                if repeats > 1 {
                    format!("; the median of {repeats} repeats' percentile, [min–max] across repeats")
                } else {
                    String::new()
                }
            );
        }
        let _ = writeln!(
            o,
            "| Step | refit, 100 trees | Python, 100 trees | Python ÷ refit | refit, 1,000 trees | Python, 1,000 trees | Python ÷ refit |"
        );
        let _ = writeln!(o, "| --- | --- | --- | --- | --- | --- | --- |");
        for (step, label) in [
            ("read", "read"),
            ("train", "train (incl. validation scoring)"),
            ("train_load", "↳ load"),
            ("train_boost", "↳ boost"),
            ("train_save", "↳ save"),
            ("commit", "commit"),
            ("invalidate", "invalidate (DEL)"),
            ("announce", "announce (ack)"),
            ("end_to_end", "**commit → event read**"),
        ] {
            let mut row = format!("| {label} |");
            for trees in [100, 1000] {
                let (a, a_txt) = spread(&step_pcts(r, trees, "refit", step, pct));
                let (b, b_txt) = spread(&step_pcts(r, trees, "python", step, pct));
                let _ = write!(row, " {a_txt} | {b_txt} | {} |", f(b / a));
            }
            let _ = writeln!(o, "{row}");
        }
        let _ = writeln!(o);
    }
    if let Some(models) = r["floor"]["models"].as_array() {
        let runs = r["floor"]["repeats"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "### The floor: the same update through the C API alone (ms)\n\n\
             In-process, no I/O, nthread 1: 10 rounds on 50 rows, {} iterations per repeat{}. \
             \"From the artifact\" loads the UBJSON model first \
             (what a retrain without refit's model cache does); \"in memory\" continues a model \
             kept loaded. Next to it, refit's measured train step and whole retrain (scenario 1).\n",
            r["floor"]["iterations"],
            repeats_note(runs.len())
        );
        let _ = writeln!(o, "| Trees | Artifact | From the artifact: total p50 (load + boost + save) | From the artifact: p95 | In memory: p50 | In memory: p95 | refit's train step p50 / p95 | refit's commit → event read p50 |");
        let _ = writeln!(o, "| --- | --- | --- | --- | --- | --- | --- | --- |");
        for (i, m) in models.iter().enumerate() {
            let trees = m["trees"].as_i64().unwrap_or(0);
            let col = |mode: &str, part: &str, pct: &str| -> Vec<f64> {
                runs.iter()
                    .map(|run| num(&run["models"][i][mode][part][pct]))
                    .collect()
            };
            let _ = writeln!(
                o,
                "| {trees} | {} KB | {} ({} + {} + {}) | {} | {} | {} | {} / {} | {} |",
                f(num(&m["artifact_kb"])),
                spread(&col("from_artifact", "total", "p50")).1,
                spread(&col("from_artifact", "load", "p50")).1,
                spread(&col("from_artifact", "boost", "p50")).1,
                spread(&col("from_artifact", "save", "p50")).1,
                spread(&col("from_artifact", "total", "p95")).1,
                spread(&col("in_memory", "total", "p50")).1,
                spread(&col("in_memory", "total", "p95")).1,
                spread(&step_p50s(r, trees, "refit", "train")).1,
                f(spread(&step_pcts(r, trees, "refit", "train", "p95")).0),
                spread(&step_p50s(r, trees, "refit", "end_to_end")).1,
            );
        }
        let _ = writeln!(o);
    }
    let ramp = &r["ramp"];
    if ramp["refit"].is_object() {
        let _ = writeln!(
            o,
            "### Scenario 3: sustained retrains/s with {} users, arrival rate raised step by step\n\n\
             {}Each step is measured for {} s: every 100 ms the next users (round-robin) get a \
             whole batch of 50 actuals (for requests logged before the ramp) in one multi-row transaction, as an upstream writer \
             that batches would; every user starts with a seeded 10-tree model (continued \
             training). When the writer itself cannot insert at the nominal rate on the shared \
             cores, the step runs longer and the offered rate is what it achieved. A step keeps up \
             when ≥ 90 % of what it offered completed and the backlog (batches written − events \
             read) grew by no more than 5 % of what the step offered (at least 20 batches). The \
             ladder stops at the first step that does not keep up; the sustained rate is the \
             highest step that kept up. The upstream inserts run on the same 2 cores (\"rest\" \
             below: the writer, PostgreSQL for the inserts, tansu, Redis).\n",
            ramp["refit"]["users"],
            match ramp["refit"]["warm_up_seconds"].as_f64() {
                Some(w) if w > 0.0 => format!(
                    "Each step first runs {} s at its rate unmeasured (to settle). ",
                    rate_txt(w)
                ),
                _ => String::new(),
            },
            ramp["refit"]["step_seconds"]
        );
        let _ = writeln!(o, "| Implementation | Nominal /s | Offered /s | Completed /s | Backlog (batches) start → end (max) | Kept up | CPU ms per retrain: process / its PostgreSQL | Cores: process / PostgreSQL / rest |");
        let _ = writeln!(o, "| --- | --- | --- | --- | --- | --- | --- | --- |");
        for which in ["refit", "python"] {
            for step in ramp[which]["steps"].as_array().into_iter().flatten() {
                let cpu = &step["cpu"];
                let _ = writeln!(
                    o,
                    "| {which} | {} | {} | {} | {} → {}{} | {} | {} / {} | {} / {} / {} |",
                    f(num(&step["rate"])),
                    f(num(&step["offered_per_s"])),
                    f(num(&step["completed_per_s"])),
                    step["backlog_start"],
                    step["backlog_end"],
                    step["backlog_max"]
                        .as_u64()
                        .map(|m| format!(" ({m})"))
                        .unwrap_or_default(),
                    if step["kept_up"].as_bool() == Some(true) {
                        "yes"
                    } else {
                        "**no**"
                    },
                    f(num(&cpu["process_cpu_ms_per_retrain"])),
                    f(num(&cpu["postgres_cpu_ms_per_retrain"])),
                    f(num(&cpu["process_cores"])),
                    f(num(&cpu["its_postgres_cores"])),
                    f(num(&cpu["rest_of_machine_cores"])),
                );
            }
        }
        let _ = writeln!(o);
    }
}
