//! Logs: always to stdout (text or JSON), and to Grafana Loki when `LOKI_URL` is set.
//!
//! Loki gets low-cardinality labels only — `service`, `environment`, `level` — and every field
//! (user_id, retrain_id, step, durations) inside the JSON line. Shipping is refit's own
//! ([`loki`]): logging only offers the line to a bounded queue (`REFIT_LOKI_QUEUE_LINES`, and
//! 16 MiB), and a background task pushes it, each push with a deadline
//! (`REFIT_LOKI_TIMEOUT_SECS`). A slow, hung or unreachable Loki costs at most that queue and one
//! batch of memory; it never blocks or slows a retrain. [`Telemetry::shutdown`] pushes what is
//! queued before exit, waiting at most the push deadline.
//!
//! What Loki loses is counted: failed pushes in `refit_loki_send_errors_total`, lines not shipped
//! (refused by a full queue, given up after failed pushes, or left at shutdown) in
//! `refit_loki_dropped_lines_total`.

mod loki;
pub(crate) mod metrics;

use std::sync::LazyLock;

use anyhow::Context;
use prometheus::IntCounter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

use crate::config::{Config, LogFormat};

/// Keeps the Loki shipper alive; call [`Telemetry::shutdown`] before exit.
#[derive(Default)]
pub struct Telemetry {
    loki: Option<loki::Shipper>,
}

impl Telemetry {
    /// Pushes queued log lines to Loki, waiting at most `REFIT_LOKI_TIMEOUT_SECS`.
    pub async fn shutdown(self) {
        if let Some(shipper) = self.loki {
            shipper.shutdown().await;
        }
    }
}

/// Installs the global subscriber; must run inside a tokio runtime when Loki is configured.
/// `default_filter` applies when `RUST_LOG` is unset.
pub fn init(config: &Config, default_filter: &str) -> anyhow::Result<Telemetry> {
    let filter =
        || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let stdout = stdout_layer(config.telemetry.log_format).with_filter(filter());
    let mut telemetry = Telemetry::default();
    let loki = match &config.telemetry.loki_url {
        None => None,
        Some(url) => {
            let settings = loki::Settings {
                url: url.expose(),
                environment: &config.telemetry.environment,
                queue_lines: config.telemetry.loki_queue_lines,
                timeout: config.telemetry.loki_timeout,
            };
            let counters = loki::Counters {
                dropped_lines: loki_dropped_lines().clone(),
                send_errors: loki_send_errors().clone(),
            };
            let (layer, shipper) =
                loki::start(&settings, counters).context("cannot set up Loki shipping")?;
            telemetry.loki = Some(shipper);
            Some(layer.with_filter(filter()))
        }
    };
    let _ = tracing_subscriber::registry()
        .with(stdout)
        .with(loki)
        .try_init();
    Ok(telemetry)
}

static LOKI_DROPPED_LINES: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new(
        "refit_loki_dropped_lines_total",
        "Log lines not shipped to Loki: refused by its full queue, given up after failed pushes, or left at shutdown",
    )
    .expect("valid metric")
});

static LOKI_SEND_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new(
        "refit_loki_send_errors_total",
        "Failed pushes of log lines to Loki (timed out, refused or answered with an error)",
    )
    .expect("valid metric")
});

/// `refit_loki_dropped_lines_total`, for this process.
pub(crate) fn loki_dropped_lines() -> &'static IntCounter {
    &LOKI_DROPPED_LINES
}

/// `refit_loki_send_errors_total`, for this process.
pub(crate) fn loki_send_errors() -> &'static IntCounter {
    &LOKI_SEND_ERRORS
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
