//! A real Prometheus (Debian's `prometheus`, installed by scripts/install-deps.sh) scrapes a
//! running refit every second and loads deploy/prometheus/refit-alerts.yaml. Every PromQL
//! expression of the Grafana dashboard is evaluated through its query API — on start-up and after
//! retrains, a set-aside row, a rejected version and an outbox retry — and must parse and return
//! data; the alert rules must evaluate without error and stay silent on the healthy service; and
//! `promtool check metrics` lints the exposition.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// A deadline, not a sleep: generous so a loaded machine does not fail the test.
const WAIT: Duration = Duration::from_secs(90);

/// What the dashboard's Grafana variables stand for here: every namespace, a rate window that
/// holds many 1-second scrapes.
const VARIABLES: &[(&str, &str)] = &[
    ("$__rate_interval", "5m"),
    ("$__interval", "15s"),
    ("$__range", "5m"),
    ("$namespace", ".*"),
];

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn tool(variable: &str, default: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| default.to_owned())
}

/// A Prometheus server of its own: temporary configuration and storage, a free port.
struct Prometheus {
    child: Child,
    base: String,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Prometheus {
    /// Scrapes `target`'s /metrics every second and evaluates refit's alert rules every second.
    fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rules = repo_file("deploy/prometheus/refit-alerts.yaml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: refit\n    static_configs:\n      - targets: ['{target}']\n",
            rules.display()
        );
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let port = free_port();
        let binary = tool("REFIT_PROMETHEUS", "prometheus");
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {binary} ({e}): scripts/install-deps.sh installs Debian's prometheus")
            });
        Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
            http: reqwest::Client::new(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .query(query)
            .send()
            .await;
        match response {
            Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
            Err(_) => (0, Value::Null),
        }
    }

    async fn wait_ready(&mut self) {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let ready = self
                .http
                .get(format!("{}/-/ready", self.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("prometheus exited ({status}):\n{}", self.log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "prometheus not ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An instant query's result, or the error Prometheus gave (a PromQL parse error, say).
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let (status, body) = self.get("/api/v1/query", &[("query", expr)]).await;
        match body["status"].as_str() {
            Some("success") => Ok(body["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default()),
            _ => Err(format!("HTTP {status}: {body}")),
        }
    }

    /// The single value of a query that yields one series (None otherwise).
    async fn value(&self, expr: &str) -> Option<f64> {
        match self.query(expr).await.ok()?.as_slice() {
            [series] => series["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }

    async fn eventually_value(&self, expr: &str, holds: impl Fn(f64) -> bool) {
        let what = format!("Prometheus: {expr}");
        eventually(WAIT, &what, || async {
            self.value(expr).await.is_some_and(&holds)
        })
        .await;
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One Prometheus query of the dashboard.
#[derive(Debug)]
struct Query {
    panel: String,
    expr: String,
}

/// Every Prometheus target of the dashboard, its Grafana variables substituted.
fn dashboard_queries() -> Vec<Query> {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file("deploy/grafana/refit-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut queries = Vec::new();
    let panels = dashboard["panels"].as_array().unwrap();
    let nested = panels
        .iter()
        .flat_map(|p| p["panels"].as_array().cloned().unwrap_or_default());
    for panel in panels.iter().cloned().chain(nested) {
        if panel["datasource"]["uid"] != "${datasource}" {
            continue; // rows, and the Loki logs panel
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            let mut expr = target["expr"].as_str().unwrap().to_owned();
            for (variable, value) in VARIABLES {
                expr = expr.replace(variable, value);
            }
            assert!(!expr.contains('$'), "unknown Grafana variable in {expr}");
            queries.push(Query {
                panel: panel["title"].as_str().unwrap().to_owned(),
                expr,
            });
        }
    }
    assert!(queries.len() >= 8, "the dashboard's queries: {queries:?}");
    queries
}

/// Evaluates every dashboard query: each must parse and return at least one series, and with
/// `finite`, at least one number (a quantile of a window without observations is NaN).
async fn check_dashboard(prometheus: &Prometheus, finite: bool) {
    for q in dashboard_queries() {
        let result = prometheus
            .query(&q.expr)
            .await
            .unwrap_or_else(|e| panic!("{}: {} does not evaluate: {e}", q.panel, q.expr));
        assert!(!result.is_empty(), "{}: no data from {}", q.panel, q.expr);
        let number = |s: &Value| {
            s["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(f64::is_finite)
        };
        assert!(
            !finite || result.iter().any(number),
            "{}: only NaN from {}: {result:?}",
            q.panel,
            q.expr
        );
    }
}

/// Every alert rule evaluated without error, and none is pending or firing.
async fn check_rules_silent(prometheus: &Prometheus) {
    eventually(WAIT, "every alert rule evaluated without error", || async {
        let (_, body) = prometheus.get("/api/v1/rules", &[]).await;
        let rules: Vec<Value> = body["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        for rule in &rules {
            assert!(
                rule["health"] != "err",
                "rule {} fails: {}",
                rule["name"],
                rule["lastError"]
            );
        }
        rules.len() >= 8 && rules.iter().all(|r| r["health"] == "ok")
    })
    .await;
    let (_, body) = prometheus.get("/api/v1/alerts", &[]).await;
    assert_eq!(
        body["data"]["alerts"],
        serde_json::json!([]),
        "alerts on a healthy service"
    );
}

/// `promtool check metrics`: the exposition follows Prometheus' conventions.
fn promtool_check_metrics(exposition: &str) {
    use std::io::Write;
    let mut child = Command::new(tool("REFIT_PROMTOOL", "promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (scripts/install-deps.sh installs Debian's prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Redis user that may do everything on this test's keys but DEL, until [`Self::allow_del`]:
/// cache invalidations fail and the outbox retries them.
struct RedisUser {
    name: String,
    url: String,
}

impl RedisUser {
    async fn without_del(env: &TestEnv) -> RedisUser {
        let name = format!("refit-{}", env.key_prefix.replace(':', "-"));
        let keys = format!("~{}*", env.key_prefix);
        acl(
            env,
            &[
                "SETUSER", &name, "reset", "on", ">pw", &keys, "+@all", "-del",
            ],
        )
        .await;
        let url = redis_url().replacen("redis://", &format!("redis://{name}:pw@"), 1);
        RedisUser { name, url }
    }

    async fn allow_del(&self, env: &TestEnv) {
        acl(env, &["SETUSER", &self.name, "+del"]).await;
    }

    async fn delete(self, env: &TestEnv) {
        acl(env, &["DELUSER", &self.name]).await;
    }
}

async fn acl(env: &TestEnv, args: &[&str]) {
    let mut redis = env.redis().await;
    let _: redis::Value = redis::cmd("ACL")
        .arg(args)
        .query_async(&mut redis)
        .await
        .unwrap();
}

async fn scrape(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_evaluates_every_dashboard_query_and_the_alert_rules() {
    let env = TestEnv::new().await;
    let redis_user = RedisUser::without_del(&env).await;
    let running = env
        .start(&[
            ("REDIS_URL", redis_user.url.as_str()),
            ("REFIT_VALIDATION", "on"),
            ("REFIT_VALIDATION_TOLERANCE", "0"),
            ("REFIT_OUTBOX_RETRY_MAX_MS", "200"),
        ])
        .await;
    let addr = running.service.http_addr.unwrap();
    let base = format!("http://{addr}");
    let mut prometheus = Prometheus::start(addr);
    prometheus.wait_ready().await;
    // Several scrapes, so that rates over the window have points to work with.
    prometheus
        .eventually_value(r#"count_over_time(up{job="refit"}[5m])"#, |n| n >= 3.0)
        .await;
    prometheus
        .eventually_value(r#"min_over_time(up{job="refit"}[5m])"#, |up| up == 1.0)
        .await;

    // On start-up: every labelled series is there (at zero but for the scans' `detect` steps),
    // and no panel is empty.
    for (expr, series) in [
        ("refit_retrains_total", 3.0),
        ("refit_step_duration_seconds_count", 6.0),
        ("refit_rows_set_aside_total", 7.0),
        ("refit_outbox_backlog", 2.0),
        ("refit_outbox_oldest_age_seconds", 2.0),
    ] {
        let count = format!("count({expr})");
        assert_eq!(prometheus.value(&count).await, Some(series), "{count}");
        let total = format!("sum({expr}{{step!=\"detect\"}})");
        assert_eq!(prometheus.value(&total).await, Some(0.0), "{total}");
    }
    check_dashboard(&prometheus, false).await;

    // A first model with a set-aside row; its cache invalidation fails (no DEL) and is retried.
    env.insert_actuals("ava", 49).await;
    insert_actual(&env.pool, "ava", &serde_json::json!({"hour": "late"}), 1.0).await;
    eventually(WAIT, "a failed invalidation retried", || async {
        env.count(
            "SELECT coalesce(max(attempts), 0)::int8 FROM refit_outbox WHERE kind = 'invalidate'",
        )
        .await
            >= 2
    })
    .await;
    prometheus
        .eventually_value(r#"max(refit_outbox_backlog{kind="invalidate"})"#, |n| {
            n >= 1.0
        })
        .await;
    redis_user.allow_del(&env).await;
    env.outbox_drained(WAIT).await;

    // A rejected version: corrupted labels make the candidate worse on ava's trained actuals.
    for i in 0..50 {
        let bias = if i < 40 { 1000.0 } else { 0.0 };
        insert_actual(
            &env.pool,
            "ava",
            &rental_features(i),
            rental_actual(i) + bias,
        )
        .await;
    }
    env.insert_actuals("bo", 50).await;
    let events = read_events(&env.reader(), 3, WAIT);
    let mut outcomes: Vec<_> = events
        .iter()
        .map(|e| (e.event.user_id.as_str(), e.event.status.reported()))
        .collect();
    outcomes.sort();
    assert_eq!(
        outcomes,
        [("ava", "rejected"), ("ava", "success"), ("bo", "success")]
    );

    for (expr, expected) in [
        (r#"sum(refit_retrains_total{status="success"})"#, 2.0),
        (r#"sum(refit_retrains_total{status="rejected"})"#, 1.0),
        (r#"sum(refit_retrains_total{status="failed"})"#, 0.0),
        (
            r#"sum(refit_rows_set_aside_total{reason="non_numeric_feature"})"#,
            1.0,
        ),
        ("sum(refit_freshness_seconds_count)", 3.0),
        // ava's second batch was scored by her first model; first models have no live error.
        ("sum(refit_live_mae_count)", 1.0),
        ("sum(refit_live_error_ratio_count)", 1.0),
        ("max(refit_outbox_backlog)", 0.0),
    ] {
        prometheus.eventually_value(expr, |v| v == expected).await;
    }
    prometheus
        .eventually_value(
            r#"max(max_over_time(refit_outbox_oldest_age_seconds{kind="invalidate"}[5m]))"#,
            |age| age > 0.0,
        )
        .await;
    prometheus
        .eventually_value(
            "time() - max(refit_scheduler_heartbeat_timestamp_seconds)",
            |age| age < 30.0,
        )
        .await;

    let exposition = scrape(&base).await;
    check_dashboard(&prometheus, true).await;
    check_rules_silent(&prometheus).await;
    promtool_check_metrics(&exposition);

    running.stop().await;
    redis_user.delete(&env).await;
}
