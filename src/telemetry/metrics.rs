//! Prometheus metrics, one registry per service instance (so tests can run several side by side).
//! Labels stay low-cardinality: steps, statuses, reasons and kinds, never a user id.
//!
//! Every labelled series exists from start-up, at zero, so that dashboards and alert rules see
//! zeros rather than gaps ("No data") on a healthy service.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::domain::VersionStatus;
use crate::retrain::features::SetAsideReason;

/// Buckets for step latencies and freshness, in seconds (0.5 ms .. 30 s).
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Buckets for the live error over the mean |actual|.
const LIVE_ERROR_RATIO_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0,
];

/// The steps of a retrain, in order (`refit_step_duration_seconds{step}`).
pub(crate) const STEPS: [&str; 6] = [
    "detect",
    "read",
    "train",
    "commit",
    "invalidate",
    "announce",
];

/// The kinds of outbox entries (`refit_outbox_backlog{kind}`, `refit_outbox_oldest_age_seconds`).
pub(crate) const OUTBOX_KINDS: [&str; 2] = ["invalidate", "announce"];

/// Every metric refit exports.
pub(crate) struct Metrics {
    pub(crate) registry: Registry,
    /// `refit_step_duration_seconds{step}`: detect, read, train, commit, invalidate, announce.
    pub(crate) step_duration: HistogramVec,
    /// `refit_retrains_total{status}`: success, failed, rejected.
    pub(crate) retrains: IntCounterVec,
    /// `refit_pending_actuals`: actuals not yet consumed (all users).
    pub(crate) pending: IntGauge,
    /// `refit_rows_set_aside_total{reason}`.
    pub(crate) set_aside: IntCounterVec,
    /// `refit_unconsumable_actuals_total{reason}`: pending actuals that can never be consumed
    /// (e.g. an id consumed before), moved to `refit_unconsumable_actuals`.
    pub(crate) unconsumable: IntCounterVec,
    /// `refit_outbox_dead_letters_total{kind}`: side effects that can never be carried out (an
    /// event over the broker's message size), resolved as dead letters (`refit_outbox.dead_letter`).
    pub(crate) outbox_dead_letters: IntCounterVec,
    /// `refit_outbox_backlog{kind}`: side effects committed but not yet carried out.
    pub(crate) outbox_backlog: IntGaugeVec,
    /// `refit_outbox_oldest_age_seconds{kind}`: age of the oldest of them (0 when none).
    pub(crate) outbox_oldest_age: GaugeVec,
    /// `refit_freshness_seconds`: newest actual of a batch → its event published.
    pub(crate) freshness: Histogram,
    /// `refit_scheduler_heartbeat_timestamp_seconds`: when the scheduler loop last turned.
    pub(crate) heartbeat: Gauge,
    /// `refit_live_mae`: the serving model's mean absolute error on each batch of new actuals,
    /// before training on it (in the target's units; across users, never per user).
    pub(crate) live_mae: Histogram,
    /// `refit_live_error_ratio`: the same error over the batch's mean |actual|, comparable
    /// across users whatever their scale.
    pub(crate) live_error_ratio: Histogram,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let metrics = Metrics {
            registry: Registry::new(),
            step_duration: seconds_histogram_vec(
                "refit_step_duration_seconds",
                "Duration of each retrain step",
                "step",
            ),
            retrains: counter_vec("refit_retrains_total", "Retrains by outcome", "status"),
            pending: int_gauge("refit_pending_actuals", "Actuals waiting to be trained on"),
            set_aside: counter_vec(
                "refit_rows_set_aside_total",
                "Actuals set aside as unusable, by reason",
                "reason",
            ),
            unconsumable: counter_vec(
                "refit_unconsumable_actuals_total",
                "Pending actuals that can never be consumed, set aside, by reason",
                "reason",
            ),
            outbox_dead_letters: counter_vec(
                "refit_outbox_dead_letters_total",
                "Side effects that can never be carried out, dead-lettered, by kind",
                "kind",
            ),
            outbox_backlog: int_gauge_vec(
                "refit_outbox_backlog",
                "Committed side effects not yet carried out",
                "kind",
            ),
            outbox_oldest_age: gauge_vec(
                "refit_outbox_oldest_age_seconds",
                "Age of the oldest committed side effect not yet carried out (0 when none)",
                "kind",
            ),
            freshness: histogram(
                "refit_freshness_seconds",
                "From the batch-completing actual's insert to the model-retrained event",
                SECONDS_BUCKETS.to_vec(),
            ),
            heartbeat: gauge(
                "refit_scheduler_heartbeat_timestamp_seconds",
                "Unix time at which the scheduler loop last turned",
            ),
            live_mae: histogram(
                "refit_live_mae",
                "Serving model's mean absolute error on each new batch, before training on it",
                prometheus::exponential_buckets(0.01, 2.0, 24).expect("valid buckets"),
            ),
            live_error_ratio: histogram(
                "refit_live_error_ratio",
                "Serving model's mean absolute error on each new batch over its mean |actual|",
                LIVE_ERROR_RATIO_BUCKETS.to_vec(),
            ),
        };
        metrics.register_all();
        metrics.show_every_label_value();
        metrics
    }

    fn register_all(&self) {
        let collectors: [Box<dyn Collector>; 15] = [
            Box::new(self.step_duration.clone()),
            Box::new(self.unconsumable.clone()),
            Box::new(self.retrains.clone()),
            Box::new(self.pending.clone()),
            Box::new(self.set_aside.clone()),
            Box::new(self.outbox_dead_letters.clone()),
            Box::new(self.outbox_backlog.clone()),
            Box::new(self.outbox_oldest_age.clone()),
            Box::new(self.freshness.clone()),
            Box::new(self.heartbeat.clone()),
            Box::new(self.live_mae.clone()),
            Box::new(self.live_error_ratio.clone()),
            Box::new(build_info()),
            // Logs are shipped per process, not per service: these counters are process-wide.
            Box::new(crate::telemetry::loki_dropped_lines().clone()),
            Box::new(crate::telemetry::loki_send_errors().clone()),
        ];
        for collector in collectors {
            self.registry
                .register(collector)
                .expect("metric registered once");
        }
    }

    /// Counts a retrain by its outcome (`refit_retrains_total{status}`).
    pub(crate) fn count_retrain(&self, status: VersionStatus) {
        self.retrains.with_label_values(&[status.reported()]).inc();
    }

    /// Makes every label value visible from the start, so dashboards show zeros, not gaps.
    fn show_every_label_value(&self) {
        for step in STEPS {
            self.step_duration.with_label_values(&[step]);
        }
        for status in VersionStatus::ALL {
            self.retrains.with_label_values(&[status.reported()]);
        }
        for reason in SetAsideReason::ALL {
            self.set_aside.with_label_values(&[reason.as_str()]);
        }
        for reason in crate::store::actuals::UNCONSUMABLE_REASONS {
            self.unconsumable.with_label_values(&[reason]);
        }
        for kind in OUTBOX_KINDS {
            self.outbox_dead_letters.with_label_values(&[kind]);
            self.outbox_backlog.with_label_values(&[kind]);
            self.outbox_oldest_age.with_label_values(&[kind]);
        }
    }

    /// Records a step's duration given in milliseconds.
    pub(crate) fn observe_step(&self, step: &str, ms: f64) {
        self.step_duration
            .with_label_values(&[step])
            .observe(ms / 1000.0);
    }

    /// Records the serving model's error on a batch whose actuals average `mean_abs_actual`.
    pub(crate) fn observe_live(&self, mae: f64, mean_abs_actual: f64) {
        if !mae.is_finite() {
            return;
        }
        self.live_mae.observe(mae);
        if mean_abs_actual > 0.0 && mean_abs_actual.is_finite() {
            self.live_error_ratio.observe(mae / mean_abs_actual);
        }
    }

    /// Records that the scheduler loop turned now.
    pub(crate) fn beat(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.heartbeat.set(now);
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("exposition is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn seconds_histogram_vec(name: &str, help: &str, label: &str) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(SECONDS_BUCKETS.to_vec()),
        &[label],
    )
    .expect("valid metric")
}

fn counter_vec(name: &str, help: &str, label: &str) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric")
}

fn int_gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("valid metric")
}

fn int_gauge_vec(name: &str, help: &str, label: &str) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), &[label]).expect("valid metric")
}

fn gauge(name: &str, help: &str) -> Gauge {
    Gauge::new(name, help).expect("valid metric")
}

fn gauge_vec(name: &str, help: &str, label: &str) -> GaugeVec {
    GaugeVec::new(Opts::new(name, help), &[label]).expect("valid metric")
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric")
}

/// `refit_build_info{version}`: 1.
fn build_info() -> IntGaugeVec {
    let info = IntGaugeVec::new(
        Opts::new("refit_build_info", "Build information"),
        &["version"],
    )
    .expect("valid metric");
    info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_labelled_series_is_exported_at_zero_from_the_start() {
        let text = Metrics::new().render();
        let mut expected: Vec<String> = Vec::new();
        expected
            .extend(STEPS.map(|s| format!("refit_step_duration_seconds_count{{step=\"{s}\"}} 0")));
        expected.extend(
            VersionStatus::ALL
                .map(|s| format!("refit_retrains_total{{status=\"{}\"}} 0", s.reported())),
        );
        expected.extend(
            SetAsideReason::ALL
                .map(|r| format!("refit_rows_set_aside_total{{reason=\"{}\"}} 0", r.as_str())),
        );
        expected.extend(
            crate::store::actuals::UNCONSUMABLE_REASONS
                .map(|r| format!("refit_unconsumable_actuals_total{{reason=\"{r}\"}} 0")),
        );
        for kind in OUTBOX_KINDS {
            expected.push(format!("refit_outbox_backlog{{kind=\"{kind}\"}} 0"));
            expected.push(format!(
                "refit_outbox_dead_letters_total{{kind=\"{kind}\"}} 0"
            ));
            expected.push(format!(
                "refit_outbox_oldest_age_seconds{{kind=\"{kind}\"}} 0"
            ));
        }
        expected.push("refit_scheduler_heartbeat_timestamp_seconds 0".into());
        expected.push("refit_loki_dropped_lines_total ".into());
        expected.push("refit_loki_send_errors_total ".into());
        for line in expected {
            assert!(
                text.lines().any(|l| l.starts_with(&line)),
                "{line} missing from:\n{text}"
            );
        }
    }

    #[test]
    fn the_heartbeat_is_a_unix_timestamp() {
        let metrics = Metrics::new();
        metrics.beat();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((now - metrics.heartbeat.get()).abs() < 60.0);
    }
}
