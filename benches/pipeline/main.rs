//! `make bench`: DESIGN.md's performance targets, measured end to end on the real services
//! (PostgreSQL, Redis, the Kafka-compatible broker) with the release `refit` binary as a child
//! process, side by side with the straightforward Python sequence (scripts/bench-python.py).
//!
//! Phases (BENCH_PHASES, comma separated; all by default):
//! - `freshness`: actuals stream in, one autocommitted INSERT each, so that BENCH_FRESH_RATES
//!   batches/s complete; the commit of each batch's 50th actual is timestamped here and its
//!   `model-retrained` event is read from the topic by a consumer (matched by user and version).
//!   Per-step costs (read, train, commit, DEL, announce) come from the same retrains;
//! - `throughput`: BENCH_USERS users × 50 actuals, bulk-loaded while refit runs, twice (fresh
//!   models, then continued training); retrains/s from the load's commit to the last event read;
//!   refit's memory (VmHWM) over the whole run;
//! - `python`: the same for scripts/bench-python.py on a fresh database with the same data;
//! - `growth`: BENCH_GROWTH_RETRAINS batches of one user, for each REFIT_MAX_TREES in
//!   BENCH_GROWTH_CAPS; train time and model size per version.
//!
//! Nothing here asserts a time: results go to target/bench/<run>/ (results.json, summary.md,
//! every child's log) and summary.md is printed at the end. BENCH_QUICK=1 runs smaller sizes.

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
        let mut runs = Vec::new();
        for _ in 0..s.repeat {
            runs.push(tokio::task::block_in_place(|| scenarios::floor(&s)).context("floor")?);
        }
        let mut floor = runs.last().cloned().unwrap_or(Value::Null);
        floor["repeats"] = json!(runs);
        results["floor"] = floor;
        save(&results);
    }
    if s.wants("steps") {
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
    }
    if s.wants("freshness") {
        let mut runs = Vec::new();
        for repeat in 1..=s.repeat {
            for &rate in &s.fresh_rates {
                let mut run = phases::freshness(&s, rate)
                    .await
                    .with_context(|| format!("freshness at {rate}/s"))?;
                run["repeat"] = json!(repeat);
                runs.push(run);
                results["freshness"] = json!(runs);
                save(&results);
            }
        }
    }
    if s.wants("ramp") {
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
    }
    if s.wants("throughput") {
        results["throughput_refit"] = phases::throughput(&s, phases::Implementation::Refit)
            .await
            .context("refit throughput")?;
        save(&results);
    }
    if s.wants("python") {
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
    }
    if s.wants("growth") {
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

fn pp_verdict(v: &Value, target: f64) -> String {
    let (p50, p99) = (num(&v["p50"]), num(&v["p99"]));
    if v["n"].as_u64().unwrap_or(0) == 0 {
        return "no samples".into();
    }
    match (p50 <= target, p99 <= target) {
        (true, true) => "met".into(),
        (true, false) => "p50 met, **p99 not met**".into(),
        _ => "**not met**".into(),
    }
}

fn steps_row(out: &mut String, label: &str, steps: &Value) {
    let _ = writeln!(
        out,
        "| {label} | {} | {} | {} | {} | {} | {} | {} | {} |",
        pp(&steps["read"]),
        pp(&steps["train"]),
        pp(&steps["train_load"]),
        pp(&steps["train_boost"]),
        pp(&steps["train_save"]),
        pp(&steps["commit"]),
        pp(&steps["invalidate"]),
        pp(&steps["announce"]),
    );
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

    if let Some(extra) = r["refit_extra_env"].as_array().filter(|a| !a.is_empty()) {
        let _ = writeln!(
            o,
            "refit ran with BENCH_REFIT_ENV: {extra:?} on top of its defaults.\n"
        );
    }
    // ---- targets --------------------------------------------------------------------------------
    let _ = writeln!(o, "### Targets\n");
    let _ = writeln!(o, "| Target (DESIGN.md) | Condition | Measured | Verdict |");
    let _ = writeln!(o, "| --- | --- | --- | --- |");
    let fresh = r["freshness"].as_array().cloned().unwrap_or_default();
    let tp = &r["throughput_refit"];
    let py = &r["throughput_python"];
    let mut step_sources: Vec<(String, Value)> = fresh
        .iter()
        .map(|run| {
            (
                format!("paced, {} batches/s", run["rate_batches_per_s"]),
                run["steps_ms"].clone(),
            )
        })
        .collect();
    if tp.is_object() {
        step_sources.push((
            "saturated: 10k-user drain, continued (round 2)"
                .replace("10k", &tp["users"].to_string()),
            tp["steps_ms"]["round2"].clone(),
        ));
    }
    for (step, target, label) in [
        ("read", 5.0, "read ≤ 5 ms"),
        ("train", 20.0, "train ≤ 20 ms"),
        ("invalidate", 1.0, "Redis DEL ≤ 1 ms"),
    ] {
        for (cond, steps) in &step_sources {
            let _ = writeln!(
                o,
                "| {label} (p50/p99) | {cond} | {} ms | {} |",
                pp(&steps[step]),
                pp_verdict(&steps[step], target)
            );
        }
    }
    for run in &fresh {
        let fr = &run["freshness_ms"];
        let cond = format!(
            "{} batches/s ({} actuals/s achieved)",
            run["rate_batches_per_s"],
            f(num(&run["actuals_per_s_achieved"]))
        );
        let _ = writeln!(
            o,
            "| freshness p50 ≤ 25 ms | {cond} | {} ms | {} |",
            f(num(&fr["p50"])),
            verdict(num(&fr["p50"]) <= 25.0)
        );
        let _ = writeln!(
            o,
            "| freshness p99 ≤ 100 ms | {cond} | {} ms | {} |",
            f(num(&fr["p99"])),
            verdict(num(&fr["p99"]) <= 100.0)
        );
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
        } else {
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

    scenario_details(&mut o, r);
    // ---- freshness detail -----------------------------------------------------------------------
    for run in &fresh {
        let _ = writeln!(
            o,
            "\n### Freshness at {} batches/s\n",
            run["rate_batches_per_s"]
        );
        let _ = writeln!(o, "{} users, {} warm-up retrains each; {} actuals inserted ({} /s, target {} /s, worst insert lag {} ms); {} batches completed, {} events matched; statuses {}; models had {} trees (median) when measured.\n",
            run["users"], run["warm_retrains_per_user"], run["actuals_inserted"], f(num(&run["actuals_per_s_achieved"])), run["actuals_per_s_target"], run["max_insert_lag_ms"],
            run["batches_completed"], run["events_matched"], run["statuses"], f(num(&run["trees_of_measured_models"]["p50"])));
        let _ = writeln!(o, "| Interval (ms) | p50 | p90 | p99 | max |");
        let _ = writeln!(o, "| --- | --- | --- | --- | --- |");
        let line = |o: &mut String, name: &str, v: &Value| {
            let _ = writeln!(
                o,
                "| {name} | {} | {} | {} | {} |",
                f(num(&v["p50"])),
                f(num(&v["p90"])),
                f(num(&v["p99"])),
                f(num(&v["max"]))
            );
        };
        line(
            &mut o,
            "**commit of the 50th actual → event read**",
            &run["freshness_ms"],
        );
        line(
            &mut o,
            "INSERT sent → event read",
            &run["freshness_from_insert_sent_ms"],
        );
        line(
            &mut o,
            "refit's data_until (trigger time) → event read",
            &run["freshness_from_data_until_ms"],
        );
        if let Some(b) = run["breakdown_ms"].as_object() {
            for (k, v) in b {
                line(&mut o, &k[2..], v);
            }
        }
        let c = &run["cpu"];
        let _ = writeln!(o, "\nDuring the paced inserts: refit used {} cores ({} CPU ms per retrain), its PostgreSQL backends {} cores ({} ms per retrain), the rest of the machine {} cores (the inserting bench, PostgreSQL for the inserts, tansu, Redis, anything else running). refit VmHWM {} MB; log warnings {}, errors {}.",
            f(num(&c["process_cores"])), f(num(&c["process_cpu_ms_per_retrain"])), f(num(&c["its_postgres_cores"])), f(num(&c["postgres_cpu_ms_per_retrain"])), f(num(&c["rest_of_machine_cores"])),
            run["refit_memory"]["vm_hwm_mb"], run["refit_logs"]["warnings"], run["refit_logs"]["errors"]);
    }

    // ---- per-step detail ------------------------------------------------------------------------
    let _ = writeln!(o, "\n### Per-step cost, ms (p50 / p99)\n");
    let _ = writeln!(o, "| Condition | read | train | ↳ load | ↳ boost | ↳ save | commit | invalidate (DEL) | announce (ack) |");
    let _ = writeln!(o, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (cond, steps) in &step_sources {
        steps_row(&mut o, &format!("refit, {cond}"), steps);
    }
    if tp.is_object() {
        steps_row(
            &mut o,
            "refit, saturated, fresh models (round 1)",
            &tp["steps_ms"]["round1"],
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
    r["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|run| run["trees"].as_i64() == Some(trees))
        .map(|run| num(&run[implementation][step]["p50"]))
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
        let _ = writeln!(
            o,
            "| RSS ≤ 100 MB | {users} users, whole ramp (VmHWM) | {} MB | {} |",
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
    if repeats > 0 {
        let _ = writeln!(
            o,
            "### Scenario 1: one 50-row retrain on a model of 100 or 1,000 trees (p50, ms)\n\n\
             One user with a seeded model, 30 batches written one at a time, each awaited on the \
             topic. Median of {repeats} repeats' p50, [min–max] across repeats. Python's `read` \
             fetches its model (its rows come from the poll); refit's reads the pending rows (the \
             model is in memory after the first retrain). `end_to_end` is the batch's commit → \
             its event read from the topic (Python's includes its 100 ms poll interval).\n"
        );
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
                let (a, a_txt) = spread(&step_p50s(r, trees, "refit", step));
                let (b, b_txt) = spread(&step_p50s(r, trees, "python", step));
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
            "### The floor: the same update through the C API alone (ms, p50)\n\n\
             In-process, no I/O, nthread 1: 10 rounds on 50 rows, {} iterations per repeat, \
             median of {} repeats [min–max]. \"From the artifact\" loads the UBJSON model first \
             (what a retrain without refit's model cache does); \"in memory\" continues a model \
             kept loaded. Next to it, refit's measured train step and whole retrain (scenario 1).\n",
            r["floor"]["iterations"],
            runs.len().max(1)
        );
        let _ = writeln!(o, "| Trees | Artifact | From the artifact: total (load + boost + save) | In memory: total | refit's train step | refit's commit → event read |");
        let _ = writeln!(o, "| --- | --- | --- | --- | --- | --- |");
        for (i, m) in models.iter().enumerate() {
            let trees = m["trees"].as_i64().unwrap_or(0);
            let col = |mode: &str, part: &str| -> Vec<f64> {
                runs.iter()
                    .map(|run| num(&run["models"][i][mode][part]["p50"]))
                    .collect()
            };
            let _ = writeln!(
                o,
                "| {trees} | {} KB | {} ({} + {} + {}) | {} | {} | {} |",
                f(num(&m["artifact_kb"])),
                spread(&col("from_artifact", "total")).1,
                spread(&col("from_artifact", "load")).1,
                spread(&col("from_artifact", "boost")).1,
                spread(&col("from_artifact", "save")).1,
                spread(&col("in_memory", "total")).1,
                spread(&step_p50s(r, trees, "refit", "train")).1,
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
             Each step lasts {} s: every 100 ms the next users (round-robin) get a whole batch of \
             50 actuals (for requests logged before the ramp) in one multi-row transaction, as an \
             upstream writer that batches would; every user starts with a seeded 10-tree model \
             (continued training). When the writer itself cannot insert at the nominal rate on \
             the shared cores, the step runs longer and the offered rate is what it achieved. A step keeps up \
             when ≥ 90 % of what it offered completed and the backlog (batches written − events \
             read) grew by less than a second's worth. The upstream inserts run on the same \
             2 cores.\n",
            ramp["refit"]["users"], ramp["refit"]["step_seconds"]
        );
        let _ = writeln!(o, "| Implementation | Nominal /s | Offered /s | Completed /s | Backlog (batches) start → end | Kept up | CPU ms per retrain: process / its PostgreSQL | Cores: process / PostgreSQL / rest |");
        let _ = writeln!(o, "| --- | --- | --- | --- | --- | --- | --- | --- |");
        for which in ["refit", "python"] {
            for step in ramp[which]["steps"].as_array().into_iter().flatten() {
                let cpu = &step["cpu"];
                let _ = writeln!(
                    o,
                    "| {which} | {} | {} | {} | {} → {} | {} | {} / {} | {} / {} / {} |",
                    f(num(&step["rate"])),
                    f(num(&step["offered_per_s"])),
                    f(num(&step["completed_per_s"])),
                    step["backlog_start"],
                    step["backlog_end"],
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
