//! refit: event-driven incremental retraining of per-user XGBoost models.
//!
//! Map of the crate, in the order of one retrain:
//! - [`config`]: settings from the environment and an optional file, validated at start-up;
//! - [`ingest`]: committed actuals from the upstream's table into the pending queue;
//! - [`db`]: PostgreSQL — pending actuals, model registry, outbox;
//! - [`service`]: the running service — LISTEN/NOTIFY + poll, scheduling, shutdown;
//! - [`retrain`]: one retrain of one user, read → train → commit in one transaction;
//! - [`features`]: rows checked and laid out for XGBoost, bad rows set aside with a reason;
//! - [`trainer`]: continued training, exactly as Python's `xgb.train(xgb_model=...)`;
//! - [`model_cache`]: recently trained models kept loaded between a user's retrains;
//! - [`xgboost`]: the safe wrapper over the XGBoost C API (the only `unsafe` code);
//! - [`outbox`]: after the commit, the cache invalidation ([`cache`]) and the event ([`events`]);
//! - [`metrics`], [`telemetry`], [`http`]: Prometheus metrics, logs (stdout, Loki), probes;
//! - [`retention`]: pruning of old versions, artifacts and bookkeeping rows;
//! - [`registry`]: list/show/export/import/promote/rollback/prune versions (CLI and HTTP);
//!   [`metadata`]: descriptions, tags and aliases; [`erasure`]: deleting a user for good;
//!   [`audit`]: the record of every registry write;
//! - [`serving`]: the serving reference, `refit predict`, reading through the Redis cache;
//! - [`demo`]: generated rental data for `refit demo`.
//!
//! ## What is public, and why
//!
//! Everything is `pub(crate)` unless code outside the library uses it, so the compiler reports
//! dead code and `unreachable_pub` flags a `pub` nobody outside can reach. The modules
//! `http`, `outbox`, `metrics`, `model_cache`, `model_check`, `xgboost`, `demo` and `faults` are
//! private; in the others only these items are `pub`:
//! - for the binary (src/main.rs): [`cli`] (one function per subcommand), [`config::Config`]
//!   (its sections [`config::Database`] and [`config::SessionLimits`]) and
//!   [`config::VARIABLES`], [`db::connect`], [`db::migrate`], [`db::check_migrated`],
//!   [`service::Service::build`] and [`run`](service::Service::run), [`telemetry::init`], and the
//!   argument types [`metadata::VersionRef`], [`metadata::Change`] and [`registry::Filter`];
//! - for the integration and reliability tests (tests/), which drive the real service:
//!   [`service::Service`]'s pool, HTTP address, [`ingest::ingest`] (for tests that retrain
//!   without running the service), [`retrain::Retrainer::retrain_user`] (one
//!   retrain, deterministically), [`metrics_text`](service::Service::metrics_text) and
//!   [`kafka_healthy`](service::Service::kafka_healthy); [`events::EventReader`] (also the
//!   demo's) and the event as read; the registry calls they race against the service
//!   ([`registry::rollback`], [`registry::import`], [`erasure::erase`], [`audit::purge`],
//!   [`retention::prune_user`], [`retention::purge_expired`]); [`serving::predict`] with a
//!   [`cache::Cache`]; and, to check models against their data, [`features::prepare`],
//!   [`trainer::predict`], [`trainer::score`], [`trainer::inspect`] and [`policy::Errors`];
//! - for the benchmarks (benches/pipeline): [`trainer::train`] with its input, including a model
//!   already in memory ([`trainer::Previous::load`]), and refit's default XGBoost parameters
//!   ([`config::Training`]).
//!
//! These docs are for working on refit: `cargo doc --document-private-items` renders the links
//! to private items that the docs of public ones make.
#![deny(unsafe_code)]
#![warn(unreachable_pub)]
#![allow(rustdoc::private_intra_doc_links)]

pub mod audit;
pub mod cache;
pub mod cli;
pub mod config;
pub mod db;
mod demo;
pub mod erasure;
pub mod events;
mod faults;
pub mod features;
mod http;
pub mod ingest;
pub mod metadata;
mod metrics;
mod model_cache;
mod model_check;
mod outbox;
pub mod policy;
pub mod registry;
pub mod retention;
pub mod retrain;
pub mod service;
pub mod serving;
pub mod telemetry;
pub mod trainer;
mod xgboost;
