//! Prometheus metrics, one registry per service instance (so tests can run several side by side).
//! Labels stay low-cardinality: steps, statuses, reasons and kinds, never a user id.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Buckets for step latencies and freshness, in seconds (0.5 ms .. 30 s).
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Every metric refit exports.
pub struct Metrics {
    pub registry: Registry,
    /// `refit_step_duration_seconds{step}`: detect, read, train, commit, invalidate, announce.
    pub step_duration: HistogramVec,
    /// `refit_retrains_total{status}`: success, failed, rejected.
    pub retrains: IntCounterVec,
    /// `refit_pending_actuals`: actuals not yet consumed (all users).
    pub pending: IntGauge,
    /// `refit_rows_set_aside_total{reason}`.
    pub set_aside: IntCounterVec,
    /// `refit_outbox_backlog{kind}`: side effects committed but not yet carried out.
    pub outbox_backlog: IntGaugeVec,
    /// `refit_freshness_seconds`: newest actual of a batch → its event published.
    pub freshness: Histogram,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let step_duration = HistogramVec::new(
            HistogramOpts::new(
                "refit_step_duration_seconds",
                "Duration of each retrain step",
            )
            .buckets(SECONDS_BUCKETS.to_vec()),
            &["step"],
        )
        .expect("valid metric");
        let retrains = IntCounterVec::new(
            Opts::new("refit_retrains_total", "Retrains by outcome"),
            &["status"],
        )
        .expect("valid metric");
        let pending = IntGauge::new("refit_pending_actuals", "Actuals waiting to be trained on")
            .expect("valid metric");
        let set_aside = IntCounterVec::new(
            Opts::new(
                "refit_rows_set_aside_total",
                "Actuals set aside as unusable, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let outbox_backlog = IntGaugeVec::new(
            Opts::new(
                "refit_outbox_backlog",
                "Committed side effects not yet carried out",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let freshness = Histogram::with_opts(
            HistogramOpts::new(
                "refit_freshness_seconds",
                "From the batch-completing actual's insert to the model-retrained event",
            )
            .buckets(SECONDS_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let build_info = IntGaugeVec::new(
            Opts::new("refit_build_info", "Build information"),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        for collector in [
            Box::new(step_duration.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(retrains.clone()),
            Box::new(pending.clone()),
            Box::new(set_aside.clone()),
            Box::new(outbox_backlog.clone()),
            Box::new(freshness.clone()),
            Box::new(build_info),
        ] {
            registry
                .register(collector)
                .expect("metric registered once");
        }
        // Make every label value visible from the start, so dashboards show zeros, not gaps.
        for step in [
            "detect",
            "read",
            "train",
            "commit",
            "invalidate",
            "announce",
        ] {
            step_duration.with_label_values(&[step]);
        }
        for status in ["success", "failed", "rejected"] {
            retrains.with_label_values(&[status]);
        }
        for kind in ["invalidate", "announce"] {
            outbox_backlog.with_label_values(&[kind]);
        }
        Metrics {
            registry,
            step_duration,
            retrains,
            pending,
            set_aside,
            outbox_backlog,
            freshness,
        }
    }

    /// Records a step's duration given in milliseconds.
    pub fn observe_step(&self, step: &str, ms: f64) {
        self.step_duration
            .with_label_values(&[step])
            .observe(ms / 1000.0);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
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
