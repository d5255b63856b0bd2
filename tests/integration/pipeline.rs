//! The sequence end to end through the running service.

use std::time::Duration;

use sqlx::Connection;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fiftieth_actual_triggers_exactly_one_retrain_invalidation_and_event() {
    let env = TestEnv::new().await;
    let running = env.start(&[]).await;
    let reader = env.reader();
    env.cache_model("alice").await;

    env.insert_actuals("alice", 49).await;
    // Let the detector see the 49 on several full scans (each poll observes `detect`).
    let detects = || {
        metric(
            &running.service,
            "refit_step_duration_seconds_count{step=\"detect\"}",
        )
    };
    let before = detects();
    eventually(WAIT, "three detector scans", || async {
        detects() >= before + 3.0
    })
    .await;
    assert!(
        env.versions("alice", "ready").await.is_empty(),
        "49 actuals must not retrain"
    );
    assert!(env.cached("alice").await, "no retrain, no invalidation");
    assert_eq!(env.pending("alice").await, 49);

    let ids = env.insert_actuals("alice", 1).await;
    eventually(WAIT, "version 1 of alice", || async {
        env.versions("alice", "ready").await == [1]
    })
    .await;
    env.outbox_drained(WAIT).await;
    assert!(
        !env.cached("alice").await,
        "model:alice must be deleted after the commit"
    );
    assert_eq!(env.pending("alice").await, 0);
    let trained: i64 = sqlx::query_scalar("SELECT count(*) FROM refit_consumed_actuals WHERE user_id = 'alice' AND version = 1 AND outcome = 'trained'")
        .fetch_one(&env.pool).await.unwrap();
    assert_eq!(trained, 50);
    let last_trained: Option<i32> =
        sqlx::query_scalar("SELECT version FROM refit_consumed_actuals WHERE actual_id = $1")
            .bind(ids[0])
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(last_trained, Some(1));

    let events = read_events(&reader, 1, WAIT);
    let e = &events[0];
    assert_eq!(e.key, b"alice");
    assert_eq!(e.event.user_id, "alice");
    assert_eq!(e.event.status.reported(), "success");
    assert_eq!(e.event.model_version, Some(1));
    assert_eq!(e.event.previous_version, None);
    assert_eq!(e.event.rows_used, 50);
    assert_eq!(e.event.rows_rejected, 0);
    assert_eq!(e.event.trees, Some(5));
    for step in ["read", "train", "commit", "invalidate"] {
        assert!(
            e.event
                .timings_ms
                .get(step)
                .and_then(|v| v.as_f64())
                .is_some(),
            "timing {step} in {:?}",
            e.event.timings_ms
        );
    }
    let header = |k: &str| {
        e.headers
            .iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("ce_id"), Some(e.event.event_id.to_string()));
    assert_eq!(
        header("ce_type").as_deref(),
        Some("io.refit.model.retrained")
    );
    // The raw JSON carries every documented field.
    let raw = serde_json::to_value(&e.event).unwrap();
    for field in [
        "event_id",
        "user_id",
        "status",
        "model_version",
        "previous_version",
        "rows_used",
        "rows_rejected",
        "trees",
        "timings_ms",
        "created_at",
    ] {
        assert!(raw.get(field).is_some(), "event lacks {field}: {raw}");
    }
    assert!(
        drain_events(&reader, Duration::from_millis(500)).is_empty(),
        "exactly one event"
    );
    running.stop().await;
}

/// The fast path deletes a retrain's cache key without the user's invalidation lock (every
/// invalidation deletes the same key): a sweep or another replica holding that lock holds up
/// neither the invalidation nor the event, which waits only for its own invalidation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_invalidation_lock_does_not_hold_up_the_cache_delete_or_the_event() {
    let env = TestEnv::new().await;
    let mut holder = env.pool.begin().await.unwrap();
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended('refit_outbox:invalidate:alice', 0))",
    )
    .execute(&mut *holder)
    .await
    .unwrap();
    let _running = env.start(&[]).await;
    let reader = env.reader();
    env.cache_model("alice").await;

    env.insert_actuals("alice", 50).await;
    let events = read_events(&reader, 1, WAIT);
    assert_eq!(events[0].event.model_version, Some(1));
    assert!(!env.cached("alice").await, "deleted while the lock is held");
    env.outbox_drained(WAIT).await;
    holder.rollback().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hundred_twenty_actuals_make_two_retrains_and_users_never_mix() {
    let env = TestEnv::new().await;
    // Bob's rows carry other features: a mix-up would show in his model's feature list.
    for i in 0..60 {
        insert_actual(
            &env.pool,
            "bob",
            &serde_json::json!({"wind": i as f64, "rain": (i % 3) as f64}),
            i as f64,
        )
        .await;
    }
    env.insert_actuals("alice", 120).await;
    let running = env.start(&[]).await;
    let reader = env.reader();

    eventually(WAIT, "two versions for alice and one for bob", || async {
        env.versions("alice", "ready").await == [1, 2] && env.versions("bob", "ready").await == [1]
    })
    .await;
    env.outbox_drained(WAIT).await;
    assert_eq!(env.pending("alice").await, 20);
    assert_eq!(env.pending("bob").await, 10);
    let mixed = env
        .count("SELECT count(*) FROM refit_consumed_actuals c JOIN actual_rentals a ON a.id = c.actual_id JOIN prediction_requests r USING (request_id) WHERE r.user_id <> c.user_id")
        .await;
    assert_eq!(mixed, 0, "an actual was consumed for another user");
    let features: serde_json::Value = sqlx::query_scalar(
        "SELECT features FROM refit_model_versions WHERE user_id = 'bob' AND version = 1",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(features, serde_json::json!(["rain", "wind"]));
    let parent: Option<i32> = sqlx::query_scalar(
        "SELECT parent_version FROM refit_model_versions WHERE user_id = 'alice' AND version = 2",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(parent, Some(1));

    let mut events = read_events(&reader, 3, WAIT);
    events.sort_by_key(|e| (e.event.user_id.clone(), e.event.model_version));
    let summary: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.event.user_id.as_str(),
                e.event.model_version,
                e.event.previous_version,
                e.event.rows_used,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("alice", Some(1), None, 50),
            ("alice", Some(2), Some(1), 50),
            ("bob", Some(1), None, 50)
        ]
    );
    // Per-user order on the topic: alice's two events are on one partition, v1 first.
    let alice: Vec<_> = events
        .iter()
        .filter(|e| e.event.user_id == "alice")
        .collect();
    assert_eq!(alice[0].partition, alice[1].partition);
    assert!(alice[0].offset < alice[1].offset);
    assert!(drain_events(&reader, Duration::from_millis(500)).is_empty());
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_committed_out_of_order_are_each_trained_exactly_once() {
    let env = TestEnv::new().await;
    let running = env.start(&[]).await;

    // A transaction opens and inserts an actual (lower id) but does not commit yet.
    let mut late = sqlx::PgConnection::connect(&env.database_url)
        .await
        .unwrap();
    let mut late_tx = late.begin().await.unwrap();
    let late_id = insert_request_and_actual(&mut late_tx, "carol", r#"{"hour": 3}"#, 7.0)
        .await
        .unwrap();

    // Fifty later actuals commit and are trained while the first is still uncommitted.
    let batch = env.insert_actuals("carol", 50).await;
    assert!(batch.iter().all(|id| *id > late_id));
    eventually(WAIT, "carol v1", || async {
        env.versions("carol", "ready").await == [1]
    })
    .await;

    // Now the early row commits, after a batch with higher ids was trained.
    late_tx.commit().await.unwrap();
    env.insert_actuals("carol", 49).await;
    eventually(WAIT, "carol v2", || async {
        env.versions("carol", "ready").await == [1, 2]
    })
    .await;

    let version_of_late: Option<i32> =
        sqlx::query_scalar("SELECT version FROM refit_consumed_actuals WHERE actual_id = $1")
            .bind(late_id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        version_of_late,
        Some(2),
        "the late-committing actual must be trained, once, by v2"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM refit_consumed_actuals")
            .await,
        100
    );
    assert_eq!(env.count("SELECT count(*) FROM actual_rentals").await, 100);
    assert_eq!(env.pending("carol").await, 0);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_held_by_another_retrain_is_skipped_until_released() {
    let env = TestEnv::new().await;
    let service = env.service(&[]).await;
    env.insert_actuals("dave", 50).await;
    refit::store::versions::ensure_model_row(&env.pool, "dave")
        .await
        .unwrap();

    // Another replica holds dave's registry row.
    let mut other = sqlx::PgConnection::connect(&env.database_url)
        .await
        .unwrap();
    let mut tx = other.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM refit_models WHERE user_id = 'dave' FOR UPDATE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let outcome = service.retrainer.retrain_user("dave", 50).await.unwrap();
    assert_eq!(outcome, refit::retrain::Outcome::Busy);
    assert_eq!(env.pending("dave").await, 50);

    tx.rollback().await.unwrap();
    let outcome = service.retrainer.retrain_user("dave", 50).await.unwrap();
    assert!(
        matches!(
            outcome,
            refit::retrain::Outcome::Trained {
                version: 1,
                rows_used: 50,
                ..
            }
        ),
        "{outcome:?}"
    );
}
