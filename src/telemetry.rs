//! Logs: always to stdout (text or JSON), and to Grafana Loki when `LOKI_URL` is set.
//!
//! Loki gets low-cardinality labels only — `service`, `environment`, `level` — and every field
//! (user_id, retrain_id, step, durations) inside the JSON line. Shipping runs in a background task
//! behind a bounded queue: a slow or unreachable Loki drops log lines there, it never blocks or
//! slows a retrain. [`Telemetry::shutdown`] flushes what is queued before exit.

use std::time::Duration;

use anyhow::Context;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

use crate::config::{Config, LogFormat};

/// Keeps the Loki shipper alive; call [`Telemetry::shutdown`] before exit.
#[derive(Default)]
pub struct Telemetry {
    loki: Option<(
        tracing_loki::BackgroundTaskController,
        tokio::task::JoinHandle<()>,
    )>,
}

impl Telemetry {
    /// Flushes queued log lines to Loki (bounded wait).
    pub async fn shutdown(self) {
        if let Some((controller, task)) = self.loki {
            controller.shutdown().await;
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

/// Installs the global subscriber; must run inside a tokio runtime when Loki is configured.
/// `default_filter` applies when `RUST_LOG` is unset.
pub fn init(config: &Config, default_filter: &str) -> anyhow::Result<Telemetry> {
    let filter =
        || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let stdout = stdout_layer(config.log_format).with_filter(filter());
    let mut telemetry = Telemetry::default();
    let loki = match &config.loki_url {
        None => None,
        Some(url) => {
            let url = url::Url::parse(url.expose()).context("LOKI_URL is not a valid URL")?;
            let (layer, controller, task) = tracing_loki::builder()
                .label("service", "refit")?
                .label("environment", &config.environment)?
                .extra_field("pid", std::process::id().to_string())?
                .build_controller_url(url)
                .context("cannot set up Loki shipping")?;
            telemetry.loki = Some((controller, tokio::spawn(task)));
            Some(layer.with_filter(filter()))
        }
    };
    let _ = tracing_subscriber::registry()
        .with(stdout)
        .with(loki)
        .try_init();
    Ok(telemetry)
}

/// Stdout logging only (tests and commands that need no Loki).
pub fn init_stdout(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let _ = tracing_subscriber::registry()
        .with(stdout_layer(format).with_filter(filter))
        .try_init();
}

fn stdout_layer<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    match format {
        LogFormat::Text => fmt::layer().with_target(false).boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .boxed(),
    }
}
