//! The records refit's layers share, each defined once and built by one constructor per case:
//! a version's [`VersionStatus`], the [`Attempt`] that makes a version, the [`NewVersion`] row it
//! stores and the [`RetrainEvent`] that announces it.
//!
//! A retrain ends in one of three ways — a version that may serve, one the validation gate
//! rejected, a failure — and a registry write (promote, rollback, import, delete) changes what
//! serves without training. Each case has its constructor here, so the row and the event of one
//! case cannot disagree. Nothing here does I/O.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use uuid::Uuid;

/// A version's status. One type, two spellings: the registry stores `ready` for a version that
/// may serve, and the event and `refit_retrains_total{status}` report the retrain that made it
/// as a `success`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VersionStatus {
    Ready,
    Rejected,
    Failed,
}

impl VersionStatus {
    pub(crate) const ALL: [VersionStatus; 3] = [Self::Ready, Self::Failed, Self::Rejected];

    /// As `refit_model_versions.status` stores it.
    pub fn stored(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
        }
    }

    /// As the event's `status` and the metrics' `status` label report it.
    pub fn reported(self) -> &'static str {
        match self {
            Self::Ready => "success",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
        }
    }

    /// The status `refit_model_versions.status` names.
    pub(crate) fn from_stored(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.stored() == text)
    }

    /// The status a retrain's verdict gives its version.
    pub(crate) fn of_verdict(accepted: bool) -> Self {
        if accepted {
            Self::Ready
        } else {
            Self::Rejected
        }
    }
}

/// The event's spelling, as logs and the demo print it.
impl std::fmt::Display for VersionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reported())
    }
}

/// The event's spelling (`success`, `rejected`, `failed`) on the wire.
impl Serialize for VersionStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.reported())
    }
}

impl<'de> Deserialize<'de> for VersionStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::ALL
            .into_iter()
            .find(|s| s.reported() == text)
            .ok_or_else(|| {
                serde::de::Error::unknown_variant(&text, &["success", "rejected", "failed"])
            })
    }
}

/// Reads an optional status in the registry's spelling (`ready`, `rejected`, `failed`), as the
/// HTTP API's and the CLI's filters take it.
pub(crate) fn deserialize_stored<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<VersionStatus>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    VersionStatus::from_stored(&text)
        .map(Some)
        .ok_or_else(|| serde::de::Error::unknown_variant(&text, &["ready", "rejected", "failed"]))
}

/// One retrain attempt of one user: what identifies it, whatever its outcome.
pub(crate) struct Attempt<'a> {
    pub(crate) user_id: &'a str,
    pub(crate) retrain_id: Uuid,
    pub(crate) event_id: Uuid,
    /// The version number this attempt gets, whatever its outcome.
    pub(crate) version: i32,
    /// The version serving used when the attempt started.
    pub(crate) active_version: Option<i32>,
    /// Consecutive failures before this attempt (for the back-off).
    pub(crate) failures: i32,
    /// When the newest actual of the batch became pending.
    pub(crate) data_until: Option<DateTime<Utc>>,
}

/// A trained version: what its row and its event both say.
pub(crate) struct Trained<'a> {
    /// `Ready`, or `Rejected` (with the `reason`) by the validation gate.
    pub(crate) status: VersionStatus,
    pub(crate) reason: Option<String>,
    /// The version it was trained from.
    pub(crate) base_version: Option<i32>,
    /// The version serving uses after the commit.
    pub(crate) active_after: Option<i32>,
    pub(crate) rows_used: usize,
    pub(crate) rows_set_aside: usize,
    pub(crate) trees: i64,
    pub(crate) boosted_rounds: i32,
    pub(crate) artifact: &'a [u8],
    /// The policy step, as the row's `source` and the event's `action` name it.
    pub(crate) source: &'static str,
    pub(crate) action: &'static str,
    /// The validation gate's evidence, the serving version's live error, the policy step.
    pub(crate) validation: Option<Value>,
    pub(crate) live: Option<Value>,
    pub(crate) policy: Value,
}

/// A failed attempt, with what it would have trained with (stored with the failed version).
pub(crate) struct Failed {
    pub(crate) reason: String,
    pub(crate) params: Value,
    pub(crate) features: Value,
    pub(crate) rows_rejected: usize,
}

impl Failed {
    /// A failure before the parameters and the batch's layout were known.
    pub(crate) fn before_training(reason: String) -> Self {
        Failed {
            reason,
            params: json!({}),
            features: json!([]),
            rows_rejected: 0,
        }
    }
}

/// A version row's JSON columns, owned while its [`NewVersion`] borrows them.
pub(crate) struct VersionColumns {
    pub(crate) params: Value,
    pub(crate) features: Value,
    pub(crate) timings: Value,
    pub(crate) metrics: Value,
}

impl VersionColumns {
    /// A trained version's: its parameters, its batch's features, the step timings and the
    /// evidence (validation, live error, policy step).
    pub(crate) fn trained(t: &Trained<'_>, params: Value, features: Value, timings: Value) -> Self {
        VersionColumns {
            params,
            features,
            timings,
            metrics: json!({"validation": t.validation, "live": t.live, "policy": t.policy}),
        }
    }

    /// A failed attempt's: what it would have trained with, and the timings until it failed.
    pub(crate) fn failed(f: &Failed, timings: Value) -> Self {
        VersionColumns {
            params: f.params.clone(),
            features: f.features.clone(),
            timings,
            metrics: json!({}),
        }
    }
}

/// A row of `refit_model_versions` to insert.
pub(crate) struct NewVersion<'a> {
    pub(crate) user_id: &'a str,
    pub(crate) version: i32,
    pub(crate) status: VersionStatus,
    pub(crate) parent_version: Option<i32>,
    pub(crate) artifact: Option<&'a [u8]>,
    pub(crate) rows_used: i32,
    pub(crate) rows_set_aside: i32,
    pub(crate) trees: Option<i64>,
    pub(crate) boosted_rounds: Option<i32>,
    pub(crate) params: &'a Value,
    pub(crate) features: &'a Value,
    pub(crate) timings_ms: &'a Value,
    pub(crate) metrics: &'a Value,
    pub(crate) error: Option<&'a str>,
    pub(crate) source: &'a str,
    pub(crate) retrain_id: Uuid,
}

impl<'a> NewVersion<'a> {
    /// A trained version's row: `ready`, or `rejected` with the reason; parented on its base.
    pub(crate) fn trained(
        attempt: &Attempt<'a>,
        t: &'a Trained<'a>,
        columns: &'a VersionColumns,
    ) -> Self {
        NewVersion {
            status: t.status,
            parent_version: t.base_version,
            artifact: Some(t.artifact),
            rows_used: t.rows_used as i32,
            rows_set_aside: t.rows_set_aside as i32,
            trees: Some(t.trees),
            boosted_rounds: Some(t.boosted_rounds),
            error: t.reason.as_deref(),
            source: t.source,
            ..Self::empty(
                attempt.user_id,
                attempt.version,
                attempt.retrain_id,
                columns,
            )
        }
    }

    /// A failed attempt's row: no artifact, nothing consumed, parented on the active version.
    pub(crate) fn failed(
        attempt: &Attempt<'a>,
        failed: &'a Failed,
        columns: &'a VersionColumns,
    ) -> Self {
        NewVersion {
            status: VersionStatus::Failed,
            parent_version: attempt.active_version,
            error: Some(&failed.reason),
            ..Self::empty(
                attempt.user_id,
                attempt.version,
                attempt.retrain_id,
                columns,
            )
        }
    }

    /// An imported model's row: `ready`, parented on the version that served before.
    pub(crate) fn imported(
        user_id: &'a str,
        version: i32,
        previous: Option<i32>,
        model: Imported<'a>,
        columns: &'a VersionColumns,
    ) -> Self {
        NewVersion {
            status: VersionStatus::Ready,
            parent_version: previous,
            artifact: Some(model.bytes),
            trees: Some(model.trees),
            boosted_rounds: Some(model.boosted_rounds),
            source: "import",
            ..Self::empty(user_id, version, Uuid::now_v7(), columns)
        }
    }

    /// The columns every case sets, and nothing trained.
    fn empty(
        user_id: &'a str,
        version: i32,
        retrain_id: Uuid,
        columns: &'a VersionColumns,
    ) -> Self {
        NewVersion {
            user_id,
            version,
            status: VersionStatus::Failed,
            parent_version: None,
            artifact: None,
            rows_used: 0,
            rows_set_aside: 0,
            trees: None,
            boosted_rounds: None,
            params: &columns.params,
            features: &columns.features,
            timings_ms: &columns.timings,
            metrics: &columns.metrics,
            error: None,
            source: "retrain",
            retrain_id,
        }
    }
}

/// An imported model's bytes and size.
pub(crate) struct Imported<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) trees: i64,
    pub(crate) boosted_rounds: i32,
}

/// The value of a `model-retrained` message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RetrainEvent {
    /// Unique per event: consumers dedupe on it (delivery is at least once).
    pub event_id: Uuid,
    pub user_id: String,
    /// `success`, `failed` or `rejected`.
    pub status: VersionStatus,
    /// What made the version: `retrain`, `compaction`, `promote`, `rollback` or `import`; or
    /// `delete` when the user was erased (then followed by a tombstone for the user's key).
    #[serde(default = "default_action")]
    pub action: String,
    /// The version this event is about (the new one, or the failed attempt).
    pub model_version: Option<i32>,
    /// The version that was active before.
    pub previous_version: Option<i32>,
    /// The version serving should use after this event.
    pub active_version: Option<i32>,
    pub rows_used: i64,
    /// Rows set aside as unusable (see the `reason`s in `refit_consumed_actuals`).
    pub rows_rejected: i64,
    pub trees: Option<i64>,
    /// Milliseconds per step: read, train, commit, invalidate, and `train_cpu` (the train step's
    /// CPU time on its thread); empty for activations. `commit` and `invalidate` are measured
    /// after the event was stored: the fast path adds them, the sweeper has none to add.
    pub timings_ms: Map<String, Value>,
    /// The validation gate's evidence (docs/model-retrained.schema.json).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<Value>,
    /// The serving version's error on the batch before training on it: mae, rmse, rows, version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<Value>,
    /// The policy step that made the version: step, rounds, eta, rows_trained, since_rebuild,
    /// reinstated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Value>,
    /// Why a retrain failed or was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub retrain_id: Uuid,
    /// When the newest actual of the batch became pending (its insert): the data the new model
    /// has seen. Freshness is measured from here to the event being published.
    pub data_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

fn default_action() -> String {
    "retrain".into()
}

impl RetrainEvent {
    /// The `success` or `rejected` event of a trained version.
    pub(crate) fn trained(
        attempt: &Attempt<'_>,
        t: &Trained<'_>,
        timings: Map<String, Value>,
    ) -> Self {
        RetrainEvent {
            status: t.status,
            action: t.action.into(),
            active_version: t.active_after,
            rows_used: t.rows_used as i64,
            rows_rejected: t.rows_set_aside as i64,
            trees: Some(t.trees),
            timings_ms: timings,
            validation: t.validation.clone(),
            live: t.live.clone(),
            policy: Some(t.policy.clone()),
            reason: t.reason.clone(),
            ..Self::of_attempt(attempt)
        }
    }

    /// The `failed` event: serving keeps the active version.
    pub(crate) fn failed(attempt: &Attempt<'_>, f: &Failed, timings: Map<String, Value>) -> Self {
        RetrainEvent {
            rows_rejected: f.rows_rejected as i64,
            timings_ms: timings,
            reason: Some(f.reason.clone()),
            ..Self::of_attempt(attempt)
        }
    }

    /// The event of a registry write that changes what serves without training — `promote`,
    /// `rollback`, `import` (`active` is the version now serving) or `delete` (`active` is none).
    pub(crate) fn registry_change(
        user: &str,
        action: &str,
        previous: Option<i32>,
        active: Option<i32>,
        trees: Option<i64>,
    ) -> Self {
        RetrainEvent {
            event_id: Uuid::new_v4(),
            user_id: user.into(),
            status: VersionStatus::Ready,
            action: action.into(),
            model_version: active,
            previous_version: previous,
            active_version: active,
            rows_used: 0,
            rows_rejected: 0,
            trees,
            timings_ms: Map::new(),
            validation: None,
            live: None,
            policy: None,
            reason: None,
            retrain_id: Uuid::now_v7(),
            data_until: None,
            created_at: Utc::now(),
        }
    }

    /// An attempt's `failed` event with nothing trained: serving keeps the active version.
    fn of_attempt(attempt: &Attempt<'_>) -> Self {
        RetrainEvent {
            event_id: attempt.event_id,
            user_id: attempt.user_id.to_owned(),
            status: VersionStatus::Failed,
            action: default_action(),
            model_version: Some(attempt.version),
            previous_version: attempt.active_version,
            active_version: attempt.active_version,
            rows_used: 0,
            rows_rejected: 0,
            trees: None,
            timings_ms: Map::new(),
            validation: None,
            live: None,
            policy: None,
            reason: None,
            retrain_id: attempt.retrain_id,
            data_until: attempt.data_until,
            created_at: Utc::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt() -> Attempt<'static> {
        Attempt {
            user_id: "u",
            retrain_id: Uuid::now_v7(),
            event_id: Uuid::new_v4(),
            version: 7,
            active_version: Some(5),
            failures: 0,
            data_until: None,
        }
    }

    fn trained(status: VersionStatus, reason: Option<&str>) -> Trained<'static> {
        Trained {
            status,
            reason: reason.map(str::to_owned),
            base_version: Some(5),
            active_after: if status == VersionStatus::Ready {
                Some(7)
            } else {
                Some(5)
            },
            rows_used: 48,
            rows_set_aside: 2,
            trees: 30,
            boosted_rounds: 30,
            artifact: b"model",
            source: "retrain",
            action: "retrain",
            validation: None,
            live: None,
            policy: json!({"step": "continue"}),
        }
    }

    #[test]
    fn a_status_is_stored_and_reported_in_its_layers_spelling() {
        let spellings: Vec<_> = VersionStatus::ALL
            .iter()
            .map(|s| (s.stored(), s.reported()))
            .collect();
        assert_eq!(
            spellings,
            [
                ("ready", "success"),
                ("failed", "failed"),
                ("rejected", "rejected")
            ]
        );
        for s in VersionStatus::ALL {
            let wire = serde_json::to_value(s).unwrap();
            assert_eq!(wire, json!(s.reported()));
            assert_eq!(serde_json::from_value::<VersionStatus>(wire).unwrap(), s);
        }
        assert!(serde_json::from_value::<VersionStatus>(json!("ready")).is_err());
        for s in VersionStatus::ALL {
            assert_eq!(VersionStatus::from_stored(s.stored()), Some(s));
        }
        assert_eq!(VersionStatus::from_stored("success"), None);
    }

    #[test]
    fn a_trained_versions_row_and_event_agree() {
        let a = attempt();
        for (status, reason) in [
            (VersionStatus::Ready, None),
            (
                VersionStatus::Rejected,
                Some("worse than the active version"),
            ),
        ] {
            let t = trained(status, reason);
            let columns = VersionColumns::trained(&t, json!({}), json!(["hr"]), json!({}));
            let row = NewVersion::trained(&a, &t, &columns);
            let event = RetrainEvent::trained(&a, &t, Map::new());
            assert_eq!((row.status, event.status), (status, status));
            assert_eq!((row.version, event.model_version), (7, Some(7)));
            assert_eq!(row.error, event.reason.as_deref());
            assert_eq!((row.rows_used, event.rows_used), (48, 48));
            assert_eq!((row.rows_set_aside, event.rows_rejected), (2, 2));
            assert_eq!(
                (row.parent_version, event.previous_version),
                (Some(5), Some(5))
            );
            assert_eq!(row.retrain_id, event.retrain_id);
            assert_eq!(columns.metrics["policy"], json!({"step": "continue"}));
        }
    }

    #[test]
    fn a_failed_attempt_stores_no_model_and_keeps_serving() {
        let a = attempt();
        let f = Failed::before_training("no usable rows".into());
        let columns = VersionColumns::failed(&f, json!({"read": 1.0}));
        let row = NewVersion::failed(&a, &f, &columns);
        let event = RetrainEvent::failed(&a, &f, Map::new());
        assert_eq!(
            (row.status, event.status),
            (VersionStatus::Failed, VersionStatus::Failed)
        );
        assert!(row.artifact.is_none() && row.trees.is_none());
        assert_eq!(
            event.active_version,
            Some(5),
            "serving keeps the active version"
        );
        assert_eq!(row.error, Some("no usable rows"));
        assert_eq!(event.reason.as_deref(), Some("no usable rows"));
    }
}
