//! The HTTP server: what Kubernetes probes and Prometheus scrape.
//!
//! - `GET /healthz` — liveness: 200 while the scheduler loop turns (heartbeat younger than
//!   `max(10 × poll interval, 30 s)`), 503 otherwise.
//! - `GET /readyz` — readiness: 200 when PostgreSQL answers and is migrated, 503 otherwise; Redis
//!   and Kafka are reported (their outages only delay the outbox, so they do not gate readiness).
//! - `GET /metrics` — Prometheus text exposition.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::db;
use crate::metrics::Metrics;
use crate::outbox::Outbox;

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
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
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
