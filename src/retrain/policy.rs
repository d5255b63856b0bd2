//! The retraining policy: which step makes a user's next version, and whether that version may
//! serve. Everything here is a pure decision on numbers; `retrain` gathers the evidence from the
//! registry and `trainer` runs the steps.
//!
//! The default policy, measured in QUALITY.md:
//! - **continue**: each batch adds `REFIT_ROUNDS_PER_RETRAIN` (1) round to the active model at a
//!   small learning rate `REFIT_CONTINUE_ETA` (0.1), so 50 rows nudge the model instead of
//!   memorising their residuals;
//! - **rebuild**: every `REFIT_REBUILD_EVERY`th (4th) accepted batch, and whenever the next step
//!   would pass `REFIT_MAX_TREES`, a fresh model of `REFIT_COMPACTION_ROUNDS` (35) rounds at
//!   `REFIT_REBUILD_ETA` (0.3) is trained on the last `REFIT_REFIT_WINDOW` (4,000) actuals served
//!   versions trained on, newer rows weighing more (`REFIT_RECENCY_HALF_LIFE`, 2,000 rows);
//! - **gate**: before a version may serve it must pass two checks. The serving model's *live*
//!   error on the new batch must not exceed `REFIT_VALIDATION_LIVE_RATIO` (3) × its recent median
//!   (labels that suddenly make no sense, e.g. ×10 or shuffled), and the candidate continued on
//!   the batch must not score worse than the active model on the last `REFIT_VALIDATION_WINDOW`
//!   (250) actuals already trained on by more than `REFIT_VALIDATION_TOLERANCE` (30 %) of the
//!   typical live error (those actuals are in-sample for the active model, so its own error there
//!   is no fair yardstick). A rejected version is kept;
//!   when it predicts the *next* batch better than the active model did, it is reinstated (the
//!   batch was real change, not poison) and its rows count again. A confirmed change is learnt
//!   at once: the step after a reinstatement is a rebuild on the window, which now holds the
//!   reinstated batch, and the live check does not hold the new error level against it.

use crate::config::{Choice, Compaction, Float, Int, Switch, ValidationMetric};

/// Live errors of recent versions the gate's median is taken over.
pub(crate) const LIVE_HISTORY: usize = 20;
/// Fewer live errors than this and the live check does not judge yet.
const LIVE_HISTORY_MIN: usize = 3;

crate::config::section! {
    /// How versions are made (see the module documentation).
    #[derive(Debug, Clone, PartialEq)]
    pub(crate) struct Policy {
        /// Rounds a continue step adds.
        pub(crate) rounds: i32 = "REFIT_ROUNDS_PER_RETRAIN", Int::new(1, 1, 10_000),
            "boosting rounds each continue step adds to the model";
        /// Learning rate of continue steps; 0 keeps the model's own `eta`.
        pub(crate) continue_eta: f64 = "REFIT_CONTINUE_ETA", Float::new(0.1, 0.0, 1.0),
            "learning rate of the rounds each batch adds (0 = the model's own eta)";
        /// Rebuild every this many accepted batches (0: only at the tree cap).
        pub(crate) rebuild_every: u32 = "REFIT_REBUILD_EVERY", Int::new(4, 0, 1_000_000),
            "rebuild the model from the recent window every Nth accepted batch (0 = only at the tree cap)";
        /// Most recent trained actuals a rebuild trains on.
        pub(crate) window: i64 = "REFIT_REFIT_WINDOW", Int::new(4000, 1, 10_000_000),
            "most recent trained actuals a rebuild trains on";
        /// Rounds of a rebuild (and of a user's first model).
        pub(crate) rebuild_rounds: i32 = "REFIT_COMPACTION_ROUNDS", Int::new(35, 1, 10_000),
            "boosting rounds of a rebuild and of a user's first model";
        /// Learning rate of a rebuild (and of a user's first model); 0 keeps the model's own `eta`.
        pub(crate) rebuild_eta: f64 = "REFIT_REBUILD_ETA", Float::new(0.3, 0.0, 1.0),
            "learning rate of a rebuild and of a user's first model (0 = the model's own eta)";
        /// In a rebuild, a row this many rows older than the newest weighs half as much (0: all
        /// rows weigh the same).
        pub(crate) half_life: i64 = "REFIT_RECENCY_HALF_LIFE", Int::new(2000, 0, 10_000_000),
            "in a rebuild, a row this many rows older than the newest weighs half (0 = all equal)";
        /// Tree cap per model (0 = none).
        pub(crate) max_trees: i64 = "REFIT_MAX_TREES", Int::new(150, 0, 1_000_000),
            "tree cap per model; a retrain that would pass it compacts the model (0 = no cap)";
        /// What happens at the tree cap.
        pub(crate) compaction: Compaction = "REFIT_COMPACTION",
            Choice::new(
                Compaction::Refit,
                &[("refit", Compaction::Refit), ("update", Compaction::Update)],
            ),
            "at the cap: refit (rebuild on recent actuals) or update (refresh leaves in place)";
    }
    nested {
        pub(crate) gate: Gate;
    }
}

crate::config::section! {
    /// The validation gate's settings.
    #[derive(Debug, Clone, PartialEq)]
    pub(crate) struct Gate {
        pub(crate) enabled: bool = "REFIT_VALIDATION", Switch(true),
            "on or off: the validation gate (live-error check and recent-window comparison)";
        /// Recent trained actuals the candidate and the active model are scored on.
        pub(crate) window: i64 = "REFIT_VALIDATION_WINDOW", Int::new(250, 1, 1_000_000),
            "most recent trained actuals the candidate and the active version are scored on";
        pub(crate) metric: ValidationMetric = "REFIT_VALIDATION_METRIC",
            Choice::new(
                ValidationMetric::Rmse,
                &[("rmse", ValidationMetric::Rmse), ("mae", ValidationMetric::Mae)],
            ),
            "rmse or mae";
        /// Rejected when candidate > active + tolerance × the typical live error, on the window.
        pub(crate) tolerance: f64 = "REFIT_VALIDATION_TOLERANCE", Float::new(0.3, 0.0, 100.0),
            "how much worse than the active version the candidate may score on the window, as a share of the typical live error";
        /// Rejected when the live error > ratio × the median of recent live errors.
        pub(crate) live_ratio: f64 = "REFIT_VALIDATION_LIVE_RATIO", Float::new(3.0, 1.0, 1e6),
            "a batch whose live error is over this many times the user's recent median is rejected";
    }
}

/// The step that makes the next version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// The user's first model, trained on the batch (and any earlier trained actuals).
    Fresh,
    /// Rounds added to the active model on the batch.
    Continue,
    /// A fresh model on the window of recent actuals: on schedule, or at the tree cap.
    Rebuild { at_cap: bool },
    /// At the tree cap with `REFIT_COMPACTION=update`: every leaf refitted on the batch.
    Refresh,
}

impl Step {
    /// Recorded per version (`metrics.policy.step`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Step::Fresh => "fresh",
            Step::Continue => "continue",
            Step::Rebuild { .. } => "rebuild",
            Step::Refresh => "refresh",
        }
    }

    /// The version's `source` column.
    pub(crate) fn source(self) -> &'static str {
        match self {
            Step::Fresh => "fresh",
            Step::Continue => "retrain",
            Step::Rebuild { at_cap: false } => "rebuild",
            Step::Rebuild { at_cap: true } => "compaction-refit",
            Step::Refresh => "compaction-update",
        }
    }

    /// The event's `action`.
    pub(crate) fn action(self) -> &'static str {
        match self {
            Step::Rebuild { at_cap: true } | Step::Refresh => "compaction",
            _ => "retrain",
        }
    }

    /// Whether the step trains on the window of recent actuals rather than the batch alone.
    pub(crate) fn reads_window(self) -> bool {
        matches!(self, Step::Fresh | Step::Rebuild { .. })
    }
}

/// Where the model to build on stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Lineage {
    /// Trees of the model the step starts from (`None`: no model yet).
    pub(crate) trees: Option<i64>,
    /// Accepted continue steps since that model's last rebuild.
    pub(crate) since_rebuild: u32,
}

impl Policy {
    /// The step for the next batch of a model that stands at `lineage`.
    pub(crate) fn plan(&self, lineage: Lineage) -> Step {
        let Some(trees) = lineage.trees else {
            return Step::Fresh;
        };
        if self.max_trees > 0 && trees + i64::from(self.rounds) > self.max_trees {
            return match self.compaction {
                Compaction::Refit => Step::Rebuild { at_cap: true },
                Compaction::Update => Step::Refresh,
            };
        }
        if self.rebuild_every > 0 && lineage.since_rebuild + 1 >= self.rebuild_every {
            return Step::Rebuild { at_cap: false };
        }
        Step::Continue
    }

    /// `since_rebuild` of the version a step makes from a model at `lineage`.
    pub(crate) fn since_rebuild(step: Step, lineage: Lineage) -> u32 {
        match step {
            Step::Fresh | Step::Rebuild { .. } => 0,
            Step::Continue | Step::Refresh => lineage.since_rebuild + 1,
        }
    }

    /// The learning rate a step trains at, when the policy sets one (None: the model's own).
    pub(crate) fn step_eta(&self, step: Step) -> Option<f64> {
        let eta = match step {
            Step::Continue => self.continue_eta,
            Step::Fresh | Step::Rebuild { .. } => self.rebuild_eta,
            Step::Refresh => 0.0,
        };
        (eta > 0.0).then_some(eta)
    }

    /// Trained actuals a retrain reads besides its batch of `batch_rows`: enough for the step
    /// from the active model (`None`: the user's first model) and, when a rejected version may be
    /// reinstated, for the steps from it.
    pub(crate) fn rows_to_read(
        &self,
        active: Option<Lineage>,
        rejected: Option<Lineage>,
        batch_rows: usize,
    ) -> i64 {
        let mut steps = vec![self.plan(active.unwrap_or_default())];
        if let Some(l) = rejected {
            steps.push(self.plan(l));
            steps.push(after_reinstatement(self.plan(l)));
        }
        steps
            .into_iter()
            .map(|step| self.recent_rows(step, batch_rows))
            .max()
            .unwrap_or(0)
    }

    /// Trained actuals to read besides the batch: the gate's window, and a rebuild's.
    pub(crate) fn recent_rows(&self, step: Step, batch_rows: usize) -> i64 {
        let gate = if self.gate.enabled {
            self.gate.window
        } else {
            0
        };
        let rebuild = if step.reads_window() {
            (self.window - batch_rows as i64).max(0)
        } else {
            0
        };
        gate.max(rebuild)
    }
}

/// Error of predictions against labels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Errors {
    pub mae: f64,
    pub(crate) rmse: f64,
    pub(crate) rows: usize,
}

impl Errors {
    pub fn of(predictions: &[f32], labels: &[f32]) -> Errors {
        let n = predictions.len().min(labels.len());
        let (mut abs, mut sq) = (0.0, 0.0);
        for (p, y) in predictions.iter().zip(labels) {
            let e = f64::from(*p) - f64::from(*y);
            abs += e.abs();
            sq += e * e;
        }
        let d = n.max(1) as f64;
        Errors {
            mae: abs / d,
            rmse: (sq / d).sqrt(),
            rows: n,
        }
    }

    pub(crate) fn get(&self, metric: ValidationMetric) -> f64 {
        match metric {
            ValidationMetric::Rmse => self.rmse,
            ValidationMetric::Mae => self.mae,
        }
    }
}

/// What the gate judges a candidate on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Evidence {
    /// The base model's error on the batch, before training on it.
    pub(crate) live: Errors,
    /// Live errors (in the gate's metric) of the user's recent versions, newest first.
    pub(crate) live_history: Vec<f64>,
    /// Candidate and base on the recent trained actuals (`None`: no such actuals yet).
    pub(crate) window: Option<(Errors, Errors)>,
    /// The base was just reinstated: the batch it was rejected on was real change, so a live
    /// error far above the old level is expected and not held against the candidate.
    pub(crate) confirmed_change: bool,
}

/// The gate's decision.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    Accept,
    /// The live error is far above the user's typical one.
    LiveOutlier {
        live: f64,
        typical: f64,
    },
    /// The candidate is worse than the active model on recent actuals.
    WorseOnWindow {
        candidate: f64,
        active: f64,
        rows: usize,
    },
}

impl Verdict {
    pub(crate) fn accepted(&self) -> bool {
        *self == Verdict::Accept
    }

    /// Why a version was rejected, for the version's `error` and the event's `reason`.
    pub(crate) fn reason(&self, gate: &Gate) -> Option<String> {
        match self {
            Verdict::Accept => None,
            Verdict::LiveOutlier { live, typical } => Some(format!(
                "the batch's live {} {live:.4} is over {} × the recent median {typical:.4}: \
                 its labels do not look like this user's data",
                gate.metric.as_str(),
                gate.live_ratio
            )),
            Verdict::WorseOnWindow {
                candidate,
                active,
                rows,
            } => Some(format!(
                "validation {} {candidate:.4} on the last {rows} trained actuals is worse than \
                 the active version's {active:.4} by more than {}% of the typical live error",
                gate.metric.as_str(),
                gate.tolerance * 100.0
            )),
        }
    }
}

impl Gate {
    /// Judges a candidate (see the module documentation).
    pub(crate) fn judge(&self, evidence: &Evidence) -> Verdict {
        if !self.enabled {
            return Verdict::Accept;
        }
        let live = evidence.live.get(self.metric);
        let typical = typical_live(&evidence.live_history);
        if let (Some(typical), false) = (typical, evidence.confirmed_change) {
            if live > self.live_ratio * typical {
                return Verdict::LiveOutlier { live, typical };
            }
        }
        if let Some((candidate, active)) = evidence.window {
            let (c, a) = (candidate.get(self.metric), active.get(self.metric));
            // The window holds actuals the active model trained on, so its error there is
            // in-sample and may be far below its error on new data: what the candidate may lose
            // is measured against the error serving typically has on new data.
            let scale = typical.unwrap_or(live).max(a);
            if c > a + self.tolerance * scale + 1e-9 {
                return Verdict::WorseOnWindow {
                    candidate: c,
                    active: a,
                    rows: candidate.rows,
                };
            }
        }
        Verdict::Accept
    }
}

/// The median of recent live errors, once there are enough of them.
pub(crate) fn typical_live(history: &[f64]) -> Option<f64> {
    let recent: Vec<f64> = history
        .iter()
        .take(LIVE_HISTORY)
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    (recent.len() >= LIVE_HISTORY_MIN).then(|| median(recent))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n % 2 {
        1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Training weights of a rebuild's `rows` rows, oldest first: the newest weighs 1 and a row
/// `half_life` rows older weighs half as much (None: all rows weigh the same).
pub(crate) fn recency_weights(rows: usize, half_life: i64) -> Option<Vec<f32>> {
    (half_life > 0).then(|| {
        (0..rows)
            .map(|i| 0.5f64.powf((rows - 1 - i) as f64 / half_life as f64) as f32)
            .collect()
    })
}

/// Whether a rejected version predicted the next batch better than the active one: then its
/// batch was real change, not poison, and it serves again.
pub(crate) fn reinstate(rejected_on_batch: Errors, active_on_batch: Errors) -> bool {
    rejected_on_batch.mae < active_on_batch.mae
}

/// The step after a reinstatement. The batch the reinstated version was rejected on turned out
/// to be real change, so a continue step becomes a rebuild on the window (which now holds that
/// batch): the model catches up at once instead of serving the old pattern until the schedule's
/// next rebuild.
pub(crate) fn after_reinstatement(planned: Step) -> Step {
    match planned {
        Step::Continue => Step::Rebuild { at_cap: false },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recency_weights_halve_every_half_life_back_from_the_newest() {
        assert_eq!(recency_weights(5, 0), None);
        let w = recency_weights(2001, 1000).unwrap();
        assert_eq!(w.len(), 2001);
        assert_eq!(w[2000], 1.0);
        assert!((w[1000] - 0.5).abs() < 1e-6, "{}", w[1000]);
        assert!((w[0] - 0.25).abs() < 1e-6, "{}", w[0]);
        assert!(w.windows(2).all(|p| p[0] < p[1]), "older rows weigh less");
    }

    /// A continue step reads the gate's window only; the whole window only when some step it
    /// may take rebuilds (a first model, a rebuild, a reinstatement).
    #[test]
    fn a_continue_reads_the_gates_window_and_a_rebuild_the_whole_window() {
        let p = policy();
        let continuing = Lineage {
            trees: Some(100),
            since_rebuild: 1,
        };
        assert_eq!(p.rows_to_read(Some(continuing), None, 50), 250);
        assert_eq!(p.rows_to_read(None, None, 50), 1950, "first model");
        let due = Lineage {
            trees: Some(100),
            since_rebuild: p.rebuild_every - 1,
        };
        assert_eq!(p.rows_to_read(Some(due), None, 50), 1950, "rebuild due");
        assert_eq!(
            p.rows_to_read(Some(continuing), Some(continuing), 50),
            1950,
            "a reinstatement rebuilds"
        );
    }

    fn policy() -> Policy {
        Policy {
            rounds: 3,
            continue_eta: 0.05,
            rebuild_every: 8,
            window: 2000,
            rebuild_rounds: 100,
            rebuild_eta: 0.0,
            half_life: 0,
            max_trees: 150,
            compaction: Compaction::Refit,
            gate: Gate {
                enabled: true,
                window: 250,
                metric: ValidationMetric::Rmse,
                tolerance: 0.3,
                live_ratio: 3.0,
            },
        }
    }

    fn at(trees: i64, since_rebuild: u32) -> Lineage {
        Lineage {
            trees: Some(trees),
            since_rebuild,
        }
    }

    fn errors(mae: f64, rmse: f64) -> Errors {
        Errors {
            mae,
            rmse,
            rows: 50,
        }
    }

    #[test]
    fn a_user_without_a_model_starts_fresh() {
        assert_eq!(policy().plan(Lineage::default()), Step::Fresh);
        assert!(Step::Fresh.reads_window());
    }

    #[test]
    fn every_eighth_accepted_batch_rebuilds() {
        let p = policy();
        let mut lineage = at(100, 0);
        let mut steps = Vec::new();
        for _ in 0..16 {
            let step = p.plan(lineage);
            steps.push(step);
            lineage.since_rebuild = Policy::since_rebuild(step, lineage);
        }
        let rebuilds: Vec<usize> = (0..16)
            .filter(|i| steps[*i] == Step::Rebuild { at_cap: false })
            .collect();
        assert_eq!(rebuilds, [7, 15]);
    }

    #[test]
    fn the_tree_cap_compacts_as_configured() {
        let mut p = policy();
        assert_eq!(p.plan(at(147, 0)), Step::Continue);
        assert_eq!(p.plan(at(148, 0)), Step::Rebuild { at_cap: true });
        p.compaction = Compaction::Update;
        assert_eq!(p.plan(at(148, 0)), Step::Refresh);
        p.max_trees = 0;
        p.rebuild_every = 0;
        assert_eq!(
            p.plan(at(10_000, 500)),
            Step::Continue,
            "no cap, no schedule"
        );
    }

    #[test]
    fn steps_name_their_source_and_action() {
        assert_eq!(Step::Continue.source(), "retrain");
        assert_eq!(Step::Rebuild { at_cap: true }.action(), "compaction");
        assert_eq!(Step::Rebuild { at_cap: false }.action(), "retrain");
        assert_eq!(Step::Refresh.source(), "compaction-update");
    }

    #[test]
    fn recent_rows_cover_the_gate_and_a_rebuild() {
        let mut p = policy();
        assert_eq!(p.recent_rows(Step::Continue, 50), 250);
        assert_eq!(p.recent_rows(Step::Rebuild { at_cap: false }, 50), 1950);
        p.gate.enabled = false;
        assert_eq!(p.recent_rows(Step::Continue, 50), 0);
    }

    #[test]
    fn errors_are_mae_and_rmse() {
        let e = Errors::of(&[1.0, 2.0, 3.0], &[1.0, 4.0, 0.0]);
        assert_eq!(e.rows, 3);
        assert!((e.mae - 5.0 / 3.0).abs() < 1e-12);
        assert!((e.rmse - (13.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(Errors::of(&[], &[]).mae, 0.0);
    }

    #[test]
    fn the_gate_rejects_a_live_outlier_once_it_knows_the_user() {
        let gate = Gate {
            metric: ValidationMetric::Mae,
            ..policy().gate
        };
        let mut evidence = Evidence {
            live: errors(110.0, 120.0),
            live_history: vec![30.0, 35.0],
            window: None,
            confirmed_change: false,
        };
        assert!(
            gate.judge(&evidence).accepted(),
            "two live errors are too few"
        );
        evidence.live_history.push(40.0);
        assert_eq!(
            gate.judge(&evidence),
            Verdict::LiveOutlier {
                live: 110.0,
                typical: 35.0
            }
        );
        evidence.confirmed_change = true;
        assert!(
            gate.judge(&evidence).accepted(),
            "after a reinstatement the old level is no yardstick"
        );
        evidence.confirmed_change = false;
        evidence.live = errors(100.0, 120.0);
        evidence.live_history = vec![30.0, 35.0, 40.0, 32.0];
        assert!(gate.judge(&evidence).accepted(), "100 ≤ 3 × median 33.5");
    }

    #[test]
    fn the_gate_compares_candidate_and_active_on_the_window() {
        let gate = policy().gate;
        // In-sample error 4 on the window, typical live RMSE 40: the candidate may lose 12.
        let judge = |candidate: f64, active: f64, history: Vec<f64>| {
            gate.judge(&Evidence {
                live: errors(30.0, 40.0),
                live_history: history,
                window: Some((errors(0.0, candidate), errors(0.0, active))),
                confirmed_change: false,
            })
        };
        assert!(judge(16.0, 4.0, vec![40.0; 3]).accepted(), "4 + 0.3 × 40");
        assert_eq!(
            judge(16.1, 4.0, vec![40.0; 3]),
            Verdict::WorseOnWindow {
                candidate: 16.1,
                active: 4.0,
                rows: 50
            }
        );
        // Without a history the batch's own live error is the scale.
        assert!(judge(16.0, 4.0, vec![]).accepted());
        assert!(!judge(16.1, 4.0, vec![]).accepted());
        // An active model worse in-sample than the typical live error scales by itself.
        assert!(judge(130.0, 100.0, vec![40.0; 3]).accepted());
        assert!(!judge(130.1, 100.0, vec![40.0; 3]).accepted());
        let off = Gate {
            enabled: false,
            ..gate.clone()
        };
        let evidence = Evidence {
            live: errors(1e9, 1e9),
            live_history: vec![1.0; 5],
            window: Some((errors(0.0, 1e9), errors(0.0, 1.0))),
            confirmed_change: false,
        };
        assert!(off.judge(&evidence).accepted());
    }

    #[test]
    fn rejection_reasons_name_the_numbers() {
        let gate = policy().gate;
        let reason = Verdict::WorseOnWindow {
            candidate: 2.0,
            active: 1.0,
            rows: 250,
        }
        .reason(&gate)
        .unwrap();
        assert!(reason.contains("rmse 2.0000 on the last 250"), "{reason}");
        assert!(reason.contains("30%"), "{reason}");
        assert_eq!(Verdict::Accept.reason(&gate), None);
    }

    #[test]
    fn the_median_ignores_old_and_non_finite_errors() {
        assert_eq!(typical_live(&[1.0, 2.0]), None);
        assert_eq!(typical_live(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(typical_live(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(typical_live(&[1.0, f64::NAN, 2.0, 3.0]), Some(2.0));
        let mut long = vec![1.0; LIVE_HISTORY];
        long.extend([100.0; 30]);
        assert_eq!(typical_live(&long), Some(1.0), "only the newest count");
    }

    #[test]
    fn a_reinstatement_rebuilds_at_once() {
        let rebuild = Step::Rebuild { at_cap: false };
        assert_eq!(after_reinstatement(Step::Continue), rebuild);
        assert_eq!(after_reinstatement(rebuild), rebuild);
        let at_cap = Step::Rebuild { at_cap: true };
        assert_eq!(after_reinstatement(at_cap), at_cap);
        assert_eq!(after_reinstatement(Step::Refresh), Step::Refresh);
    }

    #[test]
    fn a_rejected_version_is_reinstated_only_when_it_predicts_better() {
        assert!(reinstate(errors(10.0, 0.0), errors(11.0, 0.0)));
        assert!(!reinstate(errors(11.0, 0.0), errors(11.0, 0.0)));
    }
}
