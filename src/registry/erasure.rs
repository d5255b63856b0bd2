//! Deleting a user for good (data-protection erasure): the user's versions and artifacts,
//! aliases, pending and consumed bookkeeping, undelivered side effects and registry row go in one
//! transaction, which waits for a retrain of the user in flight (its registry row lock) up to a
//! limit and is refused after it. The same transaction leaves in the audit trail only a record,
//! keyed by the SHA-256 of the user id, that an erasure happened, and records in the outbox the
//! cache invalidation, a `model-retrained` event of action `delete` and a Kafka tombstone (null
//! value) for the user's key. Once delivered, those outbox entries are deleted rather than kept.
//!
//! The upstream tables (`prediction_requests`, `actual_rentals`) are not touched: actuals that
//! arrive later start a new model from scratch.

use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::RetrainEvent;
use crate::registry::audit::{self, Interface};
use crate::registry::RegistryError;
use crate::store;
use crate::store::outbox::OutboxKind;

/// The marker of an erasure's outbox entries: delivered, they are deleted.
pub(crate) const ERASE_MARK: &str = "erase";

/// What an erasure deleted.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default, sqlx::FromRow)]
pub struct Deleted {
    pub versions: i64,
    pub(crate) aliases: i64,
    pub(crate) pending: i64,
    pub(crate) consumed: i64,
}

/// An erasure, done.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Erasure {
    pub(crate) user_id: String,
    pub previous_version: Option<i32>,
    pub deleted: Deleted,
    pub(crate) event_id: Uuid,
}

/// Deletes everything refit holds about `user`; waits up to `wait` for a retrain in flight.
pub async fn erase(
    pool: &PgPool,
    user: &str,
    interface: Interface,
    wait: Duration,
) -> Result<Erasure, RegistryError> {
    let mut tx = pool.begin().await?;
    store::versions::set_lock_timeout(&mut tx, &format!("{}ms", wait.as_millis().max(1))).await?;
    let head = lock(&mut tx, user).await?;
    let deleted = store::erasure::delete_user_rows(&mut tx, user).await?;
    if head.is_none() && deleted == Deleted::default() {
        return Err(RegistryError::UnknownUser(user.into()));
    }
    let previous_version = head.flatten();
    audit::record_erasure(&mut tx, interface, user, &json!(deleted)).await?;
    let event_id = announce(&mut tx, user, previous_version).await?;
    tx.commit().await?;
    tracing::info!(user_id = user, ?deleted, "user erased");
    Ok(Erasure {
        user_id: user.into(),
        previous_version,
        deleted,
        event_id,
    })
}

/// Locks the user's registry row: `None` without one, else the active version.
async fn lock(conn: &mut PgConnection, user: &str) -> Result<Option<Option<i32>>, RegistryError> {
    match store::versions::lock_user(conn, user).await {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
            Err(RegistryError::Conflict(format!(
                "a retrain of user {user:?} is in flight; try again when it is done"
            )))
        }
        other => Ok(other?),
    }
}

/// Records the invalidation, the `delete` event and the tombstone in the outbox.
async fn announce(
    conn: &mut PgConnection,
    user: &str,
    previous_version: Option<i32>,
) -> sqlx::Result<Uuid> {
    let event = RetrainEvent::registry_change(user, "delete", previous_version, None, None);
    let announce = marked(json!(event));
    let invalidate = marked(json!({"retrain_id": event.retrain_id}));
    let tombstone = marked(json!({"tombstone": true}));
    store::outbox::enqueue_outbox(
        conn,
        event.event_id,
        user,
        &[
            (OutboxKind::Invalidate, &invalidate),
            (OutboxKind::Announce, &announce),
            (OutboxKind::Announce, &tombstone),
        ],
    )
    .await?;
    Ok(event.event_id)
}

/// An outbox payload marked as an erasure's.
fn marked(mut payload: Value) -> Value {
    payload[ERASE_MARK] = json!(true);
    payload
}
