//! The serving reference (`refit predict`): reads a user's model the way a serving system should,
//! through the Redis cache `model:<user>`, so the invalidation protocol can be seen end to end.
//!
//! On a miss it loads the active version from PostgreSQL, fills the cache (with a TTL), and then
//! re-reads the active version: if a retrain committed in between, its `DEL` may have run before
//! this fill, so the fill is deleted again and the read retried. This closes the classic
//! "stale refill" race that a plain read-through cache has.
//!
//! A named version (a number or an alias) is read from PostgreSQL, bypassing the cache, which
//! holds only the active version.

use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;
use sqlx::PgPool;

use crate::model::trainer;
use crate::outbox::cache::{Cache, CachedModel};
use crate::retrain::features::{self, ActualRow};
use crate::store;

/// One prediction and where its model came from.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Prediction {
    pub(crate) user_id: String,
    pub(crate) version: i32,
    pub(crate) prediction: f32,
    /// `hit` when the model came from the cache, `miss` when it was loaded and cached, `bypass`
    /// for a named version (read from PostgreSQL, the cache left alone).
    pub(crate) cache: &'static str,
}

/// Predicts for one feature object (JSON text) with the user's model: the active one, read
/// through the cache, or `version`.
pub async fn predict(
    pool: &PgPool,
    cache: &Cache,
    ttl: Duration,
    user: &str,
    version: Option<i32>,
    features_json: &str,
) -> anyhow::Result<Prediction> {
    let (model, source) = match version {
        None => load(pool, cache, ttl, user).await?,
        Some(v) => (version_model(pool, user, v).await?, "bypass"),
    };
    let row = ActualRow {
        actual_id: 0,
        actual_value: 0.0,
        features: features_json.to_owned(),
    };
    let batch = features::prepare(&[row], Some(&model.features));
    if let Some(aside) = batch.set_aside.first() {
        bail!(
            "cannot use these features: {} ({})",
            aside.reason,
            aside.detail
        );
    }
    let artifact = model.artifact;
    let values = tokio::task::spawn_blocking(move || trainer::predict(&artifact, &batch)).await??;
    Ok(Prediction {
        user_id: user.to_owned(),
        version: model.version,
        prediction: values[0],
        cache: source,
    })
}

async fn load(
    pool: &PgPool,
    cache: &Cache,
    ttl: Duration,
    user: &str,
) -> anyhow::Result<(CachedModel, &'static str)> {
    if let Some(model) = cache.get_model(user).await? {
        return Ok((model, "hit"));
    }
    for _ in 0..3 {
        let model = active_model(pool, user).await?;
        cache.put_model(user, &model, ttl).await?;
        match active_version(pool, user).await {
            Ok(active) if active == Some(model.version) => return Ok((model, "miss")),
            // A retrain committed while we filled: our entry may be stale.
            Ok(_) => cache.invalidate(user).await.map(drop)?,
            // Unconfirmed: the entry may be stale, and nothing else would ever delete it.
            Err(e) => {
                let error = anyhow::Error::new(e)
                    .context("cannot confirm the active version after filling the cache");
                return Err(match cache.invalidate(user).await {
                    Ok(_) => error,
                    Err(evict) => error.context(format!("entry not evicted either: {evict:#}")),
                });
            }
        }
    }
    bail!("the active version of {user:?} keeps changing; try again")
}

async fn active_version(pool: &PgPool, user: &str) -> sqlx::Result<Option<i32>> {
    Ok(store::versions::active_version(pool, user).await?.flatten())
}

/// One version's model, from PostgreSQL.
async fn version_model(pool: &PgPool, user: &str, version: i32) -> anyhow::Result<CachedModel> {
    let model = store::versions::version_model(pool, user, version)
        .await?
        .with_context(|| format!("user {user:?} has no version {version}"))?;
    cached(model)
}

async fn active_model(pool: &PgPool, user: &str) -> anyhow::Result<CachedModel> {
    let model = store::versions::active_model(pool, user)
        .await?
        .with_context(|| format!("user {user:?} has no active model"))?;
    cached(model)
}

fn cached(model: store::versions::ServedModel) -> anyhow::Result<CachedModel> {
    let version = model.version;
    Ok(CachedModel {
        version,
        features: serde_json::from_value(model.features)?,
        artifact: model
            .artifact
            .with_context(|| format!("version {version} has no artifact"))?,
    })
}
