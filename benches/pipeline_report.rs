//! `cargo test --test bench_report` (part of `make test`): checks of the benchmark's report (benches/pipeline/report/)
//! on small typed results. The pipeline bench itself runs without a test harness, so its report
//! modules are compiled here a second time, with one.

#![allow(dead_code)]

#[path = "pipeline/report/mod.rs"]
mod report;
#[path = "pipeline/results.rs"]
mod results;
#[path = "pipeline/stats.rs"]
mod stats;
#[cfg(test)]
#[path = "pipeline/report/tests.rs"]
mod tests;
