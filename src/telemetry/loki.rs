//! Refit's own Loki shipper: a tracing layer that turns each event into one JSON line and offers
//! it to a bounded queue, and a background task that pushes the queue to Loki in batches.
//!
//! Nothing here waits on Loki while logging: the layer only formats the line and `try_send`s it;
//! a full queue drops the line. The task pushes one batch at a time (Loki's push API, protobuf +
//! snappy), each push with a deadline; a failed push is retried with a capped back-off and given
//! up after a few attempts. Every line that is not shipped is counted in
//! `refit_loki_dropped_lines_total`, every failed push in `refit_loki_send_errors_total`.

mod layer;
mod push;
mod queue;

use std::time::{Duration, SystemTime};

use anyhow::Context;
use prometheus::IntCounter;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Level;

pub(crate) use layer::LokiLayer;

/// The target of the shipper's own events: logged to stdout, never shipped (a push failing
/// would otherwise queue lines about itself).
const SHIPPER_TARGET: &str = "refit::telemetry::loki";

/// What the shipper needs from the configuration.
pub(crate) struct Settings<'a> {
    /// Loki's base URL (may carry credentials); lines go to `<url>/loki/api/v1/push`.
    pub url: &'a str,
    /// The `environment` label.
    pub environment: &'a str,
    /// Lines waiting to be pushed, at most.
    pub queue_lines: usize,
    /// Deadline of one push, and of the flush at shutdown.
    pub timeout: Duration,
}

/// Where losses are counted.
#[derive(Clone)]
pub(crate) struct Counters {
    pub dropped_lines: IntCounter,
    pub send_errors: IntCounter,
}

/// A log line on its way to Loki.
struct Line {
    level: Level,
    at: SystemTime,
    text: String,
}

/// The running shipper; [`Shipper::shutdown`] flushes it.
pub(crate) struct Shipper {
    stop: CancellationToken,
    task: JoinHandle<()>,
    flush_wait: Duration,
}

impl Shipper {
    /// Pushes what is queued, waiting at most the push timeout, then stops the task.
    pub(crate) async fn shutdown(self) {
        self.stop.cancel();
        let mut task = self.task;
        if tokio::time::timeout(self.flush_wait, &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// Starts the background task (inside a tokio runtime) and returns the layer that feeds it.
pub(crate) fn start(
    settings: &Settings<'_>,
    counters: Counters,
) -> anyhow::Result<(LokiLayer, Shipper)> {
    let endpoint = push_endpoint(settings.url)?;
    let (inlet, outlet) = queue::bounded(settings.queue_lines, counters.dropped_lines.clone());
    let pusher = push::Pusher::new(
        endpoint,
        settings.environment,
        settings.queue_lines,
        settings.timeout,
        counters,
    )?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(pusher.run(outlet, stop.clone()));
    let shipper = Shipper {
        stop,
        task,
        flush_wait: settings.timeout,
    };
    Ok((LokiLayer::new(inlet), shipper))
}

/// `<url>/loki/api/v1/push`, keeping any path prefix of `url`. The error never shows the URL.
fn push_endpoint(url: &str) -> anyhow::Result<url::Url> {
    let mut base = url::Url::parse(url).context("LOKI_URL is not a valid URL")?;
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    base.join("loki/api/v1/push")
        .context("LOKI_URL cannot take the push path")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_push_path_is_appended_to_the_base_url() {
        for (base, push) in [
            ("http://loki:3100", "http://loki:3100/loki/api/v1/push"),
            ("http://loki:3100/", "http://loki:3100/loki/api/v1/push"),
            (
                "https://u:p@gw.example/tenant",
                "https://u:p@gw.example/tenant/loki/api/v1/push",
            ),
        ] {
            assert_eq!(push_endpoint(base).unwrap().as_str(), push);
        }
        let err = format!("{:#}", push_endpoint("http://u:hunter2@[bad").unwrap_err());
        assert!(!err.contains("hunter2"), "{err}");
    }
}
