//! Bad input never stops the loop: unusable rows are set aside with a reason and the rest trains;
//! odd user ids are safe Redis and Kafka keys; a corrupt or foreign model artifact fails only its
//! user's retrain; configuration out of range stops start-up naming the setting.

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;
use crate::support::*;

const WAIT: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_row_is_set_aside_with_its_reason_and_the_rest_trains() {
    let env = TestEnv::new().await;
    let running = env.start(&[("REFIT_VALIDATION", "off")]).await;
    let user = "mallory";
    // Version 1 fixes the model's features: hour, humidity, temperature, weekday.
    env.insert_actuals(user, 50).await;
    eventually(WAIT, "mallory v1", || async {
        env.versions(user, "ready").await == [1]
    })
    .await;

    let many_unknown: serde_json::Map<String, Value> = (0..5000)
        .map(|i| (format!("unknown_{i}"), json!(i)))
        .chain([("hour".to_owned(), json!(4))])
        .collect();
    let many_unknown = Value::Object(many_unknown).to_string();
    // (features as JSON text, actual, expected reason; None = trained on)
    let cases: Vec<(String, f64, Option<&str>)> = vec![
        (r#"{"hour": 1}"#.into(), f64::NAN, Some("non_finite_actual")),
        (
            r#"{"hour": 1}"#.into(),
            f64::INFINITY,
            Some("non_finite_actual"),
        ),
        (
            r#"{"hour": 1}"#.into(),
            f64::NEG_INFINITY,
            Some("non_finite_actual"),
        ),
        (r#"{"hour": 1}"#.into(), 1e300, Some("actual_out_of_range")),
        (
            r#"{"hour": "noon"}"#.into(),
            1.0,
            Some("non_numeric_feature"),
        ),
        (r#"{"hour": true}"#.into(), 1.0, Some("non_numeric_feature")),
        (
            r#"{"hour": [1, 2]}"#.into(),
            1.0,
            Some("non_numeric_feature"),
        ),
        (
            r#"{"hour": {"h": 1}}"#.into(),
            1.0,
            Some("non_numeric_feature"),
        ),
        (
            r#"{"hour": 1e300}"#.into(),
            1.0,
            Some("feature_out_of_range"),
        ),
        (
            r#"{"hour": -1e300}"#.into(),
            1.0,
            Some("feature_out_of_range"),
        ),
        (
            r#"{"hour": 1e400}"#.into(),
            1.0,
            Some("feature_out_of_range"),
        ),
        (r#"[1, 2, 3]"#.into(), 1.0, Some("features_not_object")),
        (r#""a string""#.into(), 1.0, Some("features_not_object")),
        (r#"5"#.into(), 1.0, Some("features_not_object")),
        (r#"null"#.into(), 1.0, Some("features_not_object")),
        (r#"{}"#.into(), 1.0, Some("no_known_features")),
        (
            r#"{"zzz": 1, "other": "x"}"#.into(),
            1.0,
            Some("no_known_features"),
        ),
        (r#"{"hour": null}"#.into(), 1.0, Some("no_known_features")),
        (r#"{"HOUR": 1}"#.into(), 1.0, Some("no_known_features")),
        // Usable: negative values, unknown keys ignored (even non-numeric), a huge object.
        (
            r#"{"hour": -5.5, "temperature": -40, "humidity": -1}"#.into(),
            -3.0,
            None,
        ),
        (
            r#"{"hour": 3, "zzz": "text", "nested": {"a": [1]}}"#.into(),
            2.0,
            None,
        ),
        (many_unknown, 4.0, None),
        // An unknown key's number beyond f64 is ignored too (issue 12, item 8).
        (
            r#"{"hour": 4, "zzz": 1e400, "deep": {"x": -1e999}}"#.into(),
            5.0,
            None,
        ),
        (r#"{"hour": 0, "temperature": 1e-30}"#.into(), 0.0, None),
    ];
    let mut expected = Vec::new();
    for (features, actual, reason) in &cases {
        let id = insert_request_and_actual(&mut *env.conn().await, user, features, *actual)
            .await
            .unwrap();
        expected.push((id, *reason));
    }
    let good = 50 - cases.len();
    env.insert_actuals(user, good).await;
    // Another user's rows arrive behind the bad batch: the loop must go on for them.
    env.insert_actuals("control", 50).await;

    eventually(WAIT, "mallory v2 and control v1", || async {
        env.versions(user, "ready").await == [1, 2] && env.versions("control", "ready").await == [1]
    })
    .await;
    for (id, reason) in &expected {
        let row: (String, Option<String>, Option<i32>) = sqlx::query_as(
            "SELECT outcome, reason, version FROM refit_consumed_actuals WHERE actual_id = $1",
        )
        .bind(id)
        .fetch_one(&env.pool)
        .await
        .unwrap();
        match reason {
            Some(r) => assert_eq!(
                (row.0.as_str(), row.1.as_deref(), row.2),
                ("set_aside", Some(*r), None),
                "actual {id}"
            ),
            None => assert_eq!((row.0.as_str(), row.2), ("trained", Some(2)), "actual {id}"),
        }
    }
    let rejected = expected.iter().filter(|(_, r)| r.is_some()).count() as i32;
    let (used, aside): (i32, i32) = sqlx::query_as(
        "SELECT rows_used, rows_set_aside FROM refit_model_versions WHERE user_id = $1 AND version = 2",
    )
    .bind(user)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((used, aside), (50 - rejected, rejected));
    let details: i64 = env
        .count("SELECT count(*) FROM refit_consumed_actuals WHERE outcome = 'set_aside' AND coalesce(detail, '') <> ''")
        .await;
    assert_eq!(
        details, rejected as i64,
        "every set-aside row carries a detail"
    );
    running.stop().await;
    let counts = verify(&env, &brokers(), 50, "bad_rows").await;
    assert_eq!(counts.set_aside, rejected as i64);
}

/// Odd user ids: each trains, its exact key `<prefix><id>` is deleted (no other key is), and its
/// event carries the id as the Kafka key and in the JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_user_ids_are_safe_redis_and_kafka_keys() {
    let env = TestEnv::new().await;
    let ids: Vec<String> = vec![
        "".into(),
        " ".into(),
        "with space".into(),
        "a:b:c".into(),
        "line\nbreak".into(),
        "tab\tand\rreturn".into(),
        "ünïcødé-用户-🚀".into(),
        "*".into(),
        "model:*".into(),
        "'; DROP TABLE refit_pending; --".into(),
        "$1".into(),
        "\\x00".into(),
        // The longest id refit takes; longer ones are set aside (hardening.rs, defect 4).
        "x".repeat(1000),
    ];
    for id in &ids {
        env.cache_model(id).await;
    }
    let bystanders = ["bystander", "with", "a", "model:", "x"];
    for b in bystanders {
        env.cache_model(b).await;
    }
    let running = env.start(&[("REFIT_VALIDATION", "off")]).await;
    for id in &ids {
        env.insert_actuals(id, 50).await;
    }
    settled(&env, 50, WAIT).await;
    for id in &ids {
        assert_eq!(env.versions(id, "ready").await, [1], "{:.40?}", id);
        assert!(!env.cached(id).await, "{:.40?}: key deleted", id);
    }
    for b in bystanders {
        assert!(env.cached(b).await, "{b}: no other key deleted");
    }
    running.stop().await;
    let counts = verify(&env, &brokers(), 50, "odd_user_ids").await;
    assert_eq!(counts.versions_ready, ids.len() as i64);
    assert_eq!(
        env.count("SELECT count(*) FROM refit_pending").await,
        0,
        "refit_pending intact"
    );
}

/// Trains a fresh model for `user` on `features(i)` rows and returns its artifact.
async fn train_donor(
    env: &TestEnv,
    service: &refit::scheduler::Service,
    user: &str,
    features: impl Fn(usize) -> Value,
) -> Vec<u8> {
    for i in 0..50 {
        insert_actual(&env.pool, user, &features(i), i as f64).await;
    }
    let outcome = service.retrainer.retrain_user(user, 50).await.unwrap();
    assert!(
        matches!(outcome, refit::retrain::Outcome::Trained { version: 1, .. }),
        "{outcome:?}"
    );
    sqlx::query_scalar(
        "SELECT artifact FROM refit_model_versions WHERE user_id = $1 AND version = 1",
    )
    .bind(user)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

/// Replaces `victim`'s active artifact, then runs the service on 50 more actuals for it and 50
/// for a control user: the victim's retrain fails (`failed` version and event, reason, v1 stays
/// active, rows stay pending, cache untouched), the control user trains.
async fn foreign_artifact_fails_only_that_user(artifact: Vec<u8>, reason_has: &str, test: &str) {
    let env = TestEnv::new().await;
    let service = env.service(&[("REFIT_VALIDATION", "off")]).await;
    let victim = "victim";
    env.insert_actuals(victim, 50).await;
    service.retrainer.retrain_user(victim, 50).await.unwrap();
    let artifact = if artifact.is_empty() {
        // A model of other features: three instead of the victim's four.
        train_donor(
            &env,
            &service,
            "donor",
            |i| json!({"a": i as f64, "b": (i % 5) as f64, "c": 1.0}),
        )
        .await
    } else if artifact == b"renamed" {
        // A model of four features, as many as the victim's, but other ones.
        train_donor(
            &env,
            &service,
            "donor",
            |i| json!({"p": i as f64, "q": (i % 5) as f64, "r": 1.0, "s": (i % 3) as f64}),
        )
        .await
    } else {
        artifact
    };
    drop(service);
    sqlx::query("UPDATE refit_model_versions SET artifact = $1 WHERE user_id = $2 AND version = 1")
        .bind(&artifact)
        .bind(victim)
        .execute(&env.pool)
        .await
        .unwrap();
    let running = env.start(&[("REFIT_VALIDATION", "off")]).await;
    // Version 1's own invalidation first; then serving caches version 1.
    env.outbox_drained(WAIT).await;
    env.cache_model(victim).await;
    env.insert_actuals(victim, 50).await;
    env.insert_actuals("control", 50).await;
    eventually(WAIT, "victim failed, control trained", || async {
        !env.versions(victim, "failed").await.is_empty()
            && env.versions("control", "ready").await == [1]
    })
    .await;
    running.stop().await;
    let (error,): (String,) = sqlx::query_as(
        "SELECT error FROM refit_model_versions WHERE user_id = $1 AND status = 'failed' ORDER BY version LIMIT 1",
    )
    .bind(victim)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(
        error.contains(reason_has),
        "reason {error:?} lacks {reason_has:?}"
    );
    assert_eq!(env.active_version(victim).await, Some(1), "v1 stays active");
    assert_eq!(env.pending(victim).await, 50, "the batch stays pending");
    assert!(
        env.cached(victim).await,
        "a failed retrain invalidates nothing"
    );
    let counts = verify(&env, &brokers(), 50, test).await;
    assert!(counts.versions_failed >= 1);
    let statuses: HashSet<String> = collect_events(
        &brokers(),
        &env.topic,
        [(victim.to_owned(), 2)].into(),
        WAIT,
    )
    .await
    .into_iter()
    .filter(|e| e.event.user_id == victim)
    .map(|e| e.event.status.reported().to_owned())
    .collect();
    assert!(statuses.contains("failed"), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_artifact_fails_that_user_only() {
    foreign_artifact_fails_only_that_user(
        b"\x00\xff\x00\xffnot a model".to_vec(),
        "cannot be loaded",
        "corrupt_artifact",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_of_a_model_with_fewer_features_fails_that_user_only() {
    foreign_artifact_fails_only_that_user(Vec::new(), "features", "foreign_artifact_fewer").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn an_artifact_of_a_model_with_other_features_of_the_same_count_fails_that_user_only() {
    foreign_artifact_fails_only_that_user(
        b"renamed".to_vec(),
        "features",
        "foreign_artifact_renamed",
    )
    .await;
}

fn run_with(vars: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .arg("run")
        .env_clear()
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
        .envs(vars.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn configuration_out_of_range_stops_startup_naming_the_setting() {
    let integers = [
        ("REFIT_TOPIC_PARTITIONS", 1, 10_000),
        ("REFIT_TOPIC_REPLICATION", 1, 100),
        ("REFIT_RETRAIN_THRESHOLD", 1, 1_000_000),
        ("REFIT_ROUNDS_PER_RETRAIN", 1, 10_000),
        ("REFIT_POLL_INTERVAL_MS", 10, 3_600_000),
        ("REFIT_MAX_CONCURRENT_RETRAINS", 1, 1024),
        ("REFIT_XGB_NTHREAD", 1, 256),
        ("REFIT_OUTBOX_RETRY_MAX_MS", 10, 3_600_000),
        ("REFIT_STATEMENT_TIMEOUT_MS", 0, 86_400_000),
        ("REFIT_IDLE_IN_TRANSACTION_TIMEOUT_MS", 0, 86_400_000),
        ("REFIT_TCP_KEEPALIVE_SECS", 0, 3600),
        ("REFIT_RETRAIN_TIMEOUT_SECS", 0, 86_400),
        ("REFIT_HTTP_DB_POOL_SIZE", 1, 100),
        ("REFIT_IMPORT_MAX_BYTES", 1024, 1 << 30),
        ("REFIT_LOKI_QUEUE_LINES", 10, 1_000_000),
        ("REFIT_LOKI_TIMEOUT_SECS", 1, 300),
    ];
    let mut cases: Vec<(&str, String)> = Vec::new();
    for (name, min, max) in integers {
        for bad in [
            (min - 1).to_string(),
            (max + 1).to_string(),
            "-1".into(),
            "1.5".into(),
            "ten".into(),
            "99999999999999999999".into(),
        ] {
            cases.push((name, bad));
        }
        // The bounds themselves are accepted.
        for good in [min, max] {
            let out = Command::new(BIN)
                .arg("config")
                .env_clear()
                .env("DATABASE_URL", "postgres://h/db")
                .env(name, good.to_string())
                .output()
                .unwrap();
            assert!(out.status.success(), "{name}={good} is in range");
            assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{name}={good}")));
        }
    }
    for (name, bad) in [
        ("REFIT_TOPIC", "has space"),
        ("REFIT_TOPIC", "ü"),
        ("REFIT_FEATURES", "a,,b"),
        ("REFIT_FEATURES", "a,a"),
        ("REFIT_XGB_PARAMS", "[1, 2]"),
        ("REFIT_XGB_PARAMS", "{\"max_depth\": [4]}"),
        ("REFIT_LOG_FORMAT", "xml"),
        ("REFIT_HTTP_ADDR", "not an address"),
        ("REDIS_URL", "http://127.0.0.1:6379"),
        ("LOKI_URL", "ftp://loki"),
        ("DATABASE_URL", "mysql://db/refit"),
    ] {
        cases.push((name, bad.to_owned()));
    }
    for (name, value) in &cases {
        let (code, stderr) = run_with(&[(name, value)]);
        assert_eq!(code, Some(2), "{name}={value:?}: {stderr}");
        assert!(
            stderr.contains(name) && stderr.contains("expected"),
            "{name}={value:?}: {stderr}"
        );
    }
    // A topic name longer than Kafka allows.
    let (code, stderr) = run_with(&[("REFIT_TOPIC", &"t".repeat(250))]);
    assert_eq!(code, Some(2), "{stderr}");
}

#[test]

fn a_malformed_url_is_refused_without_echoing_its_password() {
    for (name, value) in [
        (
            "DATABASE_URL",
            "postgress://refit:Pg-S3cret-1@db:5432/refit",
        ),
        ("REDIS_URL", "redis:/:Redis-S3cret-2@cache:6379"),
    ] {
        let (code, stderr) = run_with(&[(name, value)]);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains(name), "{stderr}");
        assert!(
            !stderr.contains("S3cret"),
            "{name}: the error message leaks the password: {stderr}"
        );
    }
}
