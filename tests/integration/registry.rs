//! Registry completeness: descriptions, tags and aliases, erasure of a user, and the audit trail,
//! on the command line and over HTTP.

use std::time::{Duration, Instant};

use refit::outbox::events::{EventReader, Message};
use refit::registry::audit::Interface;
use refit::registry::RegistryError;
use serde_json::{json, Value};

use crate::lifecycle::{get_json, refit, refit_json, PROBE};
use crate::support::*;

const WAIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "registry-admin-token";

/// Trains `n` versions of `user` (50 actuals each) and waits for their side effects.
async fn train(env: &TestEnv, service: &refit::scheduler::Service, user: &str, n: usize) {
    for _ in 0..n {
        env.insert_actuals(user, 50).await;
        service.retrainer.retrain_user(user, 50).await.unwrap();
    }
    env.outbox_drained(WAIT).await;
}

fn versions_of(listing: &Value) -> Vec<i64> {
    listing
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect()
}

/// Runs a command that must fail; returns its stderr.
fn refused(env: &TestEnv, args: &[&str]) -> String {
    let (code, stdout, stderr) = refit(env, args);
    assert_ne!(code, 0, "refit {args:?} should fail: {stdout}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_tag_and_alias_versions_from_the_command_line() {
    let env = TestEnv::new().await;
    let service = env.service(&[]).await;
    train(&env, &service, "tess", 3).await;
    let models = |rest: &[&str]| {
        let mut args = vec!["models"];
        args.extend_from_slice(rest);
        args.push("--json");
        refit_json(&env, &args)
    };

    // The model as a whole, then one version.
    let model = models(&[
        "update",
        "--user",
        "tess",
        "--description",
        "harbour",
        "--tag",
        "team=ops",
    ]);
    assert_eq!(
        (&model["version"], &model["tags"]),
        (&Value::Null, &json!({"team": "ops"}))
    );
    models(&[
        "update",
        "--user",
        "tess",
        "--version",
        "1",
        "--description",
        "baseline",
        "--tag",
        "reviewed=yes",
    ]);
    let v1 = models(&[
        "update",
        "--user",
        "tess",
        "--version",
        "1",
        "--untag",
        "reviewed",
        "--tag",
        "owner=ana",
    ]);
    assert_eq!(
        (&v1["description"], &v1["tags"]),
        (&json!("baseline"), &json!({"owner": "ana"}))
    );

    // refit's own tags are not people's to set or remove; bad input is refused clearly.
    for (args, message) in [
        (&["--tag", "refit.step=fresh"][..], "refit's own"),
        (&["--untag", "refit.source"], "refit's own"),
        (&["--tag", "no-equals"], "is not key=value"),
        (&["--tag", "sp ace=1"], "must be 1 to 128"),
        (&[], "nothing to change"),
    ] {
        let mut full = vec!["models", "update", "--user", "tess"];
        full.extend_from_slice(args);
        let stderr = refused(&env, &full);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }

    // Shown and filtered: people's tags, the model's tags, refit's tags.
    let shown = models(&["show", "--user", "tess", "--version", "1"]);
    assert_eq!(shown["tags"], json!({"owner": "ana"}));
    assert_eq!(shown["system_tags"]["refit.step"], "fresh");
    assert_eq!(
        (&shown["model"]["description"], &shown["model"]["tags"]),
        (&json!("harbour"), &json!({"team": "ops"}))
    );
    let list = |tag: &str| versions_of(&models(&["list", "--user", "tess", "--tag", tag]));
    assert_eq!(list("owner=ana"), [1]);
    assert_eq!(
        list("team=ops"),
        [3, 2, 1],
        "the model's tags apply to every version"
    );
    assert_eq!(list("refit.step=continue"), [3, 2]);
    assert!(list("owner=bob").is_empty());
    let (code, table, _) = refit(&env, &["models", "list", "--user", "tess"]);
    assert_eq!(code, 0);
    assert!(table.contains("owner=ana"), "{table}");

    // Aliases point at versions and leave serving alone.
    env.cache_model("tess").await;
    let outbox = env.count("SELECT count(*) FROM refit_outbox").await;
    let set = models(&[
        "alias",
        "--user",
        "tess",
        "--name",
        "champion",
        "--version",
        "1",
    ]);
    assert_eq!(
        (&set["version"], &set["previous_version"]),
        (&json!(1), &Value::Null)
    );
    let moved = models(&[
        "alias",
        "--user",
        "tess",
        "--name",
        "champion",
        "--version",
        "2",
    ]);
    assert_eq!(
        (&moved["version"], &moved["previous_version"]),
        (&json!(2), &json!(1))
    );
    models(&[
        "alias",
        "--user",
        "tess",
        "--name",
        "candidate",
        "--version",
        "champion",
    ]);
    models(&[
        "alias",
        "--user",
        "tess",
        "--name",
        "last-good",
        "--version",
        "1",
    ]);
    let shown = models(&["show", "--user", "tess", "--version", "champion"]);
    assert_eq!(
        (&shown["version"], &shown["aliases"]),
        (&json!(2), &json!(["candidate", "champion"]))
    );
    assert_eq!(
        shown["model"]["aliases"],
        json!({"candidate": 2, "champion": 2, "last-good": 1})
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("champion.ubj");
    let (code, _, stderr) = refit(
        &env,
        &[
            "models",
            "export",
            "--user",
            "tess",
            "--version",
            "champion",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let stored: Vec<u8> = sqlx::query_scalar(
        "SELECT artifact FROM refit_model_versions WHERE user_id = 'tess' AND version = 2",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), stored);
    let predicted = refit_json(
        &env,
        &[
            "predict",
            "--user",
            "tess",
            "--version",
            "last-good",
            "--features",
            PROBE,
            "--json",
        ],
    );
    assert_eq!(
        (&predicted["version"], &predicted["cache"]),
        (&json!(1), &json!("bypass"))
    );
    assert!(env.cached("tess").await, "aliases never touch serving");
    assert_eq!(env.active_version("tess").await, Some(3));
    assert_eq!(env.count("SELECT count(*) FROM refit_outbox").await, outbox);
    for (args, message) in [
        (
            &[
                "alias",
                "--user",
                "tess",
                "--name",
                "active",
                "--version",
                "1",
            ][..],
            "serving",
        ),
        (
            &[
                "alias",
                "--user",
                "tess",
                "--name",
                "Champ",
                "--version",
                "1",
            ],
            "alias name",
        ),
        (
            &["alias", "--user", "tess", "--name", "x", "--version", "9"],
            "no version 9",
        ),
        (
            &["show", "--user", "tess", "--version", "nope"],
            "no alias \"nope\"",
        ),
    ] {
        let mut full = vec!["models"];
        full.extend_from_slice(args);
        let stderr = refused(&env, &full);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }

    // Promote takes an alias; prune keeps what an alias points at.
    let promoted = models(&["promote", "--user", "tess", "--version", "last-good"]);
    assert_eq!(promoted["active_version"], 1);
    assert!(!env.cached("tess").await, "promote invalidates model:tess");
    models(&["promote", "--user", "tess", "--version", "3"]);
    models(&["alias", "--user", "tess", "--name", "champion", "--delete"]);
    models(&["alias", "--user", "tess", "--name", "candidate", "--delete"]);
    let stderr = refused(
        &env,
        &[
            "models",
            "alias",
            "--user",
            "tess",
            "--name",
            "candidate",
            "--delete",
        ],
    );
    assert!(stderr.contains("no alias"), "{stderr}");
    let pruned = models(&["prune", "--user", "tess", "--keep", "1"]);
    assert_eq!(pruned["deleted"], 1);
    assert_eq!(versions_of(&models(&["list", "--user", "tess"])), [3, 1]);

    // Every write is in the audit trail, newest first, with old and new values.
    let history = models(&["history", "--user", "tess"]);
    let entries = history.as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "prune", "alias", "alias", "promote", "promote", "alias", "alias", "alias", "alias",
            "update", "update", "update"
        ]
    );
    assert!(entries.iter().all(|e| e["interface"] == "cli"));
    assert_eq!(
        (&entries[0]["old"], &entries[0]["target"]),
        (&json!({"versions": [2]}), &json!({"keep": 1}))
    );
    assert_eq!(
        (&entries[3]["old"], &entries[3]["new"]),
        (&json!({"active_version": 1}), &json!({"active_version": 3}))
    );
    let alias_moved = &entries[7];
    assert_eq!(
        (
            &alias_moved["target"],
            &alias_moved["old"],
            &alias_moved["new"]
        ),
        (
            &json!({"alias": "champion"}),
            &json!({"version": 1}),
            &json!({"version": 2})
        )
    );
    assert_eq!(entries[11]["old"], json!({"description": null, "tags": {}}));
    assert_eq!(
        entries[11]["new"],
        json!({"description": "harbour", "tags": {"team": "ops"}})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_describe_alias_delete_and_history_writes_need_the_token() {
    let env = TestEnv::new().await;
    let running = env.start(&[("REFIT_ADMIN_TOKEN", TOKEN)]).await;
    env.insert_actuals("uma", 100).await;
    eventually(WAIT, "uma v2", || async {
        env.versions("uma", "ready").await == [1, 2]
    })
    .await;
    let base = format!("http://{}", running.service.http_addr.unwrap());
    let client = reqwest::Client::new();
    let writes = [
        (
            "PATCH",
            "/models/uma",
            json!({"description": "d", "tags": {"team": "ops"}}),
        ),
        (
            "PATCH",
            "/models/uma/versions/1",
            json!({"tags": {"owner": "ana"}}),
        ),
        ("PUT", "/models/uma/aliases/champion", json!({"version": 1})),
        ("DELETE", "/models/uma/aliases/champion", Value::Null),
        ("DELETE", "/models/uma", Value::Null),
    ];
    let send = |method: &str, path: &str, body: &Value, token: Option<&str>| {
        let mut request = client.request(method.parse().unwrap(), format!("{base}{path}"));
        if !body.is_null() {
            request = request.json(body);
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    for (method, path, body) in &writes {
        for token in [None, Some("wrong-token")] {
            let response = send(method, path, body, token).await.unwrap();
            assert_eq!(response.status(), 401, "{method} {path} with {token:?}");
        }
    }
    let history: Value = get_json(&client, &format!("{base}/models/uma/history")).await;
    assert_eq!(history, json!([]), "refused writes change nothing");
    for path in ["/models/uma", "/models/uma/versions/1"] {
        let response = send("TRACE", path, &Value::Null, None).await.unwrap();
        assert_eq!(response.status(), 405, "TRACE {path} is no write: not 401");
    }
    assert_eq!(env.active_version("uma").await, Some(2));

    for (method, path, body) in &writes[..3] {
        let response = send(method, path, body, Some(TOKEN)).await.unwrap();
        assert_eq!(response.status(), 200, "{method} {path}");
    }
    let user: Value = get_json(&client, &format!("{base}/models/uma")).await;
    assert_eq!(
        (&user["description"], &user["tags"], &user["aliases"]),
        (
            &json!("d"),
            &json!({"team": "ops"}),
            &json!({"champion": 1})
        )
    );
    let champion: Value = get_json(&client, &format!("{base}/models/uma/versions/champion")).await;
    assert_eq!(
        (&champion["version"], &champion["active"]),
        (&json!(1), &json!(false))
    );
    let artifact = client
        .get(format!("{base}/models/uma/versions/champion/artifact"))
        .send()
        .await
        .unwrap();
    assert_eq!(artifact.status(), 200);
    let tagged: Value = get_json(&client, &format!("{base}/models?tag=owner=ana")).await;
    assert_eq!(versions_of(&tagged), [1]);
    for (method, path, body, status) in [
        ("GET", "/models?tag=owner", Value::Null, 400),
        ("GET", "/models/uma/versions/nope", Value::Null, 404),
        (
            "PATCH",
            "/models/uma",
            json!({"tags": {"refit.step": "x"}}),
            400,
        ),
        ("PATCH", "/models/uma", json!({"colour": "red"}), 422),
        (
            "PUT",
            "/models/uma/aliases/champion",
            json!({"version": 99}),
            404,
        ),
        (
            "PUT",
            "/models/uma/aliases/Champ",
            json!({"version": 1}),
            400,
        ),
        ("DELETE", "/models/uma/aliases/nope", Value::Null, 404),
        ("DELETE", "/models/nobody", Value::Null, 404),
    ] {
        let response = send(method, path, &body, Some(TOKEN)).await.unwrap();
        assert_eq!(response.status(), status, "{method} {path} {body}");
        let error: Value = response.json().await.unwrap();
        assert!(error["error"].is_string(), "{error}");
    }
    for (method, path, body) in &writes[3..] {
        let response = send(method, path, body, Some(TOKEN)).await.unwrap();
        assert_eq!(response.status(), 200, "{method} {path}");
    }
    let gone = client
        .get(format!("{base}/models/uma"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    let history: Value = get_json(&client, &format!("{base}/models/uma/history")).await;
    let history = history.as_array().unwrap();
    assert_eq!(
        history.len(),
        1,
        "an erasure leaves one record: {history:?}"
    );
    assert_eq!(
        (
            &history[0]["action"],
            &history[0]["interface"],
            &history[0]["user_id"]
        ),
        (&json!("delete"), &json!("http"), &Value::Null)
    );
    running.stop().await;
}

/// Every refit table that holds users (`refit_*` with a `user_id`) and how many of its rows
/// mention `needle` anywhere.
async fn rows_mentioning(env: &TestEnv, needle: &str) -> Vec<(String, i64)> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.columns
          WHERE table_schema = 'public' AND table_name LIKE 'refit\\_%' AND column_name = 'user_id'
          ORDER BY 1",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let mut counts = Vec::new();
    for table in tables {
        let sql = format!("SELECT count(*) FROM {table} t WHERE position($1 IN t::text) > 0");
        let n: i64 = sqlx::query_scalar(&sql)
            .bind(needle)
            .fetch_one(&env.pool)
            .await
            .unwrap();
        counts.push((table, n));
    }
    counts
}

/// Messages with `key` until its tombstone (events checked against the schema).
fn messages_until_tombstone(reader: &EventReader, key: &str) -> Vec<Message> {
    let deadline = Instant::now() + WAIT;
    let mut messages = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no tombstone for {key}: {messages:?}");
        let Some(message) = reader.next_message(left).unwrap() else {
            continue;
        };
        let (message_key, tombstone) = match &message {
            Message::Event(e) => {
                assert_valid_event(e);
                (e.key.clone(), false)
            }
            Message::Tombstone { key, .. } => (key.clone(), true),
        };
        if message_key == key.as_bytes() {
            messages.push(message);
            if tombstone {
                return messages;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_user_leaves_nothing_about_them_in_refits_tables() {
    let env = TestEnv::new().await;
    let service = env.service(&[]).await;
    let reader = env.reader();
    train(&env, &service, "gone-gina", 2).await;
    train(&env, &service, "kept-karl", 1).await;
    env.insert_actuals("gone-gina", 10).await;
    refit_json(
        &env,
        &[
            "models",
            "alias",
            "--user",
            "gone-gina",
            "--name",
            "champion",
            "--version",
            "1",
            "--json",
        ],
    );
    refit_json(
        &env,
        &[
            "models",
            "update",
            "--user",
            "gone-gina",
            "--tag",
            "team=ops",
            "--json",
        ],
    );
    env.cache_model("gone-gina").await;
    // An actual that came back with an id already consumed was set aside as unconsumable.
    sqlx::query(
        "INSERT INTO refit_unconsumable_actuals (actual_id, user_id, reason)
         SELECT min(actual_id), user_id, 'already_consumed' FROM refit_consumed_actuals
          WHERE user_id = 'gone-gina' GROUP BY user_id",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let requests = "SELECT count(*) FROM prediction_requests WHERE user_id = 'gone-gina'";
    let upstream = env.count(requests).await;
    let before = rows_mentioning(&env, "gone-gina").await;
    assert!(before.len() >= 7, "{before:?}");
    assert!(
        before.iter().all(|(_, n)| *n > 0),
        "every refit table holds the user: {before:?}"
    );

    let stderr = refused(
        &env,
        &[
            "models",
            "delete",
            "--user",
            "gone-gina",
            "--confirm",
            "gone",
        ],
    );
    assert!(
        stderr.contains("--confirm must repeat the user id"),
        "{stderr}"
    );
    assert_eq!(env.versions("gone-gina", "ready").await, [1, 2]);

    let erased = refit_json(
        &env,
        &[
            "models",
            "delete",
            "--user",
            "gone-gina",
            "--confirm",
            "gone-gina",
            "--json",
        ],
    );
    assert_eq!(
        erased["deleted"],
        json!({"versions": 2, "aliases": 1, "pending": 10, "consumed": 100})
    );
    assert!(!env.cached("gone-gina").await, "model:gone-gina is deleted");
    let messages = messages_until_tombstone(&reader, "gone-gina");
    let actions: Vec<String> = messages
        .iter()
        .map(|m| match m {
            Message::Event(e) => e.event.action.clone(),
            Message::Tombstone { .. } => "tombstone".into(),
        })
        .collect();
    assert_eq!(actions, ["retrain", "retrain", "delete", "tombstone"]);
    let Message::Event(deleted) = &messages[2] else {
        unreachable!()
    };
    assert_eq!(
        (
            deleted.event.previous_version,
            deleted.event.active_version,
            deleted.event.model_version
        ),
        (Some(2), None, None)
    );

    env.outbox_drained(WAIT).await;
    let after = rows_mentioning(&env, "gone-gina").await;
    assert!(after.iter().all(|(_, n)| *n == 0), "left behind: {after:?}");
    assert_eq!(
        env.versions("kept-karl", "ready").await,
        [1],
        "other users are untouched"
    );
    assert_eq!(
        env.count(requests).await,
        upstream,
        "upstream tables are not touched"
    );
    let history = refit_json(
        &env,
        &["models", "history", "--user", "gone-gina", "--json"],
    );
    assert_eq!(history.as_array().unwrap().len(), 1, "{history}");
    assert_eq!(
        (
            &history[0]["action"],
            &history[0]["user_id"],
            &history[0]["old"]["versions"]
        ),
        (&json!("delete"), &Value::Null, &json!(2))
    );
    let stderr = refused(
        &env,
        &[
            "models",
            "delete",
            "--user",
            "gone-gina",
            "--confirm",
            "gone-gina",
        ],
    );
    assert!(stderr.contains("has no model"), "{stderr}");

    // Actuals arriving later start a new model from scratch, on the new actuals only.
    env.insert_actuals("gone-gina", 50).await;
    service
        .retrainer
        .retrain_user("gone-gina", 50)
        .await
        .unwrap();
    let shown = refit_json(&env, &["models", "show", "--user", "gone-gina", "--json"]);
    assert_eq!(
        (
            &shown["version"],
            &shown["step"],
            &shown["rows_used"],
            &shown["parent_version"]
        ),
        (&json!(1), &json!("fresh"), &json!(50), &Value::Null)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_waits_for_a_retrain_in_flight_and_refuses_after_the_limit() {
    let env = TestEnv::new().await;
    let service = env.service(&[]).await;
    train(&env, &service, "vic", 1).await;
    // A retrain in flight holds the user's registry row lock.
    let mut retrain = env.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM refit_models WHERE user_id = 'vic' FOR UPDATE")
        .execute(&mut *retrain)
        .await
        .unwrap();
    let short = Duration::from_millis(200);
    let refused = refit::registry::erasure::erase(&env.pool, "vic", Interface::Cli, short).await;
    assert!(
        matches!(&refused, Err(RegistryError::Conflict(m)) if m.contains("in flight")),
        "{refused:?}"
    );
    assert_eq!(env.versions("vic", "ready").await, [1]);

    let pool = env.pool.clone();
    let waiting = tokio::spawn(async move {
        refit::registry::erasure::erase(&pool, "vic", Interface::Http, WAIT).await
    });
    eventually(WAIT, "the erasure waits for the row lock", || async {
        env.count(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .await
            == 1
    })
    .await;
    retrain.commit().await.unwrap();
    let erased = waiting.await.unwrap().unwrap();
    assert_eq!(
        (erased.deleted.versions, erased.previous_version),
        (1, Some(1))
    );
    assert!(env.versions("vic", "ready").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_rows_past_their_retention_are_purged() {
    let env = TestEnv::new().await;
    sqlx::query(
        "INSERT INTO refit_audit (user_id, interface, action, at)
         VALUES ('old', 'cli', 'update', now() - interval '400 days'),
                ('recent', 'http', 'alias', now() - interval '10 days')",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let retention = env
        .config(&[("REFIT_AUDIT_RETENTION_DAYS", "365")])
        .audit_retention;
    let purged = refit::registry::audit::purge(&env.pool, retention)
        .await
        .unwrap();
    assert_eq!(purged, 1);
    let left: Vec<String> = sqlx::query_scalar("SELECT user_id FROM refit_audit")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert_eq!(left, ["recent"]);
    let config = refit::config::Config::from_sources(
        None,
        &env.vars(&[("REFIT_AUDIT_RETENTION_DAYS", "0")]),
    );
    assert!(config
        .unwrap_err()
        .to_string()
        .contains("REFIT_AUDIT_RETENTION_DAYS"));
}
