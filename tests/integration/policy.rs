//! The retraining policy against the real registry: the validation gate (poisoned batches
//! rejected, real change reinstated), the recorded policy steps and live errors, and the
//! staleness trigger. Shuffled labels and the gate on clean real data: bike.rs.

use std::time::Duration;

use refit::retrain::Outcome;
use serde_json::Value;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(20);

/// Inserts batch `k` (rows `50k .. 50k+50` of the synthetic rental stream), labels mapped.
async fn insert_batch(env: &TestEnv, user: &str, k: usize, label: impl Fn(usize, f64) -> f64) {
    for i in 50 * k..50 * (k + 1) {
        insert_actual(
            &env.pool,
            user,
            &rental_features(i),
            label(i, rental_actual(i)),
        )
        .await;
    }
}

async fn metrics(env: &TestEnv, user: &str, version: i32) -> Value {
    sqlx::query_scalar(
        "SELECT metrics FROM refit_model_versions WHERE user_id = $1 AND version = $2",
    )
    .bind(user)
    .bind(version)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

async fn status_and_parent(env: &TestEnv, user: &str, version: i32) -> (String, Option<i32>) {
    sqlx::query_as(
        "SELECT status, parent_version FROM refit_model_versions
          WHERE user_id = $1 AND version = $2",
    )
    .bind(user)
    .bind(version)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

/// Trains `batches` clean batches; every one must be accepted.
async fn clean_history(
    env: &TestEnv,
    service: &refit::scheduler::Service,
    user: &str,
    batches: usize,
) {
    for k in 0..batches {
        insert_batch(env, user, k, |_, y| y).await;
        let outcome = service.retrainer.retrain_user(user, 50).await.unwrap();
        assert!(
            matches!(outcome, Outcome::Trained { .. }),
            "clean batch {k}: {outcome:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_batch_is_rejected_and_not_reinstated_by_clean_data() {
    let env = TestEnv::new().await;
    let service = env.service(&DEFAULT_POLICY).await;
    clean_history(&env, &service, "pat", 4).await;
    env.outbox_drained(WAIT).await;
    env.cache_model("pat").await;

    // Labels ten times too large (a unit mix-up upstream).
    insert_batch(&env, "pat", 4, |_, y| y * 10.0).await;
    let outcome = service.retrainer.retrain_user("pat", 50).await.unwrap();
    let Outcome::Rejected { version: 5, reason } = outcome else {
        panic!("expected v5 rejected: {outcome:?}")
    };
    assert!(reason.contains("live rmse"), "{reason}");
    env.outbox_drained(WAIT).await;
    assert_eq!(env.active_version("pat").await, Some(4));
    assert!(env.cached("pat").await, "serving keeps its model");
    assert_eq!(env.pending("pat").await, 0, "the batch is consumed by v5");
    let m = metrics(&env, "pat", 5).await;
    assert_eq!(m["live"]["version"], 4);
    assert!(
        m["validation"]["typical_live"].as_f64().unwrap() > 0.0,
        "{m}"
    );

    // The next clean batch: v5 predicts it worse than v4, so it stays rejected.
    insert_batch(&env, "pat", 5, |_, y| y).await;
    let outcome = service.retrainer.retrain_user("pat", 50).await.unwrap();
    assert!(
        matches!(outcome, Outcome::Trained { version: 6, .. }),
        "{outcome:?}"
    );
    assert_eq!(status_and_parent(&env, "pat", 5).await.0, "rejected");
    assert_eq!(
        status_and_parent(&env, "pat", 6).await,
        ("ready".into(), Some(4))
    );
    assert_eq!(
        metrics(&env, "pat", 6).await["policy"]["reinstated"],
        Value::Null
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_change_is_rejected_once_then_reinstated_by_the_next_batch() {
    let env = TestEnv::new().await;
    let service = env.service(&DEFAULT_POLICY).await;
    let reader = env.reader();
    clean_history(&env, &service, "rae", 4).await;
    // Demand doubles for good from batch 4 on.
    for k in 4..6 {
        insert_batch(&env, "rae", k, |_, y| y * 2.0 + 40.0).await;
    }
    let first = service.retrainer.retrain_user("rae", 100).await.unwrap();
    assert!(
        matches!(first, Outcome::Rejected { version: 5, .. }),
        "{first:?}"
    );
    env.outbox_drained(WAIT).await;
    env.cache_model("rae").await;

    // v5 predicts batch 5 better than v4 does: reinstated, it serves and is the new base.
    let second = service.retrainer.retrain_user("rae", 50).await.unwrap();
    assert!(
        matches!(
            second,
            Outcome::Trained { version: 6, .. } | Outcome::Rejected { version: 6, .. }
        ),
        "{second:?}"
    );
    assert_eq!(status_and_parent(&env, "rae", 5).await.0, "ready");
    assert_eq!(metrics(&env, "rae", 5).await["reinstated_by"], 6);
    assert_eq!(status_and_parent(&env, "rae", 6).await.1, Some(5));
    assert_eq!(metrics(&env, "rae", 6).await["policy"]["reinstated"], 5);
    let active = env.active_version("rae").await;
    assert!(active == Some(5) || active == Some(6), "{active:?}");
    env.outbox_drained(WAIT).await;
    assert!(
        !env.cached("rae").await,
        "serving moved on: its cache entry is gone"
    );
    let events = read_events(&reader, 6, WAIT);
    let last = &events[5].event;
    assert_eq!(
        (last.model_version, last.previous_version),
        (Some(6), Some(4))
    );
    assert_eq!(last.active_version, active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reinstatement_rebuilds_at_once_on_the_window_with_the_changed_batch() {
    let env = TestEnv::new().await;
    let service = env.service(&DEFAULT_POLICY).await;
    // v1 fresh, v2–v4 continue, v5 the scheduled rebuild: v6 would be a continue step.
    clean_history(&env, &service, "rer", 5).await;
    assert_eq!(metrics(&env, "rer", 5).await["policy"]["step"], "rebuild");
    for k in 5..7 {
        insert_batch(&env, "rer", k, |_, y| y * 2.0 + 40.0).await;
    }
    let first = service.retrainer.retrain_user("rer", 100).await.unwrap();
    assert!(
        matches!(first, Outcome::Rejected { version: 6, .. }),
        "{first:?}"
    );
    // The change is confirmed: the new version serves although its base's live error is far
    // above the level before the change.
    let second = service.retrainer.retrain_user("rer", 50).await.unwrap();
    assert!(
        matches!(second, Outcome::Trained { version: 7, .. }),
        "{second:?}"
    );
    let policy = &metrics(&env, "rer", 7).await["policy"];
    assert_eq!(policy["reinstated"], 6);
    // The confirmed change is learnt at once: a rebuild, not the planned continue step, on every
    // row so far — the five clean batches, the reinstated batch and the new one.
    assert_eq!(policy["step"], "rebuild", "{policy}");
    assert_eq!(policy["rows_trained"], 7 * 50, "{policy}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_version_records_its_step_and_the_live_error_it_faced() {
    let env = TestEnv::new().await;
    let service = env
        .service(&[DEFAULT_POLICY.as_slice(), &[("REFIT_REBUILD_EVERY", "3")]].concat())
        .await;
    clean_history(&env, &service, "lou", 5).await;
    let steps: Vec<(i32, String, Option<i32>, i64)> = sqlx::query_as(
        "SELECT version, metrics->'policy'->>'step', parent_version,
                (metrics->'policy'->>'rows_trained')::int8
           FROM refit_model_versions WHERE user_id = 'lou' ORDER BY version",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let expected = [
        (1, "fresh", None, 50),
        (2, "continue", Some(1), 50),
        (3, "continue", Some(2), 50),
        (4, "rebuild", Some(3), 200),
        (5, "continue", Some(4), 50),
    ];
    let steps: Vec<_> = steps
        .iter()
        .map(|(v, s, p, r)| (*v, s.as_str(), *p, *r))
        .collect();
    assert_eq!(steps, expected);

    // The live error of each version is its parent's error on the version's batch.
    for version in 2..=5 {
        let m = metrics(&env, "lou", version).await;
        let parent = version - 1;
        let artifact: Vec<u8> = sqlx::query_scalar(
            "SELECT artifact FROM refit_model_versions WHERE user_id = 'lou' AND version = $1",
        )
        .bind(parent)
        .fetch_one(&env.pool)
        .await
        .unwrap();
        let rows: Vec<(String, f64)> = sqlx::query_as(
            "SELECT r.features::text, a.actual_value FROM refit_consumed_actuals c
               JOIN actual_rentals a ON a.id = c.actual_id
               JOIN prediction_requests r USING (request_id)
              WHERE c.user_id = 'lou' AND c.version = $1 ORDER BY c.actual_id",
        )
        .bind(version)
        .fetch_all(&env.pool)
        .await
        .unwrap();
        let features: Vec<String> = serde_json::from_value(
            sqlx::query_scalar::<_, Value>(
                "SELECT features FROM refit_model_versions WHERE user_id = 'lou' AND version = 1",
            )
            .fetch_one(&env.pool)
            .await
            .unwrap(),
        )
        .unwrap();
        let actual_rows: Vec<refit::retrain::features::ActualRow> = rows
            .iter()
            .enumerate()
            .map(|(i, (f, y))| refit::retrain::features::ActualRow {
                actual_id: i as i64,
                actual_value: *y,
                features: f.clone(),
            })
            .collect();
        let batch = refit::retrain::features::prepare(&actual_rows, Some(&features));
        let predictions = refit::model::trainer::predict(&artifact, &batch).unwrap();
        let expected = refit::retrain::policy::Errors::of(&predictions, &batch.labels);
        assert_eq!(m["live"]["version"], parent);
        assert_eq!(m["live"]["rows"], 50);
        let recorded = m["live"]["mae"].as_f64().unwrap();
        assert!(
            (recorded - expected.mae).abs() < 1e-9,
            "v{version}: {recorded} vs {expected:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_user_is_retrained_below_the_threshold() {
    let env = TestEnv::new().await;
    // Without a staleness limit, five old actuals wait for 45 more.
    let patient = env.service(&[]).await;
    env.insert_actuals("sly", 5).await;
    sqlx::query("UPDATE refit_pending SET enqueued_at = now() - interval '2 hours'")
        .execute(&env.pool)
        .await
        .unwrap();
    let outcome = patient.retrainer.retrain_user("sly", 5).await.unwrap();
    assert_eq!(outcome, Outcome::NotDue { pending: 5 });

    // With one, the scheduler's scan finds them and trains on all five.
    let running = env
        .start(&[
            ("REFIT_MAX_STALENESS_SECS", "3600"),
            ("REFIT_STALE_MIN_ROWS", "5"),
        ])
        .await;
    eventually(WAIT, "sly's stale actuals trained", || async {
        env.versions("sly", "ready").await == [1]
    })
    .await;
    let rows: i64 = env
        .count("SELECT rows_used::int8 FROM refit_model_versions WHERE user_id = 'sly'")
        .await;
    assert_eq!(rows, 5);
    // Fresh actuals below the threshold are not stale yet.
    env.insert_actuals("tam", 5).await;
    let outcome = running
        .service
        .retrainer
        .retrain_user("tam", 5)
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::NotDue { pending: 5 });
    running.stop().await;
}

/// Each version of `user`: number, policy step, artifact.
async fn versions_made(env: &TestEnv, user: &str) -> Vec<(i32, String, Option<Vec<u8>>)> {
    sqlx::query_as(
        "SELECT version, metrics->'policy'->>'step', artifact FROM refit_model_versions
          WHERE user_id = $1 ORDER BY version",
    )
    .bind(user)
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

/// The window a retrain scores and rebuilds on is read from the rows refit stored when it
/// trained on them; with those rows missing (actuals consumed before they were stored) it is
/// read from the upstream tables. Either way the models are the same, byte for byte: two users
/// get the same batches, one keeps its stored rows, the other loses them before every retrain
/// (the fifth retrain is a rebuild on the window).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_from_stored_rows_trains_the_models_the_upstream_rows_train() {
    let env = TestEnv::new().await;
    let service = env.service(&DEFAULT_POLICY).await;
    for k in 0..6 {
        for user in ["stored", "joined"] {
            insert_batch(&env, user, k, |_, y| y).await;
        }
        sqlx::query("UPDATE refit_consumed_actuals SET line = NULL WHERE user_id = 'joined'")
            .execute(&env.pool)
            .await
            .unwrap();
        for user in ["stored", "joined"] {
            let outcome = service.retrainer.retrain_user(user, 50).await.unwrap();
            assert!(
                matches!(outcome, Outcome::Trained { .. }),
                "{user} {k}: {outcome:?}"
            );
        }
    }
    let models = versions_made(&env, "stored").await;
    let joined = versions_made(&env, "joined").await;
    let steps: Vec<&str> = models.iter().map(|(_, s, _)| s.as_str()).collect();
    assert!(
        steps.contains(&"rebuild"),
        "a rebuild read the window: {steps:?}"
    );
    let differing: Vec<i32> = models
        .iter()
        .zip(&joined)
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a.0)
        .collect();
    assert!(
        models.len() == joined.len() && differing.is_empty(),
        "versions whose step or artifact differ: {differing:?}"
    );
    let lines: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT user_id, count(line), count(*) FROM refit_consumed_actuals
          GROUP BY user_id ORDER BY user_id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        lines,
        [("joined".into(), 50, 300), ("stored".into(), 300, 300)],
        "every trained row stored, but the ones set to NULL"
    );
    drop(service);
    env.drop_database().await;
}
