//! refit's test kit: what the integration suite (tests/integration), the reliability suite
//! (tests/reliability) and the benchmark driver (benches/pipeline) share, written once.
//!
//! - `services`: where the shared servers are (`REFIT_TEST_DATABASE_URL`, `REDIS_URL`,
//!   `KAFKA_BROKERS`), the Python with xgboost, free loopback ports, settings from the
//!   environment;
//! - `database`: a PostgreSQL database of a test's (or a bench phase's) own, created and dropped
//!   from the admin URL, and the leftovers of interrupted runs dropped by prefix;
//! - `actuals`: inserting a prediction request with its actual, and the deterministic
//!   rental-like rows the suites train on;
//! - `process`: a child process (the refit binary) with its output lines captured (or logged to a
//!   file, or handed to a hook), waited for, signalled, stopped and killed, and its memory and
//!   CPU read from /proc, once or (memory) watched while it runs;
//! - `test_env`: [`TestEnv`], a test's own database, topic and Redis prefix with refit's
//!   `Service` built in-process, and the checks of the events it announces.
//!
//! The kit never names the refit binary: callers pass `env!("CARGO_BIN_EXE_refit")`, which cargo
//! sets only for the refit package's own tests and benches.
// Tests and benches set up and inspect the database directly, outside refit's typed store.
#![allow(clippy::disallowed_methods)]

mod actuals;
mod database;
mod process;
mod services;
mod test_env;

pub use actuals::{
    ingest_all, insert_actual, insert_request_and_actual, rental_actual, rental_features,
};
pub use database::{
    create_database, create_migrated_database, database_url, drop_database,
    drop_databases_with_prefix,
};
pub use process::{
    proc_cpu_seconds, proc_memory, signal, MemoryRecord, Output, ProcMemory, Process, CLOCK_TICKS,
};
pub use services::{admin_url, brokers, free_port, python, redis_url, var_or};
pub use test_env::{
    assert_valid_event, drain_events, eventually, init_logs, metric, read_events, Running, TestEnv,
    DEFAULT_POLICY,
};
