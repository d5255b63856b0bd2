//! What the `refit` subcommands do beyond running the service: the model registry, the serving
//! reference and the demo. Output is a table for people or JSON (`--json`) for scripts.

pub mod args;
mod demo;
pub mod serving;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::cli::args::{Command, ModelsCommand};
use crate::config::Config;
use crate::outbox::events::{EventReader, Events};
use crate::outbox::Outbox;
use crate::registry::audit::{self, AuditEntry, Interface};
use crate::registry::erasure::{self, Erasure};
use crate::registry::metadata::{self, AliasChange, Change, Described, VersionRef};
use crate::registry::{self, Activation, Filter, VersionSummary};
use crate::telemetry::metrics::Metrics;
use crate::{scheduler, store};

/// How long `refit models delete` waits for a retrain of the user in flight.
const ERASE_WAIT: Duration = Duration::from_secs(30);

/// Prints `value` as JSON, or runs `table` for people.
fn emit<T: Serialize>(json: bool, value: &T, table: impl FnOnce(&T)) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        table(value);
    }
    Ok(())
}

fn print_versions(versions: &Vec<VersionSummary>) {
    println!(
        "{:<20} {:>7} {:<9} {:<6} {:>6} {:>5} {:>6} {:>6} {:<17} {:<8} {:>10} {:<20} {:<16} {:<24} ERROR",
        "USER",
        "VERSION",
        "STATUS",
        "ACTIVE",
        "PARENT",
        "ROWS",
        "ASIDE",
        "TREES",
        "SOURCE",
        "STEP",
        "LIVE_MAE",
        "CREATED",
        "ALIASES",
        "TAGS"
    );
    for v in versions {
        println!(
            "{:<20} {:>7} {:<9} {:<6} {:>6} {:>5} {:>6} {:>6} {:<17} {:<8} {:>10} {:<20} {:<16} {:<24} {}",
            v.user_id,
            v.version,
            v.status,
            if v.active { "*" } else { "" },
            v.parent_version.map_or("-".into(), |p| p.to_string()),
            v.rows_used,
            v.rows_set_aside,
            v.trees.map_or("-".into(), |t| t.to_string()),
            v.source,
            v.step.as_deref().unwrap_or("-"),
            v.live_mae.map_or("-".into(), |m| format!("{m:.3}")),
            v.created_at.format("%Y-%m-%d %H:%M:%S"),
            or_dash(v.aliases.join(",")),
            or_dash(tag_list(&v.tags)),
            v.error.as_deref().unwrap_or("")
        );
    }
}

/// `k=v,k=v`.
fn tag_list(tags: &std::collections::BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join(",")
}

fn or_dash(s: String) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

pub async fn list(pool: &PgPool, filter: &Filter, json: bool) -> anyhow::Result<()> {
    let versions = registry::list(pool, filter).await?;
    emit(json, &versions, print_versions)
}

pub async fn show(
    pool: &PgPool,
    user: &str,
    version: Option<&VersionRef>,
    json: bool,
) -> anyhow::Result<()> {
    let detail = registry::show(pool, user, version).await?;
    emit(json, &detail, |d| {
        let s = &d.summary;
        let c = &d.details;
        println!("user:            {}", s.user_id);
        println!(
            "version:         {}{}",
            s.version,
            if s.active { " (active)" } else { "" }
        );
        println!("status:          {}", s.status);
        println!(
            "parent:          {}",
            s.parent_version.map_or("-".into(), |p| p.to_string())
        );
        println!("source:          {}", s.source);
        println!("created:         {}", s.created_at.to_rfc3339());
        println!(
            "rows used:       {} (set aside {})",
            s.rows_used, s.rows_set_aside
        );
        println!(
            "trees:           {}",
            s.trees.map_or("-".into(), |t| t.to_string())
        );
        println!(
            "artifact bytes:  {}",
            c.artifact_bytes.map_or("-".into(), |b| b.to_string())
        );
        println!("features:        {}", c.features);
        println!("params:          {}", c.params);
        println!("timings (ms):    {}", c.timings_ms);
        println!("metrics:         {}", c.metrics);
        if let Some(error) = &s.error {
            println!("error:           {error}");
        }
        println!(
            "description:     {}",
            s.description.as_deref().unwrap_or("-")
        );
        println!("tags:            {}", or_dash(tag_list(&s.tags)));
        println!("system tags:     {}", or_dash(tag_list(&s.system_tags)));
        println!("aliases:         {}", or_dash(s.aliases.join(",")));
        let m = &d.model;
        println!(
            "model:           {}",
            m.description.as_deref().unwrap_or("-")
        );
        println!("model tags:      {}", or_dash(tag_list(&m.tags)));
        let aliases: Vec<String> = m.aliases.iter().map(|(a, v)| format!("{a}={v}")).collect();
        println!("user's aliases:  {}", or_dash(aliases.join(",")));
    })
}

pub async fn export(
    pool: &PgPool,
    user: &str,
    version: Option<&VersionRef>,
    out: &Path,
) -> anyhow::Result<()> {
    let (version, bytes) = registry::artifact(pool, user, version).await?;
    std::fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "exported version {version} of {user:?} ({} bytes, UBJSON) to {}",
        bytes.len(),
        out.display()
    );
    Ok(())
}

/// Carries out an activation's outbox entries now; the running service's sweep retries
/// anything that fails here.
async fn deliver(config: &Config, pool: &PgPool, user: &str) {
    let delivered = async {
        let cache = Arc::new(config.redis.cache()?);
        let events = Arc::new(Events::new(config)?);
        let outbox = Outbox::new(
            pool.clone(),
            cache,
            events.clone(),
            Arc::new(Metrics::new()),
            config.scheduling.outbox_retry_max,
            !config.retention.outbox_after.is_zero(),
        );
        let result = outbox.deliver_user(user).await?;
        events.flush(Duration::from_secs(10))?;
        anyhow::Ok(result)
    }
    .await;
    match delivered {
        Ok(d) if d.failed == 0 && !d.busy => {}
        Ok(_) => eprintln!("note: the cache invalidation or event is still pending; the running service will deliver it"),
        Err(e) => eprintln!("note: {e:#}; the running service will deliver the invalidation and event"),
    }
}

fn print_activation(a: &Activation) {
    println!(
        "{} {:?}: active version {} (was {}); cache invalidation and event {} recorded",
        a.action,
        a.user_id,
        a.active_version,
        a.previous_version.map_or("none".into(), |v| v.to_string()),
        a.event_id
    );
}

pub async fn activate(
    config: &Config,
    pool: &PgPool,
    user: &str,
    version: &VersionRef,
    json: bool,
) -> anyhow::Result<()> {
    let version = registry::resolve(pool, user, Some(version)).await?;
    let activation = registry::activate(pool, user, version, "promote", Interface::Cli).await?;
    deliver(config, pool, user).await;
    emit(json, &activation, print_activation)
}

/// The version number a named version (a number, an alias, `active`) stands for, if one is named.
async fn resolve_named(
    pool: &PgPool,
    user: &str,
    version: Option<&VersionRef>,
) -> anyhow::Result<Option<i32>> {
    Ok(match version {
        Some(v) => Some(registry::resolve(pool, user, Some(v)).await?),
        None => None,
    })
}

pub async fn rollback(
    config: &Config,
    pool: &PgPool,
    user: &str,
    to: Option<&VersionRef>,
    json: bool,
) -> anyhow::Result<()> {
    let to = resolve_named(pool, user, to).await?;
    let activation = registry::rollback(pool, user, to, Interface::Cli).await?;
    deliver(config, pool, user).await;
    emit(json, &activation, print_activation)
}

pub async fn import(
    config: &Config,
    pool: &PgPool,
    user: &str,
    file: &Path,
    features: Option<Vec<String>>,
    json: bool,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let activation = registry::import(
        pool,
        user,
        bytes,
        features,
        &config.training.xgb_params,
        Interface::Cli,
    )
    .await?;
    deliver(config, pool, user).await;
    emit(json, &activation, print_activation)
}

pub async fn prune(pool: &PgPool, user: Option<&str>, keep: i64, json: bool) -> anyhow::Result<()> {
    let deleted = registry::prune(pool, user, keep, Interface::Cli).await?;
    emit(
        json,
        &serde_json::json!({"deleted": deleted, "keep": keep}),
        |_| {
            println!("deleted {deleted} version(s), kept the newest {keep} per user and every active one")
        },
    )
}

/// `refit models update`: the description and tags of a version, or of the user's model.
pub async fn update(
    pool: &PgPool,
    user: &str,
    version: Option<&VersionRef>,
    change: &Change,
    json: bool,
) -> anyhow::Result<()> {
    let version = resolve_named(pool, user, version).await?;
    let described = metadata::update(pool, user, version, change, Interface::Cli).await?;
    emit(json, &described, |d: &Described| {
        let what = d
            .version
            .map_or("the model".into(), |v| format!("version {v}"));
        println!(
            "{:?}, {what}: description {}; tags {}",
            d.user_id,
            d.description.as_deref().unwrap_or("-"),
            or_dash(tag_list(&d.tags))
        )
    })
}

/// `refit models alias`: points an alias at a version, or removes it (`version` `None`).
pub async fn alias(
    pool: &PgPool,
    user: &str,
    name: &str,
    version: Option<&VersionRef>,
    json: bool,
) -> anyhow::Result<()> {
    let change = match version {
        Some(v) => {
            let version = registry::resolve(pool, user, Some(v)).await?;
            metadata::set_alias(pool, user, name, version, Interface::Cli).await?
        }
        None => metadata::remove_alias(pool, user, name, Interface::Cli).await?,
    };
    emit(json, &change, |c: &AliasChange| {
        let show = |v: Option<i32>| v.map_or("none".into(), |v| v.to_string());
        println!(
            "{:?}: alias {} -> {} (was {}); the active version is unchanged",
            c.user_id,
            c.alias,
            show(c.version),
            show(c.previous_version)
        )
    })
}

/// `refit models delete`: erases the user; `confirm` must repeat the user id.
pub async fn delete(
    config: &Config,
    pool: &PgPool,
    user: &str,
    confirm: &str,
    json: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        confirm == user,
        "refusing to delete: --confirm must repeat the user id ({user:?})"
    );
    let erasure = erasure::erase(pool, user, Interface::Cli, ERASE_WAIT).await?;
    deliver(config, pool, user).await;
    emit(json, &erasure, |e: &Erasure| {
        println!(
            "deleted {:?}: {} version(s), {} alias(es), {} pending and {} consumed actual(s); \
             cache invalidation, delete event and tombstone {} recorded",
            e.user_id,
            e.deleted.versions,
            e.deleted.aliases,
            e.deleted.pending,
            e.deleted.consumed,
            e.event_id
        )
    })
}

/// `refit models history`: the user's registry writes, newest first.
pub async fn history(pool: &PgPool, user: &str, limit: i64, json: bool) -> anyhow::Result<()> {
    let entries = audit::history(pool, user, limit).await?;
    emit(json, &entries, |entries: &Vec<AuditEntry>| {
        println!(
            "{:<25} {:<9} {:<8} {:<22} {:<30} NEW",
            "AT", "INTERFACE", "ACTION", "TARGET", "OLD"
        );
        let text = |v: &Option<serde_json::Value>| v.as_ref().map_or("-".into(), |v| v.to_string());
        for e in entries {
            println!(
                "{:<25} {:<9} {:<8} {:<22} {:<30} {}",
                e.at.format("%Y-%m-%d %H:%M:%S%.3f"),
                e.interface,
                e.action,
                e.target.to_string(),
                text(&e.old),
                text(&e.new)
            );
        }
    })
}

pub async fn predict(
    config: &Config,
    pool: &PgPool,
    user: &str,
    version: Option<&VersionRef>,
    features: &str,
    json: bool,
) -> anyhow::Result<()> {
    let cache = config.redis.cache()?;
    let version = match version {
        None | Some(VersionRef::Active) => None,
        Some(v) => Some(registry::resolve(pool, user, Some(v)).await?),
    };
    let prediction =
        serving::predict(pool, &cache, config.redis.ttl, user, version, features).await?;
    emit(json, &prediction, |p| {
        println!(
            "{} (user {:?}, version {}, cache {})",
            p.prediction, p.user_id, p.version, p.cache
        )
    })
}

/// `refit demo`: generated rentals through the real service, one line per event.
pub async fn demo(config: Config, stations: usize, rate: u32, seconds: u64) -> anyhow::Result<()> {
    demo::create_database(config.database.url.expose()).await?;
    let pool = store::connect(
        &config.database.url,
        &config.session,
        store::service_pool_size(2),
    )
    .await?;
    store::migrate(&pool).await?;
    let service = scheduler::Service::build(config.clone()).await?;
    service.ensure_topic().await?;
    println!(
        "refit demo: {stations} stations, {rate} actuals/s, retrain every {} actuals ({} rounds each, \
         a rebuild every {}); topic {} on {}",
        config.scheduling.retrain_threshold,
        config.policy.rounds,
        config.policy.rebuild_every,
        config.kafka.topic,
        config.kafka.brokers
    );
    let reader = EventReader::new(&config.kafka.brokers, &config.kafka.topic, false)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(demo::stop_after(seconds, shutdown.clone()));
    let generator = tokio::spawn(demo::generate(
        pool.clone(),
        stations,
        rate,
        shutdown.clone(),
    ));
    let printer_stop = shutdown.clone();
    let printer = tokio::task::spawn_blocking(move || demo::print_events(&reader, &printer_stop));
    service.run(shutdown).await?;
    let inserted = generator.await??;
    let seen = printer.await?;
    let pending = store::actuals::pending_total(&pool).await?;
    println!("refit demo: {inserted} actuals inserted, {seen} retrain events seen, {pending} actuals still pending");
    // The serving reference on the demo's data: a cache fill, then a hit.
    let station = "station-01";
    let features = r#"{"hour": 8, "weekday": 1, "holiday": 0, "temperature": 18.5, "humidity": 60, "windspeed": 7.5}"#;
    for _ in 0..2 {
        if let Err(e) = predict(&config, &pool, station, None, features, false).await {
            println!("predict: {e:#}");
        }
    }
    Ok(())
}

/// Runs a subcommand (`refit config --env-names` needs no configuration and never gets here).
pub async fn execute(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Migrate => migrate(&config).await,
        Command::Run => run_service(config).await,
        Command::Demo {
            stations,
            rate,
            seconds,
        } => demo(config, stations, rate, seconds).await,
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
            let pool = connect(&config).await?;
            predict(&config, &pool, &user, version.as_ref(), &features, json).await
        }
        Command::Models { command } => {
            let pool = connect(&config).await?;
            store::check_migrated(&pool).await?;
            models(&config, &pool, command).await
        }
    }
}

/// A one-connection pool, as the subcommands use.
async fn connect(config: &Config) -> anyhow::Result<PgPool> {
    store::connect(
        &config.database.url,
        &config.session,
        store::service_pool_size(1),
    )
    .await
}

/// `refit migrate`.
async fn migrate(config: &Config) -> anyhow::Result<()> {
    let pool = connect(config).await?;
    store::migrate(&pool).await?;
    tracing::info!(database = %config.database.url, "migrations applied");
    Ok(())
}

/// `refit run`: the service, until SIGTERM or SIGINT.
async fn run_service(config: Config) -> anyhow::Result<()> {
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

/// `refit models ...`.
async fn models(config: &Config, pool: &PgPool, command: ModelsCommand) -> anyhow::Result<()> {
    match command {
        ModelsCommand::List(a) => {
            let filter = Filter {
                user: a.user,
                status: a.status.map(|s| s.stored().to_owned()),
                since: a.since,
                limit: a.limit,
                tags: a.tags.into_iter().collect(),
                offset: None,
            };
            list(pool, &filter, a.json).await
        }
        ModelsCommand::Show(a) => show(pool, &a.user, a.version.as_ref(), a.json).await,
        ModelsCommand::Export(a) => export(pool, &a.user, a.version.as_ref(), &a.out).await,
        ModelsCommand::Import(a) => {
            import(config, pool, &a.user, &a.file, a.features, a.json).await
        }
        ModelsCommand::Promote(a) => activate(config, pool, &a.user, &a.version, a.json).await,
        ModelsCommand::Rollback(a) => rollback(config, pool, &a.user, a.to.as_ref(), a.json).await,
        ModelsCommand::Prune(a) => prune(pool, a.user.as_deref(), a.keep, a.json).await,
        ModelsCommand::Update(a) => {
            let change = Change {
                description: a.description,
                tags: a.tags.into_iter().collect(),
                untag: a.untag,
            };
            update(pool, &a.user, a.version.as_ref(), &change, a.json).await
        }
        ModelsCommand::Alias(a) => alias(pool, &a.user, &a.name, a.version.as_ref(), a.json).await,
        ModelsCommand::Delete(a) => delete(config, pool, &a.user, &a.confirm, a.json).await,
        ModelsCommand::History(a) => history(pool, &a.user, a.limit, a.json).await,
    }
}
