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

/// A model as the serving cache holds it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CachedModel {
    pub(crate) version: i32,
    pub(crate) features: Vec<String>,
    pub(crate) artifact: Vec<u8>,
}

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
    pub(crate) fn key(&self, user_id: &str) -> String {
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
    pub(crate) async fn invalidate(&self, user_id: &str) -> anyhow::Result<String> {
        let key = self.key(user_id);
        let mut conn = self.connection().await?;
        let _: i64 = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .context("Redis DEL failed")?;
        Ok(key)
    }

    /// `DEL` of several users' keys in one pipeline (one round trip); returns the keys.
    pub(crate) async fn invalidate_many(&self, user_ids: &[&str]) -> anyhow::Result<Vec<String>> {
        let keys: Vec<String> = user_ids.iter().map(|u| self.key(u)).collect();
        let mut conn = self.connection().await?;
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.cmd("DEL").arg(key).ignore();
        }
        pipe.query_async::<()>(&mut conn)
            .await
            .context("Redis DEL failed")?;
        Ok(keys)
    }

    /// The cached model entry of a user, if any: a hash of `version`, `features` (JSON) and
    /// `artifact` (UBJSON), the layout serving and `refit predict` share.
    pub(crate) async fn get_model(&self, user_id: &str) -> anyhow::Result<Option<CachedModel>> {
        let mut conn = self.connection().await?;
        let (version, features, artifact): (Option<i32>, Option<String>, Option<Vec<u8>>) =
            redis::cmd("HMGET")
                .arg(self.key(user_id))
                .arg("version")
                .arg("features")
                .arg("artifact")
                .query_async(&mut conn)
                .await?;
        Ok(match (version, features, artifact) {
            (Some(version), Some(features), Some(artifact)) => Some(CachedModel {
                version,
                features: serde_json::from_str(&features)?,
                artifact,
            }),
            _ => None,
        })
    }

    /// Stores a model entry with a TTL.
    pub(crate) async fn put_model(
        &self,
        user_id: &str,
        model: &CachedModel,
        ttl: Duration,
    ) -> anyhow::Result<()> {
        let mut conn = self.connection().await?;
        let key = self.key(user_id);
        redis::pipe()
            .atomic()
            .cmd("DEL")
            .arg(&key)
            .ignore()
            .cmd("HSET")
            .arg(&key)
            .arg("version")
            .arg(model.version)
            .arg("features")
            .arg(serde_json::to_string(&model.features)?)
            .arg("artifact")
            .arg(&model.artifact[..])
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(ttl.as_secs())
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }
}
