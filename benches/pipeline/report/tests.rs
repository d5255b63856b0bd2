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

/// A recorded run's results (a quick run's, with Python, repeats and a skipped growth run added;
/// the steady section from a 200-user steady run, rendered by its own renderer)
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

#[test]
fn steady_section_states_cpu_against_xgboost() {
    let cpu = Cpu {
        wall_s: 10.0,
        process_cpu_s: 2.0,
        its_postgres_backends_cpu_s: 1.0,
        machine_busy_cpu_s: 6.0,
        process_cores: 0.2,
        its_postgres_cores: 0.1,
        rest_of_machine_cores: 0.3,
        process_cpu_ms_per_retrain: 2.0,
        postgres_cpu_ms_per_retrain: 1.0,
    };
    let round = SteadyRound {
        round: 1,
        version: 81,
        load_seconds: 1.0,
        retrains: 1000,
        complete: true,
        seconds_commit_to_last_event: 5.0,
        retrains_per_s_read: 200.0,
        retrains_per_s: 201.0,
        versions_by_step: Counts::from([("continue".to_owned(), 1000)]),
        versions_by_status: Counts::from([("ready".to_owned(), 1000)]),
        cpu,
        machine_cpu_ms_per_retrain: 6.0,
        wal_bytes: 5e7,
        wal_bytes_per_retrain: 5e4,
        xgboost_ms: summary(1.5, 3.0),
        load_ms: summary(1.0, 2.0),
        boost_ms: summary(0.3, 0.5),
        save_ms: summary(0.2, 0.5),
        train_step_ms: summary(4.0, 8.0),
        models_cached: 0,
        trees: summary(36.0, 36.0),
        loadavg_before_after: [Some(1.0), Some(2.0)],
    };
    let r = Results {
        steady: Some(Steady {
            users: 1000,
            history_rows_per_user: 4000,
            rounds: vec![round],
            overall: SteadyTotals {
                retrains: 1000,
                refit_cpu_ms_per_retrain: 2.0,
                postgres_cpu_ms_per_retrain: 1.0,
                xgboost_ms_per_retrain: 1.5,
                cpu_to_xgboost: 2.0,
                ..SteadyTotals::default()
            },
            pg_stat_statements: StatementStats::Skipped(
                "not loaded (shared_preload_libraries)".into(),
            ),
            ..Steady::default()
        }),
        ..Results::default()
    };
    let o = crate::report::summarize(&r);
    assert!(o.contains("### Steady state: cost per retrain"));
    assert!(o.contains(
        "| 1 | 81 | 1000 | {\"continue\":1000} | {\"ready\":1000} | **201** | 200 | 2.00 / 1.00 / 6.00 |"
    ));
    assert!(o.contains("**3.00 ms, 2.00× the XGBoost work**"));
    assert!(o.contains("`pg_stat_statements`: not loaded (shared_preload_libraries)."));
    let back: Results = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(crate::report::summarize(&back), o);
}

#[test]
fn freshness_shows_continues_and_rebuilds_apart() {
    let mut results: Results = serde_json::from_str(include_str!("testdata/results.json")).unwrap();
    let runs = results.freshness.as_mut().unwrap();
    for (i, run) in runs.iter_mut().enumerate() {
        let slower = i as f64;
        run.freshness_by_step_ms = [
            ("continue".to_owned(), summary(15.0 + slower, 25.0)),
            ("rebuild".to_owned(), summary(24.0 + slower, 35.0)),
        ]
        .into();
    }
    let mut o = String::new();
    crate::report::details::freshness(&mut o, &results);
    assert!(
        o.contains("| refit: commit → event read, continue versions (10 in the first run) | 15.0"),
        "{o}"
    );
    assert!(
        o.contains("| refit: commit → event read, rebuild versions (10 in the first run) | 24.0")
    );
}

#[test]
fn per_step_shows_the_round_trip_floors_when_measured() {
    let mut r = Results {
        steps: Some(vec![steps_entry(100, 1, 1.0)]),
        ..Default::default()
    };
    let mut o = String::new();
    crate::report::details::per_step(&mut o, &r);
    assert!(!o.contains("until its acknowledgement"), "{o}");
    r.round_trips = Some(RoundTrips {
        kafka_ack: summary(0.91, 2.5),
        postgres_select: summary(0.12, 0.31),
    });
    let mut o = String::new();
    crate::report::details::per_step(&mut o, &r);
    assert!(
        o.contains("until its acknowledgement (refit's producer settings) 0.91 / 2.50 ms"),
        "{o}"
    );
    assert!(o.contains("`SELECT 1` 0.12 / 0.31 ms"), "{o}");
}
