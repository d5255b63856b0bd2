//! The typed results of a run: what every phase measured, as written to results.json and read
//! back by the report (report/) and by scripts/bench-chart.py. The field names are the JSON keys
//! those consumers read; a number that could not be measured (NaN) is written as `null` and read
//! back as NaN.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::stats::Summary;

/// Counts by a label (statuses, sources).
pub type Counts = BTreeMap<String, usize>;

/// f64 fields that may be NaN: serde_json writes NaN as `null`; read `null` back as NaN.
pub mod nan {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(*x)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

fn nan() -> f64 {
    f64::NAN
}

fn one() -> usize {
    1
}

/// A measured number, None when it could not be measured (written as `null`).
pub fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// Everything one run wrote to results.json.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Results {
    pub run_id: String,
    pub started: String,
    pub quick: bool,
    pub machine: Machine,
    pub git: Git,
    pub refit_binary: String,
    pub refit_env_names: Vec<String>,
    pub refit_defaults: BTreeMap<String, String>,
    pub python_params: Value,
    pub settings: String,
    pub refit_extra_env: Vec<String>,
    pub loadavg_start: Option<f64>,
    pub phase_minutes: BTreeMap<String, f64>,
    /// The knobs this run was started with (BENCH_*, and the allocator setting make bench adds).
    pub bench_env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_floor: Option<RedisFloor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_trips: Option<RoundTrips>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor: Option<Floor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<StepsEntry>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub freshness: Option<Vec<Freshness>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub freshness_python: Option<Vec<Freshness>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ramp: Option<Ramp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput_refit: Option<Throughput>,
    /// The Python drain the report compares with: the last of BENCH_PYTHON_SHARDS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput_python: Option<PythonThroughput>,
    /// The other Python drains BENCH_PYTHON_SHARDS asked for, in its order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub throughput_python_other_runs: Vec<Throughput>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub growth: Option<Vec<Growth>>,
    /// The `steady` phase (not a default phase): cost per retrain at steady state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steady: Option<Steady>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minutes: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loadavg_end: Option<Option<f64>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
    pub os: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Git {
    pub commit: String,
    pub src_uncommitted_changes: bool,
}

/// Redis DEL from the bench process itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RedisFloor {
    pub del: Summary,
}

/// Round trips from the bench process itself, one paced call at a time (ms).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundTrips {
    /// A produce until the broker's acknowledgement (acks=all, idempotent, no linger).
    pub kafka_ack: Summary,
    /// `SELECT 1` through sqlx.
    pub postgres_select: Summary,
}

/// The same XGBoost update through the C API alone; the last repeat, with every repeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Floor {
    pub iterations: usize,
    pub rows: usize,
    pub rounds: usize,
    pub models: Vec<FloorModel>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repeats: Vec<Floor>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FloorModel {
    pub trees: i64,
    pub artifact_kb: f64,
    pub from_artifact: FloorParts,
    pub in_memory: FloorParts,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FloorParts {
    pub total: Summary,
    pub load: Summary,
    pub boost: Summary,
    pub save: Summary,
}

/// Per-step cost of retrains (ms), refit's step names (the Python reference's mapped to them).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepSummaries {
    pub read: Summary,
    pub train: Summary,
    pub train_load: Summary,
    pub train_boost: Summary,
    pub train_save: Summary,
    pub commit: Summary,
    pub invalidate: Summary,
    pub announce: Summary,
}

/// Scenario 1, one implementation at one model size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepsRun {
    #[serde(flatten)]
    pub steps: StepSummaries,
    pub end_to_end: Summary,
    pub statuses: Counts,
    pub vm_hwm_mb: f64,
}

/// Scenario 1: one repeat at one model size, both implementations.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepsEntry {
    pub trees: i64,
    pub repeat: usize,
    pub refit: StepsRun,
    pub python: Option<StepsRun>,
}

/// Where the cores went during a measured interval.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cpu {
    #[serde(with = "nan", default = "nan")]
    pub wall_s: f64,
    #[serde(with = "nan", default = "nan")]
    pub process_cpu_s: f64,
    #[serde(with = "nan", default = "nan")]
    pub its_postgres_backends_cpu_s: f64,
    #[serde(with = "nan", default = "nan")]
    pub machine_busy_cpu_s: f64,
    #[serde(with = "nan", default = "nan")]
    pub process_cores: f64,
    #[serde(with = "nan", default = "nan")]
    pub its_postgres_cores: f64,
    #[serde(with = "nan", default = "nan")]
    pub rest_of_machine_cores: f64,
    #[serde(with = "nan", default = "nan")]
    pub process_cpu_ms_per_retrain: f64,
    #[serde(with = "nan", default = "nan")]
    pub postgres_cpu_ms_per_retrain: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Memory {
    pub vm_hwm_mb: f64,
    pub max_sampled_rss_mb: f64,
    /// [seconds, MB] samples.
    pub timeline_mb: Vec<[f64; 2]>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Logs {
    pub warnings: usize,
    pub errors: usize,
    pub first_notable: Vec<String>,
}

/// Scenario 2: one run at one rate, one implementation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Freshness {
    pub implementation: String,
    pub rate_batches_per_s: f64,
    pub actuals_per_s_target: f64,
    pub actuals_inserted: u64,
    #[serde(with = "nan", default = "nan")]
    pub actuals_per_s_achieved: f64,
    pub max_insert_lag_ms: f64,
    pub users: i32,
    pub warm_retrains_per_user: i32,
    pub batches_completed: usize,
    pub events_matched: usize,
    pub statuses: Counts,
    pub freshness_ms: Summary,
    pub freshness_from_insert_sent_ms: Summary,
    pub freshness_from_data_until_ms: Summary,
    /// `freshness_ms` by the policy step that made the version (continue, rebuild, fresh);
    /// empty in results from before it was recorded.
    #[serde(default)]
    pub freshness_by_step_ms: BTreeMap<String, Summary>,
    /// Segments of the interval, keyed "<order>_<name>".
    pub breakdown_ms: BTreeMap<String, Summary>,
    pub steps_ms: StepSummaries,
    pub trees_of_measured_models: Summary,
    pub refit_memory: Memory,
    pub refit_vm_hwm_mb_before_stop: f64,
    pub refit_logs: Logs,
    pub loadavg_before_after: [Option<f64>; 2],
    pub cpu: Cpu,
    pub metrics_retrains_total: Vec<String>,
    #[serde(default)]
    pub repeat: usize,
    /// Processes the implementation ran as: the Python peer run's shards; 1 otherwise.
    #[serde(default = "one")]
    pub processes: usize,
    /// How the Python side loaded a model: "booster" (the reference) or "bytes" (the peer run);
    /// empty for refit (and in results from before it was recorded).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub python_model_load: String,
}

/// Scenario 3, both implementations.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ramp {
    pub refit: RampRun,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<RampRun>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RampRun {
    pub users: usize,
    pub step_seconds: f64,
    pub warm_up_seconds: f64,
    pub steps: Vec<RampStep>,
    pub sustained_per_s: f64,
    pub vm_hwm_mb: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RampStep {
    pub rate: f64,
    #[serde(with = "nan", default = "nan")]
    pub offered_per_s: f64,
    #[serde(with = "nan", default = "nan")]
    pub completed_per_s: f64,
    pub backlog_start: usize,
    pub backlog_end: usize,
    pub backlog_max: usize,
    pub backlog_slack: f64,
    pub kept_up: bool,
    pub seconds: f64,
    pub warm_up_seconds: f64,
    pub cpu: Cpu,
}

/// The Python throughput phase: run, or why not.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PythonThroughput {
    Skipped { skipped: String },
    Ran(Box<Throughput>),
}

/// The drain of BENCH_USERS users × 50 actuals, twice.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Throughput {
    pub implementation: String,
    pub users: usize,
    pub rounds: Vec<Round>,
    pub statuses: Counts,
    pub steps_ms: ThroughputSteps,
    pub memory: Memory,
    pub vm_hwm_mb_before_stop: f64,
    pub logs: Logs,
    pub metrics_retrains_total: Vec<String>,
    /// Processes the implementation ran as: the Python peer run's shards; 1 otherwise.
    #[serde(default = "one")]
    pub processes: usize,
    /// How the Python side loaded a model: "booster" (the reference) or "bytes" (the peer run);
    /// empty for refit (and in results from before it was recorded).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub python_model_load: String,
}

impl Throughput {
    /// How the report names it: "refit", "Python" (the reference) or "Python peer, n processes".
    pub fn label(&self) -> String {
        python_label(
            &self.implementation,
            self.processes,
            &self.python_model_load,
        )
    }
}

impl Freshness {
    /// How the report names it (as [`Throughput::label`]).
    pub fn label(&self) -> String {
        python_label(
            &self.implementation,
            self.processes,
            &self.python_model_load,
        )
    }
}

fn python_label(implementation: &str, processes: usize, model_load: &str) -> String {
    match (implementation, model_load) {
        ("python", "bytes") => format!(
            "Python peer, {processes} process{}",
            if processes == 1 { "" } else { "es" }
        ),
        ("python", _) => "Python".to_owned(),
        (other, _) => other.to_owned(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Round {
    pub round: usize,
    pub kind: String,
    pub load_seconds: f64,
    pub retrains: usize,
    pub complete: bool,
    #[serde(with = "nan", default = "nan")]
    pub seconds_commit_to_last_event: f64,
    pub seconds_commit_to_first_event: Option<f64>,
    pub committed_at: f64,
    #[serde(with = "nan", default = "nan")]
    pub retrains_per_s_read: f64,
    pub retrains_per_s_first_to_last_event: Option<f64>,
    pub windows_5s_per_s_read: Summary,
    pub loadavg_before_after: [Option<f64>; 2],
    pub cpu: Cpu,
    // Up to the broker's acknowledgements (filled in after the implementation stopped).
    pub acked: usize,
    #[serde(with = "nan", default = "nan")]
    pub seconds_commit_to_last_ack: f64,
    #[serde(with = "nan", default = "nan")]
    pub retrains_per_s: f64,
    pub windows_5s_per_s: Summary,
    pub consumer_lag_behind_ack_ms: Summary,
}

/// Per-step cost in the drain, per round.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ThroughputSteps {
    Refit {
        round1: StepSummaries,
        round2: StepSummaries,
        version_statuses: Counts,
    },
    Python {
        round1: PythonSteps,
        round2: PythonSteps,
        /// The reference's own summary line.
        summary: Option<Value>,
    },
}

/// The Python reference's per-step timings in the drain, under its own names.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PythonSteps {
    pub read: Summary,
    pub train: Summary,
    pub load: Summary,
    pub boost: Summary,
    pub save: Summary,
    pub commit: Summary,
    pub invalidate: Summary,
    /// Produce → broker ack, from its log lines (absent in results from before it was recorded:
    /// the report then reads the summary line's, both rounds together).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<Summary>,
}

/// One growth run (one REFIT_MAX_TREES): run, or why not.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Growth {
    Skipped { cap: String, skipped: String },
    Ran(Box<GrowthRun>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrowthRun {
    pub cap: String,
    pub effective_config: BTreeMap<String, String>,
    pub summary: GrowthSummary,
    pub memory: Memory,
    pub vm_hwm_mb_before_stop: f64,
    pub logs: Logs,
    pub versions: Vec<GrowthVersion>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrowthSummary {
    pub retrains: i32,
    pub seconds: f64,
    pub versions_by_source: Counts,
    pub versions_by_status: Counts,
    pub v10: Option<VersionBrief>,
    pub last_version: i32,
    pub vlast: Option<VersionBrief>,
    #[serde(with = "nan", default = "nan")]
    pub median_train_ms_v8_12: f64,
    #[serde(with = "nan", default = "nan")]
    pub median_train_ms_last5: f64,
    #[serde(with = "nan", default = "nan")]
    pub median_bytes_v8_12: f64,
    #[serde(with = "nan", default = "nan")]
    pub median_bytes_last5: f64,
    #[serde(with = "nan", default = "nan")]
    pub max_train_ms_last100: f64,
    #[serde(with = "nan", default = "nan")]
    pub median_bytes_last100: f64,
    #[serde(with = "nan", default = "nan")]
    pub p90_train_ms_last100: f64,
    #[serde(with = "nan", default = "nan")]
    pub p50_train_ms_last100: f64,
    #[serde(with = "nan", default = "nan")]
    pub max_bytes_last100: f64,
    #[serde(with = "nan", default = "nan")]
    pub max_trees_last100: f64,
    #[serde(with = "nan", default = "nan")]
    pub median_trees_v8_12: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionBrief {
    pub train_ms: Option<f64>,
    pub bytes: Option<i32>,
    pub trees: Option<i32>,
}

/// One model version of a growth run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrowthVersion {
    pub version: i32,
    pub status: String,
    pub source: String,
    pub trees: Option<i32>,
    pub bytes: Option<i32>,
    pub read_ms: Option<f64>,
    pub train_ms: Option<f64>,
    pub load_ms: Option<f64>,
    pub boost_ms: Option<f64>,
    pub save_ms: Option<f64>,
}

/// The `steady` phase: cost per retrain once every user has a steady-state model, a full window of
/// trained actuals and a live-error history (benches/pipeline/steady.rs).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Steady {
    pub users: usize,
    /// Trained actuals seeded per user (BENCH_STEADY_HISTORY).
    pub history_rows_per_user: i64,
    /// What was seeded, and how long it took.
    pub seed: SteadySeed,
    /// The policy settings refit ran with (`refit config`).
    pub policy: BTreeMap<String, String>,
    pub rounds: Vec<SteadyRound>,
    /// All measured rounds together.
    pub overall: SteadyTotals,
    /// The top statements by total time over the measured rounds, or why there are none.
    pub pg_stat_statements: StatementStats,
    /// `pg_stat_user_tables` over the measured rounds (what was scanned and written, per table;
    /// a coarse breakdown that needs no extension).
    pub table_stats: Vec<TableStat>,
    pub memory: Option<Memory>,
    pub logs: Option<Logs>,
    pub metrics_retrains_total: Vec<String>,
}

/// What the `steady` phase seeded before refit started.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SteadySeed {
    /// Versions per user (history / 50); the newest is the active one.
    pub versions_per_user: i32,
    pub active_version: i32,
    /// The active version's step and trees (a rebuild: since_rebuild 0).
    pub active_step: String,
    pub active_trees: i64,
    /// Seed models: one per scale class of the generated data (user % 10).
    pub models: usize,
    #[serde(with = "nan", default = "nan")]
    pub artifact_kb_mean: f64,
    /// The seed models' RMSE on 50-row batches after the history (the seeded live errors).
    #[serde(with = "nan", default = "nan")]
    pub live_rmse_mean: f64,
    /// Rows per table after seeding.
    pub rows: BTreeMap<String, i64>,
    #[serde(with = "nan", default = "nan")]
    pub seconds: f64,
    #[serde(with = "nan", default = "nan")]
    pub database_mb: f64,
}

/// One measured round of the `steady` phase: 50 actuals per user, bulk-loaded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SteadyRound {
    pub round: usize,
    /// The version each user's retrain makes.
    pub version: i32,
    pub load_seconds: f64,
    pub retrains: usize,
    pub complete: bool,
    #[serde(with = "nan", default = "nan")]
    pub seconds_commit_to_last_event: f64,
    #[serde(with = "nan", default = "nan")]
    pub retrains_per_s_read: f64,
    /// Up to the broker's acknowledgement of the round's last event (refit's log).
    #[serde(with = "nan", default = "nan")]
    pub retrains_per_s: f64,
    pub versions_by_step: Counts,
    pub versions_by_status: Counts,
    pub cpu: Cpu,
    #[serde(with = "nan", default = "nan")]
    pub machine_cpu_ms_per_retrain: f64,
    #[serde(with = "nan", default = "nan")]
    pub wal_bytes: f64,
    #[serde(with = "nan", default = "nan")]
    pub wal_bytes_per_retrain: f64,
    /// load + boost + save of the train step (refit's log), per retrain.
    pub xgboost_ms: Summary,
    pub load_ms: Summary,
    pub boost_ms: Summary,
    pub save_ms: Summary,
    /// The whole train step (refit's log: features, gate predictions, load, boost, save).
    #[serde(default)]
    pub train_step_ms: Summary,
    /// Retrains whose model was kept in memory (load 0).
    pub models_cached: usize,
    pub trees: Summary,
    pub loadavg_before_after: [Option<f64>; 2],
}

/// The measured rounds of the `steady` phase together (per retrain: totals / retrains).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SteadyTotals {
    pub retrains: usize,
    #[serde(with = "nan", default = "nan")]
    pub seconds: f64,
    #[serde(with = "nan", default = "nan")]
    pub retrains_per_s: f64,
    #[serde(with = "nan", default = "nan")]
    pub refit_cpu_ms_per_retrain: f64,
    #[serde(with = "nan", default = "nan")]
    pub postgres_cpu_ms_per_retrain: f64,
    #[serde(with = "nan", default = "nan")]
    pub machine_cpu_ms_per_retrain: f64,
    #[serde(with = "nan", default = "nan")]
    pub wal_bytes_per_retrain: f64,
    /// The cluster's WAL rate over 5 s before the rounds, refit idle (other databases' writes).
    #[serde(with = "nan", default = "nan")]
    pub idle_wal_bytes_per_s: f64,
    #[serde(with = "nan", default = "nan")]
    pub xgboost_ms_per_retrain: f64,
    /// The whole train step per retrain (mean).
    #[serde(with = "nan", default = "nan")]
    pub train_step_ms_per_retrain: f64,
    /// (refit + its backends' CPU) / XGBoost ms, per retrain.
    #[serde(with = "nan", default = "nan")]
    pub cpu_to_xgboost: f64,
    pub versions_by_step: Counts,
    pub versions_by_status: Counts,
}

/// `pg_stat_statements` over the measured rounds, or why not.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StatementStats {
    Skipped(String),
    Top(Vec<StatementStat>),
}

impl Default for StatementStats {
    fn default() -> Self {
        StatementStats::Skipped("not measured".into())
    }
}

/// One statement of `pg_stat_statements` (this phase's database only).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatementStat {
    pub query: String,
    pub calls: i64,
    pub total_ms: f64,
    pub mean_ms: f64,
    pub rows: i64,
    pub shared_blks_hit: i64,
    pub shared_blks_read: i64,
    pub shared_blks_dirtied: i64,
    pub shared_blks_written: i64,
}

/// The change of one table's `pg_stat_user_tables` counters over the measured rounds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TableStat {
    pub table: String,
    pub seq_scan: i64,
    pub seq_tup_read: i64,
    pub idx_scan: i64,
    pub idx_tup_fetch: i64,
    pub n_tup_ins: i64,
    pub n_tup_upd: i64,
    pub n_tup_del: i64,
}
