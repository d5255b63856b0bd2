//! Unusable rows are set aside with a reason; a corrupt model fails only its user's retrain.

use std::time::Duration;

use refit::retrain::Outcome;
use serde_json::json;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_are_set_aside_with_reasons_and_the_rest_trains() {
    let env = TestEnv::new().await;
    let running = env.start(&[]).await;
    let reader = env.reader();
    let pool = &env.pool;
    let nan = insert_actual(pool, "erin", &json!({"hour": 1}), f64::NAN).await;
    let inf = insert_actual(pool, "erin", &json!({"hour": 1}), f64::NEG_INFINITY).await;
    let text = insert_actual(pool, "erin", &json!({"hour": "noon"}), 3.0).await;
    let array = insert_actual(pool, "erin", &json!([1, 2, 3]), 3.0).await;
    let empty = insert_actual(pool, "erin", &json!({}), 3.0).await;
    // The first good rows define the features of erin's fresh model: hour, temperature.
    for i in 0..45 {
        insert_actual(
            pool,
            "erin",
            &json!({"hour": (i % 24) as f64, "temperature": i as f64 * 0.5}),
            i as f64,
        )
        .await;
    }

    eventually(WAIT, "erin v1", || async {
        env.versions("erin", "ready").await == [1]
    })
    .await;
    let reasons: Vec<(i64, String)> = sqlx::query_as(
        "SELECT actual_id, reason FROM refit_consumed_actuals WHERE outcome = 'set_aside' ORDER BY actual_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        reasons,
        [
            (nan, "non_finite_actual".to_owned()),
            (inf, "non_finite_actual".to_owned()),
            (text, "non_numeric_feature".to_owned()),
            (array, "features_not_object".to_owned()),
            (empty, "no_known_features".to_owned()),
        ]
    );
    let (used, aside): (i32, i32) = sqlx::query_as(
        "SELECT rows_used, rows_set_aside FROM refit_model_versions WHERE user_id = 'erin'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!((used, aside), (45, 5));
    let event = &read_events(&reader, 1, WAIT)[0].event;
    assert_eq!(
        (
            event.status.reported(),
            event.rows_used,
            event.rows_rejected
        ),
        ("success", 45, 5)
    );
    let counted = metric(
        &running.service,
        "refit_rows_set_aside_total{reason=\"non_finite_actual\"}",
    );
    assert_eq!(counted, 2.0);
    assert_eq!(
        env.pending("erin").await,
        0,
        "set-aside rows are consumed, not retried forever"
    );
    running.stop().await;
}

/// An upstream whose tables allow what the data contract rules out — a NULL actual value or NULL
/// features — does not stall the user: such rows are set aside with their reasons.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_values_or_features_upstream_are_set_aside_not_stuck() {
    let env = TestEnv::new().await;
    let running = env.start(&[]).await;
    sqlx::raw_sql(
        "ALTER TABLE actual_rentals ALTER COLUMN actual_value DROP NOT NULL;
         ALTER TABLE prediction_requests ALTER COLUMN features DROP NOT NULL;",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    // 48 first: the user is due only once the last 2 arrive, after the NULLs are in place.
    let ids = env.insert_upstream_n("nulls", 48).await;
    sqlx::raw_sql(&format!(
        "UPDATE actual_rentals SET actual_value = NULL WHERE id = {};
         UPDATE prediction_requests SET features = NULL
          WHERE request_id = (SELECT request_id FROM actual_rentals WHERE id = {});",
        ids[0], ids[1]
    ))
    .execute(&env.pool)
    .await
    .unwrap();
    env.insert_actuals("nulls", 2).await;
    eventually(WAIT, "version 1 on the other 48", || async {
        env.versions("nulls", "ready").await == [1]
    })
    .await;
    let reasons: Vec<(i64, String)> = sqlx::query_as(
        "SELECT actual_id, reason FROM refit_consumed_actuals WHERE outcome = 'set_aside' ORDER BY actual_id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        reasons,
        [
            (ids[0], "non_finite_actual".to_owned()),
            (ids[1], "features_not_object".to_owned()),
        ]
    );
    assert_eq!(env.pending("nulls").await, 0);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_artifact_fails_that_user_only_and_keeps_the_previous_version() {
    let env = TestEnv::new().await;
    let service = env.service(&[]).await;
    let reader = env.reader();
    env.insert_actuals("frank", 50).await;
    env.insert_actuals("grace", 50).await;
    assert!(matches!(
        service.retrainer.retrain_user("frank", 50).await.unwrap(),
        Outcome::Trained { version: 1, .. }
    ));
    sqlx::query("UPDATE refit_model_versions SET artifact = '\\x00ff00ff'::bytea WHERE user_id = 'frank' AND version = 1")
        .execute(&env.pool).await.unwrap();

    env.insert_actuals("frank", 50).await;
    env.cache_model("frank").await;
    let outcome = service.retrainer.retrain_user("frank", 50).await.unwrap();
    let Outcome::Failed { version, reason } = outcome else {
        panic!("expected a failure, got {outcome:?}")
    };
    assert_eq!(version, 2);
    assert!(reason.contains("cannot be loaded"), "{reason}");
    assert_eq!(
        env.active_version("frank").await,
        Some(1),
        "the previous version stays active"
    );
    assert_eq!(
        env.pending("frank").await,
        50,
        "the batch stays pending, nothing is lost"
    );
    let error: Option<String> = sqlx::query_scalar("SELECT error FROM refit_model_versions WHERE user_id = 'frank' AND version = 2 AND status = 'failed'")
        .fetch_one(&env.pool).await.unwrap();
    assert_eq!(error.as_deref(), Some(reason.as_str()));
    // The user backs off instead of failing in a hot loop.
    assert_eq!(
        service.retrainer.retrain_user("frank", 50).await.unwrap(),
        Outcome::BackingOff
    );

    // Another user is unaffected.
    assert!(matches!(
        service.retrainer.retrain_user("grace", 50).await.unwrap(),
        Outcome::Trained { version: 1, .. }
    ));

    env.outbox_drained(WAIT).await;
    assert!(
        env.cached("frank").await,
        "a failed retrain must not invalidate serving's model"
    );
    let events = read_events(&reader, 3, WAIT);
    let failed = events
        .iter()
        .find(|e| e.event.status.reported() == "failed")
        .expect("a failed event");
    assert_eq!(failed.event.user_id, "frank");
    assert_eq!(failed.event.model_version, Some(2));
    assert_eq!(failed.event.previous_version, Some(1));
    assert_eq!(failed.event.active_version, Some(1));
    assert_eq!(failed.event.reason.as_deref(), Some(reason.as_str()));
    assert_eq!(
        metric(&service, "refit_retrains_total{status=\"failed\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_no_usable_row_is_set_aside_without_a_version() {
    let env = TestEnv::new().await;
    let service = env.service(&[]).await;
    for _ in 0..50 {
        insert_actual(&env.pool, "henry", &json!("not an object"), 1.0).await;
    }
    let outcome = service.retrainer.retrain_user("henry", 50).await.unwrap();
    assert_eq!(outcome, Outcome::AllSetAside { rows_set_aside: 50 });
    assert!(env.versions("henry", "ready").await.is_empty());
    assert_eq!(env.pending("henry").await, 0);
    assert_eq!(
        env.count(
            "SELECT count(*) FROM refit_consumed_actuals WHERE reason = 'features_not_object'"
        )
        .await,
        50
    );
}
