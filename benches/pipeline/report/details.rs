//! The detail sections of the summary, one function per section (and per table).

use std::fmt::Write as _;

use crate::results::{
    Cpu, Floor, FloorModel, FloorParts, Freshness, Growth, GrowthRun, GrowthVersion,
    PythonThroughput, RampRun, Results, Round, StepSummaries, Summary, Throughput, ThroughputSteps,
};
use crate::stats::f;

use super::{
    by_rate, js, median_of, or_nan, pp, pp_runs, rate_txt, repeats_note, spread, step_pcts,
    step_sources, steps_runs, Pct, Step, MAX, P50, P95, P99, STEP_COLUMNS,
};

// ---- scenario 1 ---------------------------------------------------------------------------------

/// Scenario 1's p50 and p95 tables: every step, both implementations, both model sizes.
pub(crate) fn scenario_one(o: &mut String, r: &Results) {
    let repeats = steps_runs(r, 100, "refit").len();
    if repeats == 0 {
        return;
    }
    let batches = r
        .steps
        .iter()
        .flatten()
        .next()
        .map_or(0, |s| s.refit.end_to_end.n);
    for (pct, title) in [(P50, "p50"), (P95, "p95")] {
        let _ = writeln!(
            o,
            "### Scenario 1: one 50-row retrain on a model of 100 or 1,000 trees ({title}, ms)\n"
        );
        if title == "p50" {
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
        scenario_one_table(o, r, pct);
    }
}

fn scenario_one_table(o: &mut String, r: &Results, pct: Pct) {
    let _ = writeln!(
        o,
        "| Step | refit, 100 trees | Python, 100 trees | Python ÷ refit | refit, 1,000 trees | Python, 1,000 trees | Python ÷ refit |"
    );
    let _ = writeln!(o, "| --- | --- | --- | --- | --- | --- | --- |");
    for (step, label) in [
        (Step::Read, "read"),
        (Step::Train, "train (incl. validation scoring)"),
        (Step::TrainLoad, "↳ load"),
        (Step::TrainBoost, "↳ boost"),
        (Step::TrainSave, "↳ save"),
        (Step::Commit, "commit"),
        (Step::Invalidate, "invalidate (DEL)"),
        (Step::Announce, "announce (ack)"),
        (Step::EndToEnd, "**commit → event read**"),
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

// ---- the floor ----------------------------------------------------------------------------------

/// The C API alone, next to refit's train step and whole retrain.
pub(crate) fn floor(o: &mut String, r: &Results) {
    let Some(floor) = &r.floor else {
        return;
    };
    let _ = writeln!(
        o,
        "### The floor: the same update through the C API alone (ms)\n\n\
         In-process, no I/O, nthread 1: 10 rounds on 50 rows, {} iterations per repeat{}. \
         \"From the artifact\" loads the UBJSON model first \
         (what a retrain without refit's model cache does); \"in memory\" continues a model \
         kept loaded. Next to it, refit's measured train step and whole retrain (scenario 1).\n",
        floor.iterations,
        repeats_note(floor.repeats.len())
    );
    let _ = writeln!(o, "| Trees | Artifact | From the artifact: total p50 (load + boost + save) | From the artifact: p95 | In memory: p50 | In memory: p95 | refit's train step p50 / p95 | refit's commit → event read p50 |");
    let _ = writeln!(o, "| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (i, m) in floor.models.iter().enumerate() {
        floor_row(o, r, floor, i, m);
    }
    let _ = writeln!(o);
}

/// One mode of the floor (from the artifact, in memory).
type PartsOf = fn(&FloorModel) -> &FloorParts;

fn floor_row(o: &mut String, r: &Results, floor: &Floor, i: usize, m: &FloorModel) {
    let col = |mode: PartsOf, part: fn(&FloorParts) -> &Summary, pct: Pct| {
        let values: Vec<f64> = floor
            .repeats
            .iter()
            .map(|run| run.models.get(i).map_or(f64::NAN, |m| pct(part(mode(m)))))
            .collect();
        spread(&values).1
    };
    let (artifact, memory): (PartsOf, PartsOf) = (|m| &m.from_artifact, |m| &m.in_memory);
    let trees = m.trees;
    let _ = writeln!(
        o,
        "| {trees} | {} KB | {} ({} + {} + {}) | {} | {} | {} | {} / {} | {} |",
        f(m.artifact_kb),
        col(artifact, |p| &p.total, P50),
        col(artifact, |p| &p.load, P50),
        col(artifact, |p| &p.boost, P50),
        col(artifact, |p| &p.save, P50),
        col(artifact, |p| &p.total, P95),
        col(memory, |p| &p.total, P50),
        col(memory, |p| &p.total, P95),
        spread(&step_pcts(r, trees, "refit", Step::Train, P50)).1,
        f(spread(&step_pcts(r, trees, "refit", Step::Train, P95)).0),
        spread(&step_pcts(r, trees, "refit", Step::EndToEnd, P50)).1,
    );
}

// ---- scenario 3 ---------------------------------------------------------------------------------

/// The ramp: how it was run and every step of both implementations.
pub(crate) fn ramp(o: &mut String, r: &Results) {
    let Some(ramp) = &r.ramp else {
        return;
    };
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
        ramp.refit.users,
        if ramp.refit.warm_up_seconds > 0.0 {
            format!(
                "Each step first runs {} s at its rate unmeasured (to settle). ",
                rate_txt(ramp.refit.warm_up_seconds)
            )
        } else {
            String::new()
        },
        js(&ramp.refit.step_seconds)
    );
    let _ = writeln!(o, "| Implementation | Nominal /s | Offered /s | Completed /s | Backlog (batches) start → end (max) | Kept up | CPU ms per retrain: process / its PostgreSQL | Cores: process / PostgreSQL / rest |");
    let _ = writeln!(o, "| --- | --- | --- | --- | --- | --- | --- | --- |");
    ramp_rows(o, "refit", Some(&ramp.refit));
    ramp_rows(o, "python", ramp.python.as_ref());
    let _ = writeln!(o);
}

fn ramp_rows(o: &mut String, which: &str, run: Option<&RampRun>) {
    for step in run.into_iter().flat_map(|run| &run.steps) {
        let cpu = &step.cpu;
        let _ = writeln!(
            o,
            "| {which} | {} | {} | {} | {} → {} ({}) | {} | {} / {} | {} / {} / {} |",
            f(step.rate),
            f(step.offered_per_s),
            f(step.completed_per_s),
            step.backlog_start,
            step.backlog_end,
            step.backlog_max,
            if step.kept_up { "yes" } else { "**no**" },
            f(cpu.process_cpu_ms_per_retrain),
            f(cpu.postgres_cpu_ms_per_retrain),
            f(cpu.process_cores),
            f(cpu.its_postgres_cores),
            f(cpu.rest_of_machine_cores),
        );
    }
}

// ---- scenario 2 ---------------------------------------------------------------------------------

/// One section per rate: the intervals, then where the CPU went.
pub(crate) fn freshness(o: &mut String, r: &Results) {
    let python = by_rate(r.freshness_python.as_deref().unwrap_or_default(), |f| {
        f.rate_batches_per_s
    });
    for (rate, runs) in by_rate(r.freshness.as_deref().unwrap_or_default(), |f| {
        f.rate_batches_per_s
    }) {
        let py_runs: Vec<&Freshness> = python
            .iter()
            .find(|(r, _)| *r == rate)
            .map(|(_, g)| g.clone())
            .unwrap_or_default();
        let _ = writeln!(o, "\n### Freshness at {} batches/s\n", rate_txt(rate));
        freshness_intro(o, &runs, &py_runs);
        freshness_table(o, &runs, &py_runs);
        freshness_cpu(o, &runs, &py_runs);
    }
}

fn freshness_intro(o: &mut String, runs: &[&Freshness], py_runs: &[&Freshness]) {
    let first = runs[0];
    let _ = writeln!(o, "{} users, {} warm-up retrains each; per run {} actuals inserted one per autocommitted INSERT (target {} /s, achieved {} /s, worst insert lag {} ms) and {} batches completed; {} run(s) of refit{}. Every cell is the median over the runs{}.\n",
        first.users, first.warm_retrains_per_user, first.actuals_inserted, js(&first.actuals_per_s_target),
        f(median_of(runs, |run| run.actuals_per_s_achieved)),
        js(&first.max_insert_lag_ms), first.batches_completed, runs.len(),
        if py_runs.is_empty() { String::new() } else { format!(" and {} of {} on the same rows", py_runs.len(), python_name(py_runs[0])) },
        if runs.len() > 1 { " with [min–max]" } else { "" });
}

/// A row of intervals: p50, p95, p99, max, each the median over the runs (with the spread).
fn interval_row(o: &mut String, name: &str, summaries: &[&Summary]) {
    if summaries.is_empty() {
        return;
    }
    let agg = |pct: Pct| spread(&summaries.iter().map(|s| pct(s)).collect::<Vec<_>>()).1;
    let _ = writeln!(
        o,
        "| {name} | {} | {} | {} | {} |",
        agg(P50),
        agg(P95),
        agg(P99),
        agg(MAX),
    );
}

/// `field` of each run.
fn of<'a>(runs: &[&'a Freshness], field: fn(&Freshness) -> &Summary) -> Vec<&'a Summary> {
    runs.iter().map(|run| field(run)).collect()
}

fn freshness_table(o: &mut String, runs: &[&Freshness], py_runs: &[&Freshness]) {
    let _ = writeln!(o, "| Interval (ms) | p50 | p95 | p99 | max |");
    let _ = writeln!(o, "| --- | --- | --- | --- | --- |");
    let refit_fresh = of(runs, |r| &r.freshness_ms);
    interval_row(
        o,
        "**refit: commit of the 50th actual → event read**",
        &refit_fresh,
    );
    let python_fresh = of(py_runs, |r| &r.freshness_ms);
    interval_row(
        o,
        "**Python: commit of the 50th actual → event read**",
        &python_fresh,
    );
    let sent = of(runs, |r| &r.freshness_from_insert_sent_ms);
    interval_row(o, "refit: INSERT sent → event read", &sent);
    let until = of(runs, |r| &r.freshness_from_data_until_ms);
    interval_row(o, "refit: data_until (trigger time) → event read", &until);
    for step in runs[0].freshness_by_step_ms.keys() {
        let by_step: Vec<&Summary> = runs
            .iter()
            .filter_map(|r| r.freshness_by_step_ms.get(step))
            .collect();
        let n = by_step.first().map_or(0, |s| s.n);
        interval_row(
            o,
            &format!("refit: commit → event read, {step} versions ({n} in the first run)"),
            &by_step,
        );
    }
    for k in runs[0].breakdown_ms.keys() {
        let segment: Vec<&Summary> = runs.iter().filter_map(|r| r.breakdown_ms.get(k)).collect();
        interval_row(o, &format!("refit: {}", &k[2..]), &segment);
    }
}

fn freshness_cpu(o: &mut String, runs: &[&Freshness], py_runs: &[&Freshness]) {
    let cpu = |runs: &[&Freshness], field: fn(&Freshness) -> f64| f(median_of(runs, field));
    let first = runs[0];
    let _ = writeln!(o, "\nDuring the paced inserts (medians over the runs): refit used {} cores ({} CPU ms per retrain), its PostgreSQL backends {} cores ({} ms per retrain), the rest of the machine {} cores (the inserting bench, PostgreSQL for the inserts, tansu, Redis, anything else running); refit VmHWM {} MB; statuses of the first run {}, log warnings {}, errors {}.",
        cpu(runs, |r| r.cpu.process_cores), cpu(runs, |r| r.cpu.process_cpu_ms_per_retrain), cpu(runs, |r| r.cpu.its_postgres_cores), cpu(runs, |r| r.cpu.postgres_cpu_ms_per_retrain), cpu(runs, |r| r.cpu.rest_of_machine_cores),
        cpu(runs, |r| r.refit_memory.vm_hwm_mb),
        js(&first.statuses), first.refit_logs.warnings, first.refit_logs.errors);
    if !py_runs.is_empty() {
        let _ = writeln!(o, "{}: {} cores ({} CPU ms per retrain), its PostgreSQL backends {} cores ({} ms per retrain); statuses of its first run {}.",
            upper_first(&python_name(py_runs[0])),
            cpu(py_runs, |r| r.cpu.process_cores), cpu(py_runs, |r| r.cpu.process_cpu_ms_per_retrain), cpu(py_runs, |r| r.cpu.its_postgres_cores), cpu(py_runs, |r| r.cpu.postgres_cpu_ms_per_retrain), js(&py_runs[0].statuses));
    }
}

// ---- per-step cost ------------------------------------------------------------------------------

/// One row per source: every step's p50 / p99.
fn steps_row(o: &mut String, label: &str, runs: &[&StepSummaries]) {
    let mut row = format!("| {label} |");
    for step in STEP_COLUMNS {
        let _ = write!(row, " {} |", pp_runs(runs, step));
    }
    let _ = writeln!(o, "{row}");
}

/// The per-step table: refit's sources, then the Python reference's.
pub(crate) fn per_step(o: &mut String, r: &Results) {
    let _ = writeln!(
        o,
        "\n### Per-step cost, ms (p50 / p99; over repeats: median p50 [min–max] / median p99)\n"
    );
    let _ = writeln!(o, "| Condition | read | train | ↳ load | ↳ boost | ↳ save | commit | invalidate (DEL) | announce (ack) |");
    let _ = writeln!(o, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (cond, runs) in &step_sources(r) {
        steps_row(o, &format!("refit, {cond}"), runs);
    }
    python_step_rows(o, r);
    if let Some(ThroughputSteps::Refit { round1, .. }) =
        r.throughput_refit.as_ref().map(|t| &t.steps_ms)
    {
        steps_row(o, "refit, saturated, fresh models (round 1)", &[round1]);
    }
    for py in r.throughput_python_other_runs.iter() {
        python_drain_rows(o, py);
    }
    if let Some(PythonThroughput::Ran(py)) = &r.throughput_python {
        python_drain_rows(o, py);
    }
    let _ = writeln!(
        o,
        "\nRedis DEL from the bench process itself (the floor): {} ms (p50 / p99).",
        pp(r.redis_floor.as_ref().map(|f| &f.del))
    );
    if let Some(rt) = &r.round_trips {
        let _ = writeln!(
            o,
            "From the bench process, one call every 10 ms: a produce to the broker until its acknowledgement (refit's producer settings) {} ms, a PostgreSQL `SELECT 1` {} ms (p50 / p99).",
            pp(Some(&rt.kafka_ack)),
            pp(Some(&rt.postgres_select))
        );
    }
    let _ = writeln!(o, "refit's `read` is the pending-rows query inside the retrain transaction; `train` spans load + boost + save + validation scoring; `commit` is insert version, consume rows, outbox, COMMIT; `invalidate` is the DEL inside the outbox delivery; `announce` is produce → broker ack. Python's `read` is loading the user's latest model row (its actuals were read by the poll).");
}

/// The Python reference in scenario 1 and paced.
fn python_step_rows(o: &mut String, r: &Results) {
    for trees in [100, 1000] {
        let runs = steps_runs(r, trees, "python");
        if !runs.is_empty() {
            let label = format!(
                "Python, scenario 1: {trees} trees, one batch at a time{}",
                repeats_note(runs.len())
            );
            steps_row(
                o,
                &label,
                &runs.iter().map(|run| &run.steps).collect::<Vec<_>>(),
            );
        }
    }
    let python = r.freshness_python.as_deref().unwrap_or_default();
    for (rate, runs) in by_rate(python, |f| f.rate_batches_per_s) {
        let label = format!(
            "{}, paced, {} batches/s{}",
            runs[0].label(),
            rate_txt(rate),
            repeats_note(runs.len())
        );
        steps_row(
            o,
            &label,
            &runs.iter().map(|run| &run.steps_ms).collect::<Vec<_>>(),
        );
    }
}

/// The Python reference in the drain (its own step names; announce from its summary line).
fn python_drain_rows(o: &mut String, py: &Throughput) {
    let ThroughputSteps::Python {
        round1,
        round2,
        summary,
    } = &py.steps_ms
    else {
        return;
    };
    let both_rounds = summary
        .as_ref()
        .and_then(|s| s["announce_ms"].as_object())
        .map(|a| {
            let num = |k: &str| a.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
            format!("{} / {} (both rounds)", f(num("p50")), f(num("p99")))
        })
        .unwrap_or("–".into());
    for (st, label) in [(round2, "continued (round 2)"), (round1, "fresh (round 1)")] {
        let announce = match &st.announce {
            Some(a) if a.n > 0 => pp(Some(a)),
            _ => both_rounds.clone(),
        };
        // The peer run parses the model inside xgb.train: its boost includes the load.
        let load = if py.python_model_load == "bytes" {
            "in boost".to_owned()
        } else {
            pp(Some(&st.load))
        };
        let _ = writeln!(
            o,
            "| {}, {label} | {} | {} | {} | {} | {} | {} | {} | {announce} |",
            py.label(),
            pp(Some(&st.read)),
            pp(Some(&st.train)),
            load,
            pp(Some(&st.boost)),
            pp(Some(&st.save)),
            pp(Some(&st.commit)),
            pp(Some(&st.invalidate)),
        );
    }
}

// ---- throughput ---------------------------------------------------------------------------------

/// The drain, round by round, both implementations.
pub(crate) fn throughput(o: &mut String, r: &Results) {
    let _ = writeln!(o, "\n### Throughput\n");
    let _ = writeln!(o, "Retrains/s are counted up to the broker's acknowledgement of the last event (each implementation logs it); the consumer reading the topic lagged behind the acks by the amount shown.\n");
    let _ = writeln!(o, "| Implementation | Round | Retrains | Load (s) | Commit → last ack (s) | **Retrains/s** (acked) | 5-s windows p50 / min (/s) | Retrains/s up to the last event read | Consumer lag behind ack p50 / max (ms) | CPU ms per retrain: process / its PostgreSQL backends | Cores used: process / PostgreSQL / rest of machine | Memory VmHWM (MB) |");
    let _ = writeln!(
        o,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    let python = match &r.throughput_python {
        Some(PythonThroughput::Ran(py)) => Some(&**py),
        _ => None,
    };
    let runs = r
        .throughput_refit
        .iter()
        .chain(&r.throughput_python_other_runs);
    for t in runs.chain(python) {
        let name = if t.implementation == "refit" {
            "refit".to_owned()
        } else {
            t.label()
        };
        for round in &t.rounds {
            round_row(o, &name, round, t.memory.vm_hwm_mb);
        }
    }
    if let Some(tp) = &r.throughput_refit {
        let versions = match &tp.steps_ms {
            ThroughputSteps::Refit {
                version_statuses, ..
            } => js(version_statuses),
            ThroughputSteps::Python { .. } => "null".into(),
        };
        let _ = writeln!(
            o,
            "\nrefit statuses: {}; versions: {versions}; log warnings {}, errors {}.",
            js(&tp.statuses),
            tp.logs.warnings,
            tp.logs.errors
        );
    }
    for py in r.throughput_python_other_runs.iter().chain(python) {
        if let ThroughputSteps::Python {
            summary: Some(s), ..
        } = &py.steps_ms
        {
            if s.is_object() {
                let _ = writeln!(o, "{} summary: {s}.", py.label());
            }
        }
    }
}

/// "the Python reference", or "the Python peer run (n processes …)".
fn python_name(run: &Freshness) -> String {
    match run.python_model_load.as_str() {
        "bytes" => format!(
            "the Python peer run ({} process{} sharded by user, model bytes straight to `xgb.train`)",
            run.processes,
            if run.processes == 1 { "" } else { "es" }
        ),
        _ => "the Python reference".to_owned(),
    }
}

fn upper_first(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map_or_else(String::new, |first| first.to_uppercase().chain(c).collect())
}

// ---- CPU per retrain, side by side ---------------------------------------------------------------

/// CPU per retrain of each implementation's process(es) and of their PostgreSQL backends (by
/// application_name), wherever both were measured: the drain's rounds, freshness per rate, the
/// highest ramp step each kept up with.
pub(crate) fn cpu_side_by_side(o: &mut String, r: &Results) {
    let mut rows = Vec::new();
    let python = match &r.throughput_python {
        Some(PythonThroughput::Ran(py)) => Some(&**py),
        _ => None,
    };
    if let Some(refit) = &r.throughput_refit {
        for py in r.throughput_python_other_runs.iter().chain(python) {
            for (a, b) in refit.rounds.iter().zip(&py.rounds) {
                let place = format!(
                    "drain, {} users, round {} ({})",
                    refit.users, a.round, a.kind
                );
                rows.push((place, &a.cpu, py.label(), py.processes, &b.cpu));
            }
        }
    }
    let cpu_rows = cpu_rows_paced(r);
    if rows.is_empty() && cpu_rows.is_empty() {
        return;
    }
    let _ = writeln!(o, "\n### CPU per retrain, side by side\n");
    let _ = writeln!(o, "CPU ms per retrain of each implementation's process(es) and of its PostgreSQL backends (found by `application_name`; for the Python peer run both shards' processes and backends, added up), from `/proc`. refit does more per retrain than the Python side (pending queue, consumed rows, outbox, validation gate).\n");
    let _ = writeln!(o, "| Where | refit: process / PostgreSQL / **total** | Python side | Processes | Python: process / PostgreSQL / **total** | Python ÷ refit (total) |");
    let _ = writeln!(o, "| --- | --- | --- | --- | --- | --- |");
    let row = |o: &mut String, place: &str, a: &Cpu3, label: &str, n: usize, b: &Cpu3| {
        let _ = writeln!(
            o,
            "| {place} | {} / {} / **{}** | {label} | {n} | {} / {} / **{}** | {} |",
            f(a.0),
            f(a.1),
            f(a.2),
            f(b.0),
            f(b.1),
            f(b.2),
            f(b.2 / a.2)
        );
    };
    for (place, a, label, n, b) in rows {
        row(o, &place, &cpu3(a), &label, n, &cpu3(b));
    }
    for (place, a, label, n, b) in cpu_rows {
        row(o, &place, &a, &label, n, &b);
    }
}

/// Process, PostgreSQL and total CPU ms per retrain.
type Cpu3 = (f64, f64, f64);

fn cpu3(c: &Cpu) -> Cpu3 {
    let (a, b) = (c.process_cpu_ms_per_retrain, c.postgres_cpu_ms_per_retrain);
    (a, b, a + b)
}

/// Freshness (medians over the runs at each rate) and the ramp's highest step kept up.
fn cpu_rows_paced(r: &Results) -> Vec<(String, Cpu3, String, usize, Cpu3)> {
    let mut rows = Vec::new();
    let python = by_rate(r.freshness_python.as_deref().unwrap_or_default(), |f| {
        f.rate_batches_per_s
    });
    let median3 = |runs: &[&Freshness]| -> Cpu3 {
        let a = median_of(runs, |r| r.cpu.process_cpu_ms_per_retrain);
        let b = median_of(runs, |r| r.cpu.postgres_cpu_ms_per_retrain);
        (
            a,
            b,
            median_of(runs, |r| {
                r.cpu.process_cpu_ms_per_retrain + r.cpu.postgres_cpu_ms_per_retrain
            }),
        )
    };
    for (rate, runs) in by_rate(r.freshness.as_deref().unwrap_or_default(), |f| {
        f.rate_batches_per_s
    }) {
        if let Some((_, py_runs)) = python.iter().find(|(r, _)| *r == rate) {
            rows.push((
                format!(
                    "freshness, {} batches/s{}",
                    rate_txt(rate),
                    if runs.len() > 1 {
                        format!(", median of {} runs", runs.len())
                    } else {
                        String::new()
                    }
                ),
                median3(&runs),
                py_runs[0].label(),
                py_runs[0].processes,
                median3(py_runs),
            ));
        }
    }
    if let Some(ramp) = &r.ramp {
        let top = |run: &RampRun| run.steps.iter().rfind(|s| s.kept_up).cloned();
        if let (Some(a), Some(b)) = (top(&ramp.refit), ramp.python.as_ref().and_then(top)) {
            rows.push((
                format!(
                    "ramp, highest step kept up: refit {} /s, Python {} /s",
                    f(a.rate),
                    f(b.rate)
                ),
                cpu3(&a.cpu),
                "Python".to_owned(),
                1,
                cpu3(&b.cpu),
            ));
        }
    }
    rows
}

fn round_row(o: &mut String, name: &str, round: &Round, vm_hwm_mb: f64) {
    let c = &round.cpu;
    let _ = writeln!(o, "| {name} | {} ({}) | {}{} | {} | {} | **{}** | {} / {} | {} | {} / {} | {} / {} | {} / {} / {} | {} |",
        round.round, round.kind, round.acked, if round.complete { "" } else { " (incomplete)" },
        f(round.load_seconds), f(round.seconds_commit_to_last_ack),
        f(round.retrains_per_s), f(round.windows_5s_per_s.p50), f(round.windows_5s_per_s.min),
        f(round.retrains_per_s_read),
        f(round.consumer_lag_behind_ack_ms.p50), f(round.consumer_lag_behind_ack_ms.max),
        f(c.process_cpu_ms_per_retrain), f(c.postgres_cpu_ms_per_retrain),
        f(c.process_cores), f(c.its_postgres_cores), f(c.rest_of_machine_cores),
        f(vm_hwm_mb));
}

// ---- growth -------------------------------------------------------------------------------------

/// One section per growth run: its summary and a selection of its versions.
pub(crate) fn growth(o: &mut String, r: &Results) {
    for g in r.growth.iter().flatten() {
        if let Growth::Ran(g) = g {
            growth_run(o, g);
        }
    }
}

fn growth_run(o: &mut String, g: &GrowthRun) {
    let cap = g
        .effective_config
        .get("REFIT_MAX_TREES")
        .map_or("?", String::as_str);
    let _ = writeln!(
        o,
        "\n### Growth, REFIT_MAX_TREES={cap} ({})\n",
        js(&g.effective_config)
    );
    let sm = &g.summary;
    let _ = writeln!(
        o,
        "{} retrains in {} s; versions by source {}, by status {}; refit VmHWM {} MB.\n",
        sm.retrains,
        f(sm.seconds),
        js(&sm.versions_by_source),
        js(&sm.versions_by_status),
        js(&g.memory.vm_hwm_mb)
    );
    let _ = writeln!(o, "| Version | Status | Source | Trees | Model (KB) | read (ms) | train (ms) | ↳ load | ↳ boost | ↳ save |");
    let _ = writeln!(
        o,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    let last = g.versions.len();
    let mut compactions_shown = 0;
    for v in &g.versions {
        let ver = v.version as usize;
        let compaction = v.source.starts_with("compaction");
        if compaction {
            compactions_shown += 1;
        }
        let show = [1, 2, 10, 20, 50].contains(&ver)
            || ver % 100 == 0
            || ver == last
            || (compaction && compactions_shown <= 3);
        if show {
            version_row(o, v);
        }
    }
}

pub(crate) fn version_row(o: &mut String, v: &GrowthVersion) {
    let _ = writeln!(
        o,
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        v.version,
        v.status,
        v.source,
        js(&v.trees),
        f(or_nan(v.bytes) / 1024.0),
        f(or_nan(v.read_ms)),
        f(or_nan(v.train_ms)),
        f(or_nan(v.load_ms)),
        f(or_nan(v.boost_ms)),
        f(or_nan(v.save_ms))
    );
}
