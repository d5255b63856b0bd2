//! Fault injection for the crash and hang tests: with the `fault-injection` feature (test builds
//! only), `REFIT_FAULT_POINT=<point>` makes the process abort — as abruptly as `kill -9` — when a
//! retrain reaches that point, and `REFIT_FAULT_HANG=<point>` makes the retrain stall there
//! forever (a hung training, a stuck thread). Without the feature, [`point`] compiles to nothing.
//!
//! Points, in the order of a retrain: `after_read`, `during_train`, `after_commit` (before the
//! cache delete), `after_invalidate` (before the event).

/// Marks a point of a retrain; aborts or stalls here if the test asked for it.
#[inline(always)]
pub(crate) fn point(name: &str) {
    #[cfg(feature = "fault-injection")]
    {
        if std::env::var("REFIT_FAULT_POINT").is_ok_and(|p| p == name) {
            eprintln!("refit: fault injection: aborting at {name}");
            std::process::abort();
        }
        if std::env::var("REFIT_FAULT_HANG").is_ok_and(|p| p == name) {
            eprintln!("refit: fault injection: hanging at {name}");
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = name;
}
