//! Configuration: built-in defaults, then an optional TOML file, then environment variables.
//!
//! Every setting has one name, the environment variable (`REFIT_RETRAIN_THRESHOLD`); in the file
//! the same name is written in lower case (`refit_retrain_threshold = 50`). Unknown file keys,
//! missing required values and out-of-range values stop start-up with a message that names the
//! variable, the value and what is allowed. Secrets (connection URLs, tokens) are held in
//! [`Secret`], which never prints its value.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use crate::retention::Retention;

pub(crate) use crate::policy::{Gate, Policy};

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

/// Where a raw setting came from, so messages name it the way the operator wrote it.
type Raw = BTreeMap<String, String>;

/// Every environment variable refit reads, with a one-line description (shown by `refit config`).
pub const VARIABLES: &[(&str, &str)] = &[
    (
        "DATABASE_URL",
        "PostgreSQL URL (required); sslmode and other options pass through",
    ),
    ("REDIS_URL", "Redis URL; rediss:// for TLS"),
    ("KAFKA_BROKERS", "Kafka bootstrap servers, comma separated"),
    (
        "REFIT_CONFIG",
        "optional TOML file with any of these settings in lower case",
    ),
    ("REFIT_TOPIC", "topic for model-retrained events"),
    (
        "REFIT_TOPIC_PARTITIONS",
        "partitions when refit creates the topic",
    ),
    (
        "REFIT_TOPIC_REPLICATION",
        "replication factor when refit creates the topic",
    ),
    (
        "REFIT_KAFKA_PROPERTIES",
        "extra librdkafka properties, k=v;k=v (TLS/SASL)",
    ),
    (
        "REFIT_RETRAIN_THRESHOLD",
        "pending actuals that make a user due; also the batch size",
    ),
    (
        "REFIT_ROUNDS_PER_RETRAIN",
        "boosting rounds each continue step adds to the model",
    ),
    (
        "REFIT_POLL_INTERVAL_MS",
        "safety-net poll interval, besides LISTEN/NOTIFY",
    ),
    (
        "REFIT_INGEST_INTERVAL_MS",
        "how often new actuals are looked for in actual_rentals",
    ),
    (
        "REFIT_MAX_CONCURRENT_RETRAINS",
        "retrains running at once in this process",
    ),
    (
        "REFIT_FEATURES",
        "feature order for new models, comma separated (default: sorted keys of the first batch)",
    ),
    (
        "REFIT_XGB_PARAMS",
        "XGBoost parameters for new models, JSON object",
    ),
    ("REFIT_XGB_NTHREAD", "XGBoost threads per retrain"),
    (
        "REFIT_CACHE_KEY_PREFIX",
        "prefix of the serving cache key, model:<user_id> by default",
    ),
    (
        "REFIT_OUTBOX_RETRY_MAX_MS",
        "longest wait between retries of a cache invalidation or event",
    ),
    (
        "REFIT_HTTP_ADDR",
        "address of the HTTP server: /healthz, /readyz, /metrics",
    ),
    (
        "REFIT_ENVIRONMENT",
        "environment label on logs shipped to Loki (e.g. prod)",
    ),
    (
        "LOKI_URL",
        "Grafana Loki base URL; logs are shipped there when set",
    ),
    (
        "REFIT_LOKI_QUEUE_LINES",
        "log lines waiting to be pushed to Loki, at most; more are dropped and counted",
    ),
    (
        "REFIT_LOKI_TIMEOUT_SECS",
        "deadline of one push to Loki, and of the flush at shutdown",
    ),
    (
        "REFIT_ADMIN_TOKEN",
        "bearer token for HTTP writes to the model registry",
    ),
    (
        "REFIT_AUDIT_RETENTION_DAYS",
        "days the registry's audit trail keeps each write",
    ),
    ("REFIT_CONTINUE_ETA", "learning rate of the rounds each batch adds (0 = the model's own eta)"),
    ("REFIT_REBUILD_EVERY", "rebuild the model from the recent window every Nth accepted batch (0 = only at the tree cap)"),
    ("REFIT_MAX_TREES", "tree cap per model; a retrain that would pass it compacts the model (0 = no cap)"),
    ("REFIT_COMPACTION", "at the cap: refit (rebuild on recent actuals) or update (refresh leaves in place)"),
    ("REFIT_REFIT_WINDOW", "most recent trained actuals a rebuild trains on"),
    ("REFIT_COMPACTION_ROUNDS", "boosting rounds of a rebuild and of a user's first model"),
    ("REFIT_REBUILD_ETA", "learning rate of a rebuild and of a user's first model (0 = the model's own eta)"),
    ("REFIT_RECENCY_HALF_LIFE", "in a rebuild, a row this many rows older than the newest weighs half (0 = all equal)"),
    ("REFIT_VALIDATION", "on or off: the validation gate (live-error check and recent-window comparison)"),
    ("REFIT_VALIDATION_WINDOW", "most recent trained actuals the candidate and the active version are scored on"),
    ("REFIT_VALIDATION_METRIC", "rmse or mae"),
    ("REFIT_VALIDATION_TOLERANCE", "how much worse than the active version the candidate may score on the window, as a share of the typical live error"),
    ("REFIT_VALIDATION_LIVE_RATIO", "a batch whose live error is over this many times the user's recent median is rejected"),
    ("REFIT_MAX_STALENESS_SECS", "retrain a user with fewer than the threshold once its oldest pending actual is this old (0 = off)"),
    ("REFIT_STALE_MIN_ROWS", "fewest pending actuals a staleness retrain trains on"),
    ("REFIT_MODEL_CACHE_MB", "memory for recently trained models kept between retrains (by artifact size; 0 = none)"),
    ("REFIT_CACHE_TTL_SECS", "TTL of the serving cache entry that `refit predict` fills"),
    ("REFIT_RETENTION", "on or off: prune each user's old versions, artifacts and consumed actuals"),
    ("REFIT_KEEP_ARTIFACTS", "newest ready versions per user that keep their artifacts (the active one always does)"),
    ("REFIT_KEEP_VERSIONS", "newest versions per user kept at all; older ones are deleted (never the active one)"),
    ("REFIT_OUTBOX_RETENTION_SECS", "seconds delivered outbox entries are kept, for inspection (0 = deleted when delivered)"),
    ("REFIT_SET_ASIDE_RETENTION_DAYS", "records of set-aside actuals and dead-lettered outbox entries are deleted after this many days"),
    ("REFIT_STATEMENT_TIMEOUT_MS", "PostgreSQL statement_timeout of refit's sessions (0 = none)"),
    ("REFIT_IDLE_IN_TRANSACTION_TIMEOUT_MS", "PostgreSQL idle_in_transaction_session_timeout of refit's sessions (0 = none)"),
    ("REFIT_TCP_KEEPALIVE_SECS", "TCP keepalive idle time and interval of refit's PostgreSQL sessions, server side (0 = the server's)"),
    ("REFIT_RETRAIN_TIMEOUT_SECS", "deadline of one retrain; past it the retrain rolls back and the user backs off (0 = none)"),
    ("REFIT_HTTP_DB_POOL_SIZE", "PostgreSQL connections of the HTTP API, apart from the retrains' pool"),
    ("REFIT_IMPORT_MAX_BYTES", "largest model file POST /models/{user}/import accepts (larger: 413)"),
    ("REFIT_LOG_FORMAT", "text or json (stdout)"),
    ("RUST_LOG", "log filter, e.g. info or refit=debug"),
];

/// The XGBoost parameters a new model starts with, unless REFIT_XGB_PARAMS overrides them.
pub(crate) const DEFAULT_XGB_PARAMS: &str = r#"{"objective": "reg:squarederror", "tree_method": "hist", "max_depth": 6, "eta": 0.1, "seed": 0}"#;

/// The validated configuration of one refit process.
#[derive(Debug, Clone)]
pub struct Config {
    /// PostgreSQL holding the upstream tables and refit's registry.
    pub database_url: Secret,
    /// Redis holding the serving cache.
    pub(crate) redis_url: Secret,
    /// Kafka bootstrap servers.
    pub(crate) kafka_brokers: String,
    /// Extra librdkafka properties (security.protocol, sasl.*, ssl.*), may hold secrets.
    pub(crate) kafka_properties: Vec<(String, Secret)>,
    /// Topic the retrain events go to.
    pub(crate) topic: String,
    /// Partitions and replication used only when refit creates the topic.
    pub(crate) topic_partitions: i32,
    pub(crate) topic_replication: i32,
    /// Pending actuals that make a user due; each retrain consumes exactly this many.
    pub(crate) retrain_threshold: i64,
    /// Retrain a user below the threshold once its oldest pending actual is this old.
    pub(crate) max_staleness: Option<Duration>,
    /// Fewest pending actuals a staleness retrain trains on.
    pub(crate) stale_min_rows: i64,
    /// The safety-net poll interval (LISTEN/NOTIFY wakes the loop sooner).
    pub(crate) poll_interval: Duration,
    /// How often the ingest looks for newly committed actuals (src/ingest.rs).
    pub(crate) ingest_interval: Duration,
    /// Retrains running at once in this process.
    pub(crate) max_concurrent_retrains: usize,
    /// Feature order for new models; `None` takes the sorted keys of the first batch.
    pub(crate) features: Option<Vec<String>>,
    /// XGBoost parameters for new models (stored with each version and re-applied on load).
    pub xgb_params: BTreeMap<String, String>,
    /// XGBoost threads per retrain: batches are small, so one thread is fastest.
    pub(crate) xgb_nthread: u32,
    /// Serving cache key is `<prefix><user_id>`.
    pub(crate) cache_key_prefix: String,
    /// Upper bound of the outbox retry back-off.
    pub(crate) outbox_retry_max: Duration,
    /// Log format on stdout.
    pub(crate) log_format: LogFormat,
    /// Which step makes each version, and the validation gate.
    pub(crate) policy: Policy,
    /// TTL of the cache entry the serving reference fills.
    pub(crate) cache_ttl: Duration,
    /// How much of each user's history is kept.
    pub retention: Retention,
    /// Bytes of artifacts whose models stay loaded between a user's retrains.
    pub(crate) model_cache_bytes: usize,
    /// Where /healthz, /readyz and /metrics are served; `None` when REFIT_HTTP_ADDR=off.
    pub(crate) http_addr: Option<std::net::SocketAddr>,
    /// Grafana Loki base URL (may carry credentials); logs are shipped there when set.
    pub(crate) loki_url: Option<Secret>,
    /// Log lines waiting to be pushed to Loki, at most; a full queue drops (and counts) lines.
    pub(crate) loki_queue_lines: usize,
    /// Deadline of one push to Loki, and of the flush at shutdown.
    pub(crate) loki_timeout: Duration,
    /// The `environment` label of shipped logs.
    pub(crate) environment: String,
    /// Bearer token for HTTP writes to the registry; writes answer 401 without it.
    pub(crate) admin_token: Option<Secret>,
    /// How long the registry's audit trail keeps a write.
    pub audit_retention: Duration,
    /// Limits of every PostgreSQL session refit opens.
    pub session: SessionLimits,
    /// PostgreSQL connections of the HTTP API: its own pool, so registry reads cannot take the
    /// connections retrains need.
    pub(crate) http_db_pool_size: u32,
    /// Largest body `POST /models/{user}/import` accepts.
    pub(crate) import_max_bytes: usize,
    /// Deadline of one retrain (`None`: none): past it the retrain's transaction rolls back, its
    /// row lock is released and the user backs off.
    pub(crate) retrain_timeout: Option<Duration>,
}

/// Limits of refit's PostgreSQL sessions, so a hung statement, an abandoned transaction or a
/// half-open connection cannot hold a user's row lock for long. `None`: the server's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// `statement_timeout`.
    pub(crate) statement_timeout: Option<Duration>,
    /// `idle_in_transaction_session_timeout`.
    pub(crate) idle_in_transaction_timeout: Option<Duration>,
    /// `tcp_keepalives_idle` and `tcp_keepalives_interval` (3 probes), and `tcp_user_timeout`.
    pub(crate) tcp_keepalive: Option<Duration>,
}

/// How the validation gate scores a version on held-out actuals (lower is better).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidationMetric {
    Rmse,
    Mae,
}

impl Compaction {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Compaction::Refit => "refit",
            Compaction::Update => "update",
        }
    }
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
        Self::from_raw(&raw)
    }

    fn from_raw(raw: &Raw) -> Result<Self, ConfigError> {
        let get = |name: &str| raw.get(name).map(|s| s.trim()).filter(|s| !s.is_empty());

        let database_url = get("DATABASE_URL").ok_or(ConfigError::Missing {
            name: "DATABASE_URL",
            hint: "e.g. postgres://postgres@127.0.0.1:5432/refit",
        })?;
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(invalid(
                "DATABASE_URL",
                // Never echo the password of a malformed URL.
                &redact_url(database_url),
                "a postgres:// or postgresql:// URL",
            ));
        }
        let redis_url = get("REDIS_URL").unwrap_or("redis://127.0.0.1:6379");
        if !(redis_url.starts_with("redis://") || redis_url.starts_with("rediss://")) {
            return Err(invalid(
                "REDIS_URL",
                // Never echo the password of a malformed URL.
                &redact_url(redis_url),
                "a redis:// or rediss:// URL",
            ));
        }
        let kafka_brokers = get("KAFKA_BROKERS").unwrap_or("127.0.0.1:9092").to_owned();
        let topic = get("REFIT_TOPIC").unwrap_or("model-retrained").to_owned();
        if topic.len() > 249
            || !topic
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(invalid(
                "REFIT_TOPIC",
                &topic,
                "1 to 249 characters of a-z, A-Z, 0-9, '.', '_', '-'",
            ));
        }

        let features = match get("REFIT_FEATURES") {
            None => None,
            Some(list) => {
                let names: Vec<String> = list.split(',').map(|s| s.trim().to_owned()).collect();
                let mut seen = std::collections::BTreeSet::new();
                if names
                    .iter()
                    .any(|n| n.is_empty() || !seen.insert(n.clone()))
                {
                    return Err(invalid(
                        "REFIT_FEATURES",
                        list,
                        "a comma-separated list of distinct, non-empty feature names",
                    ));
                }
                Some(names)
            }
        };

        let mut xgb_params = parse_params("REFIT_XGB_PARAMS", DEFAULT_XGB_PARAMS)?;
        if let Some(json) = get("REFIT_XGB_PARAMS") {
            xgb_params.extend(parse_params("REFIT_XGB_PARAMS", json)?);
        }
        // Threads are a property of the process, not of the model: never stored with a version.
        xgb_params.remove("nthread");

        let kafka_properties = match get("REFIT_KAFKA_PROPERTIES") {
            None => Vec::new(),
            Some(list) => list
                .split(';')
                .filter(|kv| !kv.trim().is_empty())
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) if !k.trim().is_empty() => {
                        Ok((k.trim().to_owned(), Secret::new(v.trim())))
                    }
                    // Never echo the value: it may hold a SASL password.
                    _ => Err(invalid(
                        "REFIT_KAFKA_PROPERTIES",
                        "(redacted)",
                        "key=value pairs separated by ';'",
                    )),
                })
                .collect::<Result<_, _>>()?,
        };

        let log_format = match get("REFIT_LOG_FORMAT").unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(invalid("REFIT_LOG_FORMAT", other, "text or json")),
        };

        let http_addr = match get("REFIT_HTTP_ADDR").unwrap_or("0.0.0.0:8080") {
            "off" => None,
            addr => Some(addr.parse().map_err(|_| {
                invalid(
                    "REFIT_HTTP_ADDR",
                    addr,
                    "host:port, e.g. 0.0.0.0:8080, or off",
                )
            })?),
        };
        let loki_url = match get("LOKI_URL") {
            None => None,
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                Some(Secret::new(url))
            }
            Some(_) => {
                return Err(invalid(
                    "LOKI_URL",
                    "(redacted)",
                    "an http:// or https:// URL",
                ))
            }
        };

        let validation_metric = match get("REFIT_VALIDATION_METRIC").unwrap_or("rmse") {
            "rmse" => ValidationMetric::Rmse,
            "mae" => ValidationMetric::Mae,
            other => return Err(invalid("REFIT_VALIDATION_METRIC", other, "rmse or mae")),
        };
        let compaction = match get("REFIT_COMPACTION").unwrap_or("refit") {
            "refit" => Compaction::Refit,
            "update" => Compaction::Update,
            other => return Err(invalid("REFIT_COMPACTION", other, "refit or update")),
        };
        let policy = Policy {
            rounds: int(raw, "REFIT_ROUNDS_PER_RETRAIN", 1, 1, 10_000)? as i32,
            continue_eta: float(raw, "REFIT_CONTINUE_ETA", 0.1, 0.0, 1.0)?,
            rebuild_every: int(raw, "REFIT_REBUILD_EVERY", 4, 0, 1_000_000)? as u32,
            window: int(raw, "REFIT_REFIT_WINDOW", 4000, 1, 10_000_000)?,
            rebuild_rounds: int(raw, "REFIT_COMPACTION_ROUNDS", 35, 1, 10_000)? as i32,
            rebuild_eta: float(raw, "REFIT_REBUILD_ETA", 0.3, 0.0, 1.0)?,
            half_life: int(raw, "REFIT_RECENCY_HALF_LIFE", 2000, 0, 10_000_000)?,
            max_trees: int(raw, "REFIT_MAX_TREES", 150, 0, 1_000_000)?,
            compaction,
            gate: Gate {
                enabled: switch(raw, "REFIT_VALIDATION", true)?,
                window: int(raw, "REFIT_VALIDATION_WINDOW", 250, 1, 1_000_000)?,
                metric: validation_metric,
                tolerance: float(raw, "REFIT_VALIDATION_TOLERANCE", 0.3, 0.0, 100.0)?,
                live_ratio: float(raw, "REFIT_VALIDATION_LIVE_RATIO", 3.0, 1.0, 1e6)?,
            },
        };
        let max_staleness = match int(raw, "REFIT_MAX_STALENESS_SECS", 0, 0, 365 * 86_400)? {
            0 => None,
            secs => Some(Duration::from_secs(secs as u64)),
        };

        let ms_setting = |name, default| {
            int(raw, name, default, 0, 86_400_000).map(|ms| match ms {
                0 => None,
                ms => Some(Duration::from_millis(ms as u64)),
            })
        };
        let session = SessionLimits {
            statement_timeout: ms_setting("REFIT_STATEMENT_TIMEOUT_MS", 30_000)?,
            idle_in_transaction_timeout: ms_setting(
                "REFIT_IDLE_IN_TRANSACTION_TIMEOUT_MS",
                45_000,
            )?,
            tcp_keepalive: match int(raw, "REFIT_TCP_KEEPALIVE_SECS", 10, 0, 3600)? {
                0 => None,
                secs => Some(Duration::from_secs(secs as u64)),
            },
        };
        let retrain_timeout = match int(raw, "REFIT_RETRAIN_TIMEOUT_SECS", 30, 0, 86_400)? {
            0 => None,
            secs => Some(Duration::from_secs(secs as u64)),
        };

        let retention = retention(raw, &policy)?;
        Ok(Config {
            retention,
            http_db_pool_size: int(raw, "REFIT_HTTP_DB_POOL_SIZE", 2, 1, 100)? as u32,
            import_max_bytes: int(raw, "REFIT_IMPORT_MAX_BYTES", 64 << 20, 1024, 1 << 30)? as usize,
            session,
            retrain_timeout,
            policy,
            max_staleness,
            stale_min_rows: int(raw, "REFIT_STALE_MIN_ROWS", 1, 1, 1_000_000)?,
            model_cache_bytes: int(raw, "REFIT_MODEL_CACHE_MB", 16, 0, 1_000_000)? as usize
                * 1024
                * 1024,
            cache_ttl: Duration::from_secs(
                int(raw, "REFIT_CACHE_TTL_SECS", 3600, 1, 30 * 86_400)? as u64
            ),
            http_addr,
            loki_url,
            loki_queue_lines: int(raw, "REFIT_LOKI_QUEUE_LINES", 10_000, 10, 1_000_000)? as usize,
            loki_timeout: Duration::from_secs(
                int(raw, "REFIT_LOKI_TIMEOUT_SECS", 5, 1, 300)? as u64
            ),
            environment: get("REFIT_ENVIRONMENT").unwrap_or("dev").to_owned(),
            admin_token: get("REFIT_ADMIN_TOKEN").map(Secret::new),
            audit_retention: Duration::from_secs(
                int(raw, "REFIT_AUDIT_RETENTION_DAYS", 365, 1, 36_500)? as u64 * 86_400,
            ),
            database_url: Secret::new(database_url),
            redis_url: Secret::new(redis_url),
            kafka_brokers,
            kafka_properties,
            topic,
            topic_partitions: int(raw, "REFIT_TOPIC_PARTITIONS", 3, 1, 10_000)? as i32,
            topic_replication: int(raw, "REFIT_TOPIC_REPLICATION", 1, 1, 100)? as i32,
            retrain_threshold: int(raw, "REFIT_RETRAIN_THRESHOLD", 50, 1, 1_000_000)?,
            poll_interval: Duration::from_millis(int(
                raw,
                "REFIT_POLL_INTERVAL_MS",
                1000,
                10,
                3_600_000,
            )? as u64),
            ingest_interval: Duration::from_millis(int(
                raw,
                "REFIT_INGEST_INTERVAL_MS",
                2,
                1,
                60_000,
            )? as u64),
            max_concurrent_retrains: int(raw, "REFIT_MAX_CONCURRENT_RETRAINS", 4, 1, 1024)?
                as usize,
            features,
            xgb_params,
            xgb_nthread: int(raw, "REFIT_XGB_NTHREAD", 1, 1, 256)? as u32,
            cache_key_prefix: get("REFIT_CACHE_KEY_PREFIX").unwrap_or("model:").to_owned(),
            outbox_retry_max: Duration::from_millis(int(
                raw,
                "REFIT_OUTBOX_RETRY_MAX_MS",
                30_000,
                10,
                3_600_000,
            )? as u64),
            log_format,
        })
    }

    /// The configuration as `NAME=value` lines, secrets redacted (for `refit config`).
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let params = serde_json::to_string(&self.xgb_params).unwrap_or_default();
        let mut described = vec![
            ("DATABASE_URL", self.database_url.to_string()),
            ("REDIS_URL", self.redis_url.to_string()),
            ("KAFKA_BROKERS", self.kafka_brokers.clone()),
            (
                "REFIT_KAFKA_PROPERTIES",
                self.kafka_properties
                    .iter()
                    .map(|(k, _)| format!("{k}=***"))
                    .collect::<Vec<_>>()
                    .join(";"),
            ),
            ("REFIT_TOPIC", self.topic.clone()),
            ("REFIT_TOPIC_PARTITIONS", self.topic_partitions.to_string()),
            (
                "REFIT_TOPIC_REPLICATION",
                self.topic_replication.to_string(),
            ),
            (
                "REFIT_RETRAIN_THRESHOLD",
                self.retrain_threshold.to_string(),
            ),
            (
                "REFIT_POLL_INTERVAL_MS",
                self.poll_interval.as_millis().to_string(),
            ),
            (
                "REFIT_INGEST_INTERVAL_MS",
                self.ingest_interval.as_millis().to_string(),
            ),
            (
                "REFIT_MAX_CONCURRENT_RETRAINS",
                self.max_concurrent_retrains.to_string(),
            ),
            (
                "REFIT_FEATURES",
                self.features
                    .as_ref()
                    .map(|f| f.join(","))
                    .unwrap_or_default(),
            ),
            ("REFIT_XGB_PARAMS", params),
            ("REFIT_XGB_NTHREAD", self.xgb_nthread.to_string()),
            ("REFIT_CACHE_KEY_PREFIX", self.cache_key_prefix.clone()),
            ("REFIT_CACHE_TTL_SECS", self.cache_ttl.as_secs().to_string()),
            (
                "REFIT_MODEL_CACHE_MB",
                (self.model_cache_bytes / 1024 / 1024).to_string(),
            ),
            (
                "REFIT_MAX_STALENESS_SECS",
                self.max_staleness.map_or(0, |d| d.as_secs()).to_string(),
            ),
            ("REFIT_STALE_MIN_ROWS", self.stale_min_rows.to_string()),
            (
                "REFIT_STATEMENT_TIMEOUT_MS",
                millis(self.session.statement_timeout),
            ),
            (
                "REFIT_IDLE_IN_TRANSACTION_TIMEOUT_MS",
                millis(self.session.idle_in_transaction_timeout),
            ),
            (
                "REFIT_TCP_KEEPALIVE_SECS",
                self.session
                    .tcp_keepalive
                    .map_or(0, |d| d.as_secs())
                    .to_string(),
            ),
            (
                "REFIT_RETRAIN_TIMEOUT_SECS",
                self.retrain_timeout.map_or(0, |d| d.as_secs()).to_string(),
            ),
            (
                "REFIT_OUTBOX_RETRY_MAX_MS",
                self.outbox_retry_max.as_millis().to_string(),
            ),
            (
                "REFIT_HTTP_ADDR",
                self.http_addr.map_or("off".into(), |a| a.to_string()),
            ),
            (
                "REFIT_HTTP_DB_POOL_SIZE",
                self.http_db_pool_size.to_string(),
            ),
            ("REFIT_IMPORT_MAX_BYTES", self.import_max_bytes.to_string()),
            (
                "LOKI_URL",
                self.loki_url
                    .as_ref()
                    .map(|u| u.to_string())
                    .unwrap_or_default(),
            ),
            ("REFIT_LOKI_QUEUE_LINES", self.loki_queue_lines.to_string()),
            (
                "REFIT_LOKI_TIMEOUT_SECS",
                self.loki_timeout.as_secs().to_string(),
            ),
            ("REFIT_ENVIRONMENT", self.environment.clone()),
            (
                "REFIT_AUDIT_RETENTION_DAYS",
                (self.audit_retention.as_secs() / 86_400).to_string(),
            ),
            (
                "REFIT_LOG_FORMAT",
                match self.log_format {
                    LogFormat::Text => "text".into(),
                    LogFormat::Json => "json".into(),
                },
            ),
        ];
        described.extend(self.policy.describe());
        described.extend(describe_retention(&self.retention));
        described
    }
}

/// The retention settings; the trained rows kept are what the policy reads.
fn retention(raw: &Raw, policy: &Policy) -> Result<Retention, ConfigError> {
    let keep_artifacts = int(raw, "REFIT_KEEP_ARTIFACTS", 5, 1, 1_000_000)?;
    let keep_versions = int(raw, "REFIT_KEEP_VERSIONS", 100, 1, 100_000_000)?;
    if keep_versions < keep_artifacts {
        return Err(invalid(
            "REFIT_KEEP_VERSIONS",
            &keep_versions.to_string(),
            "at least REFIT_KEEP_ARTIFACTS",
        ));
    }
    let secs = |name, default, max| int(raw, name, default, 1, max).map(|s| s as u64);
    // 0: delivered outbox entries are deleted as they are delivered.
    let outbox_secs = int(raw, "REFIT_OUTBOX_RETENTION_SECS", 0, 0, 365 * 86_400)? as u64;
    Ok(Retention {
        enabled: switch(raw, "REFIT_RETENTION", true)?,
        keep_artifacts,
        keep_versions,
        keep_rows: policy.window.max(policy.gate.window),
        outbox_after: Duration::from_secs(outbox_secs),
        set_aside_after: Duration::from_secs(
            secs("REFIT_SET_ASIDE_RETENTION_DAYS", 7, 3650)? * 86_400,
        ),
    })
}

fn describe_retention(r: &Retention) -> Vec<(&'static str, String)> {
    vec![
        (
            "REFIT_RETENTION",
            if r.enabled { "on" } else { "off" }.into(),
        ),
        ("REFIT_KEEP_ARTIFACTS", r.keep_artifacts.to_string()),
        ("REFIT_KEEP_VERSIONS", r.keep_versions.to_string()),
        (
            "REFIT_OUTBOX_RETENTION_SECS",
            r.outbox_after.as_secs().to_string(),
        ),
        (
            "REFIT_SET_ASIDE_RETENTION_DAYS",
            (r.set_aside_after.as_secs() / 86_400).to_string(),
        ),
    ]
}

/// A duration setting in milliseconds as `refit config` shows it (0 = none).
fn millis(value: Option<Duration>) -> String {
    value.map_or(0, |d| d.as_millis()).to_string()
}

/// An on/off setting.
fn switch(raw: &Raw, name: &'static str, default: bool) -> Result<bool, ConfigError> {
    match raw.get(name).map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => Ok(default),
        Some("on" | "true" | "1") => Ok(true),
        Some("off" | "false" | "0") => Ok(false),
        Some(other) => Err(invalid(name, other, "on or off")),
    }
}

fn invalid(name: &'static str, value: &str, expected: &str) -> ConfigError {
    ConfigError::Invalid {
        name,
        value: value.to_owned(),
        expected: expected.to_owned(),
    }
}

/// An integer setting with a default and an inclusive range.
fn int(
    raw: &Raw,
    name: &'static str,
    default: i64,
    min: i64,
    max: i64,
) -> Result<i64, ConfigError> {
    let Some(text) = raw.get(name).map(|s| s.trim()).filter(|s| !s.is_empty()) else {
        return Ok(default);
    };
    match text.parse::<i64>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(invalid(
            name,
            text,
            &format!("an integer from {min} to {max} (default {default})"),
        )),
    }
}

/// A decimal setting with a default and an inclusive range.
fn float(
    raw: &Raw,
    name: &'static str,
    default: f64,
    min: f64,
    max: f64,
) -> Result<f64, ConfigError> {
    let Some(text) = raw.get(name).map(|s| s.trim()).filter(|s| !s.is_empty()) else {
        return Ok(default);
    };
    match text.parse::<f64>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(invalid(
            name,
            text,
            &format!("a number from {min} to {max} (default {default})"),
        )),
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
        assert_eq!(c.retrain_threshold, 50);
        assert_eq!(c.policy.rounds, 1);
        assert_eq!(c.policy.rebuild_every, 4);
        assert_eq!(c.policy.window, 4000);
        assert_eq!(c.policy.rebuild_rounds, 35);
        assert_eq!(c.policy.rebuild_eta, 0.3);
        assert_eq!(c.policy.half_life, 2000);
        assert!(c.policy.gate.enabled);
        assert_eq!(c.max_staleness, None);
        assert_eq!(c.poll_interval, Duration::from_millis(1000));
        assert_eq!(c.topic, "model-retrained");
        assert_eq!(c.xgb_params["objective"], "reg:squarederror");
        assert_eq!(c.cache_key_prefix, "model:");
        // A hung retrain's row lock is released well within a minute by default.
        let s = c.session;
        assert_eq!(s.statement_timeout, Some(Duration::from_secs(30)));
        assert_eq!(s.idle_in_transaction_timeout, Some(Duration::from_secs(45)));
        assert_eq!(s.tcp_keepalive, Some(Duration::from_secs(10)));
        assert_eq!(c.retrain_timeout, Some(Duration::from_secs(30)));
        // A hung Loki holds at most 10,000 lines, and a push waits at most 5 s.
        assert_eq!(c.loki_queue_lines, 10_000);
        assert_eq!(c.loki_timeout, Duration::from_secs(5));
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
        assert_eq!(c.retrain_threshold, 20);
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
        assert_eq!(c.xgb_params["max_depth"], "3");
        assert_eq!(c.xgb_params["eta"], "0.1");
        assert!(!c.xgb_params.contains_key("nthread"));
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
        assert_eq!(c.max_staleness, Some(Duration::from_secs(600)));
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

    #[test]
    fn every_variable_read_is_listed() {
        let source = include_str!("config.rs");
        let code =
            &source[source.find("fn from_raw").unwrap()..source.find("pub fn describe").unwrap()];
        let mut read = Vec::new();
        for piece in code.split('"').skip(1).step_by(2) {
            if piece.len() > 3 && piece.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                read.push(piece);
            }
        }
        assert!(read.len() > 20, "{read:?}");
        for name in read {
            assert!(
                VARIABLES.iter().any(|(v, _)| *v == name),
                "{name} is read but not in VARIABLES"
            );
        }
    }

    #[test]
    fn secrets_are_redacted_in_debug_and_display() {
        let s = Secret::new("postgres://refit:hunter2@db:5432/refit?sslpassword=x");
        assert_eq!(s.to_string(), "postgres://refit:***@db:5432/refit?…");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(Secret::new("not a url").to_string(), "***");
    }
}
