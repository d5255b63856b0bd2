-- Model lifecycle: actuals held out by the validation gate are consumed too (scored, not trained).
ALTER TABLE refit_consumed_actuals DROP CONSTRAINT refit_consumed_actuals_outcome_check;
ALTER TABLE refit_consumed_actuals
    ADD CONSTRAINT refit_consumed_actuals_outcome_check
    CHECK (outcome IN ('trained', 'held_out', 'set_aside'));
CREATE INDEX refit_versions_created ON refit_model_versions (created_at);
