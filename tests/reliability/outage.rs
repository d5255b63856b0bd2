//! Outages of PostgreSQL, Redis, the Kafka broker and Loki while refit runs. Each one is simulated
//! without touching the machine's shared servers: refit reaches PostgreSQL and Redis through a
//! `FaultProxy` that the test cuts (listening socket closed, every open connection dropped — what
//! clients see when a server restarts) and resumes; Kafka is a dedicated tansu broker of the
//! test's own, behind its own proxy, or killed with SIGKILL and restarted.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);

/// Inserts `per_user` actuals for each user, interleaved, `pause` apart.
fn writer(
    env: &TestEnv,
    users: Vec<String>,
    per_user: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<()> {
    let pool = env.pool.clone();
    tokio::spawn(async move {
        for i in 0..per_user {
            for user in &users {
                insert_actual(&pool, user, &rental_features(i), rental_actual(i)).await;
            }
            tokio::time::sleep(pause).await;
        }
    })
}

fn users(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|u| format!("{prefix}-{u}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_stream_refit_reconnects_and_loses_nothing() {
    let env = TestEnv::new().await;
    env.service(&[]).await;
    let pg = FaultProxy::new(5432);
    let url = database_url_via(&env, pg.port);
    let mut refit = spawn_refit(&env.vars(&[("DATABASE_URL", &url), ("REFIT_VALIDATION", "off")]));
    refit.wait_for_line("refit starting", WAIT).await;
    let connections_before = pg.accepted();

    let users = users("pg", 4);
    // At least 200 × 30 ms = 6 s of streaming, so two restarts (at 0.9 s and 4.3 s) fall inside
    // it however fast the inserts are.
    let writing = writer(&env, users.clone(), 200, Duration::from_millis(30));
    // Three restarts while actuals stream in: 2.5 s down each, retrains in flight are cut.
    let mut cuts = 0;
    while !writing.is_finished() && cuts < 3 {
        tokio::time::sleep(Duration::from_millis(900)).await;
        pg.cut();
        cuts += 1;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        pg.resume();
    }
    writing.await.unwrap();
    settled(&env, 50, WAIT).await;
    assert!(cuts >= 2, "the stream outlived at least two restarts");
    assert!(refit.try_exited().is_none(), "refit kept running");
    let counts = verify(&env, &brokers(), 50, "postgres_restart").await;
    assert_eq!(counts.trained, 800);
    assert!(
        pg.accepted() > connections_before,
        "refit reconnected after the restarts"
    );
    refit.signal("TERM");
    assert!(refit.wait_exit(WAIT).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_for_a_while_retrains_continue_and_invalidations_happen_when_it_returns() {
    let env = TestEnv::new().await;
    env.service(&[]).await;
    let redis = FaultProxy::new(6379);
    let mut refit = spawn_refit(&env.vars(&[
        ("REDIS_URL", &format!("redis://127.0.0.1:{}", redis.port)),
        ("REFIT_OUTBOX_RETRY_MAX_MS", "1000"),
        ("REFIT_VALIDATION", "off"),
    ]));
    refit.wait_for_line("refit starting", WAIT).await;
    let users = users("redis", 3);
    for u in &users {
        env.cache_model(u).await;
        env.insert_actuals(u, 50).await;
    }
    settled(&env, 50, WAIT).await;
    for u in &users {
        assert!(!env.cached(u).await);
    }

    redis.cut();
    // Serving re-caches meanwhile (straight to Redis, which is up for everyone but refit).
    for u in &users {
        env.cache_model(u).await;
        env.insert_actuals(u, 100).await;
    }
    eventually(
        WAIT,
        "versions 2 and 3 committed while Redis is down",
        || async {
            let mut all = true;
            for u in &users {
                all &= env.versions(u, "ready").await == [1, 2, 3];
            }
            all
        },
    )
    .await;
    // Give the sweep a few passes: nothing may be invalidated or announced out of order.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for u in &users {
        assert!(
            env.cached(u).await,
            "{u}: Redis unreachable, key still there"
        );
    }
    let undone_invalidations = env
        .count("SELECT count(*) FROM refit_outbox WHERE kind = 'invalidate' AND done_at IS NULL")
        .await;
    assert_eq!(undone_invalidations, 6);
    let early_announcements = env
        .count("SELECT count(*) FROM refit_outbox WHERE kind = 'announce' AND done_at IS NOT NULL AND (payload->>'model_version')::int > 1")
        .await;
    assert_eq!(
        early_announcements, 0,
        "no event before its version's invalidation"
    );

    let back = Instant::now();
    redis.resume();
    settled(&env, 50, WAIT).await;
    for u in &users {
        assert!(!env.cached(u).await, "{u}: invalidated once Redis returned");
    }
    println!("outbox drained {:?} after Redis returned", back.elapsed());
    let counts = verify(&env, &brokers(), 50, "redis_outage").await;
    assert_eq!(counts.versions_ready, 9);
    refit.signal("TERM");
    assert!(refit.wait_exit(WAIT).await.success());
}

/// Phase 1 trains with the broker up; phase 2 cuts it (network: connections refused and dropped)
/// and trains more; phase 3 brings it back: every event arrives, in version order per user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_unreachable_for_a_while_events_arrive_when_it_returns_in_order_per_user() {
    let env = TestEnv::new().await;
    let broker = Broker::start().await;
    let mut refit = spawn_refit(&env.vars(&[
        ("KAFKA_BROKERS", &broker.brokers()),
        ("REFIT_OUTBOX_RETRY_MAX_MS", "1000"),
        ("REFIT_VALIDATION", "off"),
    ]));
    refit.wait_for_line("Kafka topic ready", WAIT).await;
    let users = users("kafka", 3);
    for u in &users {
        env.insert_actuals(u, 50).await;
    }
    settled(&env, 50, WAIT).await;

    broker.proxy.cut();
    for u in &users {
        env.insert_actuals(u, 150).await;
    }
    eventually(
        WAIT,
        "versions 2-4 committed while Kafka is down",
        || async {
            let mut all = true;
            for u in &users {
                all &= env.versions(u, "ready").await == [1, 2, 3, 4];
            }
            all
        },
    )
    .await;
    let undone = env
        .count("SELECT count(*) FROM refit_outbox WHERE kind = 'announce' AND done_at IS NULL")
        .await;
    assert_eq!(undone, 9, "announcements wait for the broker");

    broker.proxy.resume();
    settled(&env, 50, Duration::from_secs(90)).await;
    let counts = verify(&env, &broker.brokers(), 50, "kafka_outage").await;
    assert_eq!(counts.versions_ready, 12);
    assert_eq!(
        counts.late_duplicates, 0,
        "one replica: no stale redelivery"
    );
    refit.signal("TERM");
    assert!(refit.wait_exit(WAIT).await.success());
}

/// The design: "Invalidations never wait for Kafka, so a broker outage does not leave a stale model
/// cached." With the broker unreachable for three rounds of retrains, each version's cache key
/// must still be deleted within 5 s. Then the broker returns; with `restart_refit` refit is
/// restarted before the outbox must drain.
async fn invalidations_during_a_long_kafka_outage(restart_refit: bool, test: &str) {
    let env = TestEnv::new().await;
    let broker = Broker::start().await;
    let vars = env.vars(&[
        ("KAFKA_BROKERS", &broker.brokers()),
        ("REFIT_OUTBOX_RETRY_MAX_MS", "1000"),
        ("REFIT_VALIDATION", "off"),
    ]);
    let mut refit = spawn_refit(&vars);
    refit.wait_for_line("Kafka topic ready", WAIT).await;
    let users = users(test, 3);
    for u in &users {
        env.insert_actuals(u, 50).await;
    }
    settled(&env, 50, WAIT).await;

    broker.proxy.cut();
    for round in 0..3 {
        for u in &users {
            env.cache_model(u).await;
            env.insert_actuals(u, 50).await;
        }
        eventually(
            Duration::from_secs(5),
            &format!("round {round}: every new version's cache key deleted within 5 s"),
            || async {
                let mut all = true;
                for u in &users {
                    all &=
                        env.versions(u, "ready").await.len() == round + 2 && !env.cached(u).await;
                }
                all
            },
        )
        .await;
    }
    broker.proxy.resume();
    if restart_refit {
        refit.signal("TERM");
        assert!(refit.wait_exit(WAIT).await.success());
        refit = spawn_refit(&vars);
    }
    settled(&env, 50, Duration::from_secs(60)).await;
    verify(&env, &broker.brokers(), 50, test).await;
    refit.signal("TERM");
    assert!(refit.wait_exit(WAIT).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_unreachable_cache_invalidations_do_not_wait_for_the_broker() {
    invalidations_during_a_long_kafka_outage(true, "kafka_invalidations").await;
}

/// The same outage, without restarting refit afterwards: librdkafka's idempotent producer can end
/// the outage in a fatal state (ProducerFenced seen here, intermittently); refit must recreate it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_long_outage_events_are_delivered_without_restarting_refit() {
    invalidations_during_a_long_kafka_outage(false, "kafka_long_outage").await;
}

/// The broker process is killed (SIGKILL) while versions commit, then restarted. The prebuilt
/// tansu has only in-memory storage, so the restarted broker has lost its topic and data: the test
/// re-creates the topic, as a broker with durable storage would still have it, and expects on the
/// topic every event of the versions committed from the kill on. `restart_refit` restarts refit
/// too after the broker is back.
async fn broker_killed_and_restarted(restart_refit: bool, test: &str) {
    let env = TestEnv::new().await;
    let mut broker = Broker::start().await;
    let vars = env.vars(&[
        ("KAFKA_BROKERS", &broker.brokers()),
        ("REFIT_OUTBOX_RETRY_MAX_MS", "1000"),
        ("REFIT_VALIDATION", "off"),
    ]);
    let mut refit = spawn_refit(&vars);
    refit.wait_for_line("Kafka topic ready", WAIT).await;
    let users = users(test, 3);
    for u in &users {
        env.insert_actuals(u, 50).await;
    }
    settled(&env, 50, WAIT).await;

    broker.kill();
    for u in &users {
        env.insert_actuals(u, 100).await;
    }
    eventually(
        WAIT,
        "versions 2-3 committed while the broker is dead",
        || async {
            let mut all = true;
            for u in &users {
                all &= env.versions(u, "ready").await == [1, 2, 3];
            }
            all
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.restart().await;
    broker.create_topic(&env.topic, 2);
    if restart_refit {
        refit.signal("TERM");
        assert!(refit.wait_exit(WAIT).await.success());
        refit = spawn_refit(&vars);
    }
    settled(&env, 50, Duration::from_secs(90)).await;
    let after_kill: HashSet<(String, i32)> = users
        .iter()
        .flat_map(|u| [(u.clone(), 2), (u.clone(), 3)])
        .collect();
    let counts = verify_with(&env, &broker.brokers(), 50, test, Some(after_kill)).await;
    assert_eq!(counts.versions_ready, 9);
    refit.signal("TERM");
    assert!(refit.wait_exit(WAIT).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_broker_killed_and_restarted_then_refit_restarted_delivers_every_event() {
    broker_killed_and_restarted(true, "kafka_broker_restart_refit_restart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_broker_killed_and_restarted_events_are_delivered_without_restarting_refit() {
    broker_killed_and_restarted(false, "kafka_broker_restart").await;
}

async fn retrains_with_loki(loki_url: &str, test: &str) -> Duration {
    let env = TestEnv::new().await;
    env.service(&[]).await;
    let started = Instant::now();
    let mut refit = spawn_refit(&env.vars(&[("LOKI_URL", loki_url)]));
    refit.wait_for_line("refit starting", WAIT).await;
    for u in users(test, 3) {
        env.insert_actuals(&u, 100).await;
    }
    settled(&env, 50, WAIT).await;
    let took = started.elapsed();
    verify(&env, &brokers(), 50, test).await;
    // Logs still reach stdout: every user's commits are there. Not an exact count of 6: about one
    // run in six lost the first line of a call site (the first retrain's `detect` and `commit`
    // lines) while Loki's shipping errors were being logged at start-up; not yet understood
    // (RELIABILITY.md, open questions).
    refit.wait_for_lines("version committed", 5, WAIT).await;
    for u in users(test, 3) {
        let line = format!("\"user_id\":\"{u}\"");
        assert!(
            refit
                .lines()
                .iter()
                .any(|l| l.contains("version committed") && l.contains(&line)),
            "logs still reach stdout: no commit line for {u}"
        );
    }
    refit.signal("TERM");
    let stopping = Instant::now();
    assert!(refit.wait_exit(WAIT).await.success());
    assert!(
        stopping.elapsed() < Duration::from_secs(15),
        "shutdown is not held up by Loki: {:?}",
        stopping.elapsed()
    );
    took
}

fn loki_url_is_read() {
    let out = std::process::Command::new(BIN)
        .args(["config", "--env-names"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l == "LOKI_URL"),
        "refit does not read LOKI_URL: this test would prove nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loki_down_refused_connections_have_no_effect_on_retrains() {
    loki_url_is_read();
    let closed = free_port();
    retrains_with_loki(&format!("http://127.0.0.1:{closed}"), "loki_refused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loki_hung_never_answering_has_no_effect_on_retrains() {
    loki_url_is_read();
    let hole = Blackhole::new();
    retrains_with_loki(&format!("http://127.0.0.1:{}", hole.port), "loki_hung").await;
}

/// A replica whose PostgreSQL connection dies while it waits on a Kafka publish loses the user's
/// outbox lock (transaction-scoped) but not the message already queued in its producer; another
/// replica then delivers that event and the next ones, and the first replica's copy lands after
/// them: a stale duplicate (same event_id) behind a newer version's event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_from_postgres_mid_publish_never_delivers_a_stale_event_after_a_newer_one() {
    let env = TestEnv::new().await;
    let broker = Broker::start().await;
    let pg = FaultProxy::new(5432);
    let base = [
        ("KAFKA_BROKERS", broker.brokers()),
        ("REFIT_OUTBOX_RETRY_MAX_MS", "500".to_owned()),
        ("REFIT_VALIDATION", "off".to_owned()),
    ];
    let base: Vec<(&str, &str)> = base.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut a_vars = base.clone();
    let a_url = database_url_via(&env, pg.port);
    a_vars.push(("DATABASE_URL", &a_url));
    let mut a = spawn_refit(&env.vars(&a_vars));
    a.wait_for_line("Kafka topic ready", WAIT).await;
    let users = users("stale", 3);
    for u in &users {
        env.insert_actuals(u, 50).await;
    }
    settled(&env, 50, WAIT).await;
    let mut late = 0;
    for _round in 0..4 {
        broker.proxy.cut();
        // A trains and starts publishing: the publish waits on the unreachable broker.
        for u in &users {
            env.insert_actuals(u, 50).await;
        }
        eventually(WAIT, "A committed this round's versions", || async {
            env.count("SELECT count(*) FROM refit_pending").await == 0
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        // A loses PostgreSQL, and with it its outbox locks, while its messages wait in its
        // producer; more actuals arrive.
        pg.cut();
        for u in &users {
            env.insert_actuals(u, 50).await;
        }
        // The broker returns; replica B starts with fresh connections and delivers.
        broker.proxy.resume();
        let mut b = spawn_refit(&env.vars(&base));
        settled(&env, 50, Duration::from_secs(90)).await;
        tokio::time::sleep(Duration::from_secs(8)).await;
        pg.resume();
        b.signal("TERM");
        assert!(b.wait_exit(WAIT).await.success());
        late += a.count("event published");
    }
    println!("A published {late} events in total");
    let counts = verify(&env, &broker.brokers(), 50, "stale_duplicate").await;
    a.signal("TERM");
    assert!(a.wait_exit(WAIT).await.success());
    assert_eq!(counts.late_duplicates, 0, "{counts:?}");
}
