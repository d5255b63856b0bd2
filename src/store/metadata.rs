//! The statements of what people say about models (src/registry/metadata.rs): descriptions and
//! tags of a user's model and of its versions, and aliases (`refit_aliases`).

use std::collections::BTreeMap;

use serde_json::Value;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};

use super::query::{query, query_as, query_scalar};

/// A description and tags as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Described {
    pub(crate) description: Option<String>,
    pub(crate) tags: Json<BTreeMap<String, String>>,
}

/// The description and tags of the user's model (`version` `None`) or of one version, the row
/// locked; `None` when there is no such row.
pub(crate) async fn lock_described(
    conn: &mut PgConnection,
    user: &str,
    version: Option<i32>,
) -> sqlx::Result<Option<Described>> {
    match version {
        None => {
            query_as("SELECT description, tags FROM refit_models WHERE user_id = $1 FOR UPDATE")
                .bind(user)
                .fetch_optional(conn)
                .await
        }
        Some(v) => {
            query_as(
                "SELECT description, tags FROM refit_model_versions
                  WHERE user_id = $1 AND version = $2 FOR UPDATE",
            )
            .bind(user)
            .bind(v)
            .fetch_optional(conn)
            .await
        }
    }
}

/// Stores the description and tags of the user's model (`version` `None`) or of one version.
pub(crate) async fn describe(
    conn: &mut PgConnection,
    user: &str,
    version: Option<i32>,
    description: Option<&str>,
    tags: &BTreeMap<String, String>,
) -> sqlx::Result<()> {
    let tags = Json(tags);
    match version {
        None => {
            query(
                "UPDATE refit_models SET description = $2, tags = $3, updated_at = now()
                  WHERE user_id = $1",
            )
            .bind(user)
            .bind(description)
            .bind(tags)
            .execute(conn)
            .await?
        }
        Some(v) => {
            query(
                "UPDATE refit_model_versions SET description = $3, tags = $4
                  WHERE user_id = $1 AND version = $2",
            )
            .bind(user)
            .bind(v)
            .bind(description)
            .bind(tags)
            .execute(conn)
            .await?
        }
    };
    Ok(())
}

/// What an alias needs of the version it points at.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct AliasTarget {
    pub(crate) status: String,
    pub(crate) has_artifact: bool,
}

/// The version's status and whether it has an artifact, the row share-locked so it cannot go
/// while an alias is set to it (`None`: no such version).
pub(crate) async fn lock_alias_target(
    conn: &mut PgConnection,
    user: &str,
    version: i32,
) -> sqlx::Result<Option<AliasTarget>> {
    query_as(
        "SELECT status, artifact IS NOT NULL AS has_artifact FROM refit_model_versions
          WHERE user_id = $1 AND version = $2 FOR KEY SHARE",
    )
    .bind(user)
    .bind(version)
    .fetch_optional(conn)
    .await
}

/// Points `alias` at `version`, creating or moving it; returns the version it pointed at before.
pub(crate) async fn set_alias(
    conn: &mut PgConnection,
    user: &str,
    alias: &str,
    version: i32,
) -> sqlx::Result<Option<i32>> {
    let previous: Option<i32> = query_scalar(
        "SELECT version FROM refit_aliases WHERE user_id = $1 AND alias = $2 FOR UPDATE",
    )
    .bind(user)
    .bind(alias)
    .fetch_optional(&mut *conn)
    .await?;
    query(
        "INSERT INTO refit_aliases (user_id, alias, version) VALUES ($1, $2, $3)
         ON CONFLICT (user_id, alias) DO UPDATE SET version = EXCLUDED.version, updated_at = now()",
    )
    .bind(user)
    .bind(alias)
    .bind(version)
    .execute(conn)
    .await?;
    Ok(previous)
}

/// Removes `alias`; returns the version it pointed at (`None`: there was no such alias).
pub(crate) async fn remove_alias(
    conn: &mut PgConnection,
    user: &str,
    alias: &str,
) -> sqlx::Result<Option<i32>> {
    query_scalar("DELETE FROM refit_aliases WHERE user_id = $1 AND alias = $2 RETURNING version")
        .bind(user)
        .bind(alias)
        .fetch_optional(conn)
        .await
}

/// The version an alias points at.
pub(crate) async fn alias_target(
    pool: &PgPool,
    user: &str,
    alias: &str,
) -> sqlx::Result<Option<i32>> {
    query_scalar("SELECT version FROM refit_aliases WHERE user_id = $1 AND alias = $2")
        .bind(user)
        .bind(alias)
        .fetch_optional(pool)
        .await
}

/// The description, tags and aliases (alias → version) of the user's model.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct ModelColumns {
    pub(crate) description: Option<String>,
    pub(crate) tags: Value,
    pub(crate) aliases: Value,
}

/// The user's model metadata (`None`: no such user).
pub(crate) async fn model_meta(pool: &PgPool, user: &str) -> sqlx::Result<Option<ModelColumns>> {
    query_as(
        "SELECT m.description, m.tags,
                coalesce((SELECT jsonb_object_agg(a.alias, a.version) FROM refit_aliases a
                           WHERE a.user_id = m.user_id), '{}') AS aliases
           FROM refit_models m WHERE m.user_id = $1",
    )
    .bind(user)
    .fetch_optional(pool)
    .await
}
