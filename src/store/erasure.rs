//! An erasure's delete (src/registry/erasure.rs): the user's rows in every refit table but the
//! audit trail, in one statement.

use sqlx::PgConnection;

use super::query::query_as;
use crate::registry::erasure::Deleted;

/// Deletes the user's rows from every refit table but the audit trail; returns how many of each
/// kind went.
pub(crate) async fn delete_user_rows(conn: &mut PgConnection, user: &str) -> sqlx::Result<Deleted> {
    query_as(
        "WITH aliases AS (DELETE FROM refit_aliases WHERE user_id = $1 RETURNING 1),
              versions AS (DELETE FROM refit_model_versions WHERE user_id = $1 RETURNING 1),
              pending AS (DELETE FROM refit_pending WHERE user_id = $1 RETURNING 1),
              consumed AS (DELETE FROM refit_consumed_actuals WHERE user_id = $1 RETURNING 1),
              unconsumable AS (DELETE FROM refit_unconsumable_actuals WHERE user_id = $1),
              outbox AS (DELETE FROM refit_outbox WHERE user_id = $1),
              models AS (DELETE FROM refit_models WHERE user_id = $1)
         SELECT (SELECT count(*) FROM versions) AS versions,
                (SELECT count(*) FROM aliases) AS aliases,
                (SELECT count(*) FROM pending) AS pending,
                (SELECT count(*) FROM consumed) AS consumed",
    )
    .bind(user)
    .fetch_one(conn)
    .await
}
