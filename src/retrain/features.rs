//! From pending actuals to a training matrix: each row's features are checked and laid out in the
//! model's feature order; a row that cannot be used is set aside with a reason, and the rest train.
//!
//! Rules (documented in the README):
//! - `features` must be a JSON object; a missing feature, or `null`, is XGBoost's *missing* (NaN).
//! - a used feature must be a finite number that fits in `f32`; keys the model does not know are
//!   ignored.
//! - the actual must be finite and fit in `f32` (XGBoost labels are `f32`).
//! - a row that carries none of the model's features is set aside (it holds no information).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde_json::{Map, Value};

/// Why an actual was set aside instead of trained on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum SetAsideReason {
    /// The actual is NaN or ±infinity.
    NonFiniteActual,
    /// The actual is finite but does not fit in `f32`.
    ActualOutOfRange,
    /// `features` is valid JSON but not an object.
    FeaturesNotObject,
    /// `features` could not be parsed (e.g. a number beyond `f64`).
    MalformedFeatures,
    /// A used feature is a string, boolean, array or object.
    NonNumericFeature,
    /// A used feature does not fit in `f32`.
    FeatureOutOfRange,
    /// None of the model's features is present.
    NoKnownFeatures,
}

impl SetAsideReason {
    /// Every reason (the metrics show each one from start-up, at zero).
    pub(crate) const ALL: [SetAsideReason; 7] = [
        Self::NonFiniteActual,
        Self::ActualOutOfRange,
        Self::FeaturesNotObject,
        Self::MalformedFeatures,
        Self::NonNumericFeature,
        Self::FeatureOutOfRange,
        Self::NoKnownFeatures,
    ];

    /// The stable name stored in the database, logged, and used as a metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::NonFiniteActual => "non_finite_actual",
            Self::ActualOutOfRange => "actual_out_of_range",
            Self::FeaturesNotObject => "features_not_object",
            Self::MalformedFeatures => "malformed_features",
            Self::NonNumericFeature => "non_numeric_feature",
            Self::FeatureOutOfRange => "feature_out_of_range",
            Self::NoKnownFeatures => "no_known_features",
        }
    }
}

impl fmt::Display for SetAsideReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One pending actual joined with its prediction request.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ActualRow {
    pub actual_id: i64,
    pub actual_value: f64,
    /// The request's `features` as JSON text (parsed here, row by row, so one bad row cannot
    /// fail the batch).
    pub features: String,
}

/// A row that will not be trained on, and why.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SetAside {
    pub(crate) actual_id: i64,
    pub(crate) reason: SetAsideReason,
    pub(crate) detail: String,
}

/// The usable rows of a batch, laid out for XGBoost.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Feature order of the matrix (the model's).
    pub feature_names: Vec<String>,
    /// Row-major values, `feature_names.len()` per row, NaN for missing.
    pub(crate) values: Vec<f32>,
    /// One label per used row.
    pub labels: Vec<f32>,
    /// The actuals the rows came from, in row order.
    pub(crate) used: Vec<i64>,
    /// The actuals that were set aside.
    pub(crate) set_aside: Vec<SetAside>,
}

impl Batch {
    pub(crate) fn rows(&self) -> usize {
        self.used.len()
    }

    /// Splits off the last `n` rows (the newest actuals) as a held-out set; set-aside rows stay
    /// with the first part.
    #[cfg(test)]
    pub(crate) fn split_last(mut self, n: usize) -> (Batch, Batch) {
        let n = n.min(self.rows());
        let keep = self.rows() - n;
        let width = self.feature_names.len();
        let held = Batch {
            feature_names: self.feature_names.clone(),
            values: self.values.split_off(keep * width),
            labels: self.labels.split_off(keep),
            used: self.used.split_off(keep),
            set_aside: Vec::new(),
        };
        (self, held)
    }

    /// A copy of the last `n` rows (the newest actuals), without set-aside rows.
    pub(crate) fn newest(&self, n: usize) -> Batch {
        let skip = self.rows() - n.min(self.rows());
        let width = self.feature_names.len();
        Batch {
            feature_names: self.feature_names.clone(),
            values: self.values[skip * width..].to_vec(),
            labels: self.labels[skip..].to_vec(),
            used: self.used[skip..].to_vec(),
            set_aside: Vec::new(),
        }
    }

    /// Appends `other`'s usable rows (same feature order) after this batch's.
    pub(crate) fn extend(&mut self, other: Batch) {
        debug_assert_eq!(self.feature_names, other.feature_names);
        self.values.extend(other.values);
        self.labels.extend(other.labels);
        self.used.extend(other.used);
    }
}

/// Lays out `rows` in `feature_order`, or, for a model that has none yet, in the sorted names of
/// the features that hold a number in at least one row.
///
/// With a feature order known, a row whose features are plain numbers is laid out as it is
/// parsed ([`layout_plain`]); any other row takes the full check, which gives the reason.
pub fn prepare(rows: &[ActualRow], feature_order: Option<&[String]>) -> Batch {
    let Some(order) = feature_order else {
        return prepare_checked(rows, None);
    };
    let columns: HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, name)| (name.as_str(), i))
        .collect();
    let mut batch = Batch {
        feature_names: order.to_vec(),
        ..Batch::default()
    };
    for row in rows {
        if layout_plain(row, &columns, &mut batch.values) {
            batch.labels.push(row.actual_value as f32);
            batch.used.push(row.actual_id);
        } else {
            let checked = prepare_checked(std::slice::from_ref(row), Some(order));
            batch.values.extend(checked.values);
            batch.labels.extend(checked.labels);
            batch.used.extend(checked.used);
            batch.set_aside.extend(checked.set_aside);
        }
    }
    batch.set_aside.sort_by_key(|s| s.actual_id);
    batch
}

/// Every row through the full check: parsed into a JSON value, then laid out.
fn prepare_checked(rows: &[ActualRow], feature_order: Option<&[String]>) -> Batch {
    let mut set_aside = Vec::new();
    let mut parsed: Vec<(&ActualRow, Features)> = Vec::with_capacity(rows.len());
    for row in rows {
        match parse_row(row) {
            Ok(object) => parsed.push((row, object)),
            Err((reason, detail)) => set_aside.push(SetAside {
                actual_id: row.actual_id,
                reason,
                detail,
            }),
        }
    }

    let feature_names: Vec<String> = match feature_order {
        Some(order) => order.to_vec(),
        None => parsed
            .iter()
            .flat_map(|(_, o)| {
                o.values
                    .iter()
                    .filter(|(_, v)| v.is_number())
                    .map(|(k, _)| k.clone())
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
    };

    let mut batch = Batch {
        feature_names,
        ..Batch::default()
    };
    let width = batch.feature_names.len();
    let mut line = Vec::with_capacity(width);
    for (row, object) in parsed {
        line.clear();
        match layout(&object, &batch.feature_names, &mut line) {
            Ok(()) => {
                batch.values.extend_from_slice(&line);
                batch.labels.push(row.actual_value as f32);
                batch.used.push(row.actual_id);
            }
            Err((reason, detail)) => set_aside.push(SetAside {
                actual_id: row.actual_id,
                reason,
                detail,
            }),
        }
    }
    set_aside.sort_by_key(|s| s.actual_id);
    batch.set_aside = set_aside;
    batch
}

/// Lays out a row that needs no check beyond parsing — a finite actual within `f32`, an object
/// whose known features are numbers within `f32` or null, at least one of them a number — as it
/// is parsed, without building a JSON value. Returns false, leaving `out` as it was, for any
/// other row.
fn layout_plain(row: &ActualRow, columns: &HashMap<&str, usize>, out: &mut Vec<f32>) -> bool {
    if !row.actual_value.is_finite() || row.actual_value.abs() > f32::MAX as f64 {
        return false;
    }
    let start = out.len();
    out.resize(start + columns.len(), f32::NAN);
    let line = &mut out[start..];
    let mut parser = serde_json::Deserializer::from_str(&row.features);
    let parsed = serde::Deserializer::deserialize_map(&mut parser, PlainLine { columns, line });
    let known = line.iter().filter(|v| !v.is_nan()).count();
    if parsed.is_err() || parser.end().is_err() || known == 0 {
        out.truncate(start);
        return false;
    }
    true
}

/// Parses a features object into one matrix line; fails on anything [`layout_plain`] leaves to
/// the full check.
struct PlainLine<'a, 'l> {
    columns: &'a HashMap<&'a str, usize>,
    line: &'l mut [f32],
}

impl<'de> serde::de::Visitor<'de> for PlainLine<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of numbers")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<&'de str>()? {
            let Some(&column) = self.columns.get(key) else {
                map.next_value::<serde::de::IgnoredAny>()?;
                continue;
            };
            let value = match map.next_value::<Option<f64>>()? {
                None => f32::NAN,
                Some(v) if v.is_finite() && v.abs() <= f32::MAX as f64 => v as f32,
                Some(_) => return Err(serde::de::Error::custom("out of range")),
            };
            self.line[column] = value;
        }
        Ok(())
    }
}

type RowError = (SetAsideReason, String);

/// A row's features: the values serde_json can hold, and the numbers it cannot (beyond f64, e.g.
/// `1e400`), kept as written. Only a feature the model uses makes such a number a problem.
struct Features {
    values: Map<String, Value>,
    out_of_range: BTreeMap<String, String>,
}

fn parse_row(row: &ActualRow) -> Result<Features, RowError> {
    if !row.actual_value.is_finite() {
        return Err((
            SetAsideReason::NonFiniteActual,
            format!("actual_value is {}", row.actual_value),
        ));
    }
    if row.actual_value.abs() > f32::MAX as f64 {
        return Err((
            SetAsideReason::ActualOutOfRange,
            format!("actual_value {} does not fit in f32", row.actual_value),
        ));
    }
    match serde_json::from_str::<Value>(&row.features) {
        Ok(Value::Object(values)) => Ok(Features {
            values,
            out_of_range: BTreeMap::new(),
        }),
        Ok(other) => Err((
            SetAsideReason::FeaturesNotObject,
            format!("features is a JSON {}", json_kind(&other)),
        )),
        Err(e) => {
            parse_leniently(&row.features).ok_or((SetAsideReason::MalformedFeatures, e.to_string()))
        }
    }
}

/// An object whose values serde_json cannot all hold: each value parsed on its own, those that
/// fail (numbers out of range) kept as written.
fn parse_leniently(text: &str) -> Option<Features> {
    let raw: BTreeMap<String, Box<serde_json::value::RawValue>> =
        serde_json::from_str(text).ok()?;
    let mut features = Features {
        values: Map::new(),
        out_of_range: BTreeMap::new(),
    };
    for (key, value) in raw {
        match serde_json::from_str::<Value>(value.get()) {
            Ok(v) => {
                features.values.insert(key, v);
            }
            Err(_) => {
                features.out_of_range.insert(key, value.get().to_owned());
            }
        }
    }
    Some(features)
}

fn layout(features: &Features, names: &[String], out: &mut Vec<f32>) -> Result<(), RowError> {
    let mut known = 0;
    for name in names {
        if let Some(raw) = features.out_of_range.get(name) {
            return Err((
                SetAsideReason::FeatureOutOfRange,
                format!("feature {name:?} = {raw} does not fit in f32"),
            ));
        }
        let value = match features.values.get(name) {
            None | Some(Value::Null) => f32::NAN,
            Some(Value::Number(n)) => {
                known += 1;
                let v = n.as_f64().unwrap_or(f64::NAN);
                if !v.is_finite() || v.abs() > f32::MAX as f64 {
                    return Err((
                        SetAsideReason::FeatureOutOfRange,
                        format!("feature {name:?} = {n} does not fit in f32"),
                    ));
                }
                v as f32
            }
            Some(other) => {
                return Err((
                    SetAsideReason::NonNumericFeature,
                    format!("feature {name:?} is a JSON {}", json_kind(other)),
                ))
            }
        };
        out.push(value);
    }
    if known == 0 {
        return Err((
            SetAsideReason::NoKnownFeatures,
            format!("none of the model's {} features is present", names.len()),
        ));
    }
    Ok(())
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_reason_once_in_declaration_order() {
        // Exhaustive: a new reason does not compile here until it gets a place (add it to ALL).
        let place = |r: SetAsideReason| match r {
            SetAsideReason::NonFiniteActual => 0,
            SetAsideReason::ActualOutOfRange => 1,
            SetAsideReason::FeaturesNotObject => 2,
            SetAsideReason::MalformedFeatures => 3,
            SetAsideReason::NonNumericFeature => 4,
            SetAsideReason::FeatureOutOfRange => 5,
            SetAsideReason::NoKnownFeatures => 6,
        };
        for (i, reason) in SetAsideReason::ALL.into_iter().enumerate() {
            assert_eq!(place(reason), i, "{reason}");
        }
    }

    fn row(id: i64, actual: f64, features: &str) -> ActualRow {
        ActualRow {
            actual_id: id,
            actual_value: actual,
            features: features.to_owned(),
        }
    }

    #[test]
    fn fresh_model_takes_sorted_numeric_keys_and_missing_is_nan() {
        let rows = [
            row(1, 3.0, r#"{"temp": 20.5, "hour": 8}"#),
            row(2, 4.0, r#"{"hour": 9, "holiday": 1, "city": "x"}"#),
        ];
        let b = prepare(&rows, None);
        assert_eq!(b.feature_names, ["holiday", "hour", "temp"]);
        assert_eq!(b.used, [1, 2]);
        assert!(b.values[0].is_nan());
        assert_eq!(&b.values[1..3], &[8.0, 20.5]);
        assert_eq!(&b.values[3..5], &[1.0, 9.0]);
        assert!(b.values[5].is_nan());
        assert_eq!(b.labels, [3.0, 4.0]);
        assert!(b.set_aside.is_empty());
    }

    #[test]
    fn split_last_holds_out_the_newest_rows() {
        let rows: Vec<_> = (1..=5)
            .map(|i| row(i, i as f64, &format!(r#"{{"a": {i}}}"#)))
            .collect();
        let (train, held) = prepare(&rows, None).split_last(2);
        assert_eq!(train.used, [1, 2, 3]);
        assert_eq!(train.values, [1.0, 2.0, 3.0]);
        assert_eq!(held.used, [4, 5]);
        assert_eq!(held.labels, [4.0, 5.0]);
        assert_eq!(held.feature_names, ["a"]);
    }

    #[test]
    fn bad_rows_are_set_aside_with_reasons_and_the_rest_kept() {
        let order = vec!["a".to_owned(), "b".to_owned()];
        let rows = [
            row(1, f64::NAN, r#"{"a": 1}"#),
            row(2, f64::INFINITY, r#"{"a": 1}"#),
            row(3, 1.0, r#"[1, 2]"#),
            row(4, 1.0, r#"{"a": "high"}"#),
            row(5, 1.0, r#"{"a": 1e300}"#),
            row(6, 1.0, r#"{"zzz": 1}"#),
            row(7, 1.0, r#"{"a": -5, "unknown": "ignored"}"#),
            row(8, 1e300, r#"{"a": 1}"#),
            row(9, 1.0, r#"{"a": 1e400}"#),
            row(10, 1.0, r#"{}"#),
        ];
        let b = prepare(&rows, Some(&order));
        let reasons: Vec<_> = b
            .set_aside
            .iter()
            .map(|s| (s.actual_id, s.reason))
            .collect();
        use SetAsideReason::*;
        assert_eq!(
            reasons,
            [
                (1, NonFiniteActual),
                (2, NonFiniteActual),
                (3, FeaturesNotObject),
                (4, NonNumericFeature),
                (5, FeatureOutOfRange),
                (6, NoKnownFeatures),
                (8, ActualOutOfRange),
                (9, FeatureOutOfRange),
                (10, NoKnownFeatures),
            ]
        );
        assert_eq!(b.used, [7]);
        assert_eq!(b.values[0], -5.0);
        assert!(b.values[1].is_nan());
    }

    /// Item 8 of issue 12: keys the model does not know are ignored, so a number out of range
    /// under one of them must not set the row aside; under a known key it still does.
    #[test]
    fn an_unknown_key_with_an_out_of_range_number_is_ignored() {
        let order = vec!["a".to_owned()];
        let rows = [
            row(1, 1.0, r#"{"a": 2, "unknown": 1e400}"#),
            row(2, 1.0, r#"{"a": 1e400, "unknown": 1}"#),
            row(3, 1.0, r#"{"a": 3, "nested": {"deep": -1e999}}"#),
            row(4, 1.0, r#"{"a": 1e400"#),
        ];
        let b = prepare(&rows, Some(&order));
        let reasons: Vec<_> = b
            .set_aside
            .iter()
            .map(|s| (s.actual_id, s.reason))
            .collect();
        use SetAsideReason::*;
        assert_eq!(
            reasons,
            [(2, FeatureOutOfRange), (4, MalformedFeatures)],
            "{:?}",
            b.set_aside
        );
        assert_eq!((b.used, b.values), (vec![1, 3], vec![2.0, 3.0]));
        // A new model's features are the keys holding a number it can use.
        let fresh = prepare(&rows[..1], None);
        assert_eq!(fresh.feature_names, ["a"]);
    }

    /// The plain-row path lays out exactly what the full check does, row for row and in order,
    /// and leaves every other row to it.
    #[test]
    fn plain_rows_are_laid_out_as_the_full_check_lays_them_out() {
        let order: Vec<String> = ["a", "b", "c"].map(str::to_owned).to_vec();
        let features = [
            r#"{"a": 1, "b": 2.5, "c": -3}"#,
            r#"{"c": 7, "a": null}"#,
            r#"{"a": -0, "zz": [1, {"q": 1e400}], "b": 1e-50}"#,
            r#"{"a": 1, "a": null}"#,
            r#"{"a": null, "a": 4}"#,
            r#"{"a": "x", "a": 4}"#,
            r#"{"a": 4, "a": "x"}"#,
            r#"{"b": 3.4028235e38}"#,
            r#"{"b": 3.5e38}"#,
            r#"{"b": 18446744073709551615}"#,
            r#"{"\u0061": 5}"#,
            r#"{"a": 1} trailing"#,
            r#"{"a": true}"#,
            r#"{}"#,
            r#"[1]"#,
            r#"{"zz": 1}"#,
        ];
        let mut rows: Vec<ActualRow> = features
            .iter()
            .enumerate()
            .map(|(i, f)| row(100 - i as i64, i as f64, f))
            .collect();
        rows.push(row(1, f64::NAN, r#"{"a": 1}"#));
        rows.push(row(2, 1e300, r#"{"a": 1}"#));
        let fast = prepare(&rows, Some(&order));
        let full = prepare_checked(&rows, Some(&order));
        assert_eq!(fast.used, full.used);
        assert_eq!(fast.labels, full.labels);
        assert_eq!(fast.set_aside, full.set_aside);
        let bits = |b: &Batch| b.values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&fast), bits(&full));
        assert!(fast.rows() >= 6 && !fast.set_aside.is_empty(), "{fast:?}");
    }
}
