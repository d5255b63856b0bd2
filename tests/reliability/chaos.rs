//! Long soak runs for `make chaos` (ignored in `make test`): three replicas, twenty users, ten
//! thousand actuals with out-of-order commits, while the test kills replicas (SIGKILL and
//! SIGTERM), cuts PostgreSQL, Redis and Kafka, and crashes retrains at every fault point. The
//! exactly-once accounting must hold at the end.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::concurrency::*;
use crate::crash::require_fault_injection;
use crate::harness::*;
use crate::support::*;

fn seed() -> u64 {
    std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

fn actuals_per_writer() -> usize {
    std::env::var("CHAOS_ACTUALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000)
        / 4
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "chaos: long soak, run by make chaos"]
async fn chaos_three_replicas_ten_thousand_actuals_with_kills_and_outages() {
    let env = TestEnv::new().await;
    let broker = Broker::start().await;
    let pg = FaultProxy::new(5432);
    let redis = FaultProxy::new(6379);
    let vars = replica_vars(
        &env,
        &[
            ("DATABASE_URL", &database_url_via(&env, pg.port)),
            ("REDIS_URL", &format!("redis://127.0.0.1:{}", redis.port)),
            ("KAFKA_BROKERS", &broker.brokers()),
            ("REFIT_OUTBOX_RETRY_MAX_MS", "1000"),
        ],
    );
    let mut replicas: Vec<Process> = (0..3).map(|_| spawn_refit(&vars)).collect();
    replicas[0]
        .wait_for_line("Kafka topic ready", Duration::from_secs(60))
        .await;
    let mut graveyard: Vec<Process> = Vec::new();
    let users = twenty_users("chaos");
    let writers = {
        let env_url = env.database_url.clone();
        let users = users.clone();
        let per_writer = actuals_per_writer();
        tokio::spawn(async move {
            let users = std::sync::Arc::new(users);
            let handles: Vec<_> = (0..4)
                .map(|w| {
                    tokio::spawn(write_stream(
                        env_url.clone(),
                        users.clone(),
                        per_writer,
                        100 + w,
                        Duration::from_millis(25),
                    ))
                })
                .collect();
            let mut committed = 0;
            for h in handles {
                committed += h.await.unwrap().committed;
            }
            committed
        })
    };
    let mut rng = StdRng::seed_from_u64(seed());
    let mut actions: Vec<String> = Vec::new();
    let started = Instant::now();
    while !writers.is_finished() {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1500..4000))).await;
        let action = rng.gen_range(0..6);
        let victim = rng.gen_range(0..replicas.len());
        match action {
            0 => {
                replicas[victim].kill9();
                let dead = std::mem::replace(&mut replicas[victim], spawn_refit(&vars));
                graveyard.push(dead);
                actions.push(format!("{:?} SIGKILL replica {victim}", started.elapsed()));
            }
            1 => {
                replicas[victim].signal("TERM");
                let status = replicas[victim].wait_exit(Duration::from_secs(60)).await;
                assert!(status.success(), "SIGTERM under chaos: {status:?}");
                let dead = std::mem::replace(&mut replicas[victim], spawn_refit(&vars));
                graveyard.push(dead);
                actions.push(format!("{:?} SIGTERM replica {victim}", started.elapsed()));
            }
            2 => {
                pg.cut();
                tokio::time::sleep(Duration::from_millis(2000)).await;
                pg.resume();
                actions.push(format!("{:?} PostgreSQL restart", started.elapsed()));
            }
            3 => {
                redis.cut();
                tokio::time::sleep(Duration::from_millis(3000)).await;
                redis.resume();
                actions.push(format!("{:?} Redis down 3 s", started.elapsed()));
            }
            4 => {
                broker.proxy.cut();
                tokio::time::sleep(Duration::from_millis(4000)).await;
                broker.proxy.resume();
                actions.push(format!("{:?} Kafka unreachable 4 s", started.elapsed()));
            }
            _ => {
                pg.cut();
                redis.cut();
                tokio::time::sleep(Duration::from_millis(1500)).await;
                redis.resume();
                pg.resume();
                actions.push(format!("{:?} PostgreSQL and Redis down", started.elapsed()));
            }
        }
    }
    let committed = writers.await.unwrap();
    println!("chaos actions:\n{}", actions.join("\n"));
    settled(&env, 20, Duration::from_secs(300)).await;
    for r in &mut replicas {
        r.signal("TERM");
        assert!(r.wait_exit(Duration::from_secs(60)).await.success());
    }
    let counts = verify(&env, &broker.brokers(), 20, "chaos_soak").await;
    assert_eq!(counts.actuals_inserted, committed as i64);
    let logs: Vec<Vec<String>> = replicas
        .iter()
        .chain(&graveyard)
        .map(|r| r.lines())
        .collect();
    let retrains = assert_one_retrain_per_user_at_a_time(&logs);
    println!(
        "{} chaos actions, {retrains} retrains in the logs, {:?}",
        actions.len(),
        counts
    );
}

/// Every retrain of a stream may crash at a random fault point; refit is restarted each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "chaos: long soak, run by make chaos"]
async fn chaos_crash_loop_at_random_fault_points() {
    require_fault_injection();
    let env = TestEnv::new().await;
    env.service(&[]).await;
    let users: Vec<String> = (0..5).map(|u| format!("crashloop-{u}")).collect();
    let mut rng = StdRng::seed_from_u64(seed());
    let points = [
        "after_read",
        "during_train",
        "after_commit",
        "after_invalidate",
    ];
    let mut crashes = 0;
    for cycle in 0..30 {
        let point = points[rng.gen_range(0..points.len())];
        let mut refit = spawn_refit(&env.vars(&[
            ("REFIT_FAULT_POINT", point),
            ("REFIT_RETRAIN_THRESHOLD", "20"),
        ]));
        refit
            .wait_for_line("refit starting", Duration::from_secs(30))
            .await;
        for u in &users {
            let n = rng.gen_range(0..30);
            env.insert_actuals(u, n).await;
        }
        // Either it crashes at the point, or nothing was due.
        let deadline = Instant::now() + Duration::from_secs(5);
        while refit.try_exited().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if refit.try_exited().is_some() {
            // Two retrains in flight may both reach the point before the abort lands.
            assert!(
                refit.count("fault injection: aborting") >= 1,
                "cycle {cycle}"
            );
            crashes += 1;
        } else {
            refit.kill9();
        }
        let counts = db_counts(&env, "crash_loop").await;
        assert_eq!(
            (counts.lost, counts.trained_twice),
            (0, 0),
            "cycle {cycle}: {counts:?}"
        );
    }
    let mut clean = spawn_refit(&env.vars(&[("REFIT_RETRAIN_THRESHOLD", "20")]));
    settled(&env, 20, Duration::from_secs(120)).await;
    let counts = verify(&env, &brokers(), 20, "chaos_crash_loop").await;
    clean.signal("TERM");
    assert!(clean.wait_exit(Duration::from_secs(30)).await.success());
    assert!(crashes >= 10, "only {crashes} crashes");
    println!("{crashes} crashes; {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "chaos: long soak, run by make chaos"]
async fn chaos_three_replicas_ten_thousand_actuals_out_of_order() {
    let env = TestEnv::new().await;
    env.service(&[]).await;
    let mut replicas: Vec<Process> = (0..3)
        .map(|_| spawn_refit(&replica_vars(&env, &[])))
        .collect();
    for r in &replicas {
        r.wait_for_line("refit starting", Duration::from_secs(30))
            .await;
    }
    let users = twenty_users("chaos-conc");
    let written = write_all(&env, &users, 4, actuals_per_writer(), Duration::ZERO).await;
    settled(&env, 20, Duration::from_secs(300)).await;
    let counts = verify(&env, &brokers(), 20, "chaos_three_processes").await;
    assert_eq!(counts.actuals_inserted, written.committed as i64);
    for r in &mut replicas {
        r.signal("TERM");
        assert!(r.wait_exit(Duration::from_secs(30)).await.success());
    }
    let logs: Vec<Vec<String>> = replicas.iter().map(|r| r.lines()).collect();
    assert_one_retrain_per_user_at_a_time(&logs);
    println!("{written:?} {counts:?}");
}
