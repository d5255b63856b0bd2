//! `kill -9` at each point of a retrain, then a restart: every actual trained exactly once, every
//! committed version invalidated and announced, no duplicate version.
//!
//! The `fault-injection` feature compiles `REFIT_FAULT_POINT` into the binary: the process aborts
//! (SIGABRT, no unwinding, no flush — as abrupt as SIGKILL) when a retrain reaches that point.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use crate::harness::*;
use crate::support::*;

const WAIT: Duration = Duration::from_secs(30);

pub fn require_fault_injection() {
    if !cfg!(feature = "fault-injection") {
        panic!("crash tests need the fault points: cargo test --features fault-injection --test reliability");
    }
}

async fn crash_then_restart(point: &str) {
    crash_then_restart_with(point, &[]).await;
}

/// [`crash_then_restart`], both processes with `extra` settings.
async fn crash_then_restart_with(point: &str, extra: &[(&str, &str)]) -> TestEnv {
    require_fault_injection();
    let env = TestEnv::new().await;
    env.service(&[]).await; // the topic
    let user = format!("crash:{point}");
    env.cache_model(&user).await;

    let crashing_vars = [extra, &[("REFIT_FAULT_POINT", point)]].concat();
    let mut crashing = spawn_refit(&env.vars(&crashing_vars));
    crashing.wait_for_line("refit starting", WAIT).await;
    env.insert_actuals(&user, 50).await;
    let status = crashing.wait_exit(WAIT).await;
    assert_eq!(
        status.signal(),
        Some(6),
        "aborted at {point}: {status:?}\n{}",
        crashing.lines().join("\n")
    );
    assert_eq!(
        crashing.count(&format!("fault injection: aborting at {point}")),
        1
    );

    // What the crash left behind.
    let undone = env
        .count("SELECT count(*) FROM refit_outbox WHERE done_at IS NULL")
        .await;
    match point {
        "after_read" | "during_train" => {
            assert!(env.versions(&user, "ready").await.is_empty());
            assert_eq!(env.pending(&user).await, 50, "rolled back: still pending");
            assert_eq!(
                env.count("SELECT count(*) FROM refit_consumed_actuals")
                    .await,
                0
            );
            assert_eq!(undone, 0);
            assert!(env.cached(&user).await);
        }
        "after_commit" => {
            assert_eq!(env.versions(&user, "ready").await, [1]);
            assert_eq!(env.pending(&user).await, 0);
            assert_eq!(
                undone, 2,
                "invalidation and announcement left to the outbox"
            );
            assert!(env.cached(&user).await, "crashed before the DEL");
        }
        "after_invalidate" => {
            assert_eq!(env.versions(&user, "ready").await, [1]);
            assert!(!env.cached(&user).await, "crashed after the DEL");
            let announce_undone = env
                .count(
                    "SELECT count(*) FROM refit_outbox WHERE kind = 'announce' AND done_at IS NULL",
                )
                .await;
            assert_eq!(announce_undone, 1, "crashed before the event");
        }
        _ => unreachable!(),
    }

    // Serving re-caches the old model meanwhile; the restart must still invalidate it.
    env.cache_model(&user).await;
    let mut restarted = spawn_refit(&env.vars(extra));
    settled(&env, 50, WAIT).await;
    assert!(!env.cached(&user).await, "invalidated after the restart");
    let counts = verify(&env, &brokers(), 50, &format!("crash_{point}")).await;
    assert_eq!(counts.trained + counts.held_out, 50);
    assert_eq!(counts.versions_ready, 1, "no duplicate version");
    assert_eq!(
        counts.events, 1,
        "announced once: the crash came before any publish"
    );
    restarted.signal("TERM");
    assert!(restarted.wait_exit(WAIT).await.success());
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_read_then_restart_trains_the_batch_once() {
    crash_then_restart("after_read").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_training_then_restart_trains_the_batch_once() {
    crash_then_restart("during_train").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_commit_before_the_cache_delete_then_restart_invalidates_and_announces() {
    crash_then_restart("after_commit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_cache_delete_before_the_event_then_restart_announces() {
    crash_then_restart("after_invalidate").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_cache_delete_then_restart_announces_and_deletes_what_it_delivered() {
    let deleting = [("REFIT_OUTBOX_RETENTION_SECS", "0")];
    let env = crash_then_restart_with("after_invalidate", &deleting).await;
    assert_eq!(
        env.count("SELECT count(*) FROM refit_outbox").await,
        0,
        "delivered entries deleted, the ones the crash left behind too"
    );
}
