-- Retention (src/retention.rs): the sweeper deletes delivered outbox entries past their retention
-- by this index instead of scanning the table; undone entries are not in it.
CREATE INDEX refit_outbox_done ON refit_outbox (done_at) WHERE done_at IS NOT NULL;

-- Pruning turns old artifacts, versions and consumed rows into dead tuples; their space is reused
-- only once vacuumed. The default (vacuum at 20 % dead rows) lets a table grow by a fifth of
-- itself between passes; these tables churn constantly, so vacuum them at a fixed number of dead
-- rows instead (their TOAST, where the artifacts live, too).
ALTER TABLE refit_model_versions SET (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
    toast.autovacuum_vacuum_scale_factor = 0, toast.autovacuum_vacuum_threshold = 1000);
ALTER TABLE refit_consumed_actuals SET (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000);
ALTER TABLE refit_outbox SET (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000);
