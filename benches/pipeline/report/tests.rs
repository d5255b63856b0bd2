//! Rendering checks: small typed results in, the expected rows out.

use crate::results::*;

fn summary(p50: f64, p99: f64) -> Summary {
    Summary {
        n: 10,
        mean: p50,
        p50,
        p90: p99,
        p95: p99,
        p99,
        max: p99,
        min: p50,
    }
}

fn steps(read: f64) -> StepSummaries {
    let s = summary(1.0, 2.0);
    StepSummaries {
        read: summary(read, read * 2.0),
        train: summary(12.0, 30.0),
        train_load: s.clone(),
        train_boost: s.clone(),
        train_save: s.clone(),
        commit: s.clone(),
        invalidate: summary(0.2, 0.5),
        announce: s,
    }
}

fn steps_entry(trees: i64, repeat: usize, read: f64) -> StepsEntry {
    StepsEntry {
        trees,
        repeat,
        refit: StepsRun {
            steps: steps(read),
            end_to_end: summary(20.0, 40.0),
            statuses: Counts::from([("ok".to_owned(), 10)]),
            vm_hwm_mb: 30.0,
        },
        python: None,
    }
}

#[test]
fn step_targets_give_medians_with_spread_and_verdicts() {
    let r = Results {
        steps: Some(vec![steps_entry(100, 1, 1.0), steps_entry(100, 2, 3.0)]),
        ..Results::default()
    };
    let mut o = String::new();
    crate::report::targets::table(&mut o, &r);
    assert!(o.contains(
        "| read ≤ 5 ms (p50 / p99) | scenario 1: 100 trees, one batch at a time, median of 2 \
         repeats [min–max] | 1.00 [1.00–3.00] / 2.00 ms | met |"
    ));
    assert!(o.contains(
        "| train ≤ 20 ms (p50 / p99) | scenario 1: 100 trees, one batch at a time, median of 2 \
         repeats [min–max] | 12.0 [12.0–12.0] / 30.0 ms | p50 met, **p99 not met** |"
    ));
}

#[test]
fn scenario_one_table_has_a_row_per_step() {
    let r = Results {
        steps: Some(vec![steps_entry(100, 1, 1.0)]),
        ..Results::default()
    };
    let mut o = String::new();
    crate::report::details::scenario_one(&mut o, &r);
    assert!(o.contains("One user with a seeded model, 10 batches written one at a time"));
    assert!(o.contains("| read | 1.00 | – | – | – | – | – |\n"));
    assert!(o.contains("| **commit → event read** | 20.0 | – | – | – | – | – |\n"));
}

#[test]
fn growth_rows_show_the_chosen_versions() {
    let version = |v: i32| GrowthVersion {
        version: v,
        status: "ready".into(),
        source: "retrain".into(),
        trees: Some(v * 10),
        bytes: Some(2048),
        read_ms: Some(1.5),
        train_ms: None,
        load_ms: None,
        boost_ms: None,
        save_ms: None,
    };
    let mut o = String::new();
    crate::report::details::version_row(&mut o, &version(10));
    assert_eq!(
        o,
        "| 10 | ready | retrain | 100 | 2.00 | 1.50 | – | – | – | – |\n"
    );
}

#[test]
fn the_section_goes_between_the_markers() {
    let doc = "intro\n<!-- bench:results:begin -->\nold\n<!-- bench:results:end -->\nafter\n";
    let new = crate::report::with_section(doc, "## Results\n\n").unwrap();
    assert_eq!(
        new,
        "intro\n<!-- bench:results:begin -->\n<!-- written by `make bench`; edits here are \
         overwritten -->\n\n## Results\n<!-- bench:results:end -->\nafter\n"
    );
    assert!(crate::report::with_section("no markers", "x").is_none());
}

#[test]
fn results_read_back_as_written() {
    let r = Results {
        steps: Some(vec![steps_entry(1000, 1, 2.0)]),
        ..Results::default()
    };
    let json = serde_json::to_string(&r).unwrap();
    let back: Results = serde_json::from_str(&json).unwrap();
    assert_eq!(
        crate::report::summarize(&back),
        crate::report::summarize(&r)
    );
}

/// A recorded run's results (a quick run's, with Python, repeats and a skipped growth run added)
/// and the summary the JSON-walking renderer this module replaced made of them.
#[test]
fn the_summary_of_a_recorded_run_is_as_before() {
    let results: Results = serde_json::from_str(include_str!("testdata/results.json")).unwrap();
    let expected = include_str!("testdata/summary.md");
    let rendered = crate::report::summarize(&results);
    for (i, (a, b)) in rendered.lines().zip(expected.lines()).enumerate() {
        assert_eq!(a, b, "line {}", i + 1);
    }
    assert_eq!(rendered, expected);
}
