//! The targets table of the summary: every target of BENCHMARKS.md with its condition, what was
//! measured and the verdict.

use std::fmt::Write as _;

use crate::results::{Freshness, Growth, PythonThroughput, RampRun, Results, Throughput};
use crate::stats::{f, verdict};

use super::{
    by_rate, js, median_of, pp_runs, pp_verdict_runs, rate_txt, repeats_note, spread, step_pcts,
    step_sources, Step, P50, P99,
};

/// The targets table, with its heading.
pub(crate) fn table(o: &mut String, r: &Results) {
    let _ = writeln!(o, "### Targets\n");
    let _ = writeln!(o, "| Target | Condition | Measured | Verdict |");
    let _ = writeln!(o, "| --- | --- | --- | --- |");
    step_targets(o, r);
    freshness_targets(o, r);
    ramp_targets(o, r);
    scenario_one_ratios(o, r);
    if let Some(tp) = &r.throughput_refit {
        throughput_targets(o, r, tp);
    }
    growth_targets(o, r);
}

/// read, train and Redis DEL against their targets, for every per-step source.
fn step_targets(o: &mut String, r: &Results) {
    let sources = step_sources(r);
    for (step, target, label) in [
        (Step::Read, 5.0, "read ≤ 5 ms"),
        (Step::Train, 20.0, "train ≤ 20 ms"),
        (Step::Invalidate, 1.0, "Redis DEL ≤ 1 ms"),
    ] {
        for (cond, runs) in &sources {
            let _ = writeln!(
                o,
                "| {label} (p50 / p99) | {cond} | {} ms | {} |",
                pp_runs(runs, step),
                pp_verdict_runs(runs, step, target)
            );
        }
    }
}

/// `pct` of the freshness interval of each run: (median, "median [min–max]").
pub(crate) fn fresh_pct(runs: &[&Freshness], pct: super::Pct) -> (f64, String) {
    spread(
        &runs
            .iter()
            .map(|run| pct(&run.freshness_ms))
            .collect::<Vec<_>>(),
    )
}

/// Freshness p50 and p99 per rate, and the ratio to the Python reference at the same rate.
fn freshness_targets(o: &mut String, r: &Results) {
    let fresh = r.freshness.as_deref().unwrap_or_default();
    let python = r.freshness_python.as_deref().unwrap_or_default();
    let python_by_rate = by_rate(python, |f| f.rate_batches_per_s);
    for (rate, runs) in by_rate(fresh, |f| f.rate_batches_per_s) {
        let cond = format!(
            "{} batches/s ({} actuals/s achieved){}",
            rate_txt(rate),
            f(median_of(&runs, |run| run.actuals_per_s_achieved)),
            repeats_note(runs.len())
        );
        let (p50, p50_txt) = fresh_pct(&runs, P50);
        let (p99, p99_txt) = fresh_pct(&runs, P99);
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
        if let Some((_, py_runs)) = python_by_rate.iter().find(|(r, _)| *r == rate) {
            let (py50, py99) = (fresh_pct(py_runs, P50).0, fresh_pct(py_runs, P99).0);
            let _ = writeln!(
                o,
                "| (ratio, scenario 2) | freshness at {} batches/s, p50 / p99: refit {} / {} ms vs {} {} / {} ms | {}× / {}× faster | – |",
                rate_txt(rate), f(p50), f(p99), py_runs[0].label(), f(py50), f(py99), f(py50 / p50), f(py99 / p99)
            );
        }
    }
}

/// The highest rate of the ramp that kept up: the step's nominal rate when the writer achieved
/// it (within 2 %: the step's wall time includes its last write), else what it achieved.
pub(crate) fn sustained_rate(ramp: Option<&RampRun>) -> f64 {
    ramp.map_or(&[][..], |r| &r.steps[..])
        .iter()
        .filter(|step| step.kept_up)
        .map(|step| {
            if step.offered_per_s >= 0.98 * step.rate {
                step.rate
            } else {
                step.offered_per_s
            }
        })
        .fold(0.0, f64::max)
}

/// Scenario 3: the sustained rate, the ratio to Python, memory.
fn ramp_targets(o: &mut String, r: &Results) {
    let Some(ramp) = &r.ramp else {
        return;
    };
    let users = ramp.refit.users;
    let refit = sustained_rate(Some(&ramp.refit));
    let _ = writeln!(
        o,
        "| ≥ 200 retrains/s sustained | {users} users, arrival rate raised until the backlog grows (scenario 3) | {} /s | {} |",
        f(refit),
        verdict(refit >= 200.0)
    );
    if let Some(python) = &ramp.python {
        let python = sustained_rate(Some(python));
        let ratio = refit / python;
        let _ = writeln!(
            o,
            "| ≥ 5× Python | sustained rate, scenario 3: refit {} /s vs Python {} /s | {}× | {} |",
            f(refit),
            f(python),
            f(ratio),
            verdict(ratio >= 5.0)
        );
    }
    let hwm = ramp.refit.vm_hwm_mb;
    let python_hwm = ramp.python.as_ref().map(|p| p.vm_hwm_mb);
    let _ = writeln!(
        o,
        "| RSS ≤ 100 MB | {users} users, whole ramp (VmHWM){} | {} MB | {} |",
        python_hwm
            .filter(|h| h.is_finite())
            .map(|h| format!("; the Python reference's: {} MB", f(h)))
            .unwrap_or_default(),
        f(hwm),
        verdict(hwm <= 100.0)
    );
}

/// Scenario 1: one retrain, batch commit → event read, refit against Python.
fn scenario_one_ratios(o: &mut String, r: &Results) {
    for trees in [100, 1000] {
        let (refit, _) = spread(&step_pcts(r, trees, "refit", Step::EndToEnd, P50));
        let (python, _) = spread(&step_pcts(r, trees, "python", Step::EndToEnd, P50));
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

/// Retrains/s of a round (0: fresh models, 1: continued training) up to the acks.
pub(crate) fn round_rate(t: &Throughput, round: usize) -> f64 {
    t.rounds.get(round).map_or(f64::NAN, |r| r.retrains_per_s)
}

/// The drain: retrains/s of both rounds, against Python, and memory.
fn throughput_targets(o: &mut String, r: &Results, tp: &Throughput) {
    let users = tp.users;
    let (continued, fresh) = (round_rate(tp, 1), round_rate(tp, 0));
    let _ = writeln!(
        o,
        "| ≥ 200 retrains/s | {users} users, continued training (round 2) | {} /s | {} |",
        f(continued),
        verdict(continued >= 200.0)
    );
    let _ = writeln!(o, "| (same, first retrain of each user) | {users} users, fresh models (round 1) | {} /s | {} |", f(fresh), verdict(fresh >= 200.0));
    match &r.throughput_python {
        Some(PythonThroughput::Ran(py)) => {
            for (round, label) in [
                (1, "continued training (round 2)"),
                (0, "fresh models (round 1)"),
            ] {
                let (a, b) = (round_rate(tp, round), round_rate(py, round));
                let ratio = a / b;
                let _ = writeln!(
                    o,
                    "| ≥ 5× Python | {users} users, {label}: refit {} /s vs {} {} /s | {}× | {} |",
                    f(a),
                    py.label(),
                    f(b),
                    f(ratio),
                    verdict(ratio >= 5.0)
                );
            }
        }
        skipped if r.ramp.as_ref().is_none_or(|ramp| ramp.python.is_none()) => {
            let why = match skipped {
                Some(PythonThroughput::Skipped { skipped }) => skipped.as_str(),
                _ => "phase not run",
            };
            let _ = writeln!(o, "| ≥ 5× Python | – | not measured: {why} | – |");
        }
        _ => {}
    }
    let hwm = tp.memory.vm_hwm_mb;
    let _ = writeln!(
        o,
        "| RSS ≤ 100 MB | {users} users, whole throughput run (VmHWM) | {} MB | {} |",
        f(hwm),
        verdict(hwm <= 100.0)
    );
}

/// Growth: train time and model size of the last 100 retrains against the 10th.
fn growth_targets(o: &mut String, r: &Results) {
    for g in r.growth.iter().flatten() {
        let g = match g {
            Growth::Skipped { cap, skipped } => {
                let _ = writeln!(
                    o,
                    "| growth | REFIT_MAX_TREES={cap} | skipped: {skipped} | – |"
                );
                continue;
            }
            Growth::Ran(g) => g,
        };
        let sm = &g.summary;
        let cap = g
            .effective_config
            .get("REFIT_MAX_TREES")
            .map_or("?", String::as_str);
        let cond = format!("REFIT_MAX_TREES={cap}, {} retrains", js(&sm.last_version));
        // Verdict on the typical (median) retrain of the last 100 against the 10th retrain
        // (median of versions 8–12, one sample is too noisy); the worst of the last 100 is shown.
        let (base_t, base_b) = (sm.median_train_ms_v8_12, sm.median_bytes_v8_12);
        let t_ratio = sm.p50_train_ms_last100 / base_t;
        let tmax_ratio = sm.max_train_ms_last100 / base_t;
        let b_ratio = sm.median_bytes_last100 / base_b;
        let bmax_ratio = sm.max_bytes_last100 / base_b;
        let _ = writeln!(o, "| growth: train time ≤ 2× the 10th retrain's | {cond} | median of the last 100 {} ms vs {} ms (v8–12) = {}×; worst of the last 100 {}× | {} |",
            f(sm.p50_train_ms_last100), f(base_t), f(t_ratio), f(tmax_ratio), verdict(t_ratio <= 2.0));
        let _ = writeln!(o, "| growth: model size ≤ 2× the 10th retrain's | {cond} | median of the last 100 {} KB vs {} KB (v8–12) = {}×; largest of the last 100 {}× | {} |",
            f(sm.median_bytes_last100 / 1024.0), f(base_b / 1024.0), f(b_ratio), f(bmax_ratio), verdict(b_ratio <= 2.0));
    }
}
