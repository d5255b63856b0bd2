ALTER TABLE refit_outbox RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold);
ALTER TABLE refit_consumed_actuals RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold);
ALTER TABLE refit_model_versions RESET (
    autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold,
    toast.autovacuum_vacuum_scale_factor, toast.autovacuum_vacuum_threshold);
DROP INDEX IF EXISTS refit_outbox_done;
