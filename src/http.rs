//! The HTTP server: what Kubernetes probes and Prometheus scrape.
//!
//! - `GET /healthz` — liveness: 200 while the scheduler loop turns (heartbeat younger than
//!   `max(10 × poll interval, 30 s)`), 503 otherwise.
//! - `GET /readyz` — readiness: 200 when PostgreSQL answers and is migrated, 503 otherwise; Redis
//!   and Kafka are reported (their outages only delay the outbox, so they do not gate readiness).
//! - `GET /metrics` — Prometheus text exposition.
//! - the model registry: `GET /models[?user=&status=&since=&limit=]`, `GET /models/{user}`,
//!   `GET /models/{user}/versions/{v}`, `GET /models/{user}/versions/{v}/artifact` (UBJSON);
//!   writes — `POST /models/{user}/promote {"version": v}`, `POST /models/{user}/rollback
//!   {"version": v}?`, `POST /models/{user}/prune {"keep": n}`, `POST /models/{user}/import
//!   [?features=a,b]` with the model file as body — need `Authorization: Bearer
//!   <REFIT_ADMIN_TOKEN>` (compared in constant time) and answer 401 without it, or when no token
//!   is configured.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::db;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::registry::{self, Filter, RegistryError};

/// The scheduler's proof of life.
#[derive(Debug, Default)]
pub struct Heartbeat(AtomicU64);

impl Heartbeat {
    pub fn beat(&self) {
        self.0.store(now_ms(), Ordering::Relaxed);
    }
    /// Time since the last beat (`None` before the first).
    pub fn age(&self) -> Option<Duration> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            last => Some(Duration::from_millis(now_ms().saturating_sub(last))),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub metrics: Arc<Metrics>,
    pub outbox: Arc<Outbox>,
    pub heartbeat: Arc<Heartbeat>,
    /// A heartbeat older than this fails liveness.
    pub stale_after: Duration,
    /// The admin token and the parameters imported models get.
    pub config: Arc<Config>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/models", get(list_models))
        .route("/models/{user}", get(user_models))
        .route("/models/{user}/versions/{version}", get(show_version))
        .route(
            "/models/{user}/versions/{version}/artifact",
            get(export_version),
        )
        .route("/models/{user}/promote", axum::routing::post(promote))
        .route("/models/{user}/rollback", axum::routing::post(rollback))
        .route("/models/{user}/prune", axum::routing::post(prune))
        .route(
            "/models/{user}/import",
            axum::routing::post(import).layer(axum::extract::DefaultBodyLimit::max(512 << 20)),
        )
        .with_state(state)
}

/// Serves until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

async fn healthz(State(state): State<AppState>) -> Response {
    match state.heartbeat.age() {
        Some(age) if age <= state.stale_after => (
            StatusCode::OK,
            Json(json!({"status": "ok", "loop_age_ms": age.as_millis() as u64})),
        )
            .into_response(),
        age => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "stalled", "loop_age_ms": age.map(|a| a.as_millis() as u64)})),
        )
            .into_response(),
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    let database =
        tokio::time::timeout(Duration::from_secs(3), db::check_migrated(&state.pool)).await;
    let (ready, database) = match database {
        Ok(Ok(())) => (true, "ok".to_owned()),
        Ok(Err(e)) => (false, format!("{e:#}")),
        Err(_) => (false, "timed out after 3 s".to_owned()),
    };
    let up = |healthy: bool| {
        if healthy {
            "ok"
        } else {
            "failing (work waits in the outbox)"
        }
    };
    let body = json!({
        "ready": ready,
        "database": database,
        "redis": up(state.outbox.redis_healthy()),
        "kafka": up(state.outbox.kafka_healthy()),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// A registry failure as an HTTP answer.
fn registry_error(e: RegistryError) -> Response {
    let status = match &e {
        RegistryError::UnknownUser(_) | RegistryError::UnknownVersion { .. } => {
            StatusCode::NOT_FOUND
        }
        RegistryError::NoArtifact { .. } | RegistryError::Conflict(_) => StatusCode::CONFLICT,
        RegistryError::InvalidModel(_) => StatusCode::BAD_REQUEST,
        RegistryError::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, Json(json!({"error": e.to_string()}))).into_response()
}

fn reply<T: serde::Serialize>(result: Result<T, RegistryError>) -> Response {
    match result {
        Ok(value) => Json(value).into_response(),
        Err(e) => registry_error(e),
    }
}

#[derive(serde::Deserialize)]
struct ListQuery {
    user: Option<String>,
    status: Option<String>,
    since: Option<chrono::DateTime<chrono::Utc>>,
    limit: Option<i64>,
}

async fn list_models(State(state): State<AppState>, Query(q): Query<ListQuery>) -> Response {
    let filter = Filter {
        user: q.user,
        status: q.status,
        since: q.since,
        limit: q.limit,
    };
    reply(registry::list(&state.pool, &filter).await)
}

async fn user_models(State(state): State<AppState>, Path(user): Path<String>) -> Response {
    let filter = Filter {
        user: Some(user.clone()),
        ..Filter::default()
    };
    let versions = match registry::list(&state.pool, &filter).await {
        Ok(v) if v.is_empty() => return registry_error(RegistryError::UnknownUser(user)),
        Ok(v) => v,
        Err(e) => return registry_error(e),
    };
    let active = versions.iter().find(|v| v.active).map(|v| v.version);
    Json(json!({"user_id": user, "active_version": active, "versions": versions})).into_response()
}

async fn show_version(
    State(state): State<AppState>,
    Path((user, version)): Path<(String, i32)>,
) -> Response {
    reply(registry::show(&state.pool, &user, Some(version)).await)
}

async fn export_version(
    State(state): State<AppState>,
    Path((user, version)): Path<(String, i32)>,
) -> Response {
    match registry::artifact(&state.pool, &user, Some(version)).await {
        Ok((_, bytes)) => ([(header::CONTENT_TYPE, "application/ubjson")], bytes).into_response(),
        Err(e) => registry_error(e),
    }
}

/// Checks `Authorization: Bearer <token>` against REFIT_ADMIN_TOKEN in constant time; returns
/// the 401 answer when the request may not write.
fn refuse_unauthorized(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    use subtle::ConstantTimeEq;
    let unauthorized = |message: &str| {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"error": message})),
        )
            .into_response()
    };
    let Some(expected) = &state.config.admin_token else {
        return Some(unauthorized(
            "registry writes are disabled: REFIT_ADMIN_TOKEN is not set",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(expected.expose().as_bytes())) {
        None
    } else {
        Some(unauthorized("a valid bearer token is required"))
    }
}

/// Delivers an activation's invalidation and event now (the sweep retries on failure).
async fn deliver(state: &AppState, user: &str) {
    if let Err(e) = state.outbox.deliver_user(user).await {
        tracing::warn!(
            user_id = user,
            error = format!("{e:#}"),
            "outbox delivery failed; the sweep retries"
        );
    }
}

#[derive(serde::Deserialize, Default)]
struct VersionBody {
    version: Option<i32>,
}

async fn promote(
    State(state): State<AppState>,
    Path(user): Path<String>,
    headers: HeaderMap,
    Json(body): Json<VersionBody>,
) -> Response {
    if let Some(denied) = refuse_unauthorized(&state, &headers) {
        return denied;
    }
    let Some(version) = body.version else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "body must be {\"version\": N}"})),
        )
            .into_response();
    };
    let result = registry::activate(&state.pool, &user, version, "promote").await;
    if result.is_ok() {
        deliver(&state, &user).await;
    }
    reply(result)
}

async fn rollback(
    State(state): State<AppState>,
    Path(user): Path<String>,
    headers: HeaderMap,
    body: Option<Json<VersionBody>>,
) -> Response {
    if let Some(denied) = refuse_unauthorized(&state, &headers) {
        return denied;
    }
    let to = body.and_then(|Json(b)| b.version);
    let result = registry::rollback(&state.pool, &user, to).await;
    if result.is_ok() {
        deliver(&state, &user).await;
    }
    reply(result)
}

#[derive(serde::Deserialize)]
struct PruneBody {
    keep: i64,
}

async fn prune(
    State(state): State<AppState>,
    Path(user): Path<String>,
    headers: HeaderMap,
    Json(body): Json<PruneBody>,
) -> Response {
    if let Some(denied) = refuse_unauthorized(&state, &headers) {
        return denied;
    }
    reply(
        registry::prune(&state.pool, Some(&user), body.keep)
            .await
            .map(|deleted| json!({"deleted": deleted})),
    )
}

#[derive(serde::Deserialize)]
struct ImportQuery {
    features: Option<String>,
}

async fn import(
    State(state): State<AppState>,
    Path(user): Path<String>,
    Query(q): Query<ImportQuery>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(denied) = refuse_unauthorized(&state, &headers) {
        return denied;
    }
    let features = q
        .features
        .map(|f| f.split(',').map(|s| s.trim().to_owned()).collect());
    let result = registry::import(
        &state.pool,
        &user,
        body.to_vec(),
        features,
        &state.config.xgb_params,
    )
    .await;
    if result.is_ok() {
        deliver(&state, &user).await;
    }
    reply(result)
}
