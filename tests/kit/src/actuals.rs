//! Inserting what refit trains on: a prediction request (the upstream's log of what it was asked)
//! and its actual, plus the deterministic rental-like rows the suites use.

use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// Inserts a prediction request of `user` whose `features` is the JSON text `features` (which may
/// hold what serde_json cannot, e.g. `1e400`), then its actual `actual`; returns the actual's id.
/// `conn` is a connection (each statement commits on its own) or a transaction (`&mut tx`).
pub async fn insert_request_and_actual(
    conn: &mut PgConnection,
    user: &str,
    features: &str,
    actual: f64,
) -> Result<i64, sqlx::Error> {
    let request_id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO prediction_requests (request_id, user_id, features) VALUES ($1, $2, $3::jsonb)",
    )
    .bind(request_id)
    .bind(user)
    .bind(features)
    .execute(&mut *conn)
    .await?;
    sqlx::query_scalar(
        "INSERT INTO actual_rentals (request_id, actual_value) VALUES ($1, $2) RETURNING id",
    )
    .bind(request_id)
    .bind(actual)
    .fetch_one(conn)
    .await
}

/// [`insert_request_and_actual`] on a connection of `pool`, with the features as JSON, then
/// [`ingest_all`]; panics on a database error.
pub async fn insert_actual(pool: &PgPool, user: &str, features: &Value, actual: f64) -> i64 {
    let mut conn = pool.acquire().await.unwrap();
    let id = insert_request_and_actual(&mut conn, user, &features.to_string(), actual)
        .await
        .unwrap();
    ingest_all(pool).await;
    id
}

/// Queues every actual committed so far, as the ingest of a running refit does (for tests that
/// retrain without running the service): waits while another ingest holds the cursor.
pub async fn ingest_all(pool: &PgPool) {
    while refit::scheduler::ingest::ingest(pool)
        .await
        .unwrap()
        .is_none()
    {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// Deterministic rental-like features; every 7th row lacks `temperature` (missing → NaN).
pub fn rental_features(i: usize) -> Value {
    let hour = (i * 5 % 24) as f64;
    let mut f =
        json!({"hour": hour, "weekday": (i / 3 % 7) as f64, "humidity": (40 + i * 13 % 50) as f64});
    if i % 7 != 3 {
        f["temperature"] = json!(8.0 + (i * 7 % 23) as f64 * 0.9);
    }
    f
}

/// The actual that goes with [`rental_features`]`(i)`.
pub fn rental_actual(i: usize) -> f64 {
    let hour = (i * 5 % 24) as f64;
    (20.0 + 30.0 * (-((hour - 8.0) * (hour - 8.0)) / 6.0).exp() + (i * 7 % 23) as f64).round()
}
