//! Integration tests against the real PostgreSQL, Redis and Kafka-compatible broker
//! (`make services` starts them). All compile into this one binary.

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
