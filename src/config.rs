//! Configuration: what every setting is called, what it defaults to, what it accepts and how
//! `refit config` shows it, written once per setting.
//!
//! Sources, lowest priority first: built-in defaults, an optional TOML file (`REFIT_CONFIG` or
//! `--config`), then environment variables. Every setting has one name, the environment variable
//! (`REFIT_RETRAIN_THRESHOLD`); in the file the same name is written in lower case
//! (`refit_retrain_threshold = 50`). Unknown file keys, missing required values and out-of-range
//! values stop start-up with a message that names the variable, the value and what is allowed.
//! Secrets (connection URLs, tokens) are held in [`Secret`], which never prints its value.
//!
//! This module owns:
//! - the [`section!`] macro: a section is a struct whose fields are settings, each declared once
//!   as `field: Type = "VARIABLE", kind, "help";`. From that one line come the field, its parsing
//!   (`read`), its line in `refit config` (`describe_into`) and its entry in [`VARIABLES`];
//! - the kinds of value a setting can hold ([`Kind`]: [`Int`], [`Dur`], [`Url`], [`Choice`]...),
//!   each with its default, its range and the message an invalid value gets;
//! - the sections themselves: [`Database`], [`SessionLimits`], [`Redis`], [`Kafka`],
//!   [`Scheduling`], [`Training`], [`Http`], [`Telemetry`], and [`Config`], which holds them all.
//!   The retraining policy ([`Policy`], [`Gate`]) and [`Retention`] are sections too, declared
//!   next to the code that uses them (src/retrain/policy.rs, src/registry/retention.rs).
//!
//! [`VARIABLES`] is assembled from the sections' own lists; a test checks that parsing reads
//! exactly those variables, in that order, and that README's table lists the same names.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::registry::retention::Retention;
pub(crate) use crate::retrain::policy::{Gate, Policy};

mod kind;
pub(crate) use kind::{
    Choice, Dur, FeatureList, Float, Int, KafkaProperties, Kind, ListenAddr, Mebibytes, OptDur,
    OptionalUrl, Switch, Text, Token, Topic, Url, XgbParams,
};

/// A value that must never reach a log: `Debug` and `Display` print a redacted form.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself, for handing to a client library. Never log the result.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

/// `scheme://user:password@host/db?sslpassword=x` → `scheme://user:***@host/db?…`.
/// Anything that is not a URL is fully redacted.
pub(crate) fn redact_url(value: &str) -> String {
    let Some((scheme, rest)) = value.split_once("://") else {
        return "***".to_owned();
    };
    let (authority_and_path, query) = match rest.split_once('?') {
        Some((a, _)) => (a, "?…"),
        None => (rest, ""),
    };
    let redacted = match authority_and_path.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{user}:***@{host}")
        }
        None => authority_and_path.to_owned(),
    };
    format!("{scheme}://{redacted}{query}")
}

/// A configuration problem that stops start-up.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} is required ({hint})")]
    Missing {
        name: &'static str,
        hint: &'static str,
    },
    #[error("{name}={value:?} is invalid: expected {expected}")]
    Invalid {
        name: &'static str,
        value: String,
        expected: String,
    },
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
}

/// The raw settings: variable name to text, the file's values overridden by the environment's.
type Raw = BTreeMap<String, String>;

/// Variables refit reads outside [`Config`]: listed for `refit config --env-names`, never parsed
/// into a section.
const READ_ELSEWHERE: &[(&str, &str)] = &[
    (
        "REFIT_CONFIG",
        "optional TOML file with any of these settings in lower case",
    ),
    ("RUST_LOG", "log filter, e.g. info or refit=debug"),
];

/// Every section's own variables, in the order `Config::read` reads them (a test checks this).
const SECTIONS: &[&[(&str, &str)]] = &[
    READ_ELSEWHERE,
    Config::OWN_VARIABLES,
    Database::OWN_VARIABLES,
    Redis::OWN_VARIABLES,
    Kafka::OWN_VARIABLES,
    Scheduling::OWN_VARIABLES,
    Training::OWN_VARIABLES,
    SessionLimits::OWN_VARIABLES,
    Http::OWN_VARIABLES,
    Telemetry::OWN_VARIABLES,
    Policy::OWN_VARIABLES,
    Gate::OWN_VARIABLES,
    Retention::OWN_VARIABLES,
];

const VARIABLE_COUNT: usize = {
    let (mut n, mut i) = (0, 0);
    while i < SECTIONS.len() {
        n += SECTIONS[i].len();
        i += 1;
    }
    n
};

const ALL_VARIABLES: [(&str, &str); VARIABLE_COUNT] = {
    let mut all = [("", ""); VARIABLE_COUNT];
    let (mut k, mut i) = (0, 0);
    while i < SECTIONS.len() {
        let mut j = 0;
        while j < SECTIONS[i].len() {
            all[k] = SECTIONS[i][j];
            k += 1;
            j += 1;
        }
        i += 1;
    }
    all
};

/// Every environment variable refit reads, with a one-line description (shown by `refit config`).
pub const VARIABLES: &[(&str, &str)] = &ALL_VARIABLES;

/// Declares a section of the configuration: a struct whose fields are settings, each written once
/// as `field: Type = "VARIABLE", kind, "help";` where `kind` is a [`Kind`] whose value is `Type`.
/// An optional `nested { field: Section; }` block holds whole sections (read and described after
/// the settings); an optional `derived { field: Type; }` block holds fields computed from other
/// sections after reading (they start at `Default::default()`).
///
/// Generates the struct and, on it, `OWN_VARIABLES` (the settings' names and help), `read` (parse
/// from a [`Reader`]) and `describe_into` (`(name, value)` pairs for `refit config`).
macro_rules! section {
    (
        $(#[$meta:meta])*
        $vis:vis struct $section:ident {
            $(
                $(#[$field_meta:meta])*
                $field_vis:vis $field:ident: $ty:ty = $name:literal, $kind:expr, $help:literal;
            )*
        }
        $(nested {
            $( $(#[$nested_meta:meta])* $nested_vis:vis $nested:ident: $nested_ty:ty; )*
        })?
        $(derived {
            $( $(#[$derived_meta:meta])* $derived_vis:vis $derived:ident: $derived_ty:ty; )*
        })?
    ) => {
        $(#[$meta])*
        $vis struct $section {
            $( $(#[$field_meta])* $field_vis $field: $ty, )*
            $($( $(#[$nested_meta])* $nested_vis $nested: $nested_ty, )*)?
            $($( $(#[$derived_meta])* $derived_vis $derived: $derived_ty, )*)?
        }

        impl $section {
            /// The variables of this section's own settings (not its nested sections'), with help.
            pub(crate) const OWN_VARIABLES: &'static [(&'static str, &'static str)] =
                &[$(($name, $help)),*];

            /// Parses the settings, then the nested sections, in declaration order.
            pub(crate) fn read(
                raw: &$crate::config::Reader<'_>,
            ) -> Result<Self, $crate::config::ConfigError> {
                Ok(Self {
                    $( $field: $crate::config::Kind::parse(&$kind, $name, raw.get($name))?, )*
                    $($( $nested: <$nested_ty>::read(raw)?, )*)?
                    $($( $derived: Default::default(), )*)?
                })
            }

            /// `(variable, value)` pairs as `refit config` prints them, secrets masked.
            pub(crate) fn describe_into(&self, out: &mut Vec<(&'static str, String)>) {
                $(
                    if let Some(value) = $crate::config::Kind::show(&$kind, &self.$field) {
                        out.push(($name, value));
                    }
                )*
                $($( self.$nested.describe_into(out); )*)?
            }
        }
    };
}
pub(crate) use section;

/// The raw settings as sections read them; remembers which variables were read, in order.
pub(crate) struct Reader<'a> {
    raw: &'a Raw,
    read: RefCell<Vec<&'static str>>,
}

impl<'a> Reader<'a> {
    fn new(raw: &'a Raw) -> Self {
        Reader {
            raw,
            read: RefCell::new(Vec::new()),
        }
    }

    /// The trimmed value of `name`; `None` when unset or blank.
    pub(crate) fn get(&self, name: &'static str) -> Option<&'a str> {
        self.read.borrow_mut().push(name);
        self.raw
            .get(name)
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
    }
}

section! {
    /// The validated configuration of one refit process, one section per concern.
    #[derive(Debug, Clone)]
    pub struct Config {
        /// How long the registry's audit trail keeps a write.
        pub audit_retention: Duration = "REFIT_AUDIT_RETENTION_DAYS", Dur::days(365, 1, 36_500),
            "days the registry's audit trail keeps each write";
    }
    nested {
        /// PostgreSQL holding the upstream tables and refit's registry.
        pub database: Database;
        /// Redis holding the serving cache.
        pub(crate) redis: Redis;
        /// Where the retrain events go.
        pub(crate) kafka: Kafka;
        /// When users are retrained, and how many at once.
        pub(crate) scheduling: Scheduling;
        /// How new models are trained.
        pub training: Training;
        /// Limits of every PostgreSQL session refit opens.
        pub session: SessionLimits;
        /// The HTTP server.
        pub(crate) http: Http;
        /// Logs.
        pub(crate) telemetry: Telemetry;
        /// Which step makes each version, and the validation gate.
        pub(crate) policy: Policy;
        /// How much of each user's history is kept.
        pub retention: Retention;
    }
}

section! {
    /// The PostgreSQL database.
    #[derive(Debug, Clone)]
    pub struct Database {
        /// Upstream tables and refit's registry.
        pub url: Secret = "DATABASE_URL",
            Url::required(
                &["postgres://", "postgresql://"],
                "a postgres:// or postgresql:// URL",
                "e.g. postgres://postgres@127.0.0.1:5432/refit",
            ),
            "PostgreSQL URL (required); sslmode and other options pass through";
    }
}

section! {
    /// Redis, which holds the serving cache.
    #[derive(Debug, Clone)]
    pub(crate) struct Redis {
        pub(crate) url: Secret = "REDIS_URL",
            Url::with_default(
                &["redis://", "rediss://"],
                "a redis:// or rediss:// URL",
                "redis://127.0.0.1:6379",
            ),
            "Redis URL; rediss:// for TLS";
        /// Serving cache key is `<prefix><user_id>`.
        pub(crate) key_prefix: String = "REFIT_CACHE_KEY_PREFIX", Text("model:"),
            "prefix of the serving cache key, model:<user_id> by default";
        /// TTL of the cache entry the serving reference fills.
        pub(crate) ttl: Duration = "REFIT_CACHE_TTL_SECS", Dur::secs(3600, 1, 30 * 86_400),
            "TTL of the serving cache entry that `refit predict` fills";
    }
}

section! {
    /// Kafka, where the retrain events go.
    #[derive(Debug, Clone)]
    pub(crate) struct Kafka {
        /// Bootstrap servers.
        pub(crate) brokers: String = "KAFKA_BROKERS", Text("127.0.0.1:9092"),
            "Kafka bootstrap servers, comma separated";
        /// Extra librdkafka properties (security.protocol, sasl.*, ssl.*), may hold secrets.
        pub(crate) properties: Vec<(String, Secret)> = "REFIT_KAFKA_PROPERTIES", KafkaProperties,
            "extra librdkafka properties, k=v;k=v (TLS/SASL)";
        /// Topic the retrain events go to.
        pub(crate) topic: String = "REFIT_TOPIC", Topic("model-retrained"),
            "topic for model-retrained events";
        /// Partitions and replication used only when refit creates the topic.
        pub(crate) topic_partitions: i32 = "REFIT_TOPIC_PARTITIONS", Int::new(3, 1, 10_000),
            "partitions when refit creates the topic";
        pub(crate) topic_replication: i32 = "REFIT_TOPIC_REPLICATION", Int::new(1, 1, 100),
            "replication factor when refit creates the topic";
    }
}

impl Redis {
    /// The serving cache client on this Redis.
    pub(crate) fn cache(&self) -> anyhow::Result<crate::outbox::cache::Cache> {
        crate::outbox::cache::Cache::new(&self.url, &self.key_prefix)
    }
}

impl Kafka {
    /// The librdkafka settings every Kafka client of refit starts from: the brokers, the client
    /// id, and the operator's properties (TLS, SASL), which win.
    pub(crate) fn client_config(&self) -> rdkafka::ClientConfig {
        let mut client_config = rdkafka::ClientConfig::new();
        client_config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", "refit")
            .set("log_level", "4");
        for (key, value) in &self.properties {
            client_config.set(key, value.expose());
        }
        client_config
    }
}

section! {
    /// When users are retrained, and how many at once.
    #[derive(Debug, Clone)]
    pub(crate) struct Scheduling {
        /// Pending actuals that make a user due; each retrain consumes exactly this many.
        pub(crate) retrain_threshold: i64 = "REFIT_RETRAIN_THRESHOLD", Int::new(50, 1, 1_000_000),
            "pending actuals that make a user due; also the batch size";
        /// The safety-net poll interval (LISTEN/NOTIFY wakes the loop sooner).
        pub(crate) poll_interval: Duration = "REFIT_POLL_INTERVAL_MS",
            Dur::millis(1000, 10, 3_600_000),
            "safety-net poll interval, besides LISTEN/NOTIFY";
        /// How often the ingest looks for newly committed actuals (src/scheduler/ingest.rs).
        pub(crate) ingest_interval: Duration = "REFIT_INGEST_INTERVAL_MS",
            Dur::millis(2, 1, 60_000),
            "how often new actuals are looked for in actual_rentals (larger: bigger batches, less CPU)";
        /// The longest pause between the ingest's looks: once nothing has arrived for a few
        /// looks the pause doubles, from `ingest_interval` up to this; after a look that found
        /// 16 actuals or more it is this at once (scheduler::ingest::Pace).
        pub(crate) ingest_idle_interval: Duration = "REFIT_INGEST_IDLE_INTERVAL_MS",
            Dur::millis(20, 1, 60_000),
            "longest pause between looks: while nothing arrives, and after a look that found 16 or more";
        /// Retrains running at once in this process.
        pub(crate) max_concurrent_retrains: usize = "REFIT_MAX_CONCURRENT_RETRAINS",
            Int::new(4, 1, 1024),
            "retrains running at once in this process";
        /// Retrain a user below the threshold once its oldest pending actual is this old.
        pub(crate) max_staleness: Option<Duration> = "REFIT_MAX_STALENESS_SECS",
            OptDur(Dur::secs(0, 0, 365 * 86_400)),
            "retrain a user with fewer than the threshold once its oldest pending actual is this old (0 = off)";
        /// Fewest pending actuals a staleness retrain trains on.
        pub(crate) stale_min_rows: i64 = "REFIT_STALE_MIN_ROWS", Int::new(1, 1, 1_000_000),
            "fewest pending actuals a staleness retrain trains on";
        /// Deadline of one retrain (`None`: none): past it the retrain's transaction rolls back,
        /// its row lock is released and the user backs off.
        pub(crate) retrain_timeout: Option<Duration> = "REFIT_RETRAIN_TIMEOUT_SECS",
            OptDur(Dur::secs(30, 0, 86_400)),
            "deadline of one retrain; past it the retrain rolls back and the user backs off (0 = none)";
        /// Upper bound of the outbox retry back-off.
        pub(crate) outbox_retry_max: Duration = "REFIT_OUTBOX_RETRY_MAX_MS",
            Dur::millis(30_000, 10, 3_600_000),
            "longest wait between retries of a cache invalidation or event";
    }
}

section! {
    /// How new models are trained.
    #[derive(Debug, Clone)]
    pub struct Training {
        /// Feature order for new models; `None` takes the sorted keys of the first batch.
        pub(crate) features: Option<Vec<String>> = "REFIT_FEATURES", FeatureList,
            "feature order for new models, comma separated (default: sorted keys of the first batch)";
        /// XGBoost parameters for new models (stored with each version and re-applied on load).
        pub xgb_params: BTreeMap<String, String> = "REFIT_XGB_PARAMS", XgbParams,
            "XGBoost parameters for new models, JSON object";
        /// XGBoost threads for every call refit makes (training, loading a model, building a
        /// matrix, predicting): batches are small, so one thread is fastest.
        pub(crate) xgb_nthread: u32 = "REFIT_XGB_NTHREAD", Int::new(1, 1, 256),
            "XGBoost threads for every call (training, loading, predicting)";
        /// Bytes of artifacts whose models stay loaded between a user's retrains.
        pub(crate) model_cache_bytes: usize = "REFIT_MODEL_CACHE_MB", Mebibytes(16, 0, 1_000_000),
            "memory for recently trained models kept between retrains (by artifact size; 0 = none)";
    }
}

section! {
    /// Limits of refit's PostgreSQL sessions, so a hung statement, an abandoned transaction or a
    /// half-open connection cannot hold a user's row lock for long. `None`: the server's default.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct SessionLimits {
        /// `statement_timeout`.
        pub(crate) statement_timeout: Option<Duration> = "REFIT_STATEMENT_TIMEOUT_MS",
            OptDur(Dur::millis(30_000, 0, 86_400_000)),
            "PostgreSQL statement_timeout of refit's sessions (0 = none)";
        /// `idle_in_transaction_session_timeout`.
        pub(crate) idle_in_transaction_timeout: Option<Duration> =
            "REFIT_IDLE_IN_TRANSACTION_TIMEOUT_MS",
            OptDur(Dur::millis(45_000, 0, 86_400_000)),
            "PostgreSQL idle_in_transaction_session_timeout of refit's sessions (0 = none)";
        /// `tcp_keepalives_idle` and `tcp_keepalives_interval` (3 probes), and `tcp_user_timeout`.
        pub(crate) tcp_keepalive: Option<Duration> = "REFIT_TCP_KEEPALIVE_SECS",
            OptDur(Dur::secs(10, 0, 3600)),
            "TCP keepalive idle time and interval of refit's PostgreSQL sessions, server side (0 = the server's)";
    }
}

section! {
    /// The HTTP server: probes, metrics and the registry API.
    #[derive(Debug, Clone)]
    pub(crate) struct Http {
        /// Where /healthz, /readyz and /metrics are served; `None` when REFIT_HTTP_ADDR=off.
        pub(crate) addr: Option<SocketAddr> = "REFIT_HTTP_ADDR", ListenAddr("0.0.0.0:8080"),
            "address of the HTTP server: /healthz, /readyz, /metrics";
        /// PostgreSQL connections of the HTTP API: its own pool, so registry reads cannot take
        /// the connections retrains need.
        pub(crate) db_pool_size: u32 = "REFIT_HTTP_DB_POOL_SIZE", Int::new(2, 1, 100),
            "PostgreSQL connections of the HTTP API, apart from the retrains' pool";
        /// Largest body `POST /models/{user}/import` accepts.
        pub(crate) import_max_bytes: usize = "REFIT_IMPORT_MAX_BYTES",
            Int::new(64 << 20, 1024, 1 << 30),
            "largest model file POST /models/{user}/import accepts (larger: 413)";
        /// Bearer token for HTTP writes to the registry; writes answer 401 without it. Not shown
        /// by `refit config`, not even masked.
        pub(crate) admin_token: Option<Secret> = "REFIT_ADMIN_TOKEN", Token,
            "bearer token for HTTP writes to the model registry";
    }
}

section! {
    /// Logs: the stdout format and shipping to Grafana Loki.
    #[derive(Debug, Clone)]
    pub(crate) struct Telemetry {
        /// Grafana Loki base URL (may carry credentials); logs are shipped there when set.
        pub(crate) loki_url: Option<Secret> = "LOKI_URL",
            OptionalUrl(&["http://", "https://"], "an http:// or https:// URL"),
            "Grafana Loki base URL; logs are shipped there when set";
        /// Log lines waiting to be pushed to Loki, at most; a full queue drops (and counts) lines.
        pub(crate) loki_queue_lines: usize = "REFIT_LOKI_QUEUE_LINES",
            Int::new(10_000, 10, 1_000_000),
            "log lines waiting to be pushed to Loki, at most; more are dropped and counted";
        /// Deadline of one push to Loki, and of the flush at shutdown.
        pub(crate) loki_timeout: Duration = "REFIT_LOKI_TIMEOUT_SECS", Dur::secs(5, 1, 300),
            "deadline of one push to Loki, and of the flush at shutdown";
        /// The `environment` label of shipped logs.
        pub(crate) environment: String = "REFIT_ENVIRONMENT", Text("dev"),
            "environment label on logs shipped to Loki (e.g. prod)";
        /// Log format on stdout.
        pub(crate) log_format: LogFormat = "REFIT_LOG_FORMAT",
            Choice::new(LogFormat::Text, &[("text", LogFormat::Text), ("json", LogFormat::Json)]),
            "text or json (stdout)";
    }
}

/// How the validation gate scores a version on held-out actuals (lower is better).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidationMetric {
    Rmse,
    Mae,
}

impl ValidationMetric {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ValidationMetric::Rmse => "rmse",
            ValidationMetric::Mae => "mae",
        }
    }
}

/// What happens when a retrain would pass the tree cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compaction {
    /// A fresh model trained on the most recent `refit_window` actuals.
    Refit,
    /// XGBoost's `process_type=update` with the `refresh` updater: leaves re-fitted, no new trees.
    Update,
}

/// How log lines are written to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// Reads the process environment (and `REFIT_CONFIG` or `file` if given).
    pub fn from_env(file: Option<&Path>) -> Result<Self, ConfigError> {
        let env: Raw = std::env::vars().collect();
        Self::from_sources(file, &env)
    }

    /// Builds the configuration from a file (optional) and an environment map.
    pub fn from_sources(file: Option<&Path>, env: &Raw) -> Result<Self, ConfigError> {
        let mut raw = Raw::new();
        let file = file
            .map(|p| p.to_path_buf())
            .or_else(|| env.get("REFIT_CONFIG").map(Into::into));
        if let Some(path) = file {
            raw.extend(read_file(&path)?);
        }
        for (name, _) in VARIABLES {
            if let Some(value) = env.get(*name) {
                raw.insert((*name).to_owned(), value.clone());
            }
        }
        Self::from_reader(&Reader::new(&raw))
    }

    /// Reads every section, then checks what spans sections.
    fn from_reader(raw: &Reader<'_>) -> Result<Self, ConfigError> {
        let mut config = Config::read(raw)?;
        let retention = &mut config.retention;
        if retention.keep_versions < retention.keep_artifacts {
            return Err(invalid(
                "REFIT_KEEP_VERSIONS",
                &retention.keep_versions.to_string(),
                "at least REFIT_KEEP_ARTIFACTS",
            ));
        }
        // The trained rows kept are what the policy reads.
        retention.keep_rows = config.policy.window.max(config.policy.gate.window);
        Ok(config)
    }

    /// The configuration as `NAME=value` lines, secrets redacted (for `refit config`).
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let mut described = Vec::new();
        self.describe_into(&mut described);
        described
    }
}

fn invalid(name: &'static str, value: &str, expected: &str) -> ConfigError {
    ConfigError::Invalid {
        name,
        value: value.to_owned(),
        expected: expected.to_owned(),
    }
}

fn read_file(path: &Path) -> Result<Raw, ConfigError> {
    let file_error = |message: String| ConfigError::File {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| file_error(e.message().to_owned()))?;
    let mut raw = Raw::new();
    for (key, value) in table {
        let name = key.to_ascii_uppercase();
        if !VARIABLES.iter().any(|(known, _)| *known == name) || name == "REFIT_CONFIG" {
            return Err(file_error(format!("unknown setting {key:?}")));
        }
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| i.to_string())
                })
                .collect::<Vec<_>>()
                .join(","),
            toml::Value::Table(t) => serde_json::to_string(&t).unwrap_or_default(),
            toml::Value::Datetime(d) => d.to_string(),
        };
        raw.insert(name, text);
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Raw {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_apply_when_only_the_database_is_given() {
        let c = Config::from_sources(None, &env(&[("DATABASE_URL", "postgres://u@h/db")])).unwrap();
        assert_eq!(c.scheduling.retrain_threshold, 50);
        assert_eq!(c.policy.rounds, 1);
        assert_eq!(c.policy.rebuild_every, 4);
        assert_eq!(c.policy.window, 4000);
        assert_eq!(c.policy.rebuild_rounds, 35);
        assert_eq!(c.policy.rebuild_eta, 0.3);
        assert_eq!(c.policy.half_life, 2000);
        assert!(c.policy.gate.enabled);
        assert_eq!(c.scheduling.max_staleness, None);
        assert_eq!(c.scheduling.poll_interval, Duration::from_millis(1000));
        assert_eq!(c.kafka.topic, "model-retrained");
        assert_eq!(c.training.xgb_params["objective"], "reg:squarederror");
        assert_eq!(c.redis.key_prefix, "model:");
        // A hung retrain's row lock is released well within a minute by default.
        let s = c.session;
        assert_eq!(s.statement_timeout, Some(Duration::from_secs(30)));
        assert_eq!(s.idle_in_transaction_timeout, Some(Duration::from_secs(45)));
        assert_eq!(s.tcp_keepalive, Some(Duration::from_secs(10)));
        assert_eq!(c.scheduling.retrain_timeout, Some(Duration::from_secs(30)));
        // A hung Loki holds at most 10,000 lines, and a push waits at most 5 s.
        assert_eq!(c.telemetry.loki_queue_lines, 10_000);
        assert_eq!(c.telemetry.loki_timeout, Duration::from_secs(5));
    }

    #[test]
    fn out_of_range_value_names_variable_value_and_range() {
        let err = Config::from_sources(
            None,
            &env(&[
                ("DATABASE_URL", "postgres://h/db"),
                ("REFIT_RETRAIN_THRESHOLD", "0"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("REFIT_RETRAIN_THRESHOLD"), "{err}");
        assert!(err.contains("\"0\""), "{err}");
        assert!(err.contains("1 to 1000000"), "{err}");
    }

    #[test]
    fn missing_database_url_is_named() {
        let err = Config::from_sources(None, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("DATABASE_URL is required"), "{err}");
    }

    #[test]
    fn file_values_are_overridden_by_environment_and_unknown_keys_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refit.toml");
        std::fs::write(
            &path,
            "database_url = \"postgres://h/db\"\nrefit_retrain_threshold = 20\nrefit_rounds_per_retrain = 3\n",
        )
        .unwrap();
        let c =
            Config::from_sources(Some(&path), &env(&[("REFIT_ROUNDS_PER_RETRAIN", "7")])).unwrap();
        assert_eq!(c.scheduling.retrain_threshold, 20);
        assert_eq!(c.policy.rounds, 7);

        std::fs::write(&path, "database_url = \"postgres://h/db\"\nthreshold = 5\n").unwrap();
        let err = Config::from_sources(Some(&path), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown setting \"threshold\""), "{err}");
    }

    #[test]
    fn xgb_params_merge_over_defaults_and_drop_nthread() {
        let c = Config::from_sources(
            None,
            &env(&[
                ("DATABASE_URL", "postgres://h/db"),
                ("REFIT_XGB_PARAMS", r#"{"max_depth": 3, "nthread": 8}"#),
            ]),
        )
        .unwrap();
        assert_eq!(c.training.xgb_params["max_depth"], "3");
        assert_eq!(c.training.xgb_params["eta"], "0.1");
        assert!(!c.training.xgb_params.contains_key("nthread"));
    }

    #[test]
    fn the_gate_switch_and_staleness_are_parsed() {
        let c = Config::from_sources(
            None,
            &env(&[
                ("DATABASE_URL", "postgres://h/db"),
                ("REFIT_VALIDATION", "off"),
                ("REFIT_MAX_STALENESS_SECS", "600"),
            ]),
        )
        .unwrap();
        assert!(!c.policy.gate.enabled);
        assert_eq!(c.scheduling.max_staleness, Some(Duration::from_secs(600)));
        let err = Config::from_sources(
            None,
            &env(&[
                ("DATABASE_URL", "postgres://h/db"),
                ("REFIT_VALIDATION", "maybe"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("REFIT_VALIDATION=\"maybe\"") && err.contains("on or off"),
            "{err}"
        );
    }

    /// Parsing reads exactly the listed variables, in their order: a setting read but not
    /// listed, listed but not read, or listed twice fails here. `refit config` shows every one
    /// of them but the admin token (never shown, not even masked).
    #[test]
    fn the_variables_listed_are_the_variables_read_and_described() {
        let raw = env(&[("DATABASE_URL", "postgres://h/db")]);
        let reader = Reader::new(&raw);
        let config = Config::from_reader(&reader).unwrap();
        let read = reader.read.borrow().clone();
        let elsewhere: Vec<&str> = READ_ELSEWHERE.iter().map(|(n, _)| *n).collect();
        let parsed: Vec<&str> = VARIABLES
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| !elsewhere.contains(n))
            .collect();
        assert_eq!(read, parsed);
        assert_eq!(VARIABLES.len(), parsed.len() + elsewhere.len());
        let unique: std::collections::BTreeSet<_> = VARIABLES.iter().map(|(n, _)| n).collect();
        assert_eq!(unique.len(), VARIABLES.len(), "a variable is listed twice");
        assert!(VARIABLES.iter().all(|(_, help)| !help.is_empty()));

        let described: Vec<&str> = config.describe().iter().map(|(n, _)| *n).collect();
        let shown: Vec<&str> = parsed
            .into_iter()
            .filter(|n| *n != "REFIT_ADMIN_TOKEN")
            .collect();
        assert_eq!(described, shown);
    }

    /// README's configuration table has one row per variable (a row may name several).
    #[test]
    fn readme_lists_every_variable() {
        let readme = include_str!("../README.md");
        let section = readme.split("\n## Configuration\n").nth(1).unwrap();
        let section = section.split("\n## ").next().unwrap();
        let mut documented = std::collections::BTreeSet::new();
        for row in section.lines().filter(|l| l.starts_with("| `")) {
            let first_cell = row.split('|').nth(1).unwrap();
            documented.extend(first_cell.split('`').skip(1).step_by(2));
        }
        let listed: std::collections::BTreeSet<&str> = VARIABLES.iter().map(|(n, _)| *n).collect();
        let missing: Vec<_> = listed.difference(&documented).collect();
        let unknown: Vec<_> = documented.difference(&listed).collect();
        assert!(
            missing.is_empty() && unknown.is_empty(),
            "README's table misses {missing:?} and lists unknown {unknown:?}"
        );
    }

    /// `refit config` with only DATABASE_URL set, sorted by name.
    const DESCRIBED_DEFAULTS: &str = r#"
DATABASE_URL=postgres://u:***@h/db
KAFKA_BROKERS=127.0.0.1:9092
LOKI_URL=
REDIS_URL=redis://127.0.0.1:6379
REFIT_AUDIT_RETENTION_DAYS=365
REFIT_CACHE_KEY_PREFIX=model:
REFIT_CACHE_TTL_SECS=3600
REFIT_COMPACTION=refit
REFIT_COMPACTION_ROUNDS=35
REFIT_CONTINUE_ETA=0.1
REFIT_ENVIRONMENT=dev
REFIT_FEATURES=
REFIT_HTTP_ADDR=0.0.0.0:8080
REFIT_HTTP_DB_POOL_SIZE=2
REFIT_IDLE_IN_TRANSACTION_TIMEOUT_MS=45000
REFIT_IMPORT_MAX_BYTES=67108864
REFIT_INGEST_IDLE_INTERVAL_MS=20
REFIT_INGEST_INTERVAL_MS=2
REFIT_KAFKA_PROPERTIES=
REFIT_KEEP_ARTIFACTS=5
REFIT_KEEP_VERSIONS=100
REFIT_LOG_FORMAT=text
REFIT_LOKI_QUEUE_LINES=10000
REFIT_LOKI_TIMEOUT_SECS=5
REFIT_MAX_CONCURRENT_RETRAINS=4
REFIT_MAX_STALENESS_SECS=0
REFIT_MAX_TREES=150
REFIT_MODEL_CACHE_MB=16
REFIT_OUTBOX_RETENTION_SECS=0
REFIT_OUTBOX_RETRY_MAX_MS=30000
REFIT_POLL_INTERVAL_MS=1000
REFIT_REBUILD_ETA=0.3
REFIT_REBUILD_EVERY=4
REFIT_RECENCY_HALF_LIFE=2000
REFIT_REFIT_WINDOW=4000
REFIT_RETENTION=on
REFIT_RETRAIN_THRESHOLD=50
REFIT_RETRAIN_TIMEOUT_SECS=30
REFIT_ROUNDS_PER_RETRAIN=1
REFIT_SET_ASIDE_RETENTION_DAYS=7
REFIT_STALE_MIN_ROWS=1
REFIT_STATEMENT_TIMEOUT_MS=30000
REFIT_TCP_KEEPALIVE_SECS=10
REFIT_TOPIC=model-retrained
REFIT_TOPIC_PARTITIONS=3
REFIT_TOPIC_REPLICATION=1
REFIT_VALIDATION=on
REFIT_VALIDATION_LIVE_RATIO=3
REFIT_VALIDATION_METRIC=rmse
REFIT_VALIDATION_TOLERANCE=0.3
REFIT_VALIDATION_WINDOW=250
REFIT_XGB_NTHREAD=1
REFIT_XGB_PARAMS={"eta":"0.1","max_depth":"6","objective":"reg:squarederror","seed":"0","tree_method":"hist"}
"#;

    /// `refit config` with defaults, sorted by name (as printed before the settings became
    /// sections: a change here changes what operators see).
    #[test]
    fn described_defaults_are_unchanged() {
        let c =
            Config::from_sources(None, &env(&[("DATABASE_URL", "postgres://u:pw@h/db")])).unwrap();
        let mut described = c.describe();
        described.sort();
        let text: Vec<String> = described.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let expected = DESCRIBED_DEFAULTS;
        assert_eq!(text, expected.trim().lines().collect::<Vec<_>>());
    }

    #[test]
    fn secrets_are_redacted_in_debug_and_display() {
        let s = Secret::new("postgres://refit:hunter2@db:5432/refit?sslpassword=x");
        assert_eq!(s.to_string(), "postgres://refit:***@db:5432/refit?…");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(Secret::new("not a url").to_string(), "***");
    }
}
