-- Removes descriptions, tags, aliases and the audit trail.
DROP TABLE IF EXISTS refit_audit;
DROP TABLE IF EXISTS refit_aliases;
ALTER TABLE refit_model_versions DROP COLUMN IF EXISTS tags, DROP COLUMN IF EXISTS description;
ALTER TABLE refit_models DROP COLUMN IF EXISTS tags, DROP COLUMN IF EXISTS description;
