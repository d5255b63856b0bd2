-- Removes refit's own objects; the upstream tables (data contract) stay.
DROP TRIGGER IF EXISTS refit_enqueue_actual ON actual_rentals;
DROP FUNCTION IF EXISTS refit_enqueue_actual();
DROP TABLE IF EXISTS refit_outbox;
DROP TABLE IF EXISTS refit_consumed_actuals;
DROP TABLE IF EXISTS refit_pending;
ALTER TABLE IF EXISTS refit_models DROP CONSTRAINT IF EXISTS refit_models_active_fk;
DROP TABLE IF EXISTS refit_model_versions;
DROP TABLE IF EXISTS refit_models;
