//! The reliability campaign (issue 5): crashes, outages, concurrency, bad input, security and
//! shutdown, each checked with the exactly-once accounting of `harness::verify`. A separate test
//! binary from the integration suite; run it with
//! `cargo test --features fault-injection --test reliability` (fast slice, part of `make test`)
//! and `CHAOS=1 … -- --ignored` for the long soak runs (`make chaos`). See RELIABILITY.md.
// Tests and benches set up and inspect the database directly, outside refit's typed store.
#![allow(clippy::disallowed_methods)]

mod bad_input;
mod chaos;
mod concurrency;
pub mod crash;
mod hardening;
mod harness;
mod outage;
mod security;
mod shutdown;

/// Fixtures shared with the integration suite and the benchmark driver: tests/kit.
use refit_testkit as support;
