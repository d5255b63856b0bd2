//! The HTTP server: what Kubernetes probes and Prometheus scrape.
//!
//! - `GET /healthz` — liveness: 200 while the scheduler loop turns (heartbeat younger than
//!   `max(10 × poll interval, 30 s)`), 503 otherwise.
//! - `GET /readyz` — readiness: 200 when PostgreSQL answers and is migrated, 503 otherwise; Redis
//!   and Kafka are reported (their outages only delay the outbox, so they do not gate readiness).
//! - `GET /metrics` — Prometheus text exposition.
//! - `GET /openapi.json` — this API's OpenAPI description (docs/openapi.json).
//! - the model registry: `GET /models[?user=&status=&since=&limit=]`, `GET /models/{user}`,
//!   `GET /models/{user}/versions/{v}`, `GET /models/{user}/versions/{v}/artifact` (UBJSON);
//!   writes — `POST /models/{user}/promote {"version": v}`, `POST /models/{user}/rollback
//!   {"version": v}?`, `POST /models/{user}/prune {"keep": n}`, `POST /models/{user}/import
//!   [?features=a,b]` with the model file as body — need `Authorization: Bearer
//!   <REFIT_ADMIN_TOKEN>` (compared in constant time) and answer 401 without it, or when no token
//!   is configured; the token is checked before the request body is read. Also writes:
//!   `PATCH /models/{user}` and `PATCH /models/{user}/versions/{v}` (description and tags),
//!   `PUT`/`DELETE /models/{user}/aliases/{alias}`, `DELETE /models/{user}` (erasure); and a
//!   read, `GET /models/{user}/history` (the audit trail). `{v}` is a number, an alias or
//!   `active`.
//!
//! Every error is JSON, `{"error": "..."}`: the handlers' own and axum's refusals of a malformed
//! path, query or body (400, 413, 415, 422), unknown routes (404) included.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query, Request, State};
use axum::handler::Handler;
use axum::http::HeaderMap;
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::domain::VersionStatus;
use crate::outbox::Outbox;
use crate::registry::audit::{self, Interface};
use crate::registry::erasure;
use crate::registry::metadata::{self, Change, VersionRef};
use crate::registry::{self, Filter, RegistryError};
use crate::store;
use crate::telemetry::metrics::Metrics;

/// How long `DELETE /models/{user}` waits for a retrain of the user in flight.
const ERASE_WAIT: Duration = Duration::from_secs(10);

/// The scheduler's proof of life.
#[derive(Debug, Default)]
pub(crate) struct Heartbeat(AtomicU64);

impl Heartbeat {
    pub(crate) fn beat(&self) {
        self.0.store(now_ms(), Ordering::Relaxed);
    }
    /// Time since the last beat (`None` before the first).
    pub(crate) fn age(&self) -> Option<Duration> {
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
pub(crate) struct AppState {
    pub(crate) pool: PgPool,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) heartbeat: Arc<Heartbeat>,
    /// A heartbeat older than this fails liveness.
    pub(crate) stale_after: Duration,
    /// The admin token and the parameters imported models get.
    pub(crate) config: Arc<Config>,
}

/// The OpenAPI description of this API, served at `/openapi.json`.
pub(crate) const OPENAPI: &str = include_str!("../docs/openapi.json");

pub(crate) fn router(state: AppState) -> Router {
    // Registry writes: the token is checked first, before any extractor reads the request.
    let token = middleware::from_fn_with_state(state.clone(), require_token);
    let writes = Router::new()
        .route("/models/{user}/promote", post(promote))
        .route("/models/{user}/rollback", post(rollback))
        .route("/models/{user}/prune", post(prune))
        .route(
            "/models/{user}/aliases/{alias}",
            put(set_alias).delete(remove_alias),
        )
        // The body is read (up to REFIT_IMPORT_MAX_BYTES) by the handler, after the token check.
        .route("/models/{user}/import", post(import))
        .route_layer(token.clone());
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/models", get(list_models))
        // Paths with reads and writes: the token guards each write handler (a route layer would
        // also answer other methods, e.g. TRACE, with 401 instead of 405).
        .route(
            "/models/{user}",
            get(user_models)
                .patch(update_model.layer(token.clone()))
                .delete(erase.layer(token.clone())),
        )
        .route("/models/{user}/history", get(history))
        .route(
            "/models/{user}/versions/{version}",
            get(show_version).patch(update_version.layer(token.clone())),
        )
        .route(
            "/models/{user}/versions/{version}/artifact",
            get(export_version),
        )
        .merge(writes)
        .fallback(no_route)
        .layer(middleware::map_response(json_errors))
        .layer(middleware::from_fn(refuse_nul))
        .with_state(state)
}

/// `{"error": message}` with `status`.
fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

async fn no_route() -> Response {
    error(StatusCode::NOT_FOUND, "no such route")
}

/// PostgreSQL text cannot hold NUL, so no user, status or feature name can contain one: a request
/// that carries `%00` in its path or query is refused before it reaches the database.
async fn refuse_nul(request: Request, next: Next) -> Response {
    let target = request.uri().path_and_query().map_or("", |p| p.as_str());
    if target.to_ascii_lowercase().contains("%00") {
        return error(StatusCode::BAD_REQUEST, "NUL characters are not allowed");
    }
    next.run(request).await
}

/// Turns axum's plain-text refusals of a malformed path, query or body into the JSON error shape.
async fn json_errors(response: Response) -> Response {
    let plain_text = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/plain"));
    if !(response.status().is_client_error() && plain_text) {
        return response;
    }
    let status = response.status();
    let text = axum::body::to_bytes(response.into_body(), 64 << 10)
        .await
        .unwrap_or_default();
    error(status, String::from_utf8_lossy(&text).trim())
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// Serves until `shutdown`.
pub(crate) async fn serve(
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
        tokio::time::timeout(Duration::from_secs(3), store::check_migrated(&state.pool)).await;
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
        RegistryError::UnknownUser(_)
        | RegistryError::UnknownVersion { .. }
        | RegistryError::UnknownAlias { .. } => StatusCode::NOT_FOUND,
        RegistryError::NoArtifact { .. } | RegistryError::Conflict(_) => StatusCode::CONFLICT,
        RegistryError::InvalidModel(_) | RegistryError::Invalid(_) => StatusCode::BAD_REQUEST,
        RegistryError::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, &e.to_string())
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
    #[serde(default, deserialize_with = "crate::domain::deserialize_stored")]
    status: Option<VersionStatus>,
    since: Option<chrono::DateTime<chrono::Utc>>,
    limit: Option<i64>,
    /// `k=v`: only versions carrying this tag.
    tag: Option<String>,
    offset: Option<i64>,
}

async fn list_models(State(state): State<AppState>, Query(q): Query<ListQuery>) -> Response {
    let max = registry::MAX_LIST_LIMIT;
    if q.limit.is_some_and(|l| !(0..=max).contains(&l)) {
        let message = format!("limit must be from 0 to {max}; page with offset");
        return error(StatusCode::BAD_REQUEST, &message);
    }
    if q.offset.is_some_and(|o| o < 0) {
        return error(StatusCode::BAD_REQUEST, "offset must not be negative");
    }
    let tags = match q.tag.as_deref().map(metadata::parse_tag).transpose() {
        Ok(tag) => tag.into_iter().collect(),
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let filter = Filter {
        user: q.user,
        status: q.status.map(|s| s.stored().to_owned()),
        since: q.since,
        limit: q.limit,
        tags,
        offset: q.offset,
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
    let meta = match metadata::model_meta(&state.pool, &user).await {
        Ok(meta) => meta.unwrap_or_default(),
        Err(e) => return registry_error(e),
    };
    Json(json!({
        "user_id": user, "active_version": active, "description": meta.description,
        "tags": meta.tags, "aliases": meta.aliases, "versions": versions
    }))
    .into_response()
}

/// A version path segment: a number, an alias or `active`.
fn version_ref(segment: &str) -> Result<VersionRef, RegistryError> {
    segment.parse().map_err(RegistryError::Invalid)
}

async fn show_version(
    State(state): State<AppState>,
    Path((user, version)): Path<(String, String)>,
) -> Response {
    let shown = async { registry::show(&state.pool, &user, Some(&version_ref(&version)?)).await };
    reply(shown.await)
}

async fn export_version(
    State(state): State<AppState>,
    Path((user, version)): Path<(String, String)>,
) -> Response {
    let version = match version_ref(&version) {
        Ok(v) => v,
        Err(e) => return registry_error(e),
    };
    match registry::artifact(&state.pool, &user, Some(&version)).await {
        Ok((_, bytes)) => ([(header::CONTENT_TYPE, "application/ubjson")], bytes).into_response(),
        Err(e) => registry_error(e),
    }
}

/// Lets a registry write through only with the admin token (see [`refuse_unauthorized`]).
async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match refuse_unauthorized(&state, request.headers()) {
        Some(denied) => denied,
        None => next.run(request).await,
    }
}

/// Checks `Authorization: Bearer <token>` against REFIT_ADMIN_TOKEN in constant time; returns
/// the 401 answer when the request may not write.
fn refuse_unauthorized(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    let unauthorized = |message: &str| {
        let mut response = error(StatusCode::UNAUTHORIZED, message);
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        response
    };
    let Some(expected) = &state.config.http.admin_token else {
        return Some(unauthorized(
            "registry writes are disabled: REFIT_ADMIN_TOKEN is not set",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if tokens_match(given, expected.expose()) {
        None
    } else {
        Some(unauthorized("a valid bearer token is required"))
    }
}

/// Whether two tokens are equal, in time that depends on neither's content nor length: their
/// SHA-256 digests (always 32 bytes) are compared in constant time. (Comparing the tokens
/// themselves returns at once when the lengths differ, which tells the token's length.)
fn tokens_match(given: &str, expected: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let (given, expected) = (Sha256::digest(given), Sha256::digest(expected));
    bool::from(given.as_slice().ct_eq(expected.as_slice()))
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

/// A JSON integer as JSON Schema has it: `3` and `3.0` alike.
#[derive(Clone, Copy)]
struct Integer<T>(T);

impl<'de, T: TryFrom<i64>> serde::Deserialize<'de> for Integer<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let n = serde_json::Number::deserialize(deserializer)?;
        let integral = n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18)
                .map(|f| f as i64)
        });
        let value = integral.ok_or_else(|| D::Error::custom(format!("{n} is not an integer")))?;
        T::try_from(value)
            .map(Integer)
            .map_err(|_| D::Error::custom(format!("{n} is out of range")))
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct VersionBody {
    version: Option<Integer<i32>>,
}

async fn promote(
    State(state): State<AppState>,
    Path(user): Path<String>,
    Json(body): Json<VersionBody>,
) -> Response {
    let Some(Integer(version)) = body.version else {
        return error(StatusCode::BAD_REQUEST, "body must be {\"version\": N}");
    };
    let result = registry::activate(&state.pool, &user, version, "promote", Interface::Http).await;
    if result.is_ok() {
        deliver(&state, &user).await;
    }
    reply(result)
}

async fn rollback(
    State(state): State<AppState>,
    Path(user): Path<String>,
    body: Option<Json<VersionBody>>,
) -> Response {
    let to = body.and_then(|Json(b)| b.version).map(|Integer(v)| v);
    let result = registry::rollback(&state.pool, &user, to, Interface::Http).await;
    if result.is_ok() {
        deliver(&state, &user).await;
    }
    reply(result)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PruneBody {
    keep: Integer<i64>,
}

async fn prune(
    State(state): State<AppState>,
    Path(user): Path<String>,
    Json(PruneBody {
        keep: Integer(keep),
    }): Json<PruneBody>,
) -> Response {
    if keep < 1 {
        return error(StatusCode::BAD_REQUEST, "keep must be at least 1");
    }
    reply(
        registry::prune(&state.pool, Some(&user), keep, Interface::Http)
            .await
            .map(|deleted| json!({"deleted": deleted})),
    )
}

#[derive(serde::Deserialize)]
struct ImportQuery {
    features: Option<String>,
}

/// Reached only with the token (the body is not read before). A body larger than
/// REFIT_IMPORT_MAX_BYTES is refused with 413: at once when its declared length says so, else as
/// soon as that many bytes have arrived.
async fn import(
    State(state): State<AppState>,
    Path(user): Path<String>,
    Query(q): Query<ImportQuery>,
    request: Request,
) -> Response {
    let max = state.config.http.import_max_bytes;
    let too_large = || {
        let message = format!("the model file is larger than REFIT_IMPORT_MAX_BYTES ({max} bytes)");
        error(StatusCode::PAYLOAD_TOO_LARGE, &message)
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return too_large();
    }
    let body = match axum::body::to_bytes(request.into_body(), max).await {
        Ok(body) => body,
        Err(e) if e.to_string().contains("length limit") => return too_large(),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the body: {e}"),
            )
        }
    };
    let features = q
        .features
        .map(|f| f.split(',').map(|s| s.trim().to_owned()).collect());
    let result = registry::import(
        &state.pool,
        &user,
        body.to_vec(),
        features,
        &state.config.training.xgb_params,
        Interface::Http,
    )
    .await;
    if result.is_ok() {
        deliver(&state, &user).await;
    }
    reply(result)
}

/// A change of description and tags: `{"description": "...", "tags": {"k": "v"}, "untag": ["k"]}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    description: Option<String>,
    #[serde(default)]
    tags: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    untag: Vec<String>,
}

impl From<UpdateBody> for Change {
    fn from(b: UpdateBody) -> Self {
        Change {
            description: b.description,
            tags: b.tags,
            untag: b.untag,
        }
    }
}

async fn update_model(
    State(state): State<AppState>,
    Path(user): Path<String>,
    Json(body): Json<UpdateBody>,
) -> Response {
    let change = body.into();
    reply(metadata::update(&state.pool, &user, None, &change, Interface::Http).await)
}

async fn update_version(
    State(state): State<AppState>,
    Path((user, version)): Path<(String, String)>,
    Json(body): Json<UpdateBody>,
) -> Response {
    let change = body.into();
    let result = async {
        let version = registry::resolve(&state.pool, &user, Some(&version_ref(&version)?)).await?;
        metadata::update(&state.pool, &user, Some(version), &change, Interface::Http).await
    };
    reply(result.await)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AliasBody {
    version: Integer<i32>,
}

async fn set_alias(
    State(state): State<AppState>,
    Path((user, alias)): Path<(String, String)>,
    Json(AliasBody {
        version: Integer(version),
    }): Json<AliasBody>,
) -> Response {
    reply(metadata::set_alias(&state.pool, &user, &alias, version, Interface::Http).await)
}

async fn remove_alias(
    State(state): State<AppState>,
    Path((user, alias)): Path<(String, String)>,
) -> Response {
    reply(metadata::remove_alias(&state.pool, &user, &alias, Interface::Http).await)
}

async fn erase(State(state): State<AppState>, Path(user): Path<String>) -> Response {
    let result = erasure::erase(&state.pool, &user, Interface::Http, ERASE_WAIT).await;
    if result.is_ok() {
        deliver(&state, &user).await;
    }
    reply(result)
}

#[derive(serde::Deserialize)]
struct HistoryQuery {
    limit: Option<i64>,
}

async fn history(
    State(state): State<AppState>,
    Path(user): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(100);
    if limit < 0 {
        return error(StatusCode::BAD_REQUEST, "limit must not be negative");
    }
    reply(
        audit::history(&state.pool, &user, limit)
            .await
            .map_err(RegistryError::from),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_compared_by_fixed_length_digests() {
        assert!(tokens_match("s3cret-token", "s3cret-token"));
        assert!(!tokens_match("s3cret-token", "s3cret-tokem"));
        // Lengths differ: no early return on the length, the digests are compared.
        assert!(!tokens_match("", "s3cret-token"));
        assert!(!tokens_match("s3cret-token-and-more", "s3cret-token"));
    }
}
