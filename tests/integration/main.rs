//! Integration tests against the real PostgreSQL, Redis and Kafka-compatible broker
//! (`make services` starts them). All compile into this one binary.
// Tests and benches set up and inspect the database directly, outside refit's typed store.
#![allow(clippy::disallowed_methods)]

mod bad_input;
mod bike;
mod explain;
mod ingest;
mod lifecycle;
mod observability;
mod pipeline;
mod policy;
mod processes;
mod prometheus;
mod python_oracle;
mod registry;
mod retention;

/// Fixtures shared with the reliability suite and the benchmark driver: tests/kit.
use refit_testkit as support;
