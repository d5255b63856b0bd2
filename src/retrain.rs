//! One retrain of one user: detect → read → train → validate → commit, then the outbox
//! (invalidate, announce). [`Retrainer::retrain_user`] is the whole unit of work and returns what
//! it did, so tests can drive it deterministically and the service loop can schedule it.
//!
//! The read, the training and the commit happen inside one transaction that holds the user's
//! registry row lock: a crash anywhere before the commit rolls everything back and the actuals
//! stay pending; after the commit, the outbox carries the side effects out.
//!
//! Model lifecycle inside a retrain:
//! - **validation gate**: with an active version, the newest `REFIT_VALIDATION_HOLDOUT` share of
//!   the batch is held out; the new version and the active one are scored on it, and a new
//!   version worse than `active × (1 + tolerance)` is stored as `rejected`: serving is untouched
//!   and the batch stays consumed by (attributed to) the rejected version, so a harmful batch is
//!   not retried forever and can still be inspected or promoted;
//! - **bounded growth**: a retrain that would pass `REFIT_MAX_TREES` compacts instead — a fresh
//!   model on the most recent `REFIT_REFIT_WINDOW` actuals (`refit`), or XGBoost's in-place leaf
//!   refresh (`update`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use serde_json::{json, Map, Value};
use sqlx::PgPool;
use tracing::{info, warn};
use uuid::Uuid;

use crate::config::{Compaction, Config};
use crate::db::{self, Consumed, ModelHead, NewVersion, OutboxKind};
use crate::events::RetrainEvent;
use crate::features::{self, Batch};
use crate::metrics::Metrics;
use crate::model_cache::ModelCache;
use crate::outbox::{elapsed_ms, Committed, Outbox};
use crate::trainer::{self, Previous, TrainInput, TrainMode, Trained};

/// The longest a user backs off after repeated failed retrains.
const MAX_FAILURE_BACKOFF: Duration = Duration::from_secs(300);

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
    pub fn consumed_rows(&self) -> bool {
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

/// How this retrain produces its model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Continue the active version (or start fresh).
    Continue,
    /// The tree cap is reached: compact as configured.
    Compact(Compaction),
}

/// The validation gate's verdict.
#[derive(Debug, Clone)]
struct Validation {
    candidate: f64,
    active: f64,
    rows: usize,
    passed: bool,
}

impl Retrainer {
    pub fn new(
        pool: PgPool,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        outbox: Arc<Outbox>,
    ) -> Self {
        Retrainer {
            models: ModelCache::new(config.model_cache_bytes),
            pool,
            config,
            metrics,
            outbox,
        }
    }

    /// Actuals consumed per retrain.
    pub fn threshold(&self) -> i64 {
        self.config.retrain_threshold
    }

    /// Waits for every fast-path delivery started so far (before shutdown).
    pub async fn drain_deliveries(&self) {
        self.outbox.drain().await;
    }

    /// The models kept loaded between retrains.
    pub fn model_cache(&self) -> &ModelCache {
        &self.models
    }

    /// Retrains `user_id` once if it has `>= threshold` pending actuals. `pending` is what the
    /// detector counted (for the detect log line).
    pub async fn retrain_user(&self, user_id: &str, pending: i64) -> anyhow::Result<Outcome> {
        let threshold = self.config.retrain_threshold;
        let retrain_id = Uuid::now_v7();
        let mut timings = Map::new();

        let mut tx = self.pool.begin().await?;
        let head = match db::lock_model(&mut tx, user_id).await? {
            Some(head) => head,
            // A new user has no registry row yet: make it (outside this transaction, so another
            // replica never waits on it) and lock again.
            None if !db::model_row_exists(&mut tx, user_id).await? => {
                tx.rollback().await?;
                db::ensure_model_row(&self.pool, user_id).await?;
                tx = self.pool.begin().await?;
                match db::lock_model(&mut tx, user_id).await? {
                    Some(head) => head,
                    None => return Ok(Outcome::Busy),
                }
            }
            None => return Ok(Outcome::Busy),
        };
        if head.backing_off {
            return Ok(Outcome::BackingOff);
        }

        let started = Instant::now();
        let pending_rows = db::read_pending(&mut tx, user_id, threshold).await?;
        if (pending_rows.len() as i64) < threshold {
            return Ok(Outcome::NotDue {
                pending: pending_rows.len() as i64,
            });
        }
        let read_ms = elapsed_ms(started);
        timings.insert("read".into(), read_ms.into());
        self.metrics.observe_step("read", read_ms);
        info!(step = "detect", %retrain_id, user_id, pending, "user due for retrain");
        info!(step = "read", %retrain_id, user_id, rows = pending_rows.len(), duration_ms = read_ms, "pending actuals read");
        crate::faults::point("after_read");

        let data_until = pending_rows.iter().map(|p| p.enqueued_at).max();
        let rows: Vec<_> = pending_rows.into_iter().map(|p| p.row).collect();
        let attempt = Attempt {
            user_id,
            retrain_id,
            event_id: Uuid::new_v4(),
            version: head.last_version + 1,
            active_version: head.active_version,
            failures: head.failures,
            data_until,
        };
        let stored = match head.active_version {
            Some(_) => stored_params(head.params.as_ref())
                .and_then(|p| Ok((p, Some(stored_features(head.features.as_ref())?)))),
            None => Ok((self.config.xgb_params.clone(), self.config.features.clone())),
        };
        let (params, feature_order) = match stored {
            Ok(stored) => stored,
            Err(error) => {
                let reason = format!("{error:#}");
                return self
                    .commit_failure(tx, &attempt, reason, &json!({}), &json!([]), 0, timings)
                    .await;
            }
        };
        let batch = features::prepare(&rows, feature_order.as_deref());
        for aside in &batch.set_aside {
            self.metrics
                .set_aside
                .with_label_values(&[aside.reason.as_str()])
                .inc();
            warn!(
                step = "read", %retrain_id, user_id, actual_id = aside.actual_id,
                reason = aside.reason.as_str(), detail = %aside.detail, "actual set aside"
            );
        }
        if batch.rows() == 0 {
            let consumed = Consumed::new(&[], &[], &batch.set_aside);
            db::consume(&mut tx, user_id, None, &consumed).await?;
            tx.commit().await?;
            warn!(%retrain_id, user_id, rows_set_aside = batch.set_aside.len(), "no usable actual in the batch; no new version");
            return Ok(Outcome::AllSetAside {
                rows_set_aside: batch.set_aside.len(),
            });
        }

        // Hold out the newest rows to score the new version against the active one.
        let holdout_rows = match head.active_version {
            Some(_) if self.config.validation_holdout > 0.0 => {
                let n = (batch.rows() as f64 * self.config.validation_holdout).round() as usize;
                n.min(batch.rows() - 1)
            }
            _ => 0,
        };
        let (batch, holdout) = batch.split_last(holdout_rows);
        let plan = self.plan(&head);
        let mut training = batch.clone();
        if plan == Plan::Compact(Compaction::Refit) {
            let window = self.config.refit_window - training.rows() as i64;
            let mut recent = db::recent_actuals(&mut tx, user_id, window.max(0)).await?;
            recent.reverse();
            let mut all = features::prepare(&recent, Some(&training.feature_names));
            all.extend(training);
            training = all;
        }
        let (mode, rounds, action, source) = match plan {
            Plan::Continue => (
                TrainMode::Continue,
                self.config.rounds_per_retrain,
                "retrain",
                if head.active_version.is_some() {
                    "retrain"
                } else {
                    "fresh"
                },
            ),
            Plan::Compact(Compaction::Refit) => (
                TrainMode::Restart,
                self.config.compaction_rounds,
                "compaction",
                "compaction-refit",
            ),
            Plan::Compact(Compaction::Update) => {
                (TrainMode::Refresh, 0, "compaction", "compaction-update")
            }
        };

        // The active model: kept loaded from this user's last retrain, or read from the registry.
        let started = Instant::now();
        let mut stored = None;
        let loaded = match head.active_version {
            None => None,
            Some(version) => match self.models.take(user_id, version, head.active_row) {
                Some(booster) => Some(booster),
                None => {
                    stored = db::active_artifact(&mut tx, user_id, version).await?;
                    if stored.is_none() {
                        let reason = format!("the active version {version} has no artifact");
                        let features_json = json!(batch.feature_names);
                        return self
                            .commit_failure(
                                tx,
                                &attempt,
                                reason,
                                &json!(params),
                                &features_json,
                                batch.set_aside.len(),
                                timings,
                            )
                            .await;
                    }
                    None
                }
            },
        };
        let fetch_ms = elapsed_ms(started);

        let started = Instant::now();
        let nthread = self.config.xgb_nthread;
        let metric = self.config.validation_metric;
        let keep_model = self.config.model_cache_bytes > 0;
        let (result, training, holdout, params) = {
            let span = tracing::Span::current();
            tokio::task::spawn_blocking(move || {
                let _entered = span.enter();
                crate::faults::point("during_train");
                let result = trainer::train(TrainInput {
                    previous: match (loaded, stored.as_deref()) {
                        (Some(booster), _) => Previous::Loaded(booster),
                        (None, Some(artifact)) => Previous::Artifact(artifact),
                        (None, None) => Previous::None,
                    },
                    mode,
                    params: &params,
                    rounds,
                    nthread,
                    batch: &training,
                    holdout: Some((&holdout, metric)),
                    keep_model,
                });
                (result, training, holdout, params)
            })
            .await
            .context("training thread panicked")?
        };
        let train_ms = elapsed_ms(started);
        timings.insert("train".into(), train_ms.into());
        self.metrics.observe_step("train", train_ms);

        let params_json = json!(params);
        let trained = match result {
            Ok(trained) => trained,
            Err(error) => {
                let features_json = json!(batch.feature_names);
                let rejected = batch.set_aside.len();
                return self
                    .commit_failure(
                        tx,
                        &attempt,
                        error.to_string(),
                        &params_json,
                        &features_json,
                        rejected,
                        timings,
                    )
                    .await;
            }
        };
        let validation = trained.scores.map(|s| Validation {
            candidate: s.candidate,
            active: s.previous,
            rows: s.rows,
            passed: s.candidate <= s.previous * (1.0 + self.config.validation_tolerance) + 1e-9,
        });
        info!(
            step = "train", %retrain_id, user_id, samples_used = training.rows(), processing_time_ms = train_ms,
            fetch_ms, load_ms = ms(trained.load), boost_ms = ms(trained.train), save_ms = ms(trained.save),
            model_cached = trained.load.is_zero(), trees = trained.trees, source, "model trained"
        );
        self.commit_version(
            tx,
            &attempt,
            &head,
            Commit {
                batch: &batch,
                holdout: &holdout,
                trained,
                params: &params_json,
                timings,
                validation,
                action,
                source,
            },
        )
        .await
    }

    /// Compaction when the next retrain would pass the tree cap.
    fn plan(&self, head: &ModelHead) -> Plan {
        let cap = self.config.max_trees;
        match head.trees {
            Some(trees)
                if cap > 0
                    && i64::from(trees) + i64::from(self.config.rounds_per_retrain) > cap =>
            {
                Plan::Compact(self.config.compaction)
            }
            _ => Plan::Continue,
        }
    }

    /// Stores the version (ready or rejected), consumes the batch, activates a ready version and
    /// records its side effects, in the retrain's transaction.
    async fn commit_version(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        attempt: &Attempt<'_>,
        head: &ModelHead,
        c: Commit<'_>,
    ) -> anyhow::Result<Outcome> {
        let (user_id, version) = (attempt.user_id, attempt.version);
        let rejected = c.validation.as_ref().is_some_and(|v| !v.passed);
        let validation_json = c.validation.as_ref().map(|v| {
            json!({
                "metric": self.config.validation_metric.as_str(),
                "candidate": v.candidate,
                "active": v.active,
                "holdout_rows": v.rows,
                "tolerance": self.config.validation_tolerance,
            })
        });
        let reason = c.validation.as_ref().filter(|_| rejected).map(|v| {
            format!(
                "validation {} {:.4} on {} held-out actuals is worse than the active version's {:.4} by more than {}%",
                self.config.validation_metric.as_str(), v.candidate, v.rows, v.active,
                self.config.validation_tolerance * 100.0
            )
        });
        let active_after = if rejected {
            head.active_version
        } else {
            Some(version)
        };
        let event = RetrainEvent {
            event_id: attempt.event_id,
            user_id: user_id.to_owned(),
            status: if rejected { "rejected" } else { "success" }.into(),
            action: c.action.into(),
            model_version: Some(version),
            previous_version: head.active_version,
            active_version: active_after,
            rows_used: c.batch.rows() as i64,
            rows_rejected: c.batch.set_aside.len() as i64,
            trees: Some(c.trained.trees),
            timings_ms: c.timings.clone(),
            validation: validation_json.clone(),
            reason: reason.clone(),
            retrain_id: attempt.retrain_id,
            data_until: attempt.data_until,
            created_at: Utc::now(),
        };
        let invalidate = json!({"retrain_id": attempt.retrain_id});
        let announce = json!(event);
        let side_effects: &[(OutboxKind, &Value)] = if rejected {
            // Serving keeps its model: only the event.
            &[(OutboxKind::Announce, &announce)]
        } else {
            &[
                (OutboxKind::Invalidate, &invalidate),
                (OutboxKind::Announce, &announce),
            ]
        };
        let started = Instant::now();
        let committed = db::commit_retrain(
            &mut tx,
            &NewVersion {
                user_id,
                version,
                status: if rejected { "rejected" } else { "ready" },
                parent_version: head.active_version,
                artifact: Some(&c.trained.artifact),
                rows_used: c.batch.rows() as i32,
                rows_set_aside: c.batch.set_aside.len() as i32,
                trees: Some(c.trained.trees),
                boosted_rounds: Some(c.trained.boosted_rounds),
                params: c.params,
                features: &json!(c.batch.feature_names),
                timings_ms: &Value::Object(c.timings),
                metrics: &json!({ "validation": validation_json }),
                error: reason.as_deref(),
                source: c.source,
                retrain_id: attempt.retrain_id,
            },
            &Consumed::new(&c.batch.used, &c.holdout.used, &c.batch.set_aside),
            !rejected,
            attempt.event_id,
            side_effects,
        )
        .await?;
        tx.commit().await?;
        crate::faults::point("after_commit");
        let commit_ms = elapsed_ms(started);
        match c.trained.booster {
            // A rejected retrain changed the active model in memory: nothing to keep.
            Some(booster) if !rejected => {
                let bytes = c.trained.artifact.len();
                self.models
                    .put(user_id, version, committed.version_row, booster, bytes);
            }
            _ => {}
        }
        self.metrics.observe_step("commit", commit_ms);
        let status = if rejected { "rejected" } else { "success" };
        self.metrics.retrains.with_label_values(&[status]).inc();
        info!(
            step = "commit", retrain_id = %attempt.retrain_id, user_id, model_version = version, status,
            previous_version = head.active_version, active_version = active_after, rows_used = c.batch.rows(),
            rows_held_out = c.holdout.rows(), rows_set_aside = c.batch.set_aside.len(), duration_ms = commit_ms,
            "version committed"
        );
        if let Some(reason) = &reason {
            warn!(retrain_id = %attempt.retrain_id, user_id, model_version = version, reason = %reason, "version rejected by the validation gate; serving unchanged");
        }
        self.after_commit(user_id, attempt.event_id, commit_ms);
        Ok(match reason {
            Some(reason) => Outcome::Rejected { version, reason },
            None => Outcome::Trained {
                version,
                rows_used: c.batch.rows(),
                rows_set_aside: c.batch.set_aside.len(),
            },
        })
    }

    /// Records a failed attempt (the active version stays), backs the user off, announces it.
    /// The batch's actuals stay pending.
    #[allow(clippy::too_many_arguments)]
    async fn commit_failure(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        attempt: &Attempt<'_>,
        reason: String,
        params: &Value,
        features: &Value,
        rows_rejected: usize,
        timings: Map<String, Value>,
    ) -> anyhow::Result<Outcome> {
        let (user_id, version) = (attempt.user_id, attempt.version);
        self.metrics.retrains.with_label_values(&["failed"]).inc();
        warn!(
            step = "train", retrain_id = %attempt.retrain_id, user_id, model_version = version,
            active_version = attempt.active_version, reason = %reason,
            "retrain failed; the active version stays"
        );
        let backoff =
            Duration::from_secs(1u64 << attempt.failures.clamp(0, 16)).min(MAX_FAILURE_BACKOFF);
        db::insert_version(
            &mut tx,
            &NewVersion {
                user_id,
                version,
                status: "failed",
                parent_version: attempt.active_version,
                artifact: None,
                rows_used: 0,
                rows_set_aside: 0,
                trees: None,
                boosted_rounds: None,
                params,
                features,
                timings_ms: &Value::Object(timings.clone()),
                metrics: &json!({}),
                error: Some(&reason),
                source: "retrain",
                retrain_id: attempt.retrain_id,
            },
        )
        .await?;
        db::record_failure(&mut tx, user_id, backoff).await?;
        let event = RetrainEvent {
            event_id: attempt.event_id,
            user_id: user_id.to_owned(),
            status: "failed".into(),
            action: "retrain".into(),
            model_version: Some(version),
            previous_version: attempt.active_version,
            active_version: attempt.active_version,
            rows_used: 0,
            rows_rejected: rows_rejected as i64,
            trees: None,
            timings_ms: timings,
            validation: None,
            reason: Some(reason.clone()),
            retrain_id: attempt.retrain_id,
            data_until: attempt.data_until,
            created_at: Utc::now(),
        };
        db::enqueue_outbox(
            &mut tx,
            attempt.event_id,
            user_id,
            &[(OutboxKind::Announce, &json!(event))],
        )
        .await?;
        let started = Instant::now();
        tx.commit().await?;
        self.after_commit(user_id, attempt.event_id, elapsed_ms(started));
        Ok(Outcome::Failed { version, reason })
    }

    /// Hands what the commit put in the user's outbox to the fast path.
    fn after_commit(&self, user_id: &str, event_id: Uuid, commit_ms: f64) {
        self.outbox.deliver_soon(Committed {
            user_id: user_id.to_owned(),
            event_id,
            commit_ms,
            invalidate_ms: None,
        });
    }
}

/// What identifies one retrain attempt.
struct Attempt<'a> {
    user_id: &'a str,
    retrain_id: Uuid,
    event_id: Uuid,
    /// The version number this attempt gets, whatever its outcome.
    version: i32,
    active_version: Option<i32>,
    /// Consecutive failures before this attempt (for the back-off).
    failures: i32,
    data_until: Option<chrono::DateTime<Utc>>,
}

/// A trained version ready to commit.
struct Commit<'a> {
    /// The pending rows trained on (and the ones set aside).
    batch: &'a Batch,
    /// The pending rows held out for validation.
    holdout: &'a Batch,
    trained: Trained,
    params: &'a Value,
    timings: Map<String, Value>,
    validation: Option<Validation>,
    action: &'a str,
    source: &'a str,
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
