//! The `refit` binary: command-line wiring only.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use refit::config::{Config, VARIABLES};
use refit::{db, demo, events, service, telemetry};
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
    /// Print the effective configuration (secrets redacted).
    Config {
        /// Only list the environment variables refit reads, one per line.
        #[arg(long)]
        env_names: bool,
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
        Command::Demo { .. } => "warn",
        _ => "info,sqlx=warn",
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
            let pool = db::connect(&config.database_url, 1).await?;
            db::migrate(&pool).await?;
            tracing::info!(database = %config.database_url, "migrations applied");
            Ok(())
        }
        Command::Run => {
            let service = service::Service::build(config).await?;
            let shutdown = CancellationToken::new();
            let trigger = shutdown.clone();
            tokio::spawn(async move {
                if let Err(e) = service::shutdown_signal().await {
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
        } => run_demo(config, stations, rate, seconds).await,
        Command::Config { .. } => {
            for (name, value) in config.describe() {
                println!("{name}={value}");
            }
            Ok(())
        }
    }
}

async fn run_demo(config: Config, stations: usize, rate: u32, seconds: u64) -> anyhow::Result<()> {
    demo::create_database(config.database_url.expose()).await?;
    let pool = db::connect(&config.database_url, 2).await?;
    db::migrate(&pool).await?;
    let service = service::Service::build(config.clone()).await?;
    service.events.ensure_topic().await?;
    println!(
        "refit demo: {stations} stations, {rate} actuals/s, retrain every {} actuals, {} rounds each; topic {} on {}",
        config.retrain_threshold, config.rounds_per_retrain, config.topic, config.kafka_brokers
    );
    let reader = events::EventReader::new(&config.kafka_brokers, &config.topic, false)?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let timer = async {
            if seconds == 0 {
                std::future::pending::<()>().await
            } else {
                tokio::time::sleep(Duration::from_secs(seconds)).await
            }
        };
        tokio::select! { _ = service::shutdown_signal() => {}, _ = timer => {} }
        stop.cancel();
    });
    let generator = tokio::spawn(demo::generate(
        pool.clone(),
        stations,
        rate,
        shutdown.clone(),
    ));
    let printer_stop = shutdown.clone();
    let printer = tokio::task::spawn_blocking(move || {
        let mut seen = 0u64;
        while !printer_stop.is_cancelled() {
            match reader.next(Duration::from_millis(200)) {
                Ok(Some(e)) => {
                    seen += 1;
                    println!("{}", demo::describe_event(&e));
                }
                Ok(None) => {}
                Err(err) => eprintln!("reading events: {err:#}"),
            }
        }
        // Events published during shutdown.
        while let Ok(Some(e)) = reader.next(Duration::from_millis(1500)) {
            seen += 1;
            println!("{}", demo::describe_event(&e));
        }
        seen
    });
    service.run(shutdown).await?;
    let inserted = generator.await??;
    let seen = printer.await?;
    let pending = db::pending_total(&pool).await?;
    println!("refit demo: {inserted} actuals inserted, {seen} retrain events seen, {pending} actuals still pending");
    Ok(())
}
