DROP INDEX IF EXISTS refit_versions_created;
DELETE FROM refit_consumed_actuals WHERE outcome = 'held_out';
ALTER TABLE refit_consumed_actuals DROP CONSTRAINT refit_consumed_actuals_outcome_check;
ALTER TABLE refit_consumed_actuals
    ADD CONSTRAINT refit_consumed_actuals_outcome_check CHECK (outcome IN ('trained', 'set_aside'));
