//! The `steady` phase's section: cost per retrain at steady state, round by round, against the
//! XGBoost work the policy does (issue 13).

use std::fmt::Write as _;

use super::js;
use crate::results::{Results, StatementStats, Steady, SteadyRound};
use crate::stats::f;

/// The section, when the run had the phase.
pub(crate) fn steady(o: &mut String, r: &Results) {
    let Some(st) = &r.steady else {
        return;
    };
    let _ = writeln!(o, "\n### Steady state: cost per retrain\n");
    intro(o, st);
    let _ = writeln!(o, "| Round | Version | Retrains | Steps | Statuses | **Retrains/s** (acked) | Retrains/s (read) | CPU ms per retrain: refit / its PostgreSQL / machine | XGBoost ms per retrain (load + boost + save) p50 / mean | Load / boost / save mean (ms) | Whole train step mean (ms) | Models kept in memory | Trees p50 | WAL bytes per retrain | Load average before / after |");
    let _ = writeln!(
        o,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for round in &st.rounds {
        round_row(o, round);
    }
    let t = &st.overall;
    let _ = writeln!(
        o,
        "| **all** | | {} | {} | {} | **{}** | | **{} / {} / {}** | **{}** (mean) | | {} | | | **{}** | |",
        t.retrains,
        js(&t.versions_by_step),
        js(&t.versions_by_status),
        f(t.retrains_per_s),
        f(t.refit_cpu_ms_per_retrain),
        f(t.postgres_cpu_ms_per_retrain),
        f(t.machine_cpu_ms_per_retrain),
        f(t.xgboost_ms_per_retrain),
        f(t.train_step_ms_per_retrain),
        f(t.wal_bytes_per_retrain),
    );
    let _ = writeln!(
        o,
        "\nCPU per retrain of refit and its PostgreSQL backends: **{} ms, {}× the XGBoost work** \
         the policy does per retrain ({} ms: load + boost + save, single-threaded, from the \
         train log line; the whole train step, with the features and the gate's predictions, \
         took {} ms). WAL is the cluster's \
         (`pg_current_wal_lsn()` over the measured rounds): anything else writing to the \
         server counts too (with refit idle, just before the rounds: {} bytes/s).",
        f(t.refit_cpu_ms_per_retrain + t.postgres_cpu_ms_per_retrain),
        f(t.cpu_to_xgboost),
        f(t.xgboost_ms_per_retrain),
        f(t.train_step_ms_per_retrain),
        f(t.idle_wal_bytes_per_s),
    );
    statements(o, &st.pg_stat_statements);
    tables(o, st);
    if let Some(logs) = &st.logs {
        let _ = writeln!(
            o,
            "\nrefit log warnings {}, errors {}; memory VmHWM {} MB.",
            logs.warnings,
            logs.errors,
            st.memory.as_ref().map_or("–".into(), |m| f(m.vm_hwm_mb)),
        );
    }
}

fn intro(o: &mut String, st: &Steady) {
    let s = &st.seed;
    let rows: Vec<String> = s.rows.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(
        o,
        "{} users, each seeded with {} trained actuals (`refit_consumed_actuals`, outcome \
         `trained`, by {} ready versions of 50), a live-error history (`metrics->'live'`, mean \
         RMSE {}) and an active version {} that is a {} of {} trees ({} seed models, one per \
         scale class, {} KB on average); then rounds of 50 actuals per user bulk-loaded while \
         refit runs with its defaults. Seeded rows: {}; database {} MB; seeding took {} s. \
         Policy: {}.\n",
        st.users,
        st.history_rows_per_user,
        s.versions_per_user,
        f(s.live_rmse_mean),
        s.active_version,
        s.active_step,
        s.active_trees,
        s.models,
        f(s.artifact_kb_mean),
        rows.join(", "),
        f(s.database_mb),
        f(s.seconds),
        js(&st.policy),
    );
}

fn round_row(o: &mut String, r: &SteadyRound) {
    let c = &r.cpu;
    let _ = writeln!(
        o,
        "| {} | {} | {}{} | {} | {} | **{}** | {} | {} / {} / {} | {} / {} | {} / {} / {} | {} | {} | {} | {} | {} / {} |",
        r.round,
        r.version,
        r.retrains,
        if r.complete { "" } else { " (incomplete)" },
        js(&r.versions_by_step),
        js(&r.versions_by_status),
        f(r.retrains_per_s),
        f(r.retrains_per_s_read),
        f(c.process_cpu_ms_per_retrain),
        f(c.postgres_cpu_ms_per_retrain),
        f(r.machine_cpu_ms_per_retrain),
        f(r.xgboost_ms.p50),
        f(r.xgboost_ms.mean),
        f(r.load_ms.mean),
        f(r.boost_ms.mean),
        f(r.save_ms.mean),
        f(r.train_step_ms.mean),
        r.models_cached,
        f(r.trees.p50),
        f(r.wal_bytes_per_retrain),
        js(&r.loadavg_before_after[0]),
        js(&r.loadavg_before_after[1]),
    );
}

fn statements(o: &mut String, stats: &StatementStats) {
    match stats {
        StatementStats::Skipped(why) => {
            let _ = writeln!(o, "\n`pg_stat_statements`: {why}.");
        }
        StatementStats::Top(top) => {
            let _ = writeln!(
                o,
                "\n`pg_stat_statements` over the measured rounds (this database), by total time:\n"
            );
            let _ = writeln!(o, "| Statement | Calls | Total ms | Mean ms | Rows | Shared blocks hit / read / dirtied / written |");
            let _ = writeln!(o, "| --- | --- | --- | --- | --- | --- |");
            for s in top {
                let query: String = s.query.chars().take(160).collect();
                let _ = writeln!(
                    o,
                    "| `{}` | {} | {} | {} | {} | {} / {} / {} / {} |",
                    query.replace('|', "\\|").replace('`', "'"),
                    s.calls,
                    f(s.total_ms),
                    f(s.mean_ms),
                    s.rows,
                    s.shared_blks_hit,
                    s.shared_blks_read,
                    s.shared_blks_dirtied,
                    s.shared_blks_written,
                );
            }
        }
    }
}

/// `pg_stat_user_tables` over the measured rounds, per retrain.
fn tables(o: &mut String, st: &Steady) {
    let retrains = st.overall.retrains.max(1) as f64;
    if st.table_stats.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "\n`pg_stat_user_tables` over the measured rounds, per retrain (the bulk loads' own \
         inserts included):\n"
    );
    let _ = writeln!(o, "| Table | Seq scans | Rows read by seq scans | Index scans | Rows fetched by index | Inserted / updated / deleted |");
    let _ = writeln!(o, "| --- | --- | --- | --- | --- | --- |");
    for t in &st.table_stats {
        let per = |x: i64| f(x as f64 / retrains);
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} / {} / {} |",
            t.table,
            per(t.seq_scan),
            per(t.seq_tup_read),
            per(t.idx_scan),
            per(t.idx_tup_fetch),
            per(t.n_tup_ins),
            per(t.n_tup_upd),
            per(t.n_tup_del),
        );
    }
}
