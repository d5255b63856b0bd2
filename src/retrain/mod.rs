//! One retrain of one user the scheduler ([`crate::scheduler`]) found due: read → train → validate
//! → commit, then the outbox (invalidate, announce). [`Retrainer::retrain_user`] is the whole
//! unit of work and returns what it did, so tests can drive it deterministically and the service
//! loop can schedule it.
//!
//! The read, the training and the commit happen inside one transaction that holds the user's
//! registry row lock: a crash anywhere before the commit rolls everything back and the actuals
//! stay pending; after the commit, the outbox carries the side effects out.
//!
//! Which model a retrain makes — continue, rebuild, refresh — and whether it may serve is the
//! retraining policy's decision (`policy`): a rejected version is stored as `rejected`, serving is
//! untouched, and its batch stays consumed by (attributed to) it, so a harmful batch is not
//! retried forever and can still be inspected, promoted, or reinstated by the next retrain.
//!
//! A user with fewer than `REFIT_RETRAIN_THRESHOLD` pending actuals is retrained anyway once its
//! oldest pending actual is older than `REFIT_MAX_STALENESS_SECS` (when set), on at least
//! `REFIT_STALE_MIN_ROWS` actuals.

pub mod features;
mod lines;
pub mod policy;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use serde_json::{json, Map, Value};
use sqlx::PgPool;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::config::Config;
use crate::domain::{
    Attempt, Failed, NewVersion, RetrainEvent, Trained, VersionColumns, VersionStatus,
};
use crate::model::cache::ModelCache;
use crate::model::trainer::{self, Previous, StepInput, StepResult, TrainError};
use crate::model::xgboost::Booster;
use crate::outbox::{elapsed_ms, Committed, Outbox};
use crate::registry::retention;
use crate::store;
use crate::store::actuals::Consumed;
use crate::store::outbox::OutboxKind;
use crate::store::versions::ModelHead;
use crate::telemetry::metrics::Metrics;
use features::{ActualRow, Batch};
use policy::{Lineage, Policy};

/// The longest a user backs off after repeated failed retrains.
pub(crate) const MAX_FAILURE_BACKOFF: Duration = Duration::from_secs(300);

/// What one call of [`Retrainer::retrain_user`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A new version was committed and activated.
    Trained {
        version: i32,
        rows_used: usize,
        rows_set_aside: usize,
    },
    /// The new version scored worse than the active one on held-out actuals: stored as
    /// `rejected`, the active version unchanged.
    Rejected { version: i32, reason: String },
    /// Every row of the batch was unusable: they are set aside, no version was made.
    AllSetAside { rows_set_aside: usize },
    /// Training failed (e.g. a corrupt artifact): recorded, announced, rows still pending.
    Failed { version: i32, reason: String },
    /// Fewer than `threshold` pending actuals: this many.
    NotDue { pending: i64 },
    /// Another retrain (maybe in another replica) holds the user.
    Busy,
    /// The user is backing off after a failure.
    BackingOff,
}

impl Outcome {
    /// Whether another batch may be waiting right behind this one.
    pub(crate) fn consumed_rows(&self) -> bool {
        matches!(
            self,
            Outcome::Trained { .. } | Outcome::Rejected { .. } | Outcome::AllSetAside { .. }
        )
    }
}

/// Runs retrains.
pub struct Retrainer {
    pool: PgPool,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    /// Carries out the side effects after each commit, so a retrain never waits for Redis or
    /// Kafka.
    outbox: Arc<Outbox>,
    /// Each user's last committed model, kept loaded for its next retrain.
    models: ModelCache,
}

impl Retrainer {
    pub(crate) fn new(
        pool: PgPool,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        outbox: Arc<Outbox>,
    ) -> Self {
        Retrainer {
            models: ModelCache::new(config.training.model_cache_bytes),
            pool,
            config,
            metrics,
            outbox,
        }
    }

    /// Actuals consumed per retrain.
    pub(crate) fn threshold(&self) -> i64 {
        self.config.scheduling.retrain_threshold
    }

    /// Waits for every fast-path delivery started so far (before shutdown).
    pub(crate) async fn drain_deliveries(&self) {
        self.outbox.drain().await;
    }

    /// Whether `rows` pending actuals, the oldest pending since `oldest`, are due by staleness.
    fn stale(&self, rows: usize, oldest: Option<chrono::DateTime<Utc>>) -> bool {
        match (self.config.scheduling.max_staleness, oldest) {
            (Some(limit), Some(oldest)) => {
                rows as i64 >= self.config.scheduling.stale_min_rows
                    && (Utc::now() - oldest).to_std().is_ok_and(|age| age >= limit)
            }
            _ => false,
        }
    }

    /// [`Retrainer::retrain_user`] within the retrain deadline (REFIT_RETRAIN_TIMEOUT_SECS). An
    /// error — at read, at commit, or the deadline passed (the retrain's transaction is dropped,
    /// so it rolls back and releases the user's row lock) — backs the user off exponentially, as
    /// a failed training does, instead of retrying it at every poll.
    pub(crate) async fn retrain_bounded(
        &self,
        user_id: &str,
        pending: i64,
    ) -> anyhow::Result<Outcome> {
        let attempt = self.retrain_user(user_id, pending);
        let result = match self.config.scheduling.retrain_timeout {
            None => attempt.await,
            Some(limit) => tokio::time::timeout(limit, attempt)
                .await
                .unwrap_or_else(|_| {
                    Err(anyhow::anyhow!(
                        "the retrain passed its deadline of {} s (REFIT_RETRAIN_TIMEOUT_SECS) and was rolled back",
                        limit.as_secs()
                    ))
                }),
        };
        if let Err(error) = &result {
            self.metrics.count_retrain(VersionStatus::Failed);
            warn!(
                user_id,
                error = format!("{error:#}"),
                "retrain aborted; its actuals stay pending and the user backs off"
            );
            let lock_wait = Duration::from_secs(5);
            if let Err(e) =
                store::versions::back_off(&self.pool, user_id, MAX_FAILURE_BACKOFF, lock_wait).await
            {
                warn!(user_id, error = %e, "cannot record the back-off; the next scan retries the user");
            }
        }
        result
    }

    /// Retrains `user_id` once if it has `>= threshold` pending actuals (or stale ones). `pending` is what the
    /// detector counted (for the detect log line).
    pub async fn retrain_user(&self, user_id: &str, pending: i64) -> anyhow::Result<Outcome> {
        let retrain_id = Uuid::now_v7();
        let (tx, head) = match self.lock(user_id).await? {
            Ok(locked) => locked,
            Err(outcome) => return Ok(outcome),
        };
        let (mut tx, read) = match self.read_batch(tx, user_id, retrain_id, pending).await? {
            Ok(read) => read,
            Err(outcome) => return Ok(outcome),
        };
        let attempt = start_attempt(user_id, retrain_id, &head, read.data_until);
        let mut timings = Map::new();
        timings.insert("read".into(), read.read_ms.into());
        let built = self
            .make_version(&mut tx, &attempt, &head, &read.rows, &mut timings)
            .await?;
        match built {
            Built::Version(commit) => {
                self.commit_version(tx, &attempt, &head, *commit, timings)
                    .await
            }
            Built::Failed(failure) => self.commit_failure(tx, &attempt, failure, timings).await,
            Built::AllSetAside { rows_set_aside } => {
                tx.commit().await?;
                warn!(%retrain_id, user_id, rows_set_aside, "no usable actual in the batch; no new version");
                Ok(Outcome::AllSetAside { rows_set_aside })
            }
        }
    }

    /// Locks the user's registry row (making it for a new user); `Err` is why this attempt stops
    /// here.
    async fn lock(
        &self,
        user_id: &str,
    ) -> anyhow::Result<Result<(Tx<'static>, ModelHead), Outcome>> {
        let metric = self.config.policy.gate.metric.as_str();
        let mut tx = self.pool.begin().await?;
        let head = match store::versions::lock_model(&mut tx, user_id, metric).await? {
            Some(head) => head,
            // A new user has no registry row yet: make it (outside this transaction, so another
            // replica never waits on it) and lock again.
            None if !store::versions::model_row_exists(&mut tx, user_id).await? => {
                tx.rollback().await?;
                store::versions::ensure_model_row(&self.pool, user_id).await?;
                tx = self.pool.begin().await?;
                match store::versions::lock_model(&mut tx, user_id, metric).await? {
                    Some(head) => head,
                    None => return Ok(Err(Outcome::Busy)),
                }
            }
            None => return Ok(Err(Outcome::Busy)),
        };
        if head.backing_off {
            return Ok(Err(Outcome::BackingOff));
        }
        Ok(Ok((tx, head)))
    }

    /// Reads the pending batch (timed and logged) if the user is due, setting aside or forgetting
    /// on the way what can never be trained on; `Err` is [`Outcome::NotDue`] (committing what was
    /// set aside or forgotten, if any).
    async fn read_batch<'c>(
        &self,
        mut tx: Tx<'c>,
        user_id: &str,
        retrain_id: Uuid,
        pending: i64,
    ) -> anyhow::Result<Result<(Tx<'c>, ReadBatch), Outcome>> {
        let started = Instant::now();
        let threshold = self.config.scheduling.retrain_threshold;
        let batch = store::actuals::read_pending(&mut tx, user_id, threshold).await?;
        self.report_unusable(&batch, user_id, retrain_id);
        let oldest = batch.rows.iter().map(|p| p.enqueued_at).min();
        if (batch.rows.len() as i64) < threshold && !self.stale(batch.rows.len(), oldest) {
            if batch.changed() {
                tx.commit().await?;
            }
            return Ok(Err(Outcome::NotDue {
                pending: batch.rows.len() as i64,
            }));
        }
        let read_ms = elapsed_ms(started);
        self.metrics.observe_step("read", read_ms);
        info!(step = "detect", %retrain_id, user_id, pending, "user due for retrain");
        info!(step = "read", %retrain_id, user_id, rows = batch.rows.len(), duration_ms = read_ms, "pending actuals read");
        crate::faults::point("after_read");
        let read = ReadBatch {
            data_until: batch.rows.iter().map(|p| p.enqueued_at).max(),
            rows: batch.rows.into_iter().map(|p| p.row).collect(),
            read_ms,
        };
        Ok(Ok((tx, read)))
    }

    /// Logs (and counts) the pending actuals the read set aside or forgot.
    fn report_unusable(
        &self,
        batch: &store::actuals::PendingBatch,
        user_id: &str,
        retrain_id: Uuid,
    ) {
        for actual_id in &batch.consumed_again {
            warn!(
                step = "read", %retrain_id, user_id, actual_id, reason = "already_consumed",
                "pending actual set aside: its id was consumed before (refit_unconsumable_actuals)"
            );
        }
        self.metrics
            .unconsumable
            .with_label_values(&["already_consumed"])
            .inc_by(batch.consumed_again.len() as u64);
        if batch.forgotten > 0 {
            info!(step = "read", %retrain_id, user_id, actuals = batch.forgotten,
                "pending actuals forgotten: deleted upstream, or their id now another user's");
        }
    }

    /// The parameters and feature order the next version trains with: the active version's, or
    /// the configured ones for a user's first model.
    fn model_settings(&self, head: &ModelHead) -> Result<ModelSettings, String> {
        let stored = match head.active_version {
            Some(_) => stored_params(head.params.as_ref())
                .and_then(|p| Ok((p, Some(stored_features(head.features.as_ref())?)))),
            None => Ok((
                self.config.training.xgb_params.clone(),
                self.config.training.features.clone(),
            )),
        };
        stored.map_err(|error| format!("{error:#}"))
    }

    /// Lays the pending rows out for XGBoost, counting and logging the ones set aside.
    fn prepare(
        &self,
        attempt: &Attempt<'_>,
        rows: &[ActualRow],
        order: Option<&[String]>,
    ) -> Batch {
        let batch = features::prepare(rows, order);
        for aside in &batch.set_aside {
            self.metrics
                .set_aside
                .with_label_values(&[aside.reason.as_str()])
                .inc();
            warn!(
                step = "read", retrain_id = %attempt.retrain_id, user_id = attempt.user_id,
                actual_id = aside.actual_id, reason = aside.reason.as_str(), detail = %aside.detail,
                "actual set aside"
            );
        }
        batch
    }

    /// Plans and trains the version the batch makes: its parameters and feature order, its usable
    /// rows, the policy step's inputs, the training. A failed attempt is [`Built::Failed`]; `Err`
    /// is a database error or a panicked training thread.
    async fn make_version(
        &self,
        tx: &mut Tx<'_>,
        attempt: &Attempt<'_>,
        head: &ModelHead,
        rows: &[ActualRow],
        timings: &mut Map<String, Value>,
    ) -> anyhow::Result<Built> {
        let (params, feature_order) = match self.model_settings(head) {
            Ok(settings) => settings,
            Err(reason) => return Ok(Built::Failed(Failed::before_training(reason))),
        };
        let batch = self.prepare(attempt, rows, feature_order.as_deref());
        if batch.rows() == 0 {
            let consumed = Consumed::new(&[], &[], &batch.set_aside);
            store::actuals::consume(tx, attempt.user_id, None, &consumed).await?;
            let rows_set_aside = batch.set_aside.len();
            return Ok(Built::AllSetAside { rows_set_aside });
        }
        let started = Instant::now();
        let inputs = match self.step_inputs(tx, attempt.user_id, head, &batch).await? {
            Ok(inputs) => inputs,
            Err(reason) => return Ok(Built::Failed(failed_on(reason, &params, &batch))),
        };
        let fetch_ms = elapsed_ms(started);

        let started = Instant::now();
        let (result, batch, params) = self.train(inputs, batch, params).await?;
        let train_ms = elapsed_ms(started);
        timings.insert("train".into(), train_ms.into());
        self.metrics.observe_step("train", train_ms);
        let result = match result {
            Ok(result) => result,
            Err(error) => {
                let failure = failed_on(error.to_string(), &params, &batch);
                return Ok(Built::Failed(failure));
            }
        };
        timings.insert("train_cpu".into(), ms(result.cpu).into());
        log_trained(attempt, &result, batch.rows(), train_ms, fetch_ms);
        let reinstated = match result.reinstated {
            true => head.rejected.map(|r| r.version),
            false => None,
        };
        Ok(Built::Version(Box::new(Commit {
            batch,
            result,
            reinstated,
            params: json!(params),
        })))
    }

    /// Runs the policy step on a blocking thread; hands the batch and parameters back.
    async fn train(
        &self,
        inputs: StepData,
        batch: Batch,
        params: BTreeMap<String, String>,
    ) -> anyhow::Result<(
        Result<StepResult, TrainError>,
        Batch,
        BTreeMap<String, String>,
    )> {
        let span = tracing::Span::current();
        let (policy, nthread) = (self.config.policy.clone(), self.config.training.xgb_nthread);
        let keep_model = self.config.training.model_cache_bytes > 0;
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            crate::faults::point("during_train");
            let result = inputs.run_step(&policy, &params, nthread, &batch, keep_model);
            (result, batch, params)
        })
        .await
        .context("training thread panicked")
    }

    /// Reads what the policy step needs besides the batch: the active model (kept in memory or
    /// stored), a rejected version that may be reinstated, recent trained actuals and recent live
    /// errors. `Err` holds why the retrain cannot go on (recorded as a failed attempt).
    async fn step_inputs(
        &self,
        tx: &mut Tx<'_>,
        user_id: &str,
        head: &ModelHead,
        batch: &Batch,
    ) -> anyhow::Result<Result<StepData, String>> {
        let policy = &self.config.policy;
        let active = match self.active_model(tx, user_id, head).await? {
            Ok(active) => active,
            Err(reason) => return Ok(Err(reason)),
        };
        let rejected = match (&active, head.rejected) {
            (Some(_), Some(r)) => Some((r.version, lineage(r.trees, r.since_rebuild))),
            _ => None,
        };
        let rejected_artifact = match rejected {
            Some((version, _)) => store::versions::artifact(tx, user_id, version).await?,
            None => None,
        };
        let active_lineage = active.as_ref().map(|(_, l)| *l);
        let wanted =
            self.config
                .policy
                .rows_to_read(active_lineage, rejected.map(|(_, l)| l), batch.rows());
        let recent = self
            .window(tx, user_id, wanted, &batch.feature_names)
            .await?;
        let rejected_rows = match rejected {
            Some((version, _)) => {
                let rows = store::actuals::actuals_of_version(tx, user_id, version).await?;
                features::prepare(&rows, Some(&batch.feature_names))
            }
            None => Batch::default(),
        };
        let live_history = match (&active, policy.gate.enabled) {
            (Some(_), true) => head.live_history.clone(),
            _ => Vec::new(),
        };
        Ok(Ok(StepData {
            active,
            rejected,
            rejected_artifact,
            recent,
            rejected_rows,
            live_history,
        }))
    }

    /// The user's `rows` most recent trained actuals, oldest first, in `order`: from the rows
    /// stored when they were trained on, or, when one is missing or in another order, from the
    /// upstream tables.
    async fn window(
        &self,
        tx: &mut Tx<'_>,
        user_id: &str,
        rows: i64,
        order: &[String],
    ) -> sqlx::Result<Batch> {
        if rows == 0 {
            return Ok(Batch {
                feature_names: order.to_vec(),
                ..Batch::default()
            });
        }
        let stored = store::actuals::recent_lines(tx, user_id, rows).await?;
        if let Some(window) = lines::decode(&stored, order) {
            return Ok(window);
        }
        let mut rows = store::actuals::recent_actuals(tx, user_id, rows).await?;
        rows.reverse();
        Ok(features::prepare(&rows, Some(order)))
    }

    /// The active model with its lineage (`None` for a user without one): kept loaded from the
    /// user's last retrain, else read from the registry. `Err`: its artifact is missing.
    async fn active_model(
        &self,
        tx: &mut Tx<'_>,
        user_id: &str,
        head: &ModelHead,
    ) -> anyhow::Result<Result<Option<(ActiveModel, Lineage)>, String>> {
        let Some(version) = head.active_version else {
            return Ok(Ok(None));
        };
        let lineage = lineage(head.trees, head.since_rebuild);
        if let Some(booster) = self.models.take(user_id, version, head.active_row) {
            return Ok(Ok(Some((ActiveModel::Loaded(booster), lineage))));
        }
        Ok(
            match store::versions::artifact(tx, user_id, version).await? {
                Some(artifact) => Ok(Some((ActiveModel::Stored(artifact), lineage))),
                None => Err(format!("the active version {version} has no artifact")),
            },
        )
    }

    /// The validation gate's evidence as stored with the version and sent in the event.
    fn validation_json(&self, result: &StepResult) -> Option<Value> {
        let gate = &self.config.policy.gate;
        if !gate.enabled || result.live.is_none() {
            return None;
        }
        let (candidate, active) = match result.window {
            Some((c, a)) => (Some(c.get(gate.metric)), Some(a.get(gate.metric))),
            None => (None, None),
        };
        Some(json!({
            "metric": gate.metric.as_str(),
            "candidate": candidate,
            "active": active,
            "window_rows": result.window.map_or(0, |(c, _)| c.rows),
            "tolerance": gate.tolerance,
            "live_ratio": gate.live_ratio,
            "typical_live": result.typical_live,
        }))
    }

    /// What the gate's verdict makes of a trained version: its status, the version serving uses
    /// after it, and the evidence stored and announced with it.
    fn decide<'c>(&self, head: &ModelHead, c: &'c Commit, version: i32) -> Trained<'c> {
        let result = &c.result;
        let status = VersionStatus::of_verdict(result.verdict.accepted());
        let base_version = c.reinstated.or(head.active_version);
        let active_after = match status {
            VersionStatus::Ready => Some(version),
            _ => base_version,
        };
        let live = result.live.map(|l| {
            json!({"mae": l.mae, "rmse": l.rmse, "rows": l.rows, "version": head.active_version})
        });
        let policy = json!({
            "step": result.step.as_str(),
            "rounds": result.rounds,
            "eta": self.config.policy.step_eta(result.step),
            "rows_trained": result.rows_trained,
            "since_rebuild": result.since_rebuild,
            "reinstated": c.reinstated,
        });
        Trained {
            status,
            reason: result.verdict.reason(&self.config.policy.gate),
            base_version,
            active_after,
            rows_used: c.batch.rows(),
            rows_set_aside: c.batch.set_aside.len(),
            trees: result.trained.trees,
            boosted_rounds: result.trained.boosted_rounds,
            artifact: &result.trained.artifact,
            source: result.step.source(),
            action: result.step.action(),
            validation: self.validation_json(result),
            live,
            policy,
        }
    }

    /// Stores the version (ready or rejected), consumes the batch, activates a ready version (or
    /// a reinstated one) and records the side effects, in the retrain's transaction.
    async fn commit_version(
        &self,
        mut tx: Tx<'_>,
        attempt: &Attempt<'_>,
        head: &ModelHead,
        c: Commit,
        timings: Map<String, Value>,
    ) -> anyhow::Result<Outcome> {
        let (user_id, version) = (attempt.user_id, attempt.version);
        let trained = self.decide(head, &c, version);
        let ready = trained.status == VersionStatus::Ready;
        let event = RetrainEvent::trained(attempt, &trained, timings.clone());
        let invalidate = json!({"retrain_id": attempt.retrain_id});
        let announce = json!(event);
        let serving_changes = trained.active_after != head.active_version;
        let side_effects: &[(OutboxKind, &Value)] = if serving_changes {
            &[
                (OutboxKind::Invalidate, &invalidate),
                (OutboxKind::Announce, &announce),
            ]
        } else {
            // Serving keeps its model: only the event.
            &[(OutboxKind::Announce, &announce)]
        };
        let started = Instant::now();
        if let Some(reinstated) = c.reinstated {
            store::versions::reinstate(&mut tx, user_id, reinstated, version).await?;
            if !ready {
                store::versions::activate(&mut tx, user_id, reinstated).await?;
            }
        }
        let features = json!(c.batch.feature_names);
        let columns =
            VersionColumns::trained(&trained, c.params.clone(), features, Value::Object(timings));
        let committed = store::versions::commit_retrain(
            &mut tx,
            &NewVersion::trained(attempt, &trained, &columns),
            &Consumed::new(&c.batch.used, &[], &c.batch.set_aside)
                .with_lines(lines::encode(&c.batch)),
            ready,
            attempt.event_id,
            side_effects,
        )
        .await?;
        tx.commit().await?;
        crate::faults::point("after_commit");
        let commit_ms = elapsed_ms(started);
        let verdict = Verdict {
            status: trained.status,
            reason: trained.reason,
            active_after: trained.active_after,
        };
        let committed = CommittedVersion {
            version_row: committed.version_row,
            commit: c,
            verdict,
            commit_ms,
        };
        self.after_version_commit(attempt, head, committed).await
    }

    /// After a version's commit: the fast path, the live-error metric, the kept model, the
    /// commit's metrics and logs, pruning.
    async fn after_version_commit(
        &self,
        attempt: &Attempt<'_>,
        head: &ModelHead,
        committed: CommittedVersion,
    ) -> anyhow::Result<Outcome> {
        let (user_id, version) = (attempt.user_id, attempt.version);
        let CommittedVersion {
            commit: c,
            verdict,
            version_row,
            commit_ms,
        } = committed;
        let Verdict {
            status,
            reason,
            active_after,
        } = verdict;
        // The side effects first: nothing below is on the way to serving's new model.
        self.after_commit(attempt, commit_ms, active_after != head.active_version);
        if let Some(live) = c.result.live {
            self.metrics
                .observe_live(live.mae, mean_abs(&c.batch.labels));
        }
        match c.result.trained.booster {
            // A rejected retrain changed the active model in memory: nothing to keep.
            Some(booster) if status == VersionStatus::Ready => {
                let bytes = c.result.trained.artifact.len();
                self.models
                    .put(user_id, version, version_row, booster, bytes);
            }
            _ => {}
        }
        self.metrics.observe_step("commit", commit_ms);
        self.metrics.count_retrain(status);
        let status = status.reported();
        info!(
            step = "commit", retrain_id = %attempt.retrain_id, user_id, model_version = version, status,
            previous_version = head.active_version, active_version = active_after, rows_used = c.batch.rows(),
            rows_set_aside = c.batch.set_aside.len(), reinstated_version = c.reinstated,
            duration_ms = commit_ms, "version committed"
        );
        if let Some(reason) = &reason {
            warn!(retrain_id = %attempt.retrain_id, user_id, model_version = version, reason = %reason, "version rejected by the validation gate; serving unchanged");
        }
        self.prune(user_id, version).await;
        Ok(match reason {
            Some(reason) => Outcome::Rejected { version, reason },
            None => Outcome::Trained {
                version,
                rows_used: c.batch.rows(),
                rows_set_aside: c.batch.set_aside.len(),
            },
        })
    }

    /// Prunes the user's history after every `retention::EVERY`th version; a failure only delays
    /// it (the next prune catches up).
    async fn prune(&self, user_id: &str, version: i32) {
        let retention = &self.config.retention;
        if !retention.enabled || version % retention::EVERY != 0 {
            return;
        }
        match retention::prune_user(&self.pool, user_id, retention).await {
            Ok(Some(p)) => debug!(
                user_id,
                artifacts = p.artifacts,
                versions = p.versions,
                consumed_rows = p.consumed_rows,
                "history pruned"
            ),
            Ok(None) => debug!(user_id, "history not pruned: the user is busy"),
            Err(e) => warn!(user_id, error = %e, "history not pruned"),
        }
    }

    /// Records a failed attempt (the active version stays), backs the user off, announces it.
    /// The batch's actuals stay pending.
    async fn commit_failure(
        &self,
        mut tx: Tx<'_>,
        attempt: &Attempt<'_>,
        failure: Failed,
        timings: Map<String, Value>,
    ) -> anyhow::Result<Outcome> {
        let (user_id, version) = (attempt.user_id, attempt.version);
        self.metrics.count_retrain(VersionStatus::Failed);
        warn!(
            step = "train", retrain_id = %attempt.retrain_id, user_id, model_version = version,
            active_version = attempt.active_version, reason = %failure.reason,
            "retrain failed; the active version stays"
        );
        let backoff =
            Duration::from_secs(1u64 << attempt.failures.clamp(0, 16)).min(MAX_FAILURE_BACKOFF);
        let columns = VersionColumns::failed(&failure, Value::Object(timings.clone()));
        let record = NewVersion::failed(attempt, &failure, &columns);
        store::versions::insert_version(&mut tx, &record).await?;
        store::versions::record_failure(&mut tx, user_id, backoff).await?;
        let event = RetrainEvent::failed(attempt, &failure, timings);
        store::outbox::enqueue_outbox(
            &mut tx,
            attempt.event_id,
            user_id,
            &[(OutboxKind::Announce, &json!(event))],
        )
        .await?;
        let started = Instant::now();
        tx.commit().await?;
        self.after_commit(attempt, elapsed_ms(started), false);
        Ok(Outcome::Failed {
            version,
            reason: failure.reason,
        })
    }

    /// Hands what the commit put in the user's outbox to the fast path.
    fn after_commit(&self, attempt: &Attempt<'_>, commit_ms: f64, invalidates: bool) {
        self.outbox.deliver_soon(Committed {
            user_id: attempt.user_id.to_owned(),
            retrain_id: attempt.retrain_id,
            event_id: attempt.event_id,
            commit_ms,
            invalidates,
        });
    }
}

/// Logs the trained step (the train log line).
fn log_trained(
    attempt: &Attempt<'_>,
    result: &StepResult,
    samples_used: usize,
    train_ms: f64,
    fetch_ms: f64,
) {
    let trained = &result.trained;
    info!(
        step = "train", retrain_id = %attempt.retrain_id, user_id = attempt.user_id, samples_used, processing_time_ms = train_ms,
        fetch_ms, load_ms = ms(trained.load), boost_ms = ms(trained.train), save_ms = ms(trained.save),
        model_cached = result.model_cached, trees = trained.trees, policy_step = result.step.as_str(),
        rows_trained = result.rows_trained, live_mae = result.live.map(|l| l.mae),
        reinstated = result.reinstated, "model trained"
    );
}

/// The attempt at the version after `head`'s last, on a batch enqueued until `data_until`.
fn start_attempt<'a>(
    user_id: &'a str,
    retrain_id: Uuid,
    head: &ModelHead,
    data_until: Option<chrono::DateTime<Utc>>,
) -> Attempt<'a> {
    Attempt {
        user_id,
        retrain_id,
        event_id: Uuid::new_v4(),
        version: head.last_version + 1,
        active_version: head.active_version,
        failures: head.failures,
        data_until,
    }
}

/// A failure while training with `params` on `batch`.
fn failed_on(reason: String, params: &BTreeMap<String, String>, batch: &Batch) -> Failed {
    Failed {
        reason,
        params: json!(params),
        features: json!(batch.feature_names),
        rows_rejected: batch.set_aside.len(),
    }
}

/// Where a step starts from, as the registry stores it.
fn lineage(trees: Option<i32>, since_rebuild: u32) -> Lineage {
    Lineage {
        trees: trees.map(i64::from),
        since_rebuild,
    }
}

/// The pending batch a due user's attempt consumes.
struct ReadBatch {
    rows: Vec<ActualRow>,
    /// When the newest of them was enqueued.
    data_until: Option<chrono::DateTime<Utc>>,
    read_ms: f64,
}

/// The retrain's transaction, holding the user's registry row lock.
type Tx<'c> = sqlx::Transaction<'c, sqlx::Postgres>;

/// The parameters and feature order (`None`: from the batch) a version trains with.
type ModelSettings = (BTreeMap<String, String>, Option<Vec<String>>);

/// What [`Retrainer::make_version`] came to.
enum Built {
    /// A trained version to commit.
    Version(Box<Commit>),
    /// Every row was unusable: set aside (consumed, uncommitted), no version made.
    AllSetAside { rows_set_aside: usize },
    /// The attempt failed: to be recorded.
    Failed(Failed),
}

/// A trained version ready to commit.
struct Commit {
    /// The pending rows trained on (and the ones set aside).
    batch: Batch,
    result: StepResult,
    /// The rejected version the step reinstated as its base.
    reinstated: Option<i32>,
    params: Value,
}

/// What the gate's verdict made of a committed version.
struct Verdict {
    status: VersionStatus,
    reason: Option<String>,
    active_after: Option<i32>,
}

/// A version just committed.
struct CommittedVersion {
    commit: Commit,
    verdict: Verdict,
    /// The new version row's identity.
    version_row: i64,
    commit_ms: f64,
}

/// The active model as the step receives it.
enum ActiveModel {
    /// Kept loaded from this user's last retrain.
    Loaded(Booster),
    /// Read from the registry.
    Stored(Vec<u8>),
}

/// What [`Retrainer::step_inputs`] read.
struct StepData {
    active: Option<(ActiveModel, Lineage)>,
    rejected: Option<(i32, Lineage)>,
    rejected_artifact: Option<Vec<u8>>,
    recent: Batch,
    /// What the rejected version trained on (empty without one).
    rejected_rows: Batch,
    live_history: Vec<f64>,
}

impl StepData {
    /// Runs the policy step on this data and `batch`, on the calling thread.
    fn run_step(
        self,
        policy: &Policy,
        params: &BTreeMap<String, String>,
        nthread: u32,
        batch: &Batch,
        keep_model: bool,
    ) -> Result<StepResult, TrainError> {
        let StepData {
            active,
            rejected,
            rejected_artifact,
            recent,
            rejected_rows,
            live_history,
        } = self;
        let stored;
        let active = match active {
            None => None,
            Some((ActiveModel::Loaded(booster), lineage)) => {
                Some((Previous::Loaded(booster), lineage))
            }
            Some((ActiveModel::Stored(artifact), lineage)) => {
                stored = artifact;
                Some((Previous::Artifact(&stored), lineage))
            }
        };
        let rejected = match (&rejected_artifact, rejected) {
            (Some(artifact), Some((_, lineage))) => Some((artifact.as_slice(), lineage)),
            _ => None,
        };
        trainer::run_step(StepInput {
            policy,
            active,
            rejected,
            params,
            nthread,
            batch,
            recent: &recent,
            rejected_rows: &rejected_rows,
            live_history: &live_history,
            keep_model,
        })
    }
}

/// Mean |actual| of a batch (the scale live errors are compared against across users).
fn mean_abs(labels: &[f32]) -> f64 {
    labels.iter().map(|y| f64::from(y.abs())).sum::<f64>() / labels.len().max(1) as f64
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn stored_params(value: Option<&Value>) -> anyhow::Result<BTreeMap<String, String>> {
    let object = value
        .and_then(Value::as_object)
        .context("the active version has no stored parameters")?;
    Ok(object
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_str().map_or_else(|| v.to_string(), str::to_owned),
            )
        })
        .collect())
}

fn stored_features(value: Option<&Value>) -> anyhow::Result<Vec<String>> {
    let names: Vec<String> = serde_json::from_value(value.cloned().unwrap_or(Value::Null))
        .context("the active version has no stored feature list")?;
    anyhow::ensure!(
        !names.is_empty(),
        "the active version's feature list is empty"
    );
    Ok(names)
}
