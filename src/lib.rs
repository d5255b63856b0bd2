//! refit: event-driven incremental retraining of per-user XGBoost models.
//!
//! One folder a hop of an actual's path (ARCHITECTURE.md draws it):
//! - [`scheduler`]: the running service — [`scheduler::ingest`] takes committed actuals from the
//!   upstream's table into the pending queue; LISTEN/NOTIFY + poll find due users; workers run
//!   their retrains; shutdown;
//! - [`retrain`]: one retrain of one user, read → train → commit in one transaction;
//!   [`retrain::policy`] decides the step and the gate (pure), [`retrain::features`] checks rows
//!   and lays them out for XGBoost, setting bad ones aside with a reason;
//! - [`model`]: [`model::trainer`] (continued training, exactly as Python's
//!   `xgb.train(xgb_model=...)`), the boosters kept between retrains, imported models checked,
//!   and the safe wrapper over the XGBoost C API (the only `unsafe` code);
//! - [`store`]: PostgreSQL — connections, migrations, and all of refit's SQL, one file per owner
//!   of the rows, every statement through `store::query` (SQL as `&'static str`);
//! - [`outbox`]: after the commit, the cache invalidation ([`outbox::cache`], Redis) and the
//!   event ([`outbox::events`], Kafka), retried by the sweeper;
//! - [`registry`]: list/show/export/import/promote/rollback/prune versions (CLI and HTTP);
//!   [`registry::metadata`]: descriptions, tags and aliases; [`registry::erasure`]: deleting a
//!   user for good; [`registry::audit`]: the record of every registry write;
//!   [`registry::retention`]: pruning of old versions, artifacts and bookkeeping rows;
//! - [`domain`]: the records the layers share — a version's status, the attempt, the new-version
//!   row and the event — with one constructor per case (no I/O);
//! - [`config`]: settings, one typed section each, validated at start-up;
//! - [`telemetry`] (with its Prometheus metrics) and `http` (API and probes);
//! - [`cli`]: one function per subcommand, with [`cli::serving`] (`refit predict`, the serving
//!   reference) and the generated data of `refit demo`.
//!
//! ## What is public, and why
//!
//! Everything is `pub(crate)` unless code outside the library uses it, so the compiler reports
//! dead code and `unreachable_pub` flags a `pub` nobody outside can reach. The modules `http`
//! and `faults`, and `model::cache`, `model::check`, `model::xgboost`, `cli::demo` and
//! `telemetry::metrics` are private to the crate; elsewhere only these items are `pub`:
//! - for the binary (src/main.rs): [`cli`] (one function per subcommand), [`config::Config`]
//!   (its sections [`config::Database`] and [`config::SessionLimits`]) and
//!   [`config::VARIABLES`], [`store::connect`], [`store::migrate`], [`store::check_migrated`],
//!   [`scheduler::Service::build`] and [`run`](scheduler::Service::run), [`telemetry::init`],
//!   and the argument types [`registry::metadata::VersionRef`], [`registry::metadata::Change`]
//!   and [`registry::Filter`];
//! - for the integration and reliability tests (tests/), which drive the real service:
//!   [`scheduler::Service`]'s pool, HTTP address, [`scheduler::ingest::ingest`] (for tests that
//!   retrain without running the service), [`retrain::Retrainer::retrain_user`] (one retrain,
//!   deterministically), [`metrics_text`](scheduler::Service::metrics_text) and
//!   [`kafka_healthy`](scheduler::Service::kafka_healthy); [`outbox::events::EventReader`] (also
//!   the demo's) and the event as read ([`domain::RetrainEvent`], its [`domain::VersionStatus`]);
//!   the registry calls they race against the service
//!   ([`registry::rollback`], [`registry::import`], [`registry::erasure::erase`],
//!   [`registry::audit::purge`], [`registry::retention::prune_user`],
//!   [`registry::retention::purge_expired`]); [`cli::serving::predict`] with a
//!   [`outbox::cache::Cache`]; and, to check models against their data,
//!   [`retrain::features::prepare`], [`model::trainer::predict`], [`model::trainer::score`],
//!   [`model::trainer::inspect`] and [`retrain::policy::Errors`];
//!   and the SQL of every statement run per retrain, ingest or sweep ([`store::statements`],
//!   hidden from the docs), which tests/integration/explain.rs EXPLAINs on filled tables;
//! - for the benchmarks (benches/pipeline): [`model::trainer::train`] with its input, including a
//!   model already in memory ([`model::trainer::Previous::load`]), and refit's default XGBoost
//!   parameters ([`config::Training`]).
//!
//! These docs are for working on refit: `cargo doc --document-private-items` renders the links
//! to private items that the docs of public ones make.
#![deny(unsafe_code)]
#![warn(unreachable_pub)]
#![allow(rustdoc::private_intra_doc_links)]

pub mod cli;
pub mod config;
pub mod domain;
mod faults;
mod http;
pub mod model;
pub mod outbox;
pub mod registry;
pub mod retrain;
pub mod scheduler;
pub mod store;
pub mod telemetry;
