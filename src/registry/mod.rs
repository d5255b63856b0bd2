//! The model registry: list, show, export, import, promote, rollback and prune versions, for the
//! CLI (`refit models …`) and the HTTP API (`/models…`).
//!
//! Every change of a user's active version (promote, rollback, import) takes the user's registry
//! row lock — so it waits for a retrain in flight — and records the cache invalidation and the
//! `model-retrained` event in the outbox in the same transaction, exactly as a retrain does.
//! Every write is recorded in the audit trail ([`crate::registry::audit`]) in its own transaction.

pub mod audit;
pub mod erasure;
pub mod metadata;
pub mod retention;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::{self, NewVersion, RetrainEvent, VersionColumns};
use crate::model::trainer;
use crate::store;
use crate::store::outbox::OutboxKind;
use crate::store::registry::{Activatable, StatusArtifact};
use audit::{Interface, Write};
use metadata::{ModelMeta, VersionRef};

/// Why a registry operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("user {0:?} has no model")]
    UnknownUser(String),
    #[error("user {user:?} has no version {version}")]
    UnknownVersion { user: String, version: i32 },
    #[error("user {user:?} has no alias {alias:?}")]
    UnknownAlias { user: String, alias: String },
    #[error("{0}")]
    Invalid(String),
    #[error("version {version} of user {user:?} has no artifact (status {status})")]
    NoArtifact {
        user: String,
        version: i32,
        status: String,
    },
    #[error("invalid model: {0}")]
    InvalidModel(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// One version in a listing.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct VersionSummary {
    pub(crate) user_id: String,
    pub(crate) version: i32,
    pub(crate) status: String,
    pub(crate) active: bool,
    pub(crate) parent_version: Option<i32>,
    pub(crate) rows_used: i32,
    pub(crate) rows_set_aside: i32,
    pub(crate) trees: Option<i32>,
    pub(crate) source: String,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) error: Option<String>,
    /// The serving version's mean absolute error on this version's batch, before training on it.
    pub(crate) live_mae: Option<f64>,
    /// The policy step that made the version: fresh, continue, rebuild or refresh.
    pub(crate) step: Option<String>,
    /// Set by people (`refit models update`).
    pub(crate) description: Option<String>,
    /// Set by people; keys never start with `refit.`.
    pub(crate) tags: BTreeMap<String, String>,
    /// Derived by refit: `refit.source`, `refit.step`, `refit.reason` (why it failed or was
    /// rejected).
    pub(crate) system_tags: BTreeMap<String, String>,
    /// The user's aliases pointing at this version.
    pub(crate) aliases: Vec<String>,
}

/// Everything about one version but its artifact.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct VersionDetail {
    #[serde(flatten)]
    pub(crate) summary: VersionSummary,
    #[serde(flatten)]
    pub(crate) details: store::registry::VersionDetails,
    /// The user's model as a whole: its description, tags and aliases.
    pub(crate) model: ModelMeta,
}

/// The most versions one HTTP listing returns, and the default: larger listings are paged.
pub(crate) const MAX_LIST_LIMIT: i64 = 1000;

/// Listing filters.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub user: Option<String>,
    pub status: Option<String>,
    pub since: Option<DateTime<Utc>>,
    /// [`MAX_LIST_LIMIT`] by default (the HTTP API allows no more).
    pub limit: Option<i64>,
    /// Only versions carrying all these tags (their own, their model's or refit's `refit.*`).
    pub tags: BTreeMap<String, String>,
    /// Versions skipped, for paging through a listing.
    pub offset: Option<i64>,
}

/// Versions matching `filter`, newest first.
pub(crate) async fn list(
    pool: &PgPool,
    filter: &Filter,
) -> Result<Vec<VersionSummary>, RegistryError> {
    let limit = filter.limit.unwrap_or(MAX_LIST_LIMIT);
    let offset = filter.offset.unwrap_or(0).max(0);
    Ok(store::registry::list(pool, filter, limit, offset).await?)
}

/// One version, or the active one when `version` is `None`.
pub(crate) async fn show(
    pool: &PgPool,
    user: &str,
    version: Option<&VersionRef>,
) -> Result<VersionDetail, RegistryError> {
    let version = resolve(pool, user, version).await?;
    let model = metadata::model_meta(pool, user)
        .await?
        .ok_or_else(|| RegistryError::UnknownUser(user.into()))?;
    let (summary, columns) = store::registry::show(pool, user, version)
        .await?
        .ok_or_else(|| RegistryError::UnknownVersion {
            user: user.into(),
            version,
        })?;
    Ok(VersionDetail {
        summary,
        details: columns,
        model,
    })
}

/// The version number `version` names (a number, an alias), or the active one.
pub(crate) async fn resolve(
    pool: &PgPool,
    user: &str,
    version: Option<&VersionRef>,
) -> Result<i32, RegistryError> {
    match version {
        Some(VersionRef::Number(v)) => return Ok(*v),
        Some(VersionRef::Alias(alias)) => return metadata::alias_target(pool, user, alias).await,
        Some(VersionRef::Active) | None => {}
    }
    match store::versions::active_version(pool, user).await? {
        None => Err(RegistryError::UnknownUser(user.into())),
        Some(None) => Err(RegistryError::Conflict(format!(
            "user {user:?} has no active version"
        ))),
        Some(Some(v)) => Ok(v),
    }
}

/// The UBJSON artifact of a version (the active one by default): what `xgb.Booster(model_file=…)`
/// loads.
pub(crate) async fn artifact(
    pool: &PgPool,
    user: &str,
    version: Option<&VersionRef>,
) -> Result<(i32, Vec<u8>), RegistryError> {
    let version = resolve(pool, user, version).await?;
    match store::registry::status_and_artifact(pool, user, version).await? {
        None => Err(RegistryError::UnknownVersion {
            user: user.into(),
            version,
        }),
        Some(StatusArtifact {
            status,
            artifact: None,
        }) => Err(RegistryError::NoArtifact {
            user: user.into(),
            version,
            status,
        }),
        Some(StatusArtifact {
            artifact: Some(bytes),
            ..
        }) => Ok((version, bytes)),
    }
}

/// What an activation changed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Activation {
    pub user_id: String,
    pub action: String,
    pub previous_version: Option<i32>,
    pub active_version: i32,
    pub event_id: Uuid,
}

impl Activation {
    /// The audit record of this change of the active version.
    fn audit(&self) -> Write<'_> {
        Write {
            user: &self.user_id,
            action: &self.action,
            target: json!({"version": self.active_version}),
            old: Some(json!({"active_version": self.previous_version})),
            new: Some(json!({"active_version": self.active_version})),
        }
    }
}

/// Makes `version` the user's active version (`action`: promote or rollback).
pub(crate) async fn activate(
    pool: &PgPool,
    user: &str,
    version: i32,
    action: &str,
    interface: Interface,
) -> Result<Activation, RegistryError> {
    let mut tx = pool.begin().await?;
    let previous = lock_user(&mut tx, user).await?;
    let activation = activate_locked(&mut tx, user, previous, version, action, interface).await?;
    tx.commit().await?;
    Ok(activation)
}

/// [`activate`] under the user's row lock, `previous` being the active version read under it.
async fn activate_locked(
    tx: &mut sqlx::PgConnection,
    user: &str,
    previous: Option<i32>,
    version: i32,
    action: &str,
    interface: Interface,
) -> Result<Activation, RegistryError> {
    let Activatable {
        status,
        has_artifact,
        trees,
    } = store::registry::activatable(tx, user, version)
        .await?
        .ok_or_else(|| RegistryError::UnknownVersion {
            user: user.into(),
            version,
        })?;
    if !has_artifact {
        return Err(RegistryError::NoArtifact {
            user: user.into(),
            version,
            status,
        });
    }
    if previous == Some(version) {
        return Err(RegistryError::Conflict(format!(
            "version {version} is already active"
        )));
    }
    store::registry::mark_ready(tx, user, version).await?;
    let activation = record_activation(tx, user, previous, version, trees, action).await?;
    audit::record(tx, interface, activation.audit()).await?;
    Ok(activation)
}

/// Moves the active version back: to `to`, or to the newest ready version older than the active
/// one — chosen under the user's row lock, so a change of the active version meanwhile (a
/// retrain, a promote) cannot make it a step forward.
pub async fn rollback(
    pool: &PgPool,
    user: &str,
    to: Option<i32>,
    interface: Interface,
) -> Result<Activation, RegistryError> {
    let mut tx = pool.begin().await?;
    let previous = lock_user(&mut tx, user).await?;
    let target = match (to, previous) {
        (Some(v), _) => v,
        (None, None) => {
            return Err(RegistryError::Conflict(format!(
                "user {user:?} has no active version"
            )))
        }
        (None, Some(active)) => store::registry::ready_before(&mut tx, user, active)
            .await?
            .ok_or_else(|| {
                RegistryError::Conflict(format!(
                    "user {user:?} has no ready version before {active}"
                ))
            })?,
    };
    let activation =
        activate_locked(&mut tx, user, previous, target, "rollback", interface).await?;
    tx.commit().await?;
    Ok(activation)
}

/// Stores a model file (UBJSON or JSON, from any XGBoost >= 1.0) as the user's next version and
/// activates it. Features come from the file, or from `features` (which must match its count).
pub async fn import(
    pool: &PgPool,
    user: &str,
    bytes: Vec<u8>,
    features: Option<Vec<String>>,
    default_params: &BTreeMap<String, String>,
    interface: Interface,
) -> Result<Activation, RegistryError> {
    check_user_id(user)?;
    let (info, bytes) = inspect_file(bytes).await?;
    let features = feature_names(features, &info)?;
    let mut params = default_params.clone();
    if let Some(objective) = &info.objective {
        params.insert("objective".into(), objective.clone());
    }
    store::versions::ensure_model_row(pool, user).await?;
    let mut tx = pool.begin().await?;
    let previous = lock_user(&mut tx, user).await?;
    let imported = Imported {
        bytes: &bytes,
        info: &info,
        params: &params,
        features: &features,
    };
    let version = insert_imported(&mut tx, user, previous, &imported).await?;
    let activation = record_activation(
        &mut tx,
        user,
        previous,
        version,
        Some(info.trees as i32),
        "import",
    )
    .await?;
    audit::record(&mut tx, interface, activation.audit()).await?;
    tx.commit().await?;
    Ok(activation)
}

/// Refuses a user id longer than the store takes.
fn check_user_id(user: &str) -> Result<(), RegistryError> {
    if user.len() > store::actuals::MAX_USER_ID_BYTES {
        return Err(RegistryError::Invalid(format!(
            "the user id is {} bytes; refit takes at most {}",
            user.len(),
            store::actuals::MAX_USER_ID_BYTES
        )));
    }
    Ok(())
}

/// Checks a model file and describes it; returns it as UBJSON whatever its format (a JSON file
/// is converted). Its structure is checked before XGBoost sees it: XGBoost trusts the files it
/// loads.
async fn inspect_file(bytes: Vec<u8>) -> Result<(trainer::ModelInfo, Vec<u8>), RegistryError> {
    tokio::task::spawn_blocking(move || {
        crate::model::check::check_model(&bytes).map_err(RegistryError::InvalidModel)?;
        trainer::inspect_as_ubjson(&bytes).map_err(|e| RegistryError::InvalidModel(e.to_string()))
    })
    .await
    .map_err(|e| RegistryError::InvalidModel(e.to_string()))?
}

/// The imported model's feature names: the given ones (as many as the model has), else the
/// file's own.
fn feature_names(
    given: Option<Vec<String>>,
    info: &trainer::ModelInfo,
) -> Result<Vec<String>, RegistryError> {
    match (given, info.features.is_empty()) {
        (Some(given), _) if given.len() as u64 != info.num_features => {
            Err(RegistryError::InvalidModel(format!(
                "the model has {} features but {} names were given",
                info.num_features,
                given.len()
            )))
        }
        (Some(given), _) => Ok(given),
        (None, false) => Ok(info.features.clone()),
        (None, true) => Err(RegistryError::InvalidModel(
            "the model file carries no feature names: pass them (--features a,b,c)".into(),
        )),
    }
}

/// An imported model, checked and converted.
struct Imported<'a> {
    bytes: &'a [u8],
    info: &'a trainer::ModelInfo,
    params: &'a BTreeMap<String, String>,
    features: &'a [String],
}

/// Inserts the imported model as the user's next version (the user is locked); returns its
/// number.
async fn insert_imported(
    conn: &mut sqlx::PgConnection,
    user: &str,
    previous: Option<i32>,
    model: &Imported<'_>,
) -> Result<i32, RegistryError> {
    let version = store::registry::next_version(conn, user).await?;
    let columns = VersionColumns {
        params: json!(model.params),
        features: json!(model.features),
        timings: json!({}),
        metrics: json!({}),
    };
    let imported = domain::Imported {
        bytes: model.bytes,
        trees: model.info.trees,
        boosted_rounds: model.info.boosted_rounds,
    };
    store::versions::insert_version(
        conn,
        &NewVersion::imported(user, version, previous, imported, &columns),
    )
    .await?;
    Ok(version)
}

/// Deletes all but the newest `keep` versions (of `user`, or of every user); the active version
/// and versions an alias points at are never deleted. Each user whose versions were deleted gets
/// an audit record of them. Returns how many were deleted.
pub(crate) async fn prune(
    pool: &PgPool,
    user: Option<&str>,
    keep: i64,
    interface: Interface,
) -> Result<u64, RegistryError> {
    if keep < 1 {
        return Err(RegistryError::Invalid("--keep must be at least 1".into()));
    }
    let deleted = store::registry::prune(pool, user, keep, interface.as_str()).await?;
    Ok(deleted as u64)
}

/// Locks the user's registry row (waiting for a retrain in flight); returns the active version.
async fn lock_user(
    conn: &mut sqlx::PgConnection,
    user: &str,
) -> Result<Option<i32>, RegistryError> {
    store::versions::lock_user(conn, user)
        .await?
        .ok_or_else(|| RegistryError::UnknownUser(user.into()))
}

/// Activates `version` and records the invalidation and the event in the outbox.
async fn record_activation(
    conn: &mut sqlx::PgConnection,
    user: &str,
    previous: Option<i32>,
    version: i32,
    trees: Option<i32>,
    action: &str,
) -> Result<Activation, RegistryError> {
    store::versions::activate(conn, user, version).await?;
    let event =
        RetrainEvent::registry_change(user, action, previous, Some(version), trees.map(i64::from));
    let event_id = event.event_id;
    let invalidate = json!({"retrain_id": event.retrain_id});
    let announce = json!(event);
    store::outbox::enqueue_outbox(
        conn,
        event_id,
        user,
        &[
            (OutboxKind::Invalidate, &invalidate),
            (OutboxKind::Announce, &announce),
        ],
    )
    .await?;
    tracing::info!(
        user_id = user,
        action,
        previous_version = previous,
        active_version = version,
        "active version changed"
    );
    Ok(Activation {
        user_id: user.into(),
        action: action.into(),
        previous_version: previous,
        active_version: version,
        event_id,
    })
}
