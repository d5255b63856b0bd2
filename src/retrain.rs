//! One retrain of one user: detect → read → train → commit, then the outbox (invalidate,
//! announce). [`Retrainer::retrain_user`] is the whole unit of work and returns what it did, so
//! tests can drive it deterministically and the service loop can schedule it.
//!
//! The read, the training and the commit happen inside one transaction that holds the user's
//! registry row lock: a crash anywhere before the commit rolls everything back and the actuals
//! stay pending; after the commit, the outbox carries the side effects out.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use serde_json::{json, Map, Value};
use sqlx::PgPool;
use tracing::{info, warn};
use uuid::Uuid;

use crate::config::Config;
use crate::db::{self, NewVersion, OutboxKind};
use crate::events::RetrainEvent;
use crate::features::{self, Batch};
use crate::metrics::Metrics;
use crate::outbox::{elapsed_ms, FastPath, Outbox};
use crate::trainer::{self, TrainInput};

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
    /// Every row of the batch was unusable: they are set aside, no version was made.
    AllSetAside { rows_set_aside: usize },
    /// Training failed (e.g. a corrupt artifact): recorded, announced, rows still pending.
    Failed { version: i32, reason: String },
    /// Fewer than `threshold` pending actuals.
    NotDue,
    /// Another retrain (maybe in another replica) holds the user.
    Busy,
    /// The user is backing off after a failure.
    BackingOff,
}

impl Outcome {
    /// Whether another batch may be waiting right behind this one.
    pub fn consumed_rows(&self) -> bool {
        matches!(self, Outcome::Trained { .. } | Outcome::AllSetAside { .. })
    }
}

/// Runs retrains.
pub struct Retrainer {
    pool: PgPool,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    outbox: Arc<Outbox>,
    /// Fast-path deliveries run here so a retrain never waits for Redis or Kafka.
    deliveries: tokio_util::task::TaskTracker,
}

impl Retrainer {
    pub fn new(
        pool: PgPool,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        outbox: Arc<Outbox>,
    ) -> Self {
        Retrainer {
            pool,
            config,
            metrics,
            outbox,
            deliveries: tokio_util::task::TaskTracker::new(),
        }
    }

    /// Actuals consumed per retrain.
    pub fn threshold(&self) -> i64 {
        self.config.retrain_threshold
    }

    /// Waits for every fast-path delivery started so far (before shutdown).
    pub async fn drain_deliveries(&self) {
        self.deliveries.close();
        self.deliveries.wait().await;
        self.deliveries.reopen();
    }

    /// Retrains `user_id` once if it has `>= threshold` pending actuals. `pending` is what the
    /// detector counted (for the detect log line).
    pub async fn retrain_user(&self, user_id: &str, pending: i64) -> anyhow::Result<Outcome> {
        let threshold = self.config.retrain_threshold;
        let retrain_id = Uuid::now_v7();
        let mut timings = Map::new();

        db::ensure_model_row(&self.pool, user_id).await?;
        let mut tx = self.pool.begin().await?;
        let Some(head) = db::lock_model(&mut tx, user_id).await? else {
            return Ok(Outcome::Busy);
        };
        if head.backing_off {
            return Ok(Outcome::BackingOff);
        }

        let started = Instant::now();
        let pending_rows = db::read_pending(&mut tx, user_id, threshold).await?;
        if (pending_rows.len() as i64) < threshold {
            return Ok(Outcome::NotDue);
        }
        let read_ms = elapsed_ms(started);
        timings.insert("read".into(), read_ms.into());
        self.metrics.observe_step("read", read_ms);
        info!(step = "detect", %retrain_id, user_id, pending, "user due for retrain");
        info!(step = "read", %retrain_id, user_id, rows = pending_rows.len(), duration_ms = read_ms, "pending actuals read");

        crate::faults::point("after_read");
        let data_until = pending_rows.iter().map(|p| p.enqueued_at).max();
        let rows: Vec<_> = pending_rows.into_iter().map(|p| p.row).collect();
        let version = head.last_version + 1;
        let attempt = Attempt {
            user_id,
            retrain_id,
            event_id: Uuid::new_v4(),
            version,
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
            db::consume(&mut tx, user_id, None, &[], &batch.set_aside).await?;
            tx.commit().await?;
            warn!(%retrain_id, user_id, rows_set_aside = batch.set_aside.len(), "no usable actual in the batch; no new version");
            return Ok(Outcome::AllSetAside {
                rows_set_aside: batch.set_aside.len(),
            });
        }

        let started = Instant::now();
        let previous = head.artifact.clone();
        let rounds = self.config.rounds_per_retrain;
        let nthread = self.config.xgb_nthread;
        let (trained, batch, params) = {
            let span = tracing::Span::current();
            tokio::task::spawn_blocking(move || {
                let _entered = span.enter();
                crate::faults::point("during_train");
                let result = trainer::train(&TrainInput {
                    previous: previous.as_deref(),
                    params: &params,
                    rounds,
                    nthread,
                    batch: &batch,
                });
                (result, batch, params)
            })
            .await
            .context("training thread panicked")?
        };
        let train_ms = elapsed_ms(started);
        timings.insert("train".into(), train_ms.into());
        self.metrics.observe_step("train", train_ms);

        let params_json = json!(params);
        let trained = match trained {
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

        info!(
            step = "train", %retrain_id, user_id, samples_used = batch.rows(),
            processing_time_ms = train_ms, load_ms = ms(trained.load), boost_ms = ms(trained.train),
            save_ms = ms(trained.save), trees = trained.trees, "model trained"
        );
        let started = Instant::now();
        store_trained(
            &mut tx,
            &TrainedVersion {
                user_id,
                version,
                parent: head.active_version,
                batch: &batch,
                artifact: &trained.artifact,
                trees: trained.trees,
                boosted_rounds: trained.boosted_rounds,
                params: &params_json,
                timings: &timings,
                retrain_id,
            },
        )
        .await?;
        let event_id = attempt.event_id;
        let event = RetrainEvent {
            event_id,
            user_id: user_id.to_owned(),
            status: "success".into(),
            model_version: Some(version),
            previous_version: head.active_version,
            active_version: Some(version),
            rows_used: batch.rows() as i64,
            rows_rejected: batch.set_aside.len() as i64,
            trees: Some(trained.trees),
            timings_ms: timings,
            reason: None,
            retrain_id,
            data_until,
            created_at: Utc::now(),
        };
        let payload = json!(event);
        db::enqueue_outbox(
            &mut tx,
            event_id,
            user_id,
            OutboxKind::Invalidate,
            &json!({"retrain_id": retrain_id}),
        )
        .await?;
        db::enqueue_outbox(&mut tx, event_id, user_id, OutboxKind::Announce, &payload).await?;
        tx.commit().await?;
        crate::faults::point("after_commit");
        let commit_ms = elapsed_ms(started);
        self.metrics.observe_step("commit", commit_ms);
        self.metrics.retrains.with_label_values(&["success"]).inc();
        info!(
            step = "commit", %retrain_id, user_id, model_version = version,
            previous_version = head.active_version, rows_used = batch.rows(),
            rows_set_aside = batch.set_aside.len(), duration_ms = commit_ms, "version committed"
        );
        self.after_commit(user_id, commit_ms);
        Ok(Outcome::Trained {
            version,
            rows_used: batch.rows(),
            rows_set_aside: batch.set_aside.len(),
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
            model_version: Some(version),
            previous_version: attempt.active_version,
            active_version: attempt.active_version,
            rows_used: 0,
            rows_rejected: rows_rejected as i64,
            trees: None,
            timings_ms: timings,
            reason: Some(reason.clone()),
            retrain_id: attempt.retrain_id,
            data_until: attempt.data_until,
            created_at: Utc::now(),
        };
        db::enqueue_outbox(
            &mut tx,
            attempt.event_id,
            user_id,
            OutboxKind::Announce,
            &json!(event),
        )
        .await?;
        let started = Instant::now();
        tx.commit().await?;
        self.after_commit(user_id, elapsed_ms(started));
        Ok(Outcome::Failed { version, reason })
    }

    /// Starts the fast-path delivery of what the commit put in the user's outbox.
    fn after_commit(&self, user_id: &str, commit_ms: f64) {
        let outbox = self.outbox.clone();
        let user_id = user_id.to_owned();
        self.deliveries.spawn(async move {
            let fast = FastPath { commit_ms };
            if let Err(e) = outbox.deliver_user(&user_id, Some(&fast)).await {
                // The sweep retries whatever is left.
                warn!(user_id, error = format!("{e:#}"), "outbox delivery failed");
            }
        });
    }
}

/// What identifies one retrain attempt.
struct Attempt<'a> {
    user_id: &'a str,
    retrain_id: Uuid,
    event_id: Uuid,
    /// The version number this attempt gets, successful or not.
    version: i32,
    active_version: Option<i32>,
    /// Consecutive failures before this attempt (for the back-off).
    failures: i32,
    data_until: Option<chrono::DateTime<Utc>>,
}

/// A successfully trained version and what it consumed.
struct TrainedVersion<'a> {
    user_id: &'a str,
    version: i32,
    parent: Option<i32>,
    batch: &'a Batch,
    artifact: &'a [u8],
    trees: i64,
    boosted_rounds: i32,
    params: &'a Value,
    timings: &'a Map<String, Value>,
    retrain_id: Uuid,
}

/// Stores the version, marks its rows consumed and makes it active (inside the caller's
/// transaction).
async fn store_trained(
    conn: &mut sqlx::PgConnection,
    v: &TrainedVersion<'_>,
) -> anyhow::Result<()> {
    db::insert_version(
        conn,
        &NewVersion {
            user_id: v.user_id,
            version: v.version,
            status: "ready",
            parent_version: v.parent,
            artifact: Some(v.artifact),
            rows_used: v.batch.rows() as i32,
            rows_set_aside: v.batch.set_aside.len() as i32,
            trees: Some(v.trees),
            boosted_rounds: Some(v.boosted_rounds),
            params: v.params,
            features: &json!(v.batch.feature_names),
            timings_ms: &Value::Object(v.timings.clone()),
            error: None,
            source: if v.parent.is_some() {
                "retrain"
            } else {
                "fresh"
            },
            retrain_id: v.retrain_id,
        },
    )
    .await?;
    db::consume(
        conn,
        v.user_id,
        Some(v.version),
        &v.batch.used,
        &v.batch.set_aside,
    )
    .await?;
    db::activate(conn, v.user_id, v.version).await?;
    Ok(())
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
