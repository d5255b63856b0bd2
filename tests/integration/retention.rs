//! Retention: a user's stored history stops growing with its retrains.

use refit::registry::retention::{self, Retention};
use refit::retrain::Outcome;

use crate::support::*;

/// Five actuals a retrain; keep 2 artifacts, 5 versions, and the 12 newest trained rows.
const SMALL: [(&str, &str); 5] = [
    ("REFIT_RETRAIN_THRESHOLD", "5"),
    ("REFIT_KEEP_ARTIFACTS", "2"),
    ("REFIT_KEEP_VERSIONS", "5"),
    ("REFIT_REFIT_WINDOW", "12"),
    ("REFIT_VALIDATION_WINDOW", "10"),
];

async fn retrain(env: &TestEnv, service: &refit::scheduler::Service, from: usize, retrains: usize) {
    for r in from..from + retrains {
        for i in 0..5 {
            let n = r * 5 + i;
            insert_actual(&env.pool, "rita", &rental_features(n), rental_actual(n)).await;
        }
        let outcome = service.retrainer.retrain_user("rita", 5).await.unwrap();
        assert!(matches!(outcome, Outcome::Trained { .. }), "{outcome:?}");
    }
}

/// (versions, versions with an artifact, trained rows) stored for rita.
async fn stored(env: &TestEnv) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM refit_model_versions WHERE user_id = 'rita'),
                (SELECT count(*) FROM refit_model_versions WHERE user_id = 'rita' AND artifact IS NOT NULL),
                (SELECT count(*) FROM refit_consumed_actuals WHERE user_id = 'rita' AND outcome = 'trained')",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_pruned_to_the_policy_and_stops_growing() {
    let env = TestEnv::new().await;
    let service = env.service(&SMALL).await;
    retrain(&env, &service, 0, 9).await;
    assert_eq!(
        stored(&env).await,
        (9, 9, 45),
        "nothing is pruned before the 10th version"
    );

    retrain(&env, &service, 9, 1).await;
    // Versions 6..=10 stay, 9 and 10 with artifacts; the 12 newest trained rows stay.
    assert_eq!(stored(&env).await, (5, 2, 12));
    let kept: Vec<i32> = sqlx::query_scalar(
        "SELECT version FROM refit_model_versions WHERE user_id = 'rita' ORDER BY version",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(kept, [6, 7, 8, 9, 10]);
    let newest_rows = env.consumed_ids("rita").await;
    let all: Vec<i64> = sqlx::query_scalar("SELECT id FROM actual_rentals ORDER BY id")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert_eq!(
        newest_rows,
        all[all.len() - 12..],
        "the newest rows are kept"
    );

    // Ten and thirty retrains later the same: storage follows the policy, not the history.
    retrain(&env, &service, 10, 10).await;
    assert_eq!(stored(&env).await, (5, 2, 12));
    retrain(&env, &service, 20, 20).await;
    assert_eq!(stored(&env).await, (5, 2, 12));
    assert_eq!(env.active_version("rita").await, Some(40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_with_fewer_versions_than_kept_loses_none() {
    let env = TestEnv::new().await;
    let roomy = [
        ("REFIT_KEEP_VERSIONS", "50"),
        ("REFIT_KEEP_ARTIFACTS", "20"),
    ];
    let service = env.service(&[SMALL.as_slice(), &roomy].concat()).await;
    retrain(&env, &service, 0, 10).await;
    // Only the trained rows beyond the policy's 12-row window go.
    assert_eq!(stored(&env).await, (10, 10, 12));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_version_and_everything_newer_survive_pruning() {
    let env = TestEnv::new().await;
    let service = env.service(&SMALL).await;
    retrain(&env, &service, 0, 9).await;
    // An operator rolled back to version 2: it serves, so it and its successors stay whole.
    sqlx::query("UPDATE refit_models SET active_version = 2 WHERE user_id = 'rita'")
        .execute(&env.pool)
        .await
        .unwrap();
    let pruned = retention::prune_user(&env.pool, "rita", &env.config(&SMALL).retention)
        .await
        .unwrap()
        .expect("the user is not busy");
    assert_eq!(
        (pruned.versions, pruned.artifacts),
        (1, 0),
        "version 1 goes whole"
    );
    let with_artifact: Vec<i32> = sqlx::query_scalar(
        "SELECT version FROM refit_model_versions WHERE user_id = 'rita' AND artifact IS NOT NULL ORDER BY version",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(with_artifact, (2..=9).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_with_an_alias_keeps_its_row_and_artifact() {
    let env = TestEnv::new().await;
    let service = env.service(&SMALL).await;
    retrain(&env, &service, 0, 3).await;
    sqlx::query(
        "INSERT INTO refit_aliases (user_id, alias, version) VALUES ('rita', 'champion', 2)",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    retrain(&env, &service, 3, 17).await;
    let kept: Vec<(i32, bool)> = sqlx::query_as(
        "SELECT version, artifact IS NOT NULL FROM refit_model_versions WHERE user_id = 'rita' ORDER BY version",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        kept,
        [
            (2, true),
            (16, false),
            (17, false),
            (18, false),
            (19, true),
            (20, true)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_user_is_skipped_not_waited_for() {
    let env = TestEnv::new().await;
    let service = env.service(&SMALL).await;
    retrain(&env, &service, 0, 8).await;
    let mut holder = env.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM refit_models WHERE user_id = 'rita' FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let retention = env.config(&SMALL).retention;
    let pruned = retention::prune_user(&env.pool, "rita", &retention)
        .await
        .unwrap();
    assert_eq!(pruned, None);
    holder.rollback().await.unwrap();
    assert!(retention::prune_user(&env.pool, "rita", &retention)
        .await
        .unwrap()
        .is_some_and(|p| p.versions == 3));
}

/// The default: a delivered outbox entry is deleted when it is delivered.
const DELETE_DELIVERED: (&str, &str) = ("REFIT_OUTBOX_RETENTION_SECS", "0");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_does_not_grow_with_retrains() {
    let env = TestEnv::new().await;
    let service = env
        .service(&[SMALL.as_slice(), &[DELETE_DELIVERED]].concat())
        .await;
    let reader = env.reader();
    let drained = std::time::Duration::from_secs(20);
    retrain(&env, &service, 0, 10).await;
    env.outbox_drained(drained).await;
    let after_10 = env.count("SELECT count(*) FROM refit_outbox").await;
    env.cache_model("rita").await;
    retrain(&env, &service, 10, 30).await;
    env.outbox_drained(drained).await;
    let after_40 = env.count("SELECT count(*) FROM refit_outbox").await;
    assert_eq!(
        (after_10, after_40),
        (0, 0),
        "delivered entries are deleted, whatever the number of retrains"
    );

    // Still delivered, in order: the last version's invalidation, every event once.
    assert!(
        !env.cached("rita").await,
        "the last retrain invalidated the cache"
    );
    let versions: Vec<Option<i32>> = read_events(&reader, 40, std::time::Duration::from_secs(20))
        .into_iter()
        .map(|e| e.event.model_version)
        .collect();
    assert_eq!(versions, (1..=40).map(Some).collect::<Vec<_>>());
    assert!(drain_events(&reader, std::time::Duration::from_millis(500)).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_outbox_entries_dead_letters_and_old_set_aside_records_expire() {
    let env = TestEnv::new().await;
    let keep = [SMALL.as_slice(), &[("REFIT_OUTBOX_RETENTION_SECS", "3600")]].concat();
    let service = env.service(&keep).await;
    retrain(&env, &service, 0, 2).await;
    insert_request_and_actual(&mut *env.conn().await, "rita", r#"{"hour": "eight"}"#, 1.0)
        .await
        .unwrap();
    for n in 0..4 {
        insert_actual(&env.pool, "rita", &rental_features(n), rental_actual(n)).await;
    }
    service.retrainer.retrain_user("rita", 5).await.unwrap();
    env.outbox_drained(std::time::Duration::from_secs(20)).await;
    let retention: Retention = env.config(&keep).retention;
    let count = |sql: &'static str| env.count(sql);
    let purge = || retention::purge_expired(&env.pool, &retention);
    assert_eq!(count("SELECT count(*) FROM refit_outbox").await, 6, "kept");
    assert_eq!(purge().await.unwrap(), 0);

    // Age one delivered entry past the outbox retention and the set-aside row past its own; a
    // dead letter as old stays: it is kept as long as set-aside records.
    sqlx::query("UPDATE refit_outbox SET done_at = now() - interval '2 hours' WHERE id = (SELECT min(id) FROM refit_outbox)")
        .execute(&env.pool).await.unwrap();
    sqlx::query("UPDATE refit_outbox SET done_at = now() - interval '2 hours', dead_letter = 'too large' WHERE id = (SELECT max(id) FROM refit_outbox)")
        .execute(&env.pool).await.unwrap();
    sqlx::query("UPDATE refit_consumed_actuals SET consumed_at = now() - interval '8 days' WHERE outcome = 'set_aside'")
        .execute(&env.pool).await.unwrap();
    assert_eq!(purge().await.unwrap(), 2);
    assert_eq!(count("SELECT count(*) FROM refit_outbox").await, 5);
    assert_eq!(
        count("SELECT count(*) FROM refit_consumed_actuals WHERE outcome = 'set_aside'").await,
        0
    );
    sqlx::query(
        "UPDATE refit_outbox SET done_at = now() - interval '8 days' WHERE dead_letter IS NOT NULL",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    assert_eq!(purge().await.unwrap(), 1, "the dead letter, after 7 days");
    assert_eq!(
        count("SELECT count(*) FROM refit_outbox WHERE dead_letter IS NOT NULL").await,
        0
    );
}

/// Artifacts are stored compressed with lz4 where the server has it (migration 11): a trained
/// model big enough to be compressed at all is, and with lz4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_are_compressed_with_lz4_where_the_server_has_it() {
    let env = TestEnv::new().await;
    let service = env.service(&DEFAULT_POLICY).await;
    for i in 0..50 {
        insert_actual(&env.pool, "lena", &rental_features(i), rental_actual(i)).await;
    }
    let outcome = service.retrainer.retrain_user("lena", 50).await.unwrap();
    assert!(matches!(outcome, Outcome::Trained { .. }), "{outcome:?}");
    let (lz4, compression, bytes): (bool, Option<String>, i32) = sqlx::query_as(
        "SELECT current_setting('server_version_num')::int >= 140000
                AND EXISTS (SELECT 1 FROM pg_settings
                             WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)),
                pg_column_compression(artifact), octet_length(artifact)
           FROM refit_model_versions WHERE user_id = 'lena'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(
        bytes > 8_000,
        "a model of {bytes} bytes may not be compressed at all"
    );
    let expected = if lz4 { "lz4" } else { "pglz" };
    assert_eq!(compression.as_deref(), Some(expected));
    drop(service);
    env.drop_database().await;
}
