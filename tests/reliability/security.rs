//! Security: secrets (database, Redis, Kafka, Loki, admin) never in logs or error output;
//! TLS/SASL settings reach the clients. (SQL only through bound parameters is checked at compile
//! time: src/store/query.rs takes SQL as `&'static str`, and clippy.toml refuses sqlx's own entry
//! points elsewhere.)

use std::time::Duration;

use crate::harness::*;
use crate::support::*;

const WAIT: Duration = Duration::from_secs(40);

fn redis_cmd(args: &[&str]) {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let _: redis::Value = cmd.query(&mut conn).unwrap();
}

/// A Redis ACL user for the test's lifetime (so the Redis URL can carry a real password).
struct RedisUser(String);
impl RedisUser {
    fn new(name: &str, password: &str) -> RedisUser {
        redis_cmd(&[
            "ACL",
            "SETUSER",
            name,
            "on",
            &format!(">{password}"),
            "~*",
            "&*",
            "+@all",
        ]);
        RedisUser(name.to_owned())
    }
}
impl Drop for RedisUser {
    fn drop(&mut self) {
        redis_cmd(&["ACL", "DELUSER", &self.0]);
    }
}

/// Runs refit with secrets in every setting that can hold one, through outages (so error paths
/// log), at debug level; then the failure paths of start-up and `refit config`. No output holds
/// a secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_logs_or_error_output() {
    let env = TestEnv::new().await;
    env.service(&[]).await;
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let pg_secret = format!("PgSecret{tag}");
    let redis_secret = format!("RedisSecret{tag}");
    let kafka_secret = format!("KafkaSecret{tag}");
    let loki_secret = format!("LokiSecret{tag}");
    let admin_secret = format!("AdminSecret{tag}");
    let secrets = [
        &pg_secret,
        &redis_secret,
        &kafka_secret,
        &loki_secret,
        &admin_secret,
    ];
    let redis_user = format!("refit_test_{tag}");
    let _acl = RedisUser::new(&redis_user, &redis_secret);
    let pg = FaultProxy::new(5432);
    let redis = FaultProxy::new(6379);
    let db = env.database_url.rsplit_once('/').unwrap().1.to_owned();
    let database_url = format!(
        "postgres://postgres:{pg_secret}@127.0.0.1:{}/{db}?sslmode=prefer",
        pg.port
    );
    let redis_url = format!(
        "redis://{redis_user}:{redis_secret}@127.0.0.1:{}",
        redis.port
    );
    let kafka_properties =
        format!("sasl.username=refit;sasl.password={kafka_secret};ssl.key.password={kafka_secret}");
    let loki_url = format!("http://refit:{loki_secret}@127.0.0.1:{}/", free_port());
    let secret_vars = [
        ("DATABASE_URL", database_url.as_str()),
        ("REDIS_URL", redis_url.as_str()),
        ("REFIT_KAFKA_PROPERTIES", kafka_properties.as_str()),
        ("LOKI_URL", loki_url.as_str()),
        ("REFIT_ADMIN_TOKEN", admin_secret.as_str()),
    ];
    let mut vars = env.vars(&secret_vars);
    vars.insert("RUST_LOG".into(), "debug".into());
    vars.insert("REFIT_VALIDATION".into(), "off".into());
    let mut refit = spawn_refit(&vars);
    refit.wait_for_line("refit starting", WAIT).await;
    env.cache_model("sec").await;
    env.insert_actuals("sec", 50).await;
    settled(&env, 50, WAIT).await;
    assert!(
        !env.cached("sec").await,
        "the password-protected Redis URL works"
    );
    // Outages make the clients log their errors.
    pg.cut();
    redis.cut();
    env.insert_actuals("sec", 50).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.resume();
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.resume();
    settled(&env, 50, WAIT).await;
    refit.signal("TERM");
    assert!(refit.wait_exit(WAIT).await.success());
    let mut outputs = vec![("refit run".to_owned(), refit.lines().join("\n"))];
    assert!(
        outputs[0].1.matches("\"level\":\"DEBUG\"").count() > 0,
        "debug logs were captured: {}",
        outputs[0].1.len()
    );

    // Start-up failures and the configuration dump.
    let unreachable_db = format!("postgres://refit:{pg_secret}@127.0.0.1:{}/x", free_port());
    for (what, args, extra) in [
        ("config", vec!["config"], vec![]),
        (
            "migrate, database down",
            vec!["migrate"],
            vec![("DATABASE_URL", unreachable_db.as_str())],
        ),
        (
            "run, database down",
            vec!["run"],
            vec![("DATABASE_URL", unreachable_db.as_str())],
        ),
        (
            "run, bad Loki URL",
            vec!["run"],
            vec![("LOKI_URL", "ftp://user:LokiSecret@x")],
        ),
    ] {
        let out = std::process::Command::new(BIN)
            .args(&args)
            .env_clear()
            .envs(secret_vars.iter().copied())
            .envs(extra.iter().copied())
            .env("REFIT_HTTP_ADDR", "off")
            .env("RUST_LOG", "debug")
            .output()
            .unwrap();
        outputs.push((
            what.to_owned(),
            format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ));
    }
    for (what, text) in &outputs {
        for secret in secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{what}: output contains the secret {secret}:\n{}",
                text.lines()
                    .filter(|l| l.contains(secret.as_str()))
                    .take(3)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        assert!(!text.contains("LokiSecret@"), "{what}: {text}");
    }
}

/// Kafka request frames (`[len][api_key][api_version]…`) a client sent on one connection.
fn kafka_api_keys(bytes: &[u8]) -> Vec<i16> {
    let mut keys = Vec::new();
    let mut at = 0;
    while at + 6 <= bytes.len() {
        let len = i32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        keys.push(i16::from_be_bytes(
            bytes[at + 4..at + 6].try_into().unwrap(),
        ));
        at += 4 + len;
    }
    keys
}

fn is_tls_client_hello(bytes: &[u8]) -> bool {
    bytes.len() > 5 && bytes[0] == 0x16 && bytes[1] == 0x03
}

async fn first_bytes_seen(proxy: &FaultProxy, what: &str) -> Vec<Vec<u8>> {
    eventually(WAIT, what, || async {
        proxy.client_bytes().iter().any(|b| !b.is_empty())
    })
    .await;
    proxy.client_bytes()
}

/// sslmode, rediss:// and Kafka's security.protocol/SASL settings reach the client libraries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_sasl_settings_pass_through_configuration() {
    let env = TestEnv::new().await;
    env.service(&[]).await;
    let db = env.database_url.rsplit_once('/').unwrap().1.to_owned();

    // PostgreSQL: sslmode=require gives refit TLS connections (the server has ssl=on).
    let ssl_on: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    let redis_tls = FaultProxy::new(6379);
    let kafka_tls = FaultProxy::new(19092);
    let mut refit = spawn_refit(&env.vars(&[
        (
            "DATABASE_URL",
            &format!("{}?sslmode=require", env.database_url),
        ),
        (
            "REDIS_URL",
            &format!("rediss://127.0.0.1:{}", redis_tls.port),
        ),
        ("KAFKA_BROKERS", &format!("127.0.0.1:{}", kafka_tls.port)),
        ("REFIT_KAFKA_PROPERTIES", "security.protocol=ssl"),
    ]));
    refit.wait_for_line("refit starting", WAIT).await;
    if ssl_on == "on" {
        let (n, all_ssl): (i64, Option<bool>) = sqlx::query_as(
            "SELECT count(*), bool_and(s.ssl) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
              WHERE a.datname = $1 AND a.application_name = 'refit'",
        )
        .bind(&db)
        .fetch_one(&env.pool)
        .await
        .unwrap();
        assert!(
            n > 0 && all_ssl == Some(true),
            "sslmode=require: {n} connections, ssl {all_ssl:?}"
        );
    } else {
        println!("PostgreSQL has ssl=off: sslmode=require checked by the verify-full refusal only");
    }
    env.insert_actuals("tls", 50).await;
    let redis_bytes = first_bytes_seen(&redis_tls, "refit connects to Redis").await;
    assert!(
        redis_bytes
            .iter()
            .filter(|b| !b.is_empty())
            .all(|b| is_tls_client_hello(b)),
        "rediss:// speaks TLS: {:?}",
        redis_bytes
            .iter()
            .map(|b| b.iter().take(8).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    );
    let kafka_bytes = first_bytes_seen(&kafka_tls, "refit connects to Kafka").await;
    assert!(
        kafka_bytes
            .iter()
            .filter(|b| !b.is_empty())
            .all(|b| is_tls_client_hello(b)),
        "security.protocol=ssl speaks TLS"
    );
    refit.signal("TERM");
    assert!(refit.wait_exit(WAIT).await.success());

    // The plain settings, for contrast, and SASL: a SaslHandshake (API key 17) is sent.
    let redis_plain = FaultProxy::new(6379);
    let kafka_sasl = FaultProxy::new(19092);
    let mut refit = spawn_refit(&env.vars(&[
        ("DATABASE_URL", &format!("{}?sslmode=disable", env.database_url)),
        ("REDIS_URL", &format!("redis://127.0.0.1:{}", redis_plain.port)),
        ("KAFKA_BROKERS", &format!("127.0.0.1:{}", kafka_sasl.port)),
        (
            "REFIT_KAFKA_PROPERTIES",
            "security.protocol=sasl_plaintext;sasl.mechanism=PLAIN;sasl.username=refit;sasl.password=pw",
        ),
    ]));
    refit.wait_for_line("refit starting", WAIT).await;
    let plain_ssl: Option<bool> = sqlx::query_scalar(
        "SELECT bool_or(s.ssl) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
          WHERE a.datname = $1 AND a.application_name = 'refit'",
    )
    .bind(&db)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(plain_ssl, Some(false), "sslmode=disable: no TLS");
    env.insert_actuals("plain", 50).await;
    let bytes = first_bytes_seen(&redis_plain, "refit connects to Redis").await;
    assert!(
        bytes.iter().any(|b| b.first() == Some(&b'*')),
        "redis:// speaks RESP"
    );
    eventually(WAIT, "a SASL handshake request", || async {
        kafka_sasl
            .client_bytes()
            .iter()
            .any(|b| kafka_api_keys(b).contains(&17))
    })
    .await;
    refit.signal("TERM");
    assert!(refit.wait_exit(WAIT).await.success());

    // sslmode=verify-full with a CA that does not exist: refit refuses to start.
    let mut refit = spawn_refit(&env.vars(&[(
        "DATABASE_URL",
        &format!(
            "{}?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            env.database_url
        ),
    )]));
    let status = refit.wait_exit(WAIT).await;
    assert!(!status.success(), "verify-full with a missing CA must fail");
}
