//! Logs: always to stdout (text or JSON), and to Grafana Loki when `LOKI_URL` is set.
//!
//! Loki gets low-cardinality labels only — `service`, `environment`, `level` — and every field
//! (user_id, retrain_id, step, durations) inside the JSON line. Shipping runs in a background task
//! behind a bounded queue: a slow or unreachable Loki drops log lines there, it never blocks or
//! slows a retrain. [`Telemetry::shutdown`] flushes what is queued before exit.
//!
//! What Loki loses is counted: tracing-loki reports each failed push (`couldn't send logs to
//! loki`) and, once pushes have failed for about 30 s, the lines it gives up on (`num_dropped`);
//! [`LokiLosses`] turns those reports into `refit_loki_send_errors_total` and
//! `refit_loki_dropped_lines_total`. (Lines refused because its 512-line hand-off queue is full are
//! not reported by tracing-loki, so they are not counted.)

use std::sync::LazyLock;
use std::time::Duration;

use anyhow::Context;
use prometheus::IntCounter;
use tracing::field::{Field, Visit};
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
    let losses = telemetry.loki.is_some().then_some(LokiLosses);
    let _ = tracing_subscriber::registry()
        .with(stdout)
        .with(loki)
        .with(losses)
        .try_init();
    Ok(telemetry)
}

static LOKI_DROPPED_LINES: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new(
        "refit_loki_dropped_lines_total",
        "Log lines dropped instead of shipped to Loki after pushes kept failing",
    )
    .expect("valid metric")
});

static LOKI_SEND_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new(
        "refit_loki_send_errors_total",
        "Failed pushes of log lines to Loki (each is retried with back-off)",
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

/// Counts what tracing-loki reports losing (see the module docs).
struct LokiLosses;

impl<S: tracing::Subscriber> Layer<S> for LokiLosses {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if !event.metadata().target().starts_with("tracing_loki") {
            return;
        }
        let mut report = LossReport::default();
        event.record(&mut report);
        if let Some(n) = report.num_dropped {
            loki_dropped_lines().inc_by(n);
        } else if report.error_count {
            loki_send_errors().inc();
        }
    }
}

/// The fields of a tracing-loki report that tell a loss.
#[derive(Default)]
struct LossReport {
    num_dropped: Option<u64>,
    error_count: bool,
}

impl Visit for LossReport {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record_i64(field, value.try_into().unwrap_or(i64::MAX));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        match field.name() {
            "num_dropped" => self.num_dropped = Some(value.max(0) as u64),
            "error_count" => self.error_count = true,
            _ => {}
        }
    }
    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracing_lokis_reports_of_losses_are_counted() {
        let subscriber = tracing_subscriber::registry().with(LokiLosses);
        let (dropped, errors) = (loki_dropped_lines().get(), loki_send_errors().get());
        tracing::subscriber::with_default(subscriber, || {
            // What tracing-loki logs (its target is its crate name).
            tracing::error!(target: "tracing_loki", error_count = 3u32, error = "refused", "couldn't send logs to loki");
            tracing::error!(target: "tracing_loki", num_dropped = 7usize, "dropped outstanding messages due to sending errors");
            // Anything else is not a loss.
            tracing::error!(num_dropped = 100usize, error_count = 1u32, "unrelated");
        });
        assert_eq!(loki_dropped_lines().get(), dropped + 7);
        assert_eq!(loki_send_errors().get(), errors + 1);
    }
}
