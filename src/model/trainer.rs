//! Continued training of one user's booster, step for step as Python does it:
//!
//! ```python
//! bst = xgb.train(params, dtrain, num_boost_round=k, xgb_model=previous)
//! # = Booster(params, [dtrain], model_file=previous), then
//! #   for i in range(bst.num_boosted_rounds(), bst.num_boosted_rounds() + k): bst.update(dtrain, i)
//! ```
//!
//! Everything here is CPU-bound and blocking: callers run it on a blocking thread.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::config::ValidationMetric;
use crate::model::xgboost::{Booster, Matrix, XgbError};
use crate::retrain::features::Batch;
use crate::retrain::policy::{self, Errors, Evidence, Lineage, Policy, Step, Verdict};

/// How a model is produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainMode {
    /// Add `rounds` boosting rounds to the previous model (or start fresh without one).
    Continue,
    /// Re-fit the leaves of every tree of the previous model on the batch
    /// (`process_type=update`, `updater=refresh`): the tree count stays the same.
    Refresh,
    /// Train a fresh model of `rounds` rounds; the previous model is only scored (compaction).
    Restart,
}

/// The model a retrain starts from.
pub enum Previous<'a> {
    /// A user without a model yet.
    None,
    /// The active version's stored UBJSON artifact.
    Artifact(&'a [u8]),
    /// The active version, already in memory (see `model::cache::ModelCache`).
    Loaded(Booster),
}

impl Previous<'static> {
    /// A model file loaded into memory, as the model cache keeps a user's model between retrains
    /// (for the benchmarks, which measure training from memory against training from the file).
    pub fn load(artifact: &[u8]) -> Result<Self, TrainError> {
        let booster = Booster::load(artifact, &[]).map_err(TrainError::CorruptArtifact)?;
        Ok(Previous::Loaded(booster))
    }
}

/// What a retrain needs to train.
pub struct TrainInput<'a> {
    pub previous: Previous<'a>,
    pub mode: TrainMode,
    /// Training parameters, stored with the version and re-applied after loading.
    pub params: &'a BTreeMap<String, String>,
    /// Boosting rounds to add.
    pub rounds: i32,
    /// XGBoost threads (not stored with the model).
    pub nthread: u32,
    /// The rows, already laid out in the model's feature order.
    pub batch: &'a Batch,
    /// Held-out rows on which the previous and the new model are scored (the validation gate).
    pub holdout: Option<(&'a Batch, ValidationMetric)>,
    /// Return a copy of the new model to keep in memory ([`Trained::booster`]).
    pub keep_model: bool,
}

/// A newly trained model.
pub struct Trained {
    pub artifact: Vec<u8>,
    /// A lean copy of the model (no training state) for the caller to keep for the next
    /// retrain, when asked for; never after a refresh, whose updater settings must not carry over.
    pub(crate) booster: Option<Booster>,
    pub(crate) trees: i64,
    pub(crate) boosted_rounds: i32,
    /// Time spent loading stored models (zero when the model was in memory).
    pub load: Duration,
    /// Time spent in boosting rounds.
    pub train: Duration,
    /// Time spent serialising the new model.
    pub save: Duration,
    /// Scores on the holdout (lower is better): the new model's and the previous model's.
    pub(crate) scores: Option<Scores>,
}

/// The validation gate's scores of one retrain.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Scores {
    pub(crate) candidate: f64,
    pub(crate) previous: f64,
    pub(crate) rows: usize,
}

/// Why a retrain could not produce a model.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The stored artifact of the active version cannot be loaded.
    #[error("the active model artifact cannot be loaded: {0}")]
    CorruptArtifact(XgbError),
    /// The active model was trained on other features than its recorded feature list.
    #[error("the active model's features {model:?} are not its recorded features {recorded:?}")]
    FeatureMismatch {
        model: Vec<String>,
        recorded: Vec<String>,
    },
    /// XGBoost refused the parameters or the data.
    #[error("training failed: {0}")]
    Xgboost(#[from] XgbError),
}

/// Continues (or starts, or restarts) a model on `input.batch`, scoring the previous and the new
/// model on the holdout when one is given.
pub fn train(input: TrainInput<'_>) -> Result<Trained, TrainError> {
    let batch = input.batch;
    let dtrain = labelled(batch)?;
    let holdout = match input.holdout {
        Some((rows, metric)) if rows.rows() > 0 => Some((labelled(rows)?, rows, metric)),
        _ => None,
    };
    let score = |booster: &Booster| -> Result<Option<f64>, TrainError> {
        match &holdout {
            Some((data, rows, metric)) => Ok(Some(errors_on(booster, data, rows)?.get(*metric))),
            None => Ok(None),
        }
    };

    let (previous, load_time) = match input.previous {
        Previous::None => (None, Duration::ZERO),
        previous => {
            let (booster, took) = load(previous, &dtrain, batch)?;
            (Some(booster), took)
        }
    };
    let previous_score = match &previous {
        Some(booster) => score(booster)?,
        None => None,
    };
    let mut booster = match (previous, input.mode) {
        (Some(booster), TrainMode::Continue | TrainMode::Refresh) => booster,
        (_, _) => Booster::new(&[&dtrain])?,
    };
    configure(
        &mut booster,
        input.params,
        input.nthread,
        &batch.feature_names,
    )?;

    let started = Instant::now();
    match input.mode {
        TrainMode::Continue | TrainMode::Restart => {
            continue_rounds(&mut booster, &dtrain, input.rounds, 0.0)?
        }
        TrainMode::Refresh => refresh(&mut booster, &dtrain)?,
    }
    let train_time = started.elapsed();
    let scores = match (score(&booster)?, previous_score, &holdout) {
        (Some(candidate), Some(previous), Some((_, rows, _))) => Some(Scores {
            candidate,
            previous,
            rows: rows.rows(),
        }),
        _ => None,
    };
    let keep = input.keep_model && input.mode != TrainMode::Refresh;
    let mut trained = finish(booster, keep, load_time, train_time)?;
    trained.scores = scores;
    Ok(trained)
}

/// What one policy step needs (see [`crate::retrain::policy`]).
pub(crate) struct StepInput<'a> {
    pub(crate) policy: &'a Policy,
    /// The active (serving) version and where it stands; `None` for a user without a model.
    pub(crate) active: Option<(Previous<'a>, Lineage)>,
    /// A rejected version made from the active one: it becomes the base when it predicts the
    /// batch better than the active version.
    pub(crate) rejected: Option<(&'a [u8], Lineage)>,
    /// Training parameters, stored with the version and re-applied after loading.
    pub(crate) params: &'a BTreeMap<String, String>,
    /// XGBoost threads (not stored with the model).
    pub(crate) nthread: u32,
    /// The pending rows, in the model's feature order.
    pub(crate) batch: &'a Batch,
    /// Actuals that serving versions trained on, oldest first (the gate's and a rebuild's window).
    pub(crate) recent: &'a Batch,
    /// The actuals the rejected version trained on, oldest first: they join `recent` when it is
    /// reinstated.
    pub(crate) rejected_rows: &'a Batch,
    /// Live MAEs of the user's recent versions, newest first.
    pub(crate) live_history: &'a [f64],
    /// Return a copy of the new model to keep in memory ([`Trained::booster`]).
    pub(crate) keep_model: bool,
}

/// What one policy step made.
pub(crate) struct StepResult {
    pub(crate) trained: Trained,
    /// The step that made `trained` (a rejected candidate is always a continue or a refresh).
    pub(crate) step: Step,
    /// Accepted continue steps since the new version's last rebuild.
    pub(crate) since_rebuild: u32,
    /// The active version's error on the batch, before training on it.
    pub(crate) live: Option<Errors>,
    /// The rejected version became the base.
    pub(crate) reinstated: bool,
    pub(crate) verdict: Verdict,
    /// The candidate's and the base's errors on the gate's window.
    pub(crate) window: Option<(Errors, Errors)>,
    /// The median of the user's recent live errors (the gate's scale).
    pub(crate) typical_live: Option<f64>,
    /// Rows the new version was trained on in this step.
    pub(crate) rows_trained: usize,
    pub(crate) rounds: i32,
    /// The active version came from memory (kept since the user's last retrain), not loaded.
    pub(crate) model_cached: bool,
    /// CPU time the step took on its thread (XGBoost runs there with `nthread` 1; more threads'
    /// work is not counted).
    pub(crate) cpu: Duration,
}

/// The calling thread's CPU time so far.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Runs one step of the retraining policy (see [`step`]) and measures its thread's CPU time.
pub(crate) fn run_step(input: StepInput<'_>) -> Result<StepResult, TrainError> {
    let started = thread_cpu();
    let mut result = step(input)?;
    result.cpu = thread_cpu().saturating_sub(started);
    Ok(result)
}

/// Runs one step of the retraining policy: picks the base model (reinstating a rejected
/// version that predicts the batch better), continues it on the batch, lets the gate judge the
/// candidate, and, when the policy says so and the gate agrees, rebuilds from the window instead.
fn step(mut input: StepInput<'_>) -> Result<StepResult, TrainError> {
    let (policy, batch) = (input.policy, input.batch);
    let data = labelled(batch)?;
    let base = choose_base(input.active.take(), input.rejected, &data, batch)?;
    let (load_time, model_cached) = (base.load, base.cached);

    let lineage = base.booster.as_ref().map(|(_, l)| *l).unwrap_or_default();
    let planned = plan(policy, lineage, base.reinstated);
    let recent = training_window(input.recent, input.rejected_rows, base.reinstated);
    let (Some((mut booster, _)), Some(base_live)) = (base.booster, base.base_live) else {
        return fresh(&input, &recent, load_time);
    };

    let gate = GateWindow::new(policy, &recent)?;
    let base_window = gate.errors(&booster)?;
    configure(
        &mut booster,
        input.params,
        input.nthread,
        &batch.feature_names,
    )?;
    let started = Instant::now();
    let (mut step, mut rounds) = train_on_batch(&mut booster, &data, planned, policy)?;
    let window = match base_window {
        Some(base) => gate.errors(&booster)?.map(|candidate| (candidate, base)),
        None => None,
    };
    let verdict = policy.gate.judge(&Evidence {
        live: base_live,
        live_history: input.live_history.to_vec(),
        window,
        confirmed_change: base.reinstated,
    });
    let mut rows_trained = batch.rows();
    if verdict.accepted() && matches!(planned, Step::Rebuild { .. }) {
        (booster, rows_trained) = rebuild(&recent, batch, policy, input.params, input.nthread)?;
        (step, rounds) = (planned, policy.rebuild_rounds);
    }
    let train_time = started.elapsed();
    let keep = input.keep_model && step != Step::Refresh;
    Ok(StepResult {
        trained: finish(booster, keep, load_time, train_time)?,
        step,
        since_rebuild: Policy::since_rebuild(step, lineage),
        live: base.live,
        reinstated: base.reinstated,
        verdict,
        window,
        typical_live: policy::typical_live(input.live_history),
        rows_trained,
        rounds,
        model_cached,
        cpu: Duration::ZERO,
    })
}

/// The model a step starts from.
struct Base {
    /// The active version, or the rejected one reinstated; `None` for a user without a model.
    booster: Option<(Booster, Lineage)>,
    /// The active version's error on the batch.
    live: Option<Errors>,
    /// The base's error on the batch.
    base_live: Option<Errors>,
    /// The rejected version became the base.
    reinstated: bool,
    /// The active version was the one kept in memory.
    cached: bool,
    /// Time spent loading stored models.
    load: Duration,
}

/// Loads the active version and reinstates the rejected one instead when it predicts the batch
/// better.
fn choose_base(
    active: Option<(Previous<'_>, Lineage)>,
    rejected: Option<(&[u8], Lineage)>,
    data: &Matrix,
    batch: &Batch,
) -> Result<Base, TrainError> {
    let cached = matches!(active, Some((Previous::Loaded(_), _)));
    let mut load_time = Duration::ZERO;
    let mut booster = match active {
        None => None,
        Some((previous, lineage)) => {
            let (booster, took) = load(previous, data, batch)?;
            load_time += took;
            Some((booster, lineage))
        }
    };
    let live = match &booster {
        Some((booster, _)) => Some(errors_on(booster, data, batch)?),
        None => None,
    };
    let (mut base_live, mut reinstated) = (live, false);
    if let (Some(active_live), Some((artifact, lineage))) = (live, rejected) {
        let (rejected, took) = load(Previous::Artifact(artifact), data, batch)?;
        load_time += took;
        let on_batch = errors_on(&rejected, data, batch)?;
        if policy::reinstate(on_batch, active_live) {
            booster = Some((rejected, lineage));
            (base_live, reinstated) = (Some(on_batch), true);
        }
    }
    Ok(Base {
        booster,
        live,
        base_live,
        reinstated,
        cached,
        load: load_time,
    })
}

/// The step the policy plans for the base.
fn plan(policy: &Policy, lineage: Lineage, reinstated: bool) -> Step {
    match reinstated {
        false => policy.plan(lineage),
        true => policy::after_reinstatement(policy.plan(lineage)),
    }
}

/// The recent actuals the gate and a rebuild use: with a reinstated version's rows after them.
fn training_window<'a>(
    recent: &'a Batch,
    rejected_rows: &Batch,
    reinstated: bool,
) -> Cow<'a, Batch> {
    match reinstated {
        false => Cow::Borrowed(recent),
        true => {
            let mut rows = recent.clone();
            rows.extend(rejected_rows.clone());
            Cow::Owned(rows)
        }
    }
}

/// The first model of a user: a rebuild from the window, accepted without a gate.
fn fresh(
    input: &StepInput<'_>,
    recent: &Batch,
    load_time: Duration,
) -> Result<StepResult, TrainError> {
    let started = Instant::now();
    let (booster, rows) = rebuild(
        recent,
        input.batch,
        input.policy,
        input.params,
        input.nthread,
    )?;
    let train_time = started.elapsed();
    Ok(StepResult {
        trained: finish(booster, input.keep_model, load_time, train_time)?,
        step: Step::Fresh,
        since_rebuild: 0,
        live: None,
        reinstated: false,
        verdict: Verdict::Accept,
        window: None,
        typical_live: None,
        rows_trained: rows,
        rounds: input.policy.rebuild_rounds,
        model_cached: false,
        cpu: Duration::ZERO,
    })
}

/// The newest actuals already trained on, on which the gate scores the base and the candidate.
struct GateWindow {
    rows: Batch,
    /// `None` when the gate is off or there are no rows.
    data: Option<Matrix>,
}

impl GateWindow {
    fn new(policy: &Policy, recent: &Batch) -> Result<Self, TrainError> {
        let rows = match policy.gate.enabled {
            true => recent.newest(policy.gate.window as usize),
            false => Batch::default(),
        };
        let data = match rows.rows() {
            0 => None,
            _ => Some(labelled(&rows)?),
        };
        Ok(Self { rows, data })
    }

    /// The model's errors on the window, if there is one.
    fn errors(&self, booster: &Booster) -> Result<Option<Errors>, TrainError> {
        match &self.data {
            Some(d) => Ok(Some(errors_on(booster, d, &self.rows)?)),
            None => Ok(None),
        }
    }
}

/// Trains the base on the batch: a refresh when planned, else continued rounds (a planned
/// rebuild starts as a continue for the gate to judge). Returns the step taken and its rounds.
fn train_on_batch(
    booster: &mut Booster,
    data: &Matrix,
    planned: Step,
    policy: &Policy,
) -> Result<(Step, i32), TrainError> {
    Ok(match planned {
        Step::Refresh => {
            refresh(booster, data)?;
            (Step::Refresh, 0)
        }
        _ => {
            continue_rounds(booster, data, policy.rounds, policy.continue_eta)?;
            (Step::Continue, policy.rounds)
        }
    })
}

/// A matrix of the batch's rows with its labels.
fn labelled(batch: &Batch) -> Result<Matrix, TrainError> {
    let mut data = Matrix::dense(&batch.values, batch.rows(), &batch.feature_names)?;
    data.set_labels(&batch.labels)?;
    Ok(data)
}

/// Loads a stored model (or takes the one kept in memory) and checks its features; with the time
/// loading took (none for a model kept in memory).
fn load(
    previous: Previous<'_>,
    data: &Matrix,
    batch: &Batch,
) -> Result<(Booster, Duration), TrainError> {
    let started = Instant::now();
    let (booster, took) = match previous {
        Previous::None => (Booster::new(&[data])?, started.elapsed()),
        Previous::Artifact(artifact) => (
            Booster::load(artifact, &[data]).map_err(TrainError::CorruptArtifact)?,
            started.elapsed(),
        ),
        Previous::Loaded(booster) => (booster, Duration::ZERO),
    };
    check_features(&booster, &batch.feature_names)?;
    Ok((booster, took))
}

fn errors_on(booster: &Booster, data: &Matrix, batch: &Batch) -> Result<Errors, TrainError> {
    Ok(Errors::of(&booster.predict(data)?, &batch.labels))
}

/// Applies the version's parameters (they are not all kept in a saved model) and the threads.
fn configure(
    booster: &mut Booster,
    params: &BTreeMap<String, String>,
    nthread: u32,
    features: &[String],
) -> Result<(), TrainError> {
    booster.set_feature_names(features)?;
    booster.set_param("validate_parameters", "1")?;
    for (name, value) in params {
        booster.set_param(name, value)?;
    }
    booster.set_param("nthread", &nthread.to_string())?;
    Ok(())
}

/// Adds `rounds` rounds, at learning rate `eta` when it is positive.
fn continue_rounds(
    booster: &mut Booster,
    data: &Matrix,
    rounds: i32,
    eta: f64,
) -> Result<(), TrainError> {
    if eta > 0.0 {
        booster.set_param("eta", &eta.to_string())?;
    }
    let first = booster.boosted_rounds()?;
    for iteration in first..first + rounds {
        booster.update(iteration, data)?;
    }
    Ok(())
}

/// Re-fits the leaves of every tree on the batch; the tree count stays the same.
fn refresh(booster: &mut Booster, data: &Matrix) -> Result<(), TrainError> {
    let rounds = booster.boosted_rounds()?;
    booster.set_param("process_type", "update")?;
    booster.set_param("updater", "refresh")?;
    booster.set_param("refresh_leaf", "1")?;
    for iteration in 0..rounds {
        booster.update(iteration, data)?;
    }
    // Later retrains grow trees again.
    booster.set_param("process_type", "default")?;
    Ok(())
}

/// A fresh model of the policy's rebuild rounds on the newest window of recent actuals plus the
/// batch; returns it with the number of rows it was trained on.
fn rebuild(
    recent: &Batch,
    batch: &Batch,
    policy: &Policy,
    params: &BTreeMap<String, String>,
    nthread: u32,
) -> Result<(Booster, usize), TrainError> {
    let keep = (policy.window as usize).saturating_sub(batch.rows());
    let mut rows = recent.newest(keep);
    rows.extend(batch.clone());
    let mut data = labelled(&rows)?;
    if let Some(weights) = policy::recency_weights(rows.rows(), policy.half_life) {
        data.set_weights(&weights)?;
    }
    let mut booster = Booster::new(&[&data])?;
    configure(&mut booster, params, nthread, &rows.feature_names)?;
    if policy.rebuild_eta > 0.0 {
        booster.set_param("eta", &policy.rebuild_eta.to_string())?;
    }
    for iteration in 0..policy.rebuild_rounds {
        booster.update(iteration, &data)?;
    }
    Ok((booster, rows.rows()))
}

/// Serialises the new model and describes it.
fn finish(
    booster: Booster,
    keep_model: bool,
    load: Duration,
    train: Duration,
) -> Result<Trained, TrainError> {
    let started = Instant::now();
    let artifact = booster.save_ubjson()?;
    let save = started.elapsed();
    Ok(Trained {
        artifact,
        trees: booster.trees()?,
        boosted_rounds: booster.boosted_rounds()?,
        booster: match keep_model {
            true => Some(booster.model_copy()?),
            false => None,
        },
        load,
        train,
        save,
        scores: None,
    })
}

/// A model with other features (by count, or by name when the file carries names) would be
/// continued on misaligned columns: refuse it.
fn check_features(booster: &Booster, recorded: &[String]) -> Result<(), TrainError> {
    let count = booster.num_features()? as usize;
    let names = booster.feature_names()?;
    if count == recorded.len() && (names.is_empty() || names == recorded) {
        return Ok(());
    }
    let model = if names.is_empty() {
        vec![format!("<{count} unnamed>")]
    } else {
        names
    };
    Err(TrainError::FeatureMismatch {
        model,
        recorded: recorded.to_vec(),
    })
}

/// Predicts with a stored model; rows are laid out in `batch.feature_names` order.
pub fn predict(artifact: &[u8], batch: &Batch) -> Result<Vec<f32>, TrainError> {
    let data = Matrix::dense(&batch.values, batch.rows(), &batch.feature_names)?;
    let booster = Booster::load(artifact, &[]).map_err(TrainError::CorruptArtifact)?;
    Ok(booster.predict(&data)?)
}

/// Root mean squared error or mean absolute error of `artifact` on `batch` (lower is better).
pub fn score(artifact: &[u8], batch: &Batch, metric: ValidationMetric) -> Result<f64, TrainError> {
    Ok(Errors::of(&predict(artifact, batch)?, &batch.labels).get(metric))
}

/// What a model file holds.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// Feature names stored in the file (empty when it has none).
    pub features: Vec<String>,
    pub(crate) num_features: u64,
    pub(crate) trees: i64,
    pub(crate) boosted_rounds: i32,
    /// The learning objective, e.g. `reg:squarederror`.
    pub(crate) objective: Option<String>,
}

/// Loads a model file and describes it; fails when XGBoost cannot load it.
pub fn inspect(artifact: &[u8]) -> Result<ModelInfo, TrainError> {
    describe(&Booster::load(artifact, &[]).map_err(TrainError::CorruptArtifact)?)
}

fn describe(booster: &Booster) -> Result<ModelInfo, TrainError> {
    let config: serde_json::Value =
        serde_json::from_str(&booster.config_json()?).unwrap_or_default();
    Ok(ModelInfo {
        features: booster.feature_names()?,
        num_features: booster.num_features()?,
        trees: booster.trees()?,
        boosted_rounds: booster.boosted_rounds()?,
        objective: config
            .pointer("/learner/objective/name")
            .and_then(|v| v.as_str())
            .map(str::to_owned),
    })
}

/// [`inspect`], and the model saved as UBJSON (the format refit stores and exports), whatever the
/// format of `artifact` (UBJSON or JSON).
pub(crate) fn inspect_as_ubjson(artifact: &[u8]) -> Result<(ModelInfo, Vec<u8>), TrainError> {
    let booster = Booster::load(artifact, &[]).map_err(TrainError::CorruptArtifact)?;
    Ok((describe(&booster)?, booster.save_ubjson()?))
}

/// The feature names stored inside a model file, if it has them.
#[cfg(test)]
pub(crate) fn artifact_features(artifact: &[u8]) -> Result<Vec<String>, TrainError> {
    let booster = Booster::load(artifact, &[]).map_err(TrainError::CorruptArtifact)?;
    Ok(booster.feature_names()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retrain::features::{prepare, ActualRow};

    fn batch(offset: usize) -> Batch {
        let rows: Vec<ActualRow> = (0..50)
            .map(|i| {
                let x = (i + offset) as f64;
                ActualRow {
                    actual_id: i as i64,
                    actual_value: 2.0 * x + (x * 0.7).sin(),
                    features: format!(r#"{{"x": {x}, "y": {}}}"#, (x * 1.3) % 7.0),
                }
            })
            .collect();
        prepare(&rows, None)
    }

    /// The defaults of every setting.
    fn config() -> crate::config::Config {
        crate::config::Config::from_sources(
            None,
            &[("DATABASE_URL".to_owned(), "postgres://h/db".to_owned())].into(),
        )
        .unwrap()
    }

    fn params() -> BTreeMap<String, String> {
        config().training.xgb_params
    }

    /// A user's first model: `rounds` rounds on `batch(0)`.
    fn first_model(params: &BTreeMap<String, String>, rounds: i32) -> Trained {
        train(TrainInput {
            previous: Previous::None,
            mode: TrainMode::Continue,
            params,
            rounds,
            nthread: 1,
            holdout: None,
            keep_model: true,
            batch: &batch(0),
        })
        .unwrap()
    }

    #[test]
    fn continued_training_adds_rounds_and_keeps_features() {
        let params = params();
        let first = first_model(&params, 5);
        assert_eq!(first.boosted_rounds, 5);
        assert_eq!(first.trees, 5);

        let second = train(TrainInput {
            previous: Previous::Artifact(&first.artifact),
            mode: TrainMode::Continue,
            params: &params,
            rounds: 5,
            nthread: 1,
            holdout: None,
            keep_model: true,
            batch: &batch(50),
        })
        .unwrap();
        assert_eq!(second.boosted_rounds, 10);
        assert_eq!(artifact_features(&second.artifact).unwrap(), ["x", "y"]);
        // The continued model fits the new rows better than the old one did.
        let b = batch(50);
        let err = |artifact: &[u8]| -> f32 {
            let p = predict(artifact, &b).unwrap();
            p.iter()
                .zip(&b.labels)
                .map(|(p, y)| (p - y).powi(2))
                .sum::<f32>()
        };
        assert!(err(&second.artifact) < err(&first.artifact));
    }

    /// The train log's `model_cached` and `load_ms` (and the bench's count of cache hits) say
    /// whether the active model was loaded; they once counted the live prediction as loading, so
    /// no retrain ever showed a cache hit.
    #[test]
    fn a_step_on_the_kept_model_reports_a_cache_hit_and_no_load() {
        let config = config();
        let params = config.training.xgb_params.clone();
        let first = first_model(&params, 5);
        let (recent, next) = (batch(0), batch(50));
        let step_on = |active: Previous<'_>| {
            run_step(StepInput {
                policy: &config.policy,
                active: Some((active, Lineage::default())),
                rejected: None,
                params: &params,
                nthread: 1,
                batch: &next,
                recent: &recent,
                rejected_rows: &Batch::default(),
                live_history: &[],
                keep_model: false,
            })
            .unwrap()
        };
        let stored = step_on(Previous::Artifact(&first.artifact));
        assert!(!stored.model_cached);
        assert!(stored.trained.load > Duration::ZERO);
        let kept = Booster::load(&first.artifact, &[]).unwrap();
        let cached = step_on(Previous::Loaded(kept));
        assert!(cached.model_cached);
        assert_eq!(cached.trained.load, Duration::ZERO);
    }

    #[test]
    fn continuing_the_kept_model_equals_continuing_its_artifact() {
        let params = params();
        let first = first_model(&params, 5);
        let (next, holdout) = batch(50).split_last(10);
        let from_memory = train(TrainInput {
            previous: Previous::Loaded(first.booster.unwrap()),
            mode: TrainMode::Continue,
            params: &params,
            rounds: 5,
            nthread: 1,
            holdout: Some((&holdout, ValidationMetric::Rmse)),
            keep_model: false,
            batch: &next,
        })
        .unwrap();
        let from_artifact = train(TrainInput {
            previous: Previous::Artifact(&first.artifact),
            mode: TrainMode::Continue,
            params: &params,
            rounds: 5,
            nthread: 1,
            holdout: Some((&holdout, ValidationMetric::Rmse)),
            keep_model: false,
            batch: &next,
        })
        .unwrap();
        assert!(from_memory.load < from_artifact.load);
        assert_eq!(from_memory.boosted_rounds, 10);
        let all = batch(0);
        assert_eq!(
            predict(&from_memory.artifact, &all).unwrap(),
            predict(&from_artifact.artifact, &all).unwrap()
        );
        let (memory, artifact) = (from_memory.scores.unwrap(), from_artifact.scores.unwrap());
        assert_eq!(memory, artifact);
        assert_eq!(memory.rows, 10);
        assert_eq!(
            memory.previous,
            score(&first.artifact, &holdout, ValidationMetric::Rmse).unwrap(),
            "the previous model is scored before it is continued"
        );
        assert_eq!(
            memory.candidate,
            score(&from_memory.artifact, &holdout, ValidationMetric::Rmse).unwrap()
        );
    }

    #[test]
    fn refresh_keeps_the_tree_count_and_refits_leaves() {
        let params = params();
        let first = first_model(&params, 8);
        let shifted = {
            let mut b = batch(0);
            b.labels.iter_mut().for_each(|y| *y += 100.0);
            b
        };
        let refreshed = train(TrainInput {
            previous: Previous::Artifact(&first.artifact),
            mode: TrainMode::Refresh,
            params: &params,
            rounds: 0,
            nthread: 1,
            holdout: None,
            keep_model: true,
            batch: &shifted,
        })
        .unwrap();
        assert_eq!(refreshed.trees, 8);
        let before = score(&first.artifact, &shifted, ValidationMetric::Mae).unwrap();
        let after = score(&refreshed.artifact, &shifted, ValidationMetric::Mae).unwrap();
        assert!(
            after < before / 2.0,
            "refreshed leaves fit the shifted labels: {before} -> {after}"
        );
    }

    #[test]
    fn corrupt_artifact_is_reported_as_such() {
        let params = params();
        let result = train(TrainInput {
            previous: Previous::Artifact(b"definitely not a model"),
            mode: TrainMode::Continue,
            params: &params,
            rounds: 1,
            nthread: 1,
            holdout: None,
            keep_model: true,
            batch: &batch(0),
        });
        assert!(
            matches!(result, Err(TrainError::CorruptArtifact(_))),
            "{:?}",
            result.err()
        );
    }
}
