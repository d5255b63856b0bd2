//! The `refit` binary as operators run it: several replicas, signals, bad configuration.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_refit");

/// `refit run` pointed at `env`, with `extra` settings (see [`Process::refit_run`]).
pub fn spawn_refit(env: &TestEnv, extra: &[(&str, &str)]) -> Process {
    Process::refit_run(BIN, &env.vars(extra))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_database_train_every_actual_exactly_once() {
    let env = TestEnv::new().await;
    // The topic exists before both replicas start.
    env.service(&[]).await;
    let mut a = spawn_refit(&env, &[]);
    let mut b = spawn_refit(&env, &[]);
    a.wait_for_line("refit starting", Duration::from_secs(20))
        .await;
    b.wait_for_line("refit starting", Duration::from_secs(20))
        .await;

    // Four writers insert 1,200 actuals for eight users while both replicas run.
    let users: Vec<String> = (0..8).map(|u| format!("user {u}:ü")).collect();
    let mut writers = Vec::new();
    for w in 0..4 {
        let pool = env.pool.clone();
        let users = users.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..300 {
                let user = &users[(i + w) % users.len()];
                insert_actual(&pool, user, &rental_features(i), rental_actual(i)).await;
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let inserted = 1200i64;
    eventually(Duration::from_secs(60), "every full batch trained and announced", || async {
        env.count("SELECT count(*) FROM (SELECT user_id FROM refit_pending GROUP BY user_id HAVING count(*) >= 50) due").await == 0
            && env.count("SELECT count(*) FROM refit_outbox WHERE done_at IS NULL").await == 0
    })
    .await;

    let consumed = env
        .count("SELECT count(*) FROM refit_consumed_actuals")
        .await;
    let pending = env.count("SELECT count(*) FROM refit_pending").await;
    assert_eq!(consumed + pending, inserted, "an actual was lost");
    assert_eq!(
        env.count(
            "SELECT count(*) FROM refit_consumed_actuals c JOIN refit_pending p USING (actual_id)"
        )
        .await,
        0,
        "an actual is both pending and trained"
    );
    for user in &users {
        let versions: Vec<(i32, Option<i32>, i32)> = sqlx::query_as(
            "SELECT version, parent_version, rows_used FROM refit_model_versions WHERE user_id = $1 ORDER BY version",
        )
        .bind(user)
        .fetch_all(&env.pool)
        .await
        .unwrap();
        let inserted: i64 =
            sqlx::query_scalar("SELECT count(*) FROM prediction_requests WHERE user_id = $1")
                .bind(user)
                .fetch_one(&env.pool)
                .await
                .unwrap();
        assert!(inserted >= 100);
        assert_eq!(
            versions.len() as i64,
            inserted / 50,
            "{user}: {inserted} actuals: {versions:?}"
        );
        for (i, (version, parent, rows)) in versions.iter().enumerate() {
            assert_eq!(*version, i as i32 + 1);
            // One retrain per user at a time: each version continues the one before it.
            assert_eq!(*parent, (i > 0).then_some(i as i32));
            assert_eq!(*rows, 50);
        }
    }
    let versions = env.count("SELECT count(*) FROM refit_model_versions").await;
    assert_eq!(
        versions * 50,
        consumed,
        "every consumed actual belongs to exactly one 50-row version"
    );
    let announced = env
        .count("SELECT count(*) FROM refit_outbox WHERE kind = 'announce' AND done_at IS NOT NULL")
        .await;
    assert_eq!(announced, versions);
    let events = read_events(&env.reader(), versions as usize, Duration::from_secs(20));
    let mut ids: Vec<_> = events
        .iter()
        .map(|e| (e.event.user_id.clone(), e.event.model_version))
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len() as i64, versions, "every version announced");
    // Both replicas did work.
    for p in [&mut a, &mut b] {
        p.signal("TERM");
        assert_eq!(p.wait_exit(Duration::from_secs(30)).await.code(), Some(0));
    }
    let committed_by = |p: &Process| {
        p.lines()
            .iter()
            .filter(|l| l.contains("version committed"))
            .count()
    };
    assert_eq!((committed_by(&a) + committed_by(&b)) as i64, versions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_retrain_lets_it_commit_and_announce_then_exits_zero() {
    let env = TestEnv::new().await;
    env.service(&[]).await;
    // A batch big enough that training takes a while.
    sqlx::query(
        "WITH r AS (INSERT INTO prediction_requests (request_id, user_id, features)
                    SELECT gen_random_uuid(), 'judy', jsonb_build_object('x', g, 'y', g % 17, 'z', sin(g))
                      FROM generate_series(1, 4000) g RETURNING request_id, features)
         INSERT INTO actual_rentals (request_id, actual_value) SELECT request_id, (features->>'y')::float * 3 FROM r",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let mut p = spawn_refit(
        &env,
        &[
            ("REFIT_RETRAIN_THRESHOLD", "4000"),
            ("REFIT_ROUNDS_PER_RETRAIN", "300"),
            ("REFIT_XGB_PARAMS", r#"{"max_depth": 10}"#),
        ],
    );
    p.wait_for_line("\"step\":\"read\"", Duration::from_secs(30))
        .await;
    p.signal("TERM");
    assert_eq!(
        p.wait_exit(Duration::from_secs(60)).await.code(),
        Some(0),
        "clean exit"
    );

    let position = |needle: &str| p.lines().iter().position(|l| l.contains(needle));
    let signal = position("SIGTERM received").expect("signal logged");
    let commit = position("version committed").expect("the in-flight retrain committed");
    assert!(
        signal < commit,
        "the signal arrived during the retrain:\n{}",
        p.lines().join("\n")
    );
    assert_eq!(env.versions("judy", "ready").await, [1]);
    assert_eq!(env.pending("judy").await, 0);
    assert_eq!(
        env.count("SELECT count(*) FROM refit_outbox WHERE done_at IS NULL")
            .await,
        0,
        "side effects done before exit"
    );
    let events = read_events(&env.reader(), 1, Duration::from_secs(10));
    assert_eq!(events[0].event.rows_used, 4000);
}

#[tokio::test]
async fn invalid_configuration_stops_startup_naming_variable_value_and_range() {
    for (name, value, expected) in [
        (
            "REFIT_RETRAIN_THRESHOLD",
            "0",
            "an integer from 1 to 1000000",
        ),
        (
            "REFIT_POLL_INTERVAL_MS",
            "fast",
            "an integer from 10 to 3600000",
        ),
        ("REFIT_XGB_PARAMS", "max_depth=4", "a JSON object"),
        // Connection URLs are redacted, even malformed ones: "localhost:6379" prints as "***".
        ("REDIS_URL", "***", "a redis:// or rediss:// URL"),
    ] {
        let out = Command::new(BIN)
            .arg("run")
            .env_clear()
            .env(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/postgres",
            )
            .env(
                name,
                if value == "***" {
                    "localhost:6379"
                } else {
                    value
                },
            )
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}={value}: {stderr}");
        assert!(
            stderr.contains(name)
                && stderr.contains(&format!("{value:?}"))
                && stderr.contains(expected),
            "{name}={value}: {stderr}"
        );
    }
    let out = Command::new(BIN).arg("run").env_clear().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATABASE_URL is required"));
}

/// The registry's status filter takes the registry's spelling and names it when given another
/// (the event's `success` included), before connecting anywhere.
#[test]
fn an_unknown_status_filter_is_a_usage_error() {
    for bad in ["bogus", "success"] {
        let out = Command::new(BIN)
            .args(["models", "list", "--status", bad])
            .env_clear()
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "unknown status {bad:?}: ready, rejected or failed"
            )),
            "{bad}: {stderr}"
        );
    }
}

#[test]
fn every_subcommand_has_help() {
    for sub in ["migrate", "run", "demo", "config"] {
        let out = Command::new(BIN).args([sub, "--help"]).output().unwrap();
        assert!(out.status.success(), "{sub} --help");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage: refit"),
            "{sub}"
        );
    }
}
