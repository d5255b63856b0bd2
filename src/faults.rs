//! Fault injection for the crash tests: with the `fault-injection` feature (test builds only),
//! `REFIT_FAULT_POINT=<point>` makes the process abort — as abruptly as `kill -9` — when a retrain
//! reaches that point. Without the feature, [`point`] compiles to nothing.
//!
//! Points, in the order of a retrain: `after_read`, `during_train`, `after_commit` (before the
//! cache delete), `after_invalidate` (before the event).

/// Marks a point of a retrain; aborts here if the test asked for it.
#[inline(always)]
pub fn point(name: &str) {
    #[cfg(feature = "fault-injection")]
    if std::env::var("REFIT_FAULT_POINT").is_ok_and(|p| p == name) {
        eprintln!("refit: fault injection: aborting at {name}");
        std::process::abort();
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = name;
}
