//! `refit demo`'s writes: generated rows in the upstream's tables (`prediction_requests`,
//! `actual_rentals`, which refit otherwise only reads) and the demo's database.

use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::query::{query, query_scalar};

/// Inserts a prediction request and its actual, each in its own transaction as upstream does;
/// returns the actual's id.
pub(crate) async fn insert_rental(
    pool: &PgPool,
    user_id: &str,
    features: &Value,
    actual: f64,
) -> sqlx::Result<i64> {
    let request_id = Uuid::new_v4();
    query("INSERT INTO prediction_requests (request_id, user_id, features) VALUES ($1, $2, $3)")
        .bind(request_id)
        .bind(user_id)
        .bind(features)
        .execute(pool)
        .await?;
    query_scalar(
        "INSERT INTO actual_rentals (request_id, actual_value) VALUES ($1, $2) RETURNING id",
    )
    .bind(request_id)
    .bind(actual)
    .fetch_one(pool)
    .await
}

/// Creates the database `name` unless it exists (`conn`: a session on another database).
pub(crate) async fn create_database(conn: &mut PgConnection, name: &str) -> sqlx::Result<()> {
    let exists: bool = query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        super::query::create_database(conn, name).await?;
    }
    Ok(())
}
