//! What people say about models: descriptions and key/value tags on versions and on a user's
//! model as a whole, and aliases — named pointers to versions (`champion`, `candidate`,
//! `last-good`). Tags whose keys start with `refit.` are refit's own (derived from the version:
//! its source, policy step, rejection reason) and cannot be set by people. An alias never changes
//! what serving reads: only the active version does.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::Serialize;
use serde_json::json;
use sqlx::{PgConnection, PgPool};

use crate::registry::audit::{self, Interface, Write};
use crate::registry::RegistryError;
use crate::store;
use crate::store::metadata::AliasTarget;

/// The prefix of refit's own tags.
pub(crate) const SYSTEM_PREFIX: &str = "refit.";
const MAX_TAG_KEY: usize = 128;
const MAX_TAG_VALUE: usize = 256;
const MAX_TAGS: usize = 64;
const MAX_DESCRIPTION: usize = 4096;

/// A version as people name it: a number, `active`, or an alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionRef {
    Number(i32),
    Active,
    Alias(String),
}

impl FromStr for VersionRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "active" {
            return Ok(VersionRef::Active);
        }
        if let Ok(number) = s.parse() {
            return Ok(VersionRef::Number(number));
        }
        let numeric = s.trim_start_matches(['-', '+']);
        if !numeric.is_empty() && numeric.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("version {s} is out of range"));
        }
        check_alias(s).map(|()| VersionRef::Alias(s.to_owned()))
    }
}

/// Alias names: lower-case letters, digits, `-` and `_`, starting with a letter (so never a
/// version number), at most 63 characters; `active` is the serving pointer, not an alias.
pub(crate) fn check_alias(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let well_formed = name.len() <= 63
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    match (well_formed, name) {
        (_, "active") => Err("`active` is the serving version, not an alias".into()),
        (true, _) => Ok(()),
        (false, _) => Err(format!(
            "{name:?} is neither a version number nor an alias name \
             (lower-case letters, digits, - and _, starting with a letter)"
        )),
    }
}

/// A change of description and tags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// The new description; `Some("")` removes it, `None` keeps it.
    pub description: Option<String>,
    /// Tags to set (added or overwritten).
    pub tags: BTreeMap<String, String>,
    /// Tag keys to remove.
    pub untag: Vec<String>,
}

impl Change {
    /// Refuses reserved or malformed keys, over-long values and a change that changes nothing.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.description.is_none() && self.tags.is_empty() && self.untag.is_empty() {
            return Err(
                "nothing to change: give a description, tags to set or tags to remove".into(),
            );
        }
        let texts = self.description.iter().chain(self.tags.values());
        if texts.chain(self.tags.keys()).any(|t| t.contains('\0')) {
            return Err("descriptions and tags cannot contain NUL characters".into());
        }
        if self
            .description
            .as_ref()
            .is_some_and(|d| d.chars().count() > MAX_DESCRIPTION)
        {
            return Err(format!(
                "the description is longer than {MAX_DESCRIPTION} characters"
            ));
        }
        for key in self.tags.keys().chain(&self.untag) {
            check_tag_key(key)?;
        }
        match self
            .tags
            .iter()
            .find(|(_, v)| v.chars().count() > MAX_TAG_VALUE)
        {
            Some((k, _)) => Err(format!(
                "the value of tag {k:?} is longer than {MAX_TAG_VALUE} characters"
            )),
            None => Ok(()),
        }
    }
}

fn check_tag_key(key: &str) -> Result<(), String> {
    if key.starts_with(SYSTEM_PREFIX) {
        return Err(format!(
            "tag keys starting with {SYSTEM_PREFIX:?} are refit's own: {key:?}"
        ));
    }
    let well_formed = !key.is_empty()
        && key.len() <= MAX_TAG_KEY
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':'));
    if well_formed {
        Ok(())
    } else {
        Err(format!(
            "tag key {key:?} must be 1 to {MAX_TAG_KEY} letters, digits, '.', '_', '-', '/' or ':'"
        ))
    }
}

/// Parses `k=v` (the CLI's `--tag` and the listing filter).
pub fn parse_tag(s: &str) -> Result<(String, String), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not key=value"))?;
    Ok((key.trim().to_owned(), value.to_owned()))
}

/// The description and tags of a version or of a user's model, after an update.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Described {
    pub(crate) user_id: String,
    /// `None` for the model as a whole.
    pub(crate) version: Option<i32>,
    pub(crate) description: Option<String>,
    pub(crate) tags: BTreeMap<String, String>,
}

/// Applies `change` to version `version` of the user (or, with `None`, to the user's model as a
/// whole) and records it in the audit trail.
pub(crate) async fn update(
    pool: &PgPool,
    user: &str,
    version: Option<i32>,
    change: &Change,
    interface: Interface,
) -> Result<Described, RegistryError> {
    change.check().map_err(RegistryError::Invalid)?;
    let mut tx = pool.begin().await?;
    let (description, tags) = current(&mut tx, user, version).await?;
    let old = json!({"description": description, "tags": tags});
    let description = match change.description.as_deref() {
        None => description,
        Some("") => None,
        Some(d) => Some(d.to_owned()),
    };
    let mut tags = tags;
    for key in &change.untag {
        tags.remove(key);
    }
    tags.extend(change.tags.clone());
    if tags.len() > MAX_TAGS {
        return Err(RegistryError::Invalid(format!("more than {MAX_TAGS} tags")));
    }
    store::metadata::describe(&mut tx, user, version, description.as_deref(), &tags).await?;
    let new = json!({"description": description, "tags": tags});
    let target = version.map_or(json!({}), |v| json!({"version": v}));
    let write = Write {
        user,
        action: "update",
        target,
        old: Some(old),
        new: Some(new),
    };
    audit::record(&mut tx, interface, write).await?;
    tx.commit().await?;
    Ok(Described {
        user_id: user.into(),
        version,
        description,
        tags,
    })
}

/// The description and tags as stored, the row locked.
async fn current(
    conn: &mut PgConnection,
    user: &str,
    version: Option<i32>,
) -> Result<(Option<String>, BTreeMap<String, String>), RegistryError> {
    let row = store::metadata::lock_described(conn, user, version).await?;
    let not_found = || match version {
        None => RegistryError::UnknownUser(user.into()),
        Some(version) => RegistryError::UnknownVersion {
            user: user.into(),
            version,
        },
    };
    row.map(|r| (r.description, r.tags.0)).ok_or_else(not_found)
}

/// An alias after a change: the version it points at now (`None`: removed) and before.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct AliasChange {
    pub(crate) user_id: String,
    pub(crate) alias: String,
    pub(crate) version: Option<i32>,
    pub(crate) previous_version: Option<i32>,
}

/// Points `alias` at `version` (which must have an artifact), creating or moving it; serving is
/// not touched.
pub(crate) async fn set_alias(
    pool: &PgPool,
    user: &str,
    alias: &str,
    version: i32,
    interface: Interface,
) -> Result<AliasChange, RegistryError> {
    check_alias(alias).map_err(RegistryError::Invalid)?;
    let mut tx = pool.begin().await?;
    match store::metadata::lock_alias_target(&mut tx, user, version).await? {
        None => {
            return Err(RegistryError::UnknownVersion {
                user: user.into(),
                version,
            })
        }
        Some(AliasTarget {
            status,
            has_artifact: false,
        }) => {
            return Err(RegistryError::NoArtifact {
                user: user.into(),
                version,
                status,
            })
        }
        Some(_) => {}
    }
    let previous = store::metadata::set_alias(&mut tx, user, alias, version).await?;
    finish_alias(tx, interface, user, alias, previous, Some(version)).await
}

/// Removes `alias`.
pub(crate) async fn remove_alias(
    pool: &PgPool,
    user: &str,
    alias: &str,
    interface: Interface,
) -> Result<AliasChange, RegistryError> {
    check_alias(alias).map_err(RegistryError::Invalid)?;
    let mut tx = pool.begin().await?;
    let previous = store::metadata::remove_alias(&mut tx, user, alias).await?;
    if previous.is_none() {
        return Err(RegistryError::UnknownAlias {
            user: user.into(),
            alias: alias.into(),
        });
    }
    finish_alias(tx, interface, user, alias, previous, None).await
}

async fn finish_alias(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    interface: Interface,
    user: &str,
    alias: &str,
    previous: Option<i32>,
    version: Option<i32>,
) -> Result<AliasChange, RegistryError> {
    let write = Write {
        user,
        action: "alias",
        target: json!({"alias": alias}),
        old: Some(json!({"version": previous})),
        new: Some(json!({"version": version})),
    };
    audit::record(&mut tx, interface, write).await?;
    tx.commit().await?;
    Ok(AliasChange {
        user_id: user.into(),
        alias: alias.into(),
        version,
        previous_version: previous,
    })
}

/// The version an alias points at.
pub(crate) async fn alias_target(
    pool: &PgPool,
    user: &str,
    alias: &str,
) -> Result<i32, RegistryError> {
    store::metadata::alias_target(pool, user, alias)
        .await?
        .ok_or_else(|| RegistryError::UnknownAlias {
            user: user.into(),
            alias: alias.into(),
        })
}

/// What is said about a user's model as a whole: its description, tags and aliases.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub(crate) struct ModelMeta {
    pub(crate) description: Option<String>,
    pub(crate) tags: BTreeMap<String, String>,
    pub(crate) aliases: BTreeMap<String, i32>,
}

/// The user's model metadata (`None`: no such user).
pub(crate) async fn model_meta(
    pool: &PgPool,
    user: &str,
) -> Result<Option<ModelMeta>, RegistryError> {
    let row = store::metadata::model_meta(pool, user).await?;
    Ok(row.map(|r| ModelMeta {
        description: r.description,
        tags: serde_json::from_value(r.tags).unwrap_or_default(),
        aliases: serde_json::from_value(r.aliases).unwrap_or_default(),
    }))
}
