//! The model: XGBoost and what refit keeps of it between retrains.
//!
//! - [`xgboost`]: the safe wrapper over the XGBoost C API — the only `unsafe` code in refit;
//! - [`trainer`]: one training step (continue, rebuild, score), exactly as Python's
//!   `xgb.train(xgb_model=...)`;
//! - [`cache`]: recently trained boosters kept loaded between a user's retrains;
//! - [`check`]: imported models checked before XGBoost sees them.
//!
//! Owns no table and no connection: the retrain hands it rows and artifacts.

pub(crate) mod cache;
pub(crate) mod check;
pub mod trainer;
pub(crate) mod xgboost;
