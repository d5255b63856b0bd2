//! The `refit` binary: command-line wiring only.

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use refit::config::{Config, VARIABLES};
use refit::registry::metadata::{self, Change, VersionRef};
use refit::registry::Filter;
use refit::{cli, scheduler, store, telemetry};
use tokio_util::sync::CancellationToken;

/// Keeps per-user XGBoost models fresh: actuals in PostgreSQL → continued training → Redis
/// invalidation → Kafka event. Settings come from environment variables (see `refit config`).
#[derive(Parser)]
#[command(name = "refit", version, about)]
struct Cli {
    /// Optional TOML file with settings (environment variables override it); also REFIT_CONFIG.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
enum ModelsCommand {
    /// List versions, newest first.
    List {
        #[arg(long)]
        user: Option<String>,
        /// ready, rejected or failed.
        #[arg(long)]
        status: Option<String>,
        /// Only versions created at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<DateTime<Utc>>,
        #[arg(long)]
        limit: Option<i64>,
        /// Only versions tagged k=v (repeatable; `refit.*` are refit's own tags).
        #[arg(long = "tag", value_name = "K=V", value_parser = metadata::parse_tag)]
        tags: Vec<(String, String)>,
        #[arg(long)]
        json: bool,
    },
    /// Show one version (the active one by default): metadata, metrics, params, features, error.
    Show {
        #[arg(long)]
        user: String,
        /// A version number, an alias or `active` (the default).
        #[arg(long)]
        version: Option<VersionRef>,
        #[arg(long)]
        json: bool,
    },
    /// Write a version's artifact (UBJSON, loadable by Python xgboost) to a file.
    Export {
        #[arg(long)]
        user: String,
        /// A version number, an alias or `active` (the default).
        #[arg(long)]
        version: Option<VersionRef>,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Make a model file the user's next, active version (checked loadable first).
    Import {
        #[arg(long)]
        user: String,
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// Feature names, comma separated, when the file carries none.
        #[arg(long, value_delimiter = ',')]
        features: Option<Vec<String>>,
        #[arg(long)]
        json: bool,
    },
    /// Make a version active; invalidates the cache and announces it.
    Promote {
        #[arg(long)]
        user: String,
        /// A version number or an alias.
        #[arg(long)]
        version: VersionRef,
        #[arg(long)]
        json: bool,
    },
    /// Move the active version back (default: the newest ready version before it).
    Rollback {
        #[arg(long)]
        user: String,
        /// A version number or an alias.
        #[arg(long)]
        to: Option<VersionRef>,
        #[arg(long)]
        json: bool,
    },
    /// Delete all but the newest N versions per user; never the active one.
    Prune {
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        keep: i64,
        #[arg(long)]
        json: bool,
    },
    /// Set the description and tags of a version, or of the user's model without --version.
    Update {
        #[arg(long)]
        user: String,
        /// A version number, an alias or `active` (default: the user's model as a whole).
        #[arg(long)]
        version: Option<VersionRef>,
        /// The new description ('' removes it).
        #[arg(long)]
        description: Option<String>,
        /// Set a tag (repeatable); keys starting with `refit.` are reserved.
        #[arg(long = "tag", value_name = "K=V", value_parser = metadata::parse_tag)]
        tags: Vec<(String, String)>,
        /// Remove a tag (repeatable).
        #[arg(long = "untag", value_name = "K")]
        untag: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Point an alias (champion, candidate, ...) at a version, or remove it; serving is unchanged.
    Alias {
        #[arg(long)]
        user: String,
        /// The alias: lower-case letters, digits, - and _, starting with a letter.
        #[arg(long)]
        name: String,
        /// The version (a number or another alias) to point at.
        #[arg(long, required_unless_present = "delete", conflicts_with = "delete")]
        version: Option<VersionRef>,
        /// Remove the alias.
        #[arg(long)]
        delete: bool,
        #[arg(long)]
        json: bool,
    },
    /// Delete everything refit holds about a user (versions, artifacts, bookkeeping), for good.
    Delete {
        #[arg(long)]
        user: String,
        /// The user id again, to confirm.
        #[arg(long)]
        confirm: String,
        #[arg(long)]
        json: bool,
    },
    /// The user's registry writes (the audit trail), newest first.
    History {
        #[arg(long)]
        user: String,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Config { env_names: true } = cli.command {
        for (name, _) in VARIABLES {
            println!("{name}");
        }
        return ExitCode::SUCCESS;
    }
    let config = match Config::from_env(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("refit: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let default_filter = match cli.command {
        Command::Run | Command::Migrate => "info,sqlx=warn",
        _ => "warn",
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        let telemetry = telemetry::init(&config, default_filter)?;
        let result = execute(cli.command, config).await;
        if let Err(e) = &result {
            tracing::error!(error = format!("{e:#}"), "refit failed");
        }
        telemetry.shutdown().await;
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("refit: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Migrate => {
            let pool = store::connect(
                &config.database.url,
                &config.session,
                store::service_pool_size(1),
            )
            .await?;
            store::migrate(&pool).await?;
            tracing::info!(database = %config.database.url, "migrations applied");
            Ok(())
        }
        Command::Run => {
            let service = scheduler::Service::build(config).await?;
            let shutdown = CancellationToken::new();
            let trigger = shutdown.clone();
            tokio::spawn(async move {
                if let Err(e) = scheduler::shutdown_signal().await {
                    tracing::error!(error = %e, "signal handling failed");
                }
                trigger.cancel();
            });
            service.run(shutdown).await
        }
        Command::Demo {
            stations,
            rate,
            seconds,
        } => cli::demo(config, stations, rate, seconds).await,
        Command::Config { .. } => {
            for (name, value) in config.describe() {
                println!("{name}={value}");
            }
            Ok(())
        }
        Command::Predict {
            user,
            version,
            features,
            json,
        } => {
            let pool = store::connect(
                &config.database.url,
                &config.session,
                store::service_pool_size(1),
            )
            .await?;
            cli::predict(&config, &pool, &user, version.as_ref(), &features, json).await
        }
        Command::Models { command } => {
            let pool = store::connect(
                &config.database.url,
                &config.session,
                store::service_pool_size(1),
            )
            .await?;
            store::check_migrated(&pool).await?;
            models(&config, &pool, command).await
        }
    }
}

async fn models(
    config: &Config,
    pool: &sqlx::PgPool,
    command: ModelsCommand,
) -> anyhow::Result<()> {
    match command {
        ModelsCommand::List {
            user,
            status,
            since,
            limit,
            tags,
            json,
        } => {
            cli::list(
                pool,
                &Filter {
                    user,
                    status,
                    since,
                    limit,
                    tags: tags.into_iter().collect(),
                    offset: None,
                },
                json,
            )
            .await
        }
        ModelsCommand::Show {
            user,
            version,
            json,
        } => cli::show(pool, &user, version.as_ref(), json).await,
        ModelsCommand::Export { user, version, out } => {
            cli::export(pool, &user, version.as_ref(), &out).await
        }
        ModelsCommand::Import {
            user,
            file,
            features,
            json,
        } => cli::import(config, pool, &user, &file, features, json).await,
        ModelsCommand::Promote {
            user,
            version,
            json,
        } => cli::activate(config, pool, &user, &version, json).await,
        ModelsCommand::Rollback { user, to, json } => {
            cli::rollback(config, pool, &user, to.as_ref(), json).await
        }
        ModelsCommand::Prune { user, keep, json } => {
            cli::prune(pool, user.as_deref(), keep, json).await
        }
        ModelsCommand::Update {
            user,
            version,
            description,
            tags,
            untag,
            json,
        } => {
            let change = Change {
                description,
                tags: tags.into_iter().collect(),
                untag,
            };
            cli::update(pool, &user, version.as_ref(), &change, json).await
        }
        ModelsCommand::Alias {
            user,
            name,
            version,
            delete: _,
            json,
        } => cli::alias(pool, &user, &name, version.as_ref(), json).await,
        ModelsCommand::Delete {
            user,
            confirm,
            json,
        } => cli::delete(config, pool, &user, &confirm, json).await,
        ModelsCommand::History { user, limit, json } => {
            cli::history(pool, &user, limit, json).await
        }
    }
}
