//! Production hardening (issue 12): each defect the code audit found, reproduced against the real
//! services, then fixed. See RELIABILITY.md, "Hardening".

use std::time::{Duration, Instant};

use crate::crash::require_fault_injection;
use crate::harness::*;
use crate::support::*;

const WAIT: Duration = Duration::from_secs(40);

/// Replica A stalls in the training of `user` (its transaction holds the user's row lock, idle);
/// replica B, started once A stalled, must retrain the user. Returns how long B took from A's
/// stall, and the two processes.
async fn stalled_replica_hands_over(a_vars: &[(&str, &str)], test: &str) -> Duration {
    require_fault_injection();
    let env = TestEnv::new().await;
    env.service(&[]).await; // the topic
    let user = "hung-user";
    let mut a_env = vec![
        ("REFIT_FAULT_HANG", "during_train"),
        // A scans less often than B, so once the lock is free B is the one that takes the user.
        ("REFIT_POLL_INTERVAL_MS", "1000"),
    ];
    a_env.extend_from_slice(a_vars);
    let a = Refit::spawn(&env.vars(&a_env));
    a.wait_for_line("refit starting", WAIT).await;
    env.insert_actuals(user, 50).await;
    a.wait_for_line("fault injection: hanging at during_train", WAIT)
        .await;
    let stalled = Instant::now();
    let b = Refit::spawn(&env.vars(&[]));
    eventually(
        Duration::from_secs(60),
        "another replica retrains the user of the hung retrain",
        || async { env.versions(user, "ready").await == [1] },
    )
    .await;
    let took = stalled.elapsed();
    b.wait_for_line("version committed", WAIT).await;
    assert_eq!(a.count("version committed"), 0, "A is hung: B committed");
    settled(&env, 50, WAIT).await;
    let counts = verify(&env, &brokers(), 50, test).await;
    assert_eq!(counts.trained, 50);
    drop((a, b));
    took
}

/// Defect 6: a hung training held the user's row lock forever, so no replica could retrain the
/// user. With the retrain deadline the hung retrain's transaction is dropped (rolled back) when
/// the deadline passes, the user backs off, and another replica takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_retrain_passes_its_deadline_and_another_replica_takes_over() {
    let took = stalled_replica_hands_over(
        &[
            ("REFIT_RETRAIN_TIMEOUT_SECS", "2"),
            ("REFIT_IDLE_IN_TRANSACTION_TIMEOUT_MS", "0"),
        ],
        "hung_retrain_deadline",
    )
    .await;
    println!("handed over {took:?} after the stall");
    assert!(took < Duration::from_secs(30), "{took:?}");
}

/// Defect 6, the server's side: a replica stalled inside its transaction (hung, or cut off
/// half-open) is ended by PostgreSQL's idle_in_transaction_session_timeout, which releases the
/// row lock, even with no retrain deadline in the replica itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_transaction_is_ended_by_the_server_and_another_replica_takes_over() {
    let took = stalled_replica_hands_over(
        &[
            ("REFIT_RETRAIN_TIMEOUT_SECS", "0"),
            ("REFIT_IDLE_IN_TRANSACTION_TIMEOUT_MS", "2000"),
        ],
        "stalled_transaction_server_timeout",
    )
    .await;
    println!("handed over {took:?} after the stall");
    assert!(took < Duration::from_secs(30), "{took:?}");
}

/// Defect 6: the session limits reach PostgreSQL (statement timeout, idle-in-transaction
/// timeout, keepalives) for every connection refit opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refit_session_has_the_configured_timeouts_and_keepalives() {
    let env = TestEnv::new().await;
    let running = env
        .start(&[
            ("REFIT_STATEMENT_TIMEOUT_MS", "12345"),
            ("REFIT_IDLE_IN_TRANSACTION_TIMEOUT_MS", "23456"),
            ("REFIT_TCP_KEEPALIVE_SECS", "7"),
        ])
        .await;
    let settings: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, setting FROM pg_settings
          WHERE name IN ('statement_timeout', 'idle_in_transaction_session_timeout',
                         'tcp_keepalives_idle', 'tcp_keepalives_interval', 'tcp_keepalives_count')
          ORDER BY name",
    )
    .fetch_all(&running.service.pool)
    .await
    .unwrap();
    let expected: Vec<(String, String)> = [
        ("idle_in_transaction_session_timeout", "23456"),
        ("statement_timeout", "12345"),
        ("tcp_keepalives_count", "3"),
        ("tcp_keepalives_idle", "7"),
        ("tcp_keepalives_interval", "7"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(settings, expected);
    running.stop().await;
}

