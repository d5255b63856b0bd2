//! A few hundred hours of the real bike-rental stream (UCI Bike Sharing, fetched by
//! scripts/install-deps.sh) through `refit run` with the default policy: the live error stored
//! with each version equals Python's error of the exported serving version on that version's
//! batch, the gate lets clean data through and stops batches whose labels are shuffled against
//! their features or ten times too large, and the models do not diverge.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::processes::spawn_refit;
use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_refit");
/// Clean batches: a fresh model, then continue steps with a rebuild every 4th batch (5th, 9th).
const BATCHES: usize = 9;

fn bike_csv() -> String {
    std::env::var("REFIT_BIKESHARE_CSV").unwrap_or_else(|_| {
        format!(
            "{}/.cache/refit/bikeshare/bike-rental-dataset.csv",
            std::env::var("HOME").unwrap()
        )
    })
}

fn oracle(args: &[&str]) -> Value {
    let out = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/oracle/bike_stream.py"
        ))
        .args(args)
        .output()
        .expect("the Python oracle runs (scripts/install-deps.sh makes its venv)");
    assert!(
        out.status.success(),
        "oracle {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_error_of_each_version_matches_python_on_the_real_stream() {
    let env = TestEnv::new().await;
    let stream = oracle(&["rows", &bike_csv(), &(BATCHES * 50).to_string()]);
    let features: Vec<String> = serde_json::from_value(stream["features"].clone()).unwrap();
    let rows = stream["rows"].as_array().unwrap();
    assert_eq!(rows.len(), BATCHES * 50);

    // The default policy, as a new user gets it.
    let names = features.join(",");
    let mut refit = spawn_refit(
        &env,
        &[
            [("REFIT_FEATURES", names.as_str())].as_slice(),
            &DEFAULT_POLICY,
        ]
        .concat(),
    );
    refit
        .wait_for_line("refit starting", Duration::from_secs(30))
        .await;
    for (k, batch) in rows.chunks(50).enumerate() {
        let labels: Vec<f64> = batch.iter().map(|r| r["y"].as_f64().unwrap()).collect();
        insert_batch(&env, batch, &labels, k + 1).await;
    }
    refit.signal("TERM");
    assert_eq!(
        refit.wait_exit(Duration::from_secs(30)).await.code(),
        Some(0)
    );

    let versions: Vec<(i32, String, Option<i32>, Value)> = sqlx::query_as(
        "SELECT version, status, parent_version, metrics FROM refit_model_versions
          WHERE user_id = 'dc' ORDER BY version",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let rejected: Vec<i32> = versions
        .iter()
        .filter(|v| v.1 != "ready")
        .map(|v| v.0)
        .collect();
    assert!(rejected.is_empty(), "clean data rejected: {rejected:?}");

    // Each version's batch and the version that served when it arrived, exported as operators do.
    let dir = tempfile::tempdir().unwrap();
    let mut spec = Vec::new();
    for (version, _, _, metrics) in versions.iter().skip(1) {
        let serving = metrics["live"]["version"].as_i64().unwrap() as i32;
        assert_eq!(serving, version - 1, "every version was accepted");
        let path = dir.path().join(format!("v{serving}.ubj"));
        let out = Command::new(BIN)
            .args(["models", "export", "--user", "dc", "--version"])
            .arg(serving.to_string())
            .arg("--out")
            .arg(&path)
            .env("DATABASE_URL", &env.database_url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let batch: Vec<(Value, f64)> = sqlx::query_as(
            "SELECT r.features, a.actual_value FROM refit_consumed_actuals c
               JOIN actual_rentals a ON a.id = c.actual_id
               JOIN prediction_requests r USING (request_id)
              WHERE c.user_id = 'dc' AND c.version = $1 ORDER BY c.actual_id",
        )
        .bind(version)
        .fetch_all(&env.pool)
        .await
        .unwrap();
        spec.push(json!({
            "version": version,
            "model": path,
            "rows": batch.iter().map(|b| &b.0).collect::<Vec<_>>(),
            "labels": batch.iter().map(|b| b.1).collect::<Vec<_>>(),
        }));
    }
    let spec_path = dir.path().join("spec.json");
    std::fs::write(
        &spec_path,
        json!({"features": features, "versions": spec}).to_string(),
    )
    .unwrap();
    let python = oracle(&["score", spec_path.to_str().unwrap()]);

    let labels: Vec<f64> = rows.iter().map(|r| r["y"].as_f64().unwrap()).collect();
    let mean = labels.iter().sum::<f64>() / labels.len() as f64;
    let spread =
        (labels.iter().map(|y| (y - mean).powi(2)).sum::<f64>() / labels.len() as f64).sqrt();
    for (expected, (version, _, _, metrics)) in
        python.as_array().unwrap().iter().zip(&versions[1..])
    {
        assert_eq!(expected["version"], *version);
        let live = &metrics["live"];
        assert_eq!(live["rows"], expected["rows"]);
        for measure in ["mae", "rmse"] {
            let (refit, python) = (
                live[measure].as_f64().unwrap(),
                expected[measure].as_f64().unwrap(),
            );
            assert!(
                (refit - python).abs() <= 1e-9 * python.max(1.0),
                "v{version} live {measure}: refit {refit}, Python {python}"
            );
        }
        // A sanity bound, not a quality claim (QUALITY.md has those): no divergence.
        let mae = live["mae"].as_f64().unwrap();
        assert!(
            mae < spread,
            "v{version}: live MAE {mae} ≥ the target's spread {spread}"
        );
    }
    let steps: Vec<&str> = versions
        .iter()
        .map(|v| v.3["policy"]["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps[0], "fresh");
    assert_eq!(
        (steps[4], steps[BATCHES - 1]),
        ("rebuild", "rebuild"),
        "a rebuild every 4 batches: {steps:?}"
    );
}

/// Inserts one batch of the stream for user `dc` and waits until refit has made `versions`.
async fn insert_batch(env: &TestEnv, batch: &[Value], labels: &[f64], versions: usize) {
    for (row, label) in batch.iter().zip(labels) {
        insert_actual(&env.pool, "dc", &row["x"], *label).await;
    }
    eventually(Duration::from_secs(60), "the batch consumed", || async {
        env.count("SELECT count(*) FROM refit_model_versions WHERE user_id = 'dc'")
            .await
            == versions as i64
    })
    .await;
}

async fn status(env: &TestEnv, version: usize) -> String {
    sqlx::query_scalar(
        "SELECT status FROM refit_model_versions WHERE user_id = 'dc' AND version = $1",
    )
    .bind(version as i32)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_stops_shuffled_and_inflated_labels_on_the_real_stream() {
    let env = TestEnv::new().await;
    // Summer 2011: a day's rentals range from a handful at night to hundreds at rush hour.
    let stream = oracle(&["rows", &bike_csv(), "600", "4000"]);
    let features: Vec<String> = serde_json::from_value(stream["features"].clone()).unwrap();
    let rows: Vec<Value> = stream["rows"].as_array().unwrap().clone();
    let names = features.join(",");
    let mut refit = spawn_refit(
        &env,
        &[
            [("REFIT_FEATURES", names.as_str())].as_slice(),
            &DEFAULT_POLICY,
        ]
        .concat(),
    );
    refit
        .wait_for_line("refit starting", Duration::from_secs(30))
        .await;
    let batches: Vec<&[Value]> = rows.chunks(50).collect();
    let labels = |k: usize| -> Vec<f64> {
        batches[k]
            .iter()
            .map(|r| r["y"].as_f64().unwrap())
            .collect()
    };
    for (k, batch) in batches.iter().take(9).enumerate() {
        insert_batch(&env, batch, &labels(k), k + 1).await;
    }
    // Clean batches end up serving (an early one may be held back once, then reinstated).
    for v in 1..=9 {
        assert_eq!(status(&env, v).await, "ready", "clean batch of v{v}");
    }
    // Labels permuted among the batch's hours: features and outcomes no longer match.
    let mut shuffled = labels(9);
    let n = shuffled.len();
    shuffled = (0..n).map(|i| shuffled[(i * 17 + 11) % n]).collect();
    insert_batch(&env, batches[9], &shuffled, 10).await;
    assert_eq!(status(&env, 10).await, "rejected", "shuffled labels");
    // Ten times too many rentals (a unit mix-up upstream).
    let inflated: Vec<f64> = labels(10).iter().map(|y| y * 10.0).collect();
    insert_batch(&env, batches[10], &inflated, 11).await;
    assert_eq!(status(&env, 11).await, "rejected", "labels × 10");
    // Clean data again: accepted, built on the last accepted version, nothing reinstated.
    insert_batch(&env, batches[11], &labels(11), 12).await;
    assert_eq!(status(&env, 12).await, "ready");
    let (parent, reinstated): (Option<i32>, Value) = sqlx::query_as(
        "SELECT parent_version, metrics->'policy'->'reinstated' FROM refit_model_versions
          WHERE user_id = 'dc' AND version = 12",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((parent, reinstated), (Some(9), Value::Null));
    refit.signal("TERM");
    assert_eq!(
        refit.wait_exit(Duration::from_secs(30)).await.code(),
        Some(0)
    );
}
