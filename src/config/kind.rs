//! The kinds of value a setting holds: how a variable's text is parsed (its default, its range,
//! the message an invalid value gets) and how `refit config` shows the parsed value. Secrets are
//! held as [`Secret`] and shown masked, or not at all.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::time::Duration;

use super::{invalid, redact_url, ConfigError, Secret};

/// The XGBoost parameters a new model starts with, unless REFIT_XGB_PARAMS overrides them.
const DEFAULT_XGB_PARAMS: &str = r#"{"objective": "reg:squarederror", "tree_method": "hist", "max_depth": 6, "eta": 0.1, "seed": 0}"#;

/// What a setting holds: how its text is parsed (default, range, message when invalid) and how
/// `refit config` shows the parsed value.
pub(crate) trait Kind {
    type Value;
    /// `text` is the trimmed value, `None` when unset or blank.
    fn parse(&self, name: &'static str, text: Option<&str>) -> Result<Self::Value, ConfigError>;
    /// The value as `refit config` prints it; `None`: not printed at all.
    fn show(&self, value: &Self::Value) -> Option<String>;
}

/// An integer with a default and an inclusive range, as `T`.
pub(crate) struct Int<T> {
    default: i64,
    min: i64,
    max: i64,
    as_type: PhantomData<T>,
}

impl<T> Int<T> {
    pub(crate) const fn new(default: i64, min: i64, max: i64) -> Self {
        Int {
            default,
            min,
            max,
            as_type: PhantomData,
        }
    }

    fn parse_i64(&self, name: &'static str, text: Option<&str>) -> Result<i64, ConfigError> {
        let Some(text) = text else {
            return Ok(self.default);
        };
        match text.parse::<i64>() {
            Ok(v) if (self.min..=self.max).contains(&v) => Ok(v),
            _ => Err(self.out_of_range(name, text)),
        }
    }

    fn out_of_range(&self, name: &'static str, text: &str) -> ConfigError {
        let (min, max, default) = (self.min, self.max, self.default);
        invalid(
            name,
            text,
            &format!("an integer from {min} to {max} (default {default})"),
        )
    }
}

impl<T: TryFrom<i64> + ToString> Kind for Int<T> {
    type Value = T;
    fn parse(&self, name: &'static str, text: Option<&str>) -> Result<T, ConfigError> {
        let value = self.parse_i64(name, text)?;
        T::try_from(value).map_err(|_| self.out_of_range(name, text.unwrap_or_default()))
    }
    fn show(&self, value: &T) -> Option<String> {
        Some(value.to_string())
    }
}

/// Megabytes, held as bytes: default, min and max in megabytes.
pub(crate) struct Mebibytes(pub(crate) i64, pub(crate) i64, pub(crate) i64);

impl Kind for Mebibytes {
    type Value = usize;
    fn parse(&self, name: &'static str, text: Option<&str>) -> Result<usize, ConfigError> {
        let megabytes: usize = Int::new(self.0, self.1, self.2).parse(name, text)?;
        Ok(megabytes * 1024 * 1024)
    }
    fn show(&self, bytes: &usize) -> Option<String> {
        Some((bytes / 1024 / 1024).to_string())
    }
}

/// A decimal with a default and an inclusive range.
pub(crate) struct Float {
    default: f64,
    min: f64,
    max: f64,
}

impl Float {
    pub(crate) const fn new(default: f64, min: f64, max: f64) -> Self {
        Float { default, min, max }
    }
}

impl Kind for Float {
    type Value = f64;
    fn parse(&self, name: &'static str, text: Option<&str>) -> Result<f64, ConfigError> {
        let Some(text) = text else {
            return Ok(self.default);
        };
        let Float { default, min, max } = *self;
        match text.parse::<f64>() {
            Ok(v) if (min..=max).contains(&v) => Ok(v),
            _ => Err(invalid(
                name,
                text,
                &format!("a number from {min} to {max} (default {default})"),
            )),
        }
    }
    fn show(&self, value: &f64) -> Option<String> {
        Some(value.to_string())
    }
}

/// The unit a duration setting is written in.
#[derive(Clone, Copy)]
pub(crate) enum Unit {
    Millis,
    Secs,
    Days,
}

/// A duration written as a whole number of `unit`s, with a default and an inclusive range.
pub(crate) struct Dur {
    unit: Unit,
    count: Int<u64>,
}

impl Dur {
    pub(crate) const fn millis(default: i64, min: i64, max: i64) -> Self {
        Dur::of(Unit::Millis, default, min, max)
    }
    pub(crate) const fn secs(default: i64, min: i64, max: i64) -> Self {
        Dur::of(Unit::Secs, default, min, max)
    }
    pub(crate) const fn days(default: i64, min: i64, max: i64) -> Self {
        Dur::of(Unit::Days, default, min, max)
    }
    const fn of(unit: Unit, default: i64, min: i64, max: i64) -> Self {
        Dur {
            unit,
            count: Int::new(default, min, max),
        }
    }
}

impl Kind for Dur {
    type Value = Duration;
    fn parse(&self, name: &'static str, text: Option<&str>) -> Result<Duration, ConfigError> {
        let count = self.count.parse(name, text)?;
        Ok(match self.unit {
            Unit::Millis => Duration::from_millis(count),
            Unit::Secs => Duration::from_secs(count),
            Unit::Days => Duration::from_secs(count * 86_400),
        })
    }
    fn show(&self, value: &Duration) -> Option<String> {
        Some(match self.unit {
            Unit::Millis => value.as_millis().to_string(),
            Unit::Secs => value.as_secs().to_string(),
            Unit::Days => (value.as_secs() / 86_400).to_string(),
        })
    }
}

/// A duration where 0 means none.
pub(crate) struct OptDur(pub(crate) Dur);

impl Kind for OptDur {
    type Value = Option<Duration>;
    fn parse(&self, name: &'static str, text: Option<&str>) -> Result<Self::Value, ConfigError> {
        let value = self.0.parse(name, text)?;
        Ok((!value.is_zero()).then_some(value))
    }
    fn show(&self, value: &Self::Value) -> Option<String> {
        self.0.show(&value.unwrap_or_default())
    }
}

/// An on/off setting with a default.
pub(crate) struct Switch(pub(crate) bool);

impl Kind for Switch {
    type Value = bool;
    fn parse(&self, name: &'static str, text: Option<&str>) -> Result<bool, ConfigError> {
        match text {
            None => Ok(self.0),
            Some("on" | "true" | "1") => Ok(true),
            Some("off" | "false" | "0") => Ok(false),
            Some(other) => Err(invalid(name, other, "on or off")),
        }
    }
    fn show(&self, on: &bool) -> Option<String> {
        Some(if *on { "on" } else { "off" }.to_owned())
    }
}

/// One of a few names, each standing for a value of `E`.
pub(crate) struct Choice<E: 'static> {
    default: E,
    options: &'static [(&'static str, E)],
}

impl<E> Choice<E> {
    pub(crate) const fn new(default: E, options: &'static [(&'static str, E)]) -> Self {
        Choice { default, options }
    }
}

impl<E: Copy + PartialEq> Kind for Choice<E> {
    type Value = E;
    fn parse(&self, name: &'static str, text: Option<&str>) -> Result<E, ConfigError> {
        let Some(text) = text else {
            return Ok(self.default);
        };
        match self.options.iter().find(|(option, _)| *option == text) {
            Some((_, value)) => Ok(*value),
            None => {
                let names: Vec<&str> = self.options.iter().map(|(option, _)| *option).collect();
                Err(invalid(name, text, &names.join(" or ")))
            }
        }
    }
    fn show(&self, value: &E) -> Option<String> {
        let found = self.options.iter().find(|(_, v)| v == value);
        found.map(|(option, _)| (*option).to_owned())
    }
}

/// Free text with a default.
pub(crate) struct Text(pub(crate) &'static str);

impl Kind for Text {
    type Value = String;
    fn parse(&self, _: &'static str, text: Option<&str>) -> Result<String, ConfigError> {
        Ok(text.unwrap_or(self.0).to_owned())
    }
    fn show(&self, value: &String) -> Option<String> {
        Some(value.clone())
    }
}

/// What a connection URL falls back to when unset.
enum Absent {
    Default(&'static str),
    /// Required: the hint says what a value looks like.
    Missing(&'static str),
}

/// A connection URL (a secret) with one of `schemes`; a malformed one is echoed redacted.
pub(crate) struct Url {
    schemes: &'static [&'static str],
    expected: &'static str,
    absent: Absent,
}

impl Url {
    pub(crate) const fn required(
        schemes: &'static [&'static str],
        expected: &'static str,
        hint: &'static str,
    ) -> Self {
        let absent = Absent::Missing(hint);
        Url {
            schemes,
            expected,
            absent,
        }
    }
    pub(crate) const fn with_default(
        schemes: &'static [&'static str],
        expected: &'static str,
        default: &'static str,
    ) -> Self {
        let absent = Absent::Default(default);
        Url {
            schemes,
            expected,
            absent,
        }
    }
}

impl Kind for Url {
    type Value = Secret;
    fn parse(&self, name: &'static str, text: Option<&str>) -> Result<Secret, ConfigError> {
        let url = match (text, &self.absent) {
            (Some(url), _) => url,
            (None, Absent::Default(url)) => url,
            (None, Absent::Missing(hint)) => return Err(ConfigError::Missing { name, hint }),
        };
        if !self.schemes.iter().any(|scheme| url.starts_with(scheme)) {
            // Never echo the password of a malformed URL.
            return Err(invalid(name, &redact_url(url), self.expected));
        }
        Ok(Secret::new(url))
    }
    fn show(&self, value: &Secret) -> Option<String> {
        Some(value.to_string())
    }
}

/// An optional URL (a secret) with one of the schemes; a malformed one is not echoed at all.
pub(crate) struct OptionalUrl(pub(crate) &'static [&'static str], pub(crate) &'static str);

impl Kind for OptionalUrl {
    type Value = Option<Secret>;
    fn parse(&self, name: &'static str, text: Option<&str>) -> Result<Self::Value, ConfigError> {
        match text {
            None => Ok(None),
            Some(url) if self.0.iter().any(|scheme| url.starts_with(scheme)) => {
                Ok(Some(Secret::new(url)))
            }
            Some(_) => Err(invalid(name, "(redacted)", self.1)),
        }
    }
    fn show(&self, value: &Self::Value) -> Option<String> {
        Some(value.as_ref().map(|u| u.to_string()).unwrap_or_default())
    }
}

/// An optional token: a secret that `refit config` does not list, not even masked.
pub(crate) struct Token;

impl Kind for Token {
    type Value = Option<Secret>;
    fn parse(&self, _: &'static str, text: Option<&str>) -> Result<Self::Value, ConfigError> {
        Ok(text.map(Secret::new))
    }
    fn show(&self, _: &Self::Value) -> Option<String> {
        None
    }
}

/// A Kafka topic name, with a default.
pub(crate) struct Topic(pub(crate) &'static str);

impl Kind for Topic {
    type Value = String;
    fn parse(&self, name: &'static str, text: Option<&str>) -> Result<String, ConfigError> {
        let topic = text.unwrap_or(self.0);
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if topic.len() > 249 || !topic.chars().all(allowed) {
            return Err(invalid(
                name,
                topic,
                "1 to 249 characters of a-z, A-Z, 0-9, '.', '_', '-'",
            ));
        }
        Ok(topic.to_owned())
    }
    fn show(&self, value: &String) -> Option<String> {
        Some(value.clone())
    }
}

/// `k=v;k=v` librdkafka properties; the values are secrets (SASL passwords), never echoed.
pub(crate) struct KafkaProperties;

impl Kind for KafkaProperties {
    type Value = Vec<(String, Secret)>;
    fn parse(&self, name: &'static str, text: Option<&str>) -> Result<Self::Value, ConfigError> {
        let pairs = text.unwrap_or_default().split(';');
        pairs
            .filter(|kv| !kv.trim().is_empty())
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    Ok((k.trim().to_owned(), Secret::new(v.trim())))
                }
                // Never echo the value: it may hold a SASL password.
                _ => Err(invalid(
                    name,
                    "(redacted)",
                    "key=value pairs separated by ';'",
                )),
            })
            .collect()
    }
    fn show(&self, value: &Self::Value) -> Option<String> {
        let keys: Vec<String> = value.iter().map(|(k, _)| format!("{k}=***")).collect();
        Some(keys.join(";"))
    }
}

/// A comma-separated list of distinct, non-empty feature names; unset: `None`.
pub(crate) struct FeatureList;

impl Kind for FeatureList {
    type Value = Option<Vec<String>>;
    fn parse(&self, name: &'static str, text: Option<&str>) -> Result<Self::Value, ConfigError> {
        let Some(list) = text else {
            return Ok(None);
        };
        let names: Vec<String> = list.split(',').map(|s| s.trim().to_owned()).collect();
        let mut seen = std::collections::BTreeSet::new();
        if names
            .iter()
            .any(|n| n.is_empty() || !seen.insert(n.clone()))
        {
            return Err(invalid(
                name,
                list,
                "a comma-separated list of distinct, non-empty feature names",
            ));
        }
        Ok(Some(names))
    }
    fn show(&self, value: &Self::Value) -> Option<String> {
        Some(value.as_ref().map(|f| f.join(",")).unwrap_or_default())
    }
}

/// XGBoost parameters as a JSON object, merged over [`DEFAULT_XGB_PARAMS`]; `nthread` dropped.
pub(crate) struct XgbParams;

impl Kind for XgbParams {
    type Value = BTreeMap<String, String>;
    fn parse(&self, name: &'static str, text: Option<&str>) -> Result<Self::Value, ConfigError> {
        let mut params = parse_params(name, DEFAULT_XGB_PARAMS)?;
        if let Some(json) = text {
            params.extend(parse_params(name, json)?);
        }
        // Threads are a property of the process, not of the model: never stored with a version.
        params.remove("nthread");
        Ok(params)
    }
    fn show(&self, value: &Self::Value) -> Option<String> {
        Some(serde_json::to_string(value).unwrap_or_default())
    }
}

/// A socket address to listen on, or `off`.
pub(crate) struct ListenAddr(pub(crate) &'static str);

impl Kind for ListenAddr {
    type Value = Option<SocketAddr>;
    fn parse(&self, name: &'static str, text: Option<&str>) -> Result<Self::Value, ConfigError> {
        match text.unwrap_or(self.0) {
            "off" => Ok(None),
            addr => addr
                .parse()
                .map(Some)
                .map_err(|_| invalid(name, addr, "host:port, e.g. 0.0.0.0:8080, or off")),
        }
    }
    fn show(&self, value: &Self::Value) -> Option<String> {
        Some(value.map_or("off".into(), |a| a.to_string()))
    }
}

/// XGBoost parameters as a JSON object of strings, numbers or booleans.
fn parse_params(name: &'static str, json: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let expected = "a JSON object of XGBoost parameters, e.g. {\"max_depth\": 4, \"eta\": 0.1}";
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|_| invalid(name, json, expected))?;
    let object = value
        .as_object()
        .ok_or_else(|| invalid(name, json, expected))?;
    object
        .iter()
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => return Err(invalid(name, json, expected)),
            };
            Ok((k.clone(), text))
        })
        .collect()
}
