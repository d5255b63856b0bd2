//! Several `refit run` processes on one database while actuals stream in from several writers,
//! some of whose transactions commit out of order and some roll back: exactly-once accounting
//! holds, and each user's retrains never overlap (one retrain per user at a time).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::{Connection, PgConnection};

use crate::harness::*;
use crate::support::*;

/// Inserts the `i`th rental row of `user` on `conn` (or in its transaction).
async fn insert_rental(conn: &mut PgConnection, user: &str, i: usize) {
    let features = rental_features(i).to_string();
    insert_request_and_actual(conn, user, &features, rental_actual(i))
        .await
        .unwrap();
}

/// What a writer did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Written {
    pub committed: usize,
    pub late: usize,
    pub rolled_back: usize,
}

/// Writes `n` actuals for random users: ~10 % in transactions that stay open 50–400 ms while
/// later rows commit (out-of-order commits), ~3 % rolled back, the rest committed at once.
pub async fn write_stream(
    database_url: String,
    users: Arc<Vec<String>>,
    n: usize,
    seed: u64,
    pace: Duration,
) -> Written {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut conn = PgConnection::connect(&database_url).await.unwrap();
    let mut late = Vec::new();
    let mut written = Written::default();
    for i in 0..n {
        let user = users[rng.gen_range(0..users.len())].clone();
        match rng.gen_range(0..100) {
            0..10 => {
                let hold = Duration::from_millis(rng.gen_range(50..400));
                let url = database_url.clone();
                late.push(tokio::spawn(async move {
                    let mut c = PgConnection::connect(&url).await.unwrap();
                    let mut tx = c.begin().await.unwrap();
                    insert_rental(&mut tx, &user, i).await;
                    tokio::time::sleep(hold).await;
                    tx.commit().await.unwrap();
                }));
                written.late += 1;
                written.committed += 1;
            }
            10..13 => {
                let mut tx = conn.begin().await.unwrap();
                insert_rental(&mut tx, &user, i).await;
                tx.rollback().await.unwrap();
                written.rolled_back += 1;
            }
            _ => {
                insert_rental(&mut conn, &user, i).await;
                written.committed += 1;
            }
        }
        if late.len() >= 8 {
            for h in late.drain(..) {
                h.await.unwrap();
            }
        }
        if !pace.is_zero() {
            tokio::time::sleep(pace).await;
        }
    }
    for h in late {
        h.await.unwrap();
    }
    written
}

/// Runs `writers` concurrent [`write_stream`]s of `per_writer` actuals each.
pub async fn write_all(
    env: &TestEnv,
    users: &[String],
    writers: usize,
    per_writer: usize,
    pace: Duration,
) -> Written {
    let users = Arc::new(users.to_vec());
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            tokio::spawn(write_stream(
                env.database_url.clone(),
                users.clone(),
                per_writer,
                w as u64 + 1,
                pace,
            ))
        })
        .collect();
    let mut total = Written::default();
    for h in handles {
        let w = h.await.unwrap();
        total.committed += w.committed;
        total.late += w.late;
        total.rolled_back += w.rolled_back;
    }
    total
}

/// A retrain in the logs: user, `read` time, `train` time.
type Span = (String, Option<DateTime<Utc>>, Option<DateTime<Utc>>);
/// From `read` to `train` (or to `read` when it never trained).
type Interval = (DateTime<Utc>, DateTime<Utc>);

/// From the JSON logs of every process: per user, the span from each retrain's `read` line to its
/// `train` line (both written while the user's row lock is held) never overlaps another retrain's.
/// Returns how many retrains were seen.
pub fn assert_one_retrain_per_user_at_a_time(logs: &[Vec<String>]) -> usize {
    // retrain_id → (user, read, train)
    let mut spans: BTreeMap<String, Span> = BTreeMap::new();
    for lines in logs {
        for line in json_lines(lines) {
            let (Some(step), Some(id), Some(user), Some(ts)) = (
                line.get("step").and_then(|v| v.as_str()),
                line.get("retrain_id").and_then(|v| v.as_str()),
                line.get("user_id").and_then(|v| v.as_str()),
                line.get("timestamp").and_then(|v| v.as_str()),
            ) else {
                continue;
            };
            let ts: DateTime<Utc> = ts.parse().unwrap();
            let span = spans
                .entry(id.to_owned())
                .or_insert_with(|| (user.to_owned(), None, None));
            match step {
                "read" => span.1 = Some(ts),
                "train" => span.2 = Some(ts),
                _ => {}
            }
        }
    }
    let mut by_user: BTreeMap<&str, Vec<Interval>> = BTreeMap::new();
    for (user, read, train) in spans.values() {
        if let Some(read) = read {
            by_user
                .entry(user)
                .or_default()
                .push((*read, train.unwrap_or(*read)));
        }
    }
    let mut n = 0;
    for (user, mut spans) in by_user {
        spans.sort();
        n += spans.len();
        for w in spans.windows(2) {
            assert!(
                w[0].1 < w[1].0,
                "{user:?}: two retrains overlapped: {:?} and {:?}",
                w[0],
                w[1]
            );
        }
    }
    n
}

pub fn twenty_users(prefix: &str) -> Vec<String> {
    (0..20).map(|u| format!("{prefix}:{u:02}")).collect()
}

/// `refit run` with a small batch so thousands of actuals make hundreds of retrains.
pub fn replica_vars(
    env: &TestEnv,
    extra: &[(&str, &str)],
) -> std::collections::BTreeMap<String, String> {
    let mut vars = env.vars(&[
        ("REFIT_RETRAIN_THRESHOLD", "20"),
        ("REFIT_ROUNDS_PER_RETRAIN", "2"),
        ("REFIT_MAX_CONCURRENT_RETRAINS", "3"),
    ]);
    for (k, v) in extra {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    vars
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_twenty_users_out_of_order_commits_exactly_once() {
    let env = TestEnv::new().await;
    env.service(&[]).await;
    let mut replicas: Vec<Process> = (0..3)
        .map(|_| spawn_refit(&replica_vars(&env, &[])))
        .collect();
    for r in &replicas {
        r.wait_for_line("refit starting", Duration::from_secs(30))
            .await;
    }
    let users = twenty_users("conc");
    let written = write_all(&env, &users, 4, 500, Duration::ZERO).await;
    settled(&env, 20, Duration::from_secs(120)).await;
    let counts = verify(&env, &brokers(), 20, "three_processes").await;
    assert_eq!(
        counts.actuals_inserted, written.committed as i64,
        "{written:?}"
    );
    for r in &mut replicas {
        r.signal("TERM");
        assert!(r.wait_exit(Duration::from_secs(30)).await.success());
    }
    let logs: Vec<Vec<String>> = replicas.iter().map(|r| r.lines()).collect();
    let retrains = assert_one_retrain_per_user_at_a_time(&logs);
    assert!(retrains as i64 >= counts.versions_ready);
    let committed: usize = replicas.iter().map(|r| r.count("version committed")).sum();
    assert_eq!(committed as i64, counts.versions_ready);
    let working = replicas
        .iter()
        .filter(|r| r.count("version committed") > 0)
        .count();
    assert!(working >= 2, "the replicas shared the work");
    println!("written: {written:?}; retrains seen in logs: {retrains}");
}
