//! The `refit` binary: command-line wiring only; the subcommands are in `refit::cli`.

use std::process::ExitCode;

use clap::Parser;
use refit::cli::{
    self,
    args::{Cli, Command},
};
use refit::config::{Config, VARIABLES};
use refit::telemetry;

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
        let result = cli::execute(cli.command, config).await;
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
