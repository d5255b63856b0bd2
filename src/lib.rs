//! refit: event-driven incremental retraining of per-user XGBoost models.
//!
//! Map of the crate, in the order of one retrain:
//! - [`config`]: settings from the environment and an optional file, validated at start-up;
//! - [`db`]: PostgreSQL — pending actuals (trigger-fed queue), model registry, outbox;
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
#![deny(unsafe_code)]
#![warn(unreachable_pub)]

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
