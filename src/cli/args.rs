//! The command line: subcommands and their arguments.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};

use crate::domain::VersionStatus;
use crate::registry::metadata::{self, VersionRef};

/// Keeps per-user XGBoost models fresh: actuals in PostgreSQL → continued training → Redis
/// invalidation → Kafka event. Settings come from environment variables (see `refit config`).
#[derive(Parser)]
#[command(name = "refit", version, about)]
pub struct Cli {
    /// Optional TOML file with settings (environment variables override it); also REFIT_CONFIG.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Apply the database migrations (idempotent).
    Migrate,
    /// Run the service until SIGTERM or SIGINT.
    Run,
    /// Run the service on generated rental data and print every retrain as its event arrives.
    Demo {
        /// Stations (users) generating data.
        #[arg(long, default_value_t = 4)]
        stations: usize,
        /// Actuals inserted per second, over all stations.
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// Stop after this many seconds (0 = until Ctrl-C).
        #[arg(long, default_value_t = 0)]
        seconds: u64,
    },
    /// The model registry: versions, artifacts, the active version.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Predict with a user's active model, read through the Redis cache as serving does (or with
    /// a version or alias, read from PostgreSQL).
    Predict {
        #[arg(long)]
        user: String,
        /// A version number or an alias (default: the active version, through the cache).
        #[arg(long)]
        version: Option<VersionRef>,
        /// A JSON object of features, e.g. '{"hour": 8, "temperature": 18.5}'.
        #[arg(long)]
        features: String,
        #[arg(long)]
        json: bool,
    },
    /// Print the effective configuration (secrets redacted).
    Config {
        /// Only list the environment variables refit reads, one per line.
        #[arg(long)]
        env_names: bool,
    },
}

#[derive(Subcommand)]
pub enum ModelsCommand {
    /// List versions, newest first.
    List(ListArgs),
    /// Show one version (the active one by default): metadata, metrics, params, features, error.
    Show(ShowArgs),
    /// Write a version's artifact (UBJSON, loadable by Python xgboost) to a file.
    Export(ExportArgs),
    /// Make a model file the user's next, active version (checked loadable first).
    Import(ImportArgs),
    /// Make a version active; invalidates the cache and announces it.
    Promote(PromoteArgs),
    /// Move the active version back (default: the newest ready version before it).
    Rollback(RollbackArgs),
    /// Delete all but the newest N versions per user; never the active one.
    Prune(PruneArgs),
    /// Set the description and tags of a version, or of the user's model without --version.
    Update(UpdateArgs),
    /// Point an alias (champion, candidate, ...) at a version, or remove it; serving is unchanged.
    Alias(AliasArgs),
    /// Delete everything refit holds about a user (versions, artifacts, bookkeeping), for good.
    Delete(DeleteArgs),
    /// The user's registry writes (the audit trail), newest first.
    History(HistoryArgs),
}

// The arguments of each `refit models` subcommand. No doc comments on these structs: clap
// would show one as the subcommand's help.

#[derive(Args)]
pub struct ListArgs {
    #[arg(long)]
    pub(crate) user: Option<String>,
    /// ready, rejected or failed.
    #[arg(long, value_parser = stored_status)]
    pub(crate) status: Option<VersionStatus>,
    /// Only versions created at or after this time (RFC 3339).
    #[arg(long)]
    pub(crate) since: Option<DateTime<Utc>>,
    #[arg(long)]
    pub(crate) limit: Option<i64>,
    /// Only versions tagged k=v (repeatable; `refit.*` are refit's own tags).
    #[arg(long = "tag", value_name = "K=V", value_parser = metadata::parse_tag)]
    pub(crate) tags: Vec<(String, String)>,
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub struct ShowArgs {
    #[arg(long)]
    pub(crate) user: String,
    /// A version number, an alias or `active` (the default).
    #[arg(long)]
    pub(crate) version: Option<VersionRef>,
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub struct ExportArgs {
    #[arg(long)]
    pub(crate) user: String,
    /// A version number, an alias or `active` (the default).
    #[arg(long)]
    pub(crate) version: Option<VersionRef>,
    #[arg(long, value_name = "FILE")]
    pub(crate) out: PathBuf,
}

#[derive(Args)]
pub struct ImportArgs {
    #[arg(long)]
    pub(crate) user: String,
    #[arg(long, value_name = "FILE")]
    pub(crate) file: PathBuf,
    /// Feature names, comma separated, when the file carries none.
    #[arg(long, value_delimiter = ',')]
    pub(crate) features: Option<Vec<String>>,
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub struct PromoteArgs {
    #[arg(long)]
    pub(crate) user: String,
    /// A version number or an alias.
    #[arg(long)]
    pub(crate) version: VersionRef,
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub struct RollbackArgs {
    #[arg(long)]
    pub(crate) user: String,
    /// A version number or an alias.
    #[arg(long)]
    pub(crate) to: Option<VersionRef>,
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub struct PruneArgs {
    #[arg(long)]
    pub(crate) user: Option<String>,
    #[arg(long)]
    pub(crate) keep: i64,
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub struct UpdateArgs {
    #[arg(long)]
    pub(crate) user: String,
    /// A version number, an alias or `active` (default: the user's model as a whole).
    #[arg(long)]
    pub(crate) version: Option<VersionRef>,
    /// The new description ('' removes it).
    #[arg(long)]
    pub(crate) description: Option<String>,
    /// Set a tag (repeatable); keys starting with `refit.` are reserved.
    #[arg(long = "tag", value_name = "K=V", value_parser = metadata::parse_tag)]
    pub(crate) tags: Vec<(String, String)>,
    /// Remove a tag (repeatable).
    #[arg(long = "untag", value_name = "K")]
    pub(crate) untag: Vec<String>,
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub struct AliasArgs {
    #[arg(long)]
    pub(crate) user: String,
    /// The alias: lower-case letters, digits, - and _, starting with a letter.
    #[arg(long)]
    pub(crate) name: String,
    /// The version (a number or another alias) to point at.
    #[arg(long, required_unless_present = "delete", conflicts_with = "delete")]
    pub(crate) version: Option<VersionRef>,
    /// Remove the alias.
    #[arg(long)]
    pub(crate) delete: bool,
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub struct DeleteArgs {
    #[arg(long)]
    pub(crate) user: String,
    /// The user id again, to confirm.
    #[arg(long)]
    pub(crate) confirm: String,
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub struct HistoryArgs {
    #[arg(long)]
    pub(crate) user: String,
    #[arg(long, default_value_t = 100)]
    pub(crate) limit: i64,
    #[arg(long)]
    pub(crate) json: bool,
}

/// `--status`, in the registry's spelling.
fn stored_status(text: &str) -> Result<VersionStatus, String> {
    VersionStatus::from_stored(text)
        .ok_or_else(|| format!("unknown status {text:?}: ready, rejected or failed"))
}
