//! The ingest (src/scheduler/ingest.rs): actuals move from the upstream's table into the
//! pending queue exactly once, whatever order the upstream's transactions commit in, and the upstream's own
//! transaction runs nothing of refit's.

use refit::scheduler::ingest::{ingest, Ingested};
use sqlx::PgPool;

use std::time::Duration;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(20);

/// What one ingest queued; panics if another holds the lock (no other ingest runs here).
async fn ingest_once(pool: &PgPool) -> Ingested {
    ingest(pool).await.unwrap().expect("no other ingest runs")
}

/// A request and its actual, as the upstream writes them (on `conn`, or in a transaction).
async fn upstream(conn: &mut sqlx::PgConnection, user: &str) -> i64 {
    insert_request_and_actual(conn, user, r#"{"hour": 1}"#, 1.0)
        .await
        .unwrap()
}

async fn pending_ids(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar("SELECT actual_id FROM refit_pending ORDER BY actual_id")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// A transaction that took a lower id but commits after a later one is queued when it commits —
/// not skipped (as a cursor on ids would) and not queued twice.
#[tokio::test]
async fn a_late_commit_is_queued_once_when_it_commits() {
    let env = TestEnv::new().await;
    let mut conn = env.pool.acquire().await.unwrap();
    let mut slow = env.pool.begin().await.unwrap();
    let early_id = upstream(&mut slow, "late").await;
    let later_id = upstream(&mut conn, "late").await;
    assert!(early_id < later_id);

    assert_eq!(ingest_once(&env.pool).await.queued, 1);
    assert_eq!(pending_ids(&env.pool).await, [later_id]);
    assert_eq!(ingest_once(&env.pool).await.queued, 0, "nothing new");

    slow.commit().await.unwrap();
    let done = ingest_once(&env.pool).await;
    assert_eq!((done.queued, done.users), (1, 1));
    assert_eq!(pending_ids(&env.pool).await, [early_id, later_id]);
    assert_eq!(ingest_once(&env.pool).await.queued, 0, "queued once");
    drop(conn); // the pool closes only once every connection is back
    env.drop_database().await;
}

/// A rolled-back actual is never queued; a user id over 1000 bytes is set aside, not queued.
#[tokio::test]
async fn rolled_back_actuals_are_ignored_and_overlong_user_ids_set_aside() {
    let env = TestEnv::new().await;
    let mut conn = env.pool.acquire().await.unwrap();
    let mut tx = env.pool.begin().await.unwrap();
    upstream(&mut tx, "undone").await;
    tx.rollback().await.unwrap();
    let long_user = "x".repeat(1001);
    let long_id = upstream(&mut conn, &long_user).await;

    let done = ingest_once(&env.pool).await;
    assert_eq!((done.queued, done.set_aside), (0, 1));
    assert!(pending_ids(&env.pool).await.is_empty());
    let aside: (i64, String) = sqlx::query_as(
        "SELECT actual_id, reason FROM refit_unconsumable_actuals WHERE user_id = $1",
    )
    .bind(&long_user)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(aside, (long_id, "user_id_too_long".to_owned()));
    drop(conn); // the pool closes only once every connection is back
    env.drop_database().await;
}

/// Writers commit in every order (some transactions stay open across several ingests, some roll
/// back) while two ingests race and the queue is drained as retrains would: the ingests together
/// queue each committed actual exactly once. (Draining makes a second queueing visible: the
/// primary key of `refit_pending` cannot absorb it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_ingests_queue_every_committed_actual_exactly_once() {
    let env = TestEnv::new().await;
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let pool = env.pool.clone();
            tokio::spawn(async move {
                let mut committed = 0;
                for i in 0..60 {
                    let mut tx = pool.begin().await.unwrap();
                    upstream(&mut tx, &format!("writer-{w}")).await;
                    // Some transactions stay open while others commit and ingests run.
                    if i % 7 == 0 {
                        tokio::time::sleep(std::time::Duration::from_millis(15)).await;
                    }
                    if i % 11 == 0 {
                        tx.rollback().await.unwrap();
                    } else {
                        tx.commit().await.unwrap();
                        committed += 1;
                    }
                }
                committed
            })
        })
        .collect();
    let ingesters: Vec<_> = (0..2)
        .map(|_| {
            let pool = env.pool.clone();
            tokio::spawn(async move {
                let mut queued = 0;
                for _ in 0..400 {
                    if let Some(done) = ingest(&pool).await.unwrap() {
                        queued += done.queued;
                    }
                    sqlx::query("DELETE FROM refit_pending")
                        .execute(&pool)
                        .await
                        .unwrap();
                }
                queued
            })
        })
        .collect();
    let mut committed = 0;
    for w in writers {
        committed += w.await.unwrap();
    }
    let mut queued = 0;
    for i in ingesters {
        queued += i.await.unwrap();
    }
    queued += ingest_once(&env.pool).await.queued;
    assert_eq!(committed, 4 * (60 - 6));
    assert_eq!(
        queued, committed,
        "each committed actual queued exactly once"
    );
    env.drop_database().await;
}

/// Upgrading from the insert trigger (migration 8) and back loses and repeats nothing: actuals
/// the trigger queued stay queued once, those inserted after the upgrade are ingested, and those
/// not yet ingested when downgrading are queued by the downgrade.
#[tokio::test]
async fn upgrading_from_and_back_to_the_trigger_queues_every_actual_once() {
    let env = TestEnv::new().await;
    let migrator = sqlx::migrate!("./migrations");
    migrator.undo(&env.pool, 20261201000008).await.unwrap();
    let before = env.insert_upstream_n("upgrade", 5).await;
    assert_eq!(
        pending_ids(&env.pool).await,
        before,
        "the trigger queued them"
    );

    migrator.run(&env.pool).await.unwrap();
    let after = env.insert_upstream_n("upgrade", 5).await;
    assert_eq!(ingest_once(&env.pool).await.queued, 5);
    let not_yet = env.insert_upstream_n("upgrade", 3).await;

    migrator.undo(&env.pool, 20261201000008).await.unwrap();
    let all: Vec<i64> = [before, after, not_yet].concat();
    assert_eq!(
        pending_ids(&env.pool).await,
        all,
        "the downgrade queued the rest"
    );
    let with_trigger = env.insert_upstream_n("upgrade", 2).await;
    assert_eq!(pending_ids(&env.pool).await, [all, with_trigger].concat());
    migrator.run(&env.pool).await.unwrap();
    env.drop_database().await;
}

/// A running refit queues an actual whose transaction commits last, after nothing newer: its
/// transaction was in progress at the last ingest, so no newer actual wakes the ingest, and the
/// loop's periodic look at the transactions the cursor saw in progress must find it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_refit_queues_a_late_commit_that_nothing_follows() {
    let env = TestEnv::new().await;
    let running = env.start(&[]).await;
    let mut conn = env.pool.acquire().await.unwrap();
    let mut slow = env.pool.begin().await.unwrap();
    let late_id = upstream(&mut slow, "last").await;
    let later_id = upstream(&mut conn, "last").await;
    eventually(WAIT, "the later actual queued", || async {
        pending_ids(&env.pool).await == [later_id]
    })
    .await;
    slow.commit().await.unwrap();
    eventually(WAIT, "the late actual queued", || async {
        pending_ids(&env.pool).await == [late_id, later_id]
    })
    .await;
    running.stop().await;
    drop(conn); // the pool closes only once every connection is back
    env.drop_database().await;
}
