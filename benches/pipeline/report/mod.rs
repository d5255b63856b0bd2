//! The report of a run, rendered from its typed results (results.rs) and nothing else: the
//! Markdown summary (summary.md, printed at the end and written into BENCHMARKS.md between its
//! `bench:results` markers for a full run) and the PNG chart (scripts/bench-chart.py). Measuring
//! lives in phases.rs and scenarios.rs; this module only reads.
//!
//! - mod.rs: the summary's header, the shared helpers, BENCHMARKS.md and the chart;
//! - targets.rs: the targets table (one function per group of rows);
//! - details.rs: the detail sections (scenario 1, the floor, scenario 3, freshness, per-step cost,
//!   throughput, growth);
//! - steady.rs: the steady-state phase's section (cost per retrain against XGBoost's work);
//! - tests.rs: rendering checks, run by `cargo test --bench pipeline_report`
//!   (benches/pipeline_report.rs; this bench has no test harness).

pub(crate) mod details;
pub(crate) mod steady;
pub(crate) mod targets;

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::results::{Results, StepSummaries, StepsRun, Summary};
use crate::stats::{self, f};

/// The whole summary.md of a run.
pub fn summarize(r: &Results) -> String {
    let mut o = String::new();
    header(&mut o, r);
    targets::table(&mut o, r);
    details::cpu_side_by_side(&mut o, r);
    let _ = writeln!(o);
    details::scenario_one(&mut o, r);
    details::floor(&mut o, r);
    details::ramp(&mut o, r);
    details::freshness(&mut o, r);
    details::per_step(&mut o, r);
    details::throughput(&mut o, r);
    details::growth(&mut o, r);
    steady::steady(&mut o, r);
    o
}

/// Run, machine, command, phase times.
fn header(o: &mut String, r: &Results) {
    let m = &r.machine;
    let _ = writeln!(o, "## Results of run {} ({})\n", r.run_id, r.started);
    let _ = writeln!(
        o,
        "Machine: {} cores ({}), {} GiB, {}, kernel {}. refit at {}{}; quick mode: {}; run took {} min; load average at start/end {} / {}.\n",
        m.nproc, m.cpu_model, js(&m.memory_gib), m.os, m.kernel, r.git.commit,
        if r.git.src_uncommitted_changes { " (with uncommitted changes in src/)" } else { "" },
        r.quick, js(&r.minutes), js(&r.loadavg_start), js(&r.loadavg_end),
    );
    let env = &r.bench_env;
    let knobs: String = env
        .iter()
        .filter(|(k, _)| !["BENCH_PYTHON", "MALLOC_ARENA_MAX"].contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={v} "))
        .collect();
    let _ = writeln!(
        o,
        "Command: `{knobs}make bench` (`cargo bench --locked --bench pipeline` with the release \
         `refit` binary; MALLOC_ARENA_MAX={}; Python reference: {}).\n",
        env.get("MALLOC_ARENA_MAX").map_or("unset", String::as_str),
        env.get("BENCH_PYTHON")
            .map(String::as_str)
            .filter(|p| !p.is_empty())
            .unwrap_or("not run"),
    );
    if !r.phase_minutes.is_empty() {
        let list: Vec<String> = r
            .phase_minutes
            .iter()
            .map(|(k, v)| format!("{k} {} min", f(*v)))
            .collect();
        let _ = writeln!(o, "Phases: {}.\n", list.join(", "));
    }
    if !r.refit_extra_env.is_empty() {
        let _ = writeln!(
            o,
            "refit ran with BENCH_REFIT_ENV: {:?} on top of its defaults.\n",
            r.refit_extra_env
        );
    }
}

// ------------------------------------------------------------------------------------------------
// Shared helpers
// ------------------------------------------------------------------------------------------------

/// A value as JSON (how the report has always printed counts, maps and raw numbers).
fn js<T: Serialize + ?Sized>(x: &T) -> String {
    serde_json::to_string(x).unwrap_or_default()
}

/// An optional number, NaN when absent.
fn or_nan<T: Into<f64> + Copy>(x: Option<T>) -> f64 {
    x.map_or(f64::NAN, Into::into)
}

/// A percentile of a summary.
type Pct = fn(&Summary) -> f64;
const P50: Pct = |s| s.p50;
const P95: Pct = |s| s.p95;
const P99: Pct = |s| s.p99;
const MAX: Pct = |s| s.max;

/// A step of a retrain, as the per-step summaries name it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Step {
    Read,
    Train,
    TrainLoad,
    TrainBoost,
    TrainSave,
    Commit,
    Invalidate,
    Announce,
    EndToEnd,
}

/// The per-step table's columns.
const STEP_COLUMNS: [Step; 8] = [
    Step::Read,
    Step::Train,
    Step::TrainLoad,
    Step::TrainBoost,
    Step::TrainSave,
    Step::Commit,
    Step::Invalidate,
    Step::Announce,
];

/// Something with per-step summaries.
trait Steps {
    fn step(&self, step: Step) -> Option<&Summary>;
}

impl Steps for StepSummaries {
    fn step(&self, step: Step) -> Option<&Summary> {
        Some(match step {
            Step::Read => &self.read,
            Step::Train => &self.train,
            Step::TrainLoad => &self.train_load,
            Step::TrainBoost => &self.train_boost,
            Step::TrainSave => &self.train_save,
            Step::Commit => &self.commit,
            Step::Invalidate => &self.invalidate,
            Step::Announce => &self.announce,
            Step::EndToEnd => return None,
        })
    }
}

impl Steps for StepsRun {
    fn step(&self, step: Step) -> Option<&Summary> {
        match step {
            Step::EndToEnd => Some(&self.end_to_end),
            _ => self.steps.step(step),
        }
    }
}

/// "p50 / p99" of a summary.
fn pp(s: Option<&Summary>) -> String {
    let (p50, p99) = s.map_or((f64::NAN, f64::NAN), |s| (s.p50, s.p99));
    format!("{} / {}", f(p50), f(p99))
}

/// A rate as configured: "4", "2.5".
fn rate_txt(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x}")
    }
}

/// `pct` of `step` in each run (runs without that step are left out).
fn pcts<T: Steps>(runs: &[&T], step: Step, pct: Pct) -> Vec<f64> {
    runs.iter()
        .filter_map(|run| run.step(step).map(pct))
        .filter(|x| x.is_finite())
        .collect()
}

/// "p50 / p99" of the same step over several runs: the medians, with the spread of the p50s.
fn pp_runs<T: Steps>(runs: &[&T], step: Step) -> String {
    if runs.len() == 1 {
        return pp(runs[0].step(step));
    }
    let (_, p50) = spread(&pcts(runs, step, P50));
    let (p99, _) = spread(&pcts(runs, step, P99));
    format!("{p50} / {}", f(p99))
}

/// Verdict on the medians (over runs) of p50 and p99.
fn pp_verdict_runs<T: Steps>(runs: &[&T], step: Step, target: f64) -> String {
    let p50 = spread(&pcts(runs, step, P50)).0;
    let p99 = spread(&pcts(runs, step, P99)).0;
    if !p50.is_finite() {
        return "no samples".into();
    }
    match (p50 <= target, p99 <= target) {
        (true, true) => "met".into(),
        (true, false) => "p50 met, **p99 not met**".into(),
        _ => "**not met**".into(),
    }
}

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

/// The median of `field` over some runs.
fn median_of<T>(runs: &[&T], field: impl Fn(&T) -> f64) -> f64 {
    spread(&runs.iter().map(|run| field(run)).collect::<Vec<_>>()).0
}

fn repeats_note(n: usize) -> String {
    if n > 1 {
        format!(", median of {n} repeats [min–max]")
    } else {
        String::new()
    }
}

/// Runs of a repeated phase grouped by their rate, in the order the rates first appear.
fn by_rate<T>(runs: &[T], rate: impl Fn(&T) -> f64) -> Vec<(f64, Vec<&T>)> {
    let mut groups: Vec<(f64, Vec<&T>)> = Vec::new();
    for run in runs {
        let r = rate(run);
        match groups.iter_mut().find(|(g, _)| *g == r) {
            Some((_, g)) => g.push(run),
            None => groups.push((r, vec![run])),
        }
    }
    groups
}

/// Scenario 1's runs of one implementation ("refit" or "python") at `trees` trees.
fn steps_runs<'a>(r: &'a Results, trees: i64, implementation: &str) -> Vec<&'a StepsRun> {
    r.steps
        .iter()
        .flatten()
        .filter(|run| run.trees == trees)
        .filter_map(|run| match implementation {
            "refit" => Some(&run.refit),
            _ => run.python.as_ref(),
        })
        .collect()
}

/// `pct` of `step` of `implementation` over the repeats of scenario 1 at `trees` trees.
fn step_pcts(r: &Results, trees: i64, implementation: &str, step: Step, pct: Pct) -> Vec<f64> {
    pcts(&steps_runs(r, trees, implementation), step, pct)
}

/// refit's per-step sources: scenario 1 (one batch at a time), paced freshness, the saturated
/// drain; each with its condition.
fn step_sources(r: &Results) -> Vec<(String, Vec<&StepSummaries>)> {
    let mut sources: Vec<(String, Vec<&StepSummaries>)> = Vec::new();
    for trees in [100, 1000] {
        let runs = steps_runs(r, trees, "refit");
        if !runs.is_empty() {
            let trees = if trees == 1000 { "1,000" } else { "100" };
            sources.push((
                format!(
                    "scenario 1: {trees} trees, one batch at a time{}",
                    repeats_note(runs.len())
                ),
                runs.iter().map(|run| &run.steps).collect(),
            ));
        }
    }
    for (rate, runs) in by_rate(r.freshness.as_deref().unwrap_or_default(), |f| {
        f.rate_batches_per_s
    }) {
        sources.push((
            format!(
                "paced, {} batches/s, {} users{}",
                rate_txt(rate),
                runs[0].users,
                repeats_note(runs.len())
            ),
            runs.iter().map(|run| &run.steps_ms).collect(),
        ));
    }
    if let Some(tp) = &r.throughput_refit {
        if let crate::results::ThroughputSteps::Refit { round2, .. } = &tp.steps_ms {
            sources.push((
                format!("saturated: {}-user drain, continued (round 2)", tp.users),
                vec![round2],
            ));
        }
    }
    sources
}

// ------------------------------------------------------------------------------------------------
// Writing the report: summary.md, the chart, BENCHMARKS.md
// ------------------------------------------------------------------------------------------------

/// summary.md next to the results (and on stdout), the PNG chart, and for a full run the results
/// section of BENCHMARKS.md and benchmarks.png at the top level.
pub fn write(out_dir: &Path, results: &Results, python: Option<&str>) -> anyhow::Result<()> {
    let summary = summarize(results);
    std::fs::write(out_dir.join("summary.md"), &summary)?;
    println!("{summary}");
    let document = !results.quick && std::env::var("BENCH_WRITE_DOC").map_or(true, |v| v != "0");
    if let Some(python) = python {
        chart(out_dir, python, document);
    }
    if document {
        write_document(&summary);
    }
    Ok(())
}

/// benchmarks.png from results.json (scripts/bench-chart.py, with the bench venv's matplotlib).
fn chart(out_dir: &Path, python: &str, document: bool) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chart = out_dir.join("benchmarks.png");
    let made = std::process::Command::new(python)
        .arg(root.join("scripts/bench-chart.py"))
        .arg(out_dir.join("results.json"))
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

/// The summary into BENCHMARKS.md, between its `bench:results` markers.
fn write_document(summary: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
    let Ok(doc) = std::fs::read_to_string(&path) else {
        return;
    };
    match with_section(&doc, summary) {
        Some(new) => match std::fs::write(&path, new) {
            Ok(()) => eprintln!("[bench] results written to {}", path.display()),
            Err(e) => eprintln!("[bench] BENCHMARKS.md not written: {e}"),
        },
        None => eprintln!("[bench] BENCHMARKS.md has no {BEGIN} … {END} section; not written"),
    }
}

const BEGIN: &str = "<!-- bench:results:begin -->";
const END: &str = "<!-- bench:results:end -->";

/// `doc` with the summary between its markers (None without them).
pub(crate) fn with_section(doc: &str, summary: &str) -> Option<String> {
    match (doc.find(BEGIN), doc.find(END)) {
        (Some(b), Some(e)) if b < e => Some(format!(
            "{}{BEGIN}\n<!-- written by `make bench`; edits here are overwritten -->\n\n{}\n{}",
            &doc[..b],
            summary.trim_end(),
            &doc[e..]
        )),
        _ => None,
    }
}
