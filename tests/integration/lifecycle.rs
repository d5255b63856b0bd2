//! The model registry, the validation gate, bounded growth and the serving reference.

use std::process::Command;
use std::time::Duration;

use refit::retrain::Outcome;
use serde_json::{json, Value};

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_refit");
const WAIT: Duration = Duration::from_secs(20);

fn model_tool(args: &[&str]) -> Value {
    let out = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/oracle/model_tool.py"
        ))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "model_tool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if out.stdout.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs `refit <args>` against the environment; returns (exit code, stdout, stderr).
pub(crate) fn refit(env: &TestEnv, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_clear()
        .envs(env.vars(&[]))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub(crate) fn refit_json(env: &TestEnv, args: &[&str]) -> Value {
    let (code, stdout, stderr) = refit(env, args);
    assert_eq!(code, 0, "refit {args:?} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("refit {args:?}: {e}: {stdout}"))
}

pub(crate) const PROBE: &str = r#"{"hour": 8, "weekday": 2, "humidity": 55, "temperature": 14.5}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_commands_work_on_real_services() {
    let env = TestEnv::new().await;
    let service = env.service(&[]).await;
    let reader = env.reader();
    env.insert_actuals("olga", 100).await;
    service.retrainer.retrain_user("olga", 100).await.unwrap();
    service.retrainer.retrain_user("olga", 50).await.unwrap();
    env.outbox_drained(WAIT).await;

    let list = refit_json(&env, &["models", "list", "--user", "olga", "--json"]);
    let versions: Vec<(i64, bool, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_i64().unwrap(),
                v["active"].as_bool().unwrap(),
                v["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        versions,
        [
            (2, true, "ready".to_owned()),
            (1, false, "ready".to_owned())
        ]
    );
    let (_, table, _) = refit(&env, &["models", "list", "--status", "ready"]);
    assert!(
        table.starts_with("USER") && table.lines().count() == 3,
        "{table}"
    );

    let shown = refit_json(
        &env,
        &[
            "models",
            "show",
            "--user",
            "olga",
            "--version",
            "1",
            "--json",
        ],
    );
    assert_eq!(shown["rows_used"], 50);
    assert_eq!(shown["trees"], 5);
    assert_eq!(
        shown["features"],
        json!(["hour", "humidity", "temperature", "weekday"])
    );
    assert_eq!(shown["params"]["objective"], "reg:squarederror");
    assert!(shown["artifact_bytes"].as_i64().unwrap() > 100);

    // Export → Python xgboost predicts what `refit predict` predicts.
    let dir = tempfile::tempdir().unwrap();
    let exported = dir.path().join("olga-v2.ubj");
    let (code, _, stderr) = refit(
        &env,
        &[
            "models",
            "export",
            "--user",
            "olga",
            "--out",
            exported.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let python = model_tool(&["predict", exported.to_str().unwrap(), PROBE]);
    let predicted = refit_json(
        &env,
        &["predict", "--user", "olga", "--features", PROBE, "--json"],
    );
    assert_eq!(predicted["version"], 2);
    assert!(
        (python["prediction"].as_f64().unwrap() - predicted["prediction"].as_f64().unwrap()).abs()
            < 1e-5,
        "{python} vs {predicted}"
    );

    // Rollback invalidates the cache and announces.
    env.cache_model("olga").await;
    let rolled = refit_json(&env, &["models", "rollback", "--user", "olga", "--json"]);
    assert_eq!(
        (
            rolled["previous_version"].as_i64(),
            rolled["active_version"].as_i64()
        ),
        (Some(2), Some(1))
    );
    assert!(
        !env.cached("olga").await,
        "rollback must invalidate model:olga"
    );
    assert_eq!(env.active_version("olga").await, Some(1));

    let promoted = refit_json(
        &env,
        &[
            "models",
            "promote",
            "--user",
            "olga",
            "--version",
            "2",
            "--json",
        ],
    );
    assert_eq!(promoted["active_version"], 2);

    // Import a data scientist's model: the next version, active, features from the file.
    let file = dir.path().join("ds.json");
    model_tool(&["train", file.to_str().unwrap()]);
    let imported = refit_json(
        &env,
        &[
            "models",
            "import",
            "--user",
            "olga",
            "--file",
            file.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(imported["active_version"], 3);
    let shown = refit_json(&env, &["models", "show", "--user", "olga", "--json"]);
    assert_eq!(
        (
            shown["version"].as_i64(),
            shown["source"].as_str(),
            shown["trees"].as_i64()
        ),
        (Some(3), Some("import"), Some(12))
    );
    assert_eq!(shown["features"], json!(["hour", "temperature"]));
    let garbage = dir.path().join("garbage.ubj");
    std::fs::write(&garbage, b"not a model").unwrap();
    let (code, _, stderr) = refit(
        &env,
        &[
            "models",
            "import",
            "--user",
            "olga",
            "--file",
            garbage.to_str().unwrap(),
        ],
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("invalid model"), "{stderr}");

    let events = read_events(&reader, 5, WAIT);
    let actions: Vec<(String, Option<i32>)> = events
        .iter()
        .map(|e| (e.event.action.clone(), e.event.active_version))
        .collect();
    assert_eq!(
        actions,
        [
            ("retrain".into(), Some(1)),
            ("retrain".into(), Some(2)),
            ("rollback".into(), Some(1)),
            ("promote".into(), Some(2)),
            ("import".into(), Some(3))
        ]
    );

    // Prune keeps the newest N and never the active version.
    refit_json(
        &env,
        &[
            "models", "rollback", "--user", "olga", "--to", "1", "--json",
        ],
    );
    let pruned = refit_json(
        &env,
        &["models", "prune", "--user", "olga", "--keep", "1", "--json"],
    );
    assert_eq!(pruned["deleted"], 1);
    let left: Vec<i64> = refit_json(&env, &["models", "list", "--user", "olga", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert_eq!(left, [3, 1], "v3 is the newest, v1 is active");

    // Every write is in the audit trail (the refused import is not: it wrote nothing).
    let history = refit_json(&env, &["models", "history", "--user", "olga", "--json"]);
    let writes: Vec<(&str, &Value, &Value)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), &e["old"], &e["new"]))
        .collect();
    let active = |v: i64| json!({"active_version": v});
    assert_eq!(
        writes,
        [
            ("prune", &json!({"versions": [2]}), &json!({"versions": []})),
            ("rollback", &active(3), &active(1)),
            ("import", &active(2), &active(3)),
            ("promote", &active(1), &active(2)),
            ("rollback", &active(2), &active(1)),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_fills_the_cache_and_refills_after_a_retrain() {
    let env = TestEnv::new().await;
    let service = env.service(&[]).await;
    env.insert_actuals("pia", 50).await;
    service.retrainer.retrain_user("pia", 50).await.unwrap();
    env.outbox_drained(WAIT).await;

    let first = refit_json(
        &env,
        &["predict", "--user", "pia", "--features", PROBE, "--json"],
    );
    assert_eq!(
        (first["cache"].as_str(), first["version"].as_i64()),
        (Some("miss"), Some(1))
    );
    assert!(env.cached("pia").await);
    let second = refit_json(
        &env,
        &["predict", "--user", "pia", "--features", PROBE, "--json"],
    );
    assert_eq!(
        (second["cache"].as_str(), second["version"].as_i64()),
        (Some("hit"), Some(1))
    );
    assert_eq!(first["prediction"], second["prediction"]);

    env.insert_actuals("pia", 50).await;
    service.retrainer.retrain_user("pia", 50).await.unwrap();
    env.outbox_drained(WAIT).await;
    let third = refit_json(
        &env,
        &["predict", "--user", "pia", "--features", PROBE, "--json"],
    );
    assert_eq!(
        (third["cache"].as_str(), third["version"].as_i64()),
        (Some("miss"), Some(2))
    );

    let (code, _, stderr) = refit(
        &env,
        &[
            "predict",
            "--user",
            "pia",
            "--features",
            r#"{"hour": "eight"}"#,
        ],
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("non_numeric_feature"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_version_leaves_serving_untouched() {
    let env = TestEnv::new().await;
    let service = env
        .service(&[
            ("REFIT_VALIDATION", "on"),
            ("REFIT_VALIDATION_TOLERANCE", "0"),
        ])
        .await;
    let reader = env.reader();
    env.insert_actuals("quinn", 50).await;
    assert!(matches!(
        service.retrainer.retrain_user("quinn", 50).await.unwrap(),
        Outcome::Trained {
            version: 1,
            rows_used: 50,
            ..
        }
    ));
    env.outbox_drained(WAIT).await;
    let before = refit_json(
        &env,
        &["predict", "--user", "quinn", "--features", PROBE, "--json"],
    );
    assert_eq!(before["cache"], "miss");

    // 40 corrupted labels, then 10 normal ones: the candidate continued on them scores worse
    // than the active version on the actuals it was trained on.
    let mut ids = Vec::new();
    for i in 0..50 {
        let actual = if i < 40 {
            rental_actual(i) + 1000.0
        } else {
            rental_actual(i)
        };
        ids.push(insert_actual(&env.pool, "quinn", &rental_features(i), actual).await);
    }
    let outcome = service.retrainer.retrain_user("quinn", 50).await.unwrap();
    let Outcome::Rejected { version, reason } = outcome else {
        panic!("expected a rejection: {outcome:?}")
    };
    assert_eq!(version, 2);
    assert!(reason.contains("rmse"), "{reason}");
    env.outbox_drained(WAIT).await;

    assert_eq!(env.active_version("quinn").await, Some(1));
    assert!(
        env.cached("quinn").await,
        "a rejected version must not invalidate serving"
    );
    let after = refit_json(
        &env,
        &["predict", "--user", "quinn", "--features", PROBE, "--json"],
    );
    assert_eq!(
        (after["cache"].as_str(), after["version"].as_i64()),
        (Some("hit"), Some(1))
    );
    assert_eq!(after["prediction"], before["prediction"]);

    // The rows are consumed and attributed to the rejected version: not lost, not retried.
    let outcomes: Vec<(String, i64)> = sqlx::query_as("SELECT outcome, count(*) FROM refit_consumed_actuals WHERE version = 2 GROUP BY outcome ORDER BY outcome")
        .fetch_all(&env.pool).await.unwrap();
    assert_eq!(outcomes, [("trained".to_owned(), 50)]);
    assert_eq!(env.pending("quinn").await, 0);
    let status: String = sqlx::query_scalar(
        "SELECT status FROM refit_model_versions WHERE user_id = 'quinn' AND version = 2",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(status, "rejected");

    let events = read_events(&reader, 2, WAIT);
    let rejected = &events[1].event;
    assert_eq!(
        (
            rejected.status.reported(),
            rejected.model_version,
            rejected.active_version
        ),
        ("rejected", Some(2), Some(1))
    );
    let validation = rejected.validation.as_ref().unwrap();
    assert!(validation["candidate"].as_f64().unwrap() > validation["active"].as_f64().unwrap());
    assert_eq!(validation["window_rows"], 50, "v1's actuals");
    let live = rejected.live.as_ref().unwrap();
    assert_eq!(
        (live["version"].as_i64(), live["rows"].as_i64()),
        (Some(1), Some(50))
    );
    assert!(
        live["mae"].as_f64().unwrap() > 500.0,
        "v1 scored on the corrupted labels: {live}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_registry_reads_are_open_and_writes_need_the_token() {
    let env = TestEnv::new().await;
    let running = env
        .start(&[("REFIT_ADMIN_TOKEN", "s3cret-admin-token")])
        .await;
    env.insert_actuals("rita", 100).await;
    eventually(WAIT, "rita v2", || async {
        env.versions("rita", "ready").await == [1, 2]
    })
    .await;
    let base = format!("http://{}", running.service.http_addr.unwrap());
    let client = reqwest::Client::new();

    let user: Value = get_json(&client, &format!("{base}/models/rita")).await;
    assert_eq!(user["active_version"], 2);
    let version: Value = get_json(&client, &format!("{base}/models/rita/versions/1")).await;
    assert_eq!(version["rows_used"], 50);
    let listed: Value = get_json(&client, &format!("{base}/models?status=ready")).await;
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(
        client
            .get(format!("{base}/models/nobody"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    let promote = |token: Option<&'static str>| {
        let mut request = client
            .post(format!("{base}/models/rita/promote"))
            .json(&json!({"version": 1}));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    assert_eq!(promote(None).await.unwrap().status(), 401);
    assert_eq!(
        promote(Some("s3cret-admin-tokem")).await.unwrap().status(),
        401
    );
    assert_eq!(promote(Some("s3cret")).await.unwrap().status(), 401);
    assert_eq!(
        env.active_version("rita").await,
        Some(2),
        "refused writes change nothing"
    );
    let ok = promote(Some("s3cret-admin-token")).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(env.active_version("rita").await, Some(1));
    let history: Value = get_json(&client, &format!("{base}/models/rita/history")).await;
    assert_eq!(
        (&history[0]["action"], &history[0]["interface"]),
        (&json!("promote"), &json!("http"))
    );
    assert_eq!(
        history.as_array().unwrap().len(),
        1,
        "refused writes are not recorded"
    );
    running.stop().await;

    // Without a configured token, writes are always refused.
    let running = env.start(&[]).await;
    let base = format!("http://{}", running.service.http_addr.unwrap());
    let refused = client
        .post(format!("{base}/models/rita/rollback"))
        .bearer_auth("anything")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    running.stop().await;
}

pub(crate) async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

async fn grow(env: &TestEnv, extra: &[(&str, &str)], retrains: usize) -> Vec<(i32, String, f64)> {
    let service = env.service(extra).await;
    let mut history = Vec::new();
    for r in 0..retrains {
        for i in 0..50 {
            let n = r * 50 + i;
            insert_actual(&env.pool, "sam", &rental_features(n), rental_actual(n)).await;
        }
        let outcome = service.retrainer.retrain_user("sam", 50).await.unwrap();
        assert!(matches!(outcome, Outcome::Trained { .. }), "{outcome:?}");
        let (trees, source): (i32, String) = sqlx::query_as("SELECT trees, source FROM refit_model_versions WHERE user_id = 'sam' ORDER BY version DESC LIMIT 1")
            .fetch_one(&env.pool).await.unwrap();
        // Sanity: the model beats predicting the mean on the batch it just saw.
        let artifact: Vec<u8> = sqlx::query_scalar("SELECT artifact FROM refit_model_versions WHERE user_id = 'sam' ORDER BY version DESC LIMIT 1")
            .fetch_one(&env.pool).await.unwrap();
        let rows: Vec<_> = (r * 50..r * 50 + 50)
            .map(|n| refit::retrain::features::ActualRow {
                actual_id: n as i64,
                actual_value: rental_actual(n),
                features: rental_features(n).to_string(),
            })
            .collect();
        let features: Vec<String> = ["hour", "humidity", "temperature", "weekday"]
            .map(String::from)
            .to_vec();
        let batch = refit::retrain::features::prepare(&rows, Some(&features));
        let rmse =
            refit::model::trainer::score(&artifact, &batch, refit::config::ValidationMetric::Rmse)
                .unwrap();
        let mean = batch.labels.iter().sum::<f32>() as f64 / 50.0;
        let spread = (batch
            .labels
            .iter()
            .map(|y| (*y as f64 - mean).powi(2))
            .sum::<f64>()
            / 50.0)
            .sqrt();
        assert!(
            rmse < spread,
            "retrain {r} ({source}): rmse {rmse} is no better than the mean ({spread})"
        );
        history.push((trees, source, rmse));
    }
    history
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tree_count_never_passes_the_cap_refit_compaction() {
    let env = TestEnv::new().await;
    let history = grow(
        &env,
        &[
            ("REFIT_MAX_TREES", "30"),
            ("REFIT_ROUNDS_PER_RETRAIN", "10"),
            ("REFIT_REFIT_WINDOW", "300"),
            ("REFIT_COMPACTION_ROUNDS", "15"),
        ],
        12,
    )
    .await;
    let trees: Vec<i32> = history.iter().map(|h| h.0).collect();
    assert!(trees.iter().all(|t| *t <= 30), "{trees:?}");
    assert_eq!(
        &trees[..4],
        &[15, 25, 15, 25],
        "a first model of 15 rounds, continued up to the cap, then rebuilt"
    );
    assert!(
        history.iter().filter(|h| h.1 == "compaction-refit").count() >= 3,
        "{history:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tree_count_never_passes_the_cap_update_compaction() {
    let env = TestEnv::new().await;
    let history = grow(
        &env,
        &[
            ("REFIT_MAX_TREES", "30"),
            ("REFIT_ROUNDS_PER_RETRAIN", "10"),
            ("REFIT_COMPACTION_ROUNDS", "10"),
            ("REFIT_COMPACTION", "update"),
        ],
        8,
    )
    .await;
    let trees: Vec<i32> = history.iter().map(|h| h.0).collect();
    assert_eq!(trees, [10, 20, 30, 30, 30, 30, 30, 30]);
    assert_eq!(history[4].1, "compaction-update");
}
