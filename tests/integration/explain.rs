//! Every statement refit runs per retrain or per sweep reads by index at scale: the tables are
//! filled (explain_fill.sql), and each statement — the very constant refit runs
//! (`refit::store::statements`), so the check follows the code — is EXPLAINed with representative values, planned for them as refit's
//! sessions plan (`plan_cache_mode = force_custom_plan`; below [`PLANNER_ROWS`] also
//! `enable_seqscan = off`: is there an index for it?). No plan may scan a table of 10,000 rows
//! or more whole, except the scheduler's two full passes over the pending queue (and, for one,
//! the registry rows of the users in it), which are full by design.
//!
//! `REFIT_EXPLAIN_ROWS` sets the scale: consumed actuals (and upstream actuals), 4,000 per user
//! with a history, and a registry row for every 500.
//! The suite runs 200,000; `make explain` runs 5,000,000 and prints every plan.

use sqlx::postgres::PgArguments;
use sqlx::{Connection, PgConnection, Postgres, Row};
use uuid::Uuid;

use refit::store::statements::*;

use crate::support::*;

/// The ingest cursor after the fill (every filled actual already ingested, two transactions
/// still in progress), as the ingest statements bind it.
static CURSOR: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn bind_cursor_and_in_progress(q: Query<'_>) -> Query<'_> {
    let cursor = CURSOR.get().expect("filled").clone();
    let in_progress: Vec<String> = cursor
        .split(':')
        .nth(2)
        .map_or(Vec::new(), |x| x.split(',').map(str::to_owned).collect());
    q.bind(cursor).bind(in_progress)
}

/// From this many rows on, the plans are the planner's own choice; below, sequential scans are
/// disabled, and a plan that still scans a table whole has no index to use. (At 200,000 rows the
/// planner rightly prefers to hash-join a scan of `actual_rentals` to 4,000 index probes.)
const PLANNER_ROWS: i64 = 1_000_000;

/// A user with a full history in the filled tables (users 0..rows/4000 have one).
const USER: &str = "user-000025";

type Query<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;
/// Binds a statement's parameters.
type Binder = for<'q> fn(Query<'q>) -> Query<'q>;

/// One statement to check: what runs it, its text, how to bind it, and the tables it may scan
/// whole.
struct Statement {
    name: &'static str,
    sql: &'static str,
    bind: Binder,
    full_scans_allowed: &'static [&'static str],
}

const fn statement(name: &'static str, sql: &'static str, bind: Binder) -> Statement {
    Statement {
        name,
        sql,
        bind,
        full_scans_allowed: &[],
    }
}

/// The statements of a retrain, of the outbox's delivery and sweep, of a prune and of the purges.
fn statements() -> Vec<Statement> {
    vec![
        statement("scheduler: pending counts", PENDING_COUNTS, |q| {
            q.bind(vec![USER.to_owned()])
        }),
        Statement {
            // Every pending actual with its user's registry row: at most every 30 s.
            full_scans_allowed: &["refit_pending", "refit_models"],
            ..statement("scheduler: due users (full pass)", DUE_USERS, |q| {
                q.bind(50_i64).bind(None::<f64>).bind(1_i64)
            })
        },
        Statement {
            full_scans_allowed: &["refit_pending"],
            ..statement("scheduler: pending gauge", PENDING_TOTAL, |q| q)
        },
        statement("retrain: lock the user", LOCK_MODEL, |q| {
            q.bind(USER).bind("rmse").bind(20_i64)
        }),
        statement("retrain: registry row exists", MODEL_ROW_EXISTS, |q| {
            q.bind(USER)
        }),
        statement(
            "retrain: set aside actuals consumed again",
            SET_ASIDE_CONSUMED_AGAIN,
            |q| q.bind(USER),
        ),
        statement("retrain: pending read", READ_PENDING, |q| {
            q.bind(USER).bind(50_i64)
        }),
        statement(
            "retrain: forget pending actuals gone upstream",
            FORGET_PENDING,
            |q| q.bind(USER).bind(vec![1_i64, 2]),
        ),
        statement("retrain: artifact", ARTIFACT, |q| q.bind(USER).bind(99_i32)),
        statement("retrain: recent actuals", RECENT_ACTUALS, |q| {
            q.bind(USER).bind(4000_i64)
        }),
        statement("retrain: window as trained", RECENT_LINES, |q| {
            q.bind(USER).bind(4000_i64)
        }),
        statement(
            "retrain: a rejected version's actuals",
            ACTUALS_OF_VERSION,
            |q| q.bind(USER).bind(99_i32),
        ),
        statement("retrain: reinstate", REINSTATE, |q| {
            q.bind(USER).bind(98_i32).bind(101_i32)
        }),
        statement("retrain: commit", COMMIT_RETRAIN, bind_commit),
        statement("retrain: consume (nothing trained)", CONSUME, |q| {
            bind_consumed(q.bind(USER).bind(None::<i32>)).bind(vec![None::<Vec<u8>>; 50])
        }),
        statement("retrain: activate", ACTIVATE, |q| q.bind(USER).bind(99_i32)),
        statement("retrain: record a failure", RECORD_FAILURE, |q| {
            q.bind(USER).bind(2.0_f64)
        }),
        statement("retrain: back off", BACK_OFF, |q| {
            q.bind(USER).bind(300.0_f64)
        }),
        statement("outbox: lock and read", READ_OUTBOXES, |q| {
            q.bind(vec![USER.to_owned()]).bind("announce")
        }),
        statement(
            "outbox: invalidations done (deleted)",
            INVALIDATIONS_DONE,
            |q| q.bind(vec![USER]).bind(vec![Uuid::nil()]).bind(false),
        ),
        statement(
            "outbox: invalidations done (kept)",
            INVALIDATIONS_DONE,
            |q| q.bind(vec![USER]).bind(vec![Uuid::nil()]).bind(true),
        ),
        statement("outbox: done (deleted)", OUTBOX_DONE, |q| {
            q.bind(vec![1_i64, 2]).bind(false)
        }),
        statement("outbox: done (kept)", OUTBOX_DONE, |q| {
            q.bind(vec![1_i64, 2]).bind(true)
        }),
        statement("outbox: failed", OUTBOX_FAILED, |q| {
            q.bind(1_i64).bind("broker down").bind(0.2_f64)
        }),
        statement("outbox: dead letter", OUTBOX_DEAD_LETTER, |q| {
            q.bind(1_i64).bind("too large")
        }),
        statement("sweep: users with due entries", OUTBOX_DUE_USERS, |q| {
            q.bind(1000_i64).bind(1.0_f64)
        }),
        statement("sweep: backlog gauge", OUTBOX_BACKLOG, |q| q),
        statement("prune: lock the user", LOCK_TO_PRUNE, |q| q.bind(USER)),
        statement("prune: versions to delete", DOOMED_VERSIONS, |q| {
            q.bind(USER).bind(Some(100_i32)).bind(50_i64).bind(100_i64)
        }),
        statement(
            "prune: their consumed rows",
            DELETE_CONSUMED_OF_VERSIONS,
            |q| q.bind(USER).bind(vec![1_i32, 2, 3]),
        ),
        statement("prune: the versions", DELETE_VERSIONS, |q| {
            q.bind(USER).bind(vec![1_i32, 2, 3])
        }),
        statement("prune: artifacts", DROP_ARTIFACTS, |q| {
            q.bind(USER).bind(Some(100_i32)).bind(5_i64)
        }),
        statement("prune: consumed rows", TRIM_CONSUMED, |q| {
            q.bind(USER).bind(4000_i64).bind(5000_i64)
        }),
        statement("purge: outbox", PURGE_OUTBOX, |q| {
            q.bind(3600.0_f64).bind(7.0 * 86400.0_f64).bind(5000_i64)
        }),
        statement("purge: set-aside actuals", PURGE_SET_ASIDE, |q| {
            q.bind(7.0 * 86400.0_f64).bind(5000_i64)
        }),
        statement("purge: audit trail", PURGE_AUDIT, |q| {
            q.bind(365.0 * 86400.0_f64).bind(5000_i64)
        }),
        statement(
            "ingest: anything arrived",
            ARRIVED,
            bind_cursor_and_in_progress,
        ),
        statement("ingest: queue arrivals", QUEUE_ARRIVALS, |q| q),
    ]
}

/// `commit_retrain`'s 24 parameters: a version, 50 consumed actuals, activation, two outbox rows.
fn bind_commit(q: Query<'_>) -> Query<'_> {
    let json = serde_json::json!({});
    let q = q
        .bind(USER)
        .bind(101_i32)
        .bind("ready")
        .bind(Some(100_i32))
        .bind(Some(vec![0_u8; 64]))
        .bind(50_i32)
        .bind(0_i32)
        .bind(Some(111_i32))
        .bind(Some(111_i32))
        .bind(json.clone())
        .bind(json.clone())
        .bind(json.clone())
        .bind(None::<String>)
        .bind("retrain")
        .bind(Uuid::new_v4())
        .bind(json.clone());
    bind_consumed(q)
        .bind(true)
        .bind(Uuid::new_v4())
        .bind(vec!["invalidate", "announce"])
        .bind(vec![json.clone(), json])
        .bind(vec![Some(vec![0_u8; 32]); 50])
}

/// 50 consumed actuals as the column arrays `consume` and `commit_retrain` bind.
fn bind_consumed(q: Query<'_>) -> Query<'_> {
    q.bind((1..=50_i64).collect::<Vec<_>>())
        .bind(vec!["trained"; 50])
        .bind(vec![None::<String>; 50])
        .bind(vec![None::<String>; 50])
}

/// Tables a plan reads whole: `Seq Scan on <table>`, or an index scan with no `Index Cond` (it
/// walks the whole index and filters), unless a `Limit` right above it stops it early (`max()`).
fn full_scans(plan: &[String]) -> Vec<String> {
    let mut tables = Vec::new();
    for (i, line) in plan.iter().enumerate() {
        if let Some(rest) = line.split("Seq Scan on ").nth(1) {
            tables.extend(rest.split_whitespace().next().map(str::to_owned));
            continue;
        }
        if !line.contains("Index Scan") && !line.contains("Index Only Scan") {
            continue;
        }
        let details = plan[i + 1..]
            .iter()
            .take_while(|l| !l.contains("->") && !l.trim_start().starts_with("InitPlan"));
        let bounded = details.clone().any(|l| l.contains("Index Cond:"))
            || i.checked_sub(1).is_some_and(|p| plan[p].contains("Limit"));
        if !bounded {
            let table = line
                .split(" on ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next());
            tables.extend(table.map(str::to_owned));
        }
    }
    tables
}

/// The tables of at least [`BIG`] rows (`big`) that `plan` reads whole and `s` may not.
fn forbidden_scans(plan: &[String], big: &[(String, i64)], s: &Statement) -> Vec<String> {
    full_scans(plan)
        .into_iter()
        .filter(|t| big.iter().any(|(b, _)| b == t))
        .filter(|t| !s.full_scans_allowed.contains(&t.as_str()))
        .collect()
}

/// Fewest rows of a table a full scan is a finding on: the planner rightly reads a table of a few
/// pages whole (aliases, or the registry rows of the suite's 400 users).
const BIG: i64 = 10_000;

/// The tables of at least [`BIG`] rows, with their rows (as analysed).
async fn big_tables(conn: &mut PgConnection) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT relname::text, reltuples::int8 FROM pg_class
          WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace AND reltuples >= $1
          ORDER BY relname",
    )
    .bind(BIG as f32)
    .fetch_all(conn)
    .await
    .unwrap()
}

/// The plan of one statement for its representative values, one line a node.
async fn explain(conn: &mut PgConnection, s: &Statement) -> Vec<String> {
    let text = format!("EXPLAIN {}", s.sql);
    (s.bind)(sqlx::query(&text))
        .fetch_all(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("EXPLAIN of {}: {e}", s.name))
        .iter()
        .map(|row| row.get::<String, _>(0))
        .collect()
}

/// The plan the statement's prepared form keeps (`plan_cache_mode = force_generic_plan` is set):
/// `EXPLAIN EXECUTE` of it, with the representative values bound as its arguments.
async fn explain_generic(conn: &mut PgConnection, s: &Statement) -> Vec<String> {
    sqlx::raw_sql(&format!("PREPARE generic AS {}", s.sql))
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("PREPARE of {}: {e}", s.name));
    // EXECUTE takes its arguments as literals: the server quotes the bound values.
    let n = parameters(s.sql);
    let literals = match n {
        0 => String::new(),
        n => format!("({})", vec!["%L"; n].join(", ")),
    };
    let args: String = (1..=n).map(|i| format!(", ${i}")).collect();
    let quote = format!("SELECT format('EXPLAIN EXECUTE generic{literals}'{args})");
    let text: String = (s.bind)(sqlx::query(&quote))
        .fetch_one(&mut *conn)
        .await
        .unwrap()
        .get(0);
    let plan = sqlx::query(&text)
        .fetch_all(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("EXPLAIN EXECUTE of {}: {e}", s.name));
    sqlx::query("DEALLOCATE generic")
        .execute(&mut *conn)
        .await
        .unwrap();
    plan.iter().map(|row| row.get::<String, _>(0)).collect()
}

/// How many parameters a statement takes: its highest `$n`.
fn parameters(sql: &str) -> usize {
    sql.split('$')
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .max()
        .unwrap_or(0)
}

/// A session on the environment's database, filled (explain_fill.sql) for `rows` consumed
/// actuals, planning as PostgreSQL does by default.
async fn fill(env: &TestEnv, rows: i64) -> PgConnection {
    let mut conn = PgConnection::connect(&env.database_url).await.unwrap();
    let started = std::time::Instant::now();
    sqlx::query("SELECT set_config('refit.explain_rows', $1, false)")
        .bind(rows.to_string())
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::raw_sql(include_str!("explain_fill.sql"))
        .execute(&mut conn)
        .await
        .unwrap();
    println!(
        "filled for {rows} consumed actuals in {:?}",
        started.elapsed()
    );
    conn
}

/// A session on the environment's database, filled for `rows` and planning as the check needs.
async fn filled(env: &TestEnv, rows: i64) -> PgConnection {
    let mut conn = fill(env, rows).await;
    // The cursor as upstream writers leave it most of the time: transactions still in progress
    // when it was taken (their xids in its list), which the ingest must look up by index too.
    let cursor: String = sqlx::query_scalar(
        "UPDATE refit_ingest_cursor
            SET snapshot = (SELECT format('%s:%s:%s,%s', x - 5, x, x - 5, x - 2)::pg_snapshot
                              FROM (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::int8 AS x) s)
         RETURNING snapshot::text",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let _ = CURSOR.set(cursor);
    let mut settings = vec!["SET plan_cache_mode = force_custom_plan"];
    if rows < PLANNER_ROWS {
        // Small tables: whether an index serves each statement, not what the planner prefers.
        settings.push("SET enable_seqscan = off");
    }
    for setting in settings {
        sqlx::query(setting).execute(&mut conn).await.unwrap();
    }
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_statement_of_a_retrain_or_a_sweep_reads_by_index_at_scale() {
    let rows: i64 = std::env::var("REFIT_EXPLAIN_ROWS")
        .ok()
        .map(|r| r.parse().expect("REFIT_EXPLAIN_ROWS is a number"))
        .unwrap_or(200_000);
    assert!(
        rows >= 200_000,
        "REFIT_EXPLAIN_ROWS: at least 200,000 (USER has a history)"
    );
    let env = TestEnv::new().await;
    let mut conn = filled(&env, rows).await;
    let big = big_tables(&mut conn).await;
    println!("tables of at least {BIG} rows: {big:?}");
    let mut scanning = Vec::new();
    for s in statements() {
        let plan = explain(&mut conn, &s).await;
        println!("\n{}:\n  {}", s.name, plan.join("\n  "));
        let whole = forbidden_scans(&plan, &big, &s);
        if !whole.is_empty() {
            scanning.push(format!("{} scans {whole:?}", s.name));
        }
    }
    // The ingest's own session plans once per statement (a generic plan, for any cursor).
    for (name, value) in INGEST_SESSION {
        sqlx::query("SELECT set_config($1, $2, false)")
            .bind(name)
            .bind(value)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    for s in statements()
        .iter()
        .filter(|s| s.name.starts_with("ingest:"))
    {
        let plan = explain_generic(&mut conn, s).await;
        println!("\n{} (generic plan):\n  {}", s.name, plan.join("\n  "));
        let whole = forbidden_scans(&plan, &big, s);
        if !whole.is_empty() {
            scanning.push(format!("{} (generic plan) scans {whole:?}", s.name));
        }
    }
    conn.close().await.unwrap();
    env.drop_database().await;
    assert!(
        scanning.is_empty(),
        "full scans at {rows} rows: {scanning:?}"
    );
}

/// The pending read runs on every retrain, at every size of the tables it looks up. Between the
/// small tables the suite's main check plans with sequential scans disabled and the large ones
/// where index probes win on cost, the planner once hash-joined a user's batch against a whole
/// scan of `refit_consumed_actuals` (a few thousand rows in the freshness bench: 1.4 ms of a
/// 1.6 ms read, growing with every retrain). Each of the batch's lookups is one index probe,
/// whatever the planner estimates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pending_read_probes_by_index_at_any_table_size() {
    let env = TestEnv::new().await;
    // 5,000 consumed actuals, 10 users with 50 pending each; the planner's own choices.
    let mut conn = fill(&env, 5_000).await;
    sqlx::query("SET plan_cache_mode = force_custom_plan")
        .execute(&mut conn)
        .await
        .unwrap();
    let read = statement("retrain: pending read", READ_PENDING, |q| {
        q.bind("user-000005").bind(50_i64)
    });
    let plan = explain(&mut conn, &read).await;
    println!("{}:\n  {}", read.name, plan.join("\n  "));
    conn.close().await.unwrap();
    env.drop_database().await;
    let whole = full_scans(&plan);
    assert!(whole.is_empty(), "the pending read scans {whole:?} whole");
}
