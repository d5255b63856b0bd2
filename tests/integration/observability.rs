//! What operators see: Loki lines per step, Prometheus metrics, probes. The dashboard's queries and
//! the alert rules are evaluated by a real Prometheus in prometheus.rs.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::routing::post;
use prost::Message;
use serde_json::Value;

use crate::processes::spawn_refit;
use crate::support::*;

/// A deadline, not a sleep: generous so a loaded machine does not fail the test.
const WAIT: Duration = Duration::from_secs(60);

/// One log line received by the fake Loki, with its stream's labels.
#[derive(Debug, Clone)]
struct LokiLine {
    labels: String,
    line: Value,
}

/// A loopback Loki: decodes the real push protocol (snappy-compressed protobuf PushRequest).
async fn loki_receiver() -> (String, Arc<Mutex<Vec<LokiLine>>>) {
    let lines: Arc<Mutex<Vec<LokiLine>>> = Arc::default();
    let sink = lines.clone();
    let app = axum::Router::new().route(
        "/loki/api/v1/push",
        post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                let raw = snap::raw::Decoder::new()
                    .decompress_vec(&body)
                    .expect("snappy body");
                let push = loki_api::logproto::PushRequest::decode(raw.as_slice())
                    .expect("protobuf PushRequest");
                let mut sink = sink.lock().unwrap();
                for stream in push.streams {
                    for entry in stream.entries {
                        let line = serde_json::from_str(&entry.line).expect("JSON log line");
                        sink.push(LokiLine {
                            labels: stream.labels.clone(),
                            line,
                        });
                    }
                }
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loki_receives_one_line_per_step_tied_by_retrain_id() {
    let env = TestEnv::new().await;
    env.service(&[]).await;
    let (url, lines) = loki_receiver().await;
    let mut refit = spawn_refit(&env, &[("LOKI_URL", url.as_str())]);
    refit.wait_for_line("refit starting", WAIT).await;
    env.insert_upstream_n("kim", 50).await; // refit's own ingest queues them

    let step_lines = |lines: &[LokiLine]| -> Vec<LokiLine> {
        lines
            .iter()
            .filter(|l| {
                l.line.get("user_id").and_then(Value::as_str) == Some("kim")
                    && l.line.get("step").is_some()
            })
            .cloned()
            .collect()
    };
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let got = step_lines(&lines.lock().unwrap());
        let steps: BTreeSet<_> = got
            .iter()
            .filter_map(|l| l.line["step"].as_str().map(str::to_owned))
            .collect();
        if steps.len() == 6 {
            break;
        }
        let total = lines.lock().unwrap().len();
        assert!(
            std::time::Instant::now() < deadline,
            "Loki got steps {steps:?} of kim ({total} lines in all); refit logged:\n{}",
            refit.lines().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = step_lines(&lines.lock().unwrap());
    let retrain_id = got[0].line["retrain_id"].as_str().unwrap().to_owned();
    let step = |name: &str| {
        got.iter()
            .find(|l| l.line["step"] == name)
            .unwrap_or_else(|| panic!("no {name} line"))
            .line
            .clone()
    };
    for (name, fields) in [
        ("detect", &["pending"][..]),
        ("read", &["rows", "duration_ms"]),
        ("train", &["samples_used", "processing_time_ms"]),
        ("commit", &["model_version", "duration_ms"]),
        ("invalidate", &["key", "duration_ms"]),
        ("announce", &["topic", "bytes", "duration_ms"]),
    ] {
        let line = step(name);
        assert_eq!(
            line["retrain_id"].as_str(),
            Some(retrain_id.as_str()),
            "{name}: {line}"
        );
        for field in fields {
            assert!(
                line.get(*field).is_some(),
                "{name} line lacks {field}: {line}"
            );
        }
    }
    // The scheduler's count may run high (a notification can arrive after the count it read
    // already included those actuals: see scheduler/pending.rs); the batch read is exact.
    let pending = step("detect")["pending"].as_i64().unwrap();
    assert!(pending >= 50, "detect saw {pending} pending");
    assert_eq!(step("read")["rows"], 50);
    assert_eq!(step("train")["samples_used"], 50);
    assert_eq!(step("commit")["model_version"], 1);
    assert_eq!(
        step("invalidate")["key"].as_str(),
        Some(format!("{}kim", env.key_prefix).as_str())
    );
    assert_eq!(step("announce")["topic"].as_str(), Some(env.topic.as_str()));
    for line in &got {
        assert!(
            line.labels.contains("service=\"refit\"")
                && line.labels.contains("environment=\"test\"")
                && line.labels.contains("level="),
            "{}",
            line.labels
        );
        assert!(
            !line.labels.contains("kim"),
            "user ids must not be labels: {}",
            line.labels
        );
    }
    refit.signal("TERM");
    assert_eq!(refit.wait_exit(WAIT).await.code(), Some(0));
    // Shutdown flushes what was queued: the very last line reached Loki.
    let last = lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.line["message"] == "refit stopped");
    assert!(last, "the final log line was not flushed to Loki");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_loki_down_retrains_still_complete_and_are_announced() {
    let env = TestEnv::new().await;
    env.service(&[]).await;
    // A port that was just free: nothing listens there.
    let url = format!("http://127.0.0.1:{}", free_port());
    let mut refit = spawn_refit(&env, &[("LOKI_URL", url.as_str())]);
    refit.wait_for_line("refit starting", WAIT).await;
    env.insert_actuals("liam", 100).await;
    let events = read_events(&env.reader(), 2, WAIT);
    assert_eq!(
        events
            .iter()
            .map(|e| e.event.model_version)
            .collect::<Vec<_>>(),
        [Some(1), Some(2)]
    );
    refit.signal("TERM");
    assert_eq!(
        refit.wait_exit(WAIT).await.code(),
        Some(0),
        "shutdown does not hang on an unreachable Loki"
    );
}

/// `name{labels} value` lines of a Prometheus text exposition.
fn parse_metrics(text: &str) -> Vec<(String, String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {l:?}"));
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n.to_owned(), rest.trim_end_matches('}').to_owned()),
                None => (series.to_owned(), String::new()),
            };
            (name, labels, value)
        })
        .collect()
}

fn metric(all: &[(String, String, f64)], name: &str, labels: &str) -> f64 {
    all.iter()
        .find(|(n, l, _)| n == name && l == labels)
        .map_or(f64::NAN, |(_, _, v)| *v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_as_retrains_happen() {
    let env = TestEnv::new().await;
    let running = env.start(&[]).await;
    let base = format!("http://{}", running.service.http_addr.unwrap());
    let scrape = || async {
        parse_metrics(
            &reqwest::get(format!("{base}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        )
    };

    let before = scrape().await;
    assert_eq!(
        metric(&before, "refit_retrains_total", "status=\"success\""),
        0.0
    );
    assert_eq!(
        metric(
            &before,
            "refit_build_info",
            &format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))
        ),
        1.0
    );

    env.insert_actuals("mia", 50).await;
    insert_actual(&env.pool, "mia", &serde_json::json!({"hour": "late"}), 1.0).await;
    env.insert_actuals("mia", 49).await;
    eventually(WAIT, "two successful retrains in /metrics", || async {
        metric(
            &scrape().await,
            "refit_retrains_total",
            "status=\"success\"",
        ) == 2.0
    })
    .await;
    eventually(WAIT, "freshness observed for both events", || async {
        metric(&scrape().await, "refit_freshness_seconds_count", "") == 2.0
    })
    .await;
    let after = scrape().await;
    for step in ["read", "train", "commit", "invalidate", "announce"] {
        assert!(
            metric(
                &after,
                "refit_step_duration_seconds_count",
                &format!("step=\"{step}\"")
            ) >= 2.0,
            "{step}"
        );
    }
    assert!(
        metric(
            &after,
            "refit_step_duration_seconds_count",
            "step=\"detect\""
        ) >= 1.0
    );
    assert_eq!(
        metric(
            &after,
            "refit_rows_set_aside_total",
            "reason=\"non_numeric_feature\""
        ),
        1.0
    );

    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_while_the_database_is_unreachable_and_recovers() {
    let env = TestEnv::new().await;
    let running = env.start(&[]).await;
    let base = format!("http://{}", running.service.http_addr.unwrap());
    let status = |path: &'static str| {
        let url = format!("{base}{path}");
        async move { reqwest::get(url).await.unwrap().status().as_u16() }
    };
    eventually(WAIT, "ready", || async { status("/readyz").await == 200 }).await;
    assert_eq!(status("/healthz").await, 200);

    let name = env.database_url.rsplit('/').next().unwrap().to_owned();
    let admin = sqlx::PgPool::connect(&admin_url()).await.unwrap();
    sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&name)
        .execute(&admin)
        .await
        .unwrap();
    eventually(
        WAIT,
        "not ready while the database refuses connections",
        || async { status("/readyz").await == 503 },
    )
    .await;
    assert_eq!(
        status("/healthz").await,
        200,
        "liveness does not depend on the database"
    );

    sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .execute(&admin)
        .await
        .unwrap();
    eventually(WAIT, "ready again", || async {
        status("/readyz").await == 200
    })
    .await;
    // And the service works again: a retrain goes through.
    env.pool.close().await;
    let pool = sqlx::PgPool::connect(&env.database_url).await.unwrap();
    for i in 0..50 {
        insert_actual(&pool, "noah", &rental_features(i), rental_actual(i)).await;
    }
    eventually(WAIT, "retrain after recovery", || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM refit_model_versions WHERE user_id = 'noah'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
            == 1
    })
    .await;
    running.stop().await;
}

/// The `.route("/…"` paths of src/http.rs, in OpenAPI's `{param}` form (which axum shares).
fn served_routes() -> BTreeSet<String> {
    let source = include_str!("../../src/http.rs");
    let mut routes = BTreeSet::new();
    for chunk in source.split(".route(").skip(1) {
        let path = chunk.trim_start().trim_start_matches('"');
        if let Some(end) = path.find('"') {
            routes.insert(path[..end].to_owned());
        }
    }
    routes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_description_is_served_names_every_route_and_errors_are_json() {
    let env = TestEnv::new().await;
    let running = env.start(&[("REFIT_ADMIN_TOKEN", "t0ken")]).await;
    let base = format!("http://{}", running.service.http_addr.unwrap());
    let client = reqwest::Client::new();

    let response = reqwest::get(format!("{base}/openapi.json")).await.unwrap();
    assert_eq!(response.headers()["content-type"], "application/json");
    let served: Value = response.json().await.unwrap();
    let file: Value = serde_json::from_str(include_str!("../../docs/openapi.json")).unwrap();
    assert_eq!(served, file, "/openapi.json serves docs/openapi.json");
    let documented: BTreeSet<String> = served["paths"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        documented,
        served_routes(),
        "docs/openapi.json describes every route, no more"
    );

    // The token is checked before the body: a malformed body without it is 401, not 400/422.
    let refused = client
        .post(format!("{base}/models/x/prune"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["www-authenticate"], "Bearer");
    // axum's own refusals and unknown routes answer the JSON error shape too.
    for (request, status) in [
        (client.get(format!("{base}/models/x/versions/1.5")), 400),
        (client.get(format!("{base}/models?limit=-1")), 400),
        (client.get(format!("{base}/models?status=gone")), 400),
        (client.get(format!("{base}/models/a%00b")), 400),
        (client.get(format!("{base}/no/such/route")), 404),
        (
            client
                .post(format!("{base}/models/x/prune"))
                .bearer_auth("t0ken")
                .json(&serde_json::json!({"keep": "all"})),
            422,
        ),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{}", response.url());
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].is_string(), "{body}");
    }
    running.stop().await;
}

/// The pending gauge (`refit_pending_actuals`) counts every actual waiting, of all users, from
/// the scheduler's safety-net pass; a retrain takes its batch out of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pending_gauge_counts_every_waiting_actual() {
    let env = TestEnv::new().await;
    let running = env.start(&[("REFIT_POLL_INTERVAL_MS", "50")]).await;
    let gauge = |n: i64| {
        let line = format!("\nrefit_pending_actuals {n}\n");
        let service = &running.service;
        move || {
            let found = service.metrics_text().contains(&line);
            async move { found }
        }
    };
    env.insert_actuals("waiting", 30).await;
    env.insert_actuals("also-waiting", 12).await;
    eventually(WAIT, "the gauge at 42", gauge(42)).await;
    env.insert_actuals("waiting", 20).await;
    eventually(WAIT, "the first user's batch trained", || async {
        env.versions("waiting", "ready").await == [1]
    })
    .await;
    eventually(WAIT, "the gauge at 12", gauge(12)).await;
    running.stop().await;
}
