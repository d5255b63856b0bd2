//! Production hardening (issue 12): each defect the code audit found, reproduced against the real
//! services, then fixed. See RELIABILITY.md, "Hardening".

use std::time::{Duration, Instant};

use crate::crash::require_fault_injection;
use crate::harness::*;
use crate::support::*;

const WAIT: Duration = Duration::from_secs(40);

/// Replica A stalls in the training of a user (its transaction holds the user's row lock, idle);
/// replica B, started once A stalled, must retrain the user. Returns how long B took from A's
/// stall.
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
    let a = spawn_refit(&env.vars(&a_env));
    a.wait_for_line("refit starting", WAIT).await;
    env.insert_actuals(user, 50).await;
    a.wait_for_line("fault injection: hanging at during_train", WAIT)
        .await;
    let stalled = Instant::now();
    let b = spawn_refit(&env.vars(&[]));
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

/// Defect 2: an actual deleted upstream and inserted again with an id refit already consumed made
/// every retrain of its user fail on `refit_consumed_actuals`' primary key, so none of the user's
/// later actuals were ever trained. It is set aside with its reason, counted, and the user moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actual_inserted_again_with_a_consumed_id_is_set_aside_and_the_user_moves_on() {
    let env = TestEnv::new().await;
    let running = env.start(&[]).await;
    let user = "reinserted";
    let ids = env.insert_actuals(user, 50).await;
    eventually(WAIT, "version 1", || async {
        env.versions(user, "ready").await == [1]
    })
    .await;
    let again = ids[7];
    sqlx::query(
        "WITH gone AS (DELETE FROM actual_rentals WHERE id = $1 RETURNING request_id)
         INSERT INTO actual_rentals (id, request_id, actual_value)
         SELECT $1, request_id, 42.0 FROM gone",
    )
    .bind(again)
    .execute(&env.pool)
    .await
    .unwrap();
    ingest_all(&env.pool).await;
    assert_eq!(env.pending(user).await, 1, "the ingest queued it again");
    env.insert_actuals(user, 50).await;
    eventually(WAIT, "version 2 trained on the later actuals", || async {
        env.versions(user, "ready").await == [1, 2]
    })
    .await;
    assert_eq!(env.pending(user).await, 0);
    let aside: Vec<(i64, String, String, String)> =
        sqlx::query_as("SELECT actual_id, user_id, reason, detail FROM refit_unconsumable_actuals")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        (aside[0].0, aside[0].2.as_str()),
        (again, "already_consumed")
    );
    assert!(aside[0].3.contains("consumed before"), "{aside:?}");
    let metrics = running.service.metrics_text();
    assert!(
        metrics.contains("refit_unconsumable_actuals_total{reason=\"already_consumed\"} 1"),
        "{metrics}"
    );
    env.outbox_drained(WAIT).await;
    let counts = verify(&env, &brokers(), 50, "reinserted_consumed_id").await;
    assert_eq!((counts.trained, counts.still_pending), (100, 0));
    running.stop().await;
}

/// An actual deleted upstream while it waits in the queue is never trained on, and the queue
/// forgets it: the user's retrain takes the actuals that remain, and nothing of the deleted one
/// stays pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actual_deleted_upstream_while_pending_is_forgotten() {
    let env = TestEnv::new().await;
    let running = env.start(&[]).await;
    let user = "deleted-upstream";
    let first = env.insert_actuals(user, 30).await;
    sqlx::query("DELETE FROM actual_rentals WHERE id = ANY($1)")
        .bind(&first[..5])
        .execute(&env.pool)
        .await
        .unwrap();
    let later = env.insert_actuals(user, 25).await;
    eventually(WAIT, "version 1 on the 50 actuals left", || async {
        env.versions(user, "ready").await == [1]
    })
    .await;
    let expected: Vec<i64> = first[5..].iter().chain(&later).copied().collect();
    assert_eq!(env.consumed_ids(user).await, expected);
    assert_eq!(
        env.pending(user).await,
        0,
        "the deleted actuals left the queue"
    );
    running.stop().await;
}

/// An actual deleted upstream while pending and inserted again with the same id for another
/// user's request belongs to that user: the other user trains on it, its first owner does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_actuals_id_reused_for_another_user_trains_that_user() {
    let env = TestEnv::new().await;
    let running = env.start(&[]).await;
    let (owner, new_owner) = ("first-owner", "new-owner");
    let owned = env.insert_actuals(owner, 10).await;
    let moved = owned[3];
    sqlx::query(
        "WITH gone AS (DELETE FROM actual_rentals WHERE id = $1 RETURNING id),
              request AS (INSERT INTO prediction_requests (request_id, user_id, features)
                          VALUES (gen_random_uuid(), $2, '{\"hour\": 3}') RETURNING request_id)
         INSERT INTO actual_rentals (id, request_id, actual_value)
         SELECT gone.id, request_id, 7.0 FROM gone, request",
    )
    .bind(moved)
    .bind(new_owner)
    .execute(&env.pool)
    .await
    .unwrap();
    ingest_all(&env.pool).await;
    let others = env.insert_actuals(new_owner, 49).await;
    let more = env.insert_actuals(owner, 41).await;
    eventually(WAIT, "version 1 of both users", || async {
        env.versions(new_owner, "ready").await == [1] && env.versions(owner, "ready").await == [1]
    })
    .await;
    let mut expected: Vec<i64> = others.iter().copied().chain([moved]).collect();
    expected.sort_unstable();
    assert_eq!(env.consumed_ids(new_owner).await, expected);
    let kept: Vec<i64> = owned
        .iter()
        .chain(&more)
        .copied()
        .filter(|&id| id != moved)
        .collect();
    assert_eq!(env.consumed_ids(owner).await, kept);
    assert_eq!(
        (env.pending(owner).await, env.pending(new_owner).await),
        (0, 0)
    );
    running.stop().await;
}

/// Defect 2: an error at read or commit (here a commit PostgreSQL refuses every time) was retried
/// at every poll, without back-off. It backs the user off exponentially, like a failed training,
/// and other users keep training.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_error_backs_the_user_off_instead_of_retrying_every_poll() {
    let env = TestEnv::new().await;
    env.service(&[]).await; // the topic
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_doomed() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.user_id = 'doomed' THEN RAISE EXCEPTION 'injected commit failure'; END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_doomed BEFORE INSERT ON refit_model_versions
             FOR EACH ROW EXECUTE FUNCTION refuse_doomed();",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let refit = spawn_refit(&env.vars(&[]));
    refit.wait_for_line("refit starting", WAIT).await;
    env.insert_actuals("doomed", 50).await;
    refit.wait_for_line("injected commit failure", WAIT).await;
    let first = Instant::now();
    env.insert_actuals("healthy", 50).await;
    eventually(WAIT, "the other user trains", || async {
        env.versions("healthy", "ready").await == [1]
    })
    .await;
    // Observe 6 s: back-offs of 1, 2 and 4 s allow at most 4 attempts; one per poll (100 ms)
    // would be about 60.
    let window = Duration::from_secs(6);
    tokio::time::sleep(window.saturating_sub(first.elapsed())).await;
    let attempts = refit.count("injected commit failure");
    println!("{attempts} attempts in {window:?}");
    assert!(
        attempts <= 5,
        "{attempts} attempts in {window:?}: no back-off"
    );
    let (failures, backing_off): (i32, bool) = sqlx::query_as(
        "SELECT failures, retry_after > now() - interval '1 second' FROM refit_models WHERE user_id = 'doomed'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(failures >= 2 && backing_off, "{failures} {backing_off}");
    assert_eq!(env.pending("doomed").await, 50, "nothing lost");
}

/// Trains `versions` versions of `user` with a running service (batches of 50).
async fn train_versions(env: &TestEnv, user: &str, versions: i32) {
    for v in 1..=versions {
        env.insert_actuals(user, 50).await;
        eventually(WAIT, "the next version", || async {
            env.versions(user, "ready").await.len() == v as usize
        })
        .await;
    }
    env.outbox_drained(WAIT).await;
}

/// Defect 5: `GET /models` took any `limit` (a few `limit=100000000` reads could hold every
/// connection) and shared the retrains' pool. The limit is capped (400 beyond), listings page
/// with `offset`, and the HTTP API has its own small pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_listings_are_capped_paged_and_on_their_own_pool() {
    let env = TestEnv::new().await;
    let running = env.start(&[("REFIT_HTTP_DB_POOL_SIZE", "1")]).await;
    let base = format!("http://{}", running.service.http_addr.unwrap());
    train_versions(&env, "paged", 3).await;
    let client = reqwest::Client::new();

    let refused = client
        .get(format!("{base}/models?status=failed&limit=100000000"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("1000"), "{body}");

    let page = |query: &'static str| {
        let url = format!("{base}/models?user=paged&{query}");
        let client = client.clone();
        async move {
            let response = client.get(url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            let versions: Vec<serde_json::Value> = response.json().await.unwrap();
            versions
                .iter()
                .map(|v| v["version"].as_i64().unwrap())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(page("limit=1000").await, [3, 2, 1]);
    assert_eq!(page("limit=2").await, [3, 2]);
    assert_eq!(page("limit=2&offset=2").await, [1]);
    assert_eq!(page("offset=3").await, Vec::<i64>::new());
    let negative = client
        .get(format!("{base}/models?offset=-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(negative.status(), 400);

    // Twenty concurrent listings run on the HTTP pool's one connection, not the retrains'.
    let reads: Vec<_> = (0..20).map(|_| page("limit=1000")).collect();
    futures::future::join_all(reads).await;
    let http_sessions = env
        .count("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'refit-http' AND datname = current_database()")
        .await;
    assert_eq!(http_sessions, 1, "the HTTP API's own pool of 1");
    running.stop().await;
}

/// Writes `head`, then `body` (in the background: the server may answer without reading it), to
/// `addr`, and returns the first line of the answer (or panics after 10 s).
async fn answer_to(addr: std::net::SocketAddr, head: String, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(head.as_bytes()).await.unwrap();
    let body = body.to_vec();
    let sending = tokio::spawn(async move {
        let _ = writer.write_all(&body).await;
        writer
    });
    // The status line and, when the server sends one, the JSON error after the headers.
    let mut answer = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut buf = vec![0u8; 4096];
        let read = tokio::time::timeout_at(deadline, reader.read(&mut buf)).await;
        let n = match read {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => 0,
            Err(_) if answer.is_empty() => {
                panic!("no answer within 10 s (the body is being read?) to:\n{head}")
            }
            Err(_) => 0,
        };
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        let complete = text
            .split_once("\r\n\r\n")
            .is_some_and(|(_, rest)| rest.trim_end().ends_with('}'));
        if n == 0 || complete {
            break;
        }
    }
    sending.abort();
    String::from_utf8_lossy(&answer).into_owned()
}

/// Defect 1: `POST /models/{user}/import` must refuse a request without the token before reading
/// its body, and cap the body (REFIT_IMPORT_MAX_BYTES) with a 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_is_refused_before_its_body_is_read_and_its_size_is_capped() {
    let env = TestEnv::new().await;
    let running = env
        .start(&[
            ("REFIT_ADMIN_TOKEN", "t0ken"),
            ("REFIT_IMPORT_MAX_BYTES", "1048576"),
        ])
        .await;
    let addr = running.service.http_addr.unwrap();
    // 400 MB announced, 64 KiB sent: an answer can only come before the body is read.
    let head = |auth: &str| {
        format!(
            "POST /models/u/import HTTP/1.1\r\nHost: refit\r\nContent-Length: 400000000\r\n\
             Content-Type: application/octet-stream\r\n{auth}\r\n"
        )
    };
    let chunk = vec![0u8; 64 << 10];
    for auth in ["", "Authorization: Bearer wrong\r\n"] {
        let status = answer_to(addr, head(auth), &chunk).await;
        assert!(status.starts_with("HTTP/1.1 401"), "{auth:?}: {status}");
    }
    let status = answer_to(addr, head("Authorization: Bearer t0ken\r\n"), &chunk).await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");

    // A body over the cap, its length declared or not (chunked), is 413 with the JSON error.
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/models/u/import");
    let big = vec![7u8; 2 << 20];
    // The server answers as soon as the declared length is over the cap and may close before the
    // client has written the body: read the answer on a raw connection, not through a client that
    // would report the closed socket instead.
    let head = "POST /models/u/import HTTP/1.1\r\nHost: refit\r\nContent-Length: 2097152\r\n\
                Authorization: Bearer t0ken\r\n\r\n";
    let declared = answer_to(addr, head.to_owned(), &big).await;
    assert!(declared.starts_with("HTTP/1.1 413"), "{declared}");
    assert!(declared.contains("REFIT_IMPORT_MAX_BYTES"), "{declared}");
    // Chunked, no declared length: refused once more than the cap has arrived.
    let mut chunked = Vec::new();
    for chunk in big.chunks(64 << 10) {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    let head = "POST /models/u/import HTTP/1.1\r\nHost: refit\r\nTransfer-Encoding: chunked\r\n\
                Authorization: Bearer t0ken\r\n\r\n";
    let status = answer_to(addr, head.to_owned(), &chunked).await;
    assert!(status.starts_with("HTTP/1.1 413"), "chunked: {status}");
    // Under the cap, a body that is no model is the usual 400.
    let small = client
        .post(&url)
        .bearer_auth("t0ken")
        .body("not a model")
        .send()
        .await
        .unwrap();
    assert_eq!(small.status(), 400);
    running.stop().await;
}

/// Defect 8: rollback without a target chose it (the version before the active one) before
/// taking the user's lock; a change of the active version meanwhile made it a conflict or a step
/// forward. It is chosen under the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_without_a_target_chooses_it_under_the_users_lock() {
    let env = TestEnv::new().await;
    let running = env.start(&[]).await;
    train_versions(&env, "rolled", 3).await;
    running.stop().await;

    // Another writer holds the user's lock and moves the active version to 2 meanwhile.
    let mut other = env.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM refit_models WHERE user_id = 'rolled' FOR UPDATE")
        .execute(&mut *other)
        .await
        .unwrap();
    sqlx::query("UPDATE refit_models SET active_version = 2 WHERE user_id = 'rolled'")
        .execute(&mut *other)
        .await
        .unwrap();
    let pool = env.pool.clone();
    let rollback = tokio::spawn(async move {
        refit::registry::rollback(
            &pool,
            "rolled",
            None,
            refit::registry::audit::Interface::Cli,
        )
        .await
    });
    eventually(WAIT, "the rollback waits for the user's lock", || async {
        env.count("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()")
            .await
            == 1
    })
    .await;
    other.commit().await.unwrap();
    let activation = rollback.await.unwrap().expect("rolled back");
    assert_eq!(
        (activation.previous_version, activation.active_version),
        (Some(2), 1),
        "one step back from the version active under the lock"
    );
    assert_eq!(env.active_version("rolled").await, Some(1));
}

/// Defect 8: a model imported as JSON was stored as given and exported as UBJSON
/// (`application/ubjson`, `m.ubj`) although it was JSON. It is stored, and exported, as UBJSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_import_is_exported_as_ubjson() {
    let env = TestEnv::new().await;
    let running = env.start(&[("REFIT_ADMIN_TOKEN", "t0ken")]).await;
    let base = format!("http://{}", running.service.http_addr.unwrap());
    train_versions(&env, "donor", 1).await;
    let json_model = donor_model_json_file(&env).await;
    assert!(serde_json::from_slice::<serde_json::Value>(&json_model).is_ok());

    let client = reqwest::Client::new();
    let imported = client
        .post(format!("{base}/models/importer/import"))
        .bearer_auth("t0ken")
        .body(json_model)
        .send()
        .await
        .unwrap();
    assert_eq!(imported.status(), 200);
    let exported = client
        .get(format!("{base}/models/importer/versions/1/artifact"))
        .send()
        .await
        .unwrap();
    assert_eq!(exported.headers()["content-type"], "application/ubjson");
    let bytes = exported.bytes().await.unwrap();
    assert!(
        serde_json::from_slice::<serde_json::Value>(&bytes).is_err(),
        "exported as UBJSON, not JSON: {:?}",
        String::from_utf8_lossy(&bytes[..bytes.len().min(60)])
    );
    let info = refit::model::trainer::inspect(&bytes).expect("XGBoost loads the export");
    assert_eq!(info.features.len(), 4);
    running.stop().await;
}

/// Defect 8: the serving reference's stale-refill guard re-reads the active version after filling
/// the cache; when that re-read failed, the entry it could not confirm stayed cached (until its
/// TTL). It is evicted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_cache_fill_is_evicted() {
    let env = TestEnv::new().await;
    let running = env.start(&[]).await;
    train_versions(&env, "filled", 1).await;
    running.stop().await;
    // The fill's read of refit_models works; the confirming re-read (the next one) fails.
    sqlx::raw_sql(
        "ALTER TABLE refit_models RENAME TO refit_models_table;
         CREATE SEQUENCE reads;
         CREATE FUNCTION second_read_fails() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
         BEGIN
             IF nextval('reads') > 1 THEN RAISE EXCEPTION 'injected read failure'; END IF;
             RETURN true;
         END $$;
         CREATE VIEW refit_models AS SELECT * FROM refit_models_table WHERE second_read_fails();",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let cache =
        refit::outbox::cache::Cache::new(&refit::config::Secret::new(redis_url()), &env.key_prefix)
            .unwrap();
    let result = refit::cli::serving::predict(
        &env.pool,
        &cache,
        Duration::from_secs(3600),
        "filled",
        None,
        r#"{"hour": 8}"#,
    )
    .await;
    let error = format!("{:#}", result.expect_err("the re-read fails"));
    assert!(error.contains("injected read failure"), "{error}");
    assert!(
        !env.cached("filled").await,
        "the unconfirmed fill is evicted"
    );
}

/// Defect 4 (and item 8's full scan per insert): a user id over 1,000 bytes was queued like any
/// other (each insert then woke a full scan: the notification cannot carry it), trained and
/// announced with the id three times in the message; an incompressible one over 2,704 bytes made
/// the upstream's own insert fail in refit's trigger (the pending queue's index). Such actuals
/// are set aside by the ingest (`user_id_too_long`) and never trained; 1,000 bytes still train.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_user_id_is_set_aside_and_kafka_stays_healthy() {
    let env = TestEnv::new().await;
    let running = env.start(&[]).await;
    let longest = "l".repeat(1000);
    let long = "u".repeat(1001);
    // Incompressible: PostgreSQL cannot shrink it under an index's size limit.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let noisy: String = (0..20_000)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            char::from(b'0' + (seed % 75) as u8)
        })
        .collect();
    let mut refused = Vec::new();
    for user in [&longest, &long, &noisy, &"neighbour".to_owned()] {
        for i in 0..50 {
            if let Err(e) = try_insert_actual(&env, user, i).await {
                refused.push(format!("{} bytes: {e}", user.len()));
                break;
            }
        }
    }
    eventually(
        WAIT,
        "the neighbour's and the 1,000-byte id's versions",
        || async {
            env.versions("neighbour", "ready").await == [1]
                && env.versions(&longest, "ready").await == [1]
        },
    )
    .await;
    let undone = undone_outbox(&env, Duration::from_secs(10)).await;
    let aside: Vec<(i32, String, i64)> = sqlx::query_as(
        "SELECT octet_length(user_id), reason, count(*) FROM refit_unconsumable_actuals
          GROUP BY 1, 2 ORDER BY 1",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let trained: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT octet_length(user_id), count(*) FROM refit_model_versions
          WHERE octet_length(user_id) > 1000 GROUP BY 1",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    println!("refused {refused:?}; set aside {aside:?}; versions over 1,000 bytes {trained:?}; undone {undone:?}");
    assert_eq!(
        refused,
        Vec::<String>::new(),
        "the upstream's inserts succeed"
    );
    assert_eq!(
        aside,
        [
            (1001, "user_id_too_long".to_owned(), 50),
            (20_000, "user_id_too_long".to_owned(), 50)
        ]
    );
    assert_eq!(trained, []);
    assert_eq!(undone, []);
    assert_eq!(env.count("SELECT count(*) FROM refit_pending").await, 0);
    assert!(running.service.kafka_healthy());
    running.stop().await;
}

/// Inserts the `i`th actual of `user` (as `TestEnv::insert_actuals` does) in one transaction,
/// returning the database's error instead of panicking.
async fn try_insert_actual(env: &TestEnv, user: &str, i: usize) -> Result<(), sqlx::Error> {
    let mut tx = env.pool.begin().await?;
    let features = rental_features(i).to_string();
    insert_request_and_actual(&mut tx, user, &features, rental_actual(i)).await?;
    tx.commit().await
}

/// The undone outbox entries (user id length, kind, attempts, error's start) once the outbox is
/// drained or `timeout` has passed.
async fn undone_outbox(env: &TestEnv, timeout: Duration) -> Vec<(i32, String, i32, String)> {
    let deadline = Instant::now() + timeout;
    loop {
        let undone: Vec<(i32, String, i32, String)> = sqlx::query_as(
            "SELECT octet_length(user_id), kind, attempts, left(coalesce(last_error, ''), 120)
               FROM refit_outbox WHERE done_at IS NULL ORDER BY id",
        )
        .fetch_all(&env.pool)
        .await
        .unwrap();
        if undone.is_empty() || Instant::now() > deadline {
            return undone;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Defect 4: an outbox event the broker can never accept (here over Kafka's message size) was
/// retried forever, held the user's later events back for good and marked Kafka unhealthy. It is
/// dead-lettered (kept, with its error, counted), and the user's later events follow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_kafka_can_never_accept_is_dead_lettered_and_the_next_ones_follow() {
    let env = TestEnv::new().await;
    let running = env.start(&[]).await;
    train_versions(&env, "loud", 1).await;
    // Two more events of the user, as a registry write would record them: the first too large.
    let fine = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO refit_outbox (event_id, user_id, kind, payload, created_at)
         SELECT e.id, 'loud', 'announce',
                o.payload || jsonb_build_object('event_id', e.id::text) || e.extra,
                now() - interval '1 minute'
           FROM refit_outbox o,
                (VALUES (gen_random_uuid(), jsonb_build_object('status', 'failed',
                                                               'reason', repeat('x', 2000000)), 1),
                        ($1, '{}'::jsonb, 2)) AS e(id, extra, n)
          WHERE o.user_id = 'loud' AND o.kind = 'announce'
          ORDER BY e.n",
    )
    .bind(fine)
    .execute(&env.pool)
    .await
    .unwrap();
    let undone = undone_outbox(&env, Duration::from_secs(15)).await;
    // (Before the fix there was no dead_letter column: the query fails, and `dead` is empty.)
    // In id order: whether it is the "fine" one, its dead letter, and its rank in done order.
    let dead: Vec<(bool, Option<String>, i64)> = sqlx::query_as(
        "SELECT event_id = $1, dead_letter,
                rank() OVER (ORDER BY done_at)
           FROM refit_outbox WHERE user_id = 'loud' AND kind = 'announce' ORDER BY id",
    )
    .bind(fine)
    .fetch_all(&env.pool)
    .await
    .unwrap_or_default();
    println!("undone {undone:?}; entries {dead:?}");
    assert_eq!(undone, [], "every entry resolved");
    assert_eq!(dead.len(), 3, "{dead:?}");
    assert!(dead[0].1.is_none() && dead[2].1.is_none(), "{dead:?}");
    assert!(
        dead[2].0 && dead[1].2 < dead[2].2,
        "the later event after the dead letter: {dead:?}"
    );
    let reason = dead[1].1.as_deref().unwrap_or_default();
    assert!(reason.contains("too large"), "{reason}");
    let reader = env.reader();
    let fine: Vec<_> = drain_events(&reader, Duration::from_secs(5))
        .into_iter()
        .filter(|e| e.event.event_id == fine)
        .collect();
    assert_eq!(
        fine.len(),
        1,
        "the event after the dead letter was delivered"
    );
    assert!(running.service.kafka_healthy());
    let metrics = running.service.metrics_text();
    assert!(
        metrics.contains("refit_outbox_dead_letters_total{kind=\"announce\"} 1"),
        "{metrics}"
    );
    running.stop().await;
}

/// A valid model as XGBoost's JSON: user `donor`'s version 1, converted by Python's xgboost.
async fn donor_model_json(env: &TestEnv) -> serde_json::Value {
    serde_json::from_slice(&donor_model_json_file(env).await).unwrap()
}

/// [`donor_model_json`] as the file Python wrote.
async fn donor_model_json_file(env: &TestEnv) -> Vec<u8> {
    let artifact: Vec<u8> = sqlx::query_scalar(
        "SELECT artifact FROM refit_model_versions WHERE user_id = 'donor' AND version = 1",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (ubj, json_path) = (dir.path().join("m.ubj"), dir.path().join("m.json"));
    std::fs::write(&ubj, &artifact).unwrap();
    let converted = std::process::Command::new(python())
        .args([
            "-c",
            "import sys, xgboost as xgb; xgb.Booster(model_file=sys.argv[1]).save_model(sys.argv[2])",
        ])
        .arg(&ubj)
        .arg(&json_path)
        .status()
        .unwrap();
    assert!(converted.success());
    std::fs::read(&json_path).unwrap()
}

/// Hostile edits of a valid model: (name, JSON pointer, new value).
fn hostile_edits() -> Vec<(&'static str, &'static str, serde_json::Value)> {
    use serde_json::json;
    let tree = "/learner/gradient_booster/model/trees/0";
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    vec![
        (
            "child out of range",
            leak(format!("{tree}/left_children/0")),
            json!(99999),
        ),
        (
            "cyclic child (root is its own child)",
            leak(format!("{tree}/left_children/0")),
            json!(0),
        ),
        (
            "child pointing back",
            leak(format!("{tree}/right_children/0")),
            json!(-7),
        ),
        (
            "split index >= number of features",
            leak(format!("{tree}/split_indices/0")),
            json!(4000),
        ),
        (
            "absurd node count",
            leak(format!("{tree}/tree_param/num_nodes")),
            json!("2000000000"),
        ),
        (
            "absurd feature count",
            "/learner/learner_model_param/num_feature",
            json!("4000000000"),
        ),
        (
            "absurd tree count",
            "/learner/gradient_booster/model/gbtree_model_param/num_trees",
            json!("1000000000"),
        ),
        (
            "gblinear",
            "/learner/gradient_booster/name",
            json!("gblinear"),
        ),
    ]
}

/// Defect 7: a crafted model file (children out of range or cyclic, a split on a feature the
/// model does not have, absurd sizes, gblinear) was handed to XGBoost as it came. Each is refused
/// with a clear error before XGBoost sees it, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_model_imports_are_refused_before_xgboost_sees_them() {
    let env = TestEnv::new().await;
    let running = env.start(&[]).await;
    train_versions(&env, "donor", 1).await;
    running.stop().await;
    let model = donor_model_json(&env).await;
    let mut accepted = Vec::new();
    for (name, pointer, value) in hostile_edits() {
        let mut hostile = model.clone();
        *hostile
            .pointer_mut(pointer)
            .unwrap_or_else(|| panic!("{pointer}")) = value;
        let user = format!("hostile-{}", name.replace(' ', "-"));
        let result = refit::registry::import(
            &env.pool,
            &user,
            serde_json::to_vec(&hostile).unwrap(),
            None,
            &Default::default(),
            refit::registry::audit::Interface::Cli,
        )
        .await;
        println!("{name}: {result:?}");
        match result {
            Err(refit::registry::RegistryError::InvalidModel(reason)) => {
                assert!(!reason.is_empty(), "{name}");
            }
            other => accepted.push(format!("{name}: {other:?}")),
        }
    }
    assert!(accepted.is_empty(), "accepted: {accepted:#?}");
    assert_eq!(
        env.count("SELECT count(*) FROM refit_model_versions WHERE user_id LIKE 'hostile-%'")
            .await,
        0
    );
}

/// The query of the KEDA trigger in a manifest file: the first `query:` line's quoted text, with
/// the Helm chart's `{threshold}` placeholder given the default threshold (50).
fn keda_query(path: &str) -> String {
    let text = std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("query:"))
        .unwrap_or_else(|| panic!("no query in {path}"));
    let quoted = line.split_once(':').unwrap().1.trim();
    let query: String = serde_json::from_str(quoted).unwrap_or_else(|e| panic!("{quoted}: {e}"));
    query.replace("{threshold}", "50")
}

/// Defect 9: KEDA scaled on every pending row, so 10,000 users with 30 pending each (none due at
/// the threshold of 50) asked for 300,000 / 500 = 600 pods: the maximum. The exact queries of the
/// kustomize component and of the Helm chart count due users instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keda_scales_on_due_users_not_on_pending_rows() {
    let env = TestEnv::new().await;
    // 10,000 users with 30 pending actuals each, and 3 users with 50, 60 and 120.
    sqlx::raw_sql(
        "INSERT INTO prediction_requests (request_id, user_id, features)
         SELECT gen_random_uuid(), 'quiet-' || (g % 10000), '{}'::jsonb FROM generate_series(1, 300000) g
         UNION ALL
         SELECT gen_random_uuid(), 'due-' || d, '{}'::jsonb
           FROM (VALUES (1, 50), (2, 60), (3, 120)) AS t(d, n), generate_series(1, n);
         INSERT INTO actual_rentals (request_id, actual_value)
         SELECT request_id, 1.0 FROM prediction_requests;",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    ingest_all(&env.pool).await;
    assert_eq!(
        env.count("SELECT count(*) FROM refit_pending").await,
        300_230
    );
    for path in [
        "deploy/components/keda/scaledobject.yaml",
        "helm/refit/values.yaml",
    ] {
        let query = keda_query(path);
        let value: i64 = sqlx::query_scalar(&query)
            .fetch_one(&env.pool)
            .await
            .unwrap_or_else(|e| panic!("{path}: {query}: {e}"));
        println!("{path}: {value} ({query})");
        assert_eq!(value, 3, "{path}: three users are due");
    }
}

/// Lines a refit process offers to Loki: its JSON log lines but the shipper's own and those of
/// its HTTP client (which it keeps off Loki), as its stdout shows them.
fn lines_for_loki(refit: &Process) -> u64 {
    const NOT_SHIPPED: [&str; 3] = ["refit::telemetry::loki", "reqwest", "hyper_util::client"];
    refit.count_matching(|l| {
        l.starts_with('{')
            && !NOT_SHIPPED
                .iter()
                .any(|t| l.contains(&format!("\"target\":\"{t}")))
    }) as u64
}

/// `name value` of a Prometheus exposition (a series without labels).
async fn scrape(http: &str, name: &str) -> u64 {
    let text = reqwest::get(format!("http://{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics")) as u64
}

/// Inserts 50 actuals for each of `users` users (the same users every round; ids of 1,000 bytes,
/// the longest that trains, so each log line of their retrains is long) and waits until refit
/// has trained round `round` of every user.
async fn retrain_round(env: &TestEnv, users: i64, round: i64) {
    sqlx::query(
        "WITH r AS (INSERT INTO prediction_requests (request_id, user_id, features)
                    SELECT gen_random_uuid(), rpad('loki-', 996, '-') || lpad((g % $1)::text, 4, '0'),
                           jsonb_build_object('hour', g % 24, 'temperature', g % 31)
                      FROM generate_series(0, $1 * 50 - 1) g RETURNING request_id, features)
         INSERT INTO actual_rentals (request_id, actual_value)
         SELECT request_id, (features->>'hour')::float * 2 + 10 FROM r",
    )
    .bind(users)
    .execute(&env.pool)
    .await
    .unwrap();
    eventually(
        Duration::from_secs(300),
        "every user's batch trained",
        || async {
            env.count("SELECT count(*) FROM refit_model_versions WHERE status = 'ready'")
                .await
                == users * round
        },
    )
    .await;
}

/// Defect 3: tracing-loki kept every line in an unbounded queue while a push was in flight, and
/// its pushes had no timeout: a Loki that accepts and never answers made refit's memory grow
/// with every line logged, and nothing was counted as lost. Refit's own shipper holds at most
/// `REFIT_LOKI_QUEUE_LINES` lines and one batch, times each push out, and counts what it drops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_loki_costs_bounded_memory_and_the_lines_it_misses_are_counted() {
    const QUEUE: u64 = 1000;
    const USERS: i64 = 250;
    const WARM_ROUNDS: i64 = 2;
    const ROUNDS: i64 = 7;
    let env = TestEnv::new().await;
    env.service(&[]).await; // the topic
    let hole = Blackhole::new();
    let loki = format!("http://127.0.0.1:{}", hole.port);
    let http = format!("127.0.0.1:{}", free_port());
    let mut refit = spawn_refit(&env.vars(&[
        ("LOKI_URL", &loki),
        ("REFIT_HTTP_ADDR", &http),
        // Debug lines too: more lines per retrain.
        ("RUST_LOG", "debug"),
        ("REFIT_LOKI_QUEUE_LINES", &QUEUE.to_string()),
        ("REFIT_LOKI_TIMEOUT_SECS", "2"),
        // No model cache: memory that grows is the log queue's, not the cache filling up.
        ("REFIT_MODEL_CACHE_MB", "0"),
    ]));
    refit.wait_for_line("refit starting", WAIT).await;
    // Warm-up: pools, buffers, per-user state and allocator arenas reach their working size.
    for round in 1..=WARM_ROUNDS {
        retrain_round(&env, USERS, round).await;
    }
    let (rss_warm, lines_warm) = (refit.rss_kib(), lines_for_loki(&refit));
    let started = Instant::now();
    for round in WARM_ROUNDS + 1..=ROUNDS {
        retrain_round(&env, USERS, round).await;
    }
    let took = started.elapsed();
    let (rss_loaded, offered) = (refit.rss_kib(), lines_for_loki(&refit));
    let dropped = scrape(&http, "refit_loki_dropped_lines_total").await;
    let errors = scrape(&http, "refit_loki_send_errors_total").await;
    let grown_kib = rss_loaded.saturating_sub(rss_warm);
    println!(
        "{} retrains in {took:?}; {} lines offered to Loki during them, {offered} in all; \
         RSS {rss_warm} KiB after warm-up, {rss_loaded} KiB after (+{grown_kib} KiB); \
         dropped {dropped}, failed pushes {errors}",
        USERS * (ROUNDS - WARM_ROUNDS),
        offered - lines_warm
    );
    assert!(
        offered - lines_warm > 5 * QUEUE,
        "too few lines to tell: {}",
        offered - lines_warm
    );
    // Held in memory: at most the queue and one batch (of at most as many lines).
    assert!(
        offered.saturating_sub(dropped) <= 2 * QUEUE,
        "{offered} lines offered to a hung Loki, {dropped} counted as dropped"
    );
    eventually(WAIT, "no more lines dropped than logged", || async {
        lines_for_loki(&refit) >= dropped
    })
    .await;
    assert!(
        errors >= 1,
        "pushes to a hung Loki time out and are counted"
    );
    // The queue and a batch of these lines take about 4 MiB; tracing-loki grew by 26 MiB here.
    assert!(
        grown_kib < 8 * 1024,
        "RSS grew by {grown_kib} KiB while {} lines were logged",
        offered - lines_warm
    );
    settled(&env, 50, WAIT).await;
    let counts = verify(&env, &brokers(), 50, "loki_hung_bounded").await;
    assert_eq!(counts.trained, USERS * ROUNDS * 50);
    refit.signal("TERM");
    let stopping = Instant::now();
    assert!(refit.wait_exit(WAIT).await.success());
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "shutdown waits at most the push timeout for Loki: {:?}",
        stopping.elapsed()
    );
}
