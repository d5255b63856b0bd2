//! SIGTERM under load: refit exits 0, nothing half-done — no open transaction, every committed
//! version's invalidation and event carried out before exit, the next start picks up the rest.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::concurrency::*;
use crate::harness::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_cleanly_with_nothing_half_done() {
    let env = TestEnv::new().await;
    env.service(&[]).await;
    let db = env.database_url.rsplit_once('/').unwrap().1.to_owned();
    let users = Arc::new(twenty_users("term"));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (url, users, stop) = (env.database_url.clone(), users.clone(), stop.clone());
        tokio::spawn(async move {
            let mut total = 0;
            let mut seed = 100;
            while !stop.load(Ordering::Relaxed) {
                total += write_stream(
                    url.clone(),
                    users.clone(),
                    200,
                    seed,
                    Duration::from_millis(1),
                )
                .await
                .committed;
                seed += 1;
            }
            total
        })
    };
    let mut exits = Vec::new();
    for cycle in 0..3 {
        let mut refit = spawn_refit(&replica_vars(&env, &[]));
        refit
            .wait_for_line("refit starting", Duration::from_secs(30))
            .await;
        // Terminate in the thick of it: after a few commits, while retrains are in flight.
        let deadline = Instant::now() + Duration::from_secs(30);
        while refit.count("version committed") < 5 + cycle * 3 {
            assert!(Instant::now() < deadline, "no progress");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        refit.signal("TERM");
        let took = Instant::now();
        let status = refit.wait_exit(Duration::from_secs(30)).await;
        assert!(status.success(), "cycle {cycle}: {status:?}");
        exits.push(took.elapsed());
        assert_eq!(refit.count("refit stopped"), 1);
        // No connection of the stopped process is left (its transactions are over).
        eventually(Duration::from_secs(10), "refit's connections closed", || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'refit'",
            )
            .bind(&db)
            .fetch_one(&env.pool)
            .await
            .unwrap();
            n == 0
        })
        .await;
        let undone: Vec<(String, String)> =
            sqlx::query_as("SELECT user_id, kind FROM refit_outbox WHERE done_at IS NULL")
                .fetch_all(&env.pool)
                .await
                .unwrap();
        assert!(
            undone.is_empty(),
            "cycle {cycle}: side effects of committed versions left undone at a clean exit: {undone:?}"
        );
        let counts = db_counts(&env, "sigterm_cycle").await;
        assert_eq!((counts.lost, counts.trained_twice), (0, 0), "{counts:?}");
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.unwrap();
    let mut last = spawn_refit(&replica_vars(&env, &[]));
    settled(&env, 20, Duration::from_secs(60)).await;
    let counts = verify(&env, &brokers(), 20, "sigterm_under_load").await;
    assert_eq!(counts.actuals_inserted, written as i64);
    last.signal("TERM");
    assert!(last.wait_exit(Duration::from_secs(30)).await.success());
    println!("exit times after SIGTERM: {exits:?}");
}
