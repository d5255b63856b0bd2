//! refit's continued model equals Python xgboost continuing the same version on the same rows.

use serde_json::{json, Value};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continued_model_matches_python_xgboost_continuing_the_same_version() {
    let env = TestEnv::new().await;
    let service = env
        .service(&[
            ("REFIT_ROUNDS_PER_RETRAIN", "7"),
            ("REFIT_COMPACTION_ROUNDS", "7"),
            // Continue steps at their own learning rate, as the default policy does.
            ("REFIT_CONTINUE_ETA", "0.05"),
            ("REFIT_XGB_PARAMS", r#"{"max_depth": 4, "eta": 0.2}"#),
        ])
        .await;
    env.insert_actuals("ivy", 100).await;
    service.retrainer.retrain_user("ivy", 100).await.unwrap();
    service.retrainer.retrain_user("ivy", 50).await.unwrap();
    assert_eq!(env.versions("ivy", "ready").await, [1, 2]);

    let artifact = |v: i32| {
        let pool = env.pool.clone();
        async move {
            sqlx::query_scalar::<_, Vec<u8>>(
                "SELECT artifact FROM refit_model_versions WHERE user_id = 'ivy' AND version = $1",
            )
            .bind(v)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = (dir.path().join("v1.ubj"), dir.path().join("v2.ubj"));
    std::fs::write(&v1, artifact(1).await).unwrap();
    std::fs::write(&v2, artifact(2).await).unwrap();

    // The rows refit used for v2, in refit's consumption order, as upstream stored them.
    let rows: Vec<(String, f64)> = sqlx::query_as(
        "SELECT r.features::text, a.actual_value FROM refit_consumed_actuals c
           JOIN actual_rentals a ON a.id = c.actual_id JOIN prediction_requests r USING (request_id)
          WHERE c.user_id = 'ivy' AND c.version = 2 AND c.outcome = 'trained' ORDER BY c.actual_id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 50);
    let (mut params, features): (Value, Value) = sqlx::query_as(
        "SELECT params, features FROM refit_model_versions WHERE user_id = 'ivy' AND version = 2",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    // Python continues with the stored parameters and the continue step's learning rate.
    assert_eq!(
        params["eta"], "0.2",
        "the version stores the model's own parameters"
    );
    params["eta"] = json!("0.05");
    let probe: Vec<Value> = (0..24)
        .map(|h| json!({"hour": h as f64, "weekday": 2.0, "humidity": 60.0, "temperature": 15.0}))
        .collect();
    let spec = json!({
        "previous": v1, "refit": v2, "features": features, "params": params, "rounds": 7,
        "rows": rows.iter().map(|(f, _)| serde_json::from_str::<Value>(f).unwrap()).collect::<Vec<_>>(),
        "labels": rows.iter().map(|(_, y)| y).collect::<Vec<_>>(),
        "probe": probe,
    });
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let out = std::process::Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/oracle/continue_training.py"
        ))
        .arg(&spec_path)
        .output()
        .expect("the Python oracle runs (scripts/install-deps.sh makes its venv)");
    assert!(
        out.status.success(),
        "oracle failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["python_rounds"], 14);
    assert_eq!(result["refit_rounds"], 14);
    assert_eq!(
        result["refit_features"],
        json!(["hour", "humidity", "temperature", "weekday"])
    );
    let diff = result["max_abs_diff"].as_f64().unwrap();
    eprintln!("python oracle: {result}");
    assert!(diff <= 1e-6, "refit and Python differ by {diff}: {result}");
    // And the comparison is not vacuous: continuing changed the predictions.
    assert!(
        result["previous_vs_refit"].as_f64().unwrap() > 1e-3,
        "{result}"
    );
}
