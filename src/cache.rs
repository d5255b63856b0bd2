//! The serving cache in Redis: refit only ever deletes `<prefix><user_id>` (default
//! `model:<user_id>`), strictly after the version it points past has committed.
//!
//! Redis keys are binary-safe, so any user id (spaces, colons, newlines, non-ASCII) is a safe key.
//! The connection is made on first use and re-made after failures, so Redis being down at start-up
//! or for a while only delays invalidations (the outbox retries them).

use std::time::Duration;

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Mutex;

use crate::config::Secret;

/// Deletes serving-cache keys.
pub struct Cache {
    client: redis::Client,
    /// Made lazily: `None` until the first successful connection.
    connection: Mutex<Option<ConnectionManager>>,
    prefix: String,
}

impl Cache {
    pub fn new(url: &Secret, prefix: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url.expose())
            .with_context(|| format!("REDIS_URL {url} is not a valid Redis URL"))?;
        Ok(Cache {
            client,
            connection: Mutex::new(None),
            prefix: prefix.to_owned(),
        })
    }

    /// The cache key serving uses for this user's model.
    pub fn key(&self, user_id: &str) -> String {
        format!("{}{}", self.prefix, user_id)
    }

    async fn connection(&self) -> anyhow::Result<ConnectionManager> {
        let mut slot = self.connection.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(Duration::from_secs(2))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_with_config(self.client.clone(), config)
            .await
            .context("cannot connect to Redis")?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// `DEL <prefix><user_id>`; returns the key. Whether the key existed does not matter.
    pub async fn invalidate(&self, user_id: &str) -> anyhow::Result<String> {
        let key = self.key(user_id);
        let mut conn = self.connection().await?;
        let _: i64 = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .context("Redis DEL failed")?;
        Ok(key)
    }

    /// `PING`, for readiness reporting.
    pub async fn ping(&self) -> anyhow::Result<()> {
        let mut conn = self.connection().await?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }
}
