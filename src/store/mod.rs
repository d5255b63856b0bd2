//! PostgreSQL: connections, migrations, and every SQL statement refit runs, one file per owner
//! of the rows — [`actuals`] (the pending queue and consumed actuals), [`ingest`] (the ingest's
//! cursor and queueing), [`versions`] (the user's head and versions, the retrain's commit, what
//! serving reads), [`outbox`] (side effects to carry out), [`registry`] and [`metadata`]
//! (versions, descriptions, tags and aliases by hand), [`audit`], [`erasure`], [`retention`],
//! and [`demo`] (the generated upstream rows of `refit demo`). The modules outside hold the
//! logic and call these typed functions; rows are read by column name.
//!
//! Every statement goes through [`query`], which takes SQL only as `&'static str`: values are
//! bound parameters, never formatted into SQL (clippy refuses sqlx's own entry points elsewhere).
//! The store decides nothing: what to write, and when, is its callers' business.
//!
//! Concurrency model:
//! - a user's retrain holds that user's `refit_models` row lock (`FOR UPDATE SKIP LOCKED`) for the
//!   whole read–train–commit transaction, so across all replicas one retrain per user runs at a
//!   time and a replica that finds the row locked simply moves on;
//! - pending actuals are queued by the ingest (src/scheduler/ingest.rs), exactly once, in
//!   whatever order the upstream's transactions commit;
//! - a user's outbox is delivered under a transaction-scoped advisory lock, in id order.

pub(crate) mod actuals;
pub(crate) mod audit;
pub(crate) mod demo;
pub(crate) mod erasure;
pub(crate) mod ingest;
pub(crate) mod metadata;
pub(crate) mod outbox;
pub(crate) mod query;
pub(crate) mod registry;
pub(crate) mod retention;
pub mod versions;

/// The statements refit runs per retrain, per ingest or per sweep, for
/// tests/integration/explain.rs, which EXPLAINs each one on filled tables: the test names the
/// statements themselves, so it follows them wherever they are used. Not an API.
#[doc(hidden)]
pub mod statements {
    pub use super::actuals::{
        ACTUALS_OF_VERSION, CONSUME, DUE_USERS, FORGET_PENDING, PENDING_COUNTS, PENDING_TOTAL,
        READ_PENDING, RECENT_ACTUALS, RECENT_LINES, SET_ASIDE_CONSUMED_AGAIN,
    };
    pub use super::audit::PURGE_AUDIT;
    pub use super::ingest::{ARRIVED, QUEUE_ARRIVALS, SESSION as INGEST_SESSION};
    pub use super::outbox::{
        INVALIDATIONS_DONE, OUTBOX_BACKLOG, OUTBOX_DEAD_LETTER, OUTBOX_DONE, OUTBOX_DUE_USERS,
        OUTBOX_FAILED, READ_OUTBOXES,
    };
    pub use super::retention::{
        DELETE_CONSUMED_OF_VERSIONS, DELETE_VERSIONS, DOOMED_VERSIONS, DROP_ARTIFACTS,
        LOCK_TO_PRUNE, PURGE_OUTBOX, PURGE_SET_ASIDE, TRIM_CONSUMED,
    };
    pub use super::versions::{
        ACTIVATE, ARTIFACT, BACK_OFF, COMMIT_RETRAIN, LOCK_MODEL, MODEL_ROW_EXISTS, RECORD_FAILURE,
        REINSTATE,
    };
}

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use crate::config::{Secret, SessionLimits};

/// The channel the ingest notifies, once per ingest, with an entry per user:
/// `<count>:<first actual id>:<user id's bytes>:<user id>` (see `scheduler::pending::Arrival::parse`).
pub(crate) const ACTUALS_CHANNEL: &str = "refit_actuals";

/// The migrations in `migrations/`, embedded in the binary.
pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A pool of at most `connections` PostgreSQL sessions, each with the `limits` set.
pub async fn connect(
    url: &Secret,
    limits: &SessionLimits,
    connections: u32,
) -> anyhow::Result<PgPool> {
    connect_as("refit", url, limits, connections).await
}

/// [`connect`], the sessions named `application_name` (as `pg_stat_activity` shows them).
pub(crate) async fn connect_as(
    application_name: &str,
    url: &Secret,
    limits: &SessionLimits,
    connections: u32,
) -> anyhow::Result<PgPool> {
    connect_planning(application_name, url, limits, connections, CUSTOM_PLANS).await
}

/// How refit's sessions plan: every statement for its arguments. refit's tables start empty and
/// grow and shrink by the minute; a generic plan cached while one was small (prepared statements
/// live as long as the connection) went on scanning it whole once it was large — seen in
/// `make bench` for the outbox done-marks and the retrain's commit (BENCHMARKS.md).
const CUSTOM_PLANS: &[(&str, &str)] = &[("plan_cache_mode", "force_custom_plan")];

/// [`connect_as`] with the planner settings `planning` (see [`CUSTOM_PLANS`], and
/// [`ingest::connect`] for the exception).
async fn connect_planning(
    application_name: &str,
    url: &Secret,
    limits: &SessionLimits,
    connections: u32,
    planning: &[(&str, &str)],
) -> anyhow::Result<PgPool> {
    let pool = PgPoolOptions::new().max_connections(connections);
    open(
        pool,
        session_options(application_name, url, limits, planning)?,
        url,
    )
    .await
}

/// How each of refit's sessions connects: named `application_name`, planning as `planning` says,
/// with the `limits` set.
fn session_options(
    application_name: &str,
    url: &Secret,
    limits: &SessionLimits,
    planning: &[(&str, &str)],
) -> anyhow::Result<PgConnectOptions> {
    Ok(url
        .expose()
        .parse::<PgConnectOptions>()
        .with_context(|| format!("DATABASE_URL {url} is not a valid PostgreSQL URL"))?
        .application_name(application_name)
        .options(planning.iter().copied())
        .options(session_settings(limits))
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(2)))
}

/// A pooled session idle for longer than this is pinged before it is handed out, in case the
/// server went away meanwhile. One used more recently is not: sqlx pinged it when it came back to
/// the pool, and a ping on every checkout is a round trip on every retrain's and every delivery's
/// way (a failed statement on a dead session is an error its caller already handles).
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// Opens `pool` with `options`, waiting at most 10 s for a session.
async fn open(
    pool: PgPoolOptions,
    options: PgConnectOptions,
    url: &Secret,
) -> anyhow::Result<PgPool> {
    pool.acquire_timeout(Duration::from_secs(10))
        .test_before_acquire(false)
        .before_acquire(|session, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    sqlx::Connection::ping(session).await?;
                }
                Ok(true)
            })
        })
        .connect_with(options)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {url}"))
}

/// The pool of the retrain service: `retrains` concurrent retrains plus its other tasks.
pub fn service_pool_size(retrains: usize) -> u32 {
    retrains as u32 + 4
}

/// The session settings that bound how long a statement, an idle transaction or a dead peer can
/// hold a lock: the server ends the session (rolling back its transaction) past them. Keepalives
/// are the server's side of the connection: a replica that vanished without closing its socket
/// (a half-open connection) is detected and its session ended.
fn session_settings(limits: &SessionLimits) -> Vec<(&'static str, String)> {
    let ms = |d: Duration| d.as_millis().to_string();
    let mut settings = Vec::new();
    if let Some(d) = limits.statement_timeout {
        settings.push(("statement_timeout", ms(d)));
    }
    if let Some(d) = limits.idle_in_transaction_timeout {
        settings.push(("idle_in_transaction_session_timeout", ms(d)));
    }
    if let Some(d) = limits.tcp_keepalive {
        let secs = d.as_secs().max(1);
        settings.push(("tcp_keepalives_idle", secs.to_string()));
        settings.push(("tcp_keepalives_interval", secs.to_string()));
        settings.push(("tcp_keepalives_count", "3".to_owned()));
        // Unacknowledged data (a peer gone while the server writes to it) counts too.
        settings.push(("tcp_user_timeout", (secs * 4 * 1000).to_string()));
    }
    settings
}

/// Applies the migrations (idempotent; safe to run from several replicas at once).
/// A migration may rewrite a large table: it runs without the session's statement timeout.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    query::query("SET statement_timeout = 0")
        .execute(&mut *conn)
        .await?;
    let applied = MIGRATOR
        .run(&mut *conn)
        .await
        .context("applying migrations");
    // The connection goes back to the pool: give it its limit back.
    query::query("RESET statement_timeout")
        .execute(&mut *conn)
        .await?;
    applied
}

/// Fails with a clear message when the database lacks refit's schema.
pub async fn check_migrated(pool: &PgPool) -> anyhow::Result<()> {
    let applied: i64 = query::query_scalar(
        "SELECT count(*) FROM pg_catalog.pg_tables WHERE tablename = '_sqlx_migrations'",
    )
    .fetch_one(pool)
    .await?;
    let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let current: Option<i64> = if applied > 0 {
        query::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await?
    } else {
        None
    };
    match current {
        Some(v) if v >= latest => Ok(()),
        _ => anyhow::bail!(
            "the database is not migrated to version {latest} (found {current:?}): run `refit migrate` first"
        ),
    }
}
